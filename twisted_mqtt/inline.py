"""The inline client: the embedding application publishing and subscribing without a network
connection, exempt from the ACL and allowed to publish to ``$SYS``."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple, Union

from twisted_mqtt._value import value
from twisted_mqtt.errors import CodecError
from twisted_mqtt.interfaces import ClientInfo, Veto
from twisted_mqtt.packets import Subscription
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.session import Delivery, Message, Session
from twisted_mqtt.targets import ApplicationTarget
from twisted_mqtt.topics import validate_topic_filter, validate_topic_name

if TYPE_CHECKING:
    from twisted_mqtt.broker import Broker

NEVER = 0xFFFFFFFF
MAX_TOPIC_BYTES = 65535
MESSAGE_PROPERTIES = ("payload_format_indicator", "message_expiry_interval", "content_type",
                      "response_topic", "correlation_data", "user_properties")
"""The properties that travel with an application message (not those of one hop)."""


def _check_properties(props: Properties, payload: bytes) -> None:
    """Raise ``ValueError`` unless ``props`` are all message properties, and valid."""
    if replace(props, **{name: getattr(NO_PROPERTIES, name)
                         for name in MESSAGE_PROPERTIES}) != NO_PROPERTIES:
        raise ValueError(f"a message carries only the properties {', '.join(MESSAGE_PROPERTIES)}")
    if props.response_topic is not None:
        try:
            validate_topic_name(props.response_topic)  # [MQTT-3.3.2-14]
        except CodecError as error:
            raise ValueError(str(error)) from None
    if props.payload_format_indicator == 1:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("payload format indicator 1 with a payload not UTF-8") from None


@value
class InlineMessage:
    """A message as an inline subscription receives it."""

    topic: str
    payload: bytes
    qos: int
    """The QoS it is delivered with: the lower of the published and the subscribed QoS."""
    retain: bool
    """True when it is a retained message sent because of the subscription."""
    properties: Properties
    subscription_id: Optional[int]
    origin: Optional[str] = None
    """The client id that published it (None: the broker itself, e.g. a will or $SYS)."""
    expires_at: Optional[float] = None
    """When it expires, in seconds of the broker's clock (None: never)."""


Callback = Callable[[InlineMessage], object]


class _Receiver(ApplicationTarget):
    """Stands where a network connection would for one inline subscription: the broker sends
    to it, and it calls the subscriber's callback at once (nothing is ever in flight)."""

    def __init__(self, callback: Callback, subscription_id: Optional[int]) -> None:
        self.callback = callback
        self.subscription_id = subscription_id

    def send_qos0(self, message: Message, retain: bool, sub_ids: Tuple[int, ...]) -> None:
        """Hand a QoS 0 message to the callback."""
        self._call(message, 0, retain)

    def send_delivery(self, delivery: Delivery) -> None:
        """Hand a QoS 1/2 message to the callback (acknowledged at once)."""
        self._call(delivery.message, delivery.qos, delivery.retain)

    def _call(self, message: Message, qos: int, retain: bool) -> None:
        self.callback(InlineMessage(message.topic, message.payload, qos, retain,
                                    message.properties, self.subscription_id, message.origin,
                                    message.expires_at))


class InlineClient:
    """Publish and subscribe from the application's own code, through ``broker``.

    Its messages come from client id ``client_id``; the ACL is not asked, but the publish
    hooks (``on_publish``, ``on_published``) are.  Each subscription has its own callback and
    gets the retained messages that match it.
    """

    def __init__(self, broker: Broker, client_id: str = "inline") -> None:
        self.broker = broker
        self.client_id = client_id
        self.info = ClientInfo(client_id, listener="inline", protocol_level=5)
        self._subscriptions: Dict[Tuple[str, Optional[int]], Session] = {}
        self._count = 0

    def publish(self, topic: str, payload: Union[bytes, str], qos: int = 0,
                retain: bool = False, properties: Optional[Properties] = None) -> int:
        """Publish a message; return how many sessions it was routed to (0 when a hook dropped
        or vetoed it).  Raises ``ValueError`` for a bad topic, QoS or payload."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if not isinstance(payload, bytes):
            raise ValueError(f"payload must be bytes or str, not {type(payload).__name__}")
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, not {qos!r}")
        if not topic or len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
            raise ValueError(f"topic must be 1 to {MAX_TOPIC_BYTES} bytes of UTF-8")
        if "\x00" in topic:
            raise ValueError("topic must not contain U+0000")  # [MQTT-1.5.4-2]
        try:
            validate_topic_name(topic, self.broker.capabilities.maximum_topic_levels)
        except CodecError as error:
            raise ValueError(str(error)) from None
        props = properties if properties is not None else NO_PROPERTIES
        if props is not NO_PROPERTIES:
            _check_properties(props, payload)
        broker = self.broker
        broker.tick()
        expires_at = None
        if props.message_expiry_interval is not None:
            expires_at = broker.now + props.message_expiry_interval
        message = Message(topic, payload, qos, retain, props, expires_at, self.client_id)
        hooks = broker.hooks
        if hooks.on_publish:
            changed = hooks.modify(hooks.on_publish, self.info, message)
            if changed is None or isinstance(changed, Veto):
                return 0
            message = changed
        count = broker.publish(message)
        if hooks.on_published:
            hooks.notify(hooks.on_published, self.info, message, count)
        broker.flush()
        return count

    def subscribe(self, topic_filter: str, callback: Callback,
                  subscription_id: Optional[int] = None, qos: int = 2,
                  retain_as_published: bool = False) -> None:
        """Call ``callback`` with every message matching ``topic_filter`` from now on, after
        the retained ones (``retain_as_published``: with the RETAIN flag each was published
        with, as a bridge forwards them).  Subscribing again with the same filter and
        ``subscription_id`` replaces the callback.  Raises ``ValueError`` for a bad filter."""
        if "\x00" in topic_filter:
            raise ValueError("topic filter must not contain U+0000")  # [MQTT-1.5.4-2]
        try:
            validate_topic_filter(topic_filter, self.broker.capabilities.maximum_topic_levels)
        except CodecError as error:
            raise ValueError(str(error)) from None
        self.unsubscribe(topic_filter, subscription_id)
        self._count += 1
        session = Session(f"{self.client_id}/{self._count}")
        session.expiry_interval = NEVER
        session.client = self.info
        receiver = _Receiver(callback, subscription_id)
        session.connection = receiver
        broker = self.broker
        broker.sessions[session.client_id] = session
        self._subscriptions[(topic_filter, subscription_id)] = session
        broker.subscribe(session, Subscription(topic_filter, qos,
                                               retain_as_published=retain_as_published),
                         subscription_id)
        if not topic_filter.startswith("$share/"):
            for message in broker.retained_for(topic_filter):
                receiver._call(message, min(message.qos, qos), True)
        broker.flush()

    def unsubscribe(self, topic_filter: str, subscription_id: Optional[int] = None) -> bool:
        """Stop a subscription; True if it existed."""
        session = self._subscriptions.pop((topic_filter, subscription_id), None)
        if session is None:
            return False
        broker = self.broker
        broker.unsubscribe(session, topic_filter)
        broker.sessions.pop(session.client_id, None)
        return True
