"""Runs of plain QoS 1 PUBLISH packets to one topic: decoded as one ``AckedRun`` and routed
together, with exactly the outcome of handling each packet on its own."""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Tuple

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from zope.interface import implementer

from tests.spec import check_cited_labels
from tests.test_runs import _expand, _stream
from tests.test_storage_recorder import HeldStore
from twisted_mqtt.capabilities import Capabilities
from twisted_mqtt.codec import AckedRun, Decoder, encode
from twisted_mqtt.interfaces import ClientInfo, IAuthorizer
from twisted_mqtt.packets import (
    PingReq,
    PingResp,
    PubAck,
    PubAckRun,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
)
from twisted_mqtt.properties import Properties
from twisted_mqtt.storage.memory import MemoryStore
from twisted_mqtt.storage.recorder import Recorder
from twisted_mqtt.testing import InMemoryBroker, InMemoryClient


def test_acked_run_decoded_once() -> None:
    """Consecutive plain QoS 1 PUBLISH packets to one topic come out as one run holding their
    packet identifiers, and each packet split around its identifier [MQTT-3.3.2-1,
    MQTT-2.2.1-3]."""
    for level in (4, 5):
        packets = [Publish("a/b", b"m%d" % i * i, 1, packet_id=i + 1) for i in range(5)]
        data = _stream(level, *packets)
        (run,) = Decoder(level, raw_publish=True).feed(data)
        assert isinstance(run, AckedRun)
        assert (run.topic, run.count, run.v5, run.ids) == ("a/b", 5, level == 5, [1, 2, 3, 4, 5])
        assert run.largest == max(len(encode(p, level)) for p in packets)
        assert [h + i.to_bytes(2, "big") + t for h, i, t in zip(run.heads, run.ids, run.tails)
                ] == [encode(p, level) for p in packets]
        assert [Publish(*f[:7]) for f in run.publishes()] == packets


def test_acked_run_broken_by_anything_else() -> None:
    """A run stops at another topic, DUP, RETAIN, another QoS, properties or another packet;
    each of those is decoded and checked on its own, and a packet identifier 0 is still a
    protocol error [MQTT-2.2.1-3]."""
    level = 5
    plain = Publish("t", b"x", 1, packet_id=7)
    breakers = [
        Publish("u", b"x", 1, packet_id=8),
        Publish("t", b"x", 1, dup=True, packet_id=8),
        Publish("t", b"x", 1, retain=True, packet_id=8),
        Publish("t", b"x", 2, packet_id=8),
        Publish("t", b"x"),
        Publish("t", b"x", 1, packet_id=8, properties=Properties(content_type="c")),
        PingReq(),
    ]
    for breaker in breakers:
        items = Decoder(level, raw_publish=True).feed(
            _stream(level, plain, plain, breaker, plain, plain))
        kinds = [type(i) for i in items]
        assert kinds[0] is AckedRun and kinds[-1] is AckedRun and len(kinds) == 3, kinds
        assert _expand(items)[2] == (breaker if not isinstance(breaker, Publish) else
                                     Decoder(level, raw_publish=True).feed(
                                         encode(breaker, level))[0])
    bad = bytearray(_stream(4, plain, plain))
    bad[-3:-1] = b"\x00\x00"  # the second packet's identifier
    try:
        Decoder(4, raw_publish=True).feed(bytes(bad))
    except Exception as error:
        assert "packet identifier 0" in str(error)
    else:
        raise AssertionError("packet identifier 0 accepted")


# -- the same outcome as one packet at a time --------------------------------------------------

SUBSCRIBER = st.fixed_dictionaries({
    "level": st.sampled_from([3, 4, 5]),
    "qos": st.integers(0, 2),
    "filter": st.sampled_from(["t", "t/#", "#", "u"]),
    "receive_maximum": st.sampled_from([None, 1, 3]),
    "online": st.booleans(),
    "max_packet": st.sampled_from([None, 40, 1000]),
    "sub_id": st.sampled_from([None, 5]),
})


def _world(subscribers: List[Dict[str, Any]], publisher_level: int, no_local: bool,
           durable: bool = False) -> Tuple[InMemoryBroker, List[InMemoryClient], InMemoryClient]:
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), start=False)
    if durable:  # a durable store: PUBACKs held by its commit, deliveries recorded by hooks
        Recorder(hub.broker, MemoryStore(), durable=True).open()
    hub.broker.start()
    clients = []
    for index, spec in enumerate(subscribers):
        level = spec["level"]
        client = hub.client(protocol_level=level)
        props: Dict[str, Any] = {}
        if level == 5:
            props = {"session_expiry_interval": 3600}
            if spec["receive_maximum"]:
                props["receive_maximum"] = spec["receive_maximum"]
            if spec["max_packet"]:
                props["maximum_packet_size"] = spec["max_packet"]
        assert client.connect(f"s{index}", clean_start=level == 5,
                              properties=Properties(**props)).reason_code == 0
        sub_props = Properties(subscription_identifiers=(spec["sub_id"],)) if (
            level == 5 and spec["sub_id"]) else Properties()
        client.send(Subscribe(1, (Subscription(spec["filter"], spec["qos"]),), sub_props))
        assert isinstance(client.received()[0], SubAck)
        if not spec["online"]:
            client.drop()
            hub.advance(0)
        clients.append(client)
    publisher = hub.client(protocol_level=publisher_level)
    assert publisher.connect("s0" if no_local and subscribers else "pub").reason_code == 0
    return hub, clients, publisher


def _outcome(hub: InMemoryBroker, clients: List[InMemoryClient],
             publisher: InMemoryClient) -> List[Any]:
    hub.clock.advance(0)
    seen = [publisher.received()] + [c.received() for c in clients]
    stats = hub.broker.stats
    recorded = [sorted(((d.client_id, d.packet_id, d.message.payload)
                        for d in hook.store.deliveries.values()), key=repr)
                for hook in hub.broker.hooks if isinstance(hook, Recorder)]
    return seen + [(stats.messages_received, stats.messages_sent, stats.dropped,
                    {cid: (sorted(s.inflight), len(s.queue))
                     for cid, s in hub.broker.sessions.items()}, recorded)]


@settings(max_examples=150, deadline=None)
@given(subscribers=st.lists(SUBSCRIBER, max_size=4), level=st.sampled_from([4, 5]),
       topics=st.lists(st.sampled_from(["t", "t", "t", "u", "t/x"]), min_size=1, max_size=8),
       no_local=st.booleans(), durable=st.booleans())
@example(subscribers=[{"level": 5, "qos": 1, "filter": "#", "receive_maximum": None,
                       "online": True, "max_packet": None, "sub_id": None}],
         level=5, topics=["t", "t", "u", "t", "t"], no_local=False, durable=True)
def test_run_outcome_equals_packet_by_packet(subscribers: List[Dict[str, Any]], level: int,
                                             topics: List[str], no_local: bool,
                                             durable: bool) -> None:
    """Whoever subscribes (protocol, QoS, receive maximum, offline, packet size limit,
    subscription identifier, the publisher itself), with or without a durable store (whose
    commit holds the PUBACKs and whose hooks record the deliveries), routing a run gives every
    client the same packets, the publisher the same acknowledgements, and the counters,
    in-flight windows, queues and stored deliveries the same values as sending the packets one
    per read
    [MQTT-4.6.0-6, MQTT-4.9.0-2, MQTT-3.3.4-1]."""
    packets = [Publish(t, b"m%d" % i * (i + 6), 1, packet_id=i + 1) for i, t in enumerate(topics)]
    together = _world(subscribers, level, no_local, durable)
    together[2].send(*packets)
    apart = _world(subscribers, level, no_local, durable)
    for packet in packets:
        apart[2].send(packet)
    assert _outcome(*together) == _outcome(*apart)


# -- access control -----------------------------------------------------------------------------


@implementer(IAuthorizer)
class _Answers:
    """An authorizer answering ``may_publish`` with a given value (a bool or a Deferred)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: List[str] = []

    def may_publish(self, client: ClientInfo, topic: str) -> Any:
        self.asked.append(topic)
        return self.answer

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> bool:
        return True

    def may_receive(self, client: ClientInfo, topic: str) -> bool:
        return True


def test_refused_run_answers_each_packet() -> None:
    """A run the ACL refuses gets a PUBACK 0x87 for each of its packets, in order, and nothing
    is routed [MQTT-3.4.2-1]."""
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authorizer=_Answers(False))
    publisher = hub.client(protocol_level=5)
    publisher.connect("pub")
    publisher.send(*[Publish("t", b"x", 1, packet_id=i) for i in (1, 2, 3)])
    assert publisher.received() == [PubAck(i, 0x87) for i in (1, 2, 3)]
    assert hub.broker.stats.messages_received == 0


def test_run_waits_for_a_deferred_decision() -> None:
    """While the ACL's answer for a run is pending, later packets wait: the PUBACKs come before
    the PINGRESP sent after the run [MQTT-4.6.0-2]."""
    pending: Deferred[bool] = Deferred()
    authorizer = _Answers(pending)
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authorizer=authorizer)
    subscriber = hub.client(protocol_level=4)
    subscriber.connect("sub")
    subscriber.send(Subscribe(1, (Subscription("t", 1),)))
    subscriber.received()
    publisher = hub.client(protocol_level=4)
    publisher.connect("pub")
    publisher.send(*[Publish("t", b"%d" % i, 1, packet_id=i) for i in (1, 2, 3)], PingReq())
    assert publisher.received() == []
    authorizer.answer = True
    pending.callback(True)
    assert publisher.received() == [PubAck(1), PubAck(2), PubAck(3), PingResp()]
    assert [p.payload for p in subscriber.received()] == [b"1", b"2", b"3"]


def test_v5_run_without_subscribers() -> None:
    """Each packet of a v5 run nobody subscribed to is acknowledged with 0x10 No matching
    subscribers [MQTT-3.4.2-1]."""
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0))
    publisher = hub.client(protocol_level=5)
    publisher.connect("pub")
    publisher.send(*[Publish("t", b"x", 1, packet_id=i) for i in (1, 2)])
    assert publisher.received() == [PubAck(1, 0x10), PubAck(2, 0x10)]


def _acknowledged(acks: List[int], together: bool, level: int) -> Tuple[Any, ...]:
    """A subscriber (Receive Maximum 3) sent QoS 1 messages 1..6 on ``t``, QoS 2 message 7
    on ``u``, and one QoS 1 message kept queued, then ``acks`` as plain PUBACKs, in one read
    or one per read: what it got after them, its session's ids in flight, whether it is
    still connected."""
    hub = InMemoryBroker(Capabilities())
    props = (Properties(receive_maximum=3, session_expiry_interval=60) if level == 5
             else Properties())
    subscriber = hub.client(protocol_level=level)
    subscriber.connect("s", clean_start=False, properties=props)
    subscriber.send(Subscribe(1, (Subscription("t", 1), Subscription("u", 2))))
    publisher = hub.client(protocol_level=level)
    publisher.connect("p")
    publisher.send(Publish("u", b"q2", 2, packet_id=1),
                   *(Publish("t", b"%d" % n, 1, packet_id=n + 1) for n in range(1, 7)))
    subscriber.received()
    data = [encode(PubAck(packet_id), level) for packet_id in acks]
    for chunk in ([b"".join(data)] if together else data):
        subscriber.send_bytes(chunk)
    hub.broker.flush()
    session = hub.broker.sessions["s"]
    return (subscriber.received(), sorted(session.inflight), session.connection is not None)


@given(acks=st.lists(st.integers(1, 9), max_size=8), level=st.sampled_from([4, 5]))
@settings(max_examples=60, deadline=None)
def test_puback_run_outcome_equals_packet_by_packet(acks: List[int], level: int) -> None:
    """Plain PUBACKs in one read (a ``PubAckRun``) end the same deliveries, send the same
    queued messages under the same packet ids, and answer a PUBACK for a QoS 2 message with
    the same Protocol Error [MQTT-4.13.1-1] as the same PUBACKs read one at a time
    [MQTT-4.3.2-5]."""
    assert _acknowledged(acks, True, level) == _acknowledged(acks, False, level)


def test_puback_run_decoded_once() -> None:
    """Three plain PUBACKs in one read come out of the decoder as one run of their ids."""
    data = b"".join(encode(PubAck(i), 4) for i in (5, 6, 7))
    assert Decoder(4, raw_publish=True).feed(data) == [PubAckRun([5, 6, 7])]


def test_run_acknowledged_once_its_commit_is_done() -> None:
    """With a durable store, a run of QoS 1 messages to a persistent subscriber is sent on at
    once and its PUBACKs wait, together, for the commit that records the deliveries
    [MQTT-4.3.2-4]; they count against Receive Maximum meanwhile, so a next run that would
    pass it is handled one message at a time, and the client is disconnected with 0x93 at the
    message that passes it [MQTT-3.3.4-7]."""
    store = HeldStore()
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0, receive_maximum=8),
                         start=False)
    Recorder(hub.broker, store, durable=True).open()
    hub.broker.start()
    subscriber = hub.client(protocol_level=5)
    subscriber.connect("s", clean_start=False, properties=Properties(session_expiry_interval=60))
    subscriber.send(Subscribe(1, (Subscription("t", 1),)))
    hub.clock.advance(0)
    store.release()
    subscriber.received()
    publisher = hub.client(protocol_level=5)
    publisher.connect("p")
    publisher.send(*(Publish("t", b"%d" % n, 1, packet_id=n) for n in range(1, 6)))
    assert [p.payload for p in subscriber.received()] == [b"%d" % n for n in range(1, 6)]
    hub.clock.advance(0)
    assert publisher.received() == [] and len(store.held) == 1
    store.release()
    assert publisher.received() == [PubAck(n) for n in range(1, 6)]
    publisher.send(*(Publish("t", b"%d" % n, 1, packet_id=n) for n in range(6, 11)))
    hub.clock.advance(0)
    publisher.send(*(Publish("t", b"%d" % n, 1, packet_id=n) for n in range(11, 16)))
    got = publisher.received()
    assert [(type(p).__name__, getattr(p, "reason_code", None)) for p in got] == [
        ("Disconnect", 0x93)]
    store.release()
    assert publisher.received() == []


def test_cited_labels() -> None:
    """Every label cited here is a real normative statement."""
    check_cited_labels(sys.modules[__name__])
