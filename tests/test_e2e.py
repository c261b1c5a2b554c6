"""End-to-end tests: the real broker process with real clients over loopback sockets.

paho-mqtt (3.1.1 and 5.0) and ``mosquitto_pub``/``mosquitto_sub`` talk to brokers started by the
fixtures of ``conftest.py`` on ephemeral ports.  Every wait has a deadline; nothing sleeps a
fixed time.  Each test uses its own topics, so the module can share one broker per variant.
"""

from __future__ import annotations

import platform
import queue
import random
import re
import select
import shutil
import socket
import string
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import (
    ROOT,
    BrokerProcess,
    StartBroker,
    broker_env,
    log_problems,
    run_twistd,
)
from tests.paho import HOST, TIMEOUT, V5, V311, MakeClient
from twisted_mqtt import codec
from twisted_mqtt.config import CONFIG_ERROR_EXIT, USAGE_ERROR_EXIT

pytestmark = pytest.mark.e2e

VERSIONS = [pytest.param(V311, id="v311"), pytest.param(V5, id="v5")]
MOSQUITTO_VERSIONS = [pytest.param("mqttv311", id="v311"), pytest.param("mqttv5", id="v5")]
SESSION_TAKEN_OVER = 0x8E
NOT_AUTHORIZED = 0x87
SUBACK_FAILURE = 0x80


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A topic no other test uses."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)
    return f"e2e/{name}/{uuid.uuid4().hex[:8]}"


def publish_props(**values: Any) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def connect_props(**values: Any) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def abort(sock: socket.socket) -> None:
    """Close a socket with a TCP reset, as a crashed client's connection would end."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- paho: both protocol versions ---------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_connect(broker: BrokerProcess, clients: MakeClient, version: int) -> None:
    client = clients(broker.port, version).connect()
    assert client.connack_rc.value == 0
    assert not client.connack_flags.session_present
    if version == V5:
        props = client.connack_props
        assert props.AssignedClientIdentifier  # we sent an empty client id
        assert props.RetainAvailable == 1
        assert props.WildcardSubscriptionAvailable == 1
        assert props.SubscriptionIdentifierAvailable == 1
        assert props.SharedSubscriptionAvailable == 1
        assert not hasattr(props, "ServerKeepAlive")  # no --max-keep-alive


@pytest.mark.parametrize("version", VERSIONS)
def test_publish_subscribe_qos(broker: BrokerProcess, clients: MakeClient, topic: str,
                               version: int) -> None:
    """Stock paho-mqtt clients publish and subscribe at QoS 0, 1 and 2 through the broker
    process over TCP, an ordered, lossless byte stream [MQTT-4.2-1, MQTT-4.2.0-1,
    MQTT-7.1.1-1 (3.1.1)], needing no extension [MQTT-7.0.0-2 (3.1.1)]."""
    sub2 = clients(broker.port, version).connect()
    sub1 = clients(broker.port, version).connect()
    pub = clients(broker.port, version).connect()
    assert sub2.subscribe(topic, 2) == [2]
    assert sub1.subscribe(topic, 1) == [1]
    for qos in (0, 1, 2):
        pub.publish(topic, f"payload at qos {qos}".encode(), qos)
    got2 = {m.payload: (m.qos, m.retain, m.topic) for m in sub2.expect(3)}
    got1 = {m.payload: (m.qos, m.retain, m.topic) for m in sub1.expect(3)}
    assert got2 == {f"payload at qos {q}".encode(): (q, False, topic) for q in (0, 1, 2)}
    # Delivered at the lower of the published and the granted QoS.
    assert got1 == {f"payload at qos {q}".encode(): (min(q, 1), False, topic) for q in (0, 1, 2)}


@pytest.mark.parametrize("version", VERSIONS)
def test_wildcards(broker: BrokerProcess, clients: MakeClient, topic: str, version: int) -> None:
    sub = clients(broker.port, version).connect()
    pub = clients(broker.port, version).connect()
    assert sub.subscribe([(f"{topic}/+/leaf", 1), (f"{topic}/deep/#", 1)]) == [1, 1]
    pub.publish(f"{topic}/a/leaf", b"plus", 1)
    pub.publish(f"{topic}/a/other", b"no match", 1)
    pub.publish(f"{topic}/deep/x/y", b"hash", 1)
    pub.publish(f"{topic}/deep/leaf", b"both", 1)  # matches both filters: delivered once
    sub.subscribe(f"{topic}/end", 0)
    pub.publish(f"{topic}/end", b"", 1)
    got = [(m.topic, m.payload) for m in sub.expect_until(f"{topic}/end")]
    assert got == [(f"{topic}/a/leaf", b"plus"), (f"{topic}/deep/x/y", b"hash"),
                   (f"{topic}/deep/leaf", b"both")]


@pytest.mark.parametrize("version", VERSIONS)
def test_retained(broker: BrokerProcess, clients: MakeClient, topic: str, version: int) -> None:
    live = clients(broker.port, version).connect()
    assert live.subscribe(topic, 2) == [2]
    pub = clients(broker.port, version).connect()
    pub.publish(topic, b"kept", 1, retain=True)
    [message] = live.expect()
    assert (message.payload, message.qos, message.retain) == (b"kept", 1, False)

    later = clients(broker.port, version).connect()
    assert later.subscribe(topic, 2) == [2]
    [message] = later.expect()
    assert (message.topic, message.payload, message.qos, message.retain) == (topic, b"kept", 1,
                                                                            True)

    pub.publish(topic, b"", 1, retain=True)  # clears the retained message
    last = clients(broker.port, version).connect()
    marker = f"{topic}/marker"
    assert last.subscribe([(topic, 1), (marker, 1)]) == [1, 1]
    pub.publish(marker, b"after subscribing", 1)
    assert last.expect_until(marker) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_will_on_connection_reset(broker: BrokerProcess, clients: MakeClient, topic: str,
                                  version: int) -> None:
    check_will_on_reset(broker.port, clients, topic, version)


def check_will_on_reset(port: int, clients: MakeClient, topic: str, version: int) -> None:
    """A client whose connection is reset (no DISCONNECT) has its will published."""
    watcher = clients(port, version).connect()
    assert watcher.subscribe(topic, 1) == [1]

    # The will client runs its loop in this thread, so nothing reconnects it after the reset.
    kwargs: Dict[str, Any] = {"protocol": version, "reconnect_on_failure": False}
    will_client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
    will_client.will_set(topic, b"gone away", qos=1)
    connected = threading.Event()
    will_client.on_connect = lambda *args: connected.set()
    will_client.connect(HOST, port, 30)
    deadline = time.monotonic() + TIMEOUT
    while not connected.is_set():
        assert time.monotonic() < deadline, "will client got no CONNACK"
        will_client.loop(0.05)
    sock = will_client.socket()
    assert isinstance(sock, socket.socket)
    abort(sock)

    [message] = watcher.expect()
    assert (message.topic, message.payload, message.qos) == (topic, b"gone away", 1)


@pytest.mark.parametrize("version", VERSIONS)
def test_persistent_session(broker: BrokerProcess, clients: MakeClient, topic: str,
                            version: int) -> None:
    client_id = f"persistent-{uuid.uuid4().hex[:12]}"
    expiry = connect_props(SessionExpiryInterval=300) if version == V5 else None
    first = clients(broker.port, version, client_id, clean=False)
    first.connect(clean_start=True, properties=expiry)
    assert not first.connack_flags.session_present
    assert first.subscribe(topic, 1) == [1]
    first.disconnect()

    pub = clients(broker.port, version).connect()
    for n in range(3):
        pub.publish(topic, f"offline {n}".encode(), 1)

    second = clients(broker.port, version, client_id, clean=False)
    second.connect(clean_start=False, properties=expiry)
    assert second.connack_flags.session_present
    got = [(m.topic, m.payload, m.qos) for m in second.expect(3)]
    assert got == [(topic, f"offline {n}".encode(), 1) for n in range(3)]
    # The subscription is part of the session: live messages still arrive.
    pub.publish(topic, b"online", 1)
    assert [m.payload for m in second.expect()] == [b"online"]
    second.disconnect()

    # A clean start discards the session.
    third = clients(broker.port, version, client_id, clean=True)
    third.connect(clean_start=True)
    assert not third.connack_flags.session_present


@pytest.mark.parametrize("version", VERSIONS)
def test_shared_subscription(broker: BrokerProcess, clients: MakeClient, topic: str,
                             version: int) -> None:
    done = f"{topic}/done"
    members = [clients(broker.port, version).connect() for _ in range(2)]
    for member in members:
        assert member.subscribe([(f"$share/group/{topic}", 1), (done, 1)]) == [1, 1]
    pub = clients(broker.port, version).connect()
    for n in range(10):
        pub.publish(topic, str(n).encode(), 1)
    pub.publish(done, b"", 1)
    received = [[m.payload for m in member.expect_until(done)] for member in members]
    everything = received[0] + received[1]
    assert sorted(everything, key=int) == [str(n).encode() for n in range(10)]  # each once
    assert received[0] and received[1], received  # both members took a share


@pytest.mark.parametrize("version", VERSIONS)
def test_session_takeover(broker: BrokerProcess, clients: MakeClient, topic: str,
                          version: int) -> None:
    client_id = f"takeover-{uuid.uuid4().hex[:12]}"
    first = clients(broker.port, version, client_id).connect()
    second = clients(broker.port, version, client_id).connect()
    assert first.disconnected.wait(TIMEOUT), "the first connection was not closed"
    if version == V5:
        assert first.disconnect_rc.value == SESSION_TAKEN_OVER
    assert second.paho.is_connected()
    assert second.subscribe(topic, 1) == [1]
    second.publish(topic, b"still here", 1)
    assert [m.payload for m in second.expect()] == [b"still here"]


@pytest.mark.parametrize("version", VERSIONS)
def test_refused_subscription(limited_broker: BrokerProcess, clients: MakeClient, topic: str,
                              version: int) -> None:
    client = clients(limited_broker.port, version).connect()
    assert client.subscribe([("test/nosubscribe", 1), (topic, 1)]) == [SUBACK_FAILURE, 1]
    client.publish(topic, b"the other one works", 1)
    assert [m.payload for m in client.expect()] == [b"the other one works"]


# -- paho: MQTT 5 only --------------------------------------------------------------------------


def test_v5_properties_forwarded(broker: BrokerProcess, clients: MakeClient, topic: str) -> None:
    sub = clients(broker.port, V5).connect()
    assert sub.subscribe(topic, 1) == [1]
    pub = clients(broker.port, V5).connect()
    user = [("key", "one"), ("key", "two"), ("other", "ünïcode")]
    pub.publish(topic, b"{}", 1, properties=publish_props(
        UserProperty=user, ResponseTopic=f"{topic}/reply", CorrelationData=b"\x00\x01corr",
        ContentType="application/json", PayloadFormatIndicator=1, MessageExpiryInterval=60))
    [message] = sub.expect()
    props = message.properties
    assert props is not None
    assert props.UserProperty == user  # order and duplicates kept [MQTT-3.3.2-18]
    assert props.ResponseTopic == f"{topic}/reply"
    assert props.CorrelationData == b"\x00\x01corr"
    assert props.ContentType == "application/json"
    assert props.PayloadFormatIndicator == 1
    assert 0 < props.MessageExpiryInterval <= 60

    # The request/response pattern those properties exist for.
    sub.subscribe(f"{topic}/reply", 1)
    sub.publish(props.ResponseTopic, b"answer", 1,
                properties=publish_props(CorrelationData=props.CorrelationData))
    [reply] = sub.expect()
    assert (reply.topic, reply.payload) == (f"{topic}/reply", b"answer")
    assert reply.properties.CorrelationData == b"\x00\x01corr"


def test_v5_subscription_identifiers(broker: BrokerProcess, clients: MakeClient,
                                     topic: str) -> None:
    sub = clients(broker.port, V5).connect()
    for sub_id, topic_filter in ((42, f"{topic}/+"), (4242, f"{topic}/#")):
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = sub_id
        assert sub.subscribe(topic_filter, 1, properties=props) == [1]
    pub = clients(broker.port, V5).connect()
    pub.publish(f"{topic}/a", b"both", 1)
    pub.publish(f"{topic}/a/b", b"hash only", 1)
    first, second = sub.expect(2)
    assert first.payload == b"both"
    assert sorted(first.properties.SubscriptionIdentifier) == [42, 4242]
    assert second.payload == b"hash only"
    assert second.properties.SubscriptionIdentifier == [4242]


def test_v5_topic_alias_from_client(broker: BrokerProcess, clients: MakeClient,
                                    topic: str) -> None:
    sub = clients(broker.port, V5).connect()
    assert sub.subscribe(f"{topic}/#", 1) == [1]
    pub = clients(broker.port, V5).connect()
    assert pub.connack_props.TopicAliasMaximum >= 1
    pub.publish(f"{topic}/one", b"sets alias", 1, properties=publish_props(TopicAlias=1))
    pub.publish("", b"uses alias", 1, properties=publish_props(TopicAlias=1))
    pub.publish(f"{topic}/two", b"remaps alias", 1, properties=publish_props(TopicAlias=1))
    pub.publish("", b"uses new alias", 0, properties=publish_props(TopicAlias=1))
    got = sub.expect(4)
    assert [(m.topic, m.payload) for m in got] == [
        (f"{topic}/one", b"sets alias"), (f"{topic}/one", b"uses alias"),
        (f"{topic}/two", b"remaps alias"), (f"{topic}/two", b"uses new alias")]
    for message in got:  # an alias belongs to one hop: not forwarded
        assert not hasattr(message.properties, "TopicAlias")


def test_v5_server_keep_alive(limited_broker: BrokerProcess, clients: MakeClient) -> None:
    client = clients(limited_broker.port, V5).connect(keepalive=120)
    assert client.connack_props.ServerKeepAlive == 60
    client = clients(limited_broker.port, V5).connect(keepalive=30)
    assert not hasattr(client.connack_props, "ServerKeepAlive")  # within the limit
    # MQTT 3.1.1 has no Server Keep Alive: the client is accepted as it is.
    clients(limited_broker.port, V311).connect(keepalive=120)


def test_v5_limits_advertised(limited_broker: BrokerProcess, clients: MakeClient) -> None:
    props = clients(limited_broker.port, V5).connect().connack_props
    assert props.MaximumPacketSize == 65536
    assert props.ReceiveMaximum == 10
    assert props.TopicAliasMaximum == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_packet_too_large(limited_broker: BrokerProcess, clients: MakeClient, topic: str,
                          version: int) -> None:
    bystander = clients(limited_broker.port, version).connect()
    assert bystander.subscribe(topic, 1) == [1]
    sender = clients(limited_broker.port, version).connect()
    sender.paho.publish(topic, b"x" * 70_000, 1)  # above --max-packet-size 65536
    assert sender.disconnected.wait(TIMEOUT), "an oversized packet did not end the connection"
    if version == V5:
        assert sender.disconnect_rc.value == 0x95  # Packet too large
    bystander.publish(topic, b"y" * 60_000, 1)  # below the limit
    [message] = bystander.expect()
    assert message.payload == b"y" * 60_000


def test_v5_topic_alias_above_maximum(limited_broker: BrokerProcess, clients: MakeClient,
                                      topic: str) -> None:
    sender = clients(limited_broker.port, V5).connect()
    sender.paho.publish(topic, b"", 0, properties=publish_props(TopicAlias=3))  # maximum 2
    assert sender.disconnected.wait(TIMEOUT)
    assert sender.disconnect_rc.value == 0x94  # Topic Alias invalid


@pytest.mark.parametrize("version", VERSIONS)
def test_sys_topics(broker: BrokerProcess, limited_broker: BrokerProcess, clients: MakeClient,
                    topic: str, version: int) -> None:
    client = clients(broker.port, version).connect()
    assert client.subscribe("$SYS/broker/version", 0) == [0]
    [message] = client.expect()
    assert message.retain and message.payload.startswith(b"twisted_mqtt ")
    client.publish("$SYS/broker/version", b"forged", 1)  # the broker's own: not writable
    client.subscribe(topic, 1)
    client.publish(topic, b"marker", 1)
    assert client.expect_until(topic) == []

    quiet = clients(limited_broker.port, version).connect()  # --sys-interval 0
    assert quiet.subscribe([("$SYS/#", 0), (topic, 1)]) == [0, 1]
    quiet.publish(topic, b"marker", 1)
    assert quiet.expect_until(topic) == []


def test_shutdown_disconnects_clients(start_broker: StartBroker, clients: MakeClient) -> None:
    own = start_broker()
    v5 = clients(own.port, V5).connect()
    v311 = clients(own.port, V311).connect()
    own.check_clean_exit()  # SIGTERM: exits in time, no traceback
    assert v5.disconnected.wait(TIMEOUT) and v311.disconnected.wait(TIMEOUT)
    assert v5.disconnect_rc.value == 0x8B  # Server shutting down


# -- default security ---------------------------------------------------------------------------


def test_default_accepts_loopback_only(broker: BrokerProcess, clients: MakeClient) -> None:
    assert ("no authentication configured: anonymous clients are accepted from loopback "
            "addresses and Unix sockets only") in broker.log()
    for version in (V311, V5):
        client = clients(broker.port, version).connect()
        assert client.connack_rc.value == 0


def _non_loopback_address() -> Optional[str]:
    """A local IPv4 address that is not loopback, if the machine has one."""
    candidates = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent
            candidates.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    for address in candidates:
        if not address.startswith("127.") and address != "0.0.0.0":
            try:
                with socket.socket() as check:
                    check.bind((address, 0))
                return address
            except OSError:
                continue
    return None


def test_default_refuses_non_loopback(start_broker: StartBroker, clients: MakeClient) -> None:
    address = _non_loopback_address()
    assert address is not None, "the machine needs a non-loopback IPv4 address for this test"
    listen = [f"tcp:0:interface={address}"]
    guarded = start_broker(listen=listen, host=address)
    for version in (V311, V5):
        refused = clients(guarded.port, version, host=address)
        refused.connect(expect_success=False)
        assert refused.connack_rc.value in (5, NOT_AUTHORIZED), refused.connack_rc
    guarded.wait_for_log(r"connection refused, reason 0x87", count=2)

    open_broker = start_broker("--allow-anonymous", listen=listen, host=address)
    assert "anonymous clients are accepted from any address" in open_broker.log()
    clients(open_broker.port, V5, host=address).connect()


# -- bad input over a real socket ---------------------------------------------------------------


def test_http_request_is_dropped(broker: BrokerProcess, clients: MakeClient, topic: str) -> None:
    bystander = clients(broker.port, V5).connect()
    assert bystander.subscribe(topic, 1) == [1]

    with socket.create_connection((HOST, broker.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        started = time.monotonic()
        received = b""
        while True:  # the broker closes; it answers nothing an HTTP client could parse
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        assert time.monotonic() - started < 3.0
        assert received == b""

    broker.wait_for_log(r"first packet is not CONNECT.*; closing", timeout=TIMEOUT)
    assert not log_problems(broker.log()), broker.log()
    bystander.publish(topic, b"unaffected", 1)
    assert [m.payload for m in bystander.expect()] == [b"unaffected"]


def test_garbage_after_connect_is_dropped(broker: BrokerProcess, clients: MakeClient,
                                          topic: str) -> None:
    bystander = clients(broker.port, V311).connect()
    assert bystander.subscribe(topic, 1) == [1]
    with socket.create_connection((HOST, broker.port), timeout=TIMEOUT) as sock:
        # CONNECT, MQTT 3.1.1, clean session, keep alive 30, client id "raw".
        sock.sendall(b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x1e\x00\x03raw")
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        sock.sendall(b"\xff\xff\xff\xff\xff")  # reserved packet type, bad remaining length
        sock.settimeout(TIMEOUT)
        try:
            assert sock.recv(4096) == b""
        except ConnectionResetError:
            pass
    assert not log_problems(broker.log()), broker.log()
    bystander.publish(topic, b"unaffected", 1)
    assert [m.payload for m in bystander.expect()] == [b"unaffected"]


# -- mosquitto_pub / mosquitto_sub --------------------------------------------------------------


def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    assert not missing, f"not installed: {', '.join(missing)} (Debian: mosquitto-clients)"


MOSQUITTO_FORMAT = "%q %r %t %p"  # QoS, retain flag, topic, payload


class MosquittoSub:
    """``mosquitto_sub`` in the background, line-buffered (``stdbuf -oL``) so that its debug
    output tells when the SUBACK has arrived."""

    def __init__(self, port: int, topic: str, count: int, qos: int, version: str) -> None:
        _need("mosquitto_sub", "stdbuf")
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-d", "-h", HOST, "-p", str(port), "-t", topic,
             "-C", str(count), "-W", "20", "-q", str(qos), "-V", version,
             "-F", MOSQUITTO_FORMAT],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        self.output: List[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def wait_subscribed(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"mosquitto_sub got no SUBACK: {self.output}") from None
            if line is None:
                raise AssertionError(f"mosquitto_sub exited: {self.output}")
            self.output.append(line)
            if "received SUBACK" in line:
                return

    def messages(self) -> List[str]:
        """Wait for the process to exit (it does after ``count`` messages); the message lines."""
        deadline = time.monotonic() + TIMEOUT * 2
        while True:  # read to the end of its output (the reader thread queues None there)
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"mosquitto_sub did not finish: {self.output}") from None
            if line is None:
                break
            self.output.append(line)
        assert self.proc.wait(TIMEOUT) == 0, self.output
        return [line for line in self.output
                if not line.startswith(("Client ", "Subscribed ("))]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def mosquitto_pub(port: int, topic: str, version: str, *args: str) -> None:
    _need("mosquitto_pub")
    result = subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(port), "-t", topic,
                             "-V", version, *args],
                            capture_output=True, text=True, timeout=TIMEOUT * 2)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", MOSQUITTO_VERSIONS)
def test_mosquitto_qos(broker: BrokerProcess, topic: str, version: str) -> None:
    """Stock ``mosquitto_pub`` and ``mosquitto_sub`` interoperate with the broker at every QoS,
    needing no extension [MQTT-7.0.0-2 (3.1.1)]."""
    sub = MosquittoSub(broker.port, topic, 3, 2, version)
    try:
        sub.wait_subscribed()
        for qos in (0, 1, 2):
            mosquitto_pub(broker.port, topic, version, "-q", str(qos), "-m", f"at-qos-{qos}")
        assert sorted(sub.messages()) == [f"{q} 0 {topic} at-qos-{q}" for q in (0, 1, 2)]
    finally:
        sub.kill()


@pytest.mark.parametrize("version", MOSQUITTO_VERSIONS)
def test_mosquitto_retained(broker: BrokerProcess, topic: str, version: str) -> None:
    _need("mosquitto_sub")
    mosquitto_pub(broker.port, topic, version, "-q", "1", "-r", "-m", "retained payload")
    result = subprocess.run(["mosquitto_sub", "-h", HOST, "-p", str(broker.port), "-t", topic,
                             "-q", "2", "-C", "1", "-W", "10", "-V", version,
                             "-F", MOSQUITTO_FORMAT],
                            capture_output=True, text=True, timeout=TIMEOUT * 3)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"1 1 {topic} retained payload\n"
    mosquitto_pub(broker.port, topic, version, "-q", "1", "-r", "-n")  # clear it


@pytest.mark.parametrize("version", MOSQUITTO_VERSIONS)
def test_mosquitto_large_payload(broker: BrokerProcess, topic: str, tmp_path: Path,
                                 version: str) -> None:
    payload = "".join(random.choices(string.ascii_letters + string.digits, k=100 * 1024))
    path = tmp_path / "payload.txt"
    path.write_text(payload)
    sub = MosquittoSub(broker.port, topic, 1, 1, version)
    try:
        sub.wait_subscribed()
        mosquitto_pub(broker.port, topic, version, "-q", "1", "-f", str(path))
        [line] = sub.messages()
        assert line == f"1 0 {topic} {payload}"
    finally:
        sub.kill()


@pytest.mark.parametrize("version", MOSQUITTO_VERSIONS)
def test_mosquitto_to_paho(broker: BrokerProcess, clients: MakeClient, topic: str,
                           version: str) -> None:
    other = V5 if version == "mqttv311" else V311  # across protocol versions, too
    sub = clients(broker.port, other).connect()
    assert sub.subscribe(topic, 2) == [2]
    mosquitto_pub(broker.port, topic, version, "-q", "2", "-m", "from mosquitto_pub")
    [message] = sub.expect()
    assert (message.payload, message.qos) == (b"from mosquitto_pub", 2)


@pytest.mark.parametrize("version", MOSQUITTO_VERSIONS)
def test_will_on_sigkill(broker: BrokerProcess, clients: MakeClient, topic: str,
                         version: str) -> None:
    _need("mosquitto_sub")
    watcher = clients(broker.port, V5).connect()
    assert watcher.subscribe(topic, 1) == [1]
    client_id = f"doomed-{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(["mosquitto_sub", "-h", HOST, "-p", str(broker.port), "-i", client_id,
                             "-t", f"{topic}/unused", "-V", version, "--will-topic", topic,
                             "--will-payload", "killed", "--will-qos", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        broker.wait_for_log(re.escape(f"<Connection {client_id} from") + r".*: connected",
                            timeout=TIMEOUT)
    finally:
        proc.kill()  # SIGKILL: the process cannot send DISCONNECT
        proc.wait(TIMEOUT)
    [message] = watcher.expect()
    assert (message.topic, message.payload, message.qos) == (topic, b"killed", 1)


# -- the command line ---------------------------------------------------------------------------


def test_python_m_serves_a_client(start_broker: StartBroker, clients: MakeClient,
                                  topic: str) -> None:
    """``python -m twisted_mqtt`` serves clients, on ``MQTTReactor`` with the collector tuned
    (on Linux and CPython), and says whether its codec is compiled."""
    module_broker = start_broker(module=True)
    assert "accepted from loopback addresses and Unix sockets only" in module_broker.log()
    client = clients(module_broker.port, V5).connect()
    assert client.subscribe(topic, 1) == [1]
    client.publish(topic, b"via python -m", 1)
    assert [m.payload for m in client.expect()] == [b"via python -m"]
    if hasattr(select, "epoll"):
        module_broker.wait_for_log(r"reactor: twisted_mqtt\.reactor\.MQTTReactor\n")
    if platform.python_implementation() == "CPython":
        module_broker.wait_for_log("garbage collector: start-up objects frozen")
    if codec.compiled():
        module_broker.wait_for_log(r"codec: compiled \(mypyc\)\n")
    elif platform.python_implementation() == "CPython":  # and how to compile it
        module_broker.wait_for_log("codec: pure Python; installed with TWISTED_MQTT_COMPILE=1")
    else:
        module_broker.wait_for_log(r"codec: pure Python\n")


@pytest.mark.skipif(not hasattr(select, "epoll"), reason="the mqtt reactor needs epoll")
@pytest.mark.parametrize("version", VERSIONS)
def test_twistd_mqtt_reactor_serves_clients(start_broker: StartBroker, clients: MakeClient,
                                            topic: str, version: int) -> None:
    """``twistd --reactor=mqtt`` runs the broker on ``MQTTReactor``: messages at every QoS
    arrive, a client that goes away is noticed (its will is published), and it stops cleanly
    (checked when the test ends)."""
    fast = start_broker(twistd_options=("--reactor=mqtt",))
    fast.wait_for_log(r"reactor: twisted_mqtt\.reactor\.MQTTReactor\n")  # once it runs
    sub = clients(fast.port, version).connect()
    assert sub.subscribe(topic, 2) == [2]
    pub = clients(fast.port, version).connect()
    for qos in (0, 1, 2):
        pub.publish(topic, f"qos {qos}".encode(), qos)
    got = {m.payload: m.qos for m in sub.expect(3)}
    assert got == {b"qos 0": 0, b"qos 1": 1, b"qos 2": 2}
    check_will_on_reset(fast.port, clients, topic + "/will", version)


def test_twistd_default_reactor_names_the_faster_one(broker: BrokerProcess) -> None:
    """Under plain ``twistd`` the log says which reactor runs and, on Linux, how to choose
    the faster one."""
    broker.wait_for_log("reactor: twisted")
    if hasattr(select, "epoll"):
        broker.wait_for_log(r"--reactor=mqtt \(twistd\)")


def test_twistd_help_lists_options() -> None:
    result = run_twistd("-n", "mqtt", "--help")
    assert result.returncode == 0, result.stdout + result.stderr
    for option in ("--tcp", "--listen", "--allow-anonymous", "--max-keep-alive",
                   "--refuse-subscribe", "--max-packet-size", "--receive-maximum",
                   "--topic-alias-maximum", "--sys-interval"):
        assert option in result.stdout, option


BAD_OPTIONS: List[Tuple[List[str], str]] = [
    (["--no-such-option"], "no-such-option"),
    (["--tcp", "notaport"], "notaport"),
    (["--tcp", "70000"], "70000"),
    (["--listen", "nonsense:1883"], "nonsense"),
    (["--listen", "tcp:notaport"], "notaport"),
]


@pytest.mark.parametrize("args,mentioned", BAD_OPTIONS, ids=lambda v: str(v))
def test_bad_option_twistd(args: List[str], mentioned: str) -> None:
    result = run_twistd("-n", "--pidfile=", "mqtt", *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert mentioned in output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("args,mentioned", BAD_OPTIONS[:2] + BAD_OPTIONS[3:4],
                         ids=lambda v: str(v))
def test_bad_option_python_m(args: List[str], mentioned: str) -> None:
    result = subprocess.run([sys.executable, "-m", "twisted_mqtt", *args], env=broker_env(),
                            cwd=ROOT, capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode in (USAGE_ERROR_EXIT, CONFIG_ERROR_EXIT), output
    assert mentioned in output
    assert "Traceback" not in output, output
