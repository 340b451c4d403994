"""A vCPU that plays a script of exits, for testing exit loops without a backend."""

from __future__ import annotations

from vbook.backends.base import Regs, VCpu


class Scripted(VCpu):
    """A vCPU that returns a script of exits (or raises what the script holds)."""

    backend = "unicorn"

    def __init__(self, script):
        self.script, self.completed, self.closed, self.runs = list(script), [], False, 0

    @classmethod
    def check_available(cls):
        pass

    @classmethod
    def from_guest(cls, guest, **kw):
        raise NotImplementedError

    def run(self):
        self.runs += 1
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def complete(self, data):
        self.completed.append(data)

    def get_regs(self):
        return Regs(rip=0x1000)

    def set_regs(self, regs):
        pass

    def read_memory(self, gpa, n):
        return bytes(n)

    def close(self):
        self.closed = True


def install_scripted(monkeypatch, module) -> list[Scripted]:
    """Make ``module.open_vcpu`` build a :class:`Scripted` vCPU from ``guest.inputs["script"]``
    (and ``module.pick`` answer "unicorn"); returns the list of vCPUs made, in order."""
    made: list[Scripted] = []

    def fake_open(guest, backend, **kw):
        made.append(Scripted(guest.inputs["script"]))
        return made[-1]

    monkeypatch.setattr(module, "open_vcpu", fake_open)
    monkeypatch.setattr(module, "pick", lambda b: "unicorn")
    return made
