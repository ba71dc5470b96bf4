"""deeplens.display: every object's bundle (text, static HTML/SVG, widget view) checked against the object itself,
and the import-time / terminal guarantees."""
import html.parser, json, re, subprocess, sys, textwrap
import pytest
import torch
import nbformat
from deeplens import display as D
from deeplens import charts as C
from deeplens.model import load_model
from deeplens.cache import ActivationCache
from deeplens.store import ActivationStore
from deeplens.dataset import ActivationsDatasetBuilder
from deeplens.extractor import ExtractSingleSample
from deeplens.sae import SparseAutoencoder
from deeplens.train import SAETrainer
from deeplens.intervene import InterveneFeatures
from deeplens.lens import logit_lens
from deeplens.patching import activation_patching, logit_diff
from deeplens.attribution import DLAResult, IGResult
from deeplens import widgets as W
from tiny import text_llama, tokens, topic_store, spread_sae

D.install()                        # what `import deeplens` does
WV = D.WIDGET_VIEW
HOOK = "blocks.1.hook_resid_post"
PROMPT = "The os module provides a portable way"
VEGALITE = re.compile(r"application/vnd\.vegalite")

def marks(svg: str, kind: str) -> int:
    return len(re.findall(f'role="graphics-symbol" aria-roledescription="{kind}( mark)?"', svg))

class Elems(html.parser.HTMLParser):
    "Every element with its attributes and the text directly inside it."
    def __init__(self, s):
        super().__init__(); self.out, self.stack = [], []
        self.feed(s)
    def handle_starttag(self, tag, attrs):
        e = [tag, dict(attrs), ""]; self.out.append(e); self.stack.append(e)
    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag: pass
    def handle_data(self, data):
        if self.stack: self.stack[-1][2] += data
    def find(self, tag, cls=None):
        return [(a, t) for g, a, t in self.out if g == tag and (cls is None or cls in a.get("class", "").split())]

def kv(h: str) -> dict:
    "The key/value rows of a summary table."
    cells = [(g, t) for g, _, t in Elems(h).out if g in ("th", "td")]
    return {k: v for (gk, k), (gv, v) in zip(cells, cells[1:]) if gk == "th" and gv == "td"}

def the_widget(bundle):
    from ipywidgets.widgets.widget import _instances
    return _instances[bundle[WV]["model_id"]]

# ---------------------------------------------------------------- fixtures: real objects on tiny models

@pytest.fixture(scope="module")
def text_model(tok):
    return load_model(text_llama(tok, n_ctx=64), tokenizer=tok, verbose=False)

@pytest.fixture(scope="module")
def store(text_model, tmp_path_factory):
    return topic_store(text_model, [HOOK, "blocks.0.mlp.hook_post"], tmp_path_factory.mktemp("disp") / "store")

@pytest.fixture(scope="module")
def sae():
    return spread_sae(HOOK)

# ---------------------------------------------------------------- each object

def test_cache_summary_table(text_model):
    _, cache = text_model.run_with_cache(PROMPT, names_filter=lambda n: "resid" in n or "pattern" in n or "out" in n)
    b = cache._repr_mimebundle_()
    assert set(b) == {"text/plain", "text/html"} and b["text/plain"] == repr(cache)
    assert "ActivationCache(" in b["text/plain"] and "blocks.0.hook_resid_pre" in b["text/plain"]
    rows = [[t for g, _, t in Elems(tr).out if g in ("td", "code")] for tr in re.findall(r"<tr>.*?</tr>", b["text/html"].split("<tbody>")[1].split("</tbody>")[0])]
    names = [r[1] for r in rows]                              # td, code, td, td, td
    assert names == list(cache.keys()) and len(names) > 8      # every name, also past the repr's first 8
    for r in rows:
        t = cache[r[1]]
        assert r[2] == str(list(t.shape)) and r[3] == str(t.dtype).removeprefix("torch.")
        assert float(r[4]) == pytest.approx(t.numel() * t.element_size() / 2**20, abs=1e-3)
    distinct = {(t.data_ptr(), t.numel()): t.numel() * t.element_size() for t in cache.values()}
    total = re.search(r"<tfoot>.*?(\d+\.\d+)</th></tr></tfoot>", b["text/html"]).group(1)
    assert float(total) == pytest.approx(sum(distinct.values()) / 2**20, abs=1e-3)
    with D.use_widgets(True): assert WV not in cache._repr_mimebundle_()     # a table: nothing live

def test_extraction_heatmap(text_model):
    ex = ExtractSingleSample(text_model, layer=1)
    ext = ex.extract(PROMPT, ["blocks.0.hook_resid_post", "mlp.hook_post"])
    assert ext.hooks == ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]
    ids = text_model.to_tokens(PROMPT)
    _, cache = text_model.run_with_cache(ids)                  # independent reference: a full forward pass
    ref = torch.stack([cache[h][0].norm(dim=-1) for h in ext.hooks])
    torch.testing.assert_close(ext.norms(), ref, atol=1e-4, rtol=1e-5)
    strs = text_model.to_str_tokens(ids)
    assert ext.str_tokens == strs and len(ext) == ids.shape[1]
    b = ext._repr_mimebundle_()
    assert set(b) == {"text/plain", "text/html"} and b["text/plain"] == repr(ext)
    assert all(h in b["text/plain"] for h in ext.hooks) and f"{len(strs)} tokens" in b["text/plain"]
    spans = Elems(b["text/html"]).find("span", "dl-tok")
    assert len(spans) == 2 * len(strs)                         # one cell per token, per hook
    for a, text in spans:
        r, p = int(a["data-row"]), int(a["data-pos"])
        assert text == D.visible_whitespace(strs[p]) and float(a["data-value"]) == pytest.approx(float(ref[r, p]), rel=1e-4)
        assert a["title"].startswith(f"{p}: {strs[p]!r} = ")                 # the raw token in the tooltip
    with D.use_widgets(True): b = ext._repr_mimebundle_()
    w = the_widget(b)
    assert isinstance(w, W.TokenHeatmap) and w.shape == [2, len(strs)] and w.row_labels == ext.hooks
    torch.testing.assert_close(torch.from_numpy(W.f32_array(w.values, w.shape).copy()), ref.float(), atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="seq=3"): D.Extraction(["a", "b", "c"], {"h": torch.zeros(4, 2)})

def test_static_heatmap_shows_whitespace():
    toks = [" ", "\n", "\t", "  ", " the", "a<b"]
    h = D.heatmap_html(toks, torch.arange(6.0))
    spans = Elems(h).find("span", "dl-tok")
    assert [t for _, t in spans] == ["␣", "↵", "⇥", "␣␣", "␣the", "a<b"]     # by hand; HTML-escaped in the source
    assert "a&lt;b" in h and [a["title"].split(" = ")[0] for a, _ in spans] == [f"{p}: {t!r}" for p, t in enumerate(toks)]

def test_store_summary_and_norm_histogram(store):
    b = store._repr_mimebundle_()
    assert set(b) == {"text/plain", "text/html"} and b["text/plain"] == repr(store)
    t = kv(b["text/html"])
    assert t["rows"] == "1,200" and t[f"hook {HOOK}"] == "width 32" and t["hook blocks.0.mlp.hook_post"] == "width 64"
    svg = b["text/html"].split('<div class="deeplens-chart">')[1]
    assert svg.lstrip().startswith("<svg") and marks(svg, "bar") == 2 * 40
    spec = C.norm_histogram(store).to_dict()
    recs = spec["data"]["values"]
    for h in store.hooks:                                       # counts = torch.histogram of the norms, computed here
        norms = store.get(slice(None), h).double().norm(dim=1)
        ref, _ = torch.histogram(norms, 40, range=(float(norms.min()), float(norms.max())))
        assert [r["count"] for r in recs if r["hook"] == h] == ref.long().tolist()
    small = C.norm_histogram(store, hook=HOOK, max_rows=100)
    assert sum(r["count"] for r in small.to_dict()["data"]["values"]) == 100 and "100 of 1,200 rows" in small.text
    assert "a view of 1,200" in kv(store.subset(0, 50)._repr_mimebundle_()["text/html"])["rows"]
    with pytest.raises(ValueError, match="not in this store"): C.norm_histogram(store, hook="blocks.9.hook_resid_post")

def test_dataset_builder_display(store):
    db = ActivationsDatasetBuilder(store, hook=HOOK, splits=[0.75, 0.25], progress=False)
    b = db._repr_mimebundle_()
    t = kv(b["text/html"])
    assert b["text/plain"] == repr(db) and t["train rows"] == "900" and t["eval rows"] == "300" and t["width d"] == "32"
    recs = C.norm_histogram(db).to_dict()["data"]["values"]
    norms = store.get(db.train_indices.sort().values, HOOK).double().norm(dim=1)
    ref, _ = torch.histogram(norms, 40, range=(float(norms.min()), float(norms.max())))
    assert [r["count"] for r in recs] == ref.long().tolist()

def test_sae_summary_and_explore(sae, store, text_model):
    b = sae._repr_mimebundle_()
    assert set(b) == {"text/plain", "text/html"} and b["text/plain"] == repr(sae) and "d_sae=64" in b["text/plain"]
    t = kv(b["text/html"])
    assert (t["architecture"], t["d_in"], t["d_sae"], t["k"], t["hook"]) == ("topk", "32", "64", "4", HOOK)
    assert t["parameters"] == f"{sum(p.numel() for p in sae.parameters()):,}"
    fe = sae.explore(store, model=text_model, progress=False)
    assert isinstance(fe, W.FeatureExplorer) and fe.n_features == 64 and fe.hook == HOOK and fe.has_model
    with pytest.raises(TypeError, match="store must be an ActivationStore"): sae.explore("not a store")

def test_intervene_summary_and_panel(sae, text_model):
    iv = InterveneFeatures(sae)
    with D.use_widgets(True): b = iv._repr_mimebundle_()
    assert set(b) == {"text/plain", "text/html"} and b["text/plain"] == repr(iv)     # no model: no live panel
    t = kv(b["text/html"])
    assert t["hook"] == HOOK and "d_sae=64" in t["SAE"] and "panel(model)" in t["steer"]
    p = iv.panel(text_model, prompt="The os", max_new_tokens=3)
    assert isinstance(p, W.SteeringPanel) and p.kind == "feature" and p.n_features == 64 and p.prompt == "The os"
    assert p.hook == HOOK and p.sae is sae
    with pytest.raises(TypeError, match="HookedModel"): iv.panel("gpt2")

def test_trainer_monitor_then_curves():
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.randn(120, 16), batch_size=20)
    tr = SAETrainer(SparseAutoencoder(16, 32, k=4), train_dataloader=loader, epochs=2, lr=1e-2, save_checkpoints=False,
                    progress=False, log_steps=3, b_dec_init=None)
    assert set(tr._repr_mimebundle_()) == {"text/plain"}          # no kernel: no widget, nothing drawn yet
    with D.use_widgets(True):
        b1, b2 = tr._repr_mimebundle_(), tr._repr_mimebundle_()
    mon = the_widget(b1)
    assert isinstance(mon, W.TrainingMonitor) and tr.callbacks == [mon] and b2[WV] == b1[WV]   # attached once, reused
    tr.train()
    assert mon.n_records == len(tr.history) > 0                   # updated live through the callback
    loss = [r["loss"] for r in tr.history if "loss" in r]
    assert mon.curves()["loss"][1].tolist() == pytest.approx(loss, rel=1e-5)
    with D.use_widgets(True): b = tr._repr_mimebundle_()
    assert set(b) == {"text/plain", "image/svg+xml"} and b["text/plain"] == repr(tr)   # finished: the curves
    assert marks(b["image/svg+xml"], "line") == len(C.training_curves(tr).to_dict()["hconcat"])

def test_live_monitor_in_a_kernel(monkeypatch):
    import IPython.display
    tr = SAETrainer(SparseAutoencoder(8, 16, k=2), train_dataloader=[torch.randn(4, 8)], progress=False, save_checkpoints=False)
    assert D.live(tr) is None and tr.callbacks == []                  # no kernel: nothing attached, nothing shown
    shown = []
    monkeypatch.setattr(D, "in_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda *objs: shown.extend(objs))
    assert WV in tr._repr_mimebundle_()                               # default policy: widgets in a kernel
    m = tr.callbacks[0]
    assert D.live(tr) is m and shown == []                             # attached (and on screen) already: not shown twice
    tr2 = SAETrainer(SparseAutoencoder(8, 16, k=2), train_dataloader=[torch.randn(4, 8)], progress=False, save_checkpoints=False)
    m2 = D.live(tr2)
    assert isinstance(m2, W.TrainingMonitor) and shown == [m2] and tr2.callbacks == [m2]
    with D.use_widgets(False): assert WV not in tr2._repr_mimebundle_()
    # train() itself shows live curves in a kernel (when it shows progress): one monitor, fed by every log
    loader = torch.utils.data.DataLoader(torch.randn(60, 8), batch_size=10)
    tr3 = SAETrainer(SparseAutoencoder(8, 16, k=2), train_dataloader=loader, epochs=1, progress=True, log_steps=2,
                     save_checkpoints=False, b_dec_init=None)
    tr3.train()
    (m3,) = [cb for cb in tr3.callbacks if isinstance(cb, W.TrainingMonitor)]
    assert shown[-1] is m3 and m3.n_records == len(tr3.history) > 0

def test_lens_view_and_svg(text_model):
    lens = logit_lens(text_model, PROMPT, top_k=3)
    b = lens._repr_mimebundle_()
    assert set(b) == {"text/plain", "image/svg+xml"} and b["text/plain"] == repr(lens)
    n_cells = len(lens.layers) * int(lens.mask[0, lens.positions].sum())
    assert marks(b["image/svg+xml"], "rect") == n_cells
    with D.use_widgets(True): b = lens._repr_mimebundle_()
    assert b["image/svg+xml"] and b["text/plain"] == repr(lens)
    w = the_widget(b)
    assert isinstance(w, W.LogitLensView) and w.shape == [len(lens.layers), len(lens.positions)] == [lens.n_layers, len(lens.positions)]
    assert w.top_tokens == [lens.top_tokens[l][0][p][0] for l in range(len(lens.layers)) for p in range(len(lens.positions))]   # raw

def test_chart_objects_and_one_registry(text_model):
    clean = tokens(batch=1, pos=5, seed=3); corr = clean.clone(); corr[:, 2] = (corr[:, 2] + 7) % 97
    res = activation_patching(text_model, clean, corr, logit_diff(5, 11), sites=("resid_pre", "z"), progress=False)
    same = lambda svg: re.sub(r"gradient_\d+", "gradient", svg)          # vega numbers its gradients per render
    for obj in (res, res["resid_pre"]):
        b = obj._repr_mimebundle_()
        assert set(b) == {"text/plain", "image/svg+xml"} and same(b["image/svg+xml"]) == same(C.chart(obj).to_svg())
    # one table: a class registered here displays and charts; register_chart writes to the same table
    class Foo: __repr__ = lambda self: "Foo!"
    class SubFoo(Foo): pass
    D.register(Foo, chart=lambda o: C.topk_bars([("a", 1.0), ("b", 0.5)]))
    assert set(SubFoo()._repr_mimebundle_()) == {"text/plain", "image/svg+xml"} and C.chart(SubFoo()).text.startswith("<Chart: top-2")
    class Bar: pass
    C.register_chart(Bar, lambda o: C.topk_bars([("x", 1.0)]))          # display=False: charts, but no display
    assert "Bar" in D.registered() and not hasattr(Bar, "_repr_mimebundle_") and C.chart(Bar()).to_svg()
    class Own:
        def _repr_mimebundle_(self, include=None, exclude=None): return {"text/plain": "mine"}
    D.register(Own, html=lambda o: "<b>no</b>")
    assert "Own" not in D.install() and Own()._repr_mimebundle_() == {"text/plain": "mine"}   # a class's own display wins
    assert D.install() == D.install()                                    # idempotent
    assert set(res._repr_mimebundle_(include=["text/plain"])) == {"text/plain"}
    assert set(res._repr_mimebundle_(exclude=["image/svg+xml"])) == {"text/plain"}
    with pytest.raises(TypeError, match="takes a class"): D.register("Foo", html=str)
    with pytest.raises(ValueError, match="True, False or None"): D.use_widgets("yes")

def test_results_with_their_own_chart():
    labels = ["embed", "L0 attn", "L0 mlp", "L1 attn", "L1 mlp"]
    dla = DLAResult(labels, torch.tensor([[0.5], [-1.0], [2.0], [0.25], [-0.5]]), torch.tensor([0.1]), torch.tensor([1.35]),
                    "layer", 2, 4)
    ig = IGResult(["a", "b", "c"], torch.tensor([0.2, -0.1, 0.4]), 1.0, 0.5, 16, "zeros", "logit")
    for obj, n in ((dla, len(labels)), (ig, 3)):
        b = obj._repr_mimebundle_()
        assert set(b) == {"text/plain", "image/svg+xml"} and b["text/plain"] == repr(obj)
        assert marks(b["image/svg+xml"], "bar") == n                       # one bar per part / token
        assert not VEGALITE.search(json.dumps(b))

def test_bundles_validate_in_a_notebook(text_model, sae):
    _, cache = text_model.run_with_cache(PROMPT, names_filter=lambda n: "resid" in n)
    outs = []
    with D.use_widgets(True):
        for obj in (cache, sae, logit_lens(text_model, PROMPT, top_k=2), ExtractSingleSample(text_model, 1).extract(PROMPT)):
            outs.append(nbformat.v4.new_output("display_data", data=obj._repr_mimebundle_()))
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("display(x)", outputs=outs, execution_count=1))
    nbformat.validate(nb)
    s = nbformat.writes(nb)
    assert not VEGALITE.search(s) and s.count(WV) == 2

# ---------------------------------------------------------------- import time and plain terminals

def test_light_import_and_plain_terminal_reprs():
    """In a fresh process: `import deeplens` (torch already imported) stays under 2 s and loads no widget/chart/IPython
    module; then, with no kernel, each object's repr is informative text and its bundle (SVG left out: that needs altair) has no widget part."""
    code = textwrap.dedent(f"""
        import sys, time, torch
        t = time.perf_counter()
        import deeplens, deeplens.display as D
        D.install()
        print("IMPORT", round(time.perf_counter() - t, 3), [m for m in MODS if m in sys.modules])
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from tiny import tiny_hf, tokens
        m = deeplens.HookedModel(tiny_hf("gpt2"))
        ids = tokens(batch=1, pos=5)
        _, cache = m.run_with_cache(ids, names_filter=lambda n: "resid_post" in n)
        objs = [cache, deeplens.SparseAutoencoder(32, 64, k=4, hook_name="blocks.1.hook_resid_post"),
                deeplens.logit_lens(m, ids, top_k=2), deeplens.ExtractSingleSample(m, 1).extract(ids[0], "hook_resid_post")]
        for o in objs:
            print("=====", type(o).__name__); print(repr(o)); print("keys", sorted(o._repr_mimebundle_(exclude=["image/svg+xml"])))
        print("=====", "after"); print([k for k in MODS if k in sys.modules])
    """).replace("MODS", "('anywidget', 'ipywidgets', 'altair', 'IPython')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    head, *rest = out.split("===== ")
    dt, mods = re.search(r"IMPORT ([\d.]+) (\[.*\])", head).groups()
    print(f"import deeplens (+ display.install) with torch already imported: {dt} s")
    assert mods == "[]" and float(dt) < 2.0
    parts = dict(p.split("\n", 1) for p in rest)
    assert "ActivationCache(2 activations, batch 1 × pos 5" in parts["ActivationCache"] and "blocks.1.hook_resid_post" in parts["ActivationCache"]
    assert "SparseAutoencoder(topk, d_in=32, d_sae=64, k=4" in parts["SparseAutoencoder"]
    assert "LensResult(logit lens" in parts["LensResult"] and "top-1 prediction per layer" in parts["LensResult"]
    assert "Extraction(5 tokens × 1 hook" in parts["Extraction"] and "blocks.1.hook_resid_post [5, 32]" in parts["Extraction"]
    assert "keys ['text/html', 'text/plain']" in parts["ActivationCache"] and "keys ['text/plain']" in parts["LensResult"]
    assert WV not in out and "object at 0x" not in out
    assert parts["after"].strip() == "[]"             # no kernel: no widget part, so no widget machinery either
