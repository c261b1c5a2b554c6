"""Application messages, deliveries and per-client-id session state that outlives a connection."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Set, Tuple

from twisted_mqtt.codec import encode_properties, encode_publish, publish_template
from twisted_mqtt.packets import Subscription, Will
from twisted_mqtt.properties import NO_PROPERTIES, Properties

if TYPE_CHECKING:
    from twisted_mqtt.interfaces import ClientInfo
    from twisted_mqtt.targets import DeliveryTarget
    from twisted_mqtt.topics import SharedGroup

_FOUR_BYTE_MAX = 0xFFFFFFFF  # the largest Message Expiry Interval


class Message:
    """One application message as the broker routes it.

    ``properties`` never carries a topic alias or subscription identifiers (those belong to one
    hop).  Encodings are cached per variant so that one PUBLISH is encoded once for all
    subscribers that receive it alike.
    """

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "expires_at", "origin",
                 "frame", "frame_v5", "split", "_topic_bytes", "_cache")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties = NO_PROPERTIES,
        expires_at: Optional[float] = None,
        origin: Optional[str] = None,
        frame: Any = None,
        frame_v5: bool = False,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        self.expires_at = expires_at
        self.origin = origin
        self.frame: Optional[bytes] = None if qos else frame
        """The QoS 0 PUBLISH as received, when it is exactly what a subscriber of the same
        protocol family (``frame_v5``) gets with RETAIN 0 and no subscription identifier."""
        self.frame_v5 = frame_v5
        self.split: Optional[Tuple[bytes, bytes]] = frame if qos else None
        """A QoS 1/2 PUBLISH as received, split around its packet identifier, when it is what
        a subscriber of the same protocol family (``frame_v5``) gets at the message's QoS
        with RETAIN 0, DUP 0 and no subscription identifier; a message with an expiry has
        none.  Given as ``frame`` (the packet as received: its bytes for QoS 0, the split for
        QoS 1/2), or later with ``template``."""
        self._topic_bytes: Optional[bytes] = None
        self._cache: Optional[Dict[Any, Any]] = None

    def evolve(self, **changes: Any) -> Message:
        """A copy with some of ``topic``, ``payload``, ``qos``, ``retain``, ``properties``,
        ``expires_at`` and ``origin`` changed."""
        fields = {name: getattr(self, name) for name in
                  ("topic", "payload", "qos", "retain", "properties", "expires_at", "origin")}
        fields.update(changes)
        return Message(**fields)

    def __repr__(self) -> str:
        return (f"Message({self.topic!r}, {self.payload[:32]!r}, qos={self.qos}, "
                f"retain={self.retain}, origin={self.origin!r})")

    @property
    def topic_bytes(self) -> bytes:
        """The topic encoded as UTF-8."""
        raw = self._topic_bytes
        if raw is None:
            raw = self._topic_bytes = self.topic.encode("utf-8")
        return raw

    def expired(self, now: float) -> bool:
        """Whether the message expiry interval has passed."""
        return self.expires_at is not None and now >= self.expires_at

    def v5_properties(self, sub_ids: Tuple[int, ...], now: float, alias: Optional[int]) -> bytes:
        """The v5 property block for one delivery: remaining expiry, subscription ids, alias."""
        props = self.properties
        changes: Dict[str, Any] = {}
        if self.expires_at is not None:
            # Whole seconds left, rounded up, but never more than the interval received (or
            # the Four Byte Integer's range): the float subtraction can overshoot by a fraction.
            received = props.message_expiry_interval
            most = _FOUR_BYTE_MAX if received is None else received
            changes["message_expiry_interval"] = min(max(0, math.ceil(self.expires_at - now)),
                                                     most)
        if sub_ids:
            changes["subscription_identifiers"] = sub_ids
        if alias is not None:
            changes["topic_alias"] = alias
        if changes:
            props = replace(props, **changes)
        return encode_properties(props)

    def encoded(self, v5: bool, qos: int, retain: bool, sub_ids: Tuple[int, ...], now: float,
                dup: bool = False, packet_id: Optional[int] = None) -> bytes:
        """The whole PUBLISH for one delivery (QoS 0 variants are cached)."""
        split = self.split
        if (split is not None and packet_id is not None and not dup and not retain
                and not sub_ids and qos == self.qos and v5 == self.frame_v5
                and self.expires_at is None):
            return split[0] + packet_id.to_bytes(2, "big") + split[1]
        key = (v5, qos, retain, sub_ids)
        cache = self._cache
        if qos == 0 and self.expires_at is None:
            if cache is None:
                cache = self._cache = {}
            data = cache.get(key)
            if data is None:
                props = self.v5_properties(sub_ids, now, None) if v5 else None
                data = cache[key] = encode_publish(self.topic_bytes, self.payload, 0, retain,
                                                   False, None, props)
            return data
        if not dup and self.expires_at is None and packet_id is not None:
            if cache is None:
                cache = self._cache = {}
            template = cache.get(key)
            if template is None:
                props = self.v5_properties(sub_ids, now, None) if v5 else None
                template = cache[key] = publish_template(self.topic_bytes, self.payload, qos,
                                                         retain, props)
            head, tail = template
            return head + packet_id.to_bytes(2, "big") + tail
        props = self.v5_properties(sub_ids, now, None) if v5 else None
        return encode_publish(self.topic_bytes, self.payload, qos, retain, dup, packet_id, props)


class Delivery:
    """A message on its way to one session: the QoS, retain flag and subscription ids it gets."""

    __slots__ = ("message", "qos", "retain", "sub_ids", "share", "state", "key")

    def __init__(self, message: Message, qos: int, retain: bool, sub_ids: Tuple[int, ...],
                 share: Optional[SharedGroup] = None) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.sub_ids = sub_ids
        self.share = share
        self.state = 0
        """0: PUBLISH sent (awaiting PUBACK/PUBREC); 1: PUBREL sent (awaiting PUBCOMP)."""
        self.key: Any = None
        """Free for a store: what identifies this delivery's record."""


class SubscriptionEntry:
    """A session's subscription: the options and the subscription identifier (v5)."""

    __slots__ = ("subscription", "qos", "no_local", "retain_as_published", "sub_id", "client_id")

    def __init__(self, subscription: Subscription, sub_id: Optional[int], client_id: str) -> None:
        self.subscription = subscription
        self.qos = subscription.qos
        self.no_local = subscription.no_local
        self.retain_as_published = subscription.retain_as_published
        self.sub_id = sub_id
        self.client_id = client_id


def delivery_size(delivery: Delivery) -> int:
    """What a queued delivery counts against ``maximum_queued_bytes``: its topic and payload."""
    message = delivery.message
    return len(message.topic) + len(message.payload)


class MessageQueue(deque):  # type: ignore[type-arg]
    """A session's queue of deliveries, which keeps ``size``, the sum of their
    ``delivery_size``, however it is changed."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def append(self, delivery: Delivery) -> None:
        deque.append(self, delivery)
        self.size += delivery_size(delivery)

    def appendleft(self, delivery: Delivery) -> None:
        deque.appendleft(self, delivery)
        self.size += delivery_size(delivery)

    def extend(self, deliveries: Iterable[Delivery]) -> None:
        for delivery in deliveries:
            self.append(delivery)

    def extendleft(self, deliveries: Iterable[Delivery]) -> None:
        for delivery in deliveries:
            self.appendleft(delivery)

    def insert(self, index: int, delivery: Delivery) -> None:
        deque.insert(self, index, delivery)
        self.size += delivery_size(delivery)

    def pop(self) -> Delivery:  # type: ignore[override]
        delivery = deque.pop(self)
        self.size -= delivery_size(delivery)
        return delivery

    def popleft(self) -> Delivery:
        delivery = deque.popleft(self)
        self.size -= delivery_size(delivery)
        return delivery

    def remove(self, delivery: Delivery) -> None:
        deque.remove(self, delivery)
        self.size -= delivery_size(delivery)

    def clear(self) -> None:
        deque.clear(self)
        self.size = 0

    def __delitem__(self, index: Any) -> None:
        self.size -= delivery_size(self[index])
        deque.__delitem__(self, index)

    def __setitem__(self, index: Any, delivery: Delivery) -> None:  # type: ignore[override]
        self.size += delivery_size(delivery) - delivery_size(self[index])
        deque.__setitem__(self, index, delivery)

    def __iadd__(self, deliveries: Iterable[Delivery]) -> MessageQueue:  # type: ignore[override, misc]
        self.extend(deliveries)
        return self


class _NoQueue(MessageQueue):
    """The queue of every session that has never queued anything, which saves an idle session
    the ~0.7 KB of an empty deque; ``Session.pending`` replaces it before anything is added."""

    def _refuse(self, *args: Any) -> None:
        raise TypeError("add to Session.pending(), not to the shared empty queue")

    append = appendleft = extend = extendleft = insert = _refuse  # type: ignore[assignment]


_NO_QUEUE: MessageQueue = _NoQueue()


class _NoEntries(dict):  # type: ignore[type-arg]
    """The empty subscriptions or in-flight table shared by every session that has none yet
    (an empty dict is 64 bytes); ``Session.open_subscriptions``/``open_inflight`` replace it
    before anything is added."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("add through Session.open_subscriptions() or open_inflight()")

    __setitem__ = setdefault = update = _refuse  # type: ignore[assignment]


class _NoIds(set):  # type: ignore[type-arg]
    """The empty set of QoS 2 packet ids shared by every session that has received none yet
    (an empty set is 216 bytes); ``Session.open_inbound_qos2`` replaces it before an id is
    added."""

    def _refuse(self, *args: Any) -> None:
        raise TypeError("add through Session.open_inbound_qos2()")

    add = update = _refuse  # type: ignore[assignment]
    __ior__ = _refuse  # type: ignore[assignment]


NO_SUBSCRIPTIONS: Dict[str, SubscriptionEntry] = _NoEntries()
NO_INFLIGHT: Dict[int, Delivery] = _NoEntries()
NO_IDS: Set[int] = _NoIds()


class Session:
    """State of one client id: subscriptions, messages in flight and queued, expiry and will."""

    __slots__ = ("client_id", "subscriptions", "inflight", "queue", "inbound_qos2", "next_id",
                 "expiry_interval", "connection", "will", "will_timer", "expiry_timer",
                 "protocol_level", "send_quota", "client")

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.subscriptions: Dict[str, SubscriptionEntry] = NO_SUBSCRIPTIONS
        """Read freely; add through ``open_subscriptions()``."""
        self.inflight: Dict[int, Delivery] = NO_INFLIGHT
        """Messages sent and not yet acknowledged, by packet id: read freely; add through
        ``open_inflight()``."""
        self.queue: MessageQueue = _NO_QUEUE
        self.inbound_qos2: Set[int] = NO_IDS
        """QoS 2 packet ids received and not yet released: read freely; add through
        ``open_inbound_qos2()``."""
        self.next_id = 1
        self.expiry_interval = 0
        self.connection: Optional[DeliveryTarget] = None
        self.will: Optional[Will] = None
        self.will_timer: Any = None
        self.expiry_timer: Any = None
        self.protocol_level = 4
        self.send_quota = 65535
        self.client: Optional[ClientInfo] = None
        """Who last connected with this client id (for a session restored from a store: the
        stored user name).  Its user name is the session's owner: no other identity resumes
        the session (``Broker.open_session``)."""

    def pending(self) -> MessageQueue:
        """The queue of messages waiting to be sent, to add to (created on first use)."""
        queue = self.queue
        if queue is _NO_QUEUE:
            queue = self.queue = MessageQueue()
        return queue

    def open_subscriptions(self) -> Dict[str, SubscriptionEntry]:
        """The subscriptions, to add to (created on first use)."""
        subscriptions = self.subscriptions
        if subscriptions is NO_SUBSCRIPTIONS:
            subscriptions = self.subscriptions = {}
        return subscriptions

    def open_inflight(self) -> Dict[int, Delivery]:
        """The messages in flight, to add to (created on first use)."""
        inflight = self.inflight
        if inflight is NO_INFLIGHT:
            inflight = self.inflight = {}
        return inflight

    def open_inbound_qos2(self) -> Set[int]:
        """The QoS 2 packet ids awaiting PUBREL, to add to (created on first use)."""
        ids = self.inbound_qos2
        if ids is NO_IDS:
            ids = self.inbound_qos2 = set()
        return ids

    def keep_queued(self, kept: List[Delivery]) -> None:
        """Leave only ``kept`` (in that order) in the queue, if anything else was in it."""
        if len(kept) != len(self.queue):
            queue = self.pending()
            queue.clear()
            queue.extend(kept)

    def allocate_packet_id(self) -> Optional[int]:
        """A packet identifier not in use by a message in flight, or None if all are."""
        inflight = self.inflight
        if len(inflight) >= 65535:
            return None
        packet_id = self.next_id
        while packet_id in inflight:
            packet_id = packet_id % 65535 + 1
        self.next_id = packet_id % 65535 + 1
        return packet_id
