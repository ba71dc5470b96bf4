"""Throughput and memory of `ActivationStore.build` against baselines measured in the same run.

Throughput. A random-weight model shaped like SmolLM2-135M (30 layers, d576, GQA 9/3; no download) with the default
model's tokenizer reads the offline corpus `builtin:python-docs`. Timed, round-robin over `--rounds` rounds:

  bare_full     hf(input_ids) over the same packed contexts: the plain Hugging Face loop, logits for every position
  bare_trunk    hf(input_ids, logits_to_keep=1): the least work any extraction of a last-layer hook must do
  build_1hook   ActivationStore.build(..., hooks=[blocks.29.hook_resid_post]) into a fresh directory
  build_3hooks  ActivationStore.build(..., hooks=[blocks.15.mlp.hook_post, blocks.29.hook_attn_out, blocks.29.hook_resid_post])

Every hook needs the last block, so the build runs the same depth as the baselines. The builds include what the loops
do not: tokenising and packing the text, copying rows out, writing safetensors shards. Reported: tokens/s (rows per
second; the prepended BOS of each context is not a row, and the baselines are counted the same way) and the ratio of
each build to each baseline (medians over rounds). Target: build_1hook >= 0.9x bare_trunk.

Reading. A store of `--read-rows` rows of width 576 (fp32, as SmolLM2-135M's residual stream; built by a one-block
random model of that width) is read by shuffled epochs (`iter_batches(4096)`) and by random access (`get` of 4096
random rows), each in a fresh `ActivationStore`:

  checks_off    the file checksums switched off (the reading path as it was before checksums)
  first_read    the first read of every shard in this process: each file's CRC-32 is checked once
  warm          the same again: files already found intact are not read again

Reported: seconds (median over rounds) and the ratio to checks_off.

Memory. Each build runs in a fresh subprocess (a tiny random Llama, 2 layers, d64, with the same tokenizer; one
hook; python-docs repeated to have enough text), which prints `resource.getrusage(RUSAGE_SELF).ru_maxrss`: peak RSS of
a 100k-token and a 1M-token build, and their ratio. Target: the 1M build within 10% of the 100k build (rows stream to
disk; nothing grows with the store).

    python benchmarks/extract_throughput.py                        # both parts
    python benchmarks/extract_throughput.py --skip-rss --tokens 4096 --rounds 3
    python benchmarks/extract_throughput.py --skip-throughput
    python benchmarks/extract_throughput.py --skip-throughput --skip-rss --read-rows 131072    # reading only
"""
from __future__ import annotations
import argparse, gc, itertools, json, os, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import torch


def tokenizer_dir(arg: str | None) -> str:
    "The tokenizer to use: `--tokenizer`, else the embedded default model's (fetched once if needed)."
    if arg: return arg
    from deeplens.model import default_model_path
    return str(default_model_path(verbose=True))


def smollm2_shaped(tok_dir: str, seed: int = 0, layers: int = 30):
    import transformers as T
    from deeplens.model import HookedModel
    tok = T.AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(num_hidden_layers=layers, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                        intermediate_size=1536, vocab_size=len(tok), tie_word_embeddings=True, rms_norm_eps=1e-5,
                        max_position_embeddings=8192)
    hf = T.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32).eval()
    return HookedModel(hf, tok)


def docs_repeated(times: int):
    "builtin:python-docs, `times` over (about 0.4M tokens per pass), as a re-iterable Corpus."
    from deeplens.corpus import Corpus, python_docs
    return Corpus(lambda: itertools.chain.from_iterable(python_docs() for _ in range(times)),
                  {"source": f"builtin:python-docs x{times}"})


# --- throughput ------------------------------------------------------------------------------------------------

def throughput(a):
    from deeplens.store import ActivationStore, pack
    from deeplens.corpus import corpus
    m = smollm2_shaped(tokenizer_dir(a.tokenizer), layers=a.layers)
    m.hf.to(a.device)
    L = m.cfg.n_layers
    one = [f"blocks.{L - 1}.hook_resid_post"]
    three = [f"blocks.{L // 2}.mlp.hook_post", f"blocks.{L - 1}.hook_attn_out", f"blocks.{L - 1}.hook_resid_post"]
    S, B, N = a.context_size, a.batch_size, a.tokens
    docs = list(corpus("builtin:python-docs").take(max(200, N // 40)))          # in memory: corpus reading is not what we time
    n_ctx = -(-N // (S - 1))
    ctxs = [torch.from_numpy(ids) for ids, _, _ in itertools.islice(pack(docs, m.tokenizer, S, True), n_ctx)]
    if len(ctxs) < n_ctx: sys.exit(f"not enough text for {N} tokens of context {S}")
    batches = [torch.stack(ctxs[i:i + B]).to(a.device) for i in range(0, n_ctx, B)]
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    tmp = Path(tempfile.mkdtemp(prefix="deeplens-bench-"))

    def bare(**kw):
        with torch.no_grad():
            for ids in batches: m.hf(input_ids=ids, use_cache=False, **kw)
        sync()

    def build(hooks):
        out = tmp / "store"
        shutil.rmtree(out, ignore_errors=True)
        st = ActivationStore.build(m, docs, hooks, N, out, context_size=S, batch_size=B, progress=False)
        assert len(st) == N
        sync()

    fns = {"bare_full": lambda: bare(), "bare_trunk": lambda: bare(logits_to_keep=1),
           "build_1hook": lambda: build(one), "build_3hooks": lambda: build(three)}
    print(f"throughput: SmolLM2-135M-shaped random model ({L} layers) on {a.device}, {torch.get_num_threads()} threads, "
          f"{N:,} tokens per run = {n_ctx} contexts of {S} (BOS + {S - 1} rows), batch {B}, fp32, "
          f"{a.rounds} rounds after 1 warm-up")
    for f in fns.values(): f()                                     # warm-up (allocators, kernels, page cache)
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(a.rounds):
        for k in names[r % 4:] + names[:r % 4]:
            gc.collect()
            t0 = time.perf_counter(); fns[k](); times[k].append(time.perf_counter() - t0)
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"  {'variant':<13} {'median s':>9} {'tokens/s':>10} {'vs bare_trunk':>14} {'vs bare_full':>13}")
    for k in names:
        print(f"  {k:<13} {med[k]:>9.3f} {N / med[k]:>10,.0f} {med['bare_trunk'] / med[k]:>13.3f}x "
              f"{med['bare_full'] / med[k]:>12.3f}x")
    r1, r3 = med["bare_trunk"] / med["build_1hook"], med["bare_trunk"] / med["build_3hooks"]
    print(f"  build_1hook / bare_trunk = {r1:.3f}x (target >= 0.9x: {'ok' if r1 >= 0.9 else 'MISSED'}); "
          f"build_3hooks / bare_trunk = {r3:.3f}x; build_1hook / bare_full = {med['bare_full'] / med['build_1hook']:.3f}x")
    return r1, r3


# --- reading -----------------------------------------------------------------------------------------------------

def reading(a):
    import numpy as np
    import transformers as T
    import deeplens.store as store_mod
    from deeplens.model import HookedModel
    from deeplens.store import ActivationStore
    tok = T.AutoTokenizer.from_pretrained(tokenizer_dir(a.tokenizer))
    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(T.LlamaConfig(hidden_size=576, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=9, num_key_value_heads=3, vocab_size=len(tok))).eval()
    tmp = Path(tempfile.mkdtemp(prefix="deeplens-read-"))
    try:
        hook, n = "blocks.0.hook_resid_post", a.read_rows
        ActivationStore.build(HookedModel(hf, tok), docs_repeated(-(-n // 350_000) + 1), hook, n, tmp / "s",
                              context_size=128, batch_size=32, progress=False, shard_rows=a.read_shard_rows)
        real_check, verified = store_mod._check_file, store_mod._VERIFIED
        idx = torch.from_numpy(np.random.default_rng(0).choice(n, 4096, replace=False))
        def epoch(s):
            for _ in s.iter_batches(4096, seed=0, hooks=hook): pass
        def access(s): s.get(idx, hook)
        def timed(fn, mode):
            store_mod._check_file = (lambda *x: None) if mode == "checks_off" else real_check
            if mode != "warm": verified.clear()
            if mode == "warm": fn(ActivationStore(tmp / "s"))                 # (not timed) the first read, another object
            s = ActivationStore(tmp / "s")
            gc.collect()
            t0 = time.perf_counter(); fn(s); return time.perf_counter() - t0
        modes = ["checks_off", "first_read", "warm"]
        mb = n * 576 * 4 / 2**20
        st = ActivationStore(tmp / "s")
        print(f"\nreading: {n:,} rows x 576 fp32 ({mb:.0f} MiB in {len(st.shards)} shards), page cache warm, "
              f"{torch.get_num_threads()} threads, {a.rounds} rounds")
        ratios = {}
        for what, fn in (("shuffled epoch, batch 4096", epoch), ("get 4096 random rows", access)):
            times = {m: [] for m in modes}
            for r in range(a.rounds):
                for m in modes[r % 3:] + modes[:r % 3]: times[m].append(timed(fn, m))
            med = {m: statistics.median(v) for m, v in times.items()}
            print(f"  {what}: " + ", ".join(f"{m} {med[m]:.3f} s ({med[m] / med['checks_off']:.2f}x)" for m in modes))
            ratios[what] = med["first_read"] / med["checks_off"], med["warm"] / med["checks_off"]
        store_mod._check_file = real_check
        return ratios
    finally: shutil.rmtree(tmp, ignore_errors=True)


# --- peak RSS ----------------------------------------------------------------------------------------------------

def rss_child(n_tokens: int, tok_dir: str, out: str):
    "Runs in a fresh process: one build, then print peak RSS (KiB on Linux) as JSON."
    import transformers as T
    from deeplens.model import HookedModel
    from deeplens.store import ActivationStore
    tok = T.AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok))).eval()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    st = ActivationStore.build(HookedModel(hf, tok), docs_repeated(-(-n_tokens // 350_000) + 1), "blocks.1.hook_resid_post",
                               n_tokens, out, context_size=128, batch_size=32, progress=False)
    secs = time.perf_counter() - t0
    assert len(st) == n_tokens, len(st)
    print(json.dumps({"tokens": n_tokens, "rows": len(st), "seconds": secs, "maxrss_before_build_kb": before,
                      "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def peak_rss(a):
    tok_dir = tokenizer_dir(a.tokenizer)
    res = {}
    print(f"\npeak RSS: tiny random Llama (2 layers, d64), one hook (blocks.1.hook_resid_post, width 64, fp32), "
          "context 128, each build in a fresh process")
    for n in (100_000, 1_000_000):
        with tempfile.TemporaryDirectory(prefix="deeplens-rss-") as d:
            r = subprocess.run([sys.executable, __file__, "--rss-child", str(n), "--tokenizer", tok_dir, "--out", f"{d}/store"],
                               capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if r.returncode != 0: sys.exit(f"child build of {n} tokens failed:\n{r.stderr[-3000:]}")
            res[n] = json.loads(r.stdout.strip().splitlines()[-1])
        x = res[n]
        print(f"  {n:>9,} tokens: peak RSS {x['maxrss_kb'] / 1024:8.1f} MiB (before the build: "
              f"{x['maxrss_before_build_kb'] / 1024:.1f} MiB), {x['seconds']:.1f} s, {n / x['seconds']:,.0f} tokens/s; "
              f"store data {n * 64 * 4 / 2**20:.0f} MiB")
    ratio = res[1_000_000]["maxrss_kb"] / res[100_000]["maxrss_kb"]
    print(f"  peak RSS 1M / 100k = {ratio:.3f}x (target <= 1.10x: {'ok' if ratio <= 1.10 else 'MISSED'})")
    return ratio


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=8192, help="tokens per timed run (default 8192)")
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per variant (default 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, default=30, help="blocks of the SmolLM2-shaped model (default 30, as SmolLM2-135M)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--tokenizer", default=None, help="a tokenizer directory (default: the embedded model's)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--skip-read", action="store_true")
    p.add_argument("--read-rows", type=int, default=131072, help="rows of the store read back (default 131072)")
    p.add_argument("--read-shard-rows", type=int, default=65536, help="shard_rows of that store (default 65536)")
    p.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    if a.rss_child: return rss_child(a.rss_child, a.tokenizer, a.out)
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    summary = []
    if not a.skip_throughput:
        r1, r3 = throughput(a)
        summary.append(f"build 1 hook = {r1:.3f}x bare forward loop (target >= 0.9x), 3 hooks = {r3:.3f}x")
    if not a.skip_read:
        for what, (first, warm) in reading(a).items():
            summary.append(f"{what}: first read {first:.2f}x, warm {warm:.2f}x the read without checksums")
    if not a.skip_rss:
        summary.append(f"peak RSS 1M/100k = {peak_rss(a):.3f}x (target <= 1.10x)")
    print("\nsummary: " + "; ".join(summary))


if __name__ == "__main__":
    sys.exit(main())
