"""The MQTT client against hostile servers on loopback that no real broker imitates: raw
sockets speaking just enough of the protocol to attack it."""

from __future__ import annotations

import base64
import hashlib
import struct
import sys
from typing import Any, Callable, List, Tuple, cast

import pytest_twisted
from twisted.internet.protocol import Factory, Protocol

from tests.spec import check_cited_labels
from tests.test_client_e2e import _reactor, make_client, until  # noqa: F401
from twisted_mqtt.client import MQTTClient
from twisted_mqtt.codec import encode
from twisted_mqtt.packets import ConnAck, Disconnect

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class HostileServer(Protocol):
    """One connection of a scripted server; ``closed`` once it ends."""

    transport: Any
    closed = False

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True


def listen(protocol: Callable[[], HostileServer]) -> Tuple[Any, List[HostileServer]]:
    """Serve ``protocol`` on a loopback ephemeral port: the port and the connections made."""
    servers: List[HostileServer] = []

    def build() -> HostileServer:
        servers.append(protocol())
        return servers[-1]

    return _reactor().listenTCP(0, Factory.forProtocol(build), interface="127.0.0.1"), servers


class EndlessWebSocketMessage(HostileServer):
    """Accepts the WebSocket handshake (subprotocol ``mqtt``), then starts one binary message
    that announces 2**40 bytes: a CONNACK, then a PUBLISH announcing 256 MiB, then filler.
    Records the MQTT packets the client sends in its frames."""

    def __init__(self) -> None:
        self.buffer = b""
        self.opened = False
        self.frames: List[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.opened:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                                 b"\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
            self.opened, self.buffer = True, rest
            self.transport.write(b"\x82\x7f" + struct.pack("!Q", 1 << 40)
                                 + encode(ConnAck(), 5) + b"\x30\xff\xff\xff\x7f"
                                 + b"\x00" * 65536)
        self._frames()

    def _frames(self) -> None:
        """Unmask the client's frames (each short: under 126 bytes)."""
        while len(self.buffer) >= 6 and len(self.buffer) >= 6 + (self.buffer[1] & 0x7F):
            length = self.buffer[1] & 0x7F
            mask, payload = self.buffer[2:6], self.buffer[6:6 + length]
            self.frames.append(bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            self.buffer = self.buffer[6 + length:]


@pytest_twisted.inlineCallbacks
def test_websocket_message_is_not_buffered_whole(
        make_client: Callable[..., MQTTClient]) -> Any:  # noqa: F811
    """A WebSocket message is handed to the MQTT decoder as its bytes arrive, so the client's
    Maximum Packet Size bounds it: a server that opens a message of 2**40 bytes, and in it a
    PUBLISH above the maximum (which the server must not send [MQTT-3.1.2-24]), gets DISCONNECT
    0x95 and the connection closed, instead of a client buffering the message until memory runs
    out."""
    port, servers = listen(EndlessWebSocketMessage)
    try:
        client = make_client(f"ws://127.0.0.1:{port.getHost().port}/mqtt", "ws-victim",
                             reconnect=None)
        result = yield client.connect()
        assert not result.session_present
        yield until(lambda: bool(servers) and servers[0].closed, "the connection closed",
                    timeout=30)
        assert cast(EndlessWebSocketMessage, servers[0]).frames[1:2] == [
            encode(Disconnect(0x95), 5)]
    finally:
        yield port.stopListening()


class OversizedPublish(HostileServer):
    """Answers CONNECT with CONNACK and a PUBLISH header announcing 256 MiB; records what the
    client sends."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        if not self.received:
            self.transport.write(encode(ConnAck(), 5) + b"\x30\xff\xff\xff\x7f")
        self.received += data


@pytest_twisted.inlineCallbacks
def test_disconnect_reaches_the_server_before_the_close(
        make_client: Callable[..., MQTTClient]) -> Any:  # noqa: F811
    """Over real TCP, the DISCONNECT 0x95 that answers a packet above the client's Maximum
    Packet Size reaches the server before the connection closes (an abort would drop it)."""
    port, servers = listen(OversizedPublish)
    try:
        client = make_client(f"tcp:127.0.0.1:{port.getHost().port}", "tcp-victim",
                             reconnect=None)
        yield client.connect()
        yield until(lambda: servers[0].closed, "the connection closed", timeout=30)
        assert cast(OversizedPublish, servers[0]).received.endswith(encode(Disconnect(0x95), 5))
    finally:
        yield port.stopListening()


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])
