"""Memory held per idle connection by the broker's own objects (Twisted's transport aside).

An idle connection is one that sent CONNECT (clean start, keep alive 60) and nothing since: it
holds its ``Connection``, decoder, ``ClientInfo`` and ``Session`` and its entries in the
broker's tables, but no empty containers (those are created on first use).  The bytes are
counted with ``tracemalloc`` in this process, so the figure is exact and does not depend on
timing.  CPython only: PyPy has no ``tracemalloc`` (its objects are sized by its own
collector).
"""

from __future__ import annotations

import gc
import platform
from typing import Any, List, Optional

import pytest
from twisted.internet.task import Clock

from twisted_mqtt import logs
from twisted_mqtt.auth import AllowAll
from twisted_mqtt.broker import Broker
from twisted_mqtt.capabilities import Capabilities
from twisted_mqtt.codec import encode
from twisted_mqtt.connection import CONNECTED, Connection
from twisted_mqtt.packets import Connect, ProtocolLevel

if platform.python_implementation() != "CPython":
    pytest.skip("tracemalloc measures CPython's allocations", allow_module_level=True)

import tracemalloc  # noqa: E402  (CPython only)

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
    # The process has not begun logging, so Twisted's start-up buffer keeps every log event
    # (the connections' "connected" lines): a running broker keeps none.
    ignored = [tracemalloc.Filter(False, tracemalloc.__file__),
               tracemalloc.Filter(False, "*/twisted/logger/*"),
               tracemalloc.Filter(False, logs.__file__)]
    stats: Any = after.filter_traces(ignored).compare_to(before.filter_traces(ignored), "lineno")
    return sum(stat.size_diff for stat in stats) / COUNT


def test_idle_connection_v311() -> None:
    """A v3.1.1 idle connection holds less than ``BOUND`` bytes of the broker's objects."""
    assert idle_bytes(ProtocolLevel.MQTT_3_1_1) < BOUND


def test_idle_connection_v5() -> None:
    """A v5 idle connection holds less than ``BOUND`` bytes of the broker's objects."""
    assert idle_bytes(ProtocolLevel.MQTT_5) < BOUND
