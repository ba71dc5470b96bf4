// deeplens TrainingMonitor: one small line chart per metric, redrawn in place when Python appends records.
// Steps and values arrive as float32 binary buffers; NaN marks a record that did not log that metric.

function floats(v) {
  if (!v) return new Float32Array(0);
  if (v instanceof ArrayBuffer) return new Float32Array(v.slice(0));
  if (ArrayBuffer.isView(v)) return new Float32Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
  return new Float32Array(0);
}

const SVG = "http://www.w3.org/2000/svg";   // XML namespace name, not a network import

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, String(attrs[k]));
  return e;
}

function fmt(v) { return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : v.toPrecision(4); }

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "dl-monitor";
  root.style.cssText = "font-family: sans-serif; font-size: 12px;";
  const head = document.createElement("div");
  head.style.cssText = "font-weight: bold; margin-bottom: 4px;";
  const grid = document.createElement("div");
  grid.style.cssText = "display: flex; flex-wrap: wrap; gap: 10px;";
  root.append(head, grid);
  el.appendChild(root);

  function draw() {
    const names = model.get("metrics");
    const n = model.get("n_records");
    const steps = floats(model.get("steps"));
    const vals = floats(model.get("values"));
    head.textContent = `${model.get("title")}${n ? ` — step ${steps[n - 1]}` : " — waiting for the first record"}`;
    grid.replaceChildren();
    const W = 240, H = 120, pad = 34;
    names.forEach((name, m) => {
      const xs = [], ys = [];
      for (let i = 0; i < n; i++) {
        const v = vals[m * n + i];
        if (Number.isFinite(v)) { xs.push(steps[i]); ys.push(v); }
      }
      const box = document.createElement("div");
      box.className = "dl-metric";
      box.dataset.metric = name;
      const cap = document.createElement("div");
      cap.textContent = ys.length ? `${name}: ${fmt(ys[ys.length - 1])}` : `${name}: –`;
      const s = svg("svg", { width: W, height: H, class: "dl-curve" });
      s.appendChild(svg("rect", { x: pad, y: 4, width: W - pad - 4, height: H - 22, fill: "none", stroke: "#ccc" }));
      if (ys.length) {
        const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
        const sx = (x) => pad + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (W - pad - 8) + 2;
        const sy = (y) => 6 + (y1 > y0 ? 1 - (y - y0) / (y1 - y0) : 0.5) * (H - 28);
        const pts = xs.map((x, i) => `${sx(x).toFixed(1)},${sy(ys[i]).toFixed(1)}`).join(" ");
        s.appendChild(svg("polyline", { points: pts, fill: "none", stroke: "#1e6edc", "stroke-width": 1.5 }));
        const hi = svg("text", { x: pad - 2, y: 12, "font-size": 9, "text-anchor": "end" }); hi.textContent = fmt(y1);
        const lo = svg("text", { x: pad - 2, y: H - 20, "font-size": 9, "text-anchor": "end" }); lo.textContent = fmt(y0);
        const st = svg("text", { x: W - 4, y: H - 6, "font-size": 9, "text-anchor": "end" }); st.textContent = `step ${x1}`;
        s.append(hi, lo, st);
      }
      box.append(cap, s);
      grid.appendChild(box);
    });
  }

  const events = ["change:steps", "change:values", "change:metrics", "change:n_records", "change:title"];
  for (const e of events) model.on(e, draw);
  draw();
  return () => { for (const e of events) model.off(e, draw); };
}

export default { render };
