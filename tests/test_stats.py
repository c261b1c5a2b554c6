"""The stats listener: ``/`` ($SYS figures as JSON), ``/healthcheck`` and ``/metrics``
(Prometheus text format), read with real HTTP requests while real clients move the counters."""

from __future__ import annotations

import json
import math
import socket
import urllib.error
import urllib.request
import uuid
from typing import Any, Dict, Tuple

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import threads

from tests.conftest import LOOPBACK, StartBroker
from tests.paho import TIMEOUT, V5
from tests.test_broker_sessions import _figures, _hub, _join, _publishes, _subscribe
from twisted_mqtt.auth import AllowAll
from twisted_mqtt.capabilities import Capabilities
from twisted_mqtt.packets import Publish
from twisted_mqtt.service import BrokerService
from twisted_mqtt.stats import LoadAverages, Stats

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def get(port: int, path: str) -> Tuple[int, str, str]:
    """GET ``path``: status, content type and body (error statuses included)."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=TIMEOUT) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, parsed by prometheus-client, by name and labels."""
    status, kind, text = get(port, "/metrics")
    assert status == 200 and kind.startswith("text/plain"), (status, kind)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value."""
    return samples[(name, tuple(sorted(labels.items())))]




def test_figures_health_and_metrics(start_broker: StartBroker, clients: Any) -> None:
    broker = start_broker("--ws", LOOPBACK, "--stats", LOOPBACK, "--sys-interval", "0")
    stats_port = broker.port_of("stats")

    status, kind, body = get(stats_port, "/")
    figures = json.loads(body)
    assert status == 200 and kind == "application/json"
    assert figures["clients/connected"] == 0 and figures["version"].startswith("twisted_mqtt")
    assert get(stats_port, "/healthcheck")[:1] == (200,)
    assert get(stats_port, "/nothing")[0] == 404

    before = scrape(stats_port)
    mqtt_listener = (("kind", "MQTT"), ("listener", LOOPBACK))
    assert before[("mqtt_listener_connections", mqtt_listener)] == 0
    assert value(before, "mqtt_listener_connections", kind="WebSocket", listener=LOOPBACK) == 0
    for name in ("mqtt_clients_connected", "mqtt_sessions", "mqtt_subscriptions",
                 "mqtt_messages_inflight", "mqtt_messages_retained", "mqtt_uptime_seconds",
                 "mqtt_messages_dropped_total", "mqtt_bytes_received_total",
                 "mqtt_bytes_sent_total", "mqtt_auth_failures_total",
                 "mqtt_clients_accepted_total"):
        assert (name, ()) in before, name

    topic = f"stats/{uuid.uuid4().hex[:12]}"
    sub = clients(broker.port, V5).connect()
    pub = clients(broker.port, V5).connect()
    assert sub.subscribe(topic, 2) == [2]
    for qos in (0, 1, 2, 2):
        pub.publish(topic, f"qos {qos}".encode(), qos, retain=qos == 1)
    assert len(sub.expect(4)) == 4

    after = scrape(stats_port)
    assert after[("mqtt_listener_connections", mqtt_listener)] == 2
    assert value(after, "mqtt_clients_connected") == 2
    assert value(after, "mqtt_subscriptions") == 1
    assert value(after, "mqtt_messages_retained") == 1
    for qos, count in (("0", 1), ("1", 1), ("2", 2)):
        assert (value(after, "mqtt_messages_received_total", qos=qos)
                - value(before, "mqtt_messages_received_total", qos=qos)) == count
        assert (value(after, "mqtt_messages_sent_total", qos=qos)
                - value(before, "mqtt_messages_sent_total", qos=qos)) == count
    for name in ("mqtt_bytes_received_total", "mqtt_bytes_sent_total",
                 "mqtt_packets_received_total", "mqtt_packets_sent_total"):
        assert value(after, name) > value(before, name), name
    assert value(after, "mqtt_clients_accepted_total") == 2

    with socket.create_connection((HOST, broker.port), timeout=TIMEOUT) as http:
        http.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not MQTT: a protocol error
        http.settimeout(TIMEOUT)
        assert http.recv(64) == b""
    assert value(scrape(stats_port), "mqtt_protocol_errors_total") >= 1

    figures = json.loads(get(stats_port, "/")[2])
    assert figures["clients/connected"] == 2
    assert figures["messages/received"] == sum(
        value(after, "mqtt_messages_received_total", qos=q) for q in "012")


@pytest_twisted.inlineCallbacks
def test_healthcheck_while_starting_and_stopping() -> Any:
    """503 before the MQTT listeners listen and while clients drain at shutdown, 200 between."""
    from twisted.internet import reactor

    service = BrokerService(reactor=reactor, authenticator=AllowAll(),
                            capabilities=Capabilities(sys_interval=0))
    mqtt = service.add_listener(LOOPBACK)
    stats = service.add_stats_listener(LOOPBACK)
    stats.startService()  # e.g. started early by an application; the broker is not running
    holder = None
    try:
        assert stats.port is not None
        port = stats.port.getHost().port
        status, _, body = yield threads.deferToThread(get, port, "/healthcheck")
        assert (status, body) == (503, "unavailable\n")

        service.startService()
        assert mqtt.port is not None
        status, _, body = yield threads.deferToThread(get, port, "/healthcheck")
        assert (status, body) == (200, "ok\n")

        # A client that neither reads nor closes keeps the listener draining for a while.
        holder = socket.create_connection((HOST, mqtt.port.getHost().port), timeout=TIMEOUT)
        yield threads.deferToThread(lambda: None)  # let the reactor accept it
        assert mqtt.tracker is not None
        while not mqtt.tracker.connections:
            yield threads.deferToThread(lambda: None)
        stopping = service.stopService()
        status, _, body = yield threads.deferToThread(get, port, "/healthcheck")
        assert (status, body) == (503, "unavailable\n")
        holder.close()
        yield stopping
        assert not stats.listening and not mqtt.listening
    finally:
        if holder is not None:
            holder.close()
        if service.running:
            yield service.stopService()


def test_sys_load_averages() -> None:
    """``$SYS/broker/load/NAME/1min``, ``5min`` and ``15min``, as Mosquitto publishes them:
    each counter's rate per minute over the last interval, averaged with an exponential decay
    of one, five and fifteen minutes; 0 at start, then following the traffic, then decaying
    when it stops."""
    hub = _hub(sys_interval=10)
    watcher = hub.client(protocol_level=5)
    watcher.connect("load-watcher", keep_alive=0)
    first = _figures(_subscribe(watcher, "$SYS/broker/load/#", 0))
    names = ("messages/received", "messages/sent", "bytes/received", "bytes/sent",
             "connections", "publish/dropped")
    assert set(first) == {f"load/{name}/{window}" for name in names
                          for window in ("1min", "5min", "15min")}
    assert set(first.values()) == {b"0.0"}
    publisher = _join(hub, "load-publisher")
    for n in range(30):
        publisher.send(Publish("data", b"%d" % n, 0))
    hub.advance(10)  # 30 messages and 2 connections in 10 s: 180 and 12 per minute

    def expected(rate: float, window: float, before: float = 0.0, elapsed: float = 10) -> float:
        decay = math.exp(-elapsed / window)
        return rate + decay * (before - rate)

    second = _figures(_publishes(watcher))
    for window, seconds in (("1min", 60), ("5min", 300), ("15min", 900)):
        received = expected(180, seconds)
        assert second[f"load/messages/received/{window}"] == b"%r" % round(received, 2)
        assert second[f"load/connections/{window}"] == b"%r" % round(expected(12, seconds), 2)
    hub.advance(10)  # no traffic: the averages decay
    third = _figures(_publishes(watcher))
    decayed = expected(0, 60, expected(180, 60))
    assert third["load/messages/received/1min"] == b"%r" % round(decayed, 2)
    assert hub.broker.sys_figures()["load/messages/received/1min"] == round(decayed, 2)


def test_load_averages_converge() -> None:
    """At a steady rate each load average tends to that rate, the one-minute one first."""
    stats = Stats()
    load = LoadAverages()
    load.update(0.0, stats)
    for tick in range(1, 361):  # an hour in 10 s steps, 100 bytes received per minute
        stats.bytes_received += 100 // 6
        load.update(tick * 10.0, stats)
        if tick == 30:  # five minutes
            five = load.figures()
            assert five["load/bytes/received/1min"] > five["load/bytes/received/5min"] > \
                five["load/bytes/received/15min"] > 0
    final = load.figures()
    assert final["load/bytes/received/1min"] == final["load/bytes/received/5min"] == 96.0
    assert final["load/bytes/received/15min"] == pytest.approx(96 * (1 - math.exp(-4)), abs=0.01)
    load.update(3600.0, stats)  # the same instant again: nothing changes
    assert load.figures() == final
