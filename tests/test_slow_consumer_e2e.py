"""A QoS 0 flood over real sockets with one subscriber that never reads: the reader that keeps
up gets every message, in order; only the stalled one loses messages.

The broker runs as ``twistd mqtt`` with a small ``maximum_pending_bytes`` and a short
``slow_consumer_grace``; the clients are raw sockets speaking MQTT 3.1.1 through the codec.
The test counts messages, not time.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any, List

import pytest

from tests.conftest import StartBroker
from twisted_mqtt.codec import Decoder, encode
from twisted_mqtt.packets import (
    ConnAck,
    Connect,
    PingReq,
    PingResp,
    ProtocolLevel,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
)

pytestmark = pytest.mark.e2e

V311 = ProtocolLevel.MQTT_3_1_1
MESSAGES = 40_000
PAYLOAD = 1000
TIMEOUT = 30.0
CONFIG = """\
sys_interval: 0
capabilities:
  maximum_pending_bytes: 262144
  slow_consumer_grace: 1.0
  keepalive_sweep_interval: 0.2
"""


class RawClient:
    """An MQTT 3.1.1 client on a plain socket that reads only when told."""

    def __init__(self, port: int, client_id: str, receive_buffer: int = 0) -> None:
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(TIMEOUT)
        self.decoder = Decoder(V311)
        self.pending: List[Any] = []
        self.sock.sendall(encode(Connect(client_id, V311), V311))
        assert isinstance(self.next(), ConnAck)

    def next(self) -> Any:
        """The next packet from the broker."""
        while not self.pending:
            data = self.sock.recv(4096)
            assert data, "the broker closed the connection"
            self.pending = self.decoder.feed(data)
        return self.pending.pop(0)

    def subscribe(self, topic_filter: str) -> None:
        self.sock.sendall(encode(Subscribe(1, (Subscription(topic_filter, 0),)), V311))
        assert isinstance(self.next(), SubAck)

    def read_all(self) -> List[Any]:
        """Every packet until the broker has nothing more to send for a moment."""
        self.sock.settimeout(1.0)
        packets: List[Any] = []
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                packets += self.decoder.feed(data)
        except (socket.timeout, ConnectionResetError):
            pass
        return packets


def test_healthy_reader_keeps_every_message(start_broker: StartBroker, tmp_path: Path) -> None:
    """A 40 MB QoS 0 flood to a reader that keeps up and, through ``#``, to one that never
    reads: the first gets all 40,000 messages in order and is never dropped; the stalled one
    gets only what fits in the bounds; the broker serves a new client afterwards."""
    config = tmp_path / "broker.yaml"
    config.write_text(CONFIG)
    broker = start_broker("--config", str(config))
    stalled = RawClient(broker.port, "stalled", receive_buffer=4096)
    stalled.subscribe("#")
    healthy = RawClient(broker.port, "healthy")
    healthy.subscribe("flood")
    received: List[bytes] = []

    def read() -> None:
        while len(received) < MESSAGES:
            packet = healthy.next()
            assert isinstance(packet, Publish), packet
            received.append(packet.payload[:6])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    publisher = RawClient(broker.port, "publisher")
    padding = b"x" * (PAYLOAD - 6)
    for start in range(0, MESSAGES, 500):
        publisher.sock.sendall(b"".join(
            encode(Publish("flood", b"%06d" % i + padding, 0), V311)
            for i in range(start, start + 500)))
    reader.join(TIMEOUT * 2)
    assert not reader.is_alive(), f"the healthy reader got {len(received)} of {MESSAGES}"
    assert received == [b"%06d" % i for i in range(MESSAGES)]
    healthy.sock.sendall(encode(PingReq(), V311))
    assert isinstance(healthy.next(), PingResp)  # still connected
    got = [p for p in stalled.read_all() if isinstance(p, Publish)]
    assert len(got) < MESSAGES // 2
    fresh = RawClient(broker.port, "fresh")
    fresh.sock.sendall(encode(PingReq(), V311))
    assert isinstance(fresh.next(), PingResp)
    for client in (stalled, healthy, publisher, fresh):
        client.sock.close()
