"""The MQTT bridge end to end: a twistd broker bridged to Debian's Mosquitto, each started
privately on loopback, with real paho clients on both sides.

Both directions with prefixes and wildcards over MQTT 5 and 3.1.1 remotes, TLS with a client
certificate, loop prevention (a ``both`` rule does not echo), the remote restarted in the middle
of a QoS 1 stream (nothing acknowledged is lost), and the queue bound while the remote is down.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, List, Set

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from tests.certs import make_pki
from tests.cluster_helpers import wait_for
from tests.conftest import BrokerProcess, StartBroker
from tests.paho import V5, V311, Client, MakeClient
from tests.servers import MosquittoServer, StartMosquitto, free_port, start_mosquitto  # noqa: F401
from tests.spec import check_cited_labels

TIMEOUT = 30.0
"""Seconds to wait for anything crossing the bridge (the machine is shared)."""


def start_bridged(start_broker: StartBroker, address: str, *rules: str,
                  options: Any = ()) -> BrokerProcess:
    """A broker with a stats listener and bridge ``m`` to ``address``, connected."""
    argv = ["--stats", "tcp:0:interface=127.0.0.1", "--bridge", f"m={address}"]
    for rule in rules:
        argv += ["--bridge-topic", f"m={rule}"]
    for option in options:
        argv += ["--bridge-option", f"m.{option}"]
    broker = start_broker(*argv)
    broker.wait_for_log("bridge m: connected to", timeout=TIMEOUT)
    return broker


def tcp(mosquitto: MosquittoServer) -> str:
    return f"tcp:host=127.0.0.1:port={mosquitto.port}"


def metric(broker: BrokerProcess, name: str) -> float:
    """A bridge metric of bridge ``m`` read from ``/metrics``."""
    port = broker.port_of("stats")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    found = re.search(rf'^{name}{{bridge="m"}} (\S+)$', text.decode(), re.MULTILINE)
    assert found, f"no {name} in /metrics"
    return float(found.group(1))


@pytest.mark.parametrize("protocol, version", [("5", V5), ("3.1.1", V311)])
def test_both_directions_with_prefixes(start_broker: StartBroker,
                                       start_mosquitto: StartMosquitto,  # noqa: F811
                                       clients: MakeClient, protocol: str,
                                       version: int) -> None:
    """``out`` maps ``site/sensors/#`` here to ``cloud/site1/sensors/#`` there, ``in`` brings
    ``cloud/site1/commands/+/set`` here as ``site/commands/+/set``; QoS, the RETAIN flag and
    (MQTT 5) user properties, content type and the remaining expiry travel across
    [MQTT-3.3.2-17] [MQTT-3.3.2-6]; the state is retained in $SYS."""
    mosquitto = start_mosquitto()
    broker = start_bridged(start_broker, tcp(mosquitto), "sensors/# out 1 site/ cloud/site1/",
                           "commands/+/set in 1 site/ cloud/site1/",
                           options=[f"protocol={protocol}"])
    remote_sub = clients(mosquitto.port, version).connect()
    remote_sub.subscribe("cloud/#", 1)
    local_sub = clients(broker.port, V5).connect()
    local_sub.subscribe("site/commands/#", 1)
    local_sub.subscribe("$SYS/broker/connection/m/state", 1)
    assert local_sub.expect(1, TIMEOUT)[0].payload == b"1"

    props = PahoProperties(PacketTypes.PUBLISH)
    props.UserProperty = [("unit", "C")]
    props.ContentType = "text/plain"
    props.MessageExpiryInterval = 600
    clients(broker.port, V5).connect().publish("site/sensors/k1/temp", b"21.5", 1, True, props)
    got = remote_sub.expect(1, TIMEOUT)[0]
    assert (got.topic, got.payload, got.qos) == ("cloud/site1/sensors/k1/temp", b"21.5", 1)
    if version == V5:
        carried: Any = got.properties
        assert carried.UserProperty == [("unit", "C")]
        assert carried.ContentType == "text/plain"
        assert 590 <= carried.MessageExpiryInterval <= 600
    # retained there: a new subscriber gets it
    late = clients(mosquitto.port, V5).connect()
    late.subscribe("cloud/site1/sensors/#", 1)
    kept = late.expect(1, TIMEOUT)[0]
    assert (kept.topic, kept.payload, kept.retain) == ("cloud/site1/sensors/k1/temp", b"21.5",
                                                       True)

    clients(mosquitto.port, version).connect().publish("cloud/site1/commands/k1/set", b"on", 1)
    clients(mosquitto.port, version).connect().publish("cloud/other/commands/k1/set", b"no", 1)
    got = local_sub.expect(1, TIMEOUT)[0]
    assert (got.topic, got.payload, got.qos) == ("site/commands/k1/set", b"on", 1)
    clients(mosquitto.port, version).connect().publish("cloud/site1/commands/k2/set", b"kept", 1,
                                                       True)
    assert local_sub.expect(1, TIMEOUT)[0].payload == b"kept"
    if version == V5:  # MQTT 3.1.1 sends live messages with RETAIN 0 [MQTT-3.3.1-9 (3.1.1)]
        late_here = clients(broker.port, V5).connect()
        late_here.subscribe("site/commands/k2/set", 1)
        kept = late_here.expect(1, TIMEOUT)[0]
        assert (kept.payload, kept.retain) == (b"kept", True)
    assert metric(broker, "mqtt_bridge_connected") == 1.0
    assert metric(broker, "mqtt_bridge_messages_received_total") == 2.0


@pytest.mark.parametrize("protocol, version", [("5", V5), ("3.1.1", V311)])
def test_a_both_rule_does_not_echo(start_broker: StartBroker,
                                   start_mosquitto: StartMosquitto,  # noqa: F811
                                   clients: MakeClient, protocol: str, version: int) -> None:
    """A message published on either side of a ``both`` rule reaches the other side once and
    does not come back: No Local on an MQTT 5 remote [MQTT-3.8.3-3], the bridge's echo filter
    on an MQTT 3.1.1 one, and locally the bridge never exports what it imported."""
    mosquitto = start_mosquitto()
    broker = start_bridged(start_broker, tcp(mosquitto), "chat/# both 1",
                           options=[f"protocol={protocol}"])
    local_sub = clients(broker.port, V5).connect()
    local_sub.subscribe("chat/#", 1)
    remote_sub = clients(mosquitto.port, version).connect()
    remote_sub.subscribe("chat/#", 1)
    clients(broker.port, V5).connect().publish("chat/here", b"from here", 1)
    clients(mosquitto.port, version).connect().publish("chat/there", b"from there", 1)
    both = [("chat/here", b"from here"), ("chat/there", b"from there")]
    assert sorted((m.topic, m.payload) for m in local_sub.expect(2, TIMEOUT)) == both
    assert sorted((m.topic, m.payload) for m in remote_sub.expect(2, TIMEOUT)) == both
    # Barriers crossing the bridge after any echo would have: nothing more before them.
    clients(mosquitto.port, version).connect().publish("chat/end-there", b"", 1)
    clients(broker.port, V5).connect().publish("chat/end-here", b"", 1)
    assert {m.topic for m in local_sub.expect_until("chat/end-there", TIMEOUT)} <= {
        "chat/end-here"}
    assert {m.topic for m in remote_sub.expect_until("chat/end-here", TIMEOUT)} <= {
        "chat/end-there"}


def test_qos2_exactly_once_each_way(start_broker: StartBroker,
                                    start_mosquitto: StartMosquitto,  # noqa: F811
                                    clients: MakeClient) -> None:
    """A ``both`` rule at QoS 2 carries QoS 2 messages both ways, each delivered once."""
    mosquitto = start_mosquitto()
    broker = start_bridged(start_broker, tcp(mosquitto), "q/# both 2")
    local_sub = clients(broker.port, V5).connect()
    local_sub.subscribe("q/from-there/#", 2)
    remote_sub = clients(mosquitto.port, V5).connect()
    remote_sub.subscribe("q/from-here/#", 2)
    for number in range(20):
        clients(broker.port, V5).connect().publish(f"q/from-here/{number}", b"h", 2)
        clients(mosquitto.port, V5).connect().publish(f"q/from-there/{number}", b"t", 2)
    clients(broker.port, V5).connect().publish("q/from-here/end", b"", 2)
    clients(mosquitto.port, V5).connect().publish("q/from-there/end", b"", 2)
    for sub, side in ((remote_sub, "here"), (local_sub, "there")):
        got = [(m.topic, m.qos) for m in sub.expect_until(f"q/from-{side}/end", TIMEOUT)]
        assert sorted(got) == sorted((f"q/from-{side}/{n}", 2) for n in range(20))


def test_remote_keeps_the_session_while_this_broker_restarts(
        tmp_path: Path, start_broker: StartBroker,
        start_mosquitto: StartMosquitto) -> None:  # noqa: F811
    """With ``clean_start: false`` the remote keeps the bridge's session: what is published
    there for an ``in`` rule while this broker is stopped arrives when it is back (here kept
    for a persistent local session by the SQLite store)."""
    mosquitto = start_mosquitto()
    store = f"sqlite:{tmp_path / 'broker.db'}"
    argv = ["--store", store, "--bridge", f"m={tcp(mosquitto)}", "--bridge-topic",
            "m=# in 1 here/ there/", "--bridge-option", "m.client_id=site1"]
    broker = start_broker(*argv)
    broker.wait_for_log("bridge m: connected to", timeout=TIMEOUT)
    subscriber = Client(broker.port, V311, "keeper", clean=False)
    subscriber.connect()
    subscriber.subscribe("here/#", 1)
    subscriber.close()
    broker.check_clean_exit()
    publisher = Client(mosquitto.port, V5)
    publisher.connect()
    for number in range(5):
        publisher.publish("there/x", str(number).encode(), 1)
    publisher.close()
    broker = start_broker(*argv)
    broker.wait_for_log("bridge m: connected to", timeout=TIMEOUT)
    subscriber = Client(broker.port, V311, "keeper", clean=False)
    try:
        subscriber.connect()
        assert [bytes(m.payload) for m in subscriber.expect(5, TIMEOUT)] == [
            b"0", b"1", b"2", b"3", b"4"]
    finally:
        subscriber.close()


def test_tls_with_a_client_certificate(tmp_path: Path, start_broker: StartBroker,
                                       start_mosquitto: StartMosquitto,  # noqa: F811
                                       clients: MakeClient) -> None:
    """The remote address is any client endpoint: ``tls:`` trusting the remote's CA and
    presenting a client certificate that Mosquitto requires."""
    pki = make_pki(tmp_path)
    chain = tmp_path / "server-chain.pem"
    chain.write_bytes(pki.server_cert.read_bytes() + pki.intermediate.read_bytes())
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "root.pem").write_bytes(pki.root.read_bytes())
    port = free_port()
    mosquitto = start_mosquitto(f"listener {port} 127.0.0.1", f"cafile {pki.client_ca}",
                                f"certfile {chain}", f"keyfile {pki.server_key}",
                                "require_certificate true")
    address = (f"tls:host=127.0.0.1:port={port}:trustRoots={roots}:"
               f"certificate={pki.client_cert}:privateKey={pki.client_key}")
    broker = start_bridged(start_broker, address, "# out 1 secure/ remote/")
    remote_sub = clients(mosquitto.port, V5).connect()
    remote_sub.subscribe("remote/#", 1)
    clients(broker.port, V5).connect().publish("secure/a", b"over tls", 1)
    got = remote_sub.expect(1, TIMEOUT)[0]
    assert (got.topic, got.payload) == ("remote/a", b"over tls")


def test_credentials_and_a_refused_connection(tmp_path: Path, start_broker: StartBroker,
                                              start_mosquitto: StartMosquitto,  # noqa: F811
                                              clients: MakeClient) -> None:
    """The bridge logs in with its user name and password; a remote refusing it (a wrong
    password) gets one error line naming the reason, the state stays 0, and the broker serves
    on and stops cleanly."""
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "site1", "s3cret"],
                   check=True, capture_output=True)
    mosquitto = start_mosquitto("allow_anonymous false", f"password_file {passwords}")
    good = start_bridged(start_broker, tcp(mosquitto), "# out 1 a/ b/",
                         options=["username=site1", "password=s3cret", "client_id=good"])
    bad = start_broker("--bridge", f"m={tcp(mosquitto)}", "--bridge-topic", "m=# out 1",
                       "--bridge-option", "m.username=site1", "--bridge-option",
                       "m.password=wrong", "--bridge-option", "m.client_id=bad")
    bad.wait_for_log(r"bridge m: \S+ refused the connection: Not authorized", timeout=TIMEOUT)
    state = clients(bad.port, V5).connect()
    state.subscribe("$SYS/broker/connection/m/state", 1)
    assert state.expect(1, TIMEOUT)[0].payload == b"0"
    assert clients(mosquitto.port, V5).connect(expect_success=False).connack_rc.is_failure
    sub = Client(mosquitto.port, V5)
    sub.paho.username_pw_set("site1", "s3cret")
    sub.connect()
    try:
        sub.subscribe("b/#", 1)
        clients(good.port, V5).connect().publish("a/x", b"logged in", 1)
        assert sub.expect(1, TIMEOUT)[0].payload == b"logged in"
    finally:
        sub.close()


def collect(port: int, client_id: str) -> Client:
    """A persistent MQTT 3.1.1 subscriber to ``stream/#`` on the remote."""
    collector = Client(port, V311, client_id, clean=False)
    collector.connect()
    collector.subscribe("stream/#", 1)
    return collector


def drain(collector: Client, numbers: Set[int], until: int) -> None:
    """Add what ``collector`` received to ``numbers`` until ``until`` is among them."""
    deadline = time.monotonic() + TIMEOUT
    while until not in numbers:
        assert time.monotonic() < deadline, f"{until} not received; have {len(numbers)}"
        try:
            message = collector.messages.get(timeout=1.0)
        except Exception:
            continue
        numbers.add(int(message.payload))


def test_remote_restarted_in_a_qos1_stream(start_broker: StartBroker,
                                           start_mosquitto: StartMosquitto,  # noqa: F811
                                           ) -> None:
    """Mosquitto is restarted (its persistence kept) while 300 numbered QoS 1 messages go
    out: every message this broker acknowledged reaches the remote's persistent subscriber
    (duplicates allowed), and the bridge counts none dropped."""
    mosquitto = start_mosquitto()
    collector = collect(mosquitto.port, "collector")
    broker = start_bridged(start_broker, tcp(mosquitto), "# out 1 stream/ stream/")
    publisher = Client(broker.port, V5, "publisher")
    publisher.connect()
    numbers: Set[int] = set()
    try:
        for number in range(300):
            publisher.publish(f"stream/{number % 7}", str(number).encode(), 1)
            if number == 100:
                drain(collector, numbers, 50)
                collector.close()
                _take(collector, numbers)  # what it acknowledged before it closed
                mosquitto.restart()
                collector = collect(mosquitto.port, "collector")
        drain(collector, numbers, 299)
        wait_for(lambda: len(numbers) == 300 or _take(collector, numbers),
                 "every message received")
    finally:
        publisher.close()
        collector.close()
    assert set(range(300)) - numbers == set()
    assert metric(broker, "mqtt_bridge_messages_dropped_total") == 0
    assert metric(broker, "mqtt_bridge_connects_total") >= 2


def _take(collector: Client, numbers: Set[int]) -> bool:
    """Add what ``collector`` has received to ``numbers``; whether all 300 are there."""
    while not collector.messages.empty():
        numbers.add(int(collector.messages.get().payload))
    return len(numbers) == 300


def test_queue_bound_while_the_remote_is_down(start_broker: StartBroker,
                                              start_mosquitto: StartMosquitto,  # noqa: F811
                                              ) -> None:
    """While Mosquitto is down, 5 of 12 QoS 1 messages are queued (``queue_messages``); the
    other 7 are dropped, counted in /metrics and logged once; after Mosquitto is back the 5
    arrive in order."""
    mosquitto = start_mosquitto()
    collector = collect(mosquitto.port, "collector")
    collector.close()
    broker = start_bridged(start_broker, tcp(mosquitto), "# out 1 stream/ stream/",
                           options=["queue_messages=5"])
    mosquitto.stop()
    broker.wait_for_log("bridge m: connection to .* lost", timeout=TIMEOUT)
    publisher = Client(broker.port, V5, "publisher")
    publisher.connect()
    for number in range(12):
        publisher.publish("stream/n", str(number).encode(), 1)
    publisher.close()
    assert metric(broker, "mqtt_bridge_queued_messages") == 5
    assert metric(broker, "mqtt_bridge_messages_dropped_total") == 7
    assert broker.log().count("outbound queue full") == 1
    mosquitto.restart()
    broker.wait_for_log("bridge m: connected to", count=2, timeout=TIMEOUT)
    collector = collect(mosquitto.port, "collector")
    try:
        got: List[bytes] = [bytes(m.payload) for m in collector.expect(5, TIMEOUT)]
    finally:
        collector.close()
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    broker.wait_for_log("the queue has room again \\(7 messages dropped", timeout=TIMEOUT)


check_cited_labels(sys.modules[__name__])
