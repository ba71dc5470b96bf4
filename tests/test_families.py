"""Cross-checks of HookedModel against plain transformers, for every supported family (tiny random models)."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
from tiny import FAMILIES, tiny_hf, eager_copy, tokens
from deeplens.model import HookedModel, load_model

ATOL = 1e-5

@pytest.fixture(scope="module", params=FAMILIES + ["default"])
def fam(request):
    "Each tiny random family, and the embedded default model (SmolLM2-135M-Instruct)."
    if request.param == "default":
        m = load_model(verbose=False)
        return "default", m.hf, m
    hf = tiny_hf(request.param)
    return request.param, hf, HookedModel(hf)

def hf_out(hf, ids, **kw):
    with torch.no_grad(): return hf(ids, output_hidden_states=True, **kw)

def test_logits_identical_without_hooks(fam):
    name, hf, m = fam
    ids = tokens()
    with torch.no_grad():
        ref = hf(ids).logits
        assert torch.equal(m(ids), ref)                  # exact: no hooks, the HF forward itself
        assert torch.equal(m.run_with_hooks(ids), ref)

def test_residual_sites_match_hidden_states(fam):
    name, hf, m = fam
    ids = tokens()
    hs = hf_out(hf, ids).hidden_states           # embeddings, then each block's output (last one after the final norm)
    logits, cache = m.run_with_cache(ids, lambda n: "resid" in n or n == "ln_final.hook_normalized")
    L = m.cfg.n_layers
    for l in range(L):
        torch.testing.assert_close(cache[f"blocks.{l}.hook_resid_pre"], hs[l], atol=ATOL, rtol=0)
    for l in range(L - 1):
        torch.testing.assert_close(cache[f"blocks.{l}.hook_resid_post"], hs[l + 1], atol=ATOL, rtol=0)
    # hook_normalized is before the norm's weight and bias (TransformerLens' convention); with them it is the output
    mod = m.norm_module("ln_final")
    w, b = getattr(mod, "weight", None), getattr(mod, "bias", None)
    out = cache["ln_final.hook_normalized"]
    if w is not None: out = out * ((1 + w) if m.cfg.normalization == "RMS1p" else w)
    torch.testing.assert_close(out if b is None else out + b, hs[L], atol=ATOL, rtol=0)
    # exact: read-only hooks on module outputs leave the same kernels running on the same tensors
    assert torch.equal(logits, hf(ids).logits)

def test_pattern_equals_eager_attention(fam):
    name, hf, m = fam
    ids = tokens()
    with torch.no_grad():
        ref = eager_copy(hf)(ids, output_attentions=True).attentions
    _, cache = m.run_with_cache(ids, lambda n: n.endswith("hook_pattern"))
    for l in range(m.cfg.n_layers):
        torch.testing.assert_close(cache[f"blocks.{l}.attn.hook_pattern"], ref[l], atol=ATOL, rtol=0)

def test_z_through_W_O_equals_attn_out(fam):
    name, hf, m = fam
    ids = tokens()
    # Gemma 2 normalises the attention output before the residual: compare with the o-projection's output.
    out_site = "blocks.{l}.attn.hook_result" if name == "gemma2" else "blocks.{l}.hook_attn_out"
    _, cache = m.run_with_cache(ids)
    W_O, b_O = m.W_O, m.b_O
    for l in range(m.cfg.n_layers):
        z = cache[f"blocks.{l}.attn.hook_z"].double()
        got = torch.einsum("bphd,hdm->bpm", z, W_O[l].double()) + b_O[l].double()   # exact enough: float64
        want = cache[out_site.format(l=l)]
        if name == "gemma2": want = want.sum(2) + b_O[l]
        # nn.Linear sums n_heads * d_head float32 products: its rounding error grows with sum |z| |W_O|
        # (and its blocking, so its last bits, can change with buffer alignment between runs)
        scale = torch.einsum("bphd,hdm->bpm", z.abs(), W_O[l].abs().double())
        assert ((want.double() - got).abs() <= ATOL + 1e-5 * scale).all(), (want.double() - got).abs().max()

ATTN_INTERNAL = ("hook_rot_q", "hook_rot_k", "hook_attn_scores", "hook_pattern")

def test_identity_hooks_change_nothing(fam):
    """A hook returning a new tensor with the activation's values, on every site, changes nothing.
    Hooks on attention internals run the hooked layers through eager attention, so the reference for the
    all-sites run is HF's eager attention (SDPA and eager differ by float rounding on their own)."""
    name, hf, m = fam
    ids = tokens()
    with torch.no_grad(): ref, ref_eager = hf(ids).logits, eager_copy(hf)(ids).logits
    seen = []
    def ident(a, hook): seen.append(hook.name); return a.clone()    # a *new* tensor with the same values
    got = m.run_with_hooks(ids, fwd_hooks=[(lambda n: True, ident)])
    assert set(seen) == set(m.hook_names())
    # deeplens' eager attention vs HF's: the same maths in other matmul shapes (grouped-query heads not repeated), so
    # to rounding, which on the default model (30 layers, logits of size ~20) reaches 2.5e-5 on AVX2 and 8e-5 on SSE
    # code paths
    torch.testing.assert_close(got, ref_eager, atol=2e-4 if name == "default" else ATOL, rtol=0)
    got = m.run_with_hooks(ids, fwd_hooks=[(lambda n: not n.endswith(ATTN_INTERNAL), ident)])
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)

def test_rotated_qk_hooks_keep_sdpa_and_write_like_eager(fam):
    """Hooks on rot_q/rot_k alone leave z to SDPA (no attention matrix is built): identity changes nothing
    against the SDPA model, and a write gives what the same write gives through the eager path (forced by
    also reading the pattern)."""
    name, hf, m = fam
    if not any(n.endswith("hook_rot_q") for n in m.hook_names()):   # learned positions: the site says why it is absent
        with pytest.raises(ValueError, match="not rotated"): m.run_with_hooks(tokens(), fwd_hooks=[("blocks.0.attn.hook_rot_q", lambda a, h: a)])
        return
    ids, l = tokens(), m.cfg.n_layers - 1
    with torch.no_grad(): ref = hf(ids).logits
    got = m.run_with_hooks(ids, fwd_hooks=[(lambda n: n.endswith(("hook_rot_q", "hook_rot_k")), lambda a, h: a.clone())])
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    def zero_head(q, hook): q = q.clone(); q[:, :, 0] = 0; return q
    write = [(f"blocks.{l}.attn.hook_rot_q", zero_head)]
    fast = m.run_with_hooks(ids, fwd_hooks=write)
    eager = m.run_with_hooks(ids, fwd_hooks=write + [(f"blocks.{l}.attn.hook_pattern", lambda a, h: None)])
    tol = 1e-4 if name == "default" else ATOL      # SDPA vs eager rounding over 30 layers, logits of size ~20
    torch.testing.assert_close(fast, eager, atol=tol, rtol=0)
    assert (fast - ref).abs().max() > 1e-3                       # the write did something

def test_zero_head_via_hook_z_matches_o_proj_prehook(fam):
    name, hf, m = fam
    ids, l, h, d = tokens(), m.cfg.n_layers - 1, 1, m.cfg.d_head
    def zero_z(z, hook): z = z.clone(); z[:, :, h] = 0; return z
    got = m.run_with_hooks(ids, fwd_hooks=[(f"blocks.{l}.attn.hook_z", zero_z)])
    o = hf.get_submodule(f"{m.spec.layers}.{l}.{m.spec.o}")
    def pre(mod, args):
        x = args[0].clone(); x[..., h * d:(h + 1) * d] = 0; return (x,)
    handle = o.register_forward_pre_hook(pre)
    try:
        with torch.no_grad(): want = hf(ids).logits
    finally: handle.remove()
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    with torch.no_grad(): assert (got - hf(ids).logits).abs().max() > 1e-4   # the ablation did something

def test_hooks_removed_and_attention_restored(fam):
    name, hf, m = fam
    impl = hf.config._attn_implementation
    before = hook_dicts(hf)                     # transformers installs a few hooks of its own
    m.run_with_cache(tokens())
    assert hook_dicts(hf) == before
    assert not any("_attn" in vars(mod) for mod in hf.modules())
    assert hf.config._attn_implementation == impl

def hook_dicts(hf):
    return [(n, tuple(mod._forward_hooks), tuple(mod._forward_pre_hooks), tuple(mod._backward_hooks),
             tuple(mod._backward_pre_hooks)) for n, mod in hf.named_modules()]
