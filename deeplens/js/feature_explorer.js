// deeplens FeatureExplorer: one SAE feature at a time over an ActivationStore.
// Picker (number box: Enter or leaving it commits; arrows) and search box send custom messages ("select",
// "search") to Python, which fills the traits: the feature's activation histogram and the density histogram of all
// features arrive as float32 binary buffers; the top activating examples as token rows (raw tokens, drawn with
// visible whitespace) plus a float32 [n_examples, width] buffer of the feature's activation on each token
// (NaN: unknown); the top logit tokens as small lists.
// Hand-written ES module, no dependencies, plain DOM and SVG.

function floats(v) {
  if (!v) return new Float32Array(0);
  if (v instanceof ArrayBuffer) return new Float32Array(v.slice(0));
  if (ArrayBuffer.isView(v)) return new Float32Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
  return new Float32Array(0);
}

// Tokens are drawn with their whitespace visible, by the mapping of deeplens.display.visible_whitespace:
// a space is ␣, a newline ↵, a tab ⇥, a carriage return ␍, any other invisible character (other spaces, control
// and format characters) its \x / \u escape. tests/test_widgets.py checks this copy against the Python one.
const GLYPHS = { " ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍" };
const HIDDEN = /[\s\p{Cc}\p{Cf}]/u;

function visible(s) {
  let out = "";
  for (const c of String(s)) {
    if (Object.hasOwn(GLYPHS, c)) out += GLYPHS[c];
    else if (HIDDEN.test(c)) {
      const n = c.codePointAt(0), h = n.toString(16);
      out += n < 0x100 ? "\\x" + h.padStart(2, "0") : n < 0x10000 ? "\\u" + h.padStart(4, "0") : "\\U" + h.padStart(8, "0");
    } else out += c;
  }
  return out;
}

const SVG = "http://www.w3.org/2000/svg";   // XML namespace name, not a network import

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, String(attrs[k]));
  return e;
}

function div(cls, css) {
  const d = document.createElement("div");
  if (cls) d.className = cls;
  if (css) d.style.cssText = css;
  return d;
}

function fmt(x, digits = 3) {
  if (!Number.isFinite(x)) return "n/a";
  if (x === 0) return "0";
  const a = Math.abs(x);
  return a >= 1e4 || a < 1e-3 ? x.toExponential(digits - 1) : x.toPrecision(digits);
}

// A bar chart of `counts` over bin `edges` in an SVG; `mark` (optional) is an x value drawn as a red line.
function bars(counts, edges, { width = 300, height = 110, colour = "#1e6edc", label = "", mark = null, log = false } = {}) {
  const s = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  const n = counts.length, pad = 22, h = height - pad - 4, w = width - 8;
  const scale = (c) => (log ? Math.log10(1 + c) : c);
  let top = 0;
  for (const c of counts) top = Math.max(top, scale(c));
  for (let i = 0; i < n; i++) {
    const bh = top > 0 ? (scale(counts[i]) / top) * h : 0;
    const r = svg("rect", { x: 4 + (i * w) / n, y: 4 + h - bh, width: Math.max(w / n - 1, 1), height: bh, fill: colour });
    r.setAttribute("class", "dl-fe-bar");
    const t = svg("title", {});
    t.textContent = `${fmt(edges[i])} … ${fmt(edges[i + 1])}: ${counts[i]}`;
    r.appendChild(t);
    s.appendChild(r);
  }
  s.appendChild(svg("line", { x1: 4, x2: 4 + w, y1: 4 + h, y2: 4 + h, stroke: "#999" }));
  const lo = svg("text", { x: 4, y: height - 6, "font-size": 10, fill: "#555" });
  lo.textContent = n ? fmt(edges[0]) : "";
  const hi = svg("text", { x: 4 + w, y: height - 6, "font-size": 10, fill: "#555", "text-anchor": "end" });
  hi.textContent = n ? fmt(edges[n]) : "";
  const mid = svg("text", { x: 4 + w / 2, y: height - 6, "font-size": 10, fill: "#333", "text-anchor": "middle" });
  mid.textContent = label;
  s.append(lo, hi, mid);
  if (mark !== null && n && Number.isFinite(mark) && edges[n] > edges[0]) {
    const x = 4 + ((mark - edges[0]) / (edges[n] - edges[0])) * w;
    s.appendChild(svg("line", { x1: x, x2: x, y1: 2, y2: 4 + h, stroke: "#d62828", "stroke-width": 2 }));
  }
  return s;
}

function render({ model, el }) {
  const root = div("dl-fe", "font-family: sans-serif; font-size: 12px;");
  const bar = div("", "display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin-bottom: 6px;");
  const title = document.createElement("span");
  title.style.cssText = "font-weight: bold;";
  const prev = document.createElement("button");
  prev.textContent = "◀"; prev.className = "dl-fe-prev";
  const input = document.createElement("input");
  input.type = "number"; input.className = "dl-fe-feature"; input.style.cssText = "width: 6em;";
  const next = document.createElement("button");
  next.textContent = "▶"; next.className = "dl-fe-next";
  const of = document.createElement("span");
  of.style.cssText = "color: #666;";
  const search = document.createElement("input");
  search.type = "search"; search.className = "dl-fe-search"; search.placeholder = "search tokens…";
  search.style.cssText = "width: 12em;";
  bar.append(title, prev, input, next, of, search);
  const results = div("dl-fe-results", "max-height: 9em; overflow: auto; margin-bottom: 4px;");
  const error = div("dl-fe-error", "color: #b00020; min-height: 0;");
  const info = div("dl-fe-info", "margin: 4px 0; font-family: monospace;");
  const charts = div("", "display: flex; flex-wrap: wrap; gap: 16px;");
  const hist = div("dl-fe-hist", "");
  const dens = div("dl-fe-density", "");
  charts.append(hist, dens);
  const body = div("", "display: flex; flex-wrap: wrap; gap: 16px; margin-top: 6px; align-items: flex-start;");
  const examples = div("dl-fe-examples", "flex: 1 1 480px; min-width: 320px;");
  const logits = div("dl-fe-logits", "flex: 0 0 auto; font-family: monospace;");
  body.append(examples, logits);
  const tip = div("dl-fe-tip", "min-height: 1.4em; color: #333; font-family: monospace;");
  root.append(bar, results, error, info, charts, body, tip);
  el.appendChild(root);

  const select = (f) => { if (Number.isInteger(f)) model.send({ type: "select", feature: f }); };
  // The number box commits on Enter (Chromium fires no "change" for Enter in a number box) and on "change"
  // (leaving the box); `shown` is the number last committed or drawn, so one number is sent once.
  let shown = "";
  function commit() {
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
    dens.replaceChildren(bars(dc, de, { colour: "#888", label: `log10 density, all features (${model.get("n_dead")} dead)`,
                                        mark: d > 0 ? Math.log10(d) : null }));
  }

  function colour(v, hi) {
    if (!Number.isFinite(v) || v <= 0 || !(hi > 0)) return "transparent";
    return `rgba(255, 140, 0, ${Math.min(v / hi, 1).toFixed(3)})`;
  }

  function drawExamples() {
    const items = model.get("examples");
    const [n, width] = model.get("example_shape");
    const acts = floats(model.get("example_acts"));
    const hi = (model.get("info") || {}).max_activation || 1;
    examples.replaceChildren();
    const h = div("", "font-weight: bold; margin-bottom: 2px;");
    h.textContent = "top activating examples";
    examples.appendChild(h);
    if (!items.length) {
      const e = div("", "color: #666;");
      e.textContent = "this feature never fires on the store";
      examples.appendChild(e);
    }
    items.forEach((it, i) => {
      const row = div("dl-fe-example", "font-family: monospace; white-space: pre-wrap; line-height: 1.9; border-bottom: 1px solid #eee;");
      const val = document.createElement("span");
      val.style.cssText = "display: inline-block; width: 5em; color: #555;";
      val.textContent = fmt(it.value, 4);
      row.appendChild(val);
      it.tokens.forEach((tok, j) => {
        const s = document.createElement("span");
        s.className = "dl-fe-tok";
        const v = i < n && j < width ? acts[i * width + j] : NaN;
        s.textContent = visible(tok);
        s.dataset.pos = String(j);
        let css = `background: ${colour(v, hi)}; border-radius: 2px;`;
        if (j === it.center) { s.dataset.center = "1"; css += " outline: 2px solid #d62828; font-weight: bold;"; }
        s.style.cssText = css;
        s.addEventListener("mouseenter", () => {
          tip.textContent = `example ${it.rank} (store row ${it.row}, doc ${it.doc}): token ${JSON.stringify(tok)} ` +
            `activation ${Number.isFinite(v) ? fmt(v, 4) : "n/a"}`;
        });
        row.appendChild(s);
      });
      examples.appendChild(row);
    });
  }

  function drawLogits() {
    logits.replaceChildren();
    if (!model.get("has_model")) {
      logits.textContent = "pass model= to list the tokens this feature promotes";
      return;
    }
    for (const [key, head, c] of [["top_logits", "promotes", "#1a7f37"], ["bottom_logits", "suppresses", "#b00020"]]) {
      const items = model.get(key);
      const h = div("", "font-family: sans-serif; font-weight: bold; margin: 2px 0;");
      h.textContent = head;
      logits.appendChild(h);
      let m = 0;
      for (const it of items) m = Math.max(m, Math.abs(it.value));
      for (const it of items) {
        const r = div("dl-fe-logit", "display: flex; align-items: center; gap: 6px;");
        const b = document.createElement("span");
        b.style.cssText = `display: inline-block; height: 9px; width: ${Math.round((80 * Math.abs(it.value)) / (m || 1))}px; background: ${c};`;
        const t = document.createElement("span");
        t.style.cssText = "white-space: pre;";
        t.textContent = `${visible(it.token)} ${fmt(it.value)}`;
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
      const r = div("dl-fe-result", "cursor: pointer; padding: 1px 2px; font-family: monospace;");
      r.textContent = `feature ${it.feature}${it.exact ? " ★" : ""}  density ${fmt(100 * it.density)}%  ` +
        `[${it.sources.join(", ")}] ${it.tokens.slice(0, 5).map(visible).join(" ")}`;
      r.addEventListener("click", () => select(it.feature));
      results.appendChild(r);
    }
  }

  input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") commit(); });
  input.addEventListener("change", commit);
  prev.addEventListener("click", () => select(model.get("feature") - 1));
  next.addEventListener("click", () => select(model.get("feature") + 1));
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => model.send({ type: "search", query: search.value }), 250);
  });
  search.addEventListener("change", () => { clearTimeout(timer); model.send({ type: "search", query: search.value }); });

  const groups = [
    ["change:title change:feature change:n_features change:error", drawHeader],
    ["change:info change:hist change:hist_edges change:hist_zeros change:density_hist change:density_edges", drawStats],
    ["change:examples change:example_acts change:example_shape", drawExamples],
    ["change:top_logits change:bottom_logits change:has_model", drawLogits],
    ["change:search_results change:query", drawResults],
  ];
  for (const [evs, fn] of groups) for (const e of evs.split(" ")) model.on(e, fn);
  for (const [, fn] of groups) fn();
  return () => {
    clearTimeout(timer);
    for (const [evs, fn] of groups) for (const e of evs.split(" ")) model.off(e, fn);
  };
}

export default { render };
