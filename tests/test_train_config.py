"""TrainConfig: the keyword signature and the config give bit-identical runs for every architecture; an interrupted
run resumed through a config equals the uninterrupted one; the CLI options are the config's fields; the
constructor starts no process group; `on_train_start` is how the display layer hears of a run.

`torch.equal` is used only between runs of the same computation (same kernels, shapes, one thread, deterministic
algorithms, same process), which are bit-identical on any CPU."""
import argparse, os, sys
from dataclasses import fields
sys.path.insert(0, os.path.dirname(__file__))
from tiny import text_llama
import pytest
import torch
from deeplens.model import load_model
from deeplens.store import ActivationStore
from deeplens.sae import SparseAutoencoder, ARCHITECTURES
from deeplens.train import SAETrainer, TrainConfig, configure_train, on_train_start
import deeplens.train as T

HOOK = "blocks.1.hook_resid_post"

@pytest.fixture(scope="module", autouse=True)
def deterministic():
    n, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1); torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(n); torch.use_deterministic_algorithms(det)

@pytest.fixture(scope="module")
def store(tok, tmp_path_factory):
    "2,000 rows of width 32 from a tiny random Llama over English text."
    m = load_model(text_llama(tok), tokenizer=tok, verbose=False)
    from pydoc_data.topics import topics
    docs = [topics[k][:2000] for k in sorted(topics)[:40]]
    return ActivationStore.build(m, docs, [HOOK], 2000, tmp_path_factory.mktemp("s") / "store", context_size=64,
                                 progress=False)

def _sae(arch):
    torch.manual_seed(0)
    kw = dict(k=4) if arch in ("topk", "batchtopk", "matryoshka") else ({} if arch == "jumprelu" else dict(beta_l1=0.05))
    return SparseAutoencoder(32, 128, architecture=arch, **kw)

SETTINGS = dict(batch_size=64, total_tokens=12 * 64, lr=3e-3, checkpoint_steps=4, lrs_type="cosine", dead_tokens=300,
                progress=False, log_steps=3, random_seed=7, grad_clip_norm=1.0, eval_steps=5)

def _equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k

@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_keywords_and_config_train_the_same_sae(store, tmp_path, arch):
    train_rows, eval_rows = store.split(0.9)
    kw = SAETrainer(_sae(arch), store=train_rows, eval_store=eval_rows, out_dir=tmp_path / "kw", **SETTINGS)
    kw.train()
    cfg = TrainConfig(out_dir=tmp_path / "cfg", **SETTINGS)
    tc = SAETrainer.from_config(_sae(arch), cfg, store=train_rows, eval_store=eval_rows)
    tc.train()
    _equal(kw.model.state_dict(), tc.model.state_dict())
    assert kw.history == tc.history and tc.cfg is cfg
    # interrupted after step 8 (a checkpoint), resumed through a config: the uninterrupted run's weights
    class Stop(Exception): pass
    def stop(t):
        if t.step == 8: raise Stop
    cut = SAETrainer.from_config(_sae(arch), TrainConfig(out_dir=tmp_path / "cut", **SETTINGS), store=train_rows,
                                 eval_store=eval_rows, callbacks=[stop])
    with pytest.raises(Stop): cut.train()
    resumed = SAETrainer.from_config(_sae(arch), TrainConfig(out_dir=tmp_path / "cut", resume_from=True, **SETTINGS),
                                     store=train_rows, eval_store=eval_rows)
    resumed.train()
    _equal(kw.model.state_dict(), resumed.model.state_dict())

def test_adapter_keywords_are_the_config_fields():
    import inspect
    sig = inspect.signature(SAETrainer.__init__).parameters
    names = {f.name for f in fields(TrainConfig)}
    assert {n: p.default for n, p in sig.items() if n in names} == {f.name: f.default for f in fields(TrainConfig)}
    assert all(f.metadata["doc"] for f in fields(TrainConfig))
    assert all(f"`{f.name}`" in TrainConfig.__doc__ for f in fields(TrainConfig))
    with pytest.raises(TypeError, match="config must be a TrainConfig"): SAETrainer.from_config(_sae("topk"), {"lr": 1})

def test_cli_options_come_from_the_config():
    ap = argparse.ArgumentParser(); configure_train(ap)
    flags = {a.dest: a for a in ap._actions if a.option_strings}
    for f in fields(TrainConfig):
        cli = f.metadata["cli"]
        if not cli: continue
        a = flags[cli["flag"][2:].replace("-", "_")]
        assert cli["flag"] in a.option_strings and a.help
        if cli.get("action") != "store_true": assert a.default == cli.get("default", f.default)
    # the command's own defaults where they differ from the library's
    assert (flags["lrs"].default, flags["warmup_fraction"].default, flags["eval_steps"].default) == ("cosine", 0.05, 1000)

def test_constructor_starts_no_process_group(store, monkeypatch, tmp_path):
    import torch.distributed as dist
    monkeypatch.setenv("WORLD_SIZE", "2"); monkeypatch.setenv("RANK", "1")
    tr = SAETrainer(_sae("topk"), store=store, total_tokens=640, batch_size=64, progress=False, out_dir=tmp_path / "r")
    assert (tr.world, tr.rank, tr.is_main, tr.ddp) == (2, 1, False, None) and not dist.is_initialized()

def test_on_train_start_is_called_when_progress_is_shown(store, tmp_path):
    seen = []
    def spy(t): seen.append(t)
    on_train_start(spy)
    try:
        for progress in (False, True):
            tr = SAETrainer(_sae("topk"), store=store, total_tokens=128, batch_size=64, progress=progress,
                            save_checkpoints=False)
            tr.train()
        assert seen == [tr]
    finally:
        T._START.remove(spy)
