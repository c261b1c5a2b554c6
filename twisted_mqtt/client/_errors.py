"""The exceptions the MQTT client's Deferreds fail with."""

from __future__ import annotations

from twisted_mqtt.packets import (
    PacketType,
    ProtocolLevel,
    connect_return_code_name,
    reason_name,
)
from twisted_mqtt.properties import NO_PROPERTIES, Properties

REASON_SHOWN = 200
"""Characters of a server's reason string shown in messages and logs."""


def shown_reason(text: str) -> str:
    """A server's reason string as shown: at most ``REASON_SHOWN`` characters, control
    characters escaped (a server cannot write lines of its own into the log)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:REASON_SHOWN])
    return shown + "..." if len(text) > REASON_SHOWN else shown


def _with_reason_string(text: str, properties: Properties) -> str:
    reason = properties.reason_string
    return f"{text}: {shown_reason(reason)}" if reason else text


class MQTTClientError(Exception):
    """Something the client could not do."""


class ConnectionRefused(MQTTClientError):
    """The server refused the connection: a CONNACK with an error reason (v5) or return code
    (v3.1.1), named in the message, e.g. ``Not authorized (0x87)``."""

    def __init__(self, reason_code: int, protocol_level: int,
                 properties: Properties = NO_PROPERTIES) -> None:
        if protocol_level == ProtocolLevel.MQTT_5:
            text = f"{reason_name(reason_code, PacketType.CONNACK)} (0x{reason_code:02X})"
        else:
            text = f"{connect_return_code_name(reason_code)} (return code {reason_code})"
        super().__init__(_with_reason_string(text, properties))
        self.reason_code = reason_code
        self.protocol_level = protocol_level
        self.properties = properties


class PublishFailed(MQTTClientError):
    """The server answered a PUBLISH with an error reason code (v5), or the client could not send
    it as the server's limits stand (reason code of the limit, e.g. ``Packet too large (0x95)``)."""

    def __init__(self, reason_code: int, packet: str,
                 properties: Properties = NO_PROPERTIES) -> None:
        super().__init__(_with_reason_string(
            f"{packet}: {reason_name(reason_code)} (0x{reason_code:02X})", properties))
        self.reason_code = reason_code
        self.properties = properties


class QueueFull(MQTTClientError):
    """The client already holds its maximum of messages waiting to be sent."""


class ClientStopped(MQTTClientError):
    """``disconnect()`` was called before the request could complete."""
