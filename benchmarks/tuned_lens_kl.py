"""Tuned lens vs logit lens: KL(final ‖ layer) per layer on held-out text, default model (SmolLM2-135M, 30 layers).

Trains a `TunedLens` on the offline corpus `builtin:python-docs` (every fifth document held out, never trained on),
then measures on the held-out documents the mean KL, in nats per token, between the model's final next-token
distribution and each layer's lens distribution, for the logit lens (the baseline, measured in the same run) and
for the tuned lens. Prints one row per layer with both numbers and the ratio tuned / logit (< 1: the tuned lens is
closer to what the model will finally predict), then whether the tuned lens is lower at every layer but the last
(the last layer is the model's own output for both lenses: KL 0).

The defaults train for a few minutes on a 2-core CPU (the cost is the unembedding: d_model × d_vocab per token per
layer, forward and backward); raise --steps for a better lens.

    python benchmarks/tuned_lens_kl.py
    python benchmarks/tuned_lens_kl.py --steps 200 --batch-size 8 --save /tmp/smol_tuned_lens
"""
from __future__ import annotations
import argparse, time

import torch

from deeplens import load_model
from deeplens.corpus import corpus
from deeplens.lens import TunedLens, lens_kl


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--context-size", type=int, default=64)
    ap.add_argument("--docs", type=int, default=600, help="documents read from the corpus (every 5th held out)")
    ap.add_argument("--eval-batches", type=int, default=4, help="held-out batches of 4 × context-size tokens")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=None, help="directory to save the trained lens in")
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)

    model = load_model(verbose=False)
    docs = corpus("builtin:python-docs").take(a.docs)
    train = [d for i, d in enumerate(docs) if i % 5]
    held = [d for i, d in enumerate(docs) if i % 5 == 0]
    print(f"model: {model.cfg}")
    print(f"corpus: builtin:python-docs, {len(train)} training documents, {len(held)} held-out documents; "
          f"torch threads: {torch.get_num_threads()}")

    t0, c0 = time.perf_counter(), time.process_time()
    lens = TunedLens.train(model, train, steps=a.steps, lr=a.lr, batch_size=a.batch_size,
                           context_size=a.context_size, seed=a.seed)
    t_train, c_train = time.perf_counter() - t0, time.process_time() - c0
    print(f"trained {a.steps} steps × {a.batch_size} × {a.context_size} tokens "
          f"({lens.training_info['tokens']} tokens) in {t_train:.0f} s wall, {c_train:.0f} s CPU; "
          f"training KL (mean over layers) {lens.history[0]:.3f} → {lens.history[-1]:.3f}")
    if a.save: print(f"saved to {lens.save(a.save)}")

    t0 = time.perf_counter()
    kw = dict(context_size=a.context_size, batch_size=4, max_batches=a.eval_batches)
    logit = lens_kl(model, held, **kw)
    tuned = lens_kl(model, held, lens, **kw)
    n_tok = a.eval_batches * 4 * a.context_size
    print(f"held-out evaluation: {n_tok} tokens, {time.perf_counter() - t0:.0f} s\n")

    print(f"{'layer':>5}  {'logit KL':>9}  {'tuned KL':>9}  {'tuned/logit':>11}")
    for l in range(model.cfg.n_layers):
        ratio = tuned[l] / logit[l] if logit[l] > 0 else float("nan")
        print(f"{l:>5}  {logit[l]:9.3f}  {tuned[l]:9.3f}  {ratio:11.3f}")
    inner = slice(0, model.cfg.n_layers - 1)
    lower = bool((tuned[inner] < logit[inner]).all())
    print(f"\nmean over layers 0..{model.cfg.n_layers - 2}: logit {logit[inner].mean():.3f}, tuned {tuned[inner].mean():.3f}, "
          f"ratio {tuned[inner].mean() / logit[inner].mean():.3f}; per-layer ratio range "
          f"{(tuned[inner] / logit[inner]).min():.3f} .. {(tuned[inner] / logit[inner]).max():.3f}")
    print(f"last layer: logit {logit[-1]:.4f}, tuned {tuned[-1]:.4f} (both are the model's own output)")
    print(f"tuned lens lower than the logit lens at every layer but the last: {lower}")
    return 0 if lower else 1


if __name__ == "__main__":
    raise SystemExit(main())
