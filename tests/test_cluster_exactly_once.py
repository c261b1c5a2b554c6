"""QoS 2 across a node's death, on a private ``redis-server``: brokers on ``task.Clock`` as in
``tests/test_cluster_sessions.py``, streams read and claimed by the real ``Router``.

A stream entry's acknowledgement goes in the script that writes what its messages changed in
the node's persistent sessions, so a node that dies leaves both or neither, and a survivor
routes what it claims from a dead node's stream to the sessions it adopted from that node only.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any, Dict, List

import pytest
import pytest_twisted
from twisted.internet.defer import fail, inlineCallbacks, succeed

from tests.servers import RedisServer, redis_server  # noqa: F401
from tests.spec import check_cited_labels
from tests.test_cluster_sessions import (  # noqa: F401
    Cluster,
    NodeUnderTest,
    cluster,
    connect,
    gathered,
)
from twisted_mqtt.cluster.engine import EngineDown
from twisted_mqtt.cluster.membership import Membership
from twisted_mqtt.cluster.routes import GROUP, Router
from twisted_mqtt.cluster.sessions import FencedStore
from twisted_mqtt.cluster.wire import encode_record, pack
from twisted_mqtt.packets import Publish, Subscribe, Subscription
from twisted_mqtt.session import Message
from twisted_mqtt.storage import Batch, StoredDelivery, StoredMessage, StoreError

ONCE = Message("once/1", b"exactly once", 2, False)


def routers(*nodes: NodeUnderTest) -> Dict[NodeUnderTest, Router]:
    """A ``Router`` (not started) for each node, wired to its sessions as ``Cluster`` does."""
    made = {}
    for node in nodes:
        members: Any = node.members  # the test's view of the cluster
        router = made[node] = Router(node.broker, node.engine, members)
        router.claim_handler = node.sessions.claimed_message
        router.ack_writer = node.sessions.acknowledge_with_write
        node.sessions.attach(router)
        members.clock = node.hub.clock
        members.lease = 2.0
    return made


@inlineCallbacks
def add_entry(router: Router, node: str) -> Any:
    """Add ``ONCE`` to ``node``'s stream as a publishing node would; return the stream."""
    stream = router.stream(node)
    yield router.engine.command("XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM").addErrback(
        lambda _: None)
    record = encode_record(ONCE, False, "", router.broker.now)
    assert record is not None
    yield router.engine.command("XADD", stream, "*", "b", pack([record]))
    return stream


@inlineCallbacks
def subscribed(nodes: Cluster, node: NodeUnderTest, client_id: str, **session: Any) -> Any:
    """A client ``client_id`` of ``node`` (``session``: as ``connect`` takes it) subscribed to
    ``once/#`` (QoS 2): (the client, what it got after its CONNACK)."""
    client, got, _ok = yield connect(node, nodes, client_id, **session)
    client.send(Subscribe(1, (Subscription("once/#", 2),)))
    return client, got


@inlineCallbacks
def offline_keeper(nodes: Cluster, node: NodeUnderTest) -> Any:
    """Leave on ``node`` a persistent session ``keeper`` subscribed to ``once/#`` (QoS 2)."""
    keeper, _got = yield subscribed(nodes, node, "keeper")
    keeper.drop()
    yield nodes.settle()


@inlineCallbacks
def adopted(nodes: Cluster, redis: RedisServer, dead: NodeUnderTest,
            adopter: NodeUnderTest, router: Router) -> Any:
    """``dead`` is gone: ``adopter`` adopts its sessions and claims its stream (until the
    claim deletes it)."""
    name = dead.members.node.name
    nodes.nodes.remove(dead)
    del adopter.members.members[name]
    adopting = adopter.sessions.adopt(name)
    router._claim(name)
    yield adopting
    done = yield nodes.settle(lambda: redis.command("EXISTS", router.stream(name)) == b":0")
    assert done
    yield nodes.settle()


@inlineCallbacks
def publishes_to(nodes: Cluster, node: NodeUnderTest, client_id: str) -> Any:
    """The (payload, QoS) of the PUBLISH packets ``client_id``'s session sends when its client
    connects to ``node``."""
    client, got, _ok = yield connect(node, nodes, client_id)
    yield nodes.settle(gathered(client, got, 3), turns=100)
    return [(p.payload, p.qos) for p in got if isinstance(p, Publish)]


@inlineCallbacks
def published_late(nodes: Cluster, node: NodeUnderTest, router: Router) -> Any:
    """Publish a QoS 2 message ``late`` to ``once/late`` on ``node``; wait until its
    publisher's acknowledgement is released (it is in the streams)."""
    node.broker.publish(Message("once/late", b"late", 2, False))
    placed: List[Any] = []
    waiter = router.pending()
    assert waiter is not None
    waiter.addBoth(placed.append)
    yield nodes.settle(lambda: placed)
    assert placed == [None]


@pytest_twisted.inlineCallbacks
def test_qos2_entry_written_by_a_dead_node_is_not_claimed_again(
        cluster: Cluster, redis_server: RedisServer) -> Any:  # noqa: F811
    """Node a routes a stream entry holding a QoS 2 message into an offline persistent
    session, writes the session, and dies before anything else reaches Redis: node b, which
    adopts the session and claims a's stream, delivers the message once; the node that took
    the message in causes no duplicate for onward recipients [MQTT-4.3.3-10]."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    yield offline_keeper(cluster, a)
    prefix = cluster.url.split("prefix=")[1]
    made = routers(a, b)
    yield add_entry(made[a], "a")
    written: List[Any] = []
    write = a.sessions.directory.write

    def died(reply: Any) -> Any:
        written.append(reply)
        a.engine.stop()
        return reply

    def write_then_die(*args: Any) -> Any:  # a dies as the session write is answered
        return write(*args).addCallback(died)

    a.sessions.directory.write = write_then_die  # type: ignore[method-assign,assignment]
    made[a]._acknowledge = lambda *_: None  # type: ignore[method-assign]  # dead by then
    made[a]._read_stream("a", ">")
    yield cluster.settle(lambda: written and not a.engine.up)
    assert redis_server.command("HLEN", f"{prefix}cluster:session:msgs:keeper") == b":1"
    yield adopted(cluster, redis_server, a, b, made[b])
    assert [d.message.payload for d in b.broker.sessions["keeper"].queue] == [b"exactly once"]
    got = yield publishes_to(cluster, b, "keeper")
    assert got == [(b"exactly once", 2)]


@pytest_twisted.inlineCallbacks
def test_qos2_to_a_connected_session_waits_for_its_write(
        cluster: Cluster, redis_server: RedisServer) -> Any:  # noqa: F811
    """Node a routes a stream entry holding a QoS 2 message to a connected client with a
    persistent session and dies before the session write that acknowledges the entry reaches
    Redis: the client got nothing from a, and gets the message once from node b, which adopts
    the session and claims the entry; it is never delivered twice under two packet
    identifiers [MQTT-4.4.0-1]."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    keeper, _got = yield subscribed(cluster, a, "keeper")
    yield cluster.settle()
    keeper.received()
    made = routers(a, b)
    yield add_entry(made[a], "a")
    sent: List[Any] = []

    def never_sent(*args: Any) -> Any:  # a dies with the write on its way
        sent.append(args)
        a.engine.stop()
        return fail(EngineDown("killed"))

    a.sessions.directory.write = never_sent  # type: ignore[method-assign,assignment]
    made[a]._acknowledge = lambda *_: None  # type: ignore[method-assign]  # dead by then
    made[a]._read_stream("a", ">")
    yield cluster.settle(lambda: sent and not a.engine.up)
    yield cluster.settle(turns=20)
    assert [p for p in keeper.received() if isinstance(p, Publish)] == []
    keeper.drop()
    yield adopted(cluster, redis_server, a, b, made[b])
    got = yield publishes_to(cluster, b, "keeper")
    assert got == [(b"exactly once", 2)]


@pytest_twisted.inlineCallbacks
def test_claimed_entry_reaches_only_the_dead_node_sessions(
        cluster: Cluster, redis_server: RedisServer) -> Any:  # noqa: F811
    """A QoS 2 message in the streams of nodes a and b (a subscriber on each); a dies before
    reading its own: b's claim of it reaches the session adopted from a, and not b's own
    subscriber, which had its copy from b's stream [MQTT-4.3.3-10]."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    yield offline_keeper(cluster, a)
    watcher, _got = yield subscribed(cluster, b, "watcher", clean_start=True, expiry=0)
    made = routers(a, b)
    yield add_entry(made[a], "a")
    yield add_entry(made[b], "b")
    made[b]._read_stream("b", ">")
    seen: List[Any] = []
    yield cluster.settle(gathered(watcher, seen, 2))
    yield a.engine.stop()  # a dies without reading its stream
    yield adopted(cluster, redis_server, a, b, made[b])
    seen.extend(watcher.received())
    assert [(p.payload, p.qos) for p in seen if isinstance(p, Publish)] == [
        (b"exactly once", 2)]
    got = yield publishes_to(cluster, b, "keeper")
    assert got == [(b"exactly once", 2)]


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("adopting_first", [True, False])
def test_message_routed_to_a_node_after_its_removal_reaches_its_adopted_session(
        cluster: Cluster, redis_server: RedisServer, adopting_first: bool) -> Any:  # noqa: F811
    """Node p has not heard yet that node a is dead: after b removed a (and, or not yet,
    adopted its sessions and claimed its stream), p routes a QoS 2 message to a and to b (for
    b's own subscriber), and its publisher's acknowledgement is released once the message is
    placed. It reaches the session b adopted from a once, instead of a stream nobody reads any
    more, and b's subscriber once [MQTT-4.3.3-2] [MQTT-4.3.3-10]."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    p = cluster.node("p", 3)
    yield cluster.up()
    yield offline_keeper(cluster, a)
    watcher, seen = yield subscribed(cluster, b, "watcher", clean_start=True, expiry=0)
    made = routers(a, b, p)
    yield b.engine.command("HSET", b.engine.key("nodes"), "a", 1, "b", 2, "p", 3)
    yield b.engine.command("XGROUP", "CREATE", made[b].stream("b"), GROUP, "0", "MKSTREAM")
    made[p]._add("a", "once/#")  # p mirrors a's filter and b's
    made[p]._add("b", "once/#")
    yield a.engine.stop()  # a dies
    survivor = Membership(b.engine, "b", b.hub.clock, lease=2.0)
    survivor._remove("a", 1)
    yield cluster.settle(lambda: redis_server.command(
        "HEXISTS", b.engine.key("nodes"), "a") == b":0")
    if adopting_first:
        yield adopted(cluster, redis_server, a, b, made[b])
    yield published_late(cluster, p, made[p])  # p still routes it to a
    made[b]._read_stream("b", ">")  # b may read it before it hears that it removed a
    if not adopting_first:
        yield cluster.settle(lambda: redis_server.command(
            "XLEN", made[b].stream("b")) == b":0")  # read and acknowledged
        yield adopted(cluster, redis_server, a, b, made[b])
    keeper = b.broker.sessions["keeper"]
    yield cluster.settle(lambda: keeper.queue)
    yield cluster.settle()
    assert [d.message.payload for d in keeper.queue] == [b"late"]
    seen.extend(watcher.received())
    assert [p.payload for p in seen if isinstance(p, Publish)] == [b"late"]
    got = yield publishes_to(cluster, b, "keeper")
    assert got == [(b"late", 2)]


@pytest_twisted.inlineCallbacks
def test_message_routed_to_the_survivor_while_it_adopts_reaches_the_adopted_session(
        cluster: Cluster) -> Any:  # noqa: F811
    """Once node a is removed, the other nodes no longer route to it: a QoS 2 message for
    ``once/#`` that reaches b (for its own subscriber) while b is still reading the sessions
    it adopts from a reaches the adopted session too [MQTT-4.3.3-2]."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    yield offline_keeper(cluster, a)
    watcher, _got = yield subscribed(cluster, b, "watcher", clean_start=True, expiry=0)
    made = routers(a, b)
    yield a.engine.stop()  # a dies
    del b.members.members["a"]
    adopting = b.sessions.adopt("a")
    record = encode_record(ONCE, False, "", b.broker.now)
    assert record is not None
    made[b]._deliver(pack([record]))  # routed to b directly by a node that forgot a
    b.broker.flush()
    yield adopting
    assert [d.message.payload for d in b.broker.sessions["keeper"].queue] == [b"exactly once"]


@pytest_twisted.inlineCallbacks
def test_message_published_elsewhere_while_the_heir_adopts_reaches_the_adopted_session(
        cluster: Cluster, redis_server: RedisServer) -> Any:  # noqa: F811
    """Node p has heard that node b removed node a, and b is still reading the sessions it
    adopts from a (it routes to none of them yet): p keeps routing ``once/#`` to a, so a QoS 2
    message published on p reaches the session b adopted from a, once; p drops a's routes
    when b announces the adoption [MQTT-4.3.3-2] [MQTT-4.3.3-10]."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    p = cluster.node("p", 3)
    yield cluster.up()
    yield offline_keeper(cluster, a)
    made = routers(a, b, p)
    yield b.engine.command("HSET", b.engine.key("nodes"), "a", 1, "b", 2, "p", 3)
    yield b.engine.command("XGROUP", "CREATE", made[b].stream("b"), GROUP, "0", "MKSTREAM")
    p.engine.subscribe(made[p].routes_channel, made[p]._routes_changed)
    made[p]._add("a", "once/#")
    yield a.engine.stop()  # a dies
    Membership(b.engine, "b", b.hub.clock, lease=2.0)._remove("a", 1)
    yield cluster.settle(lambda: redis_server.command(
        "HEXISTS", b.engine.key("nodes"), "a") == b":0")
    del p.members.members["a"]
    made[p]._member("down", "a")  # p hears of the removal
    yield cluster.settle()
    assert made[p].remote_filters("a") == {"once/#"}
    yield published_late(cluster, p, made[p])
    yield adopted(cluster, redis_server, a, b, made[b])
    made[b]._read_stream("b", ">")
    keeper = b.broker.sessions["keeper"]
    yield cluster.settle(lambda: keeper.queue)
    yield cluster.settle(lambda: not made[p].remote_filters("a"))
    assert made[p].remote_filters("a") == set()
    got = yield publishes_to(cluster, b, "keeper")
    assert got == [(b"late", 2)]


@pytest_twisted.inlineCallbacks
def test_every_entry_of_a_long_dead_stream_is_claimed(
        cluster: Cluster, redis_server: RedisServer) -> Any:  # noqa: F811
    """A dead node leaves 12,000 entries in its stream, 1,500 of them read (pending) and the
    rest not: its heir claims all of them, a few hundred at a time, before it deletes the
    stream; no acknowledged message is lost however long the stream [MQTT-4.3.3-2]."""
    a = cluster.node("a", 1)
    b = cluster.node("b", 2)
    yield cluster.up()
    made = routers(a, b)
    for node in (a, b):
        made[node].claim_handler = None  # to the current subscribers, counted
    stream = yield add_entry(made[a], "a")
    yield a.engine.command("EVAL", "for i = 1, 11999 do redis.call('XADD', KEYS[1], '*', 'b', "
                           "ARGV[1]) end return 1", 1, stream,
                           pack([encode_record(Message("gone/x", b"q0", 0, False), False, "",
                                               0.0) or b""]))
    pending = yield a.engine.command("XREADGROUP", "GROUP", GROUP, "a", "COUNT", 1500,
                                     "STREAMS", stream, ">")
    assert len(pending[0][1]) == 1500
    yield a.engine.stop()  # a dies
    nodes = cluster.nodes
    nodes.remove(a)
    made[b]._claim("a")
    done = yield cluster.settle(lambda: redis_server.command("EXISTS", stream) == b":0",
                                turns=2000)
    assert done
    assert made[b].stats["claimed"] == 12_000


class StubDirectory:
    """A directory whose writes answer as the test says, each call kept."""

    def __init__(self) -> None:
        self.engine = SimpleNamespace(location="stub")
        self.records = SimpleNamespace(commands=lambda batch: [("HSET", "k", "f", "v")])
        self.calls: List[Any] = []
        self.fails = False

    def write(self, groups: Dict[str, Any], then: Any = ()) -> Any:
        self.calls.append((sorted(groups), list(then)))
        return fail(EngineDown("down")) if self.fails else succeed([])


def batch_of(client_id: str) -> Batch:
    """A batch adding one delivery to ``client_id``'s session."""
    batch = Batch()
    batch.deliveries[1] = StoredDelivery(1, client_id, StoredMessage("t", b"", 2, False), 2,
                                         False)
    return batch


def test_acknowledgements_go_with_the_write_they_acknowledge() -> None:
    """The commands given to the fenced store go with its next write, again with that write's
    batch when it is retried (not with a later batch's), are dropped with a batch given up
    (the entries stay pending: no session holds their messages), and are taken back when no
    write took them, so that no entry is acknowledged apart from the session state recording
    its messages [MQTT-4.3.3-10]."""
    directory = StubDirectory()
    sessions = SimpleNamespace(tokens={"c": "1:1:a"}, lost=lambda *_: None)
    store = FencedStore(directory, sessions)  # type: ignore[arg-type]
    first, second, third = [("XACK", "s", GROUP, n) for n in (b"1-0", b"2-0", b"3-0")]
    store.then.append(first)
    directory.fails = True
    failed = batch_of("c")
    errors: List[Any] = []
    store.commit(failed).addErrback(errors.append)
    assert errors and errors[0].check(StoreError)
    store.then.append(second)
    directory.fails = False
    store.commit(failed)  # the retry of the same batch
    assert directory.calls[-1] == (["c"], [first])
    assert store.went([first]) and not store.went([second]) and store.then == []
    directory.fails = True
    store.then.append(third)
    store.commit(failed).addErrback(lambda _: None)
    directory.fails = False
    store.commit(batch_of("c"))  # the failed batch was given up: its XACK with it
    assert directory.calls[-1] == (["c"], [])
    store.then.append(first)
    store.commit(Batch())  # no session to write: the commands alone
    assert directory.calls[-1] == ([], [first])


def test_cited_labels() -> None:
    check_cited_labels(sys.modules[__name__], every_test=True)
