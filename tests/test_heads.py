"""Head scores against attention weights from plain transformers; induction on the default model;
Causal Head Gating: exact all-ones gates, gates against a bare PyTorch hook, roles on a hand-built model
whose head roles are known (checked by ablation with plain hooks), sign convention, files, errors."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_hf, tokens, eager_copy
from deeplens.model import HookedModel, load_model
from deeplens.heads import (head_scores, induction_scores, previous_token_scores, duplicate_token_scores, repeated_tokens,
                            repeated_token_loss, top_heads, gate_hooks, CausalHeadGating, CHGResult, toy_previous_token_model,
                            _examples)

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def smol():
    return load_model(verbose=False)

@pytest.fixture(scope="module")
def toy():
    return toy_previous_token_model()

@pytest.fixture(scope="module")
def toy_data():
    x = torch.randint(0, 16, (64, 12), generator=torch.Generator().manual_seed(0))
    return x, [r[:8] for r in x], [r[6:7] for r in x]      # target: the token before the last prompt token

@pytest.fixture(scope="module")
def toy_fit(toy, toy_data):
    _, texts, targets = toy_data
    return CausalHeadGating(toy).fit(texts, targets, num_masks=1, num_updates=30, num_reg_updates=40, lr=0.2,
                                     batch_size=16, verbose=False)

def hook_count(hf):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hf.modules())

# --- pattern scores -----------------------------------------------------------------------------------------

def test_induction_on_default_model(smol):
    s = head_scores(smol, seq_len=50, n_seqs=8, seed=0)
    (l, h, best), = top_heads(s["induction"], 1)
    print(f"\nbest induction head L{l}H{h}: {best:.3f}; loss first copy {s['first_half_loss']:.3f}, "
          f"repeated copy {s['repeated_half_loss']:.3f}")
    assert s["induction"].shape == (30, 9) and best > 0.4
    assert s["repeated_half_loss"] < 0.5 * s["first_half_loss"]
    # the public wrappers return the same numbers (smaller run)
    s2 = head_scores(smol, seq_len=12, n_seqs=2, seed=1)
    assert torch.equal(induction_scores(smol, 12, 2, 1), s2["induction"])   # exact: the wrapper runs head_scores itself
    assert repeated_token_loss(smol, 12, 2, 1) == {"first_half": s2["first_half_loss"], "repeated_half": s2["repeated_half_loss"]}

@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_scores_match_plain_hf_attentions(family):
    m = HookedModel(tiny_hf(family))
    L, n = 10, 3
    s = head_scores(m, seq_len=L, n_seqs=n, seed=4, batch_size=2)       # batching across two chunks
    toks = repeated_tokens(m, L, n, seed=4)
    assert toks.shape == (n, 2 * L) and torch.equal(toks[:, :L], toks[:, L:])   # no tokenizer: no BOS
    ref = eager_copy(m.hf)
    with torch.no_grad(): out = ref(input_ids=toks, output_attentions=True)
    att = torch.stack(out.attentions, 1)                                # [batch, layer, head, q, k]
    def stripe(qs, off):
        return torch.stack([att[..., q, q + off] for q in qs], -1).mean((0, -1))
    torch.testing.assert_close(s["induction"], stripe(range(L, 2 * L), 1 - L), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s["duplicate_token"], stripe(range(L, 2 * L), -L), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s["previous_token"], stripe(range(1, 2 * L), -1), atol=1e-5, rtol=1e-4)
    nll = F.cross_entropy(out.logits[:, :-1].transpose(1, 2), toks[:, 1:], reduction="none")
    assert abs(s["first_half_loss"] - float(nll[:, :L - 1].mean())) < 1e-4
    assert abs(s["repeated_half_loss"] - float(nll[:, L:].mean())) < 1e-4
    # exact: the wrappers run head_scores with the same arguments (the same computation replayed)
    assert torch.equal(previous_token_scores(m, L, n, 4, batch_size=2), s["previous_token"])
    assert torch.equal(duplicate_token_scores(m, L, n, 4, batch_size=2), s["duplicate_token"])
    assert hook_count(m.hf) == 0

def test_repeated_tokens_default_model(smol):
    t = repeated_tokens(smol, 20, 4, seed=1)
    bos = smol.tokenizer.bos_token_id
    assert t.shape == (4, 41) and (t[:, 0] == bos).all() and torch.equal(t[:, 1:21], t[:, 21:])
    assert all(len(set(r[1:21].tolist())) == 20 for r in t)             # no repeats inside a copy
    assert not set(t[:, 1:].flatten().tolist()) & set(smol.tokenizer.all_special_ids)
    assert torch.equal(t, repeated_tokens(smol, 20, 4, seed=1))         # seeded
    with pytest.raises(ValueError, match="seq_len"): repeated_tokens(smol, 1)
    with pytest.raises(ValueError, match="exceeds the model's context"): repeated_tokens(HookedModel(tiny_hf("gpt2")), 40)

# --- gates --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_all_ones_gates_exact_tiny(family):
    "Exact by construction: z·1.0 is z, so the gate hook does not write and the forward runs the kernels it always runs."
    m = HookedModel(tiny_hf(family)); ids = tokens()
    ref = m(ids)
    assert torch.equal(m.run_with_hooks(ids, fwd_hooks=gate_hooks(m, torch.ones(2, 4))), ref)
    ones = torch.ones(2, 4, requires_grad=True)          # the fitting path: gates carry gradients, the hook writes
    got = m.run_with_hooks(ids, fwd_hooks=gate_hooks(m, ones))
    assert torch.equal(got.detach(), ref)

def test_all_ones_gates_exact_default(smol):
    ids = smol.to_tokens(["The capital of France is", "Water boils at"], padding_side="left")
    ref = smol(ids)
    assert torch.equal(smol.run_with_hooks(ids, fwd_hooks=gate_hooks(smol, torch.ones(30, 9))), ref)
    with torch.no_grad():
        assert torch.equal(smol.run_with_hooks(ids, fwd_hooks=gate_hooks(smol, torch.ones(30, 9, requires_grad=True))), ref)

def test_gates_match_plain_o_proj_prehook():
    m = HookedModel(tiny_hf("llama")); ids = tokens()
    g = torch.rand(2, 4)
    got = m.run_with_hooks(ids, fwd_hooks=gate_hooks(m, g))
    def scale(l):
        def pre(mod, args):
            x = args[0].unflatten(-1, (4, 8)) * g[l][:, None]
            return (x.flatten(-2),)
        return pre
    hs = [m.hf.model.layers[l].self_attn.o_proj.register_forward_pre_hook(scale(l)) for l in range(2)]
    try:
        with torch.no_grad(): ref = m.hf(input_ids=ids).logits
    finally:
        for h in hs: h.remove()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)

# --- CHG on a model with known roles ------------------------------------------------------------------------

def ablation_ce(toy, x, layer, head):
    "Reference: task CE with one head zeroed by a bare PyTorch pre-hook on GPT-2's c_proj (no deeplens)."
    def pre(mod, args):
        z = args[0].clone(); z[..., head * 16:(head + 1) * 16] = 0
        return (z,)
    hd = toy.hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(pre) if layer is not None else None
    try:
        with torch.no_grad(): logits = toy.hf(input_ids=x).logits
    finally:
        if hd: hd.remove()
    return float(F.cross_entropy(logits[:, 1:-1].reshape(-1, 16), x[:, :-2].reshape(-1)))

def test_toy_roles_by_ablation(toy, toy_data):
    "The hand-built model has the roles it was built with: L1H2 needed, L1H0 harmful, others (almost) inert."
    x = toy_data[0]
    base = ablation_ce(toy, x, None, None)
    delta = {(l, h): ablation_ce(toy, x, l, h) - base for l in range(2) for h in range(4)}
    assert delta[(1, 2)] > 3 and delta[(1, 0)] < -0.1
    assert all(abs(d) < 0.05 for k, d in delta.items() if k not in ((1, 2), (1, 0)))

def test_chg_finds_the_roles(toy_fit):
    r = toy_fit
    roles = r.roles()
    print("\n" + r.summary())
    assert roles[1][2] == "facilitating"
    assert roles[1][0] == "interfering"
    assert [(l, h) for l in range(2) for h in range(4) if roles[l][h] == "irrelevant"] == \
           [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 3)]
    assert r.facilitating_mask().nonzero().tolist() == [[1, 2]] and torch.equal(r.get_facilitating_mask(), r.facilitating_mask())
    assert r.necessary_heads()[["layer", "head"]].values.tolist() == [[1, 2]]
    assert [1, 2] in r.sufficient_heads()[["layer", "head"]].values.tolist()
    df = r.head_taxonomy()
    assert df.iloc[0][["layer", "head", "role"]].tolist() == [1, 2, "facilitating"] and len(df) == 8

def test_chg_sign_convention(toy_fit):
    "G⁺ (loss CE − λ·mean θ) pushes gates up from stage 1; G⁻ (CE + λ·mean θ) pushes them down."
    r = toy_fit
    irr = r.irrelevant_mask()
    assert (r.G_plus[irr] > r.G_stage1[irr]).all() and (r.G_minus[irr] < r.G_stage1[irr]).all()
    assert (r.G_plus >= r.G_minus).all()
    assert r.G_plus[irr].min() > 0.9 and r.G_minus[irr].max() < 0.1
    assert r.G_stage1_all.shape == r.G_plus_all.shape == (1, 2, 4)

def test_fit_leaves_model_untouched(toy, toy_data):
    _, texts, targets = toy_data
    before = {n: p.clone() for n, p in toy.hf.named_parameters()}
    n0 = hook_count(toy.hf)
    r = CausalHeadGating(toy, layers=[1]).fit(texts[:8], targets[:8], num_updates=2, num_reg_updates=1, verbose=False)
    assert all(torch.equal(before[n], p) and p.requires_grad and p.grad is None for n, p in toy.hf.named_parameters())
    assert hook_count(toy.hf) == n0
    assert torch.isnan(r.G_plus[0]).all() and not torch.isnan(r.G_plus[1]).any()   # only layer 1 gated
    assert len(r.to_dataframe()) == 4 and len(r.history["stage1"][0]) == 2

def test_string_targets_get_a_space(smol):
    (ids, start), = _examples(smol, ["The capital of France is"], ["Paris"])
    assert ids[start:] == [smol.to_single_token(" Paris")]
    assert ids[:start] == smol.to_tokens("The capital of France is")[0].tolist()
    (ids2, _), = _examples(smol, ["The capital of France is "], ["Paris"])   # prompt ends in a space: kept as is
    assert smol.tokenizer.decode(ids2) == "The capital of France is Paris"

def test_chg_default_model_smoke(smol):
    r = CausalHeadGating(smol, layers=[3]).fit(["The capital of France is", "2 + 2 equals"], ["Paris", "4"],
                                               num_updates=1, num_reg_updates=1, batch_size=2, verbose=False)
    assert r.G_plus.shape == (30, 9) and not torch.isnan(r.G_plus[3]).any() and torch.isnan(r.G_plus[4]).all()
    assert len(r.to_dataframe()) == 9

def test_save_load(tmp_path, toy_fit):
    p = toy_fit.save(tmp_path / "chg.safetensors")
    back = CHGResult.load(p)
    for k in ("G_plus_all", "G_minus_all", "G_stage1_all"): assert torch.equal(getattr(back, k), getattr(toy_fit, k))
    assert back.config == toy_fit.config and back.history == toy_fit.history
    assert back.roles() == toy_fit.roles()
    assert [f.name for f in tmp_path.iterdir()] == ["chg.safetensors"]
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a deeplens CHGResult"): CHGResult.load(tmp_path / "x.safetensors")

# --- errors -------------------------------------------------------------------------------------------------

def test_errors(toy, toy_data, toy_fit, smol):
    _, texts, targets = toy_data
    with pytest.raises(ValueError, match="layer 2 is out of range"): CausalHeadGating(toy, layers=[2])
    assert CausalHeadGating(toy, layers=-1).layers == [toy.cfg.n_layers - 1]      # Python's rule: -1 is the last layer
    with pytest.raises(ValueError, match="layer -3 is out of range"): CausalHeadGating(toy, layers=-3)
    with pytest.raises(ValueError, match="layer 5 is out of range"): toy_fit.gate(5, 0)
    with pytest.raises(ValueError, match="head 4 is out of range"): toy_fit.gate(1, 4)
    assert toy_fit.gate(1, 2) == (float(toy_fit.G_plus[1, 2]), float(toy_fit.G_minus[1, 2]))
    chg = CausalHeadGating(toy)
    with pytest.raises(ValueError, match="targets is empty"): chg.fit(texts, [])
    with pytest.raises(ValueError, match="target 0 is empty"): chg.fit(texts[:1], [[]])
    with pytest.raises(ValueError, match="target 1 is empty"): CausalHeadGating(smol).fit(["a b", "c d"], ["x", "  "])
    with pytest.raises(ValueError, match="one target per text"): chg.fit(texts[:3], targets[:2])
    with pytest.raises(ValueError, match="texts is empty"): chg.fit([], [])
    with pytest.raises(ValueError, match="num_updates"): chg.fit(texts, targets, num_updates=0)
    with pytest.raises(ValueError, match="l1_weight"): chg.fit(texts, targets, l1_weight=-0.1)
    with pytest.raises(ValueError, match="no tokenizer"): chg.fit(["some text"], ["x"])
    with pytest.raises(TypeError, match="HookedModel"): CausalHeadGating(toy.hf)
    with pytest.raises(ValueError, match="shape"): gate_hooks(toy, torch.ones(3, 4))
