"""Runs of plain QoS 0 PUBLISH packets to one topic: decoded as one ``PublishRun`` and forwarded
as one slice when every subscriber receives them unchanged, with the same outcome as handling
each packet on its own."""

from __future__ import annotations

import sys
from typing import Any, List

from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface import implementer

from tests.spec import check_cited_labels
from twisted_mqtt.capabilities import Capabilities, Compatibilities
from twisted_mqtt.codec import Decoder, PublishRun, Run, encode
from twisted_mqtt.errors import CodecError
from twisted_mqtt.interfaces import ClientInfo, IAuthorizer
from twisted_mqtt.packets import (
    PingReq,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
)
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.session import Message
from twisted_mqtt.testing import InMemoryBroker, InMemoryClient


def _stream(level: int, *packets: Any) -> bytes:
    return b"".join(encode(p, level) for p in packets)


def _expand(items: List[Any]) -> List[Any]:
    out: List[Any] = []
    for item in items:
        out += item.publishes() if isinstance(item, Run) else [item]
    return out


# -- decoding -----------------------------------------------------------------------------------


def test_run_decoded_once() -> None:
    """Consecutive plain QoS 0 PUBLISH packets to one topic come out as one run whose bytes are
    the packets' own and whose packets are those of a plain decoding [MQTT-3.3.1-4]."""
    for level in (4, 5):
        packets = [Publish("a/b", b"%d" % i) for i in range(5)]
        data = _stream(level, *packets)
        (run,) = Decoder(level, raw_publish=True).feed(data)
        assert isinstance(run, PublishRun)
        assert (run.topic, run.count, run.v5, run.data()) == ("a/b", 5, level == 5, data)
        assert run.largest == max(len(encode(p, level)) for p in packets)
        assert [Publish(*f[:7]) for f in run.publishes()] == packets
        assert Decoder(level).feed(data) == packets


@given(sizes=st.lists(st.integers(0, 140), min_size=2, max_size=12),
       limit=st.integers(10, 300))
@settings(max_examples=150, deadline=None)
def test_run_bounded_by_the_maximum_packet_size(sizes: List[int], limit: int) -> None:
    """A run's packets are held to the Maximum Packet Size each: the first one past it is
    refused (what came before it decoded) [MQTT-3.2.2-15], and a run's ``largest`` is the size
    of its largest packet."""
    packets = [Publish("a/b", bytes(size)) for size in sizes]
    data = _stream(4, *packets)
    sized = [len(encode(p, 4)) for p in packets]
    decoder = Decoder(4, max_packet_size=limit, raw_publish=True)
    try:
        items = decoder.feed(data)
    except CodecError as error:
        assert "exceeds" in str(error)
        items = error.decoded
        assert any(size > limit for size in sized)
    got = [Publish(*f[:7]) for f in _expand(items)]
    first_too_large = next((i for i, size in enumerate(sized) if size > limit), len(sized))
    assert got == packets[:first_too_large]
    for item in items:
        if isinstance(item, PublishRun):
            assert item.largest == max(len(encode(Publish(*f[:7]), 4))
                                       for f in item.publishes())


def test_run_broken_by_anything_else() -> None:
    """A run stops at another topic, a flag (RETAIN, QoS), properties or another packet; each
    of those is decoded and checked on its own [MQTT-3.3.2-2]."""
    level = 5
    plain = Publish("t", b"x")
    breakers = [
        Publish("u", b"x"),
        Publish("t", b"x", retain=True),
        Publish("t", b"x", 1, packet_id=1),
        Publish("t", b"x", properties=Properties(content_type="c")),
        PingReq(),
    ]
    for breaker in breakers:
        items = Decoder(level, raw_publish=True).feed(
            _stream(level, plain, plain, breaker, plain, plain))
        assert [type(i) for i in items] == [PublishRun, type(breaker) if not isinstance(
            breaker, Publish) else tuple, PublishRun]
        assert _expand(items)[2] == (breaker if not isinstance(breaker, Publish) else
                                     Decoder(level, raw_publish=True).feed(
                                         encode(breaker, level))[0])


@settings(max_examples=150, deadline=None)
@given(topics=st.lists(st.sampled_from(["a", "a/b", "b"]), min_size=1, max_size=12),
       level=st.sampled_from([3, 4, 5]), cut=st.integers(min_value=1, max_value=40))
def test_runs_equal_plain_decoding(topics: List[str], level: int, cut: int) -> None:
    """Whatever the topics and however the bytes are cut, taking runs apart gives exactly the
    packets a plain decoder gives [MQTT-3.3.1-4]."""
    packets = [Publish(t, b"p%d" % i) for i, t in enumerate(topics)]
    data = _stream(level, *packets)
    decoder = Decoder(level, raw_publish=True)
    got: List[Any] = []
    for start in range(0, len(data), cut):
        got += _expand(decoder.feed(data[start:start + cut]))
    assert [Publish(*f[:7]) for f in got] == packets


def _decoded(decoder: Decoder, data: bytes, cut: int) -> Any:
    """The packets ``decoder`` gives for ``data`` read ``cut`` bytes at a time, runs taken
    apart, and the error it raised, if any."""
    got: List[Any] = []
    try:
        for start in range(0, len(data), cut):
            got += _expand(decoder.feed(data[start:start + cut]))
    except CodecError as error:
        return got, type(error)
    return got, None


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.sampled_from([0, 1, 100, 118, 119, 120, 121, 200]), min_size=1,
                      max_size=12),
       level=st.sampled_from([4, 5]), cut=st.integers(min_value=1, max_value=300),
       limit=st.sampled_from([120, 126, 127, 128, 129, 1000]))
def test_runs_of_any_length_under_a_size_limit(sizes: List[int], level: int, cut: int,
                                               limit: int) -> None:
    """Packets with one- and two-byte remaining lengths, some larger than the maximum packet
    size, cut anywhere: runs give the packets and the error a plain decoder gives (a packet
    over the limit is refused [MQTT-3.2.2-15])."""
    packets = [Publish("a/b", bytes(size)) for size in sizes]
    data = _stream(level, *packets)
    got, error = _decoded(Decoder(level, limit, raw_publish=True), data, cut)
    expected, expected_error = _decoded(Decoder(level, limit), data, cut)
    assert ([Publish(*f[:7]) for f in got], error) == (expected, expected_error)


# -- forwarding ---------------------------------------------------------------------------------


def _hub(**caps: Any) -> InMemoryBroker:
    return InMemoryBroker(capabilities=Capabilities(sys_interval=0, **caps))


def _subscriber(hub: InMemoryBroker, name: str, level: int, topic_filter: str = "t",
                props: Properties = NO_PROPERTIES, **connect: Any) -> InMemoryClient:
    client = hub.client(protocol_level=level)
    assert client.connect(name, **connect).reason_code == 0
    client.send(Subscribe(1, (Subscription(topic_filter, 0),), props))
    assert isinstance(client.received()[0], SubAck)
    return client


def _publisher(hub: InMemoryBroker, level: int) -> InMemoryClient:
    client = hub.client(protocol_level=level)
    client.connect("pub")
    return client


def test_run_forwarded_as_one_write() -> None:
    """Subscribers that get the packets unchanged receive the run's bytes in one write, and the
    counters count every message [MQTT-3.3.1-3 (3.1.1), MQTT-3.3.1-9 (3.1.1)]."""
    hub = _hub()
    subs = [_subscriber(hub, f"s{i}", 4) for i in range(3)]
    pub = _publisher(hub, 4)
    data = _stream(4, *[Publish("t", b"%d" % i) for i in range(10)])
    before = hub.broker.stats.messages_sent
    writes: List[bytes] = []
    original = subs[0].transport.write
    subs[0].transport.write = lambda d: (writes.append(d), original(d))[1]  # type: ignore
    pub.send_bytes(data)
    assert writes == [data]
    for client in subs:
        assert client.transport.value() == data
    assert hub.broker.stats.messages_sent == before + 30


def test_run_taken_apart_when_a_subscriber_needs_changes() -> None:
    """A subscriber with a subscription identifier [MQTT-3.3.4-3], a v5 subscriber of v3
    packets, or a packet size limit below a packet of the run gets each message as it must:
    the run is handled packet by packet for everyone, in order [MQTT-3.1.2-24]."""
    hub = _hub()
    with_id = _subscriber(hub, "id", 5, props=Properties(subscription_identifiers=(4,)))
    v3 = _subscriber(hub, "v3", 4)
    small = _subscriber(hub, "small", 5, properties=Properties(maximum_packet_size=30))
    pub = _publisher(hub, 4)
    packets = [Publish("t", b"x" * n) for n in (1, 40, 2)]
    pub.send_bytes(_stream(4, *packets))
    assert with_id.received() == [Publish("t", p.payload, properties=Properties(
        subscription_identifiers=(4,))) for p in packets]
    assert v3.received() == packets
    assert small.received() == [packets[0], packets[2]]  # the 40-byte one does not fit


def test_run_with_shared_subscription_round_robin() -> None:
    """A shared subscription among the matches takes the run apart, so that its messages are
    shared out one by one [MQTT-4.8.2-3]."""
    hub = _hub()
    members = [_subscriber(hub, f"m{i}", 5, "$share/g/t") for i in range(2)]
    pub = _publisher(hub, 5)
    pub.send_bytes(_stream(5, *[Publish("t", b"%d" % i) for i in range(4)]))
    got = [len(m.received()) for m in members]
    assert got == [2, 2]


def test_run_no_local() -> None:
    """The publisher's own No Local subscription gets none of its run [MQTT-3.8.3-3]."""
    hub = _hub()
    pub = hub.client(protocol_level=5)
    pub.connect("pub")
    pub.send(Subscribe(1, (Subscription("t", 0, no_local=True),)))
    pub.received()
    other = _subscriber(hub, "other", 5)
    pub.send_bytes(_stream(5, *[Publish("t", b"%d" % i) for i in range(3)]))
    assert pub.received() == []
    assert len(other.received()) == 3


def test_run_to_offline_and_blocked_subscribers() -> None:
    """Offline persistent sessions do not queue QoS 0 messages of a run unless configured to,
    as for single messages [MQTT-3.1.2-5] (they are dropped and counted); a blocked subscriber
    holds the publisher back and gets them; once past its grace, its are dropped too."""
    hub = _hub(maximum_pending_bytes=1000, slow_consumer_grace=5.0)
    away = _subscriber(hub, "away", 5, clean_start=False,
                       properties=Properties(session_expiry_interval=60))
    away.drop()
    hub.clock.advance(0)
    blocked = _subscriber(hub, "blocked", 5)
    blocked.connection.pause()
    hub.broker.publish(Message("t", b"x" * 1200, 0, False))  # dropped for "away"
    hub.broker.flush()
    assert blocked.connection.blocked
    pub = _publisher(hub, 5)
    run = _stream(5, *[Publish("t", b"%d" % i) for i in range(3)])
    pub.send_bytes(run)
    assert hub.broker.stats.dropped == 1 + 3
    assert len(hub.broker.sessions["away"].queue) == 0
    assert blocked.received() == [] and pub.transport.producerState == "paused"
    hub.advance(6)
    assert pub.transport.producerState == "producing"
    pub.send_bytes(run)
    assert hub.broker.stats.dropped == 1 + 9
    blocked.connection.resume()  # the transport drains: the three held back, not the others
    assert len(blocked.received()) == 1 + 3

    queueing = InMemoryBroker(capabilities=Capabilities(sys_interval=0),
                              compatibilities=Compatibilities(queue_qos0_offline=True))
    away = _subscriber(queueing, "away", 5, clean_start=False,
                       properties=Properties(session_expiry_interval=60))
    away.drop()
    queueing.clock.advance(0)
    pub = _publisher(queueing, 5)
    pub.send_bytes(_stream(5, *[Publish("t", b"%d" % i) for i in range(3)]))
    assert len(queueing.broker.sessions["away"].queue) == 3


@implementer(IAuthorizer)
class _NoPublish:
    def may_publish(self, client: ClientInfo, topic: str) -> bool:
        return False

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> bool:
        return True


def test_run_refused_by_authorizer_and_sys() -> None:
    """A run to a topic the client may not publish to, or to `$SYS`, is refused message by
    message, as single messages are [MQTT-3.3.5-2 (3.1.1)]."""
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authorizer=_NoPublish())
    sub = _subscriber(hub, "sub", 5)
    pub = _publisher(hub, 5)
    pub.send_bytes(_stream(5, *[Publish("t", b"%d" % i) for i in range(3)]))
    assert sub.received() == []
    hub = _hub()
    sys_sub = _subscriber(hub, "sub", 5, "$SYS/x")
    pub = _publisher(hub, 5)
    pub.send_bytes(_stream(5, *[Publish("$SYS/x", b"%d" % i) for i in range(3)]))
    pub.send(Publish("$SYS/x", b"q", 1, packet_id=1))
    assert sys_sub.received() == []
    assert pub.received() == [PubAck(1, 0x87)]


def test_cited_labels() -> None:
    """Every test cites what it proves [MQTT-3.3.1-4]."""
    check_cited_labels(sys.modules[__name__], every_test=True)
