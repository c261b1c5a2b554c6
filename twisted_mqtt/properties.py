"""MQTT 5 properties: identifiers, wire types, where each may appear, and the typed value object."""

from __future__ import annotations

import enum
from typing import Optional, Tuple

from twisted_mqtt._value import value


class PropertyId(enum.IntEnum):
    """Property identifiers of MQTT 5.0, section 2.2.2.2."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class WireType(enum.Enum):
    """Data representations of section 1.5."""

    BYTE = "Byte"
    TWO_BYTE = "Two Byte Integer"
    FOUR_BYTE = "Four Byte Integer"
    VARINT = "Variable Byte Integer"
    STRING = "UTF-8 Encoded String"
    BINARY = "Binary Data"
    STRING_PAIR = "UTF-8 String Pair"


# Where a property may appear.  "WILL" stands for the Will Properties of CONNECT.
CONNECT, CONNACK, PUBLISH, WILL = "CONNECT", "CONNACK", "PUBLISH", "WILL"
PUBACK, PUBREC, PUBREL, PUBCOMP = "PUBACK", "PUBREC", "PUBREL", "PUBCOMP"
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK"
DISCONNECT, AUTH = "DISCONNECT", "AUTH"
_ACKS = (PUBACK, PUBREC, PUBREL, PUBCOMP)


class Spec:
    """One property's identifier, attribute name, wire type and the packets that may carry it."""

    __slots__ = ("ident", "name", "wire", "packets", "repeatable")

    def __init__(
        self, ident: PropertyId, wire: WireType, packets: tuple[str, ...], repeatable: bool = False
    ) -> None:
        self.ident = ident
        self.name = ident.name.lower()
        self.wire = wire
        self.packets = frozenset(packets)
        self.repeatable = repeatable


_P = PropertyId
_W = WireType
SPECS: dict[int, Spec] = {
    s.ident: s
    for s in (
        Spec(_P.PAYLOAD_FORMAT_INDICATOR, _W.BYTE, (PUBLISH, WILL)),
        Spec(_P.MESSAGE_EXPIRY_INTERVAL, _W.FOUR_BYTE, (PUBLISH, WILL)),
        Spec(_P.CONTENT_TYPE, _W.STRING, (PUBLISH, WILL)),
        Spec(_P.RESPONSE_TOPIC, _W.STRING, (PUBLISH, WILL)),
        Spec(_P.CORRELATION_DATA, _W.BINARY, (PUBLISH, WILL)),
        Spec(_P.SUBSCRIPTION_IDENTIFIER, _W.VARINT, (PUBLISH, SUBSCRIBE), repeatable=True),
        Spec(_P.SESSION_EXPIRY_INTERVAL, _W.FOUR_BYTE, (CONNECT, CONNACK, DISCONNECT)),
        Spec(_P.ASSIGNED_CLIENT_IDENTIFIER, _W.STRING, (CONNACK,)),
        Spec(_P.SERVER_KEEP_ALIVE, _W.TWO_BYTE, (CONNACK,)),
        Spec(_P.AUTHENTICATION_METHOD, _W.STRING, (CONNECT, CONNACK, AUTH)),
        Spec(_P.AUTHENTICATION_DATA, _W.BINARY, (CONNECT, CONNACK, AUTH)),
        Spec(_P.REQUEST_PROBLEM_INFORMATION, _W.BYTE, (CONNECT,)),
        Spec(_P.WILL_DELAY_INTERVAL, _W.FOUR_BYTE, (WILL,)),
        Spec(_P.REQUEST_RESPONSE_INFORMATION, _W.BYTE, (CONNECT,)),
        Spec(_P.RESPONSE_INFORMATION, _W.STRING, (CONNACK,)),
        Spec(_P.SERVER_REFERENCE, _W.STRING, (CONNACK, DISCONNECT)),
        Spec(
            _P.REASON_STRING,
            _W.STRING,
            (CONNACK, *_ACKS, SUBACK, UNSUBACK, DISCONNECT, AUTH),
        ),
        Spec(_P.RECEIVE_MAXIMUM, _W.TWO_BYTE, (CONNECT, CONNACK)),
        Spec(_P.TOPIC_ALIAS_MAXIMUM, _W.TWO_BYTE, (CONNECT, CONNACK)),
        Spec(_P.TOPIC_ALIAS, _W.TWO_BYTE, (PUBLISH,)),
        Spec(_P.MAXIMUM_QOS, _W.BYTE, (CONNACK,)),
        Spec(_P.RETAIN_AVAILABLE, _W.BYTE, (CONNACK,)),
        Spec(
            _P.USER_PROPERTY,
            _W.STRING_PAIR,
            (CONNECT, CONNACK, PUBLISH, WILL, *_ACKS, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK,
             DISCONNECT, AUTH),
            repeatable=True,
        ),
        Spec(_P.MAXIMUM_PACKET_SIZE, _W.FOUR_BYTE, (CONNECT, CONNACK)),
        Spec(_P.WILDCARD_SUBSCRIPTION_AVAILABLE, _W.BYTE, (CONNACK,)),
        Spec(_P.SUBSCRIPTION_IDENTIFIER_AVAILABLE, _W.BYTE, (CONNACK,)),
        Spec(_P.SHARED_SUBSCRIPTION_AVAILABLE, _W.BYTE, (CONNACK,)),
    )
}

# Properties whose value must be 0 or 1 (a Protocol Error otherwise).
BOOLEAN_BYTES = frozenset(
    {
        _P.PAYLOAD_FORMAT_INDICATOR,
        _P.REQUEST_PROBLEM_INFORMATION,
        _P.REQUEST_RESPONSE_INFORMATION,
        _P.MAXIMUM_QOS,
        _P.RETAIN_AVAILABLE,
        _P.WILDCARD_SUBSCRIPTION_AVAILABLE,
        _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        _P.SHARED_SUBSCRIPTION_AVAILABLE,
    }
)
# Properties for which the value 0 is a Protocol Error.
NONZERO = frozenset(
    {_P.RECEIVE_MAXIMUM, _P.MAXIMUM_PACKET_SIZE, _P.TOPIC_ALIAS, _P.SUBSCRIPTION_IDENTIFIER}
)
# Properties a sender may leave out to fit a peer's Maximum Packet Size [MQTT-3.1.2-25].
DROPPABLE = ("reason_string", "user_properties")


@value
class Properties:
    """The properties of one MQTT 5 packet; ``None`` (or an empty tuple) means absent."""

    payload_format_indicator: Optional[int] = None
    message_expiry_interval: Optional[int] = None
    content_type: Optional[str] = None
    response_topic: Optional[str] = None
    correlation_data: Optional[bytes] = None
    subscription_identifiers: Tuple[int, ...] = ()
    session_expiry_interval: Optional[int] = None
    assigned_client_identifier: Optional[str] = None
    server_keep_alive: Optional[int] = None
    authentication_method: Optional[str] = None
    authentication_data: Optional[bytes] = None
    request_problem_information: Optional[int] = None
    will_delay_interval: Optional[int] = None
    request_response_information: Optional[int] = None
    response_information: Optional[str] = None
    server_reference: Optional[str] = None
    reason_string: Optional[str] = None
    receive_maximum: Optional[int] = None
    topic_alias_maximum: Optional[int] = None
    topic_alias: Optional[int] = None
    maximum_qos: Optional[int] = None
    retain_available: Optional[int] = None
    user_properties: Tuple[Tuple[str, str], ...] = ()
    maximum_packet_size: Optional[int] = None
    wildcard_subscription_available: Optional[int] = None
    subscription_identifier_available: Optional[int] = None
    shared_subscription_available: Optional[int] = None

    def __bool__(self) -> bool:
        """True when at least one property is present."""
        return self != NO_PROPERTIES

    def __repr__(self) -> str:
        present = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self.__slots__  # type: ignore[attr-defined]
            if getattr(self, name) not in (None, ())
        )
        return f"Properties({present})"


NO_PROPERTIES = Properties()

# Attribute name of each property in ``Properties`` (the repeatable ones hold tuples).
ATTRIBUTE = {
    ident: ("subscription_identifiers" if ident == _P.SUBSCRIPTION_IDENTIFIER
            else "user_properties" if ident == _P.USER_PROPERTY else spec.name)
    for ident, spec in SPECS.items()
}
