"""ActivationStore: rows equal run_with_cache, text round trip, resume after SIGKILL, torchrun, shuffling, errors,
integrity (checksums, fsync, repair on resume), one build at a time, resume refusing another corpus or model."""
import json, os, shutil, signal, socket, subprocess, sys, time, warnings
from pathlib import Path
sys.path.insert(0, os.path.dirname(__file__))
from tiny import text_llama
import numpy as np
import pytest
import torch
import deeplens.store as store_mod
from deeplens.model import HookedModel, load_model
from deeplens.store import ActivationStore, CorruptShard, NonFiniteActivations, StoreLocked, model_fingerprint

HERE = Path(__file__).parent
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_model")
    text_llama(tok).save_pretrained(d); tok.save_pretrained(d)
    return d

@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(str(tiny_dir), verbose=False)

@pytest.fixture(scope="module")
def docs():
    "Real English: the first pydoc help topics, cut to a few hundred characters each."
    from pydoc_data.topics import topics
    return [topics[k][:600] for k in sorted(topics)[:30]]

@pytest.fixture(scope="module")
def docs_file(docs, tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return p

def _shard_tokens(store, i):
    from safetensors.torch import load_file
    d, k, _, _ = store.shards[i]
    return load_file(str(d / f"tokens-{k:05d}.safetensors"))

def _check_rows_equal_cache(m, store, hooks, atol=1e-6, rtol=0.0):
    """Every row of the store equals run_with_cache on the stored contexts, at the kept positions, to rounding: the
    cache runs a shard's contexts in one forward, the build in batches of its own size (other matmul shapes)."""
    row = 0
    for i in range(len(store.shards)):
        t = _shard_tokens(store, i)
        _, cache = m.run_with_cache(t["tokens"].long(), hooks)
        keep = t["keep"]
        n = int(keep.sum())
        for h in hooks:
            a = cache[h]
            if m.sites[h].pos_dim != 1: a = a.movedim(m.sites[h].pos_dim, 1)
            ref = a[keep].flatten(1)
            got = store.get(slice(row, row + n), h)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, ref, atol=atol, rtol=rtol)
        row += n
    assert row == len(store)

def _read_all(store):
    return {h: store.get(slice(None), h) for h in store.hooks}, store.token_index(slice(None))

def _same_store(a, b, exact=True):
    """Same rows and token index. `exact=True` only where the two stores are the same computation by construction:
    the same model, contexts and batch shapes, one intra-op thread, on the same machine (so the same kernels and
    blockings); the token index is integers."""
    (xa, ia), (xb, ib) = _read_all(a), _read_all(b)
    assert len(a) == len(b)
    for k in ia: assert torch.equal(ia[k], ib[k]), k
    for h in xa:
        if exact: assert torch.equal(xa[h], xb[h]), h
        else: torch.testing.assert_close(xa[h], xb[h], atol=1e-6, rtol=0)

def _same_files(a: Path, b: Path):
    "Two store directories hold the same files with the same bytes (meta.json included)."
    files = lambda d: {p.relative_to(d).as_posix(): p for p in d.rglob("*") if p.is_file()}
    fa, fb = files(a), files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa: assert fa[name].read_bytes() == fb[name].read_bytes(), name

# --- contents -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("exclude", [True, False])
def test_rows_equal_run_with_cache(tiny, docs, tmp_path, exclude):
    hooks = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.0.attn.hook_pattern",
             "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post"]
    s = ActivationStore.build(tiny, docs, hooks, 700, tmp_path / "s", context_size=24, batch_size=3, shard_rows=120,
                              exclude_special_tokens=exclude, progress=False)
    assert len(s) == 700 and len(s.shards) > 2
    assert s.widths["blocks.0.attn.hook_z"] == 32 and s.widths["blocks.0.attn.hook_pattern"] == 4 * 24
    bos = tiny.tokenizer.bos_token_id
    assert (s.tokens(slice(None)) == bos).any().item() is (not exclude)
    _check_rows_equal_cache(tiny, s, hooks)

def test_rows_after_last_block_and_logits(tiny, docs, tmp_path):
    "Hooks past the blocks need the whole forward (no stop_at_layer); logits are stored in full."
    hooks = ["ln_final.hook_normalized", "hook_logits"]
    s = ActivationStore.build(tiny, docs, hooks, 60, tmp_path / "s", context_size=16, batch_size=2, progress=False)
    _check_rows_equal_cache(tiny, s, hooks, atol=1e-5)

def test_default_model_rows(tmp_path, docs):
    m = load_model(verbose=False)
    hooks = ["blocks.3.hook_resid_post", "blocks.5.mlp.hook_post"]
    s = ActivationStore.build(m, docs, hooks, 150, tmp_path / "s", context_size=32, batch_size=4, progress=False)
    assert s.widths == {"blocks.3.hook_resid_post": 576, "blocks.5.mlp.hook_post": 1536}
    # activations of magnitude ~10 after several blocks: batch-shape rounding reaches ~1e-5 relative on CPUs whose BLAS blocks
    # by batch (AVX2 MKL, AMD), so the check is relative
    _check_rows_equal_cache(m, s, hooks, atol=1e-5, rtol=1e-4)
    assert s.meta["model"].endswith("SmolLM2-135M-Instruct")

def test_tokens_decode_to_source(tiny, docs, tmp_path):
    s = ActivationStore.build(tiny, docs, ["blocks.0.hook_resid_post"], 1500, tmp_path / "s", context_size=40,
                              batch_size=4, shard_rows=200, progress=False)
    idx = s.token_index(slice(None))
    tok = s.tokenizer                              # the copy saved in the store
    checked = 0
    for d, text in enumerate(docs):
        sel = idx["doc"] == d
        if not sel.any(): break
        order = torch.argsort(idx["doc_pos"][sel])
        pos, ids = idx["doc_pos"][sel][order], idx["token"][sel][order]
        if len(pos) == len(tok(text, add_special_tokens=False)["input_ids"]):      # the document is wholly in the store
            assert torch.equal(pos, torch.arange(len(pos)))
            assert tok.decode(ids.tolist()) == text
            checked += 1
    assert checked >= 3
    # the row's token sits marked in the text around it
    r = 123
    t = tok.decode([int(idx["token"][r])])
    c = s.context(r, window=5)
    assert f"«{t}»" in c
    assert s.token_index(r)["token"] == idx["token"][r]

# --- resume and scale-out -----------------------------------------------------------------------------------

def _script(*args, resume=False, kill_at=0, pause_at=0):
    cmd = [sys.executable, str(HERE / "_store_build.py"), *map(str, args)]
    if resume: cmd.append("--resume")
    if kill_at: cmd += ["--kill-at", str(kill_at)]
    if pause_at: cmd += ["--pause-at", str(pause_at)]
    return cmd

SUB = dict(context_size=32, batch_size=4, shard_rows=256, progress=False)     # what _store_build.py uses

@pytest.fixture(scope="module")
def reference(tiny, docs_file, tmp_path_factory):
    "The uninterrupted single-process build that the subprocess builds must reproduce."
    return ActivationStore.build(tiny, str(docs_file), HOOKS, 1200, tmp_path_factory.mktemp("ref") / "ref", **SUB)

def test_resume_after_sigkill(tiny, tiny_dir, docs_file, tmp_path, reference):
    out = tmp_path / "out"
    r = subprocess.run(_script(tiny_dir, docs_file, out, 1200, kill_at=8), capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]         # killed inside the third shard (3 files a shard)
    meta = json.loads((out / "meta.json").read_text())
    assert not meta["complete"] and len(meta["shards"]) == 2 and len(reference.shards) > 3
    assert list(out.glob("*.tmp"))                                     # the half-written shard is visible only as .tmp
    owner = json.loads((out / "build.lock").read_text())              # the killed build's lock stays behind
    assert owner["host"] == socket.gethostname()
    with pytest.warns(UserWarning, match=rf"took over the lock of a build that is no longer running \(pid {owner['pid']} "):
        s = ActivationStore.build(tiny, str(docs_file), HOOKS, 1200, out, resume=True, **SUB)
    assert json.loads((out / "meta.json").read_text()) == json.loads((reference.path / "meta.json").read_text())
    assert not list(out.glob("*.tmp")) and not (out / "build.lock").exists()
    _same_store(s, reference, exact=True)
    _same_files(out, reference.path)

def test_torchrun_two_ranks(tiny_dir, docs_file, tmp_path, reference):
    multi = tmp_path / "multi"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(HERE / "_store_build.py"), str(tiny_dir), str(docs_file), str(multi), "1200"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0: 1200 rows" in r.stdout and "rank 1: 1200 rows" in r.stdout
    assert (multi / "rank-00000" / "progress.json").exists() and (multi / "rank-00001" / "progress.json").exists()
    b = ActivationStore(multi)
    assert b.meta["world_size"] == 2 and b.complete
    _same_store(reference, b, exact=False)
    # the interleaved ranks read back exactly like the single-process store, shuffled too
    ra = torch.cat([r for _, r in reference.iter_batches(64, seed=3, with_rows=True)])
    rb = torch.cat([r for _, r in b.iter_batches(64, seed=3, with_rows=True)])
    assert torch.equal(ra, rb)

# --- reading ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tiny, docs, tmp_path_factory):
    return ActivationStore.build(tiny, docs, HOOKS, 2000, tmp_path_factory.mktemp("s") / "s", context_size=32,
                                 batch_size=4, shard_rows=256, progress=False)

def test_shuffle_every_row_once_deterministic(built):
    s = built
    kw = dict(buffer_rows=300, block_rows=50, with_rows=True)
    epoch = list(s.iter_batches(64, seed=7, **kw))
    rows = torch.cat([r for _, r in epoch])
    assert torch.equal(rows.sort().values, torch.arange(len(s)))                         # every row exactly once
    assert not torch.equal(rows, torch.arange(len(s)))                                   # and shuffled
    assert all(len(r) == 64 for _, r in epoch[:-1]) and len(epoch[-1][1]) == len(s) % 64
    for batch, r in epoch[:3]:
        for h in HOOKS: assert torch.equal(batch[h], s.get(r, h))                         # rows match their indices (same bytes)
    again = torch.cat([r for _, r in s.iter_batches(64, seed=7, **kw)])
    other = torch.cat([r for _, r in s.iter_batches(64, seed=8, **kw)])
    assert torch.equal(rows, again) and not torch.equal(rows, other)
    plain = torch.cat(list(s.iter_batches(100, shuffle=False, hooks=HOOKS[0])))
    assert torch.equal(plain, s.get(slice(None), HOOKS[0]))
    assert sum(len(b) for b in s.iter_batches(64, drop_last=True, hooks=HOOKS[0])) == len(s) // 64 * 64

def test_split_stats_random_access(built):
    s = built
    tr, ev = s.split(0.8)
    assert (len(tr), len(ev)) == (1600, 400)
    assert torch.equal(ev.get(slice(None), HOOKS[0]), s.get(slice(1600, 2000), HOOKS[0]))
    assert torch.equal(ev[0][HOOKS[1]], s[1600][HOOKS[1]]) and torch.equal(ev[-1][HOOKS[0]], s[1999][HOOKS[0]])
    rows = torch.cat([r for _, r in ev.iter_batches(32, seed=1, with_rows=True)])
    assert torch.equal(rows.sort().values, torch.arange(400))
    idx = torch.tensor([1999, 3, 700, 3, 1024])
    full = s.get(slice(None), HOOKS[0])
    assert torch.equal(s.get(idx, HOOKS[0]), full[idx])
    st = tr.stats(HOOKS[0])
    x = full[:1600].double()
    torch.testing.assert_close(st["mean"], x.mean(0).float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(st["std"], x.std(0, unbiased=False).float(), atol=1e-5, rtol=1e-4)
    assert abs(st["mean_norm"] - x.norm(dim=1).mean().item()) < 1e-6 and st["n"] == 1600
    assert len(s.split(0.5, 0.25, 0.25)) == 3
    with pytest.raises(ValueError, match="sum to 1"): s.split(0.5, 0.6)
    with pytest.raises(IndexError): s.get([2000], HOOKS[0])
    with pytest.raises(KeyError, match="not in this store"): s.get([0], "blocks.1.hook_resid_post")
    assert "2,000 rows" in repr(s) and HOOKS[0] in repr(s) and "rows 1,600:2,000" in repr(ev)

def test_reading_is_memory_mapped(built):
    s = built
    s.get([0, 1999], HOOKS[0])
    assert all(isinstance(mm, np.memmap) for mm, _ in s._maps.values())

@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_dtypes(tiny, docs, tmp_path, dtype, built):
    s = ActivationStore.build(tiny, docs, HOOKS, 2000, tmp_path / "s", context_size=32, batch_size=4, shard_rows=256,
                              dtype=dtype, progress=False)
    x = s.get(slice(None), HOOKS[0])
    assert x.dtype == getattr(torch, dtype)
    # exact: both builds run the same float32 forward (model, contexts, batch shapes, one thread) and round it to
    # the half dtype the same way (round to nearest even), once while storing and once here
    assert torch.equal(x, built.get(slice(None), HOOKS[0]).to(x.dtype))
    b = next(iter(s.iter_batches(16, dtype="float32", hooks=HOOKS[0])))
    assert b.dtype == torch.float32

# --- errors -------------------------------------------------------------------------------------------------

def test_bad_input_writes_nothing(tiny, tok, docs, tmp_path):
    out = tmp_path / "s"
    with pytest.raises(ValueError, match="unknown hook name"):
        ActivationStore.build(tiny, docs, ["blocks.0.hook_resid_postt"], 100, out, progress=False)
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        ActivationStore.build(tiny, docs, "blocks.9.hook_resid_post", 100, out, progress=False)
    with pytest.raises(ValueError, match="empty or too short"):
        ActivationStore.build(tiny, [], HOOKS, 100, out, progress=False)
    with pytest.raises(ValueError, match="empty or too short"):
        ActivationStore.build(tiny, ["two words"], HOOKS, 100, out, context_size=32, progress=False)
    bad = tmp_path / "bad.jsonl"; bad.write_text('{"body": "some text", "id": 1}\n')
    with pytest.raises(ValueError, match=r"available fields: \['body', 'id'\]"):
        ActivationStore.build(tiny, str(bad), HOOKS, 100, out, progress=False)
    latin = tmp_path / "latin.txt"; latin.write_bytes("déjà vu ".encode("latin-1") * 200)
    with pytest.raises(ValueError, match=r"latin\.txt is not utf-8 text .*encoding='latin-1'"):
        ActivationStore.build(tiny, str(latin), HOOKS, 100, out, progress=False)
    with pytest.raises(ValueError, match="dtype must be"):
        ActivationStore.build(tiny, docs, HOOKS, 100, out, dtype="int8", progress=False)
    with pytest.raises(ValueError, match="not both"):
        ActivationStore.build(tiny, docs, HOOKS, 100, out, resume=True, overwrite=True, progress=False)
    assert not out.exists()

def test_existing_store_refused_unless_overwrite(tiny, tok, docs, tmp_path):
    out = tmp_path / "s"
    ActivationStore.build(tiny, docs, HOOKS, 300, out, context_size=32, progress=False)
    snapshot = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = HookedModel(text_llama(tok, seed=1), tok)
    with pytest.raises(ValueError, match="model_fingerprint"):
        ActivationStore.build(other, docs, HOOKS, 300, out, context_size=32, progress=False)
    with pytest.raises(ValueError, match="hooks"):
        ActivationStore.build(tiny, docs, ["blocks.1.hook_resid_post"], 300, out, context_size=32, progress=False)
    with pytest.raises(ValueError, match="pass resume=True"):
        ActivationStore.build(tiny, docs, HOOKS, 300, out, context_size=32, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == snapshot
    s = ActivationStore.build(tiny, docs, HOOKS, 300, out, context_size=32, resume=True, progress=False)  # complete: reused
    assert len(s) == 300 and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == snapshot
    s = ActivationStore.build(other, docs, ["blocks.1.hook_resid_post"], 200, out, context_size=32, overwrite=True, progress=False)
    assert s.hooks == ["blocks.1.hook_resid_post"] and len(s) == 200
    assert not list(out.glob("acts-blocks.0*"))
    _check_rows_equal_cache(other, s, s.hooks)
    (tmp_path / "foreign").mkdir(); (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not part of an ActivationStore"):
        ActivationStore.build(tiny, docs, HOOKS, 100, tmp_path / "foreign", overwrite=True, progress=False)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"

def test_nan_reported_with_row(tiny_dir, tok, docs, tmp_path, tiny):
    clean = ActivationStore.build(tiny, docs, ["blocks.0.hook_resid_pre"], 400, tmp_path / "clean", context_size=32,
                                  progress=False)
    ids = clean.tokens(slice(None))
    bad_tok = int(ids[57])                               # a token that occurs in the first shard
    first = int((ids == bad_tok).nonzero()[0, 0])
    m = load_model(str(tiny_dir), verbose=False)
    with torch.no_grad(): m.W_E[bad_tok] = float("nan")
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteActivations, match=rf"at row {first} "):
        ActivationStore.build(m, docs, ["blocks.0.hook_resid_pre"], 400, out, context_size=32, progress=False)
    assert not out.exists()

def test_write_failure_keeps_complete_shards(tiny, docs, tmp_path, monkeypatch):
    kw = dict(context_size=32, batch_size=4, shard_rows=256, progress=False)
    ref = ActivationStore.build(tiny, docs, HOOKS, 2000, tmp_path / "ref", **kw)
    out = tmp_path / "out"
    real, calls = store_mod.save_file, []
    def failing(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) == 8: raise OSError(28, "No space left on device")   # inside the third shard
        return real(tensors, path, *a, **k)
    monkeypatch.setattr(store_mod, "save_file", failing)
    with pytest.raises(OSError, match="No space left"):
        ActivationStore.build(tiny, docs, HOOKS, 2000, out, **kw)
    monkeypatch.setattr(store_mod, "save_file", real)
    meta = json.loads((out / "meta.json").read_text())
    assert len(meta["shards"]) == 2 and not meta["complete"]
    assert not list(out.glob("*.tmp"))
    for k in range(2):
        for name in [f"tokens-{k:05d}.safetensors", *(f"acts-{h}-{k:05d}.safetensors" for h in HOOKS)]:
            assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    with pytest.warns(UserWarning, match="incomplete"):
        part = ActivationStore(out)
    n = sum(s["rows"] for s in meta["shards"])
    # exact: the same computation as `ref` (same model, contexts, batch shapes, one thread)
    assert len(part) == n and torch.equal(part.get(slice(None), HOOKS[0]), ref.get(slice(0, n), HOOKS[0]))
    done = ActivationStore.build(tiny, docs, HOOKS, 2000, out, resume=True, **kw)
    _same_store(done, ref, exact=True)

# --- integrity: checksums, fsync, repair ---------------------------------------------------------------------

def _copy(store, dst: Path) -> Path:
    return Path(shutil.copytree(store.path, dst))

def _flip(path: Path, n: int = 64):
    "Invert `n` bytes in the middle of a file (inside the tensor data), as a failing disk or a bad copy would."
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2); b = f.read(n)
        f.seek(path.stat().st_size // 2); f.write(bytes(x ^ 0xFF for x in b))

def test_flipped_bytes_fail_reads_and_verify_then_resume_repairs(tiny, docs_file, tmp_path, reference):
    out = _copy(reference, tmp_path / "s")
    bad = out / f"acts-{HOOKS[1]}-00001.safetensors"
    _flip(bad)
    s = ActivationStore(out)                       # opening reads only the small index arrays of the tokens files
    n0 = s.shards[0][3]
    # bytes read back from an intact shard: exact
    assert torch.equal(s.get(slice(0, n0), HOOKS[1]), reference.get(slice(0, n0), HOOKS[1]))
    with pytest.raises(CorruptShard, match=rf"{bad.name} \(CRC-32 [0-9a-f]{{8}} where [0-9a-f]{{8}} was written\).*resume=True"):
        s.get([n0], HOOKS[1])
    with pytest.raises(CorruptShard, match=bad.name):
        for _ in ActivationStore(out).iter_batches(64, hooks=HOOKS[1]): pass
    with pytest.raises(CorruptShard, match=bad.name): ActivationStore(out).verify()
    with pytest.warns(UserWarning, match=rf"shard 1 is damaged \({bad.name}: CRC-32 .*rebuilding it and the 3 shards after it"):
        fixed = ActivationStore.build(tiny, str(docs_file), HOOKS, 1200, out, resume=True, **SUB)
    assert fixed.verify() is fixed
    _same_files(out, reference.path)               # the same computation as the reference: the same bytes

def test_scrambled_tokens_shard_is_refused_then_repaired(tiny, docs_file, tmp_path, reference):
    "The finding: a resume over a scrambled tokens shard reported 2,290,654,952 rows and complete."
    out = _copy(reference, tmp_path / "s")
    t = out / "tokens-00002.safetensors"
    data = bytearray(t.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")                     # keep the header: scramble the arrays
    body = np.frombuffer(bytes(data[start:]), np.uint8).copy()
    np.random.default_rng(0).shuffle(body)
    data[start:] = body.tobytes(); t.write_bytes(data)
    with pytest.raises(CorruptShard, match=rf"{t.name} \(CRC-32 "):
        ActivationStore(out)                       # the index arrays disagree with meta.json, and the CRC names the damage
    with pytest.warns(UserWarning, match=rf"shard 2 is damaged \({t.name}"):
        s = ActivationStore.build(tiny, str(docs_file), HOOKS, 1200, out, resume=True, **SUB)
    assert len(s) == 1200 and s.meta["n_tokens"] == 1200 and s.complete
    _same_files(out, reference.path)

def test_truncated_shard_listed_as_done_is_rebuilt(tiny, docs_file, tmp_path, reference):
    out = _copy(reference, tmp_path / "s")
    f = out / f"acts-{HOOKS[0]}-00003.safetensors"
    size = f.stat().st_size
    with open(f, "r+b") as fh: fh.truncate(size // 2)
    with pytest.raises(CorruptShard, match=rf"{f.name} \({size // 2:,} bytes where {size:,} were written\)"):
        ActivationStore(out).verify()
    with pytest.warns(UserWarning, match=r"shard 3 is damaged .*rebuilding it and the 1 shard after it"):
        ActivationStore.build(tiny, str(docs_file), HOOKS, 1200, out, resume=True, **SUB)
    _same_files(out, reference.path)
    f.unlink()                                     # a missing file is damage too
    with pytest.raises(CorruptShard, match=rf"{f.name} \(missing\)"): ActivationStore(out).verify()

def test_damaged_meta_is_a_clear_error(reference, tmp_path):
    out = _copy(reference, tmp_path / "s")
    (out / "meta.json").write_text((reference.path / "meta.json").read_text()[:200])
    with pytest.raises(ValueError, match=r"meta.json is damaged .*overwrite=True"): ActivationStore(out)

def test_files_are_flushed_before_meta_lists_them(tiny, docs, tmp_path, monkeypatch):
    "Each shard file is fsynced under its temporary name, renamed, and its directory fsynced, before meta.json names it."
    import deeplens.files as files_mod                                    # every write goes through deeplens.files
    events, real_fsync, real_json = [], files_mod.fsync_path, store_mod.write_json
    monkeypatch.setattr(files_mod, "fsync_path", lambda p: (events.append(("fsync", Path(p).name)), real_fsync(p)))
    def write_json(path, obj):
        events.append(("listed", [n for s in obj.get("shards", []) for n in s["files"]]))
        real_json(path, obj)
    monkeypatch.setattr(store_mod, "write_json", write_json)
    out = tmp_path / "s"
    ActivationStore.build(tiny, docs, HOOKS, 600, out, **SUB)
    listed = [(i, names) for i, (kind, names) in enumerate(events) if kind == "listed"]
    assert len(listed) >= 3
    for i, names in listed:
        before = events[:i]
        for n in names:
            j = next(i for i, e in enumerate(before) if e[0] == "fsync" and e[1].startswith(f".{n}.") and e[1].endswith(".tmp"))   # the file's bytes, under its temporary name
            assert ("fsync", out.name) in before[j:], n                    # then the directory holding its new name

def test_fingerprint_sees_every_parameter(tiny_dir):
    m = load_model(str(tiny_dir), verbose=False)
    base, params = model_fingerprint(m), list(m.hf.named_parameters())
    assert len(params) > 10
    with torch.no_grad():
        for name, p in params:
            flat = p.view(-1)
            old = flat[-1].clone()
            flat[-1] += 1e-3                                               # one weight, anywhere
            assert model_fingerprint(m) != base, name
            flat[-1] = old
    assert model_fingerprint(m) == base

# --- resume refuses another corpus or model ------------------------------------------------------------------

def _interrupted(monkeypatch, model, corpus, out, n_files=8, n_tokens=2000):
    "A build stopped by a write error in its `n_files`-th file (mid third shard): two complete shards stay."
    real, calls = store_mod.save_file, []
    def failing(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) == n_files: raise OSError(28, "No space left on device")
        return real(tensors, path, *a, **k)
    monkeypatch.setattr(store_mod, "save_file", failing)
    with pytest.raises(OSError, match="No space left"): ActivationStore.build(model, corpus, HOOKS, n_tokens, out, **SUB)
    monkeypatch.setattr(store_mod, "save_file", real)
    assert len(json.loads((out / "meta.json").read_text())["shards"]) == 2

def test_resume_refuses_another_list_of_the_same_length(tiny, docs, tmp_path, monkeypatch):
    out = tmp_path / "s"
    _interrupted(monkeypatch, tiny, docs, out)
    other = docs[1:] + docs[:1]                                            # same length, same description
    with pytest.raises(ValueError, match=r"not the one this store was built from \(complete shard 0: .*overwrite=True"):
        ActivationStore.build(tiny, other, HOOKS, 2000, out, resume=True, **SUB)
    assert len(json.loads((out / "meta.json").read_text())["shards"]) == 2     # nothing written
    ActivationStore.build(tiny, docs, HOOKS, 2000, out, resume=True, **SUB)    # the original corpus still resumes

def test_resume_refuses_a_rewritten_file(tiny, docs, tmp_path, monkeypatch):
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "s"
    _interrupted(monkeypatch, tiny, str(f), out)
    f.write_text("".join(json.dumps({"text": d.replace("the", "a")}) + "\n" for d in docs))
    with pytest.raises(ValueError, match=r"not the one this store was built from"):
        ActivationStore.build(tiny, str(f), HOOKS, 2000, out, resume=True, **SUB)
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:2]))   # shorter than what the store holds
    with pytest.raises(ValueError, match=r"complete shard \d: the corpus now ends before it"):
        ActivationStore.build(tiny, str(f), HOOKS, 2000, out, resume=True, **SUB)

def test_complete_store_reuse_checks_the_corpus(tiny, docs, tmp_path):
    out = tmp_path / "s"
    ActivationStore.build(tiny, docs, HOOKS, 600, out, **SUB)
    with pytest.raises(ValueError, match=r"not the one this store was built from \(complete shard 0"):
        ActivationStore.build(tiny, docs[::-1], HOOKS, 600, out, resume=True, **SUB)

def test_resume_refuses_changed_weights(tiny_dir, docs, tmp_path, monkeypatch):
    m = load_model(str(tiny_dir), verbose=False)
    out = tmp_path / "s"
    _interrupted(monkeypatch, m, docs, out)
    with torch.no_grad(): m.hf.model.layers[1].mlp.up_proj.weight[7, 9] += 0.01      # a weight a sample of every 2nd tensor missed
    with pytest.raises(ValueError, match=r"model_fingerprint \(the model's architecture or weights\): .*overwrite=True"):
        ActivationStore.build(m, docs, HOOKS, 2000, out, resume=True, **SUB)

# --- one build at a time -------------------------------------------------------------------------------------

def test_second_build_into_a_busy_dir_is_refused(tiny, tiny_dir, docs_file, docs, tmp_path, reference):
    out = tmp_path / "out"
    paused = Path(str(out) + ".paused")
    a = subprocess.Popen(_script(tiny_dir, docs_file, out, 1200, pause_at=4), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not paused.exists() and a.poll() is None and time.time() - t0 < 120: time.sleep(0.05)
        assert paused.exists(), a.stderr.read()[-2000:] if a.poll() is not None else "timeout"
        owner = json.loads((out / "build.lock").read_text())
        assert owner["pid"] == a.pid and owner["host"] == socket.gethostname()
        other = [d.upper() for d in docs]                                  # another corpus, while the first build runs
        for kw in (dict(overwrite=True), dict(resume=True), {}):
            with pytest.raises(StoreLocked, match=rf"being written by another build \(pid {a.pid} on host "):
                ActivationStore.build(tiny, other, HOOKS, 1200, out, **kw, **SUB)
    finally:
        paused.unlink(missing_ok=True)
        _, err = a.communicate(timeout=120)
    assert a.returncode == 0, err[-2000:]
    assert not (out / "build.lock").exists()
    _same_files(out, reference.path)                                       # the refused builds left no trace

def test_lock_of_another_host_is_not_taken(tiny, docs, tmp_path):
    out = tmp_path / "s"; out.mkdir()
    (out / "build.lock").write_text(json.dumps({"build": "x", "host": "some-other-host", "pid": 1, "started": "then"}))
    with pytest.raises(StoreLocked, match=r"pid 1 on host some-other-host.*delete .*build.lock"):
        ActivationStore.build(tiny, docs, HOOKS, 100, out, **SUB)
    (out / "build.lock").unlink()
    assert len(ActivationStore.build(tiny, docs, HOOKS, 100, out, **SUB)) == 100
    assert sorted(p.name for p in out.iterdir()) == ["acts-blocks.0.hook_resid_post-00000.safetensors",
        "acts-blocks.1.mlp.hook_post-00000.safetensors", "meta.json", "tokenizer", "tokens-00000.safetensors"]
