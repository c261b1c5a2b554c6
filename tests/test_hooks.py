"""Every event of every hook interface, fired in memory, with its arguments and its effect.

Each test installs a ``Hook`` subclass overriding the events it is about (``recorder`` in
``tests.hook_helpers``), drives an ``InMemoryBroker`` on a ``task.Clock`` with in-memory MQTT
clients, and checks what the hook was told and what its answer did: a veto answered with its
reason code, a modification taking effect on the wire, an observation made at the right moment.
No sockets, no sleeping, no wall clock.

Docstrings cite the normative statements a test also proves: ``[MQTT-x.y.z-n]`` is a label of
MQTT 5.0, ``[MQTT-x.y.z-n (3.1.1)]`` one of MQTT 3.1.1 (``test_cited_labels`` checks them).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, List, Optional

import pytest
from zope.interface import implementer

from tests.hook_helpers import (
    NEVER,
    hub,
    join,
    payloads,
    publishes,
    recorder,
    subscribe,
    watch,
)
from tests.spec import check_cited_labels
from twisted_mqtt.capabilities import Capabilities
from twisted_mqtt.codec import encode
from twisted_mqtt.hooks import Hook
from twisted_mqtt.interfaces import (
    AuthStep,
    ClientInfo,
    ConnectRequest,
    IAuthenticator,
    IEnhancedAuthenticator,
    Veto,
)
from twisted_mqtt.packets import (
    Auth,
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
from twisted_mqtt.properties import Properties
from twisted_mqtt.session import Delivery, Message
from twisted_mqtt.testing import InMemoryBroker

levels = pytest.mark.parametrize("level", (4, 5))


# -- lifecycle ----------------------------------------------------------------------------------


def test_started_and_stopped() -> None:
    """``on_started`` is told the broker once it runs; ``on_stopped`` once every client was
    disconnected, a v5 client with DISCONNECT 0x8B (Server shutting down) after its CONNACK
    [MQTT-3.14.0-1, MQTT-3.14.2-1]."""
    seen: List[Any] = []
    rec = recorder(
        on_started=lambda broker: seen.append(("started", broker.running)),
        on_stopped=lambda broker: seen.append(("stopped", broker.running, broker.connected)),
    )
    memory = hub(rec, start=False)
    broker = memory.broker
    assert rec.calls == []
    broker.start()
    assert rec.calls == [("on_started", (broker,))]
    client = join(memory, "c")
    broker.stop()
    assert client.received() == [Disconnect(0x8B)]
    assert rec.calls == [("on_started", (broker,)), ("on_stopped", (broker,))]
    assert seen == [("started", True), ("stopped", False, 0)]


def test_sys_info_tick() -> None:
    """``on_sys_info_tick`` gets the $SYS figures by topic suffix each time they are
    published: at start, then every ``sys_interval``; the same figures reach a client
    subscribed to them by name ($SYS topics match no filter starting with a wildcard
    [MQTT-4.7.2-1])."""
    rec = recorder("on_sys_info_tick")
    memory = hub(rec, sys_interval=10)
    (first,) = [args[0] for args in rec.of("on_sys_info_tick")]
    assert first["clients/connected"] == 0
    assert first["uptime"] == 0
    assert {"version", "clients/total", "messages/received", "messages/sent",
            "subscriptions/count"} <= set(first)
    everything = watch(memory, "#", client_id="everything")
    sys_watcher = join(memory, "sys")
    retained = subscribe(sys_watcher, "$SYS/broker/clients/connected", 0)
    assert [(p.payload, p.retain) for p in retained] == [(b"0", True)]
    memory.advance(10)
    ticks = [args[0] for args in rec.of("on_sys_info_tick")]
    assert len(ticks) == 2
    assert ticks[1]["clients/connected"] == 2
    assert ticks[1]["uptime"] == 10
    assert ticks[1]["subscriptions/count"] == 2
    assert payloads(sys_watcher) == [b"2"]
    assert everything.received() == []


# -- connections and sessions -------------------------------------------------------------------


@implementer(IAuthenticator)
class Counting:
    """Accepts every client, remembering who asked."""

    def __init__(self) -> None:
        self.asked: List[str] = []

    def authenticate(self, request: ConnectRequest) -> bool:
        self.asked.append(request.client.client_id)
        return True


@levels
def test_connect_veto_refuses(level: int) -> None:
    """``on_connect`` sees the client and its CONNECT before authentication; a ``Veto``
    refuses with its reason code (v5 CONNACK 0x8A Banned, v3 return code 5 Not authorized),
    Session Present 0, the authenticator is not asked and the connection is closed
    [MQTT-3.1.4-2, MQTT-3.2.2-6, MQTT-3.2.2-7, MQTT-3.2.2-5 (3.1.1)]."""
    def ban(client: ClientInfo, packet: Connect) -> Any:
        return Veto(0x8A) if client.client_id == "banned" else None

    rec = recorder(on_connect=ban)
    authenticator = Counting()
    memory = InMemoryBroker(capabilities=Capabilities(sys_interval=0), hooks=[rec],
                            authenticator=authenticator)
    client = memory.client(protocol_level=level)
    ack = client.connect("banned", username="u", password=b"pw")
    assert ack == ConnAck(0x8A if level == 5 else 5)
    assert client.closed
    assert "banned" not in memory.broker.sessions
    assert authenticator.asked == []
    ((info, packet),) = rec.of("on_connect")
    assert (info.client_id, info.username, info.address, info.protocol_level) == (
        "banned", "u", "127.0.0.1", level)
    assert isinstance(packet, Connect)
    assert (packet.client_id, packet.password) == ("banned", b"pw")
    join(memory, "welcome", level)
    assert authenticator.asked == ["welcome"]


CHALLENGE = "REVERSE"


@implementer(IEnhancedAuthenticator)
class Reverse:
    """Accepts a client answering its nonce reversed."""

    methods = (CHALLENGE,)

    def step(self, client: ClientInfo, method: str, data: Optional[bytes], state: Any) -> Any:
        if state is None:
            return AuthStep(0x18, b"nonce", state="sent")
        return AuthStep(0x00 if data == b"ecnon" else 0x86)


def _auth(code: int, data: Optional[bytes]) -> Auth:
    return Auth(code, Properties(authentication_method=CHALLENGE, authentication_data=data))


def test_auth_packet_modified() -> None:
    """``on_auth_packet`` gets each AUTH packet with the client and returns the one the broker
    acts on: here it reverses the client's answer, so a client answering the nonce as is
    gets CONNACK 0x00 with the method [MQTT-4.12.0-5]."""

    def reverse(client: ClientInfo, packet: Auth) -> Auth:
        data = packet.properties.authentication_data or b""
        return replace(packet, properties=replace(packet.properties,
                                                  authentication_data=data[::-1]))

    rec = recorder(on_auth_packet=reverse)
    memory = InMemoryBroker(enhanced_authenticator=Reverse(), hooks=[rec])
    client = memory.client(protocol_level=5)
    client.send(Connect("device", 5, properties=Properties(authentication_method=CHALLENGE)))
    assert client.received() == [_auth(0x18, b"nonce")]  # [MQTT-4.12.0-2]
    client.send(_auth(0x18, b"nonce"))
    (ack,) = client.received()
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    assert ack.properties.authentication_method == CHALLENGE
    ((info, packet),) = rec.of("on_auth_packet")
    assert info.client_id == "device"
    assert packet == _auth(0x18, b"nonce")


def test_auth_packet_dropped() -> None:
    """An ``on_auth_packet`` hook answering None makes the broker ignore that AUTH: nothing is
    answered and the exchange still waits (until the connect timeout) [MQTT-4.12.0-4]."""
    rec = recorder(on_auth_packet=lambda client, packet: None)
    memory = InMemoryBroker(enhanced_authenticator=Reverse(), hooks=[rec])
    client = memory.client(protocol_level=5)
    client.send(Connect("device", 5, properties=Properties(authentication_method=CHALLENGE)))
    client.received()
    client.send(_auth(0x18, b"ecnon"))
    assert client.received() == []
    assert not client.closed
    assert len(rec.of("on_auth_packet")) == 1
    memory.advance(12)
    assert client.closed
    assert "device" not in memory.broker.sessions


@levels
def test_session_establish_and_established(level: int) -> None:
    """``on_session_establish`` runs after authentication and before the session is opened;
    ``on_session_established`` once it is, with Session Present: 0 for a new session, 1 when
    a stored one is resumed [MQTT-3.2.2-2, MQTT-3.2.2-3, MQTT-3.2.2-1 (3.1.1),
    MQTT-3.2.2-2 (3.1.1)].  A refused client reaches neither."""
    seen: List[Any] = []
    memory: InMemoryBroker

    def attached() -> bool:
        session = memory.broker.sessions.get("c")
        return session is not None and session.connection is not None

    rec = recorder(
        on_session_establish=lambda client, packet: seen.append(
            ("establish", client.client_id, packet.clean_start, attached())),
        on_session_established=lambda client, packet, present: seen.append(
            ("established", client.client_id, present, attached())),
        on_connect=lambda client, packet: Veto(0x87) if client.client_id == "no" else None,
    )
    memory = hub(rec)
    expiry = NEVER if level == 5 else None
    first = join(memory, "c", level, clean=False, expiry=expiry)
    first.drop()
    ack = memory.client(protocol_level=level).connect(
        "c", clean_start=False,
        properties=Properties(session_expiry_interval=NEVER) if level == 5 else Properties())
    assert ack.session_present is True
    assert seen == [("establish", "c", False, False), ("established", "c", False, True),
                    ("establish", "c", False, False), ("established", "c", True, True)]
    assert all(isinstance(args[1], Connect) for args in rec.of("on_session_established"))
    memory.client(protocol_level=level).connect("no")
    assert len(seen) == 4


def test_disconnect_reasons() -> None:
    """``on_disconnect`` tells how each connection ended: the DISCONNECT reason code received
    or sent (0x00, 0x04, 0x8E session taken over [MQTT-3.1.4-3], 0x8D keep alive timeout
    [MQTT-3.1.2-22], 0x8B shutting down), None when the network connection just closed; and
    whether the session outlives it (Session Expiry Interval above 0 [MQTT-3.1.2-23], MQTT
    3.1.1 Clean Session 0 [MQTT-3.1.2-4 (3.1.1)])."""
    rec = recorder("on_disconnect")
    memory = hub(rec)

    def last() -> Any:
        info, code, kept = rec.of("on_disconnect")[-1]
        return info.client_id, info.protocol_level, code, kept

    join(memory, "a").send(Disconnect(0))
    assert last() == ("a", 5, 0, False)
    join(memory, "b", expiry=60).send(Disconnect(0x04))
    assert last() == ("b", 5, 0x04, True)
    join(memory, "c", expiry=60).drop()
    assert last() == ("c", 5, None, True)
    join(memory, "d", 4, clean=False).drop()
    assert last() == ("d", 4, None, True)
    join(memory, "e", 4).drop()
    assert last() == ("e", 4, None, False)
    taken = join(memory, "f", expiry=60)
    join(memory, "f", clean=False, expiry=60)
    assert taken.received() == [Disconnect(0x8E)]
    assert last() == ("f", 5, 0x8E, True)
    silent = join(memory, "g", keep_alive=2)
    memory.advance(4)
    assert silent.received() == [Disconnect(0x8D)]
    assert last() == ("g", 5, 0x8D, False)
    count = len(rec.of("on_disconnect"))
    memory.broker.stop()
    assert rec.of("on_disconnect")[count:][0][1:] == (0x8B, True)  # the second "f"


def test_will_modified_or_suppressed() -> None:
    """``on_will`` gets the client id and the Will due when the network connection closes
    [MQTT-3.1.2-8]: what it returns is published (here with another topic and payload),
    None publishes nothing; ``on_will_sent`` gets the message published, and is not told of
    a suppressed one."""

    def edit(client_id: str, will: Will) -> Optional[Will]:
        if client_id == "quiet":
            return None
        return replace(will, topic="wills/" + client_id, payload=will.payload + b" (edited)")

    rec = recorder("on_will_sent", on_will=edit)
    memory = hub(rec)
    watcher = watch(memory, "#", 1)
    will = Will("status/noisy", b"gone", 1, properties=Properties(content_type="text/plain"))
    join(memory, "noisy", will=will).drop()
    (received,) = publishes(watcher)
    assert (received.topic, received.payload, received.qos) == (
        "wills/noisy", b"gone (edited)", 1)
    assert received.properties.content_type == "text/plain"
    assert rec.of("on_will") == [("noisy", will)]
    ((client_id, message),) = rec.of("on_will_sent")
    assert client_id == "noisy"
    assert isinstance(message, Message)
    assert (message.topic, message.payload, message.qos, message.origin) == (
        "wills/noisy", b"gone (edited)", 1, "noisy")
    join(memory, "quiet", will=Will("status/quiet", b"gone")).drop()
    assert watcher.received() == []
    assert [args[0] for args in rec.of("on_will")] == ["noisy", "quiet"]
    assert len(rec.of("on_will_sent")) == 1


def test_will_after_delay_through_the_hook() -> None:
    """A Will with a Will Delay Interval reaches ``on_will`` when the delay has passed, not
    before [MQTT-3.1.3-9]; a DISCONNECT 0x00 discards the Will and the hook is not asked
    [MQTT-3.14.4-3]."""
    rec = recorder("on_will", "on_will_sent")
    memory = hub(rec)
    watcher = watch(memory, "#", 1)
    delayed = Will("status/late", b"gone", properties=Properties(will_delay_interval=5))
    join(memory, "late", will=delayed, properties=Properties(session_expiry_interval=60)).drop()
    memory.advance(4)
    assert rec.calls == [] and watcher.received() == []
    memory.advance(1)
    assert rec.events() == ["on_will", "on_will_sent"]
    assert payloads(watcher) == [b"gone"]
    join(memory, "polite", will=Will("status/polite", b"gone")).send(Disconnect(0))
    assert rec.events() == ["on_will", "on_will_sent"]
    assert watcher.received() == []


def test_client_expired() -> None:
    """``on_client_expired`` gets the client id when a session is discarded because its
    Session Expiry Interval passed after the network connection closed [MQTT-4.1.0-2]; not
    before [MQTT-3.1.2-23], and not for a session resumed in time."""
    rec = recorder("on_client_expired")
    memory = hub(rec)
    join(memory, "short", expiry=10).drop()
    join(memory, "back", expiry=10).drop()
    memory.advance(9)
    assert rec.calls == []
    assert "short" in memory.broker.sessions
    join(memory, "back", clean=False, expiry=10)
    memory.advance(2)
    assert rec.of("on_client_expired") == [("short",)]
    assert "short" not in memory.broker.sessions
    assert "back" in memory.broker.sessions


# -- subscriptions ------------------------------------------------------------------------------


def test_subscribe_rewritten() -> None:
    """``on_subscribe`` returns the SUBSCRIBE to act on: here each filter is put under the
    client's own prefix, so the subscription made (and the messages received) are those of
    the rewritten filter; the SUBACK keeps the Packet Identifier [MQTT-3.8.4-1,
    MQTT-3.8.4-2]."""

    def tenant(client: ClientInfo, packet: Subscribe) -> Subscribe:
        return replace(packet, subscriptions=tuple(
            replace(s, topic_filter=f"tenants/{client.client_id}/{s.topic_filter}")
            for s in packet.subscriptions))

    rec = recorder("on_subscribed", on_subscribe=tenant)
    memory = hub(rec)
    client = join(memory, "acme")
    client.send(Subscribe(7, (Subscription("x/#", 1),)))
    assert client.received() == [SubAck(7, (1,))]
    assert list(memory.broker.sessions["acme"].subscriptions) == ["tenants/acme/x/#"]
    ((info, packet),) = rec.of("on_subscribe")
    assert info.client_id == "acme"
    assert packet == Subscribe(7, (Subscription("x/#", 1),))
    ((_, changed, codes),) = rec.of("on_subscribed")
    assert changed.subscriptions[0].topic_filter == "tenants/acme/x/#"
    assert codes == (1,)
    publisher = join(memory, "p")
    publisher.send(Publish("x/1", b"elsewhere"), Publish("tenants/acme/x/1", b"mine"))
    assert payloads(client) == [b"mine"]


@levels
def test_subscribe_vetoed(level: int) -> None:
    """An ``on_subscribe`` ``Veto`` refuses every filter of the SUBSCRIBE with its reason code
    (v5: 0x87 each; v3: 0x80 each), one per filter [MQTT-3.8.4-6, MQTT-3.9.3-1,
    MQTT-3.9.3-2 (3.1.1)]; None refuses with 0x80.  Nothing is subscribed."""

    def veto(client: ClientInfo, packet: Subscribe) -> Any:
        return Veto(0x87) if packet.packet_id == 1 else None

    rec = recorder("on_subscribed", on_subscribe=veto)
    memory = hub(rec)
    client = join(memory, "c", level)
    filters = (Subscription("a", 1), Subscription("b/#", 0))
    client.send(Subscribe(1, filters))
    assert client.received() == [SubAck(1, (0x87, 0x87) if level == 5 else (0x80, 0x80))]
    client.send(Subscribe(2, filters))
    assert client.received() == [SubAck(2, (0x80, 0x80))]
    assert memory.broker.sessions["c"].subscriptions == {}
    assert [codes for _, _, codes in rec.of("on_subscribed")] == [
        (0x87, 0x87) if level == 5 else (0x80, 0x80), (0x80, 0x80)]


def test_subscribed_reason_codes() -> None:
    """``on_subscribed`` gets the SUBSCRIBE and the SUBACK's reason codes: the QoS granted
    (here lowered to the broker's Maximum QoS 1) or a failure code for a refused filter
    [MQTT-3.8.4-7, MQTT-3.9.3-1]."""
    rec = recorder("on_subscribed")
    memory = hub(rec, maximum_qos=1, refused_filters=("forbidden",))
    client = join(memory, "c")
    packet = Subscribe(3, (Subscription("a", 2), Subscription("forbidden", 0)))
    client.send(packet)
    assert client.received() == [SubAck(3, (1, 0x80))]
    ((info, seen, codes),) = rec.of("on_subscribed")
    assert (info.client_id, seen, codes) == ("c", packet, (1, 0x80))


def test_unsubscribe_rewritten_and_unsubscribed_codes() -> None:
    """``on_unsubscribe`` returns the UNSUBSCRIBE to act on (here an alias is mapped to the
    real filter, which is then removed [MQTT-3.10.4-1, MQTT-3.10.4-2]); ``on_unsubscribed``
    gets the UNSUBACK's reason codes, 0x00 or 0x11 for each filter [MQTT-3.11.3-1,
    MQTT-3.10.4-4]."""

    def alias(client: ClientInfo, packet: Unsubscribe) -> Unsubscribe:
        return replace(packet, topic_filters=tuple(
            "real/#" if f == "alias" else f for f in packet.topic_filters))

    rec = recorder("on_unsubscribed", on_unsubscribe=alias)
    memory = hub(rec)
    client = join(memory, "c")
    subscribe(client, "real/#", 0)
    client.send(Unsubscribe(4, ("alias", "never")))
    assert client.received() == [UnsubAck(4, (0x00, 0x11))]
    ((info, packet),) = rec.of("on_unsubscribe")
    assert (info.client_id, packet) == ("c", Unsubscribe(4, ("alias", "never")))
    ((_, changed, codes),) = rec.of("on_unsubscribed")
    assert changed.topic_filters == ("real/#", "never")
    assert codes == (0x00, 0x11)
    join(memory, "p").send(Publish("real/1", b"x"))
    assert client.received() == []


@levels
def test_unsubscribe_vetoed(level: int) -> None:
    """An ``on_unsubscribe`` ``Veto`` answers UNSUBACK with its reason code for each filter
    (v5) or a plain UNSUBACK (v3), and the subscription stays [MQTT-3.10.4-4,
    MQTT-3.11.3-2]."""
    rec = recorder(on_unsubscribe=lambda client, packet: Veto(0x87))
    memory = hub(rec)
    client = join(memory, "c", level)
    subscribe(client, "t", 0)
    client.send(Unsubscribe(5, ("t",)))
    assert client.received() == [UnsubAck(5, (0x87,) if level == 5 else ())]
    join(memory, "p").send(Publish("t", b"still"))
    assert payloads(client) == [b"still"]


def test_select_subscribers() -> None:
    """``on_select_subscribers`` gets each message and the client ids holding a matching
    non-shared subscription, and returns those that get it: an excluded client receives
    nothing, at QoS 0 or 1, while a shared subscription is served as usual; ``on_published``
    counts the sessions that got it [MQTT-4.8.2-3]."""
    rec = recorder("on_published", on_select_subscribers=lambda m, ids: ids - {"b"})
    memory = hub(rec)
    a, b, c = (watch(memory, "t", 1, client_id=name) for name in "abc")
    member = join(memory, "s")
    subscribe(member, "$share/g/t", 1)
    publisher = join(memory, "p")
    publisher.send(Publish("t", b"one", 1, packet_id=1), Publish("t", b"two", 0))
    assert publisher.received() == [PubAck(1)]
    for client in (a, c, member):
        assert payloads(client) == [b"one", b"two"]
    assert b.received() == []
    selections = rec.of("on_select_subscribers")
    assert [(m.topic, m.payload, ids) for m, ids in selections] == [
        ("t", b"one", frozenset("abc")), ("t", b"two", frozenset("abc"))]
    assert [count for _, _, count in rec.of("on_published")] == [3, 3]


# -- publishing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("qos", (0, 1, 2))
def test_publish_rewritten(qos: int) -> None:
    """``on_publish`` gets the publisher and the message after the ACL allowed it, and returns
    the message to route: ``message.evolve`` changes its topic and payload, and subscribers
    get the changed message at the QoS they are due [MQTT-3.3.4-1]; the publisher's
    acknowledgement is the usual one [MQTT-4.3.2-4, MQTT-4.3.3-8]."""

    def rewrite(client: ClientInfo, message: Message) -> Message:
        return message.evolve(topic="checked/" + message.topic, payload=message.payload.upper())

    rec = recorder(on_publish=rewrite)
    memory = hub(rec)
    watcher = watch(memory, "#", 2)
    publisher = join(memory, "p")
    packet_id = 9 if qos else None
    publisher.send(Publish("raw", b"hello", qos, packet_id=packet_id,
                           properties=Properties(user_properties=(("k", "v"),))))
    expected = {0: [], 1: [PubAck(9)], 2: [PubRec(9)]}[qos]
    assert publisher.received() == expected
    (received,) = publishes(watcher)
    assert (received.topic, received.payload, received.qos) == ("checked/raw", b"HELLO", qos)
    assert received.properties.user_properties == (("k", "v"),)
    ((info, message),) = rec.of("on_publish")
    assert (info.client_id, message.topic, message.payload, message.qos, message.origin) == (
        "p", "raw", b"hello", qos, "p")


@levels
def test_publish_vetoed(level: int) -> None:
    """An ``on_publish`` ``Veto`` refuses the message: nobody gets it, and a v5 publisher's
    PUBACK or PUBREC carries the veto's reason code (0x83) [MQTT-3.4.2-1, MQTT-3.5.2-1]; a v3
    publisher gets its plain acknowledgement."""
    rec = recorder("on_published", on_publish=lambda client, message: Veto(0x83))
    memory = hub(rec)
    watcher = watch(memory, "#")
    publisher = join(memory, "p", level)
    publisher.send(Publish("t", b"a", 1, packet_id=1), Publish("t", b"b", 2, packet_id=2))
    code = 0x83 if level == 5 else 0
    assert publisher.received() == [PubAck(1, code), PubRec(2, code)]
    assert watcher.received() == []
    assert rec.of("on_published") == []


def test_publish_dropped_by_hook() -> None:
    """An ``on_publish`` hook answering None drops the message: nobody gets it, the publisher
    is acknowledged as usual (PUBACK 0x00) [MQTT-4.3.2-4] and ``on_published`` is not told."""
    rec = recorder("on_published", on_publish=lambda client, message: None)
    memory = hub(rec)
    watcher = watch(memory, "#")
    publisher = join(memory, "p")
    publisher.send(Publish("t", b"a", 1, packet_id=1))
    assert publisher.received() == [PubAck(1)]
    assert watcher.received() == []
    assert rec.of("on_published") == []


def test_published_count() -> None:
    """``on_published`` gets the publisher, the message routed and how many sessions it was
    routed to; with none, a v5 QoS 1 publisher gets PUBACK 0x10 [MQTT-3.4.2-1]."""
    rec = recorder("on_published")
    memory = hub(rec)
    watch(memory, "t", client_id="w1")
    watch(memory, "#", client_id="w2")
    publisher = join(memory, "p")
    publisher.send(Publish("t", b"both", 1, packet_id=1), Publish("u", b"one", 0),
                   Publish("$none", b"nobody", 1, packet_id=2))
    assert publisher.received() == [PubAck(1), PubAck(2, 0x10)]
    assert [(info.client_id, m.topic, m.payload, count)
            for info, m, count in rec.of("on_published")] == [
        ("p", "t", b"both", 2), ("p", "u", b"one", 1), ("p", "$none", b"nobody", 0)]


def test_publish_dropped_offline_and_queue_full() -> None:
    """``on_publish_dropped`` gets the client id, the message and why it will not get it:
    "offline" for a QoS 0 message to a disconnected client, "queue full" beyond
    ``maximum_queued_messages`` for a stored session, whose queued QoS 1 messages are kept
    [MQTT-4.5.0-1, MQTT-3.1.2-23]."""
    rec = recorder("on_publish_dropped")
    memory = hub(rec, maximum_queued_messages=1)
    away = join(memory, "away", expiry=NEVER)
    subscribe(away, "q0", 0)
    subscribe(away, "q1", 1, packet_id=2)
    away.drop()
    publisher = join(memory, "p")
    publisher.send(Publish("q0", b"lost", 1, packet_id=1), Publish("q1", b"kept", 1, packet_id=2),
                   Publish("q1", b"overflow", 1, packet_id=3))
    assert [(cid, m.payload, why) for cid, m, why in rec.of("on_publish_dropped")] == [
        ("away", b"lost", "offline"), ("away", b"overflow", "queue full")]
    back = join(memory, "away", clean=False, expiry=NEVER)
    assert payloads(back) == [b"kept"]


def test_publish_dropped_too_large() -> None:
    """A message larger than the client's Maximum Packet Size is discarded as if sent
    [MQTT-3.1.2-24, MQTT-3.1.2-25]: ``on_publish_dropped`` says "too large"; for a QoS 1
    delivery ``on_qos_dropped`` is told too, with no packet identifier."""
    rec = recorder("on_publish_dropped", "on_qos_dropped", "on_qos_publish")
    memory = hub(rec)
    small = join(memory, "small", properties=Properties(maximum_packet_size=64))
    subscribe(small, "t", 1)
    publisher = join(memory, "p")
    publisher.send(Publish("t", b"x" * 200, 0), Publish("t", b"y" * 200, 1, packet_id=1),
                   Publish("t", b"fits", 1, packet_id=2))
    (fits,) = publishes(small)
    assert fits.payload == b"fits"
    assert [(cid, m.payload[:1], why) for cid, m, why in rec.of("on_publish_dropped")] == [
        ("small", b"x", "too large"), ("small", b"y", "too large")]
    ((cid, packet_id, delivery),) = rec.of("on_qos_dropped")
    assert (cid, packet_id, delivery.message.payload[:1], delivery.qos) == ("small", None, b"y", 1)
    assert [args[1] for args in rec.of("on_qos_publish")] == [fits.packet_id]


def test_publish_dropped_slow_consumer() -> None:
    """A client whose transport pushes back past ``maximum_pending_bytes`` is a slow consumer:
    a QoS 0 message for it that the broker does not hold back (here one the application
    publishes) is dropped and ``on_publish_dropped`` says "slow consumer", while QoS 1 messages
    are queued (``on_message_queued``) and delivered when it drains, in order
    [MQTT-4.6.0-6]."""
    rec = recorder("on_publish_dropped", "on_message_queued")
    memory = hub(rec, maximum_pending_bytes=100)
    slow = watch(memory, "t", 1, client_id="slow")
    slow.connection.pause()
    inline = memory.broker.inline
    inline.publish("t", b"a" * 150)
    assert slow.connection.blocked
    inline.publish("t", b"b")
    inline.publish("t", b"c", qos=1)
    assert [(cid, m.payload, why) for cid, m, why in rec.of("on_publish_dropped")] == [
        ("slow", b"b", "slow consumer")]
    assert [(cid, d.message.payload) for cid, d in rec.of("on_message_queued")] == [
        ("slow", b"c")]
    slow.connection.resume()
    assert payloads(slow) == [b"a" * 150, b"c"]


def test_publish_dropped_expired() -> None:
    """A queued message whose Message Expiry Interval passed before it could be sent is not
    sent [MQTT-3.3.2-5]: ``on_publish_dropped`` says "expired" and ``on_qos_dropped`` gets
    the delivery, with no packet identifier."""
    rec = recorder("on_publish_dropped", "on_qos_dropped")
    memory = hub(rec)
    away = join(memory, "away", expiry=NEVER)
    subscribe(away, "t", 1)
    away.drop()
    publisher = join(memory, "p")
    publisher.send(Publish("t", b"short", 1, packet_id=1,
                           properties=Properties(message_expiry_interval=5)),
                   Publish("t", b"lasting", 1, packet_id=2))
    memory.advance(10)
    back = join(memory, "away", clean=False, expiry=NEVER)
    assert payloads(back) == [b"lasting"]
    ((cid, packet_id, delivery),) = rec.of("on_qos_dropped")
    assert (cid, packet_id, delivery.message.payload) == ("away", None, b"short")
    assert [(cid, m.payload, why) for cid, m, why in rec.of("on_publish_dropped")] == [
        ("away", b"short", "expired")]


def test_retain_message_changes() -> None:
    """``on_retain_message`` gets each retained message stored (1) [MQTT-3.3.1-5], cleared by
    a zero-byte payload (-1) [MQTT-3.3.1-6, MQTT-3.3.1-7] or refused by the limit
    ``maximum_retained_messages`` (0); a later subscriber gets what was stored."""
    rec = recorder("on_retain_message")
    memory = hub(rec, maximum_retained_messages=1)
    publisher = join(memory, "p")
    publisher.send(Publish("a", b"1", 0, retain=True), Publish("b", b"2", 0, retain=True),
                   Publish("a", b"", 0, retain=True), Publish("b", b"3", 0, retain=True),
                   Publish("b", b"4", 0, retain=False))
    assert [(m.topic, m.payload, change) for m, change in rec.of("on_retain_message")] == [
        ("a", b"1", 1), ("b", b"2", 0), ("a", b"", -1), ("b", b"3", 1)]
    late = join(memory, "late")
    assert [(p.topic, p.payload, p.retain) for p in subscribe(late, "#", 0)] == [
        ("b", b"3", True)]


def test_retain_published() -> None:
    """``on_retain_published`` gets the subscriber and each retained message sent to it because
    it subscribed, with RETAIN 1 [MQTT-3.3.1-9, MQTT-3.3.1-9 (3.1.1)]; Retain Handling 2 sends
    none, and tells nobody [MQTT-3.3.1-11]."""
    rec = recorder("on_retain_published")
    memory = hub(rec)
    join(memory, "p").send(Publish("r/1", b"one", 1, packet_id=1, retain=True),
                           Publish("r/2", b"two", 0, retain=True))
    late = join(memory, "late")
    sent = subscribe(late, "r/#", 1)
    assert sorted((p.topic, p.payload, p.retain) for p in sent) == [
        ("r/1", b"one", True), ("r/2", b"two", True)]
    assert sorted((info.client_id, m.topic) for info, m in rec.of("on_retain_published")) == [
        ("late", "r/1"), ("late", "r/2")]
    other = join(memory, "other")
    assert subscribe(other, "r/#", 1, retain_handling=2) == []
    assert len(rec.of("on_retain_published")) == 2


def test_retained_expired() -> None:
    """``on_retained_expired`` gets the topic of a retained message that expired: one with its
    own Message Expiry Interval, or any after the broker's ``retained_message_expiry``; a
    later subscriber gets neither [MQTT-3.3.2-5]."""
    rec = recorder("on_retained_expired")
    memory = hub(rec, retained_message_expiry=20)
    publisher = join(memory, "p")
    publisher.send(Publish("own", b"x", 0, retain=True,
                           properties=Properties(message_expiry_interval=5)),
                   Publish("default", b"y", 0, retain=True))
    memory.advance(6)
    assert rec.of("on_retained_expired") == [("own",)]
    memory.advance(15)
    assert rec.of("on_retained_expired") == [("own",), ("default",)]
    assert memory.broker.retained == {}
    assert subscribe(join(memory, "late"), "#", 0) == []


# -- deliveries ---------------------------------------------------------------------------------


def test_message_queued() -> None:
    """``on_message_queued`` gets the client id and the delivery of a QoS 1 message kept for
    later: the client is offline (stored in its session [MQTT-4.5.0-1]) or its send quota
    (Receive Maximum 1) is used up [MQTT-4.9.0-2]; it is sent when the quota allows."""
    rec = recorder("on_message_queued")
    memory = hub(rec)
    narrow = join(memory, "narrow", properties=Properties(receive_maximum=1))
    subscribe(narrow, "t", 1)
    publisher = join(memory, "p")
    publisher.send(Publish("t", b"first", 1, packet_id=1),
                   Publish("t", b"second", 1, packet_id=2))
    (first,) = publishes(narrow)
    ((cid, delivery),) = rec.of("on_message_queued")
    assert isinstance(delivery, Delivery)
    assert (cid, delivery.message.payload, delivery.qos) == ("narrow", b"second", 1)
    narrow.send(PubAck(first.packet_id))  # type: ignore[arg-type]
    (second,) = publishes(narrow)
    assert second.payload == b"second"
    narrow.send(PubAck(second.packet_id))  # type: ignore[arg-type]
    away = join(memory, "away", expiry=NEVER)
    subscribe(away, "t", 1)
    away.drop()
    publisher.send(Publish("t", b"third", 1, packet_id=3))
    assert [(c, d.message.payload) for c, d in rec.of("on_message_queued")][1:] == [
        ("away", b"third")]


def test_qos_publish_resend_and_complete() -> None:
    """``on_qos_publish`` gets the client id, the Packet Identifier and the delivery of each
    QoS 1 PUBLISH sent, with ``resend`` False; after a reconnection with Clean Start 0 it is
    sent again with DUP 1 under the same identifier and ``resend`` True [MQTT-4.4.0-1,
    MQTT-3.3.1-1]; the PUBACK completes it (``on_qos_complete``) [MQTT-4.3.2-3]."""
    rec = recorder("on_qos_publish", "on_qos_complete")
    memory = hub(rec)
    sub = join(memory, "s", expiry=NEVER)
    subscribe(sub, "t", 1)
    join(memory, "p").send(Publish("t", b"m", 1, packet_id=1))
    (sent,) = publishes(sub)
    ((cid, packet_id, delivery, resend),) = rec.of("on_qos_publish")
    assert (cid, packet_id, delivery.message.payload, resend) == ("s", sent.packet_id, b"m",
                                                                  False)
    assert sent.dup is False
    sub.drop()
    again = join(memory, "s", clean=False, expiry=NEVER)
    (resent,) = publishes(again)
    assert (resent.packet_id, resent.dup, resent.payload) == (sent.packet_id, True, b"m")
    assert rec.of("on_qos_publish")[1] == ("s", sent.packet_id, delivery, True)
    again.send(PubAck(sent.packet_id))  # type: ignore[arg-type]
    assert rec.of("on_qos_complete") == [("s", sent.packet_id, delivery)]
    assert memory.broker.sessions["s"].inflight == {}


def test_qos2_progress_complete_and_refused() -> None:
    """For a QoS 2 delivery, PUBREC from the client is answered with PUBREL [MQTT-4.3.3-4]
    and ``on_qos_progress`` is told; PUBCOMP completes it (``on_qos_complete``)
    [MQTT-4.3.3-5].  A PUBREC with a failure reason code also completes it, and no PUBREL
    is sent [MQTT-4.4.0-2]."""
    rec = recorder("on_qos_progress", "on_qos_complete")
    memory = hub(rec)
    sub = watch(memory, "t", 2, client_id="s")
    publisher = join(memory, "p")
    publisher.send(Publish("t", b"ok", 2, packet_id=1))
    (first,) = publishes(sub)
    sub.send(PubRec(first.packet_id))  # type: ignore[arg-type]
    assert sub.received() == [PubRel(first.packet_id)]  # type: ignore[arg-type]
    ((cid, packet_id, delivery),) = rec.of("on_qos_progress")
    assert (cid, packet_id, delivery.message.payload, delivery.state) == (
        "s", first.packet_id, b"ok", 1)
    assert rec.of("on_qos_complete") == []
    sub.send(PubComp(first.packet_id))  # type: ignore[arg-type]
    assert rec.of("on_qos_complete") == [("s", first.packet_id, delivery)]
    publisher.send(Publish("t", b"no", 2, packet_id=2))
    (second,) = publishes(sub)
    sub.send(PubRec(second.packet_id, 0x80))  # type: ignore[arg-type]
    assert sub.received() == []
    cid, packet_id, refused = rec.of("on_qos_complete")[1]
    assert (cid, packet_id, refused.message.payload) == ("s", second.packet_id, b"no")
    assert len(rec.of("on_qos_progress")) == 1
    assert memory.broker.sessions["s"].inflight == {}


def test_qos_dropped_when_too_large_on_resend() -> None:
    """A message in flight that no longer fits the Maximum Packet Size the client gives when
    it reconnects is discarded as if sent [MQTT-3.1.2-25]: ``on_qos_dropped`` gets its
    Packet Identifier, and it is not resent."""
    rec = recorder("on_qos_dropped")
    memory = hub(rec)
    sub = join(memory, "s", expiry=NEVER)
    subscribe(sub, "t", 1)
    join(memory, "p").send(Publish("t", b"z" * 100, 1, packet_id=1))
    (sent,) = publishes(sub)
    sub.drop()
    back = memory.client(protocol_level=5)
    back.connect("s", clean_start=False, properties=Properties(
        session_expiry_interval=NEVER, maximum_packet_size=64))
    assert back.received() == []
    ((cid, packet_id, delivery),) = rec.of("on_qos_dropped")
    assert (cid, packet_id, delivery.message.payload) == ("s", sent.packet_id, b"z" * 100)
    assert memory.broker.sessions["s"].inflight == {}


def test_packet_ids_exhausted() -> None:
    """``on_packet_ids_exhausted`` gets the client id and the delivery that found all 65,535
    Packet Identifiers in use [MQTT-4.3.2-1]; the delivery goes back to the head of the queue
    and nothing is sent.  (The send quota, at most 65,535, is used up first in every flow the
    protocol allows, so the session is filled by hand here.)"""
    rec = recorder("on_packet_ids_exhausted", "on_qos_publish")
    memory = hub(rec, maximum_inflight=65535)
    sub = watch(memory, "t", 1, client_id="s")
    session = memory.broker.sessions["s"]
    assert session.send_quota == 65535
    old = Delivery(Message("t", b"old", 1, False), 1, False, ())
    session.open_inflight().update(dict.fromkeys(range(1, 65536), old))
    new = Delivery(Message("t", b"new", 1, False), 1, False, ())
    sub.connection.send_delivery(new)
    memory.broker.flush()
    assert rec.calls == [("on_packet_ids_exhausted", ("s", new))]
    assert list(session.queue) == [new]
    assert sub.received() == []


def test_inbound_qos2() -> None:
    """``on_inbound_qos2`` gets the client id and Packet Identifier of a QoS 2 PUBLISH from a
    client when PUBREC is sent (``received`` True) [MQTT-4.3.3-8], not again for a duplicate
    before PUBREL [MQTT-4.3.3-10], and when PUBCOMP answers the PUBREL (False)
    [MQTT-4.3.3-11]."""
    rec = recorder("on_inbound_qos2")
    memory = hub(rec)
    watcher = watch(memory, "t", 2)
    publisher = join(memory, "p")
    publisher.send(Publish("t", b"m", 2, packet_id=7))
    assert publisher.received() == [PubRec(7)]
    assert rec.of("on_inbound_qos2") == [("p", 7, True)]
    publisher.send(Publish("t", b"m", 2, dup=True, packet_id=7))
    assert publisher.received() == [PubRec(7)]
    assert len(rec.of("on_inbound_qos2")) == 1
    publisher.send(PubRel(7))
    assert publisher.received() == [PubComp(7)]
    assert rec.of("on_inbound_qos2") == [("p", 7, True), ("p", 7, False)]
    assert len(publishes(watcher)) == 1


# -- packets ------------------------------------------------------------------------------------


def test_packet_read() -> None:
    """``on_packet_read`` gets each decoded packet with the client (an empty client id before
    CONNECT) and returns the packet to process: a PINGREQ dropped gets no PINGRESP, a PUBLISH
    changed is routed changed; the packets after them are handled in order
    [MQTT-4.6.0-6]."""

    def read(client: ClientInfo, packet: Any) -> Any:
        if isinstance(packet, PingReq):
            return None
        if isinstance(packet, Publish):
            return replace(packet, payload=packet.payload + b"!")
        return packet

    rec = recorder(on_packet_read=read)
    memory = hub(rec)
    watcher = watch(memory, "t", 1)
    rec.calls.clear()
    client = memory.client(protocol_level=5)
    client.connect("c")
    client.send(PingReq(), Publish("t", b"hi", 1, packet_id=3), PingReq())
    assert client.received() == [PubAck(3)]
    assert payloads(watcher) == [b"hi!"]
    seen = [(info.client_id, info.address, type(packet))
            for info, packet in rec.of("on_packet_read")]
    assert seen == [("", "127.0.0.1", Connect), ("c", "127.0.0.1", PingReq),
                    ("c", "127.0.0.1", Publish), ("c", "127.0.0.1", PingReq)]
    assert rec.of("on_packet_read")[2][1] == Publish("t", b"hi", 1, packet_id=3)


def test_packet_encode() -> None:
    """``on_packet_encode`` gets each packet about to be sent to a client and returns the one
    to send: a PUBLISH changed arrives changed (to that client only), a PINGRESP dropped is
    not sent."""

    def censor(client: ClientInfo, packet: Any) -> Any:
        if isinstance(packet, PingResp):
            return None
        if isinstance(packet, Publish) and client.client_id == "child":
            return replace(packet, payload=b"***")
        return packet

    rec = recorder(on_packet_encode=censor)
    memory = hub(rec)
    child = watch(memory, "t", 1, client_id="child")
    adult = watch(memory, "t", 1, client_id="adult")
    publisher = join(memory, "p")
    publisher.send(Publish("t", b"rude", 0), Publish("t", b"ruder", 1, packet_id=1), PingReq())
    assert publisher.received() == [PubAck(1)]
    assert payloads(child) == [b"***", b"***"]
    assert payloads(adult) == [b"rude", b"ruder"]
    sent = [(info.client_id, type(packet)) for info, packet in rec.of("on_packet_encode")
            if info.client_id == "p"]
    assert sent == [("p", ConnAck), ("p", PubAck), ("p", PingResp)]


def test_packet_sent() -> None:
    """``on_packet_sent`` gets each packet queued for a client and its bytes, exactly those the
    client receives, in order: CONNACK [MQTT-3.1.4-5], SUBACK [MQTT-3.8.4-1], PUBLISH,
    PINGRESP [MQTT-3.12.4-1]."""
    rec = recorder("on_packet_sent")
    memory = hub(rec)
    client = memory.client(protocol_level=5)
    client.send(Connect("c", 5), Subscribe(1, (Subscription("t", 0),)), Publish("t", b"me"),
                PingReq())
    data = client.transport.value()
    mine = [(packet, raw) for info, packet, raw in rec.of("on_packet_sent")
            if info.client_id == "c"]
    assert [type(packet) for packet, _ in mine] == [ConnAck, SubAck, Publish, PingResp]
    assert all(encode(packet, 5) == raw for packet, raw in mine)
    assert b"".join(raw for _, raw in mine) == data


def test_packet_processed() -> None:
    """``on_packet_processed`` is told of each packet after the broker handled it, in order,
    with the client as it then is (the CONNECT's with the client it made known); a packet
    dropped by ``on_packet_read`` is not processed [MQTT-4.6.0-6]."""
    seen: List[Any] = []
    memory: InMemoryBroker

    def processed(client: ClientInfo, packet: Any) -> None:
        session = memory.broker.sessions.get("c")
        seen.append((client.client_id, type(packet), session is not None and bool(
            session.subscriptions)))

    rec = recorder(on_packet_processed=processed,
                   on_packet_read=lambda c, p: None if isinstance(p, PingReq) else p)
    memory = hub(rec)
    client = memory.client(protocol_level=5)
    client.send(Connect("c", 5), Subscribe(1, (Subscription("t", 0),)), PingReq(),
                Unsubscribe(2, ("t",)), Disconnect())
    assert [type(p) for p in client.received()] == [ConnAck, SubAck, UnsubAck]
    assert seen == [("c", Connect, False), ("c", Subscribe, True), ("c", Unsubscribe, False),
                    ("c", Disconnect, False)]


# -- failing observers --------------------------------------------------------------------------


class Broken(Hook):
    """Raises from every observer it implements."""

    def on_published(self, client: ClientInfo, message: Any, count: int) -> None:
        raise RuntimeError("observer bug")

    def on_subscribed(self, client: ClientInfo, packet: Any, reason_codes: Any) -> None:
        raise RuntimeError("observer bug")

    def on_qos_complete(self, client_id: str, packet_id: int, delivery: Any) -> None:
        raise RuntimeError("observer bug")

    def on_disconnect(self, client: ClientInfo, reason_code: Any, session_kept: bool) -> None:
        raise RuntimeError("observer bug")


def test_raising_observer_breaks_nothing() -> None:
    """An observer that raises is logged and skipped: the hooks after it still get the event,
    and the clients get what they would without it (SUBACK [MQTT-3.8.4-1], PUBACK
    [MQTT-4.3.2-4], the message [MQTT-4.5.0-1])."""
    rec = recorder("on_published", "on_subscribed", "on_qos_complete", "on_disconnect")
    memory = hub(Broken(), rec)
    sub = watch(memory, "t", 1, client_id="s")
    publisher = join(memory, "p")
    publisher.send(Publish("t", b"m", 1, packet_id=1))
    assert publisher.received() == [PubAck(1)]
    (message,) = publishes(sub)
    sub.send(PubAck(message.packet_id))  # type: ignore[arg-type]
    publisher.send(Disconnect())
    assert rec.events() == ["on_subscribed", "on_published", "on_qos_complete",
                            "on_disconnect"]
    assert memory.broker.sessions["s"].inflight == {}
    assert not sub.closed


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])
