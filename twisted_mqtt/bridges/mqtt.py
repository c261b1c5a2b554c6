"""The MQTT bridge: topics shared with another MQTT broker, with Mosquitto's model.

A bridge is one outbound MQTT connection (``twisted_mqtt.client``) to a remote broker and a
local identity on this broker (its inline client).  Each topic rule
``pattern direction qos local-prefix remote-prefix`` (Mosquitto's ``topic`` rule) maps
``local-prefix + pattern`` here to ``remote-prefix + pattern`` there: ``out`` rules forward what
is published here, ``in`` rules what is published there, ``both`` rules both ways.

Loops: on an MQTT 5 remote the bridge's subscriptions have No Local, so the remote does not
send back what the bridge published; locally, what the bridge imported is never exported again
(its local identity is excluded from its own ``out`` rules).  An MQTT 3.1.1 remote has no No
Local: a ``both`` rule gets its own exports back once, and they are published here once more,
but never exported again (docs/bridges.md).

While the remote is down, outbound QoS 1/2 messages wait in a queue bounded in messages and
bytes; beyond it they are dropped, counted and logged once per state change.  The queue is sent
in order once the bridge is connected again.  docs/bridges.md tells the whole story.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Protocol,
    Tuple,
)

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from twisted_mqtt._value import value
from twisted_mqtt.config import (
    Boolean,
    Check,
    Integer,
    Invalid,
    ListOf,
    Maybe,
    Text,
    _shown,
    _unknown,
)
from twisted_mqtt.errors import CodecError
from twisted_mqtt.inline import MESSAGE_PROPERTIES, InlineClient, InlineMessage
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.topics import matches, validate_topic_filter

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from twisted_mqtt.broker import Broker

log = Logger()

DIRECTIONS = ("out", "in", "both")
PROTOCOLS = {"3.1.1": 4, "5": 5}
"""The protocol versions a bridge speaks to its remote, by name: the MQTT protocol level."""
DEFAULT_QUEUE_MESSAGES = 10_000
DEFAULT_QUEUE_BYTES = 16 * 1024 * 1024
DEFAULT_INFLIGHT = 100
MAX_ECHOES = 10_000
"""MQTT 3.1.1: how many exported messages the bridge remembers to recognise them coming back."""
STATE_TOPIC = "$SYS/broker/connection/{name}/state"
"""Mosquitto's notification topic: retained ``1`` while connected, ``0`` otherwise."""
STATUS_TOPIC = "$SYS/broker/bridges/{name}/status"
"""Our own notification: retained JSON with the state, the remote and the counters."""


class RuleError(ValueError):
    """A topic rule that cannot be used; its text says why and what is expected."""


@value
class TopicRule:
    """One ``topic`` rule of a bridge, as Mosquitto's ``topic pattern [[[out|in|both] qos]
    local-prefix remote-prefix]``: a message on ``local_prefix + X`` here, X matching
    ``pattern``, is ``remote_prefix + X`` there, and the other way round."""

    pattern: str
    direction: str = "out"
    qos: int = 0
    local_prefix: str = ""
    remote_prefix: str = ""

    @property
    def local_filter(self) -> str:
        """The filter subscribed to here (``out`` and ``both``)."""
        return self.local_prefix + self.pattern

    @property
    def remote_filter(self) -> str:
        """The filter subscribed to on the remote (``in`` and ``both``)."""
        return self.remote_prefix + self.pattern

    @property
    def exports(self) -> bool:
        """Whether messages published here go to the remote."""
        return self.direction != "in"

    @property
    def imports(self) -> bool:
        """Whether messages published on the remote come here."""
        return self.direction != "out"

    def to_remote(self, topic: str) -> str:
        """The remote topic of ``topic`` (a topic matching ``local_filter``)."""
        return self.remote_prefix + topic[len(self.local_prefix):]

    def to_local(self, topic: str) -> Optional[str]:
        """The local topic of a remote ``topic``, or None if this rule does not import it."""
        if not self.imports or not matches(self.remote_filter, topic):
            return None
        return self.local_prefix + topic[len(self.remote_prefix):]

    def __str__(self) -> str:
        return " ".join(_quoted(part) for part in (self.pattern, self.direction, str(self.qos),
                                                    self.local_prefix, self.remote_prefix))


def _quoted(word: str) -> str:
    return word if word else '""'


def make_rule(pattern: str, direction: str = "out", qos: int = 0, local_prefix: str = "",
              remote_prefix: str = "") -> TopicRule:
    """A checked rule; ``RuleError`` saying what is wrong (Mosquitto's constraints: prefixes
    without wildcards, a pattern or a prefix given, both resulting filters valid)."""
    if direction not in DIRECTIONS:
        raise RuleError(f"direction must be out, in or both, not {direction!r}")
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise RuleError(f"QoS must be 0, 1 or 2, not {qos!r}")
    for which, prefix in (("local", local_prefix), ("remote", remote_prefix)):
        if "+" in prefix or "#" in prefix:
            raise RuleError(f"the {which} prefix {prefix!r} must not contain + or #")
    if not pattern and not (local_prefix and remote_prefix):
        raise RuleError('an empty pattern ("") needs both a local and a remote prefix (the '
                        "topics they name are mapped to each other)")
    rule = TopicRule(pattern, direction, qos, local_prefix, remote_prefix)
    for which, topic_filter in (("local", rule.local_filter), ("remote", rule.remote_filter)):
        try:
            validate_topic_filter(topic_filter)
        except CodecError as error:
            raise RuleError(f"the {which} filter {topic_filter!r} is not valid: {error}") from None
    return rule


def parse_rule(text: str) -> TopicRule:
    """A rule from Mosquitto's words ``pattern [direction [qos [local-prefix
    remote-prefix]]]``; ``""`` is an empty word.  ``RuleError`` if it cannot be used."""
    words = [("" if word == '""' else word) for word in text.split()]
    if not 1 <= len(words) <= 5 or len(words) == 4:
        raise RuleError(f"expected 'PATTERN [out|in|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]', "
                        f"not {text!r}")
    qos: Any = 0
    if len(words) >= 3:
        try:
            qos = int(words[2])
        except ValueError:
            qos = words[2]
    return make_rule(words[0], words[1] if len(words) >= 2 else "out", qos,
                     *(words[3:5] if len(words) == 5 else ()))


@dataclass(frozen=True)
class BridgeSettings:
    """Everything one bridge needs: what ``bridges:`` entries and ``--bridge`` options give."""

    name: str
    address: str
    """A Twisted client endpoint string, e.g. ``tcp:host=broker.example:port=1883`` or
    ``tls:broker.example:8883:trustRoots=/etc/ssl/ca:certificate=c.pem:privateKey=k.pem``."""
    topics: Tuple[TopicRule, ...] = ()
    client_id: Optional[str] = None
    """The client id on the remote (default: HOSTNAME.NAME, as Mosquitto's)."""
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    protocol: str = "5"
    clean_start: bool = False
    session_expiry: int = 3600
    """MQTT 5: seconds the remote keeps the bridge's session (subscriptions and QoS 1/2 messages
    for it) while it is away."""
    keepalive: int = 60
    queue_messages: int = DEFAULT_QUEUE_MESSAGES
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    inflight: int = DEFAULT_INFLIGHT
    notifications: bool = True

    @property
    def protocol_level(self) -> int:
        """4 (MQTT 3.1.1) or 5."""
        return PROTOCOLS[self.protocol]

    @property
    def remote_client_id(self) -> str:
        """The client id the bridge connects with."""
        return self.client_id or f"{socket.gethostname()}.{self.name}"

    @property
    def local_id(self) -> str:
        """The client id of the bridge's messages here (excluded from its ``out`` rules)."""
        return f"$bridge/{self.name}"


@dataclass
class Outgoing:
    """A message waiting to go to the remote."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties
    expires_at: Optional[float]

    @property
    def size(self) -> int:
        """Topic and payload bytes: what the queue's byte bound counts."""
        return len(self.topic.encode("utf-8")) + len(self.payload)


class RemoteLink(Protocol):
    """The outbound MQTT connection of one bridge, as the bridge uses it.  It tells the bridge
    ``remote_up()``, ``remote_down(reason)`` and ``remote_message(...)``."""

    def start(self) -> None:
        """Connect, and keep reconnecting until stopped."""

    def stop(self) -> Deferred[None]:
        """Disconnect and stop reconnecting."""

    def publish(self, message: Outgoing) -> Deferred[Any]:
        """Publish; fires when the remote acknowledged it (QoS 1/2) or it was written."""


LinkFactory = Callable[["MqttBridge"], RemoteLink]


@dataclass
class BridgeCounters:
    """What one bridge has done since it started."""

    sent: int = 0
    """Messages the remote acknowledged (QoS 1/2) or that were written to it (QoS 0)."""
    received: int = 0
    """Messages from the remote published here."""
    dropped: int = 0
    """Outbound messages dropped: the queue full, QoS 0 while the remote is down, refused."""
    expired: int = 0
    """Outbound messages whose expiry passed while they waited."""
    connects: int = 0
    echoes: int = 0
    """MQTT 3.1.1: the bridge's own messages the remote sent back, not published here."""
    by_reason: Dict[str, int] = field(default_factory=dict)


class OutboundQueue:
    """Outbound messages waiting for the remote, bounded in messages and in bytes."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.messages: Deque[Outgoing] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.messages)

    def push(self, message: Outgoing) -> bool:
        """Queue ``message``; False (not queued) if it would exceed a bound."""
        size = message.size
        if len(self.messages) >= self.max_messages or self.bytes + size > self.max_bytes:
            return False
        self.messages.append(message)
        self.bytes += size
        return True

    def push_front(self, message: Outgoing) -> None:
        """Put back a message taken from the queue (its room was already counted)."""
        self.messages.appendleft(message)
        self.bytes += message.size

    def pop(self) -> Outgoing:
        """The oldest message."""
        message = self.messages.popleft()
        self.bytes -= message.size
        return message


class MqttBridge(Service):
    """One MQTT bridge, started and stopped with the broker service it is a child of."""

    def __init__(self, broker: Broker, settings: BridgeSettings,
                 link_factory: Optional[LinkFactory] = None, reactor: Any = None) -> None:
        self.broker = broker
        self.settings = settings
        self.reactor = reactor
        self.setName(f"bridge {settings.name}")
        self.link_factory = link_factory or client_link
        self.link: Optional[RemoteLink] = None
        self.local = InlineClient(broker, settings.local_id)
        self.queue = OutboundQueue(settings.queue_messages, settings.queue_bytes)
        self.counters = BridgeCounters()
        self.connected = False
        self.inflight = 0
        """Messages handed to the link and not yet acknowledged."""
        self.since = time.time()
        self.reason = "not started"
        self._dropping = False
        self._dropped_at_change = 0
        self._exporting = [rule for rule in settings.topics if rule.exports]
        self._importing = [rule for rule in settings.topics if rule.imports]
        self._echoes: Dict[Tuple[str, int, int], int] = {}
        """MQTT 3.1.1 (no No Local): the messages exported that the remote will send back,
        by (remote topic, payload length, payload hash), with how many are due."""
        self._echo_possible = settings.protocol_level < 5 and bool(self._importing)

    def __repr__(self) -> str:
        return f"MqttBridge({self.settings.name!r}, {self.settings.address!r})"

    # -- the service ------------------------------------------------------------------------

    def startService(self) -> None:
        """Subscribe to the ``out`` rules here and connect to the remote."""
        super().startService()
        self._change("disconnected", "connecting")
        for index, rule in enumerate(self._exporting):
            self.local.subscribe(rule.local_filter, self._exporter(rule), index + 1, rule.qos,
                                 retain_as_published=True)
        self.link = self.link_factory(self)
        self.link.start()
        log.info("bridge {name}: connecting to {address} as {client_id} (MQTT {protocol}), "
                 "{rules}", name=self.settings.name, address=self.settings.address,
                 client_id=self.settings.remote_client_id, protocol=self.settings.protocol,
                 rules="; ".join(str(rule) for rule in self.settings.topics) or "no topics")

    def stopService(self) -> Deferred[None]:
        """Stop exporting, disconnect from the remote; what is queued is lost (counted)."""
        super().stopService()
        for index, rule in enumerate(self._exporting):
            self.local.unsubscribe(rule.local_filter, index + 1)
        link, self.link = self.link, None
        stopped = link.stop() if link is not None else succeed(None)

        def down(_: Any) -> None:
            if len(self.queue):
                log.warn("bridge {name}: stopped with {count} messages queued for the remote "
                         "(not sent)", name=self.settings.name, count=len(self.queue))
            self.connected = False
            self._change("stopped", "stopped")

        return stopped.addCallback(down)

    # -- local to remote --------------------------------------------------------------------

    def _exporter(self, rule: TopicRule) -> Callable[[InlineMessage], None]:
        def export(message: InlineMessage) -> None:
            if message.origin == self.settings.local_id:
                return  # imported by this bridge: never sent back (no loop)
            props = message.properties
            if self.settings.protocol_level < 5:
                props = NO_PROPERTIES
            self.forward(Outgoing(rule.to_remote(message.topic), message.payload, message.qos,
                                  message.retain, props, message.expires_at))
        return export

    def forward(self, message: Outgoing) -> None:
        """Send ``message`` to the remote now, or queue it (QoS 1/2) while the remote is down or
        the in-flight window is full; QoS 0 while the remote is down is dropped."""
        if self.connected and self.inflight < self.settings.inflight and not len(self.queue):
            self._send(message)
        elif message.qos == 0 and not self.connected:
            self._drop(message, "remote down")
        elif not self.queue.push(message):
            self._drop(message, "queue full")

    def _send(self, message: Outgoing) -> None:
        link = self.link
        assert link is not None
        if message.expires_at is not None:
            left = message.expires_at - self.broker.tick()
            if left <= 0:
                self.counters.expired += 1
                return
            message.properties = replace(message.properties,
                                         message_expiry_interval=max(1, int(left + 0.999)))
        if self._echo_possible and any(matches(rule.remote_filter, message.topic)
                                       for rule in self._importing):
            self._expect_echo(message)
        self.inflight += 1
        link.publish(message).addCallbacks(self._acknowledged, self._refused,
                                           errbackArgs=(message,))

    def _acknowledged(self, _: Any) -> None:
        self.inflight -= 1
        self.counters.sent += 1
        self._pump()

    def _refused(self, failure: Any, message: Outgoing) -> None:
        self.inflight -= 1
        self._drop(message, "refused by the remote", str(failure.getErrorMessage()))
        self._pump()

    def _pump(self) -> None:
        """Send queued messages while connected and the in-flight window has room."""
        queue = self.queue
        while self.connected and len(queue) and self.inflight < self.settings.inflight:
            self._send(queue.pop())
        if not len(queue) and self._dropping and self.connected:
            self._dropping = False
            log.info("bridge {name}: the queue has room again ({dropped} messages dropped "
                     "since it was full)", name=self.settings.name,
                     dropped=self.counters.dropped - self._dropped_at_change)

    def _drop(self, message: Outgoing, reason: str, detail: str = "") -> None:
        counters = self.counters
        counters.dropped += 1
        counters.by_reason[reason] = counters.by_reason.get(reason, 0) + 1
        if reason == "refused by the remote":
            log.warn("bridge {name}: the remote refused a message on {topic}: {detail}",
                     name=self.settings.name, topic=message.topic, detail=detail)
        elif not self._dropping:
            self._dropping = True
            self._dropped_at_change = counters.dropped - 1
            if reason == "queue full":
                log.warn("bridge {name}: outbound queue full ({messages} messages, {bytes} "
                         "bytes); dropping messages for the remote until it drains",
                         name=self.settings.name, messages=len(self.queue),
                         bytes=self.queue.bytes)
            else:
                log.warn("bridge {name}: the remote is down; dropping QoS 0 messages for it "
                         "until it is back (QoS 1/2 are queued)", name=self.settings.name)

    # -- remote to local --------------------------------------------------------------------

    def remote_filters(self) -> List[Tuple[str, int]]:
        """The filters to subscribe to on the remote, with their QoS."""
        return [(rule.remote_filter, rule.qos) for rule in self._importing]

    def _expect_echo(self, message: Outgoing) -> None:
        echoes = self._echoes
        key = (message.topic, len(message.payload), hash(message.payload))
        echoes[key] = echoes.pop(key, 0) + 1
        if len(echoes) > MAX_ECHOES:
            del echoes[next(iter(echoes))]

    def remote_message(self, topic: str, payload: bytes, qos: int, retain: bool,
                       properties: Properties = NO_PROPERTIES) -> None:
        """Publish here a message the remote sent, by the first ``in`` rule matching it
        (Mosquitto's order); on an MQTT 3.1.1 remote, not a message of the bridge's own coming
        back."""
        if self._echoes:
            key = (topic, len(payload), hash(payload))
            due = self._echoes.pop(key, 0)
            if due:
                if due > 1:
                    self._echoes[key] = due - 1
                self.counters.echoes += 1
                return
        for rule in self._importing:
            local = rule.to_local(topic)
            if local is None:
                continue
            props = replace(NO_PROPERTIES, **{name: getattr(properties, name)
                                              for name in MESSAGE_PROPERTIES})
            try:
                self.local.publish(local, payload, min(qos, rule.qos), retain, props)
            except ValueError as error:
                log.warn("bridge {name}: cannot publish {topic} here: {error}",
                         name=self.settings.name, topic=local, error=str(error))
                return
            self.counters.received += 1
            return

    # -- state ------------------------------------------------------------------------------

    def remote_up(self) -> None:
        """The link is connected (again): send what waited."""
        self.connected = True
        self.counters.connects += 1
        self._change("connected", "connected")
        log.info("bridge {name}: connected to {address} ({queued} messages queued)",
                 name=self.settings.name, address=self.settings.address, queued=len(self.queue))
        self._pump()

    def remote_down(self, reason: str) -> None:
        """The link lost its connection (it reconnects)."""
        if self.connected:
            log.warn("bridge {name}: connection to {address} lost: {reason}",
                     name=self.settings.name, address=self.settings.address, reason=reason)
        self.connected = False  # what the link holds unacknowledged it sends again
        self._change("disconnected", reason)

    @property
    def state(self) -> str:
        """connected, disconnected or stopped."""
        if self.connected:
            return "connected"
        return "disconnected" if self.running else "stopped"

    def status(self) -> Dict[str, Any]:
        """The state and counters, as published on ``STATUS_TOPIC``."""
        counters = self.counters
        return {"state": self.state, "remote": self.settings.address,
                "client_id": self.settings.remote_client_id, "since": round(self.since, 3),
                "reason": self.reason, "queued": len(self.queue),
                "queued_bytes": self.queue.bytes, "sent": counters.sent,
                "received": counters.received, "dropped": counters.dropped,
                "expired": counters.expired, "connects": counters.connects}

    def _change(self, state: str, reason: str) -> None:
        self.since = time.time()
        self.reason = reason
        if self.settings.notifications:
            self.local.publish(STATE_TOPIC.format(name=self.settings.name),
                               b"1" if state == "connected" else b"0", 1, True)
            self.notify()

    def notify(self) -> None:
        """Publish the retained ``STATUS_TOPIC``."""
        if self.settings.notifications:
            self.local.publish(STATUS_TOPIC.format(name=self.settings.name),
                               json.dumps(self.status(), sort_keys=True).encode(), 1, True)

    @classmethod
    def collect_metrics(cls, bridges: Iterable[MqttBridge]) -> Iterator[Metric]:
        """Prometheus families for ``bridges``, labelled by bridge name."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        bridges = list(bridges)
        gauges = (("mqtt_bridge_connected", "1 while the bridge is connected to its remote",
                   lambda bridge: int(bridge.connected)),
                  ("mqtt_bridge_queued_messages", "Outbound messages waiting for the remote",
                   lambda bridge: len(bridge.queue)),
                  ("mqtt_bridge_queued_bytes", "Topic and payload bytes waiting for the remote",
                   lambda bridge: bridge.queue.bytes),
                  ("mqtt_bridge_inflight", "Messages sent to the remote, not yet acknowledged",
                   lambda bridge: bridge.inflight))
        for name, help_text, read in gauges:
            gauge = GaugeMetricFamily(name, help_text, labels=["bridge"])
            for bridge in bridges:
                gauge.add_metric([bridge.settings.name], read(bridge))
            yield gauge
        for name, help_text, attribute in (
                ("mqtt_bridge_messages_sent", "Messages delivered to the remote", "sent"),
                ("mqtt_bridge_messages_received", "Messages from the remote published here",
                 "received"),
                ("mqtt_bridge_messages_dropped",
                 "Outbound messages dropped (queue full, QoS 0 while down, refused)", "dropped"),
                ("mqtt_bridge_messages_expired", "Outbound messages expired while queued",
                 "expired"),
                ("mqtt_bridge_connects", "Connections made to the remote", "connects")):
            counter = CounterMetricFamily(name, help_text, labels=["bridge"])
            for bridge in bridges:
                counter.add_metric([bridge.settings.name], getattr(bridge.counters, attribute))
            yield counter


# -- configuration: ``bridges:`` entries and the ``--bridge`` options ---------------------------


class BridgeName(Text):
    """A bridge's name: letters, digits, ``_``, ``-`` and ``.``."""

    expected = "a name of letters, digits, _, - and ."

    def __call__(self, value: Any) -> str:
        name = super().__call__(value)
        if not all(char.isascii() and (char.isalnum() or char in "_-.") for char in name):
            self.refuse(value)
        return name


class ClientEndpoint(Text):
    """A Twisted client endpoint string Twisted can parse (its certificate files read)."""

    expected = ("a Twisted client endpoint string, e.g. tcp:host=broker.example:port=1883 or "
                "tls:broker.example:8883:trustRoots=/etc/ssl/ca")

    def __call__(self, value: Any) -> str:
        from twisted.internet import endpoints, reactor

        address = super().__call__(value)
        try:
            endpoints.clientFromString(reactor, address)
        except Exception as error:
            raise Invalid(f"bad endpoint {address!r}: {error}; expected {self.expected}") \
                from None
        return address


class Rule(Check):
    """A topic rule: Mosquitto's words, or a mapping of ``RULE_KEYS``."""

    expected = ("'PATTERN [out|in|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]' or {pattern, "
                "direction, qos, local_prefix, remote_prefix}")

    def __call__(self, value: Any) -> TopicRule:
        try:
            if isinstance(value, str):
                return parse_rule(value)
            if not isinstance(value, dict):
                self.refuse(value)
            for key in value:
                if key not in RULE_KEYS:
                    raise _unknown(key, list(RULE_KEYS))
            if "pattern" not in value:
                raise Invalid("missing pattern; expected e.g. pattern: sensors/#")
            fields: Dict[str, Any] = {key: ("" if item is None else item)
                                      for key, item in value.items()}
            return make_rule(**fields)
        except RuleError as error:
            raise Invalid(str(error)) from None


RULE_KEYS = ("pattern", "direction", "qos", "local_prefix", "remote_prefix")


class ProtocolName(Check):
    """3.1.1 or 5."""

    expected = "3.1.1 or 5"

    def __call__(self, value: Any) -> str:
        text = str(value) if isinstance(value, (str, int)) and value is not True else ""
        if text not in PROTOCOLS:
            self.refuse(value)
        return text


BRIDGE_KEYS: Dict[str, Tuple[Check, Any, str]] = {
    "name": (BridgeName(), None, "the bridge's name (required), in logs, $SYS and metrics"),
    "address": (ClientEndpoint(), None,
                "the remote broker (required): a Twisted client endpoint string (tcp:, tls: "
                "with trustRoots, certificate and privateKey, unix:)"),
    "topics": (ListOf(Rule(), "topic rules"), [],
               "topic rules: 'PATTERN [out|in|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]' "
               "(Mosquitto's topic), or mappings of those five"),
    "client_id": (Maybe(Text()), None, "the client id on the remote; null: HOSTNAME.NAME"),
    "username": (Maybe(Text()), None, "the user name on the remote"),
    "password": (Maybe(Text()), None, "the password on the remote"),
    "protocol": (ProtocolName(), "5", "the MQTT version spoken to the remote: 3.1.1 or 5"),
    "clean_start": (Boolean(), False,
                    "start a new session on the remote at each connection (false: the remote "
                    "keeps the bridge's subscriptions and QoS 1/2 messages while it is away)"),
    "session_expiry": (Integer(0, 0xFFFFFFFF), 3600,
                       "MQTT 5: seconds the remote keeps the bridge's session"),
    "keepalive": (Integer(0, 65535), 60, "keep alive with the remote, seconds"),
    "queue_messages": (Integer(0), DEFAULT_QUEUE_MESSAGES,
                       "outbound QoS 1/2 messages queued while the remote is down (more are "
                       "dropped)"),
    "queue_bytes": (Integer(0), DEFAULT_QUEUE_BYTES,
                    "topic and payload bytes of the outbound messages queued while the remote "
                    "is down"),
    "inflight": (Integer(1, 65535), DEFAULT_INFLIGHT,
                 "messages sent to the remote and not yet acknowledged, at most"),
    "notifications": (Boolean(), True,
                      "publish the retained state here: $SYS/broker/connection/NAME/state and "
                      "$SYS/broker/bridges/NAME/status"),
}
"""The keys of one ``bridges:`` entry: (check, default, meaning)."""


def check_bridge(entry: Any) -> BridgeSettings:
    """A bridge's settings from a ``bridges:`` entry; ``Invalid`` (with the key's path) for a
    mistake."""
    if not isinstance(entry, dict):
        raise Invalid(f"expected a mapping of {', '.join(BRIDGE_KEYS)}, not {_shown(entry)}")
    for key in entry:
        if key not in BRIDGE_KEYS:
            raise _unknown(key, list(BRIDGE_KEYS))
    values: Dict[str, Any] = {}
    for key, (check, default, _) in BRIDGE_KEYS.items():
        if default is None and key in ("name", "address") and key not in entry:
            raise Invalid(f"missing {key}; expected e.g. {key}: "
                          f"{'cloud' if key == 'name' else 'tcp:host=broker.example:port=1883'}")
        try:
            values[key] = check(entry.get(key, default))
        except Invalid as error:
            raise Invalid(error.problem, f".{key}{error.path}", error.key) from None
    values["topics"] = tuple(values["topics"])
    if not values["topics"]:
        raise Invalid("a bridge needs at least one topic rule", ".topics")
    return BridgeSettings(**values)


class Bridges(Check):
    """A list of ``bridges:`` entries, their names distinct."""

    expected = "a list of bridges, each a mapping of name, address, topics..."

    def __call__(self, value: Any) -> List[BridgeSettings]:
        if not isinstance(value, list):
            self.refuse(value)
        bridges: List[BridgeSettings] = []
        for index, entry in enumerate(value):
            try:
                bridge = check_bridge(entry)
            except Invalid as error:
                raise Invalid(error.problem, f"[{index}]{error.path}", error.key) from None
            if any(other.name == bridge.name for other in bridges):
                raise Invalid(f"a second bridge named {bridge.name!r}", f"[{index}].name")
            bridges.append(bridge)
        return bridges


TEXT_KEYS = ("client_id", "username", "password")
"""The keys whose ``--bridge-option`` value is taken as it is written (not read as YAML)."""


def _yaml_scalar(text: str) -> Any:
    """``text`` read as a YAML scalar (``true``, ``5``, ``3.1.1``), or as it is."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def bridges_from_options(addresses: List[str], topics: List[str],
                         settings: List[str]) -> List[BridgeSettings]:
    """The bridges ``--bridge NAME=ADDRESS``, ``--bridge-topic NAME=RULE`` and
    ``--bridge-option NAME.KEY=VALUE`` give; ``ConfigError`` naming the option for a mistake."""
    from twisted_mqtt.config import ConfigError

    def split(item: str, option: str, shape: str) -> Tuple[str, str]:
        name, equals, text = item.partition("=")
        if not equals or not name:
            raise ConfigError(f"expected {shape}, not {item!r}", path=f"--{option}")
        return name, text

    entries: Dict[str, Dict[str, Any]] = {}
    for item in addresses:
        name, address = split(item, "bridge", "NAME=ADDRESS")
        if name in entries:
            raise ConfigError(f"a second bridge named {name!r}", path="--bridge")
        entries[name] = {"name": name, "address": address, "topics": []}
    for option, items, shape in (("bridge-topic", topics, "NAME=RULE"),
                                 ("bridge-option", settings, "NAME.KEY=VALUE")):
        for item in items:
            name, text = split(item, option, shape)
            name, dot, key = name.partition(".")
            if (option == "bridge-option") != bool(dot and key):
                raise ConfigError(f"expected {shape}, not {item!r}", path=f"--{option}")
            entry = entries.get(name)
            if entry is None:
                raise ConfigError(f"no --bridge {name}=ADDRESS for {item!r}", path=f"--{option}")
            if option == "bridge-topic":
                entry["topics"].append(text)
            else:
                entry[key] = text if key in TEXT_KEYS else _yaml_scalar(text)
    bridges = []
    for name, entry in entries.items():
        try:
            bridges.append(check_bridge(entry))
        except Invalid as error:
            raise ConfigError(error.problem, path=f"--bridge {name}{error.path}") from None
    return bridges


class ClientLink:
    """A bridge's link through ``twisted_mqtt.client.MQTTClient``: it reconnects with back-off
    by itself (keeping its session: subscriptions, and QoS 1/2 messages it sends again); a
    refused connection is tried again after ``REFUSED_RETRY`` seconds."""

    REFUSED_RETRY = 30.0

    def __init__(self, bridge: MqttBridge, reactor: Any = None) -> None:
        from twisted_mqtt.client import MQTTClient

        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.bridge = bridge
        self.reactor = reactor
        settings = bridge.settings
        v5 = settings.protocol_level == 5
        self.client = MQTTClient(
            reactor, settings.address, settings.remote_client_id,
            protocol_level=settings.protocol_level, clean_start=settings.clean_start,
            session_expiry_interval=settings.session_expiry if v5 else 0,
            keep_alive=settings.keepalive, username=settings.username,
            password=settings.password.encode("utf-8") if settings.password is not None
            else None, max_queued=settings.inflight)
        self.client.on_connected = lambda _result: bridge.remote_up()
        self.client.on_disconnected = self._lost
        for topic_filter, qos in bridge.remote_filters():
            # No Local: the remote does not send back what the bridge publishes there.
            self.client.subscribe(topic_filter, self._message, qos, no_local=v5,
                                  retain_as_published=v5).addCallbacks(
                self._subscribed, self._not_subscribed, callbackArgs=(topic_filter,),
                errbackArgs=(topic_filter,))
        self._retry: Any = None
        self._running = False

    def start(self) -> None:
        """Connect, trying again until the remote answers."""
        self._running = True
        self.client.connect(retry=True).addErrback(self._refused)

    def stop(self) -> Deferred[None]:
        """Disconnect, and stop trying."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        return self.client.disconnect().addCallback(lambda _: None)

    def publish(self, message: Outgoing) -> Deferred[Any]:
        """Publish through the client."""
        return self.client.publish(message.topic, message.payload, message.qos, message.retain,
                                   message.properties)

    def _message(self, message: Any) -> None:
        self.bridge.remote_message(message.topic, message.payload, message.qos, message.retain,
                                   message.properties)

    def _lost(self, reason: Any) -> None:
        self.bridge.remote_down(reason.getErrorMessage())

    def _refused(self, failure: Any) -> None:
        if not self._running:
            return
        self.bridge.remote_down(f"refused: {failure.getErrorMessage()}")
        log.error("bridge {name}: {address} refused the connection: {reason}; trying again in "
                  "{delay:.0f}s", name=self.bridge.settings.name,
                  address=self.bridge.settings.address, reason=failure.getErrorMessage(),
                  delay=self.REFUSED_RETRY)
        self._retry = self.reactor.callLater(self.REFUSED_RETRY, self.start)

    def _subscribed(self, reason_codes: Tuple[int, ...], topic_filter: str) -> None:
        if reason_codes and reason_codes[0] >= 0x80:
            log.error("bridge {name}: the remote refused the subscription to {filter} "
                      "(reason code 0x{code:02X}); nothing comes in by it",
                      name=self.bridge.settings.name, filter=topic_filter, code=reason_codes[0])

    def _not_subscribed(self, failure: Any, topic_filter: str) -> None:
        log.error("bridge {name}: cannot subscribe to {filter} on the remote: {reason}",
                  name=self.bridge.settings.name, filter=topic_filter,
                  reason=failure.getErrorMessage())


def client_link(bridge: MqttBridge) -> RemoteLink:
    """The link of ``bridge`` through ``twisted_mqtt.client``, on the bridge's reactor."""
    return ClientLink(bridge, bridge.reactor)


def add_bridges(service: Any, settings: Iterable[BridgeSettings],
                link_factory: Optional[LinkFactory] = None) -> List[MqttBridge]:
    """Make a bridge for each of ``settings`` a child of the broker ``service``: started after
    its store is loaded, stopped after its clients are disconnected."""
    bridges = []
    for one in settings:
        bridge = MqttBridge(service.broker, one, link_factory, service.reactor)
        bridge.setServiceParent(service)
        bridges.append(bridge)
    return bridges
