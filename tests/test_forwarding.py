"""A QoS 0 PUBLISH that subscribers receive unchanged is forwarded as the bytes it arrived as,
without being encoded again; every other delivery is encoded as the subscriber must get it."""

from __future__ import annotations

import sys

from tests.spec import check_cited_labels
from twisted_mqtt.codec import encode
from twisted_mqtt.packets import Publish, SubAck, Subscribe, Subscription
from twisted_mqtt.properties import Properties
from twisted_mqtt.testing import InMemoryBroker, InMemoryClient


def _subscriber(hub: InMemoryBroker, name: str, level: int, sub_id: int = 0) -> InMemoryClient:
    client = hub.client(protocol_level=level)
    assert client.connect(name).reason_code == 0
    props = Properties(subscription_identifiers=(sub_id,)) if sub_id else Properties()
    client.send(Subscribe(1, (Subscription("t/#", 0),), props))
    assert isinstance(client.received()[0], SubAck)
    return client


def test_unchanged_qos0_forwarded_as_received() -> None:
    """A 3.1.1 QoS 0 PUBLISH reaches 3.1.1 subscribers as the very bytes it arrived as, with
    RETAIN 0 and DUP 0 [MQTT-3.3.1-9 (3.1.1), MQTT-3.3.1-3 (3.1.1)], and is never encoded."""
    hub = InMemoryBroker()
    routed = hub.record_published()
    subs = [_subscriber(hub, f"s{i}", 4) for i in range(3)]
    pub = hub.client(protocol_level=4)
    pub.connect("pub")
    sent = encode(Publish("t/x", b"payload"), 4)
    pub.send_bytes(sent)
    for client in subs:
        assert client.transport.value() == sent
    assert routed[0].frame == sent and routed[0]._cache is None


def test_v5_properties_forwarded_in_the_frame() -> None:
    """A v5 QoS 0 PUBLISH with user properties and no expiry reaches a v5 subscriber without
    subscription identifiers as sent: the properties unaltered and in order [MQTT-3.3.2-17,
    MQTT-3.3.2-18]; a 3.1.1 subscriber gets it re-encoded without properties."""
    hub = InMemoryBroker()
    v5 = _subscriber(hub, "v5", 5)
    v3 = _subscriber(hub, "v3", 4)
    pub = hub.client(protocol_level=5)
    pub.connect("pub")
    props = Properties(user_properties=(("b", "2"), ("a", "1")), content_type="text/plain")
    sent = encode(Publish("t/x", b"p", properties=props), 5)
    pub.send_bytes(sent)
    assert v5.transport.value() == sent
    assert v3.received() == [Publish("t/x", b"p")]


def test_changed_deliveries_are_encoded() -> None:
    """What a subscriber must get differently is encoded for it: a subscription identifier
    added [MQTT-3.3.4-3], the expiry interval reduced [MQTT-3.3.2-6], a topic alias removed
    [MQTT-3.3.2-7], RETAIN cleared for a live subscriber [MQTT-3.3.1-12]."""
    hub = InMemoryBroker()
    with_id = _subscriber(hub, "with-id", 5, sub_id=7)
    plain = _subscriber(hub, "plain", 5)
    pub = hub.client(protocol_level=5)
    pub.connect("pub")
    pub.send(Publish("t/x", b"1"))
    assert with_id.received() == [Publish("t/x", b"1", properties=Properties(
        subscription_identifiers=(7,)))]
    assert plain.received() == [Publish("t/x", b"1")]
    hub.advance(1)
    pub.send(Publish("t/x", b"2", properties=Properties(message_expiry_interval=60)))
    assert plain.received() == [Publish("t/x", b"2", properties=Properties(
        message_expiry_interval=60))]
    pub.send(Publish("t/x", b"3", properties=Properties(topic_alias=1)))
    pub.send(Publish("", b"4", properties=Properties(topic_alias=1)))
    assert plain.received() == [Publish("t/x", b"3"), Publish("t/x", b"4")]
    pub.send(Publish("t/x", b"5", retain=True))
    assert plain.received() == [Publish("t/x", b"5")]


def test_cited_labels() -> None:
    """Every test cites what it proves [MQTT-3.3.2-17]."""
    check_cited_labels(sys.modules[__name__], every_test=True)
