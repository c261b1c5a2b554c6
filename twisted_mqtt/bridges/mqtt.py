"""The MQTT bridge: topics shared with another MQTT broker, with Mosquitto's model.

A bridge is one outbound MQTT connection (``twisted_mqtt.client``) to a remote broker and a
local identity on this broker (its inline client).  Each topic rule
``pattern direction qos local-prefix remote-prefix`` (Mosquitto's ``topic`` rule) maps
``local-prefix + pattern`` here to ``remote-prefix + pattern`` there: ``out`` rules forward what
is published here, ``in`` rules what is published there, ``both`` rules both ways.

Loops: on an MQTT 5 remote the bridge's subscriptions have No Local, so the remote does not
send back what the bridge published; locally, what the bridge imported is never exported again
(its local identity is excluded from its own ``out`` rules).  An MQTT 3.1.1 remote has no No
Local: it sends the bridge's own messages back on a ``both`` rule, and the bridge recognises
each (by topic and payload) and drops it (docs/bridges.md says the limits).

While the remote is down, outbound QoS 1/2 messages wait in a queue bounded in messages and
bytes; beyond it they are dropped, counted and logged once per state change.  The queue is sent
in order once the bridge is connected again.  docs/bridges.md tells the whole story.
"""

from __future__ import annotations

import json
import math
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

from twisted_mqtt.bridges.mqtt_settings import (
    BridgeSettings,
    TopicRule,
)
from twisted_mqtt.hooks import Hook
from twisted_mqtt.inline import MESSAGE_PROPERTIES, InlineClient, InlineMessage
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.topics import matches

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from twisted_mqtt.broker import Broker

log = Logger()

MAX_ECHOES = 10_000
"""MQTT 3.1.1: how many exported messages the bridge remembers to recognise them coming back."""
STATE_TOPIC = "$SYS/broker/connection/{name}/state"
"""Mosquitto's notification topic: retained ``1`` while connected, ``0`` otherwise."""
STATUS_TOPIC = "$SYS/broker/bridges/{name}/status"
"""Our own notification: retained JSON with the state, the remote and the counters."""


@dataclass
class Outgoing:
    """A message waiting to go to the remote."""

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "expires_at")
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
    rejected: int = 0
    """Messages from the remote that could not be published here (e.g. a bad payload)."""
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


class StatusTicker(Hook):
    """Publishes a bridge's status again at each $SYS publication."""

    def __init__(self, bridge: MqttBridge) -> None:
        self.bridge = bridge

    def on_sys_info_tick(self, figures: Dict[str, Any]) -> None:
        """Publish the status with the counters now."""
        self.bridge.notify()


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
        self.since = broker.clock.seconds()
        self.reason = "not started"
        self._dropping = False
        self._dropped_at_change = 0
        self._refusing = False
        self._refused_at_change = 0
        self._rejecting = False
        self._rejected_at_change = 0
        self._exporting = [rule for rule in settings.topics if rule.exports]
        self._importing = [rule for rule in settings.topics if rule.imports]
        self._echoes: Dict[Tuple[str, int, int], int] = {}
        """MQTT 3.1.1 (no No Local): the messages exported that the remote will send back,
        by (remote topic, payload length, payload hash), with how many are due."""
        self._echo_possible = settings.protocol_level < 5 and bool(self._importing)
        self._ticker = StatusTicker(self)

    def __repr__(self) -> str:
        return f"MqttBridge({self.settings.name!r}, {self.settings.address!r})"

    # -- the service ------------------------------------------------------------------------

    def startService(self) -> None:
        """Subscribe to the ``out`` rules here and connect to the remote."""
        super().startService()
        self._change("disconnected", "connecting")
        if self.settings.notifications:
            self.broker.hooks.add(self._ticker)
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
        """Stop exporting, disconnect from the remote; what is queued is lost (logged)."""
        super().stopService()
        if self._ticker in self.broker.hooks:
            self.broker.hooks.remove(self._ticker)
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
        if self.connected and self.inflight < self.settings.inflight and not self.queue.messages:
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
            received = message.properties.message_expiry_interval  # float error: never more
            remaining = math.ceil(left) if received is None else min(math.ceil(left), received)
            message.properties = replace(message.properties, message_expiry_interval=remaining)
        if self._echo_possible and any(matches(rule.remote_filter, message.topic)
                                       for rule in self._importing):
            self._expect_echo(message)
        try:
            sending = link.publish(message)
        except ValueError as error:  # what the client cannot send at all (a topic too long)
            self._drop(message, "refused", str(error))
            return
        self.inflight += 1
        sending.addCallbacks(self._acknowledged, self._refused, errbackArgs=(message,))

    def _acknowledged(self, _: Any) -> None:
        self.inflight -= 1
        self.counters.sent += 1
        if self._refusing:
            self._refusing = False
            log.info("bridge {name}: the remote accepts messages again ({count} refused)",
                     name=self.settings.name,
                     count=self.counters.by_reason["refused"] - self._refused_at_change)
        self._pump()

    def _refused(self, failure: Any, message: Outgoing) -> None:
        self.inflight -= 1
        self._drop(message, "refused", str(failure.getErrorMessage()))
        self._pump()

    def _pump(self) -> None:
        """Send queued messages while connected and the in-flight window has room."""
        queue = self.queue
        while self.connected and queue.messages and self.inflight < self.settings.inflight:
            self._send(queue.pop())
        if self._dropping and self.connected and not queue.messages:
            self._dropping = False
            log.info("bridge {name}: the queue has room again ({dropped} messages dropped "
                     "since it was full)", name=self.settings.name,
                     dropped=self.counters.dropped - self._dropped_at_change)

    def _drop(self, message: Outgoing, reason: str, detail: str = "") -> None:
        counters = self.counters
        counters.dropped += 1
        counters.by_reason[reason] = counters.by_reason.get(reason, 0) + 1
        if reason == "refused":
            if not self._refusing:
                self._refusing = True
                self._refused_at_change = counters.by_reason[reason] - 1
                log.warn("bridge {name}: message on {topic} not sent to the remote: {detail} "
                         "(further refusals are counted, not logged, until one is accepted)",
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
            counters = self.counters
            try:
                self.local.publish(local, payload, min(qos, rule.qos), retain, props)
            except ValueError as error:
                counters.rejected += 1
                if not self._rejecting:
                    self._rejecting = True
                    self._rejected_at_change = counters.rejected - 1
                    log.warn("bridge {name}: {topic} from the remote not published here: "
                             "{error} (further ones are counted, not logged, until one is "
                             "published)", name=self.settings.name, topic=local,
                             error=str(error))
                return
            counters.received += 1
            if self._rejecting:
                self._rejecting = False
                log.info("bridge {name}: messages from the remote are published here again "
                         "({count} rejected)", name=self.settings.name,
                         count=counters.rejected - self._rejected_at_change)
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
                "expired": counters.expired, "rejected": counters.rejected,
                "echoes": counters.echoes,
                "connects": counters.connects}

    def _change(self, state: str, reason: str) -> None:
        self.since = self.broker.clock.seconds()
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
                ("mqtt_bridge_messages_rejected",
                 "Messages from the remote that could not be published here", "rejected"),
                ("mqtt_bridge_connects", "Connections made to the remote", "connects")):
            counter = CounterMetricFamily(name, help_text, labels=["bridge"])
            for bridge in bridges:
                counter.add_metric([bridge.settings.name], getattr(bridge.counters, attribute))
            yield counter


class ClientLink:
    """A bridge's link through ``twisted_mqtt.client.MQTTClient``: it reconnects with back-off
    by itself (keeping its session: subscriptions, and QoS 1/2 messages it sends again); a
    refused connection is tried again after ``REFUSED_RETRY`` seconds."""

    REFUSED_RETRY = 30.0

    def __init__(self, bridge: MqttBridge, reactor: Any = None) -> None:
        from twisted_mqtt.client import MQTTClient
        from twisted_mqtt.codec import MAX_PACKET_SIZE

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
            else None, max_queued=settings.inflight,
            # nothing larger from the remote than this broker takes from its own clients
            maximum_packet_size=min(MAX_PACKET_SIZE,
                                    bridge.broker.capabilities.maximum_packet_size))
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
