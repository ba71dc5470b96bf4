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
                               feature_summary, context_tokens, feature_coherence, token_class, FeatureStats)

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

def encode_in_batches(sae, store, batch_size):
    """The codes of every row, encoded in the batches `feature_stats` reads (`batch_size` rows in store order): the
    same kernels on the same shapes, so the reference is bit-for-bit what the streamed pass saw. (One big batch
    could differ in the last bit, and TopK then keeps a different latent on a near-tie.)"""
    X = store.get(slice(None), HOOK)
    with torch.no_grad(): return torch.cat([sae.encode(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])

def test_stats_match_direct_computation(sae, store):
    st = feature_stats(sae, store, k=5, batch_size=250, progress=False)          # 5 batches, the last one partial
    Z = encode_in_batches(sae, store, 250)
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
    st = feature_stats(sae, store, k=1, batch_size=300, progress=False)
    Z = encode_in_batches(sae, store, 300)
    fs = torch.nonzero(st.density > 0).reshape(-1)[:4].tolist()
    h = activation_histogram(sae, store, fs, bins=7, max_activation=st.max_activation, batch_size=300, progress=False)
    for i, f in enumerate(fs):
        v = Z[:, f][Z[:, f] > 0]
        hi = float(st.max_activation[f])
        ref = torch.histc(v, bins=7, min=0, max=hi).long()
        # histc bins with its own arithmetic: a value within rounding of an inner edge may fall either side of it
        x = v.double() * 7 / hi
        near = int((((x - x.round()).abs() < 1e-5) & (x.round() >= 1) & (x.round() <= 6)).sum())
        assert (h["counts"][i].cumsum(0) - ref.cumsum(0)).abs().max() <= near, (h["counts"][i], ref)
        assert int(h["counts"][i].sum()) == len(v)
        assert int(h["zeros"][i]) == int((Z[:, f] == 0).sum())          # exact: the same codes (encode_in_batches)
        assert float(h["edges"][i, -1]) == pytest.approx(hi)
    h2 = activation_histogram(sae, store, fs, bins=7, batch_size=300, progress=False)     # max found by its own pass
    assert torch.equal(h2["counts"], h["counts"])     # exact: the same batches, so the same codes and maxima

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
        # the values are the true top 6 and each token has its value (to rounding: on a near-tie two tokens may swap)
        torch.testing.assert_close(o["top_values"], r.topk(6).values, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r[o["top_tokens"]], o["top_values"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(o["bottom_values"], (-r).topk(6).values.neg(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r[o["bottom_tokens"]], o["bottom_values"], rtol=1e-5, atol=1e-5)
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
    ref = lg[-1].topk(5).indices        # exact: the same topk on the same logits as get_top_k_tokens
    for tk in (tiny, tiny.tokenizer, str(default_model_path())):        # a HookedModel, a tokenizer, a name/path
        top = get_top_k_tokens(lg, k=5, tokenizer=tk)
        assert [t for t, _ in top] == [tiny.tokenizer.decode([int(i)]) for i in ref]
        assert [pr for _, pr in top] == pytest.approx(p[ref].tolist(), rel=1e-5)
    df = get_top_k_tokens(lg, k=5, to_dataframe=True, position=2)
    assert df["token_id"].tolist() == lg[2].topk(5).indices.tolist()        # exact: the same topk on the same row
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

def test_token_class():
    assert [token_class(t) for t in (" The", "THE", "\n", "\t  ", " 2024", "x1", " (", "")] == \
        ["the", "the", "<whitespace>", "<whitespace>", "<number>", "x1", "(", "<whitespace>"]

def test_coherence_hand_computation(store):
    "A FeatureStats built by hand over rows whose tokens we pick: the shares are counted by hand."
    ti = store.token_index(torch.arange(len(store)))
    tok, doc = torch.as_tensor(ti["token"]), torch.as_tensor(ti["doc"])
    words = {t: store.tokenizer.decode([t]) for t in tok.unique().tolist()}
    by_class = {}
    for r, t in enumerate(tok.tolist()): by_class.setdefault(token_class(words[t]), []).append(r)
    (a, ra), (b, rb) = sorted(by_class.items(), key=lambda kv: -len(kv[1]))[:2]       # the two commonest classes
    assert len(ra) >= 3 and len(rb) >= 2 and a != b
    rows = torch.tensor([[ra[0], rb[0], ra[1], ra[2]],      # 3 of 4 in class a -> 0.75, pattern a
                         [rb[0], ra[0], rb[1], -1],         # 2 of 3 in class b (a rare feature: 3 examples)
                         [ra[0], rb[0], -1, -1],            # a tie: the stronger example's class wins
                         [-1, -1, -1, -1]])                 # never fired: no examples, coherence 0
    vals = torch.where(rows >= 0, torch.tensor([4.0, 3.0, 2.0, 1.0]), -torch.inf)
    z = torch.zeros(4)
    st = FeatureStats(HOOK, len(store), z, z, z, z, vals, rows)
    co = feature_coherence(st, store)
    assert co["coherence"].tolist() == [0.75, 2 / 3, 0.5, 0.0]      # exact: ratios of small counts
    assert co["pattern"].tolist() == [a, b, a, ""] and co["examples"].tolist() == [4, 3, 2, 0]
    assert co.loc[0, "docs"] == len({int(doc[r]) for r in (ra[0], rb[0], ra[1], ra[2])})
    assert feature_coherence(st, store, features=[1], k=2)["coherence"].tolist() == [0.5]     # only the top 2
    assert feature_coherence(st, store, k=1)["coherence"].tolist() == [1.0, 1.0, 1.0, 0.0]

def test_coherence_agrees_with_examples(sae, store):
    "On a real SAE: each feature's score counts the tokens that `max_activating_examples` shows."
    from collections import Counter
    st = feature_stats(sae, store, k=6, progress=False)
    co = feature_coherence(st, store)
    assert len(co) == sae.d_sae and co["coherence"].between(0, 1).all()
    for f in torch.nonzero(st.density > 0).reshape(-1)[:12].tolist():
        ex = max_activating_examples(sae, store, f, k=6, stats=st)
        cls, n = Counter(map(token_class, ex["token"])).most_common(1)[0]
        assert co.loc[f, "coherence"] == n / len(ex) and co.loc[f, "examples"] == len(ex)      # exact: a ratio of counts
        assert co.loc[f, "pattern"] == cls and co.loc[f, "docs"] == ex["doc"].nunique()
    with pytest.raises(ValueError, match="stats cover"): feature_coherence(st, store.subset(0, 100))
    with pytest.raises(ValueError, match="out of range"): feature_coherence(st, store, features=[64])
    with pytest.raises(ValueError, match="k must be"): feature_coherence(st, store, k=7)
    with pytest.raises(TypeError, match="FeatureStats"): feature_coherence({}, store)

def test_feature_overview_and_card(tiny, store, sae):
    from deeplens.features import feature_overview, feature_card, FeatureOverview
    import numpy as np
    st = feature_stats(sae, store, HOOK, k=4, progress=False)
    ov = feature_overview(sae, store, HOOK, k=4, bins=12, stats=st, progress=False)
    assert isinstance(ov, FeatureOverview) and ov.stats is st and ov.hook == HOOK
    h = activation_histogram(sae, store, None, 12, st.max_activation, HOOK, progress=False)
    assert torch.equal(ov.histogram["counts"], h["counts"])                    # integer counts, the same call: exact
    d = st.density.numpy()
    assert ov.n_dead == int((d == 0).sum()) and int(ov.density_counts.sum()) == int((d > 0).sum())
    f = int(torch.argmax(st.density))
    card = feature_card(sae, store, f, tiny, overview=ov, k=4, window=3)
    ex = max_activating_examples(sae, store, f, k=4, stats=st, hook=HOOK)
    assert [r["row"] for r in card["rows"]] == ex["row"].tolist() and card["info"]["density"] == float(st.density[f])
    assert torch.equal(card["histogram"]["counts"], h["counts"][f])
    for i, r in enumerate(card["rows"]):                                       # against a fresh forward of the context
        ids, p = context_tokens(store, r["row"])
        _, cache = tiny.run_with_cache(ids[None], names_filter=[HOOK])
        z = sae.encode(cache[HOOK][0]).detach()[:, f].numpy()
        lo, n = p - r["center"], len(r["tokens"])
        known = ~np.isnan(card["acts"][i, :n])
        np.testing.assert_allclose(card["acts"][i, :n][known], z[lo:lo + n][known], atol=1e-4)
        assert r["tokens"][r["center"]] == ex["token"].iloc[i] and n <= 2 * 3 + 1
    lg = feature_logits(sae, tiny, [f], k=4, hook=HOOK)[0]
    assert [d["id"] for d in card["top_logits"]] == lg["top_tokens"].tolist()
    again = feature_card(sae, store, f, k=4, window=3, hook=HOOK, progress=False)   # no overview: computed, same rows
    assert [r["row"] for r in again["rows"]] == [r["row"] for r in card["rows"]] and again["top_logits"] == []
    with pytest.raises(ValueError, match="out of range"): feature_card(sae, store, sae.d_sae, overview=ov)
