"""A cluster of broker processes sharing one MQTT namespace through Redis (docs/cluster.md).

``Cluster`` is a Twisted service joined to a ``BrokerService``: it holds this node's
``RedisEngine`` (``engine``), its ``Membership`` (``members``, with ``members.node``) and the
``Router`` that carries messages between nodes.  A single-node broker imports nothing of this
package; txredisapi is imported only when the engine connects.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, Iterator, List, Optional

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

REPORTED = ("clients/connected", "clients/total", "subscriptions/count", "messages/received",
            "messages/sent", "messages/dropped")
"""The figures each node reports, summed as ``$SYS/broker/cluster/...`` on every node."""

METRICS = (
    ("serving", "1 while this node's lease is proven and it serves clients", False,
     "cluster/serving"),
    ("engine_up", "1 while the cluster's Redis is reachable", False, "cluster/engine_up"),
    ("nodes", "Live nodes of the cluster, this one included", False, "cluster/nodes"),
    ("clients_connected", "Clients connected to any node", False,
     "cluster/clients/connected"),
    ("routes_remote", "Filters other nodes hold, mirrored here", False,
     "cluster/routes/remote"),
    ("messages_sent", "Messages this node sent to other nodes", True,
     "cluster/messages/sent"),
    ("messages_received", "Messages this node received from other nodes", True,
     "cluster/messages/received"),
    ("messages_dropped", "QoS 0 messages for other nodes dropped, the engine unreachable",
     True, "cluster/messages/dropped"),
    ("messages_claimed", "Messages taken over from dead nodes' streams", True,
     "cluster/messages/claimed"),
)
"""The Prometheus families of ``Cluster.collect_metrics``: (name, help, counter, figure)."""


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
        self.router.claim_handler = self.sessions.claimed_message
        self.router.ack_writer = self.sessions.acknowledge_with_write
        self.sessions.attach(self.router)
        from twisted_mqtt.cluster.admin import ClusterAdmin

        self.admin = ClusterAdmin(self)
        """Bans shared by the nodes, kicks across nodes, every node's figures."""
        self.figures: Dict[str, Any] = {}
        """The whole cluster's figures, summed from every live node's report."""
        self._report_call: Any = None
        self.gate = _Gate(self.members.node)
        broker.hooks.add(self.gate)
        self.members.watch_serving(self._serving)
        broker.figure_sources.append(self.sys_figures)

    @property
    def serving(self) -> bool:
        """Whether this node serves (its lease proven): the stats listener's /healthcheck
        answers 503 while it does not."""
        return self.members.node.serving

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
        self.admin.start()
        self.engine.start()
        self.members.start()
        self._report_call = self.members.clock.callLater(self.members.lease, self._report)

    def stopService(self) -> Deferred[Any]:
        """Leave the cluster and close the engine's connections."""
        super().stopService()
        if self._report_call is not None and self._report_call.active():
            self._report_call.cancel()
        self._report_call = None
        self.router.stop()
        self.retained.stop()
        self.sessions.stop()
        self.admin.stop()
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

    # -- figures ----------------------------------------------------------------------------

    @classmethod
    def collect_metrics(cls, clusters: Iterable[Cluster]) -> Iterator[Any]:
        """Prometheus families of this node in its cluster (``mqtt_cluster_*``), labelled by
        node name."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        clusters = list(clusters)
        for name, help_text, counter, figure in METRICS:
            kind = CounterMetricFamily if counter else GaugeMetricFamily
            family = kind("mqtt_cluster_" + name, help_text, labels=["node"])
            for cluster in clusters:
                family.add_metric([cluster.node.name], cluster.sys_figures().get(figure, 0))
            yield family

    def sys_figures(self) -> Dict[str, Any]:
        """This node's and the cluster's $SYS figures (``$SYS/broker/cluster/...``), and the
        broker's own figures without the sessions and subscriptions that stand for other
        nodes."""
        broker = self.broker
        router = self.router
        remote_sessions = sum(len(peer.sessions) for peer in router.peers.values())
        remote_filters = sum(len(peer.filters) for peer in router.peers.values())
        total = len(broker.sessions) - remote_sessions
        stats = router.stats
        return {
            "clients/total": total,
            "clients/disconnected": total - broker.connected,
            "subscriptions/count": broker.tree.count - remote_filters,
            "cluster/node": self.node.name,
            "cluster/epoch": self.node.epoch,
            "cluster/serving": int(self.node.serving),
            "cluster/engine_up": int(self.engine.up),
            "cluster/nodes": len(self.members.members),
            "cluster/routes/local": len(broker.local_filters()),
            "cluster/routes/remote": remote_filters,
            "cluster/messages/sent": stats["sent"],
            "cluster/messages/received": stats["received"],
            "cluster/messages/dropped": stats["dropped"],
            "cluster/messages/claimed": stats["claimed"],
            "cluster/batches": stats["batches"],
            **self.figures,
        }

    def _report(self) -> None:
        """Write this node's figures for the others and read theirs (every lease)."""
        self._report_call = self.members.clock.callLater(self.members.lease, self._report)
        if not self.engine.up or not self.node.serving:
            return
        broker = self.broker
        figures = broker.sys_figures()
        mine = json.dumps({name: figures[name] for name in REPORTED}).encode()
        key = self.engine.key("figures")
        self.engine.command("HSET", key, self.node.name, mine).addErrback(lambda _: None)
        self.engine.command("HGETALL", key).addCallbacks(self._reported, lambda _: None)

    def _reported(self, reply: List[bytes]) -> None:
        live = self.members.members
        totals = dict.fromkeys(REPORTED, 0)
        for index in range(0, len(reply), 2):
            if reply[index].decode("utf-8") not in live:
                continue
            try:
                figures = json.loads(reply[index + 1])
                for name in REPORTED:
                    totals[name] += int(figures.get(name, 0))
            except (ValueError, TypeError, AttributeError):
                continue
        self.figures = {f"cluster/{name}": total for name, total in totals.items()}
