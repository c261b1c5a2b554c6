"""Counters of what the broker has done, read by $SYS and the metrics endpoint."""

from __future__ import annotations

import math
from typing import Dict, Optional


class Stats:
    """Plain integer counters, incremented on the hot path without any call."""

    __slots__ = ("messages_received", "messages_sent", "dropped", "expired", "bytes_received",
                 "bytes_sent", "packets_received", "packets_sent", "clients_maximum",
                 "connections_total", "sessions_created", "sessions_expired", "wills_sent",
                 "wills_denied", "retained_dropped", "auth_failures", "protocol_errors",
                 "messages_received_by_qos", "messages_sent_by_qos")

    def __init__(self) -> None:
        self.messages_received = 0
        self.messages_sent = 0
        self.dropped = 0
        self.expired = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.packets_received = 0
        self.packets_sent = 0
        self.clients_maximum = 0
        self.connections_total = 0
        self.sessions_created = 0
        self.sessions_expired = 0
        self.wills_sent = 0
        self.wills_denied = 0  # dropped when due: their client may not publish to their topic
        self.retained_dropped = 0
        self.auth_failures = 0
        self.protocol_errors = 0
        self.messages_received_by_qos = [0, 0, 0]  # indexed by QoS; sums to messages_received
        self.messages_sent_by_qos = [0, 0, 0]


LOAD_WINDOWS = (("1min", 60.0), ("5min", 300.0), ("15min", 900.0))
"""The averaging windows of the load figures: topic suffix and seconds."""

LOAD_COUNTERS = (
    ("messages/received", "messages_received"),
    ("messages/sent", "messages_sent"),
    ("bytes/received", "bytes_received"),
    ("bytes/sent", "bytes_sent"),
    ("connections", "connections_total"),
    ("publish/dropped", "dropped"),
)
"""The counters averaged: ``$SYS/broker/load/NAME/WINDOW`` and the ``Stats`` attribute."""


class LoadAverages:
    """Mosquitto's ``$SYS/broker/load/...`` figures: the rate per minute of each of
    ``LOAD_COUNTERS``, averaged over one, five and fifteen minutes and exponentially decayed
    as Unix load averages are.  At each update, ``rate`` is the counter's increase per minute
    since the previous update, ``elapsed`` seconds ago, and each average becomes
    ``rate + exp(-elapsed / window) * (average - rate)`` (Mosquitto's sys_tree.c)."""

    def __init__(self) -> None:
        self.averages: Dict[str, float] = {}
        """By topic suffix (``load/messages/received/1min``)."""
        self._counts: Dict[str, int] = {}
        self._at: Optional[float] = None

    def update(self, now: float, stats: Stats) -> None:
        """Take the counters of ``stats`` at ``now`` (seconds of the broker's clock); the
        first update sets every average to 0."""
        at, previous = self._at, self._counts
        if at is not None and now <= at:
            return
        self._at = now
        self._counts = {name: getattr(stats, attribute) for name, attribute in LOAD_COUNTERS}
        for name, count in self._counts.items():
            rate = 0.0 if at is None else (count - previous[name]) * 60.0 / (now - at)
            for suffix, window in LOAD_WINDOWS:
                key = f"load/{name}/{suffix}"
                decay = 0.0 if at is None else math.exp(-(now - at) / window)
                self.averages[key] = rate + decay * (self.averages.get(key, rate) - rate)

    def figures(self) -> Dict[str, float]:
        """The averages, rounded to hundredths as Mosquitto publishes them."""
        return {key: round(value, 2) for key, value in self.averages.items()}
