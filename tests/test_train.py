"""SAETrainer: bit-exact resume after SIGKILL, torchrun DDP = single process, DataLoader resume, metrics, errors.

Float equality (`torch.equal`, `==`) appears only where both sides are the same computation by construction: a
resumed run replays exactly the kernels, shapes and thread count (one, deterministic algorithms) of the
uninterrupted run it is compared with, in the same process or a subprocess on the same machine, so its floats
are bit-identical on any CPU; and a file round trip returns the bytes it was given. Different computations
(sparse vs dense path, 2 ranks vs 1, trainer vs hand formula) are compared with a stated tolerance."""
import hashlib, json, os, re, shutil, signal, subprocess, sys, zlib
from pathlib import Path
sys.path.insert(0, os.path.dirname(__file__))
from tiny import text_llama
import pytest
import torch
from safetensors.torch import load_file, save_file
from deeplens.model import load_model
from deeplens.store import ActivationStore
from deeplens.sae import SparseAutoencoder
from deeplens.train import SAETrainer, CorruptCheckpointError, latest_checkpoint, verify_checkpoint
from _train_run import make_trainer

HERE = Path(__file__).parent
HOOK = "blocks.1.hook_resid_post"

@pytest.fixture(scope="module", autouse=True)
def deterministic():
    "One thread and deterministic algorithms, as in the subprocess runs; restored afterwards."
    n, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1); torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(n); torch.use_deterministic_algorithms(det)

@pytest.fixture(scope="module")
def store(tok, tmp_path_factory):
    "6,000 rows of width 32: a tiny random Llama run over real English (pydoc topics)."
    m = load_model(text_llama(tok), tokenizer=tok, verbose=False)
    from pydoc_data.topics import topics
    docs = [topics[k][:2000] for k in sorted(topics)[:80]]
    return ActivationStore.build(m, docs, [HOOK], 6000, tmp_path_factory.mktemp("s") / "store", context_size=64,
                                 progress=False)

def _weights(run_dir):
    return load_file(str(Path(run_dir) / "final" / "sae_weights.safetensors"))

def _script(*args):
    return [sys.executable, str(HERE / "_train_run.py"), *map(str, args)]

@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    "The uninterrupted single-process run (120 steps of 64 rows, TopK k=4, AuxK active, cosine schedule)."
    out = tmp_path_factory.mktemp("ref") / "run"
    tr = make_trainer(store.path, out)
    tr.train()
    return out, tr

def test_uninterrupted_run_learns(reference):
    out, tr = reference
    h = [r for r in tr.history if "fvu" in r]
    assert h[-1]["fvu"] < h[0]["fvu"]                       # it trains
    assert all(abs(r["l0"] - 4) < 1e-9 for r in h)         # TopK: exactly k active per row
    assert any(r.get("auxk", 0) > 0 for r in h)            # dead latents appeared and AuxK worked on them
    assert tr.step == 120 and latest_checkpoint(out).name == "step-00000120"

def test_sigkill_mid_checkpoint_then_resume_is_bit_exact(store, reference, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "run"
    # the 8th safetensors write is the 2nd file of the 3rd checkpoint (step 60): killed mid-checkpoint
    r = subprocess.run(_script(store.path, out, "--kill-in-write", 8), capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert latest_checkpoint(out).name == "step-00000040"   # the half-written step-60 is not taken as complete
    tr = make_trainer(store.path, out, resume=True)
    tr.train()
    ref, got = _weights(ref_out), _weights(out)
    assert ref.keys() == got.keys()
    for k in ref: assert torch.equal(ref[k], got[k]), k        # exact: the resumed steps replay the reference's
    # the optimizer moments and history match too
    a, b = latest_checkpoint(ref_out), latest_checkpoint(out)
    oa, ob = load_file(str(a / "optimizer.safetensors")), load_file(str(b / "optimizer.safetensors"))
    for k in oa: assert torch.equal(oa[k], ob[k]), k
    assert json.loads((a / "trainer.json").read_text())["history"] == json.loads((b / "trainer.json").read_text())["history"]

def test_torchrun_two_ranks_match_single_process(store, tmp_path):
    "40 steps of 64 rows: 2 gloo ranks reading 32 rows each vs one process reading all 64."
    ref_out, out = tmp_path / "single", tmp_path / "ddp"
    make_trainer(store.path, ref_out, steps=40).train()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(HERE / "_train_run.py"), str(store.path), str(out), "--steps", "40"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = _weights(ref_out), _weights(out)
    assert ref.keys() == got.keys()
    for k in ref:
        rel = float((ref[k] - got[k]).norm() / ref[k].norm().clamp_min(1e-12))
        assert rel < 1e-4, (k, rel)

def test_dataloader_mode_resume_is_bit_exact(tmp_path):
    "The original DataLoader interface: stop mid-epoch, resume, same weights as one uninterrupted run."
    g = torch.Generator().manual_seed(1)
    data = torch.randn(500, 16, generator=g) * torch.linspace(0.2, 2, 16)
    def run(out, stop_at=None, resume=False):
        loader = torch.utils.data.DataLoader(data, batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(3))
        torch.manual_seed(0)
        sae = SparseAutoencoder(16, 64, beta_l1=0.01)
        def stop(tr):
            if tr.step == stop_at: raise KeyboardInterrupt
        tr = SAETrainer(sae, train_dataloader=loader, epochs=3, lr=1e-2, out_dir=out, checkpoint_steps=7,
                        progress=False, callbacks=[stop], resume_from=out if resume else None, lrs_type="linear")
        try: tr.train()
        except KeyboardInterrupt: pass
        return tr
    full = run(tmp_path / "a")
    run(tmp_path / "b", stop_at=14)                         # epoch 1, batch 4: a checkpoint step
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.step == full.step == 30
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters()): assert torch.equal(p, q), n  # replayed

def test_sparse_topk_path_trains_and_resumes_bit_exact(store, tmp_path):
    """TopK's sparse training path (hand-written sparse backward, AuxK on dead latents, sparse codes for the
    statistics): an interrupted and resumed run equals an uninterrupted one, and its statistics equal the dense
    path's on the same weights."""
    def run(out, stop_at=None, resume=False, sparse=True):
        torch.manual_seed(0)
        sae = SparseAutoencoder(32, 128, k=4, sparse_decode=sparse)
        def stop(tr):
            if tr.step == stop_at: raise KeyboardInterrupt
        tr = SAETrainer(sae, store=store.path, batch_size=64, total_tokens=40 * 64, lr=3e-3, out_dir=out,
                        checkpoint_steps=10, lrs_type="cosine", dead_tokens=500, progress=False, log_steps=5,
                        callbacks=[stop], resume_from=out if resume else None, random_seed=7)
        try: tr.train()
        except KeyboardInterrupt: pass
        return tr
    full = run(tmp_path / "a")
    assert any(r.get("auxk", 0) > 0 for r in full.history)             # dead latents appeared: AuxK ran sparsely
    assert all(abs(r["l0"] - 4) < 1e-9 for r in full.history if "l0" in r)
    run(tmp_path / "b", stop_at=20)
    resumed = run(tmp_path / "b", resume=True)
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters()): assert torch.equal(p, q), n  # replayed
    assert resumed.history == full.history
    dense = run(tmp_path / "c", sparse=False)                           # same run on the dense path: same numbers
    for (n, p), q in zip(full.model.named_parameters(), dense.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3, msg=n)
    for a, b in zip(full.history, dense.history):     # a near-tie in the top-k may flip one latent's last firing
        assert a.keys() == b.keys() and abs(a["fvu"] - b["fvu"]) < 1e-3 and abs(a["dead_frac"] - b["dead_frac"]) <= 2 / 128

@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_normalize_activations_trains_scaled_and_hands_back_a_raw_sae(store, tmp_path, arch):
    """normalize_activations="expected_average": the SAE trains on rows scaled to mean norm sqrt(d_in); afterwards
    (and in final/) it acts on raw rows exactly as the scaled SAE did on scaled rows; resume stays bit-exact."""
    x = store.get(slice(0, 256), HOOK).float()
    def run(out, stop_at=None, resume=False):
        torch.manual_seed(0)
        kw = {"topk": dict(k=4), "relu": dict(beta_l1=0.05), "jumprelu": dict(architecture="jumprelu")}[arch]
        sae = SparseAutoencoder(32, 128, **kw)
        def stop(tr):
            if tr.step == stop_at: raise KeyboardInterrupt
        tr = SAETrainer(sae, store=store.path, batch_size=64, total_tokens=20 * 64, lr=3e-3, out_dir=out,
                        checkpoint_steps=5, progress=False, log_steps=5, callbacks=[stop], random_seed=7,
                        resume_from=out if resume else None, normalize_activations="expected_average")
        try: tr.train()
        except KeyboardInterrupt: pass
        return tr
    tr = run(tmp_path / "a")
    rows = tr.store.get(torch.randperm(len(tr.store), generator=torch.Generator().manual_seed(7))[:32768].sort().values, HOOK)
    s = 32 ** 0.5 / float(rows.double().norm(dim=-1).mean())
    assert tr.act_scale == pytest.approx(s, rel=1e-12) and abs(s - 1) > 0.1
    scaled = SparseAutoencoder.load(tmp_path / "a" / "final")            # what final/ holds
    unfolded = {k: v.clone() for k, v in tr._scaled_state.items()}
    ref = type(tr.model)(32, 128, **({"k": 4} if arch == "topk" else {"beta_l1": 0.05} if arch == "relu" else {"architecture": "jumprelu"}))
    ref.load_state_dict(unfolded); ref.eval(); tr.model.eval(); scaled.eval()
    with torch.no_grad():
        want_xh, want_z, _ = ref(x * s)                                   # the SAE as trained, on scaled rows
        for m in (tr.model, scaled):
            xh, z, _ = m(x)
            torch.testing.assert_close(xh, want_xh / s, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(z, want_z / s, atol=1e-5, rtol=1e-4)
    ev = tr.evaluate()                                                    # held-out metrics on the raw SAE
    assert ev == {} or ev["eval_fvu"] > 0
    run(tmp_path / "b", stop_at=10)
    res = run(tmp_path / "b", resume=True)
    assert res.act_scale == tr.act_scale               # the same rows and reduction, then a JSON round trip (repr)
    for (n, p), q in zip(tr.model.named_parameters(), res.model.parameters()): assert torch.equal(p, q), n  # replayed
    with pytest.raises(ValueError, match="normalize_activations"):
        SAETrainer(SparseAutoencoder(32, 128, k=4, activation="silu"), store=store.path, batch_size=64,
                   total_tokens=64, normalize_activations="expected_average")

def test_evaluate_matches_hand_fvu(store, reference):
    _, tr = reference
    ev = store.split(0.9)[1]
    tr.eval_store, tr.eval_tokens = ev, None
    got = tr.evaluate()
    x = ev.get(slice(None), HOOK).double()
    with torch.no_grad(): x_hat, z, _ = tr.model(x.float())
    fvu = float(((x - x_hat.double()) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert abs(got["eval_fvu"] - fvu) < 1e-5 and abs(got["eval_l0"] - 4) < 1e-9

def test_b_dec_starts_at_geometric_median(store, tmp_path):
    sae = SparseAutoencoder(32, 64, k=4)
    tr = SAETrainer(sae, store=store, total_tokens=64, batch_size=64, out_dir=tmp_path, save_checkpoints=False,
                    progress=False, lrs_type=None, warmup_fraction=0.0)
    tr._init_b_dec()
    x = store.get(slice(None), HOOK).double()
    # Weiszfeld's fixed point: the distance-weighted mean of the data is the point itself
    w = 1 / (x - sae.b_dec.detach().double()).norm(dim=1)
    fixed = (w[:, None] * x).sum(0) / w.sum()
    assert torch.allclose(fixed.float(), sae.b_dec.detach(), atol=1e-4)
    assert (x - sae.b_dec.detach().double()).norm(dim=1).sum() < (x - x.mean(0)).norm(dim=1).sum()

# ---- bad input: clear errors, checkpoints kept ---------------------------------------------------------------

def _digest(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}

def test_d_in_mismatch(store, reference):
    ref_out, _ = reference
    ck = latest_checkpoint(ref_out); before = _digest(ck)
    with pytest.raises(ValueError, match=r"d_in mismatch.*width 32.*d_in=16"):
        SAETrainer(SparseAutoencoder(16, 64, k=4), store=store, out_dir=ref_out, resume_from=ref_out, progress=False)
    loader = torch.utils.data.DataLoader(torch.randn(40, 24), batch_size=8)
    tr = SAETrainer(SparseAutoencoder(16, 64, k=4), train_dataloader=loader, epochs=1, save_checkpoints=False,
                    progress=False, b_dec_init=None)
    with pytest.raises(ValueError, match=r"d_in mismatch at step 0.*width 24.*d_in=16"): tr.train()
    assert _digest(ck) == before

def test_nan_in_batch_names_step_and_keeps_checkpoint(store, tmp_path):
    bad = tmp_path / "bad_store"; shutil.copytree(store.path, bad)
    f = next(bad.glob(f"acts-{HOOK}-*.safetensors"))
    acts = load_file(str(f))["acts"].clone(); acts[1234, 5] = float("nan")
    save_file({"acts": acts}, str(f))
    # record the edited file as written (size and CRC-32), as a store whose writer wrote the NaN would: the store's
    # integrity check passes and the NaN reaches the trainer
    meta = json.loads((bad / "meta.json").read_text())
    meta["shards"][0]["files"][f.name] = {"bytes": f.stat().st_size, "crc32": f"{zlib.crc32(f.read_bytes()):08x}"}
    (bad / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "run"
    sae = SparseAutoencoder(32, 128, k=4)
    tr = SAETrainer(sae, store=bad, batch_size=64, total_tokens=64 * 200, lr=1e-3, out_dir=out, checkpoint_steps=5,
                    b_dec_init=None, progress=False)
    with pytest.raises(ValueError, match=r"NaN/Inf in the training batch at step (\d+).*1234") as e:
        tr.train()
    import re
    step = int(re.search(r"step (\d+)", str(e.value)).group(1))
    assert 1234 in tr.stream.rows(step).tolist() and all(1234 not in tr.stream.rows(s).tolist() for s in range(step))
    ck = latest_checkpoint(out)
    assert ck is not None and int(ck.name.split("-")[1]) == step // 5 * 5
    assert all(torch.isfinite(v).all() for v in load_file(str(ck / "model.safetensors")).values())

def test_resume_with_different_config_is_refused(store, reference):
    ref_out, _ = reference
    ck = latest_checkpoint(ref_out); before = _digest(ck)
    tr = make_trainer(store.path, ref_out, resume=True, batch=32)
    with pytest.raises(ValueError, match=r"different configuration[\s\S]*batch_size: 64 in the checkpoint, 32 now"):
        tr.train()
    assert _digest(ck) == before

def test_config_from_yaml(tmp_path):
    p = tmp_path / "sae.yaml"
    p.write_text("input_dims: 32\nn_features: 96\nactivation: relu\ninput_norm: false\nk: 8\n")
    sae = SparseAutoencoder(**SAETrainer.config_from_yaml(p))
    assert (sae.d_in, sae.d_sae, sae.k, sae.architecture) == (32, 96, 8, "topk")
    with pytest.raises(ValueError, match="mapping"):
        (tmp_path / "bad.yaml").write_text("- 1\n- 2\n"); SAETrainer.config_from_yaml(tmp_path / "bad.yaml")

def test_train_main_cli(store, tmp_path, capsys):
    from deeplens.train import train_main
    out = tmp_path / "cli"
    args = ["--store", str(store.path), "--arch", "topk", "--k", "4", "--expansion", "4", "--tokens", "1280",
            "--batch-size", "64", "--out", str(out), "--no-progress", "--eval-fraction", "0.1", "--eval-steps", "10"]
    assert train_main(args) == 0
    assert "held-out FVU" in capsys.readouterr().out
    sae = SparseAutoencoder.load(out / "final")
    assert (sae.d_in, sae.d_sae, sae.k) == (32, 128, 4)
    assert (out / "best").is_dir() and latest_checkpoint(out).name == "step-00000020"
    w = _weights(out)
    assert train_main(args + ["--resume"]) == 0                   # already complete: resumes at the end, no change
    for k, v in _weights(out).items(): assert torch.equal(v, w[k])    # the checkpoint's bytes, saved again

def test_deeplens_train_command_equals_train_main(store, tmp_path, capsys):
    "`deeplens train` (the CLI subcommand) trains the same SAE as `train_main` with the same arguments."
    from deeplens.cli import main
    from deeplens.train import train_main
    args = ["--store", str(store.path), "--arch", "topk", "--k", "4", "--expansion", "2", "--tokens", "640",
            "--batch-size", "64", "--no-progress"]
    main(["train", *args, "--out", str(tmp_path / "a")])
    assert train_main(args + ["--out", str(tmp_path / "b")]) == 0
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # one computation, run twice
    with pytest.raises(SystemExit) as e: main(["train", *args, "--hook", "blocks.9.hook_nope", "--out", str(tmp_path / "c")])
    assert e.value.code == 2 and "not in the store" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()

# ---- a run directory is never overwritten silently ------------------------------------------------------------

def test_rerun_into_a_run_directory_needs_resume_or_overwrite(store, reference, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "run"; shutil.copytree(ref_out, out)
    before = {p.relative_to(out): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"out_dir .*run already holds a training run \(checkpoints up to step-00000120, "
                                         r"final/\).*resume_from=True to continue it, or overwrite=True"):
        make_trainer(store.path, out).train()
    with pytest.raises(ValueError, match=r"resume_from=True .* or overwrite=True .*not both"):
        make_trainer(store.path, out, resume=True, overwrite=True).train()
    after = {p.relative_to(out): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    assert after == before                                              # refused before touching anything
    # overwrite=True starts over: the old checkpoints go (a later resume must not pick up step 120 of the old run)
    tr = make_trainer(store.path, out, steps=40, overwrite=True); tr.train()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000020", "step-00000040"]
    fresh = make_trainer(store.path, tmp_path / "fresh", steps=40); fresh.train()
    for (n, p), q in zip(fresh.model.named_parameters(), tr.model.parameters()): assert torch.equal(p, q), n  # same run twice
    (out / "notes.txt").write_text("mine")                          # overwrite deletes only the trainer's own files
    make_trainer(store.path, out, steps=20, overwrite=True).train()
    assert (out / "notes.txt").read_text() == "mine"

def test_original_deeplens_keywords_still_work(tmp_path, monkeypatch):
    "The original DeepLens call (all its keywords, default out_dir runs/<model_name>); a second run needs a choice."
    monkeypatch.chdir(tmp_path)
    data = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    def run(**kw):
        torch.manual_seed(0)
        sae = SparseAutoencoder(input_dims=16, n_features=64, activation="relu", input_norm=False, k=None,
                                beta_l1=1e-3, tie_weights=False, unit_norm_decoder=True)
        loader = torch.utils.data.DataLoader(data, batch_size=32)
        tr = SAETrainer(train_dataloader=loader, eval_dataloader=loader, model=sae, model_name="orig",
                        optim=torch.optim.Adam, epochs=2, bf16=False, random_seed=42, save_checkpoints=True,
                        device="cpu", grad_clip_norm=None, lrs_type="cosine", eval_steps=8, warmup_fraction=0.1,
                        save_best_only=True, log_to_wandb=False, progress=False, **kw)
        tr.train()
        return tr
    first = run()
    assert first.step == 16 and (tmp_path / "runs" / "orig" / "final").is_dir()
    with pytest.raises(ValueError, match="already holds a training run"): run()
    again = run(overwrite=True)
    for (n, p), q in zip(first.model.named_parameters(), again.model.parameters()): assert torch.equal(p, q), n  # same run

# ---- corrupt checkpoints: named, skipped, the previous intact one resumed ---------------------------------------

def _truncate(p: Path): p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
def _empty(p: Path): p.write_bytes(b"")                    # what a power cut leaves of an unsynced file
def _garble(p: Path):
    b = bytearray(p.read_bytes()); m = len(b) // 2; b[m:m + 12] = b"#garbled#!#!"; p.write_bytes(bytes(b))
def _flip(p: Path):
    "Set the last 8 bytes (inside the last tensor's data, past the header) to 0xff: NaNs for float32, and it parses."
    b = bytearray(p.read_bytes()); b[-8:] = b"\xff" * 8; p.write_bytes(bytes(b))

CORRUPTIONS = {                                 # file, damage, what the message says about it
    "model-flipped": ("model.safetensors", _flip, "does not match the checksum"),
    "model-truncated": ("model.safetensors", _truncate, "does not match the checksum"),
    "model-missing": ("model.safetensors", Path.unlink, "model.safetensors is missing"),
    "optimizer-flipped": ("optimizer.safetensors", _flip, "does not match the checksum"),
    "trainer-empty": ("trainer.safetensors", _empty, "does not match the checksum"),
    "trainer.json-garbled": ("trainer.json", _garble, "does not match the checksum"),
    "checksums-garbled": ("checksums.json", _garble, "checksums.json is unreadable"),
}

@pytest.fixture
def run_copy(reference, tmp_path):
    "A copy of the reference run: checkpoints at steps 100 and 120, final/."
    out = tmp_path / "run"; shutil.copytree(reference[0], out)
    return out

def _ck(out, step): return out / "checkpoints" / f"step-{step:08d}"

@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(store, reference, run_copy, case):
    "Each damage is named (checkpoint and file); the resume warns, continues from step 100 and ends bit-exact."
    name, damage, says = CORRUPTIONS[case]
    damage(_ck(run_copy, 120) / name)
    tr = make_trainer(store.path, run_copy, resume=True)
    with pytest.warns(UserWarning, match=rf"step-00000120 is corrupt: .*{says}.*skipped; resuming from .*step-00000100"):
        tr.load_checkpoint(run_copy)
    assert tr.step == 100
    tr.train()                                                          # replays steps 100..120 of the reference
    ref, got = _weights(reference[0]), _weights(run_copy)
    for k in ref: assert torch.equal(ref[k], got[k]), k                 # exact: the same steps replayed
    verify_checkpoint(_ck(run_copy, 120))                               # rewritten intact

@pytest.mark.parametrize("damage", [_truncate, _garble])
def test_checkpoint_without_checksums_is_still_parsed_and_named(store, run_copy, damage):
    "A checkpoint written before checksums were recorded: truncated tensors or garbled JSON are named, not raw errors."
    (_ck(run_copy, 120) / "checksums.json").unlink()
    name = "model.safetensors" if damage is _truncate else "trainer.json"
    damage(_ck(run_copy, 120) / name)
    tr = make_trainer(store.path, run_copy, resume=True)
    err = "SafetensorError" if damage is _truncate else "JSONDecodeError"
    with pytest.warns(UserWarning, match=rf"step-00000120 is corrupt: {name} does not read back \({err}"):
        tr.load_checkpoint(run_copy)
    assert tr.step == 100

def test_no_intact_checkpoint_is_an_error_listing_each(store, run_copy):
    _flip(_ck(run_copy, 120) / "model.safetensors"); _truncate(_ck(run_copy, 100) / "optimizer.safetensors")
    before = _digest(_ck(run_copy, 100)) | _digest(_ck(run_copy, 120))
    with pytest.raises(CorruptCheckpointError, match=r"no intact checkpoint[\s\S]*step-00000120 is corrupt: model"
                                                     r"[\s\S]*step-00000100 is corrupt: optimizer[\s\S]*overwrite=True"):
        make_trainer(store.path, run_copy, resume=True).train()
    assert _digest(_ck(run_copy, 100)) | _digest(_ck(run_copy, 120)) == before
    # a checkpoint named explicitly is that one: no fallback
    with pytest.raises(CorruptCheckpointError, match=r"step-00000120 is corrupt: model\.safetensors does not match"):
        make_trainer(store.path, run_copy, resume=True).train(resume_from=_ck(run_copy, 120))
    assert issubclass(CorruptCheckpointError, ValueError)

def test_checkpoint_is_on_disk_before_it_is_listed(store, tmp_path, monkeypatch):
    "Every file and the directory are fsynced before the rename that lists the checkpoint; the parent after it."
    if not Path("/proc/self/fd").is_dir(): pytest.skip("needs /proc to name fsynced descriptors")
    events, real_fsync, real_replace = [], os.fsync, os.replace
    def fsync(fd): events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))); real_fsync(fd)
    def replace(a, b): events.append(("replace", str(a), str(b))); real_replace(a, b)
    tr = make_trainer(store.path, tmp_path / "run", steps=2)
    monkeypatch.setattr(os, "fsync", fsync); monkeypatch.setattr(os, "replace", replace)
    path = tr.save_checkpoint()
    monkeypatch.undo()
    tmp = str(path) + ".tmp"
    i = events.index(("replace", tmp, str(path)))
    synced = {e[1] for e in events[:i] if e[0] == "fsync"}
    assert {os.path.join(tmp, n) for n in os.listdir(path)} | {tmp} <= synced
    assert ("fsync", str(path.parent)) in events[i:]
    assert sorted(os.listdir(path)) == sorted([*_CKPT, "checksums.json"])
    verify_checkpoint(path)

_CKPT = ["model.safetensors", "optimizer.safetensors", "trainer.safetensors", "trainer.json"]

# ---- arguments checked up front ---------------------------------------------------------------------------------

BAD_ARGS = [
    (dict(lr=0), ValueError, r"lr must be a number > 0, got 0; None picks"),
    (dict(lr=-1e-3), ValueError, r"lr must be a number > 0, got -0.001"),
    (dict(lr=float("nan")), ValueError, r"lr must be a number > 0, got nan"),
    (dict(lr="1e-3"), TypeError, r"lr must be a number, got str '1e-3' \(write 1e-3 without quotes\)"),
    (dict(total_tokens=0), ValueError, r"total_tokens must be an integer > 0, got 0; None trains `epochs` passes"),
    (dict(total_tokens=-640), ValueError, r"total_tokens must be an integer > 0, got -640"),
    (dict(total_tokens=100.5), ValueError, r"total_tokens must be an integer > 0, got 100.5"),
    (dict(epochs=0), ValueError, r"epochs must be an integer > 0, got 0"),
    (dict(batch_size=0), ValueError, r"batch_size must be an integer > 0, got 0"),
    (dict(grad_clip_norm=-1.0), ValueError, r"grad_clip_norm must be a number > 0, got -1.0; None turns clipping off"),
    (dict(warmup_fraction=1.0), ValueError, r"warmup_fraction must be a number in \[0, 1\), got 1.0"),
    (dict(keep_checkpoints=-1), ValueError, r"keep_checkpoints must be an integer >= 0, got -1; 0 keeps them all"),
    (dict(dead_tokens=0), ValueError, r"dead_tokens must be an integer > 0"),
    (dict(overwrite="yes"), TypeError, r"overwrite must be True or False, got 'yes'"),
]

@pytest.mark.parametrize("kw,exc,msg", BAD_ARGS, ids=[f"{next(iter(k))}={next(iter(k.values()))!r}" for k, _, _ in BAD_ARGS])
def test_bad_arguments_are_refused_up_front(store, tmp_path, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        SAETrainer(SparseAutoencoder(32, 128, k=4), store=store, out_dir=tmp_path / "run", progress=False,
                   **{"total_tokens": 640, **kw})
    assert not (tmp_path / "run").exists()

@pytest.mark.parametrize("beta,exc,msg", [(-0.1, ValueError, r"must be a number >= 0, got -0.1"),
                                          ("1e-3", TypeError, r"must be a number, got str '1e-3' \(write 1e-3 without")])
def test_bad_beta_l1_on_the_sae_is_refused(store, beta, exc, msg):
    sae = SparseAutoencoder(32, 128, beta_l1=0.05)
    sae.beta_l1 = beta                                  # as an SAE built by code that did not check it
    with pytest.raises(exc, match=r"beta_l1 \(the SAE's L1 coefficient\) " + msg):
        SAETrainer(sae, store=store, total_tokens=640, save_checkpoints=False, progress=False)

def test_total_tokens_none_means_epochs(store):
    tr = SAETrainer(SparseAutoencoder(32, 128, k=4), store=store, epochs=2, batch_size=64, save_checkpoints=False,
                    progress=False)
    assert tr.total_tokens == 2 * len(store) and tr.total_steps == -(-2 * len(store) // 64)
    tr = SAETrainer(SparseAutoencoder(32, 128, k=4), store=store, total_tokens=1280.0, batch_size=64,
                    save_checkpoints=False, progress=False)
    assert tr.total_tokens == 1280 and tr.total_steps == 20

def test_out_dir_that_is_a_file_is_refused_at_construction(store, tmp_path):
    f = tmp_path / "taken"; f.write_text("x")
    for out, where in [(f, "is a file"), (f / "run", "is inside .*taken, which is a file")]:
        with pytest.raises(ValueError, match=rf"out_dir .* {where}: give a directory"):
            SAETrainer(SparseAutoencoder(32, 128, k=4), store=store, total_tokens=640, out_dir=out, progress=False)
    assert f.read_text() == "x"

def test_config_from_yaml_parses_numbers_and_booleans_strictly(tmp_path):
    p = tmp_path / "config.yaml"
    # the original DeepLens demo config's layout: YAML 1.1 reads `1e-3` as a string, `no` and `True` as booleans
    p.write_text("input_dims: 32\nn_features: 96\nactivation: 'relu'\ninput_norm: True\nk: None\nbeta_l1: 1e-3\n"
                 "tie_weights: no\nunit_norm_decoder: True\n")
    cfg = SAETrainer.config_from_yaml(p)
    assert cfg["beta_l1"] == 1e-3 and isinstance(cfg["beta_l1"], float) and cfg["tie_weights"] is False
    assert cfg["k"] is None and cfg["input_norm"] is True
    sae = SparseAutoencoder(**cfg)
    assert (sae.beta_l1, sae.tie_weights, sae.architecture) == (1e-3, False, "relu")
    for bad in ["'no'", '"false"', "1", "maybe"]:
        p.write_text(f"input_dims: 32\nn_features: 96\ntie_weights: {bad}\n")
        with pytest.raises(ValueError, match=r"config\.yaml: tie_weights must be a boolean, got .*write tie_weights: "
                                             r"true or tie_weights: false, without quotes"):
            SAETrainer.config_from_yaml(p)
    p.write_text("input_dims: [32\n")
    with pytest.raises(ValueError, match=r"config\.yaml is not a readable YAML file"): SAETrainer.config_from_yaml(p)

# ---- the command line: options checked as parsed, errors in the command's words ----------------------------------

def _cli_args(store, out, *extra):
    return ["--store", str(store.path), "--k", "4", "--expansion", "2", "--tokens", "640", "--batch-size", "64",
            "--no-progress", "--checkpoint-steps", "5", "--out", str(out), *extra]

@pytest.mark.parametrize("flag,value,msg", [
    ("--eval-fraction", "1.5", r"must be a number in \[0, 1\), got 1.5"),
    ("--eval-fraction", "-0.1", r"must be a number in \[0, 1\), got -0.1"),
    ("--expansion", "0", r"must be an integer > 0, got 0"),
    ("--tokens", "0", r"must be a whole count > 0 \(e.g. 200000, 200k, 1.5M or 1e6\), got '0'"),
    ("--tokens", "-5", r"must be a whole count > 0 .*, got '-5'"),
    ("--tokens", "1.5", r"must be a whole count > 0 .*, got '1.5'"),
    ("--lr", "0", r"must be a number > 0, got 0"),
    ("--beta-l1", "-1", r"must be a number >= 0, got -1"),
    ("--k", "0", r"must be an integer > 0, got 0"),
    ("--batch-size", "0", r"must be an integer > 0, got 0"),
    ("--warmup-fraction", "1", r"must be a number in \[0, 1\), got 1"),
    ("--checkpoint-steps", "0", r"must be an integer > 0, got 0"),
])
def test_cli_checks_each_option_as_it_is_parsed(store, tmp_path, capsys, flag, value, msg):
    from deeplens.train import train_main
    with pytest.raises(SystemExit) as e: train_main(_cli_args(store, tmp_path / "run", flag, value))
    err = capsys.readouterr().err
    assert e.value.code == 2 and re.search(rf"argument {flag}: {msg}", err), err
    assert "n_features" not in err and "-0.5" not in err
    assert not (tmp_path / "run").exists()

def _cli_error(argv, capsys) -> str:
    "Run `deeplens train ...` as the console script does; return its one-line error."
    from deeplens.cli import main
    with pytest.raises(SystemExit) as e: main(["train", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("deeplens train: error: ") and err.count("\n") == 1, err
    return err

def test_cli_errors_speak_the_command_line(store, tmp_path, capsys):
    from deeplens.cli import main
    out, errs = tmp_path / "run", []
    def error(*extra, where=out):
        errs.append(_cli_error(_cli_args(store, where, *extra), capsys)); return errs[-1]
    f = tmp_path / "file"; f.write_text("x")
    assert f"--out {f} is a file, not a directory" in error(where=f)
    assert "--eval-fraction 1e-05 leaves 6000 training and 0 held-out rows" in error("--eval-fraction", "0.00001")
    assert "--k 100 is more than the SAE's 64 latents (--expansion 2 × d_in 32)" in error("--k", "100")
    assert not out.exists()
    main(["train", *_cli_args(store, out)])
    w = _weights(out)
    assert re.search(r"--out \S+run already holds a training run .* pass --resume to continue it, or --overwrite", error())
    assert "give --resume (continue the run in --out) or --overwrite (delete it and start over), not both" in error(
        "--resume", "--overwrite")
    err = error("--resume", "--batch-size", "32")
    assert "--batch-size: 64 in the checkpoint, 32 now" in err and "start a new run in another --out" in err
    for ck in (out / "checkpoints").iterdir(): _flip(ck / "model.safetensors")
    err = error("--resume")
    assert "no intact checkpoint" in err and "start over with --overwrite" in err
    for e in errs: assert not re.search(r"resume_from|overwrite=|out_dir|total_tokens", e), e
    main(["train", *_cli_args(store, out, "--overwrite")])
    for k, v in _weights(out).items(): assert torch.equal(v, w[k]), k     # the same run again, from scratch
