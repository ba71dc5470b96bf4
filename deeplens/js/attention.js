// deeplens AttentionView: layer and head pickers, a query x key attention pattern, head-score badges.
// The selected layer's pattern ([n_heads, q, k]) arrives as a float32 binary buffer; picking another layer
// sets the "layer" trait and Python sends that layer's pattern. Rows are queries from position "query_start",
// columns keys from position 0. Uses the kit (kit.js, prepended by Python).

function option(value) {
  const o = make("option", "", String(value));
  o.value = String(value);
  return o;
}

function render({ model, el }) {
  const root = div("dl-attention");
  const bar = div("dl-bar");
  const title = make("span", "dl-title");
  const layerSel = make("select", "dl-layer-select");
  const headSel = make("select", "dl-head-select");
  const badges = make("span", "dl-badges");
  bar.append(title, document.createTextNode("layer"), layerSel, document.createTextNode("head"), headSel, badges);
  const plot = div("dl-att-plot");
  const tip = div("dl-tip");
  root.append(bar, plot, tip);
  el.appendChild(root);

  function drawControls() {
    title.textContent = model.get("title");
    layerSel.replaceChildren(...model.get("layers").map(option));
    layerSel.value = String(model.get("layer"));
    headSel.replaceChildren(...Array.from({ length: model.get("n_heads") }, (_, h) => option(h)));
    headSel.value = String(model.get("head"));
  }

  function drawBadges() {
    badges.replaceChildren();
    const names = model.get("score_names");
    const [S, NL, H] = model.get("scores_shape");
    if (!names.length) return;
    const s = floats(model.get("scores"));
    const l = model.get("layer"), h = model.get("head");
    for (let i = 0; i < S; i++) {
      const v = s[(i * NL + l) * H + h];
      const b = make("span", "dl-badge", `${names[i].replace("_", "-")} ${Number.isFinite(v) ? v.toFixed(2) : "n/a"}`);
      b.style.background = valueColour(v, 0, 1);
      b.dataset.ink = ink(v, 0, 1);
      badges.appendChild(b);
    }
  }

  function drawPattern() {
    const [H, Q, K] = model.get("shape");
    const pat = floats(model.get("pattern"));
    const toks = model.get("tokens");
    const q0 = model.get("query_start");           // the position of query row 0
    const h = Math.min(model.get("head"), H - 1);
    const cell = Q > 40 ? 10 : 18, lab = 90;
    const s = svg("svg", { width: lab + K * cell + 4, height: lab + Q * cell + 4, class: "dl-pattern" });
    for (let k = 0; k < K; k++) {
      const t = svg("text", { x: 0, y: 0, transform: `translate(${lab + k * cell + cell * 0.7}, ${lab - 4}) rotate(-90)`,
                              class: "dl-att-key" });
      t.textContent = visible(toks[k]);
      s.appendChild(t);
    }
    for (let q = 0; q < Q; q++) {
      const t = svg("text", { x: lab - 4, y: lab + q * cell + cell * 0.75, "text-anchor": "end", class: "dl-att-query" });
      t.textContent = visible(toks[q0 + q]);
      s.appendChild(t);
      for (let k = 0; k < K; k++) {
        const v = pat[(h * Q + q) * K + k];
        const r = svg("rect", { x: lab + k * cell, y: lab + q * cell, width: cell - 1, height: cell - 1,
                                fill: valueColour(v, 0, 1), class: "dl-att-cell" });
        r.addEventListener("mouseenter", () => {
          tip.textContent = `head ${h}: ${JSON.stringify(toks[q0 + q])} (${q0 + q}) attends to ${JSON.stringify(toks[k])} (${k}): ${v.toFixed(4)}`;
        });
        s.appendChild(r);
      }
    }
    plot.replaceChildren(s);
  }

  layerSel.addEventListener("change", () => commit(model, "layer", Number(layerSel.value)));
  headSel.addEventListener("change", () => commit(model, "head", Number(headSel.value)));
  const off = subscribe(model, [
    ["change:layers change:n_heads change:title change:layer change:head", drawControls],
    ["change:pattern change:shape change:tokens change:head change:query_start", drawPattern],
    ["change:scores change:score_names change:layer change:head", drawBadges],
  ]);
  drawControls(); drawPattern(); drawBadges();
  return off;
}

export default { render };
