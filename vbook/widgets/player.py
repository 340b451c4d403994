"""TracePlayer: the base of every vbook widget — a finished Trace, stepped in the browser.

Python sets one synced traitlet, ``trace`` (exactly ``Trace.to_dict()``), and
says which ``panes`` to draw; the JavaScript in ``trace_player.js`` does the
rest: play, pause, step, scrub, speed. The browser writes the current event
index back to ``step``. Because nothing after the first render needs the
kernel, a player also animates in a static page: with the notebook's stored
widget state, or with :func:`static_html`, which inlines the same ESM, CSS and
state into one self-contained HTML page that needs no network.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, ClassVar

import anywidget
import traitlets

from vbook.errors import TraceError, VbookError
from vbook.trace import Trace

HERE = Path(__file__).parent
ESM = HERE / "trace_player.js"
CSS = HERE / "trace_player.css"
STATIC_HOST = HERE / "static_host.js"

_EXPORT = "export default { render };"


def esm_with(*pane_files: Path) -> str:
    """The player's ESM with more panes: each file registers ``PANES.<name> = (ctx) => …``.

    The files are spliced in before the ``export`` line, so they share the
    player's module scope (its helpers ``h``, ``s``, ``describe``, ``PANES`` …)
    and need no imports — one self-contained module, offline as before. A
    widget that uses them sets ``_esm = esm_with(HERE / "my_pane.js")`` and
    names the pane in ``panes``.
    """
    base = ESM.read_text(encoding="utf-8")
    if base.rstrip().count(_EXPORT) != 1 or not base.rstrip().endswith(_EXPORT):
        raise VbookError(f"{ESM.name} must end with {_EXPORT!r} to take extra panes")
    extra = "\n".join(f"// ---- {f.name}\n" + f.read_text(encoding="utf-8") for f in pane_files)
    return base.rstrip()[: -len(_EXPORT)] + extra + "\n" + _EXPORT + "\n"


#: integers beyond this lose precision as JavaScript numbers
_JS_SAFE = 2**53 - 1


class StepError(VbookError, IndexError):
    """A player was asked to show an event the trace does not have."""


def as_trace(obj: Any) -> Trace:
    """A :class:`~vbook.trace.Trace`, or the ``.trace`` of a result such as ``RunResult``."""
    if isinstance(obj, Trace):
        return obj
    inner = getattr(obj, "trace", None)
    if isinstance(inner, Trace):
        return inner
    raise TraceError(
        "a player needs a vbook.trace.Trace or an object with a .trace "
        f"(like vbook.runner.RunResult), got {type(obj).__name__}"
    )


def unsafe_ints(trace: dict[str, Any]) -> dict[str, str]:
    """Integers in event data too large for a JavaScript number, as exact decimal strings.

    Keys are ``"<event index>/<key>[/<list index or key>…]"``. The trace itself
    is passed unchanged; the browser looks a value up here first, so a 64-bit
    hypercall argument or page-table entry shows exactly.
    """
    out: dict[str, str] = {}

    def walk(v: Any, path: str) -> None:
        if isinstance(v, bool):
            return
        if isinstance(v, int):
            if abs(v) > _JS_SAFE:
                out[path] = str(v)
        elif isinstance(v, list):
            for j, x in enumerate(v):
                walk(x, f"{path}/{j}")
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}/{k}")

    for i, ev in enumerate(trace.get("events", [])):
        for k, v in ev.get("data", {}).items():
            walk(v, f"{i}/{k}")
    return out


class TracePlayer(anywidget.AnyWidget):
    """Step through any :class:`~vbook.trace.Trace` in the browser (an event list).

    ``TracePlayer(trace, step=0, speed=2.0)``: ``trace`` is a Trace or an
    object with a ``.trace``; ``step`` the event shown first; ``speed`` events
    per second while playing. Subclasses choose the panes.
    """

    _esm = ESM
    _css = CSS

    #: the whole trace, exactly ``Trace.to_dict()``
    trace = traitlets.Dict().tag(sync=True)
    #: index of the current event; the browser updates it
    step = traitlets.Int(0).tag(sync=True)
    #: events per second while playing
    speed = traitlets.Float(2.0).tag(sync=True)
    #: which views the browser draws, space-separated: timeline, kvm_run, events
    panes = traitlets.Unicode("events").tag(sync=True)
    #: exact decimal strings of integers a JavaScript number cannot hold
    bigints = traitlets.Dict().tag(sync=True)

    #: synced traitlets a static page needs (the rest is ipywidgets plumbing)
    STATE: ClassVar[tuple[str, ...]] = ("trace", "step", "speed", "panes", "bigints")

    def __init__(self, trace: Any, *, step: int = 0, speed: float = 2.0, **kw: Any):
        t = as_trace(trace)
        super().__init__(trace=t.to_dict(), speed=speed, **kw)
        self.step = step

    @traitlets.validate("trace")
    def _check_trace(self, proposal: Any) -> dict[str, Any]:
        # the same checks as a trace read back from JSON; the dict itself is kept
        Trace.from_json(json.dumps(proposal["value"]))
        return proposal["value"]

    @traitlets.observe("trace")
    def _trace_changed(self, change: Any) -> None:
        self.bigints = unsafe_ints(change["new"])
        if self.step >= max(1, len(change["new"]["events"])):
            self.step = 0

    @traitlets.validate("step")
    def _check_step(self, proposal: Any) -> int:
        step = proposal["value"]
        n = len(self.trace.get("events", []))
        if not 0 <= step < max(1, n):
            raise StepError(f"step {step} is outside this trace's events [0, {n})")
        return step

    @traitlets.validate("speed")
    def _check_speed(self, proposal: Any) -> float:
        if not proposal["value"] > 0:
            raise VbookError(f"speed must be a positive number of events per second, "
                             f"got {proposal['value']}")
        return proposal["value"]

    def set_trace(self, trace: Any) -> None:
        """Show another trace (a Trace or an object with a ``.trace``), from its first event."""
        self.step = 0
        self.trace = as_trace(trace).to_dict()

    def get_trace(self) -> Trace:
        """The trace this player shows, as a :class:`~vbook.trace.Trace`."""
        return Trace.from_json(json.dumps(self.trace))

    def static_state(self) -> dict[str, Any]:
        """The synced state the browser renders from (what :func:`static_html` inlines)."""
        return {name: getattr(self, name) for name in self.STATE}

    def to_html(self, full_page: bool = False) -> str:
        """This player as self-contained HTML (ESM, CSS and state inlined; no network)."""
        return static_html(self, full_page=full_page)

    def save_html(self, path: str | Path) -> Path:
        """Write this player as a self-contained HTML page; returns the path."""
        p = Path(path)
        p.write_text(static_html(self, full_page=True), encoding="utf-8")
        return p

    def __repr__(self) -> str:
        n = len(self.trace.get("events", []))
        title = self.trace.get("meta", {}).get("title")
        name = type(self).__name__
        return f"{name}(trace={title!r}, {n} events)" if title else f"{name}({n} events)"


def _script_json(value: Any) -> str:
    """JSON safe inside <script type="application/json">: no '<' can close the tag."""
    s = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _snippet(state: dict[str, Any], esm: str, css: str) -> str:
    return (
        '<div class="vbook-static">\n'
        f"<style>\n{css}\n</style>\n"
        f'<script type="application/json" class="vbook-esm">{_script_json(esm)}</script>\n'
        f'<script type="application/json" class="vbook-state">{_script_json(state)}</script>\n'
        '<div class="vbook-mount"></div>\n'
        f"<script>\n{STATIC_HOST.read_text(encoding='utf-8')}</script>\n"
        "</div>\n"
    )


def _page(body: str, title: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{margin:16px;font-family:system-ui,sans-serif;}</style>\n"
        f"</head>\n<body>\n{body}</body>\n</html>\n"
    )


def static_html(obj: Any, widget: type[TracePlayer] | None = None, *,
                full_page: bool = True, title: str | None = None, **kw: Any) -> str:
    """A self-contained HTML page (or snippet) that renders a player with no kernel.

    ``obj`` is a :class:`TracePlayer`, or a Trace / ``RunResult`` shown with
    ``widget`` (default :class:`~vbook.widgets.RunView`; extra keyword
    arguments go to its constructor). The widget's own ESM and CSS are inlined
    with its state as JSON, and a small host script (``static_host.js``) gives
    the ESM the ``model`` it expects: the same JavaScript renders it, with no
    widget manager, CDN or network. Several snippets can share one page.
    """
    if isinstance(obj, TracePlayer):
        state, esm, css = obj.static_state(), str(obj._esm), str(obj._css)
    else:
        if widget is None:
            from vbook.widgets.run_loop import RunView
            widget = RunView
        w = widget(as_trace(obj), **kw)
        try:
            state, esm, css = w.static_state(), str(w._esm), str(w._css)
        finally:
            w.close()
    snippet = _snippet(state, esm, css)
    if not full_page:
        return snippet
    page_title = title or state["trace"].get("meta", {}).get("title") or "vbook trace"
    return _page(snippet, str(page_title))


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_PLUMBING = {"layout", "tabbable", "tooltip"}


def inline_widgets(nb: Any) -> Any:
    """A copy of an executed notebook whose vbook players are self-contained HTML outputs.

    nbconvert's HTML shows widgets only by loading the widget manager from a
    CDN. For a site that must work offline, this replaces each output that
    shows a vbook player (found in the widget state nbclient stored with
    ``store_widget_state=True``) by a ``text/html`` output made by the same
    code as :func:`static_html`, from the stored state. Other widgets and
    outputs are left alone. Then convert as usual, or call :func:`notebook_html`.
    """
    import copy

    nb = copy.deepcopy(nb)
    stored = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if not view:
                continue
            model = stored.get(view.get("model_id"), {}).get("state", {})
            if not str(model.get("_anywidget_id", "")).startswith("vbook.widgets."):
                continue
            state = {k: v for k, v in model.items()
                     if not k.startswith("_") and k not in _PLUMBING}
            out["data"] = {
                "text/html": _snippet(state, model["_esm"], model.get("_css", "")),
                "text/plain": out["data"].get("text/plain", ""),
            }
    if not any(WIDGET_VIEW in out.get("data", {})
               for cell in nb.get("cells", []) for out in cell.get("outputs", [])):
        # every player is inlined: without stored state nbconvert adds no widget manager
        nb.get("metadata", {}).pop("widgets", None)
    return nb


def notebook_html(nb: Any) -> str:
    """nbconvert HTML of an executed notebook, with vbook players inlined (see :func:`inline_widgets`)."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(inline_widgets(nb))
    return body


class RecordedViewPlayer(TracePlayer):
    """A player whose pane draws what a recorder noted while the model ran (the shadow
    MMU's pages, a virtqueue's bytes): the view travels in ``trace.meta[view_key]``, built by
    the subclass's ``_view_of(obj) -> (trace, view)``; a view recorded for another trace
    (a different number of events) is refused."""

    view_key: ClassVar[str] = ""

    def __init__(self, obj: Any, *, step: int = 0, speed: float = 4.0, **kw: Any):
        super().__init__(self._with_view(obj), step=step, speed=speed, **kw)

    @classmethod
    def _view_of(cls, obj: Any) -> tuple[Trace, dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _with_view(cls, obj: Any) -> Trace:
        t, view = cls._view_of(obj)
        if view["recorded"] and view["events"] != len(t):
            raise TraceError(f"the recorder noted {view['events']} events, the trace has {len(t)}")
        return Trace(t.events, {**dict(t.meta), cls.view_key: view})

    def set_trace(self, trace: Any) -> None:
        """Show another run (what the constructor takes), from its first event."""
        self.step = 0
        self.trace = self._with_view(trace).to_dict()

    @property
    def view(self) -> dict[str, Any]:
        """What the pane draws: ``trace["meta"][view_key]``."""
        return dict(self.trace.get("meta", {}).get(self.view_key, {}))
