"""HookedModel.generate: unchanged tokens against plain transformers, and a clear error naming the hook when a
generation's logits turn nan/inf (the hook passed in fwd_hooks, a hook attached around the call, or none)."""
import os, sys
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
import deeplens.model
from tiny import tiny_hf, tokens
from deeplens.model import HookedModel

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def tiny():
    return HookedModel(tiny_hf("llama"))

def hook_count(hf):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hf.modules())

def write_nan(act, hook):
    act = act.clone(); act[..., 0] = float("nan"); return act

def read_only(act, hook): return None

def test_tokens_equal_plain_transformers(tiny):
    "Same computation as hf.generate, so the same tokens (exact by construction: same kernels, same shapes)."
    ids = tokens(1, 5, seed=2)
    with torch.no_grad():
        ref = tiny.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert torch.equal(tiny.generate(ids, max_new_tokens=6, return_type="tokens"), ref)
    # a writing hook: the same as adding the same tensor with a bare PyTorch forward hook on the decoder layer
    v = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(0))
    got = tiny.generate(ids, max_new_tokens=6, fwd_hooks=[("blocks.0.hook_resid_post", lambda a, h: a + v)],
                        return_type="tokens")
    h = tiny.hf.model.layers[0].register_forward_hook(lambda m, a, out: (out[0] + v, *out[1:]) if isinstance(out, tuple) else out + v)
    try:
        with torch.no_grad():
            ref = tiny.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    finally: h.remove()
    assert torch.equal(got, ref)

def test_nan_from_a_passed_hook_is_named(tiny):
    n0 = hook_count(tiny.hf)
    hooks = [("blocks.0.hook_resid_post", read_only), ("blocks.1.hook_mlp_out", write_nan)]
    with pytest.raises(ValueError, match=r"new token 1 \(of at most 5\).*fwd_hooks\[1\] \(write_nan\) at blocks.1.hook_mlp_out returned"):
        tiny.generate(tokens(1, 4), max_new_tokens=5, fwd_hooks=hooks)
    assert hook_count(tiny.hf) == n0
    # a filter that matches several sites: the site where it happened is named
    with pytest.raises(ValueError, match=r"fwd_hooks\[0\] \(write_nan\) at blocks.0.hook_resid_post"):
        tiny.generate(tokens(1, 4), max_new_tokens=5, fwd_hooks=[(lambda n: n.endswith("resid_post"), write_nan)])
    assert hook_count(tiny.hf) == n0

def test_inf_at_a_later_step_names_the_step_and_stops(tiny):
    calls = []
    def late_inf(act, hook):
        calls.append(act.shape[1])
        if len(calls) == 4: return act * float("inf")     # the 3rd one-token forward: the logits for new token 4
    with pytest.raises(ValueError, match=r"new token 4 \(of at most 10\).*fwd_hooks\[0\] \(.*late_inf\)"):
        tiny.generate(tokens(1, 4), max_new_tokens=10, fwd_hooks=[("blocks.1.hook_attn_out", late_inf)])
    assert calls == [4, 1, 1, 1]          # raised before the next forward ran its hooks
    assert hook_count(tiny.hf) == 0

def test_large_outputs_probed_on_the_spot(tiny, monkeypatch):
    "Outputs above deeplens.model._KEEP elements are probed when written instead of kept: same diagnosis."
    monkeypatch.setattr(deeplens.model, "_KEEP", 0)
    with pytest.raises(ValueError, match=r"fwd_hooks\[1\] \(write_nan\) at blocks.1.attn.hook_pattern returned"):
        tiny.generate(tokens(1, 4), max_new_tokens=3,
                      fwd_hooks=[("blocks.0.hook_resid_post", read_only), ("blocks.1.attn.hook_pattern", write_nan)])
    assert hook_count(tiny.hf) == 0

def test_hooks_attached_outside_the_call(tiny):
    with tiny.hooks([("blocks.0.hook_mlp_out", write_nan)]):
        with pytest.raises(ValueError, match="no hook was passed to generate: a hook attached outside this call"):
            tiny.generate(tokens(1, 4), max_new_tokens=3)
        with pytest.raises(ValueError, match=r"first hook to see non-finite values is fwd_hooks\[0\] \(read_only\) at "
                                             r"blocks.1.hook_resid_pre, which returned its input"):
            tiny.generate(tokens(1, 4), max_new_tokens=3, fwd_hooks=[("blocks.1.hook_resid_pre", read_only)])
        # a hook upstream of the nan returned finite values: the message says so, with the largest value it wrote
        with pytest.raises(ValueError, match=r"every hook passed to generate returned finite values \(the largest "
                                             r"magnitude, .*fwd_hooks\[0\] \(.*<lambda>\) at blocks.0.hook_resid_pre"):
            tiny.generate(tokens(1, 4), max_new_tokens=3, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, h: a * 2)])
    assert hook_count(tiny.hf) == 0

def test_sampling_from_nan_logits_gets_the_clear_error(tiny):
    "torch.multinomial would raise its own RuntimeError on nan probabilities; generate explains it instead."
    with pytest.raises(ValueError, match=r"fwd_hooks\[0\] \(write_nan\)"):
        tiny.generate(tokens(1, 4), max_new_tokens=3, do_sample=True, fwd_hooks=[("blocks.1.hook_resid_post", write_nan)])
    assert hook_count(tiny.hf) == 0

def test_malformed_fwd_hooks_still_get_the_hooks_error(tiny):
    with pytest.raises(TypeError, match="not callable"):
        tiny.generate(tokens(1, 4), max_new_tokens=2, fwd_hooks=[("blocks.0.hook_resid_post", 3)])
    assert hook_count(tiny.hf) == 0
