"""deeplens.patching: batched activation patching against a one-forward-per-cell loop, metrics, path and attribution patching, errors."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
from tiny import tiny_hf, tokens
from deeplens.model import HookedModel, load_model
from deeplens.patching import (activation_patching, path_patching, attribution_patching, logit_diff, prob, kl,
                               normalized_effect, correlation, PatchingResult, PatchingResults, _SHORT)

SITES = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_post", "z", "q", "k", "v", "result", "pattern"]
HEAD_DIM = {"z": 2, "q": 2, "k": 2, "v": 2, "result": 2, "pattern": 1}

@pytest.fixture(scope="module")
def tiny():
    return {f: HookedModel(tiny_hf(f)) for f in ("gpt2", "llama")}

@pytest.fixture(scope="module")
def pair():
    clean = tokens(batch=2, pos=6, seed=3)
    corr = clean.clone(); corr[:, 2] = tokens(batch=2, pos=1, seed=9)[:, 0]; corr[:, 4] = tokens(batch=2, pos=1, seed=11)[:, 0]
    return clean, corr

def loop_reference(m, clean, corr, metric_fn, site, positions, heads):
    """One forward per cell, written independently of deeplens.patching: a plain hook that copies the clean
    activation at one (position, head) into the corrupted run; the metric is read off that run's logits."""
    L, P = m.cfg.n_layers, clean.shape[1]
    with torch.no_grad():
        names = [f"blocks.{l}.{_SHORT[site]}" for l in range(L)]
        _, cache = m.run_with_cache(clean, names)
        out = {}
        for l in range(L):
            name = names[l]
            for h in (heads if site in HEAD_DIM else [None]):
                for p in positions:
                    def hook(act, hook, p=p, h=h, name=name):
                        act = act.clone(); src = cache[name]
                        if site == "pattern":
                            if h is None: act[:, :, p] = src[:, :, p]
                            else: act[:, h, p] = src[:, h, p]
                        elif h is None: act[:, p] = src[:, p]
                        else: act[:, p, h] = src[:, p, h]
                        return act
                    logits = m.run_with_hooks(corr, fwd_hooks=[(name, hook)])
                    out[(l, p, h)] = metric_fn(logits).mean().item()
    return out

# every site kind on GPT-2; on Llama (RMSNorm, rotary, grouped-query k/v) the kinds whose shapes or paths differ
CASES = [("gpt2", s) for s in SITES] + [("llama", s) for s in ("resid_pre", "resid_mid", "z", "k", "v", "pattern", "result")]

@pytest.mark.parametrize("family,site", CASES)
def test_batched_equals_loop(tiny, pair, family, site):
    m = tiny[family]
    clean, corr = pair
    met = logit_diff(3, 7)
    heads = list(range(m.cfg.n_kv_heads if site in ("k", "v") else m.cfg.n_heads)) if site in HEAD_DIM else None
    # batch_size 8 → 4 cells per forward (2 prompts each): rows of several cells and of several hook names share forwards
    res = activation_patching(m, clean, corr, met, sites=site, batch_size=8, progress=False)
    ref = loop_reference(m, clean, corr, met, site, range(clean.shape[1]), heads or [None])
    assert res.dims == (("layer", "pos", "head") if heads else ("layer", "pos"))
    for (l, p, h), v in ref.items():
        got = res.values[(l, p, h) if h is not None else (l, p)].item()
        # to rounding: a row of a stacked forward goes through matmuls of another shape than its own forward, and
        # BLAS libraries may block those differently (MKL on Intel keeps them bit-identical; AMD CPUs differ by ~1e-7)
        assert got == pytest.approx(v, rel=1e-5, abs=1e-5), (l, p, h, got, v)

@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batched_equals_loop_other_metrics(tiny, pair, family):
    """The batched run unembeds only the position a metric reads and starts late chunks from the cached residual;
    check both against the plain loop for a metric at another position, for KL (which reads the clean logits), in
    the noising direction, and for a plain function (full logits, nothing sliced)."""
    m = tiny[family]
    clean, corr = pair
    P = clean.shape[1]
    with torch.no_grad(): lc, lr = m(clean), m(corr)
    cases = [(logit_diff(3, 7, pos=2), "denoise"), (kl(), "denoise"), (normalized_effect(prob(5)), "noise"),
             (lambda lg: lg[:, 3, 5] - lg[:, -1, 6], "denoise")]
    for met, direction in cases:
        res = activation_patching(m, clean, corr, met, sites="resid_mid" if family == "gpt2" else "resid_pre",
                                  direction=direction, batch_size=6, progress=False)
        bound = met.bind(m, lc, lr) if hasattr(met, "bind") else met
        a, b = (corr, clean) if direction == "denoise" else (clean, corr)
        site = "resid_mid" if family == "gpt2" else "resid_pre"
        ref = loop_reference(m, b, a, bound, site, range(P), [None])
        for (l, p, _), v in ref.items():
            assert res.values[l, p].item() == pytest.approx(v, rel=1e-5, abs=1e-5), (met, direction, l, p)   # to rounding, as above

def test_positions_all_and_heads_subset(tiny, pair):
    m = tiny["gpt2"]
    clean, corr = pair
    met = logit_diff(3, 7)
    r = activation_patching(m, clean, corr, met, sites="z", positions="all", heads=[1, 3])
    assert r.dims == ("layer", "head") and r.values.shape == (2, 2)
    with torch.no_grad():
        _, cache = m.run_with_cache(clean, "blocks.1.attn.hook_z")
        def hook(act, hook): act = act.clone(); act[:, :, 3] = cache["blocks.1.attn.hook_z"][:, :, 3]; return act
        ref = met(m.run_with_hooks(corr, fwd_hooks=[("blocks.1.attn.hook_z", hook)])).mean().item()
    assert abs(r.values[1, 1].item() - ref) < 1e-5

def test_noise_direction(tiny, pair):
    m = tiny["gpt2"]
    clean, corr = pair
    met = logit_diff(3, 7)
    r = activation_patching(m, clean, corr, met, sites="resid_pre", positions=[2], layers=[1], direction="noise")
    with torch.no_grad():
        _, cache = m.run_with_cache(corr, "blocks.1.hook_resid_pre")
        def hook(act, hook): act = act.clone(); act[:, 2] = cache["blocks.1.hook_resid_pre"][:, 2]; return act
        ref = met(m.run_with_hooks(clean, fwd_hooks=[("blocks.1.hook_resid_pre", hook)])).mean().item()
    assert abs(r.values[0, 0].item() - ref) < 1e-5

def test_normalized_effect_clean_to_clean_is_one(tiny, pair):
    m = tiny["llama"]
    clean, corr = pair
    with torch.no_grad(): lc, lr = m(clean), m(corr)
    ld = logit_diff(3, 7)
    c, r = ld(lc).mean().item(), ld(lr).mean().item()
    met = normalized_effect(ld, clean_value=c, corrupted_value=r)
    res = activation_patching(m, clean, clean, met, sites=("resid_pre", "attn_out", "z"))
    for s, v in res.items(): torch.testing.assert_close(v.values, torch.ones_like(v.values), atol=1e-5, rtol=0)
    # a real pair: restoring the whole input (resid_pre of block 0, all positions) gives exactly the clean run
    full = activation_patching(m, clean, corr, normalized_effect(ld), positions="all", layers=[0])
    assert abs(full.values[0].item() - 1) < 1e-5
    # before the first corrupted token the runs agree: patching changes nothing
    each = activation_patching(m, clean, corr, normalized_effect(ld), layers=[0])
    assert each.values[0, :2].abs().max() < 1e-5

def test_metrics_against_hand_computation(tiny, pair):
    m = tiny["gpt2"]
    clean, corr = pair
    with torch.no_grad(): lc, lr = m(clean), m(corr)
    p = prob(5).bind(m, lc, lr)(lc)
    torch.testing.assert_close(p, torch.softmax(lc[:, -1], -1)[:, 5])
    k = kl().bind(m, lc, lr)
    assert k(lc).abs().max() < 1e-6
    ref = (torch.softmax(lc[:, -1], -1) * (torch.log_softmax(lc[:, -1], -1) - torch.log_softmax(lr[:, -1], -1))).sum(-1)
    torch.testing.assert_close(k(lr), ref)
    torch.testing.assert_close(logit_diff([3, 4], [7, 8]).bind(m)(lc), torch.stack([lc[0, -1, 3] - lc[0, -1, 7], lc[1, -1, 4] - lc[1, -1, 8]]))
    # a plain function returning one number per batch is evaluated row by row
    r = activation_patching(m, clean, corr, lambda lg: lg[:, -1, 3].sum(), layers=[1], positions=[3])
    r2 = activation_patching(m, clean, corr, logit_diff(3), layers=[1], positions=[3])
    assert abs(r.values.item() - r2.values.item()) < 1e-5

def test_result_views(tiny, pair):
    m = tiny["gpt2"]
    clean, corr = pair
    res = activation_patching(m, clean, corr, logit_diff(3, 7), sites=("resid_pre", "z"))
    assert isinstance(res, PatchingResults) and isinstance(res["z"], PatchingResult)
    df = res.to_dataframe()
    assert len(df) == 2 * 6 + 2 * 6 * 4 and set(df.columns) >= {"site", "layer", "pos", "head", "value"}
    row = df[(df.site == "z") & (df.layer == 1) & (df.pos == 4) & (df["head"] == 2)]
    assert row.value.item() == pytest.approx(res["z"].values[1, 4, 2].item())
    assert "PatchingResult(activation patching, denoise, site 'z'" in repr(res["z"])
    spec = res["resid_pre"].chart().to_dict()
    assert spec["mark"]["type"] == "rect"
    # one implementation: the result's chart is the charts module's builder
    from deeplens.charts import patching_heatmap
    assert spec == patching_heatmap(res["resid_pre"]).to_dict()
    assert len(res.chart().to_dict()["hconcat"]) == 2

def test_path_patching_against_hand_computation(tiny, pair):
    """Sender L0H1 → receiver L1H2.q, on GPT-2 (learned positions, LayerNorm): the receiver's query is computed
    by hand from the clean resid_pre of block 1 plus the change in head L0H1's output (z·W_O), through ln_1 and
    the query weights; that query is written into a clean run."""
    m = tiny["gpt2"]
    clean, corr = pair
    met = logit_diff(3, 7)
    got = path_patching(m, clean, corr, senders="L0H1", receivers="L1H2.q", metric=met)
    with torch.no_grad():
        names = ["blocks.0.attn.hook_z", "blocks.1.hook_resid_pre"]
        _, cc = m.run_with_cache(clean, names); _, cr = m.run_with_cache(corr, names)
        W_O = m.hf.transformer.h[0].attn.c_proj.weight.view(4, 8, 32)          # Conv1D: [d_in, d_out]
        delta = (cr["blocks.0.attn.hook_z"][:, :, 1] - cc["blocks.0.attn.hook_z"][:, :, 1]) @ W_O[1]
        x = m.hf.transformer.h[1].ln_1(cc["blocks.1.hook_resid_pre"] + delta)
        q = (x @ m.hf.transformer.h[1].attn.c_attn.weight + m.hf.transformer.h[1].attn.c_attn.bias)[..., :32].view(*x.shape[:2], 4, 8)
        def put(act, hook): act = act.clone(); act[:, :, 2] = q[:, :, 2]; return act
        ref = met(m.run_with_hooks(clean, fwd_hooks=[("blocks.1.attn.hook_q", put)])).mean().item()
    assert abs(float(got) - ref) < 1e-5

def test_path_patching_last_layer_equals_noising(tiny, pair):
    m = tiny["llama"]
    clean, corr = pair
    met = logit_diff(3, 7)
    pp = path_patching(m, clean, corr, senders=["mlp1", "attn1"], receivers="logits", metric=met, separately=True)
    # mlp1 → logits: no other path, so this is noising activation patching of mlp_out in the last block
    ap = activation_patching(m, clean, corr, met, sites="mlp_out", layers=[1], positions="all", direction="noise")
    assert abs(pp.values[0].item() - ap.values.item()) < 1e-5
    # attn1 → logits directly: the corrupted attention output must not reach the logits through mlp1,
    # so mlp1's output stays at its clean value (hand-written hooks)
    with torch.no_grad():
        _, cc = m.run_with_cache(clean, "blocks.1.hook_mlp_out"); _, cr = m.run_with_cache(corr, "blocks.1.hook_attn_out")
        ref = met(m.run_with_hooks(clean, fwd_hooks=[("blocks.1.hook_attn_out", lambda a, h: cr["blocks.1.hook_attn_out"]),
                                                     ("blocks.1.hook_mlp_out", lambda a, h: cc["blocks.1.hook_mlp_out"])])).mean().item()
    assert abs(pp.values[1].item() - ref) < 1e-5
    # jointly, both last-block outputs corrupted: resid_post of the last block moves by both deltas
    joint = path_patching(m, clean, corr, senders=["mlp1", "attn1"], receivers="logits", metric=met)
    assert joint.values.shape == (1,)
    # sender with no path to the receiver is an error
    with pytest.raises(ValueError, match="reads nothing"):
        path_patching(m, clean, corr, senders="L1H0", receivers="L1H2.q", metric=met)

def test_path_patching_separately_equals_one_by_one(tiny, pair):
    m = tiny["gpt2"]
    clean, corr = pair
    met = normalized_effect(logit_diff(3, 7))
    senders = ["L0H0", "L0H3", "mlp0"]
    together = path_patching(m, clean, corr, senders, ["L1H1.k", "L1H1.v", "mlp1"], met, separately=True, batch_size=4)
    for i, s in enumerate(senders):
        one = path_patching(m, clean, corr, s, ["L1H1.k", "L1H1.v", "mlp1"], met)
        assert abs(one.values.item() - together.values[i].item()) < 1e-5

def test_attribution_patching_is_first_order(tiny, pair):
    """The estimate equals M(corrupted) + (a_clean − a_corrupt)·∂M/∂a with the gradient computed by plain autograd,
    and is exact for a site the metric depends on linearly (the final residual through a frozen norm is not linear,
    so we check the gradient formula, and the correlation with real patching on the tiny model)."""
    m = tiny["gpt2"]
    clean, corr = pair
    met = logit_diff(3, 7)
    atp = attribution_patching(m, clean, corr, met, sites="resid_pre")
    name = "blocks.1.hook_resid_pre"
    with torch.no_grad(): _, cc = m.run_with_cache(clean, name)
    box = {}
    def grab(act, hook):
        act = act.detach().clone().requires_grad_(True); box["a"] = act; return act
    with torch.enable_grad():
        logits = m.run_with_hooks(corr, fwd_hooks=[(name, grab)])
        val = met(logits).mean()
        g, = torch.autograd.grad(val, box["a"])
    est = val.item() + ((cc[name] - box["a"].detach()) * g).sum(-1).sum(0)     # per position
    torch.testing.assert_close(atp.values[1], est, atol=1e-5, rtol=1e-5)
    act = activation_patching(m, clean, corr, met, sites="resid_pre")
    assert correlation(atp, act) > 0.5

def test_attribution_patching_head_sites(tiny, pair):
    m = tiny["llama"]
    clean, corr = pair
    res = attribution_patching(m, clean, corr, normalized_effect(logit_diff(3, 7)), sites=("z", "pattern", "v"))
    assert res["z"].values.shape == (2, 6, 4) and res["v"].values.shape == (2, 6, 2) and res["pattern"].values.shape == (2, 6, 4)
    # nothing differs before the first corrupted token: zero estimated effect there
    assert res["z"].values[:, :2].abs().max() < 1e-6

def test_bad_inputs(tiny, pair):
    m = tiny["gpt2"]
    clean, corr = pair
    with pytest.raises(ValueError, match="same shape"):
        activation_patching(m, clean, corr[:, :5], logit_diff(3, 7))
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        activation_patching(m, clean, corr, logit_diff(3, 7), layers=[5])
    with pytest.raises(ValueError, match="head 4 is out of range"):
        activation_patching(m, clean, corr, logit_diff(3, 7), sites="z", heads=[4])
    with pytest.raises(ValueError, match="2 key/value heads"):
        activation_patching(tiny["llama"], clean, corr, logit_diff(3, 7), sites="k", heads=[3])
    with pytest.raises(ValueError, match="position 9 is out of range"):
        activation_patching(m, clean, corr, logit_diff(3, 7), positions=[9])
    with pytest.raises(ValueError, match="unknown patching site"):
        activation_patching(m, clean, corr, logit_diff(3, 7), sites="resid")
    with pytest.raises(ValueError, match="direction"):
        activation_patching(m, clean, corr, logit_diff(3, 7), direction="up")
    with pytest.raises(ValueError, match="same"):
        activation_patching(m, clean, clean, normalized_effect(logit_diff(3, 7)))
    with pytest.raises(ValueError, match="needs the tokenizer"):
        logit_diff(" Mary")(torch.zeros(1, 2, 97))
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        path_patching(m, clean, corr, "L7H0", "logits", logit_diff(3, 7))

# --- the default model ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol():
    return load_model(verbose=False)

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When John and Mary went to the store, Mary gave a drink to"

def test_default_model_errors(smol):
    with pytest.raises(ValueError, match="same shape"):
        activation_patching(smol, CLEAN, "When Maximilian and John went to the store, John gave a drink to", logit_diff(" Mary", " John"))
    with pytest.raises(ValueError, match="not one"):
        activation_patching(smol, CLEAN, CORRUPT, logit_diff(" Maximilian", " John"))

def test_default_model_ioi(smol):
    "Real behaviour: the late residual at the last position carries the answer; attribution patching tracks it."
    met = normalized_effect(logit_diff(" Mary", " John"))
    pos = [1, 3, 9, 13]       # the three name positions and the last one
    act = activation_patching(smol, CLEAN, CORRUPT, met, sites="resid_pre", layers=[0, 29], positions=pos)
    # last block: the final position carries nearly all of the answer; the names' positions almost nothing
    assert act.values[1, 3] > 0.9 and act.values[1, :3].abs().max() < 0.01
    # block 0: the answer comes from the name tokens; the final " to" is the same token in both prompts
    assert act.values[0, :3].max() > 0.5 and act.values[0, 3].abs() < 1e-6
    atp = attribution_patching(smol, CLEAN, CORRUPT, met, sites="resid_pre", layers=[0, 29], positions=pos)
    assert correlation(atp, act) > 0.5
