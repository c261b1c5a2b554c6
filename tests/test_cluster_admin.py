"""Cluster administration on ``task.Clock``, the engine faked (a dict for the bans' hash): bans
made on a node are written once per reactor turn and not read back as news; the engine's bans
are applied (a new one disconnects the client it names with v5 DISCONNECT 0x98), changes made
while the engine was away written when it is back before the bans are read again; a kick is
forwarded to the node owning the client and answered, or times out; each node's figures are
written with a time to live and listed with the cluster's total.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed

from tests.hook_helpers import hub, join
from tests.spec import check_cited_labels
from tests.test_cluster_membership import FakeEngine
from twisted_mqtt.bans import Ban
from twisted_mqtt.cluster.admin import KICK_TIMEOUT, NODES, PUSH, ClusterAdmin, field
from twisted_mqtt.cluster.engine import EngineDown
from twisted_mqtt.cluster.membership import Node
from twisted_mqtt.packets import ConnAck, Disconnect
from twisted_mqtt.testing import InMemoryBroker

LEASE = 2.0


class Engine(FakeEngine):
    """The fake engine, with commands: the bans' hash, PUBLISH recorded, HGETALL answered now
    or held (``hold``)."""

    def __init__(self) -> None:
        super().__init__()
        self.bans: Dict[str, str] = {}
        self.commands: List[Tuple[Any, ...]] = []
        self.published: List[Tuple[str, Any]] = []
        self.watchers: List[Any] = []
        self.hold = False
        self.held: List[Deferred[Any]] = []
        self.answers[PUSH] = self._push

    def watch(self, callback: Any) -> None:
        self.watchers.append(callback)

    def set_up(self, up: bool) -> None:
        self.up = up
        for callback in self.watchers:
            callback(up)

    def _push(self, keys: List[str], args: List[Any]) -> int:
        count = args[1]
        for index in range(2, 2 + 2 * count, 2):
            self.bans[args[index]] = args[index + 1]
        for name in args[2 + 2 * count:]:
            self.bans.pop(name, None)
        self.published.append((keys[1], args[0]))
        return 1

    def command(self, *args: Any) -> Deferred[Any]:
        self.commands.append(args)
        if not self.up:
            return fail(EngineDown("down"))
        if args[0] == "HGETALL":
            reply = [item for pair in self.bans.items() for item in pair]
            if self.hold:
                d: Deferred[Any] = Deferred()
                self.held.append(d)
                return d.addCallback(lambda _: reply)
            return succeed(reply)
        if args[0] == "PUBLISH":
            self.published.append((args[1], args[2]))
        return succeed(None)

    def reads(self) -> int:
        return sum(1 for c in self.commands if c[0] == "HGETALL")

    def pushes(self) -> int:
        return sum(1 for source, _ in self.calls if source == PUSH)


def node(owner: str = "", members: Optional[Dict[str, int]] = None,
         ) -> Tuple[InMemoryBroker, Engine, ClusterAdmin]:
    """A serving node "me" (epoch 3) with its administration started; ``owner`` is the token
    the sessions' directory gives every client id."""
    memory = hub()
    engine = Engine()
    me = Node("me")
    me.epoch, me.serving = 3, True
    watchers: List[Any] = []
    members_ns = SimpleNamespace(
        node=me, clock=memory.clock, lease=LEASE, members=members or {"me": 3, "b": 5},
        watch_serving=watchers.append, lease_key=lambda name: "p:lease:" + name)
    cluster = SimpleNamespace(
        broker=memory.broker, engine=engine, members=members_ns,
        sessions=SimpleNamespace(directory=SimpleNamespace(
            owner=lambda client_id: succeed(owner))))
    admin = ClusterAdmin(cluster)
    admin.start()
    for callback in watchers:
        callback(True)
    memory.clock.advance(0)
    return memory, engine, admin


def remote_ban(engine: Engine, kind: str, value: str, **fields: Any) -> None:
    """Another node's ban in the engine, announced."""
    engine.bans[field((kind, value))] = json.dumps(Ban(kind, value, **fields).as_dict())
    engine.channels["p:bans"](b"b")


def test_bans_made_here_written_once_per_turn_not_read_back() -> None:
    """Two bans in one turn are one write (both in the hash, the writer announced); the
    announcement of this node's own write reads nothing, another node's reads the hash."""
    memory, engine, _admin = node()
    reads = engine.reads()
    memory.broker.ban("client_id", "x")
    memory.broker.ban("username", "u", duration=60)
    assert engine.pushes() == 0
    memory.clock.advance(0)
    assert engine.pushes() == 1
    assert set(engine.bans) == {field(("client_id", "x")), field(("username", "u"))}
    assert engine.published[-1] == ("p:bans", "me")
    engine.channels["p:bans"](b"me")
    assert engine.reads() == reads
    memory.broker.unban("client_id", "x")
    memory.clock.advance(0)
    assert set(engine.bans) == {field(("username", "u"))}
    engine.channels["p:bans"](b"b")
    assert engine.reads() == reads + 1
    assert [ban.value for ban in memory.broker.list_bans()] == ["u"]


def test_ban_of_another_node_applied_and_its_client_disconnected() -> None:
    """A ban another node wrote disconnects the client it names here (v5 DISCONNECT 0x98
    Administrative action [MQTT-3.14.2-1]) and refuses its next CONNECT (CONNACK 0x8A,
    [MQTT-3.2.2-7]); lifted there, it is lifted here, without writing anything back."""
    memory, engine, _admin = node()
    victim = join(memory, "victim", level=5)
    other = join(memory, "other", level=5)
    remote_ban(engine, "client_id", "victim", reason="spam", by="api b")
    assert [p for p in victim.received() if isinstance(p, Disconnect)][0].reason_code == 0x98
    assert other.received() == []
    again = memory.client(protocol_level=5)
    assert again.connect("victim").reason_code == 0x8A
    del engine.bans[field(("client_id", "victim"))]
    engine.channels["p:bans"](b"b")
    memory.clock.advance(0)
    assert memory.broker.list_bans() == []
    assert engine.pushes() == 0
    assert isinstance(memory.client(protocol_level=5).connect("victim"), ConnAck)


def test_expiry_is_an_absolute_time_on_this_nodes_clock() -> None:
    """A ban the engine holds until time T refuses the client here until this node's clock
    reaches T."""
    memory, engine, _admin = node()
    remote_ban(engine, "client_id", "late", expires_at=memory.clock.seconds() + 10)
    assert memory.client(protocol_level=5).connect("late").reason_code == 0x8A
    memory.clock.advance(10)
    assert memory.client(protocol_level=5).connect("late").reason_code == 0


def test_bans_made_while_the_engine_is_away_written_when_it_is_back() -> None:
    """A ban made while the engine is unreachable is kept here, written when the engine is
    back, and only then are the engine's bans read (so the read does not undo it)."""
    memory, engine, _admin = node()
    engine.set_up(False)
    memory.broker.ban("client_id", "offline")
    memory.clock.advance(0)
    assert engine.bans == {}
    engine.bans[field(("username", "theirs"))] = json.dumps(Ban("username", "theirs").as_dict())
    engine.set_up(True)
    assert field(("client_id", "offline")) in engine.bans
    assert sorted(ban.value for ban in memory.broker.list_bans()) == ["offline", "theirs"]


def test_a_read_crossed_by_a_change_here_is_read_again() -> None:
    """A read of the bans answered after this node wrote a change is not applied (it would
    undo the change): the bans are read again behind the write."""
    memory, engine, _admin = node()
    engine.hold = True
    engine.channels["p:bans"](b"b")
    memory.broker.ban("client_id", "mine")
    memory.clock.advance(0)
    engine.hold = False
    reads = engine.reads()
    engine.held.pop(0).callback(None)  # the hash as it was before the ban
    assert engine.reads() == reads + 1
    assert [ban.value for ban in memory.broker.list_bans()] == ["mine"]


def test_kick_forwarded_to_the_owner_and_answered() -> None:
    """A kick of a client owned by live node b is published on b's channel; b's answer
    decides; no answer within KICK_TIMEOUT is False."""
    memory, engine, admin = node(owner="7:5:b")
    results: List[bool] = []
    admin.kick("far", "dashboard api").addCallback(results.append)
    channel, raw = engine.published[-1]
    request = json.loads(raw)
    assert channel == "p:admin:node:b"
    assert (request["op"], request["client"], request["reply"]) == ("kick", "far", "me")
    engine.channels["p:admin:node:me"](json.dumps(
        {"op": "kicked", "id": request["id"], "ok": True}).encode())
    assert results == [True]
    admin.kick("far").addCallback(results.append)
    memory.clock.advance(KICK_TIMEOUT)
    assert results == [True, False]


def test_kick_of_a_client_on_a_dead_node_or_none() -> None:
    """No owner, or an owner whose epoch is not the live member's: False, nothing sent."""
    for owner in ("", "7:4:b"):
        _memory, engine, admin = node(owner=owner)
        results: List[bool] = []
        admin.kick("far").addCallback(results.append)
        assert results == [False]
        assert not [p for p in engine.published if p[0].startswith("p:admin")]


def test_kick_asked_by_another_node() -> None:
    """A kick asked on this node's channel disconnects the client here (v5 DISCONNECT 0x98
    [MQTT-3.14.2-1]) and answers; an unreadable message is one log line and nothing else."""
    memory, engine, _admin = node()
    client = join(memory, "near", level=5)
    channel = engine.channels["p:admin:node:me"]
    channel(b"not json")
    channel(json.dumps({"op": "other", "id": 1}).encode())
    assert client.received() == []
    channel(json.dumps({"op": "kick", "client": "near", "by": "x", "id": 4,
                        "reply": "b"}).encode())
    assert [p for p in client.received() if isinstance(p, Disconnect)][0].reason_code == 0x98
    assert json.loads(engine.published[-1][1]) == {"op": "kicked", "id": 4, "ok": True}
    assert engine.published[-1][0] == "p:admin:node:b"


def test_figures_written_with_a_lifetime_and_listed() -> None:
    """Each lease the node writes its figures with a time to live; ``nodes`` lists this node
    first (read now), the live others from the engine, and the cluster's total."""
    memory, engine, admin = node()
    join(memory, "one", level=5)
    memory.clock.advance(LEASE)
    written = [c for c in engine.commands if c[0] == "SET"]
    assert written and written[-1][1] == "p:admin:figures:me"
    assert written[-1][3:] == ("PX", int(LEASE * 3 * 1000))
    mine = json.loads(written[-1][2])
    assert (mine["node"], mine["clients_connected"], mine["epoch"]) == ("me", 1, 3)
    theirs = dict(mine, node="b", clients_connected=4, retained=2)
    engine.answers[NODES] = lambda keys, args: [b"me", written[-1][2].encode(),
                                                b"b", json.dumps(theirs).encode(), b"c", b""]
    listed: List[Dict[str, Any]] = []
    admin.nodes().addCallback(listed.append)
    nodes = listed[0]["nodes"]
    assert [(n["node"], n["self"]) for n in nodes] == [("me", True), ("b", False),
                                                     ("c", False)]
    assert listed[0]["total"]["clients_connected"] == 5
    assert listed[0]["total"]["retained"] == 2
    assert listed[0]["total"]["nodes"] == 3


def test_cited_labels() -> None:
    """The labels cited above exist in the specifications."""
    check_cited_labels(sys.modules[__name__])


