"""SAE training speed: `SAETrainer` against a plain dense PyTorch TopK loop measured in the same run.

Data: an ActivationStore of default-model activations (SmolLM2-135M, `blocks.15.hook_resid_post`, d_in 576,
`builtin:python-docs`), built on first use into `--store`. The last eighth of the rows is held out.

  dense_ref     a hand-written TopK SAE loop: pre = (x - b_dec) W_enc + b_enc, keep the top k, scatter into a dense
                [B, d_sae] code, x_hat = z W_dec + b_dec, MSE, backward, Adam, renormalise decoder rows.
                Same initial weights, same batches (rows), same learning rate as the trainer.
  trainer_topk  SAETrainer(SparseAutoencoder(576, 8*576, k=32)): sparse decode, AuxK, dead-latent tracking,
                metrics every step, b_dec from the geometric median, decoder-gradient projection.
  trainer_relu  SAETrainer(SparseAutoencoder(576, 8*576, beta_l1=...)) with L1 warm-up.

Reported: tokens/s of the timed steps (the first `--warmup` steps excluded) and held-out FVU after the same token
budget; ratio trainer_topk / dense_ref. Target: >= 1.5x at equal or lower FVU.

    python benchmarks/sae_train.py --tokens 262144          # 64 steps of 4096
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


def dense_reference(sae0, batches, lr: float, k: int, warmup: int):
    "The plain loop; returns (tokens/s over the timed steps, reconstruct function)."
    W_enc = sae0.W_enc.detach().clone().requires_grad_()
    W_dec = sae0.W_dec.detach().clone().requires_grad_()
    b_enc = sae0.b_enc.detach().clone().requires_grad_()
    b_dec = sae0.b_dec.detach().clone().requires_grad_()
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=lr)
    def recon(x):
        pre = (x - b_dec) @ W_enc + b_enc
        v, i = F.relu(pre).topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, i, v)
        return z @ W_dec + b_dec
    t0, n = None, 0
    for s, x in enumerate(batches):
        if s == warmup: t0, n = time.perf_counter(), 0
        loss = (recon(x) - x).pow(2).mean()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        with torch.no_grad(): W_dec.div_(W_dec.norm(dim=1, keepdim=True))
        n += len(x)
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return n / (time.perf_counter() - t0), recon


class _Timer:
    "A trainer callback: starts the clock after `warmup` steps."
    def __init__(self, warmup): self.warmup, self.t0, self.s0 = warmup, None, None
    def __call__(self, tr):
        if tr.step == self.warmup:
            if torch.cuda.is_available(): torch.cuda.synchronize()
            self.t0, self.s0 = time.perf_counter(), tr.step
    def rate(self, tr):
        if torch.cuda.is_available(): torch.cuda.synchronize()
        return (tr.step - self.s0) * tr.batch_size / (time.perf_counter() - self.t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=os.path.expanduser("~/.cache/deeplens/bench/python-docs-l15-64k"))
    ap.add_argument("--store-tokens", type=int, default=65536)
    ap.add_argument("--tokens", type=int, default=262144, help="training token budget per method")
    ap.add_argument("--batch", type=int, default=4096); ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=8); ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--beta-l1", type=float, default=5.0); ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    from deeplens.sae import SparseAutoencoder
    from deeplens.train import SAETrainer, StoreStream
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device))
    torch.manual_seed(0)
    train, held, hook = open_store(a.store, a.store_tokens)
    d = train.widths[hook]
    xh = held.get(slice(None), hook).float().to(dev)
    steps = max(a.warmup + 2, a.tokens // a.batch)
    print(f"{len(train):,} training rows, {len(held):,} held out, d_in {d}, d_sae {a.expansion * d}, k {a.k}, "
          f"{steps} steps of {a.batch} ({steps * a.batch:,} tokens), device {dev}, {torch.get_num_threads()} threads", flush=True)

    torch.manual_seed(0)
    sae0 = SparseAutoencoder(d, a.expansion * d, k=a.k).to(dev)
    # same data for the reference: the trainer's own stream, read ahead of time
    stream = StoreStream(len(train), a.batch, seed=42)
    batches = [train.get(stream.rows(s), hook).float().to(dev) for s in range(steps)]
    sae_init = {k: v.clone() for k, v in sae0.state_dict().items()}
    # the reference starts from the same b_dec the trainer will compute (geometric median), for a fair FVU
    probe = SAETrainer(sae0, store=train, hook=hook, batch_size=a.batch, total_tokens=steps * a.batch, lr=a.lr,
                       save_checkpoints=False, progress=False, device=str(dev))
    probe._init_b_dec()
    ref_rate, ref_recon = dense_reference(sae0, batches, a.lr, a.k, a.warmup)
    ref_fvu = heldout_fvu(ref_recon, xh)
    print(f"dense_ref     {ref_rate:10,.0f} tok/s   held-out FVU {ref_fvu:.4f}", flush=True)

    results = {}
    for name, kw in [("trainer_topk", dict(k=a.k)), ("trainer_relu", dict(beta_l1=a.beta_l1))]:
        torch.manual_seed(0)
        sae = SparseAutoencoder(d, a.expansion * d, **kw).to(dev)
        if name == "trainer_topk": sae.load_state_dict(sae_init)
        timer = _Timer(a.warmup)
        tr = SAETrainer(sae, store=train, hook=hook, batch_size=a.batch, total_tokens=steps * a.batch, lr=a.lr,
                        save_checkpoints=False, progress=False, device=str(dev), callbacks=[timer], log_steps=10 ** 9,
                        lrs_type=None, warmup_fraction=0.0)
        tr.train()
        rate = timer.rate(tr)
        sae.eval()
        fvu = heldout_fvu(lambda x: sae(x)[0], xh)
        with torch.no_grad(): l0 = float((sae.encode(xh) != 0).sum(-1).float().mean())
        results[name] = (rate, fvu, l0)
        print(f"{name:13s} {rate:10,.0f} tok/s   held-out FVU {fvu:.4f}   L0 {l0:.1f}", flush=True)
    r, f, _ = results["trainer_topk"]
    print(f"\nratio trainer_topk / dense_ref tokens/s: {r / ref_rate:.2f}x (target >= 1.5x); "
          f"FVU {f:.4f} vs {ref_fvu:.4f} ({'equal or lower' if f <= ref_fvu + 1e-3 else 'HIGHER'})")

if __name__ == "__main__":
    main()
