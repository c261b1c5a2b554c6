"""The MQTT client and the session that outlives its connections.

``MQTTClient`` holds what survives a reconnection (subscriptions and their callbacks, QoS 1/2
messages not yet acknowledged, packet identifiers, messages waiting for a quota); each network
connection is one ``MQTTClientProtocol`` (``_protocol.py``) that only feeds bytes to the decoder.
"""

from __future__ import annotations

import random as _random
from collections import deque
from dataclasses import replace
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Union

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_mqtt.client._errors import (
    ClientStopped,
    ConnectionRefused,
    MQTTClientError,
    PublishFailed,
    QueueFull,
    shown_reason,
)
from twisted_mqtt.client._protocol import MQTTClientProtocol, ProtocolFactory, client_endpoint
from twisted_mqtt.client._values import (
    CLOSE_TIMEOUT,
    DEFAULT_RECONNECT,
    MAXIMUM_PACKET_SIZE,
    RECEIVE_MAXIMUM,
    ROUTE_CACHE_SIZE,
    V5,
    ConnectResult,
    Message,
    MessageCallback,
    ReconnectPolicy,
)
from twisted_mqtt.codec import MAX_PACKET_SIZE, encode_properties, encode_publish, encode_within
from twisted_mqtt.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    ProtocolLevel,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    reason_name,
)
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.topics import matches, split_shared, validate_topic_filter, validate_topic_name


class _Outgoing:
    """A message given to ``publish``: waiting for a quota, then in flight until acknowledged."""

    __slots__ = ("packet", "deferred", "packet_id", "released")

    def __init__(self, packet: Publish, deferred: Deferred) -> None:
        self.packet = packet
        self.deferred = deferred
        self.packet_id: Optional[int] = None
        self.released = False
        """QoS 2: PUBREC received and PUBREL sent, waiting for PUBCOMP."""


class _Request:
    """A SUBSCRIBE or UNSUBSCRIBE waiting for its acknowledgement."""

    __slots__ = ("packet", "deferred")

    def __init__(self, packet: Union[Subscribe, Unsubscribe], deferred: Optional[Deferred]) -> None:
        self.packet = packet
        self.deferred = deferred


class _Subscription:
    __slots__ = ("entry", "callback", "properties")

    def __init__(self, entry: Subscription, callback: Optional[MessageCallback],
                 properties: Properties) -> None:
        self.entry = entry
        self.callback = callback
        self.properties = properties


class MQTTClient:
    """An MQTT 3.1.1 or 5.0 client that reconnects by itself.

    ``endpoint`` is a Twisted client endpoint string, a ``ws://``/``wss://`` URL or an endpoint
    object.  Every time comes from ``clock`` (by default ``reactor``).  Call ``connect()`` once;
    after the first success, a lost connection is made again after a delay given by
    ``reconnect`` (None: never), the subscriptions are made again unless the server kept the
    session, and unacknowledged QoS 1/2 messages are sent again.  ``on_message`` receives the
    messages that match no subscription's callback.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: Union[str, IStreamClientEndpoint],
        client_id: str = "",
        *,
        protocol_level: int = ProtocolLevel.MQTT_5,
        clean_start: bool = True,
        session_expiry_interval: int = 0,
        keep_alive: int = 60,
        username: Optional[str] = None,
        password: Optional[bytes] = None,
        will: Optional[Will] = None,
        connect_properties: Properties = NO_PROPERTIES,
        reconnect: Optional[ReconnectPolicy] = DEFAULT_RECONNECT,
        connect_timeout: float = 30.0,
        ping_timeout: Optional[float] = None,
        receive_maximum: int = RECEIVE_MAXIMUM,
        maximum_packet_size: int = MAXIMUM_PACKET_SIZE,
        topic_alias_maximum: int = 16,
        use_topic_aliases: bool = False,
        max_queued: int = 10_000,
        on_message: Optional[MessageCallback] = None,
        clock: Optional[IReactorTime] = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if protocol_level not in (ProtocolLevel.MQTT_3_1, ProtocolLevel.MQTT_3_1_1, V5):
            raise ValueError(f"unsupported protocol level {protocol_level}")
        for name, number, low, high in (
                ("keep_alive", keep_alive, 0, 65535),
                ("session_expiry_interval", session_expiry_interval, 0, 0xFFFFFFFF),
                ("receive_maximum", receive_maximum, 1, 65535),
                ("maximum_packet_size", maximum_packet_size, 16, MAX_PACKET_SIZE),
                ("topic_alias_maximum", topic_alias_maximum, 0, 65535),
                ("max_queued", max_queued, 0, None)):
            if number < low or high is not None and number > high:
                raise ValueError(f"{name} must be from {low} to {high}, not {number}"
                                 if high is not None else f"{name} must be {low} or more")
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.endpoint = (client_endpoint(reactor, endpoint) if isinstance(endpoint, str)
                         else endpoint)
        self.client_id = client_id
        self.protocol_level = protocol_level
        self.clean_start = clean_start
        self.session_expiry_interval = session_expiry_interval
        self.keep_alive = keep_alive
        self.username = username
        self.password = password
        self.will = will
        self.connect_properties = connect_properties
        self.reconnect = reconnect
        self.connect_timeout = connect_timeout
        self.ping_timeout = ping_timeout
        self.receive_maximum = receive_maximum
        """How many incoming QoS 2 messages may wait for their PUBREL at once (told to v5
        servers)."""
        self.maximum_packet_size = maximum_packet_size
        self.topic_alias_maximum = topic_alias_maximum if protocol_level == V5 else 0
        self.use_topic_aliases = use_topic_aliases
        self.max_queued = max_queued
        self.on_message = on_message
        self.on_connected: Optional[Callable[[ConnectResult], Any]] = None
        """Called after each accepted CONNACK (after the first one, ``connect()`` has fired)."""
        self.on_disconnected: Optional[Callable[[Failure], Any]] = None
        """Called each time an accepted connection ends."""
        self._random = random
        self.connect_result: Optional[ConnectResult] = None
        """The last accepted CONNACK."""
        # The session: it outlives connections.
        self._subscriptions: Dict[str, _Subscription] = {}
        self._routes: Dict[str, Tuple[MessageCallback, ...]] = {}
        """Topic -> the callbacks of the subscriptions it matches (cleared when they change)."""
        self._inflight: Dict[int, _Outgoing] = {}
        self._requests: Dict[int, _Request] = {}
        self._queued: Deque[_Outgoing] = deque()
        self._resends: Deque[_Outgoing] = deque()
        """In flight from an earlier connection, beyond this one's Receive Maximum: sent again
        (DUP) as acknowledgements make room, before anything queued."""
        self._incoming_qos2: set[int] = set()
        self._next_id = 1
        self._connected_before = False
        # The connection going on.
        self._protocol: Optional[MQTTClientProtocol] = None
        self._connected = False
        self._held = False
        """The transport's buffer is full: new messages wait in the queue."""
        self._acks_held = 0
        """Acknowledgements written since the transport's buffer became full."""
        self._reading_paused = False
        self._unknown_logged = False
        """An acknowledgement of an unknown identifier was logged on this connection."""
        self._clean_sent = True
        self._running = False
        self._attempt = 0
        self._pending_connect: Optional[Deferred] = None
        self._retry_first = False
        self._dialing: Optional[Deferred] = None
        self._retry_call: Optional[IDelayedCall] = None
        self._stopping: List[Deferred] = []
        self._timers: Dict[str, IDelayedCall] = {}
        self._last_sent = 0.0
        self._keep_alive = keep_alive
        self._server_receive_maximum = RECEIVE_MAXIMUM
        self._server_maximum_packet_size: Optional[int] = None
        self._server_alias_maximum = 0
        self._server_maximum_qos = 2
        self._server_retain = True
        self._aliases_out: Dict[str, int] = {}
        self._aliases_in: Dict[int, str] = {}

    # -- public API ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a connection is open and accepted now."""
        return self._connected

    def connect(self, retry: bool = False) -> Deferred:
        """Connect; the Deferred fires with the first accepted CONNACK as a ``ConnectResult``.

        It fails with ``ConnectionRefused`` when the server refuses the connection, and (unless
        ``retry``, which keeps trying with back-off until the server answers) with the reason the
        first attempt failed.  Either way the client then stops.
        """
        if self._running:
            raise RuntimeError("connect() called on a client already started")
        self._running = True
        self._retry_first = retry
        self._attempt = 0
        pending = self._pending_connect = Deferred()
        self._dial()  # may fail at once, and the client stop
        return pending

    def subscribe(self, topic_filter: str, callback: Optional[MessageCallback] = None,
                  qos: int = 0, *, no_local: bool = False, retain_as_published: bool = False,
                  retain_handling: int = 0,
                  properties: Properties = NO_PROPERTIES) -> Deferred:
        """Subscribe to ``topic_filter``; ``callback`` gets each message that matches it.

        The Deferred fires with the SUBACK's reason codes (a tuple of one; 0x80 and above is a
        refusal, and the callback is then dropped).  The subscription is made again after a
        reconnection that lost the session.  Subscribing again to the same filter replaces its
        options and callback.
        """
        validate_topic_filter(topic_filter)
        if qos not in (0, 1, 2) or retain_handling not in (0, 1, 2):
            raise ValueError("qos and retain_handling are 0, 1 or 2")
        entry = Subscription(topic_filter, qos, no_local, retain_as_published, retain_handling)
        self._subscriptions[topic_filter] = _Subscription(entry, callback, properties)
        self._routes.clear()
        deferred: Deferred = Deferred()
        self._request(Subscribe(self._new_id(), (entry,), properties), deferred)
        return deferred

    def unsubscribe(self, topic_filter: str,
                    properties: Properties = NO_PROPERTIES) -> Deferred:
        """Unsubscribe from ``topic_filter`` and drop its callback; the Deferred fires with the
        UNSUBACK's reason codes (v5; an empty tuple for v3.1.1)."""
        self._subscriptions.pop(topic_filter, None)
        self._routes.clear()
        deferred: Deferred = Deferred()
        self._request(Unsubscribe(self._new_id(), (topic_filter,), properties), deferred)
        return deferred

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                properties: Properties = NO_PROPERTIES) -> Deferred:
        """Publish a message.  The Deferred fires when the message is written (QoS 0), with the
        PUBACK (QoS 1) or the PUBCOMP (QoS 2); it fails with ``PublishFailed`` when the server
        answers with an error reason code (v5) or when the server's limits forbid the message,
        and with ``QueueFull`` when ``max_queued`` messages already wait for a connection or a
        quota."""
        validate_topic_name(topic)
        if qos not in (0, 1, 2):
            raise ValueError("qos is 0, 1 or 2")
        if properties.topic_alias is not None:
            raise ValueError("topic aliases are chosen by the client (use_topic_aliases)")
        message = _Outgoing(Publish(topic, payload, qos, retain, properties=properties),
                            Deferred())
        if self._connected and not self._held and not self._queued and not self._resends and (
                qos == 0 or self._room()):
            self._send_publish(message)
        elif len(self._queued) >= self.max_queued:
            return fail(QueueFull(f"{len(self._queued)} messages are already waiting"))
        else:
            self._queued.append(message)
        return message.deferred

    def disconnect(self, reason_code: int = ReasonCode.SUCCESS,
                   properties: Properties = NO_PROPERTIES) -> Deferred:
        """Send DISCONNECT (with ``reason_code`` in v5) and close; stop reconnecting.  Fires when
        the connection is closed.  Messages not yet acknowledged stay in the client, and are sent
        again by a later ``connect()``."""
        self._running = False
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        if self._dialing is not None:
            self._dialing.cancel()
        self._fail_connect(ClientStopped("disconnect() called before the connection was made"))
        protocol = self._protocol
        if protocol is None:
            return succeed(None)
        if self._connected:
            self._send(Disconnect(reason_code, properties))
        deferred: Deferred = Deferred()
        self._stopping.append(deferred)
        self._close()
        return deferred

    # -- connecting ------------------------------------------------------------------------------

    def _dial(self) -> None:
        self._retry_call = None
        self._timer("connack", self.connect_timeout, self._connack_missing)
        dialing = self._dialing = maybeDeferred(self.endpoint.connect, ProtocolFactory(self))
        dialing.addErrback(self._dial_failed)

        def done(result: Any) -> Any:
            self._dialing = None
            return result

        dialing.addBoth(done)

    def _dial_failed(self, reason: Failure) -> None:
        timed_out = "connack" not in self._timers
        self._cancel_timer("connack")
        if not self._running:
            return
        if timed_out:  # cancelled by _connack_missing
            reason = Failure(TimeoutError(string=f"no connection within {self.connect_timeout}s"))
        self.log.info("MQTT client {client_id}: cannot connect: {reason}",
                      client_id=self.client_id, reason=reason.getErrorMessage())
        self._retry_or_stop(reason)

    def _retry_or_stop(self, reason: Failure) -> None:
        """After a failed attempt or a lost connection: wait and try again, or stop."""
        first = self._pending_connect is not None
        if first and not self._retry_first or self.reconnect is None:
            self._running = False
            self._fail_connect(reason)
            return
        delay = self.reconnect.delay(self._attempt, self._random())
        self._attempt += 1
        self.log.info("MQTT client {client_id}: connecting again in {delay:.2f}s",
                      client_id=self.client_id, delay=delay)
        self._retry_call = self.clock.callLater(delay, self._dial)

    def _fail_connect(self, reason: Union[Failure, Exception]) -> None:
        pending, self._pending_connect = self._pending_connect, None
        if pending is not None:
            pending.errback(reason)

    def _transport_made(self, protocol: MQTTClientProtocol) -> None:
        if not self._running:
            protocol.transport.loseConnection()
            return
        self._protocol = protocol
        self._unknown_logged = False
        self._server_maximum_packet_size = None  # until this connection's CONNACK says
        clean = self.clean_start
        if self._connected_before and (self.session_expiry_interval if self.protocol_level == V5
                                       else not self.clean_start):
            clean = False  # resume the session the server keeps
        props = self.connect_properties
        if self.protocol_level == V5:
            props = replace(
                props,
                session_expiry_interval=self.session_expiry_interval or None,
                receive_maximum=(self.receive_maximum if self.receive_maximum != RECEIVE_MAXIMUM
                                 else None),
                maximum_packet_size=(self.maximum_packet_size
                                     if self.maximum_packet_size < MAX_PACKET_SIZE else None),
                topic_alias_maximum=self.topic_alias_maximum or None)
            props = NO_PROPERTIES if props == NO_PROPERTIES else props
        self._clean_sent = clean
        self._send(Connect(self.client_id, self.protocol_level, clean, self.keep_alive,
                           self.username, self.password, self.will, props))

    def _connack_missing(self) -> None:
        """``connect_timeout`` passed since the attempt began, without CONNACK."""
        self._timers.pop("connack", None)
        if self._dialing is not None:  # the endpoint has not connected yet: it gives up
            self._dialing.cancel()
            return
        self.log.warn("MQTT client {client_id}: no CONNACK within {timeout}s: closing",
                      client_id=self.client_id, timeout=self.connect_timeout)
        self._abort()

    def _on_connack(self, ack: ConnAck) -> None:
        self._cancel_timer("connack")
        if ack.reason_code:
            refused = ConnectionRefused(ack.reason_code, self.protocol_level, ack.properties)
            self.log.warn("MQTT client {client_id}: connection refused: {refused}",
                          client_id=self.client_id, refused=str(refused))
            if self._pending_connect is not None:
                self._running = False
                self._fail_connect(refused)
            if self._protocol is not None:
                self._protocol.transport.loseConnection()
            return
        if ack.session_present and self._clean_sent:
            self._protocol_error(self._protocol, ReasonCode.PROTOCOL_ERROR,
                                 "Session Present 1 in answer to a clean start")
            return
        props = ack.properties
        self._connected = True
        self._attempt = 0
        self._connected_before = True
        if props.assigned_client_identifier:
            self.client_id = props.assigned_client_identifier
        self._server_receive_maximum = props.receive_maximum or RECEIVE_MAXIMUM
        self._server_maximum_packet_size = props.maximum_packet_size
        self._server_alias_maximum = (props.topic_alias_maximum or 0) if self.use_topic_aliases \
            else 0
        self._server_maximum_qos = 2 if props.maximum_qos is None else props.maximum_qos
        self._server_retain = props.retain_available != 0
        # The Server Keep Alive replaces the client's [MQTT-3.2.2-21]; one of 0 frees the client
        # from pinging, but it still probes at its own interval (a PINGREQ may be sent at any
        # time), so that a server cannot keep it on a dead connection forever.
        self._keep_alive = props.server_keep_alive or self.keep_alive
        self._aliases_out = {}
        self._aliases_in = {}
        result = self.connect_result = ConnectResult(ack.session_present, ack.reason_code, props)
        self._resume(ack.session_present)
        self._schedule_ping()
        if self.on_connected is not None:
            self._notify(self.on_connected, result)
        pending, self._pending_connect = self._pending_connect, None
        if pending is not None:
            pending.callback(result)

    def _resume(self, session_present: bool) -> None:
        """After an accepted CONNACK: subscribe again (unless the server kept the session), send
        again what is not acknowledged, in its order [MQTT-4.4.0-1], then what waits."""
        if not session_present:
            self._incoming_qos2.clear()
            requested = {f for r in self._requests.values() if isinstance(r.packet, Subscribe)
                         for f in (s.topic_filter for s in r.packet.subscriptions)}
            for topic_filter, sub in self._subscriptions.items():
                if topic_filter not in requested:
                    packet_id = self._new_id()
                    self._requests[packet_id] = _Request(
                        Subscribe(packet_id, (sub.entry,), sub.properties), None)
        for request in list(self._requests.values()):
            self._request(request.packet, request.deferred)
        self._resends.clear()
        if session_present:
            # Within the new Receive Maximum [MQTT-3.3.4-7]: a PUBLISH beyond it waits for an
            # acknowledgement, keeping its identifier (so QoS 2 stays exactly once).
            room = self._server_receive_maximum - sum(
                1 for m in self._inflight.values() if m.released)
            for packet_id, message in list(self._inflight.items()):
                if message.released:
                    self._send(PubRel(packet_id))
                elif room > 0:
                    room -= 1
                    self._write_publish(message, dup=True)
                else:
                    self._resends.append(message)
        else:
            # A new session: what was in flight is published again as new messages, within the
            # new quota; a QoS 2 message the server took (PUBREC) is complete.
            again = [m for m in self._inflight.values() if not m.released]
            taken = [m for m in self._inflight.values() if m.released]
            self._inflight.clear()
            for message in again:
                message.packet_id = None
            self._queued.extendleft(reversed(again))
            for message in taken:
                message.deferred.callback(None)
        self._flush_queue()

    # -- sending ---------------------------------------------------------------------------------

    def _new_id(self) -> int:
        if len(self._inflight) + len(self._requests) >= 65535:
            raise QueueFull("all 65,535 packet identifiers are in use")
        packet_id = self._next_id
        while packet_id in self._inflight or packet_id in self._requests:
            packet_id = packet_id % 65535 + 1
        self._next_id = packet_id % 65535 + 1
        return packet_id

    def _send(self, packet: Packet) -> bool:
        """Encode and write ``packet`` within the server's Maximum Packet Size; False if it
        cannot fit."""
        protocol = self._protocol
        if protocol is None:
            return False
        data = encode_within(packet, self.protocol_level, self._server_maximum_packet_size)
        if data is None:
            return False
        self._write(data)
        return True

    def _write(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.transport.write(data)
            self._last_sent = self.clock.seconds()

    def _request(self, packet: Union[Subscribe, Unsubscribe],
                 deferred: Optional[Deferred]) -> None:
        """Send a SUBSCRIBE or UNSUBSCRIBE now if connected, and keep it until acknowledged."""
        self._requests[packet.packet_id] = _Request(packet, deferred)
        if self._connected and not self._send(packet):
            del self._requests[packet.packet_id]
            kind = type(packet).__name__.upper()
            error = MQTTClientError(f"{kind} larger than the server's Maximum Packet Size "
                                    f"({self._server_maximum_packet_size} bytes) not sent")
            if deferred is not None:
                deferred.errback(error)
            else:
                self.log.warn("MQTT client {client_id}: {error}", client_id=self.client_id,
                              error=str(error))

    def _room(self) -> bool:
        """Whether one more QoS 1/2 message may go in flight: within the server's Receive
        Maximum [MQTT-3.3.4-7], and a packet identifier free."""
        inflight = len(self._inflight)
        return inflight < self._server_receive_maximum and inflight + len(self._requests) < 65535

    def _send_publish(self, message: _Outgoing) -> None:
        packet = message.packet
        if packet.qos > self._server_maximum_qos or packet.retain and not self._server_retain:
            code = (ReasonCode.QOS_NOT_SUPPORTED if packet.qos > self._server_maximum_qos
                    else ReasonCode.RETAIN_NOT_SUPPORTED)
            message.deferred.errback(PublishFailed(code, "PUBLISH not sent"))
            return
        if packet.qos:
            message.packet_id = self._new_id()
            self._inflight[message.packet_id] = message
        self._write_publish(message, dup=False)

    def _write_publish(self, message: _Outgoing, dup: bool) -> None:
        packet = message.packet
        topic = packet.topic
        props = packet.properties
        alias = self._aliases_out.get(topic)
        new_alias = False
        if alias is not None:
            topic = ""
        elif len(self._aliases_out) < self._server_alias_maximum:
            alias = self._aliases_out[topic] = len(self._aliases_out) + 1
            new_alias = True
        if alias is not None:
            props = replace(props, topic_alias=alias)
        data = encode_publish(topic.encode("utf-8"), packet.payload, packet.qos, packet.retain,
                              dup, message.packet_id,
                              encode_properties(props) if self.protocol_level == V5 else None)
        maximum = self._server_maximum_packet_size
        if maximum is not None and len(data) > maximum:
            if new_alias:
                del self._aliases_out[topic]
            if message.packet_id is not None:
                self._inflight.pop(message.packet_id, None)
            message.deferred.errback(PublishFailed(
                ReasonCode.PACKET_TOO_LARGE, "PUBLISH larger than the server's Maximum Packet "
                f"Size ({maximum} bytes) not sent"))
            return
        self._write(data)
        if not packet.qos:
            message.deferred.callback(None)

    def _flush_queue(self) -> None:
        resends = self._resends
        while resends and self._connected and not self._held and (
                len(self._inflight) - len(resends) < self._server_receive_maximum):
            message = resends.popleft()
            if self._inflight.get(message.packet_id) is message:  # type: ignore[arg-type]
                self._write_publish(message, dup=True)
        if resends:
            return
        queued = self._queued
        while queued and self._connected and not self._held:
            if queued[0].packet.qos and not self._room():
                return
            self._send_publish(queued.popleft())

    # -- receiving -------------------------------------------------------------------------------

    def _received(self, protocol: MQTTClientProtocol, packet: Any) -> None:
        if protocol is not self._protocol:
            return
        kind = type(packet)
        if kind is Publish:
            if self._connected:
                self._on_publish(packet)
                return
        elif kind is ConnAck:
            if not self._connected:
                self._on_connack(packet)
                return
        elif self._connected:
            handler = _HANDLERS.get(kind)
            if handler is not None:
                handler(self, packet)
                return
        self._protocol_error(protocol, ReasonCode.PROTOCOL_ERROR,
                             f"unexpected {kind.__name__.upper()}")

    def _on_publish(self, packet: Publish) -> None:
        topic = packet.topic
        props = packet.properties
        alias = props.topic_alias
        if alias is not None:
            if alias > self.topic_alias_maximum:
                self._protocol_error(self._protocol, ReasonCode.TOPIC_ALIAS_INVALID,
                                     f"topic alias {alias} above {self.topic_alias_maximum}")
                return
            if topic:
                self._aliases_in[alias] = topic
            else:
                known = self._aliases_in.get(alias)
                if known is None:
                    self._protocol_error(self._protocol, ReasonCode.PROTOCOL_ERROR,
                                         f"unknown topic alias {alias}")
                    return
                topic = known
            props = replace(props, topic_alias=None)
            props = NO_PROPERTIES if props == NO_PROPERTIES else props
        message = Message(topic, packet.payload, packet.qos, packet.retain, props)
        if packet.qos == 0:
            self._deliver(message)
        elif packet.qos == 1:
            self._deliver(message)
            self._acknowledge(PubAck(packet.packet_id))  # type: ignore[arg-type]
        else:
            packet_id: int = packet.packet_id  # type: ignore[assignment]
            if packet_id not in self._incoming_qos2:
                if len(self._incoming_qos2) >= self.receive_maximum:
                    self._protocol_error(self._protocol, ReasonCode.RECEIVE_MAXIMUM_EXCEEDED,
                                         f"more than {self.receive_maximum} QoS 2 messages "
                                         "waiting for PUBREL")
                    return
                self._incoming_qos2.add(packet_id)
                self._deliver(message)
            self._acknowledge(PubRec(packet_id))

    def _deliver(self, message: Message) -> None:
        callbacks = self._routes.get(message.topic)
        if callbacks is None:
            callbacks = self._callbacks_for(message.topic)
        for callback in callbacks:
            self._call(callback, message)
        if not callbacks and self.on_message is not None:
            self._call(self.on_message, message)

    def _callbacks_for(self, topic: str) -> Tuple[MessageCallback, ...]:
        """The distinct callbacks of the subscriptions matching ``topic``, remembered until the
        subscriptions change."""
        found: List[MessageCallback] = []
        for topic_filter, sub in self._subscriptions.items():
            callback = sub.callback
            if callback is not None and callback not in found and matches(
                    split_shared(topic_filter)[1], topic):
                found.append(callback)
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.clear()
        callbacks = self._routes[topic] = tuple(found)
        return callbacks

    def _call(self, callback: MessageCallback, message: Message) -> None:
        try:
            callback(message)
        except Exception:
            self.log.failure("MQTT client {client_id}: message callback failed on {topic}",
                             client_id=self.client_id, topic=message.topic)

    def _notify(self, callback: Callable[[Any], Any], argument: Any) -> None:
        try:
            callback(argument)
        except Exception:
            self.log.failure("MQTT client {client_id}: {callback} failed",
                             client_id=self.client_id, callback=callback)

    def _unknown(self, kind: str, packet_id: int) -> None:
        """An acknowledgement of an identifier not in use (a server may acknowledge again what
        it acknowledged before a reconnection): logged once per connection."""
        if not self._unknown_logged:
            self._unknown_logged = True
            self.log.info("MQTT client {client_id}: {kind} for unknown packet {packet_id} "
                          "(further ones on this connection are not logged)",
                          client_id=self.client_id, kind=kind, packet_id=packet_id)

    def _wrong_kind(self, kind: str, message: _Outgoing) -> None:
        self._protocol_error(self._protocol, ReasonCode.PROTOCOL_ERROR,
                             f"{kind} for QoS {message.packet.qos} PUBLISH {message.packet_id}"
                             + (" before PUBREC" if kind == "PUBCOMP" else ""))

    def _on_puback(self, ack: PubAck) -> None:
        message = self._inflight.get(ack.packet_id)
        if message is None:
            self._unknown("PUBACK", ack.packet_id)
            return
        if message.packet.qos != 1:
            self._wrong_kind("PUBACK", message)
            return
        del self._inflight[ack.packet_id]
        self._settle(message, ack, "PUBACK")

    def _on_pubrec(self, ack: PubRec) -> None:
        message = self._inflight.get(ack.packet_id)
        if message is None:
            self._unknown("PUBREC", ack.packet_id)
            code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if self.protocol_level == V5 else 0
            self._send(PubRel(ack.packet_id, code))
            return
        if message.packet.qos != 2:
            self._wrong_kind("PUBREC", message)
            return
        if ack.reason_code >= 0x80:
            del self._inflight[ack.packet_id]
            self._settle(message, ack, "PUBREC")
            return
        message.released = True
        self._send(PubRel(ack.packet_id))

    def _on_pubcomp(self, ack: PubComp) -> None:
        message = self._inflight.get(ack.packet_id)
        if message is None:
            self._unknown("PUBCOMP", ack.packet_id)
            return
        if not message.released:
            self._wrong_kind("PUBCOMP", message)
            return
        del self._inflight[ack.packet_id]
        self._settle(message, ack, "PUBCOMP")

    def _settle(self, message: _Outgoing, ack: Union[PubAck, PubRec, PubComp], kind: str) -> None:
        if ack.reason_code >= 0x80:
            message.deferred.errback(PublishFailed(ack.reason_code, kind, ack.properties))
        else:
            message.deferred.callback(ack)
        self._flush_queue()

    def _on_pubrel(self, rel: PubRel) -> None:
        if rel.packet_id in self._incoming_qos2:
            self._incoming_qos2.discard(rel.packet_id)
            self._acknowledge(PubComp(rel.packet_id))
        else:
            code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if self.protocol_level == V5 else 0
            self._acknowledge(PubComp(rel.packet_id, code))

    def _acknowledge(self, ack: Union[PubAck, PubRec, PubComp]) -> None:
        """Send ``ack``.  While the transport's buffer is full, a server that keeps sending
        without reading its acknowledgements (a server within the client's Receive Maximum
        cannot send more than that many) is no longer read until the buffer drains."""
        self._send(ack)
        if self._held:
            self._acks_held += 1
            if self._acks_held > self.receive_maximum and not self._reading_paused:
                self.log.info("MQTT client {client_id}: the server does not read its "
                              "acknowledgements: reading paused until it does",
                              client_id=self.client_id)
                self._pause_reading()

    def _on_suback(self, ack: Union[SubAck, UnsubAck]) -> None:
        request = self._requests.get(ack.packet_id)
        if request is None:
            self._unknown(type(ack).__name__.upper(), ack.packet_id)
            return
        packet = request.packet
        if isinstance(packet, Subscribe):
            expected = "SubAck", len(packet.subscriptions)
        else:
            expected = "UnsubAck", len(packet.topic_filters) if self.protocol_level == V5 else 0
        if (type(ack).__name__, len(ack.reason_codes)) != expected:
            self._protocol_error(self._protocol, ReasonCode.PROTOCOL_ERROR,
                                 f"{type(ack).__name__.upper()} with {len(ack.reason_codes)} "
                                 f"reason codes for {type(packet).__name__.upper()} "
                                 f"{ack.packet_id} of {expected[1]} topic filters")
            return
        del self._requests[ack.packet_id]
        if isinstance(packet, Subscribe):
            for entry, code in zip(packet.subscriptions, ack.reason_codes):
                if code >= 0x80:
                    self.log.warn("MQTT client {client_id}: subscription to {topic_filter} "
                                  "refused: {reason} (0x{code:02X})", client_id=self.client_id,
                                  topic_filter=entry.topic_filter, reason=reason_name(code),
                                  code=code)
                    sub = self._subscriptions.get(entry.topic_filter)
                    if sub is not None and sub.entry == entry:
                        del self._subscriptions[entry.topic_filter]
                        self._routes.clear()
        if request.deferred is not None:
            request.deferred.callback(ack.reason_codes)

    def _on_pingresp(self, packet: PingResp) -> None:
        self._cancel_timer("pingresp")

    def _on_disconnect(self, packet: Disconnect) -> None:
        self.log.warn("MQTT client {client_id}: the server disconnected: {reason} (0x{code:02X})"
                      "{text}", client_id=self.client_id,
                      reason=reason_name(packet.reason_code, PacketType.DISCONNECT),
                      code=packet.reason_code,
                      text=(f": {shown_reason(packet.properties.reason_string)}"
                            if packet.properties.reason_string else ""))
        if self._protocol is not None:
            self._protocol.transport.loseConnection()

    def _on_auth(self, packet: Auth) -> None:
        self._protocol_error(self._protocol, ReasonCode.PROTOCOL_ERROR,
                             "AUTH without an authentication method")

    def _protocol_error(self, protocol: Optional[MQTTClientProtocol], code: int,
                        text: str) -> None:
        """The server broke the protocol: say why (v5 DISCONNECT), close, reconnect."""
        if protocol is None or protocol is not self._protocol:
            return
        self.log.warn("MQTT client {client_id}: {text}: closing ({reason})",
                      client_id=self.client_id, text=text, reason=reason_name(code))
        if self.protocol_level == V5 and self._connected:
            self._send(Disconnect(code))
        self._close()

    # -- keep alive and connection loss ----------------------------------------------------------

    def _timer(self, name: str, delay: float, action: Callable[[], None]) -> None:
        self._cancel_timer(name)
        self._timers[name] = self.clock.callLater(delay, action)

    def _cancel_timer(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _schedule_ping(self) -> None:
        if self._keep_alive:
            self._timer("ping", max(0.0, self._last_sent + self._keep_alive
                                    - self.clock.seconds()), self._ping)

    def _ping(self) -> None:
        del self._timers["ping"]
        if self.clock.seconds() - self._last_sent >= self._keep_alive:
            self._send(PingReq())
            if "pingresp" not in self._timers:
                self._timer("pingresp", self.ping_timeout or self._keep_alive,
                            self._pingresp_missing)
        self._schedule_ping()

    def _pingresp_missing(self) -> None:
        self._timers.pop("pingresp", None)
        self.log.warn("MQTT client {client_id}: no PINGRESP: closing", client_id=self.client_id)
        self._abort()

    def _abort(self) -> None:
        if self._protocol is not None:
            self._protocol.transport.abortConnection()

    def _close(self) -> None:
        """Read no more, write what is queued (a DISCONNECT) and close; a server that does not
        read it within ``CLOSE_TIMEOUT`` seconds is cut off."""
        protocol = self._protocol
        if protocol is None or protocol.closing:
            return
        protocol.closing = True
        self._pause_reading()
        protocol.transport.loseConnection()
        self._timer("close", CLOSE_TIMEOUT, self._abort)

    def _pause_reading(self) -> None:
        """Read nothing more from the server until ``_paused(False)`` (if the transport can)."""
        pause = getattr(self._protocol and self._protocol.transport, "pauseProducing", None)
        if pause is not None and not self._reading_paused:
            self._reading_paused = True
            pause()

    def _paused(self, protocol: MQTTClientProtocol, paused: bool) -> None:
        if protocol is self._protocol:
            self._held = paused
            if not paused:
                self._acks_held = 0
                if self._reading_paused and not protocol.closing:
                    self._reading_paused = False
                    protocol.transport.resumeProducing()
                self._flush_queue()

    def _transport_lost(self, protocol: MQTTClientProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        was_connected = self._connected
        self._protocol = None
        self._connected = False
        self._held = self._reading_paused = False
        self._acks_held = 0
        for name in list(self._timers):
            self._cancel_timer(name)
        stopping, self._stopping = self._stopping, []
        for deferred in stopping:
            deferred.callback(None)
        if was_connected:
            self.log.info("MQTT client {client_id}: connection lost: {reason}",
                          client_id=self.client_id, reason=reason.getErrorMessage())
            if self.on_disconnected is not None:
                self._notify(self.on_disconnected, reason)
        if self._running:
            self._retry_or_stop(reason)


_HANDLERS: Dict[type, Callable[[MQTTClient, Any], None]] = {
    PubAck: MQTTClient._on_puback,
    PubRec: MQTTClient._on_pubrec,
    PubRel: MQTTClient._on_pubrel,
    PubComp: MQTTClient._on_pubcomp,
    SubAck: MQTTClient._on_suback,
    UnsubAck: MQTTClient._on_suback,
    PingResp: MQTTClient._on_pingresp,
    Disconnect: MQTTClient._on_disconnect,
    Auth: MQTTClient._on_auth,
}
"""What each packet a connected client receives does (PUBLISH and CONNACK apart)."""

__all__ = ["MQTTClient"]
