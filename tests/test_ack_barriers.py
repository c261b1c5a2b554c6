"""Acknowledgement barriers (``Broker.ack_barriers``): several parts of the broker may each hold
the acknowledgement of a QoS 1/2 PUBLISH, and it is sent once all of them let it go."""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import Deferred, fail

from tests.hook_helpers import hub, join
from twisted_mqtt.errors import AckRefused
from twisted_mqtt.packets import Disconnect, PubAck, PubComp, Publish, PubRec, PubRel, ReasonCode
from twisted_mqtt.session import Message


class Holder:
    """A barrier holding the acknowledgement of messages whose topic starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.held: List[Deferred[None]] = []
        self.seen: List[Optional[str]] = []

    def __call__(self, message: Optional[Message]) -> Optional[Deferred[Any]]:
        self.seen.append(None if message is None else message.topic)
        if message is None or not message.topic.startswith(self.prefix):
            return None
        d: Deferred[None] = Deferred()
        self.held.append(d)
        return d

    def release(self) -> None:
        self.held.pop(0).callback(None)


def test_all_barriers_hold_the_ack() -> None:
    """With two barriers holding the same PUBLISH, its PUBACK waits for both, in either
    order."""
    broker = hub()
    first, second = Holder("k/"), Holder("")
    broker.broker.ack_barriers.extend([first, second])
    pub = join(broker, "pub")
    pub.send(Publish("k/1", b"x", 1, packet_id=1))
    assert pub.received() == []
    second.release()
    assert pub.received() == []
    first.release()
    broker.broker.flush()
    assert pub.received() == [PubAck(1, ReasonCode.NO_MATCHING_SUBSCRIBERS)]


def test_only_matching_messages_wait() -> None:
    """A barrier that lets a message go (None) does not delay it; PUBREL and PUBCOMP reach
    barriers with no message."""
    broker = hub()
    holder = Holder("k/")
    broker.broker.ack_barriers.append(holder)
    pub = join(broker, "pub", level=4)
    pub.send(Publish("other", b"x", 1, packet_id=1))
    assert pub.received() == [PubAck(1)]
    pub.send(Publish("k/2", b"x", 2, packet_id=2))
    assert pub.received() == []
    holder.release()
    broker.broker.flush()
    assert pub.received() == [PubRec(2)]
    pub.send(PubRel(2))
    assert pub.received() == [PubComp(2)]
    assert holder.seen == ["other", "k/2", None]


def test_refused_ack_disconnects_the_publisher() -> None:
    """A barrier failing with ``AckRefused`` disconnects the publisher with its reason code and
    no acknowledgement (a client that keeps its session sends the message again)."""
    broker = hub()
    broker.broker.ack_barriers.append(
        lambda message: fail(AckRefused("bridge buffer full")) if message else None)
    pub = join(broker, "pub")
    pub.send(Publish("k/1", b"x", 1, packet_id=1))
    packets = pub.received()
    assert packets == [Disconnect(ReasonCode.QUOTA_EXCEEDED, packets[0].properties)]
    assert packets[0].properties.reason_string == "bridge buffer full"
    assert pub.closed


def test_refused_run_disconnects_with_the_barriers_reason() -> None:
    """A run of QoS 1 PUBLISHes (one read) that two barriers hold, one of which refuses it,
    disconnects the publisher with the refusal's reason code and no acknowledgement, as for a
    single PUBLISH."""
    broker = hub()
    holder = Holder("")
    broker.broker.ack_barriers.extend([
        holder, lambda message: fail(AckRefused("bridge buffer full")) if message else None])
    pub = join(broker, "pub")
    pub.send(*[Publish("k/1", b"%d" % n, 1, packet_id=n) for n in (1, 2, 3)])
    packets = pub.received()
    assert packets == [Disconnect(ReasonCode.QUOTA_EXCEEDED, packets[0].properties)]
    assert packets[0].properties.reason_string == "bridge buffer full"
    assert pub.closed
