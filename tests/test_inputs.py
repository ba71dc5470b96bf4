"""Inputs the model cannot run are refused before it runs, with the limit in the message (issue 16, WEAK "Inputs"):
empty strings, token tensors of the wrong rank, ids outside the vocabulary, a names_filter that is no filter,
a pos_slice that selects nothing, inputs longer than the context. Nothing stays attached after an error."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
from tiny import tiny_hf, tokens, text_llama
from deeplens.model import HookedModel

@pytest.fixture(scope="module")
def tiny():
    return {f: HookedModel(tiny_hf(f)) for f in ("gpt2", "llama")}

@pytest.fixture(scope="module")
def texty(tok):
    "A tiny Llama with the default model's tokenizer (which adds no BOS: an empty string is no tokens)."
    return HookedModel(text_llama(tok), tok)

def hook_dicts(hf):
    return [(n, tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for n, m in hf.named_modules()]

def calls(m, inputs, **kw):
    "Each way of running the model on `inputs`."
    return [lambda: m(inputs, **kw), lambda: m.run_with_cache(inputs, **kw),
            lambda: m.run_with_hooks(inputs, fwd_hooks=[("blocks.0.hook_resid_post", lambda a, h: None)], **kw)]

def refused(m, inputs, exc, match, **kw):
    before = hook_dicts(m.hf)
    for run in calls(m, inputs, **kw):
        with pytest.raises(exc, match=match): run()
    assert hook_dicts(m.hf) == before

def test_empty_strings(texty):
    refused(texty, "", ValueError, "no tokens")
    refused(texty, ["The cat sat", ""], ValueError, "input 1 of the batch has no tokens")
    assert texty.to_tokens("").shape == (1, 0)      # tokenising is not running: an empty text is no tokens

def test_token_tensor_shapes_and_emptiness(tiny):
    m = tiny["llama"]
    refused(m, tokens()[None], ValueError, r"\[pos\] or \[batch, pos\]; got 3 dims, shape \(1, 2, 7\)")
    refused(m, torch.tensor(5), ValueError, "got 0 dims")
    refused(m, torch.zeros(2, 0, dtype=torch.long), ValueError, "no tokens")
    assert m(tokens()[0]).shape == (1, 7, m.cfg.d_vocab)     # a 1-d tensor is one sequence

@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_ids_outside_the_vocabulary(tiny, fam):
    m = tiny[fam]
    for bad, got in ((97, "from 1 to 97"), (-1, "from -1 to")):
        ids = tokens().clone(); ids[1, 3] = bad
        refused(m, ids, ValueError, rf"token ids must be in 0\.\.96 .*{got}")

@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_inputs_longer_than_the_context(tiny, fam):
    "A rotary model used to run past its context silently, GPT-2 failed with an IndexError in its position embedding."
    m = tiny[fam]
    assert m.cfg.n_ctx == 64
    refused(m, tokens(pos=65), ValueError, "65 tokens, longer than the model's context of 64 positions")
    assert m(tokens(pos=64)).shape == (2, 64, m.cfg.d_vocab)

def test_names_filter_that_is_no_filter(tiny):
    m = tiny["llama"]
    for bad in (123, 1.5):
        with pytest.raises(TypeError, match="a name, a list of names, a function name -> bool, or None"):
            m.run_with_cache(tokens(), bad)
    with pytest.raises(TypeError, match="hook names are strings"): m.run_with_cache(tokens(), ["blocks.0.hook_resid_post", 3])

def test_pos_slice_outside_the_sequence(tiny):
    "pos_slice past the sequence used to give silently empty activations."
    m, ids = tiny["llama"], tokens()               # 7 positions
    before = hook_dicts(m.hf)
    for bad in (7, -8, slice(10, 20), slice(3, 3), [0, 7], [], [-8]):
        with pytest.raises(ValueError, match=r"selects no position of these inputs, which are 7 tokens long \(positions 0\.\.6"):
            m.run_with_cache(ids, "blocks.0.hook_resid_post", pos_slice=bad)
    for bad in (1.5, True, [[0, 1]], [0.5]):
        with pytest.raises(TypeError, match="pos_slice must be"):
            m.run_with_cache(ids, "blocks.0.hook_resid_post", pos_slice=bad)
    assert hook_dicts(m.hf) == before
    _, full = m.run_with_cache(ids, "blocks.0.hook_resid_post")
    r = full["blocks.0.hook_resid_post"]
    # exact below: the same forward, sliced afterwards
    for ok, want in ((6, r[:, 6:7]), (-7, r[:, 0:1]), (slice(5, 100), r[:, 5:]), ([-1, 0], r[:, [6, 0]])):
        _, c = m.run_with_cache(ids, "blocks.0.hook_resid_post", pos_slice=ok)
        assert torch.equal(c["blocks.0.hook_resid_post"], want), ok

def test_generate_checks_its_prompt_and_length():
    "generate goes through the same input checks as a forward, counting the new tokens against the context."
    m = HookedModel(tiny_hf("gpt2"))           # n_ctx 64
    before = hook_dicts(m.hf)
    with pytest.raises(ValueError, match="n_ctx"): m.generate(tokens(1, 60)[0], max_new_tokens=10)
    with pytest.raises(ValueError, match="vocabulary"): m.generate(torch.tensor([1, 2, 10**6]), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"): m.generate(tokens(1, 4)[0], max_new_tokens=0)
    assert m.generate(tokens(1, 54)[0], max_new_tokens=10, return_type="tokens").shape == (1, 64)
    assert hook_dicts(m.hf) == before
