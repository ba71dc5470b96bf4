"""Build the deeplens docs site into `_docs/` offline, without quarto.

`nbdev-docs` pre-processes every notebook with nbdev's own processors and then hands the result to quarto.
quarto is not installable here (the `quarto-cli` PyPI sdist downloads a binary), so this script keeps the
first half exactly -- nbdev's `FilterDefaults` (frontmatter, `show_doc` cells for every exported symbol,
exported/hidden cells removed, backticked names linked to their pages) -- and replaces the second half:
nbconvert renders each processed notebook to HTML, and a small page template adds a sidebar.

    python tools/build_docs.py                # execute notebooks (cached by content), then render
    python tools/build_docs.py --no-exec      # render the notebooks as committed (fast)
    python tools/build_docs.py --out DIR      # somewhere other than _docs/

Notebook execution mirrors `nbdev-test`: cells flagged with `tst_flags` (`slow`, `notest`) are skipped.
Executed copies are cached under `_proc/_exec/` by a hash of the source notebook, so a rebuild after editing
one notebook re-executes only that one. Every page is self-contained: no script or stylesheet is loaded
from another host, widget outputs are shown through their static parts (`text/html`, `image/svg+xml`,
`image/png`), and the build fails if any external `<script src>`/`<link href>` survives.
"""
from __future__ import annotations
import argparse, concurrent.futures as cf, hashlib, html, json, multiprocessing as mp, os, re, shutil, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
STATIC = ("text/html", "image/svg+xml", "image/png", "image/jpeg", "text/markdown", "text/latex")
SECTIONS = [(0, "Core"), (10, "Activation data"), (20, "Sparse autoencoders"), (30, "Features"),
            (40, "Circuits"), (50, "Displays"), (60, "Analyzer"), (70, "Command line")]


# ----------------------------------------------------------------------------------------------- discovery
def find_notebooks(nbs: Path) -> list[Path]:
    "Every notebook under `nbs` (recursively), skipping hidden and `_`-prefixed files and folders, as nbdev does."
    out = []
    for p in sorted(nbs.rglob("*.ipynb")):
        rel = p.relative_to(nbs)
        if any(part.startswith((".", "_")) for part in rel.parts): continue
        out.append(p)
    if not out: raise FileNotFoundError(f"no notebooks under {nbs}: pass --nbs pointing at the notebook folder")
    return out


def page_path(rel: Path) -> Path:
    "Site path of the page for notebook `rel` (relative to nbs/): nbdev's rule, numeric prefix stripped."
    from nbdev.config import nbpath2html
    return nbpath2html(rel)


# ----------------------------------------------------------------------------------------------- execution
def _worker_module():
    "This module under an importable name (spawned workers cannot unpickle functions of a `__main__` script)."
    if __name__ != "__main__": return sys.modules[__name__]
    if str(Path(__file__).parent) not in sys.path: sys.path.insert(0, str(Path(__file__).parent))
    import build_docs
    return build_docs


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes() + Path(__file__).read_bytes()).hexdigest()[:16]


def _exec_one(src: str, dst: str, flags: str, timeout: int) -> tuple[str, float, str]:
    "Run notebook `src` like `nbdev-test` (skipping `flags` cells) and write it with outputs to `dst`."
    os.environ["IN_TEST"] = "1"
    from fastcore.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.process import NBProcessor
    from nbdev.test import _skip_cell
    t0, src = time.time(), Path(src)
    nb = NBProcessor(src, rm_directives=False, process=True).nb
    no_eval = _skip_cell(nb, flags.split(), None)
    try:
        with working_directory(src.parent):
            CaptureShell(src, profile=False).run_all(nb, exc_stop=True, preproc=no_eval, cell_timeout=timeout)
    except Exception as e:
        return str(src), time.time() - t0, f"{type(e).__name__}: {e}"
    raw = read_nb(src)   # write outputs into the untouched source (directives intact) so nbdev's processors see them
    for c_raw, c_run in zip(raw.cells, nb.cells):
        if c_raw.cell_type == "code":
            c_raw["outputs"] = c_run.get("outputs", [])
            c_raw["execution_count"] = c_run.get("execution_count")
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    write_nb(raw, Path(dst))
    return str(src), time.time() - t0, ""


def execute_all(nbs: list[Path], root: Path, cache: Path, workers: int, quiet=False) -> dict[Path, Path]:
    """Executed copies of `nbs` (from `cache` when the source is unchanged); raises if any notebook fails.
    A copy keeps its notebook's name (`cache/<hash>/<path under root>`): nbdev derives the page name from it."""
    from nbdev.config import get_config
    cfg = get_config()
    flags, timeout = str(cfg.get("tst_flags", "")), int(cfg.get("cell_timeout", 600) or 600)
    cache.mkdir(parents=True, exist_ok=True)
    out, todo = {}, []
    for p in nbs:
        dst = cache / _sha(p) / p.relative_to(root)
        out[p] = dst
        if not dst.exists(): todo.append((p, dst))
    if todo:
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo))), mp_context=ctx,
                                    max_tasks_per_child=1) as ex:
            futs = [ex.submit(_worker_module()._exec_one, str(p), str(d), flags, timeout) for p, d in todo]
            errors = []
            for f in cf.as_completed(futs):
                src, dt, err = f.result()
                if not quiet: print(f"  executed {Path(src).name} in {dt:.1f}s{' FAILED' if err else ''}", file=sys.stderr)
                if err: errors.append(f"{src}: {err}")
        if errors: raise RuntimeError("notebook execution failed:\n" + "\n".join(errors))
    keep = {d.relative_to(cache).parts[0] for d in out.values()}
    for old in cache.iterdir():   # executed copies of older versions
        if old.is_dir() and old.name not in keep and re.fullmatch(r"[0-9a-f]{16}", old.name): shutil.rmtree(old)
    return out


# ----------------------------------------------------------------------------------------------- nbdev processing
def _patch_show_doc_exec():
    """nbdev evaluates every cell that *contains* an import to build `show_doc` output, and stops the whole build
    when such a cell also uses names defined by cells it does not run (it warns "Found cells containing imports
    and other code"). Here such a mixed cell only has its top-level import statements evaluated (the rest of the
    cell is example/test code, which `show_doc` never needs)."""
    import ast, nbdev.processors as P
    if getattr(P, "_deeplens_patched", False): return
    orig = P._do_eval

    def _do_eval(cell):
        res = orig(cell)
        if res and not (cell.directives_.keys() & {"export", "exports", "exporti", "exec_doc"}):
            trees = cell.parsed_() or []
            imps = [t for t in trees if isinstance(t, (ast.Import, ast.ImportFrom))]
            if len(imps) < len(trees) and not P._show_docs(trees):
                cell._src_for_docs = "\n".join(ast.unparse(t) for t in imps) or "pass"
        return res
    P._do_eval = _do_eval
    orig_call = P.exec_show_docs.__call__

    def __call__(self, cell):
        alt = None
        if P._do_eval(cell) and getattr(cell, "_src_for_docs", None) is not None:
            alt, cell.source = cell.source, cell._src_for_docs
        try: return orig_call(self, cell)
        finally:
            if alt is not None: cell.source = alt
    P.exec_show_docs.__call__ = __call__
    P._deeplens_patched = True


def nbdev_process(src: Path, dst: Path):
    "nbdev's docs pre-processing of one notebook (what `nbdev_proc_nbs` writes into `_proc/`)."
    from fastcore.nbio import read_nb, write_nb
    from nbdev.processors import FilterDefaults
    _patch_show_doc_exec()
    nb = read_nb(src)
    os.environ["IN_TEST"] = "1"
    try: FilterDefaults()(nb)
    finally: os.environ.pop("IN_TEST", None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, dst)


def _process_one(src: str, dst: str) -> tuple[str, float]:
    t0 = time.time()
    nbdev_process(Path(src), Path(dst))
    return src, time.time() - t0


def process_all(inputs: dict[Path, Path], nbs: Path, cache: Path, workers: int, quiet=False) -> dict[Path, Path]:
    """nbdev-processed copies of the notebooks, cached under `cache` by a hash of the (executed) notebook, this
    script and the symbol index (the doc links come from it); the others are processed in parallel."""
    import nbdev.doclinks
    nbdev.doclinks._build_modidx()
    from nbdev.config import get_config
    modidx = (get_config().lib_path / "_modidx.py").read_bytes()
    out, todo = {}, []
    for s, inp in inputs.items():
        key = hashlib.sha256(inp.read_bytes() + modidx + Path(__file__).read_bytes()).hexdigest()[:16]
        rel = s.relative_to(nbs)
        dst = cache / rel.parent / f"{rel.stem}-{key}.ipynb"
        out[s] = dst
        if not dst.exists(): todo.append((inp, dst))
    if todo:
        if workers > 1 and len(todo) > 1:
            ctx = mp.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as ex:
                res = list(ex.map(_worker_module()._process_one, [str(i) for i, _ in todo], [str(d) for _, d in todo]))
        else: res = [_process_one(str(i), str(d)) for i, d in todo]
        if not quiet:
            for src, dt in res: print(f"  processed {Path(src).name} in {dt:.1f}s", file=sys.stderr)
    keep = set(out.values())
    for old in cache.rglob("*.ipynb"):
        if old not in keep: old.unlink()
    return out


# ----------------------------------------------------------------------------------------------- quarto directives
_CELL_KEYS = {"cell_type", "id", "metadata", "source", "outputs", "execution_count", "attachments"}
_re_dir = re.compile(r"^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")


def apply_quarto_directives(nb: dict) -> dict:
    "Do what quarto does with the `#| key: value` cell options nbdev leaves behind, then drop them."
    cells = []
    for c in nb["cells"]:
        src = "".join(c.get("source", ""))
        if c["cell_type"] == "code":
            lines, opts = src.splitlines(), {}
            while lines and _re_dir.match(lines[0]):
                k, v = _re_dir.match(lines[0]).groups(); opts[k] = v.strip("'\"").lower(); lines.pop(0)
            c["source"] = "\n".join(lines)
            if opts.get("include") == "false": continue
            tags = set(c.setdefault("metadata", {}).get("tags", []))
            if opts.get("echo") == "false" or not c["source"].strip(): tags.add("remove_input")
            if opts.get("output") == "false": c["outputs"] = []
            c["metadata"]["tags"] = sorted(tags)
            c["outputs"] = [static_output(o) for o in c.get("outputs", [])]
            if "remove_input" in tags and not c["outputs"]: continue
        elif c["cell_type"] == "markdown":
            if not src.strip(): continue
            c["source"] = _fenced_divs(src)
        for k in [k for k in c if k not in _CELL_KEYS]: c.pop(k)
        c.get("metadata", {}).pop("execution", None)
        cells.append(c)
    nb["cells"] = cells
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def static_output(o: dict) -> dict:
    "A display bundle without its live-widget part whenever it has a static one (and without vega JSON)."
    if isinstance(o.get("text"), list): o["text"] = "".join(o["text"])      # multi-line strings as stored on disk
    for k, v in (o.get("data") or {}).items():
        if isinstance(v, list) and not k.endswith("json"): o["data"][k] = "".join(v)
    d = o.get("data")
    if not d: return o
    if any(k in d for k in STATIC):
        for k in [k for k in d if k == WIDGET_VIEW or k.startswith("application/vnd.vega")]: d.pop(k)
    elif WIDGET_VIEW in d:
        d.pop(WIDGET_VIEW)
        d.setdefault("text/plain", "(interactive widget: run the notebook to see it)")
    return o


def _fenced_divs(md: str) -> str:
    "quarto/pandoc fenced divs (`::: {.callout-note}` ... `:::`) to HTML divs mistune passes through."
    def open_(m):
        cls = " ".join(c.lstrip(".") for c in re.findall(r"\.[\w-]+", m.group(1) or ""))
        return f'\n<div class="{cls or "fenced"}" markdown="1">\n'
    md = re.sub(r"^:::+\s*\{([^}]*)\}\s*$", open_, md, flags=re.M)
    md = re.sub(r"^:::+\s*([\w-]+)\s*$", lambda m: f'\n<div class="{m.group(1)}">\n', md, flags=re.M)
    return re.sub(r"^:::+\s*$", "\n</div>\n", md, flags=re.M)


def _source_links(md: str, git_url: str) -> str:
    "show_doc's `[source](url){target=...}`: a real link when the project has a `git_url`, otherwise nothing."
    def f(m):
        url = m.group(1)
        if git_url and url.startswith("http"):
            return f'<a class="source-link" href="{html.escape(url)}" target="_blank">source</a>'
        return ""
    return re.sub(r"\[source\]\(([^)]*)\)\{[^}]*\}", f, md)


# ----------------------------------------------------------------------------------------------- rendering
def frontmatter(nb: dict) -> dict:
    "Title etc. from nbdev's frontmatter raw cell (removed from `nb`)."
    import yaml
    for i, c in enumerate(nb["cells"]):
        src = "".join(c.get("source", ""))
        if c["cell_type"] == "raw" and src.lstrip().startswith("---"):
            body = src.strip().strip("-").strip()
            del nb["cells"][i]
            return yaml.safe_load(body) or {}
    return {}


def _anchor(text: str) -> str:
    "pandoc's auto identifier (what quarto gives a heading and what nbdev's doc links point at)."
    t = re.sub(r"<[^>]+>", "", html.unescape(text)).strip().lower()
    t = re.sub(r"[^\w\s.\-]", "", t)
    t = re.sub(r"\s+", "-", t)
    t = re.sub(r"^[^a-z_]+", "", t)
    return t or "section"


def _fix_headings(body: str) -> str:
    seen: dict[str, int] = {}

    def f(m):
        lvl, inner = m.group(1), m.group(3)
        inner = re.sub(r'<a class="anchor-link"[^>]*>.*?</a>', "", inner)
        a = _anchor(inner)
        n = seen.get(a, 0); seen[a] = n + 1
        if n: a = f"{a}-{n}"
        return f'<h{lvl} id="{a}">{inner}<a class="anchor-link" href="#{a}">#</a></h{lvl}>'
    return re.sub(r"<h([1-6])((?:\s[^>]*)?)>(.*?)</h\1>", f, body, flags=re.S)


def _fix_links(body: str, page: Path, nb_pages: dict[str, Path]) -> str:
    "Root-relative and `.ipynb` links to page-relative `.html` links, so the site works from `file://`."
    def f(m):
        attr, q, url = m.group(1), m.group(2), m.group(3)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^//|^#", url, re.I): return m.group(0)
        path, _, frag = url.partition("#")
        if path.endswith(".ipynb"):
            target = (Path(path.lstrip("/")) if path.startswith("/") else (page.parent / path))
            key = os.path.normpath(target.as_posix())
            path = "/" + nb_pages.get(key, page_path(Path(key))).as_posix()
        if path.startswith("/"):
            path = os.path.relpath(path.lstrip("/") or ".", page.parent.as_posix() or ".")
            if path == ".": path = "index.html"
        return f"{attr}={q}{path}{'#' + frag if frag else ''}{q}"
    return re.sub(r'\b(href|src)=(["\'])(.*?)\2', f, body)


_EXPORTER = None


def render_body(nb: dict) -> str:
    "HTML of the cells (nbconvert's `basic` template, mistune markdown, no scripts)."
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    global _EXPORTER
    if _EXPORTER is None:
        c = Config()
        c.TagRemovePreprocessor.enabled = True
        c.TagRemovePreprocessor.remove_input_tags = {"remove_input"}
        c.HTMLExporter.exclude_anchor_links = True
        _EXPORTER = HTMLExporter(config=c, template_name="basic")
    body, _ = _EXPORTER.from_notebook_node(nbformat.from_dict(nb))
    body = re.sub(r"<script[^>]*>\s*</script>", "", body)
    return body


_re_id = re.compile(r'\bid=["\']([^"\']+)["\']')
_re_autolink = re.compile(r'<a href="([^"#:]*\.html)#([^"]+)">(<code>[^<]*</code>)</a>')


def unlink_dead_autolinks(out: Path, pages: list[Path]) -> list[str]:
    """nbdev links every backticked name it knows, private helpers and undocumented methods included; quarto
    leaves those anchors dead. Here such a link (its text is just `code`) becomes plain code. Returns them."""
    ids = {p.resolve(): set(_re_id.findall(p.read_text())) for p in pages}
    dropped = []
    for p in pages:
        text = p.read_text()

        def f(m):
            target = (p.parent / m.group(1)).resolve()
            if target in ids and m.group(2) not in ids[target]:
                dropped.append(f"{m.group(1)}#{m.group(2)}"); return m.group(3)
            return m.group(0)
        new = _re_autolink.sub(f, text)
        if new != text: p.write_text(new)
    return dropped


CSS = """
*{box-sizing:border-box}body{margin:0;font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330}
a{color:#1a5fb4;text-decoration:none}a:hover{text-decoration:underline}
nav.sidebar{position:fixed;top:0;bottom:0;left:0;width:250px;overflow:auto;padding:1.2em 1em;background:#f6f7f9;border-right:1px solid #e1e4e8;font-size:14px}
nav.sidebar .brand{font-weight:700;font-size:18px;display:block;margin-bottom:.8em;color:#1d2330}
nav.sidebar h4{margin:1.1em 0 .3em;font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:#57606a}
nav.sidebar ul{list-style:none;margin:0;padding:0}nav.sidebar li a{display:block;padding:.15em .4em;border-radius:4px;color:#24292f}
nav.sidebar li a.active{background:#dde7f5;font-weight:600}
main{margin-left:250px;padding:1.5em 3em 4em;max-width:1150px}
header.title h1{margin-bottom:.1em}header.title p.description{color:#57606a;font-size:1.1em;margin-top:.2em}
h1,h2,h3,h4{line-height:1.25}.anchor-link{visibility:hidden;margin-left:.3em;color:#8c959f}h1:hover .anchor-link,h2:hover .anchor-link,h3:hover .anchor-link,h4:hover .anchor-link{visibility:visible}
pre,code{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
code{background:#f3f4f6;padding:.1em .3em;border-radius:3px}pre code{background:none;padding:0}
.jp-InputArea pre,.input_area pre,div.highlight pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:6px;padding:.7em 1em;overflow:auto}
.jp-OutputArea pre,.output_area pre{background:#fff;border-left:3px solid #d0d7de;padding:.3em .8em;overflow:auto;margin:.3em 0}
.prompt,.jp-InputPrompt,.jp-OutputPrompt{display:none}
.output_subarea,.jp-OutputArea-output{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;vertical-align:top}
svg{max-width:100%;height:auto}img{max-width:100%}
.source-link{float:right;font-size:smaller}
.callout-note,.callout-tip,.callout-warning,.callout-important,.fenced{border-left:4px solid #1a5fb4;background:#f3f7fd;padding:.4em 1em;margin:1em 0}
.callout-warning,.callout-important{border-color:#bf8700;background:#fff8e6}
footer{margin-top:3em;color:#8c959f;font-size:12px}
.highlight .k,.highlight .kn,.highlight .kc,.highlight .ow{color:#cf222e}.highlight .s,.highlight .s1,.highlight .s2,.highlight .sa{color:#0a3069}
.highlight .c1,.highlight .c,.highlight .cm{color:#6e7781;font-style:italic}.highlight .mi,.highlight .mf{color:#0550ae}.highlight .nf,.highlight .nc{color:#8250df}
"""


def sidebar(pages: list[dict], current: Path) -> str:
    "Home, tutorials, then module pages grouped by their notebook number."
    def link(p):
        href = os.path.relpath(p["path"].as_posix(), current.parent.as_posix() or ".")
        cls = ' class="active"' if p["path"] == current else ""
        return f'<li><a{cls} href="{href}">{html.escape(p["title"])}</a></li>'
    home = [p for p in pages if p["path"].as_posix() == "index.html"]
    tuts = [p for p in pages if p["rel"].parts[0] == "tutorials" and len(p["rel"].parts) > 1]
    rest = [p for p in pages if p not in home and p not in tuts]
    out = [f'<a class="brand" href="{os.path.relpath("index.html", current.parent.as_posix() or ".")}">deeplens</a>']
    if home: out.append("<ul>" + "".join(link(p) for p in home) + "</ul>")
    if tuts: out.append("<h4>Tutorials</h4><ul>" + "".join(link(p) for p in tuts) + "</ul>")
    groups: dict[str, list] = {}
    for p in rest:
        m = re.match(r"(\d+)", p["rel"].name)
        n = int(m.group(1)) if m else 999
        name = next((nm for lo, nm in reversed(SECTIONS) if n >= lo), "Other") if n != 999 else "Other"
        groups.setdefault(name, []).append(p)
    for _, nm in SECTIONS + [(0, "Other")]:
        if nm in groups: out.append(f"<h4>{nm}</h4><ul>" + "".join(link(p) for p in groups.pop(nm)) + "</ul>")
    return "\n".join(out)


def page_html(title, description, body, nav, css_href) -> str:
    desc = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(description))
    desc = f'<p class="description">{desc}</p>' if description else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)} – deeplens</title><link rel="stylesheet" href="{css_href}"></head>\n'
            f'<body><nav class="sidebar">{nav}</nav>\n<main><header class="title"><h1 class="title">{html.escape(title)}</h1>{desc}</header>\n'
            f'{body}\n<footer>Generated from the notebooks in <code>nbs/</code> by <code>tools/build_docs.py</code>.</footer></main></body></html>\n')


_re_ext = re.compile(r'<(script|link)\b[^>]*\b(?:src|href)=["\'](?:https?:)?//', re.I)


def build(out: Path = ROOT / "_docs", nbs: Path = ROOT / "nbs", execute=True, workers=None, proc: Path | None = None,
          quiet=False) -> list[Path]:
    "Build the site into `out`; returns the written pages."
    from nbdev.config import get_config
    t0 = time.time()
    os.chdir(ROOT)
    git_url = get_config().get("git_url", "") or ""
    proc = proc or ROOT / "_proc"
    srcs = find_notebooks(nbs)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    inputs = execute_all(srcs, nbs, proc / "_exec", workers, quiet) if execute else {p: p for p in srcs}

    pages, nb_pages = [], {}
    done = process_all({s: inputs[s] for s in srcs}, nbs, proc / "_docs_nbs", workers, quiet)
    for s in srcs:
        rel = s.relative_to(nbs)
        nb = json.loads(done[s].read_text())
        fm = frontmatter(nb)
        path = rel.parent / fm["output-file"] if fm.get("output-file") else page_path(rel)
        nb_pages[os.path.normpath(rel.as_posix())] = path
        pages.append(dict(rel=rel, path=path, nb=nb, title=str(fm.get("title") or rel.stem),
                          description=str(fm.get("description") or "")))
    if len({p["path"] for p in pages}) != len(pages):
        raise ValueError("two notebooks map to the same page: " + ", ".join(str(p["rel"]) for p in pages))

    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "styles.css").write_text(CSS)
    written = []
    for p in pages:
        nb = apply_quarto_directives(p["nb"])
        for c in nb["cells"]:
            if c["cell_type"] == "markdown": c["source"] = _source_links(c["source"], git_url)
            for o in c.get("outputs", []):
                md = o.get("data", {}).get("text/markdown")
                if md is not None: o["data"]["text/markdown"] = _source_links("".join(md), git_url)
        body = _fix_links(_fix_headings(render_body(nb)), p["path"], nb_pages)
        css = os.path.relpath("styles.css", p["path"].parent.as_posix() or ".")
        doc = page_html(p["title"], p["description"], body, sidebar(pages, p["path"]), css)
        if (m := _re_ext.search(doc)):
            raise ValueError(f"{p['rel']}: the page would load {m.group(0)!r}... from another host; the site must be offline")
        f = out / p["path"]
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(doc)
        written.append(f)
    dropped = unlink_dead_autolinks(out, written)
    if dropped and not quiet:
        print(f"  {len(dropped)} links to symbols without a doc entry shown as plain code: "
              + ", ".join(sorted(set(dropped))[:12]) + (" ..." if len(set(dropped)) > 12 else ""), file=sys.stderr)
    (out / ".nojekyll").touch()
    if not quiet: print(f"wrote {len(written)} pages to {out} in {time.time() - t0:.1f}s", file=sys.stderr)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "_docs", help="site folder (default: _docs/)")
    ap.add_argument("--nbs", type=Path, default=ROOT / "nbs", help="notebook folder (default: nbs/)")
    ap.add_argument("--no-exec", action="store_true", help="render notebooks as committed instead of executing them")
    ap.add_argument("--workers", type=int, default=None, help="notebooks executed in parallel (default: cores, max 4)")
    a = ap.parse_args(argv)
    build(a.out.resolve(), a.nbs.resolve(), execute=not a.no_exec, workers=a.workers)


if __name__ == "__main__":
    main()
