"""The cluster under faults, end to end: a private ``redis-server`` this module may kill, three
``twistd mqtt --cluster`` nodes and more to kill or stop, real paho clients.

Jepsen's way: numbered messages, a fault injected while they flow (SIGKILL of a node, SIGSTOP
past its lease, Redis killed and restarted), and a count of what each client received against
what was acknowledged to the publisher.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Dict, Iterator, List, Set

import pytest
from paho.mqtt.enums import MQTTErrorCode

from tests.cluster_helpers import (
    LEASE,
    WAIT,
    Nodes,
    collect,
    connect,
    reach_every_member,
    routed,
    running_cluster,
    unique,
    wait_for,
)
from tests.conftest import LOOPBACK
from tests.paho import V5, V311, Client
from tests.servers import KillableRedis
from tests.spec import check_cited_labels
from tests.test_stats import get, scrape, value

pytestmark = pytest.mark.e2e

PREFIX = "faults:"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KillableRedis]:
    """This module's own Redis, which its last test kills and starts again."""
    server = KillableRedis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            engine: KillableRedis) -> Iterator[Nodes]:
    """Three nodes, f0 f1 f2 (tests start more, to kill or stop)."""
    yield from running_cluster(tmp_path_factory.mktemp("cluster"), engine.url(0, PREFIX),
                               ("f0", "f1", "f2"), "--stats", LOOPBACK)


def removed(engine: KillableRedis, name: str) -> bool:
    """Whether node ``name`` is no longer a member."""
    return engine.command("HEXISTS", PREFIX + "cluster:nodes", name) == b":0"


#: paho's codes for a publish that is on its way (not refused while disconnected)
SENDING = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN)


class Stream:
    """A publisher sending numbered messages from a thread until stopped; ``acked`` holds
    those the broker acknowledged."""

    def __init__(self, client: Client, topic: str, qos: int) -> None:
        self.client = client
        self.topic = topic
        self.qos = qos
        self.acked: Set[bytes] = set()
        self.sent = 0
        self._pending: Dict[bytes, object] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            payload = b"%d" % self.sent
            info = self.client.paho.publish(self.topic, payload, self.qos)
            self._pending[payload] = info
            self.sent += 1
            self._check()
            if len(self._pending) > 50:
                time.sleep(0.01)

    def _check(self) -> None:
        for payload, info in list(self._pending.items()):
            if info.rc not in SENDING:  # type: ignore[attr-defined]
                del self._pending[payload]  # refused by paho: never sent, never acknowledged
            elif info.is_published():  # type: ignore[attr-defined]
                self.acked.add(payload)
                del self._pending[payload]

    def stop(self) -> None:
        """Stop sending; count the last acknowledgements."""
        self._stop.set()
        self._thread.join(WAIT)
        self._check()


def received(client: Client, into: List[bytes]) -> List[bytes]:
    """Move what ``client`` got into ``into``; return it."""
    while not client.messages.empty():
        into.append(bytes(client.messages.get().payload))
    return into


@pytest.mark.parametrize("qos", [1, 2])
def test_acknowledged_messages_survive_the_publishers_node_killed(
        cluster: Nodes, engine: KillableRedis, qos: int) -> None:
    """A node killed (SIGKILL) while its client publishes a QoS 1 or QoS 2 stream to a
    subscriber on another node: every message acknowledged to the publisher reaches the
    subscriber, QoS 2 ones exactly once [MQTT-4.3.3-2]; the dead node is removed from the
    cluster within about its lease."""
    name = unique("doomed")
    doomed = cluster.start(name)
    topic = unique("stream")
    subscriber = connect(cluster[1], V5, unique("sub"), clean=False)
    subscriber.subscribe(topic, qos)
    publisher = connect(doomed, V311)
    routed(publisher, subscriber, topic)
    subscriber.expect(0)
    stream = Stream(publisher, topic, qos)
    wait_for(lambda: len(stream.acked) >= 200, "200 messages acknowledged")
    killed_at = time.monotonic()
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait()
    stream.stop()
    wait_for(lambda: removed(engine, name), "the dead node removed")
    detection = time.monotonic() - killed_at
    assert detection < LEASE * 3 + 2, detection
    got: List[bytes] = []
    wait_for(lambda: stream.acked <= set(received(subscriber, got)),
             f"the {len(stream.acked)} acknowledged messages delivered")
    numbered = [p for p in got if p != b"probe"]
    if qos == 2:
        assert len(numbered) == len(set(numbered)), "a QoS 2 message delivered twice"
    print(f"qos {qos}: {len(stream.acked)} acknowledged of {stream.sent} sent, "
          f"{len(set(numbered))} delivered; dead node removed after {detection:.2f}s")
    subscriber.disconnect()
    publisher.close()


def test_node_stopped_past_its_lease_drops_its_clients_and_rejoins(
        cluster: Nodes, engine: KillableRedis) -> None:
    """A node stopped (SIGSTOP) past its lease is removed; once continued it drops its
    clients (v5 DISCONNECT 0x8B), a message its client sent while it was stopped never
    reaches another node, and it rejoins with a greater epoch and routes again."""
    name = unique("paused")
    paused = cluster.start(name)
    topic = unique("p")
    local = connect(paused, V5)
    local.subscribe(topic, 1)
    listener = connect(cluster[0], V5)
    listener.subscribe(topic, 1)
    publisher = connect(cluster[2], V5)
    routed(publisher, local, topic)
    routed(local, listener, topic)
    first_epoch = int(paused.wait_for_log(r"joined \S+ with epoch (\d+)")[0].group(1))
    paused.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: removed(engine, name), "the stopped node removed")
        local.paho.publish(topic, b"stale", 1)  # read only once the node runs again
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    assert local.disconnected.wait(WAIT), "the stale node kept its client"
    assert local.disconnect_rc is not None and local.disconnect_rc.value == 0x8B
    joins = paused.wait_for_log(r"joined \S+ with epoch (\d+)", count=2)
    assert int(joins[1].group(1)) > first_epoch
    publisher.publish(topic, b"barrier", 1)
    assert [m.payload for m in collect(listener, topic, WAIT)
            if m.payload != b"probe"] == [], "a stale message reached another node"
    again = connect(paused, V5)
    again.subscribe(topic, 1)
    routed(publisher, again, topic)
    for client in (again, listener, publisher):
        client.disconnect()
    local.close()


def test_shared_group_while_a_member_node_is_killed(cluster: Nodes,
                                                    engine: KillableRedis) -> None:
    """A shared group with members on three nodes, one of which is killed while QoS 1
    messages flow: every message published once the dead node is removed reaches exactly one
    member [MQTT-4.8.2-2] (the publisher's node may not have heard of the removal yet: what it
    routes to the dead node goes to its heir); a message reaches two members only if one of
    them is the killed node's member, which never acknowledged it (a QoS 1 message whose
    member's session ends may go to another member), and the survivors never share one."""
    name = unique("member")
    doomed = cluster.start(name)
    group = unique("g")
    topic = unique("work")
    clients = [connect(node, V5) for node in (cluster[0], cluster[1], doomed)]
    for client in clients:
        client.subscribe(f"$share/{group}/{topic}", 1)
    publisher = connect(cluster[0], V5)
    reach_every_member(publisher, clients, topic)
    for index in range(100):
        publisher.publish(topic, b"before-%d" % index, 1)
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait()
    wait_for(lambda: removed(engine, name), "the dead node removed")
    for index in range(100):
        publisher.publish(topic, b"after-%d" % index, 1)
    got: List[bytes] = []
    survivors = clients[:2]

    def all_after() -> bool:
        for client in survivors:
            received(client, got)
        return sum(1 for p in got if p.startswith(b"after-")) >= 100

    wait_for(all_after, "every message published after the removal")
    numbered = [p for p in got if p != b"probe"]
    assert len(numbered) == len(set(numbered)), "a message reached two surviving members"
    assert {p for p in numbered if p.startswith(b"after-")} == {
        b"after-%d" % i for i in range(100)}
    dead: List[bytes] = []
    received(clients[2], dead)  # what the killed node's member got before it died
    assert len(dead) == len(set(dead))
    assert not [p for p in dead if p.startswith(b"after-")]
    for client in survivors + [publisher]:
        client.disconnect()
    clients[2].close()


def test_route_changes_made_while_the_channels_were_down(cluster: Nodes,
                                                       engine: KillableRedis) -> None:
    """Every node's pub/sub connection cut at once (CLIENT KILL TYPE pubsub): a subscription
    made on one node meanwhile still reaches the others, which read every route again when
    their engine is back."""
    topic = unique("gap")
    publisher = connect(cluster[0], V5)
    subscriber = connect(cluster[1], V5)
    assert engine.command("CLIENT", "KILL", "TYPE", "pubsub").startswith(b":")
    subscriber.subscribe(topic, 1)
    routed(publisher, subscriber, topic)
    for client in (publisher, subscriber):
        client.disconnect()


def test_redis_killed_and_restarted(cluster: Nodes, engine: KillableRedis) -> None:
    """Redis killed while messages flow: within the lease every node stops serving (its
    clients get v5 DISCONNECT 0x8B) and refuses CONNECT (v5 0x88 Server unavailable
    [MQTT-3.2.2-7]; v3.1.1 return code 3 [MQTT-3.2.2-6 (3.1.1)]); once Redis is back every
    node rejoins and messages cross nodes again, with no traceback in any log; the stats
    listener's /healthcheck answers 503 meanwhile, and its figures show the cluster."""
    stats = [node.port_of("stats") for node in cluster.nodes[:3]]
    wait_for(lambda: all(json.loads(get(port, "/")[2])["cluster/nodes"] >= 3
                         for port in stats), "every node sees the others")
    assert [get(port, "/healthcheck")[0] for port in stats] == [200, 200, 200]
    topic = unique("outage")
    subscriber = connect(cluster[1], V5)
    subscriber.subscribe(topic, 1)
    publisher = connect(cluster[0], V5)
    routed(publisher, subscriber, topic)
    publisher.publish(topic + "/kept", b"retained", 1, retain=True)
    stream = Stream(publisher, topic, 1)
    wait_for(lambda: len(stream.acked) >= 50, "50 messages acknowledged")
    engine.kill()
    try:
        for client in (subscriber, publisher):
            assert client.disconnected.wait(WAIT), "a node kept serving without its lease"
            assert client.disconnect_rc is not None and client.disconnect_rc.value == 0x8B
        stream.stop()
        refused = connect(cluster[2], V5, expect_success=False)
        assert refused.connack_rc.value == 0x88
        refused.close()
        refused = connect(cluster[2], V311, expect_success=False)
        assert refused.connack_rc.value == 0x88  # paho's name for return code 3
        refused.close()
        wait_for(lambda: [get(port, "/healthcheck")[0] for port in stats] == [503] * 3,
                 "every node unhealthy")
        figures = json.loads(get(stats[0], "/")[2])
        assert (figures["cluster/serving"], figures["cluster/engine_up"]) == (0, 0)
    finally:
        engine.restart()
    for node in cluster.nodes[:3]:
        node.wait_for_log(r"joined \S+ with epoch", count=2, timeout=WAIT)
    subscriber = connect(cluster[1], V5)
    subscriber.subscribe(topic, 1)
    publisher = connect(cluster[0], V5)
    routed(publisher, subscriber, topic)
    assert [get(port, "/healthcheck")[0] for port in stats] == [200, 200, 200]
    late = connect(cluster[2], V311)  # the retained message, written back by the nodes
    late.subscribe(topic + "/kept", 1)
    assert [m.payload for m in late.expect(1)] == [b"retained"]
    late.disconnect()
    wait_for(lambda: json.loads(get(stats[2], "/")[2]).get("cluster/clients/connected") == 2,
             "the cluster's clients counted on every node")
    samples = scrape(stats[0])
    assert value(samples, "mqtt_cluster_serving", node="f0") == 1
    assert value(samples, "mqtt_cluster_messages_sent_total", node="f0") > 0
    for client in (subscriber, publisher):
        client.disconnect()
    for node in cluster.nodes[:3]:
        assert "Traceback" not in node.log()


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])

