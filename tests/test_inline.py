"""The inline client (``Broker.inline``, ``twisted_mqtt.inline.InlineClient``) and packet
injection (``Broker.inject``), against real MQTT clients in memory.

The inline client is the embedding application itself: it publishes and subscribes without a
network connection, is not asked the ACL, may publish to ``$SYS``, and its subscriptions call
back with each message (retained ones first).  ``Broker.inject`` hands the broker a packet as
if a connected client had sent it, with everything that follows from that (acknowledgements to
that client, its ACL, its No Local subscriptions).

In memory on a ``task.Clock``; docstrings cite ``[MQTT-x.y.z-n]`` (MQTT 5.0) and
``[MQTT-x.y.z-n (3.1.1)]`` labels a test also proves.
"""

from __future__ import annotations

import sys
from typing import Any, List

import pytest
from twisted.internet.defer import Deferred

from tests.hook_helpers import (
    Rules,
    hub,
    join,
    payloads,
    publishes,
    recorder,
    subscribe,
    watch,
)
from tests.spec import check_cited_labels
from twisted_mqtt.inline import InlineClient, InlineMessage
from twisted_mqtt.interfaces import Veto
from twisted_mqtt.packets import (
    ConnAck,
    Connect,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    PubRec,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
)
from twisted_mqtt.properties import Properties

PROPS = Properties(content_type="text/plain", user_properties=(("unit", "C"), ("room", "1")),
                   correlation_data=b"\x01")


# -- publish ------------------------------------------------------------------------------------


@pytest.mark.parametrize("qos", (0, 1, 2))
def test_publish_reaches_subscribers(qos: int) -> None:
    """``inline.publish`` routes a message to MQTT subscribers at the QoS they are due, with
    its properties unaltered (v5) [MQTT-3.3.2-16, MQTT-3.3.2-17, MQTT-3.3.2-20], and returns
    how many sessions got it; a str payload is sent as UTF-8."""
    broker = hub()
    v5 = watch(broker, "sensors/#", 2, client_id="v5")
    v3 = watch(broker, "sensors/+", 1, client_id="v3", level=4)
    count = broker.broker.inline.publish("sensors/t", "21°", qos=qos, properties=PROPS)
    assert count == 2
    (got,) = publishes(v5)
    assert (got.topic, got.payload, got.qos, got.retain) == ("sensors/t", "21°".encode(), qos,
                                                             False)
    assert got.properties.content_type == "text/plain"
    assert got.properties.user_properties == (("unit", "C"), ("room", "1"))
    assert got.properties.correlation_data == b"\x01"
    (old,) = publishes(v3)
    assert (old.payload, old.qos) == ("21°".encode(), min(qos, 1))
    assert broker.broker.inline.publish("nobody/listens", b"x") == 0


def test_publish_retained() -> None:
    """A retained inline message is stored and sent to later subscribers with RETAIN 1
    [MQTT-3.3.1-5, MQTT-3.3.1-9]; a zero-byte retained one clears it [MQTT-3.3.1-6]."""
    broker = hub()
    inline = broker.broker.inline
    inline.publish("status", b"up", qos=1, retain=True)
    late = join(broker, "late")
    assert [(p.topic, p.payload, p.qos, p.retain) for p in subscribe(late, "status", 1)] == [
        ("status", b"up", 1, True)]
    inline.publish("status", b"", retain=True)
    assert [p.payload for p in publishes(late)] == [b""]
    assert subscribe(join(broker, "later"), "status", 1) == []


def test_publish_to_sys() -> None:
    """The inline client may publish to ``$SYS`` topics, which a "$SYS/#" subscriber gets and
    a "#" subscriber does not [MQTT-4.7.2-1]; a network client's PUBLISH there is refused
    (v5 PUBACK 0x87 [MQTT-3.4.2-1]) and routed nowhere."""
    broker = hub()
    system = watch(broker, "$SYS/#", 1, client_id="system")
    everything = watch(broker, "#", 1, client_id="everything")
    assert broker.broker.inline.publish("$SYS/broker/custom", b"42") == 1
    assert [(p.topic, p.payload) for p in publishes(system)] == [("$SYS/broker/custom", b"42")]
    client = join(broker, "c")
    client.send(Publish("$SYS/broker/custom", b"forged", 1, packet_id=1))
    assert client.received() == [PubAck(1, 0x87)]
    assert system.received() == []
    assert everything.received() == []


def test_not_asked_the_acl() -> None:
    """The inline client is exempt from the ACL: with an authorizer refusing every PUBLISH and
    every delivery, a network client's PUBLISH is refused (PUBACK 0x87 [MQTT-3.4.2-1]) while
    the inline client's is routed, and an inline subscription still gets messages; the
    authorizer is never asked about the inline client.  The publish hooks still see it."""
    rules = Rules(publish=lambda c, t: False, receive=lambda c, t: c == "trusted")
    hooks = recorder("on_published")
    broker = hub(rules, hooks)
    trusted = watch(broker, "#", 1, client_id="trusted")
    got: List[InlineMessage] = []
    inline = broker.broker.inline
    inline.subscribe("#", got.append)
    client = join(broker, "c")
    client.send(Publish("t", b"refused", 1, packet_id=1))
    assert client.received() == [PubAck(1, 0x87)]
    assert inline.publish("t", b"allowed", qos=1) == 2
    assert payloads(trusted) == [b"allowed"]
    assert [m.payload for m in got] == [b"allowed"]
    assert [asked for asked in rules.asked if asked[1].startswith("inline")] == []
    ((info, message, count),) = hooks.of("on_published")
    assert (info.client_id, info.listener, message.origin, count) == (
        "inline", "inline", "inline", 2)


def test_publish_hooks_apply() -> None:
    """``on_publish`` hooks see inline messages too: a rewrite is routed rewritten, a ``Veto``
    or None routes nothing and ``publish`` returns 0 [MQTT-4.5.0-1]."""

    def hook(client: Any, message: Any) -> Any:
        if message.topic == "veto":
            return Veto(0x87)
        if message.topic == "drop":
            return None
        return message.evolve(payload=message.payload + b"!")

    broker = hub(recorder(on_publish=hook))
    watcher = watch(broker, "#", 1)
    inline = broker.broker.inline
    assert inline.publish("veto", b"x") == 0
    assert inline.publish("drop", b"x") == 0
    assert inline.publish("ok", b"x") == 1
    assert payloads(watcher) == [b"x!"]


@pytest.mark.parametrize(("topic", "qos", "payload"), (
    ("", 0, b"x"), ("a/+", 0, b"x"), ("a/#", 0, b"x"), ("a\x00b", 0, b"x"),
    ("t" * 65536, 0, b"x"), ("t", 3, b"x"), ("t", -1, b"x"), ("t", 0, 42),
))
def test_publish_refuses_bad_arguments(topic: str, qos: int, payload: Any) -> None:
    """A topic that is empty, has a wildcard [MQTT-3.3.2-2] or a null character
    [MQTT-1.5.4-2], or is too long, a QoS other than 0, 1, 2, or a payload that is neither
    bytes nor str raise ``ValueError``, and nothing is published."""
    broker = hub()
    watcher = watch(broker, "#")
    with pytest.raises(ValueError):
        broker.broker.inline.publish(topic, payload, qos=qos)
    assert watcher.received() == []


@pytest.mark.parametrize("properties", (
    Properties(topic_alias=3), Properties(subscription_identifiers=(5,)),
    Properties(session_expiry_interval=5), Properties(response_topic="replies/#"),
    Properties(payload_format_indicator=1),
))
def test_publish_refuses_bad_properties(properties: Properties) -> None:
    """Only the properties that travel with a message are accepted: not a Topic Alias or a
    Subscription Identifier, which belong to one hop (subscribers get only their own
    [MQTT-3.3.2-11, MQTT-3.3.4-6]), nor a property PUBLISH cannot carry; a Response Topic
    must be a topic name [MQTT-3.3.2-14], and Payload Format Indicator 1 needs a UTF-8 payload
    [MQTT-3.3.2-4].  Anything else raises ``ValueError`` and nothing is published."""
    broker = hub()
    watcher = watch(broker, "#")
    with pytest.raises(ValueError):
        broker.broker.inline.publish("t", b"\xff", properties=properties)
    assert watcher.received() == []
    assert broker.broker.inline.publish("t", "é", properties=Properties(
        payload_format_indicator=1, response_topic="replies/1")) == 1


# -- subscribe ----------------------------------------------------------------------------------


def test_subscribe_receives_retained_then_live() -> None:
    """An inline subscription's callback gets the matching retained messages first, with
    ``retain`` True [MQTT-3.3.1-9], then each matching message as published (``retain`` False
    [MQTT-3.3.1-12]), at the lower of the published and the subscribed QoS, with its
    properties and the subscription identifier given."""
    broker = hub()
    publisher = join(broker, "p")
    publisher.send(Publish("home/kitchen", b"20", 1, packet_id=1, retain=True),
                   Publish("home/hall", b"18", 0, retain=True), Publish("away/x", b"0", 0,
                                                                        retain=True))
    got: List[InlineMessage] = []
    broker.broker.inline.subscribe("home/+", got.append, subscription_id=7, qos=1)
    assert sorted((m.topic, m.payload, m.qos, m.retain, m.subscription_id) for m in got) == [
        ("home/hall", b"18", 0, True, 7), ("home/kitchen", b"20", 1, True, 7)]
    got.clear()
    publisher.received()
    publisher.send(Publish("home/kitchen", b"21", 2, packet_id=2, properties=PROPS),
                   Publish("away/y", b"1", 0))
    assert publisher.received() == [PubRec(2)]
    assert got == [InlineMessage("home/kitchen", b"21", 1, False, PROPS, 7, origin="p")]


def test_two_subscriptions_two_callbacks() -> None:
    """Each inline subscription has its own callback; a message matching both reaches both,
    one matching one reaches that one [MQTT-3.3.2-3]."""
    broker = hub()
    inline = broker.broker.inline
    wide: List[str] = []
    narrow: List[str] = []
    inline.subscribe("a/#", lambda m: wide.append(m.topic))
    inline.subscribe("a/b", lambda m: narrow.append(m.topic))
    publisher = join(broker, "p")
    publisher.send(Publish("a/b", b"1", 0), Publish("a/c", b"2", 0))
    assert wide == ["a/b", "a/c"]
    assert narrow == ["a/b"]


def test_unsubscribe_stops_delivery() -> None:
    """``unsubscribe`` ends a subscription (True the first time, False when there is none), and
    its callback gets nothing more [MQTT-3.10.4-2]; the other subscriptions go on."""
    broker = hub()
    inline = broker.broker.inline
    got: List[bytes] = []
    kept: List[bytes] = []
    inline.subscribe("t", lambda m: got.append(m.payload))
    inline.subscribe("#", lambda m: kept.append(m.payload))
    publisher = join(broker, "p")
    publisher.send(Publish("t", b"1", 0))
    assert inline.unsubscribe("t") is True
    assert inline.unsubscribe("t") is False
    publisher.send(Publish("t", b"2", 0))
    assert got == [b"1"]
    assert kept == [b"1", b"2"]


def test_shared_inline_subscription() -> None:
    """An inline subscription can be a member of a shared subscription: each message goes to
    one member only [MQTT-4.8.2-3], and it gets no retained messages on subscribing."""
    broker = hub()
    broker.broker.inline.publish("jobs/old", b"retained", retain=True)
    got: List[bytes] = []
    broker.broker.inline.subscribe("$share/workers/jobs/#", lambda m: got.append(m.payload))
    worker = join(broker, "worker")
    subscribe(worker, "$share/workers/jobs/#", 0)
    publisher = join(broker, "p")
    for n in range(4):
        publisher.send(Publish("jobs/new", bytes([n]), 0))
    mine = payloads(worker)
    assert sorted(got + mine) == [bytes([n]) for n in range(4)]
    assert got and mine


@pytest.mark.parametrize("topic_filter", ("", "a/#/b", "a+", "#/a", "a\x00"))
def test_subscribe_refuses_bad_filters(topic_filter: str) -> None:
    """A malformed topic filter (a wildcard not alone in its level, "#" not last
    [MQTT-4.7.1-1], empty [MQTT-4.7.3-1]) raises ``ValueError`` and subscribes nothing."""
    broker = hub()
    with pytest.raises(ValueError):
        broker.broker.inline.subscribe(topic_filter, lambda m: None)
    assert broker.broker.tree.count == 0


def test_inline_client_of_its_own() -> None:
    """``InlineClient(broker, client_id)`` publishes under its own client id, which is the
    origin a No Local subscription of that id would skip [MQTT-3.8.3-3]; ``broker.inline`` is
    one shared instance."""
    broker = hub()
    assert broker.broker.inline is broker.broker.inline
    watcher = watch(broker, "#")
    local = InlineClient(broker.broker, client_id="app")
    seen = recorder("on_published")
    broker.broker.hooks.add(seen)
    assert local.publish("t", b"x") == 1
    assert payloads(watcher) == [b"x"]
    ((info, message, _),) = seen.of("on_published")
    assert (info.client_id, message.origin) == ("app", "app")


# -- injection ----------------------------------------------------------------------------------


def test_inject_publish() -> None:
    """``inject`` handles a PUBLISH as if the client had sent it: subscribers get it, the client
    gets the PUBACK [MQTT-4.3.2-4], and its own No Local subscription skips it
    [MQTT-3.8.3-3]."""
    broker = hub()
    watcher = watch(broker, "t", 1)
    client = join(broker, "c")
    subscribe(client, "t", 1, no_local=True)
    broker.broker.inject("c", Publish("t", b"injected", 1, packet_id=5))
    assert client.received() == [PubAck(5)]
    (got,) = publishes(watcher)
    assert (got.topic, got.payload, got.qos) == ("t", b"injected", 1)


@pytest.mark.parametrize("level", (4, 5))
def test_inject_publish_is_subject_to_the_acl(level: int) -> None:
    """An injected PUBLISH is that client's: the authorizer is asked about that client, and a
    refusal answers that client as it would its own PUBLISH (v5 PUBACK 0x87 [MQTT-3.4.2-1],
    v3 a plain PUBACK); nobody gets the message."""
    rules = Rules(publish=lambda c, t: t != "secret")
    broker = hub(rules)
    watcher = watch(broker, "#", 1)
    client = join(broker, "c", level)
    broker.broker.inject("c", Publish("secret", b"x", 1, packet_id=1))
    assert client.received() == [PubAck(1, 0x87 if level == 5 else 0)]
    assert ("publish", "c", "secret") in rules.asked
    assert watcher.received() == []


def test_inject_subscribe() -> None:
    """An injected SUBSCRIBE subscribes the client: it gets the SUBACK [MQTT-3.8.4-1], then the
    retained messages [MQTT-3.3.1-9] and the messages published afterwards; an injected
    UNSUBSCRIBE and PINGREQ are answered too [MQTT-3.10.4-4, MQTT-3.12.4-1]."""
    broker = hub()
    broker.broker.inline.publish("news/old", b"retained", retain=True)
    client = join(broker, "c")
    broker.broker.inject("c", Subscribe(3, (Subscription("news/#", 1),)))
    packets = client.received()
    assert packets[0] == SubAck(3, (1,))
    assert [(p.payload, p.retain) for p in packets[1:]] == [(b"retained", True)]
    broker.broker.inline.publish("news/new", b"fresh", qos=1)
    assert payloads(client) == [b"fresh"]
    broker.broker.inject("c", Unsubscribe(4, ("news/#",)))
    broker.broker.inject("c", PingReq())
    assert client.received() == [UnsubAck(4, (0,)), PingResp()]


@pytest.mark.parametrize("packet_hook", (False, True))
def test_inject_keeps_order_behind_a_pending_decision(packet_hook: bool) -> None:
    """Packets injected while the client's own PUBLISH awaits a Deferred ACL decision wait
    behind it, as packets the client sent would: PUBACK, then PINGRESP, then the injected
    PUBLISH's PUBACK [MQTT-4.6.0-6, MQTT-3.12.4-1]; with or without packet hooks."""
    decision: Deferred[Any] = Deferred()
    hooks: List[Any] = [Rules(publish=lambda c, t: decision if t == "slow" else True)]
    if packet_hook:
        hooks.append(recorder("on_packet_sent"))
    broker = hub(*hooks)
    watcher = watch(broker, "#", 1)
    client = join(broker, "c")
    client.send(Publish("slow", b"1", 1, packet_id=1))
    broker.broker.inject("c", PingReq())
    broker.broker.inject("c", Publish("fast", b"2", 1, packet_id=2))
    assert client.received() == []
    decision.callback(True)
    assert client.received() == [PubAck(1), PingResp(), PubAck(2)]
    assert payloads(watcher) == [b"1", b"2"]


def test_inject_for_unknown_client() -> None:
    """Injecting for a client id that is not connected raises ``KeyError``: never seen, or
    with a session kept while it is away [MQTT-3.1.2-23]."""
    broker = hub()
    with pytest.raises(KeyError):
        broker.broker.inject("ghost", PingReq())
    join(broker, "away", expiry=60).drop()
    assert "away" in broker.broker.sessions
    with pytest.raises(KeyError):
        broker.broker.inject("away", PingReq())


@pytest.mark.parametrize("level", (4, 5))
def test_network_client_cannot_take_an_inline_subscription(level: int) -> None:
    """A network client naming the client id of an inline subscription is refused with
    Client Identifier not valid (v3.1.1: return code 2) [MQTT-3.2.2-6, MQTT-3.2.2-8]; the
    subscription keeps its messages, and nothing fails."""
    broker = hub()
    got: List[InlineMessage] = []
    InlineClient(broker.broker).subscribe("secret/#", got.append)
    [inline_id] = [cid for cid in broker.broker.sessions if cid.startswith("inline/")]
    client = broker.client(protocol_level=level)
    client.send(Connect(inline_id, level, False))
    [ack] = client.received()
    assert isinstance(ack, ConnAck) and ack.reason_code == (0x85 if level == 5 else 2)
    assert client.closed
    join(broker, "p").send(Publish("secret/x", b"s", 0))
    assert [m.payload for m in got] == [b"s"]


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])
