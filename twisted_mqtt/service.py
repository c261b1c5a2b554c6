"""``BrokerService``: the broker and its listeners as one Twisted ``MultiService``."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred

from twisted_mqtt.broker import Broker
from twisted_mqtt.listeners import DEFAULT_BACKLOG, ListenerService
from twisted_mqtt.protocol import MQTTFactory


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
        self.broker = broker if broker is not None else Broker(reactor, **kwargs)

    def add_listener(self, endpoint: str, tcp_nodelay: bool = True) -> ListenerService:
        """Listen for MQTT on a Twisted server endpoint string, e.g. ``tcp:1883``,
        ``mqtts:8883:privateKey=key.pem:certKey=cert.pem``, ``unix:/run/mqtt.sock``,
        ``systemd:domain=INET:index=0`` or ``haproxy:tcp:1883``; without ``backlog=``, the
        listen queue is ``DEFAULT_BACKLOG`` (1024) rather than Twisted's 50.  ``tcp_nodelay`` turns
        Nagle's algorithm off on the TCP connections accepted (see docs/performance.md)."""
        factory = MQTTFactory(self.broker, endpoint, tcp_nodelay)
        listener = ListenerService(self.reactor, endpoint, factory, "MQTT", factory.tracker,
                                   DEFAULT_BACKLOG)
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
                                   DEFAULT_BACKLOG)
        return self._adopt(listener, f"ws {endpoint}")

    def add_stats_listener(self, endpoint: str) -> ListenerService:
        """Serve ``/`` ($SYS figures as JSON), ``/healthcheck`` and ``/metrics`` (Prometheus)
        over HTTP."""
        from twisted_mqtt.metrics import stats_site

        listener = ListenerService(self.reactor, endpoint, stats_site(self), "stats")
        return self._adopt(listener, f"stats {endpoint}")

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
        """Whether the service runs and every client listener has its port open."""
        return bool(self.running) and all(listener.listening for listener in self.listeners())

    def startService(self) -> None:
        """Start the broker, then the listeners."""
        self.broker.start()
        super().startService()

    def stopService(self) -> Deferred[None]:
        """Stop the MQTT and WebSocket listeners and disconnect every client; once they are all
        gone, stop the other children (the stats listeners answer 503 meanwhile)."""
        Service.stopService(self)
        clients = set(self.listeners())
        children = list(reversed(list(self)))
        stopping = [maybeDeferred(child.stopService) for child in children if child in clients]
        self.broker.stop()

        def stop_others(_: Any) -> Deferred[Any]:
            return gatherResults([maybeDeferred(child.stopService) for child in children
                                  if child not in clients])

        done: Deferred[Any] = gatherResults(stopping).addCallback(stop_others)
        return done.addCallback(lambda _: None)
