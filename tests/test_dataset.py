"""deeplens.dataset (ActivationsDatasetBuilder): sources (tensor, .pt, .safetensors, ActivationStore), splits,
train-only z-score statistics against float64 references, exact inversion, errors."""
import sys, os
sys.path.insert(0, os.path.dirname(__file__))
import pickle
import pytest
import torch
from safetensors.torch import save_file
from deeplens.dataset import ActivationsDatasetBuilder, ZScore, split_sizes
from deeplens.store import ActivationStore
from deeplens.model import HookedModel, load_model

def data(n=1000, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.linspace(0.5, 20, d) + torch.linspace(-50, 50, d)

def all_rows(loader): return torch.cat(list(loader)) if len(loader) else torch.empty(0)

@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    "A 3,000-row store of two hooks, from a tiny random Llama with the default model's tokenizer."
    import transformers as T
    tok = load_model(verbose=False, device="cpu").tokenizer
    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok))).eval()
    d = tmp_path_factory.mktemp("store") / "s"
    ActivationStore.build(HookedModel(hf, tok), "builtin:python-docs", ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"],
                          3000, d, context_size=64, batch_size=8, progress=False, shard_rows=1024)
    return d

# --- statistics from the train split only ---------------------------------------------------------------------

def test_stats_from_train_split_only():
    x = data()
    x[800:] += 1000.0                                   # eval rows from another distribution
    b = ActivationsDatasetBuilder(x, splits=[0.8, 0.2], contiguous=True, progress=False)
    tr = x[:800].double()
    torch.testing.assert_close(b.mean.double(), tr.mean(0), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(b.std.double(), tr.std(0), atol=1e-4, rtol=1e-6)    # unbiased, like torch.std
    train, evl = b.get_dataloaders()
    z = all_rows(train)
    torch.testing.assert_close(z.double().mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.double().std(0), torch.ones(6, dtype=torch.float64), atol=1e-5, rtol=0)
    ze = all_rows(evl)          # eval rows normalised with the train statistics: far from mean 0
    torch.testing.assert_close(ze, (x[800:] - tr.mean(0).float()) / (tr.std(0).float() + 1e-8), atol=1e-4, rtol=1e-5)
    assert (ze.mean(0) > 10).all()

def test_random_split_stats_and_coverage():
    x = data(1003)
    x[:, 0] = torch.arange(1003.0)                     # a row id, to find each row again
    b = ActivationsDatasetBuilder(x, batch_size=50, seed=3, progress=False)
    assert len(b.train_indices) == 802 and len(b.eval_indices) == 201
    assert torch.equal(torch.cat([b.train_indices, b.eval_indices]).sort().values, torch.arange(1003))
    torch.testing.assert_close(b.mean.double(), x[b.train_indices].double().mean(0), atol=1e-4, rtol=1e-6)
    train, evl = b.get_dataloaders()
    assert len(train) == 17 and all(t.shape == (50, 6) for t in list(train)[:-1])
    # every row exactly once, back on its original scale
    back = b.denormalize(torch.cat([all_rows(train), all_rows(evl)]))
    ids = back[:, 0].round().long()
    assert torch.equal(ids.sort().values, torch.arange(1003))
    assert set(ids[:802].tolist()) == set(b.train_indices.tolist())
    torch.testing.assert_close(back, x[ids], atol=1e-4, rtol=1e-6)
    # deterministic per seed; another seed deals other rows
    assert torch.equal(ActivationsDatasetBuilder(x, seed=3, progress=False).train_indices, b.train_indices)
    assert not torch.equal(ActivationsDatasetBuilder(x, seed=4, progress=False).train_indices, b.train_indices)

def test_invert_exactly():
    x = data()
    b = ActivationsDatasetBuilder(x, progress=False)
    z = b.normalize(x)
    # inverse up to float32 rounding at the data's magnitude (a few ulps of max |x|)
    ulp = torch.finfo(torch.float32).eps * float(x.abs().max())
    torch.testing.assert_close(b.denormalize(z), x, atol=4 * ulp, rtol=0)
    # exact: the same elementwise float32 operations (IEEE-rounded, independent of the CPU's BLAS)
    torch.testing.assert_close(z, (x - b.mean) / (b.std + 1e-8), atol=0, rtol=0)
    zs = ZScore(b.mean, b.std, 1e-8)
    assert torch.equal(zs(x), z)                                   # the same function of the same statistics

def test_save_and_load_stats(tmp_path):
    b = ActivationsDatasetBuilder(data(), progress=False)
    p = b.save_stats(tmp_path / "sub" / "norm.safetensors")
    z = ZScore.load(p)
    assert torch.equal(z.mean, b.mean) and torch.equal(z.std, b.std) and z.eps == 1e-8 and z.n == 800   # bytes written and read
    assert [f.name for f in (tmp_path / "sub").iterdir()] == ["norm.safetensors"]          # no temp file left
    x = data(10, seed=9)
    assert torch.equal(z.denormalize(z.normalize(x)), b.denormalize(b.normalize(x)))

def test_norm_false_keeps_raw_rows():
    x = data().to(torch.bfloat16)
    b = ActivationsDatasetBuilder(x, norm=False, contiguous=True, batch_size=100)
    assert b.stats is None and b.mean is None
    train, evl = b.get_dataloaders()
    assert torch.equal(torch.cat(list(evl)), x[800:]) and next(iter(train)).dtype == torch.bfloat16
    assert torch.equal(b.normalize(x), x)
    with pytest.raises(ValueError, match="no normalisation statistics"): b.save_stats("x.safetensors")

def test_splits():
    assert split_sizes([0.8, 0.2], 10) == (8, 2) and split_sizes([0.7, 0.3], 1000) == (700, 300)
    assert split_sizes([600, 400], 1000) == (600, 400) and split_sizes([1.0, 0.0], 7) == (7, 0)
    x = data(100)
    b = ActivationsDatasetBuilder(x, splits=[90, 10], contiguous=True, progress=False)
    assert torch.equal(b.eval_indices, torch.arange(90, 100))
    for bad in ([0.8, 0.3], [0.5], [80, 10], [-0.2, 1.2], "0.8"):
        with pytest.raises(ValueError, match="splits"): ActivationsDatasetBuilder(x, splits=bad)

# --- sources -------------------------------------------------------------------------------------------------

def test_files_pt_and_safetensors(tmp_path):
    x = data()
    ref = ActivationsDatasetBuilder(x, progress=False)
    torch.save(x, tmp_path / "a.pt")
    torch.save({"acts": x, "step": 3}, tmp_path / "d.pt")
    save_file({"acts": x}, str(tmp_path / "a.safetensors"))
    save_file({"acts": x, "other": x[:5].clone()}, str(tmp_path / "m.safetensors"))
    for src, kw in (("a.pt", {}), ("d.pt", {}), ("a.safetensors", {}), ("m.safetensors", {"key": "acts"})):
        b = ActivationsDatasetBuilder(str(tmp_path / src), progress=False, **kw)
        # exact: the same rows through the same float64 reductions on the same chunk shapes
        assert torch.equal(b.mean, ref.mean) and torch.equal(b.std, ref.std), src
        assert torch.equal(all_rows(b.get_dataloaders()[1]), all_rows(ref.get_dataloaders()[1])), src
    with pytest.raises(ValueError, match="choose one with key="): ActivationsDatasetBuilder(str(tmp_path / "m.safetensors"))
    with pytest.raises(KeyError, match="no tensor 'nope'"): ActivationsDatasetBuilder(tmp_path / "m.safetensors", key="nope")

def test_leading_dims_flattened():
    x = data(240).reshape(4, 60, 6)            # [batch, pos, d]
    b = ActivationsDatasetBuilder(x, contiguous=True, norm=False, batch_size=1000)
    assert len(b) == 240 and torch.equal(torch.cat(list(b.get_dataloaders()[1])), x.reshape(240, 6)[192:])

class Evil:
    def __reduce__(self): return (os.system, ("echo pwned",))

def test_pt_never_unpickles_code(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f: pickle.dump(Evil(), f)
    torch.save({"acts": data(10), "obj": Evil()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"): ActivationsDatasetBuilder(tmp_path / name)

def test_store_directory_and_object(store_dir):
    store = ActivationStore(store_dir)
    assert len(store) == 3000
    with pytest.raises(ValueError, match="holds 2 hooks"): ActivationsDatasetBuilder(store_dir)
    with pytest.raises(KeyError, match="not in the store"): ActivationsDatasetBuilder(store_dir, hook="blocks.0.hook_resid_pre")
    h = "blocks.1.mlp.hook_post"
    b = ActivationsDatasetBuilder(str(store_dir), hook=h, batch_size=256, seed=1, progress=False)
    full = store.get(slice(None), h)
    torch.testing.assert_close(b.mean.double(), full[b.train_indices].double().mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b.std.double(), full[b.train_indices].double().std(0), atol=1e-6, rtol=1e-5)
    train, evl = b.get_dataloaders()
    torch.testing.assert_close(b.denormalize(all_rows(evl)), full[b.eval_indices], atol=1e-5, rtol=1e-5)
    # the same from the store object, and from a tensor holding the same rows
    b2 = ActivationsDatasetBuilder(store, hook=h, seed=1, progress=False)
    b3 = ActivationsDatasetBuilder(full, seed=1, progress=False)
    assert torch.equal(b2.mean, b.mean) and torch.equal(b3.train_indices, b.train_indices)   # the same store, the same reductions
    torch.testing.assert_close(b3.std, b.std, atol=0, rtol=1e-6)

# --- errors --------------------------------------------------------------------------------------------------

def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such activations file"): ActivationsDatasetBuilder(tmp_path / "none.pt")
    (tmp_path / "a.npy").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported activations file"): ActivationsDatasetBuilder(tmp_path / "a.npy")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="not an ActivationStore"): ActivationsDatasetBuilder(tmp_path / "dir")
    with pytest.raises(ValueError, match="activations is required"): ActivationsDatasetBuilder()
    with pytest.raises(TypeError, match="floating point"): ActivationsDatasetBuilder(torch.ones(10, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2-d"): ActivationsDatasetBuilder(torch.ones(10))
    with pytest.raises(TypeError, match="activations must be"): ActivationsDatasetBuilder([[1.0, 2.0]])
    with pytest.raises(ValueError, match="batch_size must be"): ActivationsDatasetBuilder(data(), batch_size=0)
    x = data(); x[123, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf at row 123"): ActivationsDatasetBuilder(x, contiguous=True)

def test_seed_module_path():
    from deeplens.utils.dataset import ActivationsDatasetBuilder as A
    assert A is ActivationsDatasetBuilder
