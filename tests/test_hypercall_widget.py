"""HypercallView: the payload Python hands the browser, and (optional) the pane in Chromium.

The browser tests need playwright-python and a system Chromium, and skip without them.
"""

from __future__ import annotations

import json

import pytest
from _browser import NEEDS_BROWSER, page_opener, seek
from _panes import assert_player_plus_pane, render_type_in_node

from vbook.backends import available
from vbook.guests import EXTRA
from vbook.hypercall_run import run_hypercalls
from vbook.models import hypercall as hc
from vbook.models.kvm_api import ExitReason, Hypercall, HypercallError
from vbook.trace import Trace, TraceRecorder
from vbook.widgets import static_html
from vbook.widgets.hypercall import (
    PANE_CSS,
    PANE_JS,
    HypercallView,
    hypercall_layout,
    show_hypercalls,
)

U64 = 2**64
MAP_GPA_ON = 1 << 12


@pytest.fixture(scope="module")
def run():
    if available()["unicorn"] is not None:
        pytest.skip(f"unicorn backend: {available()['unicorn']}")
    return run_hypercalls(EXTRA["hypercalls"], hypercall_exit_enabled=MAP_GPA_ON)


def test_layout_comes_from_the_model():
    lay = hypercall_layout()
    assert lay["registers"] == [["rax", "nr"], ["rbx", "a0"], ["rcx", "a1"], ["rdx", "a2"],
                                ["rsi", "a3"]]
    assert [r for r, _ in lay["registers"]] == list(hc.REGISTERS)
    assert lay["ret_register"] == hc.RET_REGISTER == "rax"
    assert lay["exit_reason_vmcall"] == hc.EXIT_REASON_VMCALL == 18
    assert lay["svm_exit_vmmcall"] == hc.SVM_EXIT_VMMCALL == 0x81
    assert lay["exit_hypercall"] == int(ExitReason.HYPERCALL) == 3
    assert lay["insn_len"] == 3 and lay["vmcall"] == "0f 01 c1" and lay["vmmcall"] == "0f 01 d9"
    assert lay["hypercalls"] == {str(int(h)): f"KVM_HC_{h.name}" for h in Hypercall}
    assert lay["errors"]["1000"] == "KVM_ENOSYS" and lay["errors"]["1"] == "KVM_EPERM"
    assert set(lay["errors"].values()) == {f"KVM_{e.name}" for e in HypercallError}
    json.dumps(lay)  # plain JSON


def test_payload_is_the_run_trace_plus_the_abi(run):
    w = HypercallView(run)
    t = w.get_trace()
    assert t.events == run.trace.events
    assert w.trace["meta"]["hypercall_abi"] == json.loads(json.dumps(hypercall_layout()))
    assert "hypercall_abi" not in run.trace.meta  # the run's own trace is left alone
    assert w.panes == "hypercall timeline"
    # starts at the first VMCALL
    assert (w.trace["events"][w.step]["actor"], w.trace["events"][w.step]["kind"]) == (
        "guest", "vmcall")
    # 64-bit results travel as exact strings (JavaScript numbers cannot hold them)
    assert str(U64 - 1000) in w.bigints.values() and str(U64 - 1) in w.bigints.values()
    assert w.hypercalls == 10
    assert repr(w) == ("HypercallView(trace='hypercalls on unicorn: hypercalls', 60 events, "
                       "2 exits, 10 hypercalls)")
    one = HypercallView(run_hypercalls(EXTRA["hypercalls"]))
    assert repr(one) == ("HypercallView(trace='hypercalls on unicorn: hypercalls', 55 events, "
                         "1 exit, 10 hypercalls)")
    assert repr(show_hypercalls(run, step=0)).startswith("HypercallView(")
    assert show_hypercalls(run, step=0).step == 0


def test_a_trace_with_no_vmcall_starts_at_zero():
    rec = TraceRecorder(title="t")
    rec.emit("qemu", "ioctl", "KVM_RUN", n=0)
    w = HypercallView(rec.freeze())
    assert w.step == 0 and w.hypercalls == 0


def test_esm_is_the_player_plus_the_pane_and_css_both():
    assert_player_plus_pane(HypercallView, PANE_JS, PANE_CSS, "hypercall")


def test_esm_with_the_pane_loads_as_a_module(tmp_path):
    assert render_type_in_node(str(HypercallView._esm), tmp_path) == "function"


def test_static_html_carries_the_pane(run):
    page = static_html(HypercallView(run))
    assert "PANES.hypercall" in page and "vp-hc-path" in page and "hypercall_abi" in page


def test_trace_json_round_trip_of_the_widget(run):
    w = HypercallView(run)
    assert Trace.from_json(json.dumps(w.trace)) == w.get_trace()


# --- in a browser ------------------------------------------------------------------------

@pytest.fixture
def page_of(tmp_path):
    with page_opener(tmp_path, ".vbook-player .vp-hc-head", name="hc.html") as opened:
        yield opened


@NEEDS_BROWSER[0]
@NEEDS_BROWSER[1]
def test_pane_steps_through_a_refused_and_a_detoured_hypercall(run, page_of):
    open_page, problems = page_of
    page = open_page(static_html(HypercallView(run)))
    caption = lambda: page.inner_text(".vp-caption-text")  # noqa: E731
    assert caption().startswith("hypercall #1: VMCALL at rip 0x10ac — KVM_HC_VAPIC_POLL_IRQ")
    assert page.inner_text(".vp-hc-head").startswith("hypercall 1 of 10: KVM_HC_VAPIC_POLL_IRQ")
    assert page.locator(".vp-hc-node.cur").count() == 1
    # the CPL 3 hypercall: after its skip, RAX is -1 = -KVM_EPERM
    events = run.trace.events
    skip8 = next(i for i, e in enumerate(events) if e.kind == "skip" and e.data["hc"] == 8)
    seek(page, skip8)
    regs = page.inner_text(".vp-hc-regs")
    assert "0xffffffffffffffff = -1 (-KVM_EPERM)" in regs
    assert page.inner_text(".vp-hc-node.cur").startswith("kvm_skip_")
    assert "CPL check" in page.inner_text(".vp-hc-path")
    page.click(".vp-hc-list tbody tr[data-hc='6']")  # jump to MAP_GPA_RANGE
    assert caption().startswith("hypercall #7: VMCALL")
    user = next(i for i, e in enumerate(events) if e.actor == "qemu" and e.kind == "hypercall")
    seek(page, user)
    assert page.inner_text(".vp-hc-node.cur").startswith("user space")
    assert "hypercall.ret = 0x0" in page.inner_text(".vp-hc-node.cur")
    assert page.locator(".vp-hc-path .unused").count() == 0
    assert problems == []
