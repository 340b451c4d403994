"""Widgets render a finished Trace: check what Python hands the browser, not pixels.

Browser checks (rendering, stepping, timing) are in test_widgets_browser.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from vbook.errors import TraceError, VbookError
from vbook.models.kvm_api import KVM_RUN_OFFSETS, SIZEOF_KVM_RUN, ExitReason
from vbook.trace import Trace, TraceRecorder
from vbook.widgets import (
    KvmRunView,
    RunLoopTimeline,
    RunView,
    StepError,
    TracePlayer,
    inline_widgets,
    kvm_run_layout,
    show_run,
    static_html,
)
from vbook.widgets.player import CSS, ESM, STATIC_HOST, WIDGET_STATE, WIDGET_VIEW
from vbook.widgets.run_loop import KVM_RUN_HEADER, KVM_RUN_UNION

# the only http(s) string allowed: the SVG namespace name (an identifier, never fetched)
SVG_NS = "http://www.w3.org/2000/svg"
URL = re.compile(r"https?://")


def hand_trace(text: bytes = b"Hi", *, guest_events: bool = True) -> Trace:
    """A trace in the shape vbook.runner.run_guest records, made without a backend.

    Per KVM_RUN: qemu ioctl, kvm entry, guest run, kvm exit (exit_reason and the
    union fields of Exit.to_dict), device io (for IO/MMIO); a qemu stop at the
    end. ``guest_events=False`` leaves out entry and guest run (an older shape
    the timeline also draws, filling in the guest's run itself).
    """
    rec = TraceRecorder(title="hello on unicorn", guest="hello", backend="unicorn")
    rip = 0x1000

    def run(n: int, reason: str, **union) -> None:
        nonlocal rip
        rec.emit("qemu", "ioctl", "KVM_RUN", n=n)
        if guest_events:
            rec.emit("kvm", "entry", "VM entry", rip=rip)
            rec.emit("guest", "run", "guest runs", rip=rip, exit_rip=rip + 5)
        rip += 5
        rec.emit("kvm", "exit", f"KVM_EXIT_{reason}",
                 exit_reason=int(ExitReason[reason]), **union)

    for n, ch in enumerate(text):
        run(n, "IO", direction="out", size=1, port=0x3F8, count=1, data=bytes([ch]).hex())
        rec.emit("device", "io", f"IO out port=0x3f8 size=1 count=1 data={ch:02x}", reply=None)
    run(len(text), "IO", direction="in", size=1, port=0x60, count=1, data="")
    rec.emit("device", "io", "IO in port=0x60 size=1 count=1", reply="41")
    run(len(text) + 1, "MMIO", phys_addr=0xD0000000, len=4, is_write=True, data="78563412")
    rec.emit("device", "io", "MMIO write addr=0xd0000000 len=4 data=78563412", reply=None)
    run(len(text) + 2, "HLT")
    rec.emit("qemu", "stop", "hlt")
    return rec.freeze()


@pytest.fixture(scope="module")
def trace() -> Trace:
    return hand_trace()


def _run_trace() -> Trace | None:
    """The hello guest run by vbook.runner on unicorn, else on /dev/kvm; None if neither runs."""
    try:
        from vbook.guests import ALL
        from vbook.runner import run_guest
    except ImportError:
        return None
    for backend in ("unicorn", "kvm"):
        try:
            return run_guest(ALL["hello"], backend).trace
        except (ImportError, VbookError):
            continue
    return None


# ------------------------------------------------------------------ payload

@pytest.mark.parametrize("cls", [TracePlayer, RunLoopTimeline, KvmRunView, RunView])
def test_payload_is_the_trace_dict_and_round_trips(cls, trace):
    w = cls(trace)
    assert w.trace == trace.to_dict()
    # what ipywidgets actually sends over the comm / stores in the notebook
    sent = w.get_state()["trace"]
    assert json.loads(json.dumps(sent)) == trace.to_dict()
    assert Trace.from_json(json.dumps(sent)) == trace
    assert w.get_trace() == trace


def test_payload_of_a_real_run_trace():
    t = _run_trace()
    if t is None:
        pytest.skip("the hello guest runs on neither unicorn nor /dev/kvm here")
    w = RunLoopTimeline(t)
    assert w.trace == t.to_dict()
    assert Trace.from_json(json.dumps(w.get_state()["trace"])) == t
    exits = [e for e in t if e.actor == "kvm" and e.kind == "exit"]
    assert exits and repr(w).endswith(f"{len(t)} events, {len(exits)} exits)")
    # every exit reason the run produced has a name the browser can show
    names = w.kvm_run["exit_names"]
    assert all(str(e["exit_reason"]) in names for e in exits)
    page = static_html(t)
    assert _state_of(page)["trace"] == t.to_dict()


def test_accepts_anything_with_a_trace(trace):
    class Result:
        def __init__(self, t):
            self.trace = t

    assert RunLoopTimeline(Result(trace)).trace == trace.to_dict()
    assert show_run(Result(trace)).trace == trace.to_dict()
    assert isinstance(show_run(trace), RunView)


def test_rejects_what_is_not_a_trace():
    with pytest.raises(TraceError, match="Trace"):
        RunLoopTimeline({"events": []})
    with pytest.raises(TraceError, match="int"):
        KvmRunView(42)


def test_step_is_checked_and_clamped_on_a_new_trace(trace):
    w = RunLoopTimeline(trace, step=3)
    assert w.step == 3
    with pytest.raises(StepError, match="outside"):
        w.step = len(trace)
    with pytest.raises(StepError):
        RunLoopTimeline(trace, step=-1)
    w.step = len(trace) - 1
    short = hand_trace(b"")
    w.set_trace(short)
    assert w.step == 0 and w.trace == short.to_dict()
    with pytest.raises(VbookError, match="speed"):
        RunLoopTimeline(trace, speed=0)


def test_a_malformed_trace_dict_is_refused(trace):
    w = TracePlayer(trace)
    with pytest.raises(TraceError):
        w.trace = {"events": [{"actor": "martian", "kind": "x"}]}


def test_integers_beyond_javascript_numbers_travel_as_exact_strings():
    rec = TraceRecorder()
    rec.emit("kvm", "exit", "HYPERCALL", exit_reason=3, nr=12,
             args=[1, 2**64 - 1000, 2**53, 2**53 - 1, 0, 0], longmode=1)
    w = KvmRunView(rec.freeze())
    assert w.bigints == {"0/args/1": str(2**64 - 1000), "0/args/2": str(2**53)}
    assert w.trace["events"][0]["data"]["args"][1] == 2**64 - 1000  # the trace is untouched


# ------------------------------------------------------------ kvm_run layout

def test_kvm_run_offsets_come_from_kvm_api(trace):
    for cls in (KvmRunView, RunLoopTimeline, RunView):
        payload = cls(trace).kvm_run
        assert payload["offsets"] == KVM_RUN_OFFSETS
        assert payload["sizeof"] == SIZEOF_KVM_RUN
        assert payload["exit_names"] == {str(r.value): f"KVM_EXIT_{r.name}" for r in ExitReason}
    assert kvm_run_layout()["pio_data_offset"] == 4096


def test_union_fields_are_kvm_api_members_laid_out_without_overlap():
    layout = kvm_run_layout()
    for reason, (member, fields) in KVM_RUN_UNION.items():
        assert reason in ExitReason.__members__
        end = KVM_RUN_OFFSETS[f"{member}.{fields[0][0]}"]
        assert end == KVM_RUN_OFFSETS["io.direction"]  # every member starts the union
        for name, _ctype, size, _key in fields:
            off = KVM_RUN_OFFSETS[f"{member}.{name}"]
            assert off >= end, f"{member}.{name} @{off} overlaps the field before it"
            assert off % min(size, 8) == 0 or _ctype.startswith("__u8["), f"{member}.{name}"
            end = off + size
        assert layout["union"][str(int(ExitReason[reason]))]["member"] == member
    for name, _ctype, size, _key in KVM_RUN_HEADER:
        assert KVM_RUN_OFFSETS[name] + size <= KVM_RUN_OFFSETS["io.direction"]


def test_kvm_run_view_knows_the_fields_a_run_trace_carries(trace):
    union = kvm_run_layout()["union"]
    t = _run_trace()
    seen = set()
    for ev in list(trace) + (list(t) if t is not None else []):
        member = union.get(str(ev.data.get("exit_reason")))
        if ev.kind != "exit" or member is None:
            continue
        assert ev.label == member["reason"]
        keys = {f[3] for f in member["fields"] if f[3] is not None}
        assert keys <= set(ev.data), f"{ev.label}: trace lacks {keys - set(ev.data)}"
        seen.add(member["member"])
    assert {"io", "mmio"} <= seen


# -------------------------------------------------------------------- repr

def test_repr_is_stable_and_has_no_address(trace):
    assert repr(RunLoopTimeline(trace)) == "RunLoopTimeline(trace='hello on unicorn', 25 events, 5 exits)"
    assert repr(KvmRunView(trace)) == "KvmRunView(trace='hello on unicorn', 25 events, 5 exits)"
    assert repr(TracePlayer(trace)) == "TracePlayer(trace='hello on unicorn', 25 events)"
    untitled = TraceRecorder()
    untitled.emit("guest", "note", "x")
    assert repr(TracePlayer(untitled.freeze())) == "TracePlayer(1 events)"
    for cls in (TracePlayer, RunLoopTimeline, KvmRunView, RunView):
        w = cls(trace)
        text = w._repr_mimebundle_()[0]["text/plain"]
        assert text == repr(w) == repr(cls(trace))
        assert "0x" not in text and " at " not in text


# ---------------------------------------------------------------------- ESM

def test_esm_and_css_files_exist_and_esm_exports_render():
    src = ESM.read_text(encoding="utf-8")
    assert CSS.is_file() and STATIC_HOST.is_file()
    assert re.search(r"export\s+default\s*\{[^}]*\brender\b", src) or \
        re.search(r"export\s+(async\s+)?function\s+render\b", src)
    assert not re.search(r"^\s*import\s", src, re.M), "no imports: it must work offline"
    assert not URL.search(src.replace(SVG_NS, "")), "no URLs: nothing is fetched"
    assert str(RunLoopTimeline._esm) == src


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_esm_loads_as_a_module_and_render_is_a_function():
    code = (f"import({json.dumps(ESM.as_uri())}).then(m => "
            "console.log(typeof m.default.render))")
    out = subprocess.run(["node", "--input-type=module", "-e", code], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "function"


# -------------------------------------------------------------- static HTML

class _Scripts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cur: str | None = None
        self.found: dict[str, str] = {}
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            if a.get(k):
                self.external.append(a[k])
        if tag == "script" and a.get("type") == "application/json":
            self.cur = a.get("class")

    def handle_endtag(self, tag):
        self.cur = None

    def handle_data(self, data):
        if self.cur:
            self.found[self.cur] = self.found.get(self.cur, "") + data


def _parse(page: str) -> _Scripts:
    p = _Scripts()
    p.feed(page)
    return p


def _state_of(page: str) -> dict:
    return json.loads(_parse(page).found["vbook-state"])


def test_static_html_inlines_trace_esm_and_css_without_urls(trace):
    page = static_html(trace)
    parsed = _parse(page)
    state = json.loads(parsed.found["vbook-state"])
    assert state["trace"] == trace.to_dict()
    assert Trace.from_json(json.dumps(state["trace"])) == trace
    assert state["kvm_run"]["offsets"] == KVM_RUN_OFFSETS
    assert state["panes"] == "timeline kvm_run"
    assert json.loads(parsed.found["vbook-esm"]) == ESM.read_text(encoding="utf-8")
    assert CSS.read_text(encoding="utf-8") in page
    assert not parsed.external
    assert not URL.search(page.replace(SVG_NS, ""))
    assert page.startswith("<!doctype html>") and "<title>hello on unicorn</title>" in page


def test_static_html_of_a_widget_keeps_its_panes_and_step(trace):
    w = KvmRunView(trace, step=4, speed=8)
    state = _state_of(w.to_html())
    assert (state["panes"], state["step"], state["speed"]) == ("kvm_run", 4, 8.0)
    assert not w.to_html().startswith("<!doctype")
    assert static_html(trace, RunLoopTimeline, step=2).count('class="vbook-static"') == 1
    assert _state_of(static_html(trace, RunLoopTimeline, step=2))["step"] == 2


def test_static_html_cannot_be_closed_early_by_the_trace():
    rec = TraceRecorder(title="</script><script>alert(1)</script>")
    rec.emit("guest", "note", "</script>", text="<!-- & -->")
    page = static_html(rec.freeze(), TracePlayer)
    assert page.count("</script>") == 3  # esm, state, host: nothing from the trace
    assert _state_of(page)["trace"] == rec.freeze().to_dict()


def test_save_html_writes_the_page(trace, tmp_path):
    p = RunView(trace).save_html(tmp_path / "run.html")
    assert _state_of(p.read_text(encoding="utf-8"))["trace"] == trace.to_dict()


def test_inline_widgets_replaces_only_vbook_players(trace):
    w = RunView(trace)
    other = {"_anywidget_id": "someone.else.Widget", "_esm": "export default {}"}
    nb = {
        "metadata": {"widgets": {WIDGET_STATE: {"state": {
            w.model_id: {"state": {**w.get_state(), "_esm": str(w._esm), "_css": str(w._css)}},
            "m2": {"state": other},
        }}}},
        "cells": [{"cell_type": "code", "outputs": [
            {"output_type": "display_data", "data": {
                "text/plain": repr(w), WIDGET_VIEW: {"model_id": w.model_id}}},
            {"output_type": "display_data", "data": {
                "text/plain": "Other()", WIDGET_VIEW: {"model_id": "m2"}}},
        ]}],
    }
    out = inline_widgets(nb)
    first, second = out["cells"][0]["outputs"]
    assert WIDGET_VIEW not in first["data"] and first["data"]["text/plain"] == repr(w)
    assert _state_of(first["data"]["text/html"])["trace"] == trace.to_dict()
    assert second["data"][WIDGET_VIEW] == {"model_id": "m2"}
    assert WIDGET_VIEW in nb["cells"][0]["outputs"][0]["data"], "the input is not changed"


# ------------------------------------------- executed notebook → nbconvert

def _kernel_ok() -> bool:
    try:
        from jupyter_client.kernelspec import KernelSpecManager
        return "python3" in KernelSpecManager().find_kernel_specs()
    except Exception:
        return False


@pytest.mark.skipif(not _kernel_ok(), reason="no python3 Jupyter kernel")
def test_executed_notebook_stores_widget_state_and_exports(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from vbook.widgets import notebook_html

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "from vbook.trace import Trace\n"
        "from vbook.widgets import RunLoopTimeline\n"
        f"RunLoopTimeline(Trace.from_json({hand_trace().to_json()!r}))")]
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": root}}).execute()
    out = nb.cells[0].outputs[0]["data"]
    # nbval compares this text: stable, no object address
    assert out["text/plain"] == "RunLoopTimeline(trace='hello on unicorn', 25 events, 5 exits)"
    stored = nb.metadata["widgets"][WIDGET_STATE]["state"][out[WIDGET_VIEW]["model_id"]]["state"]
    assert stored["trace"] == hand_trace().to_dict()
    assert stored["_anywidget_id"] == "vbook.widgets.run_loop.RunLoopTimeline"

    from nbconvert import HTMLExporter
    plain, _ = HTMLExporter().from_notebook_node(nb)
    assert WIDGET_STATE in plain  # the state is there; the widget manager comes from a CDN
    page = notebook_html(nb)
    parsed = _parse(page)
    assert json.loads(parsed.found["vbook-state"])["trace"] == hand_trace().to_dict()
    (tmp_path / "nb.html").write_text(page, encoding="utf-8")


def test_esm_with_splices_extra_panes_before_the_export(tmp_path):
    import subprocess

    from vbook.widgets.player import esm_with

    pane = tmp_path / "demo_pane.js"
    pane.write_text('PANES.demo = function demoPane(ctx) { return { el: null, update() {} }; };\n')
    src = esm_with(pane)
    assert src.rstrip().endswith("export default { render };")
    assert src.count("export default") == 1 and "PANES.demo" in src
    mod = tmp_path / "m.mjs"
    mod.write_text(src)
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the spliced module was not loaded")
    out = subprocess.run([node, "--input-type=module", "-e",
                          f"import({json.dumps(mod.as_uri())}).then(m => "
                          "console.log(typeof m.default.render))"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "function", out.stderr
