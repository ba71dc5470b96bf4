"""Cost of generating with deeplens hooks relative to plain Hugging Face `generate`.

Greedy generation of 64 new tokens (KV cache on, batch 1, a 16-token prompt) on the embedded default model
(`deeplens.load_model()`: SmolLM2-135M-Instruct, fp32 on CPU), timed as:

  hf          model.hf.generate(input_ids, ...)                                  the baseline, timed in the same run
  plain       model.generate(input_ids, ...)                      no hooks        (a)  target <= 1.05x
  steer       generate_with_steering(model, ..., SteeringVector at blocks.10.hook_resid_post)
                                                                  one hook        (b)  target <= 1.05x
  sae_add     with steer_features(model, sae, {f: alpha}, mode="add"): model.generate(...)
                                                                  SAE feature steering, as SteeringPanel runs it (c)
  sae_scale   the same with mode="scale": the SAE encodes the activation every step   diagnostic (--no-scale to skip)

The SAE is a random TopK SAE of realistic width (576 -> 16384, k=32) at blocks.10.hook_resid_post: its weights do
not matter for speed (mode="add" adds alpha * W_dec[f] and never encodes; mode="scale" encodes with the full
576 x 16384 encoder every step, whatever the weights). Every variant passes min_new_tokens=64, so all generate
exactly 64 tokens whatever the steering does to the text; the hooks' coefficients are moderate, so the logits stay
finite. `plain` must give exactly the baseline's tokens (the same computation): checked first.

Variants are timed round-robin (the order rotates every round) after warm-up, so slow drift of a shared machine
hits them all alike. Reported: each variant's median time over the baseline's median, and `paired`, the median over
rounds of (variant / baseline in the same round) with its inter-quartile range as a noise indicator. Each call is
timed twice: wall-clock (`perf_counter`), what a user waits, and this process's CPU time (`process_time`), what the
work costs. On a machine shared with other jobs the wall clock also counts the time the process waited for a core,
which swamps a few percent of overhead; CPU time does not (with --threads 1 it is the single thread's compute).

`--profile` adds a breakdown that noise cannot blur: one call of each variant under cProfile (CPU-time timer), with
the Python function calls it makes beyond the baseline's, and the CPU time spent inside deeplens' functions and the
torch ops they call (hook dispatch, the steering and SAE hooks, the non-finite-logits watch), per generated token.

    python benchmarks/generate_overhead.py                       # 15 rounds, torch's thread count
    python benchmarks/generate_overhead.py --reps 30 --threads 1 --no-scale --profile
"""
from __future__ import annotations
import argparse, cProfile, os, pstats, statistics, sys, time

import torch
import transformers as T

import deeplens
from deeplens.sae import SparseAutoencoder
from deeplens.steering import SteeringVector, generate_with_steering
from deeplens.intervene import steer_features

TARGETS = {"plain": 1.05, "steer": 1.05}
TARGET_LINE = "targets: (a) plain <= 1.05x, (b) steer <= 1.05x of hf.generate"
PROMPT = "The history of the printing press begins in the fifteenth century, when a goldsmith in Mainz"
LAYER = 10


def build_hooks(model, width: int, k: int, seed: int = 0):
    "A unit steering vector at blocks.{LAYER}.hook_resid_post and a random TopK SAE at the same site."
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(model.cfg.d_model, generator=g)
    sv = SteeringVector(v / v.norm(), layer=LAYER, site="resid_post")
    torch.manual_seed(seed)
    sae = SparseAutoencoder(model.cfg.d_model, width, k=k, hook_name=sv.hook_name).eval()
    return sv, sae


def variants(model, ids, n: int, sv, sae, feature: int):
    hf, mask = model.hf, torch.ones_like(ids)
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)
    pad = model.tokenizer.pad_token_id

    def hf_generate():
        with torch.no_grad():
            return hf.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, **kw)

    def sae_steer(mode):
        def run():
            with steer_features(model, sae, {feature: 4.0 if mode == "add" else 2.0}, mode=mode):
                return model.generate(ids, return_type="tokens", **kw)
        return run

    return {
        "hf": hf_generate,
        "plain": lambda: model.generate(ids, return_type="tokens", **kw),
        "steer": lambda: generate_with_steering(model, ids, sv, 4.0, return_type="tokens", **kw),
        "sae_add": sae_steer("add"),
        "sae_scale": sae_steer("scale"),
    }


def check(fns, n: int, prompt_len: int) -> bool:
    "`plain` is the baseline's computation: the same tokens, exactly. Every variant generates n tokens."
    ref = fns["hf"]()
    ok = torch.equal(fns["plain"](), ref)
    lens = {name: fns[name]().shape[1] - prompt_len for name in fns}
    print(f"  check: model.generate tokens == hf.generate tokens: {'exact' if ok else 'DIFFERENT'}; "
          f"new tokens per variant: {sorted(set(lens.values()))} (want [{n}])")
    return ok and set(lens.values()) == {n}


def measure(fns: dict, reps: int, warmup: int) -> dict[str, list[float]]:
    names = list(fns)
    for _ in range(warmup):
        for name in names: fns[name]()
    wall, cpu = {name: [] for name in names}, {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]   # rotate: each variant takes every slot
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            c1, t1 = time.process_time(), time.perf_counter()
            wall[name].append(t1 - t0); cpu[name].append(c1 - c0)
    return {"wall": wall, "cpu": cpu}


def quantile(xs, q):
    xs = sorted(xs)
    i = q * (len(xs) - 1)
    lo = int(i)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (i - lo)


def report(times: dict, n: int, clock: str) -> list[tuple[str, float]]:
    base = statistics.median(times["hf"])
    print(f"  {clock + ' clock':<10} {'median s':>9} {'ms/token':>9} {'ratio':>7} {'paired (IQR)':>20}  target")
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        paired = [t / b for t, b in zip(ts, times["hf"])]
        tgt = TARGETS.get(name)
        verdict = "" if tgt is None else f"<= {tgt:.2f}x  {'ok' if med / base <= tgt else 'MISSED'}"
        iqr = f"{statistics.median(paired):.3f} ({quantile(paired, .25):.3f}-{quantile(paired, .75):.3f})"
        print(f"  {name:<10} {med:>9.3f} {1e3 * med / n:>9.2f} {med / base:>6.3f}x {iqr:>20}  {verdict}")
        rows.append((name, med / base))
    return rows


def deeplens_time(st: pstats.Stats) -> float:
    """CPU time inside deeplens functions and what they call (torch ops included), but not Hugging Face's
    `generate` itself, which deeplens' generate calls: what deeplens adds to a generation."""
    mine = lambda key: f"{os.sep}deeplens{os.sep}" in key[0] and key[2] not in ("generate", "generate_with_steering")
    t = 0.0
    for key, (cc, nc, tt, ct, callers) in st.stats.items():
        if mine(key): t += tt
        else: t += sum(v[3] for c, v in callers.items() if mine(c))   # cumulative time attributed to a deeplens caller
    return t


def profile(fns: dict, n: int):
    "One call per variant under cProfile: extra Python calls per token vs hf, and CPU time inside deeplens per token."
    print(f"  {'profile':<10} {'calls/token':>11} {'extra':>7} {'deeplens ms/token':>18} {'of total':>9}")
    base = None
    for name, fn in fns.items():
        pr = cProfile.Profile(time.process_time)
        pr.enable(); fn(); pr.disable()
        st = pstats.Stats(pr)
        ours = deeplens_time(st)
        base = st.total_calls if base is None else base
        print(f"  {name:<10} {st.total_calls / n:>11.0f} {(st.total_calls - base) / n:>+7.0f} {1e3 * ours / n:>18.3f} "
              f"{ours / st.total_tt:>8.2%}")


def load_line() -> str:
    try: return "load average %.2f %.2f %.2f" % os.getloadavg() + f" on {os.cpu_count()} CPUs"
    except OSError: return "load average unknown"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=15, help="timed rounds per variant (default 15)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per call (default 64)")
    p.add_argument("--sae-width", type=int, default=16384, help="features of the random SAE (default 16384)")
    p.add_argument("--sae-k", type=int, default=32, help="TopK k of the random SAE (default 32)")
    p.add_argument("--no-scale", action="store_true", help="skip the diagnostic `sae_scale` variant (saves time)")
    p.add_argument("--profile", action="store_true", help="also print a cProfile breakdown (one call per variant)")
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    model = deeplens.load_model(verbose=False)
    ids = model.to_tokens(PROMPT)[:, :16]
    sv, sae = build_hooks(model, a.sae_width, a.sae_k)
    fns = variants(model, ids, a.new_tokens, sv, sae, feature=123)
    if a.no_scale: del fns["sae_scale"]
    print(f"torch {torch.__version__}, transformers {T.__version__}, {torch.get_num_threads()} threads, "
          f"{deeplens.model.DEFAULT_MODEL} fp32 {model.device}, prompt {ids.shape[1]} tokens, {a.new_tokens} new tokens "
          f"(greedy, KV cache), {a.reps} rounds after {a.warmup} warm-up")
    print(f"  hooks at blocks.{LAYER}.hook_resid_post; SAE {sae.d_in} -> {sae.d_sae}, k={sae.k} (random weights)")
    print(f"  before: {load_line()}")
    t0 = time.perf_counter()
    with torch.no_grad(): ok = check(fns, a.new_tokens, ids.shape[1])
    times = measure(fns, a.reps, a.warmup)
    rows = {clock: report(times[clock], a.new_tokens, clock) for clock in ("wall", "cpu")}
    if a.profile: profile(fns, a.new_tokens)
    print(f"  after:  {load_line()}  ({time.perf_counter() - t0:.0f}s)")
    print()
    print(TARGET_LINE)
    for clock, rs in rows.items():
        print(f"  {clock:<5} " + "  ".join(f"{name}={r:.3f}x" for name, r in rs if name != "hf"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
