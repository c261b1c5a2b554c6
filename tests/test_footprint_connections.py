"""Memory held per idle connection: by the broker's own objects, and in all over real TCP.

An idle connection is one that sent CONNECT (clean start, keep alive 60) and nothing since: it
holds its ``Connection``, decoder, ``ClientInfo`` and ``Session`` and its entries in the
broker's tables, but no empty containers (those are created on first use); over TCP also its
transport, socket object, peer address and ``MQTTProtocol``.  The bytes are counted with
``tracemalloc`` in this process, so the figure is exact and does not depend on timing.  CPython
only: PyPy has no ``tracemalloc`` (its objects are sized by its own collector).
"""

from __future__ import annotations

import gc
import platform
import socket
from typing import Any, List, Optional

import pytest
from twisted.internet import tcp
from twisted.internet.task import Clock

from twisted_mqtt import logs
from twisted_mqtt.auth import AllowAll
from twisted_mqtt.broker import Broker
from twisted_mqtt.capabilities import Capabilities
from twisted_mqtt.codec import encode
from twisted_mqtt.connection import CONNECTED, Connection
from twisted_mqtt.packets import Connect, ProtocolLevel
from twisted_mqtt.protocol import MQTTFactory
from twisted_mqtt.transport import use_lean_server

if platform.python_implementation() != "CPython":
    pytest.skip("tracemalloc measures CPython's allocations", allow_module_level=True)

import tracemalloc  # noqa: E402  (CPython only)

from tests.test_direct_write import FDReactor  # noqa: E402

COUNT = 1000
BOUND = 800
"""Bytes per idle connection: 750 with the connections' occasional state kept apart (838
before); with an empty dict, set and list per connection it was ~1,400."""


class _Sink:
    """A transport that takes every write and keeps nothing."""

    def write(self, data: bytes) -> None:
        """Discard ``data``."""

    def loseConnection(self) -> None:
        """Nothing to close."""

    abortConnection = loseConnection


def idle_bytes(level: int) -> float:
    """Bytes allocated per connection by ``COUNT`` connections that each sent CONNECT."""
    broker = Broker(Clock(), Capabilities(sys_interval=0), authenticator=AllowAll())
    broker.start()
    packets = [encode(Connect(f"idle-{n:05}", level, True, 60), level) for n in range(COUNT)]
    sink = _Sink()
    held: List[Optional[Connection]] = [None] * COUNT
    warm = Connection(broker, sink, "127.0.0.1")  # first-use caches are not per connection
    warm.data_received(encode(Connect("warm", level, True, 60), level))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n in range(COUNT):
            connection = held[n] = Connection(broker, sink, "127.0.0.1")
            connection.data_received(packets[n])
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert all(c is not None and c.state == CONNECTED for c in held)
    return _grown(before, after) / COUNT


def _grown(before: Any, after: Any) -> int:
    """Bytes allocated between two snapshots, leaving out tracemalloc's own and the log
    events that Twisted's start-up buffer keeps in a process that never began logging (the
    connections' "connected" lines: a running broker keeps none)."""
    ignored = [tracemalloc.Filter(False, tracemalloc.__file__),
               tracemalloc.Filter(False, "*/twisted/logger/*"),
               tracemalloc.Filter(False, logs.__file__)]
    stats: Any = after.filter_traces(ignored).compare_to(before.filter_traces(ignored), "lineno")
    return sum(stat.size_diff for stat in stats)


def test_idle_connection_v311() -> None:
    """A v3.1.1 idle connection holds less than ``BOUND`` bytes of the broker's objects."""
    assert idle_bytes(ProtocolLevel.MQTT_3_1_1) < BOUND


def test_idle_connection_v5() -> None:
    """A v5 idle connection holds less than ``BOUND`` bytes of the broker's objects."""
    assert idle_bytes(ProtocolLevel.MQTT_5) < BOUND


TCP_COUNT = 400
TCP_BOUND = 1600
"""Bytes per idle v3.1.1 TCP connection in all: Twisted's transport and the accepted socket
object, its peer address, the ``MQTTProtocol`` and the broker's objects, and the connection's
entry in the reactor's set of readers (the epoll reactor also keeps one in a dict of
descriptors, not counted here)."""


def tcp_idle_bytes(lean: bool) -> float:
    """Bytes allocated per connection while a real ``tcp.Port`` on loopback accepts
    ``TCP_COUNT`` connections and reads the CONNECT of each; their transports are the
    listeners' ``LeanServer`` if ``lean``, else Twisted's ``tcp.Server``.  Nothing runs the
    reactor: the port and the transports are read by hand."""
    broker = Broker(Clock(), Capabilities(sys_interval=0), authenticator=AllowAll())
    broker.start()
    reactor = FDReactor()
    port = tcp.Port(0, MQTTFactory(broker, "tcp:test"), TCP_COUNT + 1, "127.0.0.1", reactor)
    port.startListening()
    if lean:
        assert use_lean_server(port)
    address = port.getHost()
    clients = [socket.create_connection((address.host, address.port))
               for _ in range(TCP_COUNT + 1)]
    transports: List[Any] = []
    try:
        for n, client in enumerate(clients):
            client.sendall(encode(Connect(f"idle-{n:05}", 4, True, 60), 4))

        def accept(count: int) -> None:
            port.numberAccepts = count
            port.doRead()
            accepted = [reader for reader in reactor.readers
                        if reader is not port and reader not in transports]
            for transport in accepted:
                transport.doRead()
            transports.extend(accepted)

        accept(1)  # first-use caches are not per connection
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            accept(TCP_COUNT)
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        assert len(transports) == TCP_COUNT + 1
        assert all(type(transport) is port.transport for transport in transports)
        assert all(transport.protocol.connection.state == CONNECTED for transport in transports)
        return _grown(before, after) / TCP_COUNT
    finally:
        for transport in transports:
            transport.socket.close()
        for client in clients:
            client.close()
        port.socket.close()


def test_idle_tcp_connection() -> None:
    """An idle v3.1.1 connection accepted by a TCP listener holds less than ``TCP_BOUND``
    bytes in all."""
    assert tcp_idle_bytes(lean=True) < TCP_BOUND


def test_lean_transport_keeps_less() -> None:
    """The listeners' transport keeps at least 200 bytes less per connection than Twisted's
    ``tcp.Server``, which builds its log prefix, ``repr``, a bound ``fileno`` and an empty
    write list for every connection."""
    assert tcp_idle_bytes(lean=False) - tcp_idle_bytes(lean=True) > 200
