"""deeplens.evals: metrics against hand computations; CE loss recovered / KL against plain transformers runs."""
import os, sys
sys.path.insert(0, os.path.dirname(__file__))
from tiny import text_llama
import pytest
import torch
import torch.nn.functional as F
from deeplens.model import load_model
from deeplens.sae import SparseAutoencoder
from deeplens.evals import sae_metrics, evaluate_sae
from deeplens.store import ActivationStore

HOOK = "blocks.0.hook_resid_post"

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def tiny(tok):
    "A tiny random Llama with the default model's tokenizer (so texts and stores work)."
    return load_model(text_llama(tok), tokenizer=tok, verbose=False)

@pytest.fixture(scope="module")
def docs():
    from pydoc_data.topics import topics
    return [topics[k][:600] for k in sorted(topics)[:12]]

def identity_sae(d):
    "z = [relu(x), relu(−x)], x̂ = z₊ − z₋ = x exactly."
    s = SparseAutoencoder(d, 2 * d, architecture="relu", apply_b_dec_to_input=False)
    with torch.no_grad():
        s.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 1)); s.b_enc.zero_()
        s.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 0)); s.b_dec.zero_()
    return s

def zero_sae(d):
    s = SparseAutoencoder(d, 4 * d, architecture="relu")
    with torch.no_grad():
        for p in s.parameters(): p.zero_()
    return s

def test_metrics_match_hand_computation():
    torch.manual_seed(0)
    s = SparseAutoencoder(8, 40, k=3)
    with torch.no_grad(): s.b_enc.copy_(torch.linspace(-3, 3, 40)); s.b_dec.normal_()
    x = torch.randn(500, 8) * torch.linspace(0.5, 3, 8) + 2
    m = sae_metrics(s, x, batch_size=64)           # streamed in 8 batches
    x_hat, z, _ = s(x)
    x, x_hat, z = x.double(), x_hat.double().detach(), z.detach()
    rss, tss = ((x - x_hat) ** 2).sum(), ((x - x.mean(0)) ** 2).sum()
    assert m["n_tokens"] == 500
    # sae_metrics encodes batches of 64 rows, the reference all 500 at once: float32 products of different shapes
    # may round differently (BLAS blocking differs per CPU), hence 1e-6 and not float64's 1e-9
    assert m["fvu"] == pytest.approx(float(rss / tss), rel=1e-6)
    assert m["explained_variance"] == pytest.approx(1 - float(rss / tss), rel=1e-6)
    assert m["mse"] == pytest.approx(float(((x - x_hat) ** 2).mean()), rel=1e-6)
    assert m["l0"] == 3.0               # a count (1500 nonzero codes / 500 rows): exact
    dens = (z != 0).double().mean(0)
    assert m["dead_fraction"] == pytest.approx(float((dens == 0).double().mean()))
    assert m["dense_fraction"] == pytest.approx(float((dens > 0.1).double().mean()))
    assert 0 < m["dead_fraction"] < 1 and 0 < m["dense_fraction"] < 1      # the biases make both kinds exist
    torch.testing.assert_close(m["feature_density"], dens.float())
    h = m["log_density_hist"]
    assert sum(h["counts"]) == 40 and len(h["edges"]) == 51
    assert h["counts"][0] == int((dens == 0).sum())        # dead latents sit at log10(1e-10) = −10
    # n_tokens caps the rows; a mean predictor has FVU 1
    assert sae_metrics(s, x.float(), n_tokens=100)["n_tokens"] == 100
    mean_pred = SparseAutoencoder(8, 16, architecture="relu", apply_b_dec_to_input=False)
    with torch.no_grad():
        for p in mean_pred.parameters(): p.zero_()
        mean_pred.b_dec.copy_(x.mean(0).float())
    assert sae_metrics(mean_pred, x.float())["fvu"] == pytest.approx(1.0, abs=1e-6)

def test_metrics_from_an_activation_store(tiny, docs, tmp_path):
    st = ActivationStore.build(tiny, docs, [HOOK], 300, tmp_path / "s", context_size=32, batch_size=4, progress=False)
    torch.manual_seed(0)
    s = SparseAutoencoder(32, 128, k=4, hook_name=HOOK)
    m = sae_metrics(s, st, batch_size=64)
    ref = sae_metrics(s, st.get(slice(None), HOOK))
    for k in ("n_tokens", "l0", "dead_fraction"): assert m[k] == pytest.approx(ref[k], rel=1e-9)     # counts
    assert m["fvu"] == pytest.approx(ref["fvu"], rel=1e-6)      # batches of 64 vs 4096 rows: float32 rounding
    assert m["n_tokens"] == 300

def _hf_ce(hf, ids, replace=None):
    "Mean next-token CE of the plain HF model, optionally with layer 0's output replaced by `replace(h)`."
    handle = None
    if replace is not None:
        handle = hf.model.layers[0].register_forward_hook(
            lambda mod, inp, out: (replace(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else replace(out))
    try:
        with torch.no_grad(): logits = hf(ids).logits
    finally:
        if handle: handle.remove()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)), logits

def test_ce_recovered_and_kl_identity_and_zero(tiny):
    ids = torch.randint(10, 1000, (4, 24))       # no special tokens
    d = tiny.cfg.d_model
    r = evaluate_sae(identity_sae(d), tiny, HOOK, ids, n_tokens=96, progress=False)
    ce_clean, clean_logits = _hf_ce(tiny.hf, ids)
    ce_zero, zero_logits = _hf_ce(tiny.hf, ids, torch.zeros_like)
    assert r["ce_loss_without_sae"] == pytest.approx(float(ce_clean), rel=1e-5)
    assert r["ce_loss_with_ablation"] == pytest.approx(float(ce_zero), rel=1e-5)
    assert r["ce_loss_with_sae"] == pytest.approx(float(ce_clean), rel=1e-5)
    assert r["ce_loss_score"] == pytest.approx(1.0, abs=1e-3)
    assert r["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-6) and r["kl_div_score"] == pytest.approx(1.0, abs=1e-4)
    lp, lq = clean_logits.float().log_softmax(-1), zero_logits.float().log_softmax(-1)
    assert r["kl_div_with_ablation"] == pytest.approx(float((lp.exp() * (lp - lq)).sum(-1).mean()), rel=1e-4)
    assert r["fvu"] == pytest.approx(0.0, abs=1e-10) and r["n_tokens"] == 96
    z = evaluate_sae(zero_sae(d), tiny, HOOK, ids, n_tokens=96, progress=False)
    assert z["ce_loss_score"] == pytest.approx(0.0, abs=1e-6) and z["kl_div_score"] == pytest.approx(0.0, abs=1e-6)
    assert z["dead_fraction"] == 1.0 and z["l0"] == 0.0     # all weights 0: every code is exactly relu(0) = 0

def test_partial_sae_score_matches_hand_formula(tiny):
    "A random TopK SAE: the score is (CE_zero − CE_sae)/(CE_zero − CE_clean) with CE_sae from a plain HF hook."
    torch.manual_seed(0)
    s = SparseAutoencoder(tiny.cfg.d_model, 128, k=8)
    ids = torch.randint(10, 1000, (2, 20))
    r = evaluate_sae(s, tiny, HOOK, ids, n_tokens=40, progress=False)
    ce_clean, _ = _hf_ce(tiny.hf, ids)
    ce_zero, _ = _hf_ce(tiny.hf, ids, torch.zeros_like)
    with torch.no_grad(): ce_sae, _ = _hf_ce(tiny.hf, ids, lambda h: s(h)[0])
    assert r["ce_loss_with_sae"] == pytest.approx(float(ce_sae), rel=1e-5)
    want = (float(ce_zero) - float(ce_sae)) / (float(ce_zero) - float(ce_clean))
    assert r["ce_loss_score"] == pytest.approx(want, rel=1e-3)   # float32 CE means vs float64 sums

def test_texts_and_store_inputs_skip_special_tokens(tiny, docs, tmp_path):
    d = tiny.cfg.d_model
    r = evaluate_sae(identity_sae(d), tiny, HOOK, docs, n_tokens=64, context_size=32, progress=False)
    assert r["n_contexts"] == 2 and r["n_tokens"] == 62            # the BOS of each context is not reconstructed
    assert r["ce_loss_score"] == pytest.approx(1.0, abs=1e-3)
    st = ActivationStore.build(tiny, docs, [HOOK], 120, tmp_path / "s", context_size=32, batch_size=4, progress=False)
    z = evaluate_sae(zero_sae(d), tiny, HOOK, st, n_tokens=64, progress=False)
    assert z["n_contexts"] == 2 and z["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)

def test_errors(tiny):
    s = SparseAutoencoder(tiny.cfg.d_model, 64, k=4)
    ids = torch.randint(10, 1000, (1, 8))
    with pytest.raises(ValueError, match="hook_names"): evaluate_sae(s, tiny, "blocks.9.hook_nothing", ids, progress=False)
    with pytest.raises(ValueError, match="pass hook="): evaluate_sae(s, tiny, None, ids, progress=False)
    with pytest.raises(ValueError, match="d_in=32"):
        evaluate_sae(s, tiny, "blocks.0.mlp.hook_post", ids, progress=False)      # width 64, SAE d_in 32
    with pytest.raises(TypeError, match="HookedModel"): evaluate_sae(s, tiny.hf, HOOK, ids)
    with pytest.raises(ValueError, match="no activations"): sae_metrics(s, torch.zeros(0, 32))
