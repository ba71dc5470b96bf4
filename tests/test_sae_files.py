"""SAE files: SAELens fields that change the SAE's function are reproduced (against hand-written references of
SAELens' math, files built by hand from its documented keys) or refused with an error naming the field; options
SAELens cannot represent warn at save time and round-trip exactly; damaged files give errors naming the file."""
import json, warnings
import pytest
import torch
import yaml
from safetensors.torch import save_file
from deeplens.sae import SparseAutoencoder

D, M, K = 16, 64, 5

def weights(seed=0, norms=True):
    "Random SAELens tensors; decoder rows with norms between 0.2 and 1.7 (not unit) unless `norms=False`."
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(M, D, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True) * ((torch.rand(M, 1, generator=g) * 1.5 + 0.2) if norms else 1)
    return {"W_enc": torch.randn(D, M, generator=g) * 0.5, "b_enc": torch.randn(M, generator=g) * 0.2,
            "W_dec": W_dec, "b_dec": torch.randn(D, generator=g) * 0.3}

def write(d, t, **cfg):
    "A SAELens directory: `sae_weights.safetensors` and a SAELens 6 `cfg.json` with the given fields."
    d.mkdir(parents=True, exist_ok=True)
    save_file(t, d / "sae_weights.safetensors")
    base = {"architecture": "standard", "d_in": D, "d_sae": M, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"hook_name": "blocks.2.hook_resid_post", "sae_lens_version": "6.18.0"}}
    (d / "cfg.json").write_text(json.dumps({**base, **cfg}))
    return d

# ---------- SAELens' TopK with rescale_acts_by_decoder_norm ----------
def saelens_topk(t, x, k, rescale):
    """SAELens' TopKSAE, written out: h = (x − b_dec) @ W_enc + b_enc; with rescale_acts_by_decoder_norm, h·n with
    n the decoder row norms; z = relu of the top-k of h (zero elsewhere); x̂ = (z / n if rescaled) @ W_dec + b_dec."""
    n = t["W_dec"].norm(dim=-1)
    h = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    if rescale: h = h * n
    v, i = h.topk(k, dim=-1)
    z = torch.zeros_like(h).scatter(-1, i, v.relu())
    return z, (z / n if rescale else z) @ t["W_dec"] + t["b_dec"]

@pytest.mark.parametrize("rescale", [True, False])
def test_topk_rescale_acts_by_decoder_norm_is_folded(tmp_path, rescale):
    t = weights()
    s = SparseAutoencoder.load(write(tmp_path, t, architecture="topk", k=K, rescale_acts_by_decoder_norm=rescale))
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(5))
    z_ref, xh_ref = saelens_topk(t, x, K, rescale)
    with torch.no_grad():
        torch.testing.assert_close(s.encode(x), z_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s(x)[0], xh_ref, atol=1e-5, rtol=1e-5)
    # the plain-TopK reading of a rescaled file is a different function: the fold is what makes the two agree
    z_plain, _ = saelens_topk(t, x, K, False)
    assert rescale == bool((z_plain != 0).ne(z_ref != 0).any())
    if rescale: torch.testing.assert_close(s.W_dec.norm(dim=1), torch.ones(M), atol=1e-6, rtol=1e-6)

def test_topk_inference_file_that_saelens_folded_already(tmp_path):
    "SAELens' own inference save folds the norms and keeps the flag: the rescale is then by norms of 1."
    t = weights()
    n = t["W_dec"].norm(dim=-1)
    folded = {"W_enc": t["W_enc"] * n, "b_enc": t["b_enc"] * n, "W_dec": t["W_dec"] / n[:, None], "b_dec": t["b_dec"]}
    s = SparseAutoencoder.load(write(tmp_path, folded, architecture="topk", k=K, rescale_acts_by_decoder_norm=True))
    x = torch.randn(20, D)
    z_ref, xh_ref = saelens_topk(t, x, K, True)
    with torch.no_grad():
        torch.testing.assert_close(s.encode(x), z_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s(x)[0], xh_ref, atol=1e-5, rtol=1e-5)

def test_batchtopk_training_checkpoint(tmp_path):
    """SAELens' `save_model` checkpoint of a BatchTopKTrainingSAE: a scalar double `topk_threshold`, float k and
    rescale_acts_by_decoder_norm; at inference it is JumpReLU(h·n, θ) decoded through (z/n) @ W_dec + b_dec."""
    t = weights()
    t["topk_threshold"] = torch.tensor(0.4, dtype=torch.float64)
    s = SparseAutoencoder.load(write(tmp_path, t, architecture="batchtopk", k=float(K), topk_threshold_lr=0.05,
                                     rescale_acts_by_decoder_norm=True, aux_loss_coefficient=1.0))
    assert (s.architecture, s.k, s.threshold_lr) == ("batchtopk", K, 0.05)
    s.eval()
    x = torch.randn(30, D)
    n = t["W_dec"].norm(dim=-1)
    h = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * n
    z = h.relu() * (h > 0.4)
    with torch.no_grad():
        torch.testing.assert_close(s.encode(x), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s(x)[0], (z / n) @ t["W_dec"] + t["b_dec"], atol=1e-5, rtol=1e-5)

def test_old_saelens_finetuning_scaling_factor_is_folded(tmp_path):
    "SAELens < 6 decoded (z · scaling_factor) @ W_dec + b_dec when finetuning_scaling_factor was set."
    t = weights(norms=False)
    sf = torch.rand(M, generator=torch.Generator().manual_seed(2)) + 0.5
    old = {"architecture": "standard", "d_in": D, "d_sae": M, "activation_fn_str": "relu", "hook_point": "blocks.1.hook_resid_pre",
           "hook_point_layer": 1, "apply_b_dec_to_input": True, "normalize_activations": False, "dtype": "float32"}
    for name in ("scaling_factor", "finetuning_scaling_factor"):
        d = tmp_path / name; d.mkdir()
        save_file({**t, name: sf}, d / "sae_weights.safetensors")
        (d / "cfg.json").write_text(json.dumps({**old, "finetuning_scaling_factor": True}))
        s = SparseAutoencoder.load(d)
        assert s.metadata["hook_name"] == "blocks.1.hook_resid_pre" and s.metadata["hook_layer"] == 1
        x = torch.randn(10, D)
        z = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]).relu()
        with torch.no_grad():
            torch.testing.assert_close(s.encode(x), z, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(s(x)[0], (z * sf) @ t["W_dec"] + t["b_dec"], atol=1e-5, rtol=1e-5)
    # the flag off with a factor of ones: nothing to apply (SAELens drops it too); not ones: refused
    d = tmp_path / "ones"; d.mkdir()
    save_file({**t, "scaling_factor": torch.ones(M)}, d / "sae_weights.safetensors")
    (d / "cfg.json").write_text(json.dumps({**old, "finetuning_scaling_factor": False}))
    s = SparseAutoencoder.load(d)
    torch.testing.assert_close(s.W_dec, t["W_dec"], atol=0, rtol=0)    # untouched, not rescaled
    save_file({**t, "scaling_factor": sf}, d / "sae_weights.safetensors")
    with pytest.raises(ValueError, match="finetuning_scaling_factor is false"): SparseAutoencoder.load(d)

@pytest.mark.parametrize("fields,match", [
    (dict(normalize_activations="layer_norm"), "normalize_activations='layer_norm'"),
    (dict(normalize_activations="expected_average_only_in"), "normalize_activations='expected_average_only_in'"),
    (dict(normalize_activations=True), "normalize_activations='expected_average_only_in'"),     # SAELens < 6: a bool
    (dict(reshape_activations="hook_z"), "reshape_activations='hook_z'"),
    (dict(reshape_activations=None, metadata={}, hook_name="blocks.0.attn.hook_z"), "reshape_activations='hook_z'"),
    (dict(activation_fn_str="tanh-relu"), "activation_fn='tanh-relu'"),
    (dict(architecture="jumprelu", activation_fn="topk", activation_fn_kwargs={"k": 3}), "activation_fn='topk' on a 'jumprelu'"),
    (dict(architecture="transcoder"), "architecture 'transcoder' is not supported"),
    (dict(architecture="batchtopk", k=32.5, topk_threshold_lr=0.01), "whole number k"),
    (dict(architecture="topk"), "whole number k"),
    (dict(architecture="matryoshka_batchtopk", k=4), "needs matryoshka_widths"),
])
def test_unreproducible_fields_are_refused_by_name(tmp_path, fields, match):
    t = weights()
    if fields.get("architecture") in ("batchtopk", "matryoshka_batchtopk"): t["topk_threshold"] = torch.tensor(0.1)
    with pytest.raises(ValueError, match=match): SparseAutoencoder.load(write(tmp_path, t, **fields))

def test_zero_decoder_row_cannot_be_folded(tmp_path):
    t = weights(); t["W_dec"][3] = 0
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm.*1 decoder row"):
        SparseAutoencoder.load(write(tmp_path, t, architecture="topk", k=K, rescale_acts_by_decoder_norm=True))

def test_training_only_and_descriptive_fields_do_not_change_the_function(tmp_path):
    "Fields that shape training or describe the data load as metadata / are ignored; the SAE is plain ReLU."
    t = weights(norms=False)
    s = SparseAutoencoder.load(write(tmp_path, t, l1_coefficient=5.0, lp_norm=2.0, l1_warm_up_steps=100,
                                     decoder_init_norm=0.1, dtype="bfloat16", device="cuda",
                                     metadata={"hook_name": "blocks.2.hook_resid_post", "model_name": "gpt2",
                                               "model_from_pretrained_kwargs": {"center_writing_weights": False},
                                               "seqpos_slice": [1, None], "context_size": 128}))
    assert s.architecture == "relu" and s.W_enc.dtype == torch.float32 and s.W_enc.device.type == "cpu"
    assert s.metadata["seqpos_slice"] == [1, None] and s.metadata["model_name"] == "gpt2"
    x = torch.randn(7, D)
    with torch.no_grad():
        torch.testing.assert_close(s.encode(x), ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]).relu(), atol=1e-5, rtol=1e-5)

# ---------- options SAELens cannot represent ----------
@pytest.mark.parametrize("kw", [dict(beta_l1=0.01), dict(k=K)])
def test_silu_sae_warns_and_round_trips_exactly(tmp_path, kw):
    torch.manual_seed(0)
    s = SparseAutoencoder(D, M, activation="silu", **kw)
    with torch.no_grad():
        for p in s.parameters(): p.add_(torch.randn_like(p) * 0.2)
    with pytest.warns(UserWarning, match="activation='silu'.*ReLU"): s.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["deeplens"]["activation"] == "silu" and yaml.safe_load((tmp_path / "config.yaml").read_text())["activation"] == "silu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # loading does not warn
        s2 = SparseAutoencoder.load(tmp_path)
    assert s2.activation == "silu" and s2.architecture == s.architecture
    sd, sd2 = s.state_dict(), s2.state_dict()
    assert sd.keys() == sd2.keys()
    for n in sd: assert torch.equal(sd[n], sd2[n]), n        # copied tensors: equal bit for bit
    x = torch.randn(11, D)
    with torch.no_grad():   # bit-equal weights through the same kernels on the same shapes: equal bit for bit
        for a, b in zip(s(x), s2(x)): assert torch.equal(a, b)
    # and the activation really is SiLU: the codes kept are silu(z_pre), not z_pre
    with torch.no_grad():
        pre, z = (x - s2.b_dec) @ s2.W_enc + s2.b_enc, s2.encode(x)
        on = z != 0
        torch.testing.assert_close(z[on], torch.nn.functional.silu(pre)[on], atol=1e-5, rtol=1e-5)
        assert (z - pre.relu()).abs().max() > 0.1                 # ... which a ReLU reading would not give

def test_saelens_representable_sae_saves_without_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i, kw in enumerate([dict(k=K), dict(k=K, tie_weights=True), dict(architecture="gated"),
                                dict(architecture="matryoshka", k=K), dict(k=K, apply_b_dec_to_input=False)]):
            SparseAutoencoder(D, M, **kw).save(tmp_path / str(i))

# ---------- damaged files ----------
@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    return SparseAutoencoder(D, M, k=K).save(tmp_path / "sae")

def _damage_weights(p, how):
    raw = p.read_bytes()
    if how == "truncated": p.write_bytes(raw[: len(raw) // 2])
    elif how == "empty": p.write_bytes(b"")
    elif how == "header_bytes":                          # inside the JSON header that follows the 8-byte length
        b = bytearray(raw); b[20:24] = b"\xff\xfe\xfd\xfc"; p.write_bytes(bytes(b))
    elif how == "header_length":
        b = bytearray(raw); b[0:8] = (2 ** 40).to_bytes(8, "little"); p.write_bytes(bytes(b))

@pytest.mark.parametrize("how", ["truncated", "empty", "header_bytes", "header_length"])
def test_damaged_weights_name_the_file(saved, how):
    p = saved / "sae_weights.safetensors"
    _damage_weights(p, how)
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors is corrupt .*safetensors.*Re-save the SAE"):
        SparseAutoencoder.load(saved)

@pytest.mark.parametrize("text,match", [('{"architecture": "topk", "d_in": 16,', "not valid JSON"),
                                        (b"\xff\xfe\x00garbage", "not valid JSON"),
                                        ("[1, 2, 3]", "a JSON list, not an object")])
def test_garbled_cfg_json_names_the_file(saved, text, match):
    p = saved / "cfg.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=rf"cfg\.json is corrupt \({match}"): SparseAutoencoder.load(saved)

def test_cfg_json_without_sizes_is_a_clear_error(saved):
    cfg = json.loads((saved / "cfg.json").read_text()); del cfg["d_in"]
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"cfg\.json needs integer d_in and d_sae"): SparseAutoencoder.load(saved)

def test_renamed_tensor_in_header_names_the_file(saved):
    "A header byte flip that still parses (a tensor renamed) leaves the weights incomplete: named, not a KeyError."
    p = saved / "sae_weights.safetensors"
    p.write_bytes(p.read_bytes().replace(b'"b_enc"', b'"b_enx"', 1))
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors: weights do not match a topk SAE: missing \['b_enc'\]"):
        SparseAutoencoder.load(saved)

def test_damaged_sparsify_and_original_deeplens_files(tmp_path):
    d = tmp_path / "sp"; d.mkdir()
    (d / "sae.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    (d / "cfg.json").write_text(json.dumps({"k": 4, "d_in": D}))
    with pytest.raises(ValueError, match=r"sae\.safetensors is corrupt"): SparseAutoencoder.load(d)
    pt = tmp_path / "best_model.pt"
    torch.save({"encoder.weight": torch.randn(M, D), "encoder.bias": torch.randn(M),
                "decoder.weight": torch.randn(D, M)}, pt)
    (tmp_path / "best_model.yaml").write_text(f"input_dims: {D}\nn_features: {M}\nk: [unclosed\n")
    with pytest.raises(ValueError, match=r"best_model\.yaml is corrupt \(not valid YAML"): SparseAutoencoder.load(pt)
    (tmp_path / "best_model.yaml").write_text(f"input_dims: {D}\nn_features: {M}\n")
    assert SparseAutoencoder.load(pt).architecture == "relu"
    pt.write_bytes(pt.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"best_model\.pt cannot be read by torch\.load\(weights_only=True\).*corrupt"):
        SparseAutoencoder.load(pt)
