"""One network connection of the client: bytes in to the decoder, packets to the client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mqtt.codec import CodecError, Decoder

if TYPE_CHECKING:
    from twisted_mqtt.client._client import MQTTClient


@implementer(IPushProducer)
class MQTTClientProtocol(Protocol):
    """One network connection of an ``MQTTClient``: bytes in to the decoder, bytes out; the
    producer of its transport, so that a full buffer holds back new messages."""

    transport: Any

    def __init__(self, client: MQTTClient) -> None:
        self.client = client
        self.decoder = Decoder(client.protocol_level, client.maximum_packet_size)
        self.closing = False
        """The client closes this connection: what the server still sends is not read."""

    def connectionMade(self) -> None:
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:  # told when the transport's buffer fills and drains
            register(self, True)
        self.client._transport_made(self)

    def pauseProducing(self) -> None:
        """The transport's buffer is full: new messages wait in the client's queue."""
        self.client._paused(self, True)

    def resumeProducing(self) -> None:
        """The transport's buffer drained: what waits goes."""
        self.client._paused(self, False)

    def stopProducing(self) -> None:
        """The connection is closing; ``connectionLost`` follows."""

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        error: Optional[CodecError] = None
        try:
            packets = self.decoder.feed(data)
        except CodecError as exc:
            packets, error = exc.decoded, exc
        for packet in packets:
            if self.closing:  # a packet before this one was a protocol error
                return
            self.client._received(self, packet)
        if error is not None and not self.closing:
            self.client._protocol_error(self, error.reason_code, str(error))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.client._transport_lost(self, reason)


class ProtocolFactory(Factory):
    """Makes the ``MQTTClientProtocol`` of each connection of one client."""

    def __init__(self, client: MQTTClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> MQTTClientProtocol:
        return MQTTClientProtocol(self.client)


def client_endpoint(reactor: Any, description: str) -> IStreamClientEndpoint:
    """A client endpoint from a Twisted endpoint string (``tcp:``, ``tls:``, ``unix:``...) or a
    WebSocket URL (``ws://host:port/path``, ``wss://...``)."""
    if description.startswith(("ws://", "wss://")):
        from twisted_mqtt.client._websocket import WebSocketEndpoint

        return WebSocketEndpoint(reactor, description)
    return clientFromString(reactor, description)
