"""The shell's write path over plain TCP: small outputs go to an idle socket at once, everything
else through Twisted's buffering; TCP_NODELAY on accepted connections.

The unit tests drive a real ``tcp.Server`` transport over a real loopback socket pair with a
recording stand-in for the reactor (nothing runs it), so the bytes on the wire, Twisted's
buffers and its writer/producer bookkeeping can be inspected after every call.  The end-to-end
tests run a broker process and check that what it writes arrives whole and in order.
"""

from __future__ import annotations

import errno
import socket
import threading
from typing import Any, Iterator, List, Optional, Tuple

import pytest
from twisted.internet import main, tcp, unix
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from tests.conftest import BrokerProcess
from twisted_mqtt.auth import AllowAll
from twisted_mqtt.broker import Broker
from twisted_mqtt.codec import Decoder, encode
from twisted_mqtt.connection import Connection
from twisted_mqtt.listeners import with_backlog
from twisted_mqtt.packets import (
    ConnAck,
    Connect,
    PingReq,
    PingResp,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
)
from twisted_mqtt.protocol import (
    SMALL_WRITE,
    MQTTFactory,
    MQTTProtocol,
    direct_writable,
    set_tcp_nodelay,
)
from twisted_mqtt.service import BrokerService
from twisted_mqtt.tap import Options, makeService
from twisted_mqtt.transport import LeanServer

TIMEOUT = 5.0


class FDReactor:
    """Records what a transport asks of the reactor (readers, writers, delayed calls)."""

    def __init__(self) -> None:
        self.readers: set = set()
        self.writers: set = set()
        self.calls: List[Tuple[Any, ...]] = []

    def addReader(self, reader: Any) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.discard(reader)

    def addWriter(self, writer: Any) -> None:
        self.writers.add(writer)

    def removeWriter(self, writer: Any) -> None:
        self.writers.discard(writer)

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((delay, f, args, kwargs))
        return None

    def seconds(self) -> float:
        return 0.0


class FlakySocket:
    """A socket whose ``send`` takes at most ``accept`` bytes, or raises ``error``."""

    def __init__(self, real: socket.socket, accept: Optional[int] = None,
                 error: Optional[OSError] = None) -> None:
        self.real = real
        self.accept = accept
        self.error = error
        self.sends: List[bytes] = []

    def send(self, data: Any) -> int:
        self.sends.append(bytes(data))
        if self.error is not None:
            raise self.error
        chunk = bytes(data) if self.accept is None else bytes(data)[:self.accept]
        return self.real.send(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def tcp_pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    """(server side, client side) of a loopback TCP connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    client.settimeout(TIMEOUT)
    yield server, client
    server.close()
    client.close()


def _serve(server_sock: socket.socket, nodelay: bool = True, kind: type = LeanServer
           ) -> Tuple[MQTTProtocol, tcp.Server, FDReactor]:
    """An ``MQTTProtocol`` of an ``MQTTFactory`` on a real TCP transport of class ``kind``
    (what the MQTT listeners accept with, unless told)."""
    reactor = FDReactor()
    factory = MQTTFactory(Broker(reactor, authenticator=AllowAll()), "tcp:test",
                          tcp_nodelay=nodelay)
    protocol = factory.buildProtocol(None)
    transport = kind(server_sock, protocol, server_sock.getpeername(), None, 0, reactor)
    protocol.makeConnection(transport)
    return protocol, transport, reactor


def _buffered(transport: tcp.Server) -> bytes:
    return transport.dataBuffer[transport.offset:] + b"".join(transport._tempDataBuffer)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        assert chunk, "the connection closed early"
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _nothing_to_read(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(TIMEOUT)
    return False


# -- which transports ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [LeanServer, tcp.Server])
def test_only_plain_tcp_is_written_directly(tcp_pair: Tuple[socket.socket, socket.socket],
                                             kind: type) -> None:
    """The connection writes through the protocol over a plain TCP transport only (Twisted's
    or the listeners' ``LeanServer``); TLS (with startTLS or as a wrapper), Unix sockets,
    wrappers and in-memory transports keep their own ``write``."""
    protocol, transport, _ = _serve(tcp_pair[0], kind=kind)
    assert direct_writable(transport)
    assert protocol.connection.transport is protocol
    assert protocol.connection.address == tcp_pair[0].getpeername()[0]
    transport.TLS = True  # what startTLS sets
    assert not direct_writable(transport)
    transport.TLS = False
    assert not direct_writable(TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol))
    assert not direct_writable(unix.Server.__new__(unix.Server))
    memory = MQTTFactory(Broker(FDReactor())).buildProtocol(None)
    string_transport = StringTransport()
    memory.makeConnection(string_transport)
    assert not direct_writable(string_transport)
    assert memory.connection.transport is string_transport


def test_lean_transport_keeps_only_what_it_cannot_compute(
        tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """The listeners' ``LeanServer`` keeps no log prefix, ``repr``, bound ``fileno``, second
    copy of the peer's host or empty write list per connection; each reads as Twisted's
    ``tcp.Server`` would give it (``fileno`` -1 once closed), and queued writes still go out."""
    server, client = tcp_pair
    protocol = MQTTFactory(Broker(FDReactor())).buildProtocol(None)
    listening = type("Port", (), {"_realPortNumber": 1883})()
    transport = LeanServer(server, protocol, ("127.0.0.1", 50000), listening, 7, FDReactor())
    protocol.makeConnection(transport)
    kept = set(vars(transport))
    assert not kept & {"logstr", "repstr", "fileno", "hostname", "_tempDataBuffer", "_waiting"}
    assert transport.logPrefix() == "MQTTProtocol,7,127.0.0.1"
    assert repr(transport) == "<MQTTProtocol #7 on 1883>"
    assert transport.hostname == "127.0.0.1"
    assert transport.fileno() == server.fileno()
    transport.write(b"queued")
    assert transport._tempDataBuffer == [b"queued"]
    transport.doWrite()
    assert _read_exactly(client, 6) == b"queued"
    assert "_waiting" not in vars(transport) or transport._waiting is None
    transport.connectionLost(Failure(ConnectionDone()))
    assert transport.fileno() == -1
    assert transport.logPrefix() == "closed,7,127.0.0.1"
    assert repr(transport) == "<closed #7 on 1883>"


def test_held_back_publisher_is_not_read(tcp_pair: Tuple[socket.socket, socket.socket]
                                         ) -> None:
    """Holding a publisher back (for a blocked subscriber) stops reading its socket, also
    over the plain TCP transport the connection writes to through the protocol; releasing it
    reads again.  The transport's own back-pressure still reaches the connection's output."""
    protocol, transport, reactor = _serve(tcp_pair[0])
    connection = protocol.connection
    assert transport in reactor.readers
    blocker = Connection(connection.broker, StringTransport(), None)
    connection.hold_reading(blocker)
    assert transport not in reactor.readers and not connection.paused
    blocker.release_held()
    assert transport in reactor.readers
    transport.producer.pauseProducing()
    assert connection.paused and transport in reactor.readers


# -- the direct write -------------------------------------------------------------------------


def test_small_write_sent_at_once(tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """A small output on an idle transport is on the wire when ``write`` returns: nothing
    buffered, no writer registered with the reactor, the producer not paused."""
    server, client = tcp_pair
    protocol, transport, reactor = _serve(server)
    protocol.write(b"\xd0\x00")
    assert _read_exactly(client, 2) == b"\xd0\x00"
    assert _buffered(transport) == b""
    assert reactor.writers == set()
    assert not transport.producerPaused
    assert transport.producer.connection is protocol.connection


def test_write_queues_behind_buffered_data(tcp_pair: Tuple[socket.socket, socket.socket]
                                           ) -> None:
    """With bytes already buffered in the transport, a write queues behind them, so the order
    on the wire is the order of the writes."""
    server, client = tcp_pair
    protocol, transport, reactor = _serve(server)
    transport.write(b"first ")
    protocol.write(b"second")
    assert _nothing_to_read(client)
    assert _buffered(transport) == b"first second"
    assert reactor.writers == {transport}
    assert transport.doWrite() is None
    assert _read_exactly(client, 12) == b"first second"
    assert reactor.writers == set()
    protocol.write(b"third")  # idle again: direct
    assert _read_exactly(client, 5) == b"third"


def test_large_write_left_to_the_reactor(tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """An output of ``SMALL_WRITE`` bytes or more goes through ``transport.write`` (which also
    pauses the producer beyond the transport's buffer size)."""
    server, client = tcp_pair
    protocol, transport, reactor = _serve(server)
    data = bytes(range(256)) * (SMALL_WRITE // 256 + 4)
    assert len(data) > SMALL_WRITE == transport.bufferSize
    protocol.write(data)
    assert _nothing_to_read(client)
    assert _buffered(transport) == data
    assert reactor.writers == {transport}
    assert transport.producerPaused and protocol.connection.paused
    received = []
    while transport.dataBuffer or transport._tempDataLen:
        assert transport.doWrite() is None
        received.append(client.recv(1 << 20))
    received.append(_read_exactly(client, len(data) - sum(map(len, received))))
    assert b"".join(received) == data
    assert not transport.producerPaused and not protocol.connection.paused


def test_partial_send_rest_buffered(tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """When the socket takes only part of the output, the rest is queued in the transport (and
    the reactor asked to write it) ahead of anything written later."""
    server, client = tcp_pair
    protocol, transport, reactor = _serve(server)
    flaky = transport.socket = FlakySocket(server, accept=3)  # type: ignore[assignment]
    protocol.write(b"abcdefgh")
    assert flaky.sends == [b"abcdefgh"]
    assert _read_exactly(client, 3) == b"abc"
    assert _buffered(transport) == b"defgh"
    assert reactor.writers == {transport}
    protocol.write(b"ij")
    assert flaky.sends == [b"abcdefgh"]  # not sent ahead of the rest
    flaky.accept = None
    assert transport.doWrite() is None
    assert _read_exactly(client, 7) == b"defghij"
    assert reactor.writers == set()


def test_send_would_block(tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """EAGAIN: the whole output is queued in the transport."""
    server, client = tcp_pair
    protocol, transport, reactor = _serve(server)
    transport.socket = FlakySocket(server, error=BlockingIOError(errno.EAGAIN, "busy"))
    protocol.write(b"hello")
    assert _buffered(transport) == b"hello"
    assert reactor.writers == {transport}


def test_send_fails_connection_lost(tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """A reset socket: the output is handed to the transport, whose own attempt reports the
    connection lost to the reactor as usual."""
    server, client = tcp_pair
    protocol, transport, reactor = _serve(server)
    transport.socket = FlakySocket(server, error=ConnectionResetError(errno.ECONNRESET, "reset"))
    protocol.write(b"hello")
    assert _buffered(transport) == b"hello"
    assert transport.doWrite() is main.CONNECTION_LOST


def test_real_socket_full_then_drained(tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """Against a peer that does not read: direct sends fill the kernel buffers, then a partial
    send or EAGAIN leaves the rest to the transport (pausing the producer once it passes the
    buffer size); all bytes arrive, in order, once the peer reads and the reactor writes."""
    server, client = tcp_pair
    protocol, transport, reactor = _serve(server)
    chunks = [bytes([i % 251]) * 1000 for i in range(16000)]
    for chunk in chunks:
        protocol.write(chunk)
    assert _buffered(transport)  # the socket stopped taking them
    assert reactor.writers == {transport}
    assert transport.producerPaused and protocol.connection.paused
    expected = b"".join(chunks)
    received = bytearray()
    while len(received) < len(expected):
        if transport.dataBuffer or transport._tempDataLen:
            assert transport.doWrite() is None
        received += client.recv(1 << 16)
    assert bytes(received) == expected
    assert _buffered(transport) == b"" and reactor.writers == set()
    assert not transport.producerPaused and not protocol.connection.paused


def test_no_direct_write_while_paused_or_closing(tcp_pair: Tuple[socket.socket, socket.socket]
                                                 ) -> None:
    """A paused producer, a closing or half-closed transport and an aborted one all take the
    ordinary path (an aborted one then drops the bytes, as Twisted does)."""
    server, client = tcp_pair
    protocol, transport, reactor = _serve(server)
    transport.producerPaused = True
    protocol.write(b"a")
    assert _buffered(transport) == b"a"
    transport._tempDataBuffer, transport._tempDataLen = [], 0
    transport.producerPaused = False

    protocol.loseWriteConnection()
    assert transport._writeDisconnecting
    protocol.write(b"b")
    assert _buffered(transport) == b"b"
    assert _nothing_to_read(client)


def test_no_send_after_abort(tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """After ``abortConnection`` nothing more reaches the socket."""
    server, client = tcp_pair
    protocol, transport, reactor = _serve(server)
    flaky = transport.socket = FlakySocket(server)  # type: ignore[assignment]
    protocol.abortConnection()
    protocol.write(b"late")
    assert flaky.sends == []


def test_close_through_the_protocol(tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """The connection closes through the protocol: its last bytes go out, then FIN."""
    server, client = tcp_pair
    protocol, transport, reactor = _serve(server)
    protocol.write(b"bye")
    protocol.loseConnection()
    assert transport.disconnecting
    assert transport.doWrite() is main.CONNECTION_DONE
    assert protocol.getPeer().port == client.getsockname()[1]
    assert protocol.getHost().port == server.getsockname()[1]
    assert _read_exactly(client, 3) == b"bye"


def test_mqtt_exchange_over_direct_writes(tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """CONNECT, SUBSCRIBE, PINGREQ fed to the protocol: every answer is on the wire when
    ``dataReceived`` returns, with no writer left registered."""
    server, client = tcp_pair
    protocol, transport, reactor = _serve(server)
    decoder = Decoder(4)
    protocol.dataReceived(encode(Connect("direct", keep_alive=60), 4))
    assert decoder.feed(client.recv(4096)) == [ConnAck(0, False)]
    protocol.dataReceived(encode(Subscribe(1, (Subscription("t", 0),)), 4)
                          + encode(PingReq(), 4))
    got = _read_exactly(client, 5 + 2)
    assert decoder.feed(got) == [SubAck(1, (0,)), PingResp()]
    assert reactor.writers == set()


# -- TCP_NODELAY --------------------------------------------------------------------------------


def _nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_tcp_nodelay_by_default(tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """Accepted TCP connections get TCP_NODELAY unless the factory says otherwise."""
    assert _nodelay(tcp_pair[0]) == 0
    _serve(tcp_pair[0])
    assert _nodelay(tcp_pair[0]) != 0


def test_tcp_nodelay_off(tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """``tcp_nodelay=False`` leaves Nagle's algorithm on."""
    _serve(tcp_pair[0], nodelay=False)
    assert _nodelay(tcp_pair[0]) == 0


def test_tcp_nodelay_through_a_wrapper(tcp_pair: Tuple[socket.socket, socket.socket]) -> None:
    """Under a protocol wrapper (TLS, PROXY protocol) the TCP socket still gets the option."""
    server = tcp_pair[0]
    wrapper = ProtocolWrapper(WrappingFactory(MQTTFactory(Broker(FDReactor()))),
                              MQTTFactory(Broker(FDReactor())).buildProtocol(None))
    wrapper.transport = tcp.Server(server, wrapper, server.getpeername(), None, 0, FDReactor())
    assert not direct_writable(wrapper)
    assert set_tcp_nodelay(wrapper) is True
    assert _nodelay(server) != 0


def test_tcp_nodelay_not_tcp() -> None:
    """A Unix socket or an in-memory transport is left alone, without an error."""
    left, right = socket.socketpair()
    with left, right:
        transport = tcp.Server(left, MQTTFactory(Broker(FDReactor())).buildProtocol(None),
                               ("", 0), None, 0, FDReactor())
        assert set_tcp_nodelay(transport) is False
    assert set_tcp_nodelay(StringTransport()) is False


@pytest.mark.parametrize("argv, expected", [([], True), (["--no-tcp-nodelay"], False)])
def test_tcp_nodelay_option(argv: List[str], expected: bool) -> None:
    """``--no-tcp-nodelay`` reaches the MQTT listeners' factories."""
    options = Options()
    options.parseOptions(["--listen", "tcp:0", "--listen", "tcp:0", *argv])
    service = makeService(options, FDReactor())
    factories = [listener.factory for listener in service.listeners()]
    assert len(factories) == 2
    assert all(factory.tcp_nodelay is expected for factory in factories)  # type: ignore
    assert BrokerService(reactor=FDReactor()).add_listener("tcp:0").factory.tcp_nodelay


# -- end to end ---------------------------------------------------------------------------------


class RawClient:
    """A blocking MQTT 3.1.1 client over a plain socket, decoding what it receives."""

    def __init__(self, port: int, client_id: str, rcvbuf: Optional[int] = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.decoder = Decoder(4)
        self.received: List[Any] = []
        self.send(Connect(client_id, keep_alive=60))
        assert self.next() == ConnAck(0, False)

    def send(self, *packets: Any) -> None:
        self.sock.sendall(b"".join(encode(p, 4) for p in packets))

    def next(self) -> Any:
        while not self.received:
            data = self.sock.recv(1 << 16)
            assert data, "the broker closed the connection"
            self.received += self.decoder.feed(data)
        return self.received.pop(0)

    def subscribe(self, topic: str, qos: int = 0) -> None:
        self.send(Subscribe(1, (Subscription(topic, qos),)))
        assert self.next() == SubAck(1, (qos,))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.e2e
def test_e2e_ping_round_trips(broker: BrokerProcess) -> None:
    """Many request/response round trips on one connection (each answer a small direct
    write) all get their answer."""
    client = RawClient(broker.port, "direct-ping")
    try:
        for _ in range(200):
            client.send(PingReq())
            assert client.next() == PingResp()
    finally:
        client.close()


@pytest.mark.e2e
def test_e2e_large_burst_in_order(broker: BrokerProcess) -> None:
    """A burst of 4 MB to one subscriber (outputs far above ``SMALL_WRITE``, mixed with small
    ones) and a single 300 KB message arrive complete and in order."""
    sub = RawClient(broker.port, "direct-burst-sub")
    pub = RawClient(broker.port, "direct-burst-pub")
    try:
        sub.subscribe("direct/burst")
        messages = [Publish("direct/burst", b"%06d" % i + b"x" * 994) for i in range(4000)]
        messages.append(Publish("direct/burst", bytes(range(256)) * 1200))
        sender = threading.Thread(target=pub.send, args=messages)
        sender.start()
        got = [sub.next() for _ in messages]
        sender.join(TIMEOUT)
        assert [m.payload for m in got] == [m.payload for m in messages]
    finally:
        sub.close()
        pub.close()


@pytest.mark.e2e
def test_e2e_slow_reader_partial_sends(broker: BrokerProcess) -> None:
    """A subscriber with a small receive buffer that reads only after 6 MB were published for
    it: the broker's sends to it come up short or would block, and the rest waits in the
    transport; every message arrives, in order, when it reads."""
    sub = RawClient(broker.port, "direct-slow-sub", rcvbuf=16384)
    pub = RawClient(broker.port, "direct-slow-pub")
    try:
        sub.subscribe("direct/slow")
        messages = [Publish("direct/slow", b"%05d" % i + b"y" * 1000) for i in range(6000)]
        for message in messages:  # one at a time: each is one small output of the broker
            pub.send(message)
        pub.send(PingReq())
        assert pub.next() == PingResp()  # the broker has handled (and sent) them all
        got = [sub.next() for _ in messages]
        assert [m.payload for m in got] == [m.payload for m in messages]
    finally:
        sub.close()
        pub.close()


# -- listen backlog -----------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint, expected", [
    ("tcp:1883", "tcp:1883:backlog=1024"),
    ("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=1024"),
    ("tcp:1883:backlog=7", "tcp:1883:backlog=7"),
    ("TCP6:1883", "TCP6:1883:backlog=1024"),
    ("ssl:8883:privateKey=k.pem", "ssl:8883:privateKey=k.pem:backlog=1024"),
    ("mqtts:8883:privateKey=k.pem", "mqtts:8883:privateKey=k.pem:backlog=1024"),
    ("unix:/run/mqtt.sock", "unix:/run/mqtt.sock:backlog=1024"),
    ("haproxy:tcp:1883", "haproxy:tcp:1883:backlog=1024"),
    ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ("tcp", "tcp"),
])
def test_with_backlog(endpoint: str, expected: str) -> None:
    """Client listeners get a listen queue of 1024 unless their endpoint string sets one or
    takes none."""
    assert with_backlog(endpoint) == expected


def test_listeners_get_the_backlog() -> None:
    """MQTT and WebSocket listeners listen with the larger queue and keep the endpoint string
    as given for their name and log line."""
    service = BrokerService(reactor=FDReactor())
    mqtt = service.add_listener("tcp:1883:interface=127.0.0.1")
    ws = service.add_websocket_listener("tcp:8080")
    assert mqtt.endpoint._backlog == ws.endpoint._backlog == 1024  # type: ignore
    assert mqtt.description == "tcp:1883:interface=127.0.0.1"
    assert service.add_listener("tcp:1884:backlog=5").endpoint._backlog == 5  # type: ignore


# -- one write per connection per reactor turn --------------------------------------------------


class _CountingTransport(StringTransport):
    """A ``StringTransport`` that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def test_writes_coalesced_per_reactor_turn() -> None:
    """With ``coalesce_writes`` (what ``BrokerService`` sets on the reactor), what several
    clients' packets send to one subscriber in one reactor turn leaves in one write, after the
    turn's input has been handled; every message arrives, in order."""
    from twisted.internet.task import Clock

    from twisted_mqtt.connection import Connection

    clock = Clock()
    broker = Broker(clock, authenticator=AllowAll())
    broker.coalesce_writes = True
    subscriber_transport = _CountingTransport()
    subscriber = Connection(broker, subscriber_transport, "127.0.0.1")
    subscriber.data_received(encode(Connect("sub", 4), 4)
                             + encode(Subscribe(1, (Subscription("t/#", 1),)), 4))
    clock.advance(0)
    assert [type(p) for p in Decoder(4).feed(subscriber_transport.value())] == [ConnAck, SubAck]
    subscriber_transport.clear()
    writes = subscriber_transport.writes
    publishers = []
    for index in range(3):
        publisher = Connection(broker, StringTransport(), "127.0.0.1")
        publisher.data_received(encode(Connect(f"p{index}", 4), 4))
        publishers.append(publisher)
    clock.advance(0)
    for index, publisher in enumerate(publishers):
        publisher.data_received(encode(Publish(f"t/{index}", b"%d" % index, 1, packet_id=1), 4))
    assert subscriber_transport.value() == b""  # not before the turn's input is all handled
    clock.advance(0)
    got = Decoder(4).feed(subscriber_transport.value())
    assert [(p.topic, p.payload) for p in got] == [("t/0", b"0"), ("t/1", b"1"), ("t/2", b"2")]
    assert subscriber_transport.writes == writes + 1
