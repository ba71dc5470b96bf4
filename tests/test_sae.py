"""SparseAutoencoder: every architecture against hand-written references, sparsity guarantees, decoder
normalisation, save/load round trips, SAELens layout, sparsify and original-DeepLens files, clear errors."""
import json, os, sys
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from deeplens.sae import SparseAutoencoder

D, M = 16, 96
ARCHS = [("relu", {}), ("topk", {"k": 6}), ("batchtopk", {"k": 6}), ("jumprelu", {}), ("gated", {}),
         ("matryoshka", {"k": 6, "matryoshka_widths": [12, 48]})]
BATCH = ("batchtopk", "matryoshka")

def randomize(sae, scale=0.3, seed=1):
    "Random weights everywhere (biases, thresholds, gates too), so no parameter is trivially zero."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in sae.named_parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
        if sae.architecture in ("jumprelu", *BATCH):
            sae.threshold.copy_(torch.rand(sae.d_sae, generator=g) * 0.5)
    return sae

def make(arch, seed=0, **kw):
    torch.manual_seed(seed)
    a = dict(ARCHS)[arch]
    return randomize(SparseAutoencoder(D, M, architecture=arch, **a, **kw))

# ---------- hand-written references (SAELens / paper formulas, written out independently) ----------
def ref_encode(s, x, training=False):
    xi = x - s.b_dec if s.apply_b_dec_to_input else x
    if s.norm is not None: xi = F.layer_norm(xi, (s.d_in,), s.norm.weight, s.norm.bias, s.norm.eps)
    if s.architecture == "gated":
        gate = xi @ s.W_enc + s.b_gate
        mag = xi @ (s.W_enc * torch.exp(s.r_mag)) + s.b_mag
        return torch.where(gate > 0, torch.clamp(mag, min=0), torch.zeros_like(mag))
    pre = xi @ s.W_enc + s.b_enc
    if s.architecture == "relu": return torch.clamp(pre, min=0)
    if s.architecture == "jumprelu" or (s.architecture in BATCH and not training):
        return torch.where(pre > s.threshold, torch.clamp(pre, min=0), torch.zeros_like(pre))
    if s.architecture == "topk":
        out = torch.zeros_like(pre)
        for r in range(pre.shape[0]):
            order = sorted(range(pre.shape[1]), key=lambda j: -float(pre[r, j]))[: s.k]
            for j in order: out[r, j] = max(float(pre[r, j]), 0.0)
        return out
    # batchtopk, training: the k*rows largest relu values over the flattened batch
    a = torch.clamp(pre, min=0).reshape(-1)
    keep = torch.argsort(a, descending=True)[: s.k * pre.shape[0]]
    out = torch.zeros_like(a); out[keep] = a[keep]
    return out.reshape(pre.shape)

def ref_decode(s, z): return z @ s.W_dec + s.b_dec

@pytest.mark.parametrize("arch", [a for a, _ in ARCHS])
def test_encode_decode_match_reference(arch):
    s = make(arch).eval()
    x = torch.randn(12, D)
    with torch.no_grad():
        z = s.encode(x)
        torch.testing.assert_close(z, ref_encode(s, x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s.decode(z), ref_decode(s, z), atol=1e-5, rtol=1e-5)
        x_hat, z2, z_pre = s(x)
        torch.testing.assert_close(z2, z)
        torch.testing.assert_close(x_hat, ref_decode(s, z), atol=1e-5, rtol=1e-5)
        if arch != "gated": torch.testing.assert_close(z_pre, (x - s.b_dec) @ s.W_enc + s.b_enc, atol=1e-5, rtol=1e-5)

@pytest.mark.parametrize("arch", BATCH)
def test_batchtopk_training_encode_matches_reference(arch):
    s = make(arch).train()
    x = torch.randn(10, D)
    ref = ref_encode(s, x, training=True)
    with torch.no_grad(): z = s.encode(x)
    torch.testing.assert_close(z, ref)

@pytest.mark.parametrize("sparse", [True, False])
def test_topk_l0_is_k_on_every_row_and_both_decode_paths_agree(sparse):
    torch.manual_seed(0)
    s = SparseAutoencoder(D, M, k=6, sparse_decode=sparse)
    x = torch.randn(64, 3, D)                      # leading dims are kept
    x_hat, z, _ = s(x)
    assert z.shape == (64, 3, M)
    assert ((z != 0).sum(-1) == 6).all()
    torch.testing.assert_close(x_hat, z @ s.W_dec + s.b_dec, atol=1e-5, rtol=1e-5)
    # gradients agree too
    s2 = SparseAutoencoder(D, M, k=6, sparse_decode=not sparse); s2.load_state_dict(s.state_dict())
    for m in (s, s2): m.loss(x.reshape(-1, D))[0].backward()
    for n, p in s.named_parameters():
        torch.testing.assert_close(p.grad, dict(s2.named_parameters())[n].grad, atol=1e-5, rtol=1e-4)

@pytest.mark.parametrize("kw", [{}, {"tie_weights": True}, {"activation": "silu"}, {"input_norm": True},
                                {"apply_b_dec_to_input": False}])
def test_sparse_training_path_gradients_equal_dense_autograd_with_auxk(kw):
    "The sparse path's hand-written backward (encoder and decoder, AuxK included) equals plain autograd."
    torch.manual_seed(0)
    s = randomize(SparseAutoencoder(D, M, k=6, sparse_decode=True, **kw))
    s2 = SparseAutoencoder(D, M, k=6, sparse_decode=False, **kw); s2.load_state_dict(s.state_dict())
    x = torch.randn(40, D)
    dead = torch.zeros(M, dtype=torch.bool); dead[::3] = True            # 32 dead > k_aux = 8
    outs = [m.loss(x, dead_mask=dead) for m in (s, s2)]
    torch.testing.assert_close(outs[0][1]["auxk"], outs[1][1]["auxk"], atol=1e-6, rtol=1e-5)
    for t, _ in outs: t.backward()
    assert s.W_enc.grad.abs().sum() > 0
    for n, p in s.named_parameters():
        torch.testing.assert_close(p.grad, dict(s2.named_parameters())[n].grad, atol=1e-5, rtol=1e-4)

def test_silu_topk_selects_by_magnitude_like_the_original():
    torch.manual_seed(0)
    s = SparseAutoencoder(D, M, k=5, activation="silu", apply_b_dec_to_input=False)
    x = torch.randn(7, D)
    a = F.silu(x @ s.W_enc + s.b_enc)
    idx = a.abs().topk(5, dim=-1).indices
    ref = torch.zeros_like(a).scatter(-1, idx, a.gather(-1, idx))
    torch.testing.assert_close(s.encode(x), ref)

@pytest.mark.parametrize("arch", BATCH)
def test_batchtopk_mean_l0_is_k_per_batch_and_threshold_is_estimated(arch):
    torch.manual_seed(0)
    s = SparseAutoencoder(D, M, architecture=arch, k=6).train()
    mins = []
    for _ in range(5):
        x = torch.randn(32, D)
        _, z, _ = s(x)
        assert int((z != 0).sum()) == 6 * 32          # mean L0 per row == k exactly
        assert not ((z != 0).sum(-1) == 6).all()      # ... while rows differ
        mins.append(float(z.detach()[z > 0].min()))
    # first batches: the threshold is the running mean of the smallest kept activation
    torch.testing.assert_close(s.threshold, torch.full((M,), sum(mins) / 5), atol=1e-6, rtol=1e-5)
    s.eval()
    x = torch.randn(8, D)
    pre = (x - s.b_dec) @ s.W_enc + s.b_enc
    torch.testing.assert_close(s.encode(x), torch.where(pre > s.threshold, pre.clamp(min=0), torch.zeros_like(pre)))

def test_losses_match_hand_computation():
    x = torch.randn(20, D)
    s = make("relu"); s.beta_l1 = 0.05
    total, parts = s.loss(x)
    z = ref_encode(s, x); xh = ref_decode(s, z)
    mse = ((xh - x) ** 2).mean(); l1 = (z.abs() * s.W_dec.norm(dim=1)).mean()
    torch.testing.assert_close(total, mse + 0.05 * l1); torch.testing.assert_close(parts["l1"], l1)
    torch.testing.assert_close(parts["l0"], (z != 0).sum(-1).float().mean())
    g = make("gated")
    total, parts = g.loss(x)
    gate = (x - g.b_dec) @ g.W_enc + g.b_gate
    z = ref_encode(g, x)
    aux = ((gate.clamp(min=0) @ g.W_dec + g.b_dec - x) ** 2).mean()
    want = ((ref_decode(g, z) - x) ** 2).mean() + g.beta_l1 * (gate.clamp(min=0) * g.W_dec.norm(dim=1)).mean() + aux
    torch.testing.assert_close(total, want); torch.testing.assert_close(parts["aux"], aux)

def test_jumprelu_straight_through_gradients():
    s = make("jumprelu"); s.bandwidth = 0.5; s.l0_coeff = 0.1
    x = torch.randn(30, D)
    total, parts = s.loss(x)
    total.backward()
    with torch.no_grad():
        pre = (x - s.b_dec) @ s.W_enc + s.b_enc
        r = pre.clamp(min=0)
        th, eps = s.threshold, 0.5
        K = ((r - th).abs() / eps < 0.5).float()
        xh = ref_decode(s, ref_encode(s, x))
        dz = 2 * (xh - x) / x.numel() @ s.W_dec.T            # dMSE/dz
        want = (dz * (-(th / eps) * K)).sum(0) + 0.1 * (-(1 / eps) * K).sum(0) / x.shape[0]
    torch.testing.assert_close(s.threshold.grad, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(parts["l0_penalty"], (r > th).float().sum(-1).mean())

def test_auxk_loss_matches_hand_computation():
    torch.manual_seed(0)
    s = SparseAutoencoder(D, M, k=4)
    x = torch.randn(10, D)
    dead = torch.zeros(M, dtype=torch.bool); dead[:5] = True         # 5 dead < k_aux = D/2 = 8
    total, parts = s.loss(x, dead_mask=dead)
    with torch.no_grad():
        pre = (x - s.b_dec) @ s.W_enc + s.b_enc
        x_hat = ref_decode(s, ref_encode(s, x))
        e_hat = pre[:, :5].clamp(min=0) @ s.W_dec[:5]                  # all 5 dead latents are the top-5
        want = (5 / 8) * ((e_hat - (x - x_hat)) ** 2).mean()
    torch.testing.assert_close(parts["auxk"], want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(total, parts["mse"] + want / 32, atol=1e-6, rtol=1e-5)
    assert "auxk" not in s.loss(x)[1]

@pytest.mark.parametrize("tied", [False, True])
def test_decoder_normalisation_and_parallel_gradient_removal(tied):
    torch.manual_seed(0)
    s = SparseAutoencoder(D, M, k=4, tie_weights=tied)
    with torch.no_grad(): s.W_dec.mul_(torch.rand(M, 1) + 0.5)
    s.loss(torch.randn(16, D))[0].backward()
    s.remove_parallel_grads()
    W = s.W_dec.detach()
    G = s.W_enc.grad.T if tied else s.W_dec.grad
    assert (G * W).sum(1).abs().max() < 1e-6
    s.post_step()
    torch.testing.assert_close(s.W_dec.norm(dim=1), torch.ones(M))
    torch.testing.assert_close(s.W_dec, W / W.norm(dim=1, keepdim=True))
    if tied: assert torch.equal(s.W_dec, s.W_enc.T)     # a view of the same storage: equal by construction

def test_init_b_dec():
    torch.manual_seed(0)
    s = SparseAutoencoder(D, M, k=4)
    x = torch.randn(300, D)
    torch.testing.assert_close(s.init_b_dec(x, "mean"), x.mean(0))
    # the geometric median ignores a far outlier cluster that drags the mean; it is a stationary point of Σ‖x−m‖
    y = torch.cat([x, torch.full((20, D), 50.0)])
    m = s.init_b_dec(y, "geometric_median").double()
    grad = ((m - y.double()) / (m - y.double()).norm(dim=1, keepdim=True)).sum(0)
    assert grad.norm() < 1e-3 * len(y)
    assert (m - x.mean(0).double()).norm() < (y.mean(0) - x.mean(0)).norm()

# ---------- files ----------
@pytest.mark.parametrize("arch", [a for a, _ in ARCHS])
def test_save_load_bit_exact_and_saelens_layout(arch, tmp_path):
    s = make(arch, hook_name="blocks.3.hook_resid_post", model_name="tiny").eval()
    s.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"cfg.json", "sae_weights.safetensors", "config.yaml"}
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    want_arch = {"relu": "standard", "batchtopk": "jumprelu", "matryoshka": "jumprelu"}.get(arch, arch)
    assert cfg["architecture"] == want_arch and cfg["d_in"] == D and cfg["d_sae"] == M
    assert cfg["dtype"] == "float32" and cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"] == {"model_name": "tiny", "hook_name": "blocks.3.hook_resid_post"}
    if arch in ("topk", *BATCH): assert cfg["k"] == 6
    shapes = {"W_enc": (D, M), "W_dec": (M, D), "b_dec": (D,)}
    shapes.update({"b_gate": (M,), "b_mag": (M,), "r_mag": (M,)} if arch == "gated" else {"b_enc": (M,)})
    if arch in ("jumprelu", *BATCH): shapes["threshold"] = (M,)
    with safe_open(str(tmp_path / "sae_weights.safetensors"), "pt") as f:
        assert {n: tuple(f.get_tensor(n).shape) for n in f.keys()} == shapes
        for n in f.keys():      # the file holds the module's own tensors: equal byte for byte
            assert torch.equal(f.get_tensor(n), getattr(s, n).detach())
    y = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert y == {"input_dims": D, "n_features": M, "activation": "relu", "input_norm": False, "k": s.k,
                 "beta_l1": s.beta_l1, "tie_weights": False, "unit_norm_decoder": True, "architecture": arch,
                 **({"matryoshka_widths": [12, 48, M]} if arch == "matryoshka" else {})}
    s2 = SparseAutoencoder.load(tmp_path).eval()
    assert s2.architecture == arch and s2.metadata["hook_name"] == "blocks.3.hook_resid_post"
    sd, sd2 = s.state_dict(), s2.state_dict()
    assert sd.keys() == sd2.keys()
    for n in sd:            # copied tensors, no arithmetic: equal bit for bit
        if n != "threshold_updates": assert torch.equal(sd[n], sd2[n]), n
    x = torch.randn(9, D)
    with torch.no_grad():   # bit-equal weights through the same kernels on the same shapes: equal bit for bit
        for a, b in zip(s(x), s2(x)): assert torch.equal(a, b)

@pytest.mark.parametrize("kw", [dict(input_norm=True), dict(tie_weights=True), dict(activation="silu"),
                                dict(dtype=torch.bfloat16)])
def test_save_load_options(kw, tmp_path):
    torch.manual_seed(0)
    s = randomize(SparseAutoencoder(D, M, k=6, **kw)).eval()
    if kw.get("activation") == "silu" or kw.get("input_norm"):        # no SAELens equivalent: a warning names it
        with pytest.warns(UserWarning, match="activation='silu'" if "activation" in kw else "input_norm"): s.save(tmp_path)
    else: s.save(tmp_path)
    s2 = SparseAutoencoder.load(tmp_path).eval()
    x = torch.randn(5, D)
    # bit-equal weights through the same kernels on the same shapes: equal bit for bit
    with torch.no_grad(): assert torch.equal(s(x)[0], s2(x)[0])
    assert s2.W_enc.dtype == s.W_enc.dtype and s2.tie_weights == s.tie_weights and s2.input_norm == s.input_norm

def test_loads_older_saelens_config(tmp_path):
    "SAELens < 6: hook_name at the top level, topk through activation_fn_str/activation_fn_kwargs."
    torch.manual_seed(0)
    W_enc, b_enc, W_dec, b_dec = torch.randn(D, M), torch.randn(M), torch.randn(M, D), torch.randn(D)
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D, "d_sae": M,
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}, "hook_name": "blocks.1.hook_resid_pre",
        "apply_b_dec_to_input": False, "normalize_activations": "none", "dtype": "float32"}))
    s = SparseAutoencoder.load(tmp_path)
    x = torch.randn(4, D)
    pre = x @ W_enc + b_enc
    v, i = pre.topk(3, dim=-1)
    want = torch.zeros_like(pre).scatter(-1, i, v.clamp(min=0)) @ W_dec + b_dec
    torch.testing.assert_close(s(x)[0], want, atol=1e-5, rtol=1e-5)
    assert s.metadata["hook_name"] == "blocks.1.hook_resid_pre"

def test_sparsify_directory(tmp_path):
    "EleutherAI sparsify: cfg.json + sae.safetensors with encoder.weight [d_sae, d_in]; b_dec subtracted first."
    torch.manual_seed(0)
    enc_w, enc_b, W_dec, b_dec = torch.randn(M, D), torch.randn(M) * 0.1, torch.randn(M, D), torch.randn(D)
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "sae.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": M // D, "normalize_decoder": True,
                                                   "num_latents": 0, "k": 5, "multi_topk": False, "skip_connection": False,
                                                   "transcode": False, "d_in": D}))
    s = SparseAutoencoder.load(tmp_path)
    assert (s.architecture, s.k, s.d_in, s.d_sae) == ("topk", 5, D, M)
    x = torch.randn(6, D)
    acts = F.relu((x - b_dec) @ enc_w.T + enc_b)
    top = acts.topk(5, dim=-1)
    want = torch.stack([sum(top.values[r, j] * W_dec[top.indices[r, j]] for j in range(5)) for r in range(6)]) + b_dec
    torch.testing.assert_close(s(x)[0], want, atol=1e-5, rtol=1e-5)
    cfg = json.loads((tmp_path / "cfg.json").read_text()); cfg["transcode"] = True
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="transcoder"): SparseAutoencoder.load(tmp_path)

class _Original(torch.nn.Module):
    "The original DeepLens module layout (norm / encoder / decoder), written here to produce its state dict."
    def __init__(self, d, m, input_norm, tied):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d) if input_norm else torch.nn.Identity()
        self.encoder = torch.nn.Linear(d, m)
        self.decoder = None if tied else torch.nn.Linear(m, d, bias=False)

@pytest.mark.parametrize("input_norm,tied,k,act", [(True, False, 5, "relu"), (False, True, None, "relu"),
                                                    (False, False, 5, "silu")])
def test_original_deeplens_pt_and_yaml(tmp_path, input_norm, tied, k, act):
    torch.manual_seed(0)
    o = _Original(D, M, input_norm, tied)
    with torch.no_grad():
        for p in o.parameters(): p.normal_(0, 0.5)
    torch.save(o.state_dict(), tmp_path / "best_model.pt")
    # the original's yaml style: Python's None written literally (YAML reads it as the string 'None')
    (tmp_path / "best_model.yaml").write_text(
        f"input_dims: {D}\nn_features: {M}\nactivation: '{act}'\ninput_norm: {input_norm}\nk: {k}\n"
        f"beta_l1: {'1e-3' if k else 'None'}\ntie_weights: {tied}\nunit_norm_decoder: True\n")
    s = SparseAutoencoder.load(tmp_path / "best_model.pt")
    assert s.architecture == ("topk" if k else "relu")
    x = torch.randn(8, D)
    with torch.no_grad():   # the original forward, by hand
        h = o.norm(x) @ o.encoder.weight.T + o.encoder.bias
        h = F.silu(h) if act == "silu" else F.relu(h)
        if k:
            i = h.abs().topk(k, dim=-1).indices
            h = torch.zeros_like(h).scatter(-1, i, h.gather(-1, i))
        want = h @ o.encoder.weight if tied else h @ o.decoder.weight.T
        torch.testing.assert_close(s(x)[0], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s.encode(x), h, atol=1e-5, rtol=1e-5)

def test_original_pt_without_yaml_is_a_clear_error(tmp_path):
    torch.save(_Original(D, M, False, False).state_dict(), tmp_path / "m.pt")
    with pytest.raises(FileNotFoundError, match="config="): SparseAutoencoder.load(tmp_path / "m.pt")
    s = SparseAutoencoder.load(tmp_path / "m.pt", config={"input_dims": D, "n_features": M})
    assert s.architecture == "relu"

# ---------- errors ----------
def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="pass only one"): SparseAutoencoder(D, M, k=4, beta_l1=1e-3)
    with pytest.raises(ValueError, match="unknown architecture"): SparseAutoencoder(D, M, architecture="sparsemax")
    with pytest.raises(ValueError, match="needs k"): SparseAutoencoder(D, M, architecture="topk")
    with pytest.raises(ValueError, match="only applies"): SparseAutoencoder(D, M, architecture="gated", k=3)
    with pytest.raises(TypeError, match="unknown SparseAutoencoder argument"): SparseAutoencoder(D, M, kk=3)
    s = SparseAutoencoder(D, M, k=4)
    with pytest.raises(ValueError, match=f"d_in={D}"): s.encode(torch.randn(3, D + 1))
    with pytest.raises(ValueError, match=f"d_in={D}"): s(torch.randn(3, D - 1))
    with pytest.raises(FileNotFoundError, match="holds no SAE"): SparseAutoencoder.load(tmp_path)
    s.save(tmp_path / "x")
    cfg = json.loads((tmp_path / "x/cfg.json").read_text()); cfg["normalize_activations"] = "layer_norm"
    (tmp_path / "x/cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="normalize_activations"): SparseAutoencoder.load(tmp_path / "x")

def test_repr_is_short():
    r = repr(SparseAutoencoder(D, M, k=4, hook_name="blocks.0.hook_resid_post"))
    assert r == "SparseAutoencoder(topk, d_in=16, d_sae=96, k=4, hook='blocks.0.hook_resid_post', float32, cpu)"
