"""MQTT control packets as values, with the enums of packet types, QoS and reason codes."""

from __future__ import annotations

import enum
from typing import Optional, Tuple, Union

from twisted_mqtt._value import value
from twisted_mqtt.properties import NO_PROPERTIES, Properties


class ProtocolLevel(enum.IntEnum):
    """The protocol level byte of CONNECT."""

    MQTT_3_1 = 3
    MQTT_3_1_1 = 4
    MQTT_5 = 5


PROTOCOL_NAMES = {ProtocolLevel.MQTT_3_1: "MQIsdp", ProtocolLevel.MQTT_3_1_1: "MQTT",
                  ProtocolLevel.MQTT_5: "MQTT"}


class PacketType(enum.IntEnum):
    """Control packet types (the high nibble of the first byte)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class QoS(enum.IntEnum):
    """Quality of service levels."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


class ReasonCode(enum.IntEnum):
    """MQTT 5.0 reason codes (section 2.4)."""

    SUCCESS = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


class ConnectReturnCode(enum.IntEnum):
    """CONNACK return codes of MQTT 3.1 and 3.1.1."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USER_NAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


def version_name(protocol_level: int) -> str:
    """An MQTT protocol level as its version: 3.1, 3.1.1 or 5.0."""
    return {3: "3.1", 4: "3.1.1", 5: "5.0"}.get(protocol_level, f"level {protocol_level}")


_NAMES_IN = {
    (PacketType.DISCONNECT, 0x00): "Normal disconnection",
    (PacketType.SUBACK, 0x00): "Granted QoS 0",
}
"""Names a reason code has in one kind of packet only."""


def _words(name: str) -> str:
    return " ".join("QoS" if word == "qos" else word
                    for word in name.replace("_", " ").capitalize().split(" ")).replace(
                        "Qos", "QoS")


def reason_name(code: int, kind: Optional[PacketType] = None) -> str:
    """An MQTT 5 reason code's name as the specification gives it (in a ``kind`` packet, if
    that changes it): ``Not authorized``; ``Normal disconnection`` for DISCONNECT's 0x00;
    ``Unknown`` for a code the specification does not define."""
    named = _NAMES_IN.get((kind, code)) if kind is not None else None  # type: ignore[arg-type]
    if named is not None:
        return named
    try:
        return _words(ReasonCode(code).name)
    except ValueError:
        return "Unknown"


def connect_return_code_name(code: int) -> str:
    """An MQTT 3.1/3.1.1 CONNACK return code's name: ``Not authorized``; ``Unknown`` for a
    code the specification does not define."""
    try:
        return _words(ConnectReturnCode(code).name)
    except ValueError:
        return "Unknown"


SUBACK_FAILURE_V3 = 0x80

_R = ReasonCode
_ERRORS_COMMON = frozenset(
    {_R.UNSPECIFIED_ERROR, _R.IMPLEMENTATION_SPECIFIC_ERROR, _R.NOT_AUTHORIZED}
)
# The reason codes each packet may carry (section 2.4 and each packet's reason code table).
VALID_REASON_CODES: dict[PacketType, frozenset[int]] = {
    PacketType.CONNACK: frozenset(
        {_R.SUCCESS} | {c for c in _R if 0x80 <= c <= 0x9F and c not in (
            _R.SERVER_SHUTTING_DOWN, _R.KEEP_ALIVE_TIMEOUT, _R.SESSION_TAKEN_OVER,
            _R.TOPIC_FILTER_INVALID, _R.PACKET_IDENTIFIER_IN_USE, _R.PACKET_IDENTIFIER_NOT_FOUND,
            _R.RECEIVE_MAXIMUM_EXCEEDED, _R.TOPIC_ALIAS_INVALID, _R.MESSAGE_RATE_TOO_HIGH,
            _R.ADMINISTRATIVE_ACTION, _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        )}
    ),
    PacketType.PUBACK: frozenset(
        {_R.SUCCESS, _R.NO_MATCHING_SUBSCRIBERS, _R.TOPIC_NAME_INVALID,
         _R.PACKET_IDENTIFIER_IN_USE, _R.QUOTA_EXCEEDED, _R.PAYLOAD_FORMAT_INVALID} | _ERRORS_COMMON
    ),
    PacketType.PUBREL: frozenset({_R.SUCCESS, _R.PACKET_IDENTIFIER_NOT_FOUND}),
    PacketType.PUBCOMP: frozenset({_R.SUCCESS, _R.PACKET_IDENTIFIER_NOT_FOUND}),
    PacketType.SUBACK: frozenset(
        {_R.SUCCESS, _R.GRANTED_QOS_1, _R.GRANTED_QOS_2, _R.TOPIC_FILTER_INVALID,
         _R.PACKET_IDENTIFIER_IN_USE, _R.QUOTA_EXCEEDED, _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
         _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED, _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED}
        | _ERRORS_COMMON
    ),
    PacketType.UNSUBACK: frozenset(
        {_R.SUCCESS, _R.NO_SUBSCRIPTION_EXISTED, _R.TOPIC_FILTER_INVALID,
         _R.PACKET_IDENTIFIER_IN_USE} | _ERRORS_COMMON
    ),
    PacketType.DISCONNECT: frozenset(
        {_R.SUCCESS, _R.DISCONNECT_WITH_WILL_MESSAGE}
        | {c for c in _R if c >= 0x80 and c not in (
            _R.UNSUPPORTED_PROTOCOL_VERSION, _R.CLIENT_IDENTIFIER_NOT_VALID,
            _R.BAD_USER_NAME_OR_PASSWORD, _R.SERVER_UNAVAILABLE, _R.BANNED,
            _R.PACKET_IDENTIFIER_IN_USE, _R.PACKET_IDENTIFIER_NOT_FOUND,
        )}
    ),
    PacketType.AUTH: frozenset({_R.SUCCESS, _R.CONTINUE_AUTHENTICATION, _R.RE_AUTHENTICATE}),
}
VALID_REASON_CODES[PacketType.PUBREC] = VALID_REASON_CODES[PacketType.PUBACK]


@value
class Will:
    """The Will Message carried by CONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@value
class Connect:
    """CONNECT: a client asks to open a session."""

    client_id: str
    protocol_level: int = ProtocolLevel.MQTT_3_1_1
    clean_start: bool = True
    keep_alive: int = 60
    username: Optional[str] = None
    password: Optional[bytes] = None
    will: Optional[Will] = None
    properties: Properties = NO_PROPERTIES


@value
class ConnAck:
    """CONNACK: the server's answer to CONNECT (v5 reason code or v3 return code)."""

    reason_code: int = 0
    session_present: bool = False
    properties: Properties = NO_PROPERTIES


@value
class Publish:
    """PUBLISH: an application message.  ``packet_id`` is None for QoS 0."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: Optional[int] = None
    properties: Properties = NO_PROPERTIES


@value
class PubAck:
    """PUBACK: acknowledges a QoS 1 PUBLISH."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


class PubAckRun(list):  # type: ignore[type-arg]
    """The packet identifiers of consecutive plain PUBACK packets of one read (at least two),
    in order, as the decoder gives them.  A plain ``list`` subclass, kept out of ``codec`` so
    that the codec compiles with mypyc, which cannot subclass built-in types."""

    __slots__ = ()


@value
class PubRec:
    """PUBREC: first acknowledgement of a QoS 2 PUBLISH."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@value
class PubRel:
    """PUBREL: releases a QoS 2 message."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@value
class PubComp:
    """PUBCOMP: completes a QoS 2 exchange."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@value
class Subscription:
    """One topic filter of SUBSCRIBE with its options."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@value
class Subscribe:
    """SUBSCRIBE: one or more subscriptions."""

    packet_id: int
    subscriptions: Tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES


@value
class SubAck:
    """SUBACK: one reason code (v3: return code) per subscription."""

    packet_id: int
    reason_codes: Tuple[int, ...]
    properties: Properties = NO_PROPERTIES


@value
class Unsubscribe:
    """UNSUBSCRIBE: one or more topic filters."""

    packet_id: int
    topic_filters: Tuple[str, ...]
    properties: Properties = NO_PROPERTIES


@value
class UnsubAck:
    """UNSUBACK: v5 carries one reason code per filter; v3 carries none."""

    packet_id: int
    reason_codes: Tuple[int, ...] = ()
    properties: Properties = NO_PROPERTIES


@value
class PingReq:
    """PINGREQ: keepalive request."""


@value
class PingResp:
    """PINGRESP: keepalive answer."""


@value
class Disconnect:
    """DISCONNECT: the end of a connection (v5 may carry a reason)."""

    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@value
class Auth:
    """AUTH: an enhanced authentication exchange (v5 only)."""

    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


Packet = Union[
    Connect, ConnAck, Publish, PubAck, PubRec, PubRel, PubComp, Subscribe, SubAck, Unsubscribe,
    UnsubAck, PingReq, PingResp, Disconnect, Auth,
]

PACKET_TYPES: dict[type, PacketType] = {
    Connect: PacketType.CONNECT,
    ConnAck: PacketType.CONNACK,
    Publish: PacketType.PUBLISH,
    PubAck: PacketType.PUBACK,
    PubRec: PacketType.PUBREC,
    PubRel: PacketType.PUBREL,
    PubComp: PacketType.PUBCOMP,
    Subscribe: PacketType.SUBSCRIBE,
    SubAck: PacketType.SUBACK,
    Unsubscribe: PacketType.UNSUBSCRIBE,
    UnsubAck: PacketType.UNSUBACK,
    PingReq: PacketType.PINGREQ,
    PingResp: PacketType.PINGRESP,
    Disconnect: PacketType.DISCONNECT,
    Auth: PacketType.AUTH,
}
