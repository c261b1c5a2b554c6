"""The thin Twisted shell: a Protocol and Factory that feed bytes to a ``Connection``."""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocolNegotiationFactory,
    IPushProducer,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mqtt.broker import Broker
from twisted_mqtt.connection import Connection
from twisted_mqtt.listeners import ConnectionTracker
from twisted_mqtt.tls import certificate_subject


def peer_host(transport: Any) -> Optional[str]:
    """The peer's host address, or None for a Unix socket or an in-memory peer.

    Behind a ``haproxy:`` endpoint this is the client address the PROXY header gave.
    """
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) and host else None


@implementer(IPushProducer, IHandshakeListener)
class MQTTProtocol(Protocol):
    """Feeds a transport's bytes to a ``Connection`` and relays back-pressure to it."""

    connection: Connection

    def __init__(self, broker: Broker, listener: str = "",
                 tracker: Optional[ConnectionTracker] = None) -> None:
        self.broker = broker
        self.listener = listener
        self.tracker = tracker
        self._first_data = True

    def connectionMade(self) -> None:
        """Create the connection state machine and register for back-pressure."""
        transport: Any = self.transport
        self.connection = Connection(self.broker, transport, peer_host(transport), self.listener)
        if self.tracker is not None:
            self.tracker.opened(self.connection)
        transport.registerProducer(self, True)

    def handshakeCompleted(self) -> None:
        """TLS is up (before any MQTT byte arrives): note the client certificate's subject."""
        subject, common_name = certificate_subject(self.transport)
        self.connection.certificate_subject = subject
        self.connection.certificate_common_name = common_name

    def dataReceived(self, data: bytes) -> None:
        """Hand bytes to the connection."""
        if self._first_data:
            # Behind a haproxy: endpoint the PROXY header has been read by now, and only now
            # does getPeer() give the client's address rather than the proxy's.
            self._first_data = False
            self.connection.address = peer_host(self.transport)
        self.connection.data_received(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Detach the connection from its session."""
        self.connection.connection_lost()
        if self.tracker is not None:
            self.tracker.closed(self.connection)

    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        self.connection.pause()

    def resumeProducing(self) -> None:
        """The transport's buffer drained."""
        self.connection.resume()

    def stopProducing(self) -> None:
        """The transport is closing; nothing to do."""


@implementer(IProtocolNegotiationFactory)
class MQTTFactory(Factory):
    """Builds an ``MQTTProtocol`` per accepted connection of one listener, and tracks them."""

    def __init__(self, broker: Broker, listener: str = "") -> None:
        self.broker = broker
        self.listener = listener
        self.tracker = ConnectionTracker(broker)

    def buildProtocol(self, addr: Any) -> MQTTProtocol:
        """A protocol bound to this factory's broker."""
        protocol = MQTTProtocol(self.broker, self.listener, self.tracker)
        protocol.factory = self
        return protocol

    def acceptableProtocols(self) -> List[bytes]:
        """ALPN over TLS: ``mqtt``.  A client offering other protocols only is refused at the
        handshake (Twisted's ALPN callback finds no overlap)."""
        return [b"mqtt"]
