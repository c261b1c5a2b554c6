"""``BrokerService``: the broker and its listeners as one Twisted ``MultiService``."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_mqtt.broker import Broker
from twisted_mqtt.listeners import DEFAULT_BACKLOG, ListenError, ListenerService
from twisted_mqtt.protocol import MQTTFactory

log = Logger()

LISTEN_ERROR_EXIT = 71
"""The exit status when a listener cannot listen (its port is in use, binding it needs a
privilege): ``EX_OSERR`` of sysexits.h.  Unlike a configuration mistake (78), a restart may
succeed once the port is free, so ``Restart=on-failure`` retries it."""


class BrokerService(MultiService):
    """Runs a ``Broker`` (timers, $SYS) and the listeners added to it.

    Each listener is a child ``ListenerService``: stopping one closes its port and disconnects
    its clients (MQTT 5 clients with DISCONNECT 0x8B).  Stopping the whole service stops the
    listeners, then disconnects every remaining client.
    """

    def __init__(self, broker: Optional[Broker] = None, reactor: Any = None, **kwargs: Any):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        if broker is None:
            broker = Broker(reactor, **kwargs)
            broker.coalesce_writes = True  # one write per connection per reactor turn
        self.broker = broker
        self.recorder: Any = None
        """The ``twisted_mqtt.storage.recorder.Recorder`` of ``use_store``, if any."""
        self.exit_on_start_error = False
        """Whether failing to start ends the process (twistd, ``python -m twisted_mqtt``): a
        listener that cannot listen with ``LISTEN_ERROR_EXIT``, a store that cannot be loaded
        with ``CONFIG_ERROR_EXIT`` (78), anything else with status 1; either way after one
        log line, without a traceback."""
        self.start_failed: Optional[Callable[[str], None]] = None
        """Told why, in one line, when a listener cannot listen and the process is about to
        end (``exit_on_start_error``): a daemonised twistd passes it to its parent process."""
        self.shutdown_timeout: Optional[float] = None
        """If set, ``stopService`` fires after at most this many seconds even if clients,
        listeners or the store have not finished stopping (logged)."""
        self._loading: Optional[Deferred[Any]] = None
        self._loaded = False

    def use_store(self, store: Any, durable: bool = False, skip_bad_rows: bool = False) -> Any:
        """Persist the broker's state in ``store`` (a ``twisted_mqtt.storage.IStore``): it is
        read when the service starts, before any listener starts, and written behind the
        broker (``durable``: QoS 1/2 messages are committed before they are acknowledged).
        A stored row holding bad data stops the start, or with ``skip_bad_rows`` is skipped
        (docs/storage.md).  Returns the ``Recorder``."""
        from twisted_mqtt.storage.recorder import Recorder

        self.recorder = Recorder(self.broker, store, durable, self.reactor, skip_bad_rows)
        return self.recorder

    def add_listener(self, endpoint: str, tcp_nodelay: bool = True) -> ListenerService:
        """Listen for MQTT on a Twisted server endpoint string, e.g. ``tcp:1883``,
        ``mqtts:8883:privateKey=key.pem:certKey=cert.pem``, ``unix:/run/mqtt.sock``,
        ``systemd:domain=INET:index=0`` or ``haproxy:tcp:1883``; without ``backlog=``, the
        listen queue is ``DEFAULT_BACKLOG`` (1024) rather than Twisted's 50.  ``tcp_nodelay`` turns
        Nagle's algorithm off on the TCP connections accepted (see docs/performance.md)."""
        factory = MQTTFactory(self.broker, endpoint, tcp_nodelay)
        listener = ListenerService(self.reactor, endpoint, factory, "MQTT", factory.tracker,
                                   DEFAULT_BACKLOG, lean=True)
        return self._adopt(listener, endpoint)

    def add_websocket_listener(self, endpoint: str, path: Optional[str] = None,
                               origins: Iterable[str] = (),
                               trusted_proxies: Iterable[str] = ()) -> ListenerService:
        """Listen for MQTT over WebSocket (``ssl:``/``mqtts:`` endpoints give wss): only
        ``path`` if given, only browsers from ``origins`` if any, believing X-Forwarded-For
        only from ``trusted_proxies`` (addresses or networks)."""
        from twisted_mqtt.websocket import MQTTWebSocketFactory, WebSocketSettings

        settings = WebSocketSettings.build(path, origins, trusted_proxies)
        factory = MQTTWebSocketFactory(self.broker, endpoint, settings)
        listener = ListenerService(self.reactor, endpoint, factory, "WebSocket", factory.tracker,
                                   DEFAULT_BACKLOG, lean=True)
        return self._adopt(listener, f"ws {endpoint}")

    def add_stats_listener(self, endpoint: str) -> ListenerService:
        """Serve ``/`` ($SYS figures as JSON), ``/healthcheck`` and ``/metrics`` (Prometheus)
        over HTTP."""
        from twisted_mqtt.metrics import stats_site

        listener = ListenerService(self.reactor, endpoint, stats_site(self), "stats")
        return self._adopt(listener, f"stats {endpoint}")

    def add_dashboard_listener(self, endpoint: str, users: Optional[Dict[str, str]] = None,
                               api_keys: Optional[Dict[str, str]] = None,
                               config: Optional[Dict[str, Any]] = None,
                               limits: Any = None) -> ListenerService:
        """Serve the dashboard and the admin API (``twisted_mqtt.web``) over HTTP (HTTPS with
        an ``ssl:`` endpoint) to the dashboard ``users`` (name -> password hash) and the
        holders of ``api_keys`` (name -> key); ``config`` is the configuration it shows,
        ``limits`` a ``twisted_mqtt.dashboard_limits.DashboardLimits`` (default: its
        defaults)."""
        from twisted_mqtt.dashboard_limits import DEFAULT_DASHBOARD_LIMITS
        from twisted_mqtt.web import DashboardListener, dashboard_site
        from twisted_mqtt.web.auth import DashboardAuth

        limits = limits or DEFAULT_DASHBOARD_LIMITS
        auth = DashboardAuth(users or {}, api_keys or {}, clock=self.reactor, limits=limits)
        if not auth.configured:
            log.warn("dashboard {endpoint}: no dashboard users or API keys; every API request "
                     "will be refused (--dashboard-users, --dashboard-api-keys)",
                     endpoint=endpoint)
        site = dashboard_site(self, auth, config or {}, endpoint.startswith(("ssl:", "mqtts:")),
                              limits)
        listener = DashboardListener(self.reactor, endpoint, site, site.api)  # type: ignore
        return self._adopt(listener, f"dashboard {endpoint}")

    def _adopt(self, listener: ListenerService, name: str) -> ListenerService:
        """Make ``listener`` a child (starting it if this service runs), named ``name`` unless
        another child has that name (e.g. two ``tcp:0`` listeners)."""
        if name not in self.namedServices:
            listener.setName(name)
        listener.setServiceParent(self)
        return listener

    def listeners(self) -> Iterator[ListenerService]:
        """The MQTT and WebSocket listeners (those with clients)."""
        for child in self:
            if isinstance(child, ListenerService) and child.tracker is not None:
                yield child

    @property
    def serving(self) -> bool:
        """Whether the service runs, every client listener has its port open, and every part
        that can stop serving (a cluster node without its lease) serves."""
        return (bool(self.running) and all(listener.listening for listener in self.listeners())
                and all(getattr(part, "serving", True) for part in self))

    def reload(self) -> Deferred[List[str]]:
        """Reload what can be reloaded without dropping connections (SIGHUP does this): call
        ``reload()`` on every installed hook that has one (the auth ledger re-reads its file,
        the auth backends fetch their ACL rules again), then have the broker forget its
        delivery decisions.  Fires with the hooks that reloaded."""
        hooks = [hook for hook in getattr(self.broker, "hooks", ())
                 if callable(getattr(hook, "reload", None))]

        def reload_one(hook: Any) -> Deferred[Any]:
            def failed(failure: Any) -> bool:
                log.failure("reload: {hook!r} failed", failure, hook=hook)
                return False

            return maybeDeferred(hook.reload).addErrback(failed)

        def finish(results: List[Any]) -> List[str]:
            getattr(self.broker, "acl_changed", lambda: None)()
            reloaded = [repr(h) for h, result in zip(hooks, results) if result is not False]
            kept = [repr(h) for h, result in zip(hooks, results) if result is False]
            log.info("reload: reloaded {reloaded}; kept {kept}",
                     reloaded=", ".join(reloaded) or "nothing", kept=", ".join(kept) or "nothing")
            return reloaded

        return gatherResults([reload_one(hook) for hook in hooks]).addCallback(finish)

    def privilegedStartService(self) -> None:
        """With a store, listeners start only once it is loaded (in ``startService``)."""
        if self.recorder is None:
            self._listen(super().privilegedStartService)
        else:
            Service.privilegedStartService(self)

    def startService(self) -> None:
        """Start the broker, then the listeners; with a store, load and restore it first."""
        if self.recorder is None:
            self.broker.start()
            self._listen(super().startService)
            return
        Service.startService(self)
        self._loading = self.recorder.open().addCallbacks(self._store_loaded,
                                                          self._store_failed)

    def _store_loaded(self, _: Any) -> None:
        self._loading = None
        if not self.running:
            return
        self._loaded = True
        self.broker.start()
        try:
            for child in self:
                child.startService()
        except ListenError as error:
            self._cannot_start(str(error), LISTEN_ERROR_EXIT)
        except Exception as error:
            self._cannot_start(f"{type(error).__name__}: {error}")

    def _store_failed(self, failure: Any) -> None:
        from twisted_mqtt.config import CONFIG_ERROR_EXIT
        from twisted_mqtt.storage import StoreError

        self._loading = None
        error = failure.value
        if isinstance(error, StoreError):  # the wrong file, or what is in it: EX_CONFIG
            self._cannot_start(str(error), CONFIG_ERROR_EXIT)
        else:
            log.failure("cannot load the store {location}", failure,
                        location=self.recorder.store.location)
            self._cannot_start(f"store {self.recorder.store.location}: {error!r}")

    def _listen(self, start: Callable[[], None]) -> None:
        """Start the children with ``start``; a listener that cannot listen ends the process
        (``exit_on_start_error``) with one log line and ``LISTEN_ERROR_EXIT``."""
        try:
            start()
        except ListenError as error:
            if not self.exit_on_start_error:
                raise
            log.critical("cannot start: {problem}", problem=str(error))
            if self.start_failed is not None:
                self.start_failed(str(error))
            raise SystemExit(LISTEN_ERROR_EXIT) from None

    def _cannot_start(self, problem: str, status: int = 1) -> None:
        """Log why the broker cannot start in one line; under twistd, exit with ``status``."""
        log.critical("cannot start: {problem}", problem=problem)
        self.running = 0
        if self.exit_on_start_error:
            def exit_failed() -> None:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)

            self.reactor.addSystemEventTrigger("after", "shutdown", exit_failed)
            self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Deferred[None]:
        """Stop the MQTT and WebSocket listeners and disconnect every client; once they are all
        gone, stop the other children (the stats listeners answer 503 meanwhile)."""
        if self.recorder is not None and not self._loaded:
            Service.stopService(self)  # stopped while loading, or it failed: nothing started
            loading = self._loading
            return succeed(None) if loading is None else loading.addCallback(
                lambda _: self.recorder.close() if self.recorder.state is not None else None)
        Service.stopService(self)
        clients = set(self.listeners())
        children = list(reversed(list(self)))
        stopping = [maybeDeferred(child.stopService) for child in children if child in clients]
        self.broker.stop()

        def stop_others(_: Any) -> Deferred[Any]:
            return gatherResults([maybeDeferred(child.stopService) for child in children
                                  if child not in clients])

        done: Deferred[Any] = gatherResults(stopping).addCallback(stop_others)
        if self.recorder is not None:
            self._loaded = False
            done.addCallback(lambda _: self.recorder.close())  # the last changes, then close
        return self._bounded(done.addCallback(lambda _: None))

    def _bounded(self, done: Deferred[None]) -> Deferred[None]:
        """``done``, or a Deferred that fires ``shutdown_timeout`` seconds from now if ``done``
        has not fired by then (logging what was still stopping)."""
        timeout = self.shutdown_timeout
        if timeout is None:
            return done
        bounded: Deferred[None] = Deferred()

        def expire() -> None:
            clients = sum(len(listener.tracker.connections) for listener in self.listeners()
                          if listener.tracker is not None)
            log.warn("stopping took longer than {timeout}s; stopping anyway ({clients} clients "
                     "still connected{store})", timeout=timeout, clients=clients,
                     store=", the store may miss the last changes" if self.recorder else "")
            bounded.callback(None)

        timer = self.reactor.callLater(timeout, expire)

        def finished(result: Any) -> None:
            if timer.active():
                timer.cancel()
                if isinstance(result, Failure):
                    bounded.errback(result)
                else:
                    bounded.callback(None)
            elif isinstance(result, Failure):
                log.failure("while stopping", result)
            return None

        done.addBoth(finished)
        return bounded
