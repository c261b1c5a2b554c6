"""Cluster-wide sessions, end to end: one private ``redis-server``, three ``twistd mqtt
--cluster`` nodes on loopback, real paho clients (MQTT 3.1.1 and 5).

A client id connected on one node is taken over from another (v5 DISCONNECT 0x8E, v3 the
connection closed), clean start or not; a persistent session resumes on another node with its
subscriptions and its queued QoS 1 and QoS 2 messages, each once and in order; a node killed
with SIGKILL has its clients' wills published once and its persistent sessions adopted (they go
on collecting messages); a node stopped past its lease cannot write the sessions it lost.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Iterator, List

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import BrokerProcess, StartBroker, _starter, _stop_all
from tests.paho import V5, V311, Client
from tests.servers import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.e2e

LEASE = 2.0
WAIT = 30.0
"""Seconds to wait for a condition (the machine is shared: generous)."""


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


class Nodes:
    """The cluster's nodes, and how to start one more."""

    def __init__(self, start: StartBroker, url: str) -> None:
        self.start_broker = start
        self.url = url
        self.nodes: List[BrokerProcess] = []

    def start(self, name: str) -> BrokerProcess:
        node = self.start_broker("--cluster", self.url, "--node-name", name,
                                 "--cluster-lease", str(LEASE), "--sys-interval", "0")
        node.wait_for_log(r"cluster: node \S+ serving", timeout=WAIT)
        self.nodes.append(node)
        return node

    def __getitem__(self, index: int) -> BrokerProcess:
        return self.nodes[index]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            redis_server: RedisServer) -> Iterator[Nodes]:  # noqa: F811
    """Three nodes on one Redis database (their own key prefix)."""
    started: List[BrokerProcess] = []
    prefix = f"sessions-{uuid.uuid4().hex[:8]}:"
    nodes = Nodes(_starter(tmp_path_factory.mktemp("cluster"), started),
                  redis_server.url(3, prefix))
    for name in ("a", "b", "c"):
        nodes.start(name)
    for node in nodes.nodes:  # each has seen the two others join
        node.wait_for_log(r"joined", timeout=WAIT)
    yield nodes
    _stop_all([node for node in started if node.proc.poll() is None])


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def session_props(expiry: int = 3600) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    return props


def connect(node: BrokerProcess, client_id: str, version: int = V5, clean: bool = True,
            expiry: int = 0, will: Any = None) -> Client:
    """A paho client connected to ``node`` (v5: ``expiry`` as Session Expiry Interval)."""
    client = Client(node.port, version, client_id, clean=clean)
    if will is not None:
        client.paho.will_set(*will)
    if version == V5:
        return client.connect(clean_start=clean,
                              properties=session_props(expiry) if expiry else None)
    return client.connect()


@pytest.mark.parametrize("version", [V5, V311])
@pytest.mark.parametrize("clean", [True, False])
def test_takeover_across_nodes(cluster: Nodes, version: int, clean: bool) -> None:
    """A client id connected on node a and connecting on node b: the connection on a gets
    DISCONNECT 0x8E Session taken over (v3.1.1: is closed) [MQTT-3.1.4-3], clean start or not,
    and the new connection's Session Present says whether the session went on."""
    client_id = unique("takeover")
    first = connect(cluster[0], client_id, version, clean=False, expiry=3600)
    first.subscribe("takeover/t", 1)
    second = connect(cluster[1], client_id, version, clean=clean, expiry=3600)
    assert first.disconnected.wait(WAIT), "the first connection was not ended"
    if version == V5:
        assert first.disconnect_rc is not None and first.disconnect_rc.value == 0x8E
    assert bool(second.connack_flags.session_present) is (not clean)
    cluster[0].wait_for_log(f"session {client_id} handed over to node b")
    second.disconnect()
    first.close()
