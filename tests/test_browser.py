"""The notebook views in a real browser: JupyterLab on 127.0.0.1 driven by headless Debian Chromium (Playwright).

One module-scoped run opens `tests/browser/widgets.ipynb` (a tiny random Llama with the default model's tokenizer),
runs all cells from the Run menu, and saves it; the tests then check the rendered DOM against the `DL-EXPECT` lines
the kernel printed, that no request left 127.0.0.1, and that the saved notebook validates. Screenshots go to the
run's temporary directory and, when `DEEPLENS_ARTIFACTS` is set, are copied there.

Locally the module is skipped when /usr/bin/chromium or playwright is missing; with `DEEPLENS_REQUIRE_BROWSER=1`
(set by `.ci/test`) that is a failure instead."""
import json, os, re, shutil, sys, time, urllib.parse
from pathlib import Path
from types import SimpleNamespace
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "browser"))
from labserver import CHROMIUM, CHROMIUM_ARGS, JupyterLab

REQUIRED = os.environ.get("DEEPLENS_REQUIRE_BROWSER", "") not in ("", "0")
NOTEBOOK = HERE / "browser" / "widgets.ipynb"
RUN_TIMEOUT_S = 240          # kernel start + all cells on a loaded 2-core machine (about 30 s when quiet)

MISSING = None                   # why the browser test cannot run here, if it cannot
if not os.access(CHROMIUM, os.X_OK): MISSING = f"{CHROMIUM} is missing: apt-get install chromium to run the browser test"
try:
    from playwright.sync_api import sync_playwright, TimeoutError as PWTimeout
except ImportError:
    MISSING = MISSING or "playwright is not installed: pip install -e '.[dev]'"
    PWTimeout = TimeoutError
if MISSING and not REQUIRED: pytest.skip(MISSING, allow_module_level=True)
# with DEEPLENS_REQUIRE_BROWSER set, a missing browser fails every test here (in the fixture, not at collection,
# so the rest of the suite still runs)

# ---------------------------------------------------------------------------------------------- the session

def _local(url: str, port: int) -> bool:
    "True for http:// and ws:// to 127.0.0.1:port and for in-page data:/blob:/about: URLs."
    u = urllib.parse.urlsplit(url)
    if u.scheme in ("data", "blob", "about"): return True
    return u.scheme in ("http", "ws") and u.hostname == "127.0.0.1" and u.port == port

class Session(SimpleNamespace):
    def fail(self, msg: str):
        "Fail with the JupyterLab log tail and the browser's console errors attached."
        errs = "\n".join(self.console_errors[-20:]) or "(none)"
        pytest.fail(f"{msg}\n--- browser console errors ---\n{errs}\n--- JupyterLab log tail ---\n{self.lab.log_tail()}",
                    pytrace=False)

    def wait(self, what: str, fn, timeout: float, interval: float = 0.25):
        "Poll `fn()` until it returns something truthy; fail clearly after `timeout` seconds."
        t0, last = time.monotonic(), None
        while time.monotonic() - t0 < timeout:
            try:
                v = fn()
                if v: return v
                last = v
            except PWTimeout as e: last = e
            time.sleep(interval)
        self.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")

    def shot(self, name: str, locator=None):
        path = self.artifacts / f"{name}.png"
        try: (locator or self.page).screenshot(path=str(path))
        except Exception as e: print(f"screenshot {name} failed: {e}")
        return path

    def output_of(self, tag: str):
        "The output area of the code cell whose first line is `# cell: <tag>`."
        return self.page.locator(".jp-CodeCell").filter(has=self.page.locator(".cm-content", has_text=f"# cell: {tag}")).locator(".jp-OutputArea")

def _expectations(page) -> dict:
    texts = page.locator(".jp-OutputArea-output").all_text_contents()
    out = {}
    for t in texts:
        for line in t.splitlines():
            if line.startswith("DL-EXPECT "):
                d = json.loads(line[len("DL-EXPECT "):])
                out[d.pop("view")] = d
    return out

def _kernel_status(page) -> str | None:
    return page.evaluate("() => window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel?.status ?? null")

@pytest.fixture(scope="module")
def lab_session(tmp_path_factory):
    if MISSING: pytest.fail(f"{MISSING} (DEEPLENS_REQUIRE_BROWSER is set: the browser test must run)", pytrace=False)
    base = tmp_path_factory.mktemp("browser")
    artifacts = base / "artifacts"; artifacts.mkdir()
    lab = JupyterLab(base)
    s = Session(lab=lab, artifacts=artifacts, requests=[], websockets=[], console_errors=[], page=None, expect={},
                notebook=lab.root / NOTEBOOK.name, timings={})
    t_start = time.monotonic()
    try:
        lab.start()
        s.timings["server_start_s"] = round(time.monotonic() - t_start, 1)
        shutil.copy(NOTEBOOK, s.notebook)
        shutil.copy(HERE / "tiny.py", lab.root / "tiny.py")
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(str(base / "chromium-profile"), executable_path=CHROMIUM,
                                                        headless=True, args=CHROMIUM_ARGS,
                                                        viewport={"width": 1400, "height": 1000})
            try:
                ctx.on("request", lambda r: s.requests.append(r.url))
                # anything not for our server is recorded above and refused here (there is no network anyway)
                ctx.route(lambda url: not _local(url, lab.port), lambda route: route.abort())
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                s.page = page
                page.on("websocket", lambda ws: s.websockets.append(ws.url))
                page.on("console", lambda m: s.console_errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
                page.on("pageerror", lambda e: s.console_errors.append(f"pageerror: {e}"))
                page.set_default_timeout(60_000)
                try: _run_notebook(s)
                except PWTimeout as e:
                    s.shot("run-failed")
                    s.fail(f"the browser timed out driving JupyterLab: {str(e).splitlines()[0]}")
                s.timings["total_s"] = round(time.monotonic() - t_start, 1)
                yield s
                s.shot("page-final")
            finally:
                ctx.close()
    finally:
        t_stop = time.monotonic()
        lab.stop()
        print(f"JupyterLab stopped in {time.monotonic() - t_stop:.1f} s")
        dest = os.environ.get("DEEPLENS_ARTIFACTS")
        if dest:
            d = Path(dest) / "browser"
            d.mkdir(parents=True, exist_ok=True)
            for f in artifacts.iterdir(): shutil.copy(f, d / f.name)
            if lab.log_path.exists(): shutil.copy(lab.log_path, d / "jupyterlab.log")
            if s.notebook.exists(): shutil.copy(s.notebook, d / ("executed-" + NOTEBOOK.name))
        print(f"browser test artifacts: {artifacts}" + (f" (copied to {dest}/browser)" if dest else ""))

def _run_notebook(s: Session):
    page, lab = s.page, s.lab
    t0 = time.monotonic()
    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?reset", wait_until="domcontentloaded")
    try: page.locator(".jp-Notebook .jp-Cell").first.wait_for(state="visible", timeout=90_000)
    except PWTimeout: s.shot("page-load-failed"); s.fail("JupyterLab did not show the notebook's cells within 90 s")
    s.wait("the kernel to start (status idle)", lambda: _kernel_status(page) == "idle", timeout=120)
    s.timings["lab_open_s"] = round(time.monotonic() - t0, 1)
    s.shot("page-opened")
    # Run > Run All Cells, through the menu bar like a user (Lumino tags menu items with their command id:
    # JupyterLab 4's Run menu holds "runmenu:run-all", which runs the current notebook's cells)
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"], .lm-Menu-item[data-command="notebook:run-all-cells"]').first.click()
    t1 = time.monotonic()
    errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]', has_text="Traceback")
    done = lambda: ((page.locator(".jp-OutputArea-output", has_text="DL-DONE").count() > 0 or errors.count() > 0)
                    and _kernel_status(page) == "idle"
                    and page.locator(".jp-InputArea-prompt", has_text="[*]").count() == 0)
    try: s.wait("all cells to run (the DL-DONE line and an idle kernel)", done, timeout=RUN_TIMEOUT_S, interval=0.5)
    except BaseException:
        s.shot("run-failed"); raise
    if errors.count():                             # Run All stops at the first cell that raises
        s.shot("run-failed")
        s.fail("a notebook cell raised:\n" + "\n".join(errors.all_text_contents())[-4000:])
    s.timings["run_all_s"] = round(time.monotonic() - t1, 1)
    s.expect = _expectations(page)
    # save from the browser (File > Save through its command) and wait for the file on disk to hold the outputs
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    def saved():
        try: nb = json.loads(s.notebook.read_text())
        except (OSError, ValueError): return False
        return any("DL-DONE" in "".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    s.wait("JupyterLab to save the executed notebook", saved, timeout=60)
    s.shot("page-after-run")

# ---------------------------------------------------------------------------------------------- the checks

def test_notebook_ran_every_cell(lab_session):
    s = lab_session
    print("timings:", s.timings, "\nbrowser console errors:", s.console_errors)
    assert set(s.expect) >= {"heatmap", "lens", "attention", "monitor", "chart", "explorer", "steering"}, s.expect.keys()
    prompts = s.page.locator(".jp-CodeCell .jp-InputArea-prompt").all_text_contents()
    assert prompts and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts), prompts
    uncaught = [e for e in s.console_errors if e.startswith("pageerror")]
    assert not uncaught, f"uncaught JavaScript errors in the page: {uncaught}"

def test_token_heatmap_one_span_per_token(lab_session):
    s, e = lab_session, lab_session.expect["heatmap"]
    view = s.output_of("heatmap").locator(".dl-heatmap")
    view.wait_for(state="visible")
    s.shot("token-heatmap", view)
    spans = view.locator(".dl-token")
    assert spans.count() == e["n_tokens"] == len(e["tokens"]) > 5
    # tokens are drawn with visible whitespace: the single-space token is a visible ␣ with a width, not a blank
    assert spans.evaluate_all("els => els.map(e => e.textContent)") == e["shown"]
    space = e["tokens"].index(" ")
    assert spans.nth(space).text_content() == "␣" and spans.nth(space).bounding_box()["width"] > 2
    assert spans.evaluate_all("els => els.map(e => Number(e.dataset.pos))") == list(range(e["n_tokens"]))
    colours = set(spans.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)"))
    assert len(colours) > 1, f"every token has the same colour {colours}: the values did not arrive"
    spans.nth(3).hover()
    tip = view.locator(".dl-tip")
    s.wait("the heatmap tooltip", lambda: "position 3" in tip.text_content(), timeout=10)
    assert json.dumps(e["tokens"][3]) in tip.text_content()

def test_logit_lens_grid_is_layers_by_positions(lab_session):
    s, e = lab_session, lab_session.expect["lens"]
    view = s.output_of("lens").locator(".dl-lens")
    view.wait_for(state="visible")
    cells = view.locator("td.dl-cell")
    L, P = e["n_layers"], e["n_positions"]
    assert cells.count() == L * P and L >= 2 and P > 5
    got = cells.evaluate_all("els => els.map(e => [Number(e.dataset.layer), Number(e.dataset.pos), e.textContent])")
    assert sorted((l, p) for l, p, _ in got) == [(l, p) for l in range(L) for p in range(P)]
    assert all(t == e["top_tokens"][l * P + p] for l, p, t in got)          # drawn with visible whitespace
    heads = view.locator("th.dl-lens-input")
    assert heads.all_text_contents() == e["inputs"] and "␣" in e["inputs"] and "⇥" in e["inputs"]
    # clicking a cell asks the kernel for its top-k, which comes back as the panel's rows
    cells.first.click()
    items = view.locator(".dl-topk-item")
    s.wait("the clicked cell's top-k list", lambda: items.count() > 0, timeout=30)
    s.shot("logit-lens", view)

def test_attention_view_draws_the_pattern(lab_session):
    s, e = lab_session, lab_session.expect["attention"]
    view = s.output_of("attention").locator(".dl-attention")
    view.wait_for(state="visible")
    s.shot("attention", view)
    assert view.locator("svg.dl-pattern").count() == 1
    assert view.locator("rect.dl-att-cell").count() == e["q"] * e["k"] > 0
    assert view.locator(".dl-head-select option").count() == e["n_heads"]
    assert view.locator(".dl-layer-select option").all_text_contents() == [str(l) for l in e["layers"]]
    assert view.locator(".dl-badge").count() == len(e["scores"]) == 2
    assert view.locator("text.dl-att-key").all_text_contents() == e["keys"] and "␣" in e["keys"]
    # a causal pattern: the first query attends only to key 0, so row 0 has one opaque cell
    fills = view.locator("rect.dl-att-cell").evaluate_all("els => els.slice(0, %d).map(e => e.getAttribute('fill'))" % e["k"])
    alphas = [float(re.search(r"rgba\([^)]*,\s*([\d.]+)\)", f).group(1)) for f in fills]
    assert alphas[0] == pytest.approx(1.0, abs=1e-3) and all(a == 0 for a in alphas[1:])   # masked: exactly 0

def test_training_monitor_draws_every_record(lab_session):
    s, e = lab_session, lab_session.expect["monitor"]
    view = s.output_of("training").locator(".dl-monitor")
    view.wait_for(state="visible")
    s.shot("training-monitor", view)
    boxes = view.locator(".dl-metric")
    assert boxes.evaluate_all("els => els.map(e => e.dataset.metric)") == e["metrics"]
    loss = view.locator('.dl-metric[data-metric="loss"] svg.dl-curve polyline')
    assert loss.count() == 1
    assert len(loss.get_attribute("points").split()) == e["n_loss"] > 3
    # displayed before trainer.train() with no records: every point arrived as a live update
    assert "waiting for the first record" not in view.text_content() and "step" in view.text_content()

def test_altair_chart_renders_offline_svg(lab_session):
    s, e = lab_session, lab_session.expect["chart"]
    out = s.output_of("chart")
    img = out.locator(".jp-RenderedSVG img")
    img.wait_for(state="visible")
    s.shot("chart", img)
    info = img.evaluate("""img => {
        const src = img.getAttribute('src') || '';
        const svg = src.startsWith('data:image/svg+xml,') ? decodeURIComponent(src.slice(19)) : '';
        const doc = new DOMParser().parseFromString(svg, 'image/svg+xml');
        return {complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
                rects: doc.querySelectorAll('g.mark-rect.role-mark path').length,
                svg: !!doc.querySelector('svg'), err: !!doc.querySelector('parsererror')};
    }""")
    assert info["complete"] and info["width"] > 100 and info["height"] > 50, info
    assert info["svg"] and not info["err"], info
    assert info["rects"] == e["n_cells"], info
    assert out.locator('[data-mime-type*="vegalite"]').count() == 0

def test_feature_explorer_shows_the_feature(lab_session):
    s, e = lab_session, lab_session.expect["explorer"]
    view = s.output_of("explorer").locator(".dl-fe")
    view.wait_for(state="visible")
    s.shot("feature-explorer", view)
    assert view.locator(".dl-fe-hist rect.dl-fe-bar").count() == e["n_bins"]
    heights = view.locator(".dl-fe-hist rect.dl-fe-bar").evaluate_all("els => els.map(e => Number(e.getAttribute('height')))")
    assert max(heights) > 0, "the activation histogram is empty"
    rows = view.locator(".dl-fe-example")
    assert rows.count() == e["n_examples"] > 0
    centers = rows.evaluate_all("els => els.map(r => r.querySelector('[data-center=\"1\"]')?.textContent)")
    assert centers == e["centers"]
    toks = view.locator(".dl-fe-tok").all_text_contents()
    assert toks == e["tokens"] and all(t.strip() for t in toks)          # whitespace drawn visibly: no blank box
    assert view.locator(".dl-fe-logits .dl-fe-logit").count() == e["n_logits"] > 0
    info = view.locator(".dl-fe-info")
    assert info.text_content().startswith(f"feature {e['feature']}:")
    # typing another feature number and pressing Enter asks the kernel, which refills the view (the box keeps the
    # focus: it was Enter that sent it, not a change event on leaving the box)
    box = view.locator("input.dl-fe-feature")
    box.click(); box.fill(str(e["other"])); box.press("Enter")
    s.wait(f"the explorer to switch to feature {e['other']} after Enter",
           lambda: info.text_content().startswith(f"feature {e['other']}:"), timeout=60)
    assert box.evaluate("el => document.activeElement === el")
    # leaving the box (Tab) commits a typed number too
    box.fill(str(e["third"])); box.press("Tab")
    s.wait(f"the explorer to switch to feature {e['third']} after leaving the box",
           lambda: info.text_content().startswith(f"feature {e['third']}:"), timeout=60)
    s.shot("feature-explorer-typed", view)

def test_steering_slider_changes_the_steered_text(lab_session):
    s, e = lab_session, lab_session.expect["steering"]
    assert e["differs"], "precondition: steering this feature must change the greedy continuation"
    view = s.output_of("steering").locator(".dl-sp")
    view.wait_for(state="visible")
    base, steered = view.locator(".dl-sp-baseline"), view.locator(".dl-sp-steered")
    # on display the panel runs once at coefficient 0: both sides show the plain continuation
    s.wait("the panel's first run", lambda: base.text_content() == e["baseline"], timeout=60)
    assert steered.text_content() == e["baseline"]
    s.shot("steering-before", view)
    slider = view.locator("input.dl-sp-slider[type=range]")
    assert slider.count() == 1 and float(slider.input_value()) == 0.0
    view.evaluate("""root => { window.__dlBusy = [];
        new MutationObserver(() => window.__dlBusy.push(root.dataset.busy)).observe(root, {attributes: true, attributeFilter: ['data-busy']}); }""")
    slider.evaluate("""(el, v) => { el.value = String(v);
        el.dispatchEvent(new Event('input', {bubbles: true})); el.dispatchEvent(new Event('change', {bubbles: true})); }""",
                    e["coefficient"])
    s.wait("the steered text to change after moving the slider", lambda: steered.text_content() != e["baseline"], timeout=90)
    s.wait("the busy indicator to clear", lambda: view.get_attribute("data-busy") == "0", timeout=30)
    assert steered.text_content() == e["steered"]
    assert base.text_content() == e["baseline"]
    assert view.locator(".dl-sp-steered .dl-sp-diff").text_content() != ""      # the changed tail is highlighted
    assert "1" in s.page.evaluate("() => window.__dlBusy"), "the busy indicator never showed while the model ran"
    assert not view.locator(".dl-sp-busy").is_visible()
    s.shot("steering-after", view)
    # type a feature number and press Enter: the kernel regenerates with that feature at the same coefficient
    box = view.locator("input.dl-sp-feature")
    box.click(); box.fill(str(e["typed"])); box.press("Enter")
    s.wait(f"the steered text for feature {e['typed']} after Enter", lambda: steered.text_content() == e["steered_typed"], timeout=90)
    assert box.evaluate("el => document.activeElement === el") and box.input_value() == str(e["typed"])
    s.wait("the busy indicator to clear", lambda: view.get_attribute("data-busy") == "0", timeout=30)
    assert base.text_content() == e["baseline"] and view.locator(".dl-sp-hint").text_content().startswith(f"feature {e['typed']} ")
    s.shot("steering-typed", view)

def test_no_request_leaves_localhost(lab_session):
    s = lab_session
    port = s.lab.port
    assert len(s.requests) > 20, "the request log is (nearly) empty: request recording is broken"
    assert any(u.startswith(f"http://127.0.0.1:{port}/api/kernels") for u in s.requests)
    outside = sorted({u for u in s.requests + s.websockets if not _local(u, port)})
    assert not outside, f"requests left 127.0.0.1:{port}: {outside}"
    assert s.websockets and all(u.startswith(f"ws://127.0.0.1:{port}/") for u in s.websockets)
    # the log would see an outside request: a canary fetch from the page is recorded (and refused by the route)
    canary = "https://cdn.jsdelivr.net/npm/deeplens-canary.js"
    assert s.page.evaluate("u => fetch(u).then(() => 'loaded', () => 'refused')", canary) == "refused"
    s.wait("the canary request in the log", lambda: canary in s.requests, timeout=10)
    assert not _local(canary, port) and not _local(f"http://localhost:{port}/lab", port)

def test_saved_notebook_validates(lab_session):
    import nbformat
    nb = nbformat.read(str(lab_session.notebook), as_version=4)
    nbformat.validate(nb)
    mimes = {m for c in nb.cells for o in c.get("outputs", []) for m in o.get("data", {})}
    assert "application/vnd.jupyter.widget-view+json" in mimes and "image/svg+xml" in mimes
    assert not any("vegalite" in m for m in mimes), mimes
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")

# ---------------------------------------------------------------------------------------------- themes and colours

VIEWS = {"heatmap": ".dl-heatmap", "lens": ".dl-lens", "attention": ".dl-attention", "training": ".dl-monitor",
         "explorer": ".dl-fe", "steering": ".dl-sp"}
THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}
MIN_CONTRAST = 3.0               # WCAG's minimum for large text and UI components

# The WCAG contrast of every piece of text in a view (HTML text and SVG text) against what is drawn behind it: the
# background colours of its ancestors composited from the page down, the text colour (or SVG fill) over that.
CONTRAST_JS = """(root, minimum) => {
  const rgba = (s) => { const m = (s || '').match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
                        const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const over = (top, under) => [0, 1, 2].map(i => top[i] * top[3] + under[i] * (1 - top[3])).concat([1]);
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                       return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const behind = (el) => { const chain = []; for (let e = el; e && e.nodeType === 1; e = e.parentElement) chain.push(e);
                           let bg = [255, 255, 255, 1];
                           for (const e of chain.reverse()) { const c = rgba(getComputedStyle(e).backgroundColor); if (c && c[3] > 0) bg = over(c, bg); }
                           return bg; };
  const low = [];
  let n = 0;
  for (const el of root.querySelectorAll('*')) {
    if (['OPTION', 'title', 'STYLE', 'SCRIPT'].includes(el.tagName) || !el.getClientRects().length) continue;
    const isSvgText = el.tagName === 'text';
    const own = [...el.childNodes].filter(c => c.nodeType === 3 && c.textContent.trim()).map(c => c.textContent).join('');
    if (!own) continue;
    const cs = getComputedStyle(el);
    const bg = behind(el);
    const fg = over(rgba(isSvgText ? cs.fill : cs.color) || [0, 0, 0, 1], bg);
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    n++;
    if (ratio < minimum) low.push({text: own.slice(0, 40), cls: String(el.className.baseVal ?? el.className), color: cs.color, fill: cs.fill,
                                   bg: bg.map(Math.round), ratio: Math.round(ratio * 100) / 100});
  }
  return {n, low};
}"""

def _theme(s, name: str):
    "Switch JupyterLab's theme through its command and wait until the theme's variables apply."
    light = name == "light"
    s.page.evaluate("t => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})", THEMES[name])
    s.wait(f"the {name} theme", lambda: s.page.evaluate(
        "() => [document.body.dataset.jpThemeLight, getComputedStyle(document.body).getPropertyValue('--jp-layout-color0').trim()]")
           in ([str(light).lower(), "white"], [str(light).lower(), "#fff"], [str(light).lower(), "#111"]), timeout=60)
    time.sleep(0.5)                                              # one frame for the restyle

def test_views_readable_in_light_and_dark_theme(lab_session):
    "Every view, screenshotted in JupyterLab's light and dark theme; all its text has contrast against its background."
    s = lab_session
    try:
        for name in ("light", "dark"):
            _theme(s, name)
            for tag, sel in VIEWS.items():
                view = s.output_of(tag).locator(sel)
                view.scroll_into_view_if_needed()
                s.shot(f"theme-{name}-{tag}", view)
                r = view.evaluate(CONTRAST_JS, MIN_CONTRAST)
                assert r["n"] > 3, f"{tag}: no text found to check in the {name} theme"
                assert not r["low"], f"{tag} in the {name} theme: text below contrast {MIN_CONTRAST}: {r['low'][:8]}"
    finally:
        _theme(s, "light")

def _parse(c: str) -> tuple:
    "A CSS colour (#rrggbb, rgb(), rgba()) as (r, g, b, alpha)."
    if c.startswith("#"): return (*(int(c[i:i + 2], 16) for i in (1, 3, 5)), 1.0)
    p = [float(x) for x in re.findall(r"[\d.]+", c)]
    return (*map(int, p[:3]), p[3] if len(p) > 3 else 1.0)

def _same(a: str, b: str) -> bool:
    (r1, g1, b1, a1), (r2, g2, b2, a2) = _parse(a), _parse(b)
    return (r1, g1, b1) == (r2, g2, b2) and abs(a1 - a2) <= 1 / 255 + 1e-3   # Chromium keeps alpha in 8 bits

def test_static_live_and_chart_colours_agree(lab_session):
    "The same values: the static HTML heatmap, the live TokenHeatmap and deeplens.style give one colour; the chart's ends are the palette's."
    s, e = lab_session, lab_session.expect["colours"]
    out = s.output_of("colours")
    live = out.locator(".dl-heatmap .dl-token")
    live.first.wait_for(state="visible")
    static = out.locator(".dl-tok")
    got_live = live.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    got_static = static.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert len(got_live) == len(got_static) == len(e["rule"]) > 5
    assert got_live == got_static                                    # one CSS colour string each, so the same pixels
    bad = [(i, r, l, st) for i, (r, l, st) in enumerate(zip(e["rule"], got_live, got_static)) if not (_same(r, l) and _same(r, st))]
    assert not bad, f"colours disagree (value_colour, live, static): {bad[:5]}"
    pos, neg = _parse(e["positive"])[:3], _parse(e["negative"])[:3]
    assert {_parse(c)[:3] for c in got_live} >= {pos, neg}            # signed values: both ends of the palette
    assert e["chart_range"][0] == e["diverging"][0] == e["negative"] and e["chart_range"][-1] == e["diverging"][-1] == e["positive"]
    img = out.locator(".jp-RenderedSVG img")
    img.wait_for(state="visible")
    fills = img.evaluate("""img => { const src = img.getAttribute('src') || '';
        const doc = new DOMParser().parseFromString(decodeURIComponent(src.slice(19)), 'image/svg+xml');
        return [...doc.querySelectorAll('g.mark-rect.role-mark path')].map(p => p.getAttribute('fill')); }""")
    assert len(fills) == 4 and {_parse(f)[:3] for f in fills} >= {pos, neg}, fills   # the ±1 cells are the palette's ends
    s.shot("colours", out)
