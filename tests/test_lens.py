"""Logit lens and tuned lens: exactness at the last layer, a hand-computed reference, identity init, training, files, errors."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import json
import pytest
import torch
import transformers as T
from tiny import tiny_hf, tokens, FAMILIES
from deeplens.model import HookedModel, load_model
from deeplens.lens import logit_lens, TunedLens, LensResult, lens_kl, unembed_fn, convergence_chart, preservation_chart

STATS = ("top_ids", "top_probs", "kl", "entropy", "final_rank", "final_prob", "agree", "input_rank")

@pytest.fixture(scope="module")
def smol():
    return load_model(verbose=False)

@pytest.fixture(scope="module")
def france(smol):
    return logit_lens(smol, "The capital of France is")

@pytest.fixture(scope="module")
def tiny():
    return {f: HookedModel(tiny_hf(f)) for f in FAMILIES}

def deep_llama(n_layers=4, seed=0):
    "A random Llama-shaped model with a few more layers, for training checks."
    torch.manual_seed(seed)
    hf = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                                          max_position_embeddings=64))
    with torch.no_grad():                     # larger weights than HF's init: peaked, input-dependent predictions
        for n, p in hf.named_parameters():
            if p.ndim >= 2: p.normal_(0, 0.2)
            else: p.normal_(1.0, 0.1)
    return HookedModel(hf.eval())

# --- the last layer is the model ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_last_layer_equals_model_logits(tiny, family):
    m = tiny[family]; ids = tokens()
    with torch.no_grad(): ref = m.hf(ids).logits                      # plain transformers
    _, cache = m.run_with_cache(ids, f"blocks.{m.cfg.n_layers - 1}.hook_resid_post")
    with torch.no_grad(): got = unembed_fn(m)(cache[f"blocks.{m.cfg.n_layers - 1}.hook_resid_post"])
    assert torch.equal(got, ref)                                      # bit for bit, softcapping (gemma2) included
    r = logit_lens(m, ids)
    # exact by construction: the lens unembeds whole rows, the same kernels on the same shapes as the forward
    assert torch.equal(r.top_ids[-1], ref.topk(5, -1).indices)
    assert (r.kl[-1] == 0).all() and (r.final_rank[-1] == 1).all() and r.agree[-1].all()
    torch.testing.assert_close(r.final_prob[-1], ref.softmax(-1).max(-1).values, atol=1e-6, rtol=0)

EPS = 1e-4    # logits computed two ways differ by ~1e-6; a gap below EPS is a tie either way may break

def assert_top_ids(got: torch.Tensor, logits: torch.Tensor):
    "`got` [pos, k] are top-k ids of `logits` [pos, vocab]: their logits equal the sorted top-k values up to EPS."
    torch.testing.assert_close(logits.gather(-1, got), logits.topk(got.shape[-1], -1).values, atol=EPS, rtol=0)

def assert_rank(got: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, at_most_2: bool = False):
    """`got` [pos] is the 1-based rank of `target` [pos] in `logits` [pos, vocab], up to near-ties: between the
    number of logits clearly above the target's (+1) and the number above it within EPS (+1). `at_most_2`: `got`
    only says whether the rank is 1 (1) or not (2)."""
    t = logits.gather(-1, target[:, None])
    lo, hi = (logits > t + EPS).sum(-1) + 1, (logits > t - EPS).sum(-1) + 1
    if at_most_2: lo, hi = lo.clamp(max=2), hi.clamp(max=2)
    assert ((lo <= got) & (got <= hi)).all(), (got, lo, hi)

def test_intermediate_layers_match_hand_computation(tiny):
    "Llama: hidden_states from HF, RMSNorm and unembedding written out by hand, KL/ranks from the definitions."
    m = tiny["llama"]; ids = tokens(batch=1, pos=6)
    with torch.no_grad(): out = m.hf(ids, output_hidden_states=True)
    w, eps, W = m.hf.model.norm.weight, m.hf.config.rms_norm_eps, m.hf.lm_head.weight
    r = logit_lens(m, ids, top_k=3)
    p_final = out.logits[0].softmax(-1)
    for l in range(m.cfg.n_layers - 1):                               # HF's last hidden state is already normed
        h = out.hidden_states[l + 1][0]
        x = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w
        logits = x @ W.T
        q = logits.softmax(-1)
        kl = (p_final * (p_final.log() - q.log())).sum(-1)
        torch.testing.assert_close(r.kl[l, 0], kl, atol=1e-4, rtol=1e-4)
        # ids and ranks from two computations of the logits agree up to near-ties (|Δlogit| < EPS), which the
        # rounding of a different norm/matmul order may break either way
        assert_top_ids(r.top_ids[l, 0], logits)
        top = out.logits[0].argmax(-1)
        assert_rank(r.final_rank[l, 0], logits, top)
        assert_rank(r.input_rank[l, 0], logits, ids[0])
        torch.testing.assert_close(r.final_prob[l, 0], q[torch.arange(6), top], atol=1e-6, rtol=1e-4)
        assert_rank((~r.agree[l, 0]).long() + 1, logits, top, at_most_2=True)

def test_selection_and_padding_agree_with_full_single_runs(smol):
    texts = ["The capital of France is", "Hello world"]
    full = [logit_lens(smol, t, layers=[3, 10, 29], top_k=4) for t in texts]     # each text alone, every position
    r = logit_lens(smol, texts, layers=[3, -1, 10], positions=[-2, -1], top_k=4)  # batched (left padding), a selection
    assert r.layers == [3, 10, 29] and r.positions == [r.tokens.shape[1] - 2, r.tokens.shape[1] - 1]
    for b, f in enumerate(full):
        for k in ("kl", "final_prob", "top_probs"):
            torch.testing.assert_close(getattr(r, k)[:, b], getattr(f, k)[:, 0, -2:], atol=2e-3, rtol=1e-3)
        # batched with padding vs alone: top-1 ids agree except where the top two are a near-tie
        same = r.top_ids[:, b, :, 0] == f.top_ids[:, 0, -2:, 0]
        p1, p2 = f.top_probs[:, 0, -2:, 0], f.top_probs[:, 0, -2:, 1]
        assert (same | (p1 - p2 < 1e-3)).all()

# --- the default model ----------------------------------------------------------------------------------------

def test_france_paris(smol, france):
    r = france
    assert r.final_token() == " Paris"
    assert r.top_ids[-1, 0, -1, 0].item() == smol.to_single_token(" Paris")
    first = r.first_layer_in_top_k(5)
    assert isinstance(first, int) and 0 <= first <= 29
    assert (r.final_rank[r.layers.index(first), 0, -1] <= 5) and (r.final_rank[:first, 0, -1] > 5).all()
    text = repr(r)
    assert "logit lens" in text and "'Paris'" not in text and "' Paris'" in text

def test_print_dataframe_charts(france, capsys):
    r = france
    r.print(layer_step=10, top_k=3)
    out = capsys.readouterr().out
    assert [l.split()[1] for l in out.splitlines() if l.strip().startswith("layer")][:4] == ["0", "10", "20", "29"]
    assert "' Paris' 0.77" in out
    df = r.to_dataframe()
    assert len(df) == 30 * 5 and df.kl.max() == pytest.approx(r.kl.max().item())
    row = df[(df.layer == 29) & (df.position == 4)].iloc[0]
    assert row.top1 == " Paris" and row.final_rank == 1 and row.agree and row.kl == 0
    c = convergence_chart(r).to_dict()
    assert len(c["hconcat"]) == 3
    p = r.preservation_chart().to_dict()
    assert p["encoding"]["y"]["field"] == "input_rank" and len(p["data"]["values"]) == 150

# --- the tuned lens ---------------------------------------------------------------------------------------------

def test_untrained_tuned_lens_is_the_logit_lens(tiny, smol, france):
    a, b = logit_lens(tiny["gpt2"], tokens()), logit_lens(tiny["gpt2"], tokens(), lens=TunedLens(tiny["gpt2"]))
    for k in STATS: assert torch.equal(getattr(a, k), getattr(b, k)), k   # exact: h + (h·0 + 0) is h
    b = TunedLens(smol).lens(smol, "The capital of France is")
    assert b.kind == "tuned" and france.kind == "logit"
    for k in STATS: assert torch.equal(getattr(france, k), getattr(b, k)), k

def test_training_lowers_kl_at_every_layer_but_the_last():
    m = deep_llama(4)
    before = [p.detach().clone() for p in m.hf.parameters()]
    g = torch.Generator().manual_seed(0)
    train = [torch.randint(0, 97, (16,), generator=g) for _ in range(600)]
    held = [torch.randint(0, 97, (16,), generator=g) for _ in range(64)]
    tl = TunedLens.train(m, train, steps=30, lr=1e-2, batch_size=16, context_size=16, progress=False)
    base = lens_kl(m, held, context_size=16, batch_size=8)
    tuned = lens_kl(m, held, tl, context_size=16, batch_size=8)
    assert (tuned[:-1] < base[:-1]).all(), (base, tuned)
    assert tuned[-1] == base[-1] == 0
    assert tl.history[-1] < tl.history[0]
    # the model is untouched: same weights, no gradients, requires_grad as before
    for p, q in zip(m.hf.parameters(), before): assert torch.equal(p, q) and p.grad is None and p.requires_grad
    assert tl.training_info["steps"] == 30 and tl.training_info["tokens"] == 30 * 16 * 16

def test_layers_per_step_trains_only_sampled_layers():
    m = deep_llama(4)
    g = torch.Generator().manual_seed(0)
    train = [torch.randint(0, 97, (16,), generator=g) for _ in range(10)]
    tl = TunedLens.train(m, train, steps=1, lr=1e-2, batch_size=2, context_size=16, layers_per_step=1, progress=False)
    moved = [bool(t.weight.abs().sum() > 0) for t in tl.translators]
    assert sum(moved) == 1

def test_save_load_roundtrip(tmp_path, tiny):
    m = tiny["llama"]
    g = torch.Generator().manual_seed(0)
    tl = TunedLens.train(m, [torch.randint(0, 97, (8,), generator=g) for _ in range(20)], steps=3,
                         batch_size=2, context_size=8, progress=False)
    tl.save(tmp_path / "lens")
    assert sorted(p.name for p in (tmp_path / "lens").iterdir()) == ["tuned_lens.json", "tuned_lens.safetensors"]
    back = TunedLens.load(tmp_path / "lens", m)
    for a, b in zip(tl.translators.parameters(), back.translators.parameters()): assert torch.equal(a, b)
    assert back.training_info == tl.training_info and back.history == tl.history
    ids = tokens()
    for k in STATS: assert torch.equal(getattr(tl.lens(m, ids), k), getattr(logit_lens(m, ids, lens=back), k))
    meta = json.loads((tmp_path / "lens" / "tuned_lens.json").read_text())
    assert meta["d_model"] == 32 and meta["n_layers"] == 2
    with pytest.raises(ValueError, match="d_model=32, 2 layers"): TunedLens.load(tmp_path / "lens", deep_llama(4))
    with pytest.raises(FileNotFoundError, match="not a saved tuned lens"): TunedLens.load(tmp_path / "nothing")

# --- bad input ---------------------------------------------------------------------------------------------------

def test_bad_input_errors(smol, tiny):
    s = "The capital of France is"
    with pytest.raises(ValueError, match="layer 30 is out of range.*0..29"): logit_lens(smol, s, layers=[0, 30])
    with pytest.raises(ValueError, match="layer -31 is out of range"): logit_lens(smol, s, layers=-31)
    with pytest.raises(ValueError, match="position 5 is out of range: the input has 5 tokens"): logit_lens(smol, s, positions=5)
    with pytest.raises(ValueError, match="position -6 is out of range"): logit_lens(smol, s, positions=[-6])
    with pytest.raises(ValueError, match="input text is empty"): logit_lens(smol, "")
    with pytest.raises(ValueError, match="input list is empty"): logit_lens(smol, [])
    with pytest.raises(ValueError, match=r"input text\(s\) \[1\] are empty"): logit_lens(smol, ["a", ""])
    with pytest.raises(ValueError, match="token tensor is empty"): logit_lens(tiny["gpt2"], torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="layer: the selection is empty"): logit_lens(smol, s, layers=[])
    with pytest.raises(TypeError, match="must be ints"): logit_lens(smol, s, layers=[1.5])
    with pytest.raises(ValueError, match="top_k must be an int"): logit_lens(smol, s, top_k=0)
    with pytest.raises(TypeError, match="HookedModel"): logit_lens(smol.hf, s)
    with pytest.raises(TypeError, match="TunedLens"): logit_lens(smol, s, lens="tuned")
    r = logit_lens(smol, s, layers=[28, 29], top_k=3)
    with pytest.raises(ValueError, match="top_k must be in 1..3"): r.print(top_k=5)
    with pytest.raises(ValueError, match="position 7 is not in this result"): r.first_layer_in_top_k(5, position=7)
    with pytest.raises(ValueError, match="d_model=32"): logit_lens(smol, s, lens=TunedLens(tiny["llama"]))
    with pytest.raises(TypeError, match="not a single string"):
        TunedLens.train(smol, "some text", steps=1, progress=False)
    with pytest.raises(ValueError, match="fewer than batch_size × context_size = 256"):
        TunedLens.train(smol, ["too short"], steps=1, progress=False)
