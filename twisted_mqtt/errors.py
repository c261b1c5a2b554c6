"""Errors raised by the codec, each carrying the reason code the peer must be answered with."""

from __future__ import annotations

from typing import Any, List

from twisted_mqtt.packets import ReasonCode


class CodecError(Exception):
    """A received packet that the specification makes the receiver reject.

    ``reason_code`` is the MQTT 5 reason code for the DISCONNECT (or CONNACK) the server answers
    with; ``label`` is the normative statement of the specification that was broken.
    """

    reason_code: ReasonCode = ReasonCode.MALFORMED_PACKET
    decoded: List[Any] = []
    """Packets decoded from the same input before this error (set by ``Decoder.feed``)."""

    def __init__(self, message: str, label: str = "", reason_code: ReasonCode | None = None):
        super().__init__(message)
        self.message = message
        self.label = label
        if reason_code is not None:
            self.reason_code = reason_code

    def __str__(self) -> str:
        return f"{self.message} [{self.label}]" if self.label else self.message


class MalformedPacket(CodecError):
    """The packet does not follow the wire format (0x81)."""

    reason_code = ReasonCode.MALFORMED_PACKET


class ProtocolError(CodecError):
    """The packet is well formed but breaks a protocol rule (0x82)."""

    reason_code = ReasonCode.PROTOCOL_ERROR


class PacketTooLarge(CodecError):
    """The packet is larger than the receiver's Maximum Packet Size (0x95)."""

    reason_code = ReasonCode.PACKET_TOO_LARGE


class UnsupportedProtocolVersion(CodecError):
    """CONNECT names a protocol level or name this broker does not speak (0x84 / v3 code 1)."""

    reason_code = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION


class TopicNameInvalid(CodecError):
    """A topic name with wildcards or otherwise unusable (0x90)."""

    reason_code = ReasonCode.TOPIC_NAME_INVALID


class TopicFilterInvalid(CodecError):
    """A topic filter that breaks the wildcard rules (0x8F)."""

    reason_code = ReasonCode.TOPIC_FILTER_INVALID


class AckRefused(Exception):
    """An acknowledgement barrier (``Broker.ack_barriers``) could not make a message safe: the
    publisher is disconnected (a v5 one with ``reason_code``) and not acknowledged, so that a
    client that keeps its session sends the message again."""

    def __init__(self, reason: str, reason_code: int = ReasonCode.QUOTA_EXCEEDED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reason_code = reason_code
