"""KernelLoopView: payload, repr, ESM splice, static page, and (optional) a real browser."""

from __future__ import annotations

import json

import pytest
from _browser import page_opener, seek
from _panes import assert_player_plus_pane, render_type_in_node

from vbook.models.kvm_kernel import KvmConfig, VmExit, kvm_run
from vbook.trace import Trace
from vbook.widgets import static_html
from vbook.widgets.kernel_loop import PANE_CSS, PANE_JS, KernelLoopView, show_kernel_loop

EXITS = ([VmExit.cpuid(0x40000000, rip=0x101A)] * 3
         + [VmExit.io(0xE0, 4, data=bytes([3, 0, 0, 0]), rip=0x1026), VmExit.hlt(0x102D)])


@pytest.fixture
def run():
    return kvm_run(EXITS, title="cpuid_loop")


def test_payload_is_the_trace_and_repr_is_stable(run):
    w = KernelLoopView(run)
    assert w.trace == run.trace.to_dict() and w.panes == "kernel" and w.speed == 4.0
    assert repr(w) == ("KernelLoopView(trace='cpuid_loop', 87 events, 5 VM exits: 3 in the "
                       "kernel, 2 to user space)")
    assert w.vm_exits() == {"kernel": 3, "user": 2, "blocked": 0}
    assert Trace.from_json(json.dumps(w.trace)) == run.trace
    assert w.kvm_run["exit_names"]["2"] == "KVM_EXIT_IO"
    q = show_kernel_loop(kvm_run(EXITS, KvmConfig.qemu([0xE0])), step=3)
    assert q.step == 3 and repr(q).endswith("4 in the kernel, 0 to user space, 1 asleep)")


def test_esm_is_the_player_plus_the_pane(run):
    assert_player_plus_pane(KernelLoopView, PANE_JS, PANE_CSS, "kernel")


def test_esm_with_the_pane_loads_as_a_module(tmp_path):
    assert render_type_in_node(str(KernelLoopView._esm), tmp_path) == "function"


def test_static_html_carries_the_pane(run):
    page = static_html(KernelLoopView(run))
    assert "PANES.kernel" in page and "vp-kl-stack" in page and "kvm_emulate_cpuid" in page


# --- in a browser ------------------------------------------------------------------------

@pytest.fixture
def page_of(tmp_path):
    with page_opener(tmp_path, ".vbook-player .vp-kl-head", name="kl.html",
                     viewport=(1100, 800)) as opened:
        yield opened


def test_pane_steps_down_and_up_the_kernel(run, page_of):
    open_page, problems = page_of
    page = open_page(static_html(KernelLoopView(run)))
    assert page.inner_text(".vp-kl-head").startswith(
        "5 VM exits · 3 handled in the kernel · 2 to user space")
    assert page.locator(".vp-kl-exit.where-kernel").count() == 3
    assert page.locator(".vp-kl-exit.where-user").count() == 2
    events = run.trace.events
    handler = next(i for i, e in enumerate(events) if e.label == "kvm_cpuid")
    seek(page, handler)
    stack = page.inner_text(".vp-kl-stack").splitlines()
    assert stack[:2] == ["kernel call stack", "kvm_vcpu_ioctl"]
    assert [line.split()[0] for line in stack[1:]] == [
        "kvm_vcpu_ioctl", "kvm_arch_vcpu_ioctl_run", "vcpu_run", "vcpu_enter_guest",
        "vmx_handle_exit", "__vmx_handle_exit", "kvm_emulate_cpuid", "kvm_cpuid"]
    assert page.inner_text(".vp-caption-text").startswith("kvm_cpuid()   arch/x86/kvm/cpuid.c")
    back_up = next(i for i in range(handler, len(events))
                   if events[i].label == "vcpu_enter_guest returns 1")
    seek(page, back_up)
    assert page.inner_text(".vp-kl-stack").splitlines()[-1].startswith(
        "vcpu_enter_guest → returns 1")
    assert page.inner_text(".vp-caption-note") == "vcpu_run loops"
    cpuid_exit = next(i for i, e in enumerate(events) if e.kind == "vmexit")
    page.click(f".vp-kl-node >> nth={cpuid_exit}")
    assert page.inner_text(".vp-caption-text").startswith("VM exit 10 (EXIT_REASON_CPUID)")
    assert "user space never saw it" in page.inner_text(".vp-caption-note")
    vmexit = next(i for i, e in enumerate(events) if e.kind == "vmexit" and e["name"] == "IO_INSTRUCTION")
    seek(page, vmexit)
    assert page.inner_text(".vp-caption-text").startswith(
        "VM exit 30 (EXIT_REASON_IO_INSTRUCTION) at rip 0x1026 — OUT port 0xe0 size 4; "
        "handler handle_io")
    assert "KVM_RUN returns to user space" in page.inner_text(".vp-caption-note")
    page.click(".vp-kl-node.kind-ioctl >> nth=1")  # the second KVM_RUN
    assert page.inner_text(".vp-kl-stack").startswith("user space")
    assert problems == []


def test_exit_chart_draws_the_counts(run):
    from vbook.widgets.kernel_loop import exit_chart

    runs = {"cpuid_loop": {"bare": run, "irqchip": kvm_run(EXITS, KvmConfig(irqchip=True))}}
    fig = exit_chart(runs, run)
    left, right = fig.axes
    widths = [p.get_width() for p in left.patches]  # kernel, user, blocked per row, stacked
    assert widths == [3, 3, 2, 1, 0, 1]
    assert [p.get_height() for p in right.patches] == [8, 8, 8, 15, 6]
    assert [t.get_text() for t in right.get_xticklabels()] == ["CPUID"] * 3 + ["IO", "HLT"]
    assert repr(fig).startswith("<Figure size 1100x")
