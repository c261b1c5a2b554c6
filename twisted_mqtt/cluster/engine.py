"""``RedisEngine``: one node's link to the cluster's Redis (``--cluster redis://HOST:PORT/DB``).

Three connections through txredisapi's protocol (imported only here, when a cluster is
configured): one for commands, one for pub/sub, and one for control commands (``control=True``:
the membership's leases), which never wait behind the message batches queued on the first: Redis
answers a connection's commands in order, so a lease renewal sent behind seconds of pipelined
batches would be late however idle Redis is.  Commands issued during one reactor turn leave
in one write (Twisted's transport buffers them), so callers batch by issuing many commands, or
one script carrying many items, per turn.  A lost connection is retried every
``retry_delay`` seconds; ``watch`` callbacks hear of each change of state, and every key the
cluster uses is built by ``key`` under one prefix.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from twisted_mqtt.storage.redis import parse_redis_url

log = Logger()

CONNECT_TIMEOUT = 5.0
RETRY_DELAY = 1.0


class EngineDown(Exception):
    """The engine is not reachable: the command was not sent."""


class _Factory(Factory):
    """What txredisapi's protocol asks of its factory when AUTH or SELECT fails."""

    isLazy = False
    noisy = False

    def __init__(self, protocol: Callable[[], Any]) -> None:
        self.make = protocol
        self.failed: Optional[str] = None

    def buildProtocol(self, addr: Any) -> Any:
        proto = self.make()
        proto.factory = self
        return proto

    def stopTrying(self) -> None:
        """Nothing to stop: the engine decides when to reconnect."""

    def connectionError(self, why: str) -> None:
        """Remember why the connection was refused (a bad password or database)."""
        self.failed = why


def _ready(proto: Any) -> Any:
    """Fires once the connection has selected its database (and authenticated)."""
    return proto.whenConnected()


class RedisEngine:
    """The engine of one node: commands, scripts and channels on one Redis database."""

    def __init__(self, url: str, reactor: Any, retry_delay: float = RETRY_DELAY,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.url = url
        self.host, self.port, self.db, self._password, prefix = parse_redis_url(url)
        self.prefix = prefix + "cluster:"
        """Every key and channel of the cluster starts with this."""
        self.reactor = reactor
        self.retry_delay = retry_delay
        self.connect_timeout = connect_timeout
        """Seconds a connection may take to open and be ready (AUTH, SELECT answered)."""
        self.up = False
        """Whether all three connections are open."""
        self._commands: Any = None
        self._subscriber: Any = None
        self._control: Any = None
        self._channels: Dict[bytes, Callable[[bytes], None]] = {}
        self._watchers: List[Callable[[bool], None]] = []
        self._retry: Any = None
        self._stopped = True
        self._reported = False
        """Whether failing to connect has been logged since the engine was last up."""

    @property
    def location(self) -> str:
        """Where the engine is, for log lines (no password)."""
        return f"redis://{self.host}:{self.port}/{self.db}"

    def key(self, *parts: str) -> str:
        """The name of a cluster key or channel: the prefix, then ``parts`` joined by ``:``."""
        return self.prefix + ":".join(parts)

    def watch(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(up)`` each time the engine becomes reachable or unreachable."""
        self._watchers.append(callback)

    # -- connections ----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, and keep reconnecting until ``stop``."""
        self._stopped = False
        self._connect()

    def stop(self) -> Deferred[Any]:
        """Close the connections; fires once they are closed."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        closing = []
        for proto in (self._commands, self._subscriber, self._control):
            if proto is not None and proto.transport is not None:
                closing.append(proto.whenDisconnected())
                proto.transport.loseConnection()
        self._commands = self._subscriber = self._control = None
        self._set_up(False)
        return gatherResults(closing, consumeErrors=True).addErrback(lambda _: None)

    def _connect(self) -> None:
        import txredisapi
        from twisted.internet.endpoints import HostnameEndpoint

        self._retry = None
        endpoint = HostnameEndpoint(self.reactor, self.host, self.port,
                                    timeout=self.connect_timeout)
        engine = self

        class Commands(txredisapi.RedisProtocol):  # type: ignore[misc]
            def connectionLost(self, why: Any) -> None:
                super().connectionLost(why)
                engine._lost(self)

        class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
                engine._message(channel, message)

            def connectionLost(self, why: Any) -> None:
                super().connectionLost(why)
                engine._lost(self)

        def make(cls: Any) -> Callable[[], Any]:
            return lambda: cls(charset=None, password=self._password, dbid=self.db,
                               convertNumbers=False)

        protos: List[Any] = []

        def opened(proto: Any) -> Any:
            protos.append(proto)
            return _ready(proto)

        attempts = [endpoint.connect(_Factory(make(cls))).addCallback(opened)
                    for cls in (Commands, Subscriber, Commands)]
        # AUTH or SELECT refused: the protocol closes without ever being ready
        gatherResults(attempts, consumeErrors=True).addTimeout(
            self.connect_timeout, self.reactor).addCallbacks(
            self._opened, self._not_opened, errbackArgs=(protos,))

    def _opened(self, protos: List[Any]) -> None:
        commands, subscriber, control = protos
        if self._stopped or not all(proto.connected for proto in protos):
            for proto in protos:
                proto.transport.loseConnection()
            return
        self._commands, self._subscriber, self._control = commands, subscriber, control
        if self._channels:
            subscriber.subscribe(list(self._channels)).addErrback(self._ignore)
        self._set_up(True)

    def _not_opened(self, failure: Any, protos: List[Any]) -> None:
        for proto in protos:  # those that did open
            if proto.transport is not None:
                proto.transport.loseConnection()
        error = failure.value
        if hasattr(error, "subFailure"):
            error = error.subFailure.value
        refused = [p.factory.failed for p in protos if getattr(p.factory, "failed", None)]
        if refused:
            error = refused[0]
        if not self._reported:
            self._reported = True
            log.warn("cluster engine {where}: cannot connect ({error}); retrying every "
                     "{delay}s", where=self.location, error=error, delay=self.retry_delay)
        self._schedule_retry()

    def _lost(self, proto: Any) -> None:
        mine = (self._commands, self._subscriber, self._control)
        if proto not in mine:
            return
        for other in mine:
            if other is not None and other is not proto and other.transport is not None:
                other.transport.loseConnection()
        self._commands = self._subscriber = self._control = None
        self._set_up(False)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if not self._stopped and (self._retry is None or not self._retry.active()):
            self._retry = self.reactor.callLater(self.retry_delay, self._connect)

    def _set_up(self, up: bool) -> None:
        if up == self.up:
            return
        self.up = up
        if up:
            self._reported = False
            log.info("cluster engine {where}: connected", where=self.location)
        elif not self._stopped:
            self._reported = True  # this line says it: no other until it is up again
            log.warn("cluster engine {where}: connection lost; retrying every {delay}s",
                     where=self.location, delay=self.retry_delay)
        for callback in list(self._watchers):
            try:
                callback(up)
            except Exception:
                log.failure("cluster engine watcher {callback!r} failed", callback=callback)

    @staticmethod
    def _ignore(failure: Any) -> None:
        return None

    # -- commands and channels ------------------------------------------------------------------

    def command(self, *args: Any, control: bool = False) -> Deferred[Any]:
        """Send one command; fires with its reply, fails with ``EngineDown`` when Redis is not
        reachable, or with the error Redis answered.  ``control``: on the control connection,
        ahead of the message batches queued on the commands connection."""
        proto = self._control if control else self._commands
        if proto is None or not proto.connected:
            return fail(EngineDown(f"engine {self.location} unreachable"))
        try:
            result: Deferred[Any] = proto.execute_command(*args)
        except Exception as error:
            return fail(EngineDown(str(error)))
        return result

    def script(self, source: str, keys: List[str], args: List[Any],
               control: bool = False) -> Deferred[Any]:
        """Run a Lua script atomically (``EVAL``; Redis caches it by its hash); ``control`` as
        for ``command``."""
        return self.command("EVAL", source, len(keys), *keys, *args, control=control)

    def subscribe(self, channel: str, callback: Callable[[bytes], None]) -> None:
        """Call ``callback(message)`` for each message published to ``channel`` (subscribed
        again after each reconnection)."""
        name = channel.encode("utf-8")
        self._channels[name] = callback
        if self._subscriber is not None:
            self._subscriber.subscribe([name]).addErrback(self._ignore)

    def _message(self, channel: bytes, message: bytes) -> None:
        callback = self._channels.get(channel)
        if callback is None:
            return
        try:
            callback(message)
        except Exception:
            log.failure("cluster channel {channel}: handling a message failed",
                        channel=channel.decode("utf-8", "replace"))
