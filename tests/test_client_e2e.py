"""The MQTT client against real servers: our broker (a ``twistd`` process) and Debian's
Mosquitto, both on loopback ephemeral ports: v3.1.1 and v5, QoS 0/1/2, TLS with a CA and a
client certificate, a Unix socket, WebSocket, a refused CONNACK, and the server restarted in the
middle of a QoS 1 stream with nothing acknowledged lost."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from tests.certs import make_pki
from tests.conftest import LOOPBACK, BrokerProcess, StartBroker
from tests.servers import MosquittoServer, StartMosquitto, free_port, start_mosquitto  # noqa: F401
from tests.spec import check_cited_labels
from twisted_mqtt.client import ConnectionRefused, Message, MQTTClient, QueueFull, ReconnectPolicy
from twisted_mqtt.packets import ProtocolLevel

V5 = ProtocolLevel.MQTT_5
V311 = ProtocolLevel.MQTT_3_1_1
TIMEOUT = 60.0
FAST = ReconnectPolicy(initial=0.1, maximum=1.0)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@defer.inlineCallbacks
def until(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``check`` on the reactor until it is true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        yield task.deferLater(_reactor(), 0.02, lambda: None)


@pytest.fixture
def make_client() -> Iterator[Callable[..., MQTTClient]]:
    """``make_client(endpoint, client_id, **options)``; each client made is disconnected at the
    end of the test."""
    made: List[MQTTClient] = []

    def make(endpoint: Any, client_id: str, **options: Any) -> MQTTClient:
        options.setdefault("reconnect", FAST)
        client = MQTTClient(_reactor(), endpoint, client_id, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.disconnect()


@pytest.fixture(params=["twisted_mqtt", "mosquitto"])
def server(request: pytest.FixtureRequest, broker: BrokerProcess,
           start_mosquitto: StartMosquitto) -> str:  # noqa: F811
    """The endpoint of our broker, then of a Mosquitto."""
    if request.param == "twisted_mqtt":
        return f"tcp:127.0.0.1:{broker.port}"
    return f"tcp:127.0.0.1:{start_mosquitto().port}"


@defer.inlineCallbacks
def exchange(make_client: Callable[..., MQTTClient], endpoint: str, level: int,
             name: str) -> Any:
    """Publish QoS 0, 1 and 2 from one client to another through ``endpoint``; check what each
    side gets."""
    subscriber = make_client(endpoint, f"{name}-sub", protocol_level=level)
    publisher = make_client(endpoint, f"{name}-pub", protocol_level=level,
                            use_topic_aliases=True)
    connected = yield subscriber.connect()
    assert connected.session_present is False
    yield publisher.connect()
    got: List[Message] = []
    codes = yield subscriber.subscribe(f"{name}/#", got.append, 2)
    assert codes == (2,)
    acks = yield defer.gatherResults([publisher.publish(f"{name}/q{qos}", b"m%d" % qos, qos)
                                      for qos in (0, 1, 2)])
    assert acks[0] is None and acks[1].reason_code in (0, 0x10) and acks[2].reason_code == 0
    yield until(lambda: len(got) == 3, "three messages delivered")
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [
        (f"{name}/q0", b"m0", 0), (f"{name}/q1", b"m1", 1), (f"{name}/q2", b"m2", 2)]
    unsubscribed = yield subscriber.unsubscribe(f"{name}/#")
    assert unsubscribed == (() if level < V5 else (0,))
    yield publisher.disconnect()
    yield subscriber.disconnect()


@pytest.mark.parametrize("level", [ProtocolLevel.MQTT_3_1, V311, V5], ids=["v31", "v311", "v5"])
@pytest_twisted.inlineCallbacks
def test_qos_exchange(server: str, level: int, make_client: Callable[..., MQTTClient]) -> Any:
    """QoS 0, 1 and 2 messages go from one client to another, each side acknowledging as its
    QoS requires, through our broker and through Mosquitto, in v3.1, v3.1.1 and v5
    [MQTT-4.3.2-4, MQTT-4.3.3-11, MQTT-4.3.3-8]."""
    yield exchange(make_client, server, level, f"x{level}")


@pytest.mark.parametrize("level", [V311, V5], ids=["v311", "v5"])
@pytest_twisted.inlineCallbacks
def test_refused_by_mosquitto(level: int, start_mosquitto: StartMosquitto,  # noqa: F811
                              make_client: Callable[..., MQTTClient]) -> Any:
    """Mosquitto refusing anonymous clients: connect() fails with the reason's name."""
    mosquitto = start_mosquitto("allow_anonymous false")
    client = make_client(f"tcp:127.0.0.1:{mosquitto.port}", "anonymous", protocol_level=level)
    with pytest.raises(ConnectionRefused) as refused:
        yield client.connect()
    assert str(refused.value) == ("Not authorized (0x87)" if level == V5
                                  else "Not authorized (return code 5)")


@pytest_twisted.inlineCallbacks
def test_refused_by_our_broker(start_broker: StartBroker, tmp_path: Path,
                               make_client: Callable[..., MQTTClient]) -> Any:
    """Our broker refusing a wrong password: ``Bad user name or password (0x86)``, and the
    client does not try again."""
    ledger = tmp_path / "ledger.yaml"
    ledger.write_text("auth: [{username: u, password: p, allow: true}]\n")
    broker = start_broker("--auth-ledger", str(ledger))
    client = make_client(f"tcp:127.0.0.1:{broker.port}", "wrong", username="u",
                         password=b"guess")
    with pytest.raises(ConnectionRefused, match=r"^Bad user name or password \(0x86\)$"):
        yield client.connect()
    assert not client.connected
    right = make_client(f"tcp:127.0.0.1:{broker.port}", "right", username="u", password=b"p")
    yield right.connect()


def _trust(pki: Any, trust: Path) -> Path:
    """A ``trustRoots`` directory holding the test root CA."""
    trust.mkdir(exist_ok=True)
    (trust / "root.pem").write_bytes(pki.root.read_bytes())
    return trust


def _tls_endpoint(port: int, pki: Any, trust: Path) -> str:
    return (f"tls:127.0.0.1:{port}:trustRoots={_trust(pki, trust)}:"
            f"certificate={pki.client_cert}:privateKey={pki.client_key}")


@pytest_twisted.inlineCallbacks
def test_tls_with_client_certificate_to_mosquitto(
        tmp_path: Path, start_mosquitto: StartMosquitto,  # noqa: F811
        make_client: Callable[..., MQTTClient]) -> Any:
    """TLS to Mosquitto requiring a client certificate: the client checks the server's chain
    against its CA and presents its own certificate; without one it is refused."""
    pki = make_pki(tmp_path)
    chain = tmp_path / "server-chain.pem"
    chain.write_bytes(pki.server_cert.read_bytes() + pki.intermediate.read_bytes())
    port = free_port()
    mosquitto = start_mosquitto(f"listener {port} 127.0.0.1", f"cafile {pki.client_ca}",
                                f"certfile {chain}", f"keyfile {pki.server_key}",
                                "require_certificate true")
    assert mosquitto.port != port
    yield exchange(make_client, _tls_endpoint(port, pki, tmp_path / "trust"), V5, "tls")
    anonymous = make_client(f"tls:127.0.0.1:{port}:trustRoots={tmp_path / 'trust'}",
                            "no-certificate")
    with pytest.raises(Exception):  # noqa: B017 (the TLS alert surfaces as the connection's end)
        yield anonymous.connect()


@pytest_twisted.inlineCallbacks
def test_tls_to_our_broker(tmp_path: Path, start_broker: StartBroker,
                           make_client: Callable[..., MQTTClient]) -> Any:
    """TLS with a client certificate to our broker's ``mqtts:`` listener."""
    from tests.certs import mqtts_endpoint

    pki = make_pki(tmp_path)
    broker = start_broker(listen=[mqtts_endpoint(pki, f"caFile={pki.client_ca}",
                                                 "verify=required")])
    yield exchange(make_client, _tls_endpoint(broker.port, pki, tmp_path / "trust"), V311,
                   "tls")


@pytest_twisted.inlineCallbacks
def test_unix_socket(tmp_path: Path, start_broker: StartBroker,
                     start_mosquitto: StartMosquitto,  # noqa: F811
                     make_client: Callable[..., MQTTClient]) -> Any:
    """``unix:`` endpoints, to our broker and to Mosquitto."""
    ours = tmp_path / "ours.sock"
    start_broker(listen=[f"unix:{ours}"])
    yield exchange(make_client, f"unix:path={ours}", V5, "unix-ours")
    theirs = tmp_path / "mosquitto.sock"
    start_mosquitto(f"listener 0 {theirs}")
    yield exchange(make_client, f"unix:path={theirs}", V311, "unix-mosquitto")


@pytest_twisted.inlineCallbacks
def test_websocket(start_broker: StartBroker, make_client: Callable[..., MQTTClient]) -> Any:
    """A ``ws://`` URL: MQTT in binary WebSocket frames, subprotocol ``mqtt``
    [MQTT-6.0.0-3, MQTT-6.0.0-4]."""
    broker = start_broker("--ws", LOOPBACK, listen=[])
    yield exchange(make_client, f"ws://127.0.0.1:{broker.port_of('WebSocket')}/mqtt", V5,
                   "ws")


@pytest_twisted.inlineCallbacks
def test_secure_websocket_with_private_ca(tmp_path: Path, start_broker: StartBroker,
                                          make_client: Callable[..., MQTTClient]) -> Any:
    """A ``wss://`` URL through a ``WebSocketEndpoint`` whose TLS transport trusts a private
    CA."""
    from tests.certs import mqtts_endpoint
    from twisted_mqtt.client import WebSocketEndpoint

    pki = make_pki(tmp_path)
    broker = start_broker("--ws", mqtts_endpoint(pki), listen=[])
    port = broker.port_of("WebSocket")
    trust = _trust(pki, tmp_path / "trust")
    endpoint = WebSocketEndpoint(_reactor(), f"wss://127.0.0.1:{port}/mqtt",
                                 transport=f"tls:127.0.0.1:{port}:trustRoots={trust}")
    client = make_client(endpoint, "wss")
    yield client.connect()
    assert (yield client.publish("wss/t", b"x", 1)).reason_code in (0, 0x10)


@pytest_twisted.inlineCallbacks
def test_websocket_handshake_refused(broker: BrokerProcess,
                                     make_client: Callable[..., MQTTClient]) -> Any:
    """A ``ws://`` URL pointing at a port that does not speak WebSocket: connect() fails with
    the reason, it does not hang."""
    client = make_client(f"ws://127.0.0.1:{broker.port}/mqtt", "not-websocket")
    with pytest.raises(ConnectionLost, match="WebSocket closed"):
        yield client.connect()


@defer.inlineCallbacks
def flood_stalled(client: MQTTClient, pause: Callable[[], None],
                  resume: Callable[[], None]) -> Any:
    """Publish 20,000 QoS 0 messages of 1 KB while the server is stopped: some must be refused
    with ``QueueFull`` (the client's memory is bounded); once it continues, every accepted
    message must be written."""
    yield client.connect()
    pause()
    try:
        sent = [client.publish("stall", b"x" * 1024) for _ in range(20_000)]
    finally:
        resume()
    accepted, refused = [], []
    for deferred in sent:
        if deferred.called and isinstance(deferred.result, Failure):
            refused.append(deferred.addErrback(lambda failure: failure.trap(QueueFull)))
        else:
            accepted.append(deferred)
    assert refused and len(accepted) < 1000
    yield defer.gatherResults(accepted)


@pytest_twisted.inlineCallbacks
def test_stalled_server_bounds_the_client(start_mosquitto: StartMosquitto,  # noqa: F811
                                          make_client: Callable[..., MQTTClient]) -> Any:
    """Mosquitto stopped (SIGSTOP) while QoS 0 messages pour out: once the transport's buffer is
    full the messages wait in the client's bounded queue, the rest fail with ``QueueFull``; when
    the server continues, every accepted message is written."""
    mosquitto = start_mosquitto()
    client = make_client(f"tcp:127.0.0.1:{mosquitto.port}", "stalled", max_queued=100)
    yield flood_stalled(client, mosquitto.pause, mosquitto.resume)


@pytest_twisted.inlineCallbacks
def test_stalled_server_bounds_the_client_over_websocket(
        start_broker: StartBroker, make_client: Callable[..., MQTTClient]) -> Any:
    """The same over WebSocket, against our broker stopped with SIGSTOP: the TCP transport under
    the WebSocket pauses the client too."""
    broker = start_broker("--ws", LOOPBACK, listen=[])
    client = make_client(f"ws://127.0.0.1:{broker.port_of('WebSocket')}/mqtt", "stalled-ws",
                         max_queued=100)
    yield flood_stalled(client, lambda: broker.proc.send_signal(signal.SIGSTOP),
                        lambda: broker.proc.send_signal(signal.SIGCONT))


@pytest_twisted.inlineCallbacks
def test_missing_pingresp_reconnects(start_mosquitto: StartMosquitto,  # noqa: F811
                                     make_client: Callable[..., MQTTClient]) -> Any:
    """A server that stops answering (SIGSTOP) is detected by the missing PINGRESP; the client
    closes, and connects again once the server answers [MQTT-3.1.2-20]."""
    mosquitto = start_mosquitto()
    client = make_client(f"tcp:127.0.0.1:{mosquitto.port}", "pinger", keep_alive=1,
                         ping_timeout=1.0, connect_timeout=2.0)
    events: List[str] = []
    client.on_connected = lambda result: events.append("up")
    client.on_disconnected = lambda reason: events.append("down")
    yield client.connect()
    mosquitto.pause()
    try:
        yield until(lambda: events[-1:] == ["down"], "the connection closed", timeout=20)
    finally:
        mosquitto.resume()
    yield until(lambda: events[-1:] == ["up"], "connected again")
    assert (yield client.publish("ping/t", b"", 1)).reason_code in (0, 0x10)


@pytest_twisted.inlineCallbacks
def test_mosquitto_restarted_during_qos1_stream(
        start_mosquitto: StartMosquitto,  # noqa: F811
        make_client: Callable[..., MQTTClient]) -> Any:
    """Mosquitto restarted while a QoS 1 stream is in flight: both clients reconnect by
    themselves, the publisher sends again what was not acknowledged (same identifiers, DUP)
    and every message the server acknowledged reaches the subscriber [MQTT-4.4.0-1 (3.1.1),
    MQTT-3.1.2-23]."""
    mosquitto = start_mosquitto()
    endpoint = f"tcp:127.0.0.1:{mosquitto.port}"
    subscriber = make_client(endpoint, "stream-sub", protocol_level=V311, clean_start=False)
    publisher = make_client(endpoint, "stream-pub", protocol_level=V311, clean_start=False)
    yield subscriber.connect()
    got: List[Message] = []
    yield subscriber.subscribe("stream", got.append, 1)
    yield publisher.connect()
    reconnected: List[bool] = []
    publisher.on_connected = lambda result: reconnected.append(result.session_present)
    acknowledged: set[int] = set()
    sent: List[defer.Deferred] = []

    def note(_: Any, number: int) -> None:
        acknowledged.add(number)

    total, batch = 400, 40
    for start in range(0, total, batch):
        for number in range(start, start + batch):
            deferred = publisher.publish("stream", b"%d" % number, 1)
            deferred.addCallback(note, number)
            sent.append(deferred)
        if start == total // 2:
            yield threads.deferToThread(mosquitto.restart)  # this batch is in flight
        else:
            yield sent[-1]
    yield defer.gatherResults(sent)
    assert acknowledged == set(range(total))
    assert reconnected == [True]
    yield until(lambda: {int(m.payload) for m in got} >= acknowledged,
                "every acknowledged message delivered")


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])
