// deeplens LogitLensView: layer x position grid of each layer's top-1 token, coloured by its probability.
// Clicking a cell asks Python for the cell's top-k (custom message "select"); the answer comes back in
// the "selected_topk" trait. Probabilities arrive as a float32 binary buffer ("probs", shape "shape").

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

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "dl-lens";
  root.style.cssText = "font-family: sans-serif; font-size: 12px;";
  const bar = document.createElement("div");
  bar.style.cssText = "margin-bottom: 4px;";
  const title = document.createElement("span");
  title.style.cssText = "font-weight: bold; margin-right: 8px;";
  const batch = document.createElement("select");
  batch.className = "dl-batch-select";
  bar.append(title, batch);
  const wrap = document.createElement("div");
  wrap.style.cssText = "overflow: auto; max-height: 520px;";
  const table = document.createElement("table");
  table.className = "dl-lens-grid";
  table.style.cssText = "border-collapse: collapse; font-family: monospace;";
  wrap.appendChild(table);
  const tip = document.createElement("div");
  tip.style.cssText = "min-height: 1.4em; color: #333; margin-top: 4px;";
  const panel = document.createElement("div");
  panel.className = "dl-topk";
  panel.style.cssText = "margin-top: 6px; font-family: monospace;";
  root.append(bar, wrap, tip, panel);
  el.appendChild(root);

  function cellStyle(p) {
    const a = Number.isFinite(p) ? Math.min(Math.max(p, 0), 1) : 0;
    return `background: rgba(30, 110, 220, ${a.toFixed(3)}); color: ${a > 0.55 ? "white" : "black"};` +
      " border: 1px solid #ddd; padding: 2px 4px; max-width: 7em; overflow: hidden; white-space: pre; cursor: pointer;";
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
    const nb = model.get("batch_size");
    batch.replaceChildren();
    batch.style.display = nb > 1 ? "" : "none";
    for (let b = 0; b < nb; b++) {
      const o = document.createElement("option");
      o.value = String(b); o.textContent = `input ${b}`;
      batch.appendChild(o);
    }
    batch.value = String(model.get("batch"));
    table.replaceChildren();
    const head = document.createElement("tr");
    const corner = document.createElement("th");
    corner.textContent = "layer";
    head.appendChild(corner);
    for (let j = 0; j < P; j++) {
      const th = document.createElement("th");
      th.className = "dl-lens-input";
      th.textContent = valid[j] ? visible(inputs[j]) : "<pad>";
      th.title = `position ${positions[j]}`;
      th.style.cssText = "white-space: pre; padding: 2px 4px; border-bottom: 1px solid #999;";
      head.appendChild(th);
    }
    table.appendChild(head);
    for (let i = L - 1; i >= 0; i--) {          // last layer on top, as the output sits above the input
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.textContent = String(layers[i]);
      th.style.cssText = "padding: 2px 6px; text-align: right;";
      tr.appendChild(th);
      for (let j = 0; j < P; j++) {
        const td = document.createElement("td");
        td.className = "dl-cell";
        td.dataset.layer = String(i);
        td.dataset.pos = String(j);
        const p = probs[i * P + j];
        if (valid[j]) {
          td.textContent = visible(top[i * P + j]);
          td.style.cssText = cellStyle(p);
          if (sel.length === 2 && sel[0] === i && sel[1] === j) td.style.outline = "2px solid #e06000";
          td.addEventListener("mouseenter", () => {
            tip.textContent = `layer ${layers[i]}, position ${positions[j]} (after ${JSON.stringify(inputs[j])}): ` +
              `top-1 ${JSON.stringify(top[i * P + j])} p=${p.toFixed(4)}`;
          });
          td.addEventListener("click", () => model.send({ type: "select", layer: i, pos: j }));
        } else {
          td.style.cssText = "border: 1px solid #eee;";
        }
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
    const h = document.createElement("div");
    h.style.cssText = "font-family: sans-serif; font-weight: bold; margin-bottom: 2px;";
    h.textContent = `layer ${d.layer}, position ${d.position} (${visible(d.input_token)}): ` +
      `KL to final ${Number(d.kl).toFixed(3)} nats, final token rank ${d.final_rank}`;
    panel.appendChild(h);
    for (const it of items) {
      const row = document.createElement("div");
      row.className = "dl-topk-item";
      row.style.cssText = "display: flex; align-items: center; gap: 6px;";
      const b = document.createElement("span");
      b.style.cssText = `display: inline-block; height: 10px; width: ${Math.round(120 * it.prob)}px; background: #1e6edc;`;
      const t = document.createElement("span");
      t.style.cssText = "white-space: pre;";
      t.textContent = `${visible(it.token)} ${it.prob.toFixed(4)}`;
      t.title = JSON.stringify(it.token);
      row.append(b, t);
      panel.appendChild(row);
    }
  }

  batch.addEventListener("change", () => { model.set("batch", Number(batch.value)); model.save_changes(); });
  const gridEvents = "change:probs change:top_tokens change:shape change:selected change:valid change:input_tokens change:batch";
  const panelEvents = "change:selected_topk change:selected_detail";
  for (const e of gridEvents.split(" ")) model.on(e, draw);
  for (const e of panelEvents.split(" ")) model.on(e, drawPanel);
  draw(); drawPanel();
  return () => {
    for (const e of gridEvents.split(" ")) model.off(e, draw);
    for (const e of panelEvents.split(" ")) model.off(e, drawPanel);
  };
}

export default { render };
