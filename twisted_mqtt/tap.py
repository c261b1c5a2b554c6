"""``twistd mqtt`` and ``python -m twisted_mqtt``: command-line options and ``makeService``."""

from __future__ import annotations

import contextlib
import os
import platform
import select
import sys
from functools import partial
from typing import TYPE_CHECKING, Any, List, Optional, Union

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import AuthOptionMixin
from twisted.logger import Logger
from twisted.python import usage

from twisted_mqtt.auth import AllowAll, Anonymous, LocalOnly
from twisted_mqtt.capabilities import DEFAULT_CAPABILITIES, Capabilities
from twisted_mqtt.config import (
    OPTION_PARAMETERS,
    U16,
    ConfigError,
    Invalid,
    OptionValue,
    TopicFilter,
    capability_settings,
    compatibilities,
    configure_service,
    options_in_force,
    websocket_listeners,
)
from twisted_mqtt.dashboard_limits import DEFAULT_DASHBOARD_LIMITS, DashboardLimits
from twisted_mqtt.service import BrokerService

if TYPE_CHECKING:
    from twisted_mqtt.workers import Supervisor

log = Logger()


class Options(usage.Options, AuthOptionMixin):
    """Options of the ``mqtt`` twistd plugin (with Twisted's ``--auth`` checkers)."""

    supportedInterfaces = (IUsernamePassword,)

    synopsis = "[options]"
    longdesc = ("Run an MQTT 3.1, 3.1.1 and 5.0 broker. With no --listen or --ws, it listens on "
                "tcp:1883. Without authentication configuration, only clients from loopback "
                "addresses and Unix sockets are accepted; --allow-anonymous accepts all. "
                "--auth, --auth-ledger and --auth-backend configure authentication (see "
                "docs/auth.md); SIGHUP reloads the ledger and refetches backend ACL rules.")
    optFlags = [
        ["allow-anonymous", None, "Accept clients from any address without authentication."],
        ["no-tcp-nodelay", None,
         "Leave Nagle's algorithm on for MQTT connections over TCP (by default TCP_NODELAY is "
         "set, so that a reply written soon after another is not held back until the client "
         "acknowledges the first)."],
        ["durable", None,
         "With a persistent --store: commit each QoS 1/2 message (and retained message) "
         "before acknowledging it (default: write-behind, committed within a reactor turn)."],
        ["store-skip-bad-rows", None,
         "Start even if the --store holds rows of bad data: skip each (one log line), not "
         "restoring the session or retained message it belongs to (default: refuse to "
         "start)."],
        ["trace", None,
         "Log every packet in and out (client id, direction, type and fields; payloads "
         "shortened) in the logging namespace twisted_mqtt.trace; see --trace-client and "
         "--trace-topic.  Costs throughput while on."],
    ]
    optParameters = [
        ["tcp", None, None, "Listen on this TCP port (same as --listen tcp:PORT)",
         OptionValue("tcp", U16)],
        ["max-keep-alive", None, None,
         "Longest keep alive allowed; longer requests get this as Server Keep Alive",
         OptionValue("max-keep-alive")],
        ["max-packet-size", None, DEFAULT_CAPABILITIES.maximum_packet_size,
         "Largest packet accepted, bytes", OptionValue("max-packet-size")],
        ["receive-maximum", None, DEFAULT_CAPABILITIES.receive_maximum,
         "Unacknowledged QoS 1/2 messages a client may send at once",
         OptionValue("receive-maximum")],
        ["topic-alias-maximum", None, DEFAULT_CAPABILITIES.topic_alias_maximum,
         "Highest topic alias a client may use (0 disables them)",
         OptionValue("topic-alias-maximum")],
        ["max-queued-bytes", None, DEFAULT_CAPABILITIES.maximum_queued_bytes,
         "Topic and payload bytes of the messages held per session beyond the inflight "
         "window.", OptionValue("max-queued-bytes")],
        ["sys-interval", None, DEFAULT_CAPABILITIES.sys_interval,
         "Seconds between $SYS publications (0 disables)", OptionValue("sys-interval")],
        ["ws-path", None, None, "Accept WebSocket connections on this request path only."],
        ["store", None, "memory",
         "Where sessions, undelivered messages and retained messages are kept: memory "
         "(nothing survives a restart), sqlite:PATH or redis://HOST:PORT/DB[?prefix=P]."],
        ["cluster", None, None,
         "Join the cluster of brokers sharing this Redis database (docs/cluster.md).",
         OptionValue("cluster")],
        ["node-name", None, None,
         "This node's name in the cluster, unique among its nodes (default: HOSTNAME-PID).",
         OptionValue("node-name")],
        ["cluster-lease", None, 3.0,
         "Seconds a node's lease lasts unrenewed: the bound on detecting a dead node.",
         OptionValue("cluster-lease")],
        ["cluster-handover-timeout", None, 2.0,
         "Seconds to wait for another node to hand over the session of a client id connecting "
         "here before taking it (its later writes of it are then refused).",
         OptionValue("cluster-handover-timeout")],
        ["dashboard-users", None, None,
         "The dashboard users: a password file of user:hash lines (python -m "
         "twisted_mqtt.passwd FILE USER writes one)."],
        ["dashboard-api-keys", None, None,
         "The admin API keys: a file of name:key lines (also TWISTED_MQTT_DASHBOARD_API_KEY="
         "NAME:KEY); scripts send the key in the X-API-Key header."],
        ["dashboard-session-idle", None, DEFAULT_DASHBOARD_LIMITS.session_idle,
         "Seconds a dashboard browser session lasts without a request.",
         OptionValue("dashboard-session-idle")],
        ["dashboard-sign-in-attempts", None, DEFAULT_DASHBOARD_LIMITS.sign_in_attempts,
         "Failed dashboard sign-ins in a row allowed from one address or for one user name "
         "before each further attempt waits a back-off doubling up to "
         "dashboard.sign_in_backoff seconds.", OptionValue("dashboard-sign-in-attempts")],
        ["auth-ledger", None, None,
         "Authenticate clients and authorise topics by the rules of this YAML or JSON ledger "
         "file (Mochi MQTT's format; reloaded on SIGHUP)."],
        ["workers", None, 0,
         "Run this many broker processes sharing the listeners, each a cluster node named "
         "NODE-NAME-1..N joined through --cluster (which it needs); 0: this process is the "
         "broker", OptionValue("workers")],
    ]
    optParameters += OPTION_PARAMETERS  # --config, --log-*, --shutdown-timeout: config.py

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["refuse-subscribe"] = []
        self["ws"] = []
        self["ws-origin"] = []
        self["ws-trusted-proxy"] = []
        self["stats"] = []
        self["dashboard"] = []
        self["auth-backend"] = []
        self["trace-client"] = []
        self["trace-topic"] = []
        self["bridges"] = []
        self["bridge"] = []
        self["bridge-topic"] = []
        self["bridge-option"] = []
        self["kafka-bridges"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen for MQTT on a Twisted endpoint string (repeatable), e.g. tcp:1883."""
        self["listen"].append(endpoint)

    def opt_refuse_subscribe(self, topic_filter: str) -> None:
        """Refuse subscriptions to this topic filter with SUBACK 0x80 (repeatable)."""
        self["refuse-subscribe"].append(topic_filter)

    def opt_ws(self, endpoint: str) -> None:
        """Listen for MQTT over WebSocket on a Twisted endpoint string (repeatable), e.g.
        tcp:8080; ssl: or mqtts: endpoints give wss."""
        self["ws"].append(endpoint)

    def opt_ws_origin(self, origin: str) -> None:
        """Accept WebSocket connections from browsers on this Origin only (repeatable), e.g.
        https://example.com; default: any."""
        self["ws-origin"].append(origin)

    def opt_ws_trusted_proxy(self, address: str) -> None:
        """Believe X-Forwarded-For from this proxy address or network (repeatable)."""
        self["ws-trusted-proxy"].append(address)

    def opt_stats(self, endpoint: str) -> None:
        """Serve /, /healthcheck and /metrics over HTTP on this endpoint (repeatable)."""
        self["stats"].append(endpoint)

    def opt_dashboard(self, endpoint: str) -> None:
        """Serve the dashboard and the admin API over HTTP on this endpoint (repeatable); a
        bare port or a tcp: endpoint without interface= listens on 127.0.0.1 only."""
        self["dashboard"].append(endpoint)

    def opt_auth_backend(self, url: str) -> None:
        """Authenticate and authorise through a backend (repeatable): redis://HOST:PORT/DB,
        http(s)://HOST:PORT/BASE, postgresql://USER:PASSWORD@HOST:PORT/DB or mysql://...;
        settings in the query string, e.g. ?password_hash=bcrypt&timeout=2 (docs/auth.md)."""
        from twisted_mqtt.auth.backends import backend_settings

        try:
            backend_settings(url)
        except (ValueError, ImportError) as error:
            raise ConfigError(str(error), path="--auth-backend") from None
        self["auth-backend"].append(url)

    def opt_trace_client(self, pattern: str) -> None:
        """With --trace: only clients whose id matches this glob pattern (repeatable)."""
        self["trace-client"].append(pattern)

    def opt_trace_topic(self, topic_filter: str) -> None:
        """With --trace: only packets with a topic matching this filter (repeatable)."""
        try:
            self["trace-topic"].append(TopicFilter()(topic_filter))
        except Invalid as error:
            raise ConfigError(error.problem, path="--trace-topic") from None

    def opt_bridge(self, name_address: str) -> None:
        """Bridge to another MQTT broker (repeatable): NAME=ADDRESS, ADDRESS a Twisted client
        endpoint string, e.g. cloud=tcp:host=broker.example:port=1883 (docs/bridges.md)."""
        self["bridge"].append(name_address)

    def opt_bridge_topic(self, name_rule: str) -> None:
        """A topic rule of a --bridge (repeatable): NAME=PATTERN [out|in|both [QOS
        [LOCAL_PREFIX REMOTE_PREFIX]]], Mosquitto's topic rule ("" an empty prefix)."""
        self["bridge-topic"].append(name_rule)

    def opt_bridge_option(self, setting: str) -> None:
        """A setting of a --bridge (repeatable): NAME.KEY=VALUE, KEY one of the keys of a
        bridges: entry, e.g. cloud.protocol=3.1.1 or cloud.queue_messages=50000."""
        self["bridge-option"].append(setting)

    def opt_version(self) -> None:
        """Print the versions of twisted_mqtt, Twisted and Python, and the reactor, and exit."""
        print(version())
        sys.exit(0)

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        """Parse the command line, remembered so that ``--config`` fills only the options it
        does not give; under twistd, options that cannot be used end the process with one
        line and the status of ``config.option_error`` (not twistd's usage text)."""
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            if getattr(self, "parent", None) is None:
                raise
            from twisted_mqtt.config import exit_on_option_error

            exit_on_option_error(error)

    def postOptions(self) -> None:
        """Apply the default listener; refuse bad listeners here rather than in makeService."""
        from twisted_mqtt.config import apply_config_file

        apply_config_file(self)  # --config FILE: the options the command line did not give
        if self["tcp"] is not None:
            self["listen"].append(f"tcp:{self['tcp']}")
        if not self["listen"] and not self["ws"]:
            self["listen"].append("tcp:1883")
        from twisted.internet import endpoints, reactor

        if self["dashboard"]:
            from twisted_mqtt.listeners import loopback_endpoint

            self["dashboard"] = [loopback_endpoint(e) for e in self["dashboard"]]
        for endpoint in self["listen"] + self["ws"] + self["stats"] + self["dashboard"]:
            try:  # a bad endpoint string is a usage error, not a traceback from makeService
                endpoints.serverFromString(reactor, endpoint)
            except Exception as error:
                raise ConfigError(f"bad listener {endpoint!r}: {error}") from None
        for proxy in self["ws-trusted-proxy"]:
            from twisted_mqtt.websocket import parse_network  # Autobahn: only with --ws

            try:
                parse_network(proxy)
            except ValueError as error:
                raise ConfigError(str(error), path="--ws-trusted-proxy") from None
        from twisted_mqtt.storage import parse_store

        try:
            parse_store(self["store"])
        except ValueError as error:
            raise ConfigError(str(error), path="--store") from None
        if self["ws-path"] is not None and not self["ws-path"].startswith("/"):
            raise ConfigError(f"must start with /, not {self['ws-path']!r}", path="--ws-path")
        if self["bridge"] or self["bridge-topic"] or self["bridge-option"]:
            from twisted_mqtt.bridges.mqtt_settings import bridges_from_options

            self["bridges"] = bridges_from_options(self["bridge"], self["bridge-topic"],
                                                   self["bridge-option"])
        if self["bridges"] and self["workers"]:
            raise ConfigError("MQTT bridges run in one process: each worker would connect "
                              "with the same client ids; run the bridges in a broker without "
                              "--workers", path="--workers")
        if self["workers"] and any(bridge.ingress for bridge in self["kafka-bridges"]):
            raise ConfigError("Kafka ingress runs in one process: each worker would publish "
                              "every record; read Kafka in a broker without --workers (egress "
                              "rules alone may run in every worker)", path="--workers")
        if self["workers"] and not self.get("cluster"):
            raise ConfigError(f"{self['workers']} workers are cluster nodes: they need "
                              "--cluster redis://HOST:PORT/DB (the Redis that joins them)",
                              path="--workers")
        if self["workers"] and self["store"] != "memory":
            raise ConfigError(f"every worker would load and write the same --store "
                              f"{self['store']}; the workers keep sessions and retained "
                              "messages in the cluster's Redis (leave --store at memory)",
                              path="--workers")
        self._check_dashboard()
        if self["auth-ledger"] is not None:
            from twisted_mqtt.auth.ledger import LedgerError, read_ledger

            try:  # a ledger that cannot be used is a usage error, not a traceback
                read_ledger(self["auth-ledger"])
            except LedgerError as error:
                raise ConfigError(str(error), path="--auth-ledger") from None

    def _check_dashboard(self) -> None:
        """Read the dashboard's users and API keys (a file that cannot be used is a usage
        error)."""
        self["dashboard-settings"] = ({}, {})
        if not self["dashboard"]:
            return
        from twisted_mqtt.web.auth import DashboardConfigError, read_api_keys, read_users

        try:
            users = read_users(self["dashboard-users"]) if self["dashboard-users"] else {}
        except DashboardConfigError as error:
            raise ConfigError(str(error), path="--dashboard-users") from None
        try:
            keys = read_api_keys(self["dashboard-api-keys"])
        except DashboardConfigError as error:
            raise ConfigError(str(error), path="--dashboard-api-keys") from None
        self["dashboard-settings"] = (users, keys)

    def dashboard_limits(self) -> DashboardLimits:
        """The dashboard's limits these options set."""
        return DashboardLimits.from_settings({
            **(self.get("dashboard-limits") or {}),
            "session_idle": self["dashboard-session-idle"],
            "sign_in_attempts": self["dashboard-sign-in-attempts"]})

    def capabilities(self) -> Capabilities:
        """The limits these options set."""
        return Capabilities(
            maximum_packet_size=self["max-packet-size"],
            receive_maximum=self["receive-maximum"],
            topic_alias_maximum=self["topic-alias-maximum"],
            maximum_queued_bytes=self["max-queued-bytes"],
            maximum_keep_alive=self["max-keep-alive"],
            refused_filters=tuple(self["refuse-subscribe"]),
            sys_interval=self["sys-interval"],
            **capability_settings(self),  # the file's limits that have no option
        )


def makeService(options: Options, reactor: Any = None) -> Union[BrokerService, Supervisor]:
    """Build the broker service with its listeners from parsed options; with ``--workers``, the
    supervisor of the worker processes (``twisted_mqtt.workers``)."""
    from twisted_mqtt.workers import worker_settings

    worker = worker_settings()
    if options["workers"] and worker is None:
        return make_supervisor(options, reactor)
    hooks = auth_hooks(options, reactor)
    if hooks:
        if options["allow-anonymous"]:
            hooks.append(Anonymous())
            log.warn("clients without a user name and password are accepted from any address "
                     "(--allow-anonymous)")
        log.info("authentication: {hooks}", hooks=", ".join(repr(hook) for hook in hooks))
    elif options["allow-anonymous"]:
        hooks.append(AllowAll())
        log.warn("anonymous clients are accepted from any address (--allow-anonymous)")
    else:
        hooks.append(LocalOnly())
        log.info("no authentication configured: anonymous clients are accepted from loopback "
                 "addresses and Unix sockets only; use --allow-anonymous to accept all")
    service = BrokerService(reactor=reactor, capabilities=options.capabilities(),
                            compatibilities=compatibilities(options), authenticator=hooks[0])
    service.exit_on_start_error = True  # one line and an exit status, not a traceback
    twistd = getattr(options, "parent", None)
    if twistd is not None:
        service.start_failed = partial(twistd_start_failed, twistd)
    for hook in hooks[1:]:
        service.broker.hooks.add(hook)
    # The bound on a graceful stop; SIGHUP re-reads --config (in a thread, on a real reactor).
    configure_service(service, options, _in_thread(reactor))
    _configure_trace(service, options)
    install_reload_signal(service, reactor)
    tune_process(reactor)
    listeners: List[str] = options["listen"]
    for endpoint in listeners:
        service.add_listener(endpoint, tcp_nodelay=not options["no-tcp-nodelay"])
    for endpoint, path, origins, proxies in websocket_listeners(options):
        service.add_websocket_listener(endpoint, path, origins, proxies)
    for endpoint in options["stats"]:
        service.add_stats_listener(endpoint)
    for endpoint in options["dashboard"]:
        users, keys = options["dashboard-settings"]
        service.add_dashboard_listener(endpoint, users, keys, options_in_force(options),
                                       options.dashboard_limits())
    if options["bridges"]:
        from twisted_mqtt.bridges.mqtt import add_bridges

        add_bridges(service, options["bridges"])
    if options["kafka-bridges"]:
        from twisted_mqtt.bridges.kafka import KafkaBridge

        for settings in options["kafka-bridges"]:
            KafkaBridge(service.broker, settings, reactor).setServiceParent(service)
    _configure_store(service, options, reactor)
    _configure_cluster(service, options, reactor)
    if worker is not None:
        from twisted_mqtt.workers import adopt_listeners

        adopt_listeners(service, reactor, worker)
    return service


def _configure_cluster(service: BrokerService, options: Options, reactor: Any) -> None:
    """Join the cluster of ``--cluster``, if given."""
    if options["cluster"] is None:
        if options["node-name"] is not None:
            log.warn("--node-name has no effect without --cluster")
        return
    from twisted_mqtt.cluster import Cluster

    Cluster(service.broker, options["cluster"], options["node-name"],
            options["cluster-lease"], reactor,
            handover_timeout=options["cluster-handover-timeout"]).setServiceParent(service)


def make_supervisor(options: Options, reactor: Any = None) -> Supervisor:
    """The supervisor of ``--workers`` processes, each ``python -m twisted_mqtt`` with these
    options (and twistd's ``--logfile`` as ``--log-file``)."""
    import socket

    from twisted_mqtt.workers import Supervisor, install_forwarding

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    argv = list(getattr(options, "argv", []))
    twistd = getattr(options, "parent", None)
    logfile = twistd.get("logfile") if twistd is not None else None
    if logfile and logfile != "-" and not options["log-file"]:
        argv += ["--log-file", os.path.abspath(logfile)]
    listeners = [("MQTT", endpoint) for endpoint in options["listen"]]
    listeners += [("WebSocket", endpoint) for endpoint, *_ in websocket_listeners(options)]
    listeners += [("stats", endpoint) for endpoint in options["stats"]]
    listeners += [("dashboard", endpoint) for endpoint in options["dashboard"]]
    name = options.get("node-name") or socket.gethostname()
    supervisor = Supervisor(reactor, options["workers"], name, argv, listeners)
    supervisor.kill_after = float(options["shutdown-timeout"]) + 5.0
    running = process_reactor(reactor)
    if running is not None:
        install_forwarding(supervisor, running, getattr(options.get("log-output"), "reopen", None))
    log.info("{count} workers {name}-1..{count}, cluster {cluster}", count=options["workers"],
             name=name, cluster=options.get("cluster"))
    return supervisor


def _configure_trace(service: BrokerService, options: Options) -> None:
    """Turn the packet trace on if the options ask for it."""
    if options["trace"]:
        service.broker.trace(True, options["trace-client"], options["trace-topic"])
    elif options["trace-client"] or options["trace-topic"]:
        log.warn("the packet trace is off: --trace-client and --trace-topic (trace.clients, "
                 "trace.topics) apply with --trace (trace.enabled: true)")


def _configure_store(service: BrokerService, options: Options, reactor: Any) -> None:
    """Give the service the store of ``--store`` and say in the log what survives a restart."""
    from twisted_mqtt.storage import open_store, parse_store

    kind, _ = parse_store(options["store"])
    durable = bool(options["durable"])
    if kind == "memory":
        log.info("store: memory; sessions and messages do not survive a restart (--store "
                 "sqlite:PATH or redis://HOST:PORT/DB keeps them)")
        if durable:
            log.warn("--durable has no effect with the memory store")
        return
    service.use_store(open_store(options["store"], reactor, durable), durable,
                      bool(options["store-skip-bad-rows"]))
    log.info("store: {kind} {location}, {mode}", kind=kind,
             location=service.recorder.store.location,
             mode="durable (QoS 1/2 messages are committed before they are acknowledged)"
             if durable else "write-behind (committed within a reactor turn)")


def auth_hooks(options: Options, reactor: Any = None) -> List[Any]:
    """The authentication and ACL hooks the options configure, in the order they are asked:
    Twisted's ``--auth`` checkers, the ``--auth-ledger``, then each ``--auth-backend``."""
    hooks: List[Any] = []
    checkers = options.get("credCheckers") or []
    if checkers:
        from twisted_mqtt.auth.cred import CredAuthenticator

        hooks.append(CredAuthenticator(checkers, in_thread=_in_thread(reactor)))
    if options["auth-ledger"] is not None:
        from twisted_mqtt.auth.ledger import Ledger

        hooks.append(Ledger.from_file(options["auth-ledger"], in_thread=_in_thread(reactor)))
    if options["auth-backend"]:
        from twisted_mqtt.auth.backends import backend_from_url, make_backend

        for url in options["auth-backend"]:
            if isinstance(url, str):
                hooks.append(backend_from_url(url, reactor=reactor))
            else:  # (kind, settings) of a mapping in the configuration file's auth.backends
                kind, settings = url
                hooks.append(make_backend(kind, settings, reactor=reactor))
    return hooks


def twistd_start_failed(twistd: usage.Options, problem: str) -> None:
    """Before twistd's process ends because the broker cannot start: remove its pid file, as
    twistd does after an exception; daemonised, send ``problem`` through twistd's status pipe
    to the parent process waiting on it, which prints it (and exits with 1)."""
    if twistd.get("pidfile"):
        with contextlib.suppress(OSError):
            os.unlink(twistd["pidfile"])
    pipe = twistd.get("statusPipe")
    if pipe is not None:
        twistd["statusPipe"] = None
        os.write(pipe, b"1 " + problem.encode("ascii", "backslashreplace")[:98])
        os.close(pipe)


def version() -> str:
    """One line: the versions of twisted_mqtt, Twisted and Python, and the reactor that runs
    (or would run) the broker."""
    import platform

    from twisted.copyright import version as twisted_version
    from twisted.internet import reactor

    from twisted_mqtt import __version__

    return (f"twisted_mqtt {__version__} (Twisted {twisted_version}, "
            f"{platform.python_implementation()} {platform.python_version()}, reactor "
            f"{type(reactor).__module__}.{type(reactor).__qualname__})")


def process_reactor(reactor: Any = None) -> Any:
    """The process's real reactor if ``reactor`` is it (or None: under twistd or ``python -m
    twisted_mqtt``), else None (a test's fake reactor)."""
    from twisted.internet import reactor as global_reactor

    return global_reactor if reactor is None or reactor is global_reactor else None


def _in_thread(reactor: Any) -> Any:
    """``deferToThread`` on the process's real reactor (file reads on SIGHUP go there), else
    None (a test's fake reactor: read at once)."""
    if process_reactor(reactor) is None:
        return None
    from twisted.internet.threads import deferToThread

    return deferToThread


def install_reload_signal(service: BrokerService, reactor: Any = None) -> bool:
    """Make SIGHUP call ``service.reload`` (in the reactor thread), when the service runs on
    the process's real reactor.  Whether the handler was installed."""
    import signal

    running = process_reactor(reactor)
    if not hasattr(signal, "SIGHUP") or running is None:
        return False
    call = running.callFromThread
    signal.signal(signal.SIGHUP, lambda *_: call(service.reload))
    return True


def tune_process(reactor: Any = None) -> bool:
    """When the broker owns the process (its real reactor): once the reactor runs, tune the
    garbage collector (``twisted_mqtt.collector``) and say in the log which reactor runs,
    whether a faster one exists, and whether the codec is compiled.  Whether it applies."""
    running = process_reactor(reactor)
    if running is None:
        return False
    running.callWhenRunning(_tuned, running)
    return True


def _is_mqtt_reactor(reactor: Any) -> bool:
    from twisted_mqtt.reactor import MQTTReactor  # needs epoll (Linux)

    return isinstance(reactor, MQTTReactor)


def _tuned(reactor: Any) -> None:
    from twisted_mqtt import codec, collector

    name = f"{type(reactor).__module__}.{type(reactor).__qualname__}"
    if not hasattr(select, "epoll") or _is_mqtt_reactor(reactor):
        log.info("reactor: {name}", name=name)
    else:
        log.info("reactor: {name}; --reactor=mqtt (twistd) reads and writes sockets with less "
                 "overhead per event", name=name)
    if collector.tune():
        log.info("garbage collector: start-up objects frozen, young generation threshold "
                 "{threshold}", threshold=collector.YOUNG_THRESHOLD)
    if codec.compiled():
        log.info("codec: compiled (mypyc)")
    elif platform.python_implementation() == "CPython":
        log.info("codec: pure Python; installed with TWISTED_MQTT_COMPILE=1 it is compiled, "
                 "for less CPU per message (README)")
    else:
        log.info("codec: pure Python")
