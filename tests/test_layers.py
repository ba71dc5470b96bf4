"""The package keeps the layering of design.md. Each module is exported from one numbered notebook, and the number is
the dependency order: core 00–09, data 10–19, dictionaries 20–29, features 30–39, circuits 40–49, displays 50–59,
apps 60–79 (a letter after the number sorts inside it: `00a_sites` between `00_adapters` and `01_hooks`). This file
walks every import in `deeplens/*.py` with `ast` — at module level and inside functions, in every form — and checks:

- no module imports one with a higher number (so the displays are a leaf: nothing below 50 imports them);
- no private name (`_x`) is imported from another module;
- `__all__` lists only names the module defines at its top level, and no method attached to a class (`@patch`)."""
import ast, re
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1] / "deeplens"
NBS = PKG.parent / "nbs"
LAYERS = {0: "core", 10: "data", 20: "dictionaries", 30: "features", 40: "circuits", 50: "displays", 60: "apps"}

def numbers() -> dict[str, float]:
    "`{module: notebook number}` from each numbered notebook's `#| default_exp`; `50a` is 50.1."
    out = {}
    for nb in NBS.glob("[0-9]*.ipynb"):
        m = re.search(r"#\|\s*default_exp\s+(\w+)", nb.read_text())
        n = re.match(r"(\d+)([a-z]?)_", nb.name)
        if m and n: out[m[1]] = int(n[1]) + (ord(n[2]) - 96) / 10 if n[2] else int(n[1])
    return out

def layer(n: float) -> str: return LAYERS[max(k for k in LAYERS if k <= n)]

def imports(tree: ast.AST):
    "`(line, deeplens module, imported names)` for every import of the package anywhere in `tree`."
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            yield from ((n.lineno, a.name.split(".")[1], []) for a in n.names if a.name.startswith("deeplens."))
        elif isinstance(n, ast.ImportFrom):
            if n.level == 0 and n.module and (n.module == "deeplens" or n.module.startswith("deeplens.")):
                parts = n.module.split(".")[1:]
            elif n.level == 1: parts = n.module.split(".") if n.module else []
            else: continue
            if parts: yield n.lineno, parts[0], [a.name for a in n.names]
            else: yield from ((n.lineno, a.name, []) for a in n.names)        # from deeplens import charts / from . import charts

def upward(src: str, module: str, num: dict) -> list[str]:
    return [f"{module}.py:{line} ({num[module]}, {layer(num[module])}) imports deeplens.{m} ({num[m]}, {layer(num[m])})"
            for line, m, _ in imports(ast.parse(src)) if m in num and num[m] > num[module]]

def private(src: str, module: str) -> list[str]:
    return [f"{module}.py:{line} imports {name} from deeplens.{m}" for line, m, names in imports(ast.parse(src))
            for name in names if m != module and name.startswith("_") and not name.startswith("__")]

def top_level(tree: ast.Module) -> tuple[set, set]:
    "Names a module defines at its top level, and those of them that are methods (first parameter `self`)."
    names, methods = set(), set()
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
            if not isinstance(n, ast.ClassDef) and n.args.args and n.args.args[0].arg == "self": methods.add(n.name)
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                if isinstance(t, (ast.Name, ast.Tuple)): names |= {x.id for x in ast.walk(t) if isinstance(x, ast.Name)}
    return names, methods

def bad_all(src: str) -> list[str]:
    tree = ast.parse(src)
    names, methods = top_level(tree)
    for n in tree.body:
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets):
            listed = set(ast.literal_eval(n.value))
            return sorted((listed - names) | (listed & methods))
    return []

MODULES = sorted(p for p in PKG.glob("*.py") if not p.name.startswith("_"))

def test_every_module_comes_from_a_numbered_notebook():
    num = numbers()
    assert {p.stem for p in MODULES} <= set(num), sorted({p.stem for p in MODULES} - set(num))
    display = [m for m in sorted(num, key=num.get) if layer(num[m]) == "displays"]
    assert display == ["style", "registry", "charts", "widgets", "display"]

def test_no_module_imports_a_higher_number():
    num = numbers()
    bad = [v for p in MODULES for v in upward(p.read_text(), p.stem, num)]
    assert not bad, "a module imports only its own or lower numbers (displays attach themselves from above):\n" + "\n".join(bad)

def test_no_private_name_crosses_modules():
    bad = [v for p in MODULES for v in private(p.read_text(), p.stem)]
    assert not bad, "\n".join(bad)

def test_all_lists_only_top_level_api():
    bad = {p.stem: b for p in MODULES if (b := bad_all(p.read_text()))}
    assert not bad, bad

# The walk itself: it must see every import form, and nothing else.
NUM = {"patching": 41, "charts": 51, "display": 53, "widgets": 52, "style": 50, "registry": 50.1, "model": 3, "cache": 2, "embeddings": 61}

@pytest.mark.parametrize("src", ["from deeplens.charts import Chart", "import deeplens.display", "from . import widgets",
                                 "from .style import DIVERGING", "from deeplens import charts as C",
                                 "def f():\n    from deeplens.registry import register",
                                 "class A:\n    def m(self):\n        import deeplens.charts"])
def test_the_walk_sees_every_import_form(src):
    assert len(upward(src, "patching", NUM)) == 1
    assert upward(src, "patching", NUM)[0].startswith(f"patching.py:{src.count(chr(10)) + 1} ")

def test_the_walk_allows_lower_and_unrelated_imports():
    src = "import torch\nfrom .model import HookedModel\nfrom deeplens.cache import ActivationCache\nimport styles_lib"
    assert upward(src, "patching", NUM) == [] and private(src, "patching") == []
    assert upward("from .charts import Chart", "embeddings", NUM) == []

def test_private_and_all_checks():
    assert private("from .model import _encode, HookedModel\nfrom .patching import _x", "patching") == ["patching.py:1 imports _encode from deeplens.model"]
    src = "from .x import y\n__all__ = ['f', 'g', 'y', 'C']\ndef f(self: int): pass\ndef g(a): pass\nclass C: pass"
    assert bad_all(src) == ["f", "y"]
