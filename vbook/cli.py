"""The ``vbook`` command line.

::

    vbook trace GUEST [--backend {unicorn,kvm,auto}] [--format {text,json}]
    vbook guests                       # the guest programs there are
    vbook doctor [--format {text,json}]  # what this machine offers the book

``trace`` runs a guest program with :func:`vbook.runner.run_guest` and prints
every exit to user space — the same list ``KVM_RUN`` would hand a VMM.
Bad arguments give a one-line error and exit status 2; a :class:`VbookError`
during a run (no /dev/kvm, a hypercall the host never finished, a runaway
guest) gives ``vbook: error: <message>`` and exit status 1, never a traceback.
Heavy modules are imported inside the commands so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from vbook import __version__
from vbook.errors import VbookError

BACKEND_CHOICES = ("unicorn", "kvm", "auto")
FORMATS = ("text", "json")


class UsageError(Exception):
    """Bad command-line input found after argparse (e.g. an unknown guest)."""


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def _load_guests() -> dict[str, Any]:
    """Every guest: ``vbook.guests.ALL``, then ``EXTRA`` and ``MISBEHAVING`` (imported lazily)."""
    from vbook.guests import ALL, EXTRA, MISBEHAVING

    return {**ALL, **EXTRA, **MISBEHAVING}


def _group(name: str) -> str:
    from vbook.guests import EXTRA, MISBEHAVING

    return "extra" if name in EXTRA else "misbehaving" if name in MISBEHAVING else ""


def _run(guest: Any, backend: str, **kw: Any) -> Any:
    """``vbook.runner.run_guest`` (imported lazily)."""
    from vbook.runner import run_guest

    return run_guest(guest, backend, **kw)


def _guests_or_error() -> dict[str, Any]:
    try:
        return _load_guests()
    except ImportError as e:
        raise VbookError(f"the guest programs cannot be loaded: {e}") from None


def _pick_guest(name: str) -> Any:
    guests = _guests_or_error()
    if name not in guests:
        valid = ", ".join(sorted(guests)) or "(none)"
        raise UsageError(f"unknown guest {name!r}; valid guests: {valid}")
    return guests[name]


def cmd_trace(args: argparse.Namespace) -> int:
    guest = _pick_guest(args.guest)
    try:
        result = _run(guest, args.backend, max_exits=args.max_exits)
    except ImportError as e:
        raise VbookError(f"the {args.backend} backend cannot be imported: {e}") from None
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    for exit in result.exits:
        print(str(exit))
    console = result.console
    print(f"--- console ({len(console)} chars) ---")
    if console:
        print(console, end="" if console.endswith("\n") else "\n")
    print(f"--- ended by {result.end} after {len(result.exits)} exits on {result.backend} ---")
    return 0


def cmd_guests(args: argparse.Namespace) -> int:
    guests = _guests_or_error()
    width = max((len(n) for n in guests), default=0)
    for name in sorted(guests):
        g = guests[name]
        desc = getattr(g, "description", "") or ""
        group = _group(name)
        tag = f"({group}) " if group else ""
        print(f"{name:<{width}}  {getattr(g, 'mode', '?'):>2}-bit  {tag}{_one_line(desc)}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from vbook.doctor import doctor, format_checks

    checks = doctor()
    if args.format == "json":
        print(json.dumps({"checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        print(format_checks(checks))
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage line + one error line, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {_one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vbook", description="vbook: an interactive textbook on KVM/QEMU "
                "internals — command line")
    p.add_argument("--version", action="version", version=f"vbook {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("trace", help="run a guest program and print its exits to user space")
    t.add_argument("guest", metavar="GUEST", help="a guest name (see `vbook guests`)")
    t.add_argument("--backend", choices=BACKEND_CHOICES, default="unicorn",
                   help="where the vCPU runs: unicorn (default), kvm (/dev/kvm), or auto "
                        "(kvm when usable, else unicorn)")
    t.add_argument("--format", choices=FORMATS, default="text", help="output format")
    t.add_argument("--max-exits", type=int, default=10_000, metavar="N",
                   help="stop a guest that exits more than N times (default 10000)")
    t.set_defaults(func=cmd_trace)

    g = sub.add_parser("guests", help="list the guest programs")
    g.set_defaults(func=cmd_guests)

    d = sub.add_parser("doctor", help="what this machine offers: /dev/kvm, CPU flags, tap, "
                       "unicorn")
    d.add_argument("--format", choices=FORMATS, default="text", help="output format")
    d.set_defaults(func=cmd_doctor)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"vbook: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except VbookError as e:
        print(f"vbook: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vbook: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `vbook trace … | head`: stop quietly (Python docs' recipe)
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
