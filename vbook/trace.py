"""Traces: what a model or a backend did, as data.

A :class:`Trace` is an immutable sequence of :class:`Event` s. Each event is
tagged with the *actor* that did it (the guest, KVM, QEMU, vhost, a device or
the host) and a *kind* ("vmexit", "ioctl", "mmio_write", …), carries a short
human label and a mapping of plain JSON values. Models append events to a
:class:`TraceRecorder`; widgets render the finished ``Trace``; ``to_json`` /
``from_json`` round-trip exactly, so a trace can be shipped to the browser or
stored in a notebook.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vbook.errors import TraceError

ACTORS = ("guest", "kvm", "qemu", "vhost", "device", "host")


def _freeze(v: Any) -> Any:
    """JSON-able value → hashable, immutable value (lists become tuples)."""
    if isinstance(v, bool) or v is None or isinstance(v, (int, float, str)):
        return v
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, Mapping):
        return MappingProxyType({str(k): _freeze(x) for k, x in v.items()})
    if hasattr(v, "to_dict"):
        return _freeze(v.to_dict())
    raise TraceError(f"trace values must be JSON-like, got {type(v).__name__}: {v!r}")


def _thaw(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _thaw(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class Event:
    """One step of a trace. ``data`` is read-only; bytes are stored as hex."""

    actor: str
    kind: str
    label: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.actor not in ACTORS:
            raise TraceError(f"unknown actor {self.actor!r}; expected one of {ACTORS}")
        if not isinstance(self.kind, str) or not self.kind:
            raise TraceError(f"event kind must be a non-empty string, got {self.kind!r}")
        object.__setattr__(self, "data", _freeze(dict(self.data)))

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_dict(self) -> dict[str, Any]:
        return {"actor": self.actor, "kind": self.kind, "label": self.label, "data": _thaw(self.data)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        try:
            return cls(d["actor"], d["kind"], d.get("label", ""), d.get("data", {}))
        except (KeyError, TypeError) as e:
            raise TraceError(f"malformed event {d!r}: {e}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        return f"Event({self.actor}, {self.kind}, {self.label!r})"


@dataclass(frozen=True)
class Trace:
    """An immutable, JSON-round-trippable sequence of events plus metadata."""

    events: tuple[Event, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", tuple(self.events))
        object.__setattr__(self, "meta", _freeze(dict(self.meta)))

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __getitem__(self, i: int) -> Event:
        return self.events[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Trace) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        actors = sorted({e.actor for e in self.events})
        title = self.meta.get("title", "")
        return f"Trace({title!r}, {len(self.events)} events, actors={actors})"

    def filter(self, actor: str | None = None, kind: str | None = None) -> Trace:
        keep = [
            e for e in self.events
            if (actor is None or e.actor == actor) and (kind is None or e.kind == kind)
        ]
        return Trace(keep, self.meta)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": _thaw(self.meta), "events": [e.to_dict() for e in self.events]}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> Trace:
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise TraceError(f"trace JSON does not parse: {e}") from None
        if not isinstance(d, dict) or not isinstance(d.get("events"), list):
            raise TraceError("trace JSON must be an object with an 'events' list")
        return cls(tuple(Event.from_dict(e) for e in d["events"]), d.get("meta", {}))


class TraceRecorder:
    """The mutable side: models ``emit`` events, then ``freeze`` a Trace."""

    def __init__(self, **meta: Any):
        self.meta = dict(meta)
        self.events: list[Event] = []

    def emit(self, actor: str, kind: str, label: str = "", **data: Any) -> Event:
        ev = Event(actor, kind, label, data)
        self.events.append(ev)
        return ev

    def __len__(self) -> int:
        return len(self.events)

    def freeze(self) -> Trace:
        return Trace(tuple(self.events), self.meta)

    def __repr__(self) -> str:
        return f"TraceRecorder({len(self.events)} events)"
