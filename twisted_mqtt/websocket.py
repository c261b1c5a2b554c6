"""MQTT over WebSocket with Autobahn: each accepted WebSocket carries one MQTT ``Connection``.

MQTT packets travel in binary frames only [MQTT-6.0.0-1]: a text frame closes the connection
(close code 1003).  The subprotocol is ``mqtt`` (``mqttv3.1`` for old clients) [MQTT-6.0.0-3];
a client offering neither is refused with HTTP 400, and ``binary``/``base64`` are never chosen.
Frames are fed to the connection as they arrive, not buffered per message, so the MQTT limits
(maximum packet size) apply exactly as over TCP, and the TCP transport's back-pressure reaches
the connection as it does for a plain MQTT listener.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, List, Optional, Tuple, Union

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IProtocolNegotiationFactory, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mqtt._value import value
from twisted_mqtt.broker import Broker
from twisted_mqtt.connection import Connection
from twisted_mqtt.listeners import ConnectionTracker
from twisted_mqtt.protocol import peer_host
from twisted_mqtt.tls import certificate_subject

SUBPROTOCOLS = ("mqtt", "mqttv3.1")
"""The subprotocols accepted, in order of preference."""
UNSUPPORTED_DATA = 1003
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parse_network(text: str) -> Network:
    """A trusted proxy given as an address or a network (``10.0.0.1``, ``10.0.0.0/8``)."""
    return ipaddress.ip_network(text.strip(), strict=False)


def normalise_origin(origin: str) -> str:
    """An Origin header value or allow-list entry in the form compared: lower case, no slash."""
    return origin.strip().rstrip("/").lower()


def _ip(text: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


@value
class WebSocketSettings:
    """What a WebSocket listener accepts."""

    path: Optional[str] = None
    """The only request path accepted, or None for any."""
    origins: Tuple[str, ...] = ()
    """Allowed Origin header values (normalised); empty allows any.  Requests without an Origin
    header (non-browser clients) are accepted either way."""
    trusted_proxies: Tuple[Network, ...] = ()
    """Peers whose X-Forwarded-For header is believed."""

    @classmethod
    def build(cls, path: Optional[str] = None, origins: Iterable[str] = (),
              trusted_proxies: Iterable[str] = ()) -> WebSocketSettings:
        """Settings from the command line's texts."""
        return cls(path, tuple(normalise_origin(o) for o in origins),
                   tuple(parse_network(p) for p in trusted_proxies))

    def trusted(self, address: Optional[str]) -> bool:
        """Whether ``address`` is a trusted proxy."""
        ip = _ip(address) if address else None
        return ip is not None and any(ip in network for network in self.trusted_proxies)

    def client_address(self, peer: Optional[str], forwarded_for: Optional[str]) -> Optional[str]:
        """The client's address: from X-Forwarded-For if the peer is a trusted proxy (the
        rightmost entry that is not itself a trusted proxy), else the peer's."""
        if not forwarded_for or not self.trusted(peer):
            return peer
        address = peer
        for entry in reversed(forwarded_for.split(",")):
            ip = _ip(entry)
            if ip is None:
                break
            address = str(ip)
            if not self.trusted(address):
                break
        return address


class WebSocketTransport:
    """The transport a ``Connection`` writes to, over a WebSocket: binary messages out, the TCP
    (or TLS) transport's producer registration and abort underneath."""

    def __init__(self, protocol: MQTTWebSocketProtocol, peer: Any) -> None:
        self.protocol = protocol
        self.peer = peer

    def _transport(self) -> Any:
        return self.protocol.transport

    @property
    def disconnecting(self) -> bool:
        """True once the WebSocket is closing."""
        return bool(self.protocol.state != WebSocketProtocol.STATE_OPEN)

    def write(self, data: bytes) -> None:
        """Send bytes as one binary message (dropped once the WebSocket is closing)."""
        if self.protocol.state == WebSocketProtocol.STATE_OPEN:
            self.protocol.sendMessage(data, isBinary=True)

    def loseConnection(self) -> None:
        """Start the WebSocket closing handshake (normal closure)."""
        if self.protocol.state == WebSocketProtocol.STATE_OPEN:
            self.protocol.sendClose(1000)

    def abortConnection(self) -> None:
        """Drop the underlying connection now."""
        self._transport().abortConnection()

    def getPeer(self) -> Any:
        """The client's address (its X-Forwarded-For address behind a trusted proxy)."""
        return self.peer

    def getHost(self) -> Any:
        """The local address."""
        return self._transport().getHost()

    def pauseProducing(self) -> None:
        """Stop reading from the client (the underlying transport)."""
        self._transport().pauseProducing()

    def resumeProducing(self) -> None:
        """Read from the client again."""
        self._transport().resumeProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Register with the underlying transport, whose buffer is what fills."""
        self._transport().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """Unregister from the underlying transport."""
        self._transport().unregisterProducer()


@implementer(IPushProducer)
class MQTTWebSocketProtocol(WebSocketServerProtocol):
    """A WebSocket whose binary frames carry one MQTT connection."""

    factory: MQTTWebSocketFactory
    mqtt: Optional[Connection] = None
    client_peer: Any = None

    def onConnect(self, request: ConnectionRequest) -> str:
        """Check path, origin and subprotocol; work out the client's address."""
        settings = self.factory.settings
        if settings.path is not None and request.path != settings.path:
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, "no MQTT on this path")
        origin = request.headers.get("origin")
        if origin and settings.origins and normalise_origin(origin) not in settings.origins:
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        chosen = next((p for p in SUBPROTOCOLS if p in request.protocols), None)
        if chosen is None:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST,
                                 "MQTT over WebSocket needs the subprotocol mqtt")
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = peer_host(self.transport)
        client = settings.client_address(host, request.headers.get("x-forwarded-for"))
        if client != host and client is not None:
            kind = IPv6Address if ":" in client else IPv4Address
            peer = kind("TCP", client, 0)
        self.client_peer = peer
        return chosen

    def onOpen(self) -> None:
        """The WebSocket is open: start the MQTT connection on it."""
        bridge = WebSocketTransport(self, self.client_peer)
        factory = self.factory
        connection = self.mqtt = Connection(factory.broker, bridge, peer_host(bridge),
                                            factory.listener)
        subject, common_name = certificate_subject(self.transport)
        connection.certificate_subject = subject
        connection.certificate_common_name = common_name
        factory.tracker.opened(connection)
        bridge.registerProducer(self, True)

    def onMessageBegin(self, isBinary: bool) -> None:
        """A text frame is not MQTT: close the connection [MQTT-6.0.0-1]."""
        super().onMessageBegin(isBinary)
        if not isBinary:
            self.sendCloseFrame(UNSUPPORTED_DATA, b"MQTT needs binary frames")
            if self.mqtt is not None:
                self.mqtt.close()

    def onMessageFrameData(self, payload: bytes) -> None:
        """Feed a binary frame's bytes to the connection as they arrive."""
        connection = self.mqtt
        if connection is not None and self.message_is_binary:
            connection.data_received(payload)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Detach the MQTT connection from its session."""
        super().connectionLost(reason)
        connection = self.mqtt
        if connection is not None:
            connection.connection_lost()
            self.factory.tracker.closed(connection)

    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        if self.mqtt is not None:
            self.mqtt.pause()

    def resumeProducing(self) -> None:
        """The transport's buffer drained."""
        if self.mqtt is not None:
            self.mqtt.resume()

    def stopProducing(self) -> None:
        """The transport is closing; nothing to do."""


@implementer(IProtocolNegotiationFactory)
class MQTTWebSocketFactory(WebSocketServerFactory):
    """Builds an ``MQTTWebSocketProtocol`` per accepted WebSocket of one listener."""

    protocol = MQTTWebSocketProtocol  # type: ignore[assignment]
    noisy = False  # the listener logs where it listens; "Starting factory <...>" says nothing

    def __init__(self, broker: Broker, listener: str = "",
                 settings: Optional[WebSocketSettings] = None) -> None:
        super().__init__(server="twisted_mqtt")
        # Plain HTTP gets an error, not a status page.  setProtocolOptions turns
        # allowNullOrigin off unless told: onConnect decides about "Origin: null" (a page
        # opened from file://) as about any other origin.
        self.setProtocolOptions(webStatus=False, allowNullOrigin=True)
        self.broker = broker
        self.listener = listener
        self.settings = settings if settings is not None else WebSocketSettings()
        self.tracker = ConnectionTracker(broker)

    def acceptableProtocols(self) -> List[bytes]:
        """ALPN over TLS: HTTP/1.1, which browsers offer for WebSocket (without a match,
        Twisted's ALPN callback makes OpenSSL fail the handshake)."""
        return [b"http/1.1"]

