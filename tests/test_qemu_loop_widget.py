"""QemuLoopView without a browser: its module, its payload, its repr."""

from _panes import assert_player_plus_pane, render_type_in_node

from vbook.widgets.qemu_loop import PANE_CSS, PANE_JS, QemuLoopView


def test_esm_is_the_player_plus_the_qemu_pane():
    assert_player_plus_pane(QemuLoopView, PANE_JS, PANE_CSS, "qemu")
    assert QemuLoopView.panes.default_value.split() == ["qemu", "timeline", "kvm_run"]


def test_esm_with_the_pane_loads_as_a_module(tmp_path):
    assert render_type_in_node(str(QemuLoopView._esm), tmp_path) == "function"
