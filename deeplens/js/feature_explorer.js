// deeplens FeatureExplorer: one SAE feature at a time over an ActivationStore.
// The picker (number box: Enter or leaving it commits; arrows) sets the "feature" trait and the search box the
// "query" trait; Python observes both and fills the other traits: the feature's activation histogram and the
// density histogram of all features arrive as float32 binary buffers; the top activating examples as token rows
// (raw tokens, drawn with visible whitespace) plus a float32 [n_examples, width] buffer of the feature's activation
// on each token (NaN: unknown); the top logit tokens as small lists. Uses the kit (kit.js, prepended by Python).

// A bar chart of `counts` over bin `edges` in an SVG; `mark` (optional) is an x value drawn as a line.
function bars(counts, edges, { width = 300, height = 110, cls = "", label = "", mark = null, log = false } = {}) {
  const s = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: `dl-bars ${cls}` });
  const n = counts.length, pad = 22, h = height - pad - 4, w = width - 8;
  const scale = (c) => (log ? Math.log10(1 + c) : c);
  let top = 0;
  for (const c of counts) top = Math.max(top, scale(c));
  for (let i = 0; i < n; i++) {
    const bh = top > 0 ? (scale(counts[i]) / top) * h : 0;
    const r = svg("rect", { x: 4 + (i * w) / n, y: 4 + h - bh, width: Math.max(w / n - 1, 1), height: bh, class: "dl-fe-bar" });
    const t = svg("title", {});
    t.textContent = `${fmt(edges[i])} … ${fmt(edges[i + 1])}: ${counts[i]}`;
    r.appendChild(t);
    s.appendChild(r);
  }
  s.appendChild(svg("line", { x1: 4, x2: 4 + w, y1: 4 + h, y2: 4 + h, class: "dl-axis" }));
  const text = (x, anchor, cls, content) => {
    const e = svg("text", { x, y: height - 6, "text-anchor": anchor, class: cls });
    e.textContent = content;
    return e;
  };
  s.append(text(4, "start", "dl-axis-label", n ? fmt(edges[0]) : ""), text(4 + w, "end", "dl-axis-label", n ? fmt(edges[n]) : ""),
           text(4 + w / 2, "middle", "dl-caption", label));
  if (mark !== null && n && Number.isFinite(mark) && edges[n] > edges[0]) {
    const x = 4 + ((mark - edges[0]) / (edges[n] - edges[0])) * w;
    s.appendChild(svg("line", { x1: x, x2: x, y1: 2, y2: 4 + h, class: "dl-mark" }));
  }
  return s;
}

function render({ model, el }) {
  const root = div("dl-fe");
  const bar = div("dl-bar");
  const title = make("span", "dl-title");
  const prev = make("button", "dl-fe-prev", "◀");
  const input = make("input", "dl-fe-feature");
  input.type = "number";
  const next = make("button", "dl-fe-next", "▶");
  const of = make("span", "dl-muted");
  const search = make("input", "dl-fe-search");
  search.type = "search"; search.placeholder = "search tokens…";
  bar.append(title, prev, input, next, of, search);
  const results = div("dl-fe-results");
  const error = div("dl-fe-error");
  const info = div("dl-fe-info");
  const charts = div("dl-fe-charts");
  const hist = div("dl-fe-hist");
  const dens = div("dl-fe-density");
  charts.append(hist, dens);
  const body = div("dl-fe-body");
  const examples = div("dl-fe-examples");
  const logits = div("dl-fe-logits");
  body.append(examples, logits);
  const tip = div("dl-fe-tip");
  root.append(bar, results, error, info, charts, body, tip);
  el.appendChild(root);

  const select = (f) => { if (Number.isInteger(f)) commit(model, "feature", f); };
  // The number box commits on Enter (Chromium fires no "change" for Enter in a number box) and on "change"
  // (leaving the box); `shown` is the number last committed or drawn, so one number is sent once.
  let shown = "";
  function commitBox() {
    if (input.value === shown) return;
    shown = input.value;
    select(input.value.trim() === "" ? NaN : Number(input.value));
  }

  function drawHeader() {
    const n = model.get("n_features");
    title.textContent = model.get("title");
    input.min = "0"; input.max = String(Math.max(n - 1, 0));
    input.value = shown = String(model.get("feature"));
    of.textContent = `of ${n}`;
    error.textContent = model.get("error");
  }

  function drawStats() {
    const s = model.get("info") || {};
    const f = model.get("feature");
    info.textContent = `feature ${f}: density ${fmt(100 * (s.density || 0))}% of ${s.n_tokens || 0} tokens · ` +
      `mean ${fmt(s.mean_activation)} · mean when active ${fmt(s.mean_active)} · max ${fmt(s.max_activation)}`;
    const counts = floats(model.get("hist")), edges = floats(model.get("hist_edges"));
    hist.replaceChildren(bars(counts, edges, { label: `activation (off on ${model.get("hist_zeros")} rows)`, log: true }));
    const dc = floats(model.get("density_hist")), de = floats(model.get("density_edges"));
    const d = s.density || 0;
    dens.replaceChildren(bars(dc, de, { cls: "dl-all", label: `log10 density, all features (${model.get("n_dead")} dead)`,
                                        mark: d > 0 ? Math.log10(d) : null }));
  }

  function drawExample(it, i, acts, n, width, hi) {
    const row = div("dl-fe-example");
    row.appendChild(make("span", "dl-fe-value", fmt(it.value, 4)));
    it.tokens.forEach((tok, j) => {
      const v = i < n && j < width ? acts[i * width + j] : NaN;
      const s = make("span", "dl-fe-tok", visible(tok));
      s.dataset.pos = String(j);
      s.dataset.ink = ink(v, 0, hi);
      s.style.background = valueColour(v, 0, hi);
      if (j === it.center) s.dataset.center = "1";
      s.addEventListener("mouseenter", () => {
        tip.textContent = `example ${it.rank} (store row ${it.row}, doc ${it.doc}): token ${JSON.stringify(tok)} ` +
          `activation ${Number.isFinite(v) ? fmt(v, 4) : "n/a"}`;
      });
      row.appendChild(s);
    });
    return row;
  }

  function drawExamples() {
    const items = model.get("examples");
    const [n, width] = model.get("example_shape");
    const acts = floats(model.get("example_acts"));
    const hi = (model.get("info") || {}).max_activation || 1;
    examples.replaceChildren(div("dl-head", "top activating examples"));
    if (!items.length) examples.appendChild(div("dl-muted", "this feature never fires on the store"));
    items.forEach((it, i) => examples.appendChild(drawExample(it, i, acts, n, width, hi)));
  }

  function drawLogits() {
    logits.replaceChildren();
    if (!model.get("has_model")) {
      logits.textContent = "pass model= to list the tokens this feature promotes";
      return;
    }
    for (const [key, head, sign] of [["top_logits", "promotes", 1], ["bottom_logits", "suppresses", -1]]) {
      const items = model.get(key);
      logits.appendChild(div("dl-head", head));
      let m = 0;
      for (const it of items) m = Math.max(m, Math.abs(it.value));
      for (const it of items) {
        const r = div("dl-fe-logit");
        const b = make("span", "dl-ramp");
        b.style.width = `${Math.round((80 * Math.abs(it.value)) / (m || 1))}px`;
        b.style.background = valueColour(sign, -1, 1);
        const t = make("span", "dl-fe-logit-text", `${visible(it.token)} ${fmt(it.value)}`);
        t.title = JSON.stringify(it.token);
        r.append(b, t);
        logits.appendChild(r);
      }
    }
  }

  function drawResults() {
    const items = model.get("search_results");
    results.replaceChildren();
    const q = model.get("query");
    if (!q) return;
    if (!items.length) { results.textContent = `no feature has ${JSON.stringify(q)} among its top tokens`; return; }
    for (const it of items) {
      const r = div("dl-fe-result", `feature ${it.feature}${it.exact ? " ★" : ""}  density ${fmt(100 * it.density)}%  ` +
        `[${it.sources.join(", ")}] ${it.tokens.slice(0, 5).map(visible).join(" ")}`);
      r.addEventListener("click", () => select(it.feature));
      results.appendChild(r);
    }
  }

  input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") commitBox(); });
  input.addEventListener("change", commitBox);
  prev.addEventListener("click", () => select(model.get("feature") - 1));
  next.addEventListener("click", () => select(model.get("feature") + 1));
  let timer = null;
  const ask = () => { clearTimeout(timer); commit(model, "query", search.value); };
  search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(ask, 250); });
  search.addEventListener("change", ask);

  const off = subscribe(model, [
    ["change:title change:feature change:n_features change:error", drawHeader],
    ["change:info change:hist change:hist_edges change:hist_zeros change:density_hist change:density_edges", drawStats],
    ["change:examples change:example_acts change:example_shape", drawExamples],
    ["change:top_logits change:bottom_logits change:has_model", drawLogits],
    ["change:search_results change:query", drawResults],
  ]);
  drawHeader(); drawStats(); drawExamples(); drawLogits(); drawResults();
  return () => { clearTimeout(timer); off(); };
}

export default { render };
