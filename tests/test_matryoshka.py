"""Matryoshka BatchTopK SAEs: loss, gradients and encode against hand-written references of the papers' / SAELens'
math, prefix widths, files (deeplens round trip, SAELens inference layout, SAELens training checkpoints), training
through SAETrainer (AuxK, resume) and evals."""
import json, os, sys
sys.path.insert(0, os.path.dirname(__file__))
from tiny import text_llama
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from deeplens.model import load_model
from deeplens.store import ActivationStore
from deeplens.sae import SparseAutoencoder
from deeplens.train import SAETrainer
from deeplens.evals import evaluate_sae

D, M, K = 16, 96, 6
WIDTHS = [8, 24, 48, 96]
HOOK = "blocks.0.hook_resid_post"

pytestmark = pytest.mark.usefixtures("one_thread")

def make(seed=0, widths=WIDTHS[:-1], **kw):
    "A Matryoshka SAE with random weights everywhere (biases and threshold too)."
    torch.manual_seed(seed)
    s = SparseAutoencoder(D, M, architecture="matryoshka", k=K, matryoshka_widths=widths, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in s.parameters(): p.add_(torch.randn(p.shape, generator=g) * 0.3)
        s.threshold.copy_(torch.rand(M, generator=g) * 0.5)
    return s

# ---------- hand-written references ----------
def ref_batch_topk(s, x):
    "Training code: the k·rows largest relu(z_pre) over the flattened batch (SAELens' BatchTopK), the rest zero."
    pre = (x - s.b_dec) @ s.W_enc + s.b_enc
    a = pre.clamp(min=0).reshape(-1)
    keep = torch.argsort(a.detach(), descending=True)[: K * x.shape[0]]
    out = torch.zeros_like(a); out[keep] = a[keep]
    return out.reshape(pre.shape)

def ref_loss(s, x, z):
    "Σ over prefixes w of mean((z[:, :w] @ W_dec[:w] + b_dec − x)²), one plain matmul per prefix."
    mses = {w: ((z[:, :w] @ s.W_dec[:w] + s.b_dec - x) ** 2).mean() for w in WIDTHS}
    return sum(mses.values()), mses

def test_widths_default_and_validation():
    s = SparseAutoencoder(D, 4608, architecture="matryoshka", k=32)
    assert s.matryoshka_widths == (288, 576, 1152, 2304, 4608)
    assert SparseAutoencoder(D, 20, architecture="matryoshka", k=2).matryoshka_widths == (1, 2, 5, 10, 20)
    assert SparseAutoencoder(D, M, architecture="matryoshka", k=K, matryoshka_widths=[8, 24]).matryoshka_widths == (8, 24, 96)
    assert make().matryoshka_widths == tuple(WIDTHS)
    for bad in ([24, 8], [0, 8], [8, 8, 96], [8, 200], [], "8,24", [8.0, 24], [True, 24]):
        with pytest.raises(ValueError, match="matryoshka_widths"):
            SparseAutoencoder(D, M, architecture="matryoshka", k=K, matryoshka_widths=bad)
    with pytest.raises(ValueError, match="only applies to architecture='matryoshka'"):
        SparseAutoencoder(D, M, architecture="batchtopk", k=K, matryoshka_widths=[8])
    with pytest.raises(ValueError, match="needs k"): SparseAutoencoder(D, M, architecture="matryoshka")
    assert SparseAutoencoder(D, M, architecture="matryoshka_batchtopk", k=K).architecture == "matryoshka"

def test_loss_and_gradients_match_the_sum_of_prefix_losses():
    s = make().train()
    x = torch.randn(24, D)
    dead = torch.zeros(M, dtype=torch.bool); dead[50:55] = True      # 5 dead latents < k_aux = D/2 = 8
    total, parts, (x_hat, z, _) = s.loss(x, dead_mask=dead, return_outputs=True)
    grads = {n: g.clone() for n, g in zip(("W_enc", "b_enc", "W_dec", "b_dec"),
                                          torch.autograd.grad(total, [s.W_enc, s.b_enc, s.W_dec, s.b_dec]))}
    z_ref = ref_batch_topk(s, x)
    torch.testing.assert_close(z, z_ref, atol=1e-6, rtol=1e-5)
    want, mses = ref_loss(s, x, z_ref)
    # AuxK by hand: the 5 dead latents are all of the top-k_aux; they reconstruct the full residual
    pre = (x - s.b_dec) @ s.W_enc + s.b_enc
    e_hat = pre[:, 50:55].clamp(min=0) @ s.W_dec[50:55]
    auxk = (5 / 8) * ((e_hat - (x - (z_ref @ s.W_dec + s.b_dec)).detach()) ** 2).mean()
    want = want + auxk / 32
    torch.testing.assert_close(total, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(parts["mse"], mses[M].detach(), atol=1e-6, rtol=1e-5)
    for w in WIDTHS[:-1]: torch.testing.assert_close(parts[f"mse_{w}"], mses[w].detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(parts["auxk"], auxk.detach(), atol=1e-6, rtol=1e-5)
    assert set(parts) == {"mse", "mse_8", "mse_24", "mse_48", "auxk", "l0", "loss"}
    torch.testing.assert_close(x_hat, z_ref @ s.W_dec + s.b_dec, atol=1e-5, rtol=1e-5)
    assert int((z != 0).sum()) == K * 24                               # mean L0 is k over the batch
    # gradients of the grouped (running-sum) decode equal plain autograd through one matmul per prefix
    ref_grads = torch.autograd.grad(want, [s.W_enc, s.b_enc, s.W_dec, s.b_dec])
    for (n, g), r in zip(grads.items(), ref_grads): torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4, msg=n)

def test_inference_encode_uses_the_learned_threshold_like_batchtopk():
    s = make().train()
    mins = []
    for _ in range(4):
        x = torch.randn(32, D)
        with torch.no_grad(): _, z, _ = s(x)
        mins.append(float(z[z > 0].min()))
    # a plain mean of the smallest kept activation over the first batches (threshold_lr = 0.01 < 1/n)
    torch.testing.assert_close(s.threshold, torch.full((M,), sum(mins) / 4), atol=1e-6, rtol=1e-5)
    s.eval()
    x = torch.randn(10, D)
    pre = (x - s.b_dec) @ s.W_enc + s.b_enc
    want = torch.where(pre > s.threshold, pre.clamp(min=0), torch.zeros_like(pre))
    with torch.no_grad():
        torch.testing.assert_close(s.encode(x), want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(s(x)[0], want @ s.W_dec + s.b_dec, atol=1e-5, rtol=1e-5)

def test_save_load_round_trip_and_saelens_inference_layout(tmp_path):
    s = make(hook_name=HOOK).eval()
    s.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    # what SAELens' JumpReLU reader needs: its inference form of a Matryoshka BatchTopK SAE
    assert cfg["architecture"] == "jumprelu" and cfg["k"] == K and cfg["matryoshka_widths"] == WIDTHS
    assert cfg["deeplens"]["architecture"] == "matryoshka" and cfg["deeplens"]["matryoshka_widths"] == WIDTHS
    with safe_open(str(tmp_path / "sae_weights.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
        # the file holds the module's own tensors, byte for byte
        for n in f.keys(): assert torch.equal(f.get_tensor(n), getattr(s, n).detach()), n
    s2 = SparseAutoencoder.load(tmp_path).eval()
    assert s2.architecture == "matryoshka" and s2.matryoshka_widths == tuple(WIDTHS) and s2.k == K
    x = torch.randn(9, D)
    with torch.no_grad():   # the same stored tensors through the same kernels: equal bit for bit
        for a, b in zip(s(x), s2(x)): assert torch.equal(a, b)
    # SAELens' JumpReLU inference on the file, written out by hand, computes the same codes
    with safe_open(str(tmp_path / "sae_weights.safetensors"), "pt") as f: t = {n: f.get_tensor(n) for n in f.keys()}
    h = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    with torch.no_grad(): torch.testing.assert_close(s2.encode(x), h.relu() * (h > t["threshold"]), atol=1e-6, rtol=1e-5)
    # the file without the deeplens block (as SAELens re-saves it) loads as the JumpReLU SAE it describes
    del cfg["deeplens"]; (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    j = SparseAutoencoder.load(tmp_path).eval()
    assert j.architecture == "jumprelu"
    with torch.no_grad(): torch.testing.assert_close(j.encode(x), s.encode(x), atol=1e-6, rtol=1e-5)

def test_saelens_training_checkpoint_loads_folded(tmp_path):
    """SAELens' `save_model` checkpoint of a MatryoshkaBatchTopKTrainingSAE: training cfg (architecture
    `matryoshka_batchtopk`, float k, `rescale_acts_by_decoder_norm`), a scalar double `topk_threshold`, and decoder
    rows that are not unit norm. Its inference function (SAELens folds the norms when it saves for inference):
    h = ((x − b_dec) @ W_enc + b_enc)·n, z = relu(h)·[h > θ], x̂ = (z/n) @ W_dec + b_dec."""
    g = torch.Generator().manual_seed(0)
    W_enc, b_enc = torch.randn(D, M, generator=g), torch.randn(M, generator=g) * 0.1
    W_dec, b_dec = torch.randn(M, D, generator=g) * (torch.rand(M, 1, generator=g) + 0.2), torch.randn(D, generator=g)
    theta = torch.tensor(0.7, dtype=torch.float64)
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "topk_threshold": theta},
              tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({
        "architecture": "matryoshka_batchtopk", "d_in": D, "d_sae": M, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "k": float(K), "topk_threshold_lr": 0.02, "aux_loss_coefficient": 1.0, "rescale_acts_by_decoder_norm": True,
        "decoder_init_norm": 0.1, "use_sparse_activations": False, "matryoshka_widths": WIDTHS,
        "metadata": {"hook_name": HOOK, "sae_lens_version": "6.18.0"}}))
    s = SparseAutoencoder.load(tmp_path).eval()
    assert (s.architecture, s.k, s.matryoshka_widths, s.threshold_lr) == ("matryoshka", K, tuple(WIDTHS), 0.02)
    torch.testing.assert_close(s.W_dec.norm(dim=1), torch.ones(M))
    x = torch.randn(12, D, generator=g)
    n = W_dec.norm(dim=1)
    h = ((x - b_dec) @ W_enc + b_enc) * n
    z = h.relu() * (h > 0.7)
    with torch.no_grad():
        torch.testing.assert_close(s.encode(x), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s(x)[0], (z / n) @ W_dec + b_dec, atol=1e-5, rtol=1e-5)

# ---------- training and evals ----------
@pytest.fixture(scope="module")
def tiny(tok):
    return load_model(text_llama(tok), tokenizer=tok, verbose=False)

@pytest.fixture(scope="module")
def store(tiny, tmp_path_factory):
    from pydoc_data.topics import topics
    docs = [topics[k][:2000] for k in sorted(topics)[:40]]
    return ActivationStore.build(tiny, docs, [HOOK], 3000, tmp_path_factory.mktemp("m") / "store", context_size=64,
                                 progress=False)

def _trainer(store, out, **kw):
    torch.manual_seed(0)
    sae = SparseAutoencoder(32, 128, architecture="matryoshka", k=4, matryoshka_widths=[16, 64], hook_name=HOOK)
    return SAETrainer(sae, store=store.path, batch_size=64, total_tokens=30 * 64, lr=3e-3, out_dir=out,
                      checkpoint_steps=10, log_steps=5, progress=False, random_seed=3, dead_tokens=64, **kw)

def test_trains_through_saetrainer_with_auxk_and_resumes_exactly(store, tmp_path):
    tr = _trainer(store, tmp_path / "a")
    assert tr._aux_on                                     # dead latents get AuxK, as for topk/batchtopk
    tr.train()
    logged = set().union(*(h.keys() for h in tr.history))
    assert {"mse_16", "mse_64", "auxk"} <= logged, logged
    first, last = tr.history[0], tr.history[-1]
    assert last["mse"] < first["mse"] and last["mse_16"] < first["mse_16"]
    assert int(tr.model.threshold_updates) == 30 and float(tr.model.threshold[0]) > 0
    s = SparseAutoencoder.load(tmp_path / "a" / "final")
    assert s.architecture == "matryoshka" and s.matryoshka_widths == (16, 64, 128)
    # stop after 10 steps and resume: the same weights and threshold as the uninterrupted run
    def stop(t):
        if t.step == 10: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): _trainer(store, tmp_path / "b", callbacks=[stop]).train()
    res = _trainer(store, tmp_path / "b", resume_from=tmp_path / "b"); res.train()
    # same data, same seeds, same kernels in one process: the runs are equal bit for bit
    for (n, p), q in zip(tr.model.state_dict().items(), res.model.state_dict().values()): assert torch.equal(p, q), n

def test_evaluate_sae_splices_a_matryoshka_sae(tiny, store):
    torch.manual_seed(0)
    s = SparseAutoencoder(32, 128, architecture="matryoshka", k=4, matryoshka_widths=[16, 64]).eval()
    with torch.no_grad(): s.threshold.fill_(0.05)
    ids = torch.randint(10, 1000, (2, 16))
    r = evaluate_sae(s, tiny, HOOK, ids, n_tokens=32, progress=False)
    x = store.get(slice(0, 500), HOOK).float()
    with torch.no_grad(): z = s.encode(x)
    from deeplens.evals import sae_metrics
    m = sae_metrics(s, x)
    assert m["l0"] == pytest.approx(float((z != 0).sum(-1).float().mean()), rel=1e-6)
    assert r["n_tokens"] == 32 and 0 <= r["dead_fraction"] <= 1 and r["ce_loss_with_sae"] > 0
