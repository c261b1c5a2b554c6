"""``BrokerService``: the broker and its listeners as one Twisted ``MultiService``."""

from __future__ import annotations

from typing import Any, Optional

from twisted.application import strports
from twisted.application.service import IService, MultiService

from twisted_mqtt.broker import Broker
from twisted_mqtt.protocol import MQTTFactory


class BrokerService(MultiService):
    """Runs a ``Broker`` (timers, $SYS) and the listeners added to it.

    Listeners are child services, so stopping the service closes them first; then every client
    is disconnected (MQTT 5 clients with DISCONNECT 0x8B).
    """

    def __init__(self, broker: Optional[Broker] = None, reactor: Any = None, **kwargs: Any):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.broker = broker if broker is not None else Broker(reactor, **kwargs)

    def add_listener(self, endpoint: str) -> IService:
        """Listen for MQTT on a Twisted server endpoint string, e.g. ``tcp:1883``."""
        listener = strports.service(endpoint, MQTTFactory(self.broker, endpoint))
        listener.setName(endpoint)
        listener.setServiceParent(self)
        return listener

    def startService(self) -> None:
        """Start the broker, then the listeners."""
        self.broker.start()
        super().startService()

    def stopService(self) -> Any:
        """Stop the listeners, then disconnect the clients."""
        stopped = super().stopService()
        self.broker.stop()
        return stopped
