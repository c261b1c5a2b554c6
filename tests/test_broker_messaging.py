"""Message flows through the broker core and the connection state machine, in memory.

Each test drives ``twisted_mqtt.testing.InMemoryBroker`` (a ``Broker`` on a ``task.Clock``) with
``InMemoryClient`` peers over ``StringTransport``: no sockets, no sleeping, no wall clock.  They
cover, at MQTT 5 and 3.1.1 (and 3.1 where it differs):

* QoS 0/1/2 in both directions with exact packet identifiers, duplicate QoS 2 PUBLISH, unknown
  PUBREL, DUP not propagated, QoS downgrade and the broker's Maximum QoS;
* overlapping subscriptions and Subscription Identifiers;
* shared subscriptions: round robin, one member per message, hand over of a leaving member's
  messages (never of QoS 2 ones in flight, nor of ones refused by an error acknowledgement), no
  retained messages, No Local refused;
* No Local, Retain As Published, Retain Handling, retained messages (store, replace, delete,
  limit, expiry), refused filters, UNSUBSCRIBE;
* message expiry and the properties forwarded unchanged, Payload Format Indicator checks;
* topic aliases inbound and outbound;
* flow control inbound and outbound, queue limits, Maximum Packet Size both ways, the
  longest topic;
* slow consumers (transport back-pressure) and encoding reuse.

Every label cited in this module is checked to exist in the specification text
(``test_cited_labels_exist``); a label followed by "(3.1.1)" is one of MQTT 3.1.1, any other
one of MQTT 5.0.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Sequence

import pytest

from tests.spec import check_cited_labels
from twisted_mqtt.capabilities import Capabilities, Compatibilities
from twisted_mqtt.codec import decode_all, encode
from twisted_mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
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
    Will,
)
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.session import Message, Session
from twisted_mqtt.testing import InMemoryBroker, InMemoryClient

V5 = ProtocolLevel.MQTT_5
V311 = ProtocolLevel.MQTT_3_1_1
V31 = ProtocolLevel.MQTT_3_1
ALL_LEVELS = [V31, V311, V5]
V3_LEVELS = [V31, V311]


# -- helpers ------------------------------------------------------------------------------------


def make_hub(compatibilities: Optional[Compatibilities] = None, **caps: Any) -> InMemoryBroker:
    """An in-memory broker without $SYS publications and with the given capabilities."""
    return InMemoryBroker(capabilities=Capabilities(sys_interval=0, **caps),
                          compatibilities=compatibilities)


def connect(hub: InMemoryBroker, client_id: str, level: int = V5, clean_start: bool = True,
            **props: Any) -> InMemoryClient:
    """A connected client; ``props`` are its CONNECT properties (v5)."""
    client = hub.client(protocol_level=level)
    properties = Properties(**props) if props else NO_PROPERTIES
    ack = client.connect(client_id, clean_start=clean_start, properties=properties)
    assert ack.reason_code == 0, ack
    assert client.received() == []
    return client


def subscribe(client: InMemoryClient, *subscriptions: Subscription, packet_id: int = 1,
              sub_id: Optional[int] = None) -> SubAck:
    """Send SUBSCRIBE and return its SUBACK; any PUBLISH sent along stays readable."""
    props = Properties(subscription_identifiers=(sub_id,)) if sub_id else NO_PROPERTIES
    client.send(Subscribe(packet_id, tuple(subscriptions), props))
    packets = client.received()
    acks = [p for p in packets if isinstance(p, SubAck)]
    assert len(acks) == 1, packets
    assert acks[0].packet_id == packet_id
    client._unread = [p for p in packets if not isinstance(p, SubAck)]
    return acks[0]


def publishes(client: InMemoryClient) -> List[Publish]:
    """The packets received since the last read, all of which must be PUBLISH."""
    packets = client.received()
    assert all(isinstance(p, Publish) for p in packets), packets
    return packets


def one_publish(client: InMemoryClient) -> Publish:
    """The single PUBLISH received since the last read."""
    packets = publishes(client)
    assert len(packets) == 1, packets
    return packets[0]


def pid(packet: Publish) -> int:
    """The packet identifier of a QoS 1/2 PUBLISH."""
    assert packet.packet_id is not None
    return packet.packet_id


def session_of(hub: InMemoryBroker, client_id: str) -> Session:
    return hub.broker.sessions[client_id]


def disconnect_reason(client: InMemoryClient) -> int:
    """The reason code of the DISCONNECT the broker sent before closing the connection."""
    packets = client.received()
    assert client.closed, packets
    assert isinstance(packets[-1], Disconnect), packets
    return packets[-1].reason_code


def ack_all(client: InMemoryClient, packets: Sequence[Publish]) -> None:
    """Acknowledge QoS 1 PUBLISH packets."""
    for packet in packets:
        assert packet.qos == 1 and packet.packet_id is not None
        client.send(PubAck(packet.packet_id))


# -- QoS flows, inbound ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_inbound_qos0_qos1(level: int) -> None:
    """QoS 0 gets no answer [MQTT-4.3.1-1]; QoS 1 gets a PUBACK with the PUBLISH's packet
    identifier [MQTT-4.3.2-4, MQTT-3.3.4-1]; the same identifier after the PUBACK is a new
    message [MQTT-4.3.2-5].
    The QoS 0 PUBLISH delivered has no packet identifier (its payload decodes exactly) and
    DUP 0, which the test client's decoder checks [MQTT-2.2.1-2, MQTT-3.3.1-2]; the PUBACK
    carries the PUBLISH's identifier [MQTT-2.2.1-5]. MQTT 3.1.1: [MQTT-2.3.1-5 (3.1.1),
    MQTT-2.3.1-6 (3.1.1), MQTT-3.3.1-2 (3.1.1), MQTT-3.3.4-1 (3.1.1),
    MQTT-4.3.2-2 (3.1.1)]."""
    hub = make_hub()
    sub = connect(hub, "sub", level)
    subscribe(sub, Subscription("t", 2))
    pub = connect(hub, "pub", level)
    pub.send(Publish("t", b"zero", 0))
    assert pub.received() == []
    assert one_publish(sub).payload == b"zero"
    pub.send(Publish("t", b"one", 1, packet_id=17))
    assert pub.received() == [PubAck(17)]
    pub.send(Publish("t", b"one again", 1, packet_id=17))
    assert pub.received() == [PubAck(17)]
    assert [p.payload for p in publishes(sub)] == [b"one", b"one again"]


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_inbound_qos2_exactly_once(level: int) -> None:
    """QoS 2: PUBREC with the packet identifier [MQTT-4.3.3-8]; a PUBLISH with the same
    identifier before PUBREL (DUP or not) gets PUBREC again and is not delivered a second time
    [MQTT-4.3.3-10]; PUBREL gets PUBCOMP with the same identifier [MQTT-4.3.3-11]; after that
    the identifier starts a new message [MQTT-4.3.3-12].
    Each answer carries the PUBLISH's identifier [MQTT-2.2.1-5, MQTT-3.3.4-1]. MQTT 3.1.1:
    [MQTT-2.3.1-6 (3.1.1), MQTT-3.3.4-1 (3.1.1), MQTT-4.3.3-2 (3.1.1)]."""
    hub = make_hub()
    sub = connect(hub, "sub", level)
    subscribe(sub, Subscription("t", 2))
    pub = connect(hub, "pub", level)
    pub.send(Publish("t", b"m1", 2, packet_id=300))
    assert pub.received() == [PubRec(300)]
    first = one_publish(sub)
    assert (first.payload, first.qos) == (b"m1", 2)
    pub.send(Publish("t", b"m1", 2, dup=True, packet_id=300))
    pub.send(Publish("t", b"m1", 2, packet_id=300))
    assert pub.received() == [PubRec(300), PubRec(300)]
    assert sub.received() == []
    assert session_of(hub, "pub").inbound_qos2 == {300}
    pub.send(PubRel(300))
    assert pub.received() == [PubComp(300)]
    assert session_of(hub, "pub").inbound_qos2 == set()
    pub.send(Publish("t", b"m2", 2, packet_id=300))
    assert pub.received() == [PubRec(300)]
    assert one_publish(sub).payload == b"m2"


def test_inbound_qos2_after_error_pubrec_is_new_v5() -> None:
    """After a PUBREC with a reason code of 0x80 or more, a PUBLISH with the same packet
    identifier is a new message [MQTT-4.3.3-9]."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 2))
    pub = connect(hub, "pub")
    bad = Properties(payload_format_indicator=1)
    pub.send(Publish("t", b"\xff", 2, packet_id=8, properties=bad))
    assert pub.received() == [PubRec(8, 0x99)]
    pub.send(Publish("t", b"fine", 2, packet_id=8, properties=bad))
    assert pub.received() == [PubRec(8)]
    assert one_publish(sub).payload == b"fine"


def test_inbound_qos2_completes_after_expiry() -> None:
    """The broker, as a QoS 2 receiver, finishes the exchange though the message's expiry
    has passed [MQTT-4.3.3-13]: a PUBLISH with a Message Expiry Interval of 2 is answered
    by PUBREC, and a PUBREL sent 10 seconds later, and one sent after a reconnection, gets
    PUBCOMP 0x00; a duplicate PUBLISH in between still gets PUBREC without a second delivery."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 2))
    pub = connect(hub, "pub", session_expiry_interval=600)
    brief = Properties(message_expiry_interval=2)
    pub.send(Publish("t", b"a", 2, packet_id=1, properties=brief),
             Publish("t", b"b", 2, packet_id=2, properties=brief))
    assert pub.received() == [PubRec(1), PubRec(2)]
    assert [p.payload for p in publishes(sub)] == [b"a", b"b"]
    hub.advance(10)
    pub.send(Publish("t", b"a", 2, dup=True, packet_id=1, properties=brief))
    assert pub.received() == [PubRec(1)]
    pub.send(PubRel(1))
    assert pub.received() == [PubComp(1)]
    pub.drop()
    hub.advance(10)
    pub = connect_resumed(hub, "pub")
    pub.send(PubRel(2))
    assert pub.received() == [PubComp(2)]
    assert session_of(hub, "pub").inbound_qos2 == set()
    assert sub.received() == []


@pytest.mark.parametrize("level", V3_LEVELS)
def test_resent_pubrel_subscribe_unsubscribe_with_dup(level: int) -> None:
    """An MQTT 3.1 client sets DUP on a PUBREL, SUBSCRIBE or UNSUBSCRIBE it sends again (3.1
    gives them QoS 1): the exchange goes on.  At 3.1.1 these flags are reserved as 0010 and
    anything else is malformed: the connection is closed [MQTT-3.6.1-1 (3.1.1),
    MQTT-2.2.2-2 (3.1.1)]."""
    hub = make_hub()
    sub = connect(hub, "sub", level)
    subscribe(sub, Subscription("t", 2))
    pub = connect(hub, "pub", level)
    pub.send(Publish("t", b"x", 2, packet_id=5))
    assert pub.received() == [PubRec(5)]
    pub.send_bytes(bytes.fromhex("6a 02 0005"))  # PUBREL, DUP and QoS 1
    if level == V311:
        assert pub.closed and pub.received() == []
        return
    assert pub.received() == [PubComp(5)]
    assert session_of(hub, "pub").inbound_qos2 == set()
    assert [p.payload for p in publishes(sub)] == [b"x"]
    pub.send_bytes(bytes.fromhex("8a 06 0007 0001 75 01"))  # SUBSCRIBE "u", DUP and QoS 1
    pub.send_bytes(bytes.fromhex("aa 05 0008 0001 75"))  # UNSUBSCRIBE "u", DUP and QoS 1
    assert pub.received() == [SubAck(7, (1,)), UnsubAck(8)]
    assert not pub.closed


def test_pubrel_unknown_packet_id_v5() -> None:
    """A PUBREL for an identifier with no QoS 2 exchange is answered by PUBCOMP 0x92 (Packet
    Identifier not found) [MQTT-3.7.2-1]."""
    hub = make_hub()
    pub = connect(hub, "pub")
    pub.send(PubRel(42))
    assert pub.received() == [PubComp(42, 0x92)]
    assert not pub.closed


@pytest.mark.parametrize("level", V3_LEVELS)
def test_pubrel_unknown_packet_id_v3(level: int) -> None:
    """MQTT 3 has no reason codes: the PUBREL is completed [MQTT-4.3.3-11]."""
    hub = make_hub()
    pub = connect(hub, "pub", level)
    pub.send(PubRel(42))
    assert pub.received() == [PubComp(42)]


def test_inbound_qos1_qos2_without_subscribers_v5() -> None:
    """With no matching subscription a v5 PUBACK/PUBREC says 0x10 (No matching subscribers)
    [MQTT-3.4.2-1, MQTT-3.5.2-1]; the QoS 2 exchange still completes."""
    hub = make_hub()
    pub = connect(hub, "pub")
    pub.send(Publish("nobody", b"x", 1, packet_id=1), Publish("nobody", b"x", 2, packet_id=2))
    assert pub.received() == [PubAck(1, 0x10), PubRec(2, 0x10)]
    pub.send(PubRel(2))
    assert pub.received() == [PubComp(2)]


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_dup_not_propagated(level: int) -> None:
    """The DUP flag of an incoming PUBLISH is not propagated to subscribers
    [MQTT-3.3.1-3, MQTT-3.3.1-3 (3.1.1)]; new deliveries go out with DUP 0 [MQTT-4.3.2-2,
    MQTT-4.3.3-2]."""
    hub = make_hub()
    sub = connect(hub, "sub", level)
    subscribe(sub, Subscription("t", 2))
    pub = connect(hub, "pub", level)
    pub.send(Publish("t", b"1", 1, dup=True, packet_id=1))
    pub.send(Publish("t", b"2", 2, dup=True, packet_id=2))
    got = publishes(sub)
    assert [(p.payload, p.qos, p.dup) for p in got] == [(b"1", 1, False), (b"2", 2, False)]


# -- QoS flows, outbound --------------------------------------------------------------------------


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_outbound_qos1(level: int) -> None:
    """QoS 1 to a subscriber: an unused non-zero packet identifier [MQTT-4.3.2-1], DUP 0
    [MQTT-4.3.2-2], unacknowledged until PUBACK [MQTT-4.3.2-3].
    The identifiers are non-zero and unused [MQTT-2.2.1-4]. MQTT 3.1.1: [MQTT-2.3.1-1 (3.1.1),
    MQTT-2.3.1-4 (3.1.1), MQTT-4.3.2-1 (3.1.1)]."""
    hub = make_hub()
    sub = connect(hub, "sub", level)
    subscribe(sub, Subscription("t", 1))
    pub = connect(hub, "pub", level)
    for i in range(3):
        pub.send(Publish("t", b"%d" % i, 1, packet_id=i + 1))
    got = publishes(sub)
    ids = [pid(p) for p in got]
    assert [p.payload for p in got] == [b"0", b"1", b"2"]
    assert all(p.qos == 1 and not p.dup for p in got)
    assert all(ids) and len(set(ids)) == 3
    session = session_of(hub, "sub")
    assert set(session.inflight) == set(ids)
    sub.send(PubAck(ids[1]))
    assert set(session.inflight) == {ids[0], ids[2]}
    sub.send(PubAck(ids[0]), PubAck(ids[2]))
    assert session.inflight == {}
    assert sub.received() == []


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_outbound_qos2(level: int) -> None:
    """QoS 2 to a subscriber: PUBLISH with a fresh identifier and DUP 0 [MQTT-4.3.3-1,
    MQTT-4.3.3-2], unacknowledged until PUBREC [MQTT-4.3.3-3]; PUBREC answered by PUBREL with the
    same identifier [MQTT-4.3.3-4], itself unacknowledged until PUBCOMP [MQTT-4.3.3-5]; the
    identifier stays in use until then.
    The PUBREL carries the PUBLISH's identifier and reason code 0x00 [MQTT-2.2.1-5,
    MQTT-3.6.2-1]. MQTT 3.1.1: [MQTT-2.3.1-6 (3.1.1), MQTT-4.3.3-1 (3.1.1)]."""
    hub = make_hub()
    sub = connect(hub, "sub", level)
    subscribe(sub, Subscription("t", 2))
    pub = connect(hub, "pub", level)
    pub.send(Publish("t", b"a", 2, packet_id=9))
    first = one_publish(sub)
    assert first.qos == 2 and not first.dup and first.packet_id
    session = session_of(hub, "sub")
    assert session.inflight[first.packet_id].state == 0
    sub.send(PubRec(first.packet_id))
    assert sub.received() == [PubRel(first.packet_id)]
    assert session.inflight[first.packet_id].state == 1
    pub.send(Publish("t", b"b", 2, packet_id=10))
    second = one_publish(sub)
    assert second.packet_id not in (0, None, first.packet_id)
    sub.send(PubComp(first.packet_id))
    assert first.packet_id not in session.inflight
    sub.send(PubRec(second.packet_id))
    assert sub.received() == [PubRel(second.packet_id)]
    sub.send(PubComp(second.packet_id))
    assert session.inflight == {}
    assert sub.received() == []


def test_outbound_pubrec_error_discards_v5() -> None:
    """A PUBREC with a reason code of 0x80 or more acknowledges the PUBLISH: no PUBREL and no
    retransmission [MQTT-4.4.0-2]."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 2))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"a", 2, packet_id=1))
    packet_id = one_publish(sub).packet_id
    assert packet_id is not None
    sub.send(PubRec(packet_id, 0x80))
    assert sub.received() == []
    assert session_of(hub, "sub").inflight == {}


_WRONG_ACKS = {
    "PUBREC for QoS 1": (1, PubRec),
    "PUBCOMP for QoS 1": (1, PubComp),
    "PUBACK for QoS 2": (2, PubAck),
    "PUBCOMP before PUBREC": (2, PubComp),
}


@pytest.mark.parametrize("level", ALL_LEVELS)
@pytest.mark.parametrize("wrong", list(_WRONG_ACKS))
def test_acknowledgement_of_the_wrong_kind(level: int, wrong: str) -> None:
    """An acknowledgement that does not belong to the exchange its packet identifier is in
    (PUBREC or PUBCOMP for a QoS 1 message, PUBACK for a QoS 2 one, PUBCOMP while the PUBREC is
    awaited) is inconsistent with the session state, a Protocol Error: v5 DISCONNECT 0x82
    [MQTT-4.13.1-1], v3 the connection is closed [MQTT-4.8.0-1 (3.1.1)]; the message stays
    unacknowledged [MQTT-4.3.2-3, MQTT-4.3.3-3]."""
    qos, ack = _WRONG_ACKS[wrong]
    hub = make_hub()
    sub = connect(hub, "sub", level, clean_start=False,
                  **({"session_expiry_interval": 600} if level == V5 else {}))
    subscribe(sub, Subscription("t", qos))
    pub = connect(hub, "pub", level)
    pub.send(Publish("t", b"x", qos, packet_id=1))
    packet_id = pid(one_publish(sub))
    sub.send(ack(packet_id))
    if level == V5:
        assert disconnect_reason(sub) == 0x82
    else:
        assert sub.closed and sub.received() == []
    assert list(session_of(hub, "sub").inflight) == [packet_id]


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_acknowledgement_of_an_unknown_packet_id(level: int) -> None:
    """An acknowledgement for a packet identifier not in flight is no error (after a reconnect
    it can be a late one): PUBACK and PUBCOMP are ignored, PUBREC is answered by PUBREL with
    0x92 (Packet Identifier not found) [MQTT-3.6.2-1]; the connection stays open."""
    hub = make_hub()
    sub = connect(hub, "sub", level)
    sub.send(PubAck(7), PubComp(8), PubRec(9))
    assert sub.received() == [PubRel(9, 0x92 if level == V5 else 0)]
    assert not sub.closed


def test_packet_ids_unique_while_in_flight() -> None:
    """Outbound packet identifiers are non-zero and never reused while in flight
    [MQTT-4.3.2-1, MQTT-4.3.3-1], also once they wrap around after 65535
    [MQTT-2.2.1-4]."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 1))
    session = session_of(hub, "sub")
    session.next_id = 65533
    pub = connect(hub, "pub")
    for i in range(6):
        pub.send(Publish("t", b"x", 1, packet_id=i + 1))
    ids = [p.packet_id for p in publishes(sub)]
    assert ids == [65533, 65534, 65535, 1, 2, 3]
    sub.send(PubAck(65534), PubAck(1))
    session.next_id = 65533
    pub.send(Publish("t", b"y", 1, packet_id=50), Publish("t", b"z", 1, packet_id=51))
    assert [p.packet_id for p in publishes(sub)] == [65534, 1]
    assert len(session.inflight) == 6


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_qos_downgraded_to_subscription(level: int) -> None:
    """A message goes out at the lower of its QoS and the subscription's granted QoS
    [MQTT-3.8.4-8, MQTT-4.8.2-3].
    A QoS 0 message goes out at QoS 0 (with DUP 0, which the test client's decoder checks)
    [MQTT-4.3.1-1, MQTT-4.3.1-1 (3.1.1)]; MQTT 3.1.1: [MQTT-3.8.4-6 (3.1.1)]."""
    hub = make_hub()
    subs = {}
    for qos in (0, 1, 2):
        subs[qos] = connect(hub, f"sub{qos}", level)
        assert subscribe(subs[qos], Subscription("t", qos)).reason_codes == (qos,)
    pub = connect(hub, "pub", level)
    for qos in (0, 1, 2):
        pub.send(Publish("t", b"q%d" % qos, qos, packet_id=qos or None))
    pub.received()
    for sub_qos, client in subs.items():
        got = publishes(client)
        assert [(p.payload, p.qos) for p in got] == [
            (b"q%d" % q, min(q, sub_qos)) for q in (0, 1, 2)
        ]


@pytest.mark.parametrize("level", [V311, V5])
def test_maximum_qos_1(level: int) -> None:
    """With Maximum QoS 1, SUBACK grants at most QoS 1 [MQTT-3.8.4-7] and a QoS 2 PUBLISH is a
    Protocol Error: DISCONNECT 0x9B (QoS not supported) [MQTT-3.2.2-11].
    MQTT 3.1.1: [MQTT-3.8.4-5 (3.1.1)]."""
    hub = make_hub(maximum_qos=1)
    client = connect(hub, "c", level)
    ack = subscribe(client, Subscription("a", 0), Subscription("b", 1), Subscription("c", 2))
    assert ack.reason_codes == (0, 1, 1)
    client.send(Publish("b", b"x", 1, packet_id=1))
    assert PubAck(1) in client.received()
    client.send(Publish("b", b"x", 2, packet_id=2))
    if level == V5:
        assert disconnect_reason(client) == 0x9B
    else:
        assert client.closed and client.received() == []


# -- overlapping subscriptions and subscription identifiers ---------------------------------------


def test_overlapping_subscriptions_one_message_v5() -> None:
    """A message matching several subscriptions of one client is sent once at the highest QoS
    [MQTT-3.3.4-2] with the Subscription Identifiers of all of them [MQTT-3.3.4-3,
    MQTT-3.3.4-4]."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("a/+", 0), packet_id=1, sub_id=1)
    subscribe(sub, Subscription("a/#", 1), packet_id=2, sub_id=2)
    subscribe(sub, Subscription("#", 0), packet_id=3)
    subscribe(sub, Subscription("a/b", 0), packet_id=4, sub_id=268435455)
    pub = connect(hub, "pub")
    pub.send(Publish("a/b", b"x", 2, packet_id=1))
    got = one_publish(sub)
    assert got.qos == 1
    assert sorted(got.properties.subscription_identifiers) == [1, 2, 268435455]
    pub.send(Publish("a/c", b"y", 0))
    got = one_publish(sub)
    assert sorted(got.properties.subscription_identifiers) == [1, 2]
    pub.send(Publish("z", b"z", 1, packet_id=2))
    got = one_publish(sub)
    assert got.qos == 0 and got.properties.subscription_identifiers == ()


@pytest.mark.parametrize("level", V3_LEVELS)
def test_overlapping_subscriptions_one_message_v3(level: int) -> None:
    """MQTT 3: one copy at the maximum QoS of the matching subscriptions [MQTT-3.3.5-1
    (3.1.1)]."""
    hub = make_hub()
    sub = connect(hub, "sub", level)
    subscribe(sub, Subscription("a/+", 2), Subscription("a/#", 0), Subscription("+/b", 1))
    pub = connect(hub, "pub", level)
    pub.send(Publish("a/b", b"x", 2, packet_id=1))
    got = one_publish(sub)
    assert got.qos == 2


def test_subscription_identifier_delivered_and_replaced() -> None:
    """The Subscription Identifier of the matching subscription is sent with the message
    [MQTT-3.3.4-3]; subscribing again to the same filter replaces the subscription, identifier
    included [MQTT-3.8.4-3]."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 1), sub_id=7)
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"x", 0))
    assert one_publish(sub).properties.subscription_identifiers == (7,)
    subscribe(sub, Subscription("t", 1), packet_id=2, sub_id=8)
    pub.send(Publish("t", b"x", 0))
    assert one_publish(sub).properties.subscription_identifiers == (8,)
    subscribe(sub, Subscription("t", 1), packet_id=3)
    pub.send(Publish("t", b"x", 0))
    assert one_publish(sub).properties.subscription_identifiers == ()


def test_overlapping_shared_and_plain_subscriptions_separate_copies() -> None:
    """A message matching a client's non-shared subscriptions and two of its shared ones is
    sent as three PUBLISH packets, each with its own packet identifier and the Subscription
    Identifier of the subscription it answers [MQTT-3.3.4-5]: the non-shared copy those of the
    non-shared subscriptions, each shared copy its own, or none when it has none."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t/#", 1), packet_id=1, sub_id=1)
    subscribe(sub, Subscription("+/x", 1), packet_id=2, sub_id=2)
    subscribe(sub, Subscription("$share/g/t/x", 1), packet_id=3, sub_id=3)
    subscribe(sub, Subscription("$share/h/t/+", 1), packet_id=4)
    pub = connect(hub, "pub")
    pub.send(Publish("t/x", b"m", 1, packet_id=1))
    got = publishes(sub)
    assert sorted(p.properties.subscription_identifiers for p in got) == [(), (1, 2), (3,)]
    assert all((p.payload, p.qos) == (b"m", 1) for p in got)
    ids = [pid(p) for p in got]
    assert len(set(ids)) == 3
    ack_all(sub, got)
    assert session_of(hub, "sub").inflight == {}


def test_publish_with_subscription_identifier_is_protocol_error() -> None:
    """A PUBLISH from a client must not carry a Subscription Identifier: DISCONNECT 0x82
    [MQTT-3.3.4-6]."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 1))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"x", 1, packet_id=1,
                     properties=Properties(subscription_identifiers=(3,))))
    assert disconnect_reason(pub) == 0x82
    assert sub.received() == []


# -- shared subscriptions -----------------------------------------------------------------------


def test_shared_round_robin() -> None:
    """Each message on a shared subscription goes to exactly one member, taking turns among
    the online members, each with its granted QoS [MQTT-4.8.2-3]."""
    hub = make_hub()
    members = [connect(hub, f"m{i}", V5 if i != 1 else V311) for i in range(3)]
    for member in members:
        subscribe(member, Subscription("$share/g/t/#", 1))
    other = connect(hub, "other")
    subscribe(other, Subscription("$share/h/t/#", 0), sub_id=4)
    pub = connect(hub, "pub")
    for i in range(9):
        pub.send(Publish("t/x", b"%d" % i, 1, packet_id=i + 1))
    packets = [publishes(m) for m in members]
    for member, got in zip(members, packets):
        ack_all(member, got)
    received = [[p.payload for p in got] for got in packets]
    assert sorted(sum(received, [])) == [b"%d" % i for i in range(9)]
    assert [len(r) for r in received] == [3, 3, 3]
    assert received[0] == [b"0", b"3", b"6"]
    got = publishes(other)  # each group gets every message, with its subscription identifier
    assert [(p.qos, p.properties.subscription_identifiers) for p in got] == [(0, (4,))] * 9
    members[1].drop()
    for _ in range(4):
        pub.send(Publish("t/x", b"again", 0))
    assert len(publishes(members[0])) == 2
    assert len(publishes(members[2])) == 2


def test_shared_round_robin_among_online_members() -> None:
    """Members whose session is offline are passed over while an online member is left."""
    hub = make_hub()
    away = connect(hub, "away", session_expiry_interval=600)
    subscribe(away, Subscription("$share/g/t", 1))
    away.send(Disconnect())
    hub.clock.advance(0)
    here = [connect(hub, f"here{i}") for i in range(2)]
    for member in here:
        subscribe(member, Subscription("$share/g/t", 0))
    pub = connect(hub, "pub")
    for i in range(6):
        pub.send(Publish("t", b"%d" % i, 1, packet_id=i + 1))
    assert [len(publishes(member)) for member in here] == [3, 3]
    assert not session_of(hub, "away").queue


def test_shared_member_leaving_hands_over_qos1() -> None:
    """A member whose connection ends hands its queued and unacknowledged QoS 1 messages to
    another online member; each message still reaches one member only."""
    hub = make_hub()
    m1 = connect(hub, "m1", receive_maximum=1, session_expiry_interval=600)
    m2 = connect(hub, "m2")
    subscribe(m1, Subscription("$share/g/t", 1))
    subscribe(m2, Subscription("$share/g/t", 1))
    pub = connect(hub, "pub")
    for i in range(4):
        pub.send(Publish("t", b"%d" % i, 1, packet_id=i + 1))
    got1 = publishes(m1)
    got2 = publishes(m2)
    assert [p.payload for p in got1] == [b"0"]  # b"2" queued: m1's receive maximum is 1
    assert [p.payload for p in got2] == [b"1", b"3"]
    ack_all(m2, got2)
    assert len(session_of(hub, "m1").queue) == 1
    m1.drop()
    handed = publishes(m2)
    assert sorted(p.payload for p in handed) == [b"0", b"2"]
    assert all(p.qos == 1 for p in handed)
    ack_all(m2, handed)
    assert session_of(hub, "m2").inflight == {}
    assert session_of(hub, "m1").inflight == {} and not session_of(hub, "m1").queue
    m1 = connect(hub, "m1", clean_start=False, session_expiry_interval=600)
    assert m1.received() == []


def test_shared_handover_drops_expired_messages() -> None:
    """A leaving member's message whose Message Expiry Interval has passed is not handed to
    another member: onward delivery to that member would not have started [MQTT-3.3.2-5]."""
    hub = make_hub()
    m1 = connect(hub, "m1")
    m2 = connect(hub, "m2")
    subscribe(m1, Subscription("$share/g/t", 1))
    subscribe(m2, Subscription("$share/g/t", 1))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"brief", 1, packet_id=1,
                     properties=Properties(message_expiry_interval=2)))
    pub.send(Publish("t", b"m2's", 1, packet_id=2))
    pub.send(Publish("t", b"lasting", 1, packet_id=3,
                     properties=Properties(message_expiry_interval=60)))
    assert [p.payload for p in publishes(m1)] == [b"brief", b"lasting"]
    ack_all(m2, publishes(m2))
    hub.advance(5)
    m1.drop()
    handed = one_publish(m2)
    assert handed.payload == b"lasting"
    assert handed.properties.message_expiry_interval == 55


def test_shared_handover_without_other_online_member() -> None:
    """With no other member to take it, a leaving member's unacknowledged message stays in
    flight and is resent on reconnect with its packet identifier and DUP set [MQTT-4.4.0-1,
    MQTT-3.3.1-1]."""
    hub = make_hub()
    m1 = connect(hub, "m1", session_expiry_interval=600)
    subscribe(m1, Subscription("$share/g/t", 1))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"x", 1, packet_id=1))
    first = one_publish(m1)
    m1.drop()
    m1 = connect_resumed(hub, "m1")
    again = one_publish(m1)
    assert (again.payload, again.packet_id, again.dup) == (b"x", first.packet_id, True)
    ack_all(m1, [again])
    assert session_of(hub, "m1").inflight == {} and not session_of(hub, "m1").queue


def test_shared_member_leaving_keeps_qos2_in_flight() -> None:
    """A QoS 2 message in flight to a member whose connection breaks stays with that member
    and is completed when it reconnects [MQTT-4.8.2-4]."""
    hub = make_hub()
    m1 = connect(hub, "m1", session_expiry_interval=600)
    m2 = connect(hub, "m2")
    subscribe(m1, Subscription("$share/g/t", 2))
    subscribe(m2, Subscription("$share/g/t", 2))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"q2", 2, packet_id=1))
    sent = one_publish(m1)
    m1.drop()
    assert m2.received() == []
    m1 = connect_resumed(hub, "m1")
    again = one_publish(m1)
    assert (again.payload, again.packet_id, again.dup) == (b"q2", sent.packet_id, True)


@pytest.mark.parametrize("ending", ("expiry", "at once", "clean start"))
def test_shared_qos2_in_flight_dies_with_the_session(ending: str) -> None:
    """A shared QoS 2 message in flight to a member whose session ends before it reconnects,
    be it after its Session Expiry Interval, at once (interval 0) or by a reconnection with
    Clean Start 1, is never sent to another member [MQTT-4.8.2-5], whether its PUBREC had come
    or not, though that member is online and takes the QoS 1 message handed over."""
    hub = make_hub()
    expiry = {"expiry": 5, "at once": 0, "clean start": 600}[ending]
    m1 = connect(hub, "m1", session_expiry_interval=expiry)
    subscribe(m1, Subscription("$share/g/t", 2))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"unanswered", 2, packet_id=1),
             Publish("t", b"received", 2, packet_id=2),
             Publish("t", b"qos1", 1, packet_id=3))
    first, second, third = publishes(m1)
    m1.send(PubRec(pid(second)))
    assert m1.received() == [PubRel(pid(second))]
    m2 = connect(hub, "m2")
    subscribe(m2, Subscription("$share/g/t", 2))
    m1.drop()
    assert [(p.payload, p.qos) for p in publishes(m2)] == [(b"qos1", 1)]
    if ending == "expiry":
        assert set(session_of(hub, "m1").inflight) == {pid(first), pid(second)}
        hub.advance(5)
    elif ending == "clean start":
        m1 = connect(hub, "m1")
        assert m1.received() == []
    assert "m1" not in hub.broker.sessions or session_of(hub, "m1").inflight == {}
    hub.advance(60)
    assert m2.received() == []
    pub.send(Publish("t", b"later", 2, packet_id=4))
    assert [p.payload for p in publishes(m2)] == [b"later"]


def test_shared_error_acknowledgement_discards() -> None:
    """A member answering a shared message's PUBLISH with PUBACK or PUBREC 0x80 or more ends
    its delivery: the message is discarded, not resent, and not sent to another member
    [MQTT-4.8.2-6], not even when that member's connection ends later."""
    hub = make_hub()
    m1 = connect(hub, "m1", session_expiry_interval=600)
    subscribe(m1, Subscription("$share/g/t", 2))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"q1", 1, packet_id=1), Publish("t", b"q2", 2, packet_id=2))
    first, second = publishes(m1)
    m2 = connect(hub, "m2")
    subscribe(m2, Subscription("$share/g/t", 2))
    m1.send(PubAck(pid(first), 0x80), PubRec(pid(second), 0x87))
    assert m1.received() == []
    assert session_of(hub, "m1").inflight == {}
    assert m2.received() == []
    m1.drop()
    assert m2.received() == []
    m1 = connect_resumed(hub, "m1")
    assert m1.received() == []
    pub.send(Publish("t", b"later", 1, packet_id=3), Publish("t", b"later", 1, packet_id=4))
    assert [len(publishes(m)) for m in (m1, m2)] == [1, 1]


def connect_resumed(hub: InMemoryBroker, client_id: str, level: int = V5) -> InMemoryClient:
    """Reconnect to an existing session; packets resent on reconnect stay readable."""
    client = hub.client(protocol_level=level)
    props = Properties(session_expiry_interval=600) if level == V5 else NO_PROPERTIES
    ack = client.connect(client_id, clean_start=False, properties=props)
    assert ack.reason_code == 0 and ack.session_present
    return client


def test_shared_subscription_gets_no_retained_messages() -> None:
    """Retained messages are not sent when a shared subscription is made."""
    hub = make_hub()
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"kept", 1, retain=True, packet_id=1))
    member = connect(hub, "m")
    subscribe(member, Subscription("$share/g/t", 1), Subscription("$share/g/#", 1))
    assert member.received() == []
    plain = connect(hub, "plain")
    subscribe(plain, Subscription("t", 1))
    assert one_publish(plain).retain


def test_shared_subscription_no_local_is_protocol_error() -> None:
    """No Local on a shared subscription is a Protocol Error [MQTT-3.8.3-4]."""
    hub = make_hub()
    client = connect(hub, "c")
    client.send(Subscribe(1, (Subscription("$share/g/t", 1, no_local=True),)))
    assert disconnect_reason(client) == 0x82
    assert hub.broker.tree.count == 0


# -- subscription options and retained messages ---------------------------------------------------


def test_no_local() -> None:
    """With No Local, a client's own messages are not forwarded to it [MQTT-3.8.3-3]; its other
    subscriptions and other clients still get them."""
    hub = make_hub()
    me = connect(hub, "me")
    subscribe(me, Subscription("t", 1, no_local=True), sub_id=1)
    other = connect(hub, "other")
    subscribe(other, Subscription("t", 1))
    me.send(Publish("t", b"mine", 1, packet_id=1))
    assert me.received() == [PubAck(1)]
    assert one_publish(other).payload == b"mine"
    other.send(Publish("t", b"theirs", 0))
    assert one_publish(me).payload == b"theirs"
    subscribe(me, Subscription("#", 0), packet_id=2, sub_id=2)
    me.send(Publish("t", b"mine again", 1, packet_id=2))
    echo, ack = me.received()
    assert ack == PubAck(2)
    assert isinstance(echo, Publish)
    assert (echo.qos, echo.properties.subscription_identifiers) == (0, (2,))


def test_retain_as_published() -> None:
    """Retain As Published 0: RETAIN 0 when forwarding [MQTT-3.3.1-12]; 1: RETAIN as
    published [MQTT-3.3.1-13]."""
    hub = make_hub()
    rap0 = connect(hub, "rap0")
    subscribe(rap0, Subscription("t", 1, retain_as_published=False))
    rap1 = connect(hub, "rap1")
    subscribe(rap1, Subscription("t", 1, retain_as_published=True))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"r", 1, retain=True, packet_id=1))
    pub.send(Publish("t", b"n", 1, retain=False, packet_id=2))
    assert [p.retain for p in publishes(rap0)] == [False, False]
    assert [p.retain for p in publishes(rap1)] == [True, False]


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_retained_store_replace_delete(level: int) -> None:
    """A retained message replaces the previous one and is sent with RETAIN 1 to new
    subscriptions [MQTT-3.3.1-5, MQTT-3.3.1-6 (3.1.1), MQTT-3.3.1-8 (3.1.1)]; RETAIN 0 leaves it
    alone [MQTT-3.3.1-8, MQTT-3.3.1-12 (3.1.1)]; an empty retained payload deletes it and is not
    stored [MQTT-3.3.1-6, MQTT-3.3.1-7, MQTT-3.3.1-10 (3.1.1), MQTT-3.3.1-11 (3.1.1)], yet is
    forwarded normally, with RETAIN 0 to established subscriptions [MQTT-3.3.1-9 (3.1.1)].
    MQTT 3.1.1: the retained message keeps its QoS [MQTT-3.3.1-5 (3.1.1)], a retained QoS 0
    message discards the previous one [MQTT-3.3.1-7 (3.1.1)], and the topics sent match the
    filters [MQTT-3.3.2-3 (3.1.1)]."""
    hub = make_hub()
    pub = connect(hub, "pub", level)
    live = connect(hub, "live", level)
    subscribe(live, Subscription("t/#", 1))
    pub.send(Publish("t/a", b"first", 1, retain=True, packet_id=1))
    pub.send(Publish("t/a", b"second", 1, retain=True, packet_id=2))
    pub.send(Publish("t/a", b"not retained", 1, packet_id=3))
    pub.send(Publish("t/b", b"other", 0, retain=True))
    assert [(p.payload, p.retain) for p in publishes(live)] == [
        (b"first", False), (b"second", False), (b"not retained", False), (b"other", False)
    ]
    late = connect(hub, "late", level)
    subscribe(late, Subscription("t/#", 2))
    got = sorted((p.payload, p.qos, p.retain) for p in publishes(late))
    assert got == [(b"other", 0, True), (b"second", 1, True)]
    pub.send(Publish("t/a", b"", 0, retain=True))
    assert [(p.payload, p.retain) for p in publishes(live)] == [(b"", False)]
    assert [(p.payload, p.retain) for p in publishes(late)] == [(b"", False)]
    assert set(hub.broker.retained) == {"t/b"}
    later = connect(hub, "later", level)
    subscribe(later, Subscription("t/a", 1), Subscription("t/+", 1), packet_id=5)
    assert [(p.topic, p.retain) for p in publishes(later)] == [("t/b", True)]


def test_retained_wildcards_and_dollar_topics() -> None:
    """Retained messages are matched against wildcard filters like live ones, a leading
    wildcard not matching a ``$`` topic [MQTT-4.7.2-1].
    The topics sent match the filters [MQTT-3.3.2-3]."""
    hub = make_hub()
    hub.broker.publish(Message("$internal/x", b"hidden", 0, True))
    pub = connect(hub, "pub")
    pub.send(Publish("a/b/c", b"abc", 0, retain=True), Publish("a", b"a", 0, retain=True))
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("#", 0))
    assert sorted(p.topic for p in publishes(sub)) == ["a", "a/b/c"]
    subscribe(sub, Subscription("a/#", 0), packet_id=2)
    assert sorted(p.topic for p in publishes(sub)) == ["a", "a/b/c"]
    subscribe(sub, Subscription("$internal/+", 0), packet_id=3)
    assert [p.payload for p in publishes(sub)] == [b"hidden"]


def test_retain_handling() -> None:
    """Retain Handling 0 sends retained messages on every SUBSCRIBE [MQTT-3.3.1-9], 1 only
    when the subscription is new [MQTT-3.3.1-10], 2 never [MQTT-3.3.1-11].
    Each SUBACK has its SUBSCRIBE's packet identifier, checked by ``subscribe`` [MQTT-2.2.1-6,
    MQTT-3.8.4-2]; a replacing subscription with Retain Handling 0 gets the retained
    message again [MQTT-3.8.4-4]."""
    hub = make_hub()
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"kept", 0, retain=True))
    counts: Dict[int, List[int]] = {}
    for handling in (0, 1, 2):
        client = connect(hub, f"rh{handling}")
        counts[handling] = []
        for packet_id in (1, 2):
            subscribe(client, Subscription("t", 0, retain_handling=handling),
                      packet_id=packet_id)
            counts[handling].append(len(publishes(client)))
    assert counts == {0: [1, 1], 1: [1, 0], 2: [0, 0]}


@pytest.mark.parametrize("level", V3_LEVELS)
def test_identical_filter_replaces_subscription_v3(level: int) -> None:
    """MQTT 3: a SUBSCRIBE with the filter of an existing subscription replaces it, new
    maximum QoS included; the retained message is sent again; and the flow of publications is
    not interrupted: the message in flight and those queued behind it are all delivered, once
    each [MQTT-3.8.4-3 (3.1.1)]."""
    hub = make_hub(maximum_inflight=1)
    pub = connect(hub, "pub", level)
    pub.send(Publish("t", b"kept", 1, retain=True, packet_id=1))
    sub = connect(hub, "sub", level)
    assert subscribe(sub, Subscription("t", 1)).reason_codes == (1,)
    ack_all(sub, [one_publish(sub)])
    for i in range(3):
        pub.send(Publish("t", b"%d" % i, 1, packet_id=10 + i))
    in_flight = one_publish(sub)
    assert in_flight.payload == b"0"
    assert subscribe(sub, Subscription("t", 2), packet_id=2).reason_codes == (2,)
    assert list(session_of(hub, "sub").subscriptions) == ["t"]
    got = [in_flight]
    for _ in range(3):
        ack_all(sub, got[-1:])
        got.append(one_publish(sub))
    ack_all(sub, got[-1:])
    assert sub.received() == []
    assert [(p.payload, p.qos, p.retain) for p in got] == [
        (b"0", 1, False), (b"1", 1, False), (b"2", 1, False), (b"kept", 1, True)]
    assert session_of(hub, "sub").inflight == {}
    pub.send(Publish("t", b"after", 2, packet_id=20))
    assert [(p.payload, p.qos) for p in publishes(sub)] == [(b"after", 2)]


def test_retained_with_subscription_identifier_and_qos() -> None:
    """A retained message sent on subscription carries that subscription's identifier
    [MQTT-3.3.4-3] and goes out at the lower of its QoS and the granted QoS [MQTT-3.8.4-8]."""
    hub = make_hub()
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"kept", 2, retain=True, packet_id=1))
    pub.received()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 1), sub_id=99)
    got = one_publish(sub)
    assert (got.qos, got.retain, got.properties.subscription_identifiers) == (1, True, (99,))


def test_maximum_retained_messages() -> None:
    """Beyond ``maximum_retained_messages`` a new retained topic is not stored (and counted);
    existing ones can still be replaced or deleted."""
    hub = make_hub(maximum_retained_messages=2)
    pub = connect(hub, "pub")
    for topic in ("r/1", "r/2", "r/3"):
        pub.send(Publish(topic, topic.encode(), 0, retain=True))
    assert set(hub.broker.retained) == {"r/1", "r/2"}
    assert hub.broker.stats.retained_dropped == 1
    pub.send(Publish("r/2", b"new", 0, retain=True))
    assert hub.broker.retained["r/2"].payload == b"new"
    pub.send(Publish("r/1", b"", 0, retain=True), Publish("r/3", b"now", 0, retain=True))
    assert set(hub.broker.retained) == {"r/2", "r/3"}


def test_retained_message_expiry() -> None:
    """A retained message is not sent once its Message Expiry Interval has passed
    [MQTT-3.3.2-5], and the expiry sent with it is what is left of the interval
    [MQTT-3.3.2-6]."""
    hub = make_hub()
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"short", 0, retain=True,
                     properties=Properties(message_expiry_interval=10)))
    hub.advance(4)
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 0))
    assert one_publish(sub).properties.message_expiry_interval == 6
    hub.advance(6)
    assert "t" not in hub.broker.retained
    late = connect(hub, "late")
    subscribe(late, Subscription("t", 0))
    assert late.received() == []


def test_retained_message_expiry_capability() -> None:
    """``retained_message_expiry`` bounds the life of retained messages without their own
    expiry."""
    hub = make_hub(retained_message_expiry=5)
    pub = connect(hub, "pub", V311)
    pub.send(Publish("t", b"x", 0, retain=True))
    hub.advance(4)
    assert "t" in hub.broker.retained
    hub.advance(2)
    assert "t" not in hub.broker.retained


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_refused_filter(level: int) -> None:
    """A refused filter gets SUBACK 0x80 while the other filters of the SUBSCRIBE are granted,
    in order [MQTT-3.8.4-5, MQTT-3.8.4-6, MQTT-3.9.3-1]; nothing is delivered on it.
    Every SUBSCRIBE gets a SUBACK, with its packet identifier (checked by ``subscribe``), and
    only valid codes [MQTT-3.8.4-1, MQTT-3.9.3-2]. MQTT 3.1.1: [MQTT-2.3.1-7 (3.1.1),
    MQTT-3.8.4-1 (3.1.1), MQTT-3.8.4-2 (3.1.1), MQTT-3.8.4-4 (3.1.1), MQTT-3.8.4-5 (3.1.1),
    MQTT-3.9.3-1 (3.1.1), MQTT-3.9.3-2 (3.1.1)]."""
    hub = make_hub(refused_filters=("test/nosubscribe",))
    client = connect(hub, "c", level)
    ack = subscribe(client, Subscription("a", 1), Subscription("test/nosubscribe", 1),
                    Subscription("b", 2))
    assert ack.reason_codes == (1, 0x80, 2)
    pub = connect(hub, "pub", level)
    pub.send(Publish("test/nosubscribe", b"x", 0))
    assert client.received() == []


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_wildcard_subscriptions_unavailable(level: int) -> None:
    """With ``wildcard_subscription_available=False`` every filter holding a wildcard is
    refused, SUBACK 0x80 (MQTT 5: 0xA2, Wildcard Subscriptions not supported), while the
    plain filters of the same SUBSCRIBE are granted [MQTT-3.8.3-2 (3.1.1)]; the refused
    filters deliver nothing."""
    hub = make_hub(wildcard_subscription_available=False)
    client = connect(hub, "c", level)
    ack = subscribe(client, Subscription("a/+", 1), Subscription("a/b", 1),
                    Subscription("#", 0), Subscription("a/#", 2), Subscription("+", 1),
                    Subscription("c", 2))
    refused = 0xA2 if level == V5 else 0x80
    assert ack.reason_codes == (refused, 1, refused, refused, refused, 2)
    assert set(session_of(hub, "c").subscriptions) == {"a/b", "c"}
    pub = connect(hub, "pub", level)
    pub.send(Publish("a/b", b"x", 1, packet_id=1), Publish("a/c", b"y", 1, packet_id=2),
             Publish("z", b"z", 1, packet_id=3))
    assert [p.payload for p in publishes(client)] == [b"x"]


def test_unsubscribe_v5() -> None:
    """UNSUBACK has one reason code per filter, in order: 0x00 if the subscription existed
    (it is deleted), 0x11 otherwise [MQTT-3.10.4-1, MQTT-3.10.4-4, MQTT-3.10.4-5,
    MQTT-3.10.4-6, MQTT-3.11.3-1, MQTT-3.11.3-2]; nothing more is delivered on it
    [MQTT-3.10.4-2]. The UNSUBACK has the UNSUBSCRIBE's packet identifier [MQTT-2.2.1-6]."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("a/#", 1), Subscription("$share/g/b", 1))
    sub.send(Unsubscribe(5, ("a/#", "nope", "$share/g/b", "a/+")))
    assert sub.received() == [UnsubAck(5, (0, 0x11, 0, 0x11))]
    pub = connect(hub, "pub")
    pub.send(Publish("a/x", b"x", 1, packet_id=1), Publish("b", b"y", 0))
    assert sub.received() == []
    sub.send(Unsubscribe(6, ("a/#",)))
    assert sub.received() == [UnsubAck(6, (0x11,))]


@pytest.mark.parametrize("level", V3_LEVELS)
def test_unsubscribe_v3(level: int) -> None:
    """MQTT 3: UNSUBACK carries only the packet identifier, whether or not a subscription was
    deleted [MQTT-3.10.4-4 (3.1.1), MQTT-3.10.4-5 (3.1.1)]; no new messages afterwards
    [MQTT-3.10.4-2 (3.1.1)].
    One UNSUBACK, with the packet identifier, answers several filters, and the matching
    subscription is deleted [MQTT-2.3.1-7 (3.1.1), MQTT-3.10.4-1 (3.1.1),
    MQTT-3.10.4-6 (3.1.1)]."""
    hub = make_hub()
    sub = connect(hub, "sub", level)
    subscribe(sub, Subscription("a", 0))
    sub.send(Unsubscribe(3, ("a", "b")))
    assert sub.received() == [UnsubAck(3)]
    pub = connect(hub, "pub", level)
    pub.send(Publish("a", b"x", 0))
    assert sub.received() == []


def test_unsubscribe_completes_messages_in_flight() -> None:
    """QoS 1/2 messages already sent are completed after UNSUBSCRIBE [MQTT-3.10.4-3]."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 2))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"x", 2, packet_id=1))
    sent = one_publish(sub)
    assert sent.packet_id is not None
    sub.send(Unsubscribe(2, ("t",)))
    assert sub.received() == [UnsubAck(2, (0,))]
    sub.send(PubRec(sent.packet_id))
    assert sub.received() == [PubRel(sent.packet_id)]
    sub.send(PubComp(sent.packet_id))
    assert session_of(hub, "sub").inflight == {}


@pytest.mark.parametrize("level", V3_LEVELS)
def test_unsubscribe_v3_completes_messages_in_flight(level: int) -> None:
    """MQTT 3: QoS 1 and QoS 2 deliveries started before UNSUBSCRIBE are completed after it
    [MQTT-3.10.4-3 (3.1.1)]: acknowledgements are taken, PUBREC answered by PUBREL, and a
    message left unacknowledged is resent (DUP 1, same identifier) when the client returns."""
    hub = make_hub()
    sub = connect(hub, "sub", level, clean_start=False)
    subscribe(sub, Subscription("t", 2))
    pub = connect(hub, "pub", level)
    pub.send(Publish("t", b"one", 1, packet_id=1), Publish("t", b"two", 2, packet_id=2),
             Publish("t", b"three", 2, packet_id=3))
    one, two, three = publishes(sub)
    sub.send(Unsubscribe(2, ("t",)))
    assert sub.received() == [UnsubAck(2)]
    sub.send(PubAck(pid(one)), PubRec(pid(two)))
    assert sub.received() == [PubRel(pid(two))]
    sub.send(PubComp(pid(two)))
    assert list(session_of(hub, "sub").inflight) == [pid(three)]
    sub.drop()
    sub = hub.client(protocol_level=level)
    assert sub.connect("sub", clean_start=False).reason_code == 0
    again = one_publish(sub)
    assert (again.payload, again.packet_id, again.dup) == (b"three", pid(three), True)
    sub.send(PubRec(pid(three)))
    assert sub.received() == [PubRel(pid(three))]
    sub.send(PubComp(pid(three)))
    assert session_of(hub, "sub").inflight == {}
    pub.send(Publish("t", b"after", 1, packet_id=4))
    assert sub.received() == []


# -- message expiry and forwarded properties ------------------------------------------------------


def test_message_expiry_while_queued() -> None:
    """The Message Expiry Interval sent on is the received one minus the time the message
    waited [MQTT-3.3.2-6]; a message whose interval passed before delivery started is dropped
    [MQTT-3.3.2-5]."""
    hub = make_hub()
    sub = connect(hub, "sub", session_expiry_interval=600)
    subscribe(sub, Subscription("t", 1))
    sub.send(Disconnect())
    hub.clock.advance(0)
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"long", 1, packet_id=1,
                     properties=Properties(message_expiry_interval=30)))
    pub.send(Publish("t", b"short", 1, packet_id=2,
                     properties=Properties(message_expiry_interval=5)))
    pub.send(Publish("t", b"forever", 1, packet_id=3))
    hub.advance(10)
    expired_before = hub.broker.stats.expired
    sub = connect_resumed(hub, "sub")
    got = publishes(sub)
    assert [p.payload for p in got] == [b"long", b"forever"]
    assert got[0].properties.message_expiry_interval == 20
    assert got[1].properties.message_expiry_interval is None
    assert hub.broker.stats.expired == expired_before + 1


@pytest.mark.parametrize(("now", "interval"), [(1.1, 0xFFFFFFFF), (4.01, 60)])
def test_message_expiry_never_above_the_received_interval(now: float, interval: int) -> None:
    """A message sent on at once carries its received Message Expiry Interval, never one more
    second [MQTT-3.3.2-6]: at these fractional times ``ceil(expires_at - now)`` rounds up, which
    gave 61 for 60 and, for 0xFFFFFFFF, a value that does not fit the Four Byte Integer (the
    publisher was disconnected with 0x83 and the subscriber got nothing)."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("exp/t", 1))
    pub = connect(hub, "pub")
    hub.clock.advance(now)
    hub.broker.tick()
    # QoS 1 PUBLISH to "exp/t", packet id 1, Message Expiry Interval ``interval``, payload "x".
    pub.send_bytes(bytes.fromhex("3210 0005 6578702f74 0001 05 02") + interval.to_bytes(4, "big")
                   + b"x")
    assert pub.received() == [PubAck(1)]
    got = one_publish(sub)
    assert (got.topic, got.payload, got.properties.message_expiry_interval) == (
        "exp/t", b"x", interval)


def test_message_expiry_forwarded_when_online() -> None:
    """A message delivered at once keeps its whole Message Expiry Interval [MQTT-3.3.2-6]."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 0))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"x", 0, properties=Properties(message_expiry_interval=77)))
    assert one_publish(sub).properties.message_expiry_interval == 77


def test_message_expiry_in_flow_controlled_queue() -> None:
    """A message waiting behind the receive maximum expires there [MQTT-3.3.2-5].
    The session (Session Expiry Interval 0) keeps its queue while the connection is open
    [MQTT-4.1.0-1]."""
    hub = make_hub()
    sub = connect(hub, "sub", receive_maximum=1)
    subscribe(sub, Subscription("t", 1))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"first", 1, packet_id=1))
    pub.send(Publish("t", b"brief", 1, packet_id=2,
                     properties=Properties(message_expiry_interval=2)))
    pub.send(Publish("t", b"third", 1, packet_id=3,
                     properties=Properties(message_expiry_interval=100)))
    first = one_publish(sub)
    hub.advance(3)
    ack_all(sub, [first])
    third = one_publish(sub)
    assert third.payload == b"third"
    assert third.properties.message_expiry_interval == 97


def test_properties_forwarded_unchanged() -> None:
    """Payload Format Indicator [MQTT-3.3.2-4], Response Topic [MQTT-3.3.2-15], Correlation
    Data [MQTT-3.3.2-16], User Properties in order [MQTT-3.3.2-17, MQTT-3.3.2-18] and Content
    Type [MQTT-3.3.2-20] reach every subscriber unaltered, at every QoS; an MQTT 3.1.1
    subscriber gets the message without them.
    The Response Topic and Content Type forwarded are the UTF-8 strings decoded on receipt
    [MQTT-3.3.2-13, MQTT-3.3.2-19]."""
    hub = make_hub()
    props = Properties(
        payload_format_indicator=1,
        content_type="application/json; charset=utf-8",
        response_topic="reply/to/me",
        correlation_data=b"\x00\x01corr",
        user_properties=(("z", "1"), ("a", "2"), ("z", "0"), ("", "")),
    )
    subs = []
    for qos in (0, 1, 2):
        subs.append(connect(hub, f"sub{qos}"))
        subscribe(subs[-1], Subscription("t", qos))
    v3 = connect(hub, "v3", V311)
    subscribe(v3, Subscription("t", 2))
    pub = connect(hub, "pub")
    for qos in (0, 1, 2):
        pub.send(Publish("t", b'{"k": "v"}', qos, packet_id=qos or None, properties=props))
    for client in subs:
        for got in publishes(client):
            assert got.payload == b'{"k": "v"}'
            assert got.properties == props
    assert [p.payload for p in publishes(v3)] == [b'{"k": "v"}'] * 3


def test_payload_format_invalid() -> None:
    """Payload Format Indicator 1 with a payload that is not UTF-8 is refused [MQTT-3.3.2-4]:
    PUBACK/PUBREC 0x99 at QoS 1/2 [MQTT-3.4.2-1, MQTT-3.5.2-1], DISCONNECT 0x99 at QoS 0; it is
    not forwarded."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 2))
    pub = connect(hub, "pub")
    bad = Properties(payload_format_indicator=1)
    pub.send(Publish("t", b"\xff\xfe", 1, packet_id=4, properties=bad))
    pub.send(Publish("t", b"\xc3\x28", 2, packet_id=5, properties=bad))
    assert pub.received() == [PubAck(4, 0x99), PubRec(5, 0x99)]
    pub.send(Publish("t", "ünïcode".encode(), 1, packet_id=6, properties=bad))
    assert pub.received() == [PubAck(6)]
    assert [p.payload for p in publishes(sub)] == ["ünïcode".encode()]
    pub.send(Publish("t", b"\x80", 0, properties=bad))
    assert disconnect_reason(pub) == 0x99
    assert sub.received() == []


# -- topic aliases --------------------------------------------------------------------------------


def test_inbound_topic_alias() -> None:
    """A client sets a Topic Alias with a topic name and then uses it with an empty one
    [MQTT-3.3.2-12]; an alias can be remapped; subscribers get the full topic and no alias."""
    hub = make_hub(topic_alias_maximum=3)
    sub = connect(hub, "sub", V311)
    subscribe(sub, Subscription("#", 1))
    v5sub = connect(hub, "v5sub")
    subscribe(v5sub, Subscription("#", 1))
    pub = connect(hub, "pub")
    pub.send(Publish("long/topic/name", b"1", 0, properties=Properties(topic_alias=3)))
    pub.send(Publish("", b"2", 1, packet_id=1, properties=Properties(topic_alias=3)))
    pub.send(Publish("other", b"3", 0, properties=Properties(topic_alias=3)))
    pub.send(Publish("", b"4", 0, properties=Properties(topic_alias=3)))
    assert pub.received() == [PubAck(1)]
    assert [(p.topic, p.payload) for p in publishes(sub)] == [
        ("long/topic/name", b"1"), ("long/topic/name", b"2"), ("other", b"3"), ("other", b"4")
    ]
    assert all(p.properties.topic_alias is None for p in publishes(v5sub))


def test_inbound_topic_alias_above_maximum() -> None:
    """A Topic Alias above the Topic Alias Maximum the broker sent in CONNACK [MQTT-3.3.2-9]:
    DISCONNECT 0x94 (Topic Alias invalid).
    Both enforce client obligations: no alias above the maximum, none at all when it is 0
    [MQTT-3.2.2-17, MQTT-3.2.2-18]."""
    hub = make_hub(topic_alias_maximum=2)
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"x", 0, properties=Properties(topic_alias=3)))
    assert disconnect_reason(pub) == 0x94
    hub = make_hub(topic_alias_maximum=0)
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"x", 0, properties=Properties(topic_alias=1)))
    assert disconnect_reason(pub) == 0x94


def test_inbound_topic_alias_0() -> None:
    """A Topic Alias of 0 [MQTT-3.3.2-8] is a Protocol Error answered, as section 3.3.4 says,
    with DISCONNECT 0x94 (Topic Alias invalid); nothing is routed."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 0))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"x", 1, packet_id=1, properties=Properties(topic_alias=0)))
    assert disconnect_reason(pub) == 0x94
    assert sub.received() == []


def test_inbound_topic_alias_unknown() -> None:
    """An empty topic name with an alias that was never set: DISCONNECT 0x82."""
    hub = make_hub()
    pub = connect(hub, "pub")
    pub.send(Publish("", b"x", 1, packet_id=1, properties=Properties(topic_alias=1)))
    assert disconnect_reason(pub) == 0x82


def test_inbound_topic_alias_not_carried_over() -> None:
    """Topic Alias mappings end with the Network Connection [MQTT-3.3.2-7]."""
    hub = make_hub()
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 0))
    pub = connect(hub, "pub", session_expiry_interval=600)
    pub.send(Publish("t", b"x", 0, properties=Properties(topic_alias=1)))
    assert one_publish(sub).topic == "t"
    pub.send(Disconnect())
    hub.clock.advance(0)
    pub = connect_resumed(hub, "pub")
    pub.send(Publish("", b"y", 0, properties=Properties(topic_alias=1)))
    assert disconnect_reason(pub) == 0x82
    assert sub.received() == []


def test_outbound_topic_aliases() -> None:
    """To a client with Topic Alias Maximum 2 the broker sends a topic with its alias first,
    then the alias with an empty topic, and never an alias above 2 [MQTT-3.3.2-11,
    MQTT-3.1.2-26]; a client without a Topic Alias Maximum gets no alias [MQTT-3.1.2-27].
    Aliases are numbered from 1, never 0 [MQTT-3.3.2-8]."""
    hub = make_hub()
    aliased = connect(hub, "aliased", topic_alias_maximum=2)
    subscribe(aliased, Subscription("#", 1))
    plain = connect(hub, "plain")
    subscribe(plain, Subscription("#", 1))
    zero = connect(hub, "zero", topic_alias_maximum=0)
    subscribe(zero, Subscription("#", 1))
    pub = connect(hub, "pub")
    topics = ["t/1", "t/1", "t/2", "t/3", "t/2", "t/1", "t/3"]
    for i, topic in enumerate(topics):
        qos = i % 3 and 1
        pub.send(Publish(topic, b"%d" % i, qos, packet_id=i + 1 if qos else None))
    got = publishes(aliased)
    assert [(p.topic, p.properties.topic_alias) for p in got] == [
        ("t/1", 1), ("", 1), ("t/2", 2), ("t/3", None), ("", 2), ("", 1), ("t/3", None)
    ]
    for client in (plain, zero):
        got = publishes(client)
        assert [p.topic for p in got] == topics
        assert all(p.properties.topic_alias is None for p in got)


def test_outbound_topic_aliases_not_carried_over() -> None:
    """After a reconnect the broker sets its aliases up again, topic included
    [MQTT-3.3.2-7]."""
    hub = make_hub()
    sub = connect(hub, "sub", topic_alias_maximum=5, session_expiry_interval=600)
    subscribe(sub, Subscription("t", 0))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"1", 0), Publish("t", b"2", 0))
    assert [p.topic for p in publishes(sub)] == ["t", ""]
    sub.drop()
    sub = hub.client(protocol_level=V5)
    sub.connect("sub", clean_start=False,
                properties=Properties(topic_alias_maximum=5, session_expiry_interval=600))
    pub.send(Publish("t", b"3", 0))
    got = one_publish(sub)
    assert (got.topic, got.properties.topic_alias) == ("t", 1)


# -- flow control ---------------------------------------------------------------------------------


def test_inbound_receive_maximum() -> None:
    """More unreleased QoS 2 PUBLISH packets than the broker's Receive Maximum: DISCONNECT 0x93
    [MQTT-3.3.4-7]."""
    hub = make_hub(receive_maximum=2)
    pub = hub.client(protocol_level=V5)
    assert pub.connect("pub").properties.receive_maximum == 2
    pub.send(Publish("t", b"1", 2, packet_id=1), Publish("t", b"2", 2, packet_id=2))
    assert [type(p) for p in pub.received()] == [PubRec, PubRec]
    pub.send(PubRel(1))
    assert pub.received() == [PubComp(1)]
    pub.send(Publish("t", b"3", 2, packet_id=3))
    assert [type(p) for p in pub.received()] == [PubRec]
    pub.send(Publish("t", b"4", 2, packet_id=4))
    assert disconnect_reason(pub) == 0x93


def test_outbound_receive_maximum() -> None:
    """The broker never has more than the client's Receive Maximum QoS 1/2 PUBLISH packets
    unacknowledged [MQTT-3.3.4-9, MQTT-4.9.0-2]; the others are sent as acknowledgements
    arrive, each tracked until acknowledged; QoS 0 is not held back and other packets are not
    delayed [MQTT-3.3.4-10, MQTT-4.9.0-3].
    The send quota starts at the client's Receive Maximum [MQTT-4.9.0-1], and the messages
    arrive in publication order [MQTT-4.6.0-5]."""
    hub = make_hub()
    sub = connect(hub, "sub", receive_maximum=2)
    subscribe(sub, Subscription("t", 2))
    session = session_of(hub, "sub")
    pub = connect(hub, "pub")
    for i in range(6):
        pub.send(Publish("t", b"%d" % i, 1 + i % 2, packet_id=i + 1))
    first = publishes(sub)
    assert [p.payload for p in first] == [b"0", b"1"]
    assert len(session.inflight) == 2 and len(session.queue) == 4
    pub.send(Publish("t", b"qos0", 0))
    assert [p.payload for p in publishes(sub)] == [b"qos0"]
    sub.send(PingReq())
    assert len(sub.received()) == 1  # PINGRESP is not delayed
    received = [p.payload for p in first]
    outstanding = {pid(p): p for p in first}
    while outstanding:
        assert len(outstanding) <= 2
        packet_id, packet = min(outstanding.items())
        del outstanding[packet_id]
        if packet.qos == 1:
            sub.send(PubAck(packet_id))
        else:
            sub.send(PubRec(packet_id))
            assert sub.received() == [PubRel(packet_id)]
            assert len(session.inflight) == len(outstanding) + 1  # PUBREL still counts
            sub.send(PubComp(packet_id))
        for new in publishes(sub):
            assert new.packet_id not in outstanding
            outstanding[pid(new)] = new
            received.append(new.payload)
        assert set(session.inflight) == set(outstanding)
    assert received == [b"%d" % i for i in range(6)]
    assert not session.queue


@pytest.mark.parametrize("level", V3_LEVELS)
def test_maximum_inflight_v3(level: int) -> None:
    """``maximum_inflight`` bounds the unacknowledged messages sent to an MQTT 3 client.
    The messages of one publisher on one topic arrive in publication order
    [MQTT-4.6.0-5 (3.1.1), MQTT-4.6.0-6 (3.1.1)]."""
    hub = make_hub(maximum_inflight=2)
    sub = connect(hub, "sub", level)
    subscribe(sub, Subscription("t", 1))
    pub = connect(hub, "pub", level)
    for i in range(5):
        pub.send(Publish("t", b"%d" % i, 1, packet_id=i + 1))
    got = publishes(sub)
    assert [p.payload for p in got] == [b"0", b"1"]
    all_payloads = [p.payload for p in got]
    while got:
        ack_all(sub, got[:1])
        got = got[1:] + publishes(sub)
        assert len(got) <= 2
        all_payloads += [p.payload for p in got if p.payload not in all_payloads]
    assert all_payloads == [b"%d" % i for i in range(5)]


def test_maximum_queued_messages() -> None:
    """``maximum_queued_messages`` bounds a session's queue; what does not fit is dropped and
    counted."""
    hub = make_hub(maximum_queued_messages=2, maximum_inflight=1)
    sub = connect(hub, "sub", V311)
    subscribe(sub, Subscription("t", 1))
    pub = connect(hub, "pub", V311)
    dropped = hub.broker.stats.dropped
    for i in range(5):
        pub.send(Publish("t", b"%d" % i, 1, packet_id=i + 1))
    assert hub.broker.stats.dropped == dropped + 2
    got = publishes(sub)
    payloads = [p.payload for p in got]
    while got:
        ack_all(sub, got)
        got = publishes(sub)
        payloads += [p.payload for p in got]
    assert payloads == [b"0", b"1", b"2"]


def test_offline_queue_qos0() -> None:
    """QoS 0 messages for an offline session are dropped unless ``queue_qos0_offline``."""
    for queue_qos0, expected in ((False, [b"one"]), (True, [b"zero", b"one"])):
        hub = make_hub(Compatibilities(queue_qos0_offline=queue_qos0))
        sub = connect(hub, "sub", V311, clean_start=False)
        subscribe(sub, Subscription("t", 1))
        sub.drop()
        pub = connect(hub, "pub", V311)
        pub.send(Publish("t", b"zero", 0), Publish("t", b"one", 1, packet_id=1))
        sub = connect_resumed(hub, "sub", V311)
        assert [p.payload for p in publishes(sub)] == expected


# -- maximum packet size --------------------------------------------------------------------------


def test_inbound_packet_too_large() -> None:
    """A packet above the broker's Maximum Packet Size: DISCONNECT 0x95 [MQTT-3.2.2-15]."""
    hub = make_hub(maximum_packet_size=64)
    sub = connect(hub, "sub")
    subscribe(sub, Subscription("t", 0))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"x" * 50, 0))
    assert one_publish(sub).payload == b"x" * 50
    pub.send(Publish("t", b"x" * 70, 0))
    assert disconnect_reason(pub) == 0x95
    assert sub.received() == []


def test_outbound_packet_too_large() -> None:
    """A PUBLISH larger than the client's Maximum Packet Size is not sent [MQTT-3.1.2-24] and
    the broker carries on as if it had been [MQTT-3.1.2-25]: a QoS 1 message is not left in
    flight and the next one goes out."""
    hub = make_hub()
    sub = connect(hub, "sub", maximum_packet_size=40, receive_maximum=1)
    subscribe(sub, Subscription("t", 1))
    pub = connect(hub, "pub")
    dropped = hub.broker.stats.dropped
    pub.send(Publish("t", b"x" * 100, 1, packet_id=1))
    pub.send(Publish("t", b"small", 1, packet_id=2))
    pub.send(Publish("t", b"y" * 100, 0))
    got = one_publish(sub)
    assert got.payload == b"small"
    assert list(session_of(hub, "sub").inflight) == [got.packet_id]
    assert hub.broker.stats.dropped == dropped + 2
    ack_all(sub, [got])
    assert session_of(hub, "sub").inflight == {}


def test_packet_size_boundaries() -> None:
    """A packet of exactly the Maximum Packet Size (fixed header included) passes, one byte
    more does not, in both directions [MQTT-3.2.2-15, MQTT-3.1.2-24]."""
    hub = make_hub(maximum_packet_size=64)
    sub = connect(hub, "sub", maximum_packet_size=40)
    subscribe(sub, Subscription("t", 1))
    pub = connect(hub, "pub")
    base = len(encode(Publish("t", b"", 1, packet_id=1), V5))
    for size in (39, 40, 41):
        pub.send(Publish("t", b"x" * (size - base), 1, packet_id=size))
    assert [len(encode(p, V5)) for p in publishes(sub)] == [39, 40]
    base = len(encode(Publish("t", b"", 0), V5))
    pub.send(Publish("t", b"x" * (64 - base), 0))
    assert not pub.closed
    pub.send(Publish("t", b"x" * (65 - base), 0))
    assert disconnect_reason(pub) == 0x95


def test_resend_respects_maximum_packet_size() -> None:
    """A message left unacknowledged is not resent on reconnect if it exceeds the Maximum
    Packet Size of the new connection [MQTT-3.1.2-24]; it counts as sent and leaves the
    session's inflight window [MQTT-3.1.2-25]; the others are resent with their packet
    identifiers and DUP set [MQTT-4.4.0-1, MQTT-3.3.1-1]."""
    hub = make_hub()
    sub = connect(hub, "sub", session_expiry_interval=600)
    subscribe(sub, Subscription("t", 1))
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"x" * 200, 1, packet_id=1), Publish("t", b"small", 1, packet_id=2))
    first = publishes(sub)
    assert len(first) == 2
    sub.drop()
    sub = hub.client(protocol_level=V5)
    props = Properties(session_expiry_interval=600, maximum_packet_size=60)
    assert sub.connect("sub", clean_start=False, properties=props).session_present
    again = one_publish(sub)
    assert (again.payload, again.packet_id, again.dup) == (b"small", first[1].packet_id, True)
    assert list(session_of(hub, "sub").inflight) == [first[1].packet_id]
    ack_all(sub, [again])
    assert session_of(hub, "sub").inflight == {}


def test_outbound_packet_too_large_with_alias() -> None:
    """A PUBLISH that would set up a topic alias but is too large is dropped without using up
    the alias [MQTT-3.1.2-24]."""
    hub = make_hub()
    sub = connect(hub, "sub", maximum_packet_size=40, topic_alias_maximum=1)
    subscribe(sub, Subscription("#", 0))
    pub = connect(hub, "pub")
    pub.send(Publish("big", b"x" * 100, 0))
    pub.send(Publish("small", b"s", 0), Publish("small", b"t", 0))
    got = publishes(sub)
    assert [(p.topic, p.properties.topic_alias) for p in got] == [("small", 1), ("", 1)]


def test_connack_within_a_small_maximum_packet_size() -> None:
    """A client's Maximum Packet Size bounds the CONNACK too [MQTT-3.1.2-24]: when the full
    CONNACK does not fit, the "available" flags that repeat their defaults are left out and
    the limits that matter stay; when even that does not fit, the broker refuses with 0x95
    (Packet too large) in a CONNACK without properties if that fits, else says nothing, and
    closes either way without opening a session."""
    hub = make_hub(receive_maximum=10)
    probe = hub.client(protocol_level=V5)
    full = probe.connect("probe").properties
    assert full.retain_available == 1 and full.receive_maximum == 10
    full_size = len(encode(ConnAck(0, False, full), V5))
    lighter_size = full_size - 8  # four flags of two bytes each
    client = hub.client(protocol_level=V5)
    ack = client.connect("small", properties=Properties(maximum_packet_size=lighter_size))
    assert ack.reason_code == 0 and not client.closed
    assert (ack.properties.retain_available, ack.properties.wildcard_subscription_available,
            ack.properties.subscription_identifier_available,
            ack.properties.shared_subscription_available) == (None, None, None, None)
    assert ack.properties.receive_maximum == 10
    assert len(encode(ack, V5)) <= lighter_size
    for limit, answer in ((lighter_size - 1, [ConnAck(0x95)]), (5, [ConnAck(0x95)]), (4, [])):
        client = hub.client(protocol_level=V5)
        client.send(Connect("tiny", V5, properties=Properties(maximum_packet_size=limit)))
        assert client.received() == answer
        assert client.closed
    assert "tiny" not in hub.broker.sessions


def test_outbound_packet_fitting_only_without_a_new_alias() -> None:
    """A PUBLISH that fits the client's Maximum Packet Size only without the Topic Alias
    property that would set up an alias is sent without one, not dropped [MQTT-3.1.2-24,
    MQTT-3.3.2-11]; the alias is set up by a later, smaller message."""
    hub = make_hub()
    sub = connect(hub, "sub", maximum_packet_size=40, topic_alias_maximum=1)
    subscribe(sub, Subscription("#", 1))
    pub = connect(hub, "pub")
    pub.send(Publish("fits", b"x" * 30, 0))  # 39 bytes without the alias, 42 with it
    pub.send(Publish("fits", b"y" * 30, 1, packet_id=1))  # 41 without (packet id): too large
    pub.send(Publish("fits", b"s", 0), Publish("fits", b"t", 0))
    got = publishes(sub)
    assert [(p.topic, p.payload, p.properties.topic_alias) for p in got] == [
        ("fits", b"x" * 30, None), ("fits", b"s", 1), ("", b"t", 1)]


# -- topic length ---------------------------------------------------------------------------------


def test_topic_length_limit() -> None:
    """Topic Names and Topic Filters encode to at most 65,535 bytes [MQTT-4.7.3-3,
    MQTT-4.7.3-3 (3.1.1)]: a topic of exactly 65,535 UTF-8 bytes (fewer characters) round-trips
    through the codec as a name and as a filter, and the encoder refuses one byte more in
    PUBLISH, SUBSCRIBE, UNSUBSCRIBE and a CONNECT's will. The broker forwards the longest topic
    intact, live and retained, and refuses to send a longer one handed to it by the embedding
    application: nothing goes out."""
    longest = "t/" + "é" * 32766 + "x"
    assert len(longest.encode("utf-8")) == 65535
    longer = longest + "x"
    for level in (V311, V5):
        fitting: List[Any] = [Publish(longest, b"p", 1, packet_id=1),
                              Subscribe(1, (Subscription(longest, 1),)),
                              Unsubscribe(1, (longest,))]
        for packet in fitting:
            assert decode_all(encode(packet, level), level) == [packet]
        too_long: List[Any] = [Publish(longer, b"p", 0), Subscribe(1, (Subscription(longer, 1),)),
                               Unsubscribe(1, (longer,)),
                               Connect("c", level, will=Will(longer, b""))]
        for packet in too_long:
            with pytest.raises((ValueError, OverflowError)):
                encode(packet, level)
    hub = make_hub()
    exact = connect(hub, "exact")
    subscribe(exact, Subscription(longest, 1))
    v3 = connect(hub, "v3", V311)
    subscribe(v3, Subscription("#", 1))
    pub = connect(hub, "pub")
    pub.send(Publish(longest, b"live", 1, retain=True, packet_id=1))
    assert pub.received() == [PubAck(1)]
    for client in (exact, v3):
        assert [(p.topic, p.payload) for p in publishes(client)] == [(longest, b"live")]
    late = connect(hub, "late")
    subscribe(late, Subscription("t/+", 0))
    assert [(p.topic, p.retain) for p in publishes(late)] == [(longest, True)]
    with pytest.raises((ValueError, OverflowError)):
        hub.broker.publish(Message(longer, b"too long", 0, False))
    hub.broker.flush()
    assert [c.transport.value() for c in (exact, v3, late)] == [b"", b"", b""]


# -- slow consumers -------------------------------------------------------------------------------


def test_paused_connection_keeps_receiving_up_to_the_limit() -> None:
    """While the transport pushes back, messages wait in the connection's queue, counted,
    and go out when it drains: below ``maximum_pending_bytes`` a short stall of a reading
    client loses nothing and blocks nothing."""
    hub = make_hub(maximum_pending_bytes=10_000)
    slow = connect(hub, "slow")
    subscribe(slow, Subscription("t/#", 1))
    pub = connect(hub, "pub")
    slow.connection.pause()
    for i in range(20):
        pub.send(Publish("t/0", b"%d" % i, 0))
    assert publishes(slow) == []
    assert hub.broker.stats.dropped == 0 and not slow.connection.blocked
    slow.connection.resume()
    assert [p.payload for p in publishes(slow)] == [b"%d" % i for i in range(20)]


def test_blocked_connection_holds_back_its_publishers() -> None:
    """Past ``maximum_pending_bytes`` of unread output, a connection is blocked: a client that
    publishes QoS 0 to it is no longer read (its transport is paused) and nothing is dropped,
    QoS 1 messages wait in the session queue; when it drains, the queue is sent and the
    publisher read again."""
    hub = make_hub(maximum_pending_bytes=1000)
    slow = connect(hub, "slow")
    subscribe(slow, Subscription("t/#", 1))
    pub = connect(hub, "pub")
    other = connect(hub, "other")
    slow.connection.pause()
    pub.send(Publish("t/big", b"x" * 1200, 0))
    assert slow.connection.blocked
    assert pub.transport.producerState == "producing"
    pub.send(Publish("t/0", b"zero", 0))
    assert pub.transport.producerState == "paused"  # held back, not dropped
    assert other.transport.producerState == "producing"  # others are read as before
    pub.send(Publish("t/1", b"one", 1, packet_id=1))
    pub.send(Publish("t/1", b"two", 1, packet_id=2))
    assert publishes(slow) == []
    assert hub.broker.stats.dropped == 0
    assert len(session_of(hub, "slow").queue) == 2
    slow.connection.resume()
    assert pub.transport.producerState == "producing"
    got = publishes(slow)
    assert [(p.payload, p.qos) for p in got] == [(b"x" * 1200, 0), (b"zero", 0), (b"one", 1),
                                                 (b"two", 1)]
    assert len(session_of(hub, "slow").inflight) == 2


def test_blocked_connection_past_its_grace_drops_qos0() -> None:
    """A connection blocked for longer than ``slow_consumer_grace`` holds back no one: its
    publishers are read again and its QoS 0 messages are dropped (and counted)."""
    hub = make_hub(maximum_pending_bytes=1000, slow_consumer_grace=5.0)
    slow = connect(hub, "slow")
    subscribe(slow, Subscription("t/#", 0))
    pub = connect(hub, "pub")
    slow.connection.pause()
    pub.send(Publish("t/big", b"x" * 1200, 0))
    pub.send(Publish("t/0", b"held", 0))
    assert pub.transport.producerState == "paused"
    hub.advance(7)
    assert pub.transport.producerState == "producing"
    slow.received()
    pub.send(Publish("t/0", b"dropped", 0))
    assert publishes(slow) == [] and hub.broker.stats.dropped == 1
    assert pub.transport.producerState == "producing"


def test_connection_not_reading_is_aborted() -> None:
    """A paused connection whose unread output passes twice ``maximum_pending_bytes`` (here
    through acknowledgements it never reads) is aborted; the other clients carry on."""
    hub = make_hub(maximum_pending_bytes=32)
    slow = connect(hub, "slow")
    subscribe(slow, Subscription("t", 1))
    fine = connect(hub, "fine")
    subscribe(fine, Subscription("t", 1))
    slow.connection.pause()
    for i in range(40):
        slow.send(Publish("elsewhere", b"x", 1, packet_id=i + 1))
        if slow.transport.disconnected:
            break
    assert slow.transport.disconnected  # aborted, not just closed
    assert i < 39
    pub = connect(hub, "pub")
    pub.send(Publish("t", b"meanwhile", 1, packet_id=1))
    assert one_publish(fine).payload == b"meanwhile"
    hub.clock.advance(0)
    assert "slow" not in hub.broker.sessions  # detached; its session (expiry 0) ended
    pub.send(Publish("t", b"after", 1, packet_id=2))
    assert one_publish(fine).payload == b"after"
    assert not fine.closed and not pub.closed


class Reader:
    """A client's transport as Twisted runs it: once more than ``buffer`` bytes are buffered
    it pushes back (the connection is paused), and it resumes the connection only when the
    client has read everything buffered.  The client reads only when told (``read``)."""

    def __init__(self, client: InMemoryClient, buffer: int = 4096) -> None:
        self.client = client
        self.packets: List[Any] = []
        self.most_buffered = 0
        transport = client.transport
        write = transport.write

        def write_and_push_back(data: bytes) -> None:
            write(data)
            buffered = len(transport.value())
            self.most_buffered = max(self.most_buffered, buffered)
            if buffered > buffer and not client.connection.paused:
                client.connection.pause()

        transport.write = write_and_push_back  # type: ignore[method-assign]

    def read(self, size: int) -> None:
        """The client reads up to ``size`` bytes."""
        transport = self.client.transport
        data = transport.value()
        transport.clear()
        transport.io.write(data[size:])
        self.packets.extend(self.client.decoder.feed(data[:size]))
        if len(data) <= size and self.client.connection.paused:
            self.client.connection.resume()

    def read_all(self) -> None:
        """Read until nothing more comes."""
        while self.client.transport.value() or self.client.connection.paused:
            self.read(1 << 20)


def test_retained_set_to_a_client_that_never_reads_is_bounded() -> None:
    """A client that never reads subscribes to retained messages twenty times
    ``maximum_pending_bytes``: what is queued for it stays within the bound, the rest wait
    (as topics, not bytes) and none is dropped; QoS 1 ones likewise, and its session queue
    stays empty; the retained messages' publisher is not held back.  Once it reads, it gets
    every one, in order [MQTT-3.3.1-9]."""
    hub = make_hub(maximum_pending_bytes=10_000, maximum_queued_bytes=20_000)
    pub = connect(hub, "pub")
    for i in range(200):
        pub.send(Publish(f"r/{i:03}", b"x" * 1000, 1, retain=True, packet_id=i + 1))
    assert len(pub.received()) == 200
    for qos, name in ((0, "stalled0"), (1, "stalled1")):
        stalled = connect(hub, name)
        reader = Reader(stalled)
        stalled.send(Subscribe(1, (Subscription("r/#", qos),)))
        hub.clock.advance(0)
        assert pub.transport.producerState == "producing"
        assert hub.broker.stats.dropped == 0
        waiting = len(stalled.transport.value()) + stalled.connection._queued
        assert waiting <= 2 * 10_000 + 1100
        assert session_of(hub, name).queue.size == 0
        hub.clock.advance(60)  # past the slow consumer grace: still nothing dropped
        assert hub.broker.stats.dropped == 0
        reader.read_all()
        got = [p.topic for p in reader.packets if isinstance(p, Publish)]
        assert got == [f"r/{i:03}" for i in range(200)]


def test_retained_set_paced_for_a_reader_that_keeps_up() -> None:
    """A retained set larger than ``maximum_pending_bytes``, to a client that reads as fast
    as it can: the broker sends it as the client reads, and the client gets every message,
    QoS 0 and QoS 1 alike (none dropped, none left in its session queue) [MQTT-3.3.1-9]."""
    hub = make_hub(maximum_pending_bytes=20_000, maximum_queued_bytes=10_000)
    for i in range(100):
        hub.broker.publish(Message(f"r/{i:02}", b"x" * 5000, 1, True))
    for qos in (0, 1):
        client = connect(hub, f"reader{qos}")
        reader = Reader(client)
        client.send(Subscribe(1, (Subscription("r/#", qos),)))
        acked = 0
        for _ in range(200):
            reader.read(1 << 16)
            for packet in reader.packets[acked:]:
                if isinstance(packet, Publish) and packet.qos:
                    client.send(PubAck(packet.packet_id))
            acked = len(reader.packets)
            hub.clock.advance(0)
        got = [p.topic for p in reader.packets if isinstance(p, Publish)]
        assert got == [f"r/{i:02}" for i in range(100)]
        assert hub.broker.stats.dropped == 0


def test_resends_on_reconnect_wait_while_blocked() -> None:
    """Unacknowledged messages resent on reconnect [MQTT-4.4.0-1] count like any output:
    past ``maximum_pending_bytes`` the rest wait, and follow in order with their packet
    identifiers as the client reads; none is lost and no new message overtakes them."""
    hub = make_hub(maximum_pending_bytes=5_000)
    sub = connect(hub, "sub", clean_start=False, session_expiry_interval=600)
    subscribe(sub, Subscription("t", 1))
    pub = connect(hub, "pub")
    for i in range(30):
        pub.send(Publish("t", b"%02d" % i + b"x" * 998, 1, packet_id=i + 1))
    first = publishes(sub)
    assert len(first) == 30
    sub.drop()
    hub.clock.advance(0)
    again = hub.client(V5)
    reader = Reader(again)
    again.send(Connect("sub", V5, False, properties=Properties(session_expiry_interval=600)))
    pub.send(Publish("t", b"new", 1, packet_id=31))
    while again.transport.value() or again.connection.paused:
        reader.read(1000)
    assert isinstance(reader.packets[0], ConnAck) and reader.packets[0].session_present
    resent = reader.packets[1:-1]
    assert [(p.packet_id, p.payload, p.dup) for p in resent] == [
        (p.packet_id, p.payload, True) for p in first]
    assert reader.packets[-1].payload == b"new"
    assert reader.most_buffered <= 2 * 5_000
    assert not again.closed and hub.broker.stats.dropped == 0


def test_reader_that_keeps_up_is_never_blocked() -> None:
    """During a long QoS 0 flood that cannot be held back (here from the inline client), a
    reader that reads as fast as the flood comes, but whose transport never holds nothing
    between two writes, gets every message and is never blocked; a reader that stalls is
    blocked and loses what does not fit, and is the only one."""
    hub = make_hub(maximum_pending_bytes=10_000)
    healthy = connect(hub, "healthy")
    subscribe(healthy, Subscription("t", 0))
    stalled = connect(hub, "stalled")
    subscribe(stalled, Subscription("#", 0))
    reader = Reader(healthy)
    Reader(stalled)
    inline = hub.broker.inline
    for i in range(25):  # a burst first: the transport pushes back
        inline.publish("t", b"%04d" % i + b"x" * 196)
    for i in range(25, 1225, 2):
        inline.publish("t", b"%04d" % i + b"x" * 196)
        inline.publish("t", b"%04d" % (i + 1) + b"x" * 196)
        reader.read(450)
        assert not healthy.connection.blocked
    reader.read_all()
    assert [p.payload[:4] for p in reader.packets] == [b"%04d" % i for i in range(1225)]
    assert not healthy.closed
    assert stalled.connection.blocked and hub.broker.stats.dropped > 1000


def test_session_queue_bounded_in_bytes() -> None:
    """``maximum_queued_bytes`` bounds the topic and payload bytes a session holds for an
    offline client; a message that would pass it is dropped and counted.  The publisher is
    not told: its PUBACK is sent when the message is routed (0x00)."""
    hub = make_hub(maximum_queued_bytes=10_000)
    away = connect(hub, "away", clean_start=False, session_expiry_interval=600)
    subscribe(away, Subscription("t", 1))
    away.drop()
    hub.clock.advance(0)
    pub = connect(hub, "pub")
    for i in range(30):
        pub.send(Publish("t", b"%02d" % i + b"x" * 998, 1, packet_id=i + 1))
    assert [(p.packet_id, p.reason_code) for p in pub.received()] == [
        (i + 1, 0) for i in range(30)]
    queue = session_of(hub, "away").queue
    assert len(queue) == 9 and queue.size == 9 * (1 + 1000)  # the tenth would pass 10,000
    assert hub.broker.stats.dropped == 21
    again = hub.client(V5)
    again.connect("away", clean_start=False,
                  properties=Properties(session_expiry_interval=600))
    assert [p.payload[:2] for p in publishes(again)] == [b"%02d" % i for i in range(9)]
    assert session_of(hub, "away").queue.size == 0


# -- encoding reuse -----------------------------------------------------------------------------


def test_one_encoding_for_many_v3_qos0_subscribers() -> None:
    """One QoS 0 message to many MQTT 3.1.1 subscribers is encoded once: its encoding cache
    holds a single entry, and every subscriber gets the same PUBLISH."""
    hub = make_hub()
    subs = [connect(hub, f"s{i}", V311) for i in range(20)]
    for i, client in enumerate(subs):
        subscribe(client, Subscription("t/+" if i % 2 else "t/#", 1 if i % 3 else 0))
    message = Message("t/x", b"payload", 0, False, origin="nobody")
    assert hub.broker.publish(message) == 20
    hub.broker.flush()
    assert message._cache is not None and len(message._cache) == 1
    for client in subs:
        got = one_publish(client)
        assert (got.topic, got.payload, got.qos, got.retain) == ("t/x", b"payload", 0, False)


def test_one_encoding_for_many_v3_qos0_subscribers_from_the_wire() -> None:
    """The same through a client's PUBLISH: the routed message is encoded once for all."""
    hub = make_hub()
    subs = [connect(hub, f"s{i}", V311) for i in range(10)]
    for client in subs:
        subscribe(client, Subscription("t", 0))
    routed = hub.record_published()
    pub = connect(hub, "pub", V311)
    pub.send(Publish("t", b"x", 1, packet_id=1))
    assert len(routed) == 1
    cache = routed[0]._cache
    assert cache is not None
    assert [key for key in cache if key[1] == 0] == [(False, 0, False, ())]  # one QoS 0 variant
    assert all(len(publishes(client)) == 1 for client in subs)


# -- cited labels -------------------------------------------------------------------------------


def test_cited_labels_exist() -> None:
    """Each label cited in this module names a normative statement of the specification."""
    check_cited_labels(sys.modules[__name__])


@pytest.mark.parametrize("level, refused", [(V5, 0x97), (V311, 0x80)])
def test_subscriptions_per_session_bounded(level: int, refused: int) -> None:
    """``maximum_subscriptions``: a new filter beyond it is refused for that filter with the
    SUBACK reason code 0x97 Quota exceeded (MQTT 3.1.1: 0x80 Failure) [MQTT-3.9.3-1,
    MQTT-3.9.3-2 (3.1.1)]; a filter already held may be subscribed to again, and one freed by
    UNSUBSCRIBE makes room."""
    hub = make_hub(maximum_subscriptions=3)
    client = connect(hub, "many", level=level)
    ack = subscribe(client, *(Subscription(f"t/{i}", 1) for i in range(4)))
    assert ack.reason_codes == (1, 1, 1, refused)
    assert sorted(session_of(hub, "many").subscriptions) == ["t/0", "t/1", "t/2"]
    assert subscribe(client, Subscription("t/1", 0), packet_id=2).reason_codes == (0,)
    client.send(Unsubscribe(3, ("t/0",)))
    client.received()
    assert subscribe(client, Subscription("t/3", 1), Subscription("t/4", 1),
                     packet_id=4).reason_codes == (1, refused)
