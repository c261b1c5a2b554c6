"""The MQTT bridge against a hostile remote over real sockets: a twistd broker bridged to a raw
socket server on loopback that floods the bridge's ``in`` rule, while real paho clients use the
broker."""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any, List

from tests.conftest import StartBroker
from tests.paho import V5, MakeClient
from tests.spec import check_cited_labels
from twisted_mqtt.codec import Decoder, encode
from twisted_mqtt.packets import ConnAck, Connect, Publish, SubAck, Subscribe

TIMEOUT = 60.0


class FloodingRemote(threading.Thread):
    """Accepts one bridge connection, answers its CONNECT and SUBSCRIBE, then sends QoS 0
    messages on ``flood/...`` as fast as the socket takes them until ``stop`` is set; counts
    the messages sent."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.flooding = threading.Event()
        self.sent = 0

    def run(self) -> None:
        self.listener.settimeout(TIMEOUT)
        connection, _address = self.listener.accept()
        connection.settimeout(TIMEOUT)
        decoder = Decoder()
        packets: List[Any] = []
        while not any(isinstance(packet, Subscribe) for packet in packets):
            for packet in decoder.feed(connection.recv(65536)):
                packets.append(packet)
                if isinstance(packet, Connect):
                    connection.sendall(encode(ConnAck(), 5))
                elif isinstance(packet, Subscribe):
                    connection.sendall(encode(SubAck(packet.packet_id, (0,)), 5))
        batch = b"".join(encode(Publish(f"flood/{n % 100}", b"x" * 64), 5) for n in range(1000))
        self.flooding.set()
        try:
            while not self.stop.is_set():
                connection.sendall(batch)
                self.sent += 1000
        except OSError:
            pass
        finally:
            connection.close()
            self.listener.close()


def test_a_flooding_remote_does_not_hold_other_clients(start_broker: StartBroker,
                                                       clients: MakeClient) -> None:
    """A remote pouring messages on an ``in`` rule as fast as TCP takes them: meanwhile a new
    client connects, subscribes and gets its own QoS 1 message back (a PUBACK for each PUBLISH
    [MQTT-4.3.2-4]) within the test's patience, and the broker keeps importing the flood."""
    remote = FloodingRemote()
    remote.start()
    broker = start_broker("--bridge", f"m=tcp:host=127.0.0.1:port={remote.port}",
                          "--bridge-topic", "m=# in 0 here/ flood/")
    try:
        assert remote.flooding.wait(TIMEOUT), "the bridge never subscribed"
        flood = clients(broker.port, V5).connect()
        flood.subscribe("here/#")
        assert flood.expect(100, TIMEOUT), "the flood does not come in"
        started = time.monotonic()
        other = clients(broker.port, V5).connect()
        other.subscribe("mine", 1)
        other.publish("mine", b"still served", 1)
        assert other.expect(1, TIMEOUT)[0].payload == b"still served"
        took = time.monotonic() - started
        assert not remote.stop.is_set() and remote.sent > 0
        print(f"a client served in {took:.2f}s while the remote flooded "
              f"({remote.sent} messages sent so far)")
    finally:
        remote.stop.set()


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])
