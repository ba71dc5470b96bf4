// deeplens TrainingMonitor: one small line chart per metric, redrawn in place when Python appends records.
// Steps and values arrive as float32 binary buffers; NaN marks a record that did not log that metric.
// Uses the kit (kit.js, prepended by Python).

function num(v) { return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : v.toPrecision(4); }

const W = 240, H = 120, PAD = 34;

// One metric's curve as an SVG: a frame, the polyline, its highest and lowest value and its last step.
function curve(xs, ys) {
  const s = svg("svg", { width: W, height: H, class: "dl-curve" });
  s.appendChild(svg("rect", { x: PAD, y: 4, width: W - PAD - 4, height: H - 22, class: "dl-frame" }));
  if (!ys.length) return s;
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => PAD + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (W - PAD - 8) + 2;
  const sy = (y) => 6 + (y1 > y0 ? 1 - (y - y0) / (y1 - y0) : 0.5) * (H - 28);
  const pts = xs.map((x, i) => `${sx(x).toFixed(1)},${sy(ys[i]).toFixed(1)}`).join(" ");
  s.appendChild(svg("polyline", { points: pts, class: "dl-line" }));
  const label = (x, y, anchor, text) => {
    const t = svg("text", { x, y, "text-anchor": anchor });
    t.textContent = text;
    return t;
  };
  s.append(label(PAD - 2, 12, "end", num(y1)), label(PAD - 2, H - 20, "end", num(y0)), label(W - 4, H - 6, "end", `step ${x1}`));
  return s;
}

function render({ model, el }) {
  const root = div("dl-monitor");
  const head = div("dl-head");
  const grid = div("dl-grid");
  root.append(head, grid);
  el.appendChild(root);

  function draw() {
    const names = model.get("metrics");
    const n = model.get("n_records");
    const steps = floats(model.get("steps"));
    const vals = floats(model.get("values"));
    head.textContent = `${model.get("title")}${n ? ` — step ${steps[n - 1]}` : " — waiting for the first record"}`;
    grid.replaceChildren();
    names.forEach((name, m) => {
      const xs = [], ys = [];
      for (let i = 0; i < n; i++) {
        const v = vals[m * n + i];
        if (Number.isFinite(v)) { xs.push(steps[i]); ys.push(v); }
      }
      const box = div("dl-metric");
      box.dataset.metric = name;
      box.append(div("", ys.length ? `${name}: ${num(ys[ys.length - 1])}` : `${name}: –`), curve(xs, ys));
      grid.appendChild(box);
    });
  }

  const off = subscribe(model, [["change:steps change:values change:metrics change:n_records change:title", draw]]);
  draw();
  return off;
}

export default { render };
