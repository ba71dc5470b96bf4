"""Subprocess helper for tests/test_train.py: one SAETrainer run on an ActivationStore.

    python tests/_train_run.py STORE OUT [--steps N] [--batch B] [--arch topk|relu] [--resume]
                               [--kill-at-step N] [--kill-in-write N]
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_train_run.py ...   (DDP, gloo)

`--kill-at-step N`: SIGKILL itself right after step N (between checkpoints).
`--kill-in-write N`: SIGKILL itself while writing its N-th safetensors file of a checkpoint (bytes in the
temporary file, before the rename): a crash in the middle of a checkpoint.
"""
import argparse, os, signal
import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

def make_trainer(store, out, steps=120, batch=64, arch="topk", resume=False, callbacks=(), checkpoint_steps=20,
                 dead_tokens=2000, **kw):
    "The run every test compares against: same SAE init, seed and settings in every process."
    from deeplens.sae import SparseAutoencoder
    from deeplens.train import SAETrainer
    torch.manual_seed(0)
    sae = SparseAutoencoder(32, 128, **(dict(k=4) if arch == "topk" else dict(beta_l1=0.05)))
    return SAETrainer(sae, store=store, batch_size=batch, total_tokens=steps * batch, lr=3e-3, out_dir=out,
                      checkpoint_steps=checkpoint_steps, lrs_type="cosine", dead_tokens=dead_tokens, progress=False,
                      log_steps=10, callbacks=callbacks, resume_from=out if resume else None, random_seed=7, **kw)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("store"); ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=120); ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--arch", default="topk"); ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-at-step", type=int, default=0); ap.add_argument("--kill-in-write", type=int, default=0)
    ap.add_argument("--checkpoint-steps", type=int, default=20); ap.add_argument("--dead-tokens", type=int, default=2000)
    a = ap.parse_args()
    import deeplens.train as train_mod
    if a.kill_in_write:
        real, calls = train_mod.save_file, []
        def save_then_die(tensors, path, *args, **kw):
            real(tensors, path, *args, **kw)
            calls.append(path)
            if len(calls) == a.kill_in_write: os.kill(os.getpid(), signal.SIGKILL)
        train_mod.save_file = save_then_die
    cbs = []
    if a.kill_at_step:
        def die(tr):
            if tr.step == a.kill_at_step: os.kill(os.getpid(), signal.SIGKILL)
        cbs.append(die)
    tr = make_trainer(a.store, a.out, steps=a.steps, batch=a.batch, arch=a.arch, resume=a.resume, callbacks=cbs,
                      checkpoint_steps=a.checkpoint_steps, dead_tokens=a.dead_tokens)
    tr.train()
    tr.close()

if __name__ == "__main__":
    main()
