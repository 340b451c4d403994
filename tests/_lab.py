"""A real JupyterLab with a live kernel, driven by Debian's chromium: what a reader sees.

Shared by tests/test_jupyterlab_live.py (pytest) and tools/lab_smoke.py (a human at a
terminal). Nothing here skips or fails a test: the callers decide what a missing piece
means (:func:`missing` says which piece).

* :func:`running_lab` starts ``python -m jupyterlab`` (this interpreter's, i.e. the venv's)
  on a free 127.0.0.1 port with a fixed token, no browser, its root a temp copy of the
  chapters (outputs never reach ``chapters/``), its config, data, runtime, settings,
  workspace and IPython dirs all temp (nothing from ``~`` leaks in, nothing is written
  there). Start-up is bounded; on the way out every kernel is shut down and the server's
  process group — and each kernel's own session — is killed, even on failure.
* :func:`lab_browser` opens chromium (never ``playwright install``), refuses any request
  that leaves 127.0.0.1, and keeps the console errors and uncaught page errors.
* :class:`Notebook` opens a chapter (the first loads JupyterLab in a fresh workspace, the
  next ones are double-clicked in its file browser), clears the outputs and runs all
  cells through the menus (Edit → Clear Outputs of All Cells, Run → Run All Cells), and
  waits until every code cell has run and the kernel is idle; :meth:`Notebook.py` asks the
  notebook's kernel a question (to see that the widget's state reached Python).
* ``check_*``: the checks per chapter; each returns what it saw, one line per fact, and
  raises AssertionError on the first thing that is wrong.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from _browser import ARGS, CHROMIUM, FWD, PLAY, sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = REPO / "chapters"
TOKEN = "vbook-lab-smoke"
START_TIMEOUT = 40.0  # s: the server answering /api/status
RUN_TIMEOUT = 60.0  # s: Run All Cells of one chapter (each takes ~4 s in nbclient)
FIRST = ".vp-btn[title^='first']"


def missing() -> str | None:
    """Why the live-lab check cannot run here, or None."""
    for mod in ("jupyterlab", "ipykernel", "anywidget"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed in {sys.prefix}"
    if sync_playwright is None:
        return "playwright-python is not installed"
    if CHROMIUM is None:
        return "no system chromium (apt-get install chromium)"
    return None


# --------------------------------------------------------------------- the server


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log_path: Path
    proc: subprocess.Popen

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-tail:]
        except OSError:
            return ""

    def api(self, method: str, path: str) -> object:
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        try:
            for k in self.api("GET", "/api/kernels") or []:
                try:
                    self.api("DELETE", f"/api/kernels/{k['id']}")
                except (OSError, urllib.error.URLError):
                    pass
        except (OSError, urllib.error.URLError, ValueError):
            pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the kernels the server launched)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid …: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - not ours
        return False
    try:  # a zombie is dead for our purpose
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except (OSError, IndexError):
        return False


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL it and any kernel left over.

    jupyter_client starts each kernel in a new session, so the kernels are not in the
    server's group: they are found as the server's children (by pid) first."""
    kids = _children(proc.pid) if proc.poll() is None else []
    for sig, wait in ((signal.SIGTERM, 8.0), (signal.SIGKILL, 3.0)):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
    for pid in kids:
        if _alive(pid):
            try:
                # a kernel leads its own session (start_new_session): take its group
                os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    if proc.poll() is None:  # pragma: no cover - SIGKILL failed
        proc.kill()
        proc.wait(timeout=3)


def _settings(user_settings: Path) -> None:
    """No news / update toasts over the notebook (and no request to jupyter.org)."""
    d = user_settings / "@jupyterlab" / "apputils-extension"
    d.mkdir(parents=True)
    (d / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}), encoding="utf-8")


def _wait_up(lab: Lab, timeout: float) -> bool:
    """True once the server answers; False if it exited; RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if lab.proc.poll() is not None:
            return False
        try:
            lab.api("GET", "/api/status")
            return True
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"jupyter lab did not answer within {timeout:g} s:\n{lab.log()}")
        time.sleep(0.2)


@contextmanager
def running_lab(notebooks: list[str] | None = None, *, keep: bool = False,
                start_timeout: float = START_TIMEOUT) -> Iterator[Lab]:
    """JupyterLab serving a temp copy of ``chapters/`` (only ``notebooks``, if given)."""
    tmp = Path(tempfile.mkdtemp(prefix="vbook-lab-"))
    proc = lab = None
    try:
        root = tmp / "chapters"
        root.mkdir()
        for nb in sorted(CHAPTERS.glob("*.ipynb")):
            if notebooks is None or nb.name in notebooks:
                shutil.copy2(nb, root / nb.name)
        dirs = {k: tmp / k for k in ("config", "data", "runtime", "settings", "workspaces",
                                     "ipython")}
        for d in dirs.values():
            d.mkdir()
        _settings(dirs["settings"])
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(dirs["config"]),
                   JUPYTER_DATA_DIR=str(dirs["data"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
                   IPYTHONDIR=str(dirs["ipython"]), JUPYTER_PLATFORM_DIRS="1",
                   PYTHONUNBUFFERED="1")
        env.pop("JUPYTER_PATH", None)
        env.pop("JUPYTER_TOKEN", None)
        log_path = tmp / "lab.log"
        for attempt in range(3):  # a free port can be taken before the server binds it
            port = _free_port()
            cmd = [sys.executable, "-m", "jupyterlab", "--no-browser",
                   "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                   "--ServerApp.port_retries=0",  # that port or fail: never another one
                   f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
                   f"--LabApp.user_settings_dir={dirs['settings']}",
                   f"--LabApp.workspaces_dir={dirs['workspaces']}",
                   # window.jupyterapp: to read cell execution counts and ask the kernel
                   "--LabApp.expose_app_in_browser=True",
                   "--ServerApp.allow_root=True"]
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            lab = Lab(f"http://127.0.0.1:{port}", TOKEN, root, log_path, proc)
            if _wait_up(lab, start_timeout):
                break
            if attempt == 2 or "already in use" not in lab.log():
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{lab.log()}")
            _kill_tree(proc)
        yield lab
    finally:
        if proc is not None:
            if lab is not None and proc.poll() is None:
                lab.shutdown_kernels()
            _kill_tree(proc)
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------- the browser


@dataclass
class Browser:
    browser: object
    lab: Lab
    console: list[str] = field(default_factory=list)  # console.error / warning lines
    errors: list[str] = field(default_factory=list)  # uncaught page errors
    refused: list[str] = field(default_factory=list)  # requests that left 127.0.0.1
    lab_page: object = None  # the page JupyterLab is loaded in, once a notebook was opened

    def page(self, viewport: tuple[int, int] = (1400, 1000)):
        page = self.browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})

        def on_console(m):
            if m.type in ("error", "warning"):
                loc = m.location or {}
                self.console.append(f"{m.type}: {m.text} @ {loc.get('url', '')}:{loc.get('lineNumber', '')}")

        page.on("console", on_console)
        page.on("pageerror", lambda e: self.errors.append(f"{e}\n{getattr(e, 'stack', '') or ''}"))
        local = re.compile(r"^(https?|wss?)://(127\.0\.0\.1|localhost)(:\d+)?/")
        page.route(re.compile(r"^https?://"),
                   lambda r: r.continue_() if local.match(r.request.url)
                   else (self.refused.append(r.request.url), r.abort()))
        return page

    def vbook_problems(self) -> list[str]:
        """Page errors, and console errors that come from a widget: its module (a blob: URL),
        anywidget, or the widget manager ("Error setting state: …" is how an exception in a
        change handler surfaces) — not JupyterLab's own chatter."""
        own = re.compile(r"vbook|anywidget|blob:|vp-|PANES|trace_player|jupyter-widgets|widget",
                         re.I)
        return self.errors + [c for c in self.console if c.startswith("error") and own.search(c)]


@contextmanager
def lab_browser(lab: Lab) -> Iterator[Browser]:
    if sync_playwright is None or CHROMIUM is None:
        raise RuntimeError("needs playwright-python and a system chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield Browser(b, lab)
        finally:
            b.close()


# --------------------------------------------------------------------- one notebook

_STATE = """() => {
  const app = window.jupyterapp;
  const w = app && app.shell.currentWidget;
  if (!w || !w.content || !w.content.model || !w.sessionContext) return {ready: false};
  const s = w.sessionContext.session;
  const k = s && s.kernel;
  const cells = [...w.content.model.cells].filter((c) => c.type === 'code');
  const errors = [];
  for (const c of cells) {
    for (let i = 0; i < c.outputs.length; i++) {
      const o = c.outputs.get(i).toJSON();
      if (o.output_type === 'error') errors.push(`${o.ename}: ${o.evalue}`);
    }
  }
  return {ready: true, path: w.context.path, kernel: k ? k.status : null,
          connection: k ? k.connectionStatus : null, cells: cells.length,
          counts: cells.map((c) => c.executionCount), errors};
}"""

# run code in the notebook's kernel, silently; resolve to its stdout (or throw its error)
_ASK = """async (code) => {
  const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  let out = '', err = null;
  const f = k.requestExecute({code, silent: false, store_history: false});
  f.onIOPub = (msg) => {
    const t = msg.header.msg_type;
    if (t === 'stream') out += msg.content.text;
    if (t === 'error') err = `${msg.content.ename}: ${msg.content.evalue}`;
  };
  await f.done;
  if (err) throw new Error(err);
  return out;
}"""


class Notebook:
    """A chapter open in JupyterLab. The first one loads JupyterLab (in a workspace of its
    own: no tabs restored); the next ones open in the same page from the file browser, as
    a reader opens them, after the previous one was closed and its kernel shut down."""

    def __init__(self, browser: Browser, name: str):
        self.name = name
        self.browser = browser
        self.timings: dict[str, float] = {}
        t0 = time.monotonic()
        lab = browser.lab
        if browser.lab_page is None:
            self.page = browser.page()
            self.page.goto(f"{lab.url}/lab/workspaces/vbook-smoke/tree/{name}?token={lab.token}")
            browser.lab_page = self.page
        else:
            self.page = browser.lab_page
            listing = self.page.locator(".jp-FileBrowser .jp-DirListing-content")
            if not listing.is_visible():  # the file browser is closed: open it
                self.page.click(".jp-SideBar [data-id='filebrowser']")
            listing.get_by_text(name, exact=True).dblclick(timeout=15_000)
        self.page.wait_for_function(f"() => {{ const s = ({_STATE})(); return s.ready && "
                                    "s.path.endsWith(" + json.dumps(name) + ") && "
                                    "s.kernel === 'idle' && s.connection === 'connected'; }",
                                    timeout=60_000)
        self.panel = "#" + self.page.evaluate("() => window.jupyterapp.shell.currentWidget.id")
        self.page.wait_for_selector(f"{self.panel} .jp-Cell", timeout=15_000)
        self.timings["open"] = time.monotonic() - t0

    def state(self) -> dict:
        return self.page.evaluate(_STATE)

    def menu(self, top: str, label: str) -> None:
        """Click a main-menu entry, as a reader does: ``menu("Run", "Run All Cells")``."""
        self.page.click(f"#jp-MainMenu .lm-MenuBar-item:has-text('{top}')")
        item = self.page.locator(f".lm-Menu-item:has(.lm-Menu-itemLabel:text-is('{label}'))").first
        item.wait_for(state="visible", timeout=5_000)
        item.click()

    def run_all(self, timeout: float = RUN_TIMEOUT) -> dict:
        """Edit → Clear Outputs of All Cells, Run → Run All Cells; wait for the last cell."""
        t0 = time.monotonic()
        self.menu("Edit", "Clear Outputs of All Cells")
        self.page.wait_for_function(f"() => ({_STATE})().counts.every((c) => c === null)",
                                    timeout=10_000)
        self.menu("Run", "Run All Cells")
        deadline = time.monotonic() + timeout
        while True:
            s = self.state()
            if s["errors"]:
                raise AssertionError(f"{self.name}: a cell raised: {s['errors']}")
            if s["kernel"] == "idle" and all(c is not None for c in s["counts"]):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: Run All did not finish in {timeout:.0f} s: {s}")
            time.sleep(0.25)
        counts = s["counts"]
        assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
        self.timings["run all"] = time.monotonic() - t0
        return s

    def py(self, code: str) -> str:
        """What ``code`` prints in this notebook's kernel."""
        return self.page.evaluate(_ASK, code)

    def player(self, pane: str, nth: int = 0):
        """The vbook player in the notebook's output area that holds ``pane`` (a CSS class)."""
        loc = self.page.locator(f"{self.panel} .jp-OutputArea-output .vbook-player:has({pane})").nth(nth)
        loc.wait_for(state="attached", timeout=15_000)
        loc.scroll_into_view_if_needed()
        return loc

    def shot(self, path: str | Path) -> None:
        self.page.screenshot(path=str(path))

    def close(self) -> None:
        """File → Close and Shut Down Notebook (saving into the temp copy if asked)."""
        try:
            self.page.click("#jp-MainMenu .lm-MenuBar-item:has-text('File')")
            self.page.locator(".lm-Menu-item:has(.lm-Menu-itemLabel:text-matches("
                              "'^Close and Shut Down Notebook'))").first.click(timeout=5_000)
            panel = self.page.locator(self.panel)
            deadline = time.monotonic() + 15
            while panel.count() and time.monotonic() < deadline:
                accept = self.page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
                if accept.count():
                    accept.first.click()
                time.sleep(0.1)
        except Exception:  # noqa: BLE001 - the server's own cleanup shuts the kernel down
            pass


def _step(player) -> int:
    return int(player.get_attribute("data-step"))


def _wait_step(player, step: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _step(player) != step:
        if time.monotonic() > deadline:
            raise AssertionError(f"the player shows event {_step(player)}, not {step}")
        time.sleep(0.05)


def _py_widget(nb: Notebook, cls: str, expr: str, nth: int = 0) -> object:
    """``expr`` (of ``w``) for the nth ``cls`` widget the notebook's cells returned (``Out``)."""
    code = (f"import json as _j\n_ws = [v for _, v in sorted(Out.items()) if type(v).__name__ == {cls!r}]\n"
            f"print(_j.dumps([(lambda w: {expr})(w) for w in _ws]))")
    vals = json.loads(nb.py(code))
    assert len(vals) > nth, f"the kernel holds {len(vals)} {cls} in Out"
    return vals[nth]


# --------------------------------------------------------------------- the checks


def check_walk2d(nb: Notebook) -> list[str]:
    """07: the Walk2dGrid renders its 24 cells; step and play light them in order; Python
    hears the step the browser shows."""
    seen = []
    player = nb.player(".vp-walk2d")
    cells = player.locator(".vp-w2-cell.ref")
    n = cells.count()
    counter = player.locator(".vp-w2-counter")
    assert n == 24, f"{n} reference cells, expected 24"
    assert player.locator(".vp-w2-cell.ref.todo").count() == 24
    first = counter.text_content()
    assert first.startswith("reference 0 of 24"), first
    seen.append(f"Walk2dGrid rendered: {n} reference cells, counter {first!r}")

    lit = "els => els.map(e => [Number(e.dataset.n), e.classList.contains('cur') ? 'cur' : 'done'])"
    order = []
    for k in range(1, 4):
        player.locator(FWD).click()
        _wait_step(player, k)
        text = counter.text_content()
        assert text.startswith(f"reference {k} of 24"), f"after {k} steps: {text!r}"
        got = cells.and_(player.locator(".cur, .done")).evaluate_all(lit)
        want = [[j, "done"] for j in range(1, k)] + [[k, "cur"]]
        assert got == want, f"after {k} steps the lit cells are {got}, expected {want}"
        order.append(text.split(" (")[0])
    seen.append("step forward ×3: " + " → ".join(order) + " (cell k 'cur', 1..k-1 'done')")
    step_py = _py_widget(nb, "Walk2dGrid", "w.step")
    assert step_py == 3, f"Python's Walk2dGrid.step is {step_py}, the browser shows 3"
    seen.append(f"the kernel's Walk2dGrid.step = {step_py} (the browser's step reached Python)")

    # play at 32/s from the start; record every counter text and the cell that is 'cur'
    player.locator(".vp-speed").select_option("32")
    player.locator(FIRST).click()
    _wait_step(player, 0)
    player.evaluate("""root => {
      const c = root.querySelector('.vp-w2-counter');
      window.__w2seen = [];
      window.__w2obs = new MutationObserver(() => {
        const cur = root.querySelector('.vp-w2-cell.ref.cur');
        window.__w2seen.push([c.textContent, cur ? Number(cur.dataset.n) : null]);
      });
      window.__w2obs.observe(root, {subtree: true, childList: true, characterData: true,
                                   attributes: true, attributeFilter: ['class', 'data-step']});
    }""")
    player.locator(PLAY).click()
    last = int(player.get_attribute("data-step"))
    nev = int(re.search(r"/(\d+)", player.locator(".vp-counter").text_content()).group(1))
    deadline = time.monotonic() + 10
    while _step(player) != nev - 1 or "playing" in (player.get_attribute("class") or ""):
        if time.monotonic() > deadline:
            raise AssertionError(f"play stopped at event {_step(player)} of {nev}")
        time.sleep(0.05)
    rec = player.evaluate("() => { window.__w2obs.disconnect(); return window.__w2seen; }")
    ks = []
    for text, _cur in rec:
        m = re.match(r"reference (\d+) of 24", text)
        if m and (not ks or ks[-1] != int(m.group(1))):
            ks.append(int(m.group(1)))
    curs = []
    for _text, c in rec:
        if c is not None and (not curs or curs[-1] != c):
            curs.append(c)
    assert ks == sorted(ks) and ks[-1] == 24 and len(ks) >= 12, f"counter while playing: {ks}"
    assert curs == sorted(curs) and curs[-1] == 24, f"'cur' cells while playing: {curs}"
    assert player.locator(".vp-w2-cell.ref.done").count() + \
        player.locator(".vp-w2-cell.ref.cur").count() == 24
    seen.append(f"play at 32/s from event {last}: counter went {ks[0]} → {ks[-1]} in order "
                f"({len(ks)} distinct values seen), cells lit in order {curs[:3]}…{curs[-2:]}; "
                f"stopped at event {nev} of {nev}")
    out = " ".join(player.locator(".vp-w2-outcome").text_content().split())
    assert out.strip(), "no outcome shown at the end"
    seen.append(f"outcome: {out[:90]!r}")
    step_py = _py_widget(nb, "Walk2dGrid", "w.step")
    assert step_py == nev - 1, f"Python's step {step_py}, the browser's {nev - 1}"
    return seen


def _live_walk(nb: Notebook, player, cls_nth: int = 0) -> str:
    """Wait until the WalkView's hello was answered (its boxes clickable)."""
    walk = player.locator(".vp-walk")
    deadline = time.monotonic() + 15
    while "live" not in (walk.get_attribute("class") or "").split():
        if time.monotonic() > deadline:
            raise AssertionError("the WalkView never became live (no answer to its hello); status: "
                                 f"{player.locator('.vp-w-status').text_content()!r}")
        time.sleep(0.1)
    return player.locator(".vp-w-status").text_content()


def _wait_out(player, pred, what: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        head = player.locator(".vp-w-outhead").text_content()
        pending = "pending" in (player.locator(".vp-walk").get_attribute("class") or "").split()
        if pred(head) and not pending:
            return head
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {what}; the outcome says {head!r}, status "
                                 f"{player.locator('.vp-w-status').text_content()!r}")
        time.sleep(0.05)


def check_walk_live(nb: Notebook) -> list[str]:
    """05: the WalkView is live; U/S of the PDE flipped → #PF error code 7 from Python; reset."""
    seen = []
    player = nb.player(".vp-walk")
    status = _live_walk(nb, player)
    editable = player.locator(".vp-w-f.can-edit").count()
    assert editable > 0, "live, but no bit box is clickable"
    assert player.locator(".vp-w-row").count() == 4
    before = player.locator(".vp-w-outhead").text_content()
    assert before.startswith("GVA 0x400123 → GPA 0x3123"), before
    seen.append(f"WalkView live: {editable} clickable boxes; status {status[:60]!r}…; outcome {before!r}")

    us = player.locator(".vp-w-row[data-level='2'] .vp-w-f[data-key='US']")
    assert "can-edit" in us.get_attribute("class")
    us.click()
    head = _wait_out(player, lambda h: h.startswith("#PF"), "a #PF after U/S of the PDE → 0")
    assert head.startswith("#PF, error code 0x7"), head
    assert player.locator(".vp-w-out").get_attribute("data-kind") == "page_fault"
    status = player.locator(".vp-w-status")
    assert "err" not in (status.get_attribute("class") or "").split(), status.text_content()
    edits = player.locator(".vp-w-edits li").all_text_contents()
    assert len(edits) == 1 and "U/S 1 → 0" in edits[0], edits
    assert player.locator(".vp-w-row[data-level='2'] .vp-w-f[data-key='US'] .v").text_content() == "0"
    seen.append(f"clicked U/S of the PDE: outcome {head!r}; edits {edits}")
    rep = _py_widget(nb, "WalkView", "repr(w)")
    assert "#PF error_code 0x7" in rep and "1 edited entry" in rep, rep
    seen.append(f"the kernel's WalkView: {rep}")
    orig = nb.py("print(pt.walk(0x400123, 'w', user=True).fault)").strip()
    assert orig == "None", f"the caller's tables changed: {orig}"
    seen.append("the notebook's own page tables are untouched (pt.walk still translates)")

    reset = player.locator(".vp-w-reset")
    assert reset.is_enabled()
    reset.click()
    back = _wait_out(player, lambda h: h.startswith("GVA"), "the translation after reset")
    assert back == before, back
    assert player.locator(".vp-w-edits li").count() == 0
    seen.append(f"reset: outcome {back!r} again, no edits")
    return seen


def check_shadow(nb: Notebook) -> list[str]:
    """05: the ShadowSyncView steps; the first pf_fixed shows up; Python hears the step."""
    seen = []
    player = nb.player(".vp-shadow")
    nev = int(re.search(r"/(\d+)", player.locator(".vp-counter").text_content()).group(1))
    assert player.locator(".vp-sh-counters .vp-sh-chip").count() > 3
    chip = player.locator(".vp-sh-chip", has=nb.page.locator(".name:text-is('pf_fixed')"))
    fns = []
    cards0 = player.locator(".vp-sh-card:visible").count()
    step0 = _step(player)
    for k in range(1, 40):
        player.locator(FWD).click()
        _wait_step(player, step0 + k)
        fns.append(player.locator(".vp-sh-fn .fn").text_content())
        if chip.locator(".val").text_content() != "0":
            break
    else:
        raise AssertionError(f"pf_fixed never moved in 39 steps: {fns}")
    moved = player.locator(".vp-sh-moved").text_content()
    cards = player.locator(".vp-sh-card:visible").count()
    assert "pf_fixed +1" in moved, moved
    assert cards > cards0, f"shadow pages shown: {cards0} → {cards}"
    seen.append(f"ShadowSyncView: {nev} events; {len(fns)} steps: {' → '.join(dict.fromkeys(fns))}; "
                f"then {moved!r}; shadow pages shown {cards0} → {cards}")
    step_py = _py_widget(nb, "ShadowSyncView", "w.step")
    assert step_py == _step(player), (step_py, _step(player))
    seen.append(f"the kernel's ShadowSyncView.step = {step_py}")
    return seen


def check_ept_walk_live(nb: Notebook) -> list[str]:
    """06: the EPT WalkView is live; R of the PTE flipped (write-only) → misconfiguration."""
    seen = []
    player = nb.player(".vp-walk")
    _live_walk(nb, player)
    before = player.locator(".vp-w-outhead").text_content()
    assert before.startswith("GPA 0x201234 → HPA"), before
    r = player.locator(".vp-w-row[data-level='1'] .vp-w-f[data-key='R']")
    r.click()
    head = _wait_out(player, lambda h: h.startswith("VM exit"), "an EPT misconfiguration")
    assert head.startswith("VM exit: EPT misconfiguration"), head
    assert player.locator(".vp-w-out").get_attribute("data-kind") == "ept_misconfig"
    seen.append(f"EPT WalkView live: {before!r}; clicked R of the EPT PTE → {head!r}")
    rep = _py_widget(nb, "WalkView", "repr(w)")
    assert "EPT misconfig" in rep, rep
    seen.append(f"the kernel's WalkView: {rep}")
    return seen


def _pf_counters(player) -> dict[str, int]:
    """The PacketFlowView's "so far" table: counter key → the value it shows."""
    return {k: int(v) for k, v in player.locator(".vp-pf-val").evaluate_all(
        "els => els.map(e => [e.dataset.key, e.textContent])")}


def _pf_marker(player) -> tuple[str, str]:
    """Where the marker stands (its transform) and which mark is 'cur' (its data-i)."""
    return (player.locator(".vp-pf-marker").evaluate("e => e.style.transform"),
            player.locator(".vp-pf-mark.cur").get_attribute("data-i"))


def check_packet_flow(nb: Notebook) -> list[str]:
    """08: the PacketFlowView draws its lanes; ▶ past the first VM exit moves the marker and
    the "so far" counter; its own "step by" menu steps by exit and through RX 1's journey
    until the frame is in the guest's ring; Python hears the step and counts the same."""
    seen = []
    player = nb.player(".vp-pflow")
    flow = player.locator(".vp-pflow")
    lanes = player.locator(".vp-pf-lane-label > span").all_text_contents()
    marks = player.locator(".vp-pf-mark").count()
    nev = int(re.search(r"/(\d+)", player.locator(".vp-counter").text_content()).group(1))
    assert len(lanes) == 5, f"{len(lanes)} lanes: {lanes}"
    assert marks == nev, f"{marks} marks for {nev} events"
    assert flow.get_attribute("data-visible") == str(nev)
    assert _step(player) == 0
    c0 = _pf_counters(player)
    assert c0 and not any(c0.values()), f"counters at event 1: {c0}"
    assert player.locator(".vp-pf-jbar").count() >= 2, "no frame's journey in the strip"
    seen.append(f"PacketFlowView rendered: {nev} events, {marks} marks in {len(lanes)} lanes "
                f"({', '.join(lanes)}), "
                f"{player.locator('.vp-pf-jbar').count()} journeys, counters all 0")

    # the player's ▶ until the first VM exit: the marker hops, "VM exits" goes 0 → 1
    where = [_pf_marker(player)]
    exits = []
    for k in range(1, 40):
        player.locator(FWD).click()
        _wait_step(player, k)
        where.append(_pf_marker(player))
        assert where[-1][1] == str(k), f"at event {k + 1} the 'cur' mark is {where[-1][1]}"
        assert where[-1][0] != where[-2][0], f"the marker did not move at event {k + 1}"
        exits.append(_pf_counters(player)["vm_exits"])
        if exits[-1]:
            break
    else:
        raise AssertionError(f"'VM exits' never moved in 39 steps: {exits}")
    first_exit = _step(player)
    row = player.locator(".vp-pf-counters tr[data-key='vm_exits']")
    assert exits[-1] == 1 and "changed" in (row.get_attribute("class") or ""), (exits, row)
    label = player.locator(".vp-pf-label").text_content()
    seen.append(f"step forward ×{first_exit}: the marker moved each step; 'VM exits' so far "
                f"0 → 1 at event {first_exit + 1} ({label!r})")

    # the pane's own "step by" menu: VM exits, then the pane's ▶ goes to the next one
    mode = player.locator(".vp-pf-mode")
    mode.select_option("exit")
    pos = player.locator(".vp-pf-pos")
    assert pos.text_content().startswith("VM exit 1 of "), pos.text_content()
    player.locator(".vp-pf-next").click()
    deadline = time.monotonic() + 5
    while _step(player) == first_exit:
        if time.monotonic() > deadline:
            raise AssertionError("the pane's ▶ (by VM exit) did not move the player")
        time.sleep(0.05)
    second = _step(player)
    got = _pf_counters(player)["vm_exits"]
    assert got == 2 and pos.text_content().startswith("VM exit 2 of "), (got, pos.text_content())
    seen.append(f"step by 'VM exits', the pane's ▶: event {first_exit + 1} → {second + 1}, "
                f"{pos.text_content()!r}, 'VM exits' so far = {got}")

    # …then one frame's journey: RX 1 (tap read → the guest's ring), stop by stop
    rx1 = mode.locator("option[value='rx-1']").text_content()
    mode.select_option("rx-1")
    deadline = time.monotonic() + 5
    while not pos.text_content().startswith("RX 1: step 1 of "):
        if time.monotonic() > deadline:
            raise AssertionError(f"choosing RX 1 did not go to its start: {pos.text_content()!r}")
        time.sleep(0.05)
    start = _step(player)
    nstops = int(re.search(r"of (\d+)", pos.text_content()).group(1))
    rx0 = _pf_counters(player)["rx_frames"]
    nxt = player.locator(".vp-pf-next")
    steps = [start]
    for k in range(2, nstops + 1):
        nxt.click()
        deadline = time.monotonic() + 5
        while not pos.text_content().startswith(f"RX 1: step {k} of "):
            if time.monotonic() > deadline:
                raise AssertionError(f"the pane's ▶ in RX 1 stuck at {pos.text_content()!r}")
            time.sleep(0.05)
        steps.append(_step(player))
    assert steps == sorted(steps) and nxt.is_disabled(), (steps, nxt.is_disabled())
    end = _step(player)
    counts = _pf_counters(player)
    journey = player.locator(".vp-pf-journey").text_content()
    assert counts["rx_frames"] == rx0 + 1, f"frames to the guest {rx0} → {counts['rx_frames']}"
    assert "in the guest's ring" in journey, journey
    assert _pf_marker(player)[1] == str(end)
    seen.append(f"step by {rx1[:60]!r}…: event {start + 1} → {end + 1} in {nstops} stops; "
                f"{journey!r}; 'frames to the guest' {rx0} → {counts['rx_frames']}")

    only = player.locator(".vp-pf-only")
    only.check()
    assert flow.get_attribute("data-visible") == str(nstops), flow.get_attribute("data-visible")
    assert player.locator(".vp-pf-mark").count() == nstops
    only.uncheck()
    assert player.locator(".vp-pf-mark").count() == nev
    seen.append(f"'only this frame's events': {nstops} marks, then all {nev} again")

    step_py = _py_widget(nb, "PacketFlowView", "w.step")
    assert step_py == end, f"Python's PacketFlowView.step is {step_py}, the browser shows {end}"
    py_counts = _py_widget(nb, "PacketFlowView", "w.counters_at(w.step)")
    assert py_counts == counts, f"Python counts {py_counts}, the browser shows {counts}"
    seen.append(f"the kernel's PacketFlowView.step = {step_py}; counters_at(step) = the pane's "
                f"'so far' ({counts['vm_exits']} VM exits, {counts['rx_frames']} frame to the guest)")
    return seen


def _rg_card(player, name: str):
    """The RingView's card of queue ``name`` (its title reads "rx (queue 0)")."""
    card = player.locator(".vp-rg-card", has=player.page.locator(
        f".vp-rg-title .t:text-matches('^{name} ')"))
    assert card.count() == 1, f"{card.count()} cards titled {name!r}"
    return card


def _rg(card) -> dict:
    """What a queue card shows: its ring indices (None before the ring exists), the
    owners, the used-ring entries that hold an element (state, id, len), the changed keys."""
    return card.evaluate("""c => {
      const val = (k) => { const e = c.querySelector(`.vp-rg-f[data-k='${k}'] .val`);
                           return e ? e.textContent : null; };
      const own = {};
      for (const e of c.querySelectorAll('.vp-rg-own'))
        own[e.querySelector('.name').textContent] = Number(e.querySelector('.val').textContent);
      const used = [...c.querySelectorAll('.vp-rg-used tbody tr[data-idx]')]
        .filter((tr) => !tr.classList.contains('st-next'))
        .map((tr) => [tr.querySelector('.state').textContent, Number(tr.querySelector('.head').textContent),
                      Number(tr.querySelector('.len').textContent)]);
      const none = c.querySelector('.vp-rg-body > .vp-rg-empty');
      return {empty: none ? none.textContent : null,
              future: c.classList.contains('future'),
              avail: val('avail.idx'), used_idx: val('used.idx'), owners: own, used,
              changed: [...c.querySelectorAll('.changed[data-k]')].map((e) => e.dataset.k)};
    }""")


def check_ring(nb: Notebook) -> list[str]:
    """09: the RingView draws two queue cards (rx, tx) with no ring before the guest set them
    up; a click in the events list jumps to DRIVER_OK, ▶ until the guest publishes its rx
    buffers (avail idx 0 → 4), on until QEMU fills the first rx used entry; Python's
    RingView.step and state_at(step) say what the browser shows."""
    seen = []
    player = nb.player(".vp-ring")
    titles = player.locator(".vp-rg-card .vp-rg-title .t").all_text_contents()
    assert len(titles) == 2 and titles[0].startswith("rx ") and titles[1].startswith("tx "), titles
    rx, tx = _rg_card(player, "rx"), _rg_card(player, "tx")
    nev = int(re.search(r"/(\d+)", player.locator(".vp-counter").text_content()).group(1))
    assert _step(player) == 0
    for name, card in (("rx", rx), ("tx", tx)):
        st = _rg(card)
        assert (st["empty"] or "").startswith("no ring") and st["future"] and st["avail"] is None, \
            f"{name} at event 1: {st}"
    seen.append(f"RingView rendered: {nev} events, queue cards {titles}, both 'no ring' at event 1")

    # the reader's way to a far event: click it in the events list (the driver's DRIVER_OK)
    evs = player.locator(".vp-events li")
    assert evs.count() == nev, f"{evs.count()} events listed, {nev} in the trace"
    ok = evs.filter(has_text="STATUS ← 0x7").first
    at = int(ok.get_attribute("data-i"))
    ok.click()
    _wait_step(player, at)
    r0, t0 = _rg(rx), _rg(tx)
    assert not r0["empty"] and not r0["future"] and r0["avail"] == "0", f"rx at DRIVER_OK: {r0}"
    assert not t0["empty"] and t0["avail"] == "0", f"tx at DRIVER_OK: {t0}"
    seen.append(f"clicked event {at + 1} (DRIVER_OK) in the events list: both rings exist, "
                f"rx avail idx {r0['avail']}, used idx {r0['used_idx']}, owners {r0['owners']}")

    # ▶ until the rx avail idx chip shows 4: the guest published its four receive buffers
    step = at
    for _ in range(40):
        player.locator(FWD).click()
        step += 1
        _wait_step(player, step)
        r1 = _rg(rx)
        if r1["avail"] != "0":
            break
    else:
        raise AssertionError(f"rx avail idx still 0 at event {step + 1}")
    assert r1["avail"] == "4" and "avail.idx" in r1["changed"], r1
    assert r1["owners"]["avail"] == 4 and r1["owners"]["driver"] == r0["owners"]["driver"] - 4, r1
    assert _rg(tx)["avail"] == "0", "the tx card changed with the rx ring"
    published = step
    seen.append(f"step forward ×{step - at}: rx avail idx 0 → {r1['avail']} at event {step + 1} "
                f"(marked changed), owners {r1['owners']}; tx still avail idx 0")

    # on until QEMU fills the first entry of the rx used ring (a frame for the guest)
    for _ in range(80):
        player.locator(FWD).click()
        step += 1
        _wait_step(player, step)
        r2 = _rg(rx)
        if r2["used"]:
            break
    else:
        raise AssertionError(f"no rx used entry by event {step + 1}")
    assert r2["used"][0][0] == "filled" and r2["used"][0][2] > 0, r2
    assert r2["used_idx"] == "0" and "used.slot.0" in r2["changed"], r2
    now = rx.locator(".vp-rg-now").text_content()
    seen.append(f"step forward ×{step - published} more: rx used->ring[0] = "
                f"{{id {r2['used'][0][1]}, len {r2['used'][0][2]}}} {r2['used'][0][0]} at event "
                f"{step + 1}, used idx still {r2['used_idx']} ({now[:70]!r})")
    player.locator(FWD).click()
    step += 1
    _wait_step(player, step)
    r3 = _rg(rx)
    assert r3["used_idx"] == "1" and r3["used"][0][0] == "published", r3
    seen.append(f"▶ once more: rx used idx 0 → 1, the entry {r3['used'][0][0]} "
                f"(owners {r3['owners']})")

    step_py = _py_widget(nb, "RingView", "w.step")
    assert step_py == step, f"Python's RingView.step is {step_py}, the browser shows {step}"
    py = _py_widget(nb, "RingView", "{k: [v['snap']['avail']['idx'], v['snap']['used']['idx'], "
                                    "v['snap']['owners']] for k, v in w.state_at(w.step).items()}")
    t3 = _rg(tx)
    want = {"rx": [int(r3["avail"]), int(r3["used_idx"]), r3["owners"]],
            "tx": [int(t3["avail"]), int(t3["used_idx"]), t3["owners"]]}
    assert py == want, f"Python's state_at({step_py}) {py}, the browser shows {want}"
    seen.append(f"the kernel's RingView.step = {step_py}; state_at(step) = the cards "
                f"(rx avail/used idx {py['rx'][:2]}, tx {py['tx'][:2]})")
    return seen


#: chapter → its checks, in the order a reader meets them
CHECKS = {
    "07_ept_nested.ipynb": [check_walk2d],
    "05_shadow_paging.ipynb": [check_walk_live, check_shadow],
    "06_ept.ipynb": [check_ept_walk_live],
    "08_emulated_nic.ipynb": [check_packet_flow],
    "09_virtio_net.ipynb": [check_ring],
}
