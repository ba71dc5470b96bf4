"""deeplens.attribution: the DLA identity, IG completeness, sentence importance and neuron attribution against plain PyTorch."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
from tiny import tiny_hf, tokens
from deeplens.model import HookedModel, load_model
from deeplens.attribution import (direct_logit_attribution, integrated_gradients, sentence_importance, neuron_attribution,
                                  CausalCircuitAttribution, DLAResult)

@pytest.fixture(scope="module")
def tiny():
    return {f: HookedModel(tiny_hf(f)) for f in ("gpt2", "llama", "gpt_neox")}

@pytest.fixture(scope="module")
def smol():
    return load_model(verbose=False)

# --- direct logit attribution -----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("by", ["head", "layer", "component"])
def test_dla_parts_sum_to_logit_difference(tiny, family, by):
    """Identity: Σ parts + bias = logit(answer) − logit(contrast) at the position, where a part is
    LN_final-with-frozen-scale(part)·(W_U[:,a] − W_U[:,c]) and bias = b_U[a] − b_U[c] + β·(W_U[:,a] − W_U[:,c])."""
    m = tiny[family]
    ids = tokens(batch=2, pos=6)
    r = direct_logit_attribution(m, ids, answer=[3, 5], contrast=7, by=by)
    with torch.no_grad(): lg = m.hf(ids).logits[:, -1]          # plain HF logits: an independent total
    ref = torch.stack([lg[0, 3] - lg[0, 7], lg[1, 5] - lg[1, 7]])
    torch.testing.assert_close(r.total, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r.values.sum(0) + r.bias, ref, atol=1e-4, rtol=1e-5)
    n_parts = {"head": m.cfg.n_layers * m.cfg.n_heads + 1, "layer": m.cfg.n_layers + 1,
               "component": 2 * m.cfg.n_layers + (2 if family == "gpt2" else 1)}[by]
    assert len(r.labels) == n_parts == r.values.shape[0]

def test_dla_heads_add_up_to_attention_output(tiny):
    "Independent property: a layer's heads plus its b_O term equal that layer's attn_out component."
    m = tiny["gpt2"]
    ids = tokens(batch=1, pos=6)
    h = direct_logit_attribution(m, ids, 3, 7, by="head")
    c = direct_logit_attribution(m, ids, 3, 7, by="component")
    with torch.no_grad():
        # b_O's direct effect by hand: through ln_f with the frozen scale, onto W_U[:,3] − W_U[:,7]
        _, cache = m.run_with_cache(ids, ["ln_final.hook_scale"])
        s = cache["ln_final.hook_scale"][0, -1]
        ln = m.hf.transformer.ln_f
        d = m.hf.lm_head.weight[3] - m.hf.lm_head.weight[7]
        for l in range(2):
            b = m.hf.transformer.h[l].attn.c_proj.bias
            b_term = ((b - b.mean()) / s * ln.weight) @ d
            heads = h.by_head()[l].sum()
            comp = c.values[c.labels.index(f"L{l}_attn_out"), 0]
            assert abs(heads + b_term - comp) < 1e-4

def test_dla_single_logit_and_errors(tiny, smol):
    m = tiny["llama"]
    ids = tokens(batch=1, pos=5)
    r = direct_logit_attribution(m, ids, 3, by="layer")
    with torch.no_grad(): ref = m.hf(ids).logits[0, -1, 3]
    assert abs(r.values.sum() + r.bias.sum() - ref) < 1e-4 and r.what == "logit"
    assert "gap" in repr(r)
    r.chart().to_dict(); direct_logit_attribution(m, ids, 3, by="head").chart().to_dict()
    with pytest.raises(ValueError, match="by must be"):
        direct_logit_attribution(m, ids, 3, by="neuron")
    with pytest.raises(ValueError, match="not one"):
        direct_logit_attribution(smol, "The capital of France is", " Parisienne", by="layer")

def test_dla_default_model(smol):
    r = direct_logit_attribution(smol, "When Mary and John went to the store, John gave a drink to", " Mary", " John", by="head")
    assert r.total.item() > 2                           # the model prefers the indirect object
    assert r.gap.abs().max() < 1e-3 * r.total.abs().max()
    assert r.by_head().shape == (30, 9)

# --- integrated gradients ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("keep_first", [True, False])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_ig_completeness_50_steps(tiny, family, keep_first):
    m = tiny[family]
    ids = tokens(batch=1, pos=6)
    # GPT-2 (LayerNorm, biases): zero baseline. Llama (bias-free RMSNorm) is scale-invariant, so the zero
    # baseline is ill-conditioned (see the notebook); a token-embedding baseline, like baseline="pad", is not.
    base = "zero" if family == "gpt2" else m.hf.get_input_embeddings().weight[0].detach()
    ig = integrated_gradients(m, ids, target=3, steps=50, baseline=base, keep_first=keep_first)
    with torch.no_grad():
        fx = m.hf(ids).logits[0, -1, 3].item()          # F(x) by plain HF
    assert abs(ig.f_input - fx) < 1e-4
    assert ig.relative_gap < 0.01, ig                 # Σ IG = F(x) − F(baseline) within 1%
    assert ig.scores.shape == (6,)
    assert (ig.scores[0].item() == 0) == keep_first       # a kept first token has x − x′ = 0

def test_ig_matches_plain_pytorch_riemann(tiny):
    """Reference: IG with plain HF `inputs_embeds` (GPT-2 adds its position embedding itself), a 400-step
    trapezoid rule, zero baseline; deeplens' 50-step Gauss–Legendre must agree closely."""
    m = tiny["gpt2"]
    ids = tokens(batch=1, pos=6)
    x = m.hf.transformer.wte(ids).detach()
    a = torch.linspace(0, 1, 401)
    w = torch.full((401,), 1 / 400); w[0] = w[-1] = 0.5 / 400
    emb = (a[:, None, None] * x).requires_grad_(True)
    out = m.hf(inputs_embeds=emb).logits[:, -1, 3].sum()
    g, = torch.autograd.grad(out, emb)
    ref = (x[0] * (g * w[:, None, None]).sum(0)).sum(-1)
    ig = integrated_gradients(m, ids, 3, steps=50, keep_first=False)
    torch.testing.assert_close(ig.scores, ref, atol=2e-3 * ref.abs().max().item(), rtol=0)
    # keep_first: the baseline is the input at position 0 and zero elsewhere
    keep = torch.ones(1, 6, 1); keep[0, 0] = 0
    emb = (x * (1 - keep) + a[:, None, None] * x * keep).requires_grad_(True)
    g, = torch.autograd.grad(m.hf(inputs_embeds=emb).logits[:, -1, 3].sum(), emb)
    ref = ((x * keep)[0] * (g * w[:, None, None]).sum(0)).sum(-1)
    ig = integrated_gradients(m, ids, 3, steps=50)
    torch.testing.assert_close(ig.scores, ref, atol=2e-3 * ref.abs().max().item(), rtol=0)
    trap = integrated_gradients(m, ids, 3, steps=50, method="trapezoid", output="logprob", keep_first=False)
    assert trap.relative_gap < 0.05

def test_ig_warns_on_large_gap(tiny):
    with pytest.warns(UserWarning, match="completeness gap"):
        integrated_gradients(tiny["llama"], tokens(batch=1, pos=6), 3, steps=50, baseline="zero", keep_first=False)

def test_ig_completeness_default_model(smol):
    """Acceptance: Σ scores = F(x) − F(baseline) within 1% at 50 steps on the default model. F(x) and F(baseline)
    are checked against plain HF `inputs_embeds` runs (baseline: the first token's embedding, then the pad token's).
    Moving the first token too (keep_first=False) gives a steep path: that gap is printed, not asserted."""
    m = smol
    ids = m.to_tokens("The capital of France is")
    t = m.to_single_token(" Paris")
    ig = integrated_gradients(m, ids, " Paris", steps=50, baseline="pad")
    E = m.hf.get_input_embeddings()
    with torch.no_grad():
        base = torch.cat([E(ids[:, :1]), E(torch.full_like(ids[:, 1:], m.tokenizer.pad_token_id))], 1)
        fx = m.hf(input_ids=ids).logits[0, -1, t].item()
        fb = m.hf(inputs_embeds=base).logits[0, -1, t].item()
    print(f"\ndefault model, 'The capital of France is' → ' Paris', pad baseline, 50 steps: F(x) {ig.f_input:.4f}, "
          f"F(baseline) {ig.f_baseline:.4f}, Σ scores {ig.scores.sum().item():.4f}, gap {100 * ig.relative_gap:.4f}%")
    assert abs(ig.f_input - fx) < 1e-3 and abs(ig.f_baseline - fb) < 1e-3
    assert ig.relative_gap < 0.01, ig
    assert ig.scores[0].item() == 0 and ig.scores[1:].abs().min() > 0

def test_ig_errors(tiny, smol):
    with pytest.raises(ValueError, match="baseline"):
        integrated_gradients(tiny["gpt2"], tokens(1, 5), 3, baseline="noise")
    with pytest.raises(ValueError, match="pad token"):
        integrated_gradients(tiny["gpt2"], tokens(1, 5), 3, baseline="pad")
    with pytest.raises(ValueError, match="not one"):
        integrated_gradients(smol, "The capital of France is", " Parisienne")

# --- sentence importance -----------------------------------------------------------------------------------------

DOC = "Paris is the capital of France. It is one of Europe's largest cities. Bananas are rich in potassium."
SENTS = ["Paris is the capital of France.", "It is one of Europe's largest cities.", "Bananas are rich in potassium."]
SUMMARY = "The capital of France is Paris."

@pytest.fixture(scope="module")
def tiny_tok(smol):
    "A tiny random Llama sharing the default model's tokenizer (so it reads text)."
    import transformers as T
    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        vocab_size=smol.cfg.d_vocab, max_position_embeddings=128)
    return load_model(T.LlamaForCausalLM(cfg).eval(), tokenizer=smol.tokenizer, verbose=False)

def _reference_sentence_grads(m, head_mask=None):
    "Plain HF: inputs_embeds with grad, summary NLL, per-token gradient norms; head mask as a pre-hook on o_proj."
    tok = m.tokenizer
    enc = tok(DOC + " " + SUMMARY, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    first = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if a >= len(DOC) + 1 and b > a)
    emb = m.hf.get_input_embeddings()(ids).detach().requires_grad_(True)
    handles = []
    if head_mask is not None:
        for l, layer in enumerate(m.hf.model.layers):
            def pre(mod, args, l=l):
                x = args[0]
                return (x * head_mask[l].repeat_interleave(x.shape[-1] // head_mask.shape[1]),)
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(pre))
    try:
        logits = m.hf(inputs_embeds=emb).logits[0]
    finally:
        for h in handles: h.remove()
    loss = torch.nn.functional.cross_entropy(logits[first - 1:-1], ids[0, first:])
    g, = torch.autograd.grad(loss, emb)
    return g[0].norm(dim=-1), loss.item()

@pytest.mark.parametrize("masked", [False, True])
def test_sentence_importance_against_plain_hf(tiny_tok, masked):
    m = tiny_tok
    mask = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 0.25]]) if masked else None
    r = sentence_importance(m, DOC, SENTS, SUMMARY, head_mask=mask)
    norms, loss = _reference_sentence_grads(m, mask)
    assert abs(r.loss - loss) < 1e-4
    torch.testing.assert_close(r.token_scores, norms, atol=1e-5, rtol=1e-4)
    for (a, b), s in zip(r.spans, r.scores): assert abs(s - norms[a:b].sum()) < 1e-4
    # spans tile the sentences: the tokens of sentence 2 decode to its text
    a, b = r.spans[2]
    assert m.to_string(m.to_tokens(DOC + " " + SUMMARY)[0, a:b]).strip() == SENTS[2]
    cc = CausalCircuitAttribution(m).compute_sentence_importance(DOC, SENTS, SUMMARY, facilitating_mask=mask)
    torch.testing.assert_close(cc.scores, r.scores)

def test_sentence_importance_errors(tiny_tok):
    with pytest.raises(ValueError, match="not found"):
        sentence_importance(tiny_tok, DOC, ["Rome is in Italy."], SUMMARY)
    with pytest.raises(ValueError, match=r"head_mask must have shape \[n_layers, n_heads\] = \[2, 4\]"):
        sentence_importance(tiny_tok, DOC, SENTS, SUMMARY, head_mask=torch.ones(3, 4))

# --- neuron attribution ------------------------------------------------------------------------------------------

def test_neuron_attribution_against_plain_hooks(tiny):
    "Reference: a plain forward pre-hook on the down projection keeps its input; autograd gives the gradient."
    m = tiny["llama"]
    ids = tokens(batch=2, pos=5)
    na = neuron_attribution(m, ids, answer=3, contrast=7)
    keep = {}
    hs = [layer.mlp.down_proj.register_forward_pre_hook(lambda mod, args, l=l: keep.__setitem__(l, args[0]))
          for l, layer in enumerate(m.hf.model.layers)]
    try:
        lg = m.hf(ids).logits[:, -1]
        val = (lg[:, 3] - lg[:, 7]).sum()
        grads = torch.autograd.grad(val, [keep[0], keep[1]])
    finally:
        for h in hs: h.remove()
    for l in range(2):
        torch.testing.assert_close(na.values[l], (keep[l] * grads[l]).sum(0).detach(), atol=1e-5, rtol=1e-4)
    top = na.top(3)
    assert abs(top[0][3]) >= abs(top[1][3]) >= abs(top[2][3])
    assert len(na.to_dataframe(top=5)) == 5
    one = neuron_attribution(m, ids, metric=lambda lg: lg[:, -1, 3].sum(), layers=[1])
    assert one.values.shape == (1, 5, m.cfg.d_mlp)
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        neuron_attribution(m, ids, answer=3, layers=[2])
    with pytest.raises(ValueError, match="either answer"):
        neuron_attribution(m, ids)
