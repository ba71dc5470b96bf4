"""SAE quality on real activations: held-out FVU, dead latents and L0 after a fixed token budget.

Data: default-model (SmolLM2-135M) activations at `blocks.15.hook_resid_post`, 65,536 tokens of
`builtin:python-docs` (built on first use into `--store`); the first 57,344 rows train (several epochs over them),
the last 8,192 are held out.

  topk   SparseAutoencoder(576, 8*576, k=32), 500k training tokens, batch 4096.
         Targets: held-out FVU < 0.15, dead < 5%.
  relu   SparseAutoencoder(576, 8*576, beta_l1=--beta-l1), same budget, L1 warm-up.
         Target: held-out L0 < 100 at FVU < 0.3.

Dead latents are reported two ways: the trainer's count (no firing over the last `--dead-tokens` training tokens)
and latents that fire on none of the 8,192 held-out tokens.

    python benchmarks/sae_quality.py
    python benchmarks/sae_quality.py --tokens 250000 --only topk
"""
from __future__ import annotations
import argparse, os, time
import sys
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sae_train import open_store, heldout_fvu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=os.path.expanduser("~/.cache/deeplens/bench/python-docs-l15-64k"))
    ap.add_argument("--tokens", type=int, default=500_000); ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=None); ap.add_argument("--beta-l1", type=float, default=5.0)
    ap.add_argument("--dead-tokens", type=int, default=100_000); ap.add_argument("--only", choices=["topk", "relu"])
    a = ap.parse_args()
    from deeplens.store import ActivationStore
    from deeplens.sae import SparseAutoencoder
    from deeplens.train import SAETrainer
    train, held, hook = open_store(a.store, 65536)
    if len(held) != 8192:
        s = ActivationStore(a.store); train, held = s.subset(0, len(s) - 8192), s.subset(len(s) - 8192)
    d = train.widths[hook]
    xh = held.get(slice(None), hook).float()
    print(f"{len(train):,} training rows, {len(held):,} held out, d_in {d}; {a.tokens:,} training tokens, batch {a.batch}")
    for name, kw in [("topk", dict(k=32)), ("relu", dict(beta_l1=a.beta_l1))]:
        if a.only and a.only != name: continue
        torch.manual_seed(0)
        sae = SparseAutoencoder(d, 8 * d, **kw)
        t = time.perf_counter()
        tr = SAETrainer(sae, store=train, hook=hook, batch_size=a.batch, total_tokens=a.tokens, lr=a.lr,
                        save_checkpoints=False, lrs_type="cosine", warmup_fraction=0.05, dead_tokens=a.dead_tokens,
                        eval_store=held, eval_steps=10 ** 9, log_steps=10)
        tr.train()
        sae.eval()
        fvu = heldout_fvu(lambda x: sae(x)[0], xh)
        with torch.no_grad(): z = sae.encode(xh)
        l0 = float((z != 0).sum(-1).float().mean())
        dead_held = float(((z != 0).sum(0) == 0).float().mean())
        dead_tr = float((tr.tokens_since >= tr.dead_tokens).float().mean())
        print(f"{name}: held-out FVU {fvu:.4f}  L0 {l0:.1f}  dead (trainer, {a.dead_tokens:,} tokens) {100 * dead_tr:.2f}%  "
              f"never fires on held-out {100 * dead_held:.2f}%  ({time.perf_counter() - t:.0f} s)", flush=True)

if __name__ == "__main__":
    main()
