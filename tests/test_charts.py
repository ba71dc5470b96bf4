"""deeplens.charts: each builder's data equals the source object's numbers, SVG mark counts, offline
mimebundles (never the vega-lite mimetype), saved files without CDN URLs, nbformat-valid display outputs."""
import sys, os, json, re
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
import nbformat
import altair as alt
from tiny import tiny_hf, tokens
from deeplens.model import HookedModel
from deeplens.patching import activation_patching, logit_diff, PatchingResult, PatchingResults
from deeplens.lens import logit_lens, convergence_chart
from deeplens.heads import CHGResult
from deeplens.steering import SteeringEvaluation
from deeplens.features import FeatureStats
from deeplens.sae import SparseAutoencoder
from deeplens.train import SAETrainer
from deeplens import charts as C
from deeplens.display import visible_whitespace

VEGALITE = re.compile(r"application/vnd\.vegalite")

def marks(svg: str, kind: str) -> int:
    "Marks of one type in a vl-convert SVG: one role=graphics-symbol element each, typed by aria-roledescription."
    return len(re.findall(f'role="graphics-symbol" aria-roledescription="{kind}( mark)?"', svg))

def svg_texts(svg: str) -> list[str]:
    "The text drawn in a vl-convert SVG (axis labels, text marks), unescaped."
    import html
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]

def records(chart) -> list[dict]:
    "The data rows of a chart, inline or in the spec's top-level datasets (where altair puts shared data)."
    spec = chart.to_dict()
    return next(iter(spec["datasets"].values())) if "datasets" in spec else spec["data"]["values"]

def values(chart):
    "Inline data rows of a single-view chart spec."
    return chart.to_dict()["data"]["values"]

def sub_values(spec, i):
    s = spec["hconcat"][i]
    if "layer" in s and "data" not in s: s = s["layer"][0]
    return s["data"]["values"]

def check_bundle(b):
    assert set(b) == {"image/svg+xml", "text/plain"}, set(b)
    assert b["image/svg+xml"].lstrip().startswith("<svg") and not any(VEGALITE.search(k) for k in b)

# ---------------------------------------------------------------- fixtures: real deeplens objects

@pytest.fixture(scope="module")
def model():
    return HookedModel(tiny_hf("gpt2"))

@pytest.fixture(scope="module")
def patching(model):
    clean = tokens(batch=1, pos=5, seed=3); corr = clean.clone(); corr[:, 2] = (corr[:, 2] + 7) % 97
    return activation_patching(model, clean, corr, logit_diff(5, 11), sites=("resid_pre", "z"), progress=False)

@pytest.fixture(scope="module")
def lens(model):
    return logit_lens(model, tokens(batch=2, pos=4, seed=5), top_k=3)

@pytest.fixture(scope="module")
def chg():
    g = torch.Generator().manual_seed(0)
    gp, gm = torch.rand(2, 3, 4, generator=g), torch.rand(2, 3, 4, generator=g)
    gp[:, 0] = gm[:, 0] = float("nan")                       # layer 0 not gated
    return CHGResult(gp, gm, torch.rand(2, 3, 4, generator=g), {"plus": [[1.0]], "minus": [[1.0]], "stage1": [[1.0]]},
                     {"num_masks": 2, "l1_weight": 1.0})

@pytest.fixture(scope="module")
def steering():
    g = torch.Generator().manual_seed(1)
    per = torch.rand(4, 3, generator=g)
    return SteeringEvaluation([0.0, 2.0, 4.0, 8.0], per.mean(1), per, torch.tensor([10.0, 11.0, 13.0, 20.0]),
                              float(per[0].mean()), 10.0, [" good"])

@pytest.fixture(scope="module")
def trainer():
    torch.manual_seed(0)
    data = torch.randn(240, 16)
    loader = torch.utils.data.DataLoader(data, batch_size=20)
    tr = SAETrainer(SparseAutoencoder(16, 32, k=4), train_dataloader=loader, epochs=2, lr=1e-2, save_checkpoints=False,
                    progress=False, log_steps=3, b_dec_init=None)
    tr.train()
    return tr

# ---------------------------------------------------------------- builders: data equals source numbers

def test_patching_heatmap_data_and_marks(patching):
    r = patching["resid_pre"]
    assert r.dims == ("layer", "pos")
    c = C.patching_heatmap(r)
    rows = values(c)
    assert len(rows) == r.values.numel()
    for row in rows:   # each cell's value sits at its coordinates in PatchingResult.values
        li, pi = r.coords["layer"].index(row["layer"]), r.coords["pos"].index(row["pos"])
        assert row["value"] == pytest.approx(r.values[li, pi].item(), abs=1e-6)
    flat = [(l, p) for l in r.coords["layer"] for p in r.coords["pos"]]
    assert [(row["layer"], row["pos"]) for row in rows] == flat            # row-major, like values.flatten()
    assert [row["value"] for row in rows] == pytest.approx(r.values.flatten().tolist(), abs=1e-6)
    assert marks(c.to_svg(), "rect") == r.values.numel()
    # head × position site: one row per layer.head
    z = patching["z"]; assert z.dims == ("layer", "pos", "head")
    cz = C.patching_heatmap(z); zr = values(cz)
    assert [r_["value"] for r_ in zr] == pytest.approx(z.values.flatten().tolist(), abs=1e-6)
    assert {r_["y"] for r_ in zr} == {f"L{l}H{h}" for l in z.coords["layer"] for h in z.coords["head"]}
    assert marks(cz.to_svg(), "rect") == z.values.numel()
    # several sites side by side
    both = C.patching_heatmap(patching); assert isinstance(patching, PatchingResults)
    assert marks(both.to_svg(), "rect") == r.values.numel() + z.values.numel()
    assert C.chart(r).to_dict() == c.to_dict()

def test_patching_heatmap_layer_only_and_head_only():
    v = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    r = PatchingResult("z", v, ("layer", "head"), {"layer": [0, 1], "head": [0, 1]}, metric="m")
    rows = values(C.patching_heatmap(r))
    # float32 literals exactly representable, passed through: exact by construction
    assert [(x["layer"], x["x"], x["value"]) for x in rows] == [(0, "H0", 0.5), (0, "H1", -1.0), (1, "H0", 2.0), (1, "H1", 0.25)]
    r1 = PatchingResult("resid_pre", torch.tensor([0.1, 0.2, 0.3]), ("layer",), {"layer": [0, 2, 4]})
    c1 = C.patching_heatmap(r1)
    assert [x["value"] for x in values(c1)] == pytest.approx([0.1, 0.2, 0.3]) and marks(c1.to_svg(), "rect") == 3

def test_lens_heatmap_data_and_marks(lens):
    c = C.lens_heatmap(lens, batch=1)
    spec = c.to_dict()
    rows = spec["data"]["values"] if "data" in spec else spec["layer"][0]["data"]["values"]
    L, P = len(lens.layers), len(lens.positions)
    assert len(rows) == L * P
    for row in rows:
        li, pi = lens.layers.index(row["layer"]), lens.positions.index(row["position"])
        assert row["value"] == pytest.approx(lens.top_probs[li, 1, pi, 0].item(), abs=1e-6)
        assert row["top1"] == f"<{lens.top_ids[li, 1, pi, 0].item()}>"   # no tokenizer: ids shown as <id>
    svg = c.to_svg()
    assert marks(svg, "rect") == L * P and marks(svg, "text") == L * P
    kl = C.lens_heatmap(lens, value="kl", text=False)
    kr = kl.to_dict()["data"]["values"] if "data" in kl.to_dict() else kl.to_dict()["layer"][0]["data"]["values"]
    assert [x["value"] for x in kr] == pytest.approx(lens.kl[:, 0].flatten().tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="value must be one of"): C.lens_heatmap(lens, value="nope")

def _rgba(c: str) -> list[float]:
    "A CSS colour rgb()/rgba() as [r, g, b, alpha]."
    v = [float(x) for x in re.findall(r"[\d.]+", c)]
    return v + [1.0] * (4 - len(v))

def test_lens_heatmap_uses_the_palette(lens):
    "The chart shades each cell as the live LogitLensView does: deeplens.style.value_colour(p, 0, 1), transparent to POSITIVE."
    from deeplens.style import value_colour, POSITIVE, rgb
    rows = C.lens_records(lens)
    fills = re.findall(r'aria-roledescription="rect mark"[^>]*fill="([^"]+)"', C.lens_heatmap(lens, text=False).to_svg())
    assert len(fills) == len(rows) > 0
    for f, r in zip(fills, rows):
        assert _rgba(f) == pytest.approx(_rgba(value_colour(r["value"], 0, 1)), abs=2e-3)
    assert {tuple(_rgba(f)[:3]) for f in fills} == {tuple(map(float, rgb(POSITIVE)))}     # one hue: the palette's positive end

def test_gate_heatmaps(chg):
    c = C.gate_heatmaps(chg)
    spec = c.to_dict()
    rows = spec["data"]["values"] if "data" in spec else sub_values(spec, 0)
    assert len(rows) == 2 * 4                                         # layer 0 is NaN (ungated) and left out
    for r in rows:
        assert r["G_plus"] == pytest.approx(chg.G_plus_all[:, r["layer"], r["head"]].mean().item(), abs=1e-6)
        assert r["G_minus"] == pytest.approx(chg.G_minus_all[:, r["layer"], r["head"]].mean().item(), abs=1e-6)
        p, m = r["G_plus"], r["G_minus"]
        assert r["role"] == ("interfering" if p < 0.5 else "facilitating" if m >= 0.5 else "irrelevant")
    assert marks(c.to_svg(), "rect") == 3 * 8

def test_steering_sweep(steering):
    c = C.steering_sweep(steering)
    spec = c.to_dict()
    layer = spec["hconcat"][0]["layer"]
    per, mean = layer[0]["data"]["values"], layer[1]["data"]["values"]
    assert [r["target_prob"] for r in mean] == pytest.approx(steering.target_prob.tolist())
    assert [r["target_prob"] for r in per] == pytest.approx(steering.target_prob_per_prompt.flatten().tolist())
    assert layer[2]["data"]["values"][0]["baseline"] == pytest.approx(steering.baseline_prob)
    assert [r["ratio"] for r in spec["hconcat"][1]["data"]["values"]] == pytest.approx(steering.perplexity_ratio.tolist())
    svg = c.to_svg()
    assert marks(svg, "circle") == 12 and marks(svg, "line") == 2
    # no neutral texts: perplexity is nan, the cost panel is left out
    nan = SteeringEvaluation(steering.coefficients, steering.target_prob, steering.target_prob_per_prompt,
                             torch.full((4,), float("nan")), steering.baseline_prob, float("nan"), [" good"])
    assert len(C.steering_sweep(nan).to_dict()["hconcat"]) == 1

def test_training_curves(trainer):
    hist = [r for r in trainer.history if "fvu" in r]
    assert len(hist) >= 3
    c = C.training_curves(trainer)
    spec = c.to_dict()
    names = [p["title"] for p in spec["hconcat"]]
    assert names == ["loss", "fvu", "l0", "dead_frac"]
    for i, m in enumerate(names):
        got = spec["hconcat"][i]["data"]["values"]
        want = [r for r in trainer.history if m in r]
        assert [(g["step"], g["tokens"]) for g in got] == [(r["step"], r["tokens"]) for r in want]
        assert [g["value"] for g in got] == pytest.approx([r[m] for r in want])
    assert marks(c.to_svg(), "line") == 4
    with pytest.raises(ValueError, match="history is empty"): C.training_curves([])
    with pytest.raises(ValueError, match=r"not in the history"): C.training_curves(trainer, metrics=["loss", "bogus"])

def test_density_histogram():
    d = torch.tensor([0.0, 0.0, 1e-5, 3e-4, 1e-3, 2e-3, 1e-2, 0.5, 1.0])
    fs = FeatureStats("h", 1000, d, d, d, d, torch.zeros(9, 1), torch.zeros(9, 1, dtype=torch.long))
    c = C.density_histogram(fs, bins=5)
    rows = values(c)
    live = d[d > 0].double().log10()
    ref, edges = torch.histogram(live, 5)                      # independent: same numbers from torch on log10
    assert [r["count"] for r in rows] == ref.long().tolist() and sum(r["count"] for r in rows) == 7
    assert [r["lo"] for r in rows] == pytest.approx(edges[:-1].tolist())
    svg = c.to_svg(); assert "2 dead of 9" in svg and marks(svg, "bar") == 5
    with pytest.raises(ValueError, match=r"\[0, 1\]"): C.density_histogram(torch.tensor([2.0]))

def test_feature_histogram_from_dict_and_tensor():
    h = {"features": [3, 7], "counts": torch.tensor([[4, 0, 1], [2, 2, 2]]), "edges": torch.tensor([[0, 1, 2, 3.0], [0, .5, 1, 1.5]]),
         "zeros": torch.tensor([95, 94])}
    c = C.feature_histogram(h)
    rows = values(c)
    # bin edges given as exactly representable numbers and integer counts, copied into the records: exact
    assert [(r["feature"], r["lo"], r["hi"], r["count"]) for r in rows] == [
        (3, 0, 1, 4), (3, 1, 2, 0), (3, 2, 3, 1), (7, 0, .5, 2), (7, .5, 1, 2), (7, 1, 1.5, 2)]
    assert marks(c.to_svg(), "bar") == 6
    one = C.feature_histogram(h, feature=7)
    assert [r["count"] for r in values(one)] == [2, 2, 2] and "94 zero" in one.to_svg()
    import pandas as pd
    from deeplens.features import FeatureSummary         # feature_summary keeps one feature's 1-d histogram
    s = FeatureSummary(7, "blocks.0.hook_resid_post", 100, .06, .1, 1., 1.5,
                       {"counts": h["counts"][1], "edges": h["edges"][1], "zeros": 94}, pd.DataFrame(), [], [])
    assert values(C.feature_histogram(s)) == values(one) and values(C.chart(s)) == values(one)
    acts = torch.tensor([0, 0, 0, 0.5, 1.5, 2.5, 2.6, 0])
    t = C.feature_histogram(acts, bins=2)
    assert [r["count"] for r in values(t)] == [2, 2] and "4 zero" in t.to_svg()   # 0.5..1.55 and 1.55..2.6

def test_topk_bars(model):
    pairs = [(" Paris", 0.6), (" London", 0.2), ("\n", 0.1)]
    c = C.topk_bars(pairs)
    assert [(r["token"], r["value"]) for r in values(c)] == pairs                # the same Python floats: exact
    assert marks(c.to_svg(), "bar") == 3
    logits = torch.randn(1, 3, 97, generator=torch.Generator().manual_seed(2))
    t = C.topk_bars(logits, k=5)
    p = logits[0, -1].softmax(-1); ref = p.topk(5)
    assert [r["token"] for r in values(t)] == [str(i) for i in ref.indices.tolist()]
    assert [r["value"] for r in values(t)] == pytest.approx(ref.values.tolist())
    fl = {"feature": 0, "top_tokens": torch.tensor([5, 9]), "top_values": torch.tensor([3.0, 2.0])}
    assert [(r["token"], r["value"]) for r in values(C.topk_bars(fl))] == [("5", 3.0), ("9", 2.0)]   # literals: exact
    with pytest.raises(TypeError, match="topk_bars takes"): C.topk_bars(42)

# ---------------------------------------------------------------- whitespace tokens are drawn visibly

WS = [" ", "\n", "\t", "  ", " Paris"]
SHOWN = ["␣", "↵", "⇥", "␣␣", "␣Paris"]                 # by hand

def test_token_labels_show_whitespace():
    assert [visible_whitespace(t) for t in WS] == SHOWN
    c = C.topk_bars([(t, 1.0 - i / 10) for i, t in enumerate(WS)])
    assert [r["token"] for r in values(c)] == WS                          # the records keep the raw token
    assert [r["label"] for r in values(c)] == [f"{i}: {v}" for i, v in enumerate(SHOWN)]
    assert [f"{i}: {v}" for i, v in enumerate(SHOWN)] == [t for t in svg_texts(c.to_svg()) if t[:1].isdigit() and ": " in t]
    r = PatchingResult("blocks.0.hook_resid_pre", torch.arange(10.0).reshape(2, 5), ("layer", "pos"),
                       {"layer": [0, 1], "pos": list(range(5))}, tokens=WS)
    xs = list(dict.fromkeys(row["x"] for row in C.patching_heatmap(r).to_dict()["data"]["values"]))
    assert xs == [f"{p}: {v}" for p, v in enumerate(SHOWN)]
    drawn = svg_texts(C.patching_heatmap(r).to_svg())
    assert all(x in drawn for x in xs)

def test_lens_heatmap_shows_whitespace(tok):
    from deeplens.model import load_model
    from tiny import text_llama
    m = load_model(text_llama(tok, n_ctx=64), tokenizer=tok, verbose=False)
    lens = logit_lens(m, "The cat sat  on the mat \n\tbecause", top_k=2)
    rows = C.lens_records(lens)
    inputs = [lens.str_tokens[0][p] for p in lens.positions]
    assert {" ", " \n", "\t"} <= set(inputs)                             # precondition: whitespace input tokens
    assert [r["label"] for r in rows] == [visible_whitespace(r["top1"]) for r in rows]
    xs = list(dict.fromkeys(r["x"] for r in rows))
    assert xs == [f"{p}: {visible_whitespace(t)}" for p, t in zip(lens.positions, inputs)] and "3: ␣" in xs
    svg = C.lens_heatmap(lens).to_svg()
    assert all(x in svg_texts(svg) for x in xs)                           # the x axis labels
    import html
    cells = [html.unescape(t) for t in re.findall(r'<text[^>]*aria-roledescription="text mark"[^>]*>([^<]*)</text>', svg)]
    assert len(cells) == len(rows)                                        # one label per cell (long ones cut with …)
    assert all(c == r["label"] or (c.endswith("…") and r["label"].startswith(c[:-1])) for c, r in zip(cells, rows))
    assert all(c.strip() for c in cells)                                  # none blank
    # the lens's own altair charts (deeplens.lens) label positions through the same mapping
    assert {"3: ␣", "7: ␣↵", "8: ⇥"} <= {r["label"] for r in records(convergence_chart(lens))}

def test_ig_chart_shows_whitespace():
    from deeplens.attribution import IGResult
    ig = IGResult([" ", "\n", " the"], torch.tensor([0.2, -0.1, 0.4]), 1.0, 0.5, 16, "zeros", "logit")
    rows = records(ig.chart())
    assert [r["label"] for r in rows] == ["0:␣", "1:↵", "2:␣the"] and [r["token"] for r in rows] == [" ", "\n", " the"]

# ---------------------------------------------------------------- display and files

def test_mimebundles_and_object_displays(patching, chg, steering, trainer, lens):
    for obj in (patching["resid_pre"], patching, chg, steering, trainer):
        b = obj._repr_mimebundle_()
        check_bundle(b)
        assert b["text/plain"] == repr(obj)
    check_bundle(C.lens_heatmap(lens)._repr_mimebundle_())
    assert set(C.topk_bars([("a", 1.0)])._repr_mimebundle_(include=["text/plain"])) == {"text/plain"}
    fresh = SAETrainer(SparseAutoencoder(4, 8, k=2), train_dataloader=[torch.randn(2, 4)], progress=False, save_checkpoints=False)
    assert set(fresh._repr_mimebundle_()) == {"text/plain"}     # nothing trained yet: text only
    with pytest.raises(TypeError, match="no chart for int"): C.chart(3)

def test_wrapper_passes_through_to_altair(steering):
    c = C.topk_bars([("a", 1.0), ("b", 0.5)])
    w = c.properties(title="renamed")
    assert isinstance(w, C.Chart) and w.to_dict()["title"] == "renamed"
    both = c | C.steering_sweep(steering)
    assert isinstance(both, C.Chart) and len(both.to_dict()["hconcat"]) == 2
    assert isinstance(C.Chart(alt.Chart(alt.Data(values=[{"a": 1}])).mark_point()), C.Chart)
    with pytest.raises(TypeError, match="Chart wraps an altair chart"): C.Chart("nope")

def test_enable_offline_renderer():
    ch = alt.Chart(alt.Data(values=[{"x": i, "y": i * i} for i in range(4)])).mark_point().encode(x="x:Q", y="y:Q")
    before = alt.renderers.active
    with C.enable_offline():
        b = ch._repr_mimebundle_()
        b = b[0] if isinstance(b, tuple) else b
    assert alt.renderers.active == before
    check_bundle(b)
    assert marks(b["image/svg+xml"], "point") == 4

def test_save_chart_formats_offline(tmp_path, steering):
    c = C.steering_sweep(steering)
    for fmt in ("svg", "png", "html", "json"):
        p = C.save_chart(c, tmp_path / f"s.{fmt}")
        assert p.exists() and p.stat().st_size > 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "s.json").read_text()) == c.to_dict()
    assert (tmp_path / "s.svg").read_text() == c.to_svg()
    page = (tmp_path / "s.html").read_text()
    assert "<svg" in page and not re.search(r"<script[^>]*src=", page)
    inter = C.save_chart(c, tmp_path / "i.html", interactive=True).read_text()
    assert "<script" in inter and not re.search(r"<script[^>]*src=[\"']?(https?:)?//", inter)
    assert not re.search(r"<link[^>]*href=[\"']?https?://", inter)
    assert C.save_chart(c, tmp_path / "noext", format="svg").name == "noext.svg"
    with pytest.raises(ValueError, match="can't tell the chart format"): C.save_chart(c, tmp_path / "x.pdf")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]   # atomic writes leave no temp files

def test_nbformat_validates_display_outputs(patching, chg):
    nb = nbformat.v4.new_notebook()
    outs = []
    for obj in (patching["resid_pre"], chg, C.topk_bars([("a", 1.0)])):
        b = obj._repr_mimebundle_()
        outs.append(nbformat.v4.new_output("display_data", data=b))
    nb.cells.append(nbformat.v4.new_code_cell("display(x)", outputs=outs, execution_count=1))
    nbformat.validate(nb)
    nbformat.validate(nbformat.reads(nbformat.writes(nb), as_version=4))
    assert not VEGALITE.search(nbformat.writes(nb))
    # the failure this module exists to avoid: altair 6's default output does not validate
    ch = alt.Chart(alt.Data(values=[{"a": 1}])).mark_point()
    with alt.renderers.enable("mimetype"):
        bad_bundle = ch._repr_mimebundle_()
    bad_bundle = bad_bundle[0] if isinstance(bad_bundle, tuple) else bad_bundle
    assert "application/vnd.vegalite.v6.json" in bad_bundle
    from nbformat.validator import NotebookValidationError
    with pytest.raises((nbformat.ValidationError, NotebookValidationError), match="not valid under any"):
        bad = nbformat.v4.new_notebook()
        bad.cells.append(nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("display_data", data=dict(bad_bundle))]))
        nbformat.validate(bad)
