"""Cluster membership on ``task.Clock``, its engine faked: a node serves only while its lease
is proven; a lease not renewed in time stops it serving (its clients dropped with v5
DISCONNECT 0x8B, CONNECT refused with v5 0x88 and v3.1.1 return code 3) until it rejoins with
a new epoch; a member whose lease is gone is removed and announced once.

Docstrings cite ``[MQTT-x.y.z-n]`` (MQTT 5.0) and ``[MQTT-x.y.z-n (3.1.1)]`` labels.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Tuple

from twisted.internet.defer import Deferred, fail, succeed

from tests.hook_helpers import hub, join
from tests.spec import check_cited_labels
from twisted_mqtt.cluster import Cluster, _Gate
from twisted_mqtt.cluster.engine import EngineDown
from twisted_mqtt.cluster.membership import (
    HEIR_LEASES,
    JOIN,
    REMOVE,
    RENEW,
    SURVEY,
    Membership,
)
from twisted_mqtt.packets import ConnAck, Connect, Disconnect

LEASE = 2.0


class FakeEngine:
    """Answers the membership scripts as the test says; ``up`` as the test sets it."""

    def __init__(self) -> None:
        self.up = True
        self.location = "fake"
        self.answers: Dict[str, Callable[[List[str], List[Any]], Any]] = {}
        self.calls: List[Tuple[str, List[Any]]] = []
        self.channels: Dict[str, Any] = {}

    def key(self, *parts: str) -> str:
        return "p:" + ":".join(parts)

    def subscribe(self, channel: str, callback: Any) -> None:
        self.channels[channel] = callback

    def watch(self, callback: Any) -> None:
        pass

    def script(self, source: str, keys: List[str], args: List[Any],
               control: bool = False) -> Deferred[Any]:
        self.calls.append((source, args))
        if not self.up:
            return fail(EngineDown("down"))
        answer = self.answers.get(source)
        if answer is None:
            return Deferred()  # never answered: a stalled engine
        return succeed(answer(keys, args))


def node(engine: FakeEngine, clock: Any, epochs: List[int]) -> Membership:
    """A started membership whose joins get the next of ``epochs``."""
    engine.answers[JOIN] = lambda keys, args: [epochs.pop(0), 0]
    engine.answers[RENEW] = lambda keys, args: 1
    engine.answers[SURVEY] = lambda keys, args: []
    members = Membership(engine, "me", clock, LEASE)  # type: ignore[arg-type]
    members.start()
    return members


def test_lease_not_renewed_stops_serving_until_rejoined() -> None:
    """Renewals unanswered for a lease: the node stops serving, drops its clients (v5
    DISCONNECT 0x8B) and refuses CONNECT (v5 CONNACK 0x88 [MQTT-3.2.2-7], v3.1.1 return code
    3 [MQTT-3.2.2-6 (3.1.1)]); once the engine answers it rejoins with a greater epoch and
    accepts clients again."""
    broker = hub()
    engine = FakeEngine()
    members = node(engine, broker.clock, [5, 9])
    changes: List[bool] = []
    members.watch_serving(changes.append)
    members.watch_serving(lambda serving: Cluster._serving(
        SimpleNamespace(broker=broker.broker, node=members.node), serving))  # type: ignore
    broker.broker.hooks.add(_Gate(members.node))
    broker.clock.advance(0)
    assert (members.node.serving, members.node.epoch, changes) == (True, 5, [True])
    v5 = join(broker, "v5-client", 5)
    stalled = engine.answers.pop(RENEW), engine.answers.pop(JOIN)  # the engine stalls
    broker.clock.advance(LEASE / 4)
    broker.clock.advance(LEASE / 4)
    assert members.node.serving  # within the lease
    broker.advance(LEASE, step=LEASE / 4)
    assert changes == [True, False]
    assert v5.received() == [Disconnect(0x8B)]
    engine.up = False  # and then unreachable: no rejoin
    broker.clock.advance(LEASE)
    for level, code in ((5, 0x88), (4, 3)):
        client = broker.client(protocol_level=level)
        assert client.connect("late", True).reason_code == code
        assert client.closed
    engine.up = True
    engine.answers[RENEW], engine.answers[JOIN] = stalled
    broker.clock.advance(LEASE / 4)
    assert (members.node.serving, members.node.epoch, changes) == (True, 9, [True, False, True])
    client = broker.client(protocol_level=5)
    client.send(Connect("again", 5, True, 0))
    assert isinstance(client.received()[0], ConnAck)


def test_renewal_refused_stops_serving_at_once() -> None:
    """A renewal the engine refuses (the lease expired and another node removed this one)
    stops the node serving without waiting for the lease to run out."""
    broker = hub()
    engine = FakeEngine()
    members = node(engine, broker.clock, [3, 4])
    broker.clock.advance(0)
    assert members.node.serving
    engine.answers[RENEW] = lambda keys, args: 0
    engine.answers[JOIN] = lambda keys, args: [-1, 0]  # and the name is still held
    broker.clock.advance(LEASE / 4)
    assert not members.node.serving


def test_dead_member_removed_once_and_announced() -> None:
    """A member whose lease is gone is removed through the engine; the node that removed it
    hears ``down`` then ``claimed``, and a removal another node won is only ``down``."""
    broker = hub()
    engine = FakeEngine()
    members = node(engine, broker.clock, [1])
    events: List[Tuple[str, str]] = []
    members.watch(lambda event, name: events.append((event, name)))
    engine.answers[SURVEY] = lambda keys, args: [b"me", b"1", 1, b"other", b"2", 1]
    broker.clock.advance(0)
    assert events == [("up", "other")]
    engine.answers[SURVEY] = lambda keys, args: [b"me", b"1", 1, b"other", b"2", 0]
    engine.answers[REMOVE] = lambda keys, args: 1
    broker.clock.advance(LEASE / 4)
    assert events[1:] == [("down", "other"), ("claimed", "other")]
    assert [args for source, args in engine.calls if source == REMOVE] == [
        ["other", 2, "me", int(LEASE * HEIR_LEASES * 1000)]]  # this node its heir
    engine.answers[SURVEY] = lambda keys, args: [b"me", b"1", 1, b"third", b"7", 1]
    broker.clock.advance(LEASE / 4)
    engine.channels[members.channel](b"down third 7")
    assert events[3:] == [("up", "third"), ("down", "third")]


def test_a_late_renewal_and_a_late_heartbeat_are_logged(logged: List[str]) -> None:
    """A renewal answered after a quarter of the lease, and a heartbeat run more than a quarter
    of the lease late (a long reactor turn), each log a warning with the time it took: the
    early signs of a lease too short for the load; the node keeps serving meanwhile."""
    broker = hub()
    engine = FakeEngine()
    members = node(engine, broker.clock, [1])
    broker.clock.advance(0)
    held: List[Deferred[Any]] = []
    answer = engine.script

    def script(source: str, keys: List[str], args: List[Any],
               control: bool = False) -> Deferred[Any]:
        if source == RENEW:
            held.append(Deferred())
            return held[-1]
        return answer(source, keys, args, control)

    engine.script = script  # type: ignore[method-assign]
    broker.clock.advance(LEASE / 4)  # a renewal sent
    broker.clock.advance(LEASE * 0.15)
    held[0].callback(1)  # answered within a quarter of the lease
    broker.clock.advance(LEASE * 0.1)  # the next one sent
    broker.clock.advance(LEASE * 0.3)
    held[1].callback(1)
    assert [line for line in logged if "late" in line or "answered after" in line] == [
        "cluster node me: lease renewal answered after 0.60s (lease 2.0s)"]
    broker.clock.advance(LEASE * 0.6)  # the reactor held for longer than a heartbeat
    assert logged[-1] == "cluster node me: heartbeat 0.70s late (the reactor was busy)"
    assert members.node.serving

def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])
