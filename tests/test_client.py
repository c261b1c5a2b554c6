"""The MQTT client in memory: byte-exact exchanges with a scripted server on a
``MemoryReactorClock`` (connect, refusals, QoS 0/1/2 both ways, keep alive, reconnection with
back-off, resending, flow control, topic aliases, protocol errors).  No sockets, no sleeps."""

from __future__ import annotations

import sys
from typing import Any, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from tests.spec import check_cited_labels
from twisted_mqtt.client import (
    ConnectionRefused,
    ConnectResult,
    Message,
    MQTTClient,
    PublishFailed,
    QueueFull,
    ReconnectPolicy,
)
from twisted_mqtt.codec import Decoder, encode
from twisted_mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    ProtocolLevel,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
)
from twisted_mqtt.properties import NO_PROPERTIES, Properties

V5 = ProtocolLevel.MQTT_5
V311 = ProtocolLevel.MQTT_3_1_1


class Peer:
    """The server's side of one connection the client made through the memory reactor."""

    def __init__(self, reactor: MemoryReactorClock, level: int, index: int = -1) -> None:
        factory: Any = reactor.tcpClients[index][2]
        self.level = level
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.decoder = Decoder()

    def raw(self) -> bytes:
        """The bytes the client wrote since the last look."""
        data = self.transport.value()
        self.transport.clear()
        return bytes(data)

    def received(self) -> List[Any]:
        """The packets the client sent since the last look."""
        return self.decoder.feed(self.raw())

    def send(self, *packets: Any) -> None:
        for packet in packets:
            self.protocol.dataReceived(encode(packet, self.level))

    def accept(self, **kwargs: Any) -> Connect:
        """Read the CONNECT, answer CONNACK success (``kwargs`` are ConnAck's)."""
        (connect,) = self.received()
        assert isinstance(connect, Connect)
        self.send(ConnAck(**kwargs))
        return connect

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def lose(self) -> None:
        """The network connection ends."""
        self.protocol.connectionLost(Failure(ConnectionDone()))


def fail_attempt(reactor: MemoryReactorClock) -> None:
    """The latest connection attempt fails."""
    factory: Any = reactor.tcpClients[-1][2]
    factory.clientConnectionFailed(None, Failure(ConnectError("down")))


def reconnected(reactor: MemoryReactorClock, peer: Peer, **connack: Any) -> tuple[Peer, Connect]:
    """The connection of ``peer`` is lost; after the first back-off delay the client connects
    again and is answered with CONNACK(``connack``)."""
    peer.lose()
    reactor.advance(1.0)
    again = Peer(reactor, peer.level)
    return again, again.accept(**connack)


def make(level: int = V5, **kwargs: Any) -> tuple[MemoryReactorClock, MQTTClient]:
    reactor = MemoryReactorClock()
    kwargs.setdefault("random", lambda: 0.0)
    kwargs.setdefault("topic_alias_maximum", 0)
    client = MQTTClient(reactor, "tcp:127.0.0.1:1883", "c1", protocol_level=level, **kwargs)
    return reactor, client


def connected(level: int = V5, connack: Any = None, **kwargs: Any
              ) -> tuple[MemoryReactorClock, MQTTClient, Peer]:
    reactor, client = make(level, **kwargs)
    results: List[Any] = []
    client.connect().addBoth(results.append)
    peer = Peer(reactor, level)
    peer.accept(**(connack or {}))
    assert isinstance(results[0], ConnectResult), results
    return reactor, client, peer


def outcome(deferred: Any) -> List[Any]:
    results: List[Any] = []
    deferred.addBoth(results.append)
    return results


# -- connecting --------------------------------------------------------------------------------


def test_connect_v5_bytes_and_connack_result() -> None:
    """CONNECT goes out byte for byte; the Deferred fires with the CONNACK's session flag and
    properties."""
    reactor, client = make(V5, topic_alias_maximum=10, keep_alive=30)
    result = outcome(client.connect())
    peer = Peer(reactor, V5)
    assert peer.raw() == (b"\x10\x17\x00\x04MQTT\x05\x02\x00\x1e\x08\x22\x00\x0a"
                          b"\x27\x00\x10\x00\x00\x00\x02c1")
    peer.send(ConnAck(0, False, Properties(receive_maximum=5)))
    assert result == [ConnectResult(False, 0, Properties(receive_maximum=5))]
    assert client.connected


def test_connect_v311_bytes() -> None:
    """A v3.1.1 CONNECT with user name, password and clean session 0."""
    reactor, client = make(V311, clean_start=False, username="u", password=b"p")
    client.connect()
    peer = Peer(reactor, V311)
    assert peer.raw() == (b"\x10\x14\x00\x04MQTT\x04\xc0\x00\x3c\x00\x02c1\x00\x01u\x00\x01p")


@pytest.mark.parametrize("option, number", [
    ("keep_alive", 65536), ("receive_maximum", 0), ("maximum_packet_size", 15),
    ("topic_alias_maximum", -1), ("session_expiry_interval", 1 << 32), ("max_queued", -1)])
def test_options_out_of_range(option: str, number: int) -> None:
    """An option the protocol cannot carry is refused when the client is made, by name."""
    with pytest.raises(ValueError, match=f"^{option} must be"):
        MQTTClient(MemoryReactorClock(), "tcp:127.0.0.1:1883", **{option: number})


def test_connect_carries_will_and_credentials() -> None:
    """The will (with its v5 properties), user name, password and session expiry reach the
    server as given."""
    from twisted_mqtt.packets import Will

    will = Will("status/c1", b"gone", 1, True, Properties(will_delay_interval=5))
    reactor, client = make(V5, will=will, username="u", password=b"p",
                           session_expiry_interval=30, keep_alive=0)
    client.connect()
    connect = Peer(reactor, V5).accept()
    assert (connect.will, connect.username, connect.password, connect.keep_alive) == (
        will, "u", b"p", 0)
    assert connect.properties.session_expiry_interval == 30 and connect.clean_start
    assert reactor.getDelayedCalls() == []  # keep alive 0: no ping timer


def test_refused_v5_names_the_reason() -> None:
    """A refused CONNACK fails connect() with the reason code's name, closes, and the client
    does not try again [MQTT-4.13.2-1]."""
    reactor, client = make(V5)
    result = outcome(client.connect())
    peer = Peer(reactor, V5)
    peer.received()
    peer.send(ConnAck(0x87))
    (failure,) = result
    assert failure.check(ConnectionRefused)
    assert str(failure.value) == "Not authorized (0x87)"
    assert failure.value.reason_code == 0x87
    assert peer.closed
    peer.lose()
    assert reactor.getDelayedCalls() == [] and len(reactor.tcpClients) == 1


def test_refused_v311_names_the_return_code() -> None:
    """A v3.1.1 refusal names its return code."""
    reactor, client = make(V311)
    result = outcome(client.connect())
    peer = Peer(reactor, V311)
    peer.received()
    peer.send(ConnAck(4))
    assert str(result[0].value) == "Bad user name or password (return code 4)"


def test_first_attempt_failure_fails_connect_unless_retry() -> None:
    """connect() fails with the reason the first attempt failed; with retry=True it keeps
    trying with back-off and fires once a server accepts."""
    reactor, client = make(V5)
    result = outcome(client.connect())
    fail_attempt(reactor)
    assert result[0].check(ConnectError)
    assert reactor.getDelayedCalls() == []

    reactor, client = make(V5)
    result = outcome(client.connect(retry=True))
    fail_attempt(reactor)
    assert result == []
    reactor.advance(1.0)
    assert len(reactor.tcpClients) == 2
    Peer(reactor, V5).accept()
    assert isinstance(result[0], ConnectResult)


def test_no_connack_closes() -> None:
    """A server that never answers CONNECT is dropped after connect_timeout."""
    reactor, client = make(V5, connect_timeout=5.0)
    result = outcome(client.connect())
    peer = Peer(reactor, V5)
    reactor.advance(4.9)
    assert not peer.closed
    reactor.advance(0.2)
    assert peer.closed
    peer.lose()
    assert result[0].check(ConnectionDone)


def test_session_present_after_clean_start_closes() -> None:
    """Session Present 1 in answer to a clean start is a protocol error: the client closes
    [MQTT-3.2.2-4]."""
    reactor, client = make(V5)
    client.connect().addErrback(lambda _: None)
    peer = Peer(reactor, V5)
    peer.received()
    peer.send(ConnAck(0, True))
    assert peer.closed and not client.connected


# -- publishing --------------------------------------------------------------------------------


def test_publish_qos0_fires_on_send() -> None:
    """QoS 0 is written at once, DUP 0, no packet identifier [MQTT-3.3.1-2 (3.1.1)]."""
    _reactor, client, peer = connected(V311)
    assert outcome(client.publish("a/b", b"hi")) == [None]
    assert peer.raw() == b"\x30\x07\x00\x03a/bhi"


def test_publish_qos1_fires_on_puback() -> None:
    """QoS 1: a new packet identifier, DUP 0; the Deferred fires with the PUBACK
    [MQTT-4.3.2-1, MQTT-4.3.2-2]."""
    _reactor, client, peer = connected(V5)
    result = outcome(client.publish("a/b", b"hi", 1))
    assert peer.raw() == b"\x32\x0a\x00\x03a/b\x00\x01\x00hi"
    assert result == []
    peer.send(PubAck(1))
    assert result == [PubAck(1)]


def test_publish_qos2_pubrel_then_pubcomp() -> None:
    """QoS 2: PUBREC is answered with PUBREL of the same identifier; PUBCOMP fires the
    Deferred [MQTT-4.3.3-2, MQTT-4.3.3-4, MQTT-4.3.3-5]."""
    _reactor, client, peer = connected(V311)
    result = outcome(client.publish("t", b"x", 2, retain=True))
    assert peer.raw() == b"\x35\x06\x00\x01t\x00\x01x"
    peer.send(PubRec(1))
    assert peer.raw() == b"\x62\x02\x00\x01"
    assert result == []
    peer.send(PubComp(1))
    assert result == [PubComp(1)]


def test_publish_error_reason_code_fails() -> None:
    """A v5 PUBACK or PUBREC of 0x80 or more fails the Deferred with the reason's name; the
    message counts as acknowledged (no PUBREL) [MQTT-4.4.0-2]."""
    _reactor, client, peer = connected(V5)
    first = outcome(client.publish("a", b"", 1))
    second = outcome(client.publish("a", b"", 2))
    peer.received()
    peer.send(PubAck(1, 0x87, Properties(reason_string="no")))
    peer.send(PubRec(2, 0x97))
    assert str(first[0].value) == "PUBACK: Not authorized (0x87): no"
    assert first[0].value.reason_code == 0x87
    assert str(second[0].value) == "PUBREC: Quota exceeded (0x97)"
    assert peer.received() == []


def test_publish_fires_with_no_matching_subscribers() -> None:
    """0x10 (No matching subscribers) is a success."""
    _reactor, client, peer = connected(V5)
    result = outcome(client.publish("a", b"", 1))
    peer.send(PubAck(1, 0x10))
    assert result == [PubAck(1, 0x10)]


def test_maximum_qos_and_retain_available() -> None:
    """A QoS above the server's Maximum QoS, or RETAIN when Retain Available is 0, is not sent:
    the Deferred fails with 0x9B / 0x9A [MQTT-3.2.2-11, MQTT-3.2.2-14]."""
    _reactor, client, peer = connected(V5, {"properties": Properties(maximum_qos=1,
                                                                      retain_available=0)})
    qos = outcome(client.publish("a", b"", 2))
    retain = outcome(client.publish("a", b"", 0, retain=True))
    assert qos[0].value.reason_code == 0x9B and retain[0].value.reason_code == 0x9A
    assert peer.raw() == b""


def test_maximum_packet_size() -> None:
    """A PUBLISH larger than the server's Maximum Packet Size is not sent: 0x95
    [MQTT-3.2.2-15]."""
    _reactor, client, peer = connected(V5, {"properties": Properties(maximum_packet_size=20)})
    big = outcome(client.publish("a", b"x" * 20, 1))
    assert isinstance(big[0].value, PublishFailed) and big[0].value.reason_code == 0x95
    assert peer.raw() == b""
    small = outcome(client.publish("a", b"x", 1))
    assert peer.received() == [Publish("a", b"x", 1, packet_id=2)]
    peer.send(PubAck(2))
    assert small == [PubAck(2)]


def test_receive_maximum_queues_beyond_quota() -> None:
    """No more than the server's Receive Maximum QoS 1/2 messages in flight; the rest wait and
    go as acknowledgements free the quota; QoS 0 and other packets are not delayed
    [MQTT-3.3.4-7, MQTT-3.3.4-8, MQTT-4.9.0-1]."""
    _reactor, client, peer = connected(V5, {"properties": Properties(receive_maximum=2)})
    results = [outcome(client.publish("q", b"%d" % i, 1)) for i in range(4)]
    assert [p.packet_id for p in peer.received()] == [1, 2]
    client.subscribe("s")
    assert isinstance(peer.received()[0], Subscribe)
    peer.send(PubAck(1))
    assert [(p.packet_id, p.payload) for p in peer.received()] == [(4, b"2")]
    peer.send(PubAck(2), PubAck(4))
    assert [(p.packet_id, p.payload) for p in peer.received()] == [(5, b"3")]
    peer.send(PubAck(5))
    assert all(len(r) == 1 for r in results)


def test_paused_transport_holds_publishes_within_the_queue_bound() -> None:
    """When the transport's buffer is full (it pauses its producer), new messages wait in the
    bounded queue instead of growing the buffer; they go when it resumes."""
    _reactor, client, peer = connected(V5, max_queued=2)
    producer = peer.transport.producer
    assert producer is not None and peer.transport.streaming
    producer.pauseProducing()
    first = outcome(client.publish("a", b"1"))
    second = outcome(client.publish("a", b"2", 1))
    assert outcome(client.publish("a", b"3"))[0].check(QueueFull)
    assert peer.raw() == b"" and first == []
    producer.resumeProducing()
    assert [(p.payload, p.qos) for p in peer.received()] == [(b"1", 0), (b"2", 1)]
    assert first == [None] and second == []


def test_queue_bound() -> None:
    """Beyond max_queued messages waiting for a connection, publish fails with QueueFull."""
    _reactor, client = make(V5, max_queued=2)
    client.publish("a", b"", 1)
    client.publish("a", b"", 0)
    assert outcome(client.publish("a", b"", 1))[0].check(QueueFull)


def test_messages_published_before_connect_go_after_connack() -> None:
    """Messages published before the connection is accepted are sent after CONNACK, in
    order."""
    reactor, client = make(V5)
    client.publish("a", b"1", 1)
    client.publish("a", b"2", 0)
    client.connect()
    peer = Peer(reactor, V5)
    peer.accept()
    assert [(p.payload, p.qos) for p in peer.received()] == [(b"1", 1), (b"2", 0)]


def test_outgoing_topic_aliases() -> None:
    """With use_topic_aliases, a topic gets an alias up to the server's Topic Alias Maximum;
    later messages send the alias with an empty topic; none without the server's consent
    [MQTT-3.3.2-9, MQTT-3.2.2-17, MQTT-3.2.2-18]."""
    _reactor, client, peer = connected(V5, {"properties": Properties(topic_alias_maximum=1)},
                                       use_topic_aliases=True)
    for topic in ("long/topic", "long/topic", "other"):
        client.publish(topic, b"x")
    assert peer.received() == [
        Publish("long/topic", b"x", properties=Properties(topic_alias=1)),
        Publish("", b"x", properties=Properties(topic_alias=1)),
        Publish("other", b"x")]
    _reactor, client, peer = connected(V5, use_topic_aliases=True)
    client.publish("t", b"x")
    assert peer.received() == [Publish("t", b"x")]


# -- receiving ---------------------------------------------------------------------------------


def test_subscribe_callback_and_suback_codes() -> None:
    """subscribe() sends the options byte for byte, fires with the SUBACK codes, and the
    callback receives the matching messages; other messages go to on_message."""
    others: List[Message] = []
    _reactor, client, peer = connected(V5, on_message=others.append)
    got: List[Message] = []
    result = outcome(client.subscribe("a/+", got.append, 1, no_local=True, retain_handling=2))
    assert peer.raw() == b"\x82\x09\x00\x01\x00\x00\x03a/+\x25"
    peer.send(SubAck(1, (1,)))
    assert result == [(1,)]
    peer.send(Publish("a/b", b"1"), Publish("c", b"2"))
    assert got == [Message("a/b", b"1")]
    assert others == [Message("c", b"2")]


def test_callbacks_follow_subscription_changes() -> None:
    """Which callbacks a topic reaches is remembered, and follows each subscribe, unsubscribe and
    refusal."""
    others: List[bytes] = []
    _reactor, client, peer = connected(V5, on_message=lambda m: others.append(m.payload))
    one: List[bytes] = []
    every: List[bytes] = []
    peer.send(Publish("t", b"1"))
    client.subscribe("t", lambda m: one.append(m.payload))
    peer.send(Publish("t", b"2"))
    client.subscribe("#", lambda m: every.append(m.payload))
    peer.send(Publish("t", b"3"))
    client.unsubscribe("t")
    peer.send(Publish("t", b"4"), SubAck(2, (0x80,)), Publish("t", b"5"))
    assert (others, one, every) == ([b"1", b"5"], [b"2", b"3"], [b"3", b"4"])


def test_shared_subscription_callback() -> None:
    """A ``$share/group/filter`` subscription's callback gets the messages matching ``filter``;
    a ``#`` subscription does not get ``$`` topics [MQTT-4.7.2-1]."""
    _reactor, client, peer = connected(V5)
    shared: List[str] = []
    every: List[str] = []
    client.subscribe("$share/g/a/#", lambda m: shared.append(m.topic))
    client.subscribe("#", lambda m: every.append(m.topic))
    peer.send(Publish("a/b", b""), Publish("$SYS/x", b""))
    assert (shared, every) == (["a/b"], ["a/b"])


def test_public_names() -> None:
    """The public names of ``twisted_mqtt.client`` stay, each the object its module defines."""
    import twisted_mqtt.client as public
    from twisted_mqtt.client import _client, _errors, _values

    assert sorted(public.__all__) == sorted([
        "ClientStopped", "ConnectResult", "ConnectionRefused", "MQTTClient", "MQTTClientError",
        "MQTTClientProtocol", "Message", "Properties", "PublishFailed", "QueueFull",
        "ReconnectPolicy", "WebSocketEndpoint", "Will", "client_endpoint"])
    assert public.MQTTClient is _client.MQTTClient
    assert public.Message is _values.Message and public.QueueFull is _errors.QueueFull
    with pytest.raises(AttributeError):
        public.Nothing  # type: ignore[attr-defined]  # noqa: B018


def test_refused_subscription_drops_its_callback() -> None:
    """A SUBACK failure code is given to the caller, and the callback is dropped."""
    _reactor, client, peer = connected(V311)
    got: List[Message] = []
    result = outcome(client.subscribe("x", got.append))
    peer.send(SubAck(1, (0x80,)))
    assert result == [(0x80,)]
    peer.send(Publish("x", b""))
    assert got == []


def test_unsubscribe() -> None:
    """unsubscribe() fires with the UNSUBACK codes and the callback no longer runs."""
    _reactor, client, peer = connected(V5)
    got: List[Message] = []
    client.subscribe("x", got.append)
    peer.send(SubAck(1, (0,)))
    result = outcome(client.unsubscribe("x"))
    assert peer.received()[-1] == Unsubscribe(2, ("x",))
    peer.send(UnsubAck(2, (0,)))
    assert result == [(0,)]
    peer.send(Publish("x", b""))
    assert got == []


def test_incoming_qos1_acknowledged() -> None:
    """An incoming QoS 1 message is delivered and answered with PUBACK of its identifier
    [MQTT-4.3.2-4]."""
    _reactor, client, peer = connected(V311)
    got: List[Message] = []
    client.subscribe("t", got.append, 1)
    peer.received()
    peer.send(Publish("t", b"m", 1, packet_id=7))
    assert peer.raw() == b"\x40\x02\x00\x07"
    assert got == [Message("t", b"m", 1)]


def test_incoming_qos2_delivered_once() -> None:
    """Incoming QoS 2: PUBREC, delivered once even when the PUBLISH comes again, PUBCOMP on
    PUBREL, then the identifier is new again [MQTT-4.3.3-8, MQTT-4.3.3-10, MQTT-4.3.3-11,
    MQTT-4.3.3-12]."""
    _reactor, client, peer = connected(V5)
    got: List[Message] = []
    client.subscribe("t", got.append, 2)
    peer.received()
    peer.send(Publish("t", b"m", 2, packet_id=9))
    peer.send(Publish("t", b"m", 2, dup=True, packet_id=9))
    assert peer.raw() == b"\x50\x02\x00\x09" * 2
    assert len(got) == 1
    peer.send(PubRel(9))
    assert peer.raw() == b"\x70\x02\x00\x09"
    peer.send(PubRel(9))
    assert peer.received() == [PubComp(9, 0x92)]
    peer.send(Publish("t", b"n", 2, packet_id=9))
    assert len(got) == 2


def test_incoming_receive_maximum() -> None:
    """More QoS 2 messages waiting for PUBREL than the client's Receive Maximum: DISCONNECT
    0x93 and close."""
    _reactor, client, peer = connected(V5, receive_maximum=1)
    peer.send(Publish("t", b"", 2, packet_id=1))
    peer.received()
    peer.send(Publish("t", b"", 2, packet_id=2))
    assert peer.received() == [Disconnect(0x93)]
    assert peer.closed


def test_incoming_topic_aliases() -> None:
    """Aliases up to the client's Topic Alias Maximum are accepted [MQTT-3.3.2-10]; one above it
    is answered with DISCONNECT 0x94, an unknown one with 0x82."""
    _reactor, client, peer = connected(V5, topic_alias_maximum=2)
    got: List[Message] = []
    client.on_message = got.append
    peer.send(Publish("long/name", b"1", properties=Properties(topic_alias=2)),
              Publish("", b"2", properties=Properties(topic_alias=2)))
    assert got == [Message("long/name", b"1"), Message("long/name", b"2")]
    peer.send(Publish("x", b"", properties=Properties(topic_alias=3)))
    assert peer.received() == [Disconnect(0x94)] and peer.closed

    _reactor, client, peer = connected(V5, topic_alias_maximum=2)
    peer.send(Publish("", b"", properties=Properties(topic_alias=1)))
    assert peer.received() == [Disconnect(0x82)] and peer.closed


def test_callback_exception_does_not_break_the_connection() -> None:
    """A callback that raises is logged; the message is still acknowledged."""
    _reactor, client, peer = connected(V5)

    def broken(message: Message) -> None:
        raise RuntimeError("bug")

    client.subscribe("t", broken)
    peer.received()
    peer.send(Publish("t", b"", 1, packet_id=3))
    assert peer.received() == [PubAck(3)]
    assert not peer.closed


def test_malformed_packet_from_server() -> None:
    """A malformed packet: DISCONNECT 0x81, close, and reconnect later."""
    reactor, client, peer = connected(V5)
    peer.protocol.dataReceived(b"\x40\x01\x00")
    assert peer.received() == [Disconnect(0x81)]
    assert peer.closed
    peer.lose()
    reactor.advance(1.0)
    assert len(reactor.tcpClients) == 2


def test_unexpected_packet_from_server() -> None:
    """A second CONNACK is a protocol error (0x82) [MQTT-3.2.0-2]."""
    _reactor, client, peer = connected(V5)
    peer.send(ConnAck())
    assert peer.received() == [Disconnect(0x82)]


def test_server_disconnect_then_reconnect() -> None:
    """A v5 server's DISCONNECT closes the connection; the client connects again after the
    back-off and its subscriptions are made again."""
    reactor, client, peer = connected(V5)
    client.subscribe("s", qos=1)
    peer.send(SubAck(1, (1,)))
    peer.received()
    peer.send(Disconnect(0x8B, Properties(reason_string="maintenance")))
    assert peer.closed
    peer, _connect = reconnected(reactor, peer)
    assert peer.received() == [Subscribe(2, (Subscription("s", 1),))]


def test_auth_without_method_is_a_protocol_error() -> None:
    """AUTH when no authentication method was given: DISCONNECT 0x82."""
    from twisted_mqtt.packets import Auth

    _reactor, client, peer = connected(V5)
    peer.send(Auth(0x18))
    assert peer.received() == [Disconnect(0x82)] and peer.closed


# -- keep alive --------------------------------------------------------------------------------


def test_keep_alive_ping_and_missing_pingresp() -> None:
    """PINGREQ after Keep Alive seconds without sending; no PINGRESP within the ping timeout
    closes the connection, and the client connects again [MQTT-3.1.2-20]."""
    reactor, client, peer = connected(V5, keep_alive=10, ping_timeout=5)
    reactor.advance(9)
    client.publish("t", b"")  # sending postpones the ping
    peer.raw()
    reactor.advance(9)
    assert peer.raw() == b""
    reactor.advance(1)
    assert peer.raw() == b"\xc0\x00"
    peer.send(PingResp())
    reactor.advance(10)
    assert peer.raw() == b"\xc0\x00"
    reactor.advance(4.9)
    assert not peer.closed
    reactor.advance(0.2)
    assert peer.closed
    peer.lose()
    reactor.advance(1.0)
    assert len(reactor.tcpClients) == 2


def test_server_keep_alive_wins() -> None:
    """The Server Keep Alive of CONNACK replaces the client's [MQTT-3.2.2-21]."""
    reactor, client, peer = connected(V5, {"properties": Properties(server_keep_alive=3)},
                                      keep_alive=60)
    reactor.advance(3)
    assert peer.received() == [PingReq()]


# -- reconnection ------------------------------------------------------------------------------


def test_back_off_grows_to_its_bound_with_jitter() -> None:
    """Delays double from ``initial`` up to ``maximum``; jitter removes up to its fraction."""
    policy = ReconnectPolicy(initial=1.0, maximum=8.0, factor=2.0, jitter=0.5)
    assert [policy.delay(n, 0.0) for n in range(6)] == [1, 2, 4, 8, 8, 8]
    assert policy.delay(2, 0.999) == pytest.approx(2.002)
    assert policy.delay(10_000, 0.0) == 8.0


def test_reconnects_with_back_off() -> None:
    """A lost connection is made again after 1, 2, 4 s... and the count restarts after a
    success."""
    reactor, client, peer = connected(V5, reconnect=ReconnectPolicy(1.0, 4.0, 2.0, 0.5))
    peer.lose()
    for delay in (1.0, 2.0, 4.0, 4.0):
        count = len(reactor.tcpClients)
        reactor.advance(delay - 0.01)
        assert len(reactor.tcpClients) == count
        reactor.advance(0.01)
        assert len(reactor.tcpClients) == count + 1
        fail_attempt(reactor)
    reactor.advance(4.0)
    Peer(reactor, V5).accept()
    assert client.connected
    peer.lose()  # the old connection's end, reported again, changes nothing
    assert client.connected


def in_flight(client: MQTTClient, peer: Peer, topic_filter: str,
              callback: Any) -> List[List[Any]]:
    """Subscribe to ``topic_filter`` (acknowledged, packet 1), publish ``1`` at QoS 1 (packet
    2) and ``2`` at QoS 2 (packet 3, PUBREC received): the outcomes of the two messages."""
    client.subscribe(topic_filter, callback, qos=1)
    peer.send(SubAck(1, (1,)))
    results = [outcome(client.publish("a", b"1", 1)), outcome(client.publish("a", b"2", 2))]
    peer.received()
    peer.send(PubRec(3))
    peer.received()
    return results


def test_resend_after_reconnect_with_session() -> None:
    """With the session kept, unacknowledged QoS 1/2 messages go again in their order with DUP
    set and the same identifiers, PUBREL for QoS 2 past PUBREC, no SUBSCRIBE again
    [MQTT-3.3.1-1, MQTT-4.4.0-1 (3.1.1), MQTT-4.6.0-1, MQTT-4.3.3-6]."""
    reactor, client, peer = connected(V311, clean_start=False)
    one, two = in_flight(client, peer, "s", None)
    three = outcome(client.publish("a", b"3", 2))
    peer.received()
    peer, connect = reconnected(reactor, peer, session_present=True)
    assert connect.clean_start is False
    assert peer.received() == [Publish("a", b"1", 1, dup=True, packet_id=2), PubRel(3),
                               Publish("a", b"3", 2, dup=True, packet_id=4)]
    peer.send(PubAck(2), PubComp(3))
    assert one == [PubAck(2)] and two == [PubComp(3)] and three == []


def test_resend_after_reconnect_without_session() -> None:
    """When the server lost the session (Session Present 0) the client discards its session
    state [MQTT-3.2.2-5] but not the messages: subscriptions are made again and unacknowledged
    QoS 1/2 messages are published again as new ones (DUP 0); a QoS 2 message the server had
    already taken (PUBREC) is complete."""
    reactor, client, peer = connected(V5, session_expiry_interval=300)
    got: List[Message] = []
    one, two = in_flight(client, peer, "s/#", got.append)
    peer, connect = reconnected(reactor, peer, session_present=False)
    assert connect.clean_start is False  # the session expiry interval keeps the session
    assert connect.properties.session_expiry_interval == 300
    assert two == [None]
    assert peer.received() == [Subscribe(4, (Subscription("s/#", 1),)),
                               Publish("a", b"1", 1, packet_id=5)]
    peer.send(SubAck(4, (1,)), PubAck(5), Publish("s/x", b"back"))
    assert one == [PubAck(5)] and got == [Message("s/x", b"back")]


def test_new_session_republishes_within_the_new_quota() -> None:
    """Messages published again in a new session obey that session's Receive Maximum, in their
    order, before the messages that were waiting [MQTT-3.3.4-7, MQTT-4.6.0-1]."""
    reactor, client, peer = connected(V5, session_expiry_interval=60)
    for n in range(3):
        client.publish("a", b"%d" % n, 1)
    peer.received()
    peer.lose()
    client.publish("a", b"3", 1)
    reactor.advance(1.0)
    peer = Peer(reactor, V5)
    peer.accept(properties=Properties(receive_maximum=1))
    (first,) = peer.received()
    assert (first.payload, first.dup) == (b"0", False)
    peer.send(PubAck(first.packet_id))
    (second,) = peer.received()
    assert second.payload == b"1"


def test_subscribe_too_large_fails() -> None:
    """A SUBSCRIBE that cannot fit the server's Maximum Packet Size is not sent and its Deferred
    fails [MQTT-3.2.2-15]."""
    _reactor, client, peer = connected(V5, {"properties": Properties(maximum_packet_size=30)})
    result = outcome(client.subscribe("x" * 40))
    assert peer.raw() == b""
    assert "SUBSCRIBE larger than the server's Maximum Packet Size" in str(result[0].value)
    assert outcome(client.subscribe("short")) == []
    assert isinstance(peer.received()[0], Subscribe)


def test_limits_of_one_connection_do_not_outlive_it() -> None:
    """The Maximum Packet Size a server stated applies to that connection only: the CONNECT of
    the next one is sent whole."""
    reactor, client, peer = connected(V5, {"properties": Properties(maximum_packet_size=20)},
                                      username="a-user-name-longer-than-the-limit")
    peer, connect = reconnected(reactor, peer)
    assert connect.username == "a-user-name-longer-than-the-limit"


def test_unacknowledged_subscribe_sent_again() -> None:
    """A SUBSCRIBE not acknowledged before the connection was lost is sent again, once, and its
    Deferred fires with the SUBACK of the new connection."""
    reactor, client, peer = connected(V5)
    result = outcome(client.subscribe("s", qos=1))
    peer.received()
    peer, _connect = reconnected(reactor, peer)
    assert peer.received() == [Subscribe(1, (Subscription("s", 1),))]
    peer.send(SubAck(1, (1,)))
    assert result == [(1,)]


def test_disconnect_sends_reason_and_stops() -> None:
    """disconnect() sends DISCONNECT with its v5 reason code, closes, fires when closed, and
    the client does not connect again."""
    reactor, client, peer = connected(V5)
    result = outcome(client.disconnect(0x04))
    assert peer.raw() == b"\xe0\x01\x04"
    assert peer.closed and result == []
    peer.lose()
    assert result == [None]
    reactor.advance(100)
    assert len(reactor.tcpClients) == 1


def test_disconnect_while_waiting_to_reconnect() -> None:
    """disconnect() during the back-off cancels the next attempt."""
    reactor, client, peer = connected(V311)
    peer.lose()
    assert outcome(client.disconnect()) == [None]
    reactor.advance(100)
    assert len(reactor.tcpClients) == 1


def test_events() -> None:
    """on_connected and on_disconnected are called for each accepted connection."""
    events: List[str] = []
    reactor, client = make(V5)
    client.on_connected = lambda result: events.append(f"up {result.session_present}")
    client.on_disconnected = lambda reason: events.append("down")
    client.connect()
    Peer(reactor, V5).accept()
    client._protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[union-attr]
    assert events == ["up False", "down"]


def test_failing_event_handlers_are_logged() -> None:
    """An on_connected or on_disconnected that raises is logged; the client carries on."""
    reactor, client = make(V5)

    def broken(_: Any) -> None:
        raise RuntimeError("bug")

    client.on_connected = client.on_disconnected = broken
    result = outcome(client.connect())
    peer = Peer(reactor, V5)
    peer.accept()
    assert isinstance(result[0], ConnectResult) and client.connected
    peer.lose()
    reactor.advance(1.0)
    assert len(reactor.tcpClients) == 2


def test_on_connected_set_when_connect_fires_is_not_called_for_that_connection() -> None:
    """on_connected runs before connect()'s Deferred fires: a handler installed by connect()'s
    callback sees the reconnections only."""
    events: List[bool] = []
    reactor, client = make(V311, clean_start=False)

    def install(result: ConnectResult) -> None:
        client.on_connected = lambda again: events.append(again.session_present)

    client.connect().addCallback(install)
    peer = Peer(reactor, V311)
    peer.accept()
    assert events == []
    peer.lose()
    reactor.advance(1.0)
    Peer(reactor, V311).accept(session_present=True)
    assert events == [True]


def test_incoming_packet_above_maximum_packet_size() -> None:
    """The client states its Maximum Packet Size, and a larger packet from the server is
    answered with DISCONNECT 0x95 [MQTT-3.1.2-24]."""
    reactor, client = make(V5, maximum_packet_size=64)
    client.connect()
    peer = Peer(reactor, V5)
    assert peer.accept().properties.maximum_packet_size == 64
    peer.send(Publish("t", b"x" * 64))
    assert peer.received() == [Disconnect(0x95)] and peer.closed


def test_autobahn_imported_only_for_websocket() -> None:
    """Importing the client does not import Autobahn; ``WebSocketEndpoint`` does, and is an
    ``IStreamClientEndpoint``."""
    import subprocess

    code = ("import sys, twisted_mqtt.client as c; assert 'autobahn' not in sys.modules; "
            "from zope.interface.verify import verifyObject; "
            "from twisted.internet.interfaces import IStreamClientEndpoint; "
            "from twisted.internet.testing import MemoryReactor; "
            "verifyObject(IStreamClientEndpoint, c.WebSocketEndpoint(MemoryReactor(), "
            "'ws://127.0.0.1:1/mqtt')); assert 'autobahn' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_default_maximum_packet_size_is_bounded() -> None:
    """By default the client accepts packets of up to 1 MiB (the broker's default), says so to a
    v5 server, and a larger packet is refused before it is buffered whole."""
    reactor, client = make(V5)
    client.connect()
    peer = Peer(reactor, V5)
    assert peer.accept().properties.maximum_packet_size == 1 << 20
    peer.protocol.dataReceived(b"\x30\xff\xff\x7f")  # announces 2 MiB
    assert peer.received() == [Disconnect(0x95)] and peer.closed


_SERVER_PACKETS = st.one_of(
    st.builds(ConnAck, st.sampled_from([0, 0x80, 0x87]), st.booleans()),
    st.builds(Publish, st.sampled_from(["t", "a/b", ""]), st.binary(max_size=8),
              st.integers(0, 2), st.booleans(), st.just(False), st.integers(1, 4),
              st.sampled_from([NO_PROPERTIES, Properties(topic_alias=1),
                               Properties(topic_alias=40)])),
    *(st.builds(kind, st.integers(1, 4), st.sampled_from([0, 0x10, 0x80, 0x92]))
      for kind in (PubAck, PubRec, PubRel, PubComp)),
    st.builds(SubAck, st.integers(1, 4), st.lists(st.sampled_from([0, 1, 2, 0x80]),
                                                  min_size=1, max_size=2).map(tuple)),
    st.builds(UnsubAck, st.integers(1, 4), st.just((0,))),
    st.builds(PingResp), st.builds(Disconnect, st.sampled_from([0, 0x8B, 0x82])),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_SERVER_PACKETS, st.binary(min_size=1, max_size=12)), max_size=12),
       st.sampled_from([V311, V5]), st.booleans())
def test_any_server_input_is_handled(inputs: List[Any], level: int, accepted: bool) -> None:
    """Whatever a server sends, in whatever state (packets in any order, unknown identifiers,
    random bytes), the client raises nothing: it answers, or closes the connection."""
    reactor, client = make(level)
    client.connect().addErrback(lambda _: None)
    client.subscribe("#", qos=2)
    for qos in (0, 1, 2):
        client.publish("t", b"x", qos).addErrback(lambda _: None)
    peer = Peer(reactor, level)
    if accepted:
        peer.accept()
    for item in inputs:
        if peer.closed:
            break
        peer.protocol.dataReceived(item if isinstance(item, bytes) else encode(item, level))
    reactor.advance(120)


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])
