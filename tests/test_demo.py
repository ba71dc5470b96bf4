"""deeplens.demo: the features it shows are the most coherent ones (recomputed from what it saved), and its steering
numbers equal an independent recomputation with plain transformers and a hand-made forward hook."""
import html, json, os, sys
sys.path.insert(0, os.path.dirname(__file__))
from tiny import text_llama, widen
import pytest
import torch
from deeplens.model import load_model
from deeplens.sae import SparseAutoencoder
from deeplens.store import ActivationStore
from deeplens.features import feature_stats, feature_coherence
from deeplens.demo import run_demo, rank_features, example_html, demo_layer

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def tiny(tok):
    return load_model(widen(text_llama(tok, n_ctx=128)), tokenizer=tok, verbose=False)

@pytest.fixture(scope="module")
def demo(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    r = run_demo(tiny, n_tokens=3000, out_dir=out, expansion=4, k=4, epochs=2, batch_size=256, eval_tokens=512,
                 n_features=3, n_candidates=8, max_new_tokens=10, progress=False)
    return out, r

def test_report_and_summary(demo):
    out, r = demo
    page = (out / "report.html").read_text()
    s = json.loads((out / "summary.json").read_text())
    assert s["steer_feature"] == r["steer_feature"] and s["promoted_probability_steered"] == r["promoted_probability_steered"]
    assert [f["feature"] for f in s["features"]] == [f["feature"] for f in r["features"]]
    assert page.count("<mark>") >= sum(len(f["top_examples"]) for f in r["features"]) and page.count("<svg") == 3
    assert f"Feature {r['steer_feature']} fires on" in page and html.escape(r["steered_generation"]) in page

def test_shown_features_are_the_most_coherent(demo):
    "Recomputed from the saved store and SAE: the shown features lead the coherence ranking, one per pattern."
    out, r = demo
    store, sae = ActivationStore(out / "store"), SparseAutoencoder.load(out / "sae")
    stats = feature_stats(sae, store, k=10, progress=False)
    co = feature_coherence(stats, store)
    ranked = rank_features(stats, co)
    shown = [f["feature"] for f in r["features"]]
    assert shown[0] == ranked[0] and set(shown) <= set(ranked)
    for f in r["features"]:                      # exact: the same stats from the same store and SAE file
        assert (f["coherence"], f["pattern"], f["docs"]) == (co.loc[f["feature"], "coherence"], co.loc[f["feature"], "pattern"],
                                                            co.loc[f["feature"], "docs"])
    assert len({f["pattern"] for f in r["features"]}) == len(shown)
    # every feature ranked above a shown one repeats the pattern of a feature shown before it
    for f in shown:
        before = ranked[:ranked.index(f)]
        assert all(co.loc[g, "pattern"] in {co.loc[h, "pattern"] for h in shown[:shown.index(f)]} for g in before)

def test_steering_numbers_match_plain_transformers(demo, tiny):
    """The promoted tokens are the top-10 of W_dec[f]·γ·W_U; their summed probability per generated position equals
    a forward of the bare HF model with a hook that adds alpha·W_dec[f] to the block's output (to 1e-5)."""
    out, r = demo
    sae = SparseAutoencoder.load(out / "sae")
    f, alpha, layer = r["steer_feature"], r["steer_alpha"], int(r["hook"].split(".")[1])
    d = sae.W_dec[f].detach()
    direct = (d * tiny.hf.model.norm.weight.detach()) @ tiny.hf.lm_head.weight.detach().T
    promoted = r["promoted_token_ids"]
    assert r["promoted_tokens"] == [tiny.tokenizer.decode([i]) for i in promoted]
    # the top 10 to rounding: each promoted token's direct effect is one of the 10 largest (near-ties may swap)
    torch.testing.assert_close(direct[promoted], direct.topk(10).values, atol=1e-5, rtol=1e-5)
    ids_ref = torch.tensor(promoted)
    n = r["n_prompt_tokens"]
    def mean_sum(ids, add):
        block = tiny.hf.model.layers[layer]
        h = block.register_forward_hook(lambda mod, inp, o: (o[0] + add,) + tuple(o[1:]) if isinstance(o, tuple) else o + add)
        try:
            with torch.no_grad(): p = tiny.hf(torch.tensor([ids])).logits[0, n - 1:-1].softmax(-1)
        finally: h.remove()
        return float(p[:, ids_ref].sum(-1).mean())
    assert r["promoted_probability_plain"] == pytest.approx(mean_sum(r["plain_token_ids"], 0.0), abs=1e-5)
    assert r["promoted_probability_steered"] == pytest.approx(mean_sum(r["steered_token_ids"], alpha * d), abs=1e-5)
    assert r["promoted_count_steered"] == sum(i in set(ids_ref.tolist()) for i in r["steered_token_ids"][n:])
    # screened by lift on the plain text; the best three generated with; the best generated lift kept
    c = r["steering_candidates"]
    assert all(a["screen_lift"] >= b["screen_lift"] for a, b in zip(c, c[1:]))
    tried = [x for x in c if x["generated_lift"] is not None]
    assert tried == c[:len(tried)] and len(tried) == min(3, len(c))
    assert max(tried, key=lambda x: x["generated_lift"])["feature"] == f
    assert r["promoted_lift"] == pytest.approx((r["promoted_probability_steered"] + 0.01) / (r["promoted_probability_plain"] + 0.01))

def test_example_html_marks_and_escapes(tok):
    ids = tok.encode("if a < b:\n    return a")
    p = next(i for i, t in enumerate(ids) if "\n" in tok.decode([t]))          # a line break (maybe with spaces)
    h = example_html(ids, p, tok, window=3)
    marked = tok.decode([ids[p]]).replace(" ", "␣").replace("\n", "↵")
    assert f"<mark>{marked}</mark>" in h and "↵" in marked and "\n" not in h
    assert "&lt;" in h and "<" not in h.replace("<mark>", "").replace("</mark>", "")

def test_layer_range_and_arguments():
    assert demo_layer(None, 30) == 20 and demo_layer(29, 30) == 29 and demo_layer(-30, 30) == 0 and demo_layer(None, 2) == 1
    for bad in (30, -31, 1.5, True):
        with pytest.raises(ValueError, match="out of range: this model has 30 layers"): demo_layer(bad, 30)
    # checked before the model loads: a bad argument with a model that does not exist names the argument
    with pytest.raises(ValueError, match=r"epochs=0 is not a positive int"): run_demo("/no/such/model", epochs=0)
    with pytest.raises(ValueError, match=r"steer_scale=nan is not a positive finite number"):
        run_demo("/no/such/model", steer_scale=float("nan"))
    with pytest.raises(ValueError, match=r"prompt='  ' is empty"): run_demo("/no/such/model", prompt="  ")
