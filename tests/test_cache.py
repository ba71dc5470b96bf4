"""ActivationCache: lookups, residual decompositions, norms, logit attribution and files, checked against the
activations the model itself cached (independent references), on tiny random models of every family."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
from tiny import FAMILIES, tiny_hf, tokens
from deeplens.model import HookedModel
from deeplens.cache import ActivationCache
from deeplens.hooks import norm_eps

ATOL = 1e-5

def close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)

def norm_input(m, c, which):
    "The cached residual that norm `which` ('ln_final', 'blocks.L.ln1', 'blocks.L.ln2') reads."
    if which == "ln_final": return c["resid_post", -1]
    l, sub = int(which.split(".")[1]), which.split(".")[2]
    return c["resid_pre", l] if sub == "ln1" or m.cfg.parallel_attn_mlp else c["resid_mid", l]

def norm_out(m, c, which):
    "What the HF norm module itself outputs for the cached residual it reads (an independent reference)."
    with torch.no_grad(): return m.norm_module(which)(norm_input(m, c, which))

@pytest.fixture(scope="module", params=FAMILIES)
def run(request):
    "(family, model, tokens, full cache) for each tiny family; fp32."
    m = HookedModel(tiny_hf(request.param))
    ids = tokens()
    _, cache = m.run_with_cache(ids)
    return request.param, m, ids, cache

@pytest.fixture(scope="module")
def models():
    return {}

def get_model(models, fam):
    if fam not in models: models[fam] = HookedModel(tiny_hf(fam))
    return models[fam]

# --- decompositions sum to what the model computed ---------------------------------------------------------

def test_decompose_resid_sums_to_final_resid(run):
    fam, m, ids, c = run
    parts, labels = c.decompose_resid(return_labels=True)
    n = m.cfg.n_layers
    assert labels[0] == "embed" and ("pos_embed" in labels) == (m.cfg.positional_embedding == "learned")
    assert labels[-2:] == [f"{n - 1}_attn_out", f"{n - 1}_mlp_out"] and len(parts) == len(labels)
    close(parts.sum(0), c[f"blocks.{n - 1}.hook_resid_post"])
    # up to an intermediate point, and the MLP input of a block
    close(c.decompose_resid(1).sum(0), c["resid_pre", 1])
    mlp_in = c["resid_pre", 1] if m.cfg.parallel_attn_mlp else c["resid_mid", 1]
    close(c.decompose_resid(1, mlp_input=True).sum(0), mlp_in)
    # the modes split the same sum
    a = c.decompose_resid(mode="attn", incl_embeds=False).sum(0)
    b = c.decompose_resid(mode="mlp", incl_embeds=False).sum(0)
    e = c.decompose_resid(0).sum(0)
    close(a + b + e, parts.sum(0))
    # pos_slice is the same as slicing afterwards
    close(c.decompose_resid(pos_slice=-1), parts[:, :, -1])

def test_accumulated_resid_through_norms(run):
    fam, m, ids, c = run
    acc, labels = c.accumulated_resid(incl_mid=True, return_labels=True)
    assert labels[-1] == "final_post" and labels[0] == "0_pre"
    assert ("0_mid" in labels) == (not m.cfg.parallel_attn_mlp)
    # the last stage is the residual the norm reads: through the norm it is what the HF norm outputs
    close(c.apply_ln_to_stack(acc)[-1], norm_out(m, c, "ln_final"))
    close(c.accumulated_resid(apply_ln=True)[-1], norm_out(m, c, "ln_final"))
    close(c.accumulated_resid(1, apply_ln=True)[-1], norm_out(m, c, "blocks.1.ln1"))
    ln2 = "blocks.1.ln2" if "blocks.1.ln2.hook_normalized" in m.sites else "blocks.1.ln1"
    close(c.accumulated_resid(1, mlp_input=True, apply_ln=True)[-1], norm_out(m, c, ln2))
    close(c.accumulated_resid(pos_slice=-1, apply_ln=True)[-1], norm_out(m, c, "ln_final")[:, -1])

def test_linear_norm_of_decomposition(run):
    fam, m, ids, c = run
    bias = getattr(m.norm_module("ln_final"), "bias", None)
    target = norm_out(m, c, "ln_final") - (0 if bias is None else bias)
    close(c.apply_ln_to_stack(c.decompose_resid(), bias=False).sum(0), target)

# --- conventions (issue 16, §4), each against a hand computation --------------------------------------------

def over(x, kind, scale):
    "x (centred for LayerNorm) over `scale`, in float64."
    x = x.double()
    return (x - x.mean(-1, keepdim=True) if kind == "LN" else x) / scale.double()

def own_scale(x, kind, eps):
    "sqrt(variance + eps) for LayerNorm, sqrt(mean square + eps) for RMSNorm, in float64."
    x = x.double()
    if kind == "LN": x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()

def affine(y, kind, mod, bias=True):
    "y times the norm's weight (1 + weight for Gemma's RMS1p), plus its bias, in float64."
    w, b = getattr(mod, "weight", None), getattr(mod, "bias", None) if bias else None
    if w is not None: y = y * ((1 + w.double()) if kind == "RMS1p" else w.double())
    return y if b is None else y + b.double()

def test_hook_normalized_is_the_input_over_the_scale_before_the_weight(run):
    "TransformerLens' definition: ln.hook_normalized = x / ln.hook_scale (x centred for LayerNorm), weight not applied."
    fam, m, ids, c = run
    kind = m.cfg.normalization
    for which in ["ln_final", "blocks.0.ln1", "blocks.1.ln1"] + (["blocks.1.ln2"] if "blocks.1.ln2.hook_normalized" in m.sites else []):
        x, scale, mod = norm_input(m, c, which), c[f"{which}.hook_scale"], m.norm_module(which)
        close(scale.double(), own_scale(x, kind, norm_eps(mod)))
        close(c[f"{which}.hook_normalized"].double(), over(x, kind, scale))
        close(affine(c[f"{which}.hook_normalized"].double(), kind, mod), norm_out(m, c, which).double())   # the output

def test_accumulated_resid_after_the_last_block_normalises_each_stage_by_itself(run):
    "As TransformerLens 4 (the logit lens): each stage through ln_final with its own scale, weight and bias."
    fam, m, ids, c = run
    mod, kind = m.norm_module("ln_final"), m.cfg.normalization
    acc = c.accumulated_resid()
    got = c.accumulated_resid(apply_ln=True)
    close(got.double(), affine(over(acc, kind, own_scale(acc, kind, norm_eps(mod))), kind, mod))
    # not the cached final scale (what apply_ln_to_stack uses): the first stages differ from that
    assert (got[0] - c.apply_ln_to_stack(acc)[0]).abs().max() > 1e-2
    # the logit lens of the last stage is the model's own logits (before Gemma 2's final soft-cap)
    close(got[-1] @ m.W_U + m.b_U, c["hook_logits"], atol=1e-4)

def test_apply_ln_to_stack_applies_the_weight_with_the_cached_scale(run):
    "Unlike TransformerLens (which assumes folded weights), the norm's weight is applied: logit_attrs is then exact."
    fam, m, ids, c = run
    mod, kind = m.norm_module("ln_final"), m.cfg.normalization
    parts = c.decompose_resid()
    y = over(parts, kind, c["ln_final.hook_scale"])
    close(c.apply_ln_to_stack(parts, bias=False).double(), affine(y, kind, mod, bias=False))
    close(c.apply_ln_to_stack(parts).double(), affine(y, kind, mod))

def test_logit_attrs_sum_to_logit_difference(run):
    fam, m, ids, c = run
    stack = c.decompose_resid(pos_slice=-1)
    logits = c["hook_logits"]          # before Gemma 2's final soft-cap, which is not linear
    tok, wrong = ids[:, -1], torch.tensor([5, 9])
    attrs = c.logit_attrs(stack, tok, wrong, pos_slice=-1, include_bias=True)
    assert attrs.shape == (len(stack) + 1, ids.shape[0])
    ref = logits[torch.arange(len(ids)), -1, tok] - logits[torch.arange(len(ids)), -1, wrong]
    close(attrs.sum(0), ref, atol=1e-4)
    if m.cfg.normalization != "LN" and not m.b_U.any():
        assert torch.equal(attrs[-1], torch.zeros_like(attrs[-1]))   # exact: zero biases, differences of zeros
    # tokens as an int and as a list; without incorrect tokens; the whole position range
    close(c.logit_attrs(stack, 7, pos_slice=-1, include_bias=True).sum(0), logits[:, -1, 7], atol=1e-4)
    close(c.logit_attrs(stack, [7, 8], pos_slice=-1).sum(0), c.logit_attrs(stack, torch.tensor([7, 8]), pos_slice=-1).sum(0))
    full = c.logit_attrs(c.decompose_resid(), 11, include_bias=True)
    close(full.sum(0), logits[..., 11], atol=1e-4)

def test_rms_bias_component_is_zero():
    m = HookedModel(tiny_hf("llama"))
    _, c = m.run_with_cache(tokens())
    attrs = c.logit_attrs(c.accumulated_resid(pos_slice=-1)[-1:], 3, incorrect_tokens=4, pos_slice=-1, include_bias=True)
    assert m.cfg.normalization == "RMS" and torch.equal(attrs[-1], torch.zeros(2))   # exact: no bias anywhere

@pytest.mark.parametrize("fam", ["gpt2", "llama", "gpt_neox", "gptj", "qwen3", "opt"])
def test_head_results_sum_to_attn_out(models, fam):
    m = get_model(models, fam)
    ids = tokens()
    _, c = m.run_with_cache(ids)
    n, h = m.cfg.n_layers, m.cfg.n_heads
    heads, labels = c.stack_head_results(return_labels=True)
    assert heads.shape == (n * h, *c["resid_post", 0].shape) and labels[:2] == ["L0H0", "L0H1"] and labels[-1] == f"L{n - 1}H{h - 1}"
    b_O = m.b_O.detach()
    for l in range(n):
        close(heads[l * h:(l + 1) * h].sum(0) + b_O[l], c["attn_out", l])
    # from hook_z only (computed with W_O), and the remainder closes the sum
    _, z = m.run_with_cache(ids, names_filter=lambda s: s.endswith(("attn.hook_z", "hook_resid_post", "hook_resid_pre")))
    close(z.stack_head_results(), heads)
    close(z.stack_head_results(1, incl_remainder=True).sum(0), c["resid_pre", 1])
    close(z.stack_head_results(incl_remainder=True).sum(0), c["resid_post", -1])
    assert "blocks.0.attn.hook_result" not in z
    close(z.compute_head_results()["result", 0], c["result", 0])

def test_head_results_apply_ln(models):
    m = get_model(models, "gpt2")
    _, c = m.run_with_cache(tokens())
    stack = c.stack_head_results(incl_remainder=True, pos_slice=-1)
    ln = c.stack_head_results(incl_remainder=True, pos_slice=-1, apply_ln=True)
    close(ln, c.apply_ln_to_stack(stack, pos_slice=-1))

# --- names --------------------------------------------------------------------------------------------------

def test_short_names_and_negative_layers(models):
    m = get_model(models, "llama")
    _, c = m.run_with_cache(tokens())
    n = m.cfg.n_layers
    assert c["resid_post", 1] is c["blocks.1.hook_resid_post"]
    assert c["resid_post", -1] is c[f"blocks.{n - 1}.hook_resid_post"]
    assert c["pattern", -2] is c["blocks.0.attn.hook_pattern"]
    assert c["attn", 0] is c["blocks.0.attn.hook_pattern"]
    assert c["scale", 1, "ln1"] is c["blocks.1.ln1.hook_scale"]
    assert c["scale", -1, "ln2"] is c[f"blocks.{n - 1}.ln2.hook_scale"]
    assert c["normalized"] is c["ln_final.hook_normalized"] and c[("scale",)] is c["ln_final.hook_scale"]
    assert c["embed"] is c["hook_embed"] and c["logits"] is c["hook_logits"]
    assert c["z", 0].shape == (2, 7, m.cfg.n_heads, m.cfg.d_head)
    assert ("resid_post", 0) in c and "blocks.0.hook_resid_post" in c and ("resid_post", 9) not in c
    assert list(c) == list(c.keys()) and len(c) == len(c.cache_dict) and dict(c.items()) == c.cache_dict
    assert c.get("nope") is None
    assert c.stack("resid_post").shape == (n, 2, 7, m.cfg.d_model)
    # exact: stacking copies the same tensors
    assert torch.equal(c.stack("resid_post", [-1])[0], c["resid_post", -1])
    assert torch.equal(c.stack("scale", sub="ln1")[1], c["scale", 1, "ln1"])
    assert torch.equal(c.stack("attn.hook_pattern", layers=1)[0], c["pattern", 0])
    with pytest.raises(KeyError, match="out of range"): c["resid_post", n]
    with pytest.raises(TypeError): c[3]

def test_key_error_lists_nearest_and_names_filter(models):
    m = get_model(models, "gpt_neox")
    _, c = m.run_with_cache(tokens(), names_filter=lambda s: s.endswith("resid_post"))
    with pytest.raises(KeyError) as e: c["resid_pre", 1]
    msg = str(e.value)
    assert "'blocks.1.hook_resid_pre' is not in this cache" in msg
    assert "blocks.1.hook_resid_post" in msg and "names_filter" in msg and "run_with_cache" in msg
    with pytest.raises(KeyError) as e: c["resid_mid", 0]     # parallel attention+MLP: no such site
    assert "parallel" in str(e.value) and "names_filter" not in str(e.value)
    with pytest.raises(KeyError, match="not a hook site"): c["blocks.1.hook_resid_pots"]
    with pytest.raises(KeyError, match="names_filter") as e: c.apply_ln_to_stack(torch.zeros(1, 2, 7, 32))
    assert "ln_final.hook_scale" in str(e.value)

def test_repr(models):
    m = get_model(models, "gpt2")
    _, c = m.run_with_cache(tokens())
    r = repr(c)
    assert r.startswith(f"ActivationCache({len(c)} activations, batch 2 × pos 7") and "MB" in r
    assert "hook_embed" in r and "[2, 7, 32]" in r and "more" in r

# --- batch, device, files -----------------------------------------------------------------------------------

def test_remove_batch_dim(models):
    m = get_model(models, "gpt2")
    ids = tokens()
    _, c = m.run_with_cache(ids[:1])
    full = {k: v.shape for k, v in c.items()}
    c.remove_batch_dim()
    assert not c.has_batch_dim and all(c[k].shape == s[1:] for k, s in full.items())
    assert c["pattern", 0].shape == (m.cfg.n_heads, 7, 7)
    close(c.accumulated_resid(apply_ln=True)[-1], norm_out(m, c, "ln_final"))
    close(c.decompose_resid().sum(0), c["resid_post", -1])
    _, c2 = m.run_with_cache(ids)
    with pytest.raises(ValueError, match="batch of 2"): c2.remove_batch_dim()
    one = c2.apply_slice_to_batch_dim(1)
    assert not one.has_batch_dim and torch.equal(one["resid_post", 0], c2["resid_post", 0][1])   # exact: indexing
    assert one["hook_pos_embed"].shape == (7, m.cfg.d_model)

def test_save_load_round_trip(models, tmp_path):
    m = get_model(models, "gpt2")
    _, c = m.run_with_cache(tokens())
    path = c.save(tmp_path / "sub" / "cache.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["cache.safetensors"]   # no temp file left
    back = ActivationCache.load(path, model=m)
    assert list(back) == list(c) and back.has_batch_dim
    for k in c:
        assert back[k].dtype == c[k].dtype and torch.equal(back[k], c[k]), k   # exact: the bytes round-trip
    close(back.accumulated_resid(apply_ln=True)[-1], norm_out(m, c, "ln_final"))
    bare = ActivationCache.load(path)
    assert bare.model is None and bare.n_layers == m.cfg.n_layers and torch.equal(bare["resid_post", -1], c["resid_post", -1])
    close(bare.decompose_resid().sum(0), c["resid_post", -1])       # needs no weights
    with pytest.raises(ValueError, match="model=model"): bare.logit_attrs(bare.decompose_resid(), 3)
    # a batch-less cache keeps that flag
    _, one = m.run_with_cache(tokens()[:1])
    one.remove_batch_dim().save(tmp_path / "one.safetensors")
    assert not ActivationCache.load(tmp_path / "one.safetensors").has_batch_dim
    # another model is refused
    with pytest.raises(ValueError, match="different model"): ActivationCache.load(path, model=get_model(models, "llama"))

def test_save_never_pickles(models, tmp_path):
    from safetensors import safe_open
    m = get_model(models, "llama")
    _, c = m.run_with_cache(tokens(), names_filter=lambda s: "resid" in s)
    p = c.save(tmp_path / "c.safetensors")
    with safe_open(str(p), "pt") as f: assert "deeplens" in f.metadata() and set(f.keys()) == set(c.keys())

def test_to(models):
    m = get_model(models, "llama")
    _, c = m.run_with_cache(tokens(), names_filter=lambda s: "resid" in s)
    assert c.to("cpu") is c and c.to(torch.float64)["resid_post", 0].dtype == torch.float64
