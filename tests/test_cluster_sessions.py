"""Cluster-wide sessions on a private ``redis-server``: brokers on ``task.Clock``
(``InMemoryBroker``), each a node with its own ``RedisEngine`` and a membership whose view the
test sets.

A session moves whole between nodes (subscriptions with their options, messages in flight
under their packet ids and QoS 2 state, queued messages in order, inbound QoS 2 ids, expiry,
will, user name); the directory's scripts let only the owner's token write; a dead node's
sessions are adopted by exactly one node, which publishes its clients' wills once.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import pytest_twisted
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.python.usage import UsageError
from zope.interface import implementer

from tests.servers import RedisServer, redis_server  # noqa: F401
from tests.spec import check_cited_labels
from twisted_mqtt.cluster.engine import RedisEngine
from twisted_mqtt.cluster.membership import Node
from twisted_mqtt.cluster.routes import Router
from twisted_mqtt.cluster.sessions import (
    HANDOVER_TIMEOUT,
    MAX_SCRIPT_ARGS,
    ClusterSessions,
    token_owner,
)
from twisted_mqtt.cluster.wire import encode_record, identity, pack
from twisted_mqtt.interfaces import IAuthorizer
from twisted_mqtt.packets import (
    ConnAck,
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    Subscription,
    Will,
)
from twisted_mqtt.properties import Properties
from twisted_mqtt.session import Message
from twisted_mqtt.testing import InMemoryBroker, InMemoryClient

V5 = 5
HOUR = 3600


class Members:
    """A membership whose view of the other nodes the test sets."""

    def __init__(self, name: str, epoch: int) -> None:
        self.node = Node(name)
        self.node.epoch = epoch
        self.node.serving = True
        self.members: Dict[str, int] = {name: epoch}
        self.watchers: List[Callable[[str, str], None]] = []

    def check(self) -> bool:
        return self.node.serving

    def watch(self, callback: Callable[[str, str], None]) -> None:
        self.watchers.append(callback)

    def watch_serving(self, callback: Callable[[bool], None]) -> None:
        pass


class NodeUnderTest:
    """A broker on a ``task.Clock`` joined to the cluster's Redis."""

    def __init__(self, url: str, name: str, epoch: int, timeout: float = 2.0,
                 **hooks: Any) -> None:
        self.hub = InMemoryBroker(**hooks)
        self.broker = self.hub.broker
        self.engine = RedisEngine(url, reactor, retry_delay=0.1)
        self.members = Members(name, epoch)
        self.sessions = ClusterSessions(self.broker, self.engine, self.members,
                                        self.hub.clock, timeout)
        self.sessions.start()
        self.engine.start()

    def client(self) -> InMemoryClient:
        return self.hub.client(V5)


class Cluster:
    """Nodes sharing one Redis database under a fresh prefix."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.nodes: List[NodeUnderTest] = []

    def node(self, name: str, epoch: int, **kwargs: Any) -> NodeUnderTest:
        node = NodeUnderTest(self.url, name, epoch, **kwargs)
        self.nodes.append(node)
        for other in self.nodes:  # every node sees every other alive
            for peer in self.nodes:
                other.members.members[peer.members.node.name] = peer.members.node.epoch
        return node

    @inlineCallbacks
    def settle(self, done: Callable[[], Any] = lambda: False, turns: int = 400,
               step: float = 0.0) -> Any:
        """Run the reactor, and the nodes' clocks ``step`` seconds a turn, until ``done()``
        (or, with no condition, a while)."""
        for _ in range(turns):
            for node in self.nodes:
                node.hub.clock.advance(step)
            if done():
                return True
            yield deferLater(reactor, 0.005, lambda: None)
        return False

    @inlineCallbacks
    def up(self) -> Any:
        ready = yield self.settle(lambda: all(n.engine.up for n in self.nodes), 2000)
        assert ready, "the engines did not connect"

    def stop(self) -> Any:
        return [node.engine.stop() for node in self.nodes]


@pytest.fixture
def cluster(redis_server: RedisServer) -> Iterator[Cluster]:  # noqa: F811
    made = Cluster(redis_server.url(0, f"unit-{uuid.uuid4().hex[:8]}:"))
    yield made
    made.stop()


def connect(node: NodeUnderTest, cluster: Cluster, client_id: str, username: Optional[str] = None,
            clean_start: bool = False, expiry: int = HOUR, will: Optional[Will] = None,
            step: float = 0.0) -> Any:
    """Send CONNECT and settle until its CONNACK comes: (client, CONNACK, what followed)."""
    from twisted_mqtt.packets import Connect

    client = node.client()
    client.send(Connect(client_id, V5, clean_start, 0, will=will, username=username,
                        properties=Properties(session_expiry_interval=expiry)))
    got: List[Any] = []

    def answered() -> bool:
        got.extend(client.received())
        return any(isinstance(p, ConnAck) for p in got)

    return cluster.settle(answered, step=step).addCallback(lambda ok: (client, got, ok))


@inlineCallbacks
def left_offline(cluster: Cluster, node: NodeUnderTest, client_id: str,
                 topic_filter: str) -> Any:
    """Leave on ``node`` a persistent session of ``client_id`` subscribed to ``topic_filter``
    (QoS 1), its client gone; return a publisher connected to ``node``."""
    client, _got, _ok = yield connect(node, cluster, client_id)
    client.send(Subscribe(1, (Subscription(topic_filter, 1),)))
    client.drop()
    publisher, _got, _ok = yield connect(node, cluster, "publisher", clean_start=True, expiry=0)
    return publisher


def gathered(client: InMemoryClient, into: List[Any], count: int) -> Callable[[], bool]:
    """A condition for ``Cluster.settle``: ``client`` has received ``count`` packets, added to
    ``into``."""
    def check() -> bool:
        into.extend(client.received())
        return len(into) >= count
    return check


def split(got: List[Any]) -> Any:
    index = next(i for i, p in enumerate(got) if isinstance(p, ConnAck))
    return got[index], got[index + 1:]


@pytest_twisted.inlineCallbacks
def test_session_moves_whole_between_nodes(cluster: Cluster) -> Any:
    """A persistent session resumed on another node has its subscriptions (options,
    subscription identifier), the messages in flight under the same packet ids, resent with
    DUP (a QoS 2 message in its PUBREL phase gets PUBREL) [MQTT-4.4.0-1], then its queued
    messages in order, and its inbound QoS 2 state: a PUBREL for a packet id received on the
    first node is answered with PUBCOMP Success on the second; Session Present is 1
    [MQTT-3.2.2-2], the delayed will is cancelled [MQTT-3.1.3-9]; each node counts what it
    took and handed over in $SYS."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    will = Will("wills/mover", b"gone", 1, False, Properties(will_delay_interval=60))
    mover, got, ok = yield connect(a, cluster, "mover", "alice", will=will)
    assert a.broker.sys_figures()["cluster/sessions/taken_over"] == 0
    assert ok and split(got)[0].session_present is False
    mover.send(Subscribe(1, (Subscription("t/#", 2), Subscription("n/x", 1, no_local=True,
                                                                     retain_as_published=True)),
                         Properties(subscription_identifiers=(7,))))
    publisher, _got, _ok = yield connect(a, cluster, "publisher-a", clean_start=True, expiry=0)
    publisher.send(Publish("t/1", b"one", 1, packet_id=1), Publish("t/2", b"two", 2, packet_id=2))
    sent = [p for p in mover.received() if isinstance(p, Publish)]
    assert [(p.topic, p.packet_id, p.qos) for p in sent] == [("t/1", 1, 1)]
    yield cluster.settle(gathered(mover, sent, 2))  # QoS 2 goes once its record is in Redis
    assert [(p.topic, p.packet_id, p.qos) for p in sent] == [("t/1", 1, 1), ("t/2", 2, 2)]
    mover.send(PubRec(2))  # QoS 2 to PUBREL phase; t/1 stays unacknowledged
    mover.send(Publish("in/q2", b"x", 2, packet_id=9))  # inbound QoS 2, not released
    answers: List[Any] = []
    yield cluster.settle(gathered(mover, answers, 2))
    assert [type(p) for p in answers] == [PubRel, PubRec]  # once written
    mover.drop()
    for n in range(3, 6):
        publisher.send(Publish(f"t/{n}", str(n).encode(), 1, packet_id=n))
    yield cluster.settle()
    assert not a.sessions.recorder._pending and not a.sessions.recorder._committing

    again, got, ok = yield connect(b, cluster, "mover", "alice")
    assert ok, "no CONNACK on node b"
    ack, after = split(got)
    assert ack.reason_code == 0 and ack.session_present is True
    yield cluster.settle(lambda: "mover" not in a.broker.sessions)
    assert "mover" not in a.broker.sessions
    kinds = [(type(p).__name__, getattr(p, "topic", None), p.packet_id,
              getattr(p, "dup", None)) for p in after]
    assert kinds == [("Publish", "t/1", 1, True), ("PubRel", None, 2, None),
                     ("Publish", "t/3", 3, False), ("Publish", "t/4", 4, False),
                     ("Publish", "t/5", 5, False)]
    assert after[0].properties.subscription_identifiers == (7,)
    session = b.broker.sessions["mover"]
    assert session.client is not None and session.client.username == "alice"
    entry = session.subscriptions["n/x"]
    assert (entry.qos, entry.no_local, entry.retain_as_published, entry.sub_id) == (
        1, True, True, 7)
    assert session.will is None and session.expiry_interval == HOUR
    again.send(PubRel(9))
    completed: List[Any] = []
    yield cluster.settle(gathered(again, completed, 1))
    assert completed == [PubComp(9)]
    again.send(PubAck(1), PubComp(2), PubAck(3), PubAck(4), PubAck(5))
    assert not session.inflight and not session.queue
    assert token_owner(b.sessions.tokens["mover"]) == (2, "b")
    assert b.broker.stats.wills_sent == a.broker.stats.wills_sent == 0
    figures = b.broker.sys_figures()  # $SYS/broker/cluster/sessions/...
    assert (figures["cluster/sessions/owned"], figures["cluster/sessions/taken_over"]) == (1, 1)
    assert a.broker.sys_figures()["cluster/sessions/handed_over"] == 1


@pytest_twisted.inlineCallbacks
def test_messages_routed_during_the_hand_over_follow_the_session(cluster: Cluster) -> Any:
    """Messages that reach the old node's copy of a session while it hands the session over
    (after its last commit) are written for the new owner: the client, resumed on the new
    node, gets them after the others, once each [MQTT-4.4.0-1]."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    publisher = yield left_offline(cluster, a, "late", "late/#")
    publisher.send(Publish("late/1", b"1", 1, packet_id=1))
    claim = a.sessions.directory.claim

    def claim_after_more(*args: Any, **kwargs: Any) -> Any:
        publisher.send(Publish("late/2", b"2", 1, packet_id=2),
                       Publish("late/3", b"3", 2, packet_id=3))
        return claim(*args, **kwargs)

    a.sessions.directory.claim = claim_after_more  # type: ignore[method-assign]
    again, got, ok = yield connect(b, cluster, "late")
    assert ok and split(got)[0].session_present is True
    after = split(got)[1]
    yield cluster.settle(gathered(again, after, 3))
    assert [p.payload for p in after if isinstance(p, Publish)] == [b"1", b"2", b"3"]


@pytest_twisted.inlineCallbacks
def test_messages_routed_to_the_old_node_after_the_hand_over_reach_the_session_once(
        cluster: Cluster) -> Any:
    """For a lease after handing a session over, the old node forwards the QoS 1/2 messages
    other nodes still route to it for that session to its new node, with their identity; the
    new node delivers one that comes while it reads the session's records after them, and
    keeps one copy of a message that reached the session both ways (no duplicate QoS 2
    message onward [MQTT-4.3.3-10] across the move); then the old node stops forwarding."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    routers = {}
    for node in (a, b):
        node.members.clock = node.hub.clock  # type: ignore[attr-defined]
        node.members.lease = 2.0  # type: ignore[attr-defined]
        router = Router(node.broker, node.engine, node.members)  # type: ignore[arg-type]
        router.flush = lambda: None  # type: ignore[method-assign]  # the test carries batches
        node.sessions.attach(router)
        routers[node] = router
    first, _got, _ok = yield connect(a, cluster, "mover")
    first.send(Subscribe(1, (Subscription("mv/#", 2),)))
    first.drop()

    def records(*numbers: int, share: str = "") -> bytes:
        return pack([encode_record(Message(f"mv/{n}", str(n).encode(), 2, False), False, share,
                                   0.0, identity(7, n)) or b"" for n in numbers])

    read = b.sessions.directory.read

    def read_after_a_forward(*args: Any) -> Any:  # forwarded while b reads the records
        routers[b]._deliver(records(0, share="\0mover"))
        return read(*args)

    b.sessions.directory.read = read_after_a_forward  # type: ignore[method-assign,assignment]
    again, got, ok = yield connect(b, cluster, "mover")
    assert ok and split(got)[0].session_present is True

    routers[b]._deliver(records(1))  # routed to b directly: b's route is known
    routers[a]._deliver(records(1, 2))  # routed to a by a node that did not know it yet
    a.broker.flush()
    forwarded = routers[a]._forwards.pop("b")
    assert len(forwarded) == 2 and routers[a]._qos12 == {}
    routers[b]._deliver(pack(forwarded))
    b.broker.flush()
    after = split(got)[1]
    yield cluster.settle(gathered(again, after, 3))
    yield cluster.settle()
    after += again.received()
    assert [p.payload for p in after if isinstance(p, Publish)] == [b"0", b"1", b"2"]
    a.hub.clock.advance(2.0)
    assert "\0\0mover" not in a.broker.sessions
    assert "mv/#" not in a.broker.local_filters()
    routers[a]._deliver(records(3))
    assert routers[a]._forwards == {}


@pytest_twisted.inlineCallbacks
def test_acknowledgements_wait_for_the_session_write(cluster: Cluster,
                                                     redis_server: RedisServer  # noqa: F811
                                                     ) -> Any:
    """A QoS 1 message queued for an offline persistent session is acknowledged (PUBACK to its
    publisher [MQTT-4.3.2-4]; the stream entry that brought it from another node) only once
    the session's new state is in Redis: a node killed after acknowledging loses none."""
    a = cluster.node("a", 1)
    yield cluster.up()
    publisher = yield left_offline(cluster, a, "keeps", "keeps/#")
    yield cluster.settle()
    publisher.send(Publish("keeps/1", b"1", 1, packet_id=1))
    assert publisher.received() == []  # held until written
    prefix = cluster.url.split("prefix=")[1]
    yield cluster.settle(lambda: PubAck(1) in publisher.received())
    assert redis_server.command("HLEN", f"{prefix}cluster:session:msgs:keeps") == b":1"
    router = Router(a.broker, a.engine, a.members)  # type: ignore[arg-type]  # not started
    acknowledged: List[Any] = []
    router._acknowledge = lambda stream, ids: acknowledged.append(ids)  # type: ignore
    record = encode_record(Message("keeps/2", b"2", 1, False), False, "", a.broker.now)
    assert record is not None
    router._stream_read([[b"s", [(b"1-0", [b"m", pack([record])])]]], "a", "s", ">")
    assert acknowledged == []  # held until written
    yield cluster.settle(lambda: acknowledged)
    assert acknowledged == [[b"1-0"]]
    assert redis_server.command("HLEN", f"{prefix}cluster:session:msgs:keeps") == b":2"


@pytest_twisted.inlineCallbacks
def test_another_user_gets_a_fresh_session_cluster_wide(cluster: Cluster) -> Any:
    """The session of user alice, moved to another node for a client of user mallory naming
    its client id, is not resumed: mallory gets a new session (Session Present 0
    [MQTT-3.2.2-2]) and alice's session ends, its delayed will published."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    watcher, _got, _ok = yield connect(b, cluster, "watcher", clean_start=True, expiry=0)
    watcher.send(Subscribe(1, (Subscription("wills/#", 0),)))
    will = Will("wills/id", b"alice gone", 0, False, Properties(will_delay_interval=60))
    alice, _got, ok = yield connect(a, cluster, "id", "alice", will=will)
    alice.send(Subscribe(1, (Subscription("secret/#", 1),)))
    alice.drop()
    yield cluster.settle()
    _mallory, got, ok = yield connect(b, cluster, "id", "mallory")
    assert ok and split(got)[0].session_present is False
    assert not b.broker.sessions["id"].subscriptions
    wills = [p for p in watcher.received() if isinstance(p, Publish)]
    assert [(p.topic, p.payload) for p in wills] == [("wills/id", b"alice gone")]


@pytest_twisted.inlineCallbacks
def test_takeover_of_a_connected_client_on_another_node(cluster: Cluster) -> Any:
    """A client id connected on node a connecting on node b: a's connection gets DISCONNECT
    0x8E Session taken over [MQTT-3.1.4-3] before b answers CONNACK."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    first, _got, _ok = yield connect(a, cluster, "twice", clean_start=True, expiry=0)
    _second, got, ok = yield connect(b, cluster, "twice", clean_start=True, expiry=0)
    assert ok and split(got)[0].reason_code == 0
    assert Disconnect(0x8E) in first.received()
    assert "twice" not in a.broker.sessions and "twice" in b.broker.sessions


@pytest.mark.parametrize("held_by_dead_node", [False, True])
@pytest_twisted.inlineCallbacks
def test_same_client_id_on_two_nodes_at_once(cluster: Cluster,
                                             redis_server: RedisServer,  # noqa: F811
                                             held_by_dead_node: bool) -> Any:
    """Two clients with one client id connecting on two nodes at the same moment (a new client
    id, or one whose session a dead node held, which both take and read): one ends up
    connected, on the node that owns the session in Redis; the other is taken over (DISCONNECT
    0x8E [MQTT-3.1.4-3]) or refused."""
    from twisted_mqtt.packets import Connect

    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    if held_by_dead_node:
        c = cluster.node("c", 3)
        yield cluster.up()
        yield left_offline(cluster, c, "twin", "twin/#")
        yield cluster.settle()
        yield c.engine.stop()
        cluster.nodes.remove(c)
        for node in (a, b):
            del node.members.members["c"]
    yield cluster.up()
    clients = {"a": a.client(), "b": b.client()}
    for client in clients.values():
        client.send(Connect("twin", V5, True, 0))
    seen: Dict[str, List[Any]] = {"a": [], "b": []}

    def settled() -> bool:
        for name, client in clients.items():
            seen[name].extend(client.received())
        return all(any(isinstance(p, ConnAck) for p in got) for got in seen.values())

    yield cluster.settle(settled)
    yield cluster.settle()
    for name, client in clients.items():
        seen[name].extend(client.received())
    connected = [name for name, node in (("a", a), ("b", b))
                 if "twin" in node.broker.sessions
                 and node.broker.sessions["twin"].connection is not None]
    assert len(connected) == 1, seen
    winner = connected[0]
    loser = "b" if winner == "a" else "a"
    lost = seen[loser]
    assert Disconnect(0x8E) in lost or any(
        isinstance(p, ConnAck) and p.reason_code == 0x88 for p in lost), lost
    prefix = cluster.url.split("prefix=")[1]
    reply = redis_server.command("EVAL", "return {ok=redis.call('HGET', KEYS[1], 'twin')}",
                                 "1", f"{prefix}cluster:sessions:owner")
    assert reply.decode().endswith(f":{winner}")


@pytest_twisted.inlineCallbacks
def test_owner_that_does_not_answer_is_fenced(
        cluster: Cluster, redis_server: RedisServer) -> Any:  # noqa: F811
    """Node a, owner of a session, hears nothing from node b (requests and notices lost): b
    takes the session at the timeout, and a's later writes of it are refused; a drops its copy
    and ends its connection with DISCONNECT 0x8E [MQTT-3.1.4-3]."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2, timeout=0.2)
    yield cluster.up()
    stale, _got, _ok = yield connect(a, cluster, "stale")
    stale.send(Subscribe(1, (Subscription("before", 1),)))
    yield cluster.settle()
    channel = a.sessions._channel("a").encode()
    a.engine._channels[channel] = lambda raw: None  # a hears nothing from b
    _fresh, got, ok = yield connect(b, cluster, "stale", step=0.01)
    assert ok and split(got)[0].session_present is True
    yield cluster.settle()
    assert "stale" in a.broker.sessions  # a still believes it owns it
    stale.send(Subscribe(2, (Subscription("after", 1),)))
    yield cluster.settle(lambda: "stale" not in a.broker.sessions)
    assert "stale" not in a.broker.sessions
    assert Disconnect(0x8E) in stale.received()
    prefix = cluster.url.split("prefix=")[1]
    subs = redis_server.command("HEXISTS", f"{prefix}cluster:session:subs:stale", "after")
    assert subs == b":0"
    assert redis_server.command("HEXISTS", f"{prefix}cluster:session:subs:stale",
                                "before") == b":1"


@pytest_twisted.inlineCallbacks
def test_owner_that_does_not_hand_over_hears_it_was_taken(cluster: Cluster) -> Any:
    """Node a does not hand its session over in time: once node b has taken it, a hears so and
    ends its connection with DISCONNECT 0x8E [MQTT-3.1.4-3] and drops its copy at once,
    before writing anything more of it."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2, timeout=0.2)
    yield cluster.up()
    stale, _got, _ok = yield connect(a, cluster, "slow")
    yield cluster.settle()
    a.sessions._hand_over = lambda *args: None  # type: ignore[method-assign]
    _fresh, got, ok = yield connect(b, cluster, "slow", step=0.01)
    assert ok and split(got)[0].session_present is True
    yield cluster.settle(lambda: "slow" not in a.broker.sessions)
    assert "slow" not in a.broker.sessions and "slow" not in a.sessions.tokens
    assert Disconnect(0x8E) in stale.received()


@pytest_twisted.inlineCallbacks
def test_node_not_serving_leaves_wills_to_the_adopter(cluster: Cluster) -> Any:
    """A node that stops serving publishes none of its clients' wills and keeps their records:
    the node that adopts its sessions publishes each will once [MQTT-3.1.2-8]."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    watcher, _got, _ok = yield connect(b, cluster, "watcher", clean_start=True, expiry=0)
    watcher.send(Subscribe(1, (Subscription("wills/#", 0),)))
    client, _got, _ok = yield connect(a, cluster, "cut-off", clean_start=True, expiry=0,
                                      will=Will("wills/cut-off", b"gone", 0, False))
    yield cluster.settle()
    a.members.node.serving = False  # its lease lost
    client.drop()
    yield cluster.settle()
    assert a.broker.stats.wills_sent == 0
    del b.members.members["a"]
    yield b.sessions.adopt("a")
    yield cluster.settle()
    assert [(p.topic, p.payload) for p in watcher.received() if isinstance(p, Publish)] == [
        ("wills/cut-off", b"gone")]


@pytest_twisted.inlineCallbacks
def test_dead_node_sessions_adopted_once(cluster: Cluster) -> Any:
    """Node a dies: its persistent session is adopted by exactly one of b and c (which both
    try) and goes on collecting its messages (one claimed from a's stream during the adoption
    too); the will of its clean client is published once,
    and only if the client's identity may still publish to the will's topic [MQTT-3.1.2-8]."""

    @implementer(IAuthorizer)
    class NoWillsOfMallory:
        def may_publish(self, client: Any, topic: str) -> bool:
            return client.username != "mallory"

        def may_subscribe(self, client: Any, topic_filter: str) -> bool:
            return True

        def may_receive(self, client: Any, topic: str) -> bool:
            return True

    a = cluster.node("a", 1)
    b = cluster.node("b", 2, authorizer=NoWillsOfMallory())
    c = cluster.node("c", 3, authorizer=NoWillsOfMallory())
    yield cluster.up()
    watchers = []
    for node in (b, c):
        watcher, _got, _ok = yield connect(node, cluster, f"watcher-{node.members.node.name}",
                                           clean_start=True, expiry=0)
        watcher.send(Subscribe(1, (Subscription("wills/#", 0),)))
        watchers.append(watcher)
    keeper, _got, _ok = yield connect(a, cluster, "keeper")
    keeper.send(Subscribe(1, (Subscription("keep/#", 1),)))
    yield connect(a, cluster, "clean", "bob", clean_start=True, expiry=0,
                  will=Will("wills/clean", b"bob gone", 0, False))
    yield connect(a, cluster, "denied", "mallory", clean_start=True, expiry=0,
                  will=Will("wills/denied", b"mallory gone", 0, False))
    yield cluster.settle()
    yield a.engine.stop()  # a dies: nothing more from it
    cluster.nodes.remove(a)
    for node in (b, c):
        del node.members.members["a"]
    adopting = b.sessions.adopt("a")
    # a message claimed from a's stream meanwhile waits for the adopted sessions
    b.sessions.claimed_message("a", Message("keep/0", b"claimed", 1, False), "")
    yield adopting
    yield c.sessions.adopt("a")
    yield cluster.settle()
    owners = [node for node in (b, c) if "keeper" in node.broker.sessions]
    assert owners == [b]
    assert b.broker.sys_figures()["cluster/sessions/adopted"] == 1
    wills = [(p.topic, p.payload) for w in watchers for p in w.received()
             if isinstance(p, Publish)]
    assert wills == [("wills/clean", b"bob gone")]  # on the adopter (no routes here)
    assert sum(node.broker.stats.wills_sent for node in (b, c)) == 1
    assert sum(node.broker.stats.wills_denied for node in (b, c)) == 1
    owner = owners[0]
    sender, _got, _ok = yield connect(owner, cluster, "sender", clean_start=True, expiry=0)
    sender.send(Publish("keep/1", b"kept", 1, packet_id=1))
    yield cluster.settle(lambda: owner.broker.sessions["keeper"].queue)
    assert [d.message.payload for d in owner.broker.sessions["keeper"].queue] == [
        b"claimed", b"kept"]


@pytest_twisted.inlineCallbacks
def test_large_session_moves_in_split_commands(cluster: Cluster) -> Any:
    """A session with more queued messages than one scripted command carries (Lua's stack
    holds about 8,000 values) moves whole and in order: every message is sent once after the
    session resumes [MQTT-4.4.0-1]."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    publisher = yield left_offline(cluster, a, "big", "big/t")
    count = 4500
    assert count * 2 > 8000 > MAX_SCRIPT_ARGS
    for start in range(0, count, 500):  # within the broker's Receive Maximum
        publisher.send(*(Publish("big/t", str(n).encode(), 1, packet_id=n + 1)
                         for n in range(start, start + 500)))
        acks: List[Any] = []
        assert (yield cluster.settle(gathered(publisher, acks, 500), 2000))
    again, got, ok = yield connect(b, cluster, "big")
    assert ok
    _ack, after = split(got)
    payloads: List[bytes] = []
    while len(payloads) < count:
        sent = [p for p in after if isinstance(p, Publish)]
        assert sent, f"{len(payloads)} of {count} messages came"
        payloads += [p.payload for p in sent]
        again.send(*(PubAck(p.packet_id) for p in sent if p.packet_id is not None))
        after = again.received()
    assert payloads == [str(n).encode() for n in range(count)]


@pytest_twisted.inlineCallbacks
def test_session_writes_wait_while_redis_is_unreachable(
        cluster: Cluster, redis_server: RedisServer,  # noqa: F811
        log_events: List[dict]) -> Any:
    """While the engine is unreachable a session's changes are kept and retried, with one
    warning line each time and no traceback; once it is back they are written, and the
    subscription is in the stored session [MQTT-3.8.4-3]."""
    a = cluster.node("a", 1)
    yield cluster.up()
    client, _got, _ok = yield connect(a, cluster, "outage")
    yield cluster.settle()
    yield a.engine.stop()
    client.send(Subscribe(1, (Subscription("during/outage", 1),)))
    yield cluster.settle(lambda: any("cannot write sessions" in str(e.get("error", ""))
                                     for e in log_events))
    failures = [e for e in log_events if e.get("log_failure") is not None]
    assert failures == []
    a.engine.start()
    yield cluster.settle(lambda: a.engine.up, 2000)
    a.hub.clock.advance(1)  # the recorder's retry
    prefix = cluster.url.split("prefix=")[1]
    key = f"{prefix}cluster:session:subs:outage"
    written = yield cluster.settle(
        lambda: redis_server.command("HEXISTS", key, "during/outage") == b":1", 2000)
    assert written


@pytest_twisted.inlineCallbacks
def test_unreadable_session_messages_are_one_line(cluster: Cluster,
                                                  log_events: List[dict]) -> Any:
    """A message on a node's session channel that no node sends (not JSON, fields missing)
    is logged in one line and ignored; the node goes on taking sessions over
    [MQTT-3.1.4-3]."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    first, _got, _ok = yield connect(a, cluster, "noise")
    channel = a.sessions._channel("a")
    for raw in ("not json", '{"op": "handover", "client": "noise", "token": "1:1:a"}', "[]"):
        yield b.engine.command("PUBLISH", channel, raw)
    yield cluster.settle(lambda: sum("unreadable" in e.get("log_format", "")
                                     for e in log_events) == 3)
    assert [e for e in log_events if e.get("log_failure") is not None] == []
    _second, got, ok = yield connect(b, cluster, "noise")
    assert ok and Disconnect(0x8E) in first.received()


@pytest_twisted.inlineCallbacks
def test_connect_refused_while_redis_is_unreachable(cluster: Cluster,
                                                    log_events: List[dict]) -> Any:
    """A client connecting while the node cannot reach Redis gets CONNACK 0x88 Server
    unavailable [MQTT-3.2.2-6] (the node cannot know who owns its session), with one log line
    and no traceback; once Redis is back it connects."""
    a = cluster.node("a", 1)
    yield cluster.up()
    yield a.engine.stop()
    _client, got, ok = yield connect(a, cluster, "early")
    assert ok and split(got)[0].reason_code == 0x88
    assert [e for e in log_events if e.get("log_failure") is not None] == []
    assert any("cannot become its session's owner" in e.get("log_format", "")
               for e in log_events)
    a.engine.start()
    yield cluster.up()
    _client, got, ok = yield connect(a, cluster, "early")
    assert ok and split(got)[0].reason_code == 0


@pytest_twisted.inlineCallbacks
def test_owner_given_up_when_no_session_opens(cluster: Cluster,
                                              redis_server: RedisServer  # noqa: F811
                                              ) -> Any:
    """A client that leaves while its node becomes the owner of its client id opens no session
    [MQTT-3.1.4-6]: the node gives the client id up within twice the connect timeout, so the
    directory does not keep client ids nobody uses."""
    a = cluster.node("a", 1)
    yield cluster.up()
    from twisted_mqtt.packets import Connect

    leaver = a.client()
    leaver.send(Connect("leaver", V5, True, 0))
    leaver.drop()
    yield cluster.settle(lambda: "leaver" in a.sessions.tokens)
    prefix = cluster.url.split("prefix=")[1]
    owners = f"{prefix}cluster:sessions:owner"
    assert redis_server.command("HEXISTS", owners, "leaver") == b":1"
    _stayer, _got, ok = yield connect(a, cluster, "stayer", clean_start=True, expiry=0)
    a.hub.advance(2 * a.broker.capabilities.connect_timeout + 1)
    yield cluster.settle(lambda: redis_server.command("HEXISTS", owners, "leaver") == b":0")
    assert "leaver" not in a.sessions.tokens
    assert redis_server.command("HEXISTS", owners, "leaver") == b":0"
    assert redis_server.command("HEXISTS", owners, "stayer") == b":1"


def test_handover_timeout_option(tmp_path: Path) -> None:
    """--cluster-handover-timeout and cluster.handover_timeout set how long a CONNECT waits for
    the session's owner (default 2 s); below 0.1 s is refused [MQTT-3.1.4-3]."""
    from twisted_mqtt.cluster import Cluster as Node
    from twisted_mqtt.tap import Options, makeService

    def timeout_of(*args: str) -> float:
        options = Options()
        options.parseOptions(list(args))
        service = makeService(options)
        assert isinstance(service, MultiService)
        return next(s.sessions.handover_timeout for s in service if isinstance(s, Node))

    url = "redis://127.0.0.1:1/0"
    assert timeout_of("--cluster", url) == HANDOVER_TIMEOUT == 2.0
    assert timeout_of("--cluster", url, "--cluster-handover-timeout", "0.5") == 0.5
    config = tmp_path / "broker.yaml"
    config.write_text(f"cluster:\n  url: {url}\n  handover_timeout: 0.7\n")
    assert timeout_of("--config", str(config)) == 0.7
    with pytest.raises(UsageError, match="expected a number >= 0.1"):
        timeout_of("--cluster", url, "--cluster-handover-timeout", "0.01")


def test_cited_labels() -> None:
    """Every test cites a normative label that exists."""
    check_cited_labels(sys.modules[__name__], every_test=True)
