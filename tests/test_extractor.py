"""deeplens.extractor: ExtractSingleSample against plain transformers/PyTorch hooks and run_with_cache; FromHuggingFace
against ActivationStore and run_with_cache on the same contexts; errors."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import pytest
import torch
from tiny import tiny_hf, tokens
from deeplens.model import HookedModel, load_model
from deeplens.extractor import ExtractSingleSample, resolve_layer, resolve_hook, stop_layer
from deeplens.store import ActivationStore

TEXT = "The capital of France is Paris. The Eiffel Tower"

@pytest.fixture(scope="module")
def smol():
    return load_model(verbose=False, device="cpu")

def plain_capture(module, text_ids, hf, pre=False):
    "The output (or first input, pre=True) of `module` in a plain HF forward, with a plain PyTorch hook."
    box = []
    if pre: h = module.register_forward_pre_hook(lambda m, a: box.append(a[0].detach()))
    else: h = module.register_forward_hook(lambda m, a, o: box.append((o[0] if isinstance(o, tuple) else o).detach()))
    try:
        with torch.no_grad(): hf(input_ids=text_ids)
    finally: h.remove()
    return box[0][0]

def hook_state(hf):
    return [(n, len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in hf.named_modules()]

# --- ExtractSingleSample: values -----------------------------------------------------------------------------

def test_mlp_acts_equal_run_with_cache(smol):
    "Acceptance: get_mlp_acts(text) == cache['blocks.{l}.mlp.hook_post'][0] for the same text."
    for layer in (0, 3):
        ex = ExtractSingleSample(smol, layer=layer)
        acts = ex.get_mlp_acts(TEXT)
        _, cache = smol.run_with_cache(TEXT, f"blocks.{layer}.mlp.hook_post")
        assert acts.shape == (len(smol.to_tokens(TEXT)[0]), smol.cfg.d_mlp) == (acts.shape[0], 1536)
        # exact: the extractor's forward stops after block `layer`; the blocks before are the same kernels on the same shapes
        assert torch.equal(acts, cache[f"blocks.{layer}.mlp.hook_post"][0])
        assert acts.device.type == "cpu"

def test_mlp_acts_equal_plain_pytorch(smol):
    "Independent reference: the input of the MLP's down projection, captured by a plain PyTorch pre-hook."
    ex = ExtractSingleSample(smol, layer=5)
    ids = smol.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    ref = plain_capture(smol.hf.model.layers[5].mlp.down_proj, ids, smol.hf, pre=True)
    torch.testing.assert_close(ex.get_mlp_acts(TEXT), ref, atol=1e-5, rtol=1e-5)
    # row i is token i of the tokenizer's encoding
    assert ex.tokens(TEXT).tolist() == ids[0].tolist()
    assert "".join(ex.str_tokens(TEXT)) == TEXT

def test_resid_and_attn_equal_plain_hf(smol):
    ids = smol.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad(): hs = smol.hf(input_ids=ids, output_hidden_states=True).hidden_states
    ex = ExtractSingleSample(smol, layer=4)
    torch.testing.assert_close(ex.get_resid_acts(TEXT), hs[5][0], atol=1e-5, rtol=1e-5)       # after block 4
    torch.testing.assert_close(ex.get_resid_acts(TEXT, "pre"), hs[4][0], atol=1e-5, rtol=1e-5)
    attn = plain_capture(smol.hf.model.layers[4].self_attn, ids, smol.hf)
    torch.testing.assert_close(ex.get_attn_acts(TEXT), attn, atol=1e-5, rtol=1e-5)
    mid = ex.get_resid_acts(TEXT, "mid")
    torch.testing.assert_close(mid, hs[4][0] + attn, atol=1e-5, rtol=1e-5)                     # resid_mid = pre + attn_out

def test_negative_layer_counts_from_end(smol):
    assert ExtractSingleSample(smol, layer=-1).layer == 29 and ExtractSingleSample(smol, layer=-30).layer == 0
    a = ExtractSingleSample(smol, layer=-28)
    assert a.layer == 2
    assert torch.equal(a.get_mlp_acts(TEXT), ExtractSingleSample(smol, layer=2).get_mlp_acts(TEXT))     # the same call

def test_get_acts_names_and_dict(smol):
    ex = ExtractSingleSample(smol, layer=2)
    n = len(ex.tokens(TEXT))
    rel, full = ex.get_acts(TEXT, "hook_resid_post"), ex.get_acts(TEXT, "blocks.2.hook_resid_post")
    assert torch.equal(rel, full)                                          # the same call
    names = ["attn.hook_pattern", "blocks.7.hook_resid_pre", "ln_final.hook_normalized", "mlp.hook_post"]
    got = ex.get_acts(TEXT, names)
    assert list(got) == ["blocks.2.attn.hook_pattern", "blocks.7.hook_resid_pre", "ln_final.hook_normalized",
                         "blocks.2.mlp.hook_post"]
    assert got["blocks.2.attn.hook_pattern"].shape == (9, n, n)
    torch.testing.assert_close(got["blocks.2.attn.hook_pattern"].sum(-1), torch.ones(9, n))
    _, cache = smol.run_with_cache(TEXT, list(got))
    for k, v in got.items(): assert torch.equal(v, cache[k][0]), k       # the same hooks, the same full forward

def test_forward_stops_after_needed_block(smol):
    "Only the blocks up to the hook's layer run (a plain forward hook on later blocks never fires)."
    fired = []
    hs = [smol.hf.model.layers[i].register_forward_hook(lambda m, a, o, i=i: fired.append(i)) for i in range(30)]
    try:
        ExtractSingleSample(smol, layer=3).get_mlp_acts(TEXT)
        assert fired == [0, 1, 2, 3]
        fired.clear(); ExtractSingleSample(smol, layer=3).get_acts(TEXT, "hook_logits")
        assert fired == list(range(30))
    finally:
        for h in hs: h.remove()
    assert stop_layer(smol, ["hook_embed"]) == 0 and stop_layer(smol, ["blocks.3.hook_resid_pre", "blocks.9.mlp.hook_post"]) == 10

def test_max_length_truncates_prefix(smol):
    ex, short = ExtractSingleSample(smol, layer=1), ExtractSingleSample(smol, layer=1, max_length=5)
    full, cut = ex.get_mlp_acts(TEXT), short.get_mlp_acts(TEXT)
    assert cut.shape[0] == 5 and full.shape[0] > 5
    torch.testing.assert_close(cut, full[:5], atol=1e-5, rtol=1e-5)          # causal: a prefix sees the same

def test_hooks_removed(smol):
    before = hook_state(smol.hf)
    ex = ExtractSingleSample(smol, layer=3)
    ex.get_acts(TEXT, ["attn.hook_z", "mlp.hook_post"])
    with pytest.raises(ValueError): ex.get_acts(TEXT, ["mlp.hook_post", "mlp.nope"])
    assert hook_state(smol.hf) == before

def test_tokenizer_attribute(smol):
    ex = ExtractSingleSample(smol)
    assert ex.tokenizer is smol.tokenizer and ex.layer == 3 and ex.max_length == 1024 and ex.model is smol

# --- model arguments -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "qwen2"])
def test_tiny_families_token_ids(family):
    "Token-id input on tiny models without a tokenizer; GPT-2 also against its own `mlp.act` module (what the original hooked)."
    hf = tiny_hf(family)
    m = HookedModel(hf)
    ids = tokens(1, 9)[0]
    ex = ExtractSingleSample(m, layer=-1, device="cpu")
    acts = ex.get_mlp_acts(ids)
    _, cache = m.run_with_cache(ids[None], "blocks.1.mlp.hook_post")
    # exact: both forwards run every block (the last one is hooked) with the same kernels on the same shapes
    assert torch.equal(acts, cache["blocks.1.mlp.hook_post"][0]) and acts.shape == (9, m.cfg.d_mlp)
    if family == "gpt2":
        ref = plain_capture(hf.transformer.h[1].mlp.act, ids[None], hf)
        torch.testing.assert_close(acts, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no tokenizer"): ex.get_mlp_acts("text")

def test_model_from_path_and_pretrained(tmp_path, smol):
    "hf_model as a directory path and as a PreTrainedModel give the same activations as a shared HookedModel."
    hf = tiny_hf("llama")
    hf.save_pretrained(tmp_path); smol.tokenizer.save_pretrained(tmp_path)
    # the tiny vocab is 97 ids: use text whose ids are all < 97 under the SmolLM2 tokenizer
    ids = torch.tensor([5, 17, 42, 88, 3, 60])
    from_path = ExtractSingleSample(str(tmp_path), layer=1, device="cpu")
    from_pre = ExtractSingleSample(hf, layer=1, device="cpu")
    assert from_path.tokenizer is not None
    torch.testing.assert_close(from_path.get_mlp_acts(ids), from_pre.get_mlp_acts(ids), atol=1e-6, rtol=1e-6)

# --- errors --------------------------------------------------------------------------------------------------

def test_errors(smol):
    ex = ExtractSingleSample(smol, layer=3)
    with pytest.raises(ValueError, match=r"unknown hook 'mlp.hook_postt'.*Closest valid names: mlp.hook_post"):
        ex.get_acts(TEXT, "mlp.hook_postt")
    with pytest.raises(ValueError, match="layer 30 is out of range"): ex.get_acts(TEXT, "blocks.30.hook_resid_post")
    with pytest.raises(ValueError, match="does not exist on"): ex.get_acts(TEXT, "hook_pos_embed")   # rotary model
    with pytest.raises(ValueError, match=r"layer 30 is out of range: this model has 30 layers, so use 0..29"):
        ExtractSingleSample(smol, layer=30)
    with pytest.raises(ValueError, match="out of range"): ExtractSingleSample(smol, layer=-31)
    with pytest.raises(TypeError, match="layer must be an int"): ExtractSingleSample(smol, layer="3")
    with pytest.raises(TypeError, match="layer must be an int"): ExtractSingleSample(smol, layer=2.0)
    with pytest.raises(ValueError, match="max_length must be a positive int"): ExtractSingleSample(smol, max_length=0)
    with pytest.raises(TypeError, match="hf_model must be"): ExtractSingleSample(hf_model=42)
    with pytest.raises(ValueError, match="empty"): ex.get_mlp_acts("")
    with pytest.raises(TypeError, match="text must be a string"): ex.get_mlp_acts(3.5)
    with pytest.raises(TypeError, match="1-d integer"): ex.get_mlp_acts(torch.randn(4))
    with pytest.raises(ValueError, match="where must be"): ex.get_resid_acts(TEXT, "after")
    assert resolve_layer(-2, 4) == 2 and resolve_hook(smol, None, 3) == "blocks.3.mlp.hook_post"

# --- FromHuggingFace -------------------------------------------------------------------------------------------

from deeplens.extractor import FromHuggingFace

DOCS = ["The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.",
        "Sparse autoencoders find directions in activation space that often mean something to people.",
        "Python's standard library ships with documentation for every module, and it is available offline.",
        "Mechanistic interpretability studies the algorithms that neural networks learn from data.",
        "A context of sixteen tokens is short, but it is enough for a test of packing and extraction."] * 3

@pytest.fixture(scope="module")
def tiny_tok(smol):
    "A tiny random Llama with the default model's tokenizer (so it reads text)."
    import transformers as T
    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                            num_attention_heads=4, num_key_value_heads=2, vocab_size=len(smol.tokenizer))).eval()
    return HookedModel(hf, smol.tokenizer)

@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    import json
    p = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    p.write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS))
    return p

def reference_rows(m, docs, S, n, hook):
    "Independent packing: concatenated document tokens in chunks of S-1 after a BOS; one plain forward per context."
    tok = m.tokenizer
    ids = [i for d in docs for i in tok(d, add_special_tokens=False)["input_ids"]]
    rows = []
    for c in range(len(ids) // (S - 1)):
        ctx = torch.tensor([[tok.bos_token_id] + ids[c * (S - 1):(c + 1) * (S - 1)]])
        _, cache = m.run_with_cache(ctx, hook)
        rows.append(cache[hook][0, 1:])
    return torch.cat(rows)[:n]

def test_from_hf_rows_equal_reference(tiny_tok, jsonl, tmp_path):
    fh = FromHuggingFace(tiny_tok, layer=-2, dataset_name=str(jsonl), text_field="body", num_samples=5, seq_length=16,
                         inference_batch_size=3, out_dir=tmp_path / "feats", progress=False)
    assert fh.hook == "blocks.1.mlp.hook_post" and fh.model is tiny_tok and fh.tokenizer is tiny_tok.tokenizer
    feats = fh.extract_features()
    assert feats.shape == (5 * 16, 64)
    torch.testing.assert_close(feats, reference_rows(tiny_tok, DOCS, 16, 80, fh.hook), atol=1e-5, rtol=1e-5)
    # the store on disk holds the same rows, and its token ids decode back to the corpus text
    assert fh.store_dir == tmp_path / "feats" / "features_blocks.1.mlp.hook_post_80" and fh.store.path == fh.store_dir
    assert torch.equal(ActivationStore(fh.store_dir).get(slice(None), fh.hook), feats)        # the same bytes, read twice
    text = tiny_tok.tokenizer.decode(fh.store.tokens(slice(None)).tolist())
    assert " ".join(DOCS).replace(" ", "").startswith(text.replace(" ", ""))
    # a rerun reuses the finished store (the same bytes); another model in the same place is refused
    assert torch.equal(FromHuggingFace(tiny_tok, layer=-2, dataset_name=str(jsonl), text_field="body", num_samples=5,
                                       seq_length=16, out_dir=tmp_path / "feats", progress=False).extract_features(), feats)
    import transformers as T
    other = HookedModel(T.AutoModelForCausalLM.from_config(tiny_tok.hf.config).eval(), tiny_tok.tokenizer)
    with pytest.raises(ValueError, match="different ActivationStore"):
        FromHuggingFace(other, layer=-2, dataset_name=str(jsonl), text_field="body", num_samples=5, seq_length=16,
                        out_dir=tmp_path / "feats", progress=False).extract_features()
    # ...unless overwrite=True: the other model's rows replace the store (resume is implied off)
    redo = FromHuggingFace(other, layer=-2, dataset_name=str(jsonl), text_field="body", num_samples=5, seq_length=16,
                           out_dir=tmp_path / "feats", overwrite=True, progress=False).extract_features()
    torch.testing.assert_close(redo, reference_rows(other, DOCS, 16, 80, fh.hook), atol=1e-5, rtol=1e-5)

def test_from_hf_no_save_leaves_nothing(tiny_tok, tmp_path):
    fh = FromHuggingFace(tiny_tok, layer=0, dataset_name=DOCS, num_samples=3, seq_length=16, hook="hook_resid_post",
                         save_features=False, out_dir=tmp_path / "never", progress=False)
    feats = fh.extract_features()
    assert feats.shape == (48, 32) and fh.store is None and not (tmp_path / "never").exists()
    torch.testing.assert_close(feats, reference_rows(tiny_tok, DOCS, 16, 48, "blocks.0.hook_resid_post"), atol=1e-5, rtol=1e-5)

def test_from_hf_builtin_corpus_and_dataset_builder(tiny_tok, tmp_path):
    "Offline builtin corpus → store → ActivationsDatasetBuilder reading the store directory."
    from deeplens.dataset import ActivationsDatasetBuilder
    fh = FromHuggingFace(tiny_tok, layer=2, dataset_name="builtin:python-docs", num_samples=20, seq_length=32,
                         n_tokens=500, out_dir=tmp_path, progress=False)
    feats = fh.extract_features()
    assert feats.shape == (500, 64) and torch.isfinite(feats).all()
    b = ActivationsDatasetBuilder(fh.store_dir, batch_size=64, progress=False)
    torch.testing.assert_close(b.mean.double(), feats[b.train_indices].double().mean(0), atol=1e-6, rtol=1e-5)

def test_from_hf_defaults_and_errors(tiny_tok, tmp_path):
    import inspect
    sig = inspect.signature(FromHuggingFace)
    assert {k: sig.parameters[k].default for k in ("hf_model", "layer", "dataset_name", "num_samples", "seq_length",
            "inference_batch_size", "device", "save_features", "hook", "out_dir")} == dict(
        hf_model=None, layer=6, dataset_name="HuggingFaceFW/fineweb", num_samples=25000, seq_length=128,
        inference_batch_size=16, device="auto", save_features=True, hook=None, out_dir="saved_features")
    with pytest.raises(ValueError, match="layer 6 is out of range"): FromHuggingFace(tiny_tok, dataset_name=DOCS)
    with pytest.raises(ValueError, match="unknown hook"): FromHuggingFace(tiny_tok, layer=0, dataset_name=DOCS, hook="mlp.hook_pots")
    with pytest.raises(FileNotFoundError): FromHuggingFace(tiny_tok, layer=0, dataset_name=str(tmp_path / "none.jsonl"))
    with pytest.raises(ValueError, match="num_samples must be"): FromHuggingFace(tiny_tok, layer=0, dataset_name=DOCS, num_samples=0)
    with pytest.raises(ValueError, match="no full context"):
        FromHuggingFace(tiny_tok, layer=0, dataset_name=["too short"], num_samples=1, seq_length=64,
                        out_dir=tmp_path / "x", progress=False).extract_features()
    assert not (tmp_path / "x" / "features_blocks.0.mlp.hook_post_64").exists()
