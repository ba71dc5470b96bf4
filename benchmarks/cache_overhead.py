"""Overhead of deeplens' hooks and caches relative to a bare Hugging Face forward.

Builds random-weight models shaped like GPT-2 small and SmolLM2-135M from configs (no downloads), fp32 on CPU,
SDPA attention, eval mode, and times under `torch.no_grad()`:

  bare           hf(input_ids)                                   the baseline, timed in the same run
  wrap           HookedModel(...)(input_ids), no hooks            diagnostic: wrapper cost alone (--no-wrap to skip)
  cache_all      run_with_cache(input_ids)                        every hook site
  cache_all_read the same, then every entry but hook_result read  diagnostic: derived sites computed too (--no-read to skip)
  cache_resid    run_with_cache(..., names_filter=<resid_post>)   hook_resid_post of every block
  cache_pattern  run_with_cache(..., names_filter=<pattern>)      attn.hook_pattern of every block
  hooks_resid    run_with_hooks(identity hook on resid_pre/mid/post)

Variants are timed round-robin (the order rotates every round), after warm-up, so slow drift of the machine hits
them all alike. What is reported is the ratio of each variant's median time to the baseline's median; seconds are
printed only for orientation. `paired` is the median over rounds of (variant / baseline in the same round), with its
inter-quartile range as a noise indicator. Python's garbage collector is left to run as it would in a user's loop
over a dataset (no forced collection between calls): the full passes that a cached forward's own objects trigger
are part of its cost (deeplens pauses the collector for the call, `deeplens.cache.paused_gc`).

    python benchmarks/cache_overhead.py                      # both models, 30 rounds
    python benchmarks/cache_overhead.py --models gpt2 --reps 10 --threads 2
    python benchmarks/cache_overhead.py --glibc-defaults     # without deeplens' freed-memory policy (both sides)

A fifth of the sites are exact functions of others (resid_mid = resid_pre + attn_out, a norm's output, the pattern
from the scores, ...): run_with_cache keeps a recipe for those and computes them when first read (nbs/03_model.ipynb,
"Sites derived instead of stored"). `cache_all_read` shows the cost when a loop reads every entry of every cache.
Caching every site retains ~270 MB per SmolLM2-shaped forward at 4x64 tokens (~390 MB before derivation). With glibc's default malloc
settings the previous cache's memory goes back to the OS when it is freed, and the next forward faults fresh,
zeroed pages back in (~0.3x of a bare forward). deeplens therefore keeps freed CPU memory for reuse, as
PyTorch's CUDA allocator does on GPUs (`deeplens.cache.keep_freed_memory`, set on the first CPU
`run_with_cache`; nbs/02_cache.ipynb). `--glibc-defaults` re-runs the script with DEEPLENS_KEEP_FREED_MEMORY=0
to show what that policy buys.
"""
from __future__ import annotations
import argparse, gc, os, statistics, sys, time

import torch
import transformers as T

from deeplens.model import HookedModel
from deeplens.cache import _memory

TARGETS = {"cache_resid": 1.03, "cache_all": 1.15}
TARGET_LINE = "targets: resid_post-only <= 1.03x, all sites <= 1.15x"

CONFIGS = {
    "gpt2": lambda: T.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
    "smollm2": lambda: T.LlamaConfig(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                                     intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                                     rms_norm_eps=1e-5, max_position_embeddings=8192),
}
LABELS = {"gpt2": "GPT-2 small shape (12L, d768, 124M)", "smollm2": "SmolLM2-135M shape (30L, d576, GQA 9/3)"}


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    hf = T.AutoModelForCausalLM.from_config(CONFIGS[name](), attn_implementation="sdpa", dtype=torch.float32)
    return hf.to("cpu").eval()


def read_all(cache):
    "Read every entry but hook_result (lazy from hook_z since long before the other derived sites; 160 MB here)."
    return [cache[n] for n in cache.keys() if not n.endswith("hook_result")]


def variants(hf, m: HookedModel, ids):
    resid = lambda n: n.endswith("hook_resid_post")
    pattern = lambda n: n.endswith("attn.hook_pattern")
    any_resid = lambda n: n.endswith(("hook_resid_pre", "hook_resid_mid", "hook_resid_post"))
    identity = lambda act, hook: None
    return {
        "bare": lambda: hf(ids).logits,
        "wrap": lambda: m(ids),
        "cache_all": lambda: m.run_with_cache(ids)[0],
        "cache_all_read": lambda: read_all(m.run_with_cache(ids)[1]),
        "cache_resid": lambda: m.run_with_cache(ids, names_filter=resid)[0],
        "cache_pattern": lambda: m.run_with_cache(ids, names_filter=pattern)[0],
        "hooks_resid": lambda: m.run_with_hooks(ids, fwd_hooks=[(any_resid, identity)]),
    }, {"cache_all": len(m.names(None)), "cache_all_read": len(m.names(None)), "cache_resid": len(m.names(resid)),
        "cache_pattern": len(m.names(pattern)), "hooks_resid": len(m.names(any_resid))}


def check_logits(hf, m, ids) -> bool:
    "run_with_cache(resid_post only) must return exactly the bare forward's logits (read-only hooks change nothing)."
    ref = hf(ids).logits
    out, cache = m.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
    ok = torch.equal(out, ref)
    diff = (out - ref).abs().max().item()
    print(f"  check: run_with_cache(resid_post only) logits == bare hf(input_ids) logits: "
          f"{'exact' if ok else f'NOT exact (max |diff| = {diff:.3g})'}; {len(cache.keys())} activations cached")
    return ok


def malloc_policy() -> str:
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return "glibc, thresholds from the environment"
    return "freed memory kept for reuse (deeplens)" if _memory["kept"] else "glibc defaults (freed memory returned to the OS)"


def measure(fns: dict, reps: int, warmup: int) -> dict[str, list[float]]:
    names = list(fns)
    for _ in range(warmup):
        for n in names: fns[n]()
    times = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]   # rotate: each variant takes every slot
        for n in order:   # no gc.collect() between calls: the collector runs as it would in a user's loop
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def quantile(xs, q):
    xs = sorted(xs)
    i = q * (len(xs) - 1)
    lo = int(i)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (i - lo)


def report(times: dict, counts: dict) -> list[tuple[str, float]]:
    base = statistics.median(times["bare"])
    print(f"  {'variant':<14} {'sites':>5} {'median s':>9} {'ratio':>7} {'paired (IQR)':>20}  target")
    rows = []
    for n, ts in times.items():
        med = statistics.median(ts)
        paired = [t / b for t, b in zip(ts, times["bare"])]
        tgt = TARGETS.get(n)
        verdict = "" if tgt is None else f"<= {tgt:.2f}x  {'ok' if med / base <= tgt else 'MISSED'}"
        iqr = f"{statistics.median(paired):.3f} ({quantile(paired, .25):.3f}-{quantile(paired, .75):.3f})"
        print(f"  {n:<14} {counts.get(n, 0):>5} {med:>9.4f} {med / base:>6.3f}x {iqr:>20}  {verdict}")
        rows.append((n, med / base))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=30, help="timed rounds per variant (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--models", default="gpt2,smollm2", help=f"comma-separated, from: {', '.join(CONFIGS)}")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--pos", type=int, default=64)
    p.add_argument("--no-wrap", action="store_true", help="skip the diagnostic `wrap` variant (saves time)")
    p.add_argument("--no-read", action="store_true", help="skip the diagnostic `cache_all_read` variant (saves time)")
    p.add_argument("--glibc-defaults", action="store_true",
                   help="re-run with DEEPLENS_KEEP_FREED_MEMORY=0: glibc returns freed memory to the OS (both sides)")
    a = p.parse_args(argv)
    if a.glibc_defaults and os.environ.get("DEEPLENS_KEEP_FREED_MEMORY") != "0":
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, DEEPLENS_KEEP_FREED_MEMORY="0"))
    if a.threads: torch.set_num_threads(a.threads)
    models = [s.strip() for s in a.models.split(",") if s.strip()]
    for s in models:
        if s not in CONFIGS: p.error(f"unknown model {s!r}; choose from {', '.join(CONFIGS)}")
    print(f"torch {torch.__version__}, transformers {T.__version__}, {torch.get_num_threads()} threads, "
          f"input {a.batch}x{a.pos}, fp32 CPU, sdpa, {a.reps} rounds after {a.warmup} warm-up")
    summary = {}
    for s in models:
        hf = build(s)
        m = HookedModel(hf)
        ids = torch.randint(0, hf.config.vocab_size, (a.batch, a.pos), generator=torch.Generator().manual_seed(1))
        print(f"\n{s}: {LABELS[s]}, {len(m.hook_names())} hook sites")
        t0 = time.perf_counter()
        with torch.no_grad():
            check_logits(hf, m, ids)
            print(f"  malloc: {malloc_policy()}")
            fns, counts = variants(hf, m, ids)
            if a.no_wrap: del fns["wrap"]
            if a.no_read: del fns["cache_all_read"]
            times = measure(fns, a.reps, a.warmup)
        summary[s] = report(times, counts)
        print(f"  ({time.perf_counter() - t0:.0f}s)")
        del m, hf; gc.collect()
    print()
    print(TARGET_LINE)
    for s, rows in summary.items():
        print(f"  {s:<8} " + "  ".join(f"{n}={r:.3f}x" for n, r in rows if n != "bare"))


if __name__ == "__main__":
    sys.exit(main())
