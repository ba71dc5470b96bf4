"""The view layer is a leaf: no module below the displays (notebook number < 50) imports charts, display, widgets,
style or the display registry, at module level or inside a function, in any import form."""
import ast, re
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1] / "deeplens"
NBS = PKG.parent / "nbs"
VIEW = {"style", "registry", "charts", "widgets", "display"}
# Imports still waiting for another slice of issue 17 to land: module -> view modules it may import until then.
PENDING: dict = {}                         # imports waiting for another slice of issue 17 (none now)

def numbers() -> dict[str, int]:
    "`{module: notebook number}` from the `#| default_exp` line of each numbered notebook."
    out = {}
    for nb in NBS.glob("[0-9]*.ipynb"):
        m = re.search(r'#\|\s*default_exp\s+([\w.]+)', nb.read_text())
        if m: out[m.group(1)] = int(re.match(r"\d+", nb.name).group())
    return out

def imported(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    "`(line, deeplens module)` for every import anywhere in `tree`: `import deeplens.x`, `from deeplens(.x) import y`, relative forms."
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out += [(n.lineno, a.name.split(".")[1]) for a in n.names if a.name.startswith("deeplens.")]
        elif isinstance(n, ast.ImportFrom):
            if n.level == 0 and n.module and (n.module == "deeplens" or n.module.startswith("deeplens.")): parts = n.module.split(".")[1:]
            elif n.level == 1: parts = n.module.split(".") if n.module else []
            else: continue
            if parts: out.append((n.lineno, parts[0]))
            else: out += [(n.lineno, a.name) for a in n.names]          # from deeplens import charts / from . import charts
    return out

def violations(source: str, module: str, num: dict) -> list[str]:
    if num.get(module, 99) >= 50: return []
    allowed = PENDING.get(module, set())
    return [f"{module}.py:{line} imports deeplens.{m}" for line, m in imported(ast.parse(source), module)
            if m in VIEW and m not in allowed]

def test_numbers_cover_the_modules():
    num = numbers()
    assert {"patching", "lens", "charts", "display", "registry", "style"} <= set(num)
    assert all(num[m] >= 50 for m in VIEW)                            # 50a_registry counts as 50: the display layer
    order = [re.search(r'default_exp\s+(\w+)', nb.read_text()).group(1) for nb in sorted(NBS.glob("5*.ipynb"))]
    assert [m for m in order if m in VIEW] == ["style", "registry", "charts", "widgets", "display"]   # dependency order

def test_no_module_below_the_displays_imports_them():
    num = numbers()
    bad = [v for f in sorted(PKG.glob("*.py")) for v in violations(f.read_text(), f.stem, num)]
    assert not bad, "the display layer must attach itself from above (deeplens.display), not be imported:\n" + "\n".join(bad)

def test_pending_exceptions_are_still_needed():
    "An allowance in PENDING that the module no longer needs must go, so the check stays as strict as the code allows."
    for module, allowed in PENDING.items():
        used = {m for _, m in imported(ast.parse((PKG / f"{module}.py").read_text()), module)}
        assert allowed <= used, f"{module}.py no longer imports {sorted(allowed - used)}: remove it from PENDING"

@pytest.mark.parametrize("src", ["from deeplens.charts import Chart", "import deeplens.display", "from . import widgets",
                                 "from .style import DIVERGING", "from deeplens import charts as C",
                                 "def f():\n    from deeplens.registry import register", "class A:\n    def m(self):\n        import deeplens.charts"])
def test_the_walk_sees_every_import_form(src):
    assert violations(src, "patching", {"patching": 41}) == [f"patching.py:{src.count(chr(10)) + 1} imports deeplens.{m}"
                                                              for m in [next(v for v in VIEW if v in src)]]

def test_the_walk_allows_lower_and_unrelated_imports():
    src = "import torch\nfrom .model import HookedModel\nfrom deeplens.cache import ActivationCache\nimport styles_lib"
    assert violations(src, "patching", {"patching": 41}) == []
    assert violations("from .charts import Chart", "embeddings", {"embeddings": 61}) == []   # above the displays: allowed
