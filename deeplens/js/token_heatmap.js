// deeplens TokenHeatmap view: tokens coloured by one value per token.
// Hand-written ES module, no dependencies. Values arrive as a float32 binary buffer ("values", shape "shape").

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

function colour(v, lo, hi) {
  if (!Number.isFinite(v)) return "transparent";
  if (lo < 0 && hi > 0) {                      // diverging: blue below zero, red above
    const m = Math.max(-lo, hi) || 1;
    const a = Math.min(Math.abs(v) / m, 1);
    return v >= 0 ? `rgba(220, 60, 40, ${a.toFixed(3)})` : `rgba(40, 100, 220, ${a.toFixed(3)})`;
  }
  const a = hi > lo ? Math.min(Math.max((v - lo) / (hi - lo), 0), 1) : 0;
  return `rgba(255, 140, 0, ${a.toFixed(3)})`;
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "dl-heatmap";
  root.style.cssText = "font-family: monospace; font-size: 13px; line-height: 1.9; position: relative;";
  const bar = document.createElement("div");
  bar.style.cssText = "margin-bottom: 4px; font-family: sans-serif;";
  const title = document.createElement("span");
  title.style.cssText = "font-weight: bold; margin-right: 8px;";
  const select = document.createElement("select");
  select.className = "dl-row-select";
  const range = document.createElement("span");
  range.style.cssText = "margin-left: 8px; color: #666; font-size: 12px;";
  bar.append(title, select, range);
  const body = document.createElement("div");
  body.className = "dl-tokens";
  body.style.cssText = "white-space: pre-wrap;";
  const tip = document.createElement("div");
  tip.className = "dl-tip";
  tip.style.cssText = "min-height: 1.4em; color: #333; font-family: sans-serif; font-size: 12px;";
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
    select.style.display = rows > 1 ? "" : "none";
    for (let r = 0; r < rows; r++) {
      const o = document.createElement("option");
      o.value = String(r);
      o.textContent = labels[r] !== undefined ? labels[r] : `row ${r}`;
      select.appendChild(o);
    }
    select.value = String(row);
    let lo = model.get("vmin"), hi = model.get("vmax");
    range.textContent = `scale ${lo.toPrecision(3)} … ${hi.toPrecision(3)}`;
    body.replaceChildren();
    for (let p = 0; p < n; p++) {
      const v = vals[row * n + p];
      const s = document.createElement("span");
      s.className = "dl-token";
      s.dataset.pos = String(p);
      s.textContent = visible(tokens[p]);
      s.style.cssText = `background: ${colour(v, lo, hi)}; border-radius: 2px; padding: 1px 0; cursor: pointer;`;
      s.addEventListener("mouseenter", () => {
        s.style.outline = "1px solid #333";
        tip.textContent = `token ${JSON.stringify(tokens[p])}  position ${p}  value ${Number.isFinite(v) ? v.toPrecision(4) : "n/a"}`;
      });
      s.addEventListener("mouseleave", () => { s.style.outline = ""; });
      s.addEventListener("click", () => model.send({ type: "click", row: row, pos: p }));
      body.appendChild(s);
    }
  }

  select.addEventListener("change", () => {
    model.set("row", Number(select.value));
    model.save_changes();
  });
  const events = "change:tokens change:values change:shape change:row change:row_labels change:vmin change:vmax change:title";
  for (const e of events.split(" ")) model.on(e, draw);
  draw();
  return () => { for (const e of events.split(" ")) model.off(e, draw); };
}

export default { render };
