"""Cluster-wide sessions, end to end: one private ``redis-server``, ``twistd mqtt --cluster``
nodes on loopback, real paho clients (MQTT 3.1.1 and 5).

A client id connected on one node is taken over from another (v5 DISCONNECT 0x8E, v3.1.1 the
connection closed), clean start or not; a persistent session resumes on another node with its
queued QoS 1 and QoS 2 messages, each once and in order; a node killed with SIGKILL has its
clients' wills published once and its persistent sessions adopted (they go on collecting
messages, which the client gets when it reconnects elsewhere); a node stopped past its lease
cannot write the sessions it lost once it runs again.
"""

from __future__ import annotations

import signal
import sys
from typing import Iterator, Optional, Tuple

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.cluster_helpers import (
    WAIT,
    Nodes,
    collect,
    on_db,
    routed,
    running_cluster,
    unique,
    wait_for,
)
from tests.conftest import BrokerProcess
from tests.paho import V5, V311, Client
from tests.servers import RedisServer, redis_server  # noqa: F401
from tests.spec import check_cited_labels

pytestmark = pytest.mark.e2e

DB = 6


@pytest.fixture(scope="module")
def prefix() -> str:
    """This module's key prefix in the Redis database."""
    return unique("sessions") + ":"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,  # noqa: F811
            prefix: str) -> Iterator[Nodes]:
    """Three nodes, s0 s1 s2, on one Redis database (tests start more nodes to kill)."""
    yield from running_cluster(tmp_path_factory.mktemp("cluster"), redis_server.url(DB, prefix),
                               ("s0", "s1", "s2"))


def reply_of(server: RedisServer, *args: str) -> bytes:
    """The first line of one command's reply on the cluster's database."""
    return on_db(server, DB, *args)


def connect(node: BrokerProcess, client_id: str, version: int = V5, clean: bool = True,
            expiry: int = 0, will: Optional[Tuple[str, bytes, int]] = None,
            will_delay: Optional[int] = None) -> Client:
    """A paho client connected to ``node`` (v5: ``expiry`` as Session Expiry Interval)."""
    client = Client(node.port, version, client_id, clean=clean)
    if will is not None:
        will_props = None
        if will_delay is not None:
            will_props = Properties(PacketTypes.WILLMESSAGE)
            will_props.WillDelayInterval = will_delay
        topic, payload, qos = will
        client.paho.will_set(topic, payload, qos, properties=will_props)
    if version != V5:
        return client.connect()
    props = None
    if expiry:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
    return client.connect(clean_start=clean, properties=props)


def persistent(node: BrokerProcess, client_id: str, version: int) -> Client:
    """A client with a session that outlives its connection (v5: an hour; v3.1.1: clean
    session 0)."""
    return connect(node, client_id, version, clean=False, expiry=3600)


def owner_of(server: RedisServer, prefix: str, client_id: str) -> str:
    """The name of the node that owns ``client_id``'s session ('' for none)."""
    reply = server.command("EVAL", f"redis.call('SELECT', {DB}) return {{ok=redis.call('HGET', "
                           f"'{prefix}cluster:sessions:owner', '{client_id}') or ''}}", "0")
    token = reply[1:].decode()
    return token.split(":", 2)[2] if token else ""


def name_of(node: BrokerProcess) -> str:
    """The node name a broker was started with."""
    return node.argv[node.argv.index("--node-name") + 1]


@pytest.mark.parametrize("version", [V5, V311])
@pytest.mark.parametrize("clean", [True, False])
def test_takeover_across_nodes(cluster: Nodes, version: int, clean: bool) -> None:
    """A client id connected on node s0 and connecting on node s1: the connection on s0 gets
    DISCONNECT 0x8E Session taken over [MQTT-3.1.4-3] (v3.1.1: is closed
    [MQTT-3.1.4-2 (3.1.1)]), clean start or not, and the new connection's Session Present says
    whether the session went on [MQTT-3.2.2-2]."""
    client_id = unique("takeover")
    first = persistent(cluster[0], client_id, version)
    first.subscribe("takeover/t", 1)
    second = connect(cluster[1], client_id, version, clean=clean, expiry=3600)
    assert first.disconnected.wait(WAIT), "the first connection was not ended"
    if version == V5:
        assert first.disconnect_rc is not None and first.disconnect_rc.value == 0x8E
    assert bool(second.connack_flags.session_present) is (not clean)
    cluster[0].wait_for_log(f"session {client_id} handed over to node s1")
    second.disconnect()
    first.close()


@pytest.mark.parametrize("version", [V5, V311])
def test_persistent_session_resumed_on_another_node(cluster: Nodes, version: int,
                                                    redis_server: RedisServer,  # noqa: F811
                                                    prefix: str) -> None:
    """A persistent session left on node s0 collects QoS 1 and QoS 2 messages published on
    node s2; its client reconnects on node s1: Session Present 1 [MQTT-3.2.2-2], and it gets
    every queued message once, in order for each QoS [MQTT-4.6.0-6] (QoS 2 exactly once
    [MQTT-4.3.3-2])."""
    client_id = unique("resume")
    topic = unique("resume/t")
    subscriber = persistent(cluster[0], client_id, version)
    subscriber.subscribe(f"{topic}/#", 2)
    publisher = connect(cluster[2], unique("pub"), version)
    routed(publisher, subscriber, f"{topic}/probe")
    subscriber.disconnect()
    count = 40
    for n in range(count):
        publisher.publish(f"{topic}/m", f"{n}".encode(), 1 + n % 2)
    publisher.publish(f"{topic}/end1", b"end", 1)
    publisher.publish(f"{topic}/end2", b"end", 2)
    msgs = f"{prefix}cluster:session:msgs:{client_id}"
    wait_for(lambda: reply_of(redis_server, "HLEN", msgs) == f":{count + 2}".encode(),
             "the queued messages stored")
    again = persistent(cluster[1], client_id, version)
    assert again.connack_flags.session_present
    got = collect(again, f"{topic}/end1")  # after every QoS 1 message
    got += collect(again, f"{topic}/end2")  # after every QoS 2 message
    for qos in (1, 2):  # in order for the same topic and QoS [MQTT-4.6.0-5]
        assert [m.payload for m in got if m.qos == qos] == [
            f"{n}".encode() for n in range(count) if 1 + n % 2 == qos]
    assert len(got) == count
    again.disconnect()
    publisher.disconnect()


@pytest.fixture
def doomed(cluster: Nodes) -> Iterator[BrokerProcess]:
    """One more node, to kill or stop."""
    node = cluster.start(unique("doomed"))
    yield node
    if node.proc.poll() is None:
        node.proc.send_signal(signal.SIGCONT)


def test_killed_node_wills_once_and_sessions_adopted(cluster: Nodes, doomed: BrokerProcess,
                                                     redis_server: RedisServer,  # noqa: F811
                                                     prefix: str) -> None:
    """A node killed with SIGKILL: the wills of its clients (MQTT 5 and 3.1.1, one with a
    Will Delay Interval) are published once cluster-wide [MQTT-3.1.2-8]; its persistent
    session is adopted by one survivor, goes on collecting its messages, and its client
    reconnecting on another node gets them [MQTT-4.4.0-1]."""
    base = unique("wills")
    watcher = connect(cluster[1], unique("watcher"), V5)
    watcher.subscribe(f"{base}/#", 1)
    wills = [connect(doomed, unique("w5"), V5, will=(f"{base}/w5", b"v5", 1)),
             connect(doomed, unique("w3"), V311, will=(f"{base}/w3", b"v311", 1)),
             connect(doomed, unique("wd"), V5, expiry=30, will=(f"{base}/wd", b"delayed", 1),
                     will_delay=1)]
    keeper_id = unique("keeper")
    keeper = persistent(doomed, keeper_id, V5)
    keeper.subscribe(f"{base}-keep/#", 1)
    heads = f"{prefix}cluster:session:sessions"

    def stored() -> bool:
        return all(reply_of(redis_server, "HEXISTS", heads, c.paho._client_id.decode()) == b":1"
                   for c in (*wills, keeper))

    wait_for(stored, "the session heads stored")
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait()
    got = watcher.expect(3, timeout=WAIT)
    assert sorted(m.payload for m in got) == [b"delayed", b"v311", b"v5"]
    adopter_name = wait_for(lambda: owner_of(redis_server, prefix, keeper_id) not in (
        "", name_of(doomed)) and owner_of(redis_server, prefix, keeper_id),
        "the keeper's session adopted")
    adopter = next(n for n in cluster.nodes if name_of(n) == adopter_name)
    publisher = connect(adopter, unique("pub"), V5)
    for n in range(5):
        publisher.publish(f"{base}-keep/x", f"{n}".encode(), 1)
    publisher.publish(f"{base}-keep/end", b"end", 1)
    publisher.publish(f"{base}/end", b"end", 1)
    assert collect(watcher, f"{base}/end") == []  # no will twice
    elsewhere = next(n for n in cluster.nodes[:3] if n is not adopter)
    again = persistent(elsewhere, keeper_id, V5)
    assert again.connack_flags.session_present
    got = collect(again, f"{base}-keep/end")
    assert [m.payload for m in got] == [f"{n}".encode() for n in range(5)]
    for client in (*wills, keeper, watcher, publisher, again):
        client.close()


def test_stopped_node_cannot_write_the_sessions_it_lost(cluster: Nodes, doomed: BrokerProcess,
                                                        redis_server: RedisServer,  # noqa: F811
                                                        prefix: str) -> None:
    """A node stopped (SIGSTOP) past its lease loses its persistent session to a survivor;
    once it runs again (SIGCONT), what it does with that session is not written: a SUBSCRIBE
    its client sent meanwhile is not in the stored session, which keeps the subscription
    it had [MQTT-3.1.2-4]."""
    client_id = unique("paused")
    base = unique("stale")
    client = persistent(doomed, client_id, V5)
    client.subscribe(f"{base}/before", 1)
    subs = f"{prefix}cluster:session:subs:{client_id}"
    wait_for(lambda: reply_of(redis_server, "HEXISTS", subs, f"{base}/before") == b":1",
             "the subscription stored")
    name = name_of(doomed)
    doomed.proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: owner_of(redis_server, prefix, client_id) not in ("", name),
             "the session adopted by a survivor")
    client.paho.subscribe(f"{base}/during", 1)  # read by the stopped node once it runs
    doomed.proc.send_signal(signal.SIGCONT)
    doomed.wait_for_log(r"serving \(epoch", count=2, timeout=WAIT)
    assert reply_of(redis_server, "HEXISTS", subs, f"{base}/during") == b":0"
    assert reply_of(redis_server, "HEXISTS", subs, f"{base}/before") == b":1"
    assert owner_of(redis_server, prefix, client_id) != name
    client.close()


def test_cited_labels() -> None:
    """Every test cites a normative label that exists."""
    check_cited_labels(sys.modules[__name__], every_test=True)

