"""A persistent session moving between nodes in the middle of a QoS 1 or QoS 2 stream, end to
end: one private ``redis-server``, three ``twistd mqtt --cluster`` nodes on loopback, a paho
publisher on the first node and a paho subscriber that moves from the second to the third.

Every message acknowledged to the publisher reaches the subscriber: QoS 1 at least once, QoS 2
exactly once (docs/cluster.md, "Sessions").
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from typing import Iterator, List

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.cluster_helpers import PROBE, WAIT, Nodes, routed, running_cluster, unique, wait_for
from tests.paho import V5, Client
from tests.servers import RedisServer, redis_server  # noqa: F401
from tests.spec import check_cited_labels

pytestmark = pytest.mark.e2e

DB = 11
COUNT = 600
"""Messages in each stream (published one at a time, each acknowledged before the next)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            redis_server: RedisServer) -> Iterator[Nodes]:  # noqa: F811
    """Three nodes, m0 m1 m2, on one Redis database."""
    yield from running_cluster(tmp_path_factory.mktemp("cluster"),
                               redis_server.url(DB, unique("move") + ":"), ("m0", "m1", "m2"))


def hour_long() -> Properties:
    """CONNECT properties of a session that outlives its connection by an hour."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    return props


@pytest.mark.parametrize("qos", [1, 2])
def test_session_moved_during_a_stream_loses_nothing(cluster: Nodes, qos: int) -> None:
    """A subscriber whose connection to node m1 breaks in the middle of a stream published on
    node m0, and which resumes its session on node m2 at once (the same client state, so that
    QoS 2 messages whose PUBREL it has not had are resent and released there
    [MQTT-4.4.0-1]), gets every message the publisher had acknowledged: QoS 1 at least once,
    QoS 2 exactly once (the broker causes no duplicate onward [MQTT-4.3.3-10])."""
    client_id = unique("mover")
    topic = unique("move")
    subscriber = Client(cluster[1].port, V5, client_id)
    subscriber.connect(clean_start=False, properties=hour_long())
    subscriber.subscribe(f"{topic}/#", qos)
    publisher = Client(cluster[0].port, V5, unique("pub")).connect()
    routed(publisher, subscriber, f"{topic}/probe")
    acknowledged: List[int] = []

    def publish() -> None:
        for n in range(COUNT):
            publisher.publish(f"{topic}/m", str(n).encode(), qos)
            acknowledged.append(n)

    thread = threading.Thread(target=publish)
    got: Counter[int] = Counter()

    def take() -> int:
        while not subscriber.messages.empty():
            message = subscriber.messages.get()
            if message.payload != PROBE:
                got[int(message.payload)] += 1
        return len(got)

    thread.start()
    try:
        wait_for(lambda: take() >= COUNT // 3, "a third of the stream on m1")
        subscriber.paho.loop_stop()
        sock = subscriber.paho.socket()
        if sock is not None:
            sock.close()  # the connection breaks in the middle of the stream
        subscriber.connected.clear()
        subscriber.port = cluster[2].port
        subscriber.connect(clean_start=False, properties=hour_long())
        assert subscriber.connack_flags.session_present
    finally:
        thread.join(WAIT * 4)
    assert len(acknowledged) == COUNT
    publisher.publish(f"{topic}/end", b"end", qos)
    for message in subscriber.expect_until(f"{topic}/end", timeout=WAIT * 2):
        if message.payload != PROBE:
            got[int(message.payload)] += 1
    try:  # a message forwarded by m1 may come after the barrier
        wait_for(lambda: take() >= COUNT, "the last forwarded messages", timeout=5)
    except AssertionError:
        pass
    assert sorted(set(range(COUNT)) - set(got)) == []
    if qos == 2:
        assert [n for n, times in got.items() if times > 1] == []
    subscriber.close()
    publisher.close()


def test_cited_labels() -> None:
    """Every spec label cited by this module exists."""
    check_cited_labels(sys.modules[__name__], every_test=True)
