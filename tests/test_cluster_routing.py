"""Routing between cluster nodes, in memory: two brokers on ``task.Clock``, each with its
``Router``; what one router would send through Redis is carried to the other by hand
(``carry``), so the routing rules are checked without a network: interest per node, one copy
per interested node, the receiving node applying its own subscription options (QoS downgrade,
Retain As Published, No Local, subscription identifiers, message expiry), shared subscriptions
across nodes, and QoS 1/2 acknowledgements held until the hand-off is written.

Docstrings cite ``[MQTT-x.y.z-n]`` (MQTT 5.0) labels a test also proves across nodes.
"""

from __future__ import annotations

import json
import sys
from typing import Any, List, Tuple

import pytest
from twisted.internet.defer import Deferred, succeed

from tests.hook_helpers import hub, join, payloads, publishes, subscribe
from tests.spec import check_cited_labels
from twisted_mqtt.cluster.engine import RedisEngine
from twisted_mqtt.cluster.membership import HEIR_LEASES, Membership
from twisted_mqtt.cluster.routes import READ, Router
from twisted_mqtt.cluster.wire import RUN, decode_record, encode_record, pack, unpack
from twisted_mqtt.packets import PubAck, Publish, SubAck, Subscribe, Subscription
from twisted_mqtt.properties import Properties
from twisted_mqtt.session import Message
from twisted_mqtt.targets import ApplicationTarget, DeliveryTarget, is_remote
from twisted_mqtt.testing import InMemoryBroker

NAMES = ("a", "b")
LEASE = 3.0


class Node:
    """One broker with its router, its engine never connected (sends are carried by hand)."""

    def __init__(self, name: str, **caps: Any) -> None:
        self.name = name
        self.hub: InMemoryBroker = hub(**caps)
        self.broker = self.hub.broker
        self.engine = RedisEngine("redis://127.0.0.1:1/0", self.hub.clock)
        self.members = Membership(self.engine, name, self.hub.clock)
        self.members.node.serving = True
        self.members.node.epoch = 1
        self.members._proven_until = float("inf")  # the lease never lapses here
        self.engine.up = True  # but nothing is sent before ``engine_up``: no turn passes
        self.members.members = {n: 1 for n in NAMES}
        self.router = Router(self.broker, self.engine, self.members)
        self.router.start()
        self.scripts: List[Tuple[str, List[Any]]] = []
        self.announced = 0
        """The version of this node's last route announcement."""

    def engine_up(self) -> None:
        """Let the engine answer every script with success, recording each call."""
        def script(source: str, keys: List[str], args: List[Any],
                   control: bool = False) -> Deferred[Any]:
            self.scripts.append((source, args))
            if source == READ:  # the test answers the read of a node's routes itself
                return Deferred()
            return succeed(1)

        self.engine.script = script  # type: ignore[method-assign]


def heir_c(*args: Any, control: bool = False) -> Deferred[Any]:
    """Redis's replies once node c removed a node (its heir, which has not adopted yet) and
    claims and reads its empty stream."""
    replies = {"MGET": [b"c", None], "XAUTOCLAIM": [b"0-0", [], []], "XREADGROUP": []}
    return succeed(replies.get(args[0], 1))


def pair() -> Tuple[Node, Node]:
    """Nodes a and b, each knowing the other's routes as they change."""
    return Node("a"), Node("b")


def announce(name: str, full: str, *ops: str, version: int = 1) -> bytes:
    """A route announcement as the engine's script publishes it (epoch 1)."""
    return json.dumps([name, full, list(ops), "1", version]).encode("utf-8")


def sync_routes(*nodes: Node) -> None:
    """Hand each node's pending route changes to the others, as the routes channel would."""
    for node in nodes:
        changes, node.router._pending_changes = node.router._pending_changes, []
        if not changes:
            continue
        node.announced += 1
        text = announce(node.name, "0", *changes, version=node.announced)
        for other in nodes:
            if other is not node:
                other.router._routes_changed(text)


def carry(source: Node, target: Node) -> int:
    """Hand what ``source`` queued for ``target`` to it; return how many records."""
    records = (source.router._qos0.pop(target.name, [])
               + source.router._qos12.pop(target.name, []))
    if records:
        target.router._deliver(pack(records))
        target.broker.flush()
    return len(records)


def test_first_local_subscriber_and_last_leaving_change_the_interest() -> None:
    """Only the first local subscription to a filter and the last one leaving are announced;
    a filter mirrored from another node is not this node's interest."""
    a, b = pair()
    seen: List[Tuple[str, bool]] = []
    a.broker.interest_watchers.append(lambda f, present: seen.append((f, present)))
    one = join(a.hub, "one")
    two = join(a.hub, "two")
    subscribe(one, "x/#")
    subscribe(two, "x/#")
    subscribe(two, "y")
    assert seen == [("x/#", True), ("y", True)]
    assert sorted(a.broker.local_filters()) == ["x/#", "y"]
    one.send_bytes(b"\xe0\x00")  # DISCONNECT: a clean session ends
    assert seen == [("x/#", True), ("y", True)]
    two.drop()
    assert seen[2:] == [("x/#", False), ("y", False)] or seen[2:] == [("y", False),
                                                                        ("x/#", False)]
    b.router._routes_changed(announce("a", "0", "+z/#"))  # a's filter: not b's own interest
    assert b.router.remote_filters("a") == {"z/#"}
    assert b.broker.local_filters() == []


def test_a_message_goes_once_to_each_interested_node_only() -> None:
    """Two subscribers on b whose filters both match get one copy carried to b; a node with
    no matching filter gets nothing; the last unsubscribe on b stops the forwarding."""
    a, b = pair()
    first = join(b.hub, "first")
    second = join(b.hub, "second")
    subscribe(first, "sensors/#", 0)
    subscribe(second, "sensors/+/t", 0)
    sync_routes(a, b)
    publisher = join(a.hub, "publisher")
    publisher.send(Publish("sensors/k/t", b"21", 0), Publish("other", b"x", 0))
    assert carry(a, b) == 1
    assert payloads(first) == [b"21"]
    assert payloads(second) == [b"21"]
    first.send_bytes(b"\xe0\x00")
    second.send_bytes(b"\xe0\x00")
    sync_routes(a, b)
    assert a.router.remote_filters("b") == set()
    publisher.send(Publish("sensors/k/t", b"22", 0))
    assert carry(a, b) == 0


@pytest.mark.parametrize("levels", [(5, 5), (4, 4), (4, 5), (5, 4)])
def test_a_run_of_qos0_packets_crosses_as_one_record(levels: Tuple[int, int]) -> None:
    """Consecutive plain QoS 0 PUBLISH packets to one topic go to another node as one record
    of the packets as received, and reach its subscriber in order; the same protocol family
    gets them as one slice, the other one by one, encoded for it [MQTT-3.3.1-4]; the node that
    receives the run does not hand it back to the nodes it mirrors, and a node's own
    subscriber gets it as on one broker [MQTT-4.6.0-6]."""
    publisher_level, subscriber_level = levels
    a, b = pair()
    far = join(b.hub, "far", level=subscriber_level)
    subscribe(far, "s/#", 0)
    near = join(a.hub, "near", level=publisher_level)
    subscribe(near, "s/#", 0)
    sync_routes(a, b)
    publisher = join(a.hub, "publisher", level=publisher_level)
    publisher.send(*(Publish("s/1", b"%d" % n, 0) for n in range(5)))
    records = a.router._qos0["b"]
    assert len(records) == 1 and records[0][0] & RUN
    assert carry(a, b) == 1
    sent = [(p.payload, p.qos, p.retain) for p in publishes(far)]
    assert sent == [(b"%d" % n, 0, False) for n in range(5)]
    assert [p.payload for p in publishes(near)] == [b"%d" % n for n in range(5)]
    assert b.router._qos0 == {} and b.router.stats["received"] == 5
    assert a.router.stats["sent"] == 5


def test_a_bad_run_record_is_dropped_with_one_line() -> None:
    """A run record whose fields do not add up is dropped (logged), and the records after
    it in the batch are delivered."""
    a, b = pair()
    far = join(b.hub, "far")
    subscribe(far, "s/#", 0)
    sync_routes(a, b)
    good = encode_record(Message("s/1", b"after", 0, False), False, "", 0.0)
    assert good is not None
    b.router._deliver(pack([bytes((RUN, 0, 0, 0, 1)) + b"s" + bytes(10), good]))
    b.broker.flush()
    assert payloads(far) == [b"after"]


def test_receiving_node_applies_its_subscription_options() -> None:
    """The QoS is the lower of the published and granted [MQTT-3.8.4-8], RETAIN is cleared
    without Retain As Published [MQTT-3.3.1-12] and kept with it [MQTT-3.3.1-13], each
    subscription identifier is sent [MQTT-3.3.4-3], all on the node of the subscriber."""
    a, b = pair()
    plain = join(b.hub, "plain")
    plain.send(Subscribe(1, (Subscription("t/#", 1),), Properties(subscription_identifiers=(7,))))
    assert isinstance(plain.received()[0], SubAck)
    kept = join(b.hub, "kept")
    subscribe(kept, "t/#", 2, retain_as_published=True)
    sync_routes(a, b)
    publisher = join(a.hub, "publisher")
    publisher.send(Publish("t/1", b"v", 2, retain=True, packet_id=1))
    assert carry(a, b) == 1
    (got,) = publishes(plain)
    assert (got.qos, got.retain, got.properties.subscription_identifiers) == (1, False, (7,))
    (got,) = publishes(kept)
    assert (got.qos, got.retain) == (2, True)


def test_no_local_holds_for_the_publisher_on_another_node() -> None:
    """A session kept on b with a No Local subscription does not get what its own client
    publishes once connected to a [MQTT-3.8.3-3]; another client's message it does."""
    a, b = pair()
    kept = join(b.hub, "c", clean=False, expiry=3600)
    subscribe(kept, "n/#", 1, no_local=True)
    kept.send_bytes(b"\xe0\x00")
    sync_routes(a, b)
    same = join(a.hub, "c")
    same.send(Publish("n/1", b"mine", 1, packet_id=1))
    other = join(a.hub, "other")
    other.send(Publish("n/1", b"theirs", 1, packet_id=1))
    assert carry(a, b) == 2
    session = b.broker.sessions["c"]
    assert [d.message.payload for d in session.queue] == [b"theirs"]


def test_message_expiry_counts_the_time_spent_on_the_way() -> None:
    """A record carries the time the message has left, so the node that sends it on
    subtracts the time it waited on every node [MQTT-3.3.2-6]; an expired one is not sent."""
    message = Message("e", b"p", 1, False, Properties(message_expiry_interval=10), 110.0, "o")
    record = encode_record(message, False, "", 104.0)
    assert record is not None
    got, share = decode_record(record, 500.0)
    assert (got.topic, got.payload, got.qos, got.origin, share) == ("e", b"p", 1, "o", "")
    assert got.expires_at == 506.0
    assert encode_record(message, False, "", 110.0) is None
    batch = pack([record, encode_record(message, True, "$share/g/e", 100.0) or b""])
    assert [decode_record(r, 0.0)[1] for r in unpack(batch)] == ["", "$share/g/e"]
    a, b = pair()
    subscriber = join(b.hub, "s")
    subscribe(subscriber, "e", 1)
    sync_routes(a, b)
    publisher = join(a.hub, "p")
    publisher.send(Publish("e", b"x", 1, packet_id=1,
                           properties=Properties(message_expiry_interval=10)))
    b.hub.clock.advance(0)
    a.hub.clock.advance(0)
    records = a.router._qos12["b"]
    assert decode_record(records[0], 0.0)[0].expires_at == 10.0
    carry(a, b)
    (got_packet,) = publishes(subscriber)
    assert got_packet.properties.message_expiry_interval == 10


def test_shared_subscription_gets_each_message_once_across_nodes() -> None:
    """Members of one shared group on two nodes: each message goes to exactly one member,
    the nodes taking turns, and the receiving node picks one of its own members
    [MQTT-4.8.2-2]."""
    a, b = pair()
    here = join(a.hub, "here")
    subscribe(here, "$share/g/job", 1)
    there = [join(b.hub, f"there{i}") for i in range(2)]
    for client in there:
        subscribe(client, "$share/g/job", 1)
    sync_routes(a, b)
    publisher = join(a.hub, "p")
    for index in range(6):
        publisher.send(Publish("job", b"%d" % index, 1, packet_id=index + 1))
    carry(a, b)
    got_here = payloads(here)
    got_there = [payloads(client) for client in there]
    every = sorted(got_here + got_there[0] + got_there[1])
    assert every == [b"%d" % i for i in range(6)]
    assert len(got_here) == 3
    assert [len(got) for got in got_there] == [2, 1] or [len(g) for g in got_there] == [1, 2]


def test_messages_from_another_node_are_not_sent_back() -> None:
    """A message b receives from a goes to b's sessions only, never to the nodes b mirrors
    (a's own subscriber got it on a), and is not retained by b's routing."""
    a, b = pair()
    on_a = join(a.hub, "on-a")
    subscribe(on_a, "loop/#", 0)
    on_b = join(b.hub, "on-b")
    subscribe(on_b, "loop/#", 0)
    sync_routes(a, b)
    publisher = join(a.hub, "p")
    publisher.send(Publish("loop/1", b"once", 0, retain=True))
    assert carry(a, b) == 1
    assert carry(b, a) == 0
    assert payloads(on_a) == [b"once"]
    assert payloads(on_b) == [b"once"]
    assert "loop/1" not in b.broker.retained


def test_acknowledgement_waits_until_the_hand_off_is_written() -> None:
    """A QoS 1 message routed to another node is acknowledged to its publisher only once
    the batch holding it is written (the turn's script answered); one script carries the
    turn's messages for every node."""
    a, b = pair()
    subscriber = join(b.hub, "s")
    subscribe(subscriber, "q", 1)
    sync_routes(a, b)
    publisher = join(a.hub, "p")
    publisher.send(Publish("q", b"1", 1, packet_id=1), Publish("q", b"2", 1, packet_id=2))
    assert publisher.received() == []
    a.engine_up()
    a.hub.clock.advance(0)
    assert publisher.received() == [PubAck(1), PubAck(2)]
    ((_source, args),) = a.scripts
    assert args[:2] == ["a", 1]
    assert args[5:7] == [a.router.channel("b"), a.router.stream("b")] and args[8] == "b"
    assert [decode_record(r, 0)[0].payload for r in unpack(args[7])] == [b"1", b"2"]


def test_subscription_to_remote_filters_survives_route_reload() -> None:
    """A full announcement of a node's routes replaces what this node mirrored of it; a
    filter with a line break is one filter."""
    a, b = pair()
    b.router._routes_changed(announce("a", "0", "+x", "+y", "+new\nline"))
    assert b.router.remote_filters("a") == {"x", "y", "new\nline"}
    b.router._routes_changed(announce("a", "1", "+y", "+z", version=2))
    assert b.router.remote_filters("a") == {"y", "z"}
    del b.members.members["a"]
    b.engine.command = lambda *_, **__: succeed([None, None])  # type: ignore[method-assign]
    b.router._member("down", "a")  # a clean leave: a has no heir
    assert b.router.remote_filters("a") == set()
    assert not [cid for cid in b.broker.sessions if cid.startswith("\x00")]


def test_routes_of_a_removed_node_are_kept_until_its_heir_adopted_its_sessions() -> None:
    """The routes of a node removed by another (its heir) stay until the heir announces that
    it adopted the removed node's sessions, or a node forgets the heir: what is routed to the
    removed node meanwhile reaches its heir, for those sessions [MQTT-4.3.3-2]."""
    a, b = pair()
    b.router._routes_changed(announce("a", "0", "+x"))
    del b.members.members["a"]
    b.engine.command = heir_c  # type: ignore[method-assign]
    b.router._member("down", "a")
    assert b.router.remote_filters("a") == {"x"}
    b.router._routes_changed(json.dumps(["a", "adopted", [], 0, 0]).encode("utf-8"))
    assert b.router.remote_filters("a") == set()
    b.members.members["a"] = 2
    b.router._routes_changed(announce("a", "1", "+x", version=1))
    assert b.router.remote_filters("a") == {"x"}
    del b.members.members["a"]
    b.router._member("down", "a")
    b.hub.clock.advance(b.members.lease * HEIR_LEASES - 1)
    assert b.router.remote_filters("a") == {"x"}
    b.hub.clock.advance(1)  # the heir is forgotten
    assert b.router.remote_filters("a") == set()


def test_sys_topics_stay_on_their_node() -> None:
    """Each node publishes its own $SYS figures: a subscriber to ``$SYS/#`` on another node
    gets that node's, never these."""
    a, b = pair()
    watcher = join(b.hub, "w")
    subscribe(watcher, "$SYS/#", 0)
    sync_routes(a, b)
    a.broker.inline.publish("$SYS/broker/uptime", b"1")
    assert carry(a, b) == 0


def test_a_missed_announcement_makes_the_node_read_the_routes_again() -> None:
    """Announcements carry their version: an old one is ignored, one after a gap (an
    announcement lost while the channel was down) is not applied but makes the node read the
    whole list, which replaces the mirror unless a newer announcement came meanwhile."""
    a, b = pair()
    b.engine_up()
    b.router._routes_changed(announce("a", "0", "+x", version=1))
    b.router._routes_changed(announce("a", "0", "-x", version=1))  # a repeat: ignored
    assert b.router.remote_filters("a") == {"x"}
    b.router._routes_changed(announce("a", "0", "+z", version=3))  # version 2 was lost
    assert b.router.remote_filters("a") == {"x"}
    assert [args for _source, args in b.scripts] == [["a"]]  # the routes read again
    b.router._loaded([b"1", [b"\0v", b"x", b"y", b"z"], b"3"], "a")
    assert b.router.remote_filters("a") == {"x", "y", "z"}
    b.router._routes_changed(announce("a", "0", "-y", version=4))
    b.router._loaded([b"1", [b"x", b"y", b"z"], b"3"], "a")  # a late reply: older
    assert b.router.remote_filters("a") == {"x", "z"}


def test_a_bad_filter_from_another_node_is_ignored() -> None:
    """A filter no client could have subscribed to, read from the engine, is logged and left
    out rather than breaking the routing table."""
    a, b = pair()
    b.router._routes_changed(announce("a", "0", "+x/#/y", "+", "+ok/#"))
    assert b.router.remote_filters("a") == {"ok/#"}


def test_cluster_ids_cannot_be_taken_by_network_clients() -> None:
    """The sessions standing for other nodes have ids no client may use (U+0000)."""
    a, b = pair()
    b.router._routes_changed(announce("a", "0", "+x", "+$share/g/x"))
    assert sorted(cid for cid in b.broker.sessions) == ["\x00a", "\x00a\x00$share/g/x"]
    assert b.broker.tree.group("$share/g/x") is not None
    assert Subscription("x").topic_filter == "x"


def test_node_paused_past_its_lease_delivers_nothing_it_reads_next() -> None:
    """A node whose process was paused past its lease (its timers not yet run) learns it
    from the first message it reads: it delivers nothing and stops serving."""
    a, b = pair()
    subscriber = join(b.hub, "s")
    subscribe(subscriber, "z", 0)
    sync_routes(a, b)
    join(a.hub, "p").send(Publish("z", b"late", 0))
    batch = pack(a.router._qos0.pop("b"))
    b.members._proven_until = b.hub.clock.seconds() + LEASE
    b.hub.clock.rightNow += LEASE * 5  # SIGSTOP, then SIGCONT: no timer has run yet
    b.router._inbox(batch)
    assert not b.members.node.serving
    assert subscriber.received() == [] or subscriber.closed


def test_every_kind_of_target_is_a_delivery_target() -> None:
    """A network client's connection, an inline subscription's receiver and another node
    all provide ``DeliveryTarget`` (checked by mypy here, and member by member at run time);
    only the node is remote."""
    a, b = pair()
    client = join(a.hub, "net")
    a.broker.inline.subscribe("i", lambda message: None)
    b.router._routes_changed(announce("a", "0", "+x"))
    found = [a.broker.sessions["net"].connection,
             next(s.connection for s in a.broker.sessions.values()
                  if isinstance(s.connection, ApplicationTarget)),
             b.broker.sessions["\x00a"].connection]
    kinds: List[DeliveryTarget] = [target for target in found if target is not None]
    assert len(kinds) == 3
    members = [name for name in vars(DeliveryTarget) if not name.startswith("_")]
    assert {"send_qos0", "send_delivery", "blocked", "v5", "remote"} <= set(members)
    for target in kinds:
        assert all(hasattr(target, name) for name in members), target
    assert [is_remote(target) for target in kinds] == [False, False, True]
    assert client.connection is kinds[0]


def test_a_wake_up_during_a_read_of_the_stream_reads_it_again() -> None:
    """A wake-up (a batch just added to this node's stream) that arrives while a read of the
    stream is under way is not lost: that read may have been answered before the batch was
    added, so the stream is read again once it is answered, not at the next poll a lease
    later (a loaded node's last QoS 1 messages waited seconds)."""
    a = Node("a")
    reads: List[Deferred[Any]] = []

    def command(*args: Any, control: bool = False) -> Deferred[Any]:
        assert args[0] == "XREADGROUP"
        reads.append(Deferred())
        return reads[-1]

    a.engine.command = command  # type: ignore[method-assign]
    a.router._inbox(b"")
    a.router._inbox(b"")  # a second batch added while the first read is under way
    assert len(reads) == 1
    reads[0].callback([])  # that read was answered before the second batch was added
    assert len(reads) == 2
    reads[1].callback([])
    assert len(reads) == 2

def test_a_slow_subscriber_holds_the_stream_instead_of_losing_messages() -> None:
    """Stream entries beyond what a slow local subscriber's queue holds are not read into it
    (and dropped as "queue full"): its node stops routing them while its queue is above half
    ``maximum_queued_messages``, leaves them unacknowledged in Redis, and goes on once the
    queue is down to a quarter; every message arrives, in order."""
    b = Node("b", maximum_queued_messages=10)
    subscriber = join(b.hub, "s", properties=Properties(receive_maximum=2))
    subscribe(subscriber, "z", 1)
    now = b.broker.tick()
    records = [encode_record(Message("z", b"%d" % n, 1, False), False, "", now)
               for n in range(30)]
    entries = [(f"{n}-0".encode(), [b"b", pack([record])])
               for n, record in enumerate(records) if record is not None]
    stream: List[Any] = list(entries)
    acked: List[Any] = []

    def command(*args: Any, control: bool = False) -> Deferred[Any]:
        if args[0] == "XREADGROUP":
            count = args[args.index("COUNT") + 1]
            read, stream[:count] = stream[:count], []
            return succeed([[args[-2], read]] if read else [])
        if args[0] == "XACK":
            acked.extend(args[3:])
        return succeed(1)

    b.engine.command = command  # type: ignore[method-assign]
    b.router._inbox(b"")
    got: List[bytes] = []
    for _ in range(100):
        for packet in publishes(subscriber):
            got.append(packet.payload)
            assert packet.packet_id is not None
            subscriber.send(PubAck(packet.packet_id))
        b.hub.clock.advance(0)
        if len(got) == 30:
            break
    assert got == [b"%d" % n for n in range(30)]
    assert b.broker.stats.dropped == 0
    assert acked == [entry_id for entry_id, _ in entries]


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])
