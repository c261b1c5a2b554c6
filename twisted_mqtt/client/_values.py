"""The client's values: reconnection policy, CONNACK result, received message, defaults."""

from __future__ import annotations

from typing import Any, Callable

from twisted_mqtt._value import value
from twisted_mqtt.packets import ProtocolLevel
from twisted_mqtt.properties import NO_PROPERTIES, Properties

V5 = ProtocolLevel.MQTT_5
RECEIVE_MAXIMUM = 65535
"""The Receive Maximum of a peer that states none."""
ROUTE_CACHE_SIZE = 10_000
"""Topics whose matching callbacks are remembered at once."""
CLOSE_TIMEOUT = 10.0
"""Seconds a closing connection may take to write what it queued (its DISCONNECT)."""
MAXIMUM_PACKET_SIZE = 1 << 20
"""The largest packet the client accepts by default (as the broker)."""


@value
class ReconnectPolicy:
    """How long to wait before each new attempt to connect: ``initial`` seconds, multiplied by
    ``factor`` after each failure up to ``maximum``, then shortened by a random fraction of up
    to ``jitter`` (so that many clients cut off together do not return together)."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and self.factor >= 1 and 0 <= self.jitter < 1):
            raise ValueError("a ReconnectPolicy needs 0 < initial <= maximum, factor >= 1 and "
                             f"0 <= jitter < 1, not {self!r}")

    def delay(self, attempt: int, draw: float) -> float:
        """The wait before attempt number ``attempt`` (0 after a success), ``draw`` in [0, 1)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * draw)


DEFAULT_RECONNECT = ReconnectPolicy()


@value
class ConnectResult:
    """What the server's CONNACK said to an accepted connection."""

    session_present: bool
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@value
class Message:
    """An application message received from the server (topic aliases already resolved)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


MessageCallback = Callable[[Message], Any]
