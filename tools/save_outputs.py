"""Run library notebooks and keep their cheap outputs in the saved files, so a reader (on GitHub, in the docs)
sees what each demonstration prints without running it.

    python tools/save_outputs.py                       # every numbered notebook in nbs/
    python tools/save_outputs.py nbs/50_style.ipynb    # some
    python tools/save_outputs.py --clear               # remove saved outputs instead

A notebook runs as `nbdev-test` runs it (cells flagged `notest`/`slow` are skipped). Outputs of a cell are kept
only when they are small (`--max-chars`, default 20,000 characters of JSON): a live widget's JavaScript or a large
chart stays out of the repository; the docs build executes the notebooks anyway and shows those."""
import argparse, json, re, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

ADDRESS = re.compile(r" at 0x[0-9a-f]+")

def keep(outputs: list, max_chars: int) -> list:
    """The outputs as saved: stdout and results when small, else none. Left out: stderr (progress bars, library
    warnings), widget views (they need a live kernel), reprs with memory addresses (they change every run), and
    HTML with scripts (altair's live renderer loads vega from a CDN; the docs must load nothing from another host)."""
    if any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs): return []
    outputs = [o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
               and not ADDRESS.search(json.dumps(o)) and "<script" not in json.dumps(o)]
    return outputs if len(json.dumps(outputs)) <= max_chars else []

def save(nb_path: Path, executed: Path | None, max_chars: int) -> None:
    nb = json.loads(nb_path.read_text())
    run = json.loads(executed.read_text()) if executed else None
    run_cells = {c.get("id"): c for c in run["cells"]} if run else {}
    for c in nb["cells"]:
        if c["cell_type"] != "code": continue
        r = run_cells.get(c.get("id"), {})
        c["outputs"] = keep(r.get("outputs", []), max_chars) if run else []
        c["execution_count"] = None
        for o in c["outputs"]:
            if "execution_count" in o: o["execution_count"] = None
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--max-chars", type=int, default=20_000)
    ap.add_argument("--clear", action="store_true")
    ap.add_argument("--timeout", type=int, default=600)
    a = ap.parse_args(argv)
    nbs = a.notebooks or sorted((ROOT / "nbs").glob("[0-9]*.ipynb"))
    if a.clear:
        for p in nbs: save(p, None, a.max_chars)
        return
    import build_docs
    flags = "notest slow"
    failed = []
    for p in nbs:
        with tempfile.TemporaryDirectory() as d:
            dst = Path(d) / p.name
            _, dt, err = build_docs._exec_one(str(p.resolve()), str(dst), flags, a.timeout)
            if err: failed.append(f"{p.name}: {err}"); print(f"{p.name}: FAILED {err}", file=sys.stderr); continue
            save(p, dst, a.max_chars)
            print(f"{p.name}: {dt:.1f}s", file=sys.stderr)
    if failed: sys.exit("failed: " + "; ".join(failed))

if __name__ == "__main__": main()
