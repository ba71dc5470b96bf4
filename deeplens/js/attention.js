// deeplens AttentionView: layer and head pickers, a query x key attention pattern, head-score badges.
// The selected layer's pattern ([n_heads, q, k]) arrives as a float32 binary buffer; picking another layer
// sets the "layer" trait and Python sends that layer's pattern. Rows are queries from position "query_start",
// columns keys from position 0.

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

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "dl-attention";
  root.style.cssText = "font-family: sans-serif; font-size: 12px;";
  const bar = document.createElement("div");
  bar.style.cssText = "display: flex; gap: 10px; align-items: center; margin-bottom: 6px;";
  const title = document.createElement("span");
  title.style.fontWeight = "bold";
  const layerSel = document.createElement("select");
  layerSel.className = "dl-layer-select";
  const headSel = document.createElement("select");
  headSel.className = "dl-head-select";
  const badges = document.createElement("span");
  badges.className = "dl-badges";
  bar.append(title, document.createTextNode("layer"), layerSel, document.createTextNode("head"), headSel, badges);
  const plot = document.createElement("div");
  plot.style.cssText = "overflow: auto; max-height: 640px;";
  const tip = document.createElement("div");
  tip.style.cssText = "min-height: 1.4em; color: #333; font-family: monospace;";
  root.append(bar, plot, tip);
  el.appendChild(root);

  function drawControls() {
    title.textContent = model.get("title");
    layerSel.replaceChildren();
    for (const l of model.get("layers")) {
      const o = document.createElement("option");
      o.value = String(l); o.textContent = String(l);
      layerSel.appendChild(o);
    }
    layerSel.value = String(model.get("layer"));
    headSel.replaceChildren();
    for (let h = 0; h < model.get("n_heads"); h++) {
      const o = document.createElement("option");
      o.value = String(h); o.textContent = String(h);
      headSel.appendChild(o);
    }
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
      const b = document.createElement("span");
      b.className = "dl-badge";
      const a = Math.min(Math.max(v, 0), 1);
      b.style.cssText = `border-radius: 8px; padding: 1px 7px; background: rgba(120, 60, 200, ${(0.15 + 0.85 * a).toFixed(3)});` +
        ` color: ${a > 0.5 ? "white" : "black"};`;
      b.textContent = `${names[i].replace("_", "-")} ${Number.isFinite(v) ? v.toFixed(2) : "n/a"}`;
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
    const w = lab + K * cell + 4, ht = lab + Q * cell + 4;
    const s = svg("svg", { width: w, height: ht, class: "dl-pattern" });
    for (let k = 0; k < K; k++) {
      const t = svg("text", { x: 0, y: 0, "font-size": 10, "font-family": "monospace",
        transform: `translate(${lab + k * cell + cell * 0.7}, ${lab - 4}) rotate(-90)`, class: "dl-att-key" });
      t.textContent = visible(toks[k]);
      s.appendChild(t);
    }
    for (let q = 0; q < Q; q++) {
      const t = svg("text", { x: lab - 4, y: lab + q * cell + cell * 0.75, "font-size": 10, "font-family": "monospace",
        "text-anchor": "end", class: "dl-att-query" });
      t.textContent = visible(toks[q0 + q]);
      s.appendChild(t);
      for (let k = 0; k < K; k++) {
        const v = pat[(h * Q + q) * K + k];
        const r = svg("rect", { x: lab + k * cell, y: lab + q * cell, width: cell - 1, height: cell - 1,
          fill: `rgba(200, 40, 40, ${Math.min(Math.max(v, 0), 1).toFixed(3)})`, stroke: "#eee", class: "dl-att-cell" });
        r.addEventListener("mouseenter", () => {
          tip.textContent = `head ${h}: ${JSON.stringify(toks[q0 + q])} (${q0 + q}) attends to ${JSON.stringify(toks[k])} (${k}): ${v.toFixed(4)}`;
        });
        s.appendChild(r);
      }
    }
    plot.replaceChildren(s);
  }

  layerSel.addEventListener("change", () => { model.set("layer", Number(layerSel.value)); model.save_changes(); });
  headSel.addEventListener("change", () => { model.set("head", Number(headSel.value)); model.save_changes(); });
  const subs = [
    ["change:layers", drawControls], ["change:n_heads", drawControls], ["change:title", drawControls],
    ["change:layer", drawControls], ["change:head", drawControls],
    ["change:pattern", drawPattern], ["change:shape", drawPattern], ["change:tokens", drawPattern], ["change:head", drawPattern],
    ["change:query_start", drawPattern],
    ["change:scores", drawBadges], ["change:score_names", drawBadges], ["change:layer", drawBadges], ["change:head", drawBadges],
  ];
  for (const [e, f] of subs) model.on(e, f);
  drawControls(); drawPattern(); drawBadges();
  return () => { for (const [e, f] of subs) model.off(e, f); };
}

export default { render };
