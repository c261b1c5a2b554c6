"""A leaner TCP server transport for the MQTT listeners.

Twisted's ``tcp.Server.__init__`` stores, for every accepted connection, its log prefix and its
``repr`` as strings, the socket's ``fileno`` as a bound method, the peer's host a second time
and an empty list for queued writes: about 280 bytes of an idle connection's 1.8 KB.
``LeanServer`` declares those attributes as properties, so the assignments of Twisted's
``__init__`` (which still runs unchanged) keep nothing: each value is computed when it is read
(the log prefix and ``repr`` only when something is logged about the connection), and the write
list exists only while bytes wait in it.  Everything else is ``tcp.Server``.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from twisted.internet import tcp


def _closed() -> int:
    """The descriptor of a closed transport (as ``FileDescriptor.fileno`` gives)."""
    return -1


def _keep_nothing(self: Any, value: object) -> None:
    """The value is computed when read; nothing is stored."""


def _forget_nothing(self: Any) -> None:
    """Nothing was stored."""


def _fileno(self: Any) -> Callable[[], int]:
    try:
        return self.socket.fileno  # type: ignore[no-any-return]
    except AttributeError:  # closed: connectionLost deleted the socket
        return _closed


def _logstr(self: Any) -> str:
    protocol = getattr(self, "protocol", None)
    prefix = "closed" if protocol is None else self._getLogPrefix(protocol)
    return f"{prefix},{self.sessionno},{self.client[0]}"


def _repstr(self: Any) -> str:
    protocol = getattr(self, "protocol", None)
    name = "closed" if protocol is None else type(protocol).__name__
    port = getattr(self.server, "_realPortNumber", None)
    return f"<{name} #{self.sessionno} on {port}>"


def _hostname(self: Any) -> Any:
    return self.client[0]


def _temp_data_buffer(self: Any) -> List[bytes]:
    waiting = self._waiting
    if waiting is None:
        waiting = self._waiting = []
    return waiting  # type: ignore[no-any-return]


def _set_temp_data_buffer(self: Any, value: List[bytes]) -> None:
    if value:
        self._waiting = value
    elif self._waiting is not None:
        self._waiting = None


class LeanServer(tcp.Server):
    """``tcp.Server`` that stores per connection only what it cannot compute when asked."""

    _waiting: Optional[List[bytes]] = None
    """Writes queued by ``write`` for the reactor's next ``doWrite`` (Twisted's
    ``_tempDataBuffer``); None while there are none."""

    fileno = property(_fileno, _keep_nothing, _forget_nothing,  # type: ignore[assignment]
                      doc="The socket's ``fileno`` (-1 once closed).")
    logstr = property(_logstr, _keep_nothing,  # type: ignore[assignment]
                      doc="The log prefix: protocol, session number and peer host.")
    repstr = property(_repstr, _keep_nothing, doc="The ``repr``.")
    hostname = property(_hostname, _keep_nothing, doc="The peer's host.")
    _tempDataBuffer = property(_temp_data_buffer, _set_temp_data_buffer,  # type: ignore
                               doc="Twisted's list of queued writes, made when first used.")


def use_lean_server(port: Any) -> bool:
    """Make a listening TCP port (also under TLS or PROXY protocol) accept its connections as
    ``LeanServer`` transports; return whether it did (not for a Unix socket or another kind
    of port, which are left as they are)."""
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = LeanServer  # type: ignore[misc]
        return True
    return False
