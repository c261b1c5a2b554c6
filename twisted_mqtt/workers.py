"""``--workers N``: N broker processes on this machine sharing the listening ports.

A supervisor (``Supervisor``, what ``twistd mqtt`` and ``python -m twisted_mqtt`` run with
``--workers``) binds every listener itself, then starts N workers, each ``python -m twisted_mqtt``
with the same options and ``--node-name NAME-i``: cluster nodes joined through the ``--cluster``
Redis.  A worker adopts the listening sockets it inherits (``reactor.adoptStreamPort``) instead of
binding them, through the endpoint string it was given, so TLS (``ssl:``, ``mqtts:``), PROXY
protocol (``haproxy:``), WebSocket and stats listeners work as in one process.

TCP listeners are bound once per worker with ``SO_REUSEPORT`` (the kernel spreads new
connections evenly over the workers); a Unix socket is bound once and shared.  The supervisor
holds every socket: a port given as 0 is the same port for all workers, a listener that cannot
listen stops the start once, with one line, and a worker that dies gets fresh sockets on the
same port when it is restarted (connections waiting in the dead worker's queue are reset and
reconnect to a live worker).

The supervisor forwards SIGHUP to every worker; SIGTERM and SIGINT stop it, and it stops the
workers with SIGTERM (SIGKILL if one has not exited ``kill_after`` seconds later).  A worker
that dies is restarted after a delay that doubles while it keeps dying (one log line each); a
worker that exits because of its configuration (status 64 or 78) stops the supervisor with the
same status, since every worker has the same configuration.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_mqtt.listeners import (
    DEFAULT_BACKLOG,
    ListenError,
    ListenerService,
    format_address,
    with_backlog,
)

log = Logger()

WORKER_ENVIRONMENT = "TWISTED_MQTT_WORKER"
"""The environment variable through which a worker learns its name and inherited sockets."""
FIRST_INHERITED_FD = 3
"""The descriptor number of a worker's first inherited listening socket."""
RESTART_DELAY = 0.5
"""Seconds before a dead worker is started again; doubled for each further death while it has
not run ``STABLE_AFTER`` seconds, up to ``MAXIMUM_RESTART_DELAY``."""
MAXIMUM_RESTART_DELAY = 30.0
STABLE_AFTER = 10.0
"""A worker that ran this many seconds before dying is restarted after ``RESTART_DELAY``."""
JOIN_WAIT = 10.0
"""Seconds a worker waits for its cluster node to serve before it accepts clients anyway
(refusing their CONNECT until it serves)."""
FATAL_STATUSES = (64, 78)
"""A worker exiting with one of these (usage error, configuration error: ``config.py``) cannot
do better when restarted: the supervisor stops with that status."""


# -- the supervisor side: binding the listeners --------------------------------------------------


class _BoundPort:
    """What ``_Binder`` returns where a reactor returns a listening port."""

    def __init__(self, sockets: List[socket.socket]) -> None:
        self.sockets = sockets


class _Binder:
    """Stands in for the reactor while an endpoint string "listens": binds its socket (one per
    worker with ``SO_REUSEPORT`` for TCP, one shared for a Unix socket) and accepts nothing."""

    def __init__(self, reactor: Any, count: int) -> None:
        self._reactor = reactor
        self._count = count
        self.backlog = DEFAULT_BACKLOG

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> _BoundPort:
        """``count`` sockets on one port, each with ``SO_REUSEPORT``."""
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        self.backlog = backlog
        sockets: List[socket.socket] = []
        try:
            for _ in range(self._count):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((interface, port))
                port = sock.getsockname()[1]  # a port given as 0: the same one for all
                sock.listen(backlog)
                sock.setblocking(False)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return _BoundPort(sockets)

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> _BoundPort:
        """As ``listenTCP`` (the workers speak TLS)."""
        return self.listenTCP(port, factory, backlog, interface)

    def listenUNIX(self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666,
                   wantPID: bool = False) -> _BoundPort:
        """One Unix socket, shared by every worker."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.exists(address) and not wantPID:
                os.unlink(address)  # a socket file left behind, as Twisted removes it
            sock.bind(address)
            os.chmod(address, mode)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return _BoundPort([sock])


class Listener:
    """One listener the supervisor binds for its workers: its kind and endpoint string, and the
    sockets bound (one per worker, or one shared)."""

    def __init__(self, kind: str, endpoint: str) -> None:
        self.kind = kind
        self.endpoint = endpoint
        self.sockets: List[socket.socket] = []
        self._binder: Optional[_Binder] = None

    def bind(self, reactor: Any, count: int) -> None:
        """Bind the sockets (``ListenError`` if it cannot)."""
        if self.endpoint.split(":", 1)[0].lower() == "systemd":
            raise ListenError(self.kind, self.endpoint, ValueError(
                "systemd socket activation cannot be shared by --workers (give a tcp: or "
                "unix: listener)"))
        self._binder = _Binder(reactor, count)
        endpoint = serverFromString(self._binder, with_backlog(self.endpoint, DEFAULT_BACKLOG))
        failure: List[Failure] = []
        endpoint.listen(None).addCallbacks(  # type: ignore[arg-type]
            lambda port: self.sockets.extend(port.sockets), failure.append)
        if failure:
            reason = failure[0].value or Exception(failure[0].getErrorMessage())
            raise ListenError(self.kind, self.endpoint, reason) from reason

    def socket_for(self, index: int) -> socket.socket:
        """The socket worker ``index`` (from 0) accepts on."""
        return self.sockets[index % len(self.sockets)]

    def rebind(self, reactor: Any, index: int) -> None:
        """Replace worker ``index``'s own socket (not a shared one) by a fresh one on the same
        address: the connections queued in the old one are reset."""
        if len(self.sockets) < 2 or self._binder is None:
            return
        old = self.sockets[index]
        host, port = old.getsockname()[:2]
        old.close()
        try:
            fresh = _Binder(reactor, 1).listenTCP(port, None, self._binder.backlog, host)
        except OSError as error:  # the worker shares its neighbour's queue instead
            log.warn("cannot bind {endpoint} again ({error}); worker {index} shares the "
                     "socket of worker {other}", endpoint=self.endpoint, error=error,
                     index=index + 1, other=(index + 1) % len(self.sockets) + 1)
            self.sockets[index] = self.sockets[(index + 1) % len(self.sockets)].dup()
            return
        self.sockets[index] = fresh.sockets[0]

    def close(self) -> None:
        """Close every socket (a Unix socket's file is removed)."""
        for sock in self.sockets:
            if sock.family == socket.AF_UNIX:
                path = sock.getsockname()
                if isinstance(path, str) and path and os.path.exists(path):
                    os.unlink(path)
            sock.close()
        self.sockets = []

    @property
    def address(self) -> str:
        """Where it listens, as the listeners' log lines say it."""
        sock = self.sockets[0]
        if sock.family == socket.AF_UNIX:
            return str(sock.getsockname())
        host, port = sock.getsockname()[:2]
        kind = IPv6Address if sock.family == socket.AF_INET6 else IPv4Address
        return format_address(kind("TCP", host, port))


# -- the supervisor side: the workers ------------------------------------------------------------


class _Worker(ProcessProtocol):
    """One worker process: started, watched, told to stop."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.name = f"{supervisor.name}-{index + 1}"
        self.pid: Optional[int] = None
        self.started_at = 0.0
        self.deaths = 0
        """Deaths in a row, each before the worker had run ``STABLE_AFTER`` seconds."""
        self.restart: Any = None
        """The pending restart (an ``IDelayedCall``), if any."""
        self.ended: Optional[Deferred[None]] = None
        """Fires when the running process has exited (while stopping)."""

    def connectionMade(self) -> None:
        """The process runs."""
        self.pid = self.transport.pid  # type: ignore[union-attr]
        log.info("worker {name} started (pid {pid})", name=self.name, pid=self.pid)

    def signal(self, name: str) -> None:
        """Send the signal named ``name`` (``"TERM"``, ``"HUP"``, ``"KILL"``) if it runs."""
        if self.pid is not None and self.transport is not None:
            try:
                self.transport.signalProcess(name)
            except OSError:  # it has just exited: processEnded follows
                pass

    def processEnded(self, reason: Failure) -> None:
        """Restart it, unless the supervisor stops or its configuration cannot work."""
        pid, self.pid = self.pid, None
        self.supervisor.worker_ended(self, pid, reason)
        ended, self.ended = self.ended, None
        if ended is not None:
            ended.callback(None)


def describe_exit(reason: Failure) -> Tuple[str, Optional[int]]:
    """How a process ended, in words, and its exit status (None if a signal killed it)."""
    if reason.check(ProcessDone):
        return "exited with status 0", 0
    status = getattr(reason.value, "exitCode", None)
    if status is not None:
        return f"exited with status {status}", int(status)
    number = getattr(reason.value, "signal", None)
    if number is not None:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return f"was killed by {name}", None
    return str(reason.value), None


class Supervisor(Service):
    """Binds the listeners once, runs ``count`` workers that share them and restarts the ones
    that die (see the module docstring).

    ``argv`` is the command line of a worker (without its node name); ``listeners`` the
    (kind, endpoint string) of every listener, in the order the workers create them.
    """

    kill_after = 30.0
    """Seconds after SIGTERM a worker still running is killed (SIGKILL)."""

    def __init__(self, reactor: Any, count: int, name: str, argv: Sequence[str],
                 listeners: Sequence[Tuple[str, str]],
                 environment: Optional[Dict[str, str]] = None,
                 executable: str = sys.executable) -> None:
        self.reactor = reactor
        self.count = count
        self.name = name
        self.argv = list(argv)
        self.listeners = [Listener(kind, endpoint) for kind, endpoint in listeners]
        self.environment = dict(os.environ if environment is None else environment)
        self.executable = executable
        self.workers = [_Worker(self, index) for index in range(count)]
        self.exit_status: Optional[int] = None
        """Set when a worker's configuration cannot work: the status the process ends with."""
        self.stopped: Callable[[int], None] = _exit_after_shutdown(reactor)
        """Called with an exit status when the supervisor stops on its own."""
        self._devnull: Optional[int] = None

    def bind(self) -> None:
        """Bind every listener not bound yet (``ListenError`` for the first that cannot
        listen)."""
        try:
            for listener in self.listeners:
                if listener.sockets:
                    continue
                listener.bind(self.reactor, self.count)
                log.info("listening for {kind} on {endpoint} at {address} (shared by {count} "
                         "workers)", kind=listener.kind, endpoint=listener.endpoint,
                         address=listener.address, count=self.count)
        except ListenError:
            self.close()
            raise

    def privilegedStartService(self) -> None:
        """Bind the listeners before privileges are dropped."""
        super().privilegedStartService()
        self._bind_or_exit()

    def startService(self) -> None:
        """Bind the listeners (unless done already) and start every worker."""
        super().startService()
        self._bind_or_exit()
        for worker in self.workers:
            self.spawn(worker)

    def _bind_or_exit(self) -> None:
        from twisted_mqtt.service import LISTEN_ERROR_EXIT

        try:
            self.bind()
        except ListenError as error:
            log.critical("cannot start: {problem}", problem=str(error))
            raise SystemExit(LISTEN_ERROR_EXIT) from None

    def close(self) -> None:
        """Close every listening socket."""
        for listener in self.listeners:
            listener.close()

    def spawn(self, worker: _Worker) -> None:
        """Start ``worker``'s process with its sockets."""
        worker.restart = None
        if self._devnull is None:
            self._devnull = os.open(os.devnull, os.O_RDONLY)
        child_fds: Dict[int, Any] = {0: self._devnull, 1: 1, 2: 2}
        ports: List[Tuple[str, int]] = []
        for number, listener in enumerate(self.listeners, FIRST_INHERITED_FD):
            child_fds[number] = listener.socket_for(worker.index).fileno()
            ports.append((listener.endpoint, number))
        environment = dict(self.environment)
        environment[WORKER_ENVIRONMENT] = json.dumps({"name": worker.name, "ports": ports})
        argv = [self.executable, "-m", "twisted_mqtt", *self.argv, "--node-name", worker.name]
        worker.started_at = self.reactor.seconds()
        self.reactor.spawnProcess(worker, self.executable, argv, environment,
                                  path=os.getcwd(), childFDs=child_fds)

    def worker_ended(self, worker: _Worker, pid: Optional[int], reason: Failure) -> None:
        """A worker's process has exited: restart it after a delay, unless stopping."""
        how, status = describe_exit(reason)
        if not self.running:
            log.info("worker {name} (pid {pid}) {how}", name=worker.name, pid=pid, how=how)
            return
        if status in FATAL_STATUSES:
            log.critical("worker {name} (pid {pid}) {how} (its configuration cannot work); "
                         "stopping", name=worker.name, pid=pid, how=how)
            self.exit_status = status
            self.stopped(status)
            return
        ran = self.reactor.seconds() - worker.started_at
        worker.deaths = worker.deaths + 1 if ran < STABLE_AFTER else 1
        delay = min(MAXIMUM_RESTART_DELAY, RESTART_DELAY * 2 ** (worker.deaths - 1))
        log.warn("worker {name} (pid {pid}) {how} after {ran:.1f}s; restarting it in "
                 "{delay:.1f}s", name=worker.name, pid=pid, how=how, ran=ran, delay=delay)
        for listener in self.listeners:
            listener.rebind(self.reactor, worker.index)
        worker.restart = self.reactor.callLater(delay, self.spawn, worker)

    def forward(self, name: str) -> None:
        """Send the signal named ``name`` to every running worker."""
        for worker in self.workers:
            worker.signal(name)

    def stopService(self) -> Deferred[None]:
        """Stop every worker (SIGTERM, then SIGKILL after ``kill_after`` seconds); fire once
        they have all exited and the sockets are closed."""
        super().stopService()
        waiting: List[Deferred[None]] = []
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
            if worker.pid is not None:
                worker.ended = Deferred()
                waiting.append(worker.ended)
                worker.signal("TERM")
        if not waiting:
            self.close()
            return succeed(None)
        kill = self.reactor.callLater(self.kill_after, self.forward, "KILL")
        done: Deferred[None] = Deferred()
        remaining = [len(waiting)]

        def one_ended(_: Any) -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                if kill.active():
                    kill.cancel()
                self.close()
                done.callback(None)

        for ended in waiting:
            ended.addCallback(one_ended)
        return done


def _exit_after_shutdown(reactor: Any) -> Callable[[int], None]:
    """A function that stops ``reactor`` and ends the process with the status it is given once
    the reactor has shut down."""
    def stop(status: int) -> None:
        def exit_now() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

        reactor.addSystemEventTrigger("after", "shutdown", exit_now)
        reactor.callWhenRunning(reactor.stop)

    return stop


def install_forwarding(supervisor: Supervisor, reactor: Any,
                       reopen: Optional[Callable[[], Any]] = None) -> None:
    """Make SIGHUP reach every worker (in the reactor thread), after calling ``reopen`` (the
    supervisor's own log file, if it has one)."""
    def hang_up() -> None:
        if reopen is not None:
            reopen()
        supervisor.forward("HUP")
        log.info("SIGHUP forwarded to the workers")

    call = reactor.callFromThread
    signal.signal(signal.SIGHUP, lambda *_: call(hang_up))


# -- the worker side -----------------------------------------------------------------------------


class _Inherited:
    """Stands in for the reactor while a worker's endpoint string listens: adopts the inherited
    socket ``fd`` instead of binding one."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _adopt(self, factory: Any) -> Any:
        with socket.socket(fileno=os.dup(self._fd)) as sock:
            family = sock.family
        port = self._reactor.adoptStreamPort(self._fd, family, factory)
        os.close(self._fd)  # adoptStreamPort keeps its own duplicate
        # PyPy's socket.fromfd leaves the socket blocking (in the description every worker
        # shares): the reactor's accept loop would then wait in accept() for ever.
        os.set_blocking(port.fileno(), False)
        return port

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        """The inherited socket, accepting for ``factory``."""
        return self._adopt(factory)

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        """The inherited socket, accepting TLS connections for ``factory``."""
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return self._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))

    def listenUNIX(self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666,
                   wantPID: bool = False) -> Any:
        """The inherited Unix socket, accepting for ``factory``."""
        return self._adopt(factory)


def worker_settings(environment: Optional[Dict[str, str]] = None) -> Optional[Dict[str, Any]]:
    """This worker's name and inherited sockets, if this process is a worker."""
    text = (os.environ if environment is None else environment).get(WORKER_ENVIRONMENT)
    return None if not text else dict(json.loads(text))


class _WhenServing:
    """An endpoint that listens once this worker's cluster node serves, or ``JOIN_WAIT``
    seconds after it was asked to, whichever comes first: while the node joins (as after a
    restart) the connections wait in the kernel's queue of the inherited socket instead of
    being refused; a node that cannot join (Redis down) accepts, and refuses CONNECT (0x88),
    rather than leave its clients waiting without an answer."""

    def __init__(self, endpoint: Any, members: Any, clock: Any) -> None:
        self.endpoint = endpoint
        self.members = members
        self.clock = clock
        self._waiting: List[Tuple[Deferred[Any], Any]] = []
        self._timer: Any = None
        members.watch_serving(self._serving)

    def listen(self, factory: Any) -> Deferred[Any]:
        """``endpoint.listen(factory)`` now if the node serves, else once it does."""
        if self.members.node.serving:
            return self.endpoint.listen(factory)
        waiting: Deferred[Any] = Deferred(lambda d: self._waiting.remove((d, factory)))
        self._waiting.append((waiting, factory))
        if self._timer is None:
            self._timer = self.clock.callLater(JOIN_WAIT, self._waited)
        return waiting

    def _waited(self) -> None:
        self._timer = None
        if self._waiting:
            log.warn("cluster node {name} not serving after {wait}s: accepting clients "
                     "(refused with 0x88 until it serves)", name=self.members.node.name,
                     wait=JOIN_WAIT)
            self._listen_all()

    def _serving(self, serving: bool) -> None:
        if serving:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self._listen_all()

    def _listen_all(self) -> None:
        waiting, self._waiting = self._waiting, []
        for deferred, factory in waiting:
            self.endpoint.listen(factory).chainDeferred(deferred)


def adopt_listeners(service: Any, reactor: Any, settings: Dict[str, Any]) -> None:
    """Make each listener of ``service`` (a ``BrokerService`` with its cluster) accept on the
    socket the supervisor bound for it rather than bind its own, from the time its node
    serves; end this process with the supervisor."""
    listeners = [child for child in service if isinstance(child, ListenerService)]
    ports = settings["ports"]
    own = [listener.description for listener in listeners]
    if own != [port[0] for port in ports]:
        raise ValueError(f"the worker's listeners {own} are not those of its supervisor "
                         f"{[port[0] for port in ports]}")
    members = next((child.members for child in service if hasattr(child, "members")), None)
    for listener, (endpoint, fd) in zip(listeners, ports):
        adopted = serverFromString(_Inherited(reactor, fd), endpoint)
        listener.endpoint = (adopted if members is None
                             else _WhenServing(adopted, members, reactor))
    _die_with_parent()


def _die_with_parent() -> None:
    """Leave the supervisor's process group (a terminal's Ctrl-C reaches the supervisor, which
    stops the workers once) and have the kernel send SIGTERM if the supervisor dies (Linux)."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
