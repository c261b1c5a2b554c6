"""Administration of a cluster, end to end: one private ``redis-server``, ``twistd mqtt
--cluster`` nodes with their dashboards on loopback, real paho clients and real HTTP.

A ban added through one node's API refuses the client's CONNECT on another node (v5 CONNACK
0x8A) and disconnects it there if it is connected (v5 DISCONNECT 0x98); lifted on another
node, the client is let in again everywhere.  A kick through one node's API reaches the client
connected on another node (DISCONNECT 0x98).  ``/api/v1/nodes`` on any node lists every live
node and the cluster's total; a node killed with SIGKILL leaves the list within its lease.
"""

from __future__ import annotations

import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from tests.cluster_helpers import LEASE, Nodes, connect, unique, wait_for
from tests.conftest import LOOPBACK, BrokerProcess, _stop_all
from tests.paho import V5, V311
from tests.servers import RedisServer, redis_server  # noqa: F401
from tests.spec import check_cited_labels
from tests.web_helpers import Http

pytestmark = pytest.mark.e2e

DB = 9
NAMES = ("a0", "a1", "a2")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The dashboards' API key file, and the key in it (``key.read_text``)."""
    directory = tmp_path_factory.mktemp("keys")
    path = directory / "keys"
    path.write_text(f"script:{secrets.token_urlsafe(32)}\n")
    yield path


def dashboard(key: Path) -> List[str]:
    """The options of a node's dashboard with the API key of ``key``."""
    return ["--dashboard", LOOPBACK, "--dashboard-api-keys", str(key), "--allow-anonymous"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,  # noqa: F811
            key: Path) -> Iterator[Nodes]:
    """Three nodes with dashboards, a0 a1 a2 (tests start more nodes to kill)."""
    url = redis_server.url(DB, unique("admin") + ":")
    nodes = Nodes(tmp_path_factory.mktemp("cluster"), url, "--sys-interval", "0",
                  *dashboard(key))
    for name in NAMES:
        nodes.start(name)
    yield nodes
    _stop_all(nodes.running())


def api(node: BrokerProcess, key: Path) -> Http:
    """An API client of ``node``'s dashboard."""
    return Http(f"http://127.0.0.1:{node.port_of('dashboard')}",
                key.read_text().strip().split(":", 1)[1])


def names(node: BrokerProcess, key: Path) -> List[str]:
    """The nodes ``/api/v1/nodes`` of ``node`` lists."""
    return [n["node"] for n in api(node, key).get("/api/v1/nodes")["nodes"]]


@pytest.mark.parametrize("version", [V5, V311])
def test_ban_on_one_node_applies_on_another(cluster: Nodes, key: Path, version: int) -> None:
    """A client id banned through a0's API: its client connected on a1 is disconnected (v5
    DISCONNECT 0x98), its CONNECT on a1 and a2 refused (v5 CONNACK 0x8A Banned, v3.1.1
    return code 5 [MQTT-3.2.2-6 (3.1.1)]); the ban lifted through a2's API, it connects on
    a1 again."""
    client_id = unique("banned")
    victim = connect(cluster[1], version, client_id)
    status, _, body = api(cluster[0], key).request(
        "POST", "/api/v1/bans", {"kind": "client_id", "value": client_id, "reason": "test"})
    assert status == 201, body
    assert victim.disconnected.wait(30), "not disconnected on the other node"
    if version == V5:
        assert victim.disconnect_rc.value == 0x98
    victim.close()
    for node in (cluster[1], cluster[2]):
        refused = connect(node, version, client_id, expect_success=False)
        # paho names MQTT 3 return code 5 0x87
        assert refused.connack_rc.value == (0x8A if version == V5 else 0x87)
        refused.close()
    status, _, body = api(cluster[2], key).request(
        "DELETE", f"/api/v1/bans/client_id/{client_id}")
    assert status == 200, body

    def admitted() -> bool:
        client = connect(cluster[1], version, client_id, expect_success=False)
        client.close()
        return not client.connack_rc.is_failure

    wait_for(admitted, "the ban lifted on another node")
    assert all(b["value"] != client_id for b in api(cluster[1], key).get("/api/v1/bans")["bans"])


def test_ban_expires_on_every_node(cluster: Nodes, key: Path) -> None:
    """A user name banned for 2 s through a1's API is listed by a2, then ends there on its
    own clock."""
    user = unique("user")
    status, _, body = api(cluster[1], key).request(
        "POST", "/api/v1/bans", {"kind": "username", "value": user, "duration": 2})
    assert status == 201, body
    expires_at = body["expires_at"]
    other = api(cluster[2], key)
    listed = wait_for(lambda: [b for b in other.get("/api/v1/bans")["bans"]
                               if b["value"] == user], "the ban listed on a2")
    assert listed[0]["expires_at"] == expires_at
    wait_for(lambda: all(b["value"] != user for b in other.get("/api/v1/bans")["bans"]),
             "the ban ended on a2")


def test_kick_across_nodes(cluster: Nodes, key: Path) -> None:
    """A kick through a0's API of a client connected on a2 reaches it (v5 DISCONNECT 0x98);
    a client id connected nowhere is a 404."""
    client_id = unique("kicked")
    victim = connect(cluster[2], V5, client_id)
    status, _, body = api(cluster[0], key).request("POST",
                                                   f"/api/v1/clients/{client_id}/kick")
    assert (status, body) == (200, {"kicked": client_id})
    assert victim.disconnected.wait(30), "not kicked"
    assert victim.disconnect_rc.value == 0x98
    victim.close()
    status, _, body = api(cluster[0], key).request("POST", "/api/v1/clients/nobody/kick")
    assert status == 404, body


def test_clients_say_their_node(cluster: Nodes, key: Path) -> None:
    """The clients list of a node names that node (its cluster name) for its clients."""
    client_id = unique("where")
    client = connect(cluster[1], V5, client_id)
    try:
        listed = api(cluster[1], key).get(f"/api/v1/clients?search={client_id}")
        assert [(c["client_id"], c["node"]) for c in listed["items"]] == [(client_id, "a1")]
    finally:
        client.close()


def test_nodes_listed_and_a_killed_one_gone(cluster: Nodes, key: Path) -> None:
    """``/api/v1/nodes`` of any node lists every live node with its figures and the total; a
    node killed with SIGKILL leaves every list within its lease (and a survey)."""
    doomed = cluster.start("a9")
    try:
        client = connect(doomed, V5, unique("on-a9"))
        everyone = sorted([*NAMES, "a9"])
        wait_for(lambda: all(sorted(names(node, key)) == everyone
                             for node in cluster.nodes[:3]), "every node listed")
        found = api(cluster[0], key).get("/api/v1/nodes")

        def a9() -> Any:
            listed = {n["node"]: n for n in api(cluster[0], key).get("/api/v1/nodes")["nodes"]}
            return listed["a9"] if listed["a9"].get("clients_connected") else None

        figures = wait_for(a9, "a9's figures with its client")
        assert figures["serving"] is True and figures["epoch"] > 0
        assert found["total"]["nodes"] == 4
        assert found["nodes"][0]["node"] == "a0" and found["nodes"][0]["self"] is True
        client.close()
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait(30)
        killed = time.monotonic()
        wait_for(lambda: "a9" not in names(cluster[1], key), "a9 gone")
        assert time.monotonic() - killed < LEASE * 2  # its lease, and slack for a busy machine
        total = api(cluster[1], key).get("/api/v1/nodes")["total"]
        assert total["nodes"] == 3
    finally:
        if doomed.proc.poll() is None:
            doomed.proc.kill()
        cluster.nodes.remove(doomed)


def test_cited_labels() -> None:
    """The labels cited above exist in the specifications."""
    check_cited_labels(sys.modules[__name__])
