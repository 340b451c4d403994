"""The `vbook` command line: parsing, output formats, one-line errors, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import vbook.cli as cli
import vbook.runner as runner
from vbook.backends.base import Exit, IoExit, Regs, VCpu
from vbook.bus import COM1
from vbook.errors import BackendUnavailable, HypercallNotCompleted
from vbook.guests.base import Guest
from vbook.models.kvm_api import ExitReason, IoDirection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OUT = [Exit(ExitReason.IO, io=IoExit(IoDirection.OUT, 1, COM1, 1, bytes([c]))) for c in b"Hi\n"]
HLT = Exit(ExitReason.HLT)


class Scripted(VCpu):
    """A vCPU that returns a fixed list of exits (so the real runner can drive it)."""

    backend = "unicorn"

    def __init__(self, script):
        self.script = list(script)

    @classmethod
    def check_available(cls):
        pass

    @classmethod
    def from_guest(cls, guest, **kw):
        return cls(OUT + [HLT])

    def run(self):
        return self.script.pop(0)

    def complete(self, data):
        pass

    def get_regs(self):
        return Regs()

    def set_regs(self, regs):
        pass

    def read_memory(self, gpa, n):
        return bytes(n)

    def close(self):
        pass


GUESTS = {
    "alpha": Guest("alpha", 16, b"\xf4", "hlt", description="prints Hi"),
    "beta": Guest("beta", 64, b"\xf4", "hlt", description="another"),
}


@pytest.fixture
def fake(monkeypatch):
    """Fake guest list; the real runner loop with a scripted vCPU instead of a backend."""
    monkeypatch.setattr(cli, "_load_guests", lambda: dict(GUESTS))
    monkeypatch.setattr(runner, "open_vcpu", lambda guest, backend, **kw: Scripted.from_guest(guest))
    monkeypatch.setattr(runner, "pick", lambda backend: "unicorn" if backend == "auto" else backend)


def run_main(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# --- parsing and usage errors ----------------------------------------------------------

def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "vbook: error: the following arguments are required: COMMAND"


def test_unknown_backend_is_a_usage_error(capsys, fake):
    with pytest.raises(SystemExit) as e:
        cli.main(["trace", "alpha", "--backend", "qemu"])
    assert e.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("vbook trace: error: argument --backend: invalid choice: 'qemu'")


def test_unknown_format_is_a_usage_error(capsys, fake):
    with pytest.raises(SystemExit) as e:
        cli.main(["trace", "alpha", "--format", "yaml"])
    assert e.value.code == 2


def test_unknown_guest_lists_the_valid_names_in_one_line(capsys, fake):
    rc, out, err = run_main(capsys, "trace", "gamma", "--backend", "unicorn")
    assert rc == 2 and out == ""
    assert err == "vbook: error: unknown guest 'gamma'; valid guests: alpha, beta\n"


def test_parser_defaults():
    args = cli.build_parser().parse_args(["trace", "hello"])
    assert (args.guest, args.backend, args.format, args.max_exits) == ("hello", "unicorn",
                                                                        "text", 10_000)


# --- trace output ------------------------------------------------------------------------

def test_trace_json(capsys, fake):
    rc, out, err = run_main(capsys, "trace", "alpha", "--backend", "unicorn", "--format", "json")
    assert rc == 0 and err == ""
    d = json.loads(out)
    assert d["guest"] == "alpha" and d["backend"] == "unicorn"
    assert [e["reason"] for e in d["exits"]] == ["IO", "IO", "IO", "HLT"]
    assert d["exits"][0] == {"reason": "IO", "direction": "out", "size": 1, "port": COM1,
                             "count": 1, "data": "48"}
    assert d["console"] == "Hi\n" and d["end"] == "hlt"


def test_trace_text(capsys, fake):
    rc, out, err = run_main(capsys, "trace", "alpha", "--backend", "auto")
    assert rc == 0 and err == ""
    assert out.splitlines() == [
        "IO out port=0x3f8 size=1 count=1 data=48",
        "IO out port=0x3f8 size=1 count=1 data=69",
        "IO out port=0x3f8 size=1 count=1 data=0a",
        "HLT",
        "--- console (3 chars) ---",
        "Hi",
        "--- ended by hlt after 4 exits on unicorn ---",
    ]


def test_trace_passes_the_exit_budget(capsys, fake):
    rc, out, err = run_main(capsys, "trace", "alpha", "--max-exits", "2")
    assert rc == 1 and out == ""
    assert err == "vbook: error: guest 'alpha' made 2 exits without halting\n"


@pytest.mark.parametrize("exc,message", [
    (BackendUnavailable("kvm", "/dev/kvm is missing"), "kvm backend unavailable: /dev/kvm is missing"),
    (HypercallNotCompleted("KVM_RUN did not return:\nVMCALL at 0x1003", rip=0x1003),
     "KVM_RUN did not return: VMCALL at 0x1003"),
])
def test_vbook_error_is_one_line_exit_1(capsys, monkeypatch, exc, message):
    monkeypatch.setattr(cli, "_load_guests", lambda: dict(GUESTS))

    def boom(guest, backend, **kw):
        raise exc

    monkeypatch.setattr(cli, "_run", boom)
    rc, out, err = run_main(capsys, "trace", "alpha", "--backend", "kvm")
    assert rc == 1 and out == ""
    assert err == f"vbook: error: {message}\n"


def test_missing_backend_module_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load_guests", lambda: dict(GUESTS))

    def no_module(guest, backend, **kw):
        raise ModuleNotFoundError("No module named 'unicorn'")

    monkeypatch.setattr(cli, "_run", no_module)
    rc, _, err = run_main(capsys, "trace", "alpha")
    assert rc == 1
    assert err == ("vbook: error: the unicorn backend cannot be imported: "
                   "No module named 'unicorn'\n")


def test_guests_not_importable(capsys, monkeypatch):
    def broken():
        raise ImportError("cannot import name 'ALL' from 'vbook.guests'")

    monkeypatch.setattr(cli, "_load_guests", broken)
    rc, _, err = run_main(capsys, "trace", "hello")
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith("vbook: error: the guest programs cannot be loaded")


def test_guests_listing(capsys, fake):
    rc, out, _ = run_main(capsys, "guests")
    assert rc == 0
    assert out.splitlines() == ["alpha  16-bit  prints Hi", "beta   64-bit  another"]


# --- doctor ------------------------------------------------------------------------------

def test_doctor_text_and_json(capsys, monkeypatch):
    import vbook.doctor as doc

    fixed = [doc.Check("/dev/kvm", False, "missing", "no /dev/kvm: chapters run guests on unicorn")]
    monkeypatch.setattr(doc, "doctor", lambda: fixed)
    rc, out, _ = run_main(capsys, "doctor")
    assert rc == 0
    assert out == "[no] /dev/kvm  missing\n               -> no /dev/kvm: chapters run guests on unicorn\n"
    rc, out, _ = run_main(capsys, "doctor", "--format", "json")
    assert json.loads(out) == {"checks": [{"name": "/dev/kvm", "ok": False, "value": "missing",
                                           "consequence": fixed[0].consequence}]}


# --- as a program ------------------------------------------------------------------------

def vbook(*argv, timeout=120):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "vbook", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_python_m_vbook_usage_error():
    p = vbook()
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.splitlines()[-1] == "vbook: error: the following arguments are required: COMMAND"


def test_python_m_vbook_version():
    p = vbook("--version")
    assert p.returncode == 0 and p.stdout.startswith("vbook ")


def test_cli_import_is_light():
    """`vbook --help` must not pay for the runner, backends or unicorn."""
    code = ("import sys, vbook.cli; "
            "print(sorted(m for m in ('vbook.runner', 'vbook.backends', 'unicorn', 'numpy') "
            "if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.stdout.strip() == "[]", p.stderr


def _guests_or_skip():
    try:
        from vbook.guests import ALL
    except ImportError as e:
        pytest.skip(f"vbook.guests.ALL not importable yet: {e}")
    if "hello" not in ALL:
        pytest.skip(f"no guest named 'hello' (have: {sorted(ALL)})")
    return ALL


def _backend_or_skip(name):
    from vbook.backends import available

    why = available()[name]
    if why is not None:
        pytest.skip(f"{name} backend not usable here: {why}")


def test_end_to_end_unknown_guest():
    _guests_or_skip()
    from vbook.guests import ALL, EXTRA, MISBEHAVING

    p = vbook("trace", "no-such-guest", "--backend", "unicorn")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == ("vbook: error: unknown guest 'no-such-guest'; valid guests: "
                        + ", ".join(sorted({**ALL, **EXTRA, **MISBEHAVING})) + "\n")


def test_end_to_end_runaway_guest_is_one_line_and_status_1():
    _guests_or_skip()
    _backend_or_skip("unicorn")
    p = vbook("trace", "spin", "--backend", "unicorn")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("vbook: error: guest 'spin' ran 1,000,000 instructions")
    assert p.stderr.count("\n") == 1


def test_guests_lists_the_extra_and_misbehaving_ones():
    _guests_or_skip()
    p = vbook("guests")
    lines = {line.split()[0]: line for line in p.stdout.splitlines()}
    assert "(misbehaving)" in lines["spin"] and "(extra)" in lines["map_gpa_range"]
    assert "(" not in lines["hello"].split("-bit", 1)[1].split()[0]


def test_end_to_end_trace_hello_json_on_unicorn():
    _guests_or_skip()
    _backend_or_skip("unicorn")
    p = vbook("trace", "hello", "--backend", "unicorn", "--format", "json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["guest"] == "hello" and d["backend"] == "unicorn"
    assert d["console"] == "Hello, KVM!\n" and d["end"] == "hlt"
    # one OUT to COM1 per byte, then HLT
    assert d["exits"] == [
        {"reason": "IO", "direction": "out", "size": 1, "port": COM1, "count": 1,
         "data": f"{c:02x}"} for c in b"Hello, KVM!\n"] + [{"reason": "HLT"}]


def test_end_to_end_trace_hello_text_on_unicorn():
    _guests_or_skip()
    _backend_or_skip("unicorn")
    p = vbook("trace", "hello", "--backend", "unicorn")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "IO out port=0x3f8 size=1 count=1 data=48"
    assert lines[-5:] == ["IO out port=0x3f8 size=1 count=1 data=0a", "HLT",
                          "--- console (12 chars) ---", "Hello, KVM!",
                          "--- ended by hlt after 13 exits on unicorn ---"]


def test_end_to_end_same_exits_on_kvm_and_unicorn():
    """Conformance through the CLI: the same guest gives the same exits on both backends."""
    _guests_or_skip()
    _backend_or_skip("unicorn")
    _backend_or_skip("kvm")
    u = vbook("trace", "hello", "--backend", "unicorn", "--format", "json")
    k = vbook("trace", "hello", "--backend", "kvm", "--format", "json")
    assert u.returncode == 0 and k.returncode == 0, (u.stderr, k.stderr)
    ju, jk = json.loads(u.stdout), json.loads(k.stdout)
    assert jk["backend"] == "kvm"
    assert jk["exits"] == ju["exits"] and jk["console"] == ju["console"]


def test_end_to_end_kvm_unusable_is_one_line():
    _guests_or_skip()
    from vbook.backends import available

    if available()["kvm"] is None:
        pytest.skip("/dev/kvm is usable here; the error path needs a machine without it")
    p = vbook("trace", "hello", "--backend", "kvm")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("vbook: error: ") and p.stderr.count("\n") == 1


def test_end_to_end_hypercall_guest_on_kvm_matches_or_fails_in_one_line():
    """The hypercall guest on real KVM: the same exits as on unicorn (whose RAX values come
    from vbook.models.hypercall), or, on a host that never finishes a VMCALL (PVM), a
    one-line error and exit status 1 within the backend's time limit."""
    all_guests = _guests_or_skip()
    if "hypercall" not in all_guests:
        pytest.skip("no guest named 'hypercall'")
    _backend_or_skip("unicorn")
    _backend_or_skip("kvm")
    u = vbook("trace", "hypercall", "--backend", "unicorn", "--format", "json")
    assert u.returncode == 0, u.stderr
    results = [e["data"] for e in json.loads(u.stdout)["exits"] if e["reason"] == "IO"]
    assert results == [(2**32 - 1000).to_bytes(4, "little").hex(), "00000000"]
    k = vbook("trace", "hypercall", "--backend", "kvm", "--format", "json")
    if k.returncode == 0:
        assert json.loads(k.stdout)["exits"] == json.loads(u.stdout)["exits"]
    else:
        assert k.returncode == 1 and k.stdout == "" and "Traceback" not in k.stderr
        assert k.stderr.startswith("vbook: error: ") and k.stderr.count("\n") == 1
