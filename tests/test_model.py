"""HookedModel behaviour: inputs and padding, writes, gradients, generation, weight views, errors."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
from tiny import tiny_hf, tokens
from deeplens.model import HookedModel, load_model

ATOL = 1e-5

@pytest.fixture(scope="module")
def smol():
    return load_model(verbose=False)

@pytest.fixture(scope="module")
def tiny():
    return {f: HookedModel(tiny_hf(f)) for f in ("gpt2", "llama", "gpt_neox", "gptj", "phi3", "opt")}

def hook_dicts(hf):
    return [(n, tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks),
             tuple(m._backward_pre_hooks)) for n, m in hf.named_modules()]

# --- inputs -------------------------------------------------------------------------------------------------

def test_string_logits_equal_plain_hf(smol):
    enc = smol.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad(): ref = smol.hf(**enc).logits
    assert torch.equal(smol("The capital of France is"), ref)   # exact: the same forward on the same tokens

@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_keeps_positions(smol, side):
    texts = ["The quick brown fox jumps over the lazy dog", "Hello world"]
    names = ["blocks.5.hook_resid_post", "blocks.5.attn.hook_pattern", "hook_logits"]
    _, batch = smol.run_with_cache(texts, names, padding_side=side)
    ids, mask = smol.to_tokens(texts, padding_side=side), None
    for i, t in enumerate(texts):
        _, single = smol.run_with_cache(t, names)
        n = single["hook_logits"].shape[1]
        sl = slice(ids.shape[1] - n, None) if side == "left" else slice(0, n)
        torch.testing.assert_close(batch["blocks.5.hook_resid_post"][i, sl], single["blocks.5.hook_resid_post"][0], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(batch["hook_logits"][i, sl], single["hook_logits"][0], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(batch["blocks.5.attn.hook_pattern"][i, :, sl, sl], single["blocks.5.attn.hook_pattern"][0], atol=1e-5, rtol=0)

def test_token_helpers(smol):
    s = "The capital of France is"
    toks = smol.to_tokens(s)
    assert toks.shape[0] == 1 and smol.to_string(toks[0]) == s
    assert "".join(smol.to_str_tokens(s)) == s
    assert smol.to_single_token(" Paris") == toks.new_tensor(smol.tokenizer.encode(" Paris")).item()
    with pytest.raises(ValueError, match="not one"): smol.to_single_token(" Parisian capital")
    with pytest.raises(TypeError, match="inputs must be"): smol(42)

# --- writes -------------------------------------------------------------------------------------------------

def test_write_resid_pre_equals_plain_prehook(tiny):
    m = tiny["llama"]; ids = tokens()
    v = torch.randn(m.cfg.d_model)
    got = m.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_resid_pre", lambda a, h: a + v)])
    block = m.hf.model.layers[1]
    hd = block.register_forward_pre_hook(lambda mod, a, k: ((a[0] + v, *a[1:]), k), with_kwargs=True)
    try:
        with torch.no_grad(): want = m.hf(ids).logits
    finally: hd.remove()
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)

def test_write_resid_mid_reaches_skip_connection(tiny):
    m = tiny["llama"]; ids = tokens()
    v = torch.randn(m.cfg.d_model)
    _, cache = m.run_with_cache(ids, ["blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"])
    with m.hooks(fwd_hooks=[("blocks.0.hook_resid_mid", lambda a, h: a + v)]):
        _, c2 = m.run_with_cache(ids, ["blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"])
    # resid_post = (resid_mid + v) + mlp_out(resid_mid + v): the skip path carries the write too
    torch.testing.assert_close(c2["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_mid"] + v + c2["blocks.0.hook_mlp_out"], atol=ATOL, rtol=0)

def test_write_fused_q_only_changes_queries(tiny):
    m = tiny["gpt2"]; ids = tokens()
    _, clean = m.run_with_cache(ids, ["blocks.0.attn.hook_k", "blocks.0.attn.hook_v"])
    with m.hooks(fwd_hooks=[("blocks.0.attn.hook_q", lambda q, h: torch.zeros_like(q))]):
        _, c = m.run_with_cache(ids, ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.0.attn.hook_pattern"])
    # exact: the same c_attn matmul; the write replaces only the query slice of its output
    assert torch.equal(c["blocks.0.attn.hook_k"], clean["blocks.0.attn.hook_k"])
    assert torch.equal(c["blocks.0.attn.hook_v"], clean["blocks.0.attn.hook_v"])
    # zero queries → uniform attention over the causal prefix
    p = c["blocks.0.attn.hook_pattern"][0, 0]
    torch.testing.assert_close(p[3, :4], torch.full((4,), 0.25), atol=ATOL, rtol=0)

def norm_output(m, c, which):
    "A norm's output from the cache: hook_normalized (before the weight) times the weight (1 + w for Gemma), plus the bias."
    mod = m.norm_module(which)
    w, b = getattr(mod, "weight", None), getattr(mod, "bias", None)
    y = c[f"{which}.hook_normalized"]
    if w is not None: y = y * ((1 + w) if m.cfg.normalization == "RMS1p" else w)
    return y if b is None else y + b

def test_write_scale_and_result(tiny):
    m = tiny["gpt2"]; ids = tokens()
    with torch.no_grad(): ref = m.hf(ids).logits
    # doubling ln_final's scale halves hook_normalized (x / scale, as in TransformerLens) and the centred part of
    # the norm's output, whichever of the two hooks was attached first
    _, c = m.run_with_cache(ids, ["ln_final.hook_normalized", "ln_final.hook_scale", "blocks.1.hook_resid_post"])
    ln = m.hf.transformer.ln_f
    double = ("ln_final.hook_scale", lambda s, h: 2 * s)
    with m.hooks(fwd_hooks=[double]):
        _, c2 = m.run_with_cache(ids, ["ln_final.hook_normalized"])
    seen = {}
    with m.hooks(fwd_hooks=[("ln_final.hook_normalized", lambda a, h: seen.setdefault("n", a.clone()))]):
        got = m.run_with_hooks(ids, fwd_hooks=[double])
    for halved in (c2["ln_final.hook_normalized"], seen["n"]):
        torch.testing.assert_close(halved, c["ln_final.hook_normalized"] / 2, atol=ATOL, rtol=0)
    torch.testing.assert_close(got, (norm_output(m, c, "ln_final") - ln.bias) / 2 @ m.W_U + ln.bias @ m.W_U, atol=1e-4, rtol=0)
    # dropping one head's result equals zeroing its z
    def drop(r, h): r = r.clone(); r[:, :, 2] = 0; return r
    def zero(z, h): z = z.clone(); z[:, :, 2] = 0; return z
    a = m.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_result", drop)])
    b = m.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_z", zero)])
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert (a - ref).abs().max() > 1e-4

@pytest.mark.parametrize("fam", ["gpt2", "llama", "opt"])
def test_write_normalized_changes_what_the_norm_outputs(tiny, fam):
    "Writing hook_normalized (before the weight) gives the norm the output new·w + b, and nothing else changes."
    m = tiny[fam]; ids = tokens()
    _, c = m.run_with_cache(ids, ["ln_final.hook_normalized", "blocks.1.ln2.hook_normalized", "hook_logits"])
    mod = m.norm_module("ln_final")
    b = torch.zeros(m.cfg.d_model) if getattr(mod, "bias", None) is None else mod.bias
    zeroed = m.run_with_hooks(ids, fwd_hooks=[("ln_final.hook_normalized", lambda a, h: torch.zeros_like(a))])
    torch.testing.assert_close(zeroed, (b @ m.W_U + m.b_U).expand_as(zeroed), atol=ATOL, rtol=0)
    doubled = m.run_with_hooks(ids, fwd_hooks=[("ln_final.hook_normalized", lambda a, h: 2 * a)])
    torch.testing.assert_close(doubled, (2 * (norm_output(m, c, "ln_final") - b) + b) @ m.W_U + m.b_U, atol=1e-4, rtol=0)
    # the MLP's norm (OPT: a flattened [batch*pos, d] input): writing back the same values changes nothing
    same = m.run_with_hooks(ids, fwd_hooks=[("blocks.1.ln2.hook_normalized", lambda a, h: a.clone())])
    assert torch.equal(same, c["hook_logits"])   # exact: an unchanged value is no write, the forward runs as it was

def test_gradients_of_scale_and_normalized(tiny):
    "With gradient hooks on both, dL/dscale = -Σ dL/dnormalized · normalized / scale, as for x / scale in TransformerLens."
    m = tiny["llama"]; ids = tokens()
    names = ["ln_final.hook_normalized", "ln_final.hook_scale"]
    grabbed = {}
    def keep(mod, a): a[0].retain_grad(); grabbed["out"] = a[0]     # the final norm's output, as lm_head reads it
    hd = m.hf.lm_head.register_forward_pre_hook(keep)
    try: loss, c = m.run_with_cache(ids, names, incl_bwd=True, return_type="loss")
    finally: hd.remove(); m.hf.zero_grad()
    g_n, g_s, n, s = c["ln_final.hook_normalized_grad"], c["ln_final.hook_scale_grad"], c[names[0]], c[names[1]]
    torch.testing.assert_close(g_n, grabbed["out"].grad * m.hf.model.norm.weight, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(g_s, -(g_n * n).sum(-1, keepdim=True) / s, atol=1e-6, rtol=1e-4)
    assert g_s.abs().max() > 0

# --- gradients ----------------------------------------------------------------------------------------------

def test_incl_bwd_matches_autograd(tiny):
    m = tiny["llama"]; ids = tokens()
    loss, cache = m.run_with_cache(ids, ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.0.attn.hook_q"],
                                   incl_bwd=True, return_type="loss")
    grabbed = {}
    def keep(mod, a, out):
        out.retain_grad(); grabbed["out"] = out
    hd = m.hf.model.layers[0].register_forward_hook(keep)
    try:
        ref_loss = m(ids, return_type="loss"); ref_loss.backward()
    finally: hd.remove()
    m.hf.zero_grad()
    torch.testing.assert_close(loss, ref_loss.detach())
    torch.testing.assert_close(cache["blocks.0.hook_resid_post_grad"], grabbed["out"].grad, atol=1e-6, rtol=0)
    assert cache["blocks.1.attn.hook_pattern_grad"].shape == cache["blocks.1.attn.hook_pattern"].shape
    assert cache["blocks.0.attn.hook_q_grad"].shape == cache["blocks.0.attn.hook_q"].shape
    with pytest.raises(ValueError, match="scalar"): m.run_with_cache(ids, "blocks.0.hook_resid_post", incl_bwd=True)

def test_bwd_hook_scales_gradient(tiny):
    m = tiny["llama"]; ids = tokens()
    def grads(bwd):
        m.hf.zero_grad()
        with m.hooks(bwd_hooks=bwd): m(ids, return_type="loss").backward()
        return m.hf.model.embed_tokens.weight.grad.clone()
    g0 = grads([])
    g1 = grads([("blocks.0.hook_resid_pre", lambda g, h: 0 * g)])
    m.hf.zero_grad()
    assert g0.abs().sum() > 0 and g1.abs().sum() == 0   # exact: everything below the hook is multiplied by zero

# --- generation ---------------------------------------------------------------------------------------------

def test_paris(smol):
    out = smol.generate("The capital of France is", max_new_tokens=5)
    assert "Paris" in out, out

def test_generate_with_hooks(smol):
    calls = []
    out = smol.generate("The capital of France is", max_new_tokens=4,
                        fwd_hooks=[("blocks.0.hook_resid_post", lambda a, h: calls.append(a.shape[1]))])
    assert calls[0] == smol.to_tokens("The capital of France is").shape[1] and calls[1:] == [1, 1, 1]
    # a hook that wrecks the residual changes the continuation
    bad = smol.generate("The capital of France is", max_new_tokens=4,
                        fwd_hooks=[("blocks.10.hook_resid_post", lambda a, h: torch.zeros_like(a))])
    assert bad != out
    assert smol.generate(["Hello", "The capital of France is"], max_new_tokens=3)[1].startswith("The capital of France is")

# --- weight views -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fam", ["gpt2", "llama", "gpt_neox", "phi3", "opt", "gptj"])
def test_weight_views_reproduce_sites(tiny, fam):
    m = tiny[fam]; ids = tokens(); L = m.cfg.n_layers
    _, c = m.run_with_cache(ids)
    W_Q, b_Q, W_V, b_V = m.W_Q, m.b_Q, m.W_V, m.b_V
    assert W_Q.shape == (L, m.cfg.n_heads, m.cfg.d_model, m.cfg.d_head)
    assert W_V.shape == (L, m.cfg.n_kv_heads, m.cfg.d_model, m.cfg.d_head)
    assert m.W_O.shape == (L, m.cfg.n_heads, m.cfg.d_head, m.cfg.d_model)
    assert m.W_U.shape == (m.cfg.d_model, m.cfg.d_vocab) and m.W_E.shape == (m.cfg.d_vocab, m.cfg.d_model)
    for l in range(L):
        x = norm_output(m, c, f"blocks.{l}.ln1")      # what q, k, v read: the norm's output
        torch.testing.assert_close(torch.einsum("bpm,hmd->bphd", x, W_Q[l]) + b_Q[l], c[f"blocks.{l}.attn.hook_q"], atol=ATOL, rtol=0)
        torch.testing.assert_close(torch.einsum("bpm,hmd->bphd", x, W_V[l]) + b_V[l], c[f"blocks.{l}.attn.hook_v"], atol=ATOL, rtol=0)
        x2 = norm_output(m, c, f"blocks.{l}.ln2") if f"blocks.{l}.ln2.hook_normalized" in c else x
        W = m.W_gate if m.cfg.gated_mlp else m.W_in
        b = 0 if m.cfg.gated_mlp else m.b_in[l]
        torch.testing.assert_close(x2 @ W[l] + b, c[f"blocks.{l}.mlp.hook_pre"], atol=ATOL, rtol=0)
        torch.testing.assert_close(c[f"blocks.{l}.mlp.hook_post"] @ m.W_out[l] + m.b_out[l], c[f"blocks.{l}.hook_mlp_out"], atol=ATOL, rtol=0)
    torch.testing.assert_close(norm_output(m, c, "ln_final") @ m.W_U + m.b_U, c["hook_logits"], atol=ATOL, rtol=0)
    if m.cfg.positional_embedding == "learned":
        assert m.W_pos.shape[1] == m.cfg.d_model
        torch.testing.assert_close(c["hook_pos_embed"][0], m.W_pos[:ids.shape[1]], atol=0, rtol=0)   # exact: rows of W_pos

def test_bias_views_of_bias_free_projections_are_zeros(tiny):
    "Llama's projections have no biases: b_Q ... b_U are zeros of TransformerLens' shapes (TL's bridge raises instead)."
    m = tiny["llama"]; L, h, kv, d = m.cfg.n_layers, m.cfg.n_heads, m.cfg.n_kv_heads, m.cfg.d_head
    attn = m.hf.model.layers[0].self_attn
    assert attn.q_proj.bias is None and attn.o_proj.bias is None and m.hf.model.layers[0].mlp.down_proj.bias is None
    shapes = {"b_Q": (L, h, d), "b_K": (L, kv, d), "b_V": (L, kv, d), "b_O": (L, m.cfg.d_model),
              "b_in": (L, m.cfg.d_mlp), "b_out": (L, m.cfg.d_model), "b_U": (m.cfg.d_vocab,)}
    for name, shape in shapes.items():
        b = getattr(m, name)
        assert b.shape == shape and not b.any(), name
    # and a formula written with the bias is exact on this model: q = x W_Q + b_Q
    _, c = m.run_with_cache(tokens(), ["blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_q"])
    q = torch.einsum("bpm,hmd->bphd", norm_output(m, c, "blocks.0.ln1"), m.W_Q[0]) + m.b_Q[0]
    torch.testing.assert_close(q, c["blocks.0.attn.hook_q"], atol=ATOL, rtol=0)

# --- errors -------------------------------------------------------------------------------------------------

def test_unknown_hook_lists_closest(tiny):
    m = tiny["llama"]
    with pytest.raises(ValueError, match=r"unknown hook name.*blocks\.1\.hook_resid_post"):
        m.run_with_cache(tokens(), "blocks.1.hook_resid_pots")
    with pytest.raises(ValueError, match="out of range"):
        m.run_with_cache(tokens(), "blocks.9.hook_resid_post")

def test_wrong_shape_names_hook_and_shapes(tiny):
    m = tiny["llama"]
    with pytest.raises(ValueError, match=r"blocks\.0\.hook_resid_post returned shape \(2, 7\).*\(2, 7, 32\)"):
        m.run_with_hooks(tokens(), fwd_hooks=[("blocks.0.hook_resid_post", lambda a, h: a[..., 0])])

@pytest.mark.parametrize("fam", ["llama", "gptj"])
def test_exception_in_hook_leaves_nothing_attached(tiny, fam):
    m = tiny[fam]
    before, impl = hook_dicts(m.hf), m.hf.config._attn_implementation
    def boom(a, h): raise RuntimeError("boom")
    hooks = [(lambda n: n.endswith("hook_resid_pre") or n.endswith("hook_q"), lambda a, h: None),
             ("blocks.1.attn.hook_pattern", boom)]
    with pytest.raises(RuntimeError, match="boom"):
        m.run_with_hooks(tokens(), fwd_hooks=hooks)
    assert hook_dicts(m.hf) == before and m.hf.config._attn_implementation == impl
    assert not any("_attn" in vars(mod) for mod in m.hf.modules())
    with pytest.raises(ValueError):   # failing while attaching (a bad name after good ones) also cleans up
        m.run_with_hooks(tokens(), fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, h: None), ("nope", lambda a, h: None)])
    assert hook_dicts(m.hf) == before

@pytest.mark.parametrize("fam,name,why", [
    ("llama", "hook_pos_embed", "rotary"),
    ("gpt_neox", "blocks.0.hook_resid_mid", "parallel"),
    ("gpt2", "blocks.0.attn.hook_rot_q", "learned embedding"),
    ("gptj", "blocks.0.ln2.hook_normalized", "shared"),
    ("gpt2", "blocks.0.mlp.hook_pre_linear", "not gated"),
])
def test_missing_site_says_why(tiny, fam, name, why):
    with pytest.raises(ValueError, match=why):
        tiny[fam].run_with_cache(tokens(), name)

def test_add_and_reset_hooks(tiny):
    m = tiny["llama"]; ids = tokens()
    before = hook_dicts(m.hf)
    with torch.no_grad(): ref = m.hf(ids).logits
    m.add_hook("blocks.0.hook_resid_post", lambda a, h: a * 0)
    assert (m(ids) - ref).abs().max() > 1e-3
    m.reset_hooks()
    assert hook_dicts(m.hf) == before and torch.equal(m(ids), ref)   # exact: no hooks, the same forward

def test_run_with_cache_pauses_the_collector(tiny):
    import gc
    m = tiny["llama"]; ids = tokens()
    seen = []
    m.add_hook("blocks.0.hook_resid_post", lambda a, h: seen.append(gc.isenabled()))
    try:
        m(ids); m.run_with_cache(ids, "blocks.1.hook_resid_post")
    finally: m.reset_hooks()
    assert seen == [True, False] and gc.isenabled()   # off inside the cached forward only, and back on after

def test_stop_at_layer(tiny):
    m = tiny["llama"]; ids = tokens()
    ran = []
    with m.hooks(fwd_hooks=[(lambda n: n.endswith("hook_resid_post"), lambda a, h: ran.append(h.layer()))]):
        with torch.no_grad(): r = m(ids, stop_at_layer=1)
    assert ran == [0]
    _, c = m.run_with_cache(ids, ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"])
    assert torch.equal(r, c["blocks.1.hook_resid_pre"])   # exact (also below): the same kernels up to that block
    with torch.no_grad(): assert torch.equal(m(ids, stop_at_layer=m.cfg.n_layers), c["blocks.1.hook_resid_post"])
    with pytest.raises(ValueError, match="stop_at_layer"): m(ids, stop_at_layer=5)

def test_cached_result_equals_hooked_result(tiny):
    m = tiny["gpt2"]; ids = tokens()
    seen = {}
    m.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_result", lambda a, h: seen.setdefault("r", a.detach().clone()))])
    _, c = m.run_with_cache(ids, "blocks.1.attn.hook_result", pos_slice=slice(2, 5))
    assert "blocks.1.attn.hook_z" not in c
    # exact: under pos_slice the result is computed for the whole sequence, by the same hook, then sliced
    torch.testing.assert_close(c["blocks.1.attn.hook_result"], seen["r"][:, 2:5], atol=0, rtol=0)
    _, c = m.run_with_cache(ids, "blocks.1.attn.hook_result")
    assert c.cache_dict.is_lazy("blocks.1.attn.hook_result")      # without pos_slice: from z, kept out of sight
    assert "blocks.1.attn.hook_z" not in c
    torch.testing.assert_close(c["blocks.1.attn.hook_result"], seen["r"], atol=0, rtol=0)   # exact: the hook's function on the same z


def test_load_model_quiet_hides_hf_progress_bars(tmp_path, monkeypatch):
    import transformers as T
    from transformers.utils import logging as hf_logging
    from deeplens.model import load_model
    hf = tiny_hf("llama"); hf.save_pretrained(tmp_path / "m")
    seen, real = [], T.AutoModelForCausalLM.from_pretrained
    def spy(*a, **k):
        seen.append(hf_logging.is_progress_bar_enabled()); return real(*a, **k)
    monkeypatch.setattr(T.AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.setattr(T.AutoTokenizer, "from_pretrained", lambda *a, **k: None)
    assert hf_logging.is_progress_bar_enabled()
    load_model(str(tmp_path / "m"), verbose=False)
    load_model(str(tmp_path / "m"))
    assert seen == [False, True] and hf_logging.is_progress_bar_enabled()   # hidden while quiet, restored after

def test_attention_hooks_survive_a_second_copy_of_the_hooks_module(tiny):
    "Another copy of deeplens.hooks (a reloaded module, a notebook run in the same process) registered the attention first."
    m = tiny["llama"]
    import importlib.util, deeplens.hooks as H
    from transformers.modeling_utils import AttentionInterface
    spec = importlib.util.spec_from_file_location("deeplens.hooks_copy", H.__file__)
    copy = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    impl = m.hf.config._attn_implementation or "eager"
    saved = AttentionInterface._global_mapping.get(f"deeplens_{impl}")
    try:
        spec.loader.exec_module(copy)
        AttentionInterface._global_mapping.pop(f"deeplens_{impl}", None)
        copy._register(impl)                                      # the copy's attention function now holds the name
        _, cache = m.run_with_cache(tokens(1, 6), names_filter="blocks.0.attn.hook_pattern")
        p = cache["blocks.0.attn.hook_pattern"]
        assert p.shape[-2:] == (6, 6) and torch.allclose(p.sum(-1), torch.ones(()), atol=1e-5)
    finally:
        if saved is not None: AttentionInterface.register(f"deeplens_{impl}", saved)
        del sys.modules[spec.name]
