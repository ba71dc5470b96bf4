"""Write README.md from nbs/index.ipynb (markdown cells as they are, code cells as python blocks; links to notebooks,
relative to nbs/ in the notebook, made relative to the repository root).

nbdev's own `nbdev-readme` needs quarto; this keeps the README generated from the notebook without it.
Run: python tools/make_readme.py  (tests/test_readme.py checks the two are in sync)."""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def render(nb_path=ROOT / "nbs" / "index.ipynb") -> str:
    cells = json.loads(Path(nb_path).read_text())["cells"]
    out = []
    for c in cells:
        src = "".join(c["source"])
        if c["cell_type"] == "markdown":
            src = src.replace("\n> ", "\n\n> ", 1) if src.startswith("# ") else src
            src = re.sub(r"\]\((?!https?:|#|/)([^)]+\.ipynb)\)", r"](nbs/\1)", src)
            out.append(src.strip())
        elif c["cell_type"] == "code":
            lines = [l for l in src.splitlines() if not l.startswith("#|")]
            if lines: out.append("```python\n" + "\n".join(lines).strip() + "\n```")
    return "<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n\n" + "\n\n".join(out) + "\n"

if __name__ == "__main__":
    (ROOT / "README.md").write_text(render())
    print("wrote README.md", file=sys.stderr)
