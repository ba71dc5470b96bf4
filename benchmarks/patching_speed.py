"""Batched activation patching vs the one-forward-per-cell loop, in the same run.

A random-weight model shaped like GPT-2 small (12 layers, n_embd 768, 12 heads, vocab 50257; built from a config,
no download), fp32, SDPA attention, eval mode. Task: denoising patching of `resid_pre` at every layer and every
position of a 32-token prompt pair (12 × 32 = 384 cells), metric = logit difference of two tokens at the last
position.

  loop     one forward per cell: `run_with_hooks(corrupted, [(name, copy one position from the clean cache)])`
           — the way patching is usually written (TransformerLens' patching helpers, the analyzer seeds)
  batched  `deeplens.patching.activation_patching(..., batch_size=B)`: B patched copies per forward; a chunk of
           cells in block l starts from the cached corrupted residual at block l (blocks < l are not rerun), and
           only the position the metric reads is unembedded

Both are timed in the same process, alternating (loop, batched) for `--rounds` rounds after a warm-up; the ratio of
median times is printed, and the two results are compared cell by cell (exact equality, and the max |difference|).

    python benchmarks/patching_speed.py                    # 384 cells, batch 32
    python benchmarks/patching_speed.py --batch-size 64 --rounds 3 --threads 2
"""
from __future__ import annotations
import argparse, statistics, time
import torch
import transformers as T
from deeplens.model import HookedModel
from deeplens.patching import activation_patching, logit_diff

def build(vocab: int) -> HookedModel:
    torch.manual_seed(0)
    cfg = T.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=vocab, n_positions=1024)
    return HookedModel(T.GPT2LMHeadModel(cfg).eval())

def loop(model, clean, corr, metric):
    "Reference: one forward per (layer, position) cell."
    L, P = model.cfg.n_layers, clean.shape[1]
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)]
    out = torch.empty(L, P)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean, names)
        for l, name in enumerate(names):
            for p in range(P):
                def hook(act, hook, p=p, name=name):
                    act = act.clone(); act[:, p] = cache[name][:, p]; return act
                out[l, p] = metric(model.run_with_hooks(corr, fwd_hooks=[(name, hook)])).mean()
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    model = build(a.vocab)
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, a.vocab, (1, a.tokens), generator=g)
    corr = clean.clone(); corr[0, a.tokens // 4] = (clean[0, a.tokens // 4] + 1) % a.vocab
    metric = logit_diff(11, 12)
    print(f"GPT-2-shaped random model: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, {model.cfg.n_heads} heads, "
          f"vocab {a.vocab}; {a.tokens} tokens; resid_pre × every position = {model.cfg.n_layers * a.tokens} cells; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    # warm-up (allocator, kernels)
    activation_patching(model, clean, corr, metric, layers=[0], positions=[0, 1], batch_size=a.batch_size, progress=False)
    t_loop, t_batch = [], []
    for r in range(a.rounds):
        t0 = time.perf_counter(); ref = loop(model, clean, corr, metric); t_loop.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = activation_patching(model, clean, corr, metric, batch_size=a.batch_size, progress=False)
        t_batch.append(time.perf_counter() - t0)
        print(f"  round {r + 1}: loop {t_loop[-1]:.2f}s  batched {t_batch[-1]:.2f}s  ratio {t_loop[-1] / t_batch[-1]:.2f}x", flush=True)
    diff = (res.values - ref).abs().max().item()
    exact = torch.equal(res.values, ref)
    ratio = statistics.median(t_loop) / statistics.median(t_batch)
    per_round = [l / b for l, b in zip(t_loop, t_batch)]
    print(f"median: loop {statistics.median(t_loop):.2f}s, batched (batch_size={a.batch_size}) {statistics.median(t_batch):.2f}s")
    print(f"speed-up batched vs loop: {ratio:.2f}x (ratio of medians; per-round ratios {min(per_round):.2f}x to "
          f"{max(per_round):.2f}x over {a.rounds} rounds) (target >= 5x)  {'OK' if ratio >= 5 else 'BELOW TARGET'}")
    print(f"results equal: {'exactly (bit for bit)' if exact else f'max |diff| = {diff:.3g}'}")

if __name__ == "__main__":
    main()
