"""How the library notebooks read: exported cells, lines per exported cell, and the share of exported cells that no
demonstration or test follows (the next code cell is exported too, or there is none).

    python tools/notebook_stats.py            # a row per notebook and the total
    python tools/notebook_stats.py --max 0.3  # exit 1 when the total share without a demo is above 0.3
"""
import argparse, json, re, sys
from pathlib import Path

EXPORT = re.compile(r"^#\|\s*export[s]?\b")
DIRECTIVE_ONLY = re.compile(r"^\s*(#\|.*)?$")

def code_cells(nb: Path) -> list[str]:
    "The code cells' sources, skipping cells that hold only directives (`#| default_exp ...`)."
    cells = ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    return [s for s in cells if not all(DIRECTIVE_ONLY.match(l) for l in s.splitlines())]

def is_exported(src: str) -> bool: return bool(src) and bool(EXPORT.match(src.splitlines()[0]))

def stats(nb: Path) -> dict:
    cells = code_cells(nb)
    exported = [i for i, s in enumerate(cells) if is_exported(s)]
    bare = [i for i in exported if i + 1 >= len(cells) or is_exported(cells[i + 1])]
    lines = [len([l for l in cells[i].splitlines()[1:] if l.strip()]) for i in exported]
    return dict(notebook=nb.name, exported=len(exported), lines=sum(lines), without_demo=len(bare))

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nbs", default=str(Path(__file__).resolve().parents[1] / "nbs"))
    ap.add_argument("--max", type=float, default=None, help="fail when the total share without a demo is above this")
    a = ap.parse_args(argv)
    rows = [stats(p) for p in sorted(Path(a.nbs).glob("[0-9]*.ipynb"))]
    print(f"{'notebook':28} {'exported':>8} {'lines/cell':>10} {'no demo':>8}")
    for r in rows:
        if r["exported"]:
            print(f"{r['notebook']:28} {r['exported']:8} {r['lines'] / r['exported']:10.1f} {r['without_demo'] / r['exported']:8.0%}")
    n, l, b = (sum(r[k] for r in rows) for k in ("exported", "lines", "without_demo"))
    share = b / max(n, 1)
    print(f"{'total':28} {n:8} {l / max(n, 1):10.1f} {share:8.0%}")
    if a.max is not None and share > a.max: sys.exit(1)

if __name__ == "__main__": main()
