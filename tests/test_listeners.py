"""Listener kinds end to end: tcp6, TLS (server chain, client certificates), Unix sockets,
systemd socket activation, the PROXY protocol, stopping one listener, and bad input on each.

Brokers run as processes (``twistd mqtt`` or ``python -m tests.recording_broker``, whose
authentication hook logs the ``ClientInfo`` it sees); the listener-stop test runs a
``BrokerService`` in the test's reactor.  Clients are paho-mqtt or raw sockets.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import struct
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.certs import CLIENT_SUBJECT, PKI, make_pki, mqtts_endpoint
from tests.conftest import BrokerProcess, StartBroker
from tests.paho import TIMEOUT, V5, Client
from twisted_mqtt.auth import AllowAll
from twisted_mqtt.capabilities import Capabilities
from twisted_mqtt.service import BrokerService

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
RECORDING = "tests.recording_broker"
AUTH_LINE = r"auth hook saw (\{.*\})"
# Starts the command after it with the socket at fd N as systemd would pass it: as fd 3, with
# LISTEN_FDS=1, LISTEN_FDNAMES=mqtt and LISTEN_PID set to its own pid, which exec keeps.
SYSTEMD_WRAPPER = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
                   "os.environ.update(LISTEN_FDS='1', LISTEN_FDNAMES='mqtt', "
                   "LISTEN_PID=str(os.getpid())); "
                   "os.execv(sys.argv[2], sys.argv[2:])")


def connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with clean session and a 60 s keep alive."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


def read_until_closed(sock: Any, limit: int = 4) -> bytes:
    """Read until ``limit`` bytes or the peer closes (a reset or TLS alert counts as closed)."""
    data = b""
    sock.settimeout(TIMEOUT)
    try:
        while len(data) < limit:
            chunk = sock.recv(limit - len(data))
            if not chunk:
                break
            data += chunk
    except (ssl.SSLError, ConnectionResetError):
        pass
    return data


def auth_records(broker: BrokerProcess, count: int = 1) -> List[Dict[str, Any]]:
    """The ``ClientInfo`` records logged by the recording broker's authentication hook."""
    return [json.loads(m.group(1)) for m in broker.wait_for_log(AUTH_LINE, count)]


def record_of(broker: BrokerProcess, client_id: str) -> Dict[str, Any]:
    """The recorded ``ClientInfo`` of ``client_id`` (waiting for it to be logged)."""
    broker.wait_for_log(r'auth hook saw \{"client_id": ' + re.escape(json.dumps(client_id)))
    return next(r for r in auth_records(broker) if r["client_id"] == client_id)


def roundtrip(sub: Client, pub: Client, topic: str) -> None:
    """``pub`` publishes at QoS 1 and ``sub`` gets it."""
    assert sub.subscribe(topic, 1) == [1]
    pub.publish(topic, b"through the listener", 1)
    [message] = sub.expect()
    assert (message.topic, message.payload) == (topic, b"through the listener")


@pytest.fixture
def topic() -> str:
    """A topic no other test uses."""
    return f"listeners/{uuid.uuid4().hex[:12]}"




@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """CAs and certificates for this module's TLS listeners."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_client(make: Any, port: int, pki: PKI, cert: Optional[Path] = None,
               key: Optional[Path] = None, client_id: str = "") -> Client:
    """A paho client verifying the server against the test root CA (host name included)."""
    client: Client = make(port, V5, client_id)
    client.paho.tls_set(ca_certs=str(pki.root), certfile=str(cert) if cert else None,
                        keyfile=str(key) if key else None)
    return client


def tls_connack(port: int, pki: PKI, cert: Optional[Path] = None,
                key: Optional[Path] = None, alpn: Optional[List[str]] = None) -> bytes:
    """Connect over TLS with Python's ssl module (offering ``alpn`` protocols if given), send
    CONNECT, return what comes back (empty if the handshake or the connection was refused)."""
    context = ssl.create_default_context(cafile=str(pki.root))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=HOST) as tls:
                tls.sendall(connect_packet(f"raw-{uuid.uuid4().hex[:8]}"))
                return read_until_closed(tls)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


# -- TCP over IPv6 -----------------------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_tcp6(start_broker: StartBroker, clients: Any, topic: str) -> None:
    broker = start_broker(listen=["tcp6:0:interface=\\:\\:1"], host="::1")
    sub = clients(broker.port, V5, host="::1").connect()  # LocalOnly: ::1 is loopback
    pub = clients(broker.port, V5, host="::1").connect()
    roundtrip(sub, pub, topic)


# -- TLS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ssl", "mqtts"])
def test_tls_server_chain(start_broker: StartBroker, clients: Any, pki: PKI, topic: str,
                          kind: str) -> None:
    """A client trusting only the root CA accepts the server: the listener sends the
    intermediate CA from ``extraCertChain`` (Twisted's ``ssl:`` and our ``mqtts:``)."""
    if kind == "ssl":
        endpoint = (f"ssl:0:interface=127.0.0.1:privateKey={pki.server_key}:"
                    f"certKey={pki.server_cert}:extraCertChain={pki.intermediate}")
    else:
        endpoint = mqtts_endpoint(pki)
    broker = start_broker(listen=[endpoint])
    sub = tls_client(clients, broker.port, pki).connect()
    pub = tls_client(clients, broker.port, pki).connect()
    roundtrip(sub, pub, topic)


def test_tls_without_chain_does_not_verify(start_broker: StartBroker, pki: PKI) -> None:
    """The control for the test above: without ``extraCertChain`` the client, which trusts
    only the root CA, cannot verify the server."""
    endpoint = (f"mqtts:0:interface=127.0.0.1:privateKey={pki.server_key}:"
                f"certKey={pki.server_cert}")
    broker = start_broker(listen=[endpoint])
    assert tls_connack(broker.port, pki) == b""


def test_tls_client_certificate_required(start_broker: StartBroker, clients: Any, pki: PKI,
                                         topic: str) -> None:
    """``verify=required``: the good client certificate is accepted and its subject reaches the
    authentication hook; one from another CA, and none at all, are refused at the handshake
    while an established client carries on; plain MQTT on the TLS port is dropped."""
    endpoint = mqtts_endpoint(pki, f"caFile={pki.client_ca}", "verify=required")
    broker = start_broker(listen=[endpoint], module=RECORDING)
    good = tls_client(clients, broker.port, pki, pki.client_cert, pki.client_key,
                      client_id="good-cert").connect()
    record = record_of(broker, "good-cert")
    assert record["certificate_subject"] == CLIENT_SUBJECT
    assert record["certificate_common_name"] == "sensor-1"
    assert record["address"] == HOST

    assert tls_connack(broker.port, pki, pki.rogue_cert, pki.rogue_key) == b""
    assert tls_connack(broker.port, pki) == b""
    with socket.create_connection((HOST, broker.port), timeout=TIMEOUT) as plain:
        plain.sendall(connect_packet("plain-on-tls"))
        assert read_until_closed(plain) == b""  # no CONNACK: the bytes are not a TLS hello
    assert tls_connack(broker.port, pki, pki.client_cert, pki.client_key) == b"\x20\x02\x00\x00"
    assert tls_connack(broker.port, pki, pki.client_cert, pki.client_key,
                       alpn=["mqtt"]) == b"\x20\x02\x00\x00"

    other = tls_client(clients, broker.port, pki, pki.client_cert, pki.client_key).connect()
    roundtrip(good, other, topic)
    assert len(auth_records(broker, 4)) == 4  # good-cert, two raw clients, other: no one else


def test_tls_client_certificate_optional(start_broker: StartBroker, clients: Any,
                                         pki: PKI) -> None:
    """``verify=optional``: a client without a certificate is accepted (no subject); one with a
    certificate from an untrusted CA is still refused."""
    endpoint = mqtts_endpoint(pki, f"caFile={pki.client_ca}", "verify=optional")
    broker = start_broker(listen=[endpoint], module=RECORDING)
    tls_client(clients, broker.port, pki, client_id="no-cert").connect()
    record = record_of(broker, "no-cert")
    assert record["certificate_subject"] is None and record["certificate_common_name"] is None
    tls_client(clients, broker.port, pki, pki.client_cert, pki.client_key,
               client_id="with-cert").connect()
    assert record_of(broker, "with-cert")["certificate_subject"] == CLIENT_SUBJECT
    assert tls_connack(broker.port, pki, pki.rogue_cert, pki.rogue_key) == b""


# -- Unix sockets and systemd ------------------------------------------------------------------


def test_unix_socket(start_broker: StartBroker, clients: Any, tmp_path: Path,
                     topic: str) -> None:
    """A Unix socket client is local: the default LocalOnly authenticator accepts it."""
    path = tmp_path / "mqtt.sock"
    broker = start_broker(listen=[f"unix:{path}"])
    assert broker.listening[0][2] == str(path)
    sub = clients(1, V5, host=str(path))  # paho wants a port number, unused over "unix"
    sub.paho.transport = "unix"
    pub = clients(1, V5, host=str(path))
    pub.paho.transport = "unix"
    roundtrip(sub.connect(), pub.connect(), topic)


def test_systemd_socket_activation(start_broker: StartBroker, clients: Any, topic: str) -> None:
    """The broker adopts a listening socket it inherits as systemd passes them."""
    with socket.socket() as listening:
        listening.bind((HOST, 0))
        listening.listen(50)
        port = listening.getsockname()[1]
        fd = listening.fileno()
        wrapper = [sys.executable, "-c", SYSTEMD_WRAPPER, str(fd)]
        broker = start_broker(listen=["systemd:domain=INET:index=0"],
                              wrapper=wrapper, pass_fds=(fd,))
    assert broker.port == port
    sub = clients(port, V5).connect()
    pub = clients(port, V5).connect()
    roundtrip(sub, pub, topic)


# -- the PROXY protocol ------------------------------------------------------------------------


def proxy_v2_header(source: str, source_port: int, destination_port: int) -> bytes:
    """A binary PROXY protocol v2 header for a TCP over IPv4 connection."""
    addresses = (socket.inet_aton(source) + socket.inet_aton(HOST)
                 + struct.pack("!HH", source_port, destination_port))
    return b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses


@pytest.mark.parametrize("version", [1, 2])
def test_proxy_protocol(start_broker: StartBroker, version: int) -> None:
    """Behind ``haproxy:``, the address in the PROXY header is the client's: the hook and the
    log see it."""
    broker = start_broker(listen=["haproxy:tcp:0:interface=127.0.0.1"], module=RECORDING)
    if version == 1:
        header = f"PROXY TCP4 198.51.100.7 127.0.0.1 51000 {broker.port}\r\n".encode()
    else:
        header = proxy_v2_header("198.51.100.7", 51000, broker.port)
    with socket.create_connection((HOST, broker.port), timeout=TIMEOUT) as sock:
        sock.sendall(header + connect_packet(f"proxied-v{version}"))
        assert read_until_closed(sock) == b"\x20\x02\x00\x00"
    assert record_of(broker, f"proxied-v{version}")["address"] == "198.51.100.7"
    broker.wait_for_log(f"<Connection proxied-v{version} from 198.51.100.7>")


def test_proxy_protocol_local_only(start_broker: StartBroker) -> None:
    """The default LocalOnly authenticator judges the proxied address, not the proxy's."""
    broker = start_broker(listen=["haproxy:tcp:0:interface=127.0.0.1"])
    with socket.create_connection((HOST, broker.port), timeout=TIMEOUT) as sock:
        header = f"PROXY TCP4 198.51.100.7 127.0.0.1 51000 {broker.port}\r\n".encode()
        sock.sendall(header + connect_packet("proxied-remote"))
        assert read_until_closed(sock) == b"\x20\x02\x00\x05"  # not authorised


# -- bad input ---------------------------------------------------------------------------------


def test_http_on_mqtt_port_leaves_others_alone(start_broker: StartBroker, clients: Any,
                                               topic: str) -> None:
    broker = start_broker()
    sub = clients(broker.port, V5).connect()
    pub = clients(broker.port, V5).connect()
    with socket.create_connection((HOST, broker.port), timeout=TIMEOUT) as http:
        http.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_until_closed(http, 64) == b""
    roundtrip(sub, pub, topic)


# -- stopping one listener ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_stopping_a_listener_disconnects_its_clients(topic: str) -> Any:
    """A listener is a child service: stopping it closes its port and disconnects its clients
    with DISCONNECT 0x8B; the other listener and its clients carry on."""
    from twisted.internet import reactor

    service = BrokerService(reactor=reactor, authenticator=AllowAll(),
                            capabilities=Capabilities(sys_interval=0))
    first = service.add_listener("tcp:0:interface=127.0.0.1")
    second = service.add_listener("tcp:0:interface=127.0.0.1")
    service.startService()
    made: List[Client] = []
    try:
        assert first.port is not None and second.port is not None
        first_port, second_port = first.port.getHost().port, second.port.getHost().port

        def connect(port: int) -> Client:
            client = Client(port, V5)
            made.append(client)
            return client.connect()

        gone = yield threads.deferToThread(connect, first_port)
        stays = yield threads.deferToThread(connect, second_port)
        other = yield threads.deferToThread(connect, second_port)
        assert first.tracker is not None and len(first.tracker.connections) == 1
        yield first.disownServiceParent()
        assert not first.listening and first not in list(service)
        yield threads.deferToThread(gone.disconnected.wait, TIMEOUT)
        assert gone.disconnect_rc is not None and gone.disconnect_rc.value == 0x8B
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, first_port), timeout=TIMEOUT).close()
        yield threads.deferToThread(roundtrip, stays, other, topic)
        assert service.serving
    finally:
        yield service.stopService()
        yield threads.deferToThread(lambda: [client.close() for client in made])


@pytest_twisted.inlineCallbacks
def test_tcp_listeners_accept_with_the_lean_transport(pki: PKI, tmp_path: Path) -> Any:
    """MQTT listeners on TCP (plain, TLS, behind the PROXY protocol, WebSocket) give their
    connections ``LeanServer`` transports; a Unix socket and the other listeners keep
    Twisted's."""
    from twisted.internet import reactor, tcp, unix

    from twisted_mqtt.transport import LeanServer

    service = BrokerService(reactor=reactor, authenticator=AllowAll(),
                            capabilities=Capabilities(sys_interval=0))
    lean = [service.add_listener("tcp:0:interface=127.0.0.1"),
            service.add_listener(mqtts_endpoint(pki)),
            service.add_listener("haproxy:tcp:0:interface=127.0.0.1"),
            service.add_websocket_listener("tcp:0:interface=127.0.0.1")]
    local = service.add_listener(f"unix:{tmp_path / 'mqtt.sock'}")
    stats = service.add_stats_listener("tcp:0:interface=127.0.0.1")
    service.startService()
    try:
        assert [listener.port.transport for listener in lean] == [LeanServer] * 4  # type: ignore
        assert local.port.transport is unix.Server  # type: ignore
        assert stats.port.transport is tcp.Server  # type: ignore
        address = (HOST, lean[0].port.getHost().port)  # type: ignore[union-attr]
        with socket.create_connection(address, timeout=TIMEOUT) as raw:
            yield threads.deferToThread(raw.sendall, connect_packet("lean"))
            answer = yield threads.deferToThread(read_until_closed, raw)
        assert answer == b"\x20\x02\x00\x00"
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_embedded_listener_that_cannot_listen() -> Any:
    """Embedded (not owning the process), a listener that cannot listen raises from
    ``startService`` -- still a ``CannotListenError``, whose text names the listener."""
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        endpoint = f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1"
        service = BrokerService(reactor=reactor, authenticator=AllowAll())
        service.add_listener(endpoint)
        with pytest.raises(CannotListenError) as raised:
            service.startService()
        assert str(raised.value) == (f"cannot listen for MQTT on {endpoint}: "
                                     "Address already in use")
        yield service.stopService()
