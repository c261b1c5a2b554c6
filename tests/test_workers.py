"""``--workers N``: the option (command line and file), the supervisor's listeners, restarts with
back-off, signals and stopping, on a ``task.Clock`` with a recording ``spawnProcess`` and real
loopback sockets.  The end-to-end tests with real worker processes are in
tests/test_workers_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from twisted.internet import task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from twisted_mqtt.config import ConfigError
from twisted_mqtt.listeners import ListenError, ListenerService
from twisted_mqtt.service import BrokerService
from twisted_mqtt.tap import Options, makeService
from twisted_mqtt.workers import (
    FIRST_INHERITED_FD,
    JOIN_WAIT,
    MAXIMUM_RESTART_DELAY,
    RESTART_DELAY,
    STABLE_AFTER,
    WORKER_ENVIRONMENT,
    Supervisor,
    describe_exit,
    worker_settings,
)

LOOPBACK = "tcp:0:interface=127.0.0.1"


class FakeTransport:
    """The transport of a process started by ``FakeReactor.spawnProcess``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: List[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakeReactor(task.Clock):
    """A clock whose ``spawnProcess`` records what it would start."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: List[Dict[str, Any]] = []
        self.triggers: List[Any] = []

    def spawnProcess(self, protocol: Any, executable: str, args: List[str], env: Dict[str, str],
                     path: Optional[str] = None, childFDs: Optional[Dict[int, Any]] = None
                     ) -> FakeTransport:
        transport = FakeTransport(1000 + len(self.spawned))
        self.spawned.append({"protocol": protocol, "args": args, "env": env,
                             "fds": childFDs, "transport": transport})
        protocol.makeConnection(transport)
        return transport

    def addSystemEventTrigger(self, *args: Any) -> None:
        self.triggers.append(args)

    def callWhenRunning(self, *args: Any) -> None:
        self.triggers.append(args)


def killed(number: int = signal.SIGKILL) -> Failure:
    return Failure(ProcessTerminated(signal=number))


def exited(status: int) -> Failure:
    return Failure(ProcessDone(0) if status == 0 else ProcessTerminated(exitCode=status))


class Recorded(Supervisor):
    """A supervisor that records the status it would exit with instead of exiting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statuses: List[int] = []
        self.stopped = self.statuses.append


@pytest.fixture
def supervisor() -> Any:
    made = Recorded(FakeReactor(), 3, "node", ["--listen", LOOPBACK, "--cluster", "redis://x/0"],
                    [("MQTT", LOOPBACK), ("stats", LOOPBACK)], environment={"HOME": "/"})
    yield made
    made.close()


def ended(supervisor: Supervisor, index: int, reason: Failure) -> None:
    """The latest process of worker ``index`` exits with ``reason``."""
    process = [p for p in supervisor.reactor.spawned
               if p["protocol"] is supervisor.workers[index]][-1]
    process["protocol"].processEnded(reason)


# -- the option --------------------------------------------------------------------------------


def test_workers_without_cluster_is_a_configuration_error() -> None:
    """``--workers`` needs ``--cluster``: one line naming what is missing."""
    with pytest.raises(ConfigError) as raised:
        Options().parseOptions(["--workers", "3"])
    assert str(raised.value) == ("--workers: 3 workers are cluster nodes: they need --cluster "
                                 "redis://HOST:PORT/DB (the Redis that joins them)")


def test_workers_from_the_file_without_cluster(tmp_path: Path) -> None:
    """The YAML key ``workers`` sets it, with the same check."""
    config = tmp_path / "broker.yaml"
    config.write_text("workers: 2\n")
    with pytest.raises(ConfigError, match="2 workers are cluster nodes: they need --cluster"):
        Options().parseOptions(["--config", str(config)])


@pytest.mark.parametrize("value", ["-1", "257", "two"])
def test_workers_bound(value: str) -> None:
    """0 to 256 workers."""
    with pytest.raises(ConfigError, match="--workers: .*an integer from 0 to 256"):
        Options().parseOptions(["--workers", value])


def test_no_workers_by_default() -> None:
    options = Options()
    options.parseOptions([])
    assert options["workers"] == 0


# -- listeners -----------------------------------------------------------------------------------


def test_tcp_listener_one_socket_per_worker_on_one_port(supervisor: Supervisor) -> None:
    """Port 0 becomes one port, bound by each worker's own SO_REUSEPORT socket."""
    supervisor.bind()
    for listener in supervisor.listeners:
        assert len(listener.sockets) == 3
        ports = {sock.getsockname()[1] for sock in listener.sockets}
        assert len(ports) == 1 and ports != {0}
        assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
                   for sock in listener.sockets)
    assert supervisor.listeners[0].address != supervisor.listeners[1].address


def test_unix_listener_is_shared(tmp_path: Path) -> None:
    """A Unix socket is bound once; every worker accepts on it."""
    path = tmp_path / "mqtt.sock"
    made = Supervisor(FakeReactor(), 2, "node", [], [("MQTT", f"unix:{path}")])
    made.bind()
    listener = made.listeners[0]
    assert len(listener.sockets) == 1
    assert listener.socket_for(0) is listener.socket_for(1)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
    made.close()
    assert not path.exists()


def test_port_in_use_is_a_listen_error() -> None:
    """A port another process holds (without SO_REUSEPORT) fails the start once, naming it."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        endpoint = f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1"
        made = Supervisor(FakeReactor(), 2, "node", [], [("MQTT", LOOPBACK), ("MQTT", endpoint)])
        with pytest.raises(ListenError) as raised:
            made.bind()
        assert str(raised.value) == (f"cannot listen for MQTT on {endpoint}: Address already "
                                     "in use")
        assert made.listeners[0].sockets == []  # what was bound before is closed


def test_systemd_listener_is_refused() -> None:
    made = Supervisor(FakeReactor(), 2, "node", [], [("MQTT", "systemd:domain=INET:index=0")])
    with pytest.raises(ListenError, match="systemd socket activation cannot be shared"):
        made.bind()


# -- workers -------------------------------------------------------------------------------------


def test_workers_started_with_their_names_and_sockets(supervisor: Supervisor) -> None:
    """Each worker runs ``python -m twisted_mqtt`` with the options and ``--node-name NAME-i``;
    its sockets are descriptors 3.. in listener order, named in its environment."""
    supervisor.startService()
    spawned = supervisor.reactor.spawned
    assert len(spawned) == 3
    for index, process in enumerate(spawned):
        args = process["args"]
        assert args[1:] == ["-m", "twisted_mqtt", "--listen", LOOPBACK, "--cluster",
                            "redis://x/0", "--node-name", f"node-{index + 1}"]
        settings = worker_settings(process["env"])
        assert settings == {"name": f"node-{index + 1}",
                            "ports": [[LOOPBACK, FIRST_INHERITED_FD],
                                      [LOOPBACK, FIRST_INHERITED_FD + 1]]}
        fds = process["fds"]
        assert [fds[FIRST_INHERITED_FD], fds[FIRST_INHERITED_FD + 1]] == [
            listener.sockets[index].fileno() for listener in supervisor.listeners]
        assert fds[1] == 1 and fds[2] == 2
        assert process["env"]["HOME"] == "/"
    assert worker_settings({}) is None
    assert json.loads(spawned[0]["env"][WORKER_ENVIRONMENT])["name"] == "node-1"


def test_dead_worker_restarted_with_back_off(supervisor: Supervisor) -> None:
    """A worker that dies is started again after RESTART_DELAY, doubled while it keeps dying
    soon after starting, up to MAXIMUM_RESTART_DELAY; one that ran STABLE_AFTER seconds starts
    from RESTART_DELAY again.  The others are not touched."""
    supervisor.startService()
    reactor = supervisor.reactor
    delays = []
    for _ in range(8):
        before = len(reactor.spawned)
        ended(supervisor, 1, killed())
        started_at = reactor.seconds()
        while len(reactor.spawned) == before:
            reactor.advance(0.25)
        delays.append(reactor.seconds() - started_at)
        assert reactor.spawned[-1]["protocol"] is supervisor.workers[1]
    assert delays == [RESTART_DELAY * 2 ** n for n in range(6)] + [MAXIMUM_RESTART_DELAY] * 2
    reactor.advance(STABLE_AFTER)
    ended(supervisor, 1, exited(1))
    reactor.advance(RESTART_DELAY)
    assert reactor.spawned[-1]["protocol"] is supervisor.workers[1]
    assert [p["transport"].signals for p in reactor.spawned[:3]] == [[], [], []]


def test_restarted_worker_gets_fresh_sockets_on_the_same_port(supervisor: Supervisor) -> None:
    """The dead worker's own sockets are replaced (its queued connections are reset, not left
    waiting for the restart); the port stays the same."""
    supervisor.startService()
    listener = supervisor.listeners[0]
    port = listener.sockets[0].getsockname()[1]
    old = listener.sockets[2]
    ended(supervisor, 2, killed())
    assert old.fileno() == -1
    assert listener.sockets[2] is not old
    assert listener.sockets[2].getsockname()[1] == port
    supervisor.reactor.advance(RESTART_DELAY)
    assert supervisor.reactor.spawned[-1]["fds"][FIRST_INHERITED_FD] == \
        listener.sockets[2].fileno()


@pytest.mark.parametrize("status", [64, 78])
def test_configuration_error_stops_the_supervisor(supervisor: Recorded, status: int) -> None:
    """A worker that exits because of its configuration is not restarted: every worker has the
    same configuration, so the supervisor stops with that status."""
    supervisor.startService()
    ended(supervisor, 0, exited(status))
    supervisor.reactor.advance(MAXIMUM_RESTART_DELAY)
    assert len(supervisor.reactor.spawned) == 3
    assert supervisor.statuses == [status]


def test_sighup_forwarded(supervisor: Supervisor) -> None:
    supervisor.startService()
    supervisor.forward("HUP")
    assert [p["transport"].signals for p in supervisor.reactor.spawned] == [["HUP"]] * 3


def test_stop_terminates_workers_then_kills_the_late(supervisor: Supervisor) -> None:
    """Stopping sends SIGTERM to each worker and fires once all have exited; one still running
    ``kill_after`` seconds later gets SIGKILL; a pending restart is cancelled."""
    supervisor.startService()
    reactor = supervisor.reactor
    ended(supervisor, 2, killed())  # its restart is pending
    stopped = supervisor.stopService()
    processes = reactor.spawned[:2]
    assert [p["transport"].signals for p in processes] == [["TERM"], ["TERM"]]
    ended(supervisor, 0, exited(0))
    assert not stopped.called
    reactor.advance(supervisor.kill_after)
    assert processes[1]["transport"].signals == ["TERM", "KILL"]
    ended(supervisor, 1, killed())
    assert stopped.called
    reactor.advance(MAXIMUM_RESTART_DELAY)
    assert len(reactor.spawned) == 3
    assert all(listener.sockets == [] for listener in supervisor.listeners)


def test_describe_exit() -> None:
    assert describe_exit(exited(0)) == ("exited with status 0", 0)
    assert describe_exit(exited(3)) == ("exited with status 3", 3)
    assert describe_exit(killed()) == ("was killed by SIGKILL", None)



def test_supervisor_binds_every_listener_a_worker_has() -> None:
    """The supervisor binds the listeners a worker creates from the same options, in the same
    order (a worker adopts them by position)."""
    options = Options()
    options.parseOptions(["--workers", "2", "--cluster", "redis://127.0.0.1:1/0",
                          "--listen", LOOPBACK, "--ws", LOOPBACK, "--stats", LOOPBACK,
                          "--dashboard", LOOPBACK, "--listen", "unix:/tmp/no.sock"])
    reactor = MemoryReactorClock()
    supervisor = makeService(options, reactor)
    assert isinstance(supervisor, Supervisor)
    options["workers"] = 0
    single = makeService(options, reactor)
    assert isinstance(single, BrokerService)
    assert [(listener.kind, listener.endpoint) for listener in supervisor.listeners] == [
        (child.kind, child.description) for child in single
        if isinstance(child, ListenerService)]
    assert [listener.kind for listener in supervisor.listeners] == [
        "MQTT", "MQTT", "WebSocket", "stats", "dashboard"]


def test_adopted_socket_accepts_without_blocking() -> None:
    """A worker's adopted listening socket is non-blocking, even if the descriptor it inherits
    is not (PyPy's ``socket.fromfd`` makes it blocking): the reactor's accept loop would
    otherwise wait in accept() for ever once the queue is empty."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    from twisted_mqtt.workers import _Inherited

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(True)
        port = _Inherited(reactor, os.dup(sock.fileno())).listenTCP(0, Factory())
        try:
            assert not os.get_blocking(port.fileno())
            assert port.getHost().port == sock.getsockname()[1]
        finally:
            port.stopListening()


def test_adopted_listener_accepts_with_the_lean_transport() -> None:
    """A worker's MQTT listener, accepting on the socket it inherits, gives its connections
    ``LeanServer`` transports as a listener that binds its own does."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from twisted_mqtt.transport import LeanServer
    from twisted_mqtt.workers import _Inherited

    listener = BrokerService(reactor=reactor).add_listener(LOOPBACK)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        listener.endpoint = serverFromString(_Inherited(reactor, os.dup(sock.fileno())),
                                             LOOPBACK)
        listener.startService()
        try:
            assert listener.port is not None
            assert listener.port.getHost().port == sock.getsockname()[1]
            assert listener.port.transport is LeanServer  # type: ignore[attr-defined]
        finally:
            listener.stopService()


def test_listeners_bound_once_under_twistd(supervisor: Supervisor,
                                           log_events: List[dict]) -> None:
    """twistd binds in privilegedStartService, then starts: each listener is bound and logged
    once."""
    supervisor.privilegedStartService()
    sockets = [list(listener.sockets) for listener in supervisor.listeners]
    supervisor.startService()
    assert [listener.sockets for listener in supervisor.listeners] == sockets
    bound = [event for event in log_events if "shared by" in event.get("log_format", "")]
    assert len(bound) == 2


@pytest.mark.parametrize("store", ["sqlite:/tmp/broker.db", "redis://127.0.0.1:6379/0"])
def test_workers_refuse_a_shared_store(store: str) -> None:
    """N workers would each restore and write the same store: refused, naming it."""
    with pytest.raises(ConfigError) as raised:
        Options().parseOptions(["--workers", "2", "--cluster", "redis://127.0.0.1:1/0",
                                "--store", store])
    assert str(raised.value) == (
        f"--workers: every worker would load and write the same --store {store}; the "
        "workers keep sessions and retained messages in the cluster's Redis (leave --store "
        "at memory)")


def test_restarted_worker_shares_a_socket_if_its_port_cannot_be_bound(
        supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch,
        log_events: List[dict]) -> None:
    """If a fresh socket cannot be bound, the restarted worker accepts from its neighbour's
    queue rather than the supervisor failing (one warning)."""
    supervisor.startService()

    def refuse(*args: Any) -> None:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr("twisted_mqtt.workers._Binder.listenTCP", refuse)
    ended(supervisor, 0, killed())
    supervisor.reactor.advance(RESTART_DELAY)
    listener = supervisor.listeners[0]
    assert listener.sockets[0].getsockname() == listener.sockets[1].getsockname()
    assert supervisor.reactor.spawned[-1]["fds"][FIRST_INHERITED_FD] == \
        listener.sockets[0].fileno()
    assert sum("cannot bind" in event.get("log_format", "") for event in log_events) == 2


class FakeMembers:
    """A cluster membership whose node starts or stops serving when told."""

    def __init__(self) -> None:
        self.node = type("Node", (), {"serving": False, "name": "w-1"})()
        self.watchers: List[Any] = []

    def watch_serving(self, callback: Any) -> None:
        self.watchers.append(callback)

    def set_serving(self, serving: bool) -> None:
        self.node.serving = serving
        for watcher in self.watchers:
            watcher(serving)


class FakeEndpoint:
    def __init__(self) -> None:
        self.listened: List[Any] = []

    def listen(self, factory: Any) -> Any:
        from twisted.internet.defer import succeed

        self.listened.append(factory)
        return succeed(f"port for {factory}")


def test_worker_accepts_once_its_node_serves() -> None:
    """A worker's listener waits for its node to serve (its clients wait in the kernel's
    queue, not refused with 0x88 while it joins)."""
    from twisted_mqtt.workers import _WhenServing

    clock, members, inner = task.Clock(), FakeMembers(), FakeEndpoint()
    endpoint = _WhenServing(inner, members, clock)
    listening = endpoint.listen("mqtt")
    assert inner.listened == [] and not listening.called
    clock.advance(JOIN_WAIT / 2)
    members.set_serving(True)
    assert inner.listened == ["mqtt"] and listening.result == "port for mqtt"
    clock.advance(JOIN_WAIT)
    assert inner.listened == ["mqtt"]
    assert endpoint.listen("ws").result == "port for ws"


def test_worker_that_cannot_join_accepts_after_join_wait(log_events: List[dict]) -> None:
    """A node that does not serve within JOIN_WAIT (Redis down) accepts anyway, so that its
    clients get CONNACK 0x88 rather than no answer; one warning."""
    from twisted_mqtt.workers import _WhenServing

    clock, members, inner = task.Clock(), FakeMembers(), FakeEndpoint()
    listening = _WhenServing(inner, members, clock).listen("mqtt")
    clock.advance(JOIN_WAIT - 0.1)
    assert not listening.called
    clock.advance(0.1)
    assert listening.result == "port for mqtt"
    assert [e["log_format"] for e in log_events if "not serving after" in
            e.get("log_format", "")] == ["cluster node {name} not serving after {wait}s: "
                                         "accepting clients (refused with 0x88 until it "
                                         "serves)"]
    members.set_serving(True)
    assert inner.listened == ["mqtt"]


def test_stopping_a_waiting_listener_cancels_it() -> None:
    from twisted_mqtt.workers import _WhenServing

    clock, members, inner = task.Clock(), FakeMembers(), FakeEndpoint()
    listening = _WhenServing(inner, members, clock).listen("mqtt")
    listening.addErrback(lambda failure: None)
    listening.cancel()
    members.set_serving(True)
    clock.advance(JOIN_WAIT)
    assert inner.listened == []
