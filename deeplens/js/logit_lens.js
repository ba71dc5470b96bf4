// deeplens LogitLensView: layer x position grid of each layer's top-1 token, coloured by its probability.
// Clicking a cell asks Python for the cell's top-k (custom message "select": Python computes the answer, it is not
// a trait the view could set); the answer comes back in the "selected_topk" trait. Probabilities arrive as a
// float32 binary buffer ("probs", shape "shape"). Uses the kit (kit.js, prepended by Python).

function render({ model, el }) {
  const root = div("dl-lens");
  const bar = div("dl-lens-bar");
  const title = make("span", "dl-title");
  const batch = make("select", "dl-batch-select");
  bar.append(title, batch);
  const wrap = div("dl-lens-wrap");
  const table = make("table", "dl-lens-grid");
  wrap.appendChild(table);
  const tip = div("dl-tip");
  const panel = div("dl-topk");
  root.append(bar, wrap, tip, panel);
  el.appendChild(root);

  function drawBatch() {
    const nb = model.get("batch_size");
    batch.replaceChildren();
    batch.hidden = nb <= 1;
    for (let b = 0; b < nb; b++) {
      const o = make("option", "", `input ${b}`);
      o.value = String(b);
      batch.appendChild(o);
    }
    batch.value = String(model.get("batch"));
  }

  function cell(i, j, p, text, label) {
    const td = make("td", "dl-cell", text);
    td.dataset.layer = String(i);
    td.dataset.pos = String(j);
    td.style.background = valueColour(p, 0, 1);
    td.dataset.ink = ink(p, 0, 1);
    td.addEventListener("mouseenter", () => { tip.textContent = label; });
    td.addEventListener("click", () => model.send({ type: "select", layer: i, pos: j }));
    return td;
  }

  function draw() {
    const [L, P] = model.get("shape");
    const probs = floats(model.get("probs"));
    const top = model.get("top_tokens");
    const layers = model.get("layers");
    const positions = model.get("positions");
    const inputs = model.get("input_tokens");
    const valid = model.get("valid");
    const sel = model.get("selected");
    title.textContent = model.get("title");
    drawBatch();
    table.replaceChildren();
    const head = make("tr");
    head.appendChild(make("th", "", "layer"));
    for (let j = 0; j < P; j++) {
      const th = make("th", "dl-lens-input", valid[j] ? visible(inputs[j]) : "<pad>");
      th.title = `position ${positions[j]}`;
      head.appendChild(th);
    }
    table.appendChild(head);
    for (let i = L - 1; i >= 0; i--) {          // last layer on top, as the output sits above the input
      const tr = make("tr");
      tr.appendChild(make("th", "dl-lens-layer", String(layers[i])));
      for (let j = 0; j < P; j++) {
        const p = probs[i * P + j];
        if (!valid[j]) { tr.appendChild(make("td", "dl-pad")); continue; }
        const td = cell(i, j, p, visible(top[i * P + j]),
          `layer ${layers[i]}, position ${positions[j]} (after ${JSON.stringify(inputs[j])}): ` +
          `top-1 ${JSON.stringify(top[i * P + j])} p=${p.toFixed(4)}`);
        if (sel.length === 2 && sel[0] === i && sel[1] === j) td.dataset.selected = "1";
        tr.appendChild(td);
      }
      table.appendChild(tr);
    }
  }

  function drawPanel() {
    const items = model.get("selected_topk");
    const d = model.get("selected_detail");
    panel.replaceChildren();
    if (!items.length) { panel.textContent = "click a cell to list its top-k tokens"; return; }
    panel.appendChild(div("dl-topk-head", `layer ${d.layer}, position ${d.position} (${visible(d.input_token)}): ` +
      `KL to final ${Number(d.kl).toFixed(3)} nats, final token rank ${d.final_rank}`));
    for (const it of items) {
      const row = div("dl-topk-item");
      const b = make("span", "dl-ramp");
      b.style.width = `${Math.round(120 * it.prob)}px`;
      b.style.background = valueColour(1, 0, 1);
      const t = make("span", "dl-topk-text", `${visible(it.token)} ${it.prob.toFixed(4)}`);
      t.title = JSON.stringify(it.token);
      row.append(b, t);
      panel.appendChild(row);
    }
  }

  batch.addEventListener("change", () => commit(model, "batch", Number(batch.value)));
  const off = subscribe(model, [
    ["change:probs change:top_tokens change:shape change:selected change:valid change:input_tokens change:batch", draw],
    ["change:selected_topk change:selected_detail", drawPanel],
  ]);
  draw(); drawPanel();
  return off;
}

export default { render };
