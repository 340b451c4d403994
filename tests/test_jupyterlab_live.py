"""The widgets in a real, running JupyterLab with a live kernel — as a reader meets them.

Every other widget test renders a static page; this one starts ``jupyter lab`` (this
venv's) on a temp copy of chapters/, opens chapters 07, 05, 06, 08 and 09 in Debian's
chromium, runs all cells through the menus (08's and 09's tap cells included: they use a
real tap where they can, and say why not elsewhere), and then:

* 07: the Walk2dGrid draws its 24 cells; step forward and play light them in order
  ("reference k of 24"), and the kernel's widget hears the step;
* 05: the WalkView goes live (Python answered its hello), a click on U/S of the PDE makes
  Python walk again → "#PF, error code 0x7", reset goes back; the ShadowSyncView steps to
  the first ``pf_fixed``;
* 06: the EPT WalkView: R of the PTE flipped (-wx) → EPT misconfiguration;
* 08: the PacketFlowView draws its five lanes; the player's ▶ moves the marker and, past
  the first VM exit, the "so far" count of VM exits (0 → 1); the pane's own "step by"
  menu steps by VM exit, then through RX 1's journey until the frame is in the guest's
  ring; the kernel's widget has the same step and counts the same (``counters_at``);
* 09: the RingView draws two queue cards (rx, tx), with no ring at first; a click in the
  events list jumps to DRIVER_OK, ▶ until rx's avail idx is 4, on until QEMU fills the
  first rx used entry and publishes it; the kernel's ``RingView.step`` and
  ``state_at(step)`` say what the cards show;
* no uncaught page error and no console error from a widget module.

60–90 s here (one JupyterLab server, one page load, five kernels; the spread is the
machine's load). Opt-in, because ``make test`` runs the suite twice and this needs a
browser and a server: run it with ``make lab-test`` (``VBOOK_LAB_TESTS=1 pytest
tests/test_jupyterlab_live.py``) or ``pytest -m lab``, or for a human-readable account
``python tools/lab_smoke.py``. Skips with the reason when
jupyterlab, playwright-python or a system chromium is missing. The checks live in
tests/_lab.py, shared with tools/lab_smoke.py.
"""

from __future__ import annotations

import os
import time

import pytest
from _lab import CHAPTERS, CHECKS, Notebook, lab_browser, missing, running_lab

WHY = missing()

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(WHY is not None, reason=f"live JupyterLab test: {WHY}"),
]


def _selected_by_marker(config) -> bool:
    expr = (getattr(config.option, "markexpr", "") or "").replace(" ", "")
    return "lab" in expr and "notlab" not in expr


@pytest.fixture(scope="module")
def browser(request):
    if os.environ.get("VBOOK_LAB_TESTS") != "1" and not _selected_by_marker(request.config):
        pytest.skip("opt-in (60-90 s, a JupyterLab server and chromium): set VBOOK_LAB_TESTS=1 "
                    "or select it with -m lab")
    t0 = time.monotonic()
    with running_lab(list(CHECKS)) as lab, lab_browser(lab) as b:
        # the server's root is a temp copy: whatever JupyterLab saves stays there
        assert not lab.root.resolve().is_relative_to(CHAPTERS.parent.resolve())
        assert sorted(p.name for p in lab.root.glob("*.ipynb")) == sorted(CHECKS)
        b.started = t0
        yield b


def _chapter(browser, name: str) -> list[str]:
    nb = Notebook(browser, name)
    problems = len(browser.vbook_problems())
    try:
        nb.run_all()
        seen = []
        for check in CHECKS[name]:
            seen += check(nb)
        new = browser.vbook_problems()[problems:]
        assert not new, f"JavaScript errors from vbook / anywidget in {name}: {new}"
        print(f"{name}: " + "; ".join(f"{k} {v:.1f} s" for k, v in nb.timings.items()))
        for line in seen:
            print(f"  {line}")
        return seen
    finally:
        nb.close()


def test_ch07_walk2d_grid_steps_and_plays(browser):
    seen = _chapter(browser, "07_ept_nested.ipynb")
    assert any("Walk2dGrid.step = 3" in s for s in seen)


def test_ch05_walk_view_is_live_and_shadow_view_steps(browser):
    seen = _chapter(browser, "05_shadow_paging.ipynb")
    assert any("#PF, error code 0x7" in s for s in seen)


def test_ch06_ept_walk_flip_r_gives_misconfiguration(browser):
    seen = _chapter(browser, "06_ept.ipynb")
    assert any("EPT misconfiguration" in s for s in seen)


def test_ch08_packet_flow_steps_by_exit_and_through_a_journey(browser):
    seen = _chapter(browser, "08_emulated_nic.ipynb")
    assert any("'VM exits' so far 0 → 1" in s for s in seen)
    assert any("PacketFlowView.step = " in s and "counters_at(step) = the pane's" in s
               for s in seen)


def test_ch09_ring_view_cards_step_and_match_python(browser):
    seen = _chapter(browser, "09_virtio_net.ipynb")
    assert any("rx avail idx 0 → 4" in s for s in seen)
    assert any("RingView.step = " in s and "state_at(step) = the cards" in s for s in seen)


def test_no_widget_errors_and_nothing_left_127_0_0_1(browser):
    assert browser.vbook_problems() == []
    assert browser.errors == []
    # JupyterLab itself asks for nothing outside (news and update checks are off)
    assert browser.refused == []
    elapsed = time.monotonic() - browser.started
    print(f"lab up + {len(CHECKS)} chapters: {elapsed:.1f} s")
