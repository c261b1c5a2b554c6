"""One client connection's state machine: decode, check, dispatch to the broker, queue output.

It writes to any object with ``write`` and ``loseConnection`` (a Twisted transport or a
``StringTransport``) and buffers its output until ``flush``, so each connection gets one write
per batch of input however many packets the batch produced.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import replace
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    cast,
)

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.python.failure import Failure

from twisted_mqtt.codec import (
    AckedRun,
    Decoder,
    PublishRun,
    Run,
    decode_all,
    encode,
    encode_publish,
    encode_within,
)
from twisted_mqtt.errors import AckRefused, CodecError, UnsupportedProtocolVersion
from twisted_mqtt.exchange import AuthExchange
from twisted_mqtt.interfaces import AuthStep, ClientInfo, ConnectRequest, Veto
from twisted_mqtt.logs import Logger
from twisted_mqtt.packets import (
    VALID_REASON_CODES,
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
    PubAckRun,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    reason_name,
    version_name,
)
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.session import NO_INFLIGHT, Delivery, Message, Session
from twisted_mqtt.topics import levels_within, split_shared

if TYPE_CHECKING:
    from twisted_mqtt.broker import Broker

log = Logger()

AWAITING_CONNECT, AUTHENTICATING, CONNECTED, CLOSED = range(4)
NEVER = 0xFFFFFFFF
V5 = ProtocolLevel.MQTT_5
LINGER = 2.0
WRITE_CHUNK = 256 * 1024
"""A larger output goes to the transport in pieces of about this size, each only while the
transport takes more (is not paused), so that what it buffers stays small; the rest waits in
the connection's own queue, counted against ``maximum_pending_bytes``."""
_NO_OUTPUT = cast(List[bytes], ())
"""The output queue of a connection with nothing queued: an idle connection holds no list
(``write`` starts one)."""
_R = ReasonCode

# v5 CONNACK reason code -> v3 return code [MQTT-3.2.2-5 (3.1.1)].
_DEFAULT_FLAGS = ("retain_available", "wildcard_subscription_available",
                  "subscription_identifier_available", "shared_subscription_available")
"""CONNACK properties whose absence means 1 (available) (section 3.2.2.3)."""

_V3_RETURN_CODES: Dict[int, int] = {
    _R.UNSUPPORTED_PROTOCOL_VERSION: 1,
    _R.CLIENT_IDENTIFIER_NOT_VALID: 2,
    _R.SERVER_UNAVAILABLE: 3,
    _R.SERVER_BUSY: 3,
    _R.BAD_USER_NAME_OR_PASSWORD: 4,
    _R.NOT_AUTHORIZED: 5,
    _R.BANNED: 5,
    _R.BAD_AUTHENTICATION_METHOD: 5,
}
_V3_UNSUPPORTED = b"\x20\x02\x00\x01"
_V3_CONNACK = b"\x20\x02\x00\x00"  # accepted
_V3_CONNACK_PRESENT = b"\x20\x02\x01\x00"  # accepted, session present


def _veto_code(veto: Any, kind: PacketType) -> int:
    """A hook's refusal (a ``Veto``, or None) as a failure reason code that a ``kind`` packet
    may carry: the veto's own if it is one, else 0x80."""
    code = veto.reason_code if isinstance(veto, Veto) else _R.UNSPECIFIED_ERROR
    if code < 0x80 or code not in VALID_REASON_CODES[kind]:
        return _R.UNSPECIFIED_ERROR
    return code


_FAST_FORMS = (tuple, int, PublishRun, AckedRun, PubAckRun)
"""What the decoder makes of PUBLISH and PUBACK packets for the fast paths."""


def _as_packets(item: Any) -> List[Any]:
    """A decoded item as packets: an item in a fast form (decoded before a packet hook was
    installed, then held) as the packets it stands for."""
    kind = type(item)
    if kind is tuple:
        return [Publish(*item[:7])]
    if kind is int:
        return [PubAck(item)]
    if kind is PubAckRun:
        return [PubAck(packet_id) for packet_id in item]
    if kind is PublishRun or kind is AckedRun:
        return [Publish(*fields[:7]) for fields in item.publishes()]
    return [item]


def _user(username: Optional[str]) -> str:
    """A user name as the log names it."""
    return "no user name" if username is None else f"user {username!r}"


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class OutputHold:
    """A commit that a connection's output waits for, from its ``at``-th queued packet on."""

    __slots__ = ("at",)

    def __init__(self, at: int) -> None:
        self.at = at


class _Occasional:
    """What few connections need, kept apart so that an idle connection does not hold it."""

    __slots__ = ("holding", "held_by", "retained_lookups", "lookup_limit", "replay",
                 "resending", "exchange", "reauthenticating", "assigned_id", "linger",
                 "aliases_in", "aliases_out", "holds")

    def __init__(self) -> None:
        self.holding: Optional[List[Connection]] = None
        """Publishers whose input waits until this (blocked) connection drains."""
        self.held_by: Optional[Set[Connection]] = None
        """The blocked connections this one's input waits for."""
        self.retained_lookups: Optional[OrderedDict[str, None]] = None
        """The filters whose retained messages are still to be sent, in order, a turn at a
        time (see ``Connection._send_retained``)."""
        self.lookup_limit: Optional[int] = None
        """The ``RetainedIndex.visited`` count at which this turn's retained lookups stop."""
        self.replay: Optional[Tuple[str, Deque[str]]] = None
        """A filter whose retained messages were being sent when the connection blocked, and
        the topics left: the rest goes out when it unblocks, so that a client that reads them
        all loses none, however large the retained set."""
        self.resending: Optional[List[int]] = None
        """Packet ids of messages in flight still to resend (the connection blocked first)."""
        self.exchange: Optional[AuthExchange] = None
        """The enhanced authentication exchange (v5 AUTH)."""
        self.reauthenticating = False
        self.assigned_id: Optional[str] = None
        """The client id the broker assigned (the client sent none)."""
        self.linger: Any = None
        """The call that closes a half-closed connection for good."""
        self.holds: Optional[List[OutputHold]] = None
        """The commits the output waits for, in the order of the packets they hold from (see
        ``Connection.hold_output``)."""
        self.aliases_in: Optional[Dict[int, str]] = None
        self.aliases_out: Optional[Dict[str, int]] = None


class _Defaults(_Occasional):
    """The ``_Occasional`` every connection reads until it needs its own: read-only."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, "aliases_out"):  # made: nothing may change it
            raise AttributeError(f"{name} is shared: set it on Connection._occasional()")
        super().__setattr__(name, value)


_NONE_YET: _Occasional = _Defaults()


class Connection:
    """The server side of one MQTT connection."""

    __slots__ = (
        "broker", "transport", "address", "listener", "decoder", "state", "protocol_level", "v5",
        "session", "client", "keep_alive", "last_rx", "opened_at", "paused", "blocked",
        "certificate_subject", "certificate_common_name",
        "alias_max_out", "max_packet_out", "connect_expiry", "_out", "_dirty", "_queued",
        "_limit", "overflowed", "_held", "_connect", "_will_ok", "_detached", "_observed",
        "_close_reason", "blocked_since", "_input_held", "_acks_held", "_more",
    )
    acl_exempt = False  # a network client: the authorizers say what it may receive
    remote = False  # a client of this node (see ``targets.DeliveryTarget``)

    def __init__(self, broker: Broker, transport: Any, address: Optional[str],
                 listener: str = "") -> None:
        self.broker = broker
        self.certificate_subject: Optional[str] = None  # set by the shell from a TLS peer
        self.certificate_common_name: Optional[str] = None
        self.transport = transport
        self.address = address
        self.listener = listener
        caps = broker.capabilities
        hooks = broker.hooks
        self._observed = hooks.packets
        """Packet hooks see every packet: no raw tuples, runs or forwarded frames."""
        self.decoder = Decoder(max_packet_size=caps.maximum_packet_size,
                               raw_publish=not self._observed)
        self._close_reason: Optional[int] = None
        self.state = AWAITING_CONNECT
        self.protocol_level: int = ProtocolLevel.MQTT_3_1_1
        self.v5 = False
        self.session: Optional[Session] = None
        self.client: Optional[ClientInfo] = None
        self.keep_alive = 0
        self.last_rx = self.opened_at = broker.now
        self.paused = False
        self.blocked = False
        self.blocked_since: Optional[float] = None
        self._more: _Occasional = _NONE_YET
        """What few connections need, made on first use (``_occasional``)."""
        self._out: List[bytes] = _NO_OUTPUT
        """Bytes queued for the client and not yet handed to the transport."""
        self._acks_held = 0
        """PUBACKs waiting for an acknowledgement barrier (``Broker.ack_held``): with the QoS 2
        messages not yet released, what ``receive_maximum`` bounds."""
        self._queued = 0
        """Their total size, which ``maximum_pending_bytes`` bounds."""
        self._limit = caps.maximum_pending_bytes
        """The size of ``_out`` past which ``write`` looks at the bounds."""
        self.overflowed = False
        """Whether the connection is being dropped for not reading what it is sent."""
        self._dirty = False
        self._held: Optional[List[Any]] = None
        self._input_held = False
        """Whether reading stopped because packets wait for a decision (``_held``)."""
        self._connect: Optional[Connect] = None
        self._will_ok = True
        self._detached = False
        self.alias_max_out = 0
        self.max_packet_out: Optional[int] = None
        self.connect_expiry = 0
        broker.connections.add(self)

    def _occasional(self) -> _Occasional:
        """This connection's own ``_Occasional``, made now if it had none."""
        more = self._more
        if more is _NONE_YET:
            more = self._more = _Occasional()
        return more

    def __repr__(self) -> str:
        client_id = self.client.client_id if self.client else "?"
        return f"<Connection {client_id} from {self.address}>"

    # -- input ----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Handle bytes from the peer, then write out everything they caused."""
        broker = self.broker
        self.last_rx = broker.now
        broker.stats.bytes_received += len(data)
        if self.state == CLOSED:
            return
        error: Optional[CodecError] = None
        try:
            packets = self.decoder.feed(data)
        except CodecError as exc:
            packets = exc.decoded
            error = exc
        broker.stats.packets_received += len(packets)
        if self._held is not None:
            self._held.extend(packets)
            if error is not None:
                self._held.append(error)
        else:
            try:
                self._handle(packets)
            except Exception:
                log.failure("{conn!r}: internal error; disconnecting it", conn=self)
                self.disconnect(_R.IMPLEMENTATION_SPECIFIC_ERROR)
            if error is not None and self.state != CLOSED:
                self._codec_error(error)
        if self._held is not None and not self._input_held:
            self._hold_input()
        broker.flush_soon()

    def _hold_input(self) -> None:
        """Packets wait for an authenticator's or authorizer's answer: read no more until it
        comes (``_read_again``), so that what is held stays what was read before."""
        self._input_held = True
        pause = getattr(self.transport, "pauseProducing", None)
        if pause is not None and self._more.held_by is None:
            pause()

    def _read_again(self) -> None:
        """Read the client again once no answer holds its packets (see ``_hold_input``)."""
        if self._input_held and self._held is None and self.state != CLOSED:
            self._input_held = False
            resume = getattr(self.transport, "resumeProducing", None)
            if resume is not None and self._more.held_by is None:
                resume()

    def _handle(self, packets: List[Any]) -> None:
        if self._observed:
            self._handle_observed(packets)
            return
        handlers = self._HANDLERS
        on_publish = self._on_publish
        for index, packet in enumerate(packets):
            if self.state == CLOSED:
                return
            if self._held is not None:
                self._held.extend(packets[index:])
                return
            kind = type(packet)
            if self.state == AUTHENTICATING and kind is not Auth and kind is not Disconnect:
                self._refuse(_R.PROTOCOL_ERROR)  # only AUTH until CONNACK [MQTT-3.1.2-30]
                return
            if kind is tuple:
                on_publish(packet)
            elif kind is int:
                self._on_puback_id(packet)
            elif kind is PubAckRun:
                self._on_puback_ids(packet)
            elif kind is PublishRun:
                self._on_publish_run(packet)
            elif kind is AckedRun:
                self._on_acked_run(packet)
            elif isinstance(packet, CodecError):
                self._codec_error(packet)
            else:
                handlers[kind](self, packet)

    def observe(self, observed: bool) -> None:
        """Pass every packet through the packet hooks from now on (``observed``), or take the
        fast paths again."""
        self._observed = observed
        self.decoder.raw_publish = not observed

    def _handle_observed(self, packets: List[Any]) -> None:
        """Handle packets one by one through the packet hooks."""
        hooks = self.broker.hooks
        if any(type(packet) in _FAST_FORMS for packet in packets):
            packets = [one for packet in packets for one in _as_packets(packet)]
        for index, packet in enumerate(packets):
            if self.state == CLOSED:
                return
            if self._held is not None:
                self._held.extend(packets[index:])
                return
            if isinstance(packet, CodecError):
                self._codec_error(packet)
                continue
            client = self._who()
            if hooks.on_packet_read:
                packet = hooks.modify(hooks.on_packet_read, client, packet)
                if packet is None or isinstance(packet, Veto):
                    continue
            self.inject(packet)
            if hooks.on_packet_processed:
                hooks.notify(hooks.on_packet_processed, self._who(), packet)  # CONNECT: known

    def inject(self, packet: Any) -> None:
        """Handle a decoded packet as if the client had sent it."""
        if self._held is not None:  # after the packets waiting for a hook's decision
            self._held.append(packet)
            return
        if self.state == AUTHENTICATING and not isinstance(packet, (Auth, Disconnect)):
            self._refuse(_R.PROTOCOL_ERROR)  # only AUTH until CONNACK [MQTT-3.1.2-30]
            return
        if isinstance(packet, Publish):
            self._on_publish((packet.topic, packet.payload, packet.qos, packet.retain,
                              packet.dup, packet.packet_id, packet.properties, None))
        else:
            self._HANDLERS[type(packet)](self, packet)

    def _who(self) -> ClientInfo:
        """The client as hooks see it (before CONNECT: an empty client id)."""
        client = self.client
        if client is None:
            client = ClientInfo("", None, self.address, self.listener, self.protocol_level,
                                self.certificate_subject, self.certificate_common_name)
        return client

    def _codec_error(self, error: CodecError) -> None:
        self.broker.stats.protocol_errors += 1
        log.info("{conn!r}: {error}; closing (reason 0x{code:02X} {name})", conn=self,
                 error=error, code=int(error.reason_code),
                 name=reason_name(error.reason_code, PacketType.DISCONNECT))
        if self.state == AWAITING_CONNECT:
            if isinstance(error, UnsupportedProtocolVersion):
                self.write(_V3_UNSUPPORTED)  # [MQTT-3.1.2-2]
            self.close()
        else:
            self.disconnect(error.reason_code)

    def connection_lost(self) -> None:
        """The transport is gone: detach from the session (publishing the will if due)."""
        if self.state == CONNECTED:
            log.info("{conn!r}: connection lost", conn=self)
        self.state = CLOSED
        self._out = _NO_OUTPUT  # nothing more can be sent: free it now
        self._queued = 0
        self.release_held()
        self._detach()
        linger = self._more.linger
        if linger is not None and linger.active():
            linger.cancel()
        self.broker.connections.discard(self)
        self.broker.flush()

    # -- output ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes for the next flush; past ``maximum_pending_bytes`` queued, block the
        connection, and past twice that, drop it (see ``_over_limit``)."""
        if self._observed:
            data = self._observe_output(data)
            if not data:
                return
        out = self._out
        if out:
            out.append(data)
        else:
            self._out = [data]
        self._queued += len(data)
        if self._queued > self._limit:
            self._over_limit()
        if not self._dirty:
            self._dirty = True
            self.broker.dirty.append(self)

    def _observe_output(self, data: bytes) -> bytes:
        """Pass each outgoing packet through the packet hooks; the bytes to send."""
        hooks = self.broker.hooks
        client = self._who()
        out = []
        for packet in decode_all(data, self.protocol_level):
            encoded = None
            if hooks.on_packet_encode:
                changed = hooks.modify(hooks.on_packet_encode, client, packet)
                if changed is None or isinstance(changed, Veto):
                    continue
                if changed is not packet:
                    packet = changed
                    encoded = encode(packet, self.protocol_level)
            if encoded is None:
                encoded = encode(packet, self.protocol_level)
            out.append(encoded)
            if hooks.on_packet_sent:
                hooks.notify(hooks.on_packet_sent, client, packet, encoded)
        return b"".join(out)

    def flush(self) -> None:
        """Hand queued bytes to the transport unless it pushes back (is paused): in one write,
        or a large output in pieces of ``WRITE_CHUNK`` bytes until the transport pushes back.
        A blocked connection with at most half of ``maximum_pending_bytes`` left is unblocked."""
        self._dirty = False
        out = self._out
        if out and not self.paused:
            holds = self._more.holds
            if holds:
                if holds[0].at:
                    self._write_before_hold(out, holds)
                return
            queued = self._queued
            if queued <= WRITE_CHUNK:
                data = out[0] if len(out) == 1 else b"".join(out)
                self._out = _NO_OUTPUT
                self._queued = 0
                self.broker.stats.bytes_sent += queued
                self.transport.write(data)
            else:
                self._write_pieces(out)
        if self.blocked and not self.overflowed and (
                self._queued <= self.broker.capabilities.maximum_pending_bytes // 2):
            self._unblock()

    def hold_output(self) -> OutputHold:
        """Send nothing from the last packet queued on (but PINGRESP) until ``release_output``
        of the hold returned: a store holds a QoS 2 PUBLISH until its record is committed, so
        that a broker killed in between does not deliver it again from a record that never
        had it as sent."""
        more = self._occasional()
        hold = OutputHold(max(0, len(self._out) - 1))
        if more.holds is None:
            more.holds = [hold]
        else:
            more.holds.append(hold)
        return hold

    def release_output(self, hold: OutputHold) -> None:
        """The commit ``hold`` waited for is done: what no other hold keeps back is sent."""
        holds = self._more.holds
        if not holds:
            return  # dropped at close
        for index, held in enumerate(holds):
            if held is hold:
                del holds[index]
                break
        else:
            return
        if index == 0 and self._out and not self._dirty and self.state != CLOSED:
            self._dirty = True
            self.broker.dirty.append(self)

    def _write_before_hold(self, out: List[bytes], holds: List[OutputHold]) -> None:
        """Write what was queued before the first hold."""
        count = holds[0].at
        data = b"".join(out[:count])
        del out[:count]
        for hold in holds:
            hold.at -= count
        self._queued -= len(data)
        self.broker.stats.bytes_sent += len(data)
        self.transport.write(data)

    def _drop_held(self) -> None:
        """Closing while output is held: what waits for a commit is not sent (the session
        keeps it in flight, to resend on the next connection)."""
        more = self._more
        holds = more.holds
        if not holds:
            return
        more.holds = None
        out = self._out
        if out is not _NO_OUTPUT:
            first = holds[0].at
            self._queued -= sum(len(data) for data in out[first:])
            del out[first:]

    def _write_pieces(self, out: List[bytes]) -> None:
        """Write ``out`` (the queue) in pieces until the transport pushes back, which it does
        from within ``transport.write`` once its own buffer is full."""
        index = 0
        count = len(out)
        stats = self.broker.stats
        while index < count and not self.paused:
            start = index
            size = 0
            while index < count and size < WRITE_CHUNK:
                size += len(out[index])
                index += 1
            data = out[start] if index == start + 1 else b"".join(out[start:index])
            self._queued -= size
            stats.bytes_sent += size
            self.transport.write(data)
        del out[:index]

    def _over_limit(self) -> None:
        """More than ``maximum_pending_bytes`` is queued for the client (whatever put it
        there: messages, retained messages, resends, acknowledgements): block the connection,
        so that its publishers are held back and its QoS 1/2 messages wait in its session.
        Past twice that, drop the connection and free what it had queued; the transport is
        aborted, so what it held is freed too."""
        if self.overflowed:
            self._out = _NO_OUTPUT
            self._queued = 0
            return
        limit = self.broker.capabilities.maximum_pending_bytes
        if self._queued <= 2 * limit:
            if not self.blocked:
                self.blocked = True
                self.blocked_since = self.broker.now
            self._limit = 2 * limit
            return
        log.warn("{conn!r}: {size} bytes queued that it does not read (maximum_pending_bytes "
                 "{limit}); dropping it", conn=self, size=self._queued, limit=limit)
        self.overflowed = self.blocked = True
        self._out = _NO_OUTPUT
        self._queued = 0
        self._limit = -1  # from now on every write is discarded here
        if self._more is not _NONE_YET:
            self._more.resending = None
        self.transport.abortConnection()

    def send_packet(self, packet: Packet) -> None:
        """Encode and queue a packet, respecting the client's Maximum Packet Size."""
        data = encode_within(packet, self.protocol_level, self.max_packet_out)
        if data is not None:
            self.broker.stats.packets_sent += 1
            self.write(data)

    def send_qos0(self, message: Message, retain: bool, sub_ids: Tuple[int, ...]) -> None:
        """Send a QoS 0 PUBLISH."""
        frame = message.frame
        if self.alias_max_out:
            data = self._aliased(message, 0, retain, sub_ids, None)
        elif frame is not None and not retain and not sub_ids and message.frame_v5 == self.v5:
            data = frame  # the packet as it came in is the packet to send
        else:
            data = message.encoded(self.v5, 0, retain, sub_ids, self.broker.now)
        if data is None or (self.max_packet_out is not None and len(data) > self.max_packet_out):
            assert self.session is not None
            self.broker.dropped(self.session.client_id, message, "too large")  # [MQTT-3.1.2-25]
            return
        stats = self.broker.stats
        stats.messages_sent += 1
        stats.messages_sent_by_qos[0] += 1
        stats.packets_sent += 1
        self.write(data)

    def send_delivery(self, delivery: Delivery) -> None:
        """Send a QoS 1/2 PUBLISH under a new packet identifier and track it until acknowledged."""
        session = self.session
        assert session is not None
        packet_id = session.allocate_packet_id()
        broker = self.broker
        hooks = broker.hooks
        if packet_id is None:
            session.pending().appendleft(delivery)
            if hooks.on_packet_ids_exhausted:
                hooks.notify(hooks.on_packet_ids_exhausted, session.client_id, delivery)
            return
        message = delivery.message
        split = message.split
        if (split is not None and delivery.qos == message.qos and message.frame_v5 == self.v5
                and not (delivery.retain or delivery.sub_ids or self.alias_max_out
                         or self.max_packet_out is not None)):
            data: Optional[bytes] = split[0] + packet_id.to_bytes(2, "big") + split[1]
        else:
            data = self._encode_delivery(delivery, packet_id, False)
        if data is None:
            # discarded as if sent [MQTT-3.1.2-25]
            broker.dropped(session.client_id, delivery.message, "too large")
            if hooks.on_qos_dropped:
                hooks.notify(hooks.on_qos_dropped, session.client_id, None, delivery)
            return
        inflight = session.inflight
        if inflight is NO_INFLIGHT:
            inflight = session.open_inflight()
        inflight[packet_id] = delivery
        stats = broker.stats
        stats.messages_sent += 1
        stats.messages_sent_by_qos[delivery.qos] += 1
        stats.packets_sent += 1
        self.write(data)
        if hooks.on_qos_publish:
            hooks.notify(hooks.on_qos_publish, session.client_id, packet_id, delivery, False)

    def _encode_delivery(self, delivery: Delivery, packet_id: int,
                         dup: bool) -> Optional[bytes]:
        """The QoS 1/2 PUBLISH of ``delivery`` for this client, or None if it does not fit the
        client's Maximum Packet Size."""
        message = delivery.message
        if self.alias_max_out:
            data = self._aliased(message, delivery.qos, delivery.retain, delivery.sub_ids,
                                 packet_id, dup)
        else:
            data = message.encoded(self.v5, delivery.qos, delivery.retain, delivery.sub_ids,
                                   self.broker.now, dup=dup, packet_id=packet_id)
        if data is None or (self.max_packet_out is not None and len(data) > self.max_packet_out):
            return None
        return data

    def _aliased(self, message: Message, qos: int, retain: bool, sub_ids: Tuple[int, ...],
                 packet_id: Optional[int], dup: bool = False) -> Optional[bytes]:
        """Encode with an outbound topic alias when the client allows them [MQTT-3.3.2-11]
        (a new one only if the packet still fits the client's Maximum Packet Size)."""
        aliases = self._more.aliases_out
        if aliases is None:
            aliases = self._occasional().aliases_out = {}
        topic = message.topic
        alias = aliases.get(topic)
        topic_bytes = message.topic_bytes
        new = False
        if alias is not None:
            topic_bytes = b""
        elif len(aliases) < self.alias_max_out:
            alias = aliases[topic] = len(aliases) + 1
            new = True
        now = self.broker.now
        props = message.v5_properties(sub_ids, now, alias)
        data = encode_publish(topic_bytes, message.payload, qos, retain, dup, packet_id, props)
        if new and self.max_packet_out is not None and len(data) > self.max_packet_out:
            # Too large with the alias property: the alias stays free, and the message goes
            # without it if that fits (the caller checks).
            del aliases[topic]
            props = message.v5_properties(sub_ids, now, None)
            data = encode_publish(topic_bytes, message.payload, qos, retain, dup, packet_id,
                                  props)
        return data

    def _resend(self, session: Session, packet_ids: Optional[List[int]] = None) -> None:
        """Resend unacknowledged messages on reconnect, PUBLISH with DUP set [MQTT-4.4.0-1],
        in order; if the connection blocks on the way, the rest (``packet_ids``) follow when
        it unblocks."""
        too_large = []
        hooks = self.broker.hooks
        inflight = session.inflight
        ids = list(inflight) if packet_ids is None else packet_ids
        for index, packet_id in enumerate(ids):
            if self.blocked:
                self._occasional().resending = ids[index:]
                break
            delivery = inflight.get(packet_id)
            if delivery is None:
                continue
            if delivery.state == 0:
                data = self._encode_delivery(delivery, packet_id, True)
                if data is None:
                    too_large.append(packet_id)  # the new limit: as if sent [MQTT-3.1.2-25]
                    continue
                self.broker.stats.packets_sent += 1
                self.write(data)
                if hooks.on_qos_publish:
                    hooks.notify(hooks.on_qos_publish, session.client_id, packet_id, delivery,
                                 True)
            else:
                self.send_packet(PubRel(packet_id))
        for packet_id in too_large:
            delivery = session.inflight.pop(packet_id)
            self.broker.dropped(session.client_id, delivery.message, "too large")
            if hooks.on_qos_dropped:
                hooks.notify(hooks.on_qos_dropped, session.client_id, packet_id, delivery)

    # -- closing --------------------------------------------------------------------------------

    def disconnect(self, reason: int, reason_string: Optional[str] = None) -> None:
        """Close the connection; a v5 client is told why with DISCONNECT [MQTT-3.14.0-1]."""
        if self.state == CLOSED:
            return
        self._close_reason = int(reason)
        self._drop_held()
        if self.v5 and self.state == CONNECTED:
            props = Properties(reason_string=reason_string) if reason_string else NO_PROPERTIES
            self.send_packet(Disconnect(reason, props))
        log.info("{conn!r}: disconnected by the broker, reason 0x{reason:02X} {name}{why}",
                 conn=self, reason=int(reason), name=reason_name(reason, PacketType.DISCONNECT),
                 why=f": {reason_string}" if reason_string else "")
        self.close()

    def close(self) -> None:
        """Flush and close the transport, detaching from the session now."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self._detach()
        self._drop_held()
        out = self._out
        if out:  # all of it, the last packet (DISCONNECT) included, even if paused
            self._out = _NO_OUTPUT
            self.broker.stats.bytes_sent += self._queued
            self._queued = 0
            self.transport.write(b"".join(out))
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:
            self.transport.loseConnection()
            return
        # Send FIN but keep reading (and discarding) until the peer closes, so that a client
        # still writing reads our last packet instead of getting a reset; then close for good.
        half_close()
        self._occasional().linger = self.broker.clock.callLater(LINGER,
                                                                self.transport.abortConnection)

    def _detach(self) -> None:
        if self._detached:
            return
        self._detached = True
        session = self.session
        if session is None:
            return
        broker = self.broker
        broker.connected -= 1
        if session.connection is self:
            broker.close_session_connection(session, self._will_ok)
        hooks = broker.hooks
        if hooks.on_disconnect and self.client is not None:
            kept = broker.sessions.get(session.client_id) is session
            hooks.notify(hooks.on_disconnect, self.client, self._close_reason, kept)

    def take_over(self) -> None:
        """Another connection claims this client id [MQTT-3.1.4-3]."""
        self.disconnect(_R.SESSION_TAKEN_OVER)

    def shutdown(self, reason: int) -> None:
        """The broker is stopping."""
        self.disconnect(reason)

    def check_keepalive(self, now: float) -> None:
        """Close a connection silent for 1.5 times its keep alive [MQTT-3.1.2-22], or one that
        never completed CONNECT (including authentication) within the connect timeout."""
        if self.state == CONNECTED:
            if self.keep_alive and now - self.last_rx > self.keep_alive * 1.5:
                self.disconnect(_R.KEEP_ALIVE_TIMEOUT)
        elif self.state in (AWAITING_CONNECT, AUTHENTICATING) and (
            now - self.opened_at > self.broker.capabilities.connect_timeout
        ):
            log.info("{conn!r}: no CONNECT within {timeout}s; closing", conn=self,
                     timeout=self.broker.capabilities.connect_timeout)
            self.close()

    def pause(self) -> None:
        """The transport's buffer is full: queue output here (counted) until it drains."""
        self.paused = True

    def resume(self) -> None:
        """The transport drained: hand it what is queued (see ``flush``)."""
        self.paused = False
        self.flush()
        self.broker.flush()

    def _unblock(self) -> None:
        """Little is left queued: finish resending, send what waited in the session, and read
        the publishers held back."""
        self.blocked = False
        self.blocked_since = None
        self._limit = self.broker.capabilities.maximum_pending_bytes
        session = self.session
        if session is not None and self.state == CONNECTED:
            more = self._more
            resending = more.resending
            if resending:
                more.resending = None
                self._resend(session, resending)
            self.broker.pump(session)
            more = self._more
            if not self.blocked and (more.replay is not None or more.retained_lookups):
                self._send_retained(session)
        if not self.blocked:
            self.release_held()

    def hold_reading(self, blocker: Connection) -> None:
        """Stop reading this client's input until ``blocker`` drains (or its grace ends)."""
        held_by = self._more.held_by
        if held_by is None:
            held_by = self._occasional().held_by = set()
            pause = getattr(self.transport, "pauseProducing", None)
            if pause is not None:
                pause()
        if blocker not in held_by:
            held_by.add(blocker)
            holding = blocker._more.holding
            if holding is None:
                holding = blocker._occasional().holding = []
            holding.append(self)

    def release_held(self) -> None:
        """Read again the publishers this connection held back."""
        more = self._more
        holding = more.holding
        if holding is None:
            return
        more.holding = None
        for publisher in holding:
            held_by = publisher._more.held_by
            if held_by is None:
                continue
            held_by.discard(self)
            if not held_by:
                publisher._more.held_by = None
                if publisher.state != CLOSED and not publisher._input_held:
                    resume = getattr(publisher.transport, "resumeProducing", None)
                    if resume is not None:
                        resume()

    # -- CONNECT --------------------------------------------------------------------------------

    def _on_connect(self, packet: Connect) -> None:
        if self.state != AWAITING_CONNECT:
            self.disconnect(_R.PROTOCOL_ERROR, "second CONNECT")  # [MQTT-3.1.0-2]
            return
        broker = self.broker
        caps = broker.capabilities
        level = packet.protocol_level
        self.protocol_level = level
        self.v5 = level == V5
        client_id = packet.client_id
        if not client_id:
            if (level == ProtocolLevel.MQTT_3_1
                    and not broker.compatibilities.allow_empty_client_id_v31):
                self._refuse(_R.CLIENT_IDENTIFIER_NOT_VALID)
                return
            if level == ProtocolLevel.MQTT_3_1_1 and not packet.clean_start:
                self._refuse(_R.CLIENT_IDENTIFIER_NOT_VALID)  # [MQTT-3.1.3-8]
                return
            client_id = self._occasional().assigned_id = broker.assign_client_id()
        elif len(client_id) > caps.maximum_client_id_length:
            self._refuse(_R.CLIENT_IDENTIFIER_NOT_VALID)
            return
        will = packet.will
        if will is not None:
            if will.qos > caps.maximum_qos:
                self._refuse(_R.QOS_NOT_SUPPORTED)  # [MQTT-3.2.2-12]
                return
            if will.retain and not caps.retain_available:
                self._refuse(_R.RETAIN_NOT_SUPPORTED)  # [MQTT-3.2.2-13]
                return
            if not levels_within(will.topic, caps.maximum_topic_levels):
                if self.v5:
                    self._refuse(_R.TOPIC_NAME_INVALID)
                else:  # no return code applies [MQTT-3.2.2-6 (3.1.1)]
                    log.info("{address}: connection refused, will topic of more than {limit} "
                             "levels", address=self.address, limit=caps.maximum_topic_levels)
                    self.close()
                return
        self._connect = (replace(packet, client_id=client_id) if self._more.assigned_id
                         else packet)
        self.client = ClientInfo(client_id, packet.username, self.address, self.listener, level,
                                 self.certificate_subject, self.certificate_common_name)
        if self._banned():
            self._refuse(_R.BANNED)
            return
        hooks = broker.hooks
        for on_connect in hooks.on_connect:
            try:
                answer = on_connect(self.client, packet)
            except Exception:
                log.failure("hook {hook!r} failed", hook=on_connect)
                continue
            if isinstance(answer, Veto):
                self._refuse(_veto_code(answer, PacketType.CONNACK))
                return
        method = packet.properties.authentication_method
        if method is not None:
            enhanced = broker.enhanced_authenticator
            if enhanced is None or method not in enhanced.methods:
                self._refuse(_R.BAD_AUTHENTICATION_METHOD)
                return
            self.state = AUTHENTICATING
            exchange = self._occasional().exchange = AuthExchange(enhanced, self.client, method,
                                                                  self._auth_answer)
            self._held = []
            exchange.step(packet.properties.authentication_data)
            return
        result = hooks.authenticate(ConnectRequest(self.client, packet.password, packet))
        if isinstance(result, Deferred):
            self.state = AUTHENTICATING
            self._held = []
            result.addErrback(self._authentication_failed).addCallback(
                self._later, self._authenticated)
        else:
            self._authenticated(result)

    def _banned(self) -> bool:
        """Whether a ban in force names this client (its id, user name or address)."""
        bans = self.broker.bans
        client = self.client
        return bool(bans) and client is not None and bans.match(
            client.client_id, client.username, self.address, self.broker.now) is not None

    def _auth_answer(self, step: AuthStep) -> None:
        """The enhanced authenticator answered a step of the exchange."""
        if self.state == CLOSED:
            return
        held, self._held = self._held, None
        exchange = self._more.exchange
        assert exchange is not None
        props = Properties(authentication_method=exchange.method,
                           authentication_data=step.data)
        code = step.reason_code
        if code not in (0, _R.CONTINUE_AUTHENTICATION) and code < 0x80:
            code = _R.UNSPECIFIED_ERROR
        if code == _R.CONTINUE_AUTHENTICATION:
            self.send_packet(Auth(code, props))  # [MQTT-4.12.0-2]
        elif self.state == AUTHENTICATING:
            if code:
                self.broker.stats.auth_failures += 1
                self._refuse(code)
            else:
                self._authorize_will(props)
        else:
            self._more.reauthenticating = False  # an exchange made it this connection's own
            if code:
                self.broker.stats.auth_failures += 1
                if code not in VALID_REASON_CODES[PacketType.DISCONNECT]:
                    code = _R.NOT_AUTHORIZED  # e.g. 0x86 exists only in CONNACK
                self.disconnect(code)  # [MQTT-4.12.1-2]
            else:
                self.send_packet(Auth(0, props))
        if held and self.state != CLOSED:
            self._handle(held)
        self._read_again()
        self.broker.flush()

    def _authentication_failed(self, failure: Any) -> int:
        log.failure("authenticator failed for {conn!r}", failure, conn=self)
        return _R.UNSPECIFIED_ERROR

    def _later(self, result: Any, work: Callable[..., None], *args: Any) -> None:
        """Run ``work(result, *args)`` for an answer that came later (a Deferred's) as
        ``data_received`` runs handlers: an unexpected error disconnects the client (0x83)
        rather than escaping to Twisted; then write out what it caused."""
        try:
            work(result, *args)
        except Exception:
            log.failure("{conn!r}: internal error; disconnecting it", conn=self)
            self.disconnect(_R.IMPLEMENTATION_SPECIFIC_ERROR)
        self._read_again()
        self.broker.flush()

    def _authenticated(self, result: Any) -> None:
        """The authenticators answered: 0 accepts, a reason code or ``Veto`` refuses."""
        if self.state == CLOSED:
            return
        held, self._held = self._held, None
        code = _veto_code(result, PacketType.CONNACK) if isinstance(result, Veto) else int(result)
        if code:
            self.broker.stats.auth_failures += 1
            self._refuse(code)
        else:
            self._authorize_will()
            if held:
                self._handle(held)
        self.broker.flush()

    def _authorize_will(self, auth: Properties = NO_PROPERTIES) -> None:
        """The client is authenticated: accept it if it may publish its will (if any) to the
        will's topic, else refuse it with 0x87 [MQTT-3.1.4-2]; an answer that comes later
        holds the packets that follow until then."""
        packet = self._connect
        assert packet is not None and self.client is not None
        if packet.will is None:
            self._claim(auth)
            return
        allowed = self.broker.will_allowed(self.client, packet.will)
        if isinstance(allowed, Deferred):
            if self._held is None:
                self._held = []
            allowed.addCallback(self._later, self._will_decided, auth)
            return
        self._will_decided(allowed, auth)

    def _will_decided(self, allowed: bool, auth: Properties) -> None:
        """The authorizers answered about the will of a CONNECT."""
        if self.state == CLOSED:
            return
        held, self._held = self._held, None
        if allowed:
            self._claim(auth)
            if held:
                self._handle(held)
            return
        packet = self._connect
        assert packet is not None and packet.will is not None
        log.info("{address}: client id {client_id}: will to {topic} not authorized",
                 address=self.address, client_id=packet.client_id, topic=packet.will.topic)
        self._connect = None  # the password is not kept
        self._refuse(_R.NOT_AUTHORIZED)

    def _claim(self, auth: Properties) -> None:
        """The client may connect: accept it once the broker's ``session_claim`` (a
        cluster's) has made its session this broker's to open; the packets that follow wait."""
        claim = self.broker.session_claim
        packet = self._connect
        assert packet is not None
        waiting = None if claim is None else claim(packet.client_id, packet.clean_start)
        if waiting is None:
            self._accept(auth)
            return
        if self._held is None:
            self._held = []
        waiting.addCallback(self._later, self._claimed, auth)

    def _claimed(self, code: int, auth: Properties) -> None:
        """The session is this broker's to open (``code`` 0), or the client is refused."""
        if self.state == CLOSED:
            return
        held, self._held = self._held, None
        if code:
            self._refuse(code)
            return
        self._accept(auth)
        if held:
            self._handle(held)

    def _refuse(self, code: int) -> None:
        """Answer CONNECT with a failure and close [MQTT-3.2.2-6]."""
        if code not in VALID_REASON_CODES[PacketType.CONNACK]:
            code = _R.UNSPECIFIED_ERROR  # [MQTT-3.2.2-8]
        self.state = AWAITING_CONNECT
        return_code = None if self.v5 else _V3_RETURN_CODES.get(code, 5)
        client = self.client
        log.info("{address}: connection refused, reason 0x{code:02X} {name}{v3}{who}",
                 address=self.address, code=code, name=reason_name(code),
                 return_code=return_code,
                 v3="" if return_code is None else f" (return code {return_code})",
                 client_id=client.client_id if client else None,
                 username=client.username if client else None,
                 who=f"; client id {client.client_id!r}, {_user(client.username)}"
                 if client else "")
        self.send_packet(ConnAck(code if return_code is None else return_code))
        self.close()

    def _accept(self, auth: Properties = NO_PROPERTIES) -> None:
        packet, self._connect = self._connect, None  # the password is not kept
        assert packet is not None
        if self._banned():  # banned while its authentication was pending
            self._refuse(_R.BANNED)
            return
        broker = self.broker
        caps = broker.capabilities
        props = packet.properties
        v5 = self.v5
        if v5:
            requested = props.session_expiry_interval or 0
        else:
            requested = 0 if packet.clean_start else NEVER
        expiry = min(requested, caps.maximum_session_expiry)
        keep_alive = packet.keep_alive
        server_keep_alive = None
        maximum_ka = caps.maximum_keep_alive
        if v5 and maximum_ka is not None and (keep_alive == 0 or keep_alive > maximum_ka):
            keep_alive = server_keep_alive = maximum_ka
        self.keep_alive = keep_alive
        self.connect_expiry = requested
        client_receive_maximum = 65535
        if v5:
            self.max_packet_out = props.maximum_packet_size
            self.alias_max_out = props.topic_alias_maximum or 0
            client_receive_maximum = props.receive_maximum or 65535
        ack_props = NO_PROPERTIES
        if v5:
            ack_props = Properties(
                session_expiry_interval=expiry if expiry != requested else None,
                assigned_client_identifier=self._more.assigned_id,  # [MQTT-3.2.2-16]
                server_keep_alive=server_keep_alive,
                receive_maximum=caps.receive_maximum if caps.receive_maximum < 65535 else None,
                maximum_packet_size=caps.maximum_packet_size,
                topic_alias_maximum=caps.topic_alias_maximum or None,
                maximum_qos=caps.maximum_qos if caps.maximum_qos < 2 else None,
                retain_available=int(caps.retain_available),
                wildcard_subscription_available=int(caps.wildcard_subscription_available),
                subscription_identifier_available=int(caps.subscription_identifier_available),
                shared_subscription_available=int(caps.shared_subscription_available),
                response_information=self._response_information(packet),
                authentication_method=auth.authentication_method,
                authentication_data=auth.authentication_data,
            )
            fitting = self._fitting_connack(ack_props)
            if fitting is None:
                log.info("{conn!r}: a CONNACK does not fit its Maximum Packet Size of {size} "
                         "bytes", conn=self, size=self.max_packet_out)
                self._refuse(_R.PACKET_TOO_LARGE)
                return
            ack_props = fitting
        taken = broker.sessions.get(packet.client_id)
        if taken is not None and getattr(taken.connection, "acl_exempt", False):
            log.info("{conn!r}: client id {client_id} is an inline subscription's",
                     conn=self, client_id=packet.client_id)
            self._refuse(_R.CLIENT_IDENTIFIER_NOT_VALID)
            return
        hooks = broker.hooks
        if hooks.on_session_establish:
            hooks.notify(hooks.on_session_establish, self.client, packet)
        session, present = broker.open_session(self, packet.client_id, packet.clean_start,
                                               expiry, packet.will)
        session.send_quota = min(client_receive_maximum, caps.maximum_inflight)
        self.session = session
        self.state = CONNECTED
        stats = broker.stats
        stats.connections_total += 1
        broker.connected += 1
        if broker.connected > stats.clients_maximum:
            stats.clients_maximum = broker.connected
        log.info("{conn!r}: connected ({user}, MQTT {version}, keep alive {keep_alive}{asked}, "
                 "clean start {clean}, session present {present})", conn=self,
                 user=_user(packet.username), username=packet.username,
                 version=version_name(packet.protocol_level),
                 protocol_level=int(packet.protocol_level), keep_alive=keep_alive,
                 asked="" if keep_alive == packet.keep_alive else
                 f" (asked {packet.keep_alive})", clean=packet.clean_start, present=present)
        # MQTT 3.1 has no Session Present flag: its CONNACK's first byte is reserved.
        flag = present and self.protocol_level != ProtocolLevel.MQTT_3_1
        if v5:
            self.send_packet(ConnAck(0, flag, ack_props))
        else:
            stats.packets_sent += 1
            self.write(_V3_CONNACK_PRESENT if flag else _V3_CONNACK)
        if hooks.on_session_established:
            hooks.notify(hooks.on_session_established, self.client, packet, present)
        if present:
            self._resend(session)
        broker.pump(session)

    def _fitting_connack(self, props: Properties) -> Optional[Properties]:
        """CONNACK properties that fit the client's Maximum Packet Size [MQTT-3.1.2-24]: as
        given (``send_packet`` leaves out Reason String and User Properties if that is enough
        [MQTT-3.2.2-19, MQTT-3.2.2-20]), else without the "available" flags that only repeat
        their defaults; None if even that does not fit."""
        limit = self.max_packet_out
        if limit is None or encode_within(ConnAck(0, True, props), V5, limit) is not None:
            return props
        unset: Dict[str, Any] = {name: None for name in _DEFAULT_FLAGS
                                 if getattr(props, name) == 1}
        lighter = replace(props, **unset)
        if encode_within(ConnAck(0, True, lighter), V5, limit) is None:
            return None
        return lighter

    def _response_information(self, packet: Connect) -> Optional[str]:
        template = self.broker.capabilities.response_information
        if template is None or not packet.properties.request_response_information:
            return None  # [MQTT-3.1.2-28]
        return template.replace("{client_id}", packet.client_id)

    # -- PUBLISH and acknowledgements -----------------------------------------------------------

    def _on_publish(self, fields: Tuple[Any, ...], allowed: bool = False) -> None:
        """A PUBLISH (``allowed``: the authorizers already let its topic through)."""
        topic, payload, qos, retain, dup, packet_id, props, frame = fields
        if self.state != CONNECTED:
            self.disconnect(_R.PROTOCOL_ERROR)
            return
        broker = self.broker
        caps = broker.capabilities
        expires_at = None
        if props is not NO_PROPERTIES:
            alias = props.topic_alias
            if alias is not None:
                if alias > caps.topic_alias_maximum:
                    self.disconnect(_R.TOPIC_ALIAS_INVALID, "topic alias above maximum")
                    return
                aliases = self._more.aliases_in
                if aliases is None:
                    aliases = self._occasional().aliases_in = {}
                if topic:
                    aliases[alias] = topic
                else:
                    known = aliases.get(alias)
                    if known is None:
                        self.disconnect(_R.PROTOCOL_ERROR, "unknown topic alias")
                        return
                    topic = known
                props = replace(props, topic_alias=None)
            if props.subscription_identifiers:
                self.disconnect(_R.PROTOCOL_ERROR, "subscription identifier from a client")
                return  # [MQTT-3.3.4-6]
            if props.payload_format_indicator == 1 and not _is_utf8(payload):
                if qos == 0:
                    self.disconnect(_R.PAYLOAD_FORMAT_INVALID)
                else:
                    ack = PubAck if qos == 1 else PubRec
                    self.send_packet(ack(packet_id, _R.PAYLOAD_FORMAT_INVALID))
                return
            if props.message_expiry_interval is not None:
                expires_at = broker.now + props.message_expiry_interval
            if props == NO_PROPERTIES:
                props = NO_PROPERTIES
        if not levels_within(topic, caps.maximum_topic_levels):
            self.disconnect(_R.TOPIC_NAME_INVALID,
                            f"topic name of more than {caps.maximum_topic_levels} levels")
            return
        if qos > caps.maximum_qos:
            self.disconnect(_R.QOS_NOT_SUPPORTED)  # [MQTT-3.2.2-11]
            return
        if retain and not caps.retain_available:
            self.disconnect(_R.RETAIN_NOT_SUPPORTED)  # [MQTT-3.2.2-14]
            return
        session = self.session
        assert session is not None and self.client is not None
        if qos == 2 and packet_id in session.inbound_qos2:
            self.send_packet(PubRec(packet_id))  # no second delivery [MQTT-4.3.3-10]
            return
        if topic.startswith("$SYS"):
            self._refuse_publish(topic, qos, packet_id)
            return
        if retain or expires_at is not None or props is not fields[6]:
            frame = None  # its bytes are not what subscribers get
        message = Message(topic, payload, qos, retain, props, expires_at, session.client_id,
                          frame, self.v5)
        hooks = broker.hooks
        if hooks.authorizers and not allowed:
            answer = hooks.may_publish(self.client, topic)
            if isinstance(answer, Deferred):
                self._held = []
                answer.addCallback(self._later, self._publish_decided, message, packet_id)
                return
            if not answer:
                self._refuse_publish(topic, qos, packet_id)
                return
        self._route(message, packet_id)

    def _publish_decided(self, allowed: bool, message: Message, packet_id: Optional[int]) -> None:
        """The authorizers answered later about a PUBLISH."""
        if self.state == CLOSED:
            return
        held, self._held = self._held, None
        if allowed:
            self._route(message, packet_id)
        else:
            self._refuse_publish(message.topic, message.qos, packet_id)
        if held and self.state != CLOSED:
            self._handle(held)
        self.broker.flush()

    def _route(self, message: Message, packet_id: Optional[int]) -> None:
        """Route an allowed PUBLISH (through the publish hooks) and acknowledge it."""
        broker = self.broker
        session = self.session
        assert session is not None
        qos = message.qos
        held = self._acks_held  # QoS 1 PUBACKs held by a barrier count too
        if ((qos == 2 or (held and qos))
                and len(session.inbound_qos2) + held >= broker.capabilities.receive_maximum):
            self.disconnect(_R.RECEIVE_MAXIMUM_EXCEEDED)  # [MQTT-3.3.4-7]
            return
        hooks = broker.hooks
        if hooks.on_publish:
            changed = hooks.modify(hooks.on_publish, self.client, message)
            if isinstance(changed, Veto):
                self._refuse_publish(message.topic, qos, packet_id,
                                     _veto_code(changed, PacketType.PUBACK))
                return
            if changed is None:
                count = -1  # dropped by a hook: acknowledged as usual
            else:
                if changed is not message:
                    changed.frame = None
                message = changed
                count = broker.publish(message)
        else:
            count = broker.publish(message)
        if hooks.on_published and count >= 0:
            hooks.notify(hooks.on_published, self.client, message, count)
        if qos == 0:
            return
        assert packet_id is not None
        if qos == 1:
            if count or not self.v5:
                ack = b"\x40\x02" + packet_id.to_bytes(2, "big")
            else:
                ack = encode(PubAck(packet_id, _R.NO_MATCHING_SUBSCRIBERS), V5)
        else:
            session.open_inbound_qos2().add(packet_id)
            if hooks.on_inbound_qos2:
                hooks.notify(hooks.on_inbound_qos2, session.client_id, packet_id, True)
            code = 0 if count or not self.v5 else _R.NO_MATCHING_SUBSCRIBERS
            ack = encode(PubRec(packet_id, code), self.protocol_level)
        self._after_commit(ack, message if count >= 0 else None)

    def _acknowledge(self, _: Any, ack: bytes, count: int = 1) -> None:
        """Queue ``count`` acknowledgements (``ack``), which may have been held until what they
        acknowledge was safe (the store flushes the broker once per commit)."""
        if self.state != CLOSED:
            self.broker.stats.packets_sent += count
            self.write(ack)

    def _after_commit(self, ack: bytes, message: Optional[Message] = None) -> None:
        """Send ``ack`` now, or once what it answers is safe (``Broker.ack_held``: a durable
        store's commit, a bridge's delivery of ``message``)."""
        broker = self.broker
        if not broker.ack_barriers:  # nothing holds it: the usual case, kept short
            broker.stats.packets_sent += 1
            self.write(ack)
            return
        self._acknowledge_when_safe(ack, 1, message is not None and message.qos == 1, (message,))

    def _acknowledge_when_safe(self, acks: bytes, count: int, pubacks: bool,
                               messages: Sequence[Optional[Message]]) -> None:
        """Send ``count`` acknowledgements (``acks``) of ``messages`` now, or once every
        acknowledgement barrier holding one of them let it go (``Broker.ack_held``); held
        PUBACKs (``pubacks``) count against the client's Receive Maximum meanwhile."""
        broker = self.broker
        held = broker.ack_held(*messages) if broker.ack_barriers else None
        if held is None:
            broker.stats.packets_sent += count
            self.write(acks)
            return
        if pubacks:
            self._acks_held += count
            held.addBoth(self._ack_released, count)
        held.addCallbacks(self._acknowledge, self._ack_refused, callbackArgs=(acks, count))

    def _ack_released(self, result: Any, count: int = 1) -> Any:
        """Held PUBACKs are answered (sent, or refused): ``count`` fewer count against the
        client's Receive Maximum."""
        self._acks_held -= count
        return result

    def _ack_refused(self, failure: Failure) -> None:
        """A barrier failed to make a message safe: disconnect its publisher unacknowledged."""
        error = failure.value
        if isinstance(error, FirstError):
            error = error.subFailure.value
        if isinstance(error, AckRefused):
            self.disconnect(error.reason_code, error.reason)
        else:
            log.failure("{conn!r}: acknowledgement barrier failed", failure, conn=self)
            self.disconnect(_R.UNSPECIFIED_ERROR)
        self.broker.flush()

    def _on_publish_run(self, run: PublishRun) -> None:
        """Plain QoS 0 PUBLISH packets to one topic: forwarded as one slice when every subscriber
        gets them unchanged, else handled one by one."""
        broker = self.broker
        client = self.client
        hooks = broker.hooks
        allowed = not hooks.authorizers
        if (self.state == CONNECTED and client is not None and not run.topic.startswith("$SYS")
                and levels_within(run.topic, broker.capabilities.maximum_topic_levels)):
            if not allowed:
                answer = hooks.may_publish(client, run.topic)
                if isinstance(answer, Deferred):
                    self._held = list(run.publishes())  # decided once, for the whole run
                    answer.addCallback(self._later, self._run_decided, run)
                    return
                if not answer:
                    log.info("{conn!r}: publish to {topic} refused", conn=self, topic=run.topic)
                    return  # QoS 0: nothing to answer
                allowed = True
            if (not hooks.on_publish and not hooks.on_published
                    and broker.forward_run(run, client.client_id)):
                return
        for fields in run.publishes():
            if self.state == CLOSED:
                return
            self._on_publish(fields, allowed)

    def _on_acked_run(self, run: AckedRun) -> None:
        """Plain QoS 1 PUBLISH packets to one topic: routed and acknowledged together when no
        hook needs them one by one (their PUBACKs held together by the acknowledgement
        barriers), else handled one by one."""
        broker = self.broker
        hooks = broker.hooks
        client = self.client
        caps = broker.capabilities
        if (self.state == CONNECTED and client is not None and not run.topic.startswith("$SYS")
                and not hooks.on_publish and not hooks.on_published and caps.maximum_qos
                and levels_within(run.topic, caps.maximum_topic_levels)
                and (not broker.ack_barriers or self.session is None  # one by one, the
                     or len(self.session.inbound_qos2) + self._acks_held + run.count
                     <= caps.receive_maximum)):  # run would pass Receive Maximum [MQTT-3.3.4-7]
            if hooks.authorizers:
                answer = hooks.may_publish(client, run.topic)
                if isinstance(answer, Deferred):
                    self._held = list(run.publishes())  # decided once, for the whole run
                    answer.addCallback(self._later, self._run_decided, run)
                    return
                if not answer:
                    for fields in run.publishes():
                        if self.state == CLOSED:
                            return
                        self._refuse_publish(fields[0], 1, fields[5])
                    return
            routed = broker.forward_acked(run, client.client_id)
            if routed is not None:
                count, messages = routed
                ids = run.ids
                if count or not self.v5:
                    acks = b"".join([b"\x40\x02" + i.to_bytes(2, "big") for i in ids])
                else:
                    acks = b"".join([encode(PubAck(i, _R.NO_MATCHING_SUBSCRIBERS), V5)
                                     for i in ids])
                self._acknowledge_when_safe(acks, len(ids), True, messages)
                return
            allowed = True
        else:
            allowed = False
        for fields in run.publishes():
            if self.state == CLOSED:
                return
            if self._held is not None:
                self._held.append(fields)
            else:
                self._on_publish(fields, allowed)

    def _run_decided(self, allowed: bool, run: Run) -> None:
        """The authorizers answered later about a run of PUBLISH packets."""
        if self.state == CLOSED:
            return
        held, self._held = self._held or [], None
        count = run.count
        if allowed:
            for index, fields in enumerate(held[:count]):
                if self.state == CLOSED:
                    return
                if self._held is not None:  # a hook's decision is pending again
                    self._held.extend(held[index:])
                    return
                self._on_publish(fields, True)
        elif isinstance(run, AckedRun):
            for fields in held[:count]:
                if self.state == CLOSED:
                    return
                self._refuse_publish(fields[0], 1, fields[5])
        else:
            log.info("{conn!r}: publish to {topic} refused", conn=self, topic=run.topic)
        rest = held[count:]
        if rest and self.state != CLOSED:
            if self._held is not None:
                self._held.extend(rest)
            else:
                self._handle(rest)
        self.broker.flush()

    def _refuse_publish(self, topic: str, qos: int, packet_id: Optional[int],
                        code: int = _R.NOT_AUTHORIZED) -> None:
        log.info("{conn!r}: publish to {topic} refused, reason 0x{code:02X} {name}", conn=self,
                 topic=topic, code=code, name=reason_name(code, PacketType.PUBACK))
        if not self.v5 and self.broker.compatibilities.disconnect_v3_on_refused_publish:
            self.close()
            return
        if qos == 1:
            self.send_packet(PubAck(packet_id, code))  # type: ignore[arg-type]
        elif qos == 2:
            if not self.v5:
                assert self.session is not None and packet_id is not None
                self.session.open_inbound_qos2().add(packet_id)
                hooks = self.broker.hooks
                if hooks.on_inbound_qos2:
                    hooks.notify(hooks.on_inbound_qos2, self.session.client_id, packet_id, True)
            self.send_packet(PubRec(packet_id, code))  # type: ignore[arg-type]

    def _on_puback(self, packet: PubAck) -> None:
        self._on_puback_id(packet.packet_id)

    def _on_puback_ids(self, packet_ids: PubAckRun) -> None:
        """Plain PUBACKs one after another: each as ``_on_puback_id``."""
        session = self.session
        if session is None or self.state != CONNECTED:
            return
        inflight = session.inflight
        hooks = self.broker.hooks
        for packet_id in packet_ids:
            delivery = inflight.get(packet_id)
            if delivery is not None and delivery.qos == 1:
                del inflight[packet_id]
                if hooks.on_qos_complete:
                    hooks.notify(hooks.on_qos_complete, session.client_id, packet_id, delivery)
                if session.queue:
                    self.broker.pump(session)
                    inflight = session.inflight
            elif delivery is not None:
                self._wrong_acknowledgement("PUBACK", packet_id, delivery)
                return

    def _on_puback_id(self, packet_id: int) -> None:
        session = self.session
        if session is None or self.state != CONNECTED:
            return
        delivery = session.inflight.get(packet_id)
        if delivery is not None and delivery.qos == 1:
            del session.inflight[packet_id]
            hooks = self.broker.hooks
            if hooks.on_qos_complete:
                hooks.notify(hooks.on_qos_complete, session.client_id, packet_id, delivery)
            if session.queue:
                self.broker.pump(session)
        elif delivery is not None:
            self._wrong_acknowledgement("PUBACK", packet_id, delivery)

    def _on_pubrec(self, packet: PubRec) -> None:
        session = self.session
        if session is None or self.state != CONNECTED:
            return
        delivery = session.inflight.get(packet.packet_id)
        if delivery is None:
            self.send_packet(PubRel(packet.packet_id, _R.PACKET_IDENTIFIER_NOT_FOUND))
            return
        if delivery.qos != 2:
            self._wrong_acknowledgement("PUBREC", packet.packet_id, delivery)
            return
        hooks = self.broker.hooks
        if packet.reason_code >= 0x80:
            del session.inflight[packet.packet_id]  # [MQTT-4.8.2-6 analogue for PUBREC]
            if hooks.on_qos_complete:
                hooks.notify(hooks.on_qos_complete, session.client_id, packet.packet_id,
                             delivery)
            self.broker.pump(session)
            return
        delivery.state = 1
        if hooks.on_qos_progress:
            hooks.notify(hooks.on_qos_progress, session.client_id, packet.packet_id, delivery)
        self._after_commit(encode(PubRel(packet.packet_id), self.protocol_level))

    def _on_pubrel(self, packet: PubRel) -> None:
        session = self.session
        if session is None or self.state != CONNECTED:
            return
        if packet.packet_id in session.inbound_qos2:
            session.inbound_qos2.discard(packet.packet_id)
            hooks = self.broker.hooks
            if hooks.on_inbound_qos2:
                hooks.notify(hooks.on_inbound_qos2, session.client_id, packet.packet_id, False)
            self._after_commit(encode(PubComp(packet.packet_id), self.protocol_level))
        else:
            self.send_packet(PubComp(packet.packet_id, _R.PACKET_IDENTIFIER_NOT_FOUND))

    def _on_pubcomp(self, packet: PubComp) -> None:
        session = self.session
        if session is None or self.state != CONNECTED:
            return
        delivery = session.inflight.get(packet.packet_id)
        if delivery is not None and delivery.qos == 2 and delivery.state == 1:
            del session.inflight[packet.packet_id]
            hooks = self.broker.hooks
            if hooks.on_qos_complete:
                hooks.notify(hooks.on_qos_complete, session.client_id, packet.packet_id,
                             delivery)
            self.broker.pump(session)
        elif delivery is not None:
            self._wrong_acknowledgement("PUBCOMP", packet.packet_id, delivery)

    def _wrong_acknowledgement(self, kind: str, packet_id: int, delivery: Delivery) -> None:
        """``kind`` names a message in flight whose exchange awaits another acknowledgement:
        the session states disagree, a Protocol Error (v5: DISCONNECT 0x82 [MQTT-4.13.1-1];
        3.1.1: the connection is closed, its [MQTT-4.8.0-1]).  The message stays in flight."""
        self.broker.stats.protocol_errors += 1
        awaited = "PUBACK" if delivery.qos == 1 else "PUBCOMP" if delivery.state else "PUBREC"
        self.disconnect(_R.PROTOCOL_ERROR, f"{kind} for packet {packet_id}, a QoS "
                                           f"{delivery.qos} message awaiting {awaited}")

    # -- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------------------------

    def _on_subscribe(self, packet: Subscribe) -> None:
        session = self.session
        assert session is not None and self.client is not None
        broker = self.broker
        hooks = broker.hooks
        if hooks.on_subscribe:
            changed = hooks.modify(hooks.on_subscribe, self.client, packet)
            if not isinstance(changed, Subscribe):
                code = _veto_code(changed, PacketType.SUBACK)
                codes = tuple(code if self.v5 else 0x80 for _ in packet.subscriptions)
                self._subscribed(packet, codes)
                return
            packet = changed
        caps = broker.capabilities
        sub_id = None
        ids = packet.properties.subscription_identifiers
        if ids:
            if not caps.subscription_identifier_available:
                self.disconnect(_R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED)
                return
            sub_id = ids[0]
        checks = [self._check_filter(s.topic_filter) for s in packet.subscriptions]
        answers: List[Any] = [True] * len(checks)
        if hooks.authorizers:
            answers = [hooks.may_subscribe(self.client, s.topic_filter) if code is None
                       else False for s, code in zip(packet.subscriptions, checks)]
            if any(isinstance(answer, Deferred) for answer in answers):
                self._held = []
                gatherResults([answer if isinstance(answer, Deferred) else succeed(answer)
                               for answer in answers]).addCallback(
                    self._later, self._subscribe_decided, packet, sub_id, checks)
                return
        self._subscribe(packet, sub_id, checks, answers)

    def _subscribe_decided(self, answers: List[Any], packet: Subscribe, sub_id: Optional[int],
                           checks: List[Optional[int]]) -> None:
        """The authorizers answered later about a SUBSCRIBE."""
        if self.state == CLOSED:
            return
        held, self._held = self._held, None
        self._subscribe(packet, sub_id, checks, answers)
        if held and self.state != CLOSED:
            self._handle(held)
        self.broker.flush()

    def _check_filter(self, topic_filter: str) -> Optional[int]:
        """The reason code refusing a filter by the broker's limits, or None."""
        caps = self.broker.capabilities
        group, plain = split_shared(topic_filter)
        if topic_filter in caps.refused_filters:
            return 0x80
        if group is not None and not caps.shared_subscription_available:
            return _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED if self.v5 else 0x80
        if ("+" in plain or "#" in plain) and not caps.wildcard_subscription_available:
            return _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED if self.v5 else 0x80
        if not levels_within(plain, caps.maximum_topic_levels):
            return _R.TOPIC_FILTER_INVALID if self.v5 else 0x80
        return None

    def _subscribe(self, packet: Subscribe, sub_id: Optional[int],
                   checks: List[Optional[int]], answers: List[Any]) -> None:
        """Add the allowed subscriptions, answer SUBACK, then send matching retained messages."""
        session = self.session
        assert session is not None and self.client is not None
        broker = self.broker
        caps = broker.capabilities
        codes: List[int] = []
        retained: List[str] = []
        for subscription, check, allowed in zip(packet.subscriptions, checks, answers):
            if check is not None:
                codes.append(check)
                continue
            if not allowed:
                codes.append(_R.NOT_AUTHORIZED if self.v5 else 0x80)
                continue
            if (len(session.subscriptions) >= caps.maximum_subscriptions
                    and subscription.topic_filter not in session.subscriptions):
                codes.append(_R.QUOTA_EXCEEDED if self.v5 else 0x80)
                continue
            granted = min(subscription.qos, caps.maximum_qos)
            if granted != subscription.qos:
                subscription = replace(subscription, qos=granted)
            new = broker.subscribe(session, subscription, sub_id)
            codes.append(granted)
            handling = subscription.retain_handling
            topic_filter = subscription.topic_filter
            if not topic_filter.startswith("$share/") and (
                    handling == 0 or (handling == 1 and new)):
                retained.append(topic_filter)
        self._subscribed(packet, tuple(codes))
        if retained:
            lookups = self._more.retained_lookups
            if lookups is None:
                lookups = self._occasional().retained_lookups = OrderedDict()
            lookups.update(dict.fromkeys(retained))  # behind those of earlier SUBSCRIBEs
            self._send_retained(session)

    def _send_retained(self, session: Session) -> None:
        """Send the retained messages of the filters subscribed to [MQTT-3.3.1-9], in order,
        as each subscription then stands (a filter subscribed to again meanwhile is looked up
        once); once the connection's lookups of this turn, whichever SUBSCRIBE asked for them,
        have visited ``retained_lookup_per_turn`` levels of the retained index, the rest on the
        next turn (so one connection's lookups cost the others at most that much per turn)."""
        more = self._occasional()
        lookups = more.retained_lookups
        if self.state == CLOSED or self.session is not session:
            more.retained_lookups = more.replay = None
            return
        if more.replay is not None:
            self._replay_rest(session)
        if not lookups:
            more.retained_lookups = None
            return
        broker = self.broker
        index = broker.retained
        limit = more.lookup_limit
        if limit is None:
            limit = more.lookup_limit = (index.visited
                                         + broker.capabilities.retained_lookup_per_turn)
            broker.clock.callLater(0, self._later, session, self._next_lookup_turn)
        while lookups and index.visited < limit and more.replay is None:
            topic_filter = lookups.popitem(last=False)[0]
            if topic_filter not in session.subscriptions:
                continue  # unsubscribed meanwhile
            topics = deque(message.topic for message in broker.retained_for(topic_filter))
            more.replay = (topic_filter, topics)
            self._replay_rest(session)
        if not lookups:
            more.retained_lookups = None

    def _replay_rest(self, session: Session) -> None:
        """Send the retained messages left of the filter being replayed, as its subscription
        now stands and as each topic's retained message now is, until the connection blocks."""
        more = self._more
        assert more.replay is not None
        topic_filter, topics = more.replay
        entry = session.subscriptions.get(topic_filter)
        if entry is None:  # unsubscribed meanwhile
            more.replay = None
            return
        broker = self.broker
        retained = broker.retained
        hooks = broker.hooks
        client = self.client
        assert client is not None
        now = broker.now
        granted = entry.qos
        sub_ids: Tuple[int, ...] = (entry.sub_id,) if entry.sub_id is not None else ()
        while topics and not self.blocked:
            message = retained.get(topics.popleft())
            if message is None or message.expired(now):
                continue  # cleared or expired meanwhile
            if hooks.may_receive and not hooks.allowed_to_receive(client, message.topic):
                continue
            broker.deliver(session, message, min(message.qos, granted), True, sub_ids)
            if hooks.on_retain_published:
                hooks.notify(hooks.on_retain_published, client, message)
        if not topics:
            more.replay = None

    def _next_lookup_turn(self, session: Session) -> None:
        """A new turn: a new bound for the retained lookups, and those left waiting."""
        more = self._occasional()
        more.lookup_limit = None
        if more.retained_lookups or more.replay is not None:
            self._send_retained(session)

    def _subscribed(self, packet: Subscribe, codes: Tuple[int, ...]) -> None:
        """Answer SUBACK and tell the hooks."""
        self.send_packet(SubAck(packet.packet_id, codes))
        hooks = self.broker.hooks
        if hooks.on_subscribed:
            hooks.notify(hooks.on_subscribed, self.client, packet, codes)

    def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        hooks = self.broker.hooks
        if hooks.on_unsubscribe:
            changed = hooks.modify(hooks.on_unsubscribe, self.client, packet)
            if not isinstance(changed, Unsubscribe):
                code = _veto_code(changed, PacketType.UNSUBACK)
                self.send_packet(UnsubAck(packet.packet_id, tuple(
                    code for _ in packet.topic_filters) if self.v5 else ()))
                return
            packet = changed
        limit = self.broker.capabilities.maximum_topic_levels
        codes = tuple(0 if self.broker.unsubscribe(session, f)
                      else _R.NO_SUBSCRIPTION_EXISTED if levels_within(split_shared(f)[1], limit)
                      else _R.TOPIC_FILTER_INVALID
                      for f in packet.topic_filters)
        self.send_packet(UnsubAck(packet.packet_id, codes if self.v5 else ()))
        if hooks.on_unsubscribed:
            hooks.notify(hooks.on_unsubscribed, self.client, packet, codes)

    # -- the rest -------------------------------------------------------------------------------

    def _on_pingreq(self, packet: PingReq) -> None:
        self.broker.stats.packets_sent += 1
        holds = self._more.holds
        if not holds:
            self.write(b"\xd0\x00")  # [MQTT-3.12.4-1]
            return
        # The output waits for a commit (see ``hold_output``): the answer goes before what
        # waits, as it goes before acknowledgements that wait (nothing orders it among the
        # other packets), so that a slow or unavailable store does not make the client take
        # the broker for dead.
        queued = len(self._out)
        self.write(b"\xd0\x00")
        out = self._out
        if len(out) > queued:  # not dropped by a packet hook, nor with the whole output
            out.insert(holds[0].at, out.pop())
            for hold in holds:
                hold.at += 1

    def _on_disconnect(self, packet: Disconnect) -> None:
        session = self.session
        if self.v5 and session is not None:
            expiry = packet.properties.session_expiry_interval
            if expiry is not None:
                if self.connect_expiry == 0 and expiry != 0:
                    self.disconnect(_R.PROTOCOL_ERROR, "session expiry set after 0")
                    return  # [MQTT-3.14.2-2 and 3.14.2.2.2]
                session.expiry_interval = min(expiry,
                                              self.broker.capabilities.maximum_session_expiry)
        self._close_reason = int(packet.reason_code)
        log.info("{conn!r}: disconnected, reason 0x{reason:02X} {name}", conn=self,
                 reason=self._close_reason,
                 name=reason_name(self._close_reason, PacketType.DISCONNECT))
        # The will is discarded unless v5 reason 0x04 asks for it [MQTT-3.14.4-3].
        self._will_ok = self.v5 and packet.reason_code == _R.DISCONNECT_WITH_WILL_MESSAGE
        self.close()

    def _on_auth(self, packet: Auth) -> None:
        hooks = self.broker.hooks
        if hooks.on_auth_packet:
            changed = hooks.modify(hooks.on_auth_packet, self._who(), packet)
            if not isinstance(changed, Auth):
                return
            packet = changed
        exchange = self._more.exchange
        code = packet.reason_code
        if self.state == AUTHENTICATING:
            expected = _R.CONTINUE_AUTHENTICATION
        elif self._more.reauthenticating:
            expected = _R.CONTINUE_AUTHENTICATION
        else:
            expected = _R.RE_AUTHENTICATE
        if (exchange is None or exchange.pending or code != expected
                or packet.properties.authentication_method != exchange.method):
            # AUTH without an exchange in progress, out of turn, or naming another method
            # [MQTT-4.12.0-1, MQTT-4.12.1-1].
            if self.state == AUTHENTICATING:
                self._refuse(_R.PROTOCOL_ERROR)
            else:
                self.disconnect(_R.PROTOCOL_ERROR, "unexpected AUTH")
            return
        if code == _R.RE_AUTHENTICATE:
            self._more.reauthenticating = True  # an exchange made it this connection's own
            exchange.state = None
        self._held = []
        exchange.step(packet.properties.authentication_data)

    def _unexpected(self, packet: Any) -> None:
        self.disconnect(_R.PROTOCOL_ERROR, f"{type(packet).__name__} not expected from a client")

    _HANDLERS: Dict[type, Callable[[Any, Any], None]] = {}


Connection._HANDLERS = {
    Connect: Connection._on_connect,
    Publish: Connection.inject,  # one held while a hook decides
    PubAck: Connection._on_puback,
    PubRec: Connection._on_pubrec,
    PubRel: Connection._on_pubrel,
    PubComp: Connection._on_pubcomp,
    Subscribe: Connection._on_subscribe,
    Unsubscribe: Connection._on_unsubscribe,
    PingReq: Connection._on_pingreq,
    Disconnect: Connection._on_disconnect,
    Auth: Connection._on_auth,
}
for _kind in (ConnAck, SubAck, UnsubAck, PingResp):
    Connection._HANDLERS[_kind] = Connection._unexpected
