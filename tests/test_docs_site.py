"""The docs site: tools/build_docs.py builds it offline from nbs/ (nbdev's doc processing + nbconvert).

One build of the whole site (notebooks as committed, no execution: what `--no-exec` does) into a temporary
folder, then checks on the HTML: a page per notebook, every internal link and anchor resolves, nothing is
loaded from another host. A tiny synthetic notebook checks the pieces that the committed notebooks may not
exercise: `show_doc` pages for exported functions, directives, widget bundles shown through their static part,
`.ipynb` links rewritten."""
import json, re, sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse, unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_docs  # noqa: E402


class _Scan(HTMLParser):
    "Collect ids, links (a/area href) and resource references (script src, link href, img src) of one page."
    def __init__(self):
        super().__init__(); self.ids, self.links, self.resources = set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"): self.ids.add(a["id"])
        if tag == "a" and a.get("name"): self.ids.add(a["name"])
        if tag in ("a", "area") and a.get("href") is not None: self.links.append(a["href"])
        if tag == "script" and a.get("src"): self.resources.append(("script", a["src"]))
        if tag == "link" and a.get("href"): self.resources.append(("link", a["href"]))
        if tag == "img" and a.get("src"): self.resources.append(("img", a["src"]))


def _scan(path: Path) -> _Scan:
    s = _Scan(); s.feed(path.read_text()); return s


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    pages = build_docs.build(out, ROOT / "nbs", execute=False, workers=2, proc=out.parent / "proc", quiet=True)
    return out, pages


def test_page_for_every_notebook(site):
    out, pages = site
    nbs = build_docs.find_notebooks(ROOT / "nbs")
    assert len(pages) == len(nbs)
    for nb in nbs:
        rel = nb.relative_to(ROOT / "nbs")
        fm = json.loads(nb.read_text())["cells"][0]
        want = out / build_docs.page_path(rel)
        assert want.exists(), f"no page for {rel} (expected {want.relative_to(out)})"
        text = want.read_text()
        assert '<nav class="sidebar">' in text and "<main>" in text
        # the page's heading is the notebook's title (first markdown cell `# Title`)
        title = "".join(fm["source"]).splitlines()[0].lstrip("# ").strip() if fm["cell_type"] == "markdown" else None
        if title: assert f'<h1 class="title">' in text and build_docs.html.escape(title) in text
    tuts = [p for p in nbs if p.parent.name == "tutorials"]
    assert (out / "index.html").exists()
    for t in tuts:   # every tutorial is linked from every page's sidebar (checked on the home page)
        assert build_docs.page_path(t.relative_to(ROOT / "nbs")).as_posix() in (out / "index.html").read_text()


def test_module_pages_document_exports(site):
    "nbdev's processing ran: each module page has a show_doc entry (anchor) for its documented exports."
    out, _ = site
    from deeplens._modidx import d
    missing = []
    for mod, syms in d["syms"].items():
        for sym, (url, _) in syms.items():
            name = sym.split(".")[-1]
            if name.startswith("_") or sym.count(".") != 2: continue   # public top-level symbols only
            page, _, frag = url.partition("#")
            if not (out / page).exists(): missing.append(url); continue
            if frag not in _scan(out / page).ids: missing.append(url)
    assert not missing, f"{len(missing)} public symbols without a doc anchor, e.g. {missing[:10]}"


def test_internal_links_resolve(site):
    out, pages = site
    ids = {p: _scan(p).ids for p in pages}
    broken = []
    for page in pages:
        scan = _scan(page)
        for href in scan.links + [u for _, u in scan.resources]:
            u = urlparse(href)
            if u.scheme or u.netloc or href.startswith("data:") or href.startswith("mailto:"): continue
            target = page if not u.path else (page.parent / unquote(u.path)).resolve()
            if not target.exists(): broken.append(f"{page.relative_to(out)} -> {href}"); continue
            if u.fragment and target.suffix == ".html":
                t_ids = ids.get(target) or _scan(target).ids
                if unquote(u.fragment) not in t_ids: broken.append(f"{page.relative_to(out)} -> {href} (no anchor)")
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(broken[:30])


def test_no_external_resources(site):
    out, pages = site
    for page in pages:
        for kind, url in _scan(page).resources:
            assert not re.match(r"^(https?:)?//", url), f"{page.relative_to(out)} loads {kind} {url} from another host"
        assert "unpkg.com" not in page.read_text() and "cdn.jsdelivr" not in page.read_text()


def _cell(src, kind="code", outputs=()):
    c = {"cell_type": kind, "metadata": {}, "source": src}
    if kind == "code": c.update(outputs=list(outputs), execution_count=None)
    return c


def test_synthetic_notebook(tmp_path):
    "show_doc for an exported function, hidden cells gone, widget bundle -> static html, ipynb links -> html."
    nbs = tmp_path / "nbs"; (nbs / "tutorials").mkdir(parents=True)
    widget = {"output_type": "display_data", "metadata": {}, "data": {
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/html": "<div class='static-form'>static widget</div>", "text/plain": "Widget()"}}
    live_only = {"output_type": "display_data", "metadata": {}, "data": {
        "application/vnd.jupyter.widget-view+json": {"model_id": "def", "version_major": 2, "version_minor": 0},
        "text/plain": "LiveOnly()"}}
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3", "language": "python",
          "display_name": "Python 3"}}, "cells": [
        _cell("# Sample module\n> A module for the test.", "markdown"),
        _cell("#| default_exp sample_mod"),
        _cell("#| hide\nsecret_hidden_cell = 1"),
        _cell("#| export\ndef twice(x: int) -> int:\n    \"Double `x`.\"\n    return 2 * x"),
        _cell("See [the tutorial](tutorials/01_t.ipynb#part-two) and [`twice`](#twice).", "markdown"),
        _cell("twice(2)", outputs=[widget, live_only]),
        _cell("::: {.callout-note}\nA note.\n:::", "markdown")]}
    (nbs / "00_sample.ipynb").write_text(json.dumps(nb))
    tut = dict(nb, cells=[_cell("# A tutorial\n> t", "markdown"), _cell("## Part two\nBack to [home](../index.ipynb)", "markdown")])
    (nbs / "tutorials" / "01_t.ipynb").write_text(json.dumps(tut))
    (nbs / "index.ipynb").write_text(json.dumps(dict(nb, cells=[_cell("# Home\n> h", "markdown")])))
    out = tmp_path / "site"
    pages = build_docs.build(out, nbs, execute=False, workers=1, proc=tmp_path / "proc", quiet=True)
    assert sorted(p.relative_to(out).as_posix() for p in pages) == ["index.html", "sample.html", "tutorials/t.html"]
    page = (out / "sample.html").read_text()
    assert "Sample module" in page and "A module for the test." in page
    assert 'id="twice"' in page and "Double" in page            # show_doc added by nbdev's processor
    assert "secret_hidden_cell" not in page and "default_exp" not in page and "#|" not in page
    assert "static widget" in page and "widget-view+json" not in page
    assert "LiveOnly()" in page                                  # live-only widget: its text form
    assert 'href="tutorials/t.html#part-two"' in page
    assert 'class="callout-note"' in page
    tpage = (out / "tutorials" / "t.html").read_text()
    assert 'href="../index.html"' in tpage and 'id="part-two"' in tpage
    assert 'href="../styles.css"' in tpage


def test_execute_mode(tmp_path):
    "--exec runs notebooks like nbdev-test (flagged cells skipped), caches the result, and shows the outputs."
    nbs = tmp_path / "nbs"; nbs.mkdir()
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3", "language": "python",
          "display_name": "Python 3"}}, "cells": [
        _cell("# Executed\n> e", "markdown"),
        _cell("x = 6 * 7\nprint('the answer is', x)"),
        _cell("#| slow\nraise RuntimeError('slow cells are skipped')"),
        _cell("from IPython.display import HTML\nHTML('<b class=\"rich\">rich output</b>')")]}
    (nbs / "index.ipynb").write_text(json.dumps(nb))
    out, proc = tmp_path / "site", tmp_path / "proc"
    build_docs.build(out, nbs, execute=True, workers=1, proc=proc, quiet=True)
    page = (out / "index.html").read_text()
    assert "the answer is 42" in page and '<b class="rich">rich output</b>' in page
    cached = list((proc / "_exec").glob("*/index.ipynb"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime
    build_docs.build(out, nbs, execute=True, workers=1, proc=proc, quiet=True)   # unchanged: not re-executed
    assert cached[0].stat().st_mtime == mtime
    nb["cells"].append(_cell("raise ValueError('boom')"))
    (nbs / "index.ipynb").write_text(json.dumps(nb))
    with pytest.raises(RuntimeError, match="boom"):
        build_docs.build(out, nbs, execute=True, workers=1, proc=proc, quiet=True)
