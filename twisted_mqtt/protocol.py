"""The thin Twisted shell: a Protocol and Factory that feed bytes to a ``Connection``.

Over a plain TCP transport the protocol is also what the ``Connection`` writes to: a small
output (under ``SMALL_WRITE`` bytes) is sent on the socket at once when the transport has
nothing buffered, instead of waiting for the reactor's next turn to report the socket writable
(which costs two ``epoll_ctl`` calls and a loop iteration per write).  Anything else, and any
part the socket does not take, goes through ``transport.write`` as before, so Twisted's
buffering, producer pausing and error handling stay in charge.  TLS, WebSocket, Unix and PROXY
transports always use ``transport.write``.
"""

from __future__ import annotations

import socket
from typing import Any, List, Optional

from twisted.internet.interfaces import (
    IHandshakeListener,
    ILoggingContext,
    IProtocol,
    IProtocolNegotiationFactory,
    IPushProducer,
)
from twisted.internet.protocol import Factory
from twisted.internet.tcp import Server as TCPServer
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mqtt.broker import Broker
from twisted_mqtt.connection import Connection
from twisted_mqtt.listeners import ConnectionTracker
from twisted_mqtt.tls import certificate_subject
from twisted_mqtt.transport import LeanServer


def peer_host(transport: Any) -> Optional[str]:
    """The peer's host address, or None for a Unix socket or an in-memory peer.

    Behind a ``haproxy:`` endpoint this is the client address the PROXY header gave.
    """
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) and host else None


SMALL_WRITE = 64 * 1024
"""Outputs shorter than this go straight to an idle plain TCP socket; larger ones (pipelined
bursts) are left to the reactor, which sends them as the socket drains."""


def direct_writable(transport: Any) -> bool:
    """Whether the protocol may send on ``transport``'s socket itself: only Twisted's own plain
    TCP server transport or its ``LeanServer`` (not another subclass such as a Unix socket,
    which may pass file descriptors with its data; not TLS, not a wrapper such as PROXY
    protocol's)."""
    kind = type(transport)
    return (kind is LeanServer or kind is TCPServer) and not transport.TLS


def set_tcp_nodelay(transport: Any, tcp: bool = False) -> bool:
    """Turn Nagle's algorithm off on a TCP transport (or one wrapping it, such as TLS or PROXY
    protocol, which pass attribute look-ups through); return whether it was done (not for a
    Unix socket or an in-memory transport).  The option is set on the socket directly: Twisted's
    ``setTcpNoDelay`` logs a traceback when it fails.  With ``tcp`` the transport is known to
    be a TCP one, and its socket's family is not looked at."""
    sock = getattr(transport, "socket", None)
    if not tcp and getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    except OSError:
        return False
    return True


@implementer(IPushProducer)
class OutputProducer:
    """Registered with a transport: relays its back-pressure (its write buffer is full, or
    drained) to the ``Connection`` writing to it."""

    __slots__ = ("connection",)

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        self.connection.pause()

    def resumeProducing(self) -> None:
        """The transport's buffer drained."""
        self.connection.resume()

    def stopProducing(self) -> None:
        """The transport is closing; nothing to do."""


@implementer(IProtocol, ILoggingContext, IPushProducer, IHandshakeListener)
class MQTTProtocol:
    """Feeds a transport's bytes to a ``Connection``; an ``OutputProducer`` relays the
    transport's back-pressure to it.

    Over a plain TCP transport it is also the transport the ``Connection`` writes to (see
    ``write``); it then passes closing and reading calls through to the real transport.

    It provides ``IProtocol`` without inheriting Twisted's ``Protocol``, so that it can have
    ``__slots__`` (an idle connection then keeps no attribute dict for it); its broker,
    listener name and tracker are its factory's.
    """

    __slots__ = ("factory", "transport", "connection", "_first_data")
    factory: MQTTFactory
    transport: Any
    connection: Connection
    _first_data: bool

    def __init__(self, factory: MQTTFactory) -> None:
        self.factory = factory
        self.transport = None
        self._first_data = True

    def makeConnection(self, transport: Any) -> None:
        """Bind to ``transport`` and set the connection up."""
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        """The prefix of Twisted's log lines about this connection's transport."""
        return "MQTTProtocol"

    def connectionMade(self) -> None:
        """Create the connection state machine and register for back-pressure."""
        transport = self.transport
        factory = self.factory
        plain = direct_writable(transport)
        if plain:
            # The peer's address is final now; behind a wrapper (PROXY protocol's) it is read
            # again with the first data.
            output: Any = self
            address = transport.client[0] or None
            self._first_data = False
        else:
            output = transport
            address = peer_host(transport)
        if factory.tcp_nodelay:
            set_tcp_nodelay(transport, plain)
        connection = self.connection = Connection(factory.broker, output, address,
                                                  factory.listener)
        factory.tracker.opened(connection)
        transport.registerProducer(OutputProducer(connection), True)

    # -- the transport the Connection writes to, over plain TCP --------------------------------

    def write(self, data: bytes) -> None:
        """Send ``data`` on the socket now if it is small and nothing is queued before it (no
        producer paused, not closing); otherwise, or for what the socket did not take, queue
        it with ``transport.write``.  A send that fails (``EAGAIN``, a reset) hands the data to
        the transport too, whose own attempt then reports the error as a lost connection."""
        transport: Any = self.transport
        if (len(data) < SMALL_WRITE and not transport._tempDataLen and not transport.dataBuffer
                and transport.connected and not transport.producerPaused
                and not transport.disconnecting and not transport._writeDisconnecting
                and not transport._aborting):
            try:
                sent = transport.socket.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def loseConnection(self) -> None:
        """Close once everything queued is written."""
        self.transport.loseConnection()

    def loseWriteConnection(self) -> None:
        """Half-close (FIN) once everything queued is written; keep reading."""
        self.transport.loseWriteConnection()

    def abortConnection(self) -> None:
        """Close now, dropping anything queued."""
        self.transport.abortConnection()

    def getPeer(self) -> Any:
        """The peer's address."""
        return self.transport.getPeer()

    def getHost(self) -> Any:
        """The local address."""
        return self.transport.getHost()

    # -- events from the transport -------------------------------------------------------------

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

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        """Detach the connection from its session."""
        connection = self.connection
        connection.connection_lost()
        self.factory.tracker.closed(connection)

    def pauseProducing(self) -> None:
        """Stop reading from the client (a publisher held back by a blocked subscriber)."""
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """Read from the client again."""
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """Stop reading for good."""
        self.transport.stopProducing()


@implementer(IProtocolNegotiationFactory)
class MQTTFactory(Factory):
    """Builds an ``MQTTProtocol`` per accepted connection of one listener, and tracks them."""

    noisy = False  # the listener logs where it listens; "Starting factory <...>" says nothing
    def __init__(self, broker: Broker, listener: str = "", tcp_nodelay: bool = True) -> None:
        self.broker = broker
        self.listener = listener
        self.tracker = ConnectionTracker(broker)
        self.tcp_nodelay = tcp_nodelay
        """Whether accepted TCP connections get TCP_NODELAY (Nagle's algorithm off)."""

    def buildProtocol(self, addr: Any) -> MQTTProtocol:  # type: ignore[override]
        """A protocol bound to this factory's broker."""
        return MQTTProtocol(self)

    def acceptableProtocols(self) -> List[bytes]:
        """ALPN over TLS: ``mqtt``.  A client offering other protocols only is refused at the
        handshake (Twisted's ALPN callback finds no overlap)."""
        return [b"mqtt"]
