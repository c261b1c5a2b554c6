"""The MQTT client against a hostile or broken server, in memory and byte for byte: wrong
acknowledgements, an endpoint that fails or hangs, a server that never reads, a session resumed
under a smaller Receive Maximum, reconnection storms.  No sockets, no sleeps."""

from __future__ import annotations

import sys
from typing import Any, List

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, TimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from tests.spec import check_cited_labels
from tests.test_client import V5, V311, Peer, connected, make, outcome, reconnected
from twisted_mqtt.client import ConnectResult, Message, MQTTClient, ReconnectPolicy
from twisted_mqtt.client._values import CLOSE_TIMEOUT
from twisted_mqtt.codec import encode
from twisted_mqtt.packets import (
    ConnAck,
    Disconnect,
    PingReq,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
)
from twisted_mqtt.properties import Properties

# -- acknowledgements that do not match ----------------------------------------------------------


def test_suback_with_a_wrong_number_of_codes_is_a_protocol_error() -> None:
    """A SUBACK carries one reason code per topic filter of its SUBSCRIBE [MQTT-3.8.4-6]; one
    with another count is a protocol error (DISCONNECT 0x82), and the subscription is asked for
    again on the next connection rather than answered with the wrong codes."""
    reactor, client, peer = connected(V5)
    result = outcome(client.subscribe("a", qos=1))
    peer.received()
    peer.send(SubAck(1, (1, 1)))
    assert result == []
    assert peer.received() == [Disconnect(0x82)] and peer.closed
    peer, _connect = reconnected(reactor, peer)
    assert peer.received() == [Subscribe(1, (Subscription("a", 1),))]
    peer.send(SubAck(1, (1,)))
    assert result == [(1,)]


def test_acknowledgement_of_the_wrong_kind_is_a_protocol_error() -> None:
    """An UNSUBACK for a SUBSCRIBE, or a v5 UNSUBACK without one reason code per topic filter
    [MQTT-3.11.3-2]: DISCONNECT 0x82."""
    _reactor, client, peer = connected(V5)
    client.subscribe("a")
    peer.send(UnsubAck(1, (0,)))
    assert peer.received()[-1] == Disconnect(0x82) and peer.closed

    _reactor, client, peer = connected(V5)
    client.unsubscribe("a")
    peer.send(UnsubAck(1, ()))
    assert peer.received()[-1] == Disconnect(0x82) and peer.closed

    _reactor, client, peer = connected(V311)  # a v3.1.1 UNSUBACK has no codes
    result = outcome(client.unsubscribe("a"))
    peer.send(UnsubAck(1))
    assert result == [()] and not peer.closed


def test_acknowledgements_of_unknown_identifiers_change_nothing(logged: List[str]) -> None:
    """Acknowledgements of identifiers not in use leave the messages in flight as they are, the
    connection open, and one log line per connection however many come; a PUBREC of an unknown
    identifier is answered with PUBREL 0x92."""
    _reactor, client, peer = connected(V5)
    result = outcome(client.publish("t", b"", 2))
    peer.received()
    peer.send(*[PubAck(9), PubComp(9), SubAck(9, (0,)), UnsubAck(9, (0,))] * 100)
    assert result == [] and not peer.closed and peer.received() == []
    peer.send(PubRec(9))
    assert peer.received() == [PubRel(9, 0x92)]
    peer.send(PubRec(1), PubComp(1))
    assert peer.received() == [PubRel(1)] and result == [PubComp(1)]
    assert len([line for line in logged if "unknown packet" in line]) == 1


@pytest.mark.parametrize("qos, ack", [(2, PubAck(1)), (1, PubRec(1)), (2, PubComp(1)),
                                      (1, PubComp(1))])
def test_acknowledgement_of_the_wrong_kind_for_a_publish(qos: int, ack: Any) -> None:
    """PUBACK for a QoS 2 message, PUBREC for a QoS 1 one, PUBCOMP before PUBREC: a protocol
    error (DISCONNECT 0x82, as the broker answers the same from a client); the message stays
    in flight, to be sent again on the next connection."""
    reactor, client, peer = connected(V5, session_expiry_interval=60)
    result = outcome(client.publish("t", b"m", qos))
    peer.received()
    peer.send(ack)
    assert peer.received() == [Disconnect(0x82)] and peer.closed and result == []
    peer, _connect = reconnected(reactor, peer, session_present=True)
    assert peer.received() == [Publish("t", b"m", qos, dup=True, packet_id=1)]


def test_packets_before_connack_close_the_connection() -> None:
    """The server sends CONNACK before any other packet [MQTT-3.2.0-1]: a PUBLISH first closes
    the connection (no DISCONNECT: the connection was never accepted), and the client tries
    again after the back-off."""
    reactor, client = make(V5)
    result = outcome(client.connect(retry=True))
    peer = Peer(reactor, V5)
    peer.received()
    peer.send(Publish("t", b"early"))
    assert peer.raw() == b"" and peer.closed
    peer.lose()
    reactor.advance(1.0)
    Peer(reactor, V5).accept()
    assert isinstance(result[0], ConnectResult)


def test_protocol_error_is_written_before_the_close_and_nothing_more_is_read() -> None:
    """After a protocol error the client reads nothing more, not even the rest of the same
    chunk; its DISCONNECT is written before the connection closes (not dropped by an abort),
    and a server that does not read it is cut off after ``CLOSE_TIMEOUT`` seconds."""
    reactor, client, peer = connected(V5)
    got: List[Message] = []
    client.subscribe("t", got.append, 1)
    peer.received()
    peer.protocol.dataReceived(encode(ConnAck(), V5)
                               + encode(Publish("t", b"after", 1, packet_id=5), V5))
    assert peer.received() == [Disconnect(0x82)] and got == []
    assert peer.transport.producerState == "paused"
    assert peer.closed and not peer.transport.disconnected  # closing, not aborted
    reactor.advance(CLOSE_TIMEOUT)
    assert peer.transport.disconnected


def test_disconnect_from_a_server_that_does_not_read_ends() -> None:
    """``disconnect()`` fires even when the server reads nothing: the connection is cut off
    after ``CLOSE_TIMEOUT`` seconds."""
    reactor, client, peer = connected(V5)
    result = outcome(client.disconnect())
    assert peer.received() == [Disconnect(0)] and peer.closed and result == []
    reactor.advance(CLOSE_TIMEOUT)
    assert peer.transport.disconnected
    peer.lose()
    assert result == [None]


def test_reason_strings_cannot_forge_log_lines(logged: List[str]) -> None:
    """A server's reason string (DISCONNECT, a refused CONNACK) is shown with its control
    characters escaped and cut at 200 characters: a server cannot write lines of its own into
    the log, nor make one line of a megabyte."""
    reason = "maintenance\nMQTT client c1: connected as admin" + "x" * 60_000
    reactor, client, peer = connected(V5)
    peer.send(Disconnect(0x8B, Properties(reason_string=reason)))
    reactor, client = make(V5)
    result = outcome(client.connect())
    Peer(reactor, V5).send(ConnAck(reason_code=0x87, properties=Properties(
        reason_string=reason)))
    lines = [line for line in logged if "maintenance" in line]
    assert len(lines) == 2 and str(result[0].value) in lines[1]
    for line in lines:
        assert "\n" not in line and "maintenance\\nMQTT" in line and len(line) < 400


# -- connecting ----------------------------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class Endpoint:
    """A client endpoint whose ``connect`` raises ``error`` or returns a Deferred that never
    fires (recorded in ``attempts``)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.attempts: List[Deferred] = []

    def connect(self, factory: Any) -> Deferred:
        if self.error is not None:
            self.attempts.append(Deferred())
            raise self.error
        self.attempts.append(Deferred())
        return self.attempts[-1]


def test_endpoint_that_raises_is_tried_again() -> None:
    """An endpoint whose ``connect`` raises (a bad address, a resolver failing at once) is one
    failed attempt like any other: tried again after the back-off."""
    reactor = MemoryReactorClock()
    endpoint = Endpoint(ConnectError("no such host"))
    client = MQTTClient(reactor, endpoint, "c1", random=lambda: 0.0)
    result = outcome(client.connect(retry=True))
    assert result == [] and len(endpoint.attempts) == 1
    reactor.advance(1.0)
    assert len(endpoint.attempts) == 2

    client = MQTTClient(reactor, Endpoint(ConnectError("no such host")), "c2")
    result = outcome(client.connect())
    assert result[0].check(ConnectError)


def test_connect_timeout_covers_the_connection_attempt() -> None:
    """``connect_timeout`` counts from the start of an attempt: an endpoint that never
    connects (a dropped SYN, a WebSocket or TLS handshake that never ends) is given up after it,
    and tried again."""
    reactor = MemoryReactorClock()
    endpoint = Endpoint()
    client = MQTTClient(reactor, endpoint, "c1", connect_timeout=5.0, random=lambda: 0.0)
    result = outcome(client.connect())
    reactor.advance(4.9)
    assert result == []
    reactor.advance(0.2)
    assert result[0].check(TimeoutError)
    assert "no connection within 5.0s" in result[0].getErrorMessage()

    client = MQTTClient(reactor, endpoint, "c2", connect_timeout=5.0, random=lambda: 0.0)
    result = outcome(client.connect(retry=True))
    reactor.advance(5.0)
    assert len(endpoint.attempts) == 2 and result == []
    reactor.advance(1.0)
    assert len(endpoint.attempts) == 3


def test_server_keep_alive_of_zero_does_not_blind_the_client() -> None:
    """A Server Keep Alive of 0 does not stop the client from probing at its own keep alive (a
    server answers every PINGREQ [MQTT-3.12.4-1]): a server that then goes silent is found out
    and the connection closed."""
    reactor, client, peer = connected(V5, {"properties": Properties(server_keep_alive=0)},
                                      keep_alive=10, ping_timeout=5)
    reactor.advance(10)
    assert peer.received() == [PingReq()]
    reactor.advance(5)
    assert peer.transport.disconnected


# -- back-pressure -------------------------------------------------------------------------------


def test_server_that_reads_no_acknowledgements_is_no_longer_read() -> None:
    """While the transport's buffer is full, a server sending more QoS 1/2 messages than the
    client's Receive Maximum (more than it may have unacknowledged [MQTT-3.3.4-9]) is no longer
    read, so the acknowledgements it does not read cannot grow the buffer without bound; it is
    read again once the buffer drains."""
    _reactor, client, peer = connected(V5, receive_maximum=2)
    got: List[bytes] = []
    client.on_message = lambda message: got.append(message.payload)
    producer: Any = peer.transport.producer  # the client's protocol
    producer.pauseProducing()  # the transport's buffer is full
    peer.send(Publish("t", b"1", 1, packet_id=1), Publish("t", b"2", 2, packet_id=2))
    assert peer.transport.producerState == "producing"
    peer.send(Publish("t", b"3", 1, packet_id=3))
    assert peer.transport.producerState == "paused"
    assert peer.received() == [PubAck(1), PubRec(2), PubAck(3)] and got == [b"1", b"2", b"3"]
    producer.resumeProducing()
    assert peer.transport.producerState == "producing"
    producer.pauseProducing()
    peer.send(Publish("t", b"4", 1, packet_id=4), PubRel(2))
    assert peer.transport.producerState == "producing"  # counted again from the new pause


# -- reconnection --------------------------------------------------------------------------------


def test_resumed_session_is_sent_again_within_the_new_receive_maximum() -> None:
    """A resumed session's unacknowledged messages are sent again within the Receive Maximum of
    the new connection [MQTT-3.3.4-7] (a message past PUBREC holds its place until PUBCOMP),
    in their order [MQTT-4.6.0-1], each with its identifier and DUP set, so QoS 2 stays exactly
    once; messages published meanwhile wait behind them."""
    reactor, client, peer = connected(V5, session_expiry_interval=60)
    results = [outcome(client.publish("a", b"%d" % n, 2)) for n in range(3)]
    peer.received()
    peer.send(PubRec(1))
    peer.received()
    peer.lose()
    later = outcome(client.publish("a", b"later", 0))
    reactor.advance(1.0)
    peer = Peer(reactor, V5)
    peer.accept(session_present=True, properties=_receive_maximum(2))
    assert peer.received() == [PubRel(1), Publish("a", b"1", 2, dup=True, packet_id=2)]
    client.publish("a", b"new", 0)
    assert peer.received() == []
    peer.send(PubComp(1))
    assert peer.received() == [Publish("a", b"2", 2, dup=True, packet_id=3),
                               Publish("a", b"later"), Publish("a", b"new")]
    peer.send(PubRec(2), PubRec(3))
    assert peer.received() == [PubRel(2), PubRel(3)]
    peer.send(PubComp(2), PubComp(3))
    assert [r[0] for r in results] == [PubComp(1), PubComp(2), PubComp(3)] and later == [None]


def _receive_maximum(number: int) -> Any:
    from twisted_mqtt.properties import Properties

    return Properties(receive_maximum=number)


def test_incoming_qos2_sent_again_after_a_reconnection_is_delivered_once() -> None:
    """A QoS 2 message received but not released when the connection broke, sent again (DUP)
    in the resumed session, is acknowledged and not delivered twice [MQTT-4.3.3-10]; in a new
    session its identifier is new again."""
    reactor, client, peer = connected(V5, session_expiry_interval=60)
    got: List[bytes] = []
    client.on_message = lambda message: got.append(message.payload)
    peer.send(Publish("t", b"once", 2, packet_id=9))
    peer, _connect = reconnected(reactor, peer, session_present=True)
    peer.send(Publish("t", b"once", 2, dup=True, packet_id=9), PubRel(9))
    assert peer.received() == [PubRec(9), PubComp(9)] and got == [b"once"]
    peer.send(Publish("t", b"again", 2, packet_id=9))
    peer, _connect = reconnected(reactor, peer, session_present=False)
    peer.send(Publish("t", b"new", 2, packet_id=9))
    assert got == [b"once", b"again", b"new"]


@pytest.mark.parametrize("options", [
    {"initial": 0.0}, {"jitter": 1.0}, {"jitter": -0.1}, {"factor": 0.5},
    {"initial": 10.0, "maximum": 5.0}])
def test_reconnect_policy_that_could_loop_is_refused(options: Any) -> None:
    """A policy whose delay could be zero or shrink (no initial delay, jitter of the whole
    delay, a factor below 1) is refused when made."""
    with pytest.raises(ValueError, match="ReconnectPolicy needs"):
        ReconnectPolicy(**options)


def test_server_that_accepts_and_closes_is_tried_ever_less_often() -> None:
    """A server that accepts the connection and closes it before CONNACK is a failed attempt:
    the delays grow to the policy's maximum, never a tight loop."""
    reactor, client = make(V5, reconnect=ReconnectPolicy(1.0, 8.0, 2.0, 0.5))
    client.connect(retry=True)
    times = []
    for _ in range(6):
        peer = Peer(reactor, V5)
        times.append(reactor.seconds())
        peer.lose()
        reactor.advance(reactor.getDelayedCalls()[0].getTime() - reactor.seconds())
    assert [b - a for a, b in zip(times, times[1:])] == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_connack_then_close_waits_between_attempts() -> None:
    """A server that accepts the connection (CONNACK) and closes it at once is tried again
    after the initial delay less its jitter, never at once."""
    reactor, client = make(V5, random=lambda: 0.999)
    client.connect(retry=True)
    for _ in range(3):
        count = len(reactor.tcpClients)
        peer = Peer(reactor, V5)
        peer.accept()
        peer.lose()
        reactor.advance(0.5)
        assert len(reactor.tcpClients) == count
        reactor.advance(0.01)
        assert len(reactor.tcpClients) == count + 1


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])
