"""Helpers to test code that embeds the broker, without sockets or wall-clock time.

``InMemoryBroker`` is a broker on a ``task.Clock``; ``InMemoryClient`` speaks packets to it
through a ``StringTransport`` and decodes what the broker sends back::

    hub = InMemoryBroker()
    client = hub.client()
    assert client.connect("sensor-1").reason_code == 0
    client.send(Subscribe(1, (Subscription("a/#", 1),)))
    hub.advance(30)
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twisted_mqtt.auth import AllowAll
from twisted_mqtt.broker import Broker
from twisted_mqtt.capabilities import Capabilities, Compatibilities
from twisted_mqtt.codec import Decoder, encode
from twisted_mqtt.connection import Connection
from twisted_mqtt.packets import ConnAck, Connect, Packet, ProtocolLevel
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.session import Message


class _Transport(StringTransport):
    """A ``StringTransport`` whose closing reaches the connection on the next clock turn, as a
    real transport's ``connectionLost`` does."""

    connection: Optional[Connection] = None

    def __init__(self, clock: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clock = clock
        self._lost = False

    def loseConnection(self) -> None:
        super().loseConnection()
        self._clock.callLater(0, self.lost)

    def abortConnection(self) -> None:
        super().abortConnection()
        self._clock.callLater(0, self.lost)

    def lost(self) -> None:
        """Report the end of the connection once."""
        if not self._lost and self.connection is not None:
            self._lost = True
            self.connection.connection_lost()


class InMemoryClient:
    """A client joined to a broker in memory: send packets, read decoded replies."""

    def __init__(self, broker: Broker, address: Optional[str] = "127.0.0.1",
                 protocol_level: int = ProtocolLevel.MQTT_3_1_1) -> None:
        self.broker = broker
        self.protocol_level = protocol_level
        self.transport = _Transport(
            broker.clock, peerAddress=IPv4Address("TCP", address or "127.0.0.1", 50000)
        )
        self.connection = Connection(broker, self.transport, address)
        self.transport.connection = self.connection
        self.decoder = Decoder(protocol_level)
        self._unread: List[Any] = []

    def send(self, *packets: Packet) -> None:
        """Encode packets at this client's protocol level and deliver them to the broker."""
        self.send_bytes(b"".join(encode(p, self.protocol_level) for p in packets))

    def send_bytes(self, data: bytes) -> None:
        """Deliver raw bytes to the broker."""
        self.connection.data_received(data)

    def received(self) -> List[Any]:
        """Packets the broker has sent since the last call, decoded."""
        data = self.transport.value()
        self.transport.clear()
        packets = self._unread + self.decoder.feed(data)
        self._unread = []
        return packets

    def connect(self, client_id: str = "client", clean_start: bool = True,
                keep_alive: int = 0, properties: Properties = NO_PROPERTIES,
                **fields: Any) -> ConnAck:
        """Send CONNECT and return the CONNACK (other packets stay readable)."""
        self.send(Connect(client_id, self.protocol_level, clean_start, keep_alive,
                          properties=properties, **fields))
        packets = self.received()
        for index, packet in enumerate(packets):
            if isinstance(packet, ConnAck):
                self._unread = packets[index + 1:]
                return packet
        raise AssertionError(f"no CONNACK in {packets!r}")

    @property
    def closed(self) -> bool:
        """Whether the broker has closed (or is closing) the connection."""
        return bool(self.transport.disconnecting)

    def drop(self) -> None:
        """The network connection breaks (no DISCONNECT was sent)."""
        self.transport.lost()


class InMemoryBroker:
    """A broker driven by a ``task.Clock``, accepting every client unless told otherwise."""

    def __init__(self, capabilities: Optional[Capabilities] = None,
                 compatibilities: Optional[Compatibilities] = None, start: bool = True,
                 **hooks: Any) -> None:
        self.clock = Clock()
        hooks.setdefault("authenticator", AllowAll())
        self.broker = Broker(self.clock, capabilities or Capabilities(sys_interval=0),
                             compatibilities or Compatibilities(), **hooks)
        if start:
            self.broker.start()

    def client(self, protocol_level: int = ProtocolLevel.MQTT_3_1_1,
               address: Optional[str] = "127.0.0.1") -> InMemoryClient:
        """A new in-memory client of this broker."""
        return InMemoryClient(self.broker, address, protocol_level)

    def record_published(self) -> List[Message]:
        """From now on, collect every message the broker routes (in order) into the list
        returned."""
        routed: List[Message] = []
        original = self.broker.publish

        def publish(message: Message, local_only: bool = False) -> int:
            routed.append(message)
            return original(message, local_only)

        self.broker.publish = publish  # type: ignore[method-assign]
        return routed

    def advance(self, seconds: float, step: float = 1.0) -> None:
        """Let ``seconds`` pass, in steps, so that periodic sweeps run on the way."""
        remaining = seconds
        while remaining > 0:
            delta = min(step, remaining)
            self.clock.advance(delta)
            remaining -= delta
