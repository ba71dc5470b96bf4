import sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from make_readme import render

def test_readme_is_generated_from_index():
    assert (ROOT / "README.md").read_text() == render(), "README.md is stale: run python tools/make_readme.py"

def test_readme_has_the_two_setup_commands():
    "Exactly two shell commands: install + the main job (`deeplens demo`), install + the tests."
    text = (ROOT / "README.md").read_text()
    cmds = [l for l in text.splitlines() if l.startswith("python3 -m venv .venv")]
    assert len(cmds) == 2, cmds
    main, tests = cmds
    assert main.endswith("python -m deeplens demo") and "pip install -e \".[dev]\"" in main
    assert "python -m pytest tests" in tests and tests.endswith("nbdev-test")
    from deeplens.cli import build_parser
    assert build_parser().parse_args(["demo"]).command == "demo"
