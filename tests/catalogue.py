"""A catalogue of named, byte-exact codec cases for MQTT 3.1, 3.1.1 and 5.0.

Each ``Case`` holds the exact bytes of one or more control packets, written as hex with spaces
between the fields, the protocol level of the decoder that reads them (``None``: a fresh decoder
that has not seen CONNECT yet) and either the packets they decode to or the error they must
raise: its class, its reason code and the normative label it reports.  ``labels`` names the
statements of the specifications (``mqtt-v3.1.1.json`` / ``mqtt-v5.0.json``) that the case
proves.  ``tests/test_codec_catalogue.py`` drives every case through the codec.

Conventions: field values are spelt out in hex; "MQTT" is ``0004 4d515454`` and "MQIsdp" is
``0006 4d5149736470``; the usual client id is "c" (``0001 63``), topics "a" (``0001 61``) and
"a/b" (``0003 612f62``).  A valid case marked ``canonical=False`` is a legal but non-minimal
form (an explicit Success reason code, properties out of identifier order...) that is decoded
but not expected back from the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple, Type

from twisted_mqtt.errors import (
    CodecError,
    MalformedPacket,
    PacketTooLarge,
    ProtocolError,
    TopicFilterInvalid,
    TopicNameInvalid,
    UnsupportedProtocolVersion,
)
from twisted_mqtt.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from twisted_mqtt.properties import Properties


@dataclass(frozen=True)
class Case:
    """One byte-exact case: valid when ``error`` is None, otherwise the error expected."""

    name: str
    level: Optional[int]
    data: bytes
    labels: Tuple[str, ...]
    packets: Tuple[Any, ...] = ()
    error: Optional[Type[CodecError]] = None
    reason_code: Optional[int] = None
    label: str = ""
    canonical: bool = True
    max_packet_size: Optional[int] = None

    @property
    def valid(self) -> bool:
        return self.error is None


hx = bytes.fromhex

BEFORE_CONNECT = None
V31, V311, V5 = 3, 4, 5
MQTT = "0004 4d515454"
MQISDP = "0006 4d5149736470"
MALFORMED, PROTOCOL_ERROR, UNSUPPORTED = 0x81, 0x82, 0x84
FILTER_INVALID, NAME_INVALID, ALIAS_INVALID, TOO_LARGE = 0x8F, 0x90, 0x94, 0x95
# Malformed Packets and Protocol Errors the specification describes without a label of their own
# (a truncated field, a repeated property, ...) carry the general rule of section 4.13.
UNLABELLED = "MQTT-4.13.1-1"

CATALOGUE: list[Case] = []


def ok(name: str, level: Optional[int], data: bytes, *packets: Any, labels: Tuple[str, ...],
       canonical: bool = True, max_packet_size: Optional[int] = None) -> None:
    """Add a valid case: ``data`` decodes to ``packets``."""
    CATALOGUE.append(Case(name, level, data, labels, packets, canonical=canonical,
                          max_packet_size=max_packet_size))


def bad(name: str, level: Optional[int], data: bytes, error: Type[CodecError], reason_code: int,
        label: str, also: Tuple[str, ...] = (), before: Tuple[Any, ...] = (),
        max_packet_size: Optional[int] = None) -> None:
    """Add an invalid case: ``data`` raises ``error`` with ``reason_code`` and ``label`` after
    decoding the packets ``before``."""
    CATALOGUE.append(Case(name, level, data, (label, *also), before, error, reason_code, label,
                          max_packet_size=max_packet_size))


P = Properties
KV = (("k", "v"),)  # the user property 26 0001 6b 0001 76

# =============================================================================================
# CONNECT (always read by a decoder that has not seen CONNECT yet).

ok("connect_v311_minimal", BEFORE_CONNECT,
   hx(f"10 0d {MQTT} 04 02 003c 0001 63"),
   Connect("c", 4, True, 60),
   labels=("MQTT-3.1.0-1", "MQTT-3.1.3-3"))
ok("connect_v31_mqisdp", BEFORE_CONNECT,
   hx(f"10 0f {MQISDP} 03 02 003c 0001 63"),
   Connect("c", 3, True, 60),
   labels=("MQTT-3.1.2-2",))
ok("connect_v5_minimal", BEFORE_CONNECT,
   hx(f"10 0e {MQTT} 05 02 003c 00 0001 63"),
   Connect("c", 5, True, 60),
   labels=("MQTT-2.2.2-1", "MQTT-3.1.3-3"))
ok("connect_v311_clean_session_0", BEFORE_CONNECT,
   hx(f"10 0d {MQTT} 04 00 003c 0001 63"),
   Connect("c", 4, False, 60),
   labels=("MQTT-3.1.2-4",))
ok("connect_v5_clean_start_0", BEFORE_CONNECT,
   hx(f"10 0e {MQTT} 05 00 003c 00 0001 63"),
   Connect("c", 5, False, 60),
   labels=("MQTT-3.1.2-5",))
ok("connect_v311_empty_client_id_keep_alive_0", BEFORE_CONNECT,
   hx(f"10 0c {MQTT} 04 02 0000 0000"),
   Connect("", 4, True, 0),
   labels=("MQTT-3.1.3-6",))
ok("connect_v311_keep_alive_max", BEFORE_CONNECT,
   hx(f"10 0d {MQTT} 04 02 ffff 0001 63"),
   Connect("c", 4, True, 65535),
   labels=("MQTT-3.1.2-24",))
ok("connect_v311_will_qos0", BEFORE_CONNECT,
   hx(f"10 13 {MQTT} 04 06 003c 0001 63 0001 77 0001 6d"),
   Connect("c", 4, True, 60, will=Will("w", b"m")),
   labels=("MQTT-3.1.2-9", "MQTT-3.1.3-1"))
ok("connect_v311_will_qos1_retain", BEFORE_CONNECT,
   hx(f"10 13 {MQTT} 04 2e 003c 0001 63 0001 77 0001 6d"),
   Connect("c", 4, True, 60, will=Will("w", b"m", 1, True)),
   labels=("MQTT-3.1.2-14", "MQTT-3.1.2-17"))
ok("connect_v311_will_qos2", BEFORE_CONNECT,
   hx(f"10 13 {MQTT} 04 16 003c 0001 63 0001 77 0001 6d"),
   Connect("c", 4, True, 60, will=Will("w", b"m", 2)),
   labels=("MQTT-3.1.2-14",))
ok("connect_v311_username", BEFORE_CONNECT,
   hx(f"10 10 {MQTT} 04 82 003c 0001 63 0001 75"),
   Connect("c", 4, True, 60, username="u"),
   labels=("MQTT-3.1.2-19", "MQTT-3.1.3-11"))
ok("connect_v311_username_password", BEFORE_CONNECT,
   hx(f"10 13 {MQTT} 04 c2 003c 0001 63 0001 75 0001 70"),
   Connect("c", 4, True, 60, username="u", password=b"p"),
   labels=("MQTT-3.1.2-21",))
ok("connect_v311_all_fields", BEFORE_CONNECT,
   hx(f"10 19 {MQTT} 04 ee 003c 0001 63 0001 77 0001 6d 0001 75 0001 70"),
   Connect("c", 4, True, 60, "u", b"p", Will("w", b"m", 1, True)),
   labels=("MQTT-3.1.3-1",))
ok("connect_v31_will_user_password", BEFORE_CONNECT,
   hx(f"10 1b {MQISDP} 03 d6 003c 0001 63 0001 77 0001 6d 0001 75 0001 70"),
   Connect("c", 3, True, 60, "u", b"p", Will("w", b"m", 2)),
   labels=("MQTT-3.1.3-1",))
ok("connect_v5_password_without_username", BEFORE_CONNECT,
   hx(f"10 11 {MQTT} 05 42 003c 00 0001 63 0001 70"),
   Connect("c", 5, True, 60, password=b"p"),
   labels=("MQTT-3.1.2-18", "MQTT-3.1.2-19"))
ok("connect_v5_properties", BEFORE_CONNECT,
   hx(f"10 29 {MQTT} 05 02 003c 1b 11 00000e10 17 00 19 01 21 0014 22 000a"
      " 26 0001 6b 0001 76 27 00010000 0001 63"),
   Connect("c", 5, True, 60, properties=P(
       session_expiry_interval=3600, request_problem_information=0,
       request_response_information=1, receive_maximum=20, topic_alias_maximum=10,
       user_properties=KV, maximum_packet_size=65536)),
   labels=("MQTT-3.1.2-23", "MQTT-3.1.2-28", "MQTT-3.1.2-29"))
ok("connect_v5_will_properties", BEFORE_CONNECT,
   hx(f"10 3a {MQTT} 05 06 003c 00 0001 63"
      " 25 01 01 02 0000003c 03 0004 74657874 08 0003 722f74 09 0002 0102 18 0000000a"
      " 26 0001 61 0001 62 0001 77 0001 6d"),
   Connect("c", 5, True, 60, will=Will("w", b"m", properties=P(
       payload_format_indicator=1, message_expiry_interval=60, content_type="text",
       response_topic="r/t", correlation_data=b"\x01\x02", will_delay_interval=10,
       user_properties=(("a", "b"),)))),
   labels=("MQTT-3.1.2-9", "MQTT-3.1.3-1", "MQTT-3.1.3-9"))
ok("connect_v5_will_user_properties_keep_order", BEFORE_CONNECT,
   hx(f"10 23 {MQTT} 05 06 003c 00 0001 63 0e 26 0001 62 0001 31 26 0001 61 0001 32"
      " 0001 77 0001 6d"),
   Connect("c", 5, True, 60, will=Will("w", b"m", properties=P(
       user_properties=(("b", "1"), ("a", "2"))))),
   labels=("MQTT-3.1.3-10",))
ok("connect_v5_authentication_method_and_data", BEFORE_CONNECT,
   hx(f"10 18 {MQTT} 05 02 003c 0a 15 0002 6d31 16 0002 abcd 0001 63"),
   Connect("c", 5, True, 60, properties=P(
       authentication_method="m1", authentication_data=b"\xab\xcd")),
   labels=("MQTT-3.1.2-30", "MQTT-4.12.0-1"))
ok("connect_v5_properties_out_of_order", BEFORE_CONNECT,
   hx(f"10 16 {MQTT} 05 02 003c 08 21 0014 11 00000e10 0001 63"),
   Connect("c", 5, True, 60, properties=P(session_expiry_interval=3600, receive_maximum=20)),
   labels=("MQTT-2.2.2-1",), canonical=False)
ok("connect_v311_then_subscribe", BEFORE_CONNECT,
   hx(f"10 0d {MQTT} 04 02 003c 0001 63  82 06 0001 0001 61 01"),
   Connect("c", 4, True, 60), Subscribe(1, (Subscription("a", 1),)),
   labels=("MQTT-3.1.0-1",))
ok("connect_v5_then_publish", BEFORE_CONNECT,
   hx(f"10 0e {MQTT} 05 02 003c 00 0001 63  30 04 0001 61 00"),
   Connect("c", 5, True, 60), Publish("a"),
   labels=("MQTT-3.1.0-1", "MQTT-2.2.2-1"))
ok("connect_v31_then_pingreq", BEFORE_CONNECT,
   hx(f"10 0f {MQISDP} 03 02 003c 0001 63  c0 00"),
   Connect("c", 3, True, 60), PingReq(),
   labels=("MQTT-3.1.0-1",))

bad("connect_v311_password_without_username", BEFORE_CONNECT,
    hx(f"10 10 {MQTT} 04 42 003c 0001 63 0001 70"),
    MalformedPacket, MALFORMED, "MQTT-3.1.2-22")
bad("connect_v31_password_without_username", BEFORE_CONNECT,
    hx(f"10 12 {MQISDP} 03 42 003c 0001 63 0001 70"),
    MalformedPacket, MALFORMED, "MQTT-3.1.2-22")
bad("connect_protocol_name_mqtx", BEFORE_CONNECT,
    hx("10 0d 0004 4d515458 04 02 003c 0001 63"),
    UnsupportedProtocolVersion, UNSUPPORTED, "MQTT-3.1.2-1")
bad("connect_protocol_name_lowercase", BEFORE_CONNECT,
    hx("10 0e 0004 6d717474 05 02 003c 00 0001 63"),
    UnsupportedProtocolVersion, UNSUPPORTED, "MQTT-3.1.2-1")
bad("connect_protocol_level_6", BEFORE_CONNECT,
    hx(f"10 0d {MQTT} 06 02 003c 0001 63"),
    UnsupportedProtocolVersion, UNSUPPORTED, "MQTT-3.1.2-2")
bad("connect_protocol_level_2", BEFORE_CONNECT,
    hx(f"10 0f {MQISDP} 02 02 003c 0001 63"),
    UnsupportedProtocolVersion, UNSUPPORTED, "MQTT-3.1.2-2")
bad("connect_mqisdp_at_level_4", BEFORE_CONNECT,
    hx(f"10 0f {MQISDP} 04 02 003c 0001 63"),
    UnsupportedProtocolVersion, UNSUPPORTED, "MQTT-3.1.2-1")
bad("connect_mqtt_at_level_3", BEFORE_CONNECT,
    hx(f"10 0d {MQTT} 03 02 003c 0001 63"),
    UnsupportedProtocolVersion, UNSUPPORTED, "MQTT-3.1.2-1")
bad("connect_protocol_name_ill_formed_utf8", BEFORE_CONNECT,
    hx("10 0d 0004 4d51ff54 04 02 003c 0001 63"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1")
bad("connect_v311_reserved_flag", BEFORE_CONNECT,
    hx(f"10 0d {MQTT} 04 03 003c 0001 63"),
    MalformedPacket, MALFORMED, "MQTT-3.1.2-3")
bad("connect_v5_reserved_flag", BEFORE_CONNECT,
    hx(f"10 0e {MQTT} 05 01 003c 00 0001 63"),
    MalformedPacket, MALFORMED, "MQTT-3.1.2-3")
bad("connect_v311_will_qos3", BEFORE_CONNECT,
    hx(f"10 13 {MQTT} 04 1e 003c 0001 63 0001 77 0001 6d"),
    MalformedPacket, MALFORMED, "MQTT-3.1.2-12", also=("MQTT-3.1.2-14",))
bad("connect_v5_will_qos3", BEFORE_CONNECT,
    hx(f"10 15 {MQTT} 05 1e 003c 00 0001 63 00 0001 77 0001 6d"),
    MalformedPacket, MALFORMED, "MQTT-3.1.2-12")
bad("connect_v311_will_qos_without_will", BEFORE_CONNECT,
    hx(f"10 0d {MQTT} 04 0a 003c 0001 63"),
    MalformedPacket, MALFORMED, "MQTT-3.1.2-11")
bad("connect_v5_will_qos_without_will", BEFORE_CONNECT,
    hx(f"10 0e {MQTT} 05 12 003c 00 0001 63"),
    MalformedPacket, MALFORMED, "MQTT-3.1.2-11")
bad("connect_v311_will_retain_without_will", BEFORE_CONNECT,
    hx(f"10 0d {MQTT} 04 22 003c 0001 63"),
    MalformedPacket, MALFORMED, "MQTT-3.1.2-13", also=("MQTT-3.1.2-15",))
bad("connect_v5_will_retain_without_will", BEFORE_CONNECT,
    hx(f"10 0e {MQTT} 05 22 003c 00 0001 63"),
    MalformedPacket, MALFORMED, "MQTT-3.1.2-13")
bad("connect_v311_username_flag_without_username", BEFORE_CONNECT,
    hx(f"10 0d {MQTT} 04 82 003c 0001 63"),
    MalformedPacket, MALFORMED, UNLABELLED, also=("MQTT-3.1.2-19",))
bad("connect_v311_password_flag_without_password", BEFORE_CONNECT,
    hx(f"10 10 {MQTT} 04 c2 003c 0001 63 0001 75"),
    MalformedPacket, MALFORMED, UNLABELLED, also=("MQTT-3.1.2-21",))
bad("connect_v311_will_flag_without_will_fields", BEFORE_CONNECT,
    hx(f"10 0d {MQTT} 04 06 003c 0001 63"),
    MalformedPacket, MALFORMED, UNLABELLED, also=("MQTT-3.1.2-9",))
bad("connect_v5_will_flag_without_will_properties", BEFORE_CONNECT,
    hx(f"10 0e {MQTT} 05 06 003c 00 0001 63"),
    MalformedPacket, MALFORMED, UNLABELLED, also=("MQTT-3.1.2-9",))
bad("connect_v311_username_without_flag", BEFORE_CONNECT,
    hx(f"10 10 {MQTT} 04 02 003c 0001 63 0001 75"),
    MalformedPacket, MALFORMED, UNLABELLED, also=("MQTT-3.1.2-18", "MQTT-3.1.2-16"))
bad("connect_v311_trailing_byte", BEFORE_CONNECT,
    hx(f"10 0e {MQTT} 04 02 003c 0001 63 00"),
    MalformedPacket, MALFORMED, UNLABELLED, also=("MQTT-3.1.4-1",))
bad("connect_v311_truncated_keep_alive", BEFORE_CONNECT,
    hx(f"10 09 {MQTT} 04 02 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("connect_v311_empty_will_topic", BEFORE_CONNECT,
    hx(f"10 12 {MQTT} 04 06 003c 0001 63 0000 0001 6d"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-4.7.3-1")
bad("connect_v311_will_topic_wildcard", BEFORE_CONNECT,
    hx(f"10 15 {MQTT} 04 06 003c 0001 63 0003 772f23 0001 6d"),
    TopicNameInvalid, NAME_INVALID, "MQTT-3.3.2-2", also=("MQTT-4.7.1-1",))
bad("connect_v5_will_topic_plus", BEFORE_CONNECT,
    hx(f"10 15 {MQTT} 05 06 003c 00 0001 63 00 0001 2b 0001 6d"),
    TopicNameInvalid, NAME_INVALID, "MQTT-3.3.2-2", also=("MQTT-4.7.0-1",))
bad("connect_v311_will_topic_null", BEFORE_CONNECT,
    hx(f"10 14 {MQTT} 04 06 003c 0001 63 0002 7700 0001 6d"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-2", also=("MQTT-4.7.3-2", "MQTT-3.1.3-10"))
bad("connect_client_id_ill_formed_utf8", BEFORE_CONNECT,
    hx(f"10 0d {MQTT} 04 02 003c 0001 ff"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1", also=("MQTT-3.1.3-4",))
bad("connect_client_id_null", BEFORE_CONNECT,
    hx(f"10 0d {MQTT} 04 02 003c 0001 00"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-2", also=("MQTT-1.5.3-2",))
bad("connect_username_surrogate", BEFORE_CONNECT,
    hx(f"10 12 {MQTT} 04 82 003c 0001 63 0003 eda080"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1", also=("MQTT-3.1.3-11", "MQTT-3.1.3-12"))
bad("connect_v5_session_expiry_repeated", BEFORE_CONNECT,
    hx(f"10 18 {MQTT} 05 02 003c 0a 11 00000000 11 00000001 0001 63"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("connect_v5_topic_alias_not_allowed", BEFORE_CONNECT,
    hx(f"10 11 {MQTT} 05 02 003c 03 23 0001 0001 63"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("connect_v5_receive_maximum_0", BEFORE_CONNECT,
    hx(f"10 11 {MQTT} 05 02 003c 03 21 0000 0001 63"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED, also=("MQTT-4.9.0-1",))
bad("connect_v5_maximum_packet_size_0", BEFORE_CONNECT,
    hx(f"10 13 {MQTT} 05 02 003c 05 27 00000000 0001 63"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("connect_v5_request_problem_information_2", BEFORE_CONNECT,
    hx(f"10 10 {MQTT} 05 02 003c 02 17 02 0001 63"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("connect_v5_request_response_information_2", BEFORE_CONNECT,
    hx(f"10 10 {MQTT} 05 02 003c 02 19 02 0001 63"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("connect_v5_will_delay_in_connect_properties", BEFORE_CONNECT,
    hx(f"10 13 {MQTT} 05 02 003c 05 18 0000000a 0001 63"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("connect_v5_session_expiry_in_will_properties", BEFORE_CONNECT,
    hx(f"10 1a {MQTT} 05 06 003c 00 0001 63 05 11 00000001 0001 77 0001 6d"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("connect_v5_will_payload_format_indicator_2", BEFORE_CONNECT,
    hx(f"10 17 {MQTT} 05 06 003c 00 0001 63 02 01 02 0001 77 0001 6d"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("connect_v5_will_response_topic_wildcard", BEFORE_CONNECT,
    hx(f"10 1a {MQTT} 05 06 003c 00 0001 63 05 08 0002 722b 0001 77 0001 6d"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.3.2-14")
bad("connect_v5_unknown_property", BEFORE_CONNECT,
    hx(f"10 0f {MQTT} 05 02 003c 01 7f 0001 63"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("connect_v5_property_length_past_end", BEFORE_CONNECT,
    hx(f"10 0e {MQTT} 05 02 003c 05 0001 63"),
    MalformedPacket, MALFORMED, "MQTT-2.2.2-1")
bad("connect_v5_authentication_data_without_method", BEFORE_CONNECT,
    hx(f"10 13 {MQTT} 05 02 003c 05 16 0002 abcd 0001 63"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("connect_fixed_header_flags", BEFORE_CONNECT,
    hx(f"11 0d {MQTT} 04 02 003c 0001 63"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-2.2.2-1",))
bad("connect_twice", BEFORE_CONNECT,
    hx(f"10 0d {MQTT} 04 02 003c 0001 63  10 0d {MQTT} 04 02 003c 0001 63"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.1.0-2", before=(Connect("c", 4, True, 60),))
bad("connect_v5_twice", BEFORE_CONNECT,
    hx(f"10 0e {MQTT} 05 02 003c 00 0001 63  c0 00  10 0e {MQTT} 05 02 003c 00 0001 63"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.1.0-2",
    before=(Connect("c", 5, True, 60), PingReq()))
bad("connect_exceeds_maximum_packet_size", BEFORE_CONNECT,
    hx("10 29"),
    PacketTooLarge, TOO_LARGE, "MQTT-3.2.2-15", max_packet_size=20)

# A decoder that has not seen CONNECT accepts nothing else [MQTT-3.1.0-1].
bad("first_packet_publish", BEFORE_CONNECT, hx("30 03 0001 61"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.1.0-1")
bad("first_packet_pingreq", BEFORE_CONNECT, hx("c0 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.1.0-1")
bad("first_packet_connack", BEFORE_CONNECT, hx("20 02 00 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.1.0-1")
bad("first_packet_subscribe", BEFORE_CONNECT, hx("82 06 0001 0001 61 01"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.1.0-1")
bad("first_packet_disconnect", BEFORE_CONNECT, hx("e0 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.1.0-1")
bad("first_packet_auth", BEFORE_CONNECT, hx("f0 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.1.0-1")
bad("first_packet_type_0", BEFORE_CONNECT, hx("00 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.1.0-1")

# =============================================================================================
# CONNACK

ok("connack_v311_accepted", V311, hx("20 02 00 00"), ConnAck(),
   labels=("MQTT-3.1.4-4",))
ok("connack_v311_session_present", V311, hx("20 02 01 00"), ConnAck(0, True),
   labels=("MQTT-3.2.2-2",))
ok("connack_v311_not_authorized", V311, hx("20 02 00 05"), ConnAck(5),
   labels=("MQTT-3.2.2-5",))
ok("connack_v31_identifier_rejected", V31, hx("20 02 00 02"), ConnAck(2),
   labels=("MQTT-3.2.2-5",))
ok("connack_v5_success", V5, hx("20 03 00 00 00"), ConnAck(),
   labels=("MQTT-3.2.2-8", "MQTT-2.2.2-1"))
ok("connack_v5_session_present", V5, hx("20 03 01 00 00"), ConnAck(0, True),
   labels=("MQTT-3.2.2-3",))
ok("connack_v5_not_authorized", V5, hx("20 03 00 87 00"), ConnAck(0x87),
   labels=("MQTT-3.2.2-8", "MQTT-3.2.2-6"))
ok("connack_v5_unsupported_protocol_version", V5, hx("20 03 00 84 00"), ConnAck(0x84),
   labels=("MQTT-3.2.2-8",))
ok("connack_v5_bad_authentication_method", V5, hx("20 03 00 8c 00"), ConnAck(0x8C),
   labels=("MQTT-3.2.2-8", "MQTT-4.12.0-1"))
ok("connack_v5_capabilities", V5,
   hx("20 26 00 00 23 11 0000003c 12 0003 616263 13 001e 21 000a 22 0005 24 01 25 00"
      " 27 00001000 28 01 29 00 2a 01"),
   ConnAck(0, False, P(
       session_expiry_interval=60, assigned_client_identifier="abc", server_keep_alive=30,
       receive_maximum=10, topic_alias_maximum=5, maximum_qos=1, retain_available=0,
       maximum_packet_size=4096, wildcard_subscription_available=1,
       subscription_identifier_available=0, shared_subscription_available=1)),
   labels=("MQTT-3.2.2-9", "MQTT-3.2.2-16", "MQTT-3.2.2-21"))
ok("connack_v5_use_another_server", V5,
   hx("20 19 00 9c 16 1a 0002 7269 1c 0002 7372 1f 0002 7273 26 0001 6b 0001 76"),
   ConnAck(0x9C, False, P(response_information="ri", server_reference="sr",
                          reason_string="rs", user_properties=KV)),
   labels=("MQTT-3.2.2-19", "MQTT-3.2.2-20"))
ok("connack_v5_authentication", V5,
   hx("20 0d 00 00 0a 15 0002 6d31 16 0002 abcd"),
   ConnAck(0, False, P(authentication_method="m1", authentication_data=b"\xab\xcd")),
   labels=("MQTT-4.12.0-5",))

bad("connack_v311_return_code_6", V311, hx("20 02 00 06"),
    MalformedPacket, MALFORMED, "MQTT-3.2.2-6")
bad("connack_v31_return_code_ff", V31, hx("20 02 00 ff"),
    MalformedPacket, MALFORMED, "MQTT-3.2.2-6")
bad("connack_v311_reserved_ack_flags", V311, hx("20 02 02 00"),
    MalformedPacket, MALFORMED, "MQTT-3.2.2-1")
bad("connack_v5_reserved_ack_flags", V5, hx("20 03 80 00 00"),
    MalformedPacket, MALFORMED, "MQTT-3.2.2-1")
bad("connack_v311_extra_byte", V311, hx("20 03 00 00 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("connack_v311_truncated", V311, hx("20 01 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("connack_v311_fixed_header_flags", V311, hx("21 02 00 00"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-2.2.2-2",))
bad("connack_v5_reason_session_taken_over", V5, hx("20 03 00 8e 00"),
    MalformedPacket, MALFORMED, "MQTT-3.2.2-8")
bad("connack_v5_reason_01", V5, hx("20 03 00 01 00"),
    MalformedPacket, MALFORMED, "MQTT-3.2.2-8")
bad("connack_v5_missing_property_length", V5, hx("20 02 00 00"),
    MalformedPacket, MALFORMED, UNLABELLED, also=("MQTT-2.2.2-1",))
bad("connack_v5_maximum_qos_2", V5, hx("20 05 00 00 02 24 02"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("connack_v5_retain_available_2", V5, hx("20 05 00 00 02 25 02"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("connack_v5_server_keep_alive_repeated", V5, hx("20 09 00 00 06 13 0001 13 0002"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("connack_v5_receive_maximum_0", V5, hx("20 06 00 00 03 21 0000"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("connack_v5_topic_alias_not_allowed", V5, hx("20 06 00 00 03 23 0001"),
    MalformedPacket, MALFORMED, UNLABELLED)

# =============================================================================================
# PUBLISH

ok("publish_v311_qos0", V311, hx("30 07 0003 612f62 6869"), Publish("a/b", b"hi"),
   labels=("MQTT-3.3.2-1", "MQTT-2.3.1-5"))
ok("publish_v311_qos0_empty_payload", V311, hx("30 03 0001 61"), Publish("a"),
   labels=("MQTT-3.3.2-1",))
ok("publish_v311_qos1", V311, hx("32 07 0001 61 0001 6869"),
   Publish("a", b"hi", 1, packet_id=1),
   labels=("MQTT-2.3.1-1",))
ok("publish_v311_qos2_dup_retain", V311, hx("3d 07 0001 61 ffff 6869"),
   Publish("a", b"hi", 2, True, True, 65535),
   labels=("MQTT-3.3.1-1", "MQTT-3.3.1-5"))
ok("publish_v311_retain_empty_payload", V311, hx("31 03 0001 61"), Publish("a", retain=True),
   labels=("MQTT-3.3.1-10",))
ok("publish_v311_qos1_dup", V311, hx("3a 05 0001 61 0007"),
   Publish("a", qos=1, dup=True, packet_id=7),
   labels=("MQTT-3.3.1-1",))
ok("publish_v31_qos0", V31, hx("30 06 0003 612f62 78"), Publish("a/b", b"x"),
   labels=("MQTT-3.3.2-1",))
ok("publish_v31_qos1", V31, hx("32 05 0001 61 0001"), Publish("a", qos=1, packet_id=1),
   labels=("MQTT-2.3.1-1",))
ok("publish_v311_payload_looks_like_a_packet", V311, hx("30 05 0001 61 c000"),
   Publish("a", b"\xc0\x00"),
   labels=("MQTT-3.3.4-1",))
ok("publish_v311_two_byte_remaining_length", V311, hx("30 cb01 0001 61") + bytes(200),
   Publish("a", bytes(200)),
   labels=("MQTT-1.5.5-1",))
ok("publish_v311_three_byte_remaining_length", V311, hx("30 808001 0001 61") + bytes(16381),
   Publish("a", bytes(16381)),
   labels=("MQTT-1.5.5-1",))
ok("publish_v311_dollar_topic", V311, hx("30 08 0006 245359532f78"), Publish("$SYS/x"),
   labels=("MQTT-4.7.2-1",))
ok("publish_v311_bom_preserved", V311, hx("30 06 0004 efbbbf61"), Publish("\ufeffa"),
   labels=("MQTT-1.5.4-3", "MQTT-1.5.3-3"))
ok("publish_v5_bom_preserved", V5, hx("30 07 0004 efbbbf61 00"), Publish("\ufeffa"),
   labels=("MQTT-1.5.4-3",))
ok("publish_v311_noncharacter_uffff", V311, hx("30 05 0003 efbfbf"), Publish("\uffff"),
   labels=("MQTT-1.5.3-3",))
ok("publish_v311_control_character", V311, hx("30 04 0002 6101"), Publish("a\x01"),
   labels=("MQTT-1.5.3-3",))
ok("publish_v311_four_byte_utf8", V311, hx("30 06 0004 f09f9880"), Publish("\U0001f600"),
   labels=("MQTT-1.5.4-1", "MQTT-4.7.3-4"))
ok("publish_v5_qos0", V5, hx("30 06 0001 61 00 6869"), Publish("a", b"hi"),
   labels=("MQTT-2.2.2-1",))
ok("publish_v5_qos1_properties", V5,
   hx("32 2b 0001 61 0001 23 01 01 02 0000003c 03 0004 74657874 08 0003 722f74"
      " 09 0002 0102 23 0005 26 0001 6b 0001 76 6869"),
   Publish("a", b"hi", 1, packet_id=1, properties=P(
       payload_format_indicator=1, message_expiry_interval=60, content_type="text",
       response_topic="r/t", correlation_data=b"\x01\x02", topic_alias=5, user_properties=KV)),
   labels=("MQTT-3.3.2-4", "MQTT-3.3.2-13", "MQTT-3.3.2-16", "MQTT-3.3.2-19"))
ok("publish_v5_qos2_dup_retain", V5, hx("3d 06 0001 61 0002 00"),
   Publish("a", b"", 2, True, True, 2),
   labels=("MQTT-3.3.1-1",))
ok("publish_v5_empty_topic_with_alias", V5, hx("30 06 0000 03 23 0001"),
   Publish("", properties=P(topic_alias=1)),
   labels=("MQTT-3.3.2-12",))
ok("publish_v5_topic_and_alias", V5, hx("30 09 0001 61 03 23 0002 6869"),
   Publish("a", b"hi", properties=P(topic_alias=2)),
   labels=("MQTT-3.3.2-12",))
ok("publish_v5_subscription_identifiers_repeated", V5,
   hx("30 0d 0001 61 09 0b 01 0b 02 0b ffffff7f"),
   Publish("a", properties=P(subscription_identifiers=(1, 2, 268_435_455))),
   labels=("MQTT-3.3.4-3", "MQTT-3.3.4-4"))
ok("publish_v5_user_properties_keep_order", V5,
   hx("30 19 0001 61 15 26 0001 62 0001 31 26 0001 61 0001 32 26 0001 62 0001 33"),
   Publish("a", properties=P(user_properties=(("b", "1"), ("a", "2"), ("b", "3")))),
   labels=("MQTT-3.3.2-17", "MQTT-3.3.2-18"))
ok("publish_v5_payload_format_not_validated", V5, hx("30 07 0001 61 02 01 01 ff"),
   Publish("a", b"\xff", properties=P(payload_format_indicator=1)),
   labels=("MQTT-3.3.2-4",))
ok("publish_v5_properties_out_of_order", V5, hx("30 09 0001 61 05 23 0001 01 01"),
   Publish("a", properties=P(payload_format_indicator=1, topic_alias=1)),
   labels=("MQTT-2.2.2-1",), canonical=False)
ok("publish_maximum_packet_size_exact_fit", V311, hx("30 0e 0001 61 000102030405060708090a"),
   Publish("a", bytes(range(11))),
   labels=("MQTT-3.2.2-15",), max_packet_size=16)

bad("publish_v311_qos3", V311, hx("36 05 0001 61 0001"),
    MalformedPacket, MALFORMED, "MQTT-3.3.1-4")
bad("publish_v5_qos3", V5, hx("37 06 0001 61 0001 00"),
    MalformedPacket, MALFORMED, "MQTT-3.3.1-4")
bad("publish_v311_dup_on_qos0", V311, hx("38 03 0001 61"),
    MalformedPacket, MALFORMED, "MQTT-3.3.1-2", also=("MQTT-4.3.1-1",))
bad("publish_v5_dup_on_qos0", V5, hx("38 04 0001 61 00"),
    MalformedPacket, MALFORMED, "MQTT-3.3.1-2")
bad("publish_v311_qos1_packet_id_0", V311, hx("32 05 0001 61 0000"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-2.2.1-3", also=("MQTT-2.3.1-1",))
bad("publish_v5_qos2_packet_id_0", V5, hx("34 06 0001 61 0000 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-2.2.1-3", also=("MQTT-2.2.1-4",))
bad("publish_v311_qos1_missing_packet_id", V311, hx("32 03 0001 61"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("publish_v311_wildcard_plus", V311, hx("30 05 0003 612f2b"),
    TopicNameInvalid, NAME_INVALID, "MQTT-3.3.2-2", also=("MQTT-4.7.1-1",))
bad("publish_v311_wildcard_hash", V311, hx("30 03 0001 23"),
    TopicNameInvalid, NAME_INVALID, "MQTT-3.3.2-2")
bad("publish_v5_wildcard_hash_level", V5, hx("30 06 0003 612f23 00"),
    TopicNameInvalid, NAME_INVALID, "MQTT-3.3.2-2", also=("MQTT-4.7.0-1",))
bad("publish_v31_wildcard_in_level", V31, hx("30 04 0002 2b61"),
    TopicNameInvalid, NAME_INVALID, "MQTT-3.3.2-2")
bad("publish_v311_empty_topic", V311, hx("30 02 0000"),
    TopicNameInvalid, NAME_INVALID, "MQTT-4.7.3-1")
bad("publish_v31_empty_topic", V31, hx("30 04 0000 6869"),
    TopicNameInvalid, NAME_INVALID, "MQTT-4.7.3-1")
bad("publish_v5_empty_topic_without_alias", V5, hx("30 03 0000 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.3.2-1")
bad("publish_v5_topic_alias_0", V5, hx("30 07 0001 61 03 23 0000"),
    ProtocolError, ALIAS_INVALID, "MQTT-3.3.2-8")
bad("publish_v5_topic_alias_repeated", V5, hx("30 0a 0001 61 06 23 0001 23 0002"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("publish_v311_topic_null", V311, hx("30 04 0002 6100"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-2", also=("MQTT-4.7.3-2",))
bad("publish_v5_topic_null", V5, hx("30 05 0002 0061 00"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-2", also=("MQTT-4.7.3-2",))
bad("publish_v311_topic_byte_ff", V311, hx("30 04 0002 61ff"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1", also=("MQTT-1.5.3-1",))
bad("publish_v311_topic_surrogate_d800", V311, hx("30 05 0003 eda080"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1", also=("MQTT-1.5.3-1",))
bad("publish_v5_topic_surrogate_dfff", V5, hx("30 06 0003 edbfbf 00"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1")
bad("publish_v311_topic_overlong_slash", V311, hx("30 04 0002 c0af"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1")
bad("publish_v311_topic_overlong_null", V311, hx("30 04 0002 c080"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1")
bad("publish_v5_topic_overlong_three_bytes", V5, hx("30 06 0003 e080af 00"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1")
bad("publish_v311_topic_above_u10ffff", V311, hx("30 06 0004 f4908080"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1")
bad("publish_v311_topic_truncated_sequence", V311, hx("30 04 0002 61c3"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1")
bad("publish_v31_topic_lone_continuation_byte", V31, hx("30 03 0001 80"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1")
bad("publish_v311_topic_length_past_end", V311, hx("30 03 0005 61"),
    MalformedPacket, MALFORMED, "MQTT-3.3.2-1")
bad("publish_v311_topic_length_truncated", V311, hx("30 01 00"),
    MalformedPacket, MALFORMED, "MQTT-3.3.2-1")
bad("publish_v5_payload_format_indicator_2", V5, hx("30 06 0001 61 02 01 02"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("publish_v5_subscription_identifier_0", V5, hx("30 06 0001 61 02 0b 00"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("publish_v5_session_expiry_not_allowed", V5, hx("30 09 0001 61 05 11 00000001"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("publish_v5_missing_property_length", V5, hx("30 03 0001 61"),
    MalformedPacket, MALFORMED, UNLABELLED, also=("MQTT-2.2.2-1",))
bad("publish_v5_qos1_missing_property_length", V5, hx("32 05 0001 61 0001"),
    MalformedPacket, MALFORMED, UNLABELLED, also=("MQTT-2.2.2-1",))
bad("publish_v5_property_length_past_end", V5, hx("30 05 0001 61 05 01"),
    MalformedPacket, MALFORMED, "MQTT-2.2.2-1")
bad("publish_v5_response_topic_wildcard", V5, hx("30 09 0001 61 05 08 0002 612b"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.3.2-14")
bad("publish_v5_property_identifier_not_minimal", V5, hx("30 07 0001 61 03 8100 01"),
    MalformedPacket, MALFORMED, "MQTT-1.5.5-1")
bad("publish_v5_correlation_data_past_properties", V5, hx("30 08 0001 61 04 09 0005 01"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("publish_v5_message_expiry_truncated", V5, hx("30 07 0001 61 03 02 0000"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("publish_v5_user_property_ill_formed_utf8", V5, hx("30 0b 0001 61 07 26 0001 6b 0001 ff"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1", also=("MQTT-1.5.7-1",))
bad("publish_v5_content_type_null", V5, hx("30 08 0001 61 04 03 0001 00"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-2", also=("MQTT-3.3.2-19",))
bad("publish_v5_remaining_length_not_minimal", V5, hx("30 8400 0001 61 00"),
    MalformedPacket, MALFORMED, "MQTT-1.5.5-1")
bad("publish_exceeds_maximum_packet_size", V311, hx("30 0f"),
    PacketTooLarge, TOO_LARGE, "MQTT-3.2.2-15", max_packet_size=16)
bad("publish_v5_four_byte_length_exceeds_maximum_packet_size", V5, hx("30 ffffff7f"),
    PacketTooLarge, TOO_LARGE, "MQTT-3.2.2-15", also=("MQTT-3.1.2-24",), max_packet_size=1024)

# =============================================================================================
# PUBACK, PUBREC, PUBREL, PUBCOMP: 2 bytes before MQTT 5; 2, 3 or 4+ bytes in MQTT 5.

ok("puback_v311", V311, hx("40 02 0001"), PubAck(1), labels=("MQTT-2.3.1-6",))
ok("puback_v31", V31, hx("40 02 ffff"), PubAck(65535), labels=("MQTT-2.3.1-6",))
ok("puback_v5_short", V5, hx("40 02 0001"), PubAck(1), labels=("MQTT-3.4.2-1",))
ok("puback_v5_no_matching_subscribers", V5, hx("40 03 0001 10"), PubAck(1, 0x10),
   labels=("MQTT-3.4.2-1",))
ok("puback_v5_explicit_success", V5, hx("40 03 0001 00"), PubAck(1),
   labels=("MQTT-3.4.2-1",), canonical=False)
ok("puback_v5_empty_properties", V5, hx("40 04 0001 10 00"), PubAck(1, 0x10),
   labels=("MQTT-3.4.2-1", "MQTT-2.2.2-1"), canonical=False)
ok("puback_v5_properties", V5, hx("40 10 0001 80 0c 1f 0002 7273 26 0001 6b 0001 76"),
   PubAck(1, 0x80, P(reason_string="rs", user_properties=KV)),
   labels=("MQTT-3.4.2-2", "MQTT-3.4.2-3", "MQTT-4.4.0-2"))

bad("puback_v311_extra_byte", V311, hx("40 03 0001 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("puback_v311_packet_id_0", V311, hx("40 02 0000"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-2.2.1-5", also=("MQTT-2.3.1-6",))
bad("puback_v311_fixed_header_flags", V311, hx("42 02 0001"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-2.2.2-2",))
bad("puback_v311_truncated", V311, hx("40 01 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("puback_v5_packet_id_0", V5, hx("40 02 0000"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-2.2.1-5")
bad("puback_v5_reason_92", V5, hx("40 03 0001 92"),
    MalformedPacket, MALFORMED, "MQTT-3.4.2-1")
bad("puback_v5_reason_04", V5, hx("40 03 0001 04"),
    MalformedPacket, MALFORMED, "MQTT-3.4.2-1")
bad("puback_v5_topic_alias_not_allowed", V5, hx("40 07 0001 00 03 23 0001"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("puback_v5_reason_string_repeated", V5, hx("40 0e 0001 00 0a 1f 0002 6161 1f 0002 6262"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED, also=("MQTT-3.4.2-2",))
bad("puback_v5_trailing_byte_after_properties", V5, hx("40 05 0001 00 00 00"),
    MalformedPacket, MALFORMED, UNLABELLED)

ok("pubrec_v311", V311, hx("50 02 0001"), PubRec(1), labels=("MQTT-4.3.3-8",))
ok("pubrec_v31", V31, hx("50 02 0102"), PubRec(0x0102), labels=("MQTT-2.3.1-6",))
ok("pubrec_v5_short", V5, hx("50 02 0001"), PubRec(1), labels=("MQTT-3.5.2-1",))
ok("pubrec_v5_quota_exceeded", V5, hx("50 03 0001 97"), PubRec(1, 0x97),
   labels=("MQTT-3.5.2-1", "MQTT-4.3.3-9"))
ok("pubrec_v5_properties", V5, hx("50 0b 0001 10 07 26 0001 6b 0001 76"),
   PubRec(1, 0x10, P(user_properties=KV)),
   labels=("MQTT-3.5.2-3",))
ok("pubrec_v5_explicit_success_empty_properties", V5, hx("50 04 0001 00 00"), PubRec(1),
   labels=("MQTT-3.5.2-1",), canonical=False)

bad("pubrec_v311_extra_bytes", V311, hx("50 04 0001 0000"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("pubrec_v311_packet_id_0", V311, hx("50 02 0000"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-2.2.1-5")
bad("pubrec_v311_fixed_header_flags", V311, hx("51 02 0001"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1")
bad("pubrec_v5_reason_92", V5, hx("50 03 0001 92"),
    MalformedPacket, MALFORMED, "MQTT-3.5.2-1")
bad("pubrec_v5_reason_18", V5, hx("50 03 0001 18"),
    MalformedPacket, MALFORMED, "MQTT-3.5.2-1")
bad("pubrec_v5_subscription_identifier_not_allowed", V5, hx("50 06 0001 00 02 0b 01"),
    MalformedPacket, MALFORMED, UNLABELLED)

ok("pubrel_v311", V311, hx("62 02 0001"), PubRel(1), labels=("MQTT-3.6.1-1",))
ok("pubrel_v31", V31, hx("62 02 0001"), PubRel(1), labels=("MQTT-3.6.1-1",))
ok("pubrel_v5_short", V5, hx("62 02 0001"), PubRel(1), labels=("MQTT-3.6.2-1",))
# MQTT 3.1 gives PUBREL QoS 1 and sets DUP when it is resent; 3.1.1 and 5.0 reserve the flags.
ok("pubrel_v31_dup_resent", V31, hx("6a 02 0001"), PubRel(1), labels=("MQTT-3.6.1-1",),
   canonical=False)
ok("pubrel_v5_packet_id_not_found", V5, hx("62 03 0001 92"), PubRel(1, 0x92),
   labels=("MQTT-3.6.2-1",))
ok("pubrel_v5_properties", V5, hx("62 0a 0001 92 06 1f 0003 6e6f70"),
   PubRel(1, 0x92, P(reason_string="nop")),
   labels=("MQTT-3.6.2-2",))
ok("pubrel_v5_explicit_success_empty_properties", V5, hx("62 04 0001 00 00"), PubRel(1),
   labels=("MQTT-3.6.2-1",), canonical=False)

bad("pubrel_v311_fixed_header_flags_0", V311, hx("60 02 0001"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.6.1-1",))
bad("pubrel_v31_fixed_header_flags_0", V31, hx("60 02 0001"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.6.1-1",))
bad("pubrel_v311_dup", V311, hx("6a 02 0001"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.6.1-1", "MQTT-2.2.2-2"))
bad("pubrel_v31_dup_qos_0", V31, hx("68 02 0001"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.6.1-1",))
bad("pubrel_v31_dup_retain", V31, hx("6b 02 0001"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.6.1-1",))
bad("pubrel_v5_fixed_header_flags_3", V5, hx("63 02 0001"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.6.1-1",))
bad("pubrel_v5_fixed_header_flags_a", V5, hx("6a 02 0001"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.6.1-1",))
bad("pubrel_v311_packet_id_0", V311, hx("62 02 0000"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-2.2.1-5")
bad("pubrel_v311_extra_byte", V311, hx("62 03 0001 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("pubrel_v5_reason_80", V5, hx("62 03 0001 80"),
    MalformedPacket, MALFORMED, "MQTT-3.6.2-1")
bad("pubrel_v5_reason_10", V5, hx("62 03 0001 10"),
    MalformedPacket, MALFORMED, "MQTT-3.6.2-1")

ok("pubcomp_v311", V311, hx("70 02 0001"), PubComp(1), labels=("MQTT-4.3.3-11",))
ok("pubcomp_v31", V31, hx("70 02 1234"), PubComp(0x1234), labels=("MQTT-2.3.1-6",))
ok("pubcomp_v5_short", V5, hx("70 02 0001"), PubComp(1), labels=("MQTT-3.7.2-1",))
ok("pubcomp_v5_packet_id_not_found", V5, hx("70 03 0001 92"), PubComp(1, 0x92),
   labels=("MQTT-3.7.2-1",))
ok("pubcomp_v5_success_with_properties", V5, hx("70 0b 0001 00 07 26 0001 6b 0001 76"),
   PubComp(1, 0, P(user_properties=KV)),
   labels=("MQTT-3.7.2-3",))

bad("pubcomp_v311_fixed_header_flags", V311, hx("72 02 0001"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1")
bad("pubcomp_v311_packet_id_0", V311, hx("70 02 0000"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-2.2.1-5")
bad("pubcomp_v311_extra_byte", V311, hx("70 03 0001 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("pubcomp_v5_reason_10", V5, hx("70 03 0001 10"),
    MalformedPacket, MALFORMED, "MQTT-3.7.2-1")
bad("pubcomp_v5_reason_97", V5, hx("70 03 0001 97"),
    MalformedPacket, MALFORMED, "MQTT-3.7.2-1")
bad("pubcomp_v5_truncated", V5, hx("70 01 00"),
    MalformedPacket, MALFORMED, UNLABELLED)

# =============================================================================================
# SUBSCRIBE

ok("subscribe_v311_single", V311, hx("82 06 0001 0001 61 01"),
   Subscribe(1, (Subscription("a", 1),)),
   labels=("MQTT-3.8.3-1", "MQTT-3.8.1-1"))
ok("subscribe_v311_wildcards", V311,
   hx("82 14 000a 0003 612f2b 00 0001 23 02 0005 2b2f622f23 01"),
   Subscribe(10, (Subscription("a/+"), Subscription("#", 2), Subscription("+/b/#", 1))),
   labels=("MQTT-4.7.1-1", "MQTT-4.7.1-2", "MQTT-3.8.4-4"))
ok("subscribe_v31_single", V31, hx("82 06 0001 0001 61 00"),
   Subscribe(1, (Subscription("a"),)),
   labels=("MQTT-3.8.3-1",))
ok("subscribe_v31_dup_resent", V31, hx("8a 06 0001 0001 61 00"),
   Subscribe(1, (Subscription("a"),)),
   labels=("MQTT-3.8.1-1",), canonical=False)
ok("subscribe_v311_share_prefix_is_a_plain_filter", V311,
   hx("82 0f 0001 000a 2473686172652f672f61 00"),
   Subscribe(1, (Subscription("$share/g/a"),)),
   labels=("MQTT-4.7.2-1",))
ok("subscribe_v5_single", V5, hx("82 07 0001 00 0001 61 01"),
   Subscribe(1, (Subscription("a", 1),)),
   labels=("MQTT-3.8.3-1", "MQTT-2.2.2-1"))
ok("subscribe_v5_options", V5, hx("82 0b 0002 00 0001 61 2e 0001 62 11"),
   Subscribe(2, (Subscription("a", 2, True, True, 2), Subscription("b", 1, False, False, 1))),
   labels=("MQTT-3.8.3-3", "MQTT-3.3.1-10", "MQTT-3.3.1-11", "MQTT-3.3.1-13"))
ok("subscribe_v5_subscription_identifier_and_user_properties", V5,
   hx("82 17 0001 10 0b 05 26 0001 6b 0001 76 26 0001 6b 0001 77 0001 61 00"),
   Subscribe(1, (Subscription("a"),), P(subscription_identifiers=(5,),
                                        user_properties=(("k", "v"), ("k", "w")))),
   labels=("MQTT-3.3.4-3",))
ok("subscribe_v5_subscription_identifier_max", V5, hx("82 0c 0001 05 0b ffffff7f 0001 61 00"),
   Subscribe(1, (Subscription("a"),), P(subscription_identifiers=(268_435_455,))),
   labels=("MQTT-1.5.5-1",))
ok("subscribe_v5_shared", V5, hx("82 12 0001 00 000c 2473686172652f672f612f23 01"),
   Subscribe(1, (Subscription("$share/g/a/#", 1),)),
   labels=("MQTT-4.8.2-1", "MQTT-4.8.2-2"))
ok("subscribe_v5_lone_wildcards", V5, hx("82 0b 0001 00 0001 2b 00 0001 23 00"),
   Subscribe(1, (Subscription("+"), Subscription("#"))),
   labels=("MQTT-4.7.1-1", "MQTT-4.7.1-2"))
ok("subscribe_v5_dollar_share_alone_is_a_plain_filter", V5,
   hx("82 0c 0001 00 0006 247368617265 00"),
   Subscribe(1, (Subscription("$share"),)),
   labels=("MQTT-4.8.2-1",))

bad("subscribe_v311_reserved_qos_bits", V311, hx("82 06 0001 0001 61 04"),
    MalformedPacket, MALFORMED, "MQTT-3-8.3-4")
bad("subscribe_v311_qos3", V311, hx("82 06 0001 0001 61 03"),
    MalformedPacket, MALFORMED, "MQTT-3-8.3-4")
bad("subscribe_v31_reserved_bit_7", V31, hx("82 06 0001 0001 61 80"),
    MalformedPacket, MALFORMED, "MQTT-3-8.3-4")
bad("subscribe_v311_no_filter", V311, hx("82 02 0001"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.8.3-2", also=("MQTT-3.8.3-3",))
bad("subscribe_v311_packet_id_0", V311, hx("82 06 0000 0001 61 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-2.2.1-3", also=("MQTT-2.3.1-1",))
bad("subscribe_v311_fixed_header_flags_0", V311, hx("80 06 0001 0001 61 00"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.8.1-1",))
bad("subscribe_v311_dup", V311, hx("8a 06 0001 0001 61 00"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.8.1-1",))
bad("subscribe_v5_dup", V5, hx("8a 07 0001 00 0001 61 00"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.8.1-1",))
bad("subscribe_v5_fixed_header_flags_3", V5, hx("83 07 0001 00 0001 61 00"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.8.1-1",))
bad("subscribe_v311_hash_not_last", V311, hx("82 0a 0001 0005 612f232f62 00"),
    TopicFilterInvalid, FILTER_INVALID, "MQTT-4.7.1-1")
bad("subscribe_v311_hash_inside_level", V311, hx("82 07 0001 0002 6123 00"),
    TopicFilterInvalid, FILTER_INVALID, "MQTT-4.7.1-1")
bad("subscribe_v5_plus_inside_level", V5, hx("82 08 0001 00 0002 612b 00"),
    TopicFilterInvalid, FILTER_INVALID, "MQTT-4.7.1-2")
bad("subscribe_v311_plus_prefix", V311, hx("82 09 0001 0004 2b612f62 00"),
    TopicFilterInvalid, FILTER_INVALID, "MQTT-4.7.1-2")
bad("subscribe_v311_empty_filter", V311, hx("82 05 0001 0000 00"),
    TopicFilterInvalid, FILTER_INVALID, "MQTT-4.7.3-1")
bad("subscribe_v311_filter_null", V311, hx("82 07 0001 0002 6100 00"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-2", also=("MQTT-4.7.3-2",))
bad("subscribe_v311_filter_ill_formed_utf8", V311, hx("82 06 0001 0001 ff 00"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1", also=("MQTT-3.8.3-1",))
bad("subscribe_v311_missing_options", V311, hx("82 05 0001 0001 61"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("subscribe_v5_reserved_bit_6", V5, hx("82 07 0001 00 0001 61 40"),
    MalformedPacket, MALFORMED, "MQTT-3.8.3-5")
bad("subscribe_v5_reserved_bit_7", V5, hx("82 07 0001 00 0001 61 81"),
    MalformedPacket, MALFORMED, "MQTT-3.8.3-5")
bad("subscribe_v5_retain_handling_3", V5, hx("82 07 0001 00 0001 61 30"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("subscribe_v5_qos3", V5, hx("82 07 0001 00 0001 61 03"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("subscribe_v5_no_local_on_shared", V5, hx("82 10 0001 00 000a 2473686172652f672f61 04"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.8.3-4")
bad("subscribe_v5_share_name_empty", V5, hx("82 0f 0001 00 0009 2473686172652f2f61 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-4.8.2-1")
bad("subscribe_v5_share_name_plus", V5, hx("82 10 0001 00 000a 2473686172652f2b2f61 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-4.8.2-1")
bad("subscribe_v5_share_name_with_hash", V5, hx("82 11 0001 00 000b 2473686172652f67232f61 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-4.8.2-1")
bad("subscribe_v5_share_without_filter", V5, hx("82 0e 0001 00 0008 2473686172652f67 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-4.8.2-2")
bad("subscribe_v5_share_with_empty_filter", V5, hx("82 0f 0001 00 0009 2473686172652f672f 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-4.8.2-2")
bad("subscribe_v5_share_with_bad_filter", V5,
    hx("82 11 0001 00 000b 2473686172652f672f6123 00"),
    TopicFilterInvalid, FILTER_INVALID, "MQTT-4.7.1-1")
bad("subscribe_v5_subscription_identifier_repeated", V5, hx("82 0b 0001 04 0b 01 0b 02 0001 61 00"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("subscribe_v5_subscription_identifier_0", V5, hx("82 09 0001 02 0b 00 0001 61 00"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("subscribe_v5_reason_string_not_allowed", V5, hx("82 0c 0001 05 1f 0002 7273 0001 61 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("subscribe_v5_no_filter", V5, hx("82 03 0001 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.8.3-2")
bad("subscribe_v5_missing_property_length", V5, hx("82 02 0001"),
    MalformedPacket, MALFORMED, UNLABELLED, also=("MQTT-2.2.2-1",))

# =============================================================================================
# SUBACK

ok("suback_v311", V311, hx("90 03 0001 01"), SubAck(1, (1,)), labels=("MQTT-3.8.4-2",))
ok("suback_v311_return_codes", V311, hx("90 06 0001 00 01 02 80"), SubAck(1, (0, 1, 2, 0x80)),
   labels=("MQTT-3.9.3-1", "MQTT-3.9.3-2"))
ok("suback_v31", V31, hx("90 03 0001 00"), SubAck(1, (0,)), labels=("MQTT-3.9.3-2",))
ok("suback_v5_granted_qos0", V5, hx("90 04 0001 00 00"), SubAck(1, (0,)),
   labels=("MQTT-3.9.3-2",))
ok("suback_v5_every_reason_code", V5, hx("90 0f 0001 00 00 01 02 80 83 87 8f 91 97 9e a1 a2"),
   SubAck(1, (0, 1, 2, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2)),
   labels=("MQTT-3.9.3-2", "MQTT-3.8.4-6"))
ok("suback_v5_properties", V5, hx("90 10 0001 0c 1f 0002 7273 26 0001 6b 0001 76 00"),
   SubAck(1, (0,), P(reason_string="rs", user_properties=KV)),
   labels=("MQTT-3.9.2-1", "MQTT-3.9.2-2"))

bad("suback_v311_return_code_3", V311, hx("90 03 0001 03"),
    MalformedPacket, MALFORMED, "MQTT-3.9.3-2")
bad("suback_v311_v5_reason_code_87", V311, hx("90 03 0001 87"),
    MalformedPacket, MALFORMED, "MQTT-3.9.3-2")
bad("suback_v311_no_return_code", V311, hx("90 02 0001"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.8.4-6", also=("MQTT-3.8.4-5",))
bad("suback_v311_packet_id_0", V311, hx("90 03 0000 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-2.2.1-3")
bad("suback_v311_fixed_header_flags", V311, hx("92 03 0001 00"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1")
bad("suback_v5_reason_03", V5, hx("90 04 0001 00 03"),
    MalformedPacket, MALFORMED, "MQTT-3.9.3-2")
bad("suback_v5_reason_11", V5, hx("90 04 0001 00 11"),
    MalformedPacket, MALFORMED, "MQTT-3.9.3-2")
bad("suback_v5_no_reason_code", V5, hx("90 03 0001 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.8.4-6")
bad("suback_v5_subscription_identifier_not_allowed", V5, hx("90 06 0001 02 0b 01 00"),
    MalformedPacket, MALFORMED, UNLABELLED)

# =============================================================================================
# UNSUBSCRIBE

ok("unsubscribe_v311", V311, hx("a2 05 0001 0001 61"), Unsubscribe(1, ("a",)),
   labels=("MQTT-3.10.3-1", "MQTT-3.10.1-1"))
ok("unsubscribe_v311_wildcards", V311, hx("a2 0a 0002 0003 612f2b 0001 23"),
   Unsubscribe(2, ("a/+", "#")),
   labels=("MQTT-3.10.4-1", "MQTT-3.10.4-6"))
ok("unsubscribe_v31", V31, hx("a2 05 0001 0001 61"), Unsubscribe(1, ("a",)),
   labels=("MQTT-3.10.3-1",))
ok("unsubscribe_v31_dup_resent", V31, hx("aa 05 0001 0001 61"), Unsubscribe(1, ("a",)),
   labels=("MQTT-3.10.1-1",), canonical=False)
ok("unsubscribe_v5", V5, hx("a2 06 0001 00 0001 61"), Unsubscribe(1, ("a",)),
   labels=("MQTT-3.10.3-1", "MQTT-2.2.2-1"))
ok("unsubscribe_v5_user_property", V5, hx("a2 0d 0001 07 26 0001 6b 0001 76 0001 61"),
   Unsubscribe(1, ("a",), P(user_properties=KV)),
   labels=("MQTT-3.10.3-1",))
ok("unsubscribe_v5_shared", V5, hx("a2 0f 0001 00 000a 2473686172652f672f61"),
   Unsubscribe(1, ("$share/g/a",)),
   labels=("MQTT-4.8.2-1",))

bad("unsubscribe_v311_no_filter", V311, hx("a2 02 0001"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.10.3-2")
bad("unsubscribe_v311_dup", V311, hx("aa 05 0001 0001 61"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.10.1-1",))
bad("unsubscribe_v311_fixed_header_flags_0", V311, hx("a0 05 0001 0001 61"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.10.1-1",))
bad("unsubscribe_v5_fixed_header_flags_3", V5, hx("a3 06 0001 00 0001 61"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.10.1-1",))
bad("unsubscribe_v311_packet_id_0", V311, hx("a2 05 0000 0001 61"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-2.2.1-3")
bad("unsubscribe_v311_hash_not_last", V311, hx("a2 09 0001 0005 612f232f62"),
    TopicFilterInvalid, FILTER_INVALID, "MQTT-4.7.1-1")
bad("unsubscribe_v311_empty_filter", V311, hx("a2 04 0001 0000"),
    TopicFilterInvalid, FILTER_INVALID, "MQTT-4.7.3-1")
bad("unsubscribe_v311_filter_past_end", V311, hx("a2 05 0001 0005 61"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("unsubscribe_v5_no_filter", V5, hx("a2 03 0001 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.10.3-2")
bad("unsubscribe_v5_reason_string_not_allowed", V5, hx("a2 0b 0001 05 1f 0002 7273 0001 61"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("unsubscribe_v5_filter_overlong_utf8", V5, hx("a2 07 0001 00 0002 c0af"),
    MalformedPacket, MALFORMED, "MQTT-1.5.4-1", also=("MQTT-3.10.3-1",))

# =============================================================================================
# UNSUBACK: no payload before MQTT 5, one reason code per filter in MQTT 5.

ok("unsuback_v311", V311, hx("b0 02 0001"), UnsubAck(1), labels=("MQTT-3.10.4-4",))
ok("unsuback_v31", V31, hx("b0 02 0001"), UnsubAck(1), labels=("MQTT-3.10.4-5",))
ok("unsuback_v5_success", V5, hx("b0 04 0001 00 00"), UnsubAck(1, (0,)),
   labels=("MQTT-3.11.3-1", "MQTT-3.11.3-2"))
ok("unsuback_v5_every_reason_code", V5, hx("b0 0a 0001 00 00 11 80 83 87 8f 91"),
   UnsubAck(1, (0, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91)),
   labels=("MQTT-3.11.3-2",))
ok("unsuback_v5_properties", V5, hx("b0 0a 0001 06 1f 0003 6e6f70 11"),
   UnsubAck(1, (0x11,), P(reason_string="nop")),
   labels=("MQTT-3.11.2-1",))

bad("unsuback_v311_extra_byte", V311, hx("b0 03 0001 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("unsuback_v311_packet_id_0", V311, hx("b0 02 0000"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-2.2.1-3", also=("MQTT-2.2.1-6",))
bad("unsuback_v311_fixed_header_flags", V311, hx("b2 02 0001"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1")
bad("unsuback_v5_reason_10", V5, hx("b0 04 0001 00 10"),
    MalformedPacket, MALFORMED, "MQTT-3.11.3-2")
bad("unsuback_v5_reason_02", V5, hx("b0 04 0001 00 02"),
    MalformedPacket, MALFORMED, "MQTT-3.11.3-2")
bad("unsuback_v5_no_reason_code", V5, hx("b0 03 0001 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-3.11.3-1")
bad("unsuback_v5_without_property_length", V5, hx("b0 02 0001"),
    MalformedPacket, MALFORMED, UNLABELLED, also=("MQTT-2.2.2-1",))

# =============================================================================================
# PINGREQ, PINGRESP

ok("pingreq_v311", V311, hx("c0 00"), PingReq(), labels=("MQTT-3.12.4-1",))
ok("pingreq_v31", V31, hx("c0 00"), PingReq(), labels=("MQTT-3.12.4-1",))
ok("pingreq_v5", V5, hx("c0 00"), PingReq(), labels=("MQTT-3.12.4-1",))
ok("pingreq_twice", V311, hx("c0 00 c0 00"), PingReq(), PingReq(), labels=("MQTT-6.0.0-2",))
ok("pingresp_v311", V311, hx("d0 00"), PingResp(), labels=("MQTT-3.12.4-1",))
ok("pingresp_v5", V5, hx("d0 00"), PingResp(), labels=("MQTT-3.12.4-1",))

bad("pingreq_v311_non_zero_length", V311, hx("c0 01 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("pingreq_v311_fixed_header_flags", V311, hx("c1 00"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-2.2.2-1",))
bad("pingreq_v5_fixed_header_flags", V5, hx("c8 00"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1")
bad("pingreq_v311_remaining_length_not_minimal", V311, hx("c0 8000"),
    MalformedPacket, MALFORMED, "MQTT-1.5.5-1")
bad("pingresp_v5_non_zero_length", V5, hx("d0 01 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("pingresp_v311_fixed_header_flags", V311, hx("d2 00"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1")

# =============================================================================================
# DISCONNECT: empty before MQTT 5; reason code and properties in MQTT 5.

ok("disconnect_v311", V311, hx("e0 00"), Disconnect(), labels=("MQTT-3.14.4-3",))
ok("disconnect_v31", V31, hx("e0 00"), Disconnect(), labels=("MQTT-3.14.4-3",))
ok("disconnect_v5_normal", V5, hx("e0 00"), Disconnect(), labels=("MQTT-3.14.2-1",))
ok("disconnect_v5_with_will_message", V5, hx("e0 01 04"), Disconnect(4),
   labels=("MQTT-3.14.2-1", "MQTT-3.1.2-8"))
ok("disconnect_v5_session_taken_over", V5, hx("e0 01 8e"), Disconnect(0x8E),
   labels=("MQTT-3.1.4-3",))
ok("disconnect_v5_bad_authentication_method", V5, hx("e0 01 8c"), Disconnect(0x8C),
   labels=("MQTT-3.14.2-1",))
ok("disconnect_v5_explicit_normal", V5, hx("e0 01 00"), Disconnect(),
   labels=("MQTT-3.14.2-1",), canonical=False)
ok("disconnect_v5_normal_empty_properties", V5, hx("e0 02 00 00"), Disconnect(),
   labels=("MQTT-3.14.2-1",), canonical=False)
ok("disconnect_v5_properties", V5,
   hx("e0 18 9c 16 11 00000000 1c 0002 7372 1f 0002 7273 26 0001 6b 0001 76"),
   Disconnect(0x9C, P(session_expiry_interval=0, server_reference="sr", reason_string="rs",
                      user_properties=KV)),
   labels=("MQTT-3.14.2-3", "MQTT-3.14.2-4"))

bad("disconnect_v311_non_zero_length", V311, hx("e0 01 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("disconnect_v311_fixed_header_flags", V311, hx("e1 00"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.14.1-1",))
bad("disconnect_v5_fixed_header_flags", V5, hx("e2 00"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.14.1-1",))
bad("disconnect_v5_reason_84", V5, hx("e0 01 84"),
    MalformedPacket, MALFORMED, "MQTT-3.14.2-1")
bad("disconnect_v5_reason_01", V5, hx("e0 01 01"),
    MalformedPacket, MALFORMED, "MQTT-3.14.2-1")
bad("disconnect_v5_reason_92", V5, hx("e0 01 92"),
    MalformedPacket, MALFORMED, "MQTT-3.14.2-1")
bad("disconnect_v5_receive_maximum_not_allowed", V5, hx("e0 05 00 03 21 0001"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("disconnect_v5_session_expiry_repeated", V5, hx("e0 0c 00 0a 11 00000000 11 00000000"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("disconnect_v5_trailing_byte", V5, hx("e0 03 00 00 00"),
    MalformedPacket, MALFORMED, UNLABELLED)

# =============================================================================================
# AUTH: MQTT 5 only.

ok("auth_v5_success", V5, hx("f0 00"), Auth(), labels=("MQTT-3.15.2-1",))
ok("auth_v5_continue", V5, hx("f0 0c 18 0a 15 0002 6d31 16 0002 abcd"),
   Auth(0x18, P(authentication_method="m1", authentication_data=b"\xab\xcd")),
   labels=("MQTT-4.12.0-2", "MQTT-4.12.0-3"))
ok("auth_v5_reauthenticate", V5, hx("f0 07 19 05 15 0002 6d31"),
   Auth(0x19, P(authentication_method="m1")),
   labels=("MQTT-4.12.1-1",))
ok("auth_v5_reason_string_and_user_property", V5,
   hx("f0 13 18 11 15 0002 6d31 1f 0002 7273 26 0001 6b 0001 76"),
   Auth(0x18, P(authentication_method="m1", reason_string="rs", user_properties=KV)),
   labels=("MQTT-3.15.2-2", "MQTT-3.15.2-3"))
ok("auth_v5_explicit_success", V5, hx("f0 01 00"), Auth(),
   labels=("MQTT-3.15.2-1",), canonical=False)
ok("auth_v5_success_empty_properties", V5, hx("f0 02 00 00"), Auth(),
   labels=("MQTT-3.15.2-1",), canonical=False)

bad("auth_v5_reason_01", V5, hx("f0 01 01"),
    MalformedPacket, MALFORMED, "MQTT-3.15.2-1")
bad("auth_v5_reason_80", V5, hx("f0 01 80"),
    MalformedPacket, MALFORMED, "MQTT-3.15.2-1")
bad("auth_v5_fixed_header_flags", V5, hx("f1 00"),
    MalformedPacket, MALFORMED, "MQTT-2.1.3-1", also=("MQTT-3.15.1-1",))
bad("auth_v5_session_expiry_not_allowed", V5, hx("f0 07 18 05 11 00000001"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("auth_v5_method_repeated", V5, hx("f0 0c 18 0a 15 0002 6d31 15 0002 6d32"),
    ProtocolError, PROTOCOL_ERROR, UNLABELLED)
bad("auth_v5_trailing_byte", V5, hx("f0 03 00 00 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("auth_v311", V311, hx("f0 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-4.8.0-1")
bad("auth_v31", V31, hx("f0 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-4.8.0-1")
bad("auth_v311_with_body", V311, hx("f0 02 18 00"),
    ProtocolError, PROTOCOL_ERROR, "MQTT-4.8.0-1")

# =============================================================================================
# Fixed header: reserved packet type, Remaining Length encoding, Maximum Packet Size.

bad("packet_type_0_v311", V311, hx("00 00"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("packet_type_0_v5", V5, hx("00 02 0001"),
    MalformedPacket, MALFORMED, UNLABELLED)
bad("remaining_length_five_bytes", V311, hx("30 ffffffff7f"),
    MalformedPacket, MALFORMED, "MQTT-1.5.5-1")
bad("remaining_length_five_bytes_v5", V5, hx("c0 8080808001"),
    MalformedPacket, MALFORMED, "MQTT-1.5.5-1")
bad("remaining_length_not_minimal_two_bytes", V311, hx("30 8000"),
    MalformedPacket, MALFORMED, "MQTT-1.5.5-1")
bad("remaining_length_not_minimal_three_bytes", V5, hx("c0 808000"),
    MalformedPacket, MALFORMED, "MQTT-1.5.5-1")
bad("remaining_length_not_minimal_before_connect", BEFORE_CONNECT,
    hx(f"10 8d00 {MQTT} 04 02 003c 0001 63"),
    MalformedPacket, MALFORMED, "MQTT-1.5.5-1")
bad("subscribe_v31_exceeds_maximum_packet_size", V31, hx("82 07"),
    PacketTooLarge, TOO_LARGE, "MQTT-3.2.2-15", max_packet_size=8)
