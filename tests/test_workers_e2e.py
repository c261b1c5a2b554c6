"""``--workers N`` end to end: ``twistd mqtt`` and ``python -m twisted_mqtt`` supervising real
worker processes joined through a private ``redis-server``; paho clients over TCP, TLS and
WebSocket spread over the workers (which worker holds a connection is read from ``/proc``),
messages crossing workers, a SIGKILLed worker restarted while the port keeps answering, and the
start-up mistakes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from tests.certs import PKI, make_pki, mqtts_endpoint
from tests.cluster_helpers import (
    collect,
    routed,
    share_jobs_once,
    unique,
    wait_for,
)
from tests.conftest import ROOT, BrokerProcess, StartBroker, broker_env, twistd_command
from tests.paho import V5, V311, Client, MakeClient
from tests.servers import RedisServer, redis_server  # noqa: F401
from tests.spec import check_cited_labels
from twisted_mqtt.config import CONFIG_ERROR_EXIT

pytestmark = pytest.mark.e2e

LOOPBACK = "tcp:0:interface=127.0.0.1"
WORKERS = 3
STARTED = r"worker (\S+) started \(pid (\d+)\)"
SERVING = r"cluster: node (\S+) serving"
TIMEOUT = 60.0
LEASE = 6.0
"""The workers' cluster lease: long enough that a busy shared machine does not let it lapse
while a test runs (a lapsed lease drops the worker's clients, as it should)."""


class Workers:
    """A supervisor process and what its log says of its workers."""

    def __init__(self, broker: BrokerProcess, count: int) -> None:
        self.broker = broker
        self.count = count

    def pids(self) -> Dict[str, int]:
        """The latest pid of each worker, by node name."""
        return {name: int(pid) for name, pid in re.findall(STARTED, self.broker.log())}

    def wait_serving(self, joins: int) -> None:
        """Wait until the cluster has logged ``joins`` nodes serving in all."""
        self.broker.wait_for_log(SERVING, count=joins, timeout=TIMEOUT)

    def serving_pid(self, client: Client) -> int:
        """The worker process holding the server side of ``client``'s connection."""
        sock: Any = client.paho.socket()
        local_port = sock.getsockname()[1]
        inode = _server_inode(self.broker.port, local_port)
        for pid in self.pids().values():
            if _holds(pid, inode):
                return pid
        raise AssertionError(f"no worker holds the connection from port {local_port}")


def _server_inode(server_port: int, client_port: int) -> str:
    """The socket inode of the accepted connection 127.0.0.1:server_port <- client_port."""
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if (fields[1], fields[2]) == wanted:
                    return fields[9]
        time.sleep(0.05)
    raise AssertionError(f"no connection {wanted} in /proc/net/tcp")


def _holds(pid: int, inode: str) -> bool:
    target = f"socket:[{inode}]"
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == target:
                return True
        except OSError:
            continue
    return False


def connack(port: int) -> bytes:
    """The CONNACK a fresh MQTT 3.1.1 client gets (waiting up to TIMEOUT)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                break
            answer += chunk
        return answer


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def start_workers(start: StartBroker, redis: RedisServer, db: int, *options: str,
                  module: bool = False, listen: Optional[List[str]] = None,
                  count: int = WORKERS) -> Workers:
    """A supervisor of ``count`` workers on the Redis database ``db``, once every worker
    serves."""
    broker = start("--workers", str(count), "--cluster", redis.url(db), "--node-name", "w",
                   "--cluster-lease", str(LEASE), "--sys-interval", "0", *options,
                   module=module, listen=listen)
    workers = Workers(broker, count)
    workers.wait_serving(count)
    return workers


def spread(workers: Workers, clients: MakeClient, version: int = V5, count: int = 12
           ) -> Dict[int, List[Client]]:
    """Connect ``count`` clients; the clients by the pid of the worker serving each."""
    by_worker: Dict[int, List[Client]] = {}
    for _ in range(count):
        client = clients(workers.broker.port, version, unique("spread"))
        client.connect()
        by_worker.setdefault(workers.serving_pid(client), []).append(client)
    return by_worker


# -- sharing the port ----------------------------------------------------------------------------


@pytest.mark.parametrize("module", [False, True], ids=["twistd", "python -m"])
def test_workers_share_the_port_and_messages_cross(start_broker: StartBroker,
                                                   redis_server: RedisServer,  # noqa: F811
                                                   clients: MakeClient, module: bool) -> None:
    """Three workers accept on one port; clients land on several of them, and a message
    published on one worker reaches subscribers on the others (QoS 0 and 1, wildcards)."""
    workers = start_workers(start_broker, redis_server, 1 + module, module=module)
    pids = workers.pids()
    assert sorted(pids) == ["w-1", "w-2", "w-3"]
    by_worker = spread(workers, clients)
    assert len(by_worker) >= 2, by_worker
    served = list(by_worker)
    topic = unique("workers")
    publisher = by_worker[served[0]][0]
    subscribers = [by_worker[pid][0] for pid in served[1:]]
    for subscriber in subscribers:
        assert subscriber.subscribe(f"{topic}/+", qos=1) == [1]
        routed(publisher, subscriber, f"{topic}/probe")  # the route reached Redis
    publisher.publish(f"{topic}/a", b"zero", qos=0)
    publisher.publish(f"{topic}/a", b"one", qos=1)
    publisher.publish(f"{topic}/done", b"", qos=1)
    for subscriber in subscribers:
        got = collect(subscriber, f"{topic}/done", timeout=TIMEOUT)
        assert [(m.topic, m.payload, m.qos) for m in got] == [
            (f"{topic}/a", b"zero", 0), (f"{topic}/a", b"one", 1)]


def test_tls_and_websocket_listeners_shared(start_broker: StartBroker,
                                            redis_server: RedisServer,  # noqa: F811
                                            clients: MakeClient, pki: PKI) -> None:
    """mqtts and ws listeners are bound by the supervisor and served by the workers."""
    workers = start_workers(start_broker, redis_server, 3, "--ws", LOOPBACK,
                            listen=[LOOPBACK, mqtts_endpoint(pki)])
    broker = workers.broker
    secure = clients(broker.port_of("MQTT", 1), V311, "tls-client")
    secure.paho.tls_set(ca_certs=str(pki.root))
    secure.connect()
    web = clients(broker.port_of("WebSocket"), V5, "ws-client")
    web.paho.transport = "websockets"
    web.paho.ws_set_options(path="/mqtt")
    web.connect()
    topic = unique("workers")
    assert web.subscribe(topic, qos=1) == [1]
    routed(secure, web, topic)  # a TLS client's message reaches a WebSocket client


def on_worker(workers: Workers, clients: MakeClient, pid: int, version: int = V5) -> Client:
    """A client connected to the worker ``pid`` (clients are connected until one lands
    there)."""
    for _ in range(100):
        client = clients(workers.broker.port, version, unique("c"))
        client.connect()
        if workers.serving_pid(client) == pid:
            return client
        client.disconnect()
    raise AssertionError(f"no client landed on worker {pid}")


def test_retained_and_shared_across_workers(start_broker: StartBroker,
                                            redis_server: RedisServer,  # noqa: F811
                                            clients: MakeClient) -> None:
    """A message retained through one worker reaches a new subscriber on each other worker
    [MQTT-3.3.1-6 (3.1.1)]; a shared group with a member on each worker (MQTT 5 and 3.1.1)
    gets each message once [MQTT-4.8.2-2]."""
    workers = start_workers(start_broker, redis_server, 7)
    pids = sorted(workers.pids().values())
    topic = unique("r") + "/state"
    publisher = on_worker(workers, clients, pids[0])
    publisher.publish(topic, b"on", 1, retain=True)

    def retained_on(pid: int) -> bool:
        client = on_worker(workers, clients, pid)
        try:
            client.subscribe([(topic, 1), (topic + "/barrier", 1)])
            client.publish(topic + "/barrier", b"b", 1)
            return [m.payload for m in client.expect_until(topic + "/barrier")
                    if m.topic == topic] == [b"on"]
        finally:
            client.disconnect()

    for pid in pids[1:]:
        wait_for(partial(retained_on, pid), f"the retained message on worker {pid}")
    group, jobs = unique("g"), unique("jobs")
    members = [on_worker(workers, clients, pid, version)
               for pid, version in zip(pids, (V5, V311, V5))]
    share_jobs_once(publisher, members, group, jobs, 60)


# -- a worker dies -------------------------------------------------------------------------------


def test_killed_worker_restarted_and_the_port_keeps_answering(
        start_broker: StartBroker, redis_server: RedisServer,  # noqa: F811
        clients: MakeClient) -> None:
    """SIGKILL of a worker: one log line, a new process under the same node name, and every
    client connecting meanwhile gets its CONNACK."""
    workers = start_workers(start_broker, redis_server, 4)
    victim = workers.pids()["w-2"]
    os.kill(victim, signal.SIGKILL)
    line = workers.broker.wait_for_log(
        rf"worker w-2 \(pid {victim}\) was killed by SIGKILL after [\d.]+s; restarting it in "
        r"0\.5s")
    assert len(line) == 1
    for _ in range(10):  # those the kernel puts in w-2's queue wait until it serves again
        assert connack(workers.broker.port) == b"\x20\x02\x00\x00"
    wait_for(lambda: workers.pids()["w-2"] != victim, "w-2 restarted")
    workers.wait_serving(WORKERS + 1)
    assert not alive(victim)
    by_worker = spread(workers, clients, count=15)
    assert workers.pids()["w-2"] in by_worker or len(by_worker) >= 2


def test_sigterm_stops_every_worker(start_broker: StartBroker,
                                    redis_server: RedisServer) -> None:  # noqa: F811
    """SIGTERM to the supervisor stops the workers gracefully, then the supervisor exits."""
    workers = start_workers(start_broker, redis_server, 5, count=2)
    pids = list(workers.pids().values())
    workers.broker.check_clean_exit()
    assert not [pid for pid in pids if alive(pid)]
    log = workers.broker.log()
    assert log.count("exited with status 0") == 2, log


def test_sigint_stops_every_worker_once(start_broker: StartBroker,
                                        redis_server: RedisServer) -> None:  # noqa: F811
    """SIGINT (Ctrl-C) stops the supervisor, which stops each worker once, gracefully; the
    workers are in process groups of their own, so a terminal's Ctrl-C does not reach them
    besides."""
    workers = start_workers(start_broker, redis_server, 9, module=True, count=2)
    pids = list(workers.pids().values())
    proc = workers.broker.proc
    assert all(os.getpgid(pid) == pid for pid in pids)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=TIMEOUT) == 0
    assert not [pid for pid in pids if alive(pid)]
    log = workers.broker.log()
    assert log.count("exited with status 0") == 2, log
    assert log.count("Received SIGTERM") == 2 and log.count("Received SIGINT") == 1, log
    assert "Traceback" not in log and "Unhandled" not in log, log


# -- start-up mistakes ---------------------------------------------------------------------------


@pytest.mark.parametrize("program", ["twistd mqtt", "python -m twisted_mqtt"])
def test_workers_without_cluster(program: str) -> None:
    """One line naming what is needed, exit status 78 (EX_CONFIG)."""
    if program == "twistd mqtt":
        command = [*twistd_command(), "-n", "--pidfile=", "mqtt"]
    else:
        command = [sys.executable, "-m", "twisted_mqtt"]
    result = subprocess.run([*command, "--workers", "2"], env=broker_env(), cwd=ROOT,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == CONFIG_ERROR_EXIT
    assert result.stdout == ""
    assert result.stderr == (f"{program}: configuration error: --workers: 2 workers are "
                             "cluster nodes: they need --cluster redis://HOST:PORT/DB (the "
                             "Redis that joins them)\n")


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])


def test_sighup_reopens_every_log_file(tmp_path: Path,
                                       redis_server: RedisServer) -> None:  # noqa: F811
    """With --log-file, SIGHUP to the supervisor reopens its log file and each worker's (after
    logrotate moved it)."""
    log_file = tmp_path / "broker.log"
    proc = subprocess.Popen([sys.executable, "-m", "twisted_mqtt", "--workers", "2",
                             "--cluster", redis_server.url(8), "--node-name", "h",
                             "--listen", LOOPBACK, "--sys-interval", "0",
                             "--log-file", str(log_file)], env=broker_env(), cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: log_file.exists() and log_file.read_text().count("serving (") >= 2,
                 "both workers serving")
        log_file.rename(tmp_path / "broker.log.1")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log_file.exists() and
                 log_file.read_text().count("reopened") >= 2 and
                 "SIGHUP forwarded to the workers" in log_file.read_text(),
                 "the supervisor and both workers writing to the new file")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
    assert "Traceback" not in log_file.read_text()
