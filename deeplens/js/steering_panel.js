// deeplens SteeringPanel: prompt box, feature / vector picker, coefficient slider; the model's greedy continuation
// without and with steering side by side. Every change is sent to Python as one custom message
// {type: "run", prompt, coefficient, feature, name}, debounced (300 ms), so dragging the slider runs the model once
// when it stops; Python generates on a worker thread, sets "busy" meanwhile and then "baseline_text" /
// "steered_text". A newer run, or the stop button ({type: "stop"}), cancels the running one at its next token.
// Uses the kit (kit.js, prepended by Python).

const DEBOUNCE_MS = 300;

function render({ model, el }) {
  const root = div("dl-sp");
  const title = div("dl-head");
  const prompt = make("textarea", "dl-sp-prompt");
  prompt.rows = 2;
  prompt.placeholder = "prompt…";
  const controls = div("dl-bar");
  const pickLabel = make("span");
  const feature = make("input", "dl-sp-feature");
  feature.type = "number";
  const names = make("select", "dl-sp-name");
  const coefLabel = make("span", "", "coefficient");
  const slider = make("input", "dl-sp-slider");
  slider.type = "range";
  const value = make("span", "dl-sp-value");
  const runBtn = make("button", "dl-sp-run", "run");
  const stopBtn = make("button", "dl-sp-stop", "stop");
  const busy = make("span", "dl-sp-busy", "⏳ generating…");
  controls.append(pickLabel, feature, names, coefLabel, slider, value, runBtn, busy, stopBtn);
  const hint = div("dl-sp-hint");
  const error = div("dl-sp-error");
  const cols = div("dl-sp-cols");
  const box = (cls, head) => {
    const c = div("dl-sp-box");
    const h = div("dl-head", head);
    const t = div(cls);
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
    feature.hidden = !isFeature;
    feature.min = "0"; feature.max = String(Math.max(model.get("n_features") - 1, 0));
    if (document.activeElement !== feature || feature.value === shownFeature)   // not under the user's typing
      feature.value = shownFeature = String(model.get("feature"));
    const ns = model.get("names");
    names.hidden = isFeature || ns.length <= 1;
    if (!isFeature && ns.length <= 1) pickLabel.textContent = `vector ${JSON.stringify(ns[0] || "")}`;
    names.replaceChildren();
    for (const n of ns) {
      const o = make("option", "", n);
      o.value = n;
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
      node.append(make("span", "dl-sp-prompt-text", pre), make("span", "", same), make("span", "dl-sp-diff", diff));
    };
    fill(base.text, bp, bc, "");
    fill(steer.text, sp, sc.slice(0, n), sc.slice(n));
    steer.head.textContent = `steered (coefficient ${Number(model.get("coefficient")).toFixed(2)})` +
      (model.get("runs") && bc === sc ? " — same as baseline" : "");
  }

  function drawStatus() {
    const b = model.get("busy");
    busy.hidden = !b;
    stopBtn.hidden = !b;
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

  const off = subscribe(model, [
    ["change:title change:kind change:n_features change:feature change:names change:name change:coef_min " +
     "change:coef_max change:coef_step change:coefficient change:prompt change:hint change:error", drawControls],
    ["change:baseline_text change:steered_text change:prompt change:coefficient change:runs", drawTexts],
    ["change:busy change:error", drawStatus],
  ]);
  drawControls(); drawTexts(); drawStatus();
  if (model.get("prompt") && !model.get("runs")) send();      // first display: show the texts for the prompt
  return () => { clearTimeout(timer); off(); };
}

export default { render };
