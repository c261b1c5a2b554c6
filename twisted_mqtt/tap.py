"""``twistd mqtt`` and ``python -m twisted_mqtt``: command-line options and ``makeService``."""

from __future__ import annotations

from typing import Any, List

from twisted.logger import Logger
from twisted.python import usage

from twisted_mqtt.auth import AllowAll, LocalOnly
from twisted_mqtt.capabilities import DEFAULT_CAPABILITIES, Capabilities
from twisted_mqtt.service import BrokerService
from twisted_mqtt.websocket import parse_network

log = Logger()


class Options(usage.Options):
    """Options of the ``mqtt`` twistd plugin."""

    synopsis = "[options]"
    longdesc = ("Run an MQTT 3.1, 3.1.1 and 5.0 broker. With no --listen or --ws, it listens on "
                "tcp:1883. Without authentication configuration, only clients from loopback "
                "addresses and Unix sockets are accepted; --allow-anonymous accepts all.")
    optFlags = [
        ["allow-anonymous", None, "Accept clients from any address without authentication."],
        ["no-tcp-nodelay", None,
         "Leave Nagle's algorithm on for MQTT connections over TCP (by default TCP_NODELAY is "
         "set, so that a reply written soon after another is not held back until the client "
         "acknowledges the first)."],
    ]
    optParameters = [
        ["tcp", None, None, "Listen on this TCP port (same as --listen tcp:PORT).", int],
        ["max-keep-alive", None, None,
         "Longest keep alive allowed; longer requests get this as Server Keep Alive.", int],
        ["max-packet-size", None, DEFAULT_CAPABILITIES.maximum_packet_size,
         "Largest packet accepted, bytes.", int],
        ["receive-maximum", None, DEFAULT_CAPABILITIES.receive_maximum,
         "Unacknowledged QoS 1/2 messages a client may send at once.", int],
        ["topic-alias-maximum", None, DEFAULT_CAPABILITIES.topic_alias_maximum,
         "Highest topic alias a client may use (0 disables them).", int],
        ["sys-interval", None, DEFAULT_CAPABILITIES.sys_interval,
         "Seconds between $SYS publications (0 disables).", float],
        ["ws-path", None, None, "Accept WebSocket connections on this request path only."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["refuse-subscribe"] = []
        self["ws"] = []
        self["ws-origin"] = []
        self["ws-trusted-proxy"] = []
        self["stats"] = []

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

    def postOptions(self) -> None:
        """Apply the default listener; refuse bad listeners here rather than in makeService."""
        if self["tcp"] is not None:
            if not 0 <= self["tcp"] <= 65535:
                raise usage.UsageError(f"--tcp: port must be 0-65535, not {self['tcp']}")
            self["listen"].append(f"tcp:{self['tcp']}")
        if not self["listen"] and not self["ws"]:
            self["listen"].append("tcp:1883")
        from twisted.internet import endpoints, reactor

        for endpoint in self["listen"] + self["ws"] + self["stats"]:
            try:  # a bad endpoint string is a usage error, not a traceback from makeService
                endpoints.serverFromString(reactor, endpoint)
            except Exception as error:
                raise usage.UsageError(f"bad listener {endpoint!r}: {error}") from None
        for proxy in self["ws-trusted-proxy"]:
            try:
                parse_network(proxy)
            except ValueError as error:
                raise usage.UsageError(f"--ws-trusted-proxy: {error}") from None
        if self["ws-path"] is not None and not self["ws-path"].startswith("/"):
            raise usage.UsageError(f"--ws-path must start with /, not {self['ws-path']!r}")

    def capabilities(self) -> Capabilities:
        """The limits these options set."""
        return Capabilities(
            maximum_packet_size=self["max-packet-size"],
            receive_maximum=self["receive-maximum"],
            topic_alias_maximum=self["topic-alias-maximum"],
            maximum_keep_alive=self["max-keep-alive"],
            refused_filters=tuple(self["refuse-subscribe"]),
            sys_interval=self["sys-interval"],
        )


def makeService(options: Options, reactor: Any = None) -> BrokerService:
    """Build the broker service with its listeners from parsed options."""
    if options["allow-anonymous"]:
        authenticator: Any = AllowAll()
        log.warn("anonymous clients are accepted from any address (--allow-anonymous)")
    else:
        authenticator = LocalOnly()
        log.info("no authentication configured: anonymous clients are accepted from loopback "
                 "addresses and Unix sockets only; use --allow-anonymous to accept all")
    service = BrokerService(reactor=reactor, capabilities=options.capabilities(),
                            authenticator=authenticator)
    listeners: List[str] = options["listen"]
    for endpoint in listeners:
        service.add_listener(endpoint, tcp_nodelay=not options["no-tcp-nodelay"])
    for endpoint in options["ws"]:
        service.add_websocket_listener(endpoint, options["ws-path"], options["ws-origin"],
                                       options["ws-trusted-proxy"])
    for endpoint in options["stats"]:
        service.add_stats_listener(endpoint)
    return service
