// deeplens TokenHeatmap view: tokens coloured by one value per token.
// Values arrive as a float32 binary buffer ("values", shape "shape"). Uses the kit (kit.js, prepended by Python):
// floats, visible, valueColour, ink, make, div, subscribe, commit.

function render({ model, el }) {
  const root = div("dl-heatmap");
  const bar = div("dl-hm-bar");
  const title = make("span", "dl-title");
  const select = make("select", "dl-row-select");
  const range = make("span", "dl-hm-range dl-muted");
  bar.append(title, select, range);
  const body = div("dl-tokens");
  const tip = div("dl-tip");
  root.append(bar, body, tip);
  el.appendChild(root);

  function draw() {
    const tokens = model.get("tokens");
    const shape = model.get("shape");
    const rows = shape[0] || 0, n = shape[1] || 0;
    const vals = floats(model.get("values"));
    const labels = model.get("row_labels");
    const row = Math.min(Math.max(model.get("row"), 0), Math.max(rows - 1, 0));
    title.textContent = model.get("title");
    select.replaceChildren();
    select.hidden = rows <= 1;
    for (let r = 0; r < rows; r++) {
      const o = make("option", "", labels[r] !== undefined ? labels[r] : `row ${r}`);
      o.value = String(r);
      select.appendChild(o);
    }
    select.value = String(row);
    const lo = model.get("vmin"), hi = model.get("vmax");
    range.textContent = `scale ${lo.toPrecision(3)} … ${hi.toPrecision(3)}`;
    body.replaceChildren();
    for (let p = 0; p < n; p++) {
      const v = vals[row * n + p];
      const s = make("span", "dl-token", visible(tokens[p]));
      s.dataset.pos = String(p);
      s.dataset.ink = ink(v, lo, hi);
      s.style.background = valueColour(v, lo, hi);
      s.addEventListener("mouseenter", () => {
        tip.textContent = `token ${JSON.stringify(tokens[p])}  position ${p}  value ${Number.isFinite(v) ? v.toPrecision(4) : "n/a"}`;
      });
      s.addEventListener("click", () => model.send({ type: "click", row: row, pos: p }));
      body.appendChild(s);
    }
  }

  select.addEventListener("change", () => commit(model, "row", Number(select.value)));
  const off = subscribe(model, [["change:tokens change:values change:shape change:row change:row_labels change:vmin " +
                                 "change:vmax change:title", draw]]);
  draw();
  return off;
}

export default { render };
