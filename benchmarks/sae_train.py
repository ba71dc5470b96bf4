"""SAE training speed: `SAETrainer` against a plain dense PyTorch TopK loop measured in the same run.

Data: an ActivationStore of default-model activations (SmolLM2-135M, `blocks.15.hook_resid_post`, d_in 576,
`builtin:python-docs`), built on first use into `--store`. The last eighth of the rows is held out.

  dense_ref     a hand-written TopK SAE loop: pre = (x - b_dec) W_enc + b_enc, keep the top k, scatter into a dense
                [B, d_sae] code, x_hat = z W_dec + b_dec, MSE, backward, Adam, renormalise decoder rows.
                Same initial weights (b_dec from the trainer's geometric median), same rows, same learning rate.
  trainer_topk  SAETrainer(SparseAutoencoder(576, 8*576, k=32)) with its defaults: the sparse TopK path (only the
                encoder's forward is a dense product; its backward and the decoder touch only the k chosen
                latents), fused Adam, AuxK, dead-latent tracking and metrics every step, decoder-gradient projection.
  trainer_relu  with --beta-l1 B: SAETrainer(SparseAutoencoder(576, 8*576, beta_l1=B)), timed separately.

The two are interleaved step by step in one process (a trainer callback runs one reference step on the same rows
after each trainer step), so load on a shared machine hits both alike. Reported: median tokens/s with quartiles
over the timed steps (the first `--warmup` excluded), held-out FVU after the same token budget, and one line
`RATIO ...`: the median of the per-step ratios. Target: >= 1.5x at equal or lower FVU.

    python benchmarks/sae_train.py --store /tmp/dltrain/store64k --tokens 131072   # 32 steps of 4096
"""
from __future__ import annotations
import argparse, math, os, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F


def open_store(path: str, n_tokens: int, hook: str = "blocks.15.hook_resid_post"):
    "(train view, held-out view, hook): the store at `path`, built first if missing."
    from deeplens.store import ActivationStore
    p = Path(path)
    if not (p / "meta.json").exists():
        from deeplens import load_model
        print(f"building {n_tokens:,}-token store at {p} ...", flush=True)
        ActivationStore.build(load_model(), "builtin:python-docs", [hook], n_tokens, p)
    s = ActivationStore(p)
    cut = len(s) - len(s) // 8
    return s.subset(0, cut), s.subset(cut), hook


def heldout_fvu(encode_decode, x: torch.Tensor, bs: int = 4096) -> float:
    "1 - explained variance of reconstructions of the rows of `x` (SAELens definition, summed over the set)."
    sse = 0.0
    with torch.no_grad():
        for i in range(0, len(x), bs):
            xb = x[i:i + bs]
            sse += float((encode_decode(xb) - xb).double().pow(2).sum())
    return sse / float((x.double() - x.double().mean(0)).pow(2).sum())


class DenseReference:
    "The plain loop, one step at a time: dense encode, torch.topk, dense decode by matmul, MSE, Adam, renormalise."
    def __init__(self, sae0, lr: float, k: int):
        self.W_enc, self.W_dec, self.b_enc, self.b_dec = (getattr(sae0, n).detach().clone().requires_grad_()
                                                          for n in ("W_enc", "W_dec", "b_enc", "b_dec"))
        self.opt = torch.optim.Adam([self.W_enc, self.W_dec, self.b_enc, self.b_dec], lr=lr)
        self.k = k

    def recon(self, x):
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        v, i = F.relu(pre).topk(self.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, i, v)
        return z @ self.W_dec + self.b_dec

    def step(self, x):
        loss = (self.recon(x) - x).pow(2).mean()
        loss.backward(); self.opt.step(); self.opt.zero_grad(set_to_none=True)
        with torch.no_grad(): self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))


def _sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()


class Interleave:
    """A trainer callback: after each trainer step, one reference step on the same rows. The trainer's time is
    what passed between callbacks (its data reading, logging and bookkeeping included); the reference's time
    includes reading its batch from the store."""
    def __init__(self, ref, train, hook, stream, dev, warmup):
        self.ref, self.train, self.hook, self.stream, self.dev, self.warmup = ref, train, hook, stream, dev, warmup
        self.last, self.t_tr, self.t_ref = None, [], []

    def __call__(self, tr):
        _sync(); now = time.perf_counter()
        timed = tr.step > self.warmup
        if timed and self.last is not None: self.t_tr.append(now - self.last)
        t0 = time.perf_counter()
        x = self.train.get(self.stream.rows(tr.step - 1), self.hook).to(self.dev, torch.float32)
        self.ref.step(x); _sync()
        if timed: self.t_ref.append(time.perf_counter() - t0)
        self.last = time.perf_counter()


def _q(v, q): v = sorted(v); return v[min(len(v) - 1, int(q * len(v)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=os.path.expanduser("~/.cache/deeplens/bench/python-docs-l15-64k"))
    ap.add_argument("--store-tokens", type=int, default=65536)
    ap.add_argument("--tokens", type=int, default=262144, help="training token budget per method")
    ap.add_argument("--batch", type=int, default=4096); ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=8); ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--beta-l1", type=float, default=None, help="also time a ReLU+L1 SAE (not interleaved)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    from deeplens.sae import SparseAutoencoder
    from deeplens.train import SAETrainer, StoreStream
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device))
    train, held, hook = open_store(a.store, a.store_tokens)
    d = train.widths[hook]
    xh = held.get(slice(None), hook).float().to(dev)
    steps = max(a.warmup + 3, a.tokens // a.batch)
    print(f"{len(train):,} training rows, {len(held):,} held out, d_in {d}, d_sae {a.expansion * d}, k {a.k}, "
          f"{steps} steps of {a.batch} ({steps * a.batch:,} tokens), device {dev}, {torch.get_num_threads()} threads", flush=True)

    torch.manual_seed(0)
    sae = SparseAutoencoder(d, a.expansion * d, k=a.k).to(dev)
    kw = dict(store=train, hook=hook, batch_size=a.batch, total_tokens=steps * a.batch, lr=a.lr, save_checkpoints=False,
              progress=False, device=str(dev), log_steps=10 ** 9, lrs_type=None, warmup_fraction=0.0)
    tr = SAETrainer(sae, **kw)
    tr._init_b_dec(); tr._initialised = True          # b_dec from the data first, so the reference starts identically
    torch.manual_seed(tr.random_seed)
    il = Interleave(DenseReference(sae, a.lr, a.k), train, hook, StoreStream(len(train), a.batch, seed=tr.random_seed),
                    dev, a.warmup)
    tr.callbacks.append(il)
    tr.train()
    sae.eval()
    fvu, ref_fvu = heldout_fvu(lambda x: sae(x)[0], xh), heldout_fvu(il.ref.recon, xh)
    with torch.no_grad(): l0 = float((sae.encode(xh) != 0).sum(-1).float().mean())
    n = len(il.t_tr)
    rate = lambda ts: [a.batch / t for t in ts]
    for name, ts, f in [("dense_ref", il.t_ref, ref_fvu), ("trainer_topk", il.t_tr, fvu)]:
        r = rate(ts)
        print(f"{name:13s} median {_q(r, .5):9,.0f} tok/s  (quartiles {_q(r, .25):,.0f}..{_q(r, .75):,.0f}, "
              f"{n} interleaved steps)   held-out FVU {f:.4f}", flush=True)
    paired = [r / t for r, t in zip(il.t_ref, il.t_tr)]
    if a.beta_l1 is not None:
        torch.manual_seed(0)
        relu = SparseAutoencoder(d, a.expansion * d, beta_l1=a.beta_l1).to(dev)
        t0 = time.perf_counter(); SAETrainer(relu, **kw).train(); _sync()
        relu.eval()
        with torch.no_grad(): rl0 = float((relu.encode(xh) != 0).sum(-1).float().mean())
        print(f"trainer_relu  {steps * a.batch / (time.perf_counter() - t0):9,.0f} tok/s (whole run, b_dec init included)"
              f"   held-out FVU {heldout_fvu(lambda x: relu(x)[0], xh):.4f}   L0 {rl0:.1f}")
    print(f"\nRATIO trainer_topk / dense_ref tokens/s: {_q(paired, .5):.2f}x median of {n} paired steps "
          f"(quartiles {_q(paired, .25):.2f}..{_q(paired, .75):.2f}; target >= 1.5x); held-out FVU {fvu:.4f} vs "
          f"{ref_fvu:.4f} ({'equal or lower' if fvu <= ref_fvu + 1e-3 else 'HIGHER'}); trainer L0 {l0:.1f}", flush=True)

if __name__ == "__main__":
    main()
