"""Subprocess helper for tests/test_store.py: one ActivationStore build from the command line.

    python tests/_store_build.py MODEL_DIR CORPUS OUT N_TOKENS [--resume] [--kill-at N] [--pause-at N] [--hooks a,b]
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_store_build.py ...   (one build per rank)

`--kill-at N`: the process SIGKILLs itself while writing its N-th safetensors file (after the bytes are in the
temporary file, before the rename), i.e. mid-shard, at a deterministic point.
`--pause-at N`: after its N-th safetensors file the process creates OUT.paused and waits until that file is
removed (a build that is still running, for tests of two builds at once).
"""
import argparse, os, signal, time
from pathlib import Path
import torch

torch.set_num_threads(1)          # same arithmetic in every process, and no thread oversubscription

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model"); ap.add_argument("corpus"); ap.add_argument("out"); ap.add_argument("n_tokens", type=int)
    ap.add_argument("--resume", action="store_true"); ap.add_argument("--kill-at", type=int, default=0)
    ap.add_argument("--pause-at", type=int, default=0)
    ap.add_argument("--hooks", default="blocks.0.hook_resid_post,blocks.1.mlp.hook_post")
    ap.add_argument("--context-size", type=int, default=32); ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--shard-rows", type=int, default=256)
    a = ap.parse_args()
    import deeplens.store as store
    if a.kill_at or a.pause_at:
        real, calls, paused = store.save_file, [], Path(a.out + ".paused")
        def save_then_act(tensors, path, *args, **kw):
            real(tensors, path, *args, **kw)
            calls.append(path)
            if len(calls) == a.kill_at: os.kill(os.getpid(), signal.SIGKILL)
            if len(calls) == a.pause_at:
                paused.touch()
                while paused.exists(): time.sleep(0.05)
        store.save_file = save_then_act
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo")
    s = store.ActivationStore.build(a.model, a.corpus, a.hooks.split(","), a.n_tokens, a.out, context_size=a.context_size,
                                    batch_size=a.batch_size, shard_rows=a.shard_rows, resume=a.resume, progress=False)
    print(f"rank {os.environ.get('RANK', 0)}: {len(s) if s is not None else None} rows", flush=True)
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()

if __name__ == "__main__":
    main()
