"""Counters of what the broker has done, read by $SYS and the metrics endpoint."""

from __future__ import annotations


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
