"""The cluster's message path, end to end: one private ``redis-server``, three ``twistd mqtt
--cluster`` nodes on loopback, real paho clients (MQTT 3.1.1 and 5).

A message crosses nodes with wildcards at each QoS, once per subscriber, in order, with the
subscriber's own QoS; the last unsubscribe on a node removes its route from Redis and stops
the forwarding; retained messages are seen from every node; a shared subscription with members
on three nodes gets each message exactly once.  Docstrings cite ``[MQTT-x.y.z-n]`` (MQTT 5.0)
and ``[MQTT-x.y.z-n (3.1.1)]`` labels a test also proves across nodes.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Iterator, List

import pytest

from tests.cluster_helpers import (
    Nodes,
    collect,
    connect,
    on_db,
    routed,
    running_cluster,
    share_jobs_once,
    unique,
    wait_for,
)
from tests.paho import V5, V311, Client
from tests.servers import RedisServer, redis_server  # noqa: F401
from tests.spec import check_cited_labels

pytestmark = pytest.mark.e2e

DB = 4


@pytest.fixture(scope="module")
def prefix() -> str:
    """This module's key prefix in the Redis database."""
    return unique("routing") + ":"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,  # noqa: F811
            prefix: str) -> Iterator[Nodes]:
    """Three nodes, n0 n1 n2, on one Redis database."""
    yield from running_cluster(tmp_path_factory.mktemp("cluster"), redis_server.url(DB, prefix),
                               ("n0", "n1", "n2"))


@pytest.mark.parametrize("version", [V311, V5])
def test_messages_cross_nodes_with_wildcards_at_each_qos(cluster: Nodes,
                                                         version: int) -> None:
    """Subscribers on n1 (``+``) and n2 (``#``) get every message a client of n0 publishes,
    once each and in order [MQTT-4.6.0-6], at the lower of the published QoS and the granted
    one [MQTT-3.8.4-8]."""
    base = unique("w")
    plus = connect(cluster[1], version)
    plus.subscribe(f"{base}/+/t", 2)
    hash_ = connect(cluster[2], version)
    hash_.subscribe(f"{base}/#", 1)
    publisher = connect(cluster[0], V5 if version == V311 else V311)
    routed(publisher, plus, f"{base}/p/t")
    routed(publisher, hash_, f"{base}/p/t")
    for qos in (0, 1, 2):
        sent = [b"%d-%d" % (qos, i) for i in range(30)]
        for payload in sent:
            publisher.publish(f"{base}/k/t", payload, qos)
        publisher.publish(f"{base}/end{qos}/t", b"end", qos)
        for client, granted in ((plus, 2), (hash_, 1)):
            got = collect(client, f"{base}/end{qos}/t")
            assert [m.payload for m in got] == sent, (qos, granted)
            assert {m.qos for m in got} == {min(qos, granted)}
    for client in (plus, hash_, publisher):
        client.disconnect()


def test_last_unsubscribe_removes_the_route(cluster: Nodes, redis_server: RedisServer,  # noqa: F811
                                            prefix: str) -> None:
    """A node's route to a filter is in Redis while one of its clients subscribes to it, gone
    once the last one unsubscribes; from then on its messages no longer reach that node's
    client [MQTT-3.10.4-6]."""
    base = unique("u")
    key = f"{prefix}cluster:routes:n1"
    first = connect(cluster[1], V5)
    second = connect(cluster[1], V311)
    for client in (first, second):
        client.subscribe(f"{base}/#", 1)
        client.subscribe(f"{base}-keep", 1)
    publisher = connect(cluster[0])
    routed(publisher, first, f"{base}/x")
    assert on_db(redis_server, DB, "HEXISTS", key, f"{base}/#") == b":1"
    first.paho.unsubscribe(f"{base}/#")
    publisher.publish(f"{base}-keep", b"barrier", 1)
    assert collect(first, f"{base}-keep") == []  # its UNSUBACK came first
    assert collect(second, f"{base}-keep") == []
    assert on_db(redis_server, DB, "HEXISTS", key, f"{base}/#") == b":1"
    second.paho.unsubscribe(f"{base}/#")
    wait_for(lambda: on_db(redis_server, DB, "HEXISTS", key, f"{base}/#") == b":0",
             "route removed from Redis")
    wait_for(lambda: on_db(redis_server, DB, "HEXISTS", key, f"{base}-keep") == b":1",
             "the other route kept")
    publisher.publish(f"{base}/x", b"late", 1)
    publisher.publish(f"{base}-keep", b"barrier", 1)
    for client in (first, second):
        assert collect(client, f"{base}-keep") == []
    for client in (first, second, publisher):
        client.disconnect()


def test_retained_messages_are_seen_from_every_node(cluster: Nodes) -> None:
    """A message retained through n0 is sent to a new subscriber on n2 [MQTT-3.3.1-6]
    (3.3.1-5 in v5 numbering); emptied through n1, no node sends it any more."""
    topic = unique("r") + "/state"
    publisher = connect(cluster[0])
    publisher.publish(topic, b"on", 1, retain=True)

    def subscribe_gets(node: int, expected: List[bytes]) -> bool:
        client = connect(cluster[node], V5)
        try:
            client.subscribe([(topic, 1), (topic + "/barrier", 1)])
            client.publish(topic + "/barrier", b"b", 1)
            return [m.payload for m in client.expect_until(topic + "/barrier")
                    if m.topic == topic] == expected
        finally:
            client.disconnect()

    for node in (0, 1, 2):
        wait_for(partial(subscribe_gets, node, [b"on"]), f"retained message on n{node}")
    connect(cluster[1]).publish(topic, b"", 1, retain=True)
    for node in (0, 1, 2):
        wait_for(partial(subscribe_gets, node, []), f"retained message gone from n{node}")
    publisher.disconnect()


def test_shared_subscription_across_three_nodes_exactly_once(cluster: Nodes) -> None:
    """One shared group with a member on each node (MQTT 5 and 3.1.1 clients): every message
    published on n0 goes to exactly one member [MQTT-4.8.2-2], and each node's member gets
    its share."""
    group = unique("g")
    topic = unique("jobs")
    members: List[Client] = [connect(node, version)
                             for node, version in zip(cluster.nodes, (V5, V311, V5))]
    publisher = connect(cluster[0])
    share_jobs_once(publisher, members, group, topic, 90)
    for member in members:
        member.disconnect()
    publisher.disconnect()


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])
