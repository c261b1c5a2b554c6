"""The stats listener: a small twisted.web site about the running broker.

``/`` is the $SYS figures as JSON, ``/healthcheck`` answers 200 while the broker serves (503
while it starts or stops), and ``/metrics`` is the Prometheus text format produced by
prometheus-client from ``BrokerCollector``, which reads the broker at each scrape.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Dict, Iterator, List

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    from twisted_mqtt.service import BrokerService

QOS_LEVELS = ("0", "1", "2")


class BrokerCollector(Collector):
    """Prometheus metrics read from a ``BrokerService`` and its broker when scraped."""

    def __init__(self, service: BrokerService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        """One family per figure; names are listed in docs/listeners.md."""
        broker = self.service.broker
        stats = broker.stats
        figures = broker.sys_figures()
        per_listener = GaugeMetricFamily("mqtt_listener_connections",
                                         "Open network connections, by listener",
                                         labels=["listener", "kind"])
        for listener in self.service.listeners():
            assert listener.tracker is not None
            per_listener.add_metric([listener.description, listener.kind],
                                    len(listener.tracker.connections))
        yield per_listener
        for name, help_text, figure in (
            ("mqtt_clients_connected", "Clients connected", "clients/connected"),
            ("mqtt_clients_maximum", "Most clients connected at once", "clients/maximum"),
            ("mqtt_sessions", "Sessions, connected or not", "clients/total"),
            ("mqtt_subscriptions", "Subscriptions", "subscriptions/count"),
            ("mqtt_messages_inflight", "QoS 1 and 2 messages sent and not yet acknowledged",
             "messages/inflight"),
            ("mqtt_messages_retained", "Retained messages", "messages/retained"),
            ("mqtt_uptime_seconds", "Seconds since the broker started", "uptime"),
        ):
            yield GaugeMetricFamily(name, help_text, value=figures[figure])
        for name, help_text, by_qos in (
            ("mqtt_messages_received", "PUBLISH messages received, by QoS",
             stats.messages_received_by_qos),
            ("mqtt_messages_sent", "PUBLISH messages sent, by QoS", stats.messages_sent_by_qos),
        ):
            family = CounterMetricFamily(name, help_text, labels=["qos"])
            for qos, count in zip(QOS_LEVELS, by_qos):
                family.add_metric([qos], count)
            yield family
        for name, help_text, count in (
            ("mqtt_messages_dropped", "Messages dropped (slow or offline clients, limits)",
             stats.dropped),
            ("mqtt_messages_expired", "Messages expired before delivery", stats.expired),
            ("mqtt_bytes_received", "Bytes received from clients", stats.bytes_received),
            ("mqtt_bytes_sent", "Bytes sent to clients", stats.bytes_sent),
            ("mqtt_packets_received", "MQTT packets received", stats.packets_received),
            ("mqtt_packets_sent", "MQTT packets sent", stats.packets_sent),
            ("mqtt_clients_accepted", "CONNECTs accepted", stats.connections_total),
            ("mqtt_auth_failures", "Connections refused or ended by authentication",
             stats.auth_failures),
            ("mqtt_protocol_errors", "Connections closed for malformed input",
             stats.protocol_errors),
            ("mqtt_sessions_expired", "Sessions expired", stats.sessions_expired),
            ("mqtt_wills_sent", "Will messages published", stats.wills_sent),
            ("mqtt_wills_denied", "Will messages dropped, their topic not authorized",
             stats.wills_denied),
        ):
            yield CounterMetricFamily(name, help_text, value=count)
        yield from part_metrics(self.service)


def part_metrics(service: BrokerService) -> Iterator[Metric]:
    """The metrics of the service's optional parts (bridges): each kind of child service with a
    ``collect_metrics(children)`` class method gives the families of all its children."""
    kinds: Dict[type, List[object]] = {}
    for child in service:
        if hasattr(type(child), "collect_metrics"):
            kinds.setdefault(type(child), []).append(child)
    for kind, children in kinds.items():
        yield from kind.collect_metrics(children)  # type: ignore[attr-defined]


class FiguresResource(Resource):
    """``/``: the $SYS figures as a JSON object."""

    isLeaf = True

    def __init__(self, service: BrokerService) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        """The figures, by $SYS topic suffix."""
        self.service.broker.tick()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.service.broker.sys_figures(), sort_keys=True).encode()


class HealthResource(Resource):
    """``/healthcheck``: 200 while the broker serves, 503 while it starts or stops."""

    isLeaf = True

    def __init__(self, service: BrokerService) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        """``ok`` or ``unavailable``."""
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self.service.serving:
            return b"ok\n"
        request.setResponseCode(503)
        return b"unavailable\n"


class MetricsResource(Resource):
    """``/metrics``: the Prometheus text exposition format."""

    isLeaf = True

    def __init__(self, service: BrokerService) -> None:
        super().__init__()
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BrokerCollector(service))

    def render_GET(self, request: Request) -> bytes:
        """Every metric, as read now."""
        self.service.broker.tick()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


def stats_site(service: BrokerService) -> Site:
    """The web site of a stats listener."""
    root = Resource()
    root.putChild(b"", FiguresResource(service))
    root.putChild(b"healthcheck", HealthResource(service))
    root.putChild(b"metrics", MetricsResource(service))
    site = Site(root)
    site.noisy = False  # no "Starting factory <Site object at 0x...>": the listener is logged
    return site
