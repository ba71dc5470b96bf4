"""Helpers for the real-browser test: a sandboxed JupyterLab server and a locked-down headless Chromium.

The server runs on 127.0.0.1 with no token, in a temporary root directory, with temporary Jupyter config /
data / runtime / settings / workspace directories (nothing of the user's is read or written), news and update
checks off, and the notebook's windowing off so every cell's output stays in the DOM."""
from __future__ import annotations
import json, os, signal, socket, subprocess, sys, time, urllib.error, urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("DEEPLENS_CHROMIUM", "/usr/bin/chromium")    # Debian's chromium; the override is for tests of this test
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

def free_port() -> int:
    "A TCP port that is free on 127.0.0.1 right now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def tail(path: Path, n: int = 60) -> str:
    "The last `n` lines of a log file (for failure messages)."
    try: lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as e: return f"(no log: {e})"
    return "\n".join(lines[-n:])

def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))

class JupyterLab:
    "A JupyterLab server in its own process group, sandboxed under `base`; `stop()` kills the whole group."
    def __init__(self, base: Path, startup_timeout: float = 90.0):
        self.base = Path(base)
        self.root = self.base / "root"
        self.log_path = self.base / "jupyterlab.log"
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str: return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict:
        d = {k: self.base / k.lower() for k in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                                                 "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR")}
        for p in d.values(): p.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **{k: str(v) for k, v in d.items()}}
        env.pop("JUPYTER_PATH", None); env.pop("JUPYTER_CONFIG_PATH", None)
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                   PYTHONUNBUFFERED="1", JUPYTER_PLATFORM_DIRS="1")
        # server config: no language-server scan (slow, not needed); lab user settings: no news, no update
        # check, every cell rendered (JupyterLab 4 virtualises long notebooks by default)
        _write_json(d["JUPYTER_CONFIG_DIR"] / "jupyter_server_config.json",
                    {"ServerApp": {"jpserver_extensions": {"jupyter_lsp": False}}})
        s = d["JUPYTERLAB_SETTINGS_DIR"]
        _write_json(s / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings",
                    {"checkForUpdates": False, "fetchNews": "false"})
        _write_json(s / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings",
                    {"windowingMode": "none"})
        return env

    def start(self) -> "JupyterLab":
        self.root.mkdir(parents=True, exist_ok=True)
        env = self._env()
        dirs = [f"--LabApp.user_settings_dir={env['JUPYTERLAB_SETTINGS_DIR']}", f"--LabApp.workspaces_dir={env['JUPYTERLAB_WORKSPACES_DIR']}"]
        for attempt in range(3):                       # the free port can be taken before the server binds it
            self.port = free_port()
            cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                   f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
                   "--ServerApp.password=", f"--ServerApp.root_dir={self.root}", "--ServerApp.allow_root=True",
                   "--ServerApp.open_browser=False", "--LabApp.news_url=None",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                   "--LabApp.expose_app_in_browser=True", "--ServerApp.shutdown_no_activity_timeout=900", *dirs]
            log = open(self.log_path, "a")
            log.write(f"\n$ {' '.join(cmd)}\n"); log.flush()
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            if self._wait_ready(): return self
            self.stop()
        raise RuntimeError(f"JupyterLab did not start on 127.0.0.1 in {self.startup_timeout:.0f} s; log tail:\n{tail(self.log_path)}")

    def _wait_ready(self) -> bool:
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.startup_timeout:
            if self.proc.poll() is not None: return False
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=5) as r:
                    if r.status == 200: return True
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError): pass
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        "Terminate the server and its kernels (its whole process group), then kill what is left."
        p, self.proc = self.proc, None
        if p is None: return
        try: os.killpg(p.pid, signal.SIGTERM)           # the group outlives the server while kernels run
        except ProcessLookupError: return
        try: p.wait(timeout=15)
        except subprocess.TimeoutExpired: pass
        try: os.killpg(p.pid, signal.SIGKILL)          # kernels that ignored SIGTERM
        except ProcessLookupError: pass
        try: p.wait(timeout=5)
        except subprocess.TimeoutExpired: pass

    def log_tail(self, n: int = 60) -> str: return tail(self.log_path, n)
