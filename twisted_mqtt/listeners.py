"""Listeners: one child service of ``BrokerService`` per endpoint, each tracking its connections.

Stopping a listener's service closes its port and disconnects the clients it accepted (MQTT 5
clients with DISCONNECT 0x8B); its Deferred fires once they are all gone.
"""

from __future__ import annotations

import errno
import re
from typing import TYPE_CHECKING, Any, List, Optional, Set

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_mqtt.packets import ReasonCode
from twisted_mqtt.transport import use_lean_server

if TYPE_CHECKING:
    from twisted_mqtt.broker import Broker
    from twisted_mqtt.connection import Connection

log = Logger()

DEFAULT_BACKLOG = 1024
"""The listen queue of client listeners whose endpoint string gives none (Twisted's default is
50).  A burst of connections -- clients reconnecting after a restart, or 64 opened at once by
the benchmark's idle scenario -- overflowed 50: the kernel dropped their handshakes and the
clients retried after a second.  Linux caps it at ``net.core.somaxconn``."""
_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix", "mqtts")
"""Endpoint types that take ``backlog=``."""


def with_backlog(endpoint: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """``endpoint`` with ``:backlog=N`` added if its type takes one and it gives none (also
    inside ``haproxy:``)."""
    if endpoint.startswith("haproxy:"):
        return "haproxy:" + with_backlog(endpoint[len("haproxy:"):], backlog)
    kind, _, rest = endpoint.partition(":")
    if kind.lower() not in _BACKLOG_TYPES or not rest or "backlog=" in rest:
        return endpoint
    return f"{endpoint}:backlog={backlog}"


def format_address(address: Any) -> str:
    """A listening or peer address as text: ``host:port``, ``[v6host]:port`` or a socket path."""
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return str(address)


class ListenError(CannotListenError):
    """A listener cannot listen (the port is in use, binding it needs a privilege, the socket's
    directory cannot be written): one line naming the listener and the reason."""

    def __init__(self, kind: str, endpoint: str, reason: BaseException) -> None:
        super().__init__(getattr(reason, "interface", None), getattr(reason, "port", None),
                         getattr(reason, "socketError", reason))
        self.kind = kind
        self.endpoint = endpoint

    def __str__(self) -> str:
        cause = self.socketError
        text = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        privileged = isinstance(self.port, int) and 0 < self.port < 1024
        if privileged and isinstance(cause, OSError) and cause.errno in (errno.EACCES,
                                                                         errno.EPERM):
            text += (" (a port below 1024 needs root or CAP_NET_BIND_SERVICE, or a systemd "
                     "socket unit: docs/listeners.md)")
        return f"cannot listen for {self.kind} on {self.endpoint}: {text}"


class ConnectionTracker:
    """The live connections of one listener, so that stopping it can disconnect them."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.connections: Set[Connection] = set()
        self._drained: List[Deferred[None]] = []

    def opened(self, connection: Connection) -> None:
        """A connection was accepted."""
        self.connections.add(connection)

    def closed(self, connection: Connection) -> None:
        """A connection's transport is gone."""
        self.connections.discard(connection)
        if not self.connections and self._drained:
            drained, self._drained = self._drained, []
            for waiting in drained:
                waiting.callback(None)

    def disconnect_all(self) -> Deferred[None]:
        """Disconnect every connection (v5: DISCONNECT 0x8B); fire once all are closed."""
        for connection in list(self.connections):
            connection.shutdown(ReasonCode.SERVER_SHUTTING_DOWN)
        self.broker.flush()
        if not self.connections:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._drained.append(waiting)
        return waiting


class ListenerService(Service):
    """Listens on one Twisted server endpoint string while running.

    ``kind`` names what it serves in the log line written once it listens:
    ``listening for KIND on ENDPOINT at ADDRESS``.  ``backlog``, if given, is the listen queue
    used when the endpoint string sets none.  With ``lean``, a TCP port (also under TLS or
    PROXY protocol) gives its connections ``LeanServer`` transports.
    """

    def __init__(self, reactor: Any, endpoint: str, factory: IProtocolFactory, kind: str,
                 tracker: Optional[ConnectionTracker] = None,
                 backlog: Optional[int] = None, lean: bool = False) -> None:
        self.description = endpoint
        self.lean = lean
        listen = endpoint if backlog is None else with_backlog(endpoint, backlog)
        self.endpoint = serverFromString(reactor, listen)
        self.factory = factory
        self.kind = kind
        self.tracker = tracker
        self.port: Optional[IListeningPort] = None
        self._listening: Optional[Deferred[Any]] = None
        self._synchronous = False
        self._failure: Optional[Failure] = None

    @property
    def listening(self) -> bool:
        """Whether the port is open."""
        return self.port is not None

    def privilegedStartService(self) -> None:
        """Listen before privileges are dropped (a bad endpoint fails the start)."""
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        """Listen, unless ``privilegedStartService`` already did."""
        super().startService()
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        self._synchronous = True
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listened, self._failed)
        self._synchronous = False
        failure, self._failure = self._failure, None
        if failure is not None:
            self._listening = None
            reason = failure.value or Exception(failure.getErrorMessage())
            raise ListenError(self.kind, self.description, reason) from reason

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        if self.lean:
            use_lean_server(port)
        log.info("listening for {kind} on {endpoint} at {address}", kind=self.kind,
                 endpoint=self.description, address=format_address(port.getHost()))

    def _failed(self, failure: Failure) -> None:
        if self._synchronous:
            self._failure = failure
        elif not failure.check(CancelledError):
            log.failure("cannot listen on {endpoint}", failure, endpoint=self.description)

    def stopService(self) -> Deferred[None]:
        """Close the port and disconnect this listener's clients; fire when both are done."""
        super().stopService()
        waits: List[Deferred[Any]] = []
        port, self.port = self.port, None
        if port is not None:
            waits.append(maybeDeferred(port.stopListening))
        elif self._listening is not None:
            self._listening.cancel()
        self._listening = None
        if self.tracker is not None:
            waits.append(self.tracker.disconnect_all())
        stopped: Deferred[Any] = gatherResults(waits)
        return stopped.addCallback(lambda _: None)


def loopback_endpoint(endpoint: str) -> str:
    """A bare port or a ``tcp:``/``ssl:`` endpoint without ``interface=`` listens on loopback
    only (127.0.0.1); other endpoints are left as they are."""
    if endpoint.isdigit():
        return f"tcp:{endpoint}:interface=127.0.0.1"
    if re.match(r"^(tcp|ssl):", endpoint) and "interface=" not in endpoint:
        return endpoint + ":interface=127.0.0.1"
    return endpoint
