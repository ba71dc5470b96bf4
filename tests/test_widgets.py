"""Notebook widgets without a browser: state round-trips, float32 buffers, simulated frontend messages, JS modules."""
import sys, os, re, shutil, subprocess
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
from deeplens.widgets import TokenHeatmap, LogitLensView, AttentionView, TrainingMonitor, f32_array

JS = Path(W.__file__).parent / "js"
VIEWS = {TokenHeatmap: "token_heatmap.js", LogitLensView: "logit_lens.js", AttentionView: "attention.js",
         TrainingMonitor: "training_monitor.js"}

def frontend(widget, method, **data):
    "Deliver a comm message the way the browser's widget manager sends it (ipywidgets' _handle_msg)."
    widget._handle_msg({"content": {"data": {"method": method, **data}}, "buffers": []})

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
    src = (JS / name).read_text()
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
    assert str(cls._esm) == (JS / VIEWS[cls]).read_text()
    w = {TokenHeatmap: lambda: TokenHeatmap(["a"], [1.0]), TrainingMonitor: TrainingMonitor,
         AttentionView: lambda: AttentionView(torch.ones(1, 1, 1, 1), ["a"]),
         LogitLensView: None}[cls]
    if w is not None: assert w()._esm == (JS / VIEWS[cls]).read_text()    # the synced trait carries the file

def test_import_deeplens_does_not_load_widgets():
    code = "import sys, deeplens; print(sorted(m for m in ('anywidget', 'ipywidgets', 'deeplens.widgets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"

# ---------------------------------------------------------------- TokenHeatmap

def test_heatmap_state_and_buffers():
    vals = torch.randn(3, 5)
    w = TokenHeatmap(["a", " b", "\n", "c", "d"], vals, row_labels=["f0", "f1", "f2"], title="t")
    assert w.shape == [3, 5] and w.row_labels == ["f0", "f1", "f2"] and w.tokens[2] == "\\n"
    np.testing.assert_array_equal(np.frombuffer(w.values, dtype=np.float32).reshape(3, 5), vals.numpy())
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

# ---------------------------------------------------------------- LogitLensView

def test_logit_lens_view(llama):
    ids = tokens(batch=2, pos=6)
    res = logit_lens(llama, ids, top_k=4)
    w = LogitLensView(res)
    L, P = len(res.layers), len(res.positions)
    assert w.shape == [L, P] and w.layers == res.layers and w.batch_size == 2
    np.testing.assert_array_equal(f32_array(w.probs, (L, P)), res.top_probs[:, 0, :, 0].float().numpy())
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
    np.testing.assert_array_equal(f32_array(w.pattern, w.shape), cache["blocks.0.attn.hook_pattern"][0].float().numpy())
    assert "pattern" in binary_keys(w)
    # picking layer 1 in the browser: Python sends layer 1's pattern
    frontend(w, "update", state={"layer": 1, "head": 3}, buffer_paths=[])
    assert w.layer == 1 and w.head == 3
    np.testing.assert_array_equal(f32_array(w.pattern, w.shape), cache["blocks.1.attn.hook_pattern"][0].float().numpy())
    # rows of a causal pattern sum to 1 and nothing attends to the future
    p = w.pattern_array()
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(p, 1) == 0)
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
    np.testing.assert_array_equal(f32_array(w.pattern, w.shape), pat[2].numpy())
    with pytest.raises(ValueError, match="tokens"): AttentionView(pat, list("abc"))
    with pytest.raises(ValueError, match="n_heads=2"): AttentionView(pat, list("abcd"), scores={"x": torch.rand(3, 5)})
    with pytest.raises(ValueError, match="one input"): AttentionView.from_model(HookedModel(tiny_hf("gpt2")), tokens(2, 4))

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
    np.testing.assert_array_equal(loss, np.array([r["loss"] for r in train], np.float32))
    np.testing.assert_array_equal(steps, np.array([r["step"] for r in train], np.float32))
    assert {"steps", "values"} <= binary_keys(mon)
    assert f"{len(tr.history)} records" in repr(mon)

def test_training_monitor_missing_metrics():
    mon = TrainingMonitor(metrics=["loss", "eval_loss"])
    mon.update([{"step": 1, "loss": 2.0}, {"step": 1, "eval_loss": 3.0}, {"step": 2, "loss": 1.0}])
    v = f32_array(mon.values, (2, 3))
    assert np.isnan(v[0, 1]) and np.isnan(v[1, 0]) and v[1, 1] == 3.0
    with pytest.raises(TypeError, match="SAETrainer"): TrainingMonitor(object())

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
  fire(e) { for (const f of this.handlers[e] || []) f(); }
}
globalThis.document = { createElement: (t) => new Node(t), createElementNS: (_, t) => new Node(t),
                        createTextNode: (s) => new Node("#text") };
const find = (n, cls, out = []) => { if (n.className === cls) out.push(n); for (const c of n.children) find(c, cls, out); return out; };
const [file, stateJson, bufJson] = process.argv.slice(2);
const state = JSON.parse(stateJson);
for (const [k, b64] of Object.entries(JSON.parse(bufJson))) {
  const u = Buffer.from(b64, "base64"); const ab = new ArrayBuffer(u.length); new Uint8Array(ab).set(u);
  state[k] = new DataView(ab);
}
const sent = [];
const model = { get: (k) => state[k], set: (k, v) => { state[k] = v; }, save_changes: () => sent.push({ saved: true }),
                on: () => {}, off: () => {}, send: (m) => sent.push(m) };
const mod = await import(file);
const el = new Node("div");
mod.default.render({ model, el });
const report = {};
for (const cls of ["dl-token", "dl-cell", "dl-att-cell", "dl-metric", "dl-badge"]) report[cls] = find(el, cls).length;
const first = find(el, "dl-token")[0] || find(el, "dl-cell")[0];
if (first) first.fire("click");
report.sent = sent;
console.log(JSON.stringify(report));
"""

def render_in_node(widget, tmp_path):
    import base64, json
    node = shutil.which("node") or ("/usr/bin/node" if os.path.exists("/usr/bin/node") else None)
    if node is None: pytest.skip("node is not on PATH")
    state, paths, bufs = _remove_buffers(widget.get_state())
    b64 = {p[0]: base64.b64encode(bytes(b)).decode() for p, b in zip(paths, bufs)}
    mod = tmp_path / "view.mjs"; mod.write_text(widget._esm)          # the synced module text, as the browser gets it
    harness = tmp_path / "harness.mjs"; harness.write_text(NODE_HARNESS)
    r = subprocess.run([node, str(harness), mod.as_uri(), json.dumps(state), json.dumps(b64)], capture_output=True, text=True)
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
