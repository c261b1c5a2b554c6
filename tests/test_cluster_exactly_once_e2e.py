"""QoS 2 across a node killed with SIGKILL in the middle of a stream, end to end: one private
``redis-server``, ``twistd mqtt --cluster`` nodes on loopback, real paho clients (MQTT 5).

The killed node's persistent session is adopted by a survivor and its stream claimed: no
subscriber, on the survivors or in the adopted session, gets a QoS 2 message twice.
"""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from typing import Iterator, List

import pytest

from tests.cluster_helpers import (
    PROBE,
    WAIT,
    Nodes,
    collect,
    routed,
    running_cluster,
    unique,
)
from tests.conftest import BrokerProcess
from tests.paho import V5, Client
from tests.servers import RedisServer, redis_server  # noqa: F401
from tests.spec import check_cited_labels
from tests.test_cluster_sessions_e2e import DB, name_of, owner_of, persistent

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def prefix() -> str:
    """This module's key prefix in the Redis database."""
    return unique("once") + ":"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,  # noqa: F811
            prefix: str) -> Iterator[Nodes]:
    """Two nodes that stay, q0 and q1, on one Redis database."""
    yield from running_cluster(tmp_path_factory.mktemp("cluster"), redis_server.url(DB, prefix),
                               ("q0", "q1"))


def stream_across_a_kill(publisher: Client, topic: str, doomed: BrokerProcess,
                         redis_server: RedisServer, prefix: str,  # noqa: F811
                         keeper_id: str) -> int:
    """Publish numbered QoS 2 messages to ``topic`` from ``publisher``, kill ``doomed`` with
    SIGKILL after 300 of them, and go on until ``keeper_id``'s session is adopted by another
    node, then 100 more; every one acknowledged.  The number of messages sent."""
    doomed_name = name_of(doomed)
    pending = []
    count = 0
    killed_at = adopted_at = None
    deadline = time.monotonic() + 3 * WAIT
    while adopted_at is None or count < adopted_at + 100:  # until well after the adoption
        assert time.monotonic() < deadline, "the session was not adopted"
        pending.append(publisher.paho.publish(topic, str(count).encode(), 2))
        count += 1
        if count == 300:
            doomed.proc.send_signal(signal.SIGKILL)
            doomed.proc.wait()
            killed_at = count
        if killed_at is not None and adopted_at is None and count % 20 == 0 and owner_of(
                redis_server, prefix, keeper_id) not in ("", doomed_name):
            adopted_at = count
        time.sleep(0.005)
    for info in pending:
        info.wait_for_publish(WAIT)
        assert info.is_published()
    print(f"killed after {killed_at}, adopted at {adopted_at}, {count} sent", file=sys.stderr)
    return count


def test_node_killed_in_a_qos2_stream_duplicates_nothing(
        cluster: Nodes, redis_server: RedisServer, prefix: str) -> None:  # noqa: F811
    """A publisher on q0 streams QoS 2 messages to a subscriber on q1 and to an offline
    persistent session on a third node, killed with SIGKILL in the middle of the stream and
    adopted by a survivor: the subscriber on q1 gets every message once, and the adopted
    session, resumed, gets every acknowledged message and none twice [MQTT-4.3.3-10]."""
    doomed = cluster.start(unique("doomed"))
    base = unique("stream")
    keeper_id = unique("keeper")
    keeper = persistent(doomed, keeper_id, V5)
    keeper.subscribe(f"{base}/#", 2)
    keeper.close()
    watcher = Client(cluster[1].port, V5, unique("watcher")).connect()
    watcher.subscribe(f"{base}/#", 2)
    publisher = Client(cluster[0].port, V5, unique("pub")).connect()
    routed(publisher, watcher, f"{base}/probe")
    doomed_name = name_of(doomed)
    count = stream_across_a_kill(publisher, f"{base}/m", doomed, redis_server, prefix, keeper_id)
    publisher.publish(f"{base}/end", b"end", 2)
    expected = [str(n).encode() for n in range(count)]
    seen = [m.payload for m in collect(watcher, f"{base}/end")]
    assert seen == expected  # once each, in order
    again = persistent(cluster[1], keeper_id, V5)
    assert again.connack_flags.session_present
    got: List[bytes] = [m.payload for m in collect(again, f"{base}/end")]
    twice = [payload for payload, times in Counter(got).items() if times > 1]
    assert twice == []
    missing = sorted(set(expected) - set(got), key=int)
    assert missing == [], f"acknowledged messages missing from the adopted session: {missing}"
    # nothing was added to the dead node's stream after the survivor claimed and deleted it
    assert redis_server.command("EXISTS", f"{prefix}cluster:stream:{doomed_name}") == b":0"
    for client in (watcher, publisher, again):
        client.close()


def test_connected_subscriber_of_a_node_killed_in_a_qos2_stream_gets_each_message_once(
        cluster: Nodes, redis_server: RedisServer, prefix: str) -> None:  # noqa: F811
    """A subscriber with a persistent session, connected to a node killed with SIGKILL in the
    middle of a QoS 2 stream published on another node, reconnects to a survivor that adopted
    its session: what it got before the kill and after, together, is every acknowledged
    message, none twice [MQTT-4.3.3-10] [MQTT-4.4.0-1] (its node sent a QoS 2 message only
    once the session write recording it was in Redis)."""
    doomed = cluster.start(unique("doomed"))
    base = unique("stream")
    keeper_id = unique("keeper")
    keeper = persistent(doomed, keeper_id, V5)
    keeper.subscribe(f"{base}/#", 2)
    publisher = Client(cluster[0].port, V5, unique("pub")).connect()
    routed(publisher, keeper, f"{base}/probe")
    count = stream_across_a_kill(publisher, f"{base}/m", doomed, redis_server, prefix,
                                 keeper_id)
    publisher.publish(f"{base}/end", b"end", 2)
    before: List[bytes] = []
    while not keeper.messages.empty():
        before.append(bytes(keeper.messages.get().payload))
    keeper.close()
    again = persistent(cluster[1], keeper_id, V5)
    assert again.connack_flags.session_present
    after = [m.payload for m in collect(again, f"{base}/end")]
    got = [payload for payload in before + after if payload != PROBE]
    twice = [payload for payload, times in Counter(got).items() if times > 1]
    assert twice == []
    expected = [str(n).encode() for n in range(count)]
    missing = sorted(set(expected) - set(got), key=int)
    print(f"{len(before)} before the kill, {len(after)} after", file=sys.stderr)
    assert missing == [], f"acknowledged messages missing: {missing}"
    for client in (publisher, again):
        client.close()


def test_cited_labels() -> None:
    """Every test cites a normative label that exists."""
    check_cited_labels(sys.modules[__name__], every_test=True)
