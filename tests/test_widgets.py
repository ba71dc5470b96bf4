"""Notebook widgets without a browser: state round-trips, float32 buffers, simulated frontend messages, JS modules.

Float equality: `np.testing.assert_array_equal` / `==` on floats is used only where the two sides are the same
numbers by construction — a float32 buffer read back from the widget against the array it was made from (a copy,
no arithmetic), integer counts, causal-mask zeros, or two runs of the same call on the same inputs. Values from
two different computations are compared with a stated tolerance."""
import sys, os, re, shutil, subprocess, threading, warnings
sys.path.insert(0, os.path.dirname(__file__))
from pathlib import Path
import numpy as np
import pytest
import torch
from ipywidgets.widgets.widget import _remove_buffers
from tiny import tiny_hf, tokens
from deeplens.model import HookedModel
from deeplens.lens import logit_lens
from deeplens.heads import head_scores
import deeplens.widgets as W
from deeplens.widgets import TokenHeatmap, LogitLensView, AttentionView, TrainingMonitor, FeatureExplorer, SteeringPanel, f32_array
from deeplens.widgets import visible_whitespace, MAX_NEW_TOKENS
import traitlets

pytestmark = pytest.mark.usefixtures("one_thread")      # many small models on a small shared machine

JS = Path(W.__file__).parent / "js"
VIEWS = {TokenHeatmap: "token_heatmap.js", LogitLensView: "logit_lens.js", AttentionView: "attention.js",
         TrainingMonitor: "training_monitor.js", FeatureExplorer: "feature_explorer.js", SteeringPanel: "steering_panel.js"}

def frontend(widget, method, **data):
    "Deliver a comm message the way the browser's widget manager sends it (ipywidgets' _handle_msg)."
    widget._handle_msg({"content": {"data": {"method": method, **data}}, "buffers": []})

def refused(widget, **state) -> str:
    "An update from the browser the widget refuses: set_state raises, and through the comm nothing changes."
    before = {k: getattr(widget, k) for k in state}
    with pytest.raises(traitlets.TraitError, match="are Python's to set") as e: widget.set_state(state)
    frontend(widget, "update", state=state, buffer_paths=[])      # ipywidgets logs the refusal
    assert {k: getattr(widget, k) for k in state} == before
    return str(e.value)

def binary_keys(widget):
    "Trait names that travel as binary buffers in the widget's comm state."
    _, paths, bufs = _remove_buffers(widget.get_state())
    assert all(isinstance(b, (bytes, memoryview)) for b in bufs)
    return {p[0] for p in paths}

@pytest.fixture(scope="module")
def llama():
    return HookedModel(tiny_hf("llama"))

# ---------------------------------------------------------------- JavaScript modules

@pytest.mark.parametrize("name", sorted(VIEWS.values()))
def test_js_module(name, tmp_path):
    src = W._esm_of(name[:-3])                       # the palette, the kit and the view: what the browser runs
    assert re.search(r"^export\s+default\s+\{\s*render\s*\}", src, re.M) or re.search(r"^export\s+function\s+render", src, re.M)
    assert re.search(r"function\s+render\s*\(\s*\{\s*model\s*,\s*el\s*\}", src)
    # no network imports: no static import/export-from, no dynamic import() of anything
    assert not re.search(r"^\s*import\s", src, re.M)
    assert not re.search(r"\bimport\s*\(", src)
    assert not re.search(r"from\s+['\"]https?://", src)
    node = shutil.which("node") or ("/usr/bin/node" if os.path.exists("/usr/bin/node") else None)
    if node:
        mod = tmp_path / (name[:-3] + ".mjs")
        mod.write_text(src)
        r = subprocess.run([node, "--check", str(mod)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

@pytest.mark.parametrize("cls", list(VIEWS))
def test_esm_is_the_package_file(cls):
    view, kit = (JS / VIEWS[cls]).read_text(), (JS / "kit.js").read_text()
    assert cls._esm.endswith(view) and kit in cls._esm and cls._esm.startswith("// from deeplens.style\nconst PALETTE = ")
    assert cls._css == (JS / "kit.css").read_text() + "\n" + (JS / VIEWS[cls].replace(".js", ".css")).read_text()
    w = {TokenHeatmap: lambda: TokenHeatmap(["a"], [1.0]), TrainingMonitor: TrainingMonitor,
         AttentionView: lambda: AttentionView(torch.ones(1, 1, 1, 1), ["a"]),
         LogitLensView: None, FeatureExplorer: None, SteeringPanel: None}[cls]
    if w is not None: assert w()._esm == cls._esm and w()._css == cls._css    # the synced traits carry the files

def test_import_deeplens_does_not_load_widgets():
    code = "import sys, deeplens; print(sorted(m for m in ('anywidget', 'ipywidgets', 'deeplens.widgets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"

# ---------------------------------------------------------------- TokenHeatmap

def test_heatmap_state_and_buffers():
    vals = torch.randn(3, 5)
    w = TokenHeatmap(["a", " b", "\n", "c", "d"], vals, row_labels=["f0", "f1", "f2"], title="t")
    assert w.shape == [3, 5] and w.row_labels == ["f0", "f1", "f2"] and w.tokens == ["a", " b", "\n", "c", "d"]   # raw
    np.testing.assert_array_equal(np.frombuffer(w.values, dtype=np.float32).reshape(3, 5), vals.numpy())   # a copy: exact
    assert w.vmin == pytest.approx(vals.min().item()) and w.vmax == pytest.approx(vals.max().item())
    assert "values" in binary_keys(w)
    state = w.get_state()
    assert state["shape"] == [3, 5] and isinstance(state["values"], (bytes, memoryview))
    w1 = TokenHeatmap(["x", "y"], [0.5, 2.0])          # 1-D values: one row, non-negative scale from 0
    assert w1.shape == [1, 2] and w1.vmin == 0.0 and w1.vmax == 2.0

def test_heatmap_frontend_messages():
    w = TokenHeatmap(list("abcd"), np.arange(8, dtype=np.float32).reshape(2, 4))
    frontend(w, "update", state={"row": 1}, buffer_paths=[])      # the row selector
    assert w.row == 1
    seen = []
    w.on_click(lambda r, p: seen.append((r, p)))
    frontend(w, "custom", content={"type": "click", "row": 1, "pos": 3})
    assert seen == [(1, 3)] and w.selected_token == [1, 3]
    frontend(w, "custom", content={"type": "click", "row": 5, "pos": 0})   # out of range: ignored
    assert seen == [(1, 3)]
    assert "row 1" in repr(w) and "2 rows × 4 tokens" in repr(w) and "3:'d' 7" in repr(w)

def test_heatmap_errors():
    with pytest.raises(ValueError, match="n_tokens = 3"): TokenHeatmap(list("abc"), np.zeros(4))
    with pytest.raises(ValueError, match="row_labels"): TokenHeatmap(list("ab"), np.zeros((2, 2)), row_labels=["x"])
    with pytest.raises(TypeError, match="strings"): TokenHeatmap([1, 2], np.zeros(2))
    w = TokenHeatmap(list("ab"), np.zeros((2, 2)))
    with pytest.raises(Exception, match="out of range"): w.row = 2

def test_heatmap_scale_errors():
    with pytest.raises(ValueError, match="vmin=2 must be below vmax=1"): TokenHeatmap(list("ab"), [0.0, 1.0], vmin=2, vmax=1)
    with pytest.raises(ValueError, match="vmin=1 must be below vmax=1"): TokenHeatmap(list("ab"), [0.0, 1.0], vmin=1, vmax=1)
    with pytest.raises(ValueError, match="above the data's maximum 1.*pass vmax="): TokenHeatmap(list("ab"), [0.0, 1.0], vmin=5)
    with pytest.raises(ValueError, match="vmax=-1 is below 0.*pass vmin="): TokenHeatmap(list("ab"), [0.0, 1.0], vmax=-1)
    with pytest.raises(ValueError, match="finite number"): TokenHeatmap(list("ab"), [0.0, 1.0], vmin=float("nan"))
    with pytest.raises(ValueError, match="finite number"): TokenHeatmap(list("ab"), [0.0, 1.0], vmax="3")
    w = TokenHeatmap(list("ab"), [0.0, 1.0], vmin=-1, vmax=3)
    assert (w.vmin, w.vmax) == (-1.0, 3.0)
    const = TokenHeatmap(list("ab"), [0.0, 0.0])                  # constant data: an empty scale, allowed (nothing to shade)
    assert (const.vmin, const.vmax) == (0.0, 0.0)
    with pytest.raises(traitlets.TraitError, match="above vmax"): w.vmin = 4      # validated after __init__ too
    with pytest.raises(traitlets.TraitError, match="finite"): w.vmax = float("inf")
    with w.hold_trait_notifications(): w.vmin, w.vmax = 5.0, 6.0                 # both at once: checked together
    assert (w.vmin, w.vmax) == (5.0, 6.0)
    assert "may set only ['row']" in refused(w, vmin=9.0)                          # the browser sets only the row

# ---------------------------------------------------------------- LogitLensView

def test_logit_lens_view(llama):
    ids = tokens(batch=2, pos=6)
    res = logit_lens(llama, ids, top_k=4)
    w = LogitLensView(res)
    L, P = len(res.layers), len(res.positions)
    assert w.shape == [L, P] and w.layers == res.layers and w.batch_size == 2
    np.testing.assert_array_equal(f32_array(w.probs, (L, P)), res.top_probs[:, 0, :, 0].float().numpy())   # copies: exact
    np.testing.assert_array_equal(f32_array(w.kl, (L, P)), res.kl[:, 0].float().numpy())
    assert w.top_tokens == [f"<{i}>" for i in res.top_ids[:, 0, :, 0].reshape(-1).tolist()]
    assert {"probs", "kl"} <= binary_keys(w)
    # a click in the grid: Python fills that cell's top-k from the result
    frontend(w, "custom", content={"type": "select", "layer": 1, "pos": 2})
    assert w.selected == [1, 2]
    assert [d["id"] for d in w.selected_topk] == res.top_ids[1, 0, 2].tolist()
    np.testing.assert_allclose([d["prob"] for d in w.selected_topk], res.top_probs[1, 0, 2].tolist())
    assert w.selected_detail["layer"] == res.layers[1] and w.selected_detail["final_rank"] == int(res.final_rank[1, 0, 2])
    # the last layer's top-1 is the model's own prediction
    logits = llama(ids)
    assert [d["id"] for d in w.selected_topk][:1] != [] and w.top_tokens[(L - 1) * P + 2] == f"<{logits[0, 2].argmax().item()}>"
    # switching the input from the frontend rebuilds the grid and clears the selection
    frontend(w, "update", state={"batch": 1}, buffer_paths=[])
    assert w.batch == 1 and w.selected == [] and w.selected_topk == []
    np.testing.assert_array_equal(f32_array(w.probs, (L, P)), res.top_probs[:, 1, :, 0].float().numpy())
    frontend(w, "custom", content={"type": "select", "layer": 0, "pos": 5})
    assert [d["id"] for d in w.selected_topk] == res.top_ids[0, 1, 5].tolist()
    frontend(w, "custom", content={"type": "select", "layer": 9, "pos": 0})   # outside the grid: ignored
    assert w.selected == [0, 5]
    assert "may set only ['batch']" in refused(w, shape=[1, 1])
    assert repr(w).startswith("LogitLensView(2 layers × 6 positions, input 1 of 2)")
    with pytest.raises(ValueError, match="outside"): w.select(2, 0)
    with pytest.raises(TypeError, match="LensResult"): LogitLensView({"not": "a result"})

# ---------------------------------------------------------------- AttentionView

def test_attention_view_from_model(llama):
    ids = tokens(batch=1, pos=7)
    w = AttentionView.from_model(llama, ids)
    _, cache = llama.run_with_cache(ids, ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"])
    H = llama.cfg.n_heads
    assert w.layers == [0, 1] and w.n_heads == H and w.shape == [H, 7, 7] and w.layer == 0
    # from_model hooks the pattern sites, the cache may derive them: equal to rounding (softmax in float32)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    close(f32_array(w.pattern, w.shape), cache["blocks.0.attn.hook_pattern"][0].float().numpy())
    assert "pattern" in binary_keys(w)
    # picking layer 1 in the browser: Python sends layer 1's pattern
    frontend(w, "update", state={"layer": 1, "head": 3}, buffer_paths=[])
    assert w.layer == 1 and w.head == 3
    close(f32_array(w.pattern, w.shape), cache["blocks.1.attn.hook_pattern"][0].float().numpy())
    # rows of a causal pattern sum to 1 and nothing attends to the future
    p = w.pattern_array()
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(p, 1) == 0)                       # masked: softmax of -inf is exactly 0
    with pytest.raises(Exception, match="no pattern"): w.layer = 5
    assert "layer 1 head 3" in repr(w)

def test_attention_view_scores(llama):
    ids = tokens(batch=1, pos=5)
    w = AttentionView.from_model(llama, ids, layers=[1], scores=True)
    ref = head_scores(llama, seq_len=31, n_seqs=8)       # what scores=True computes on a 64-token model
    assert w.score_names == ["induction", "previous_token"] and w.scores_shape == [2, 2, llama.cfg.n_heads]
    sc = f32_array(w.scores, w.scores_shape)
    np.testing.assert_allclose(sc[0], ref["induction"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(sc[1], ref["previous_token"].numpy(), rtol=1e-6)
    assert w.layers == [1] and "induction" in repr(w)

def test_attention_view_direct_and_errors():
    pat = torch.softmax(torch.randn(3, 2, 4, 4), -1)
    w = AttentionView(pat, list("abcd"), scores={"x": torch.rand(3, 2)}, layer=2, head=1)
    np.testing.assert_array_equal(f32_array(w.pattern, w.shape), pat[2].numpy())          # a copy: exact
    with pytest.raises(ValueError, match="tokens"): AttentionView(pat, list("abc"))
    with pytest.raises(ValueError, match="n_heads=2"): AttentionView(pat, list("abcd"), scores={"x": torch.rand(3, 5)})
    with pytest.raises(ValueError, match="one input"): AttentionView.from_model(HookedModel(tiny_hf("gpt2")), tokens(2, 4))
    with pytest.raises(ValueError, match="query_start \\+ q ≤ k"): AttentionView(pat, list("abcd"), query_start=1)
    assert "may set only ['layer', 'head']" in refused(w, tokens=["x"] * 4)

def test_attention_view_heads_as_everywhere():
    "Heads follow deeplens.sites: negative counts from the end; out of range is a ValueError (a TraitError once built)."
    pat = torch.softmax(torch.randn(1, 3, 4, 4), -1)
    assert AttentionView(pat, list("abcd"), head=-1).head == 2
    with pytest.raises(ValueError, match="head 3 is out of range: the patterns have 3 heads"): AttentionView(pat, list("abcd"), head=3)
    with pytest.raises(TypeError, match="head"): AttentionView(pat, list("abcd"), head=1.5)
    w = AttentionView(pat, list("abcd"))
    w.head = -2
    assert w.head == 1
    with pytest.raises(traitlets.TraitError, match="out of range"): w.head = 3

def test_attention_view_size_limits(llama, monkeypatch):
    H, n = llama.cfg.n_heads, llama.cfg.n_layers
    long = torch.randint(0, 97, (1, 3000))
    mb = 4 * n * H * 3000 * 3000 / 2**20                            # float32 patterns of every layer, by hand
    with pytest.raises(ValueError) as e: AttentionView.from_model(llama, long)    # refused before the forward runs
    msg = str(e.value)
    assert "9,000,000 cells per head" in msg and f"{mb:,.0f} MB" in msg and "positions=slice(" in msg and "layers=" in msg
    # narrowed to the last 16 queries of a 48-token input, the view holds only those rows (and keys up to them)
    ids = tokens(batch=1, pos=48)
    full = AttentionView.from_model(llama, ids, layers=[1])
    last = AttentionView.from_model(llama, ids, layers=-1, positions=slice(-16, None))
    assert last.shape == [H, 16, 48] and last.query_start == 32 and last.layers == [1] and "from position 32" in repr(last)
    # the same forward with the same hooks, sliced afterwards: exact by construction
    np.testing.assert_array_equal(last.pattern_array(), full.pattern_array()[:, 32:, :])
    mid = AttentionView.from_model(llama, ids, layers=[0], positions=slice(10, 20))
    assert mid.shape == [H, 10, 20] and mid.tokens == [f"<{i}>" for i in ids[0, :20].tolist()]
    with pytest.raises(ValueError, match="out of range: this model has 2 layers"): AttentionView.from_model(llama, ids, layers=[2])
    with pytest.raises(TypeError, match="slice"): AttentionView.from_model(llama, ids, positions=[1, 2])
    with pytest.raises(ValueError, match="non-empty run"): AttentionView.from_model(llama, ids, positions=slice(0, 10, 2))
    # memory warning past warn_bytes (a class attribute), naming the size and how to hold less
    monkeypatch.setattr(AttentionView, "warn_bytes", 20_000)
    with pytest.warns(UserWarning, match=r"2 layer\(s\) × 4 heads × 48 queries × 48 keys .* take 0.07 MB.*layers="):
        AttentionView.from_model(llama, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AttentionView.from_model(llama, ids, positions=slice(-8, None))       # 2 × 4 × 8 × 48 × 4 = 12,288 bytes: under it
    monkeypatch.setattr(AttentionView, "max_cells", 100)
    with pytest.raises(ValueError, match="q × k = 144 cells"): AttentionView(torch.ones(1, 1, 12, 12) / 12, list("abcdefghijkl"))

# ---------------------------------------------------------------- TrainingMonitor

def test_training_monitor_with_a_real_trainer(tmp_path):
    from deeplens.sae import SparseAutoencoder
    from deeplens.train import SAETrainer
    torch.manual_seed(0)
    data = torch.randn(512, 16)
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    tr = SAETrainer(SparseAutoencoder(16, 32, k=4), train_dataloader=loader, epochs=2, save_checkpoints=False,
                    progress=False, log_steps=2, out_dir=tmp_path, device="cpu")
    mon = TrainingMonitor(tr)
    assert mon in tr.callbacks and mon.n_records == 0 and "no records" in repr(mon)
    sizes = []
    tr.callbacks.append(lambda t: sizes.append(mon.n_records))      # after the monitor, at every step
    tr.train()
    assert sizes[-1] == len(tr.history) > 0 and sizes == sorted(sizes) and len(set(sizes)) > 2   # grew in place
    train = [r for r in tr.history if "loss" in r]
    assert mon.metrics[:2] == ["loss", "fvu"]
    steps, loss = mon.curves()["loss"]
    np.testing.assert_array_equal(loss, np.array([r["loss"] for r in train], np.float32))    # the same floats, copied
    np.testing.assert_array_equal(steps, np.array([r["step"] for r in train], np.float32))
    assert {"steps", "values"} <= binary_keys(mon)
    assert f"{len(tr.history)} records" in repr(mon)

def test_training_monitor_missing_metrics():
    mon = TrainingMonitor(metrics=["loss", "eval_loss"])
    mon.update([{"step": 1, "loss": 2.0}, {"step": 1, "eval_loss": 3.0}, {"step": 2, "loss": 1.0}])
    v = f32_array(mon.values, (2, 3))
    assert np.isnan(v[0, 1]) and np.isnan(v[1, 0]) and v[1, 1] == 3.0             # a copied literal: exact
    with pytest.raises(TypeError, match="SAETrainer"): TrainingMonitor(object())

def test_training_monitor_malformed_history():
    mon = TrainingMonitor()
    # numbers of any kind are read, None is "not logged"
    mon.update([{"step": np.int64(1), "loss": np.float32(0.5), "fvu": torch.tensor(0.25)}, {"step": 2, "loss": None, "fvu": 0.2}])
    s, v = f32_array(mon.steps, (2,)), f32_array(mon.values, (2, 2))
    assert s.tolist() == [1.0, 2.0] and v[0, 0] == 0.5 and np.isnan(v[0, 1]) and v[1].tolist() == pytest.approx([0.25, 0.2])
    for bad, err, msg in [("history", TypeError, "list of records"), ({"step": 1}, TypeError, "list of records"),
                          (5, TypeError, "list of records"), ([(1, 0.5)], TypeError, "history record 0 must be a dict"),
                          ([{"step": 1, "loss": 1.0}, "x"], TypeError, "history record 1 must be a dict"),
                          ([{"step": "3", "loss": 1.0}], TypeError, r"history\[0\]\['step'\] must be a number"),
                          ([{"step": float("nan"), "loss": 1.0}], ValueError, r"history\[0\]\['step'\] must be a finite"),
                          ([{"step": 1, "loss": "0.5"}], TypeError, r"history\[0\]\['loss'\] must be a number, got str"),
                          ([{"step": 1, "loss": [0.5]}], TypeError, r"history\[0\]\['loss'\] must be a number, got list"),
                          ([{"step": 1, "loss": True}], TypeError, r"history\[0\]\['loss'\] must be a number, got bool")]:
        with pytest.raises(err, match=msg): mon.update(bad)
    assert mon.n_records == 2                                   # a refused history leaves the view as it was
    assert TrainingMonitor(metrics="loss").metrics == ["loss"]
    with pytest.raises(TypeError, match="metric names"): TrainingMonitor(metrics=[1])
    with pytest.raises(TypeError, match="metric names"): TrainingMonitor(metrics=[])
    assert "may set only []" in refused(mon, n_records=99)

# ---------------------------------------------------------------- the views' render() under node, on a minimal DOM

NODE_HARNESS = r"""
class Node {
  constructor(tag) { this.tag = tag; this.children = []; this.style = {}; this.dataset = {}; this.attrs = {};
                     this.handlers = {}; this.className = ""; this.textContent = ""; this.value = ""; }
  append(...xs) { for (const x of xs) this.children.push(typeof x === "string" ? new Node("#text") : x); }
  appendChild(x) { this.children.push(x); return x; }
  replaceChildren(...xs) { this.children = []; this.append(...xs); }
  addEventListener(e, f) { (this.handlers[e] ||= []).push(f); }
  setAttribute(k, v) { this.attrs[k] = v; if (k === "class") this.className = v; }
  fire(e, ev) { for (const f of this.handlers[e] || []) f(ev || {}); }
}
globalThis.document = { createElement: (t) => new Node(t), createElementNS: (_, t) => new Node(t),
                        createTextNode: (s) => new Node("#text") };
const find = (n, cls, out = []) => { if (n.className === cls) out.push(n); for (const c of n.children) find(c, cls, out); return out; };
const [file, stateJson, bufJson, actionsJson] = process.argv.slice(2);
const state = JSON.parse(stateJson);
for (const [k, b64] of Object.entries(JSON.parse(bufJson))) {
  const u = Buffer.from(b64, "base64"); const ab = new ArrayBuffer(u.length); new Uint8Array(ab).set(u);
  state[k] = new DataView(ab);
}
const sent = [];
const handlers = {};                      // model.on subscriptions, so an action can replay a trait change
const model = { get: (k) => state[k], set: (k, v) => { state[k] = v; sent.push({ set: { [k]: v } }); },
                save_changes: () => sent.push({ saved: true }),
                on: (e, f) => { (handlers[e] ||= []).push(f); }, off: () => {}, send: (m) => sent.push(m) };
const mod = await import(file);
const el = new Node("div");
mod.default.render({ model, el });
const report = {};
const CLASSES = ["dl-token", "dl-cell", "dl-att-cell", "dl-metric", "dl-badge", "dl-fe-hist", "dl-fe-density", "dl-fe-bar",
                 "dl-fe-example", "dl-fe-tok", "dl-fe-logits", "dl-fe-logit", "dl-fe-feature", "dl-fe-search", "dl-sp-slider",
                 "dl-sp-prompt", "dl-sp-baseline", "dl-sp-steered", "dl-sp-busy", "dl-sp-feature", "dl-sp-name",
                 "dl-lens-input", "dl-att-key", "dl-att-query", "dl-topk-item", "dl-sp-stop", "dl-fe-result"];
for (const cls of CLASSES) report[cls] = find(el, cls).length;
const actions = actionsJson ? JSON.parse(actionsJson) : null;
if (actions === null) {
  const first = find(el, "dl-token")[0] || find(el, "dl-cell")[0];
  if (first) first.fire("click");
} else {
  report.initial = sent.splice(0);
  for (const a of actions) {               // {cls, set: {prop: value}, fire: event, event: {...}, wait: ms, state: {...}}
    if (a.state) Object.assign(state, a.state);
    const n = a.cls ? find(el, a.cls)[a.index || 0] : null;
    if (n) Object.assign(n, a.set || {});
    if (a.fire) n.fire(a.fire, a.event);
    if (a.redraw) for (const f of handlers[a.redraw] || []) f();
    if (a.wait) await new Promise((r) => setTimeout(r, a.wait));
  }
}
const texts = (n, out = []) => { if (n.textContent) out.push(n.textContent); for (const c of n.children) texts(c, out); return out; };
report.text = texts(el).join(" ");
report.textOf = {};
for (const cls of CLASSES) { const n = find(el, cls)[0]; if (n) report.textOf[cls] = texts(n).join(""); }
report.textsOf = {};
for (const cls of CLASSES) report.textsOf[cls] = find(el, cls).map((n) => texts(n).join(""));
report.values = {};
for (const cls of CLASSES) { const n = find(el, cls)[0]; if (n) report.values[cls] = n.value; }
report.backgrounds = {};
for (const cls of CLASSES) report.backgrounds[cls] = find(el, cls).map((n) => n.style.background || n.attrs.fill || "");
report.sent = sent;
console.log(JSON.stringify(report));
"""

def render_in_node(widget, tmp_path, actions=None):
    import base64, json
    node = shutil.which("node") or ("/usr/bin/node" if os.path.exists("/usr/bin/node") else None)
    if node is None: pytest.skip("node is not on PATH")
    state, paths, bufs = _remove_buffers(widget.get_state())
    b64 = {p[0]: base64.b64encode(bytes(b)).decode() for p, b in zip(paths, bufs)}
    mod = tmp_path / "view.mjs"; mod.write_text(widget._esm)          # the synced module text, as the browser gets it
    harness = tmp_path / "harness.mjs"; harness.write_text(NODE_HARNESS)
    args = [json.dumps(state), json.dumps(b64)] + ([json.dumps(actions)] if actions is not None else [])
    r = subprocess.run([node, str(harness), mod.as_uri(), *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)

def test_views_render_in_node(llama, tmp_path):
    hm = render_in_node(TokenHeatmap(list("abcde"), np.random.rand(2, 5)), tmp_path)
    assert hm["dl-token"] == 5 and hm["sent"] == [{"type": "click", "row": 0, "pos": 0}]   # one cell per token
    res = logit_lens(llama, tokens(1, 6))
    lv = render_in_node(LogitLensView(res), tmp_path)
    assert lv["dl-cell"] == len(res.layers) * 6                                         # n_layers × n_positions
    assert lv["sent"][0]["type"] == "select"
    av = render_in_node(AttentionView(torch.softmax(torch.randn(2, 3, 4, 4), -1), list("abcd"),
                                      scores={"induction": torch.rand(2, 3)}), tmp_path)
    assert av["dl-att-cell"] == 16 and av["dl-badge"] == 1
    mon = TrainingMonitor(); mon.update([{"step": 1, "loss": 1.0, "fvu": 0.5}, {"step": 2, "loss": 0.5, "fvu": 0.4}])
    assert render_in_node(mon, tmp_path)["dl-metric"] == 2

# ---------------------------------------------------------------- whitespace drawn visibly, one mapping

WS = [" ", "\n", "\t", "  ", " the", "\r\n", "a b", "\xa0", "\u200b", "\x00", "café", "\U000e0001"]
VISIBLE = ["␣", "↵", "⇥", "␣␣", "␣the", "␍↵", "a␣b", "\\xa0", "\\u200b", "\\x00", "café", "\\U000e0001"]   # by hand
TOKEN_VIEWS = ["token_heatmap.js", "logit_lens.js", "attention.js", "feature_explorer.js"]

def test_visible_whitespace_mapping():
    assert [visible_whitespace(s) for s in WS] == VISIBLE
    assert W.visible_whitespace is __import__("deeplens.display", fromlist=["x"]).visible_whitespace      # one function
    with pytest.raises(TypeError, match="string"): visible_whitespace(3)

def test_every_view_has_the_same_js_mapping():
    "One copy of each helper, in the kit; no view defines its own (the kit's is checked against Python below)."
    helpers = ["floats", "visible", "valueColour", "svg", "fmt", "div", "make", "subscribe", "commit"]
    kit = (JS / "kit.js").read_text()
    assert all(re.search(rf"^function {h}\(", kit, re.M) for h in helpers) and "const GLYPHS = " in kit
    for name in VIEWS.values():
        src = (JS / name).read_text()
        copied = [h for h in helpers + ["colour"] if re.search(rf"^\s*function {h}\(", src, re.M)]
        assert not copied and "const GLYPHS" not in src, (name, copied)
        assert not re.search(r"#[0-9a-fA-F]{3,6}\b|rgba?\(", src), f"{name} sets its own colours: use the palette or the _css"
        assert "style.cssText" not in src, f"{name} has inline styles: use the view's _css"

def test_js_mapping_equals_python(tmp_path):
    # every character of the first planes where Python's and V8's Unicode tables agree (plus one astral format char)
    chars = [chr(c) for c in range(0x3400) if not 0xd800 <= c < 0xe000] + ["\U000e0001", "\U0001f600"]
    toks = ["".join(chars[i:i + 64]) for i in range(0, len(chars), 64)] + WS
    out = render_in_node(TokenHeatmap(toks, np.zeros(len(toks))), tmp_path)
    assert out["textsOf"]["dl-token"] == [visible_whitespace(t) for t in toks]

def test_views_draw_whitespace_visibly(llama, tmp_path):
    hm = render_in_node(TokenHeatmap(WS, np.arange(len(WS), dtype=np.float32)), tmp_path)
    assert hm["textsOf"]["dl-token"] == VISIBLE
    n = len(WS)
    av = AttentionView(torch.softmax(torch.randn(1, 1, n, n), -1), WS)
    assert av.tokens == WS                                                  # raw in Python
    out = render_in_node(av, tmp_path)
    assert out["textsOf"]["dl-att-key"] == VISIBLE and out["textsOf"]["dl-att-query"] == VISIBLE
    win = render_in_node(AttentionView(torch.ones(1, 1, 2, n) / n, WS, query_start=n - 2), tmp_path)
    assert win["textsOf"]["dl-att-query"] == VISIBLE[-2:]                   # rows labelled from query_start

# ---------------------------------------------------------------- FeatureExplorer and SteeringPanel (a text model, a store, an SAE)

import deeplens.features as F
from deeplens.model import load_model
from deeplens.sae import SparseAutoencoder
from deeplens.store import ActivationStore
from deeplens.intervene import InterveneFeatures
from deeplens.steering import SteeringVector, generate_with_steering
from tiny import text_llama, widen, topic_store, spread_sae

HOOK = "blocks.1.hook_resid_post"
PROMPT = "The os module provides"

@pytest.fixture(scope="module")
def text_model(tok):
    "A tiny random Llama with the default model's tokenizer; weights widened so features and steering show."
    return load_model(widen(text_llama(tok, n_ctx=64)), tokenizer=tok, verbose=False)

@pytest.fixture(scope="module")
def store(text_model, tmp_path_factory):
    return topic_store(text_model, [HOOK], tmp_path_factory.mktemp("fe") / "store")

@pytest.fixture(scope="module")
def sae():
    return spread_sae(HOOK)

@pytest.fixture(scope="module")
def ref(sae, store):
    "Feature statistics and histograms computed directly with deeplens.features (the explorer must show these)."
    st = F.feature_stats(sae, store, k=5, progress=False)
    h = F.activation_histogram(sae, store, None, bins=30, max_activation=st.max_activation, progress=False)
    live = torch.nonzero(st.density > 0.02).reshape(-1).tolist()
    return st, h, live

def counting(monkeypatch):
    "Count the store passes (feature_stats, activation_histogram) made from now on."
    calls = {"feature_stats": 0, "activation_histogram": 0}
    for name in calls:
        real = getattr(F, name)
        def wrap(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)
        monkeypatch.setattr(F, name, wrap)
    return calls

def test_feature_explorer_state_and_buffers(text_model, sae, store, ref, monkeypatch):
    st, h, live = ref
    f = live[-1]
    calls = counting(monkeypatch)
    w = FeatureExplorer(sae, store, model=text_model, feature=f, k=5, progress=False)
    assert calls == {"feature_stats": 1, "activation_histogram": 1}                # one pass each, for every feature
    assert w.feature == f and w.n_features == 64 and w.has_model
    assert w.info["density"] == pytest.approx(float(st.density[f])) and w.info["n_tokens"] == len(store)
    assert w.info["max_activation"] == pytest.approx(float(st.max_activation[f]))
    assert {"hist", "hist_edges", "density_hist", "density_edges", "example_acts"} <= binary_keys(w)
    # integer counts, from the same activation_histogram call on the same store: exact
    np.testing.assert_array_equal(f32_array(w.hist, (w.n_bins,)), h["counts"][f].numpy().astype(np.float32))
    np.testing.assert_allclose(f32_array(w.hist_edges, (w.n_bins + 1,)), h["edges"][f].numpy(), rtol=1e-6)
    assert w.hist_zeros == int(h["zeros"][f]) == len(store) - int(h["counts"][f].sum())
    d = st.density.numpy()
    dc, de = np.histogram(np.log10(d[d > 0]), bins=30)
    np.testing.assert_array_equal(f32_array(w.density_hist, (30,)), dc.astype(np.float32))      # counts, same call: exact
    np.testing.assert_allclose(f32_array(w.density_edges, (31,)), de, rtol=1e-5)
    assert w.n_dead == int((d == 0).sum())
    # the examples are deeplens.features' max-activating rows, the centre token is the activating one
    ex = F.max_activating_examples(sae, store, f, k=5, stats=st)
    assert [e["row"] for e in w.examples] == ex["row"].tolist()
    np.testing.assert_allclose([e["value"] for e in w.examples], ex["value"].tolist(), rtol=1e-6)
    acts = f32_array(w.example_acts, w.example_shape)
    assert w.example_shape[0] == len(ex) == 5
    for i, e in enumerate(w.examples):
        assert e["tokens"][e["center"]] == ex["token"].iloc[i]
        assert acts[i, e["center"]] == pytest.approx(e["value"], rel=1e-5)
        # every shaded token against a fresh forward of its whole context (NaN only where the store has no row: BOS)
        ids, p = F.context_tokens(store, e["row"])
        _, cache = text_model.run_with_cache(ids[None], names_filter=[HOOK])
        z = sae.encode(cache[HOOK][0]).detach()[:, f].numpy()
        lo = p - e["center"]
        n = len(e["tokens"])
        assert e["tokens"] == [text_model.tokenizer.decode([j]) for j in ids[lo:lo + n].tolist()]            # raw
        known = ~np.isnan(acts[i, :n])
        np.testing.assert_allclose(acts[i, :n][known], z[lo:lo + n][known], atol=1e-4)
        assert all(ids[lo + j] == text_model.tokenizer.bos_token_id for j in np.flatnonzero(~known))
        assert np.isnan(acts[i, n:]).all()
    lg = F.feature_logits(sae, text_model, [f], k=5)[0]
    assert [d["id"] for d in w.top_logits] == lg["top_tokens"].tolist()
    assert [d["id"] for d in w.bottom_logits] == lg["bottom_tokens"].tolist()
    np.testing.assert_allclose([d["value"] for d in w.top_logits], lg["top_values"].tolist(), rtol=1e-5)
    r = repr(w)
    assert r.startswith(f"FeatureExplorer(feature {f} of 64 @ {HOOK}, 1,200 tokens") and "promotes" in r
    assert repr(ex["text"].iloc[0]) in r

def test_feature_explorer_frontend(text_model, sae, store, ref, monkeypatch):
    st, h, live = ref
    w = FeatureExplorer(sae, store, model=text_model, feature=live[0], k=5, stats=st, progress=False)
    calls = counting(monkeypatch)
    frontend(w, "update", state={"feature": live[1]}, buffer_paths=[])            # the number box
    assert w.feature == live[1]
    assert [e["row"] for e in w.examples] == st.top_rows[live[1]][st.top_rows[live[1]] >= 0].tolist()
    np.testing.assert_array_equal(f32_array(w.hist, (30,)), h["counts"][live[1]].numpy().astype(np.float32))
    frontend(w, "update", state={"feature": live[2]}, buffer_paths=[])            # and again
    assert w.feature == live[2] and w.info["density"] == pytest.approx(float(st.density[live[2]]))
    w.select(live[3])                                                             # Python does what the picker does
    assert w.examples[0]["row"] == int(st.top_rows[live[3], 0])
    assert calls == {"feature_stats": 0, "activation_histogram": 0}               # no pass over the store per feature
    frontend(w, "update", state={"feature": 64}, buffer_paths=[])                 # out of range: reported, not applied
    assert w.feature == live[3] and "n_features = 64" in w.error
    with pytest.raises(t_err(), match="n_features = 64"): w.feature = -1
    with pytest.raises(TypeError, match="int"): w.select("3")
    assert "may set only ['feature', 'query']" in refused(w, n_features=3)

def t_err():
    import traitlets
    return traitlets.TraitError

def test_feature_explorer_search(text_model, sae, store, ref):
    st, _, live = ref
    w = FeatureExplorer(sae, store, model=text_model, feature=live[0], k=5, stats=st, progress=False)
    q = w.examples[0]["tokens"][w.examples[0]["center"]].strip().lower() or "the"
    frontend(w, "update", state={"query": q.upper()}, buffer_paths=[])             # typed in the view; case-insensitive
    res = w.search_results
    assert w.query == q.upper() and live[0] in [r["feature"] for r in res]
    # independently: features with a top activating token or a top logit token containing q
    dec = lambda i: text_model.tokenizer.decode([int(i)])
    expect = set()
    for f in range(64):
        rows = st.top_rows[f][st.top_rows[f] >= 0]
        toks = [dec(i) for i in store.tokens(rows).tolist()] if len(rows) else []
        toks += [dec(i) for i in F.feature_logits(sae, text_model, [f], k=5)[0]["top_tokens"]]
        if any(q in s.lower() for s in toks): expect.add(f)
    assert {r["feature"] for r in w.search(q, limit=1000)} == expect
    exact = [r["exact"] for r in res]
    assert exact == sorted(exact, reverse=True)                                  # exact token matches first
    assert all(any(q in s.lower() for s in r["tokens"]) for r in res)
    frontend(w, "update", state={"feature": res[-1]["feature"]}, buffer_paths=[])    # clicking a result
    assert w.feature == res[-1]["feature"]
    assert w.search("") == [] and w.search_results == []

def test_feature_explorer_without_model_and_errors(sae, store, ref, monkeypatch):
    st, _, live = ref
    calls = counting(monkeypatch)
    w = FeatureExplorer(sae, store, feature=live[0], k=3, stats=st, progress=False)   # stats with k=5 ≥ 3: reused
    assert calls["feature_stats"] == 0 and not w.has_model and w.top_logits == [] and len(w.examples) == 3
    assert w.search(w.examples[0]["tokens"][w.examples[0]["center"]]) != []             # examples alone are searchable
    dead = torch.nonzero(st.density == 0).reshape(-1).tolist()
    if dead:
        w.select(dead[0])
        assert w.examples == [] and w.example_shape == [0, 0] and "never fires" in repr(w)
    with pytest.raises(TypeError, match="HookedModel"): FeatureExplorer(sae, store, model="gpt2", stats=st, progress=False)
    with pytest.raises(ValueError, match="k must be"): FeatureExplorer(sae, store, k=0, stats=st, progress=False)
    with pytest.raises(t_err(), match="n_features = 64"): FeatureExplorer(sae, store, feature=64, stats=st, progress=False)
    with pytest.raises(TypeError, match="SparseAutoencoder"): FeatureExplorer(object(), store)

def record(widget):
    "Record the state messages the widget sends to the frontend, in order."
    sent = []
    widget._send = lambda msg, buffers=None: sent.append(msg)
    return sent

def test_steering_panel_features(text_model, sae, ref):
    f = ref[2][-1]
    w = SteeringPanel(text_model, InterveneFeatures(sae), prompt=PROMPT, max_new_tokens=6)
    assert w.kind == "feature" and w.n_features == 64 and w.coef_min == -10 and w.coef_max == 10
    sent = record(w)
    frontend(w, "custom", content={"type": "run", "prompt": PROMPT, "coefficient": 8.0, "feature": f})
    assert w.wait(120)                                          # generated on a worker thread
    assert w.error == "" and w.runs == 1 and not w.busy and w.coefficient == 8.0 and w.feature == f
    plain = text_model.generate(PROMPT, max_new_tokens=6)
    W_dec = sae.W_dec.detach()
    # the panel adds coefficient · W_dec[f] as `x + [c] @ W_dec[[f]]`: a one-term product, bit-equal to `x + c * W_dec[f]`,
    # so the greedy texts are equal by construction
    manual = text_model.generate(PROMPT, max_new_tokens=6, fwd_hooks=[(HOOK, lambda a, h: a + 8.0 * W_dec[f])])
    assert w.baseline_text == plain and w.steered_text == manual and manual != plain
    # the frontend saw busy=True before the texts, then busy=False
    seq = [k for m in sent for k in m["state"] if k in ("busy", "baseline_text", "steered_text")]
    busy = [m["state"]["busy"] for m in sent if "busy" in m["state"]]
    assert busy == [True, False] and seq.index("busy") < seq.index("steered_text") and seq[-1] == "busy"
    # coefficient 0: the same as plain generation, and as running the hook with 0 (which the panel skips)
    b, s = w.run(coefficient=0.0)
    zero = text_model.generate(PROMPT, max_new_tokens=6, fwd_hooks=[(HOOK, lambda a, h: a + 0.0 * W_dec[f])])
    assert b == s == plain == zero and w.steered_text == plain
    # the baseline is cached per prompt: dragging the slider only regenerates the steered side
    n = {"calls": 0}
    real = text_model.generate
    def count(*a, **kw):
        n["calls"] += 1
        return real(*a, **kw)
    text_model.generate = count
    try:
        w.run(coefficient=-5.0); w.run(coefficient=5.0)
        assert n["calls"] == 2
        w.run(prompt="Python is")
        assert n["calls"] == 4 and w.prompt == "Python is"
    finally: del text_model.generate
    top = F.feature_logits(sae, text_model, [f], 6, hook=HOOK)[0]["top_tokens"].tolist()
    assert w.hint == f"feature {f} promotes  " + "  ".join(visible_whitespace(text_model.tokenizer.decode([i])) for i in top)
    assert repr(w).startswith(f"SteeringPanel(feature {f} of 64 @ {HOOK}, coefficient 5")
    # bad input from the frontend is reported in `error`; from Python it raises
    frontend(w, "custom", content={"type": "run", "prompt": PROMPT, "coefficient": 50.0, "feature": f})
    assert "coef_range" in w.error and w.coefficient == 5.0
    frontend(w, "custom", content={"type": "run", "prompt": PROMPT, "coefficient": 1.0, "feature": 99})
    assert "n_features = 64" in w.error
    with pytest.raises(t_err(), match="coef_range"): w.run(coefficient=-11)
    with pytest.raises(ValueError, match="prompt is empty"): w.run(prompt="")
    # every control is validated whoever sets it: max_new_tokens is capped, the browser sets no trait directly
    with pytest.raises(t_err(), match=f"1..{MAX_NEW_TOKENS}.*MAX_NEW_TOKENS"): w.max_new_tokens = 10**7
    assert "may set only []" in refused(w, max_new_tokens=10**7) and "may set only []" in refused(w, coef_max=1e9)
    assert w.max_new_tokens == 6 and w.coef_max == 10
    with pytest.raises(ValueError, match="max_new_tokens must be an int"): SteeringPanel(text_model, sae, max_new_tokens=0)
    with pytest.raises(t_err(), match="MAX_NEW_TOKENS"): SteeringPanel(text_model, sae, max_new_tokens=MAX_NEW_TOKENS + 1)
    with pytest.raises(t_err(), match="finite low < high"): w.coef_min = 20
    with pytest.raises(ValueError, match="finite low < high"): SteeringPanel(text_model, sae, coef_range=(0, float("inf")))
    bare = SteeringPanel(text_model, sae, feature=f, coefficient=8.0, max_new_tokens=6)      # a bare SAE works too
    assert bare.kind == "feature" and bare.run(PROMPT) == (plain, manual)

def test_steering_panel_vectors(text_model):
    g = torch.Generator().manual_seed(3)
    vecs = {"a": SteeringVector(torch.randn(32, generator=g), layer=1), "b": SteeringVector(torch.randn(32, generator=g), layer=0)}
    w = SteeringPanel(text_model, vecs, prompt=PROMPT, coefficient=2.0, max_new_tokens=6, coef_range=(-4, 4))
    assert w.kind == "vector" and w.names == ["a", "b"] and w.name == "a" and w.coef_step == pytest.approx(0.04)
    frontend(w, "custom", content={"type": "run", "prompt": PROMPT, "coefficient": 3.0, "name": "b"})
    assert w.wait(120) and w.error == "" and w.name == "b"
    v = vecs["b"].vector
    manual = text_model.generate(PROMPT, max_new_tokens=6, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, h: a + 3.0 * v)])
    assert w.steered_text == manual == generate_with_steering(text_model, PROMPT, vecs["b"], 3.0, max_new_tokens=6)
    assert w.steered_text != w.baseline_text == text_model.generate(PROMPT, max_new_tokens=6)
    assert w.run(coefficient=0.0) == (w.baseline_text, w.baseline_text)
    frontend(w, "custom", content={"type": "run", "prompt": PROMPT, "coefficient": 1.0, "name": "zzz"})
    assert "no steering vector named 'zzz'" in w.error
    one = SteeringPanel(text_model, vecs["a"], max_new_tokens=4)
    assert one.names == ["vector"] and "SteeringVector" in one.hint and "not run yet" in repr(one)
    with pytest.raises(TypeError, match="InterveneFeatures, a SteeringVector"): SteeringPanel(text_model, {"x": 1})
    with pytest.raises(TypeError, match="HookedModel"): SteeringPanel("gpt2", vecs)
    with pytest.raises(ValueError, match="low < high"): SteeringPanel(text_model, vecs, coef_range=(1, 1))
    with pytest.raises(ValueError, match="d_model"): SteeringPanel(text_model, SteeringVector(torch.ones(8), layer=0))

def test_new_views_render_in_node(text_model, sae, store, ref, tmp_path):
    st, _, live = ref
    fe = FeatureExplorer(sae, store, model=text_model, feature=live[0], k=4, stats=st, progress=False)
    out = render_in_node(fe, tmp_path, actions=[{"cls": "dl-fe-feature", "set": {"value": str(live[1])}, "fire": "change"}])
    assert out["dl-fe-hist"] == out["dl-fe-density"] == out["dl-fe-logits"] == 1
    assert out["dl-fe-example"] == 4 and out["dl-fe-bar"] == 30 + 30 and out["dl-fe-logit"] == 8
    assert out["dl-fe-tok"] == sum(len(e["tokens"]) for e in fe.examples)
    assert out["sent"] == [{"set": {"feature": live[1]}}, {"saved": True}]       # the trait, not a custom message
    sp = SteeringPanel(text_model, InterveneFeatures(sae), prompt=PROMPT, max_new_tokens=4)
    out = render_in_node(sp, tmp_path, actions=[{"cls": "dl-sp-slider", "set": {"value": "2.5"}, "fire": "input"},
                                                 {"cls": "dl-sp-slider", "set": {"value": "3"}, "fire": "input", "wait": 450}])
    assert all(out[c] == 1 for c in ("dl-sp-slider", "dl-sp-prompt", "dl-sp-baseline", "dl-sp-steered", "dl-sp-busy", "dl-sp-feature"))
    assert out["initial"] == [{"type": "run", "prompt": PROMPT, "coefficient": 0, "feature": 0}]   # first display runs the prompt
    assert out["sent"] == [{"type": "run", "prompt": PROMPT, "coefficient": 3, "feature": 0}]      # debounced: one message
    sp.run(coefficient=4.0, feature=live[0])
    out = render_in_node(sp, tmp_path, actions=[])
    assert out["initial"] == [] and out["textOf"]["dl-sp-steered"] == sp.steered_text          # prompt + continuation
    assert out["textOf"]["dl-sp-baseline"] == sp.baseline_text != sp.steered_text

# ---------------------------------------------------------------- typed numbers act on Enter, once

ENTER = {"key": "Enter"}

def test_number_boxes_act_on_enter_once(text_model, sae, store, ref, tmp_path):
    st, _, live = ref
    fe = FeatureExplorer(sae, store, model=text_model, feature=live[0], k=4, stats=st, progress=False)
    box = "dl-fe-feature"
    out = render_in_node(fe, tmp_path, actions=[
        {"cls": box, "set": {"value": str(live[1])}, "fire": "keydown", "event": {"key": "7"}},   # typing: nothing sent
        {"cls": box, "fire": "keydown", "event": ENTER},                  # Enter: sent at once
        {"cls": box, "fire": "change"},                                    # leaving the box afterwards: not sent again
        {"state": {"feature": live[1]}, "redraw": "change:feature"},      # the kernel's answer redraws the box
        {"cls": box, "set": {"value": ""}, "fire": "change"},             # an emptied box sends nothing (not feature 0)
        {"cls": box, "set": {"value": str(live[2])}, "fire": "change"}])  # a number and leaving the box: sent
    assert out["sent"] == [{"set": {"feature": live[1]}}, {"saved": True}, {"set": {"feature": live[2]}}, {"saved": True}]
    sp = SteeringPanel(text_model, InterveneFeatures(sae), prompt=PROMPT, max_new_tokens=4)
    box = "dl-sp-feature"
    out = render_in_node(sp, tmp_path, actions=[
        {"cls": box, "set": {"value": "5"}, "fire": "keydown", "event": {"key": "5"}},
        {"cls": box, "fire": "keydown", "event": ENTER},                  # runs at once, no debounce
        {"cls": box, "fire": "change", "wait": 450},                      # blur after Enter: no second run
        {"state": {"feature": 5}, "redraw": "change:feature"},
        {"cls": box, "set": {"value": "9"}, "fire": "change", "wait": 450}])   # blur alone: one debounced run
    assert out["initial"] == [{"type": "run", "prompt": PROMPT, "coefficient": 0, "feature": 0}]
    assert out["sent"] == [{"type": "run", "prompt": PROMPT, "coefficient": 0, "feature": 5},
                           {"type": "run", "prompt": PROMPT, "coefficient": 0, "feature": 9}]
    out = render_in_node(sp, tmp_path, actions=[{"state": {"busy": True}, "redraw": "change:busy"},
                                                {"cls": "dl-sp-stop", "fire": "click"}])
    assert out["sent"] == [{"type": "stop"}]

# ---------------------------------------------------------------- whitespace in the lens grid and the explorer

def test_lens_and_explorer_draw_whitespace_visibly(text_model, sae, store, ref, tmp_path):
    st, _, live = ref
    w = LogitLensView(logit_lens(text_model, "The cat sat  on the mat \n\tbecause"))
    assert {" ", " \n", "\t"} <= set(w.input_tokens)                       # raw in Python (and this test's precondition)
    out = render_in_node(w, tmp_path, actions=[])
    assert out["textsOf"]["dl-lens-input"] == [visible_whitespace(t) for t in w.input_tokens]
    assert "␣" in out["textsOf"]["dl-lens-input"] and "⇥" in out["textsOf"]["dl-lens-input"]
    L, P = w.shape
    assert out["textsOf"]["dl-cell"] == [visible_whitespace(w.top_tokens[i * P + j]) for i in reversed(range(L)) for j in range(P)]
    w.select(L - 1, 3)
    items = render_in_node(w, tmp_path, actions=[])["textsOf"]["dl-topk-item"]
    assert len(items) == len(w.selected_topk) > 0
    assert all(t.startswith(visible_whitespace(d["token"]) + " ") for t, d in zip(items, w.selected_topk))
    # the explorer: a feature whose examples hold a token that is only whitespace (the empty outlined box of the issue)
    fe = FeatureExplorer(sae, store, model=text_model, feature=live[0], k=5, stats=st, progress=False)
    f = next((f for f in live if fe.select(f) and any(t.isspace() for e in fe.examples for t in e["tokens"])), None)
    assert f is not None, "precondition: some live feature's examples hold a whitespace-only token"
    raw = [t for e in fe.examples for t in e["tokens"]]
    out = render_in_node(fe, tmp_path, actions=[])
    assert out["textsOf"]["dl-fe-tok"] == [visible_whitespace(t) for t in raw]
    assert all(t.strip() for t in out["textsOf"]["dl-fe-tok"])              # no token draws as blank
    logits = fe.top_logits + fe.bottom_logits
    assert all(t.startswith(visible_whitespace(d["token"]) + " ") for t, d in zip(out["textsOf"]["dl-fe-logit"], logits))

# ---------------------------------------------------------------- the steering panel: checks, threads, cancelling

def test_steering_panel_checks_the_sae_width(text_model):
    with pytest.raises(ValueError, match=r"d_in=16 but blocks.1.hook_resid_post on this model has width 32"):
        SteeringPanel(text_model, SparseAutoencoder(16, 64, k=4, hook_name=HOOK))
    with pytest.raises(ValueError, match=r"d_in=48 but blocks.0.mlp.hook_post on this model has width 64"):
        SteeringPanel(text_model, SparseAutoencoder(48, 64, k=4, hook_name="blocks.0.mlp.hook_post"))
    with pytest.raises(ValueError, match=r"d_in=24 but blocks.0.attn.hook_z on this model has width 4 × 8 = 32"):
        SteeringPanel(text_model, SparseAutoencoder(24, 64, k=4, hook_name="blocks.0.attn.hook_z"))
    ok = SteeringPanel(text_model, SparseAutoencoder(32, 64, k=4, hook_name="blocks.0.attn.hook_z"))   # heads flattened
    assert ok.hook == "blocks.0.attn.hook_z" and ok.n_features == 64

class Gate:
    "Holds the `at`-th forward of the first thread that gets there until `release` is set; counts forwards per thread."
    def __init__(self, model, at: int):
        self.at, self.n, self.reached, self.release = at, {}, threading.Event(), threading.Event()
        self.handle = model.hf.get_input_embeddings().register_forward_hook(self)
    def __call__(self, module, args, out):
        me = threading.get_ident()
        self.n[me] = self.n.get(me, 0) + 1
        if self.n[me] == self.at and not self.reached.is_set():
            self.reached.set(); self.release.wait(120)

def test_steering_panel_generates_off_the_kernel_thread(text_model, sae, ref):
    f = ref[2][-1]
    N = 40
    w = SteeringPanel(text_model, InterveneFeatures(sae), prompt=PROMPT, max_new_tokens=N)
    sent = record(w)
    gate = Gate(text_model, 3)
    try:
        frontend(w, "custom", content={"type": "run", "prompt": PROMPT, "coefficient": 8.0, "feature": f})
        # the handler has returned while the generation is held at its third forward: the kernel takes messages
        assert gate.reached.wait(60) and w.busy and w.runs == 0
        frontend(w, "custom", content={"type": "run", "prompt": PROMPT, "coefficient": -8.0, "feature": f})
        assert w.busy and w.coefficient == -8.0                              # taken while the first one still runs
        gate.release.set()
        assert w.wait(120)
    finally: gate.handle.remove()
    assert not w.busy and w.error == "" and w.runs == 1
    # the first run stopped at its next token (3 forwards), the second ran whole; the view saw only the second's texts
    assert 3 in gate.n.values() and len(gate.n) == 2
    W_dec = sae.W_dec.detach()
    manual = text_model.generate(PROMPT, max_new_tokens=N, fwd_hooks=[(HOOK, lambda a, h: a - 8.0 * W_dec[f])])
    assert w.steered_text == manual and w.baseline_text == text_model.generate(PROMPT, max_new_tokens=N)
    shown = [m["state"]["steered_text"] for m in sent if "steered_text" in m["state"]]
    assert shown == [manual]
    busy = [m["state"]["busy"] for m in sent if "busy" in m["state"]]
    assert busy[0] is True and busy[-1] is False and busy.count(False) == 1  # one busy period for both requests

def test_steering_panel_stop(text_model, sae, ref):
    f = ref[2][-1]
    w = SteeringPanel(text_model, InterveneFeatures(sae), prompt=PROMPT, max_new_tokens=40)
    gate = Gate(text_model, 3)
    try:
        frontend(w, "custom", content={"type": "run", "prompt": "Python is", "coefficient": 2.0, "feature": f})
        assert gate.reached.wait(60) and w.busy
        frontend(w, "custom", content={"type": "stop"})                     # the view's stop button
        gate.release.set()
        assert w.wait(120)
    finally: gate.handle.remove()
    assert list(gate.n.values()) == [3] and not w.busy and w.runs == 0 and w.error == "" and w.steered_text == ""
    b, s = w.run(coefficient=0.0)                                            # Python runs afterwards as usual
    assert b == s == text_model.generate("Python is", max_new_tokens=40) and w.runs == 1

# ---------------------------------------------------------------- one palette: the kit's colour rule is deeplens.style's

def kit_eval(tmp_path, expr: str, data):
    "Evaluate `expr` (JavaScript, with `data` bound) after the palette and the kit, under node; → its JSON value."
    import json
    node = shutil.which("node") or ("/usr/bin/node" if os.path.exists("/usr/bin/node") else None)
    if node is None: pytest.skip("node is not on PATH")
    mod = tmp_path / "kit.mjs"
    mod.write_text(W._palette_js() + (JS / "kit.js").read_text() + f"\nconst data = {json.dumps(data)};\n"
                   f"console.log(JSON.stringify({expr}));\n")
    r = subprocess.run([node, str(mod)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)

def test_kit_colour_rule_equals_python(tmp_path):
    from deeplens.style import value_colour
    rng = np.random.default_rng(0)
    ranges = [(-1.0, 1.0), (-3.0, 0.5), (0.0, 2.0), (0.5, 4.0), (-2.0, -0.5), (-2.0, 0.0), (1.0, 1.0), (0.0, 0.0)]
    vals = [0.0, 1.0, -1.0, 0.0625, 0.1875, -0.3125, 0.9375, 0.5, 2.5, -7.0] + rng.normal(0, 1.5, 200).astype(np.float32).tolist()
    cases = [(float(v), lo, hi) for lo, hi in ranges for v in vals]
    got = kit_eval(tmp_path, "data.map(([v, lo, hi]) => valueColour(v, lo, hi))", cases)
    assert got == [value_colour(v, lo, hi) for v, lo, hi in cases]
    assert kit_eval(tmp_path, "[valueColour(NaN, 0, 1), PALETTE]", None) == [
        "transparent", {k: list(W.rgb(c)) for k, c in (("positive", W.POSITIVE), ("neutral", W.NEUTRAL), ("negative", W.NEGATIVE))}]

def test_static_live_and_style_colours_agree(tmp_path):
    "The same values get the same colour in the static HTML heatmap, the live TokenHeatmap and deeplens.style."
    from deeplens.display import heatmap_html
    from deeplens.style import value_colour
    toks = list("abcdefg")
    vals = np.array([-2.0, -0.5, 0.0, 0.25, 1.0, 3.0, np.nan], np.float32)
    static = re.findall(r'class="dl-tok"[^>]*style="background:([^"]+)"', heatmap_html(toks, vals))
    hm = TokenHeatmap(toks, vals)
    live = render_in_node(hm, tmp_path, actions=[])["backgrounds"]["dl-token"]
    rule = [value_colour(v, hm.vmin, hm.vmax) for v in vals.tolist()]
    assert static == live == rule and rule[0] == f"rgba({','.join(map(str, W.rgb(W.NEGATIVE)))},0.667)"
    assert rule[5] == f"rgba({','.join(map(str, W.rgb(W.POSITIVE)))},1.000)"      # positive: red, the same everywhere
