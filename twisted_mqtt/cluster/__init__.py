"""A cluster of broker processes sharing one MQTT namespace through Redis (docs/cluster.md).

``Cluster`` is a Twisted service joined to a ``BrokerService``: it holds this node's
``RedisEngine`` (``engine``), its ``Membership`` (``members``, with ``members.node``) and the
``Router`` that carries messages between nodes.  A single-node broker imports nothing of this
package; txredisapi is imported only when the engine connects.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from twisted_mqtt.cluster.engine import EngineDown, RedisEngine
from twisted_mqtt.cluster.membership import DEFAULT_LEASE, Membership, Node, optional_name
from twisted_mqtt.cluster.sessions import HANDOVER_TIMEOUT
from twisted_mqtt.hooks import Hook
from twisted_mqtt.interfaces import ClientInfo, Veto
from twisted_mqtt.packets import ReasonCode

__all__ = ["Cluster", "EngineDown", "Membership", "Node", "RedisEngine", "DEFAULT_LEASE"]

log = Logger()


class _Gate(Hook):
    """The ``on_connect`` hook that refuses clients while this node does not serve (v5 CONNACK
    0x88 Server unavailable, v3 return code 3)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def on_connect(self, client: ClientInfo, packet: Any) -> Any:
        """Refuse the CONNECT unless this node's lease is proven."""
        if self.node.serving:
            return None
        return Veto(ReasonCode.SERVER_UNAVAILABLE)

    def __repr__(self) -> str:
        return f"<cluster gate of node {self.node.name}>"


class Cluster(Service):
    """This broker as one node of the cluster on the Redis database at ``url``."""

    def __init__(self, broker: Any, url: str, name: Optional[str] = None,
                 lease: float = DEFAULT_LEASE, reactor: Any = None,
                 handover_timeout: float = HANDOVER_TIMEOUT) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.broker = broker
        self.engine = RedisEngine(url, reactor)
        self.members = Membership(self.engine, optional_name(name), reactor, lease)
        from twisted_mqtt.cluster.routes import Router

        self.router = Router(broker, self.engine, self.members)
        from twisted_mqtt.cluster.retained import RetainedReplica

        self.retained = RetainedReplica(broker, self.engine, self.members)
        from twisted_mqtt.cluster.sessions import ClusterSessions

        self.sessions = ClusterSessions(broker, self.engine, self.members, reactor,
                                        handover_timeout)
        self.gate = _Gate(self.members.node)
        broker.hooks.add(self.gate)
        self.members.watch_serving(self._serving)

    @property
    def node(self) -> Node:
        """This node: name, epoch, serving."""
        return self.members.node

    def startService(self) -> None:
        """Connect to the engine and join."""
        super().startService()
        log.info("cluster: node {name} joining {where} (lease {lease}s)", name=self.node.name,
                 where=self.engine.location, lease=self.members.lease)
        self.router.start()
        self.retained.start()
        self.sessions.start()
        self.engine.start()
        self.members.start()

    def stopService(self) -> Deferred[Any]:
        """Leave the cluster and close the engine's connections."""
        super().stopService()
        self.router.stop()
        self.retained.stop()
        self.sessions.stop()
        leaving = maybeDeferred(self.members.stop)
        return leaving.addBoth(lambda _: self.engine.stop())

    def _serving(self, serving: bool) -> None:
        if serving:
            log.info("cluster: node {name} serving (epoch {epoch})", name=self.node.name,
                     epoch=self.node.epoch)
            return
        broker = self.broker
        log.warn("cluster: node {name} not serving; dropping its {count} clients",
                 name=self.node.name, count=len(broker.connections))
        broker.tick()
        for conn in list(broker.connections):
            conn.shutdown(ReasonCode.SERVER_SHUTTING_DOWN)
        broker.flush()
