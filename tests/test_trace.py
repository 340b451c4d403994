import pytest
from hypothesis import given
from hypothesis import strategies as st

from vbook.errors import TraceError
from vbook.trace import ACTORS, Event, Trace, TraceRecorder

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=8))
json_val = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3)
                        | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8)


@given(st.lists(st.tuples(st.sampled_from(ACTORS), st.text(min_size=1, max_size=6),
                          st.text(max_size=6),
                          st.dictionaries(st.text(min_size=1, max_size=5), json_val, max_size=4)),
                max_size=6))
def test_json_round_trip_is_exact(items):
    r = TraceRecorder(title="t", n=3)
    for actor, kind, label, data in items:
        r.emit(actor, kind, label, **{"d_" + k: v for k, v in data.items()})
    t = r.freeze()
    s = t.to_json()
    t2 = Trace.from_json(s)
    assert t2 == t
    assert t2.to_json() == s
    assert [e.to_dict() for e in t2] == [e.to_dict() for e in t]


def test_bytes_become_hex_and_events_are_immutable():
    r = TraceRecorder()
    ev = r.emit("kvm", "exit", "IO", data=b"\x48\x69", port=0x3F8)
    assert ev["data"] == "4869" and ev["port"] == 0x3F8
    with pytest.raises(TypeError):
        ev.data["port"] = 1
    with pytest.raises(AttributeError):
        ev.actor = "guest"
    t = r.freeze()
    r.emit("qemu", "ioctl")
    assert len(t) == 1  # a frozen trace does not see later events


def test_bad_actor_and_bad_json_are_typed():
    with pytest.raises(TraceError, match="unknown actor 'cpu'"):
        Event("cpu", "x")
    with pytest.raises(TraceError, match="does not parse"):
        Trace.from_json("{")
    with pytest.raises(TraceError, match="events"):
        Trace.from_json('{"meta": {}}')
    with pytest.raises(TraceError, match="JSON-like"):
        TraceRecorder().emit("kvm", "x", obj=object())


def test_filter_and_repr_are_stable():
    r = TraceRecorder(title="demo")
    r.emit("qemu", "ioctl", "KVM_RUN")
    r.emit("kvm", "exit", "HLT")
    t = r.freeze()
    assert [e.kind for e in t.filter(actor="kvm")] == ["exit"]
    assert repr(t) == "Trace('demo', 2 events, actors=['kvm', 'qemu'])"
    assert "0x" not in repr(t.events[0])
