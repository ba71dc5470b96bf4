"""deeplens.features: streamed statistics against direct computations over all rows; max-activating examples
against a fresh forward; logit directions against a hand computation."""
import os, sys, warnings
sys.path.insert(0, os.path.dirname(__file__))
from tiny import text_llama, widen, topic_store, spread_sae
import pytest
import torch
from deeplens.model import load_model, default_model_path
from deeplens.sae import SparseAutoencoder
from deeplens.store import ActivationStore
from deeplens.features import (feature_stats, activation_histogram, max_activating_examples, feature_logits,
                               feature_summary, context_tokens)

HOOK = "blocks.1.hook_resid_post"

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def tiny(tok):
    return load_model(widen(text_llama(tok, n_ctx=64)), tokenizer=tok, verbose=False)

@pytest.fixture(scope="module")
def store(tiny, tmp_path_factory):
    return topic_store(tiny, [HOOK, "blocks.1.mlp.hook_post"], tmp_path_factory.mktemp("s") / "store")

@pytest.fixture(scope="module")
def sae():
    return spread_sae(HOOK)

def test_stats_match_direct_computation(sae, store):
    st = feature_stats(sae, store, k=5, batch_size=250, progress=False)          # 5 batches, the last one partial
    Z = sae.encode(store.get(slice(None), HOOK)).detach()
    n = len(Z)
    assert st.n_tokens == n == len(store)
    torch.testing.assert_close(st.density, (Z != 0).float().mean(0))
    torch.testing.assert_close(st.mean_activation, Z.double().mean(0).float(), rtol=1e-5, atol=1e-6)
    fires = (Z != 0).sum(0)
    torch.testing.assert_close(st.mean_active, (Z.double().sum(0) / fires.clamp(min=1)).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st.max_activation, Z.max(0).values)
    live = torch.nonzero(fires >= 5).reshape(-1)
    assert len(live) > 5
    for f in live.tolist():
        tv = Z[:, f].topk(5)
        torch.testing.assert_close(st.top_values[f], tv.values)
        torch.testing.assert_close(Z[st.top_rows[f], f], tv.values)                # the rows hold those values
    rare = torch.nonzero(fires < 5).reshape(-1)       # fewer than k firing rows: the rest of the list is empty
    for f in rare.tolist():
        assert (st.top_rows[f, int(fires[f]):] == -1).all() and (st.top_rows[f, :int(fires[f])] >= 0).all()
    df = st.to_dataframe()
    assert len(df) == 64 and df["density"].iloc[3] == pytest.approx(float(st.density[3]))

def test_histogram(sae, store):
    st = feature_stats(sae, store, k=1, progress=False)
    Z = sae.encode(store.get(slice(None), HOOK)).detach()
    fs = torch.nonzero(st.density > 0).reshape(-1)[:4].tolist()
    h = activation_histogram(sae, store, fs, bins=7, max_activation=st.max_activation, batch_size=300, progress=False)
    for i, f in enumerate(fs):
        v = Z[:, f][Z[:, f] > 0]
        ref = torch.histc(v, bins=7, min=0, max=float(st.max_activation[f]))
        assert h["counts"][i].tolist() == ref.long().tolist()
        assert int(h["zeros"][i]) == int((Z[:, f] == 0).sum())
        assert float(h["edges"][i, -1]) == pytest.approx(float(st.max_activation[f]))
    h2 = activation_histogram(sae, store, fs, bins=7, progress=False)          # max found by its own pass
    assert torch.equal(h2["counts"], h["counts"])

def test_max_activating_example_matches_fresh_forward(tiny, sae, store):
    st = feature_stats(sae, store, k=4, progress=False)
    f = int(torch.nonzero(st.density > 0.05).reshape(-1)[0])
    ex = max_activating_examples(sae, store, f, k=4, window=5, stats=st)
    assert len(ex) == 4 and list(ex["rank"]) == [0, 1, 2, 3]
    assert (ex["value"].diff().dropna() <= 0).all()
    tok = store.tokenizer
    for _, e in ex.iterrows():
        ids = e["context_tokens"]
        _, cache = tiny.run_with_cache(ids[None], names_filter=[HOOK])
        fresh = sae.encode(cache[HOOK][0, e["context_pos"]]).detach()[f]
        assert float(fresh) == pytest.approx(e["value"], abs=1e-4)
        assert ("«" + tok.decode([e["token_id"]]) + "»") in e["text"]
        assert e["text"] == store.context(e["row"], window=5)                      # the store's own rendering
        assert int(store.token_index([e["row"]])["token"][0]) == e["token_id"]
    ids, p = context_tokens(store, int(ex["row"][0]))
    assert ids[p] == ex["token_id"][0]

def test_feature_logits_hand_computation(tiny, sae):
    g = tiny.norm_module("ln_final").weight.detach()
    W_U = tiny.W_U.detach()
    ref = (sae.W_dec.detach() * g) @ W_U
    out = feature_logits(sae, tiny, [3, 10], k=6)
    for o in out:
        r = ref[o["feature"]]
        assert o["top_tokens"].tolist() == r.topk(6).indices.tolist()
        torch.testing.assert_close(o["top_values"], r.topk(6).values, rtol=1e-5, atol=1e-5)
        assert o["bottom_tokens"].tolist() == (-r).topk(6).indices.tolist()
    # an SAE on mlp.hook_post: mapped through that layer's W_out first
    s2 = SparseAutoencoder(64, 16, k=2, hook_name="blocks.1.mlp.hook_post")
    ref2 = ((s2.W_dec.detach() @ tiny.W_out[1].detach()) * g) @ W_U
    o2 = feature_logits(s2, tiny, [5], k=4)[0]
    torch.testing.assert_close(o2["top_values"], ref2[5].topk(4).values, rtol=1e-5, atol=1e-5)

def test_summary(tiny, sae, store):
    st = feature_stats(sae, store, k=3, progress=False)
    f = int(st.density.argmax())
    s = feature_summary(sae, store, f, tiny, k=3, bins=5, stats=st, progress=False)
    assert s.density == pytest.approx(float(st.density[f])) and s.max_activation == pytest.approx(float(st.max_activation[f]))
    assert int(s.histogram["counts"].sum()) + s.histogram["zeros"] == len(store)
    assert len(s.examples) == 3 and len(s.top_logits) == 3 and len(s.bottom_logits) == 3
    assert f"feature {f}" in repr(s) and "promotes" in repr(s)

def test_bad_input(sae, store, tiny):
    with pytest.raises(ValueError, match="out of range"): max_activating_examples(sae, store, 64, progress=False)
    with pytest.raises(ValueError, match="out of range"): feature_logits(sae, tiny, [99])
    with pytest.raises(ValueError, match="width 64.*d_in=32"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            feature_stats(sae, store, hook="blocks.1.mlp.hook_post", progress=False)
    other = SparseAutoencoder(32, 64, k=4, hook_name="blocks.0.hook_resid_post")
    with pytest.warns(UserWarning, match=f"{HOOK}.*blocks.0.hook_resid_post"):
        feature_stats(other, store, hook=HOOK, progress=False)
    with pytest.raises(ValueError, match="several hooks"):
        feature_stats(SparseAutoencoder(32, 64, k=4), store, progress=False)
    with pytest.raises(ValueError, match="not in this store"): feature_stats(sae, store, hook="blocks.0.hook_resid_pre", progress=False)

def test_seed_analysis_helpers(tiny, tmp_path):
    from deeplens.utils.analysis import get_top_k_tokens, plot_topk_distribution, generate_feature_heatmap
    import altair as alt
    with torch.no_grad(): lg = tiny("The quick brown fox")[0]
    p = lg[-1].softmax(-1)
    ref = p.topk(5)
    for tk in (tiny, tiny.tokenizer, str(default_model_path())):        # a HookedModel, a tokenizer, a name/path
        top = get_top_k_tokens(lg, k=5, tokenizer=tk)
        assert [t for t, _ in top] == [tiny.tokenizer.decode([int(i)]) for i in ref.indices]
        assert [pr for _, pr in top] == pytest.approx(ref.values.tolist(), rel=1e-5)
    df = get_top_k_tokens(lg, k=5, to_dataframe=True, position=2)
    assert df["token_id"].tolist() == lg[2].topk(5).indices.tolist()
    assert df["probability"].tolist() == pytest.approx(lg[2].softmax(-1).topk(5).values.tolist(), rel=1e-5)
    from deeplens.charts import Chart
    c = plot_topk_distribution(lg, k=8, tokenizer=tiny, save_name=tmp_path / "topk.html")
    assert isinstance(c, Chart) and "<svg" in (tmp_path / "topk.html").read_text()
    bars = c.to_dict()["data"]["values"]
    assert [b["value"] for b in bars] == pytest.approx(lg[-1].softmax(-1).topk(8).values.tolist(), rel=1e-5)
    h = generate_feature_heatmap(torch.randn(4, 300), save_name=tmp_path / "heat.json", max_cols=20)
    assert isinstance(h, Chart) and len(h.data) == 4 * 20 and (tmp_path / "heat.json").exists()
    try: import vl_convert  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="vl-convert-python"): plot_topk_distribution(lg, save_name=tmp_path / "x.svg")
    with pytest.raises(ValueError, match="out of range"): get_top_k_tokens(lg, position=99)
    with pytest.raises(TypeError, match="tokenizer"): get_top_k_tokens(lg, tokenizer=3.5)
