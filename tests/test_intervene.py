"""deeplens.intervene: exact edits against hand computations; reinjection, splicing and steering against plain
transformers runs and `evaluate_sae`; real steering on the default model."""
import os, sys, warnings
sys.path.insert(0, os.path.dirname(__file__))
from tiny import text_llama
import pytest
import torch
import torch.nn.functional as F
from deeplens.model import load_model
from deeplens.sae import SparseAutoencoder
from deeplens.evals import evaluate_sae
from deeplens.extractor import ExtractSingleSample
from deeplens.intervene import InterveneFeatures, ReinjectSingleSample, splice_sae, steer_features

TEXT = "The quick brown fox jumps over the lazy dog because it wants to"

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def tiny(tok):
    "A tiny random Llama with the default model's tokenizer."
    hf = text_llama(tok)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if p.ndim >= 2: p.normal_(0, 0.3)
    return load_model(hf, tokenizer=tok, verbose=False)

def rand_sae(d, hook, k=6, n=96, seed=0):
    torch.manual_seed(seed)
    s = SparseAutoencoder(d, n, k=k, hook_name=hook)
    with torch.no_grad(): s.b_dec.normal_(0, 0.1); s.b_enc.normal_(0, 0.1)
    return s.eval()

def test_alpha_one_and_exact_ablation():
    sae = rand_sae(16, "blocks.0.hook_resid_post")
    iv = InterveneFeatures(sae)
    x = torch.randn(6, 16)
    z = sae.encode(x).detach()
    for keep in (True, False):
        feats, orig, mod = iv.intervene_feature(x, int(iv.get_alive_features(x)[0]), 1.0, keep_error=keep)
        assert torch.equal(mod, orig)          # exact: alpha 1 gives z' - z = 0, and orig + 0 @ W_dec == orig
    assert torch.equal(iv.intervene_feature(x, 3, 1.0)[1], x)                     # keep_error: original is x itself
    x_hat = sae(x)[0].detach()
    # exact: intervene_feature calls the same sae(x) on the same tensor (same kernels, same shapes)
    assert torch.equal(iv.intervene_feature(x, 3, 1.0, keep_error=False)[1], x_hat)
    # ablate the strongest feature at positions 1 and 4 only
    f = int(iv.get_alive_features(x, token_position=1)[0])
    assert z[1, f] > 0
    for keep in (True, False):
        zz, orig, mod = iv.intervene_feature(x, f, 0.0, token_positions=[1, -2], keep_error=keep)
        expect = orig.clone()
        for p in (1, 4): expect[p] = orig[p] - z[p, f] * sae.W_dec[f].detach()
        torch.testing.assert_close(mod, expect, rtol=0, atol=1e-6)
        others = [0, 2, 3, 5]
        assert torch.equal(mod[others], orig[others])                             # exact: rows never written
        # exact: alpha 0 scales to 0; the other rows are sae.encode(x) computed by the same _encode on the same x
        assert zz[1, f] == 0 and zz[4, f] == 0 and torch.equal(zz[others], z[others])
    # keep_error=False is the decoder of the edited codes
    zz, _, mod = iv.intervene_feature(x, f, 0.0, token_positions=1, keep_error=False)
    torch.testing.assert_close(mod, sae.decode(zz).detach(), rtol=0, atol=1e-5)

def test_modes_lists_and_alive():
    sae = rand_sae(16, "blocks.0.hook_resid_post", k=4)
    iv = InterveneFeatures(sae)
    x = torch.randn(4, 16)
    z = sae.encode(x).detach()
    alive = iv.get_alive_features(x, token_position=2)
    assert set(alive.tolist()) == set(torch.nonzero(z[2]).reshape(-1).tolist())
    assert (z[2, alive][:-1] >= z[2, alive][1:]).all()                           # strongest first
    assert len(iv.get_alive_features(x, token_position=2, k=2)) == 2
    W = sae.W_dec.detach()
    f1, f2 = 5, 9
    for mode, new in (("scale", lambda v, a: v * a), ("add", lambda v, a: v + a), ("clamp", lambda v, a: torch.full_like(v, a))):
        zz, orig, mod = iv.intervene_feature(x, [f1, f2], [2.0, -3.0], token_positions=-1, mode=mode)
        d = (new(z[3, f1], 2.0) - z[3, f1]) * W[f1] + (new(z[3, f2], -3.0) - z[3, f2]) * W[f2]
        torch.testing.assert_close(mod[3], x[3] + d, rtol=0, atol=1e-5)
        assert torch.equal(mod[:3], x[:3])                                        # exact: rows never written
        torch.testing.assert_close(zz[3, [f1, f2]], torch.stack([new(z[3, f1], 2.0), new(z[3, f2], -3.0)]))

def test_bad_input(tiny):
    sae = rand_sae(32, "blocks.1.hook_resid_post")
    iv = InterveneFeatures(sae)
    x = torch.randn(5, 32)
    with pytest.raises(ValueError, match="out of range.*96 features"): iv.intervene_feature(x, 96, 0.0)
    with pytest.raises(ValueError, match="out of range"): iv.intervene_feature(x, -1, 0.0)
    with pytest.raises(ValueError, match="width 20.*d_in=32"): iv.intervene_feature(torch.randn(5, 20), 1, 0.0)
    with pytest.raises(ValueError, match="width 20.*d_in=32"): iv.get_alive_features(torch.randn(5, 20))
    with pytest.raises(ValueError, match="position 5 is out of range for 5 tokens"): iv.intervene_feature(x, 1, 0.0, token_positions=5)
    with pytest.raises(ValueError, match="out of range"): iv.get_alive_features(x, token_position=-6)
    with pytest.raises(ValueError, match="2 features but 3 alphas"): iv.intervene_feature(x, [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="mode"): iv.intervene_feature(x, 1, 0.0, mode="double")
    with pytest.raises(TypeError): InterveneFeatures(42)
    with pytest.warns(UserWarning, match="blocks.0.hook_resid_post.*blocks.1.hook_resid_post"):
        with splice_sae(tiny, sae, hook="blocks.0.hook_resid_post"): pass
    with pytest.warns(UserWarning, match="blocks.0.hook_resid_post.*blocks.1.hook_resid_post"):
        steer_features(tiny, sae, {1: 2.0}, hook="blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="d_in=32"):                               # mlp.hook_post is 64 wide
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with splice_sae(tiny, sae, hook="blocks.1.mlp.hook_post"): tiny("hello")
    with pytest.raises(ValueError, match="out of range"): steer_features(tiny, sae, {500: 1.0})
    re = ReinjectSingleSample(tiny)
    n = len(ExtractSingleSample(tiny, layer=1).tokens(TEXT))
    with pytest.raises(ValueError, match=f"{n} tokens"): re.reinject_and_generate(TEXT, torch.randn(n + 1, 64), 1)
    with pytest.raises(ValueError, match="extract and modify them at the same hook"):
        re.reinject_and_generate(TEXT, torch.randn(n, 32), 1)                       # resid width at mlp.hook_post
    with pytest.raises(ValueError, match="out of range"): re.reinject_and_generate(TEXT, torch.randn(n, 64), 7)

def test_reinject_reproduces_clean_logits(tiny):
    ex = ExtractSingleSample(tiny, layer=1)
    re = ReinjectSingleSample(tiny)
    ids = ex.tokens(TEXT)
    clean = tiny.hf(input_ids=ids[None]).logits[0]                                 # plain transformers
    for hook, acts in (("mlp.hook_post", ex.get_mlp_acts(TEXT)), ("hook_resid_post", ex.get_resid_acts(TEXT))):
        out = re.reinject_and_generate(TEXT, acts, 1, hook=hook)
        assert out.shape == clean.shape
        torch.testing.assert_close(out, clean, rtol=0, atol=1e-5)
    # a modified activation changes the logits from its position on, not before
    acts = ex.get_resid_acts(TEXT)
    acts[5] += 3.0
    out = re.reinject_and_generate(TEXT, acts, 1, hook="hook_resid_post")
    torch.testing.assert_close(out[:5], clean[:5], rtol=0, atol=1e-5)
    assert (out[5] - clean[5]).abs().max() > 1e-2

def test_reinject_generate_keeps_prompt_replaced(tiny):
    ex = ExtractSingleSample(tiny, layer=0)
    re = ReinjectSingleSample(tiny)
    ids = ex.tokens(TEXT)
    n = len(ids)
    acts = ex.get_resid_acts(TEXT)
    acts = 20 * torch.randn(acts.shape, generator=torch.Generator().manual_seed(3))   # seed 1: a top-2 gap of 9e-5
    text = re.reinject_and_generate(TEXT, acts, 0, hook="hook_resid_post", generate=True, max_new_tokens=6)
    # reference: greedy decoding without a KV cache, writing the prompt rows on every full forward by hand
    seq, margins = ids.clone(), []
    def write(act, hook):
        act = act.clone(); act[0, :n] = acts; return act
    for _ in range(6):
        with tiny.hooks([("blocks.0.hook_resid_post", write)]), torch.no_grad():
            last = tiny.hf(input_ids=seq[None]).logits[0, -1]
        top2 = last.topk(2).values
        margins.append(float(top2[0] - top2[1]))
        seq = torch.cat([seq, last.argmax()[None]])
    # KV-cached vs full recompute: logits equal to rounding, so greedy tokens agree when every top-2 gap is far above it
    assert min(margins) > 1e-3, margins
    assert text == tiny.tokenizer.decode(seq, skip_special_tokens=True)
    assert text != tiny.generate(ids, max_new_tokens=6)                           # the replacement mattered

def ce(logits, ids):
    return -logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).mean()

def test_splice_matches_clean_and_evaluate_sae(tiny):
    hook = "blocks.0.hook_resid_post"
    sae = rand_sae(32, hook, k=8, n=128)
    ids = tiny.to_tokens([TEXT, "Sparse autoencoders find features in the activations of language models"])[:, :12]
    with torch.no_grad(): clean = tiny.hf(input_ids=ids).logits
    with splice_sae(tiny, sae, keep_error=True) as h:
        kept = tiny(ids)
    torch.testing.assert_close(kept, clean, rtol=0, atol=1e-4)
    torch.testing.assert_close(h.z, sae.encode(tiny.run_with_cache(ids, names_filter=[hook])[1][hook]).detach())
    with splice_sae(tiny, sae) as h:
        spliced = tiny(ids)
    assert h.calls == 1 and (spliced - clean).abs().max() > 1e-3
    ev = evaluate_sae(sae, tiny, texts_or_store=ids, n_tokens=ids.numel(), exclude_special_tokens=False, progress=False)
    assert ev["ce_loss_without_sae"] == pytest.approx(float(ce(clean, ids)), abs=1e-5)
    assert ev["ce_loss_with_sae"] - ev["ce_loss_without_sae"] == pytest.approx(float(ce(spliced, ids) - ce(clean, ids)), abs=1e-5)
    assert tiny(ids).sub(clean).abs().max() < 1e-5                                 # hooks gone after the block

def test_steer_against_manual_hooks(tiny):
    hook = "blocks.1.hook_resid_post"
    sae = rand_sae(32, hook)
    ids = tiny.to_tokens(TEXT)
    clean = tiny(ids)
    W = sae.W_dec.detach()
    def add(act, h):
        return act + 4.0 * W[7] - 2.0 * W[11]
    manual = tiny.run_with_hooks(ids, fwd_hooks=[(hook, add)])
    with steer_features(tiny, sae, {7: 4.0, 11: -2.0}, mode="add"):
        steered = tiny(ids)
    torch.testing.assert_close(steered, manual, rtol=0, atol=1e-5)
    # positions="new": only the last position of the forward is edited
    with steer_features(tiny, sae, {7: 4.0, 11: -2.0}, positions="new", mode="add"):
        new = tiny(ids)
    torch.testing.assert_close(new[:, :-1], clean[:, :-1], rtol=0, atol=1e-5)
    torch.testing.assert_close(new[:, -1], manual[:, -1], rtol=0, atol=1e-5)
    # scale by 1 with the error kept: no change; alpha=0 on every active feature without it: the output changes
    z = sae.encode(tiny.run_with_cache(ids, names_filter=[hook])[1][hook]).detach()
    active = sorted(set(torch.nonzero(z[0])[:, 1].tolist()))
    with steer_features(tiny, sae, {f: 1.0 for f in active}):
        torch.testing.assert_close(tiny(ids), clean, rtol=0, atol=1e-5)
    with steer_features(tiny, sae, {f: 0.0 for f in active}, keep_error=False):
        ablated = tiny(ids)
    assert (ablated - clean).abs().max() > 1e-2
    b = sae.b_dec.detach()
    manual0 = tiny.run_with_hooks(ids, fwd_hooks=[(hook, lambda act, h: b.expand_as(act).clone())])
    torch.testing.assert_close(ablated, manual0, rtol=0, atol=1e-5)                 # decode(0) = b_dec everywhere
    # generation: the same with the context manager and with fwd_hooks, and different from unsteered
    st = steer_features(tiny, sae, {7: 6.0}, positions="new", mode="add")
    g1 = tiny.generate(ids[0], max_new_tokens=5, fwd_hooks=st.fwd_hooks)
    with st: g2 = tiny.generate(ids[0], max_new_tokens=5)
    assert g1 == g2                       # exact: the same hook on the same forwards, attached two ways

def hook_count(hf):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hf.modules())

def test_nonfinite_alphas_and_activations_are_refused(tiny):
    "Issue 16 fault injection: steer_features({3: nan}) generated a silently truncated text; nan/inf alphas are refused."
    hook = "blocks.1.hook_resid_post"
    sae = rand_sae(32, hook)
    iv = InterveneFeatures(sae)
    x = torch.randn(5, 32)
    n0 = hook_count(tiny.hf)
    for a in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match=f"alpha for feature 3 is {a}; alphas must be finite"): iv.intervene_feature(x, 3, a)
        with pytest.raises(ValueError, match=f"alpha for feature 3 is {a}"): steer_features(tiny, sae, {3: a}, mode="add")
    with pytest.raises(ValueError, match="alpha for feature 7 is nan"): iv.intervene_feature(x, [2, 7], [1.0, float("nan")])
    with pytest.raises(ValueError, match="alpha for feature 7 is nan"): iv.intervene_feature(x, [2, 7], torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError, match="alpha must be a number"): iv.intervene_feature(x, 3, "2")
    assert hook_count(tiny.hf) == n0
    re = ReinjectSingleSample(tiny)
    acts = ExtractSingleSample(tiny, layer=1).get_resid_acts(TEXT)
    acts[2, 5] = float("nan")
    for gen in (False, True):
        with pytest.raises(ValueError, match="modified_activations has 1 non-finite values"):
            re.reinject_and_generate(TEXT, acts, 1, hook="hook_resid_post", generate=gen)
    # an SAE whose weights went nan: generate names the steering hook instead of returning a truncated text
    with torch.no_grad(): sae.W_dec[3] = float("nan")
    st = steer_features(tiny, sae, {3: 2.0}, mode="add")
    with pytest.raises(ValueError, match=r"fwd_hooks\[0\] \(FeatureSteering.hook_fn\) at blocks.1.hook_resid_post"):
        tiny.generate(TEXT, max_new_tokens=4, fwd_hooks=st.fwd_hooks)
    with pytest.raises(ValueError, match="not finite"):
        with st: tiny.generate(TEXT, max_new_tokens=4)
    assert hook_count(tiny.hf) == n0

@pytest.fixture(scope="module")
def real():
    "The default model and a TopK SAE trained for a few seconds on its last block's residual stream."
    m = load_model(verbose=False)
    hook = f"blocks.{m.cfg.n_layers - 1}.hook_resid_post"
    from pydoc_data.topics import topics
    text = " ".join(topics[k][:300] for k in sorted(topics)[:6])
    _, cache = m.run_with_cache(m.to_tokens(text)[:, :192], names_filter=[hook])
    X = cache[hook][0, 1:]
    torch.manual_seed(0)
    sae = SparseAutoencoder(m.cfg.d_model, 256, k=8, hook_name=hook)
    sae.init_b_dec(X, method="mean")
    opt = torch.optim.Adam(sae.parameters(), lr=2e-3)
    for _ in range(40):
        loss, _ = sae.loss(X[torch.randint(len(X), (128,))])
        opt.zero_grad(); loss.backward(); sae.remove_parallel_grads(); opt.step(); sae.post_step()
    return m, sae.eval(), hook

def test_steering_raises_top_logit_tokens(real):
    from deeplens.features import feature_logits
    m, sae, hook = real
    prompt = "The os module provides functions for"
    iv = InterveneFeatures(sae)
    acts = ExtractSingleSample(m, layer=m.cfg.n_layers - 1).get_resid_acts(prompt)
    feats = iv.get_alive_features(acts, token_position=-1, k=3).tolist()
    with torch.no_grad(): p0 = m(prompt)[0, -1].softmax(-1)
    for f in feats:
        toks = feature_logits(sae, m, [f], k=5)[0]["top_tokens"]
        with steer_features(m, sae, {f: 60.0}, mode="add"), torch.no_grad():
            p1 = m(prompt)[0, -1].softmax(-1)
        before, after = float(p0[toks].sum()), float(p1[toks].sum())
        print(f"feature {f} top tokens {[m.to_string(t) for t in toks]}: p {before:.3e} -> {after:.3e}")
        assert after > before
    with steer_features(m, sae, {f: 0.0 for f in feats}, keep_error=False), torch.no_grad():
        assert (m(prompt)[0, -1].softmax(-1) - p0).abs().max() > 1e-3
