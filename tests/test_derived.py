"""Sites a cache derives from other cached sites instead of hooking (resid_mid, norms, pattern, mlp post, ...):
bit-identical to the hooked tensors and to plain PyTorch hooks, guarded against hooks in between, checked once
per model, equal to what the forward produced whatever is done to other entries afterwards (or an error after an
in-place edit of what they are computed from, or of a weight), and freed without reference cycles.

Exact comparisons (torch.equal) here compare a derived entry with the hooked tensor of the same site: the
derivation is the same function on the same tensor (same kernels, same shapes) by construction, which is the
claim under test. Comparisons with an independent formula use a stated tolerance."""
import sys, os, gc, weakref
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
from torch import nn
from tiny import FAMILIES, tiny_hf, tokens
from deeplens.model import HookedModel, load_model
from deeplens.hooks import norm_eps

@pytest.fixture(scope="module", params=FAMILIES + ["default"])
def fam(request):
    if request.param == "default":
        m = load_model(verbose=False)
        return "default", HookedModel(m.hf, m.tokenizer)   # a fresh wrapper: its derivations are unchecked
    return request.param, HookedModel(tiny_hf(request.param))

def hooked_values(m, ids):
    "Every site's activation as a hook function sees it (the path that never derives)."
    seen = {}
    m.run_with_hooks(ids, fwd_hooks=[(lambda n: True, lambda a, h: seen.__setitem__(h.name, a.detach().clone()))])
    return seen

def plain_hook_values(m, ids):
    """Module inputs and outputs seen by plain PyTorch hooks, under the canonical names they correspond to;
    for a norm, its input ('x:' + name) and output ('out:' + name) under its hook_normalized name."""
    s, seen, handles = m.spec, {}, []
    def out(name, path):
        handles.append(m.hf.get_submodule(path).register_forward_hook(
            lambda mod, a, o: seen.__setitem__(name, (o[0] if isinstance(o, tuple) else o).detach().clone())))
    def inp(name, path):
        handles.append(m.hf.get_submodule(path).register_forward_pre_hook(
            lambda mod, a: seen.__setitem__(name, a[0].detach().clone())))
    def norm(name, path): inp("x:" + name, path); out("out:" + name, path)
    for l in range(m.cfg.n_layers):
        b = f"{s.layers}.{l}"
        inp(f"blocks.{l}.hook_resid_pre", b)
        norm(f"blocks.{l}.ln1.hook_normalized", f"{b}.{s.ln1}")
        if s.ln2: norm(f"blocks.{l}.ln2.hook_normalized", f"{b}.{s.ln2}")
        if s.resid_mid: inp(f"blocks.{l}.hook_resid_mid", f"{b}.{s.resid_mid}")
        inp(f"blocks.{l}.mlp.hook_post", f"{b}.{s.mlp_out_proj}")
    norm("ln_final.hook_normalized", s.ln_final)
    eager = [(lambda n: n.endswith("hook_pattern"), lambda a, h: None)]   # the cache's attention path (eager)
    try:
        with torch.no_grad(), m.hooks(eager): m.hf(ids)
    finally:
        for h in handles: h.remove()
    return seen

def test_every_site_equals_its_hook_bit_for_bit(fam):
    name, m = fam
    ids = tokens()
    ref, plain = hooked_values(m, ids), plain_hook_values(m, ids)
    for call in ("first (derivations checked against hooks)", "second (derived)"):
        logits, cache = m.run_with_cache(ids)
        lazy = [n for n in cache.keys() if cache.cache_dict.is_lazy(n)]
        if call.startswith("second"):
            assert len(lazy) >= 4 * m.cfg.n_layers, f"{name}: only {lazy} derived"
            assert all(m._derived_ok.values()), m._derived_ok
        assert list(cache.keys()) == m.hook_names()              # forward order, derived entries in place
        with torch.no_grad(): torch.testing.assert_close(logits, m.hf(ids).logits, atol=1e-4, rtol=0)   # eager attention
        for n in m.hook_names():   # exact: a derivation is the hook's own function on the same tensor
            assert torch.equal(cache[n], ref[n]), f"{name}, {call} call: {n} differs from its hook"
        for n, v in plain.items():
            if n.startswith(("x:", "out:")): continue
            want = v.view(cache[n].shape)                        # OPT's MLP sees [batch*pos, ...]
            # exact: the module's input is the tensor the block computed with the same op (its own addition,
            # act(gate) * up), the op the derivation repeats on the same tensors
            assert torch.equal(cache[n], want), f"{name}, {call} call: {n} differs from a plain PyTorch hook"
        for n in [k[2:] for k in plain if k.startswith("x:")]:
            x, mod = plain["x:" + n].view(cache[n].shape).double(), m.norm_module(n.rsplit(".", 1)[0])
            by_hand = normalized_by_hand(x, m.cfg.normalization, norm_eps(mod))   # TransformerLens' hook_normalized
            torch.testing.assert_close(cache[n].double(), by_hand, atol=1e-5, rtol=1e-5)
            w, b = getattr(mod, "weight", None), getattr(mod, "bias", None)
            gain = 1 if w is None else (1 + w if m.cfg.normalization == "RMS1p" else w)
            torch.testing.assert_close(cache[n] * gain + (0 if b is None else b),
                                       plain["out:" + n].view(cache[n].shape), atol=1e-4, rtol=1e-5)

def normalized_by_hand(x, kind, eps):
    "x (centred for LayerNorm) over sqrt(mean square + eps): the norm before its weight."
    if kind == "LN": x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()

@pytest.fixture
def llama():
    return HookedModel(tiny_hf("llama"))

def test_a_hook_in_between_means_the_site_is_hooked(llama):
    m, ids = llama, tokens()
    m.run_with_cache(ids)                                         # checks done: from here on these sites derive
    def double(a, h): return a * 2
    # a deeplens hook writing resid_mid, and a plain PyTorch pre-hook changing what ln1 of block 1 reads
    m.add_hook("blocks.0.hook_resid_mid", double)
    ln1 = m.hf.model.layers[1].input_layernorm
    h = ln1.register_forward_pre_hook(lambda mod, a: (a[0] + 1,))
    try:
        ref = hooked_values(m, ids)
        _, cache = m.run_with_cache(ids)
    finally:
        h.remove(); m.reset_hooks()
    for n in ("blocks.0.hook_resid_mid", "blocks.0.ln2.hook_normalized", "blocks.0.ln2.hook_scale",
              "blocks.1.ln1.hook_normalized", "blocks.1.hook_resid_pre"):
        assert torch.equal(cache[n], ref[n]), n              # exact: hooked like the reference, same forward
    assert not cache.cache_dict.is_lazy("blocks.1.ln1.hook_normalized")      # hooked, not derived
    assert cache.cache_dict.is_lazy("blocks.0.ln1.hook_normalized")          # nothing in its way
    shifted = normalized_by_hand(cache["blocks.1.hook_resid_pre"].double() + 1, "RMS", ln1.variance_epsilon)
    torch.testing.assert_close(cache["blocks.1.ln1.hook_normalized"].double(), shifted, atol=1e-5, rtol=1e-5)

def test_a_derivation_that_differs_is_hooked_from_then_on(llama):
    m, ids = llama, tokens()
    mlp = m.hf.model.layers[1].mlp
    class Fused(type(mlp)):   # stands for a patched kernel: act(gate)·up rounded differently from the act module
        def forward(self, x): return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x) * (1 + 2**-20))
    mlp.__class__ = Fused
    ref = hooked_values(m, ids)
    for _ in range(2):
        _, cache = m.run_with_cache(ids)
        assert m._derived_ok["mlp.hook_post"] is False and m._derived_ok["hook_resid_mid"] is True
        assert not cache.cache_dict.is_lazy("blocks.0.mlp.hook_post")
        for n in ("blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"): assert torch.equal(cache[n], ref[n]), n

def test_derived_entry_refuses_after_an_in_place_weight_edit(llama):
    m, ids = llama, tokens()
    m.run_with_cache(ids)
    _, cache = m.run_with_cache(ids)
    before = cache["blocks.0.attn.hook_result"]                             # read before the edit: fine
    with torch.no_grad(): m.hf.model.layers[1].self_attn.o_proj.weight.mul_(2)
    with pytest.raises(RuntimeError, match="changed in place"):
        cache["blocks.1.attn.hook_result"]
    assert torch.equal(cache["blocks.0.attn.hook_result"], before)          # exact: the same tensor, kept
    # exact: the block's own addition repeated on the same tensors
    assert torch.equal(cache["blocks.1.hook_resid_mid"], cache["blocks.1.hook_resid_pre"] + cache["blocks.1.hook_attn_out"])

def test_derived_entries_keep_the_forward_values_whatever_is_done_to_other_entries(llama):
    """Fault-injection finding (issue 16, BAD 1): editing cache["blocks.0.hook_resid_post"] in place used to
    change entries derived from it and read afterwards. A derived entry is the forward's value or an error."""
    m, ids = llama, tokens()
    ref = hooked_values(m, ids)
    m.run_with_cache(ids)                                         # checks done: from here on these sites derive
    downstream = ("blocks.1.hook_resid_pre", "blocks.1.ln1.hook_normalized", "blocks.1.ln1.hook_scale",
                  "blocks.1.hook_resid_mid", "blocks.1.ln2.hook_normalized", "blocks.1.ln2.hook_scale")
    # every comparison with ref below is exact: a derived entry is the hook's own function on the same tensor
    # an entry replaced in the dict: what is derived from it still comes from the forward's tensor
    _, c = m.run_with_cache(ids)
    assert all(c.cache_dict.is_lazy(n) for n in downstream)
    c.cache_dict["blocks.0.hook_resid_post"] = torch.zeros_like(c["blocks.0.hook_resid_post"])
    for n in downstream: assert torch.equal(c[n], ref[n]), n
    # an entry edited in place (the patching idiom): reading anything derived from it is an error naming both
    _, c = m.run_with_cache(ids)
    kept = c["blocks.1.ln1.hook_normalized"]                      # read before the edit: keeps the forward's value
    c["blocks.0.hook_resid_post"][:, 3] = 0
    for n in (d for d in downstream if d != "blocks.1.ln1.hook_normalized"):
        with pytest.raises(RuntimeError, match=rf"{n} is computed from blocks\.0\.hook_resid_post .* changed in place"):
            c[n]
    assert torch.equal(kept, ref["blocks.1.ln1.hook_normalized"])
    assert torch.equal(c["blocks.0.ln2.hook_normalized"], ref["blocks.0.ln2.hook_normalized"])   # not derived from it
    # an edited derived entry does not reach the entries derived from the same inputs
    _, c = m.run_with_cache(ids)
    c["blocks.1.hook_resid_mid"].zero_()
    for n in ("blocks.1.ln2.hook_normalized", "blocks.1.ln2.hook_scale"): assert torch.equal(c[n], ref[n]), n
    # hook_z edited in place: hook_result, computed from it when read, refuses
    _, c = m.run_with_cache(ids)
    c["blocks.0.attn.hook_z"].mul_(0)
    with pytest.raises(RuntimeError, match=r"blocks\.0\.attn\.hook_z was changed in place"): c["blocks.0.attn.hook_result"]
    # dropping the batch dim of a lazy cache replaces every entry: derived ones still come out right
    one = hooked_values(m, ids[:1])
    _, c = m.run_with_cache(ids[:1])
    c.remove_batch_dim()
    for n in downstream: assert torch.equal(c[n], one[n][0]), n

def test_partial_caches_and_modes_hook_what_they_cannot_derive(llama):
    m, ids = llama, tokens()
    ref = hooked_values(m, ids)
    m.run_with_cache(ids)
    # inputs not asked for: the site is hooked rather than keeping its inputs alive
    _, c = m.run_with_cache(ids, ["blocks.1.ln2.hook_scale", "blocks.1.mlp.hook_post"])
    assert list(c.keys()) == ["blocks.1.ln2.hook_scale", "blocks.1.mlp.hook_post"] and not c.cache_dict.is_lazy("blocks.1.mlp.hook_post")
    # pos_slice hooks every site, hook_result included: it is computed for the whole sequence, as in the full
    # run, and sliced afterwards (deriving it from the sliced z would be a matmul of another shape, whose last
    # bits depend on the CPU's BLAS blocking); device, autocast and incl_bwd hook every site but hook_result
    for kw, at in ((dict(pos_slice=-1), slice(-1, None)), (dict(pos_slice=[1, -2]), [1, ids.shape[1] - 2]),
                   (dict(device="cpu"), slice(None))):
        _, c = m.run_with_cache(ids, **kw)
        assert not any(c.cache_dict.is_lazy(n) for n in c.keys() if "pos_slice" in kw or not n.endswith("hook_result"))
        sl = lambda n, t: t[:, :, at] if n.endswith(("hook_pattern", "hook_attn_scores")) else t[:, at]
        # exact: the same forward, the same kernels on the same shapes, then a slice (hook_result under device:
        # derived from z on the model's device, the hook's own computation)
        for n in m.hook_names(): assert torch.equal(c[n], sl(n, ref[n])), (kw, n)
    _, c = m.run_with_cache(ids, incl_bwd=True, return_type="loss")
    assert not any(c.cache_dict.is_lazy(n) for n in c.keys() if not n.endswith("hook_result"))
    assert "blocks.1.hook_resid_mid_grad" in c     # (a forward with autograd on may round differently: close, not equal)
    torch.testing.assert_close(c["blocks.1.hook_resid_mid"], ref["blocks.1.hook_resid_mid"], atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):   # values computed under autocast are not recomputed outside it
        _, c = m.run_with_cache(ids)
    assert not any(c.cache_dict.is_lazy(n) for n in c.keys() if not n.endswith("hook_result"))

def test_a_cache_is_freed_without_the_cycle_collector(llama):
    m, ids = llama, tokens()
    m.run_with_cache(ids)
    gc.collect(); was = gc.isenabled(); gc.disable()
    try:
        _, cache = m.run_with_cache(ids)
        refs = [weakref.ref(cache.cache_dict), weakref.ref(cache["blocks.0.hook_resid_post"])]
        del cache
        assert all(r() is None for r in refs)     # reference counting alone frees it: no cycles through recipes
    finally:
        if was: gc.enable()
