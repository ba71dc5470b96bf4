import sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from make_readme import render

def test_readme_is_generated_from_index():
    assert (ROOT / "README.md").read_text() == render(), "README.md is stale: run python tools/make_readme.py"

def test_readme_has_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert "python -m deeplens info" in text and "python -m pytest tests" in text and "nbdev-test" in text
