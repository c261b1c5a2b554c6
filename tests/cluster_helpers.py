"""Helpers of the cluster's end-to-end tests: nodes started as ``twistd mqtt --cluster`` on one
private Redis, conditions waited for with a deadline, and paho clients on a node."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List, Sequence

from tests.conftest import BrokerProcess, StartBroker, _starter, _stop_all
from tests.paho import V5, Client

LEASE = 2.0
"""The lease of the test nodes (seconds): a dead node is removed within it."""
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


def unique(name: str) -> str:
    """``name`` made unique to this run (client ids, topics)."""
    return f"{name}-{uuid.uuid4().hex[:6]}"


class Nodes:
    """The nodes of one test cluster, and how to start one more."""

    def __init__(self, directory: Path, url: str, *options: str) -> None:
        self.started: List[BrokerProcess] = []
        self.start_broker: StartBroker = _starter(directory, self.started)
        self.url = url
        self.options = options
        self.nodes: List[BrokerProcess] = []

    def start(self, name: str, *options: str) -> BrokerProcess:
        """Start node ``name`` and wait until it serves."""
        node = self.start_broker("--cluster", self.url, "--node-name", name,
                                 "--cluster-lease", str(LEASE), *self.options, *options)
        node.wait_for_log(r"cluster: node \S+ serving", timeout=WAIT)
        self.nodes.append(node)
        return node

    def __getitem__(self, index: int) -> BrokerProcess:
        return self.nodes[index]

    def running(self) -> List[BrokerProcess]:
        """The nodes whose process still runs."""
        return [node for node in self.started if node.proc.poll() is None]


def connect(node: BrokerProcess, version: int = V5, client_id: str = "",
            clean: bool = True, expect_success: bool = True) -> Client:
    """A paho client connected to ``node`` (its CONNACK a success unless ``expect_success``
    is false)."""
    client = Client(node.port, version, client_id or unique("c"), clean=clean)
    if version == V5:
        return client.connect(clean_start=clean, expect_success=expect_success)
    return client.connect(expect_success=expect_success)


PROBE = b"probe"


def routed(publisher: Client, subscriber: Client, topic: str) -> None:
    """Publish probes (payload ``PROBE``) on ``topic`` until ``subscriber`` gets one: the route
    from the publisher's node to the subscriber's is in place.  ``collect`` skips probes."""
    deadline = time.monotonic() + WAIT
    while True:
        publisher.publish(topic, PROBE, 0)
        try:
            subscriber.expect(1, timeout=0.5)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise AssertionError(f"no route to {topic} within {WAIT}s") from None


def collect(client: Client, until: str, timeout: float = WAIT) -> List[Any]:
    """The messages ``client`` gets before the first one on topic ``until`` (a barrier
    published after the messages waited for), probes left out."""
    return [m for m in client.expect_until(until, timeout) if m.payload != PROBE]


def running_cluster(directory: Path, url: str, names: Sequence[str],
                    *options: str) -> Iterator[Nodes]:
    """A module fixture's body: nodes ``names`` on ``url`` (no $SYS publications; ``options``
    given to each), each stopped and checked when the module ends."""
    nodes = Nodes(directory, url, "--sys-interval", "0", *options)
    for name in names:
        nodes.start(name)
    yield nodes
    _stop_all(nodes.running())


def on_db(server: Any, db: int, *args: str) -> bytes:
    """The first line of one command's reply on database ``db`` of a ``RedisServer``."""
    quoted = ", ".join("'" + arg.replace("'", "\\'") + "'" for arg in args)
    return bytes(server.command(
        "EVAL", f"redis.call('SELECT', {db}) return redis.call({quoted})", "0"))


def reach_every_member(publisher: Client, members: List[Client], topic: str) -> None:
    """Publish QoS 1 probes on ``topic`` until each member of a shared group got one (every
    node's route to the group is in place)."""
    def reached() -> bool:
        publisher.publish(topic, PROBE, 1)
        return all(not member.messages.empty() for member in members)

    wait_for(reached, "a probe at every member")


def jobs_received(members: List[Client], count: int) -> List[bytes]:
    """The payloads (probes left out) the members get, once ``count`` have arrived."""
    got: List[bytes] = []

    def all_received() -> bool:
        for member in members:
            while not member.messages.empty():
                payload = bytes(member.messages.get().payload)
                if payload != PROBE:
                    got.append(payload)
        return len(got) >= count

    wait_for(all_received, f"{count} messages received")
    return got


def share_jobs_once(publisher: Client, members: List[Client], group: str, topic: str,
                    count: int) -> None:
    """The members join shared group ``group`` on ``topic``; of ``count`` QoS 1 jobs the
    publisher sends once every member's route is in place, each reaches exactly one member."""
    for member in members:
        member.subscribe(f"$share/{group}/{topic}", 1)
    reach_every_member(publisher, members, topic)
    for index in range(count):
        publisher.publish(topic, b"job-%d" % index, 1)
    got = jobs_received(members, count)
    assert sorted(got) == sorted(b"job-%d" % i for i in range(count))
