"""Sans-IO encoder and incremental decoder of MQTT 3.1, 3.1.1 and 5.0 control packets.

``Decoder.feed(bytes)`` returns the complete packets found so far and raises a ``CodecError``
carrying the reason code the peer must be answered with.  ``encode(packet, level)`` returns bytes.
Neither touches sockets, clocks or threads.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, List, Optional, Tuple

from twisted_mqtt.errors import (
    CodecError,
    MalformedPacket,
    PacketTooLarge,
    ProtocolError,
    TopicNameInvalid,
    UnsupportedProtocolVersion,
)
from twisted_mqtt.packets import (
    PACKET_TYPES,
    PROTOCOL_NAMES,
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
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from twisted_mqtt.properties import (
    ATTRIBUTE,
    BOOLEAN_BYTES,
    DROPPABLE,
    NO_PROPERTIES,
    NONZERO,
    SPECS,
    Properties,
    PropertyId,
    WireType,
)
from twisted_mqtt.topics import validate_topic_filter, validate_topic_name

V5 = ProtocolLevel.MQTT_5
MAX_REMAINING_LENGTH = 268_435_455
MAX_PACKET_SIZE = MAX_REMAINING_LENGTH + 5
# A PUBLISH as the hot path reads it: the fields of ``Publish`` in the same order, then the
# packet's own bytes when it is QoS 0 (a subscriber that gets it unchanged gets these bytes), or,
# for QoS 1/2 without DUP and RETAIN, those bytes split around the packet identifier (a
# subscriber that gets it unchanged gets ``head + its packet id + tail``).
RawPublish = Tuple[str, bytes, int, bool, bool, Optional[int], Properties, Any]

_CONNECT = PacketType.CONNECT << 4
_PUBLISH = PacketType.PUBLISH
_PLAIN_QOS0 = _PUBLISH << 4  # the first byte of a QoS 0 PUBLISH without DUP or RETAIN
_PLAIN_QOS1 = _PLAIN_QOS0 | 0x02
_PUBACK = PacketType.PUBACK << 4


# ---------------------------------------------------------------------------------------------
# Primitive readers.  Each takes the buffer, a position and the end of the packet body.

# The label of a Malformed Packet or Protocol Error the specification describes without a
# normative label of its own (a truncated field, a repeated property...): the receiver "MUST
# close the Network Connection" [MQTT-4.13.1-1].
_UNLABELLED = "MQTT-4.13.1-1"


def _varint(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
    """Read a Variable Byte Integer; malformed if truncated, over 4 bytes or not minimal."""
    value = 0
    shift = 0
    for count in range(4):
        if pos >= end:
            raise MalformedPacket("truncated variable byte integer", _UNLABELLED)
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and count:
                raise MalformedPacket("variable byte integer not minimal", "MQTT-1.5.5-1")
            return value, pos
        shift += 7
    raise MalformedPacket("variable byte integer longer than 4 bytes", "MQTT-1.5.5-1")


def _u16(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
    if pos + 2 > end:
        raise MalformedPacket("truncated two byte integer", _UNLABELLED)
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def _u32(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
    if pos + 4 > end:
        raise MalformedPacket("truncated four byte integer", _UNLABELLED)
    return int.from_bytes(buf[pos:pos + 4], "big"), pos + 4


def _byte(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
    if pos >= end:
        raise MalformedPacket("truncated byte", _UNLABELLED)
    return buf[pos], pos + 1


def _binary(buf: bytes, pos: int, end: int) -> Tuple[bytes, int]:
    if pos + 2 > end:
        raise MalformedPacket("truncated binary data length", _UNLABELLED)
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("binary data runs past the packet", _UNLABELLED)
    return buf[pos + 2:stop], stop


def _text(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("ill-formed UTF-8 string", "MQTT-1.5.4-1") from None
    if "\x00" in text:
        raise MalformedPacket("UTF-8 string contains U+0000", "MQTT-1.5.4-2")
    return text


def _string(buf: bytes, pos: int, end: int) -> Tuple[str, int]:
    raw, pos = _binary(buf, pos, end)
    return _text(raw), pos


def _string_pair(buf: bytes, pos: int, end: int) -> Tuple[Tuple[str, str], int]:
    key, pos = _string(buf, pos, end)
    val, pos = _string(buf, pos, end)
    return (key, val), pos


_READERS: dict[WireType, Callable[[bytes, int, int], Tuple[Any, int]]] = {
    WireType.BYTE: _byte,
    WireType.TWO_BYTE: _u16,
    WireType.FOUR_BYTE: _u32,
    WireType.VARINT: _varint,
    WireType.STRING: _string,
    WireType.BINARY: _binary,
    WireType.STRING_PAIR: _string_pair,
}


def _properties(buf: bytes, pos: int, end: int, where: str) -> Tuple[Properties, int]:
    """Read a property length and the properties it covers, validating each for ``where``."""
    length, pos = _varint(buf, pos, end)
    stop = pos + length
    if stop > end:
        raise MalformedPacket("property length runs past the packet", "MQTT-2.2.2-1")
    if not length:
        return NO_PROPERTIES, pos
    found: dict[str, Any] = {}
    while pos < stop:
        ident, pos = _varint(buf, pos, stop)
        spec = SPECS.get(ident)
        if spec is None or where not in spec.packets:
            # Section 2.2.2.2: an identifier not valid for the packet type is a Malformed Packet.
            raise MalformedPacket(f"property 0x{ident:02X} not allowed in {where}", _UNLABELLED)
        item, pos = _READERS[spec.wire](buf, pos, stop)
        name = ATTRIBUTE[ident]
        if spec.repeatable:
            # Only the Subscription Identifier is single in SUBSCRIBE; User Property repeats.
            if name in found and where == "SUBSCRIBE" and name == "subscription_identifiers":
                raise ProtocolError("subscription identifier repeated", _UNLABELLED)
            found[name] = found.get(name, ()) + (item,)
        elif name in found:
            raise ProtocolError(f"property {spec.name} repeated", _UNLABELLED)
        else:
            found[name] = item
        if ident in BOOLEAN_BYTES and item > 1:
            raise ProtocolError(f"{spec.name} must be 0 or 1", _UNLABELLED)
        if ident in NONZERO and item == 0:
            if ident == PropertyId.TOPIC_ALIAS:
                # Section 3.3.4: answered with 0x94 (Topic Alias invalid).
                raise ProtocolError("topic alias 0", "MQTT-3.3.2-8",
                                    ReasonCode.TOPIC_ALIAS_INVALID)
            raise ProtocolError(f"{spec.name} must not be 0", _UNLABELLED)
    response_topic = found.get("response_topic")
    if response_topic is not None and ("+" in response_topic or "#" in response_topic):
        raise ProtocolError(f"wildcard in response topic {response_topic!r}", "MQTT-3.3.2-14")
    return Properties(**found), stop


def _no_more(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise MalformedPacket(f"{end - pos} unexpected bytes at the end of {what}", _UNLABELLED)


def _packet_id(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
    packet_id, pos = _u16(buf, pos, end)
    if not packet_id:
        raise ProtocolError("packet identifier 0", "MQTT-2.2.1-3")
    return packet_id, pos


# The statement that the sender of each packet type uses one of its reason codes.
_REASON_LABELS = {
    PacketType.CONNACK: "MQTT-3.2.2-8",
    PacketType.PUBACK: "MQTT-3.4.2-1",
    PacketType.PUBREC: "MQTT-3.5.2-1",
    PacketType.PUBREL: "MQTT-3.6.2-1",
    PacketType.PUBCOMP: "MQTT-3.7.2-1",
    PacketType.SUBACK: "MQTT-3.9.3-2",
    PacketType.UNSUBACK: "MQTT-3.11.3-2",
    PacketType.DISCONNECT: "MQTT-3.14.2-1",
    PacketType.AUTH: "MQTT-3.15.2-1",
}


def _reason(ptype: PacketType, code: int) -> int:
    if code not in VALID_REASON_CODES[ptype]:
        raise MalformedPacket(f"reason code 0x{code:02X} not valid in {ptype.name}",
                              _REASON_LABELS[ptype])
    return code


# ---------------------------------------------------------------------------------------------
# Packet body decoders: (buf, start of variable header, end of packet, flags, level) -> packet.


# A CONNECT's protocol name and level as the bytes of each valid pair, for one look-up.
_CONNECT_HEADS = {len(name).to_bytes(2, "big") + name.encode() + bytes((level,)): int(level)
                  for level, name in PROTOCOL_NAMES.items()}
_CONNECT_HEAD_SIZES = sorted({len(head) for head in _CONNECT_HEADS})


def _decode_connect(buf: bytes, pos: int, end: int, flags: int,
                    level: Optional[int]) -> Connect:
    for size in _CONNECT_HEAD_SIZES:
        known = _CONNECT_HEADS.get(buf[pos:min(pos + size, end)])
        if known is not None:
            level = known
            pos += size
            break
    else:
        name, pos = _string(buf, pos, end)
        level, pos = _byte(buf, pos, end)
        if level not in PROTOCOL_NAMES:
            raise UnsupportedProtocolVersion(f"protocol level {level}", "MQTT-3.1.2-2")
        raise UnsupportedProtocolVersion(f"protocol name {name!r} at level {level}", "MQTT-3.1.2-1")
    cflags, pos = _byte(buf, pos, end)
    if cflags & 0x01:
        raise MalformedPacket("CONNECT reserved flag set", "MQTT-3.1.2-3")
    has_will = cflags & 0x04
    will_qos = (cflags >> 3) & 0x03
    will_retain = bool(cflags & 0x20)
    if not has_will and will_qos:
        raise MalformedPacket("will QoS without a will", "MQTT-3.1.2-11")
    if not has_will and will_retain:
        raise MalformedPacket("will retain without a will", "MQTT-3.1.2-13")
    if will_qos == 3:
        raise MalformedPacket("will QoS 3", "MQTT-3.1.2-12")
    has_user, has_password = cflags & 0x80, cflags & 0x40
    if has_password and not has_user and level != V5:
        raise MalformedPacket("password without user name", "MQTT-3.1.2-22")
    keep_alive, pos = _u16(buf, pos, end)
    props = NO_PROPERTIES
    if level == V5:
        props, pos = _properties(buf, pos, end, "CONNECT")
        if props.authentication_data is not None and props.authentication_method is None:
            # Section 3.1.2.11.10: a Protocol Error without a normative label.
            raise ProtocolError("authentication data without a method", _UNLABELLED)
    client_id, pos = _string(buf, pos, end)
    will = None
    if has_will:
        will_props = NO_PROPERTIES
        if level == V5:
            will_props, pos = _properties(buf, pos, end, "WILL")
        will_topic, pos = _string(buf, pos, end)
        if not will_topic:
            raise ProtocolError("empty will topic", "MQTT-4.7.3-1")
        validate_topic_name(will_topic)
        will_payload, pos = _binary(buf, pos, end)
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    username = password = None
    if has_user:
        username, pos = _string(buf, pos, end)
    if has_password:
        password, pos = _binary(buf, pos, end)
    _no_more(pos, end, "CONNECT")
    clean = bool(cflags & 0x02)
    return Connect(client_id, level, clean, keep_alive, username, password, will, props)


def _decode_connack(buf: bytes, pos: int, end: int, flags: int, level: int) -> ConnAck:
    ack_flags, pos = _byte(buf, pos, end)
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK reserved flags set", "MQTT-3.2.2-1")
    code, pos = _byte(buf, pos, end)
    props = NO_PROPERTIES
    if level == V5:
        _reason(PacketType.CONNACK, code)
        props, pos = _properties(buf, pos, end, "CONNACK")
    elif code > 5:
        raise MalformedPacket(f"CONNACK return code {code}", "MQTT-3.2.2-6")
    _no_more(pos, end, "CONNACK")
    return ConnAck(code, bool(ack_flags), props)


def _publish_fields(buf: bytes, pos: int, end: int, flags: int, level: int,
                    start: int) -> RawPublish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3", "MQTT-3.3.1-4")
    if pos + 2 > end:
        raise MalformedPacket("truncated topic name", "MQTT-3.3.2-1")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("topic name runs past the packet", "MQTT-3.3.2-1")
    raw_topic = buf[pos + 2:stop]
    pos = stop
    packet_id = None
    frame: Any = None
    if qos:
        pos = stop + 2
        if pos > end:
            raise MalformedPacket("truncated two byte integer", _UNLABELLED)
        packet_id = (buf[stop] << 8) | buf[stop + 1]
        if not packet_id:
            raise ProtocolError("packet identifier 0", "MQTT-2.2.1-3")
        if not flags & 0x09:
            frame = (buf[start:stop], buf[pos:end])
    elif flags & 0x08:
        raise MalformedPacket("DUP set on a QoS 0 PUBLISH", "MQTT-3.3.1-2")
    props = NO_PROPERTIES
    if level == V5:
        if pos < end and buf[pos] == 0:
            pos += 1
        else:
            props, pos = _properties(buf, pos, end, "PUBLISH")
    try:
        topic = raw_topic.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("ill-formed UTF-8 string", "MQTT-1.5.4-1") from None
    if "\x00" in topic:
        raise MalformedPacket("UTF-8 string contains U+0000", "MQTT-1.5.4-2")
    if not topic and props.topic_alias is None:
        if level == V5:
            raise ProtocolError("empty topic name without a topic alias", "MQTT-3.3.2-1")
        raise TopicNameInvalid("empty topic name", "MQTT-4.7.3-1")
    if "+" in topic or "#" in topic:
        validate_topic_name(topic)
    return (topic, buf[pos:end], qos, bool(flags & 0x01), bool(flags & 0x08), packet_id, props,
            frame if qos else buf[start:end])


def _decode_publish(buf: bytes, pos: int, end: int, flags: int, level: int) -> Publish:
    return Publish(*_publish_fields(buf, pos, end, flags, level, pos)[:7])


def _ack_decoder(cls: Any, ptype: PacketType) -> Callable[..., Any]:
    where = ptype.name

    def decode(buf: bytes, pos: int, end: int, flags: int, level: int) -> Any:
        packet_id, pos = _u16(buf, pos, end)
        if not packet_id:
            raise ProtocolError(f"{where} with packet identifier 0", "MQTT-2.2.1-5")
        code = 0
        props = NO_PROPERTIES
        if level == V5 and pos < end:
            code, pos = _byte(buf, pos, end)
            _reason(ptype, code)
            if pos < end:
                props, pos = _properties(buf, pos, end, where)
        _no_more(pos, end, where)
        return cls(packet_id, code, props)

    return decode


def _decode_subscribe(buf: bytes, pos: int, end: int, flags: int, level: int) -> Subscribe:
    packet_id, pos = _packet_id(buf, pos, end)
    props = NO_PROPERTIES
    if level == V5:
        props, pos = _properties(buf, pos, end, "SUBSCRIBE")
    subs = []
    while pos < end:
        topic_filter, pos = _string(buf, pos, end)
        options, pos = _byte(buf, pos, end)
        qos = options & 0x03
        if level == V5:
            if options & 0xC0:
                raise MalformedPacket("subscription options reserved bits set", "MQTT-3.8.3-5")
            # Section 3.8.3.1: Maximum QoS 3 and Retain Handling 3 are Protocol Errors.
            if qos == 3:
                raise ProtocolError("subscription with QoS 3", _UNLABELLED)
            retain_handling = (options >> 4) & 0x03
            if retain_handling == 3:
                raise ProtocolError("retain handling 3", _UNLABELLED)
            no_local = bool(options & 0x04)
            validate_topic_filter(topic_filter)
            if no_local and topic_filter.startswith("$share/"):
                raise ProtocolError("no local on a shared subscription", "MQTT-3.8.3-4")
            subs.append(Subscription(topic_filter, qos, no_local, bool(options & 0x08),
                                     retain_handling))
        else:
            if options & 0xFC or qos == 3:
                # The label is spelt so in the 3.1.1 specification.
                raise MalformedPacket("requested QoS reserved bits set or QoS 3", "MQTT-3-8.3-4")
            validate_topic_filter(topic_filter)
            subs.append(Subscription(topic_filter, qos))
    if not subs:
        raise ProtocolError("SUBSCRIBE without a topic filter", "MQTT-3.8.3-2")
    return Subscribe(packet_id, tuple(subs), props)


def _decode_suback(buf: bytes, pos: int, end: int, flags: int, level: int) -> SubAck:
    packet_id, pos = _packet_id(buf, pos, end)
    props = NO_PROPERTIES
    if level == V5:
        props, pos = _properties(buf, pos, end, "SUBACK")
        codes = tuple(_reason(PacketType.SUBACK, c) for c in buf[pos:end])
    else:
        codes = tuple(buf[pos:end])
        if any(c not in (0, 1, 2, 0x80) for c in codes):
            raise MalformedPacket("SUBACK return code not 0, 1, 2 or 0x80", "MQTT-3.9.3-2")
    if not codes:
        raise ProtocolError("SUBACK without a return code", "MQTT-3.8.4-6")
    return SubAck(packet_id, codes, props)


def _decode_unsubscribe(buf: bytes, pos: int, end: int, flags: int, level: int) -> Unsubscribe:
    packet_id, pos = _packet_id(buf, pos, end)
    props = NO_PROPERTIES
    if level == V5:
        props, pos = _properties(buf, pos, end, "UNSUBSCRIBE")
    filters = []
    while pos < end:
        topic_filter, pos = _string(buf, pos, end)
        validate_topic_filter(topic_filter)
        filters.append(topic_filter)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without a topic filter", "MQTT-3.10.3-2")
    return Unsubscribe(packet_id, tuple(filters), props)


def _decode_unsuback(buf: bytes, pos: int, end: int, flags: int, level: int) -> UnsubAck:
    packet_id, pos = _packet_id(buf, pos, end)
    if level != V5:
        _no_more(pos, end, "UNSUBACK")
        return UnsubAck(packet_id)
    props, pos = _properties(buf, pos, end, "UNSUBACK")
    codes = tuple(_reason(PacketType.UNSUBACK, c) for c in buf[pos:end])
    if not codes:
        raise ProtocolError("UNSUBACK without a reason code", "MQTT-3.11.3-1")
    return UnsubAck(packet_id, codes, props)


def _decode_empty(cls: Any, where: str) -> Callable[..., Any]:
    instance = cls()

    def decode(buf: bytes, pos: int, end: int, flags: int, level: int) -> Any:
        _no_more(pos, end, where)
        return instance

    return decode


def _reason_decoder(cls: Any, ptype: PacketType) -> Callable[..., Any]:
    where = ptype.name

    def decode(buf: bytes, pos: int, end: int, flags: int, level: int) -> Any:
        if level != V5:
            if ptype == PacketType.AUTH:
                # Packet type 15 is reserved in 3.1.1: a protocol violation [MQTT-4.8.0-1].
                raise ProtocolError("AUTH before MQTT 5", "MQTT-4.8.0-1")
            _no_more(pos, end, where)
            return cls()
        code = 0
        props = NO_PROPERTIES
        if pos < end:
            code, pos = _byte(buf, pos, end)
            _reason(ptype, code)
            if pos < end:
                props, pos = _properties(buf, pos, end, where)
        _no_more(pos, end, where)
        return cls(code, props)

    return decode


_BodyDecoder = Callable[[bytes, int, int, int, int], Any]
_DECODERS: dict[int, _BodyDecoder] = {
    PacketType.CONNECT: _decode_connect,
    PacketType.CONNACK: _decode_connack,
    PacketType.PUBLISH: _decode_publish,
    PacketType.PUBACK: _ack_decoder(PubAck, PacketType.PUBACK),
    PacketType.PUBREC: _ack_decoder(PubRec, PacketType.PUBREC),
    PacketType.PUBREL: _ack_decoder(PubRel, PacketType.PUBREL),
    PacketType.PUBCOMP: _ack_decoder(PubComp, PacketType.PUBCOMP),
    PacketType.SUBSCRIBE: _decode_subscribe,
    PacketType.SUBACK: _decode_suback,
    PacketType.UNSUBSCRIBE: _decode_unsubscribe,
    PacketType.UNSUBACK: _decode_unsuback,
    PacketType.PINGREQ: _decode_empty(PingReq, "PINGREQ"),
    PacketType.PINGRESP: _decode_empty(PingResp, "PINGRESP"),
    PacketType.DISCONNECT: _reason_decoder(Disconnect, PacketType.DISCONNECT),
    PacketType.AUTH: _reason_decoder(Auth, PacketType.AUTH),
}
# The fixed-header flags each type must carry [MQTT-2.1.3-1]; PUBLISH is checked on its own.
_FLAGS = {t: (2 if t in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE) else 0)
          for t in PacketType}
# MQTT 3.1 sends PUBREL, SUBSCRIBE and UNSUBSCRIBE at QoS 1 and sets DUP when it resends them
# (its section 2.1, "DUP flag"); 3.1.1 and 5.0 reserve these flags as 0010.
_RESENT_FLAGS_V31: dict[int, int] = {t: 0x0A for t, flags in _FLAGS.items() if flags == 2}
_V31 = ProtocolLevel.MQTT_3_1


class Run:
    """Consecutive PUBLISH packets of one read to one topic, checked as one."""

    __slots__ = ("topic", "count", "v5")

    topic: str
    count: int
    v5: bool

    def publishes(self) -> List[RawPublish]:
        """The packets one by one, as ``RawPublish`` tuples."""
        raise NotImplementedError


class AckedRun(Run):
    """Consecutive QoS 1 PUBLISH packets of one read with the same topic, neither DUP nor RETAIN
    and no properties: their packet identifiers, and each packet split around its packet
    identifier (``heads[i] + id + tails[i]`` is a packet a subscriber can get unchanged)."""

    __slots__ = ("ids", "heads", "tails", "payloads", "largest")

    def __init__(self, fields: RawPublish, v5: bool) -> None:
        self.topic = fields[0]
        self.v5 = v5
        self.count = 1
        self.ids: List[int] = [fields[5]]  # type: ignore[list-item]
        self.heads: List[bytes] = [fields[7][0]]
        self.tails: List[bytes] = [fields[7][1]]
        self.payloads: List[bytes] = [fields[1]]
        self.largest = len(fields[7][0]) + 2 + len(fields[7][1])
        """The size of the largest packet of the run."""

    def publishes(self) -> List[RawPublish]:
        """The packets one by one."""
        topic = self.topic
        return [(topic, payload, 1, False, False, packet_id, NO_PROPERTIES, (head, tail))
                for packet_id, head, tail, payload
                in zip(self.ids, self.heads, self.tails, self.payloads)]


class PublishRun(Run):
    """Consecutive QoS 0 PUBLISH packets of one read with the same topic and neither flags nor
    properties, checked as one: their bytes are ``buf[start:end]`` back to back, so a subscriber
    that receives them unchanged can be sent that one slice.  ``publishes()`` gives them one by
    one, as ``RawPublish`` tuples, for any other use."""

    __slots__ = ("buf", "start", "end", "largest", "head")

    def __init__(self, topic: str, buf: bytes, start: int, end: int, largest: int, head: int,
                 v5: bool) -> None:
        self.topic = topic
        self.buf = buf
        self.start = start
        self.end = end
        self.count = 1
        self.largest = largest
        """The size of the largest packet of the run."""
        self.head = head
        """Bytes from the start of a packet's body to its payload (topic and property length)."""
        self.v5 = v5

    def data(self) -> bytes:
        """The packets' bytes, back to back."""
        return self.buf[self.start:self.end]

    def publishes(self) -> List[RawPublish]:
        """The packets one by one."""
        buf = self.buf
        topic = self.topic
        head = self.head
        out: List[RawPublish] = []
        pos = self.start
        while pos < self.end:
            length, body = _varint(buf, pos + 1, self.end)
            end = body + length
            out.append((topic, buf[body + head:end], 0, False, False, None, NO_PROPERTIES,
                        buf[pos:end]))
            pos = end
        return out


class Decoder:
    """Incremental decoder of one direction of one connection.

    ``protocol_level`` is learnt from CONNECT when it is not given; until then only CONNECT is
    accepted.  A second CONNECT is a Protocol Error [MQTT-3.1.0-2].  With ``raw_publish`` a
    PUBLISH comes out as a ``RawPublish`` tuple, the cheapest form for the broker's hot path, and
    consecutive plain QoS 0 PUBLISH packets to one topic as one ``PublishRun``, and a PUBACK
    without reason code or properties as its packet identifier (an ``int``); otherwise every
    packet is its dataclass.
    """

    __slots__ = ("protocol_level", "max_packet_size", "raw_publish", "_pending", "_pending_len",
                 "_need", "_connected")

    def __init__(
        self,
        protocol_level: Optional[int] = None,
        max_packet_size: int = MAX_PACKET_SIZE,
        raw_publish: bool = False,
    ) -> None:
        self.protocol_level = protocol_level
        self.max_packet_size = max_packet_size
        self.raw_publish = raw_publish
        self._pending: Optional[List[bytes]] = None
        """The start of an incomplete packet, in pieces (None when none: an idle connection's
        decoder holds no list)."""
        self._pending_len = 0
        self._need = 0
        self._connected = False  # a CONNECT has been decoded

    def feed(self, data: bytes) -> List[Any]:
        """Take the next bytes of the stream; return every packet they complete, in order.

        A ``CodecError`` carries in ``decoded`` the packets completed before the bad one, so that
        they are handled before the connection is closed.
        """
        out: List[Any] = []
        try:
            self._decode(data, out)
        except CodecError as exc:
            exc.decoded = out
            raise
        return out

    def _decode(self, data: bytes, out: List[Any]) -> None:
        if self._pending:
            self._pending.append(data)
            self._pending_len += len(data)
            if self._pending_len < self._need:
                return
            data = b"".join(self._pending)
            self._pending = None
        append = out.append
        buf = data
        size = len(buf)
        pos = 0
        level = self.protocol_level
        raw = self.raw_publish
        limit = self.max_packet_size
        need = 0
        run_prefix: Optional[bytes] = None  # topic (and empty properties) of the run going on
        prefix_size = 0
        run: Optional[PublishRun] = None
        acked: Optional[AckedRun] = None
        run_start = 0
        run_first = 0  # the first byte of the run's packets
        while pos < size:
            first = buf[pos]
            if level is None and first != _CONNECT:
                # Checked on the first byte: a stream that does not start with CONNECT (say an
                # HTTP request) is refused now, not after the bytes its "length" asks for.
                if first >> 4 == PacketType.CONNECT:
                    raise MalformedPacket("CONNECT flags not 0", "MQTT-2.1.3-1")
                raise ProtocolError("first packet is not CONNECT", "MQTT-3.1.0-1")
            # Fixed header: type/flags byte, then the remaining length (1 to 4 bytes).
            if pos + 1 >= size:
                need = size - pos + 1
                break
            length = buf[pos + 1]
            body = pos + 2
            if length >= 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    if body - pos > 4:
                        raise MalformedPacket("remaining length longer than 4 bytes",
                                              "MQTT-1.5.5-1")
                    if body >= size:
                        need = body - pos + 1
                        break
                    byte = buf[body]
                    body += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        if not byte:
                            raise MalformedPacket("remaining length not minimal", "MQTT-1.5.5-1")
                        break
                    shift += 7
                if need:
                    break
            end = body + length
            if end - pos > limit:
                raise PacketTooLarge(f"packet of {end - pos} bytes exceeds {limit}",
                                     "MQTT-3.2.2-15")
            if end > size:
                need = end - pos
                break
            ptype = first >> 4
            flags = first & 0x0F
            if ptype == _PUBLISH:
                if run_prefix is not None and first == _PLAIN_QOS0 == run_first and (
                        buf.startswith(run_prefix, body)) and length >= prefix_size:
                    # The same topic bytes as the run's first packet: the same checks pass.
                    if run is None:
                        fields = out[-1]
                        run = PublishRun(fields[0], buf, run_start, end,
                                         max(len(fields[7]), end - pos), prefix_size,
                                         level == V5)
                        out[-1] = run
                    count = run.count + 1
                    largest = run.largest
                    if end - pos > largest:
                        largest = end - pos
                    pos = end
                    # The run's next packets that have a one-byte length, in a tighter loop;
                    # anything else goes round the main loop.
                    fits = limit >= 0x81  # any packet with a one-byte length is within it
                    longest = 0
                    while pos + 1 < size:
                        length = buf[pos + 1]
                        end = pos + 2 + length
                        if (length >= 0x80 or buf[pos] != first or end > size
                                or length < prefix_size or not (fits or end - pos <= limit)
                                or not buf.startswith(run_prefix, pos + 2)):
                            break
                        count += 1
                        if length > longest:
                            longest = length
                        pos = end
                    run.end = pos
                    run.count = count
                    run.largest = max(largest, longest + 2)
                    continue
                if run_prefix is not None and first == _PLAIN_QOS1 == run_first and (
                        buf.startswith(run_prefix, body)):
                    at = body + prefix_size  # the packet identifier
                    tail = at + 2
                    if tail + (level == V5) <= end and (buf[at] or buf[at + 1]) and (
                            level != V5 or not buf[tail]):
                        if acked is None:
                            acked = out[-1] = AckedRun(out[-1], level == V5)
                        v5 = level == V5
                        ids = acked.ids
                        heads = acked.heads
                        tails = acked.tails
                        payloads = acked.payloads
                        count = acked.count
                        largest = acked.largest
                        while True:
                            count += 1
                            ids.append((buf[at] << 8) | buf[at + 1])
                            heads.append(buf[pos:at])
                            rest = buf[tail:end]
                            tails.append(rest)
                            payloads.append(buf[tail + 1:end] if v5 else rest)
                            if end - pos > largest:
                                largest = end - pos
                            pos = end
                            # The run's next packets that have a one-byte length, in this
                            # tighter loop; anything else goes round the main loop.
                            if pos + 1 >= size:
                                break
                            length = buf[pos + 1]
                            end = pos + 2 + length
                            at = pos + 2 + prefix_size
                            tail = at + 2
                            if (buf[pos] != first or length >= 0x80 or end > size
                                    or end - pos > limit or tail + v5 > end
                                    or not buf.startswith(run_prefix, pos + 2)
                                    or not (buf[at] or buf[at + 1]) or (v5 and buf[tail])):
                                break
                        acked.count = count
                        acked.largest = largest
                        continue
                fields = _publish_fields(buf, body, end, flags, level,  # type: ignore[arg-type]
                                         pos)
                if not raw:
                    append(Publish(*fields[:7]))
                    pos = end
                    continue
                append(fields)
                run = acked = None
                if first == _PLAIN_QOS0 and fields[6] is NO_PROPERTIES and fields[0]:
                    run_start = pos
                    run_first = first
                    prefix_size = 2 + ((buf[body] << 8) | buf[body + 1]) + (level == V5)
                    run_prefix = buf[body:body + prefix_size]
                elif first == _PLAIN_QOS1 and fields[6] is NO_PROPERTIES and fields[0]:
                    run_first = first
                    prefix_size = 2 + ((buf[body] << 8) | buf[body + 1])
                    run_prefix = buf[body:body + prefix_size]
                else:
                    run_prefix = None
            else:
                run_prefix = run = acked = None
                if raw and first == _PUBACK and length == 2:
                    packet_id = (buf[body] << 8) | buf[body + 1]
                    if not packet_id:
                        raise ProtocolError("PUBACK with packet identifier 0", "MQTT-2.2.1-5")
                    append(packet_id)  # a plain PUBACK: its packet identifier is all it says
                    pos = end
                    # The plain PUBACKs that follow, in a tighter loop, make a ``PubAckRun``
                    # (a packet identifier 0 goes round the main loop, which refuses it).
                    acks: Optional[PubAckRun] = None
                    while pos + 4 <= size and buf[pos] == _PUBACK and buf[pos + 1] == 2:
                        packet_id = (buf[pos + 2] << 8) | buf[pos + 3]
                        if not packet_id:
                            break
                        if acks is None:
                            acks = out[-1] = PubAckRun((out[-1],))
                        acks.append(packet_id)
                        pos += 4
                    continue
                if ptype == 0:
                    raise MalformedPacket("reserved packet type 0", _UNLABELLED)
                if flags != _FLAGS[ptype] and (  # type: ignore[index]
                        level != _V31 or flags != _RESENT_FLAGS_V31.get(ptype)):
                    name = PacketType(ptype).name
                    raise MalformedPacket(f"reserved flags of {name} are {flags:04b}",
                                          "MQTT-2.1.3-1")
                if ptype == PacketType.CONNECT and self._connected:
                    # Before its body: a second CONNECT is a Protocol Error whatever it holds.
                    raise ProtocolError("second CONNECT", "MQTT-3.1.0-2")
                packet = _DECODERS[ptype](buf, body, end, flags, level)  # type: ignore[arg-type]
                if ptype == PacketType.CONNECT:
                    self._connected = True
                    level = self.protocol_level = packet.protocol_level
                append(packet)
            pos = end
        if pos < size:
            rest = buf[pos:] if pos else buf
            self._pending = [rest]
            self._pending_len = len(rest)
            self._need = need


def compiled() -> bool:
    """Whether this module runs compiled (``TWISTED_MQTT_COMPILE=1`` at install, see setup.py)
    rather than from its Python source."""
    return not __file__.endswith(".py")


def decode_all(data: bytes, protocol_level: Optional[int] = None) -> List[Packet]:
    """Decode a byte string that holds whole packets only; a partial packet is malformed."""
    decoder = Decoder(protocol_level)
    packets = decoder.feed(data)
    if decoder._pending:
        raise MalformedPacket("incomplete packet at the end of the data", _UNLABELLED)
    return packets


# ---------------------------------------------------------------------------------------------
# Encoding.


def encode_varint(value: int) -> bytes:
    """Encode a Variable Byte Integer (0 to 268,435,455)."""
    if value < 0x80:
        return bytes((value,))
    if value > MAX_REMAINING_LENGTH:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_string(text: str) -> bytes:
    """Encode a UTF-8 Encoded String with its two-byte length."""
    return encode_binary(text.encode("utf-8"))


def encode_binary(data: bytes) -> bytes:
    """Encode Binary Data with its two-byte length."""
    if len(data) > 0xFFFF:
        raise ValueError("string or binary data longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


_WRITERS: dict[WireType, Callable[[Any], bytes]] = {
    WireType.BYTE: lambda v: bytes((v,)),
    WireType.TWO_BYTE: lambda v: v.to_bytes(2, "big"),
    WireType.FOUR_BYTE: lambda v: v.to_bytes(4, "big"),
    WireType.VARINT: encode_varint,
    WireType.STRING: encode_string,
    WireType.BINARY: encode_binary,
    WireType.STRING_PAIR: lambda kv: encode_string(kv[0]) + encode_string(kv[1]),
}
_ORDERED_SPECS = sorted(SPECS.values(), key=lambda s: s.ident)


def encode_properties(props: Properties) -> bytes:
    """Encode a property block with its length prefix (one zero byte when empty).

    A value that its wire type cannot hold (a Four Byte Integer of 2**32, a negative one, a
    string over 65535 bytes...) raises ``ValueError`` naming the property: the caller computed
    it wrongly, and the codec neither clamps it (which would change its meaning) nor lets a
    nameless ``OverflowError`` out.
    """
    if props is NO_PROPERTIES:
        return b"\x00"
    parts = []
    for spec in _ORDERED_SPECS:
        item = getattr(props, ATTRIBUTE[spec.ident])
        if item is None or item == ():
            continue
        ident = bytes((spec.ident,))
        write = _WRITERS[spec.wire]
        for one in (item if spec.repeatable else (item,)):
            try:
                parts.append(ident + write(one))
            except (OverflowError, ValueError):
                raise ValueError(f"property {spec.name} = {one!r} does not fit a "
                                 f"{spec.wire.value}") from None
    body = b"".join(parts)
    return encode_varint(len(body)) + body


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def _encode_connect(p: Connect, level: int) -> bytes:
    v5 = p.protocol_level == V5
    flags = 0x02 if p.clean_start else 0
    will = p.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        flags |= 0x40
    parts = [encode_string(PROTOCOL_NAMES[ProtocolLevel(p.protocol_level)]),
             bytes((p.protocol_level, flags)), p.keep_alive.to_bytes(2, "big")]
    if v5:
        parts.append(encode_properties(p.properties))
    parts.append(encode_string(p.client_id))
    if will is not None:
        if v5:
            parts.append(encode_properties(will.properties))
        parts += (encode_string(will.topic), encode_binary(will.payload))
    if p.username is not None:
        parts.append(encode_string(p.username))
    if p.password is not None:
        parts.append(encode_binary(p.password))
    return _frame(0x10, b"".join(parts))


def _encode_connack(p: ConnAck, level: int) -> bytes:
    body = bytes((1 if p.session_present else 0, p.reason_code))
    if level == V5:
        body += encode_properties(p.properties)
    return _frame(0x20, body)


def encode_publish(
    topic: bytes,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: Optional[int],
    props: Optional[bytes],
) -> bytes:
    """Encode a PUBLISH from already-encoded parts; ``props`` is the v5 property block or None."""
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    head = len(topic).to_bytes(2, "big") + topic
    if qos:
        head += packet_id.to_bytes(2, "big")  # type: ignore[union-attr]
    if props is not None:
        head += props
    length = len(head) + len(payload)
    if length < 0x80:
        return bytes((first, length)) + head + payload
    return bytes((first,)) + encode_varint(length) + head + payload


def publish_template(
    topic: bytes, payload: bytes, qos: int, retain: bool, props: Optional[bytes]
) -> Tuple[bytes, bytes]:
    """Split a QoS 1/2 PUBLISH around its packet id: ``head + id.to_bytes(2) + tail`` is the
    packet, so one encoding serves every subscriber and only two bytes differ."""
    first = 0x30 | (qos << 1) | (0x01 if retain else 0)
    tail = props + payload if props is not None else payload
    length = 2 + len(topic) + 2 + len(tail)
    head = bytes((first,)) + encode_varint(length) + len(topic).to_bytes(2, "big") + topic
    return head, tail


def _encode_publish(p: Publish, level: int) -> bytes:
    return encode_publish(p.topic.encode("utf-8"), p.payload, p.qos, p.retain, p.dup, p.packet_id,
                          encode_properties(p.properties) if level == V5 else None)


def _ack_encoder(first: int) -> Callable[[Any, int], bytes]:
    def encode(p: Any, level: int) -> bytes:
        pid = p.packet_id.to_bytes(2, "big")
        if level != V5 or (p.reason_code == 0 and p.properties is NO_PROPERTIES):
            return bytes((first, 2)) + pid
        if p.properties is NO_PROPERTIES:
            return bytes((first, 3)) + pid + bytes((p.reason_code,))
        return _frame(first, pid + bytes((p.reason_code,)) + encode_properties(p.properties))

    return encode


def _encode_subscribe(p: Subscribe, level: int) -> bytes:
    parts = [p.packet_id.to_bytes(2, "big")]
    if level == V5:
        parts.append(encode_properties(p.properties))
    for s in p.subscriptions:
        options = s.qos
        if level == V5:
            options |= ((0x04 if s.no_local else 0) | (0x08 if s.retain_as_published else 0)
                        | (s.retain_handling << 4))
        parts += (encode_string(s.topic_filter), bytes((options,)))
    return _frame(0x82, b"".join(parts))


def _encode_suback(p: SubAck, level: int) -> bytes:
    props = encode_properties(p.properties) if level == V5 else b""
    return _frame(0x90, p.packet_id.to_bytes(2, "big") + props + bytes(p.reason_codes))


def _encode_unsubscribe(p: Unsubscribe, level: int) -> bytes:
    parts = [p.packet_id.to_bytes(2, "big")]
    if level == V5:
        parts.append(encode_properties(p.properties))
    parts += [encode_string(f) for f in p.topic_filters]
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback(p: UnsubAck, level: int) -> bytes:
    pid = p.packet_id.to_bytes(2, "big")
    if level != V5:
        return b"\xb0\x02" + pid
    return _frame(0xB0, pid + encode_properties(p.properties) + bytes(p.reason_codes))


def _reason_encoder(first: int) -> Callable[[Any, int], bytes]:
    def encode(p: Any, level: int) -> bytes:
        if level != V5 or (p.reason_code == 0 and p.properties is NO_PROPERTIES):
            return bytes((first, 0))
        if p.properties is NO_PROPERTIES:
            return bytes((first, 1, p.reason_code))
        return _frame(first, bytes((p.reason_code,)) + encode_properties(p.properties))

    return encode


_ENCODERS: dict[type, Callable[[Any, int], bytes]] = {
    Connect: _encode_connect,
    ConnAck: _encode_connack,
    Publish: _encode_publish,
    PubAck: _ack_encoder(0x40),
    PubRec: _ack_encoder(0x50),
    PubRel: _ack_encoder(0x62),
    PubComp: _ack_encoder(0x70),
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: _encode_unsuback,
    PingReq: lambda p, level: b"\xc0\x00",
    PingResp: lambda p, level: b"\xd0\x00",
    Disconnect: _reason_encoder(0xE0),
    Auth: _reason_encoder(0xF0),
}
assert set(_ENCODERS) == set(PACKET_TYPES)


def encode(packet: Packet, protocol_level: int = ProtocolLevel.MQTT_3_1_1) -> bytes:
    """Encode ``packet`` in the form of ``protocol_level`` (CONNECT uses its own level)."""
    return _ENCODERS[type(packet)](packet, protocol_level)


def encode_within(packet: Packet, protocol_level: int, maximum: Optional[int]) -> Optional[bytes]:
    """Encode ``packet`` to fit the peer's Maximum Packet Size, or return None if it cannot.

    Reason String and then User Properties are left out when that makes the packet fit
    [MQTT-3.4.2-2, MQTT-3.4.2-3 and their twins]; a PUBLISH is never altered, and one that does
    not fit must be discarded [MQTT-3.1.2-25].
    """
    data = encode(packet, protocol_level)
    if maximum is None or len(data) <= maximum:
        return data
    props = getattr(packet, "properties", NO_PROPERTIES)
    if isinstance(packet, Publish) or props is NO_PROPERTIES:
        return None
    for drop in range(1, len(DROPPABLE) + 1):
        lighter = replace(props, **{name: (None if name == "reason_string" else ())
                                    for name in DROPPABLE[:drop]})
        lighter = NO_PROPERTIES if lighter == NO_PROPERTIES else lighter
        data = encode(replace(packet, properties=lighter), protocol_level)  # type: ignore[arg-type]
        if len(data) <= maximum:
            return data
    return None


__all__ = [
    "CodecError",
    "Decoder",
    "MAX_PACKET_SIZE",
    "RawPublish",
    "decode_all",
    "encode",
    "encode_binary",
    "encode_properties",
    "encode_publish",
    "encode_string",
    "encode_varint",
    "encode_within",
    "publish_template",
]
