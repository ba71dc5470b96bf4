"""score, trace, ModelAnalyzer, ActivationRecord files and embedding views, checked against plain
transformers / PyTorch computations and hand calculations."""
import sys, os, json, warnings
sys.path.insert(0, os.path.dirname(__file__))
import numpy as np
import pytest
import torch
import transformers as T
from tiny import tiny_hf, tokens, CONFIGS
from deeplens.model import HookedModel, load_model, default_model_path
from deeplens.analyzer import (score, trace, ModelAnalyzer, ActivationRecord, save_activations, load_activations,
                               compare_activations, get_activation_statistics, last_token_positions, SITE_ALIASES)
from deeplens import embeddings as E

ATOL = 1e-5

@pytest.fixture(scope="module")
def tok():
    return T.AutoTokenizer.from_pretrained(default_model_path(verbose=False))

@pytest.fixture(scope="module")
def worded(tok):
    "A tiny random Llama whose vocabulary is the default model's, so it takes text."
    torch.manual_seed(0)
    cfg = CONFIGS["llama"]()
    cfg.vocab_size = len(tok)
    hf = T.AutoModelForCausalLM.from_config(cfg).eval()
    return HookedModel(hf, tok)

@pytest.fixture(scope="module")
def tiny():
    return {f: HookedModel(tiny_hf(f)) for f in ("gpt2", "llama", "gpt_neox", "gemma2")}

@pytest.fixture(scope="module")
def smol():
    return load_model(verbose=False)

# --- score ----------------------------------------------------------------------------------------------------

def test_score_equals_log_softmax_of_hf_logits(tiny):
    m, ids = tiny["llama"], tokens()
    with torch.no_grad(): ref = m.hf(input_ids=ids).logits
    s = score(m, ids)
    assert torch.equal(s.logits, ref)
    torch.testing.assert_close(s.log_probs, torch.log_softmax(ref, -1), atol=ATOL, rtol=0)
    torch.testing.assert_close(s.probs, torch.softmax(ref, -1), atol=ATOL, rtol=0)
    s2 = score(m.hf, ids, temperature=2.5)          # a bare PreTrainedModel works too
    torch.testing.assert_close(s2.log_probs, torch.log_softmax(ref / 2.5, -1), atol=ATOL, rtol=0)
    assert torch.equal(s2.logits, ref)              # temperature scales the softmax, not the stored logits

@pytest.mark.parametrize("side", ["right", "left"])
def test_final_token_under_padding(worded, side):
    texts = ["The quick brown fox jumps over the lazy dog", "Hello", "One two three"]
    s = score(worded, texts, padding_side=side)
    lens = [len(worded.tokenizer(t)["input_ids"]) for t in texts]
    width = s.logits.shape[1]
    want = [n - 1 for n in lens] if side == "right" else [width - 1] * len(texts)
    assert s.final_positions.tolist() == want
    for i, t in enumerate(texts):
        with torch.no_grad(): ref = worded.hf(**worded.tokenizer(t, return_tensors="pt")).logits[0, -1]
        torch.testing.assert_close(s.final_token_logits()[i], ref, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(s.final_token_log_probs()[i], torch.log_softmax(ref, -1), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(s.final_token_probs()[i], torch.softmax(ref, -1), atol=1e-5, rtol=1e-4)
        assert s.final_token_ids()[i] == worded.tokenizer(t)["input_ids"][-1]

def test_final_token_with_id_mask(tiny):
    m, ids = tiny["llama"], tokens(3, 6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0]])
    assert last_token_positions(mask).tolist() == [3, 5, 4]
    s = score(m, ids, attention_mask=mask)
    assert torch.equal(s.final_token_logits(), s.logits[torch.arange(3), torch.tensor([3, 5, 4])])

# --- trace ----------------------------------------------------------------------------------------------------

PER_BLOCK = {"block_input": "hook_resid_pre", "attn_output": "hook_attn_out", "post_attn_residual": "hook_resid_mid",
             "mlp_input": "ln2.hook_normalized", "mlp_output": "hook_mlp_out", "block_output": "hook_resid_post"}

@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_trace_equals_run_with_cache(tiny, family):
    m, ids = tiny[family], tokens()
    sites = list(SITE_ALIASES)
    tr = trace(m, ids, sites=sites)
    # the same (read-only) hooks, so the same kernels run: values are bit-identical
    _, cache = m.run_with_cache(ids, lambda n: n.endswith(tuple(PER_BLOCK.values()) + ("attn.hook_z", "ln_final.hook_normalized", "hook_logits")))
    for l in range(m.cfg.n_layers):
        for alias, hook in PER_BLOCK.items():
            want = cache[f"blocks.{l}.{hook}"]
            if hook.endswith("hook_normalized"): want = m.apply_norm(want, want.new_ones(()), f"blocks.{l}.ln2", center=False)
            assert torch.equal(tr.get(alias, l), want)
        assert torch.equal(tr.get("attn_o_proj_pre", l), cache[f"blocks.{l}.attn.hook_z"].flatten(-2))
    final_norm = m.apply_norm(cache["ln_final.hook_normalized"], torch.ones(()), "ln_final", center=False)
    for alias in ("final_norm", "lm_head_input"):
        assert torch.equal(tr.get(alias), final_norm)
    assert torch.equal(tr.final_logits, m(ids)) and torch.equal(tr.get("logits"), tr.final_logits)
    torch.testing.assert_close(tr.get("logits", -1), tr.final_logits, atol=1e-4, rtol=1e-5)
    assert tr.stack("block_output").shape == (m.cfg.n_layers, *ids.shape, m.cfg.d_model)

def test_trace_equals_plain_pytorch_hooks(tiny):
    "block_input / block_output / attn_o_proj_pre / mlp_input against forward hooks on the HF modules; lens logits against HF hidden states."
    m, ids = tiny["llama"], tokens()
    seen = {}
    hooks = []
    for l, blk in enumerate(m.hf.model.layers):
        hooks.append(blk.register_forward_pre_hook(lambda mod, a, k, l=l: seen.__setitem__(("in", l), (a[0] if a else k["hidden_states"]).clone()), with_kwargs=True))
        hooks.append(blk.register_forward_hook(lambda mod, a, o, l=l: seen.__setitem__(("out", l), (o[0] if isinstance(o, tuple) else o).clone())))
        hooks.append(blk.self_attn.o_proj.register_forward_pre_hook(lambda mod, a, l=l: seen.__setitem__(("z", l), a[0].clone())))
        hooks.append(blk.post_attention_layernorm.register_forward_hook(lambda mod, a, o, l=l: seen.__setitem__(("ln2", l), o.clone())))
    try:
        with torch.no_grad(): out = m.hf(input_ids=ids, output_hidden_states=True)
    finally:
        for h in hooks: h.remove()
    tr = trace(m, ids, sites=["block_input", "block_output", "attn_o_proj_pre", "mlp_input", "logits"])
    for l in range(m.cfg.n_layers):
        torch.testing.assert_close(tr.get("block_input", l), seen[("in", l)], atol=ATOL, rtol=0)
        torch.testing.assert_close(tr.get("block_output", l), seen[("out", l)], atol=ATOL, rtol=0)
        torch.testing.assert_close(tr.get("attn_o_proj_pre", l), seen[("z", l)], atol=ATOL, rtol=0)
        torch.testing.assert_close(tr.get("mlp_input", l), seen[("ln2", l)], atol=ATOL, rtol=0)
    with torch.no_grad():   # hidden_states[l+1] is block l's output for every block but the last (which HF normalises)
        for l in range(m.cfg.n_layers - 1):
            ref = m.hf.lm_head(m.hf.model.norm(out.hidden_states[l + 1]))
            torch.testing.assert_close(tr.get("logits", l), ref, atol=1e-4, rtol=1e-5)

def test_trace_layers_and_final_token(worded):
    tr = trace(worded, ["Hello there friend", "Hi"], layers=[-1, 0], sites="block_output")
    assert tr.layers == [1, 0]
    last = tr.final_token("block_output", 0)
    assert torch.equal(last[1], tr.get("block_output", 0)[1, tr.attention_mask[1].sum() - 1])

def test_trace_errors(tiny):
    ids = tokens()
    with pytest.raises(ValueError, match="parallel"): trace(tiny["gpt_neox"], ids, sites=["post_attn_residual"])
    with pytest.raises(ValueError, match="unknown trace site"): trace(tiny["llama"], ids, sites=["attn_out_proj"])
    with pytest.raises(ValueError, match="out of range"): trace(tiny["llama"], ids, layers=[2])
    with pytest.raises(ValueError, match="sites is empty"): trace(tiny["llama"], ids, sites=[])
    tr = trace(tiny["llama"], ids, layers=[0])
    with pytest.raises(ValueError, match="no layer"): tr.get("final_norm", 0)
    with pytest.raises(KeyError, match="not traced"): tr.get("block_output", 1)
    with pytest.raises(KeyError, match="was not traced"): tr.get("mlp_output", 0)

def test_score_errors(tiny, worded):
    ids = tokens()
    for bad in (0, -1.0, float("nan"), "hot"):
        with pytest.raises(ValueError, match="temperature"): score(tiny["llama"], ids, temperature=bad)
    with pytest.raises(ValueError, match="no tokens"): score(worded, ["fine", ""])
    with pytest.raises(ValueError, match="attention_mask has shape"): score(tiny["llama"], ids, attention_mask=torch.ones(2, 3))
    with pytest.raises(TypeError, match="HookedModel"): score(torch.nn.Linear(2, 2), ids)
    with pytest.raises(ValueError, match="no tokenizer"): score(tiny["llama"], "text")

# --- ModelAnalyzer --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def analyzer(worded):
    return ModelAnalyzer(worded)

def test_inspection(tiny, analyzer):
    a = ModelAnalyzer(tiny["gpt2"].hf)      # tied embeddings: counted once, like hf.parameters()
    assert a.count_parameters() == sum(p.numel() for p in tiny["gpt2"].hf.parameters())
    assert a.count_parameters() < sum(p.numel() for _, p in tiny["gpt2"].hf.named_parameters(remove_duplicate=False))
    assert a.get_num_layers() == 2 and a.get_layer_names() == ["transformer.h.0", "transformer.h.1"]
    assert analyzer.get_layer_names() == ["model.layers.0", "model.layers.1"]
    d = analyzer.architecture_summary()
    assert d["n_layers"] == 2 and d["parameters"] == analyzer.count_parameters()

def test_print_architecture_summary(analyzer, capsys):
    analyzer.print_architecture_summary()
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out and f"{analyzer.count_parameters():,}" in out and "model.layers.0" in out

def test_extract_keys_and_values(analyzer):
    m = analyzer.hooked
    rec = analyzer.extract_activations("The cat sat on the mat", include_attention=True, return_logits=True)
    enc = m.tokenizer("The cat sat on the mat", return_tensors="pt")
    seen = {}
    hs = [b.register_forward_hook(lambda mod, a, o, l=l: seen.__setitem__(l, o[0] if isinstance(o, tuple) else o))
          for l, b in enumerate(m.hf.model.layers)]
    try:
        with torch.no_grad(): ref = m.hf(**enc)
    finally:
        for h in hs: h.remove()
    assert rec.tokens == [m.tokenizer.decode([t]) for t in enc["input_ids"][0]]
    for l in range(2):
        assert rec.layer_activations[f"model.layers.{l}"] is rec.layer_activations[f"blocks.{l}.hook_resid_post"]
        torch.testing.assert_close(rec[f"model.layers.{l}"], seen[l][0], atol=1e-4, rtol=1e-5)
        assert rec.attention[f"blocks.{l}.attn.hook_pattern"].shape == (4, enc["input_ids"].shape[1], enc["input_ids"].shape[1])
        torch.testing.assert_close(rec.attention[f"blocks.{l}.attn.hook_pattern"].sum(-1), torch.ones(4, enc["input_ids"].shape[1]))
    torch.testing.assert_close(rec.logits, ref.logits[0], atol=1e-4, rtol=1e-5)
    r2 = analyzer.extract_activations("The cat", sites=["hook_mlp_out", "hook_embed"], layers=[1])
    assert set(r2.layer_activations) == {"blocks.1.hook_mlp_out", "model.layers.1.mlp", "hook_embed", "model.embed_tokens"}

def test_batch_extraction_matches_single(analyzer):
    prompts = ["The quick brown fox jumps", "Hi", "A b c d e f g", "Once upon a time"]
    recs = analyzer.extract_batch_activations(prompts, include_attention=True, batch_size=3)
    for p, r in zip(prompts, recs):
        one = analyzer.extract_activations(p, include_attention=True)
        assert r.tokens == one.tokens and torch.equal(r.token_ids, one.token_ids)
        for k in one.layer_activations: torch.testing.assert_close(r[k], one[k], atol=1e-4, rtol=1e-5)
        for k in one.attention: torch.testing.assert_close(r.attention[k], one.attention[k], atol=1e-5, rtol=1e-4)

def test_generate(analyzer):
    text = analyzer.generate("The cat", max_new_tokens=4)
    ids = analyzer.hooked.generate("The cat", 4, return_type="tokens")
    assert text == analyzer.tokenizer.decode(ids[0], skip_special_tokens=True)
    text2, rec = analyzer.generate("The cat", max_new_tokens=4, return_activations=True)
    assert text2 == text and torch.equal(rec.token_ids, ids[0])
    assert rec["model.layers.1"].shape == (ids.shape[1], analyzer.cfg.d_model)
    with pytest.raises(RuntimeError, match="load_for_generation"):
        ModelAnalyzer(analyzer.hooked, load_for_generation=False).generate("x")

def test_analyzer_constructor_errors():
    with pytest.raises(TypeError, match="model_path"): ModelAnalyzer(42)

# --- files ----------------------------------------------------------------------------------------------------

def _records(analyzer):
    recs = analyzer.extract_batch_activations(["The cat sat", "A dog"], include_attention=True, return_logits=True)
    x = torch.randn(3, 5).to(torch.bfloat16)
    extra = ActivationRecord("bf16", ["a", "b", "c"], torch.tensor([1, 2, 3]), {"blocks.0.hook_resid_post": x, "model.layers.0": x},
                             aliases={"model.layers.0": "blocks.0.hook_resid_post"}, metadata={"n_layers": 2, "note": "x"})
    return recs + [extra]

@pytest.mark.parametrize("fmt", ["safetensors", "pt", "npz", "json"])
def test_round_trip(analyzer, tmp_path, fmt):
    recs = _records(analyzer)
    p = save_activations(recs, tmp_path / f"acts.{fmt}")          # the format from the suffix
    back = load_activations(p)
    assert back == recs and back[2]["model.layers.0"].dtype == torch.bfloat16
    assert back[0].layer_activations["model.layers.1"] is back[0].layer_activations["blocks.1.hook_resid_post"]
    single = load_activations(save_activations(recs[0], tmp_path / "one.bin", format=fmt), format=fmt)
    assert isinstance(single, ActivationRecord) and single == recs[0]
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted([p.name, "one.bin"])     # no temp files left
    if fmt == "pt": torch.load(p, weights_only=True)
    if fmt == "json": json.loads(p.read_text())

def test_pickle_only_when_asked(analyzer, tmp_path):
    recs = _records(analyzer)
    with pytest.raises(ValueError, match="format='pickle'"): save_activations(recs, tmp_path / "a.pkl")
    assert not list(tmp_path.iterdir())
    with pytest.warns(UserWarning, match="arbitrary code"): p = save_activations(recs, tmp_path / "a.pkl", format="pickle")
    with pytest.raises(ValueError, match="format='pickle'"): load_activations(p)
    with pytest.warns(UserWarning, match="arbitrary code"): back = load_activations(p, format="pickle")
    assert back == recs
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the default format never warns
        load_activations(save_activations(recs, tmp_path / "a.safetensors"))

def test_file_errors(analyzer, tmp_path):
    rec = _records(analyzer)[0]
    with pytest.raises(ValueError, match="unknown format"): save_activations(rec, tmp_path / "x", format="hdf5")
    with pytest.raises(TypeError, match="ActivationRecord"): save_activations({"a": 1}, tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError): load_activations(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="cannot tell the format"): load_activations(save_activations(rec, tmp_path / "x.bin"))
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a deeplens"): load_activations(tmp_path / "other.safetensors")

# --- comparisons ----------------------------------------------------------------------------------------------

def test_compare_and_statistics_by_hand(analyzer):
    r1, r2 = analyzer.extract_batch_activations(["The cat sat on the mat", "A dog"])
    a = r1["model.layers.1"].double().numpy(); b = r2["model.layers.1"].double().numpy()
    ma, mb = a.mean(0), b.mean(0)
    cos = ma @ mb / np.sqrt((ma @ ma) * (mb @ mb))
    assert compare_activations(r1, r2, 1) == pytest.approx(cos, rel=1e-9)
    assert compare_activations(r1, r2, "model.layers.1", metric="l2") == pytest.approx(np.sqrt(((ma - mb) ** 2).sum()), rel=1e-9)
    la, lb = a[-1], b[-1]
    assert compare_activations(r1, r2, -1, position="last") == pytest.approx(la @ lb / np.sqrt((la @ la) * (lb @ lb)), rel=1e-9)
    assert compare_activations(r1, r1, 0, position="all") == pytest.approx(1.0)
    st = get_activation_statistics(r1, 1)
    assert st["mean"] == pytest.approx(a.mean()) and st["std"] == pytest.approx(a.std(ddof=1))
    assert st["min"] == pytest.approx(a.min()) and st["max"] == pytest.approx(a.max())
    assert st["l2_norm"] == pytest.approx(np.sqrt((a ** 2).sum()))
    assert st["mean_token_norm"] == pytest.approx(np.linalg.norm(a, axis=-1).mean()) and st["shape"] == a.shape
    with pytest.raises(ValueError, match="metric"): compare_activations(r1, r2, 1, metric="dot")
    with pytest.raises(ValueError, match="equal length"): compare_activations(r1, r2, 1, position="all")
    with pytest.raises(KeyError, match="not in this record"): compare_activations(r1, r2, "transformer.h.1")
    with pytest.raises(ValueError, match="outside"): compare_activations(r1, r2, 1, position=5)

# --- embeddings -----------------------------------------------------------------------------------------------

def _chart_values(chart):
    spec = chart if isinstance(chart, dict) else chart.to_dict()
    def find(d):
        if isinstance(d, dict):
            if "values" in d and isinstance(d["values"], list): return d["values"]
            for v in d.values():
                r = find(v)
                if r is not None: return r
        if isinstance(d, list):
            for v in d:
                r = find(v)
                if r is not None: return r
    return find(spec)

def test_pca_against_pca_lowrank():
    torch.manual_seed(0)
    x = torch.randn(40, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)
    coords, ratio = E.pca(x, 2)
    _, S, V = torch.pca_lowrank(x, q=6, center=True)
    ref = (x - x.mean(0)) @ V[:, :2]
    torch.testing.assert_close(coords.abs(), ref.abs(), atol=1e-9, rtol=0)
    torch.testing.assert_close(ratio, S[:2] ** 2 / (S ** 2).sum(), atol=1e-9, rtol=0)
    vals = _chart_values(E.plot_embeddings_2d(x.numpy(), labels=[f"p{i}" for i in range(40)]))
    got = np.array([[v["c0"], v["c1"]] for v in vals])
    np.testing.assert_allclose(np.abs(got), ref.abs().numpy(), atol=1e-9)
    assert [v["label"] for v in vals] == [f"p{i}" for i in range(40)]
    assert torch.equal(E.pca(-x, 2)[0], E.pca(-x, 2)[0]) and torch.allclose(E.pca(x * 3, 2)[0], 3 * coords)

def test_charts_build():
    torch.manual_seed(0)
    x = torch.randn(12, 5)
    labels = list("abcdefghijkl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(E.plot_embeddings_3d(x, labels).to_dict()["hconcat"]) == 3
    comp = E.compare_reduction_methods(x, labels, methods=["pca", "tsne"])     # t-SNE through scikit-learn
    spec = comp.to_dict()
    assert [p["title"] for p in spec["hconcat"]] == ["PCA", "TSNE"]
    tsne = np.array([[v["c0"], v["c1"]] for v in _chart_values(spec["hconcat"][1])])
    assert tsne.shape == (12, 2) and np.isfinite(tsne).all()

@pytest.mark.skipif(__import__("importlib").util.find_spec("umap") is not None, reason="umap-learn is installed")
def test_umap_missing_message():
    with pytest.raises(ImportError, match="pip install umap-learn"): E.plot_embeddings_2d(torch.randn(10, 4), method="umap")
    with pytest.raises(ImportError, match="umap-learn"): E.compare_reduction_methods(torch.randn(10, 4), methods=["pca", "umap"])

def test_layer_embeddings(worded):
    text = "The cat sat on the mat"
    ch = E.plot_layer_embeddings(worded, text, layer_indices=[0, 1])
    spec = ch.to_dict()
    assert len(spec["hconcat"]) == 2
    _, cache = worded.run_with_cache(text, ["blocks.1.hook_resid_post"])
    ref, _ = E.pca(cache["blocks.1.hook_resid_post"][0], 2)
    vals = _chart_values(spec["hconcat"][1])
    np.testing.assert_allclose(np.array([[v["c0"], v["c1"]] for v in vals]), ref.numpy(), atol=1e-6)
    old = E.plot_layer_embeddings(worded.hf, worded.tokenizer, text, layer_indices=[0, 1], joint=True)   # toolkit call order
    assert len(old.to_dict()["hconcat"]) == 2

def test_embedding_errors():
    with pytest.raises(ValueError, match="2-D"): E.reduce_dimensions(torch.randn(5))
    with pytest.raises(ValueError, match="at least 2 points"): E.pca(torch.randn(1, 4))
    with pytest.raises(ValueError, match="method"): E.reduce_dimensions(torch.randn(5, 3), "lda")
    with pytest.raises(ValueError, match="n_components"): E.pca(torch.randn(5, 3), 4)
    with pytest.raises(ValueError, match="labels"): E.plot_embeddings_2d(torch.randn(5, 3), labels=["a"])
    with pytest.raises(ValueError, match="NaN"): E.pca(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))

# --- the default model ----------------------------------------------------------------------------------------

def test_default_model_real_behaviour(smol):
    a = ModelAnalyzer(smol)
    text = "The capital of France is"
    s = a.score(text)
    seen = []
    h = smol.hf.model.layers[5].register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad(): ref = smol.hf(**smol.tokenizer(text, return_tensors="pt")).logits
    finally: h.remove()
    torch.testing.assert_close(s.log_probs, torch.log_softmax(ref, -1), atol=1e-5, rtol=0)
    assert smol.to_string(s.final_token_probs().argmax(-1)) == " Paris"
    rec = a.extract_activations(text, layers=[5])
    assert torch.equal(rec["model.layers.5"], seen[0][0])

# --- facade methods over lens / patching / steering ------------------------------------------------------------

def _pair_with_different_tops(m):
    for seed in range(2, 50):
        c, r = tokens(1, 6, seed=1), tokens(1, 6, seed=seed)
        with torch.no_grad(): a, b = int(m(c)[0, -1].argmax()), int(m(r)[0, -1].argmax())
        if a != b: return c, r, a, b
    raise AssertionError("no pair with different predictions")

def test_logit_lens_method_against_hf_hidden_states(tiny):
    m = tiny["llama"]; a = ModelAnalyzer(m); ids = tokens(1, 6)
    preds = a.logit_lens(ids, top_k=3)
    assert list(preds) == [0, 1] and preds.result is not None
    with torch.no_grad():
        out = m.hf(input_ids=ids, output_hidden_states=True)
        refs = [m.hf.lm_head(m.hf.model.norm(out.hidden_states[1])), out.logits]
    for l, ref in enumerate(refs):
        p = torch.softmax(ref[0, -1], -1).topk(3)
        assert [t for t, _ in preds[l]] == [f"<{i}>" for i in p.indices.tolist()]
        np.testing.assert_allclose([q for _, q in preds[l]], p.values.numpy(), atol=1e-5)

def test_print_logit_lens(analyzer, capsys):
    analyzer.print_logit_lens("The cat sat", layer_step=1, top_k=2)
    out = capsys.readouterr().out
    assert "layer   0" in out and "layer   1" in out

def test_path_patching_method_against_hand_loop(tiny):
    m = tiny["llama"]; a = ModelAnalyzer(m)
    clean, corr, ta, tb = _pair_with_different_tops(m)
    effects = a.path_patching(clean, corr)
    ld = lambda x: float(x[0, -1, ta] - x[0, -1, tb])
    _, cache = m.run_with_cache(clean, lambda n: n.endswith("hook_resid_post"))
    with torch.no_grad(): c, r = ld(m(clean)), ld(m(corr))
    assert list(effects) == [0, 1]
    for l in range(2):
        def put(act, hook, l=l):
            act = act.clone(); act[:, -1] = cache[f"blocks.{l}.hook_resid_post"][:, -1]; return act
        with torch.no_grad(): p = ld(m.run_with_hooks(corr, fwd_hooks=[(f"blocks.{l}.hook_resid_post", put)]))
        assert effects[l] == pytest.approx((p - r) / (c - r), abs=1e-4)
    assert effects[1] == pytest.approx(1.0, abs=1e-4)      # the last block's output at the last position is everything
    exp = a.activation_patch_experiment(clean, corr, "model.layers.0")
    assert exp["layer"] == 0 and exp["clean"] == pytest.approx(c, abs=1e-4) and exp["corrupted"] == pytest.approx(r, abs=1e-4)
    assert exp["effect"] == pytest.approx(effects[0], abs=1e-4)
    for name in ("0", 0, -2, "blocks.0", "blocks.0.hook_resid_post"): assert a._layer_index(name) == 0
    with pytest.raises(ValueError, match="out of range"): a._layer_index("model.layers.7")
    with pytest.raises(ValueError, match="cannot read a layer"): a._layer_index("transformer.h.1")

def test_generate_with_steering_against_plain_hooks(analyzer):
    m = analyzer.hooked
    pos, neg, coef = ["I am happy", "This is great"], ["I am sad", "This is terrible today"], 40.0
    block = m.hf.model.layers[1]
    def resid_pre_last(text):
        seen = []
        h = block.register_forward_pre_hook(lambda mod, a, k: seen.append((a[0] if a else k["hidden_states"])[0, -1].clone()), with_kwargs=True)
        try:
            with torch.no_grad(): m.hf(**m.tokenizer(text, return_tensors="pt"))
        finally: h.remove()
        return seen[0]
    v = torch.stack([resid_pre_last(t) for t in pos]).mean(0) - torch.stack([resid_pre_last(t) for t in neg]).mean(0)
    h = block.register_forward_pre_hook(lambda mod, a, k: ((a[0] + coef * v, *a[1:]), k) if a else
                                        (a, {**k, "hidden_states": k["hidden_states"] + coef * v}), with_kwargs=True)
    try:
        with torch.no_grad():
            out = m.hf.generate(**m.tokenizer("Today I feel", return_tensors="pt"), max_new_tokens=6, do_sample=False,
                                pad_token_id=m.tokenizer.pad_token_id)
    finally: h.remove()
    ref = m.tokenizer.decode(out[0], skip_special_tokens=True)
    got = analyzer.generate_with_steering("Today I feel", pos, neg, coefficient=coef, layer="model.layers.1", max_new_tokens=6)
    assert got == ref
    assert got != analyzer.generate("Today I feel", max_new_tokens=6)

def test_compute_feature_attribution_by_hand(tiny):
    "activation × gradient of the target logit at each MLP neuron, against a plain autograd computation."
    m = tiny["llama"]; a = ModelAnalyzer(m); ids = tokens(1, 6)
    with torch.no_grad(): top = int(m(ids)[0, -1].argmax())
    res = a.compute_feature_attribution(ids, layer="model.layers.1")
    acts = []
    down = m.hf.model.layers[1].mlp.down_proj
    def keep(mod, args):             # the MLP's hidden activation = the input of down_proj
        args[0].retain_grad(); acts.append(args[0])
    h = down.register_forward_pre_hook(keep)
    try:
        logits = m.hf(input_ids=ids).logits
        logits[0, -1, top].backward()
    finally: h.remove()
    ref = (acts[0] * acts[0].grad)[0].detach()
    assert res.layers == [1]
    torch.testing.assert_close(res.values[0], ref, atol=1e-5, rtol=1e-4)
    from deeplens.attribution import integrated_gradients
    ig = a.compute_feature_attribution(ids, top, method="integrated_gradients", steps=16)
    torch.testing.assert_close(ig.scores, integrated_gradients(m, ids, top, steps=16).scores)   # the facade passes through
    with torch.no_grad():
        dla = a.compute_feature_attribution(ids, top, method="dla")
        assert float(dla.total[0]) == pytest.approx(float(m(ids)[0, -1, top]), abs=1e-4)
    with pytest.raises(ValueError, match="method must be"): a.compute_feature_attribution(ids, method="saliency")
    with pytest.raises(ValueError, match="layer= applies"): a.compute_feature_attribution(ids, method="dla", layer=0)
    for hf in m.hf.parameters(): hf.grad = None
