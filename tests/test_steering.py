"""Steering vectors: construction against hand computations, position modes against plain PyTorch hooks,
generation with a KV cache against a cache-free reference loop, files, the coefficient sweep on the default model."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
from tiny import tiny_hf, tokens
from deeplens.model import HookedModel, load_model
from deeplens.steering import SteeringVector, SteeringHook, generate_with_steering, evaluate_steering

POS = ["I am so happy", "I feel happy today", "This makes me happy", "What a joyful, happy day",
       "She smiled, happy and glad", "We were happy together"]
NEG = ["I am so sad", "I feel sad today", "This makes me sad", "What a gloomy, sad day",
       "She cried, sad and upset", "We were sad together"]
PROMPTS = ["Today I feel", "Right now I am", "After the news, she was", "He looked at the sky and felt"]
NEUTRAL = ["The function returns a list of integers sorted in ascending order.",
           "Water boils at one hundred degrees Celsius at sea level."]

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def smol():
    return load_model(verbose=False)

@pytest.fixture(scope="module")
def tiny():
    return HookedModel(tiny_hf("llama"))

def hook_count(hf):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hf.modules())

def plain_prehook(hf, layer, add):
    "Reference: add `add(pos_len) -> [pos, d]` to the input of decoder layer `layer` with a bare PyTorch pre-hook."
    block = hf.model.layers[layer]
    return block.register_forward_pre_hook(lambda mod, a, k: ((a[0] + add(a[0].shape[1]).to(a[0].dtype), *a[1:]), k),
                                           with_kwargs=True)

# --- construction -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("read", ["last", "mean"])
def test_from_contrast_is_difference_of_means(smol, read):
    v = SteeringVector.from_contrast(smol, POS[:3], NEG[:3], layer=7, read_positions=read)
    def one(t):   # plain transformers: hidden_states[7] is the input of decoder layer 7
        enc = smol.tokenizer(t, return_tensors="pt")
        with torch.no_grad(): h = smol.hf(**enc, output_hidden_states=True).hidden_states[7][0]
        return h[-1] if read == "last" else h.mean(0)
    ref = torch.stack([one(t) for t in POS[:3]]).mean(0) - torch.stack([one(t) for t in NEG[:3]]).mean(0)
    torch.testing.assert_close(v.vector, ref, atol=1e-3, rtol=1e-4)
    assert v.hook_name == "blocks.7.hook_resid_pre" and v.meta["read_positions"] == read

def test_from_prompts_is_positionwise_difference(smol):
    v = SteeringVector.from_prompts(smol, "Love", "I hate you", layer=4)
    a, b = smol.to_tokens("Love")[0], smol.to_tokens("I hate you")[0]
    space = smol.tokenizer.encode(" ", add_special_tokens=False)[0]
    a = torch.cat([a, a.new_full((len(b) - len(a),), space)])
    with torch.no_grad():
        ha = smol.hf(input_ids=a[None], output_hidden_states=True).hidden_states[4][0]
        hb = smol.hf(input_ids=b[None], output_hidden_states=True).hidden_states[4][0]
    assert v.vector.shape == (len(b), smol.cfg.d_model)
    torch.testing.assert_close(v.vector, ha - hb, atol=1e-3, rtol=1e-4)

# --- applying: positions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("positions", ["all", 3, "new"])
def test_hook_positions_match_plain_prehook(tiny, positions):
    ids = tokens(2, 7)
    v = torch.randn(tiny.cfg.d_model)
    sv = SteeringVector(v, layer=1)
    keep = {"all": lambda i: True, 3: lambda i: i < 3, "new": lambda i: i >= 4}[positions]
    got = tiny.run_with_hooks(ids, fwd_hooks=[sv.hook(2.5, positions, prompt_len=4 if positions == "new" else None)])
    h = plain_prehook(tiny.hf, 1, lambda p: torch.stack([2.5 * v if keep(i) else torch.zeros_like(v) for i in range(p)]))
    try:
        with torch.no_grad(): ref = tiny.hf(input_ids=ids).logits
    finally: h.remove()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)

def test_actadd_block_added_at_start(tiny):
    ids = tokens(1, 6)
    blk = torch.randn(3, tiny.cfg.d_model)
    got = tiny.run_with_hooks(ids, fwd_hooks=[SteeringVector(blk, layer=0).hook(1.5)])
    h = plain_prehook(tiny.hf, 0, lambda p: torch.cat([1.5 * blk, torch.zeros(p - 3, blk.shape[1])]))
    try:
        with torch.no_grad(): ref = tiny.hf(input_ids=ids).logits
    finally: h.remove()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)

@pytest.mark.parametrize("positions", ["new", "all", 2])
def test_generation_with_kv_cache_matches_cache_free_loop(tiny, positions):
    "KV-cached generation (one token per step) steers the same absolute positions as recomputing the whole sequence."
    prompt = tokens(1, 5, seed=3)
    v = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(4)) * 2
    sv = SteeringVector(v, layer=1)
    out = generate_with_steering(tiny, prompt, sv, 3.0, max_new_tokens=6, positions=positions, return_type="tokens")
    keep = {"new": lambda i: i >= 5, "all": lambda i: True, 2: lambda i: i < 2}[positions]
    seq, margins = prompt.clone(), []
    h = plain_prehook(tiny.hf, 1, lambda p: torch.stack([3.0 * v if keep(i) else torch.zeros_like(v) for i in range(p)]))
    try:
        with torch.no_grad():
            for _ in range(6):
                last = tiny.hf(input_ids=seq, use_cache=False).logits[0, -1]
                top2 = last.topk(2).values
                margins.append(float(top2[0] - top2[1]))
                seq = torch.cat([seq, last.argmax()[None, None]], 1)
    finally: h.remove()
    # Two different computations (KV cache vs full recompute) give logits equal to rounding (~1e-6), so their greedy
    # tokens agree whenever every step's top-2 gap is far above that: asserted, so the token comparison is sound.
    assert min(margins) > 1e-3, margins
    assert torch.equal(out, seq)
    # and the steering made a difference to what was generated
    plain = tiny.generate(prompt, max_new_tokens=6, return_type="tokens")
    assert not torch.equal(plain, seq) or positions == 2

def test_applied_removes_hooks_even_on_error(tiny):
    n0 = hook_count(tiny.hf)
    sv = SteeringVector(torch.randn(tiny.cfg.d_model), layer=0)
    with pytest.raises(RuntimeError, match="boom"):
        with sv.applied(tiny, 1.0):
            assert hook_count(tiny.hf) > n0
            raise RuntimeError("boom")
    assert hook_count(tiny.hf) == n0

def test_generate_coefficient_zero_is_plain(smol):
    "Exact by construction: 0·v added to the residual is a no-op write (x + 0 == x), so both runs are one computation."
    sv = SteeringVector.from_contrast(smol, POS[:2], NEG[:2], layer=10)
    assert generate_with_steering(smol, "Today I feel", sv, 0.0, max_new_tokens=8) == smol.generate("Today I feel", max_new_tokens=8)

# --- files --------------------------------------------------------------------------------------------------

def test_save_load_roundtrip(tmp_path, smol):
    sv = SteeringVector.from_prompts(smol, "Love", "Hate", layer=6)
    p = sv.save(tmp_path / "v.safetensors")
    back = SteeringVector.load(p)
    assert torch.equal(back.vector, sv.vector) and back.layer == 6     # exact: the file holds the tensor's bytes and back.site == "resid_pre"
    assert back.meta == sv.meta
    assert [f.name for f in tmp_path.iterdir()] == ["v.safetensors"]        # no temp file left behind
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a deeplens SteeringVector"): SteeringVector.load(tmp_path / "other.safetensors")

# --- evaluation (acceptance) --------------------------------------------------------------------------------

def test_sweep_raises_target_monotonically(smol):
    sv = SteeringVector.from_contrast(smol, POS, NEG, layer=10, read_positions="mean")
    coefs = [0, 0.5, 1, 1.5, 2]
    r = evaluate_steering(smol, sv, coefs, PROMPTS, [" happy"], NEUTRAL)
    print("\n" + repr(r))
    assert r.is_monotonic(), r.target_prob
    assert r.target_prob[-1] > 3 * r.target_prob[0]
    # coefficient 0 is the unhooked model: its numbers equal plain transformers
    tid = smol.to_single_token(" happy")
    ref_p = []
    for t in PROMPTS:
        with torch.no_grad(): logits = smol.hf(**smol.tokenizer(t, return_tensors="pt")).logits
        ref_p.append(torch.softmax(logits[0, -1], -1)[tid])
    assert abs(r.target_prob[0] - torch.stack(ref_p).mean()) < 1e-5 and abs(r.baseline_prob - float(r.target_prob[0])) < 1e-6
    nll = n = 0
    for t in NEUTRAL:
        enc = smol.tokenizer(t, return_tensors="pt")
        with torch.no_grad(): loss = smol.hf(**enc, labels=enc["input_ids"]).loss
        k = enc["input_ids"].shape[1] - 1; nll += float(loss) * k; n += k
    assert abs(r.baseline_perplexity - float(torch.tensor(nll / n).exp())) < 1e-3 * r.baseline_perplexity
    assert abs(float(r.perplexity_ratio[0]) - 1) < 1e-4
    df = r.to_dataframe()
    assert list(df.coefficient) == coefs and df.shape[0] == 5
    assert r.chart().to_dict()["hconcat"]

# --- non-finite values (issue 16, fault injection: nan steering generated a silently truncated text) -----------

NAN, INF = float("nan"), float("inf")

def test_nonfinite_coefficients_and_vectors_are_refused(smol, tiny):
    n0 = hook_count(smol.hf)
    sv = SteeringVector.from_contrast(smol, POS[:2], NEG[:2], layer=10)
    for c in (NAN, INF, -INF):
        with pytest.raises(ValueError, match="coefficient must be a finite number"):
            generate_with_steering(smol, "The quick brown", sv, coefficient=c, max_new_tokens=5)
        with pytest.raises(ValueError, match="coef must be a finite number"): sv.hook(c)
        with pytest.raises(ValueError, match="coef must be a finite number"):
            with sv.applied(smol, c): pass
    with pytest.raises(ValueError, match=r"coefficients\[1\] must be a finite number"):
        evaluate_steering(smol, sv, [0, NAN], PROMPTS, [" happy"])
    with pytest.raises(TypeError, match="coefficient must be a number"): generate_with_steering(smol, "Hi", sv, coefficient="2")
    for bad in (torch.full((smol.cfg.d_model,), NAN), torch.tensor([1.0, INF] * (smol.cfg.d_model // 2))):
        with pytest.raises(ValueError, match="non-finite values"): SteeringVector(bad, layer=3)
    with pytest.raises(ValueError, match="2 non-finite values"): SteeringVector(torch.tensor([[NAN, 1.0], [0.0, -INF]]), layer=0)
    # a vector edited after it was built is checked again when it is applied
    sv.vector[5] = NAN
    with pytest.raises(ValueError, match="1 non-finite values"):
        generate_with_steering(smol, "The quick brown", sv, coefficient=1.0, max_new_tokens=5)
    assert hook_count(smol.hf) == n0

def test_overflowing_coefficient_is_named_by_generate(smol):
    "A finite but huge coefficient overflows: generate raises naming the steering hook instead of truncating the text."
    sv = SteeringVector.from_contrast(smol, POS[:2], NEG[:2], layer=10)
    n0 = hook_count(smol.hf)
    with pytest.raises(ValueError, match=r"not finite.*fwd_hooks\[0\] \(SteeringHook\) at blocks.10.hook_resid_pre"):
        generate_with_steering(smol, "The quick brown", sv, coefficient=1e38, max_new_tokens=5)
    assert hook_count(smol.hf) == n0

# --- errors -------------------------------------------------------------------------------------------------

def test_errors(smol, tiny):
    with pytest.raises(ValueError, match="out of range"): SteeringVector.from_contrast(smol, POS, NEG, layer=30)
    with pytest.raises(ValueError, match="out of range"): SteeringVector.from_prompts(smol, "Love", "Hate", layer=-31)
    with pytest.raises(TypeError, match="layer must be an int"): SteeringVector.from_contrast(smol, POS, NEG, layer="3")
    with pytest.raises(ValueError, match="read_positions"): SteeringVector.from_contrast(smol, POS, NEG, layer=3, read_positions="first")
    with pytest.raises(ValueError, match="positive"): SteeringVector.from_contrast(smol, [], NEG, layer=3)
    sv = SteeringVector(torch.randn(smol.cfg.d_model), layer=3)
    with pytest.raises(ValueError, match="positions must be"): sv.hook(1.0, positions="last")
    with pytest.raises(ValueError, match="positions must be"): sv.hook(1.0, positions=-2)
    with pytest.raises(ValueError, match="ActAdd"): SteeringVector(torch.randn(2, 8), layer=0).hook(1.0, positions="new")
    with pytest.raises(ValueError, match="not one"): evaluate_steering(smol, sv, [1], PROMPTS, [" happy day"])
    with pytest.raises(ValueError, match="'new'"): evaluate_steering(smol, sv, [1], PROMPTS, [" happy"], positions="new")
    with pytest.raises(ValueError, match="d_model"): generate_with_steering(tiny, tokens(1, 3), SteeringVector(sv.vector, layer=0), 1.0)
    with pytest.raises(ValueError, match="out of range"):
        with SteeringVector(torch.randn(tiny.cfg.d_model), layer=5).applied(tiny, 1.0): pass
    with pytest.raises(ValueError, match="site"): SteeringVector(torch.randn(8), layer=0, site="attn_out")
