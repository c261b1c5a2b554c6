"""The thin Twisted shell: a Protocol and Factory that feed bytes to a ``Connection``."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mqtt.broker import Broker
from twisted_mqtt.connection import Connection


def peer_host(transport: Any) -> Optional[str]:
    """The peer's host address, or None for a Unix socket or an in-memory peer."""
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) and host else None


@implementer(IPushProducer)
class MQTTProtocol(Protocol):
    """Feeds a transport's bytes to a ``Connection`` and relays back-pressure to it."""

    connection: Connection

    def __init__(self, broker: Broker, listener: str = "") -> None:
        self.broker = broker
        self.listener = listener

    def connectionMade(self) -> None:
        """Create the connection state machine and register for back-pressure."""
        transport: Any = self.transport
        self.connection = Connection(self.broker, transport, peer_host(transport), self.listener)
        transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        """Hand bytes to the connection."""
        self.connection.data_received(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Detach the connection from its session."""
        self.connection.connection_lost()

    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        self.connection.pause()

    def resumeProducing(self) -> None:
        """The transport's buffer drained."""
        self.connection.resume()

    def stopProducing(self) -> None:
        """The transport is closing; nothing to do."""


class MQTTFactory(Factory):
    """Builds an ``MQTTProtocol`` per accepted connection of one listener."""

    def __init__(self, broker: Broker, listener: str = "") -> None:
        self.broker = broker
        self.listener = listener

    def buildProtocol(self, addr: Any) -> MQTTProtocol:
        """A protocol bound to this factory's broker."""
        protocol = MQTTProtocol(self.broker, self.listener)
        protocol.factory = self
        return protocol
