// deeplens SteeringPanel: prompt box, feature / vector picker, coefficient slider; the model's greedy continuation
// without and with steering side by side. Every change is sent to Python as one custom message
// {type: "run", prompt, coefficient, feature, name}, debounced (300 ms), so dragging the slider runs the model once
// when it stops; Python generates on a worker thread, sets "busy" meanwhile and then "baseline_text" /
// "steered_text". A newer run, or the stop button ({type: "stop"}), cancels the running one at its next token.
// Hand-written ES module, no dependencies, plain DOM.

const DEBOUNCE_MS = 300;

function div(cls, css) {
  const d = document.createElement("div");
  if (cls) d.className = cls;
  if (css) d.style.cssText = css;
  return d;
}

function render({ model, el }) {
  const root = div("dl-sp", "font-family: sans-serif; font-size: 12px; max-width: 1100px;");
  const title = div("", "font-weight: bold; margin-bottom: 4px;");
  const prompt = document.createElement("textarea");
  prompt.className = "dl-sp-prompt";
  prompt.rows = 2;
  prompt.placeholder = "prompt…";
  prompt.style.cssText = "width: 100%; box-sizing: border-box; font-family: monospace; font-size: 12px;";
  const controls = div("", "display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin: 4px 0;");
  const pickLabel = document.createElement("span");
  const feature = document.createElement("input");
  feature.type = "number"; feature.className = "dl-sp-feature"; feature.style.cssText = "width: 6em;";
  const names = document.createElement("select");
  names.className = "dl-sp-name";
  const coefLabel = document.createElement("span");
  coefLabel.textContent = "coefficient";
  const slider = document.createElement("input");
  slider.type = "range"; slider.className = "dl-sp-slider"; slider.style.cssText = "width: 260px;";
  const value = document.createElement("span");
  value.className = "dl-sp-value";
  value.style.cssText = "font-family: monospace; min-width: 4em;";
  const runBtn = document.createElement("button");
  runBtn.className = "dl-sp-run"; runBtn.textContent = "run";
  const stopBtn = document.createElement("button");
  stopBtn.className = "dl-sp-stop"; stopBtn.textContent = "stop";
  const busy = document.createElement("span");
  busy.className = "dl-sp-busy";
  busy.textContent = "⏳ generating…";
  busy.style.cssText = "color: #b36b00;";
  controls.append(pickLabel, feature, names, coefLabel, slider, value, runBtn, busy, stopBtn);
  const hint = div("dl-sp-hint", "color: #555; font-family: monospace; margin-bottom: 4px; white-space: pre-wrap;");
  const error = div("dl-sp-error", "color: #b00020;");
  const cols = div("", "display: flex; gap: 12px; align-items: stretch;");
  const box = (cls, head) => {
    const c = div("", "flex: 1 1 0; min-width: 0; border: 1px solid #ddd; border-radius: 4px; padding: 6px;");
    const h = div("", "font-weight: bold; margin-bottom: 4px;");
    h.textContent = head;
    const t = div(cls, "font-family: monospace; white-space: pre-wrap; word-break: break-word; min-height: 3em;");
    c.append(h, t);
    cols.appendChild(c);
    return { head: h, text: t };
  };
  const base = box("dl-sp-baseline", "baseline");
  const steer = box("dl-sp-steered", "steered");
  root.append(title, prompt, controls, hint, error, cols);
  el.appendChild(root);

  let timer = null;
  function send() {
    clearTimeout(timer);
    timer = null;
    const msg = { type: "run", prompt: prompt.value, coefficient: Number(slider.value) };
    if (model.get("kind") === "feature") msg.feature = Number(feature.value);
    else msg.name = names.value;
    model.send(msg);
  }
  function schedule() {
    value.textContent = Number(slider.value).toFixed(2);
    clearTimeout(timer);
    timer = setTimeout(send, DEBOUNCE_MS);
  }
  // The feature box runs at once on Enter (Chromium fires no "change" for Enter in a number box) and, debounced,
  // on "change" (leaving the box); `shownFeature` is the number last committed or drawn, so one number runs once.
  let shownFeature = "";
  function commitFeature(now) {
    if (feature.value === shownFeature) return;
    if (feature.value.trim() === "") { feature.value = shownFeature; return; }
    shownFeature = feature.value;
    if (now) send(); else schedule();
  }

  function drawControls() {
    title.textContent = model.get("title");
    const isFeature = model.get("kind") === "feature";
    pickLabel.textContent = isFeature ? "feature" : "vector";
    feature.style.display = isFeature ? "" : "none";
    feature.min = "0"; feature.max = String(Math.max(model.get("n_features") - 1, 0));
    if (document.activeElement !== feature || feature.value === shownFeature)   // not under the user's typing
      feature.value = shownFeature = String(model.get("feature"));
    const ns = model.get("names");
    names.style.display = !isFeature && ns.length > 1 ? "" : "none";
    if (!isFeature && ns.length <= 1) pickLabel.textContent = `vector ${JSON.stringify(ns[0] || "")}`;
    names.replaceChildren();
    for (const n of ns) {
      const o = document.createElement("option");
      o.value = n; o.textContent = n;
      names.appendChild(o);
    }
    names.value = model.get("name");
    slider.min = String(model.get("coef_min"));
    slider.max = String(model.get("coef_max"));
    slider.step = String(model.get("coef_step"));
    if (timer === null) {                       // don't move the slider under the user's hand
      slider.value = String(model.get("coefficient"));
      value.textContent = Number(model.get("coefficient")).toFixed(2);
    }
    if (prompt.value !== model.get("prompt") && timer === null) prompt.value = model.get("prompt");
    hint.textContent = model.get("hint");
  }

  function common(a, b) {
    let i = 0;
    while (i < a.length && i < b.length && a[i] === b[i]) i++;
    return i;
  }

  function drawTexts() {
    const p = model.get("prompt"), b = model.get("baseline_text"), s = model.get("steered_text");
    const split = (t) => (t.startsWith(p) ? [p, t.slice(p.length)] : ["", t]);
    const [bp, bc] = split(b), [sp, sc] = split(s);
    const n = common(bc, sc);
    const fill = (node, pre, same, diff) => {
      node.replaceChildren();
      const a = document.createElement("span");
      a.style.cssText = "color: #888;";
      a.textContent = pre;
      const m = document.createElement("span");
      m.textContent = same;
      const d = document.createElement("span");
      d.className = "dl-sp-diff";
      d.style.cssText = "background: rgba(255, 140, 0, 0.25);";
      d.textContent = diff;
      node.append(a, m, d);
    };
    fill(base.text, bp, bc, "");
    fill(steer.text, sp, sc.slice(0, n), sc.slice(n));
    steer.head.textContent = `steered (coefficient ${Number(model.get("coefficient")).toFixed(2)})` +
      (model.get("runs") && bc === sc ? " — same as baseline" : "");
  }

  function drawStatus() {
    const b = model.get("busy");
    busy.style.display = b ? "" : "none";
    stopBtn.style.display = b ? "" : "none";
    busy.dataset.busy = b ? "1" : "0";
    root.dataset.busy = b ? "1" : "0";
    error.textContent = model.get("error");
  }

  slider.addEventListener("input", schedule);
  prompt.addEventListener("input", schedule);
  feature.addEventListener("keydown", (ev) => { if (ev.key === "Enter") commitFeature(true); });
  feature.addEventListener("change", () => commitFeature(false));
  stopBtn.addEventListener("click", () => { clearTimeout(timer); timer = null; model.send({ type: "stop" }); });
  names.addEventListener("change", schedule);
  runBtn.addEventListener("click", send);

  const groups = [
    ["change:title change:kind change:n_features change:feature change:names change:name change:coef_min " +
     "change:coef_max change:coef_step change:coefficient change:prompt change:hint change:error", drawControls],
    ["change:baseline_text change:steered_text change:prompt change:coefficient change:runs", drawTexts],
    ["change:busy change:error", drawStatus],
  ];
  for (const [evs, fn] of groups) for (const e of evs.split(" ")) model.on(e, fn);
  for (const [, fn] of groups) fn();
  if (model.get("prompt") && !model.get("runs")) send();      // first display: show the texts for the prompt
  return () => {
    clearTimeout(timer);
    for (const [evs, fn] of groups) for (const e of evs.split(" ")) model.off(e, fn);
  };
}

export default { render };
