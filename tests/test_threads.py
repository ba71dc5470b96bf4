"""Several threads calling one model (widgets and servers do): each call sees only its own hooks and inputs
(issue 16, WEAK: two threads' run_with_cache used to mix activations, 7 caches in 40). Calls are serialised on
a per-model lock, which a hook function may re-enter (a forward inside a hook)."""
import sys, os, threading, time
sys.path.insert(0, os.path.dirname(__file__))
import torch
from tiny import tiny_hf, tokens
from deeplens.model import HookedModel

NAMES = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "ln_final.hook_normalized"]

def run_threads(workers, timeout=120):
    barrier = threading.Barrier(len(workers))
    errors = []
    def wrap(fn):
        def run():
            try: barrier.wait(); fn()
            except BaseException as e: errors.append(e)
        return run
    ts = [threading.Thread(target=wrap(fn), daemon=True) for fn in workers]
    for t in ts: t.start()
    for t in ts: t.join(timeout)
    assert not any(t.is_alive() for t in ts), "a thread is stuck (deadlock?)"
    if errors: raise errors[0]

def test_concurrent_calls_each_see_their_own_activations():
    m = HookedModel(tiny_hf("llama"))
    inputs = {"a": tokens(seed=1), "b": tokens(seed=2), "c": tokens(seed=3)}
    ref = {k: m.run_with_cache(x, NAMES)[1] for k, x in inputs.items()}
    assert (ref["a"]["blocks.0.hook_resid_post"] - ref["b"]["blocks.0.hook_resid_post"]).abs().max() > 0.1
    mixed = []
    def cacher(key):
        def work():
            for _ in range(15):
                _, c = m.run_with_cache(inputs[key], NAMES)
                # tolerance, not equality: a thread's intra-op thread count may differ, and with it the BLAS blocking;
                # another input's activations differ by far more
                mixed.extend((key, n) for n in NAMES if not torch.allclose(c[n], ref[key][n], atol=1e-5, rtol=1e-5))
        return work
    seen = []
    def slow_hooks():         # a hook that yields the interpreter mid-forward, as a widget's hook might
        def hook(a, h): seen.append(a.detach().clone()); time.sleep(0.002)
        for _ in range(15): m.run_with_hooks(inputs["c"], fwd_hooks=[("blocks.0.hook_resid_post", hook)])
    def plain():              # plain forwards must not run while another thread's hooks are attached
        for _ in range(15): m(inputs["c"])
    run_threads([cacher("a"), cacher("b"), slow_hooks, plain])
    assert not mixed, f"{len(mixed)} cached activations held another call's input: {mixed[:4]}"
    assert len(seen) == 15 and all(torch.allclose(s, ref["c"]["blocks.0.hook_resid_post"], atol=1e-5) for s in seen)

def test_a_hook_may_call_the_model_from_another_thread():
    "Re-entrant: a hook running a forward of its own (it also sees the hooks of the run that called it)."
    m = HookedModel(tiny_hf("llama"))
    inner, started = [], []
    def hook(a, h):
        if started: return                   # the inner forward runs this hook too
        started.append(True)
        inner.append(m.run_with_cache(tokens(seed=4), "blocks.1.hook_resid_post")[1])
    run_threads([lambda: m.run_with_hooks(tokens(), fwd_hooks=[("blocks.0.hook_resid_post", hook)])], timeout=60)
    assert inner and inner[0]["blocks.1.hook_resid_post"].shape == (2, 7, m.cfg.d_model)
