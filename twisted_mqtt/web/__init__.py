"""The dashboard and the admin REST API: a twisted.web site served by the broker itself.

``/`` is the dashboard (plain HTML, CSS and JavaScript from ``static/``, with uPlot for the
charts), ``/api/v1/`` the admin API (``twisted_mqtt.web.api``, described at
``/api/v1/openapi.json``).  ``BrokerService.add_dashboard_listener`` serves it; docs/dashboard.md
tells how to configure users and API keys.  Nothing here is imported by a broker that does not
serve the dashboard."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from twisted.web.static import File

from twisted_mqtt.dashboard_limits import DEFAULT_DASHBOARD_LIMITS, DashboardLimits
from twisted_mqtt.listeners import ListenerService
from twisted_mqtt.web.api import ApiResource, Sampler
from twisted_mqtt.web.auth import DashboardAuth

__all__ = ["STATIC", "DashboardListener", "dashboard_site"]

STATIC = Path(__file__).parent / "static"
"""The dashboard's files (package data)."""
SECURITY_HEADERS = (
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; "
     b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def loopback_name(host: str) -> bool:
    """Whether ``host`` (a Host header's or an origin's name, no port) names this machine's
    loopback interface: ``localhost``, a ``.localhost`` name, or a loopback address."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name of a Host header, without its port."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class StaticFiles(File):
    """The dashboard's files, without directory listings."""

    def directoryListing(self) -> IResource:
        """Not found."""
        return notFound()

    def getChild(self, path: bytes, request: Any) -> IResource:
        """The file ``path`` names in this folder; not found for a name no file can have
        (a NUL byte, a separator, ``..``), rather than a failure."""
        if not path or b"\x00" in path or b"/" in path or b"\\" in path or path in (b".", b".."):
            return notFound()
        return super().getChild(path, request)


class DashboardRequest(Request):
    """A request with the dashboard's security headers and a bounded body; on a loopback
    listener, a request naming another host (DNS rebinding) is refused."""

    @property
    def limits(self) -> DashboardLimits:
        """The site's limits."""
        site = getattr(self.channel, "site", None)
        return getattr(site, "limits", DEFAULT_DASHBOARD_LIMITS)

    def gotLength(self, length: Optional[int]) -> None:
        """Refuse a declared body larger than ``max_body`` before reading it."""
        self._received = 0
        if length is not None and length > self.limits.max_body:
            self._refuse_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Refuse a (chunked) body once it passes ``max_body``."""
        self._received = getattr(self, "_received", 0) + len(data)
        if self._received > self.limits.max_body:
            self._refuse_body()
            return
        if self.content is not None:
            super().handleContentChunk(data)

    def _refuse_body(self) -> None:
        self.content = None
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None and not getattr(self, "_refused", False):
            self._refused = True
            body = b'{"error": {"status": 413, "message": "request body too large", ' \
                   b'"field": "body"}}'
            transport.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: "
                            b"application/json\r\nconnection: close\r\ncontent-length: "
                            + str(len(body)).encode() + b"\r\n\r\n" + body)
            transport.loseConnection()

    def _foreign(self) -> Optional[str]:
        """On a loopback listener, the header (host or origin) naming a host that is neither
        a loopback name nor an allowed host; else None."""
        local = getattr(self.getHost(), "host", None)
        if not local or not loopback_name(local):
            return None
        allowed = {name.lower() for name in self.limits.allowed_hosts}
        host = (self.getHeader(b"host") or b"").decode("latin-1")
        if host and not (loopback_name(_host_name(host)) or
                         _host_name(host).lower() in allowed):
            return "host"
        origin = (self.getHeader(b"origin") or b"").decode("latin-1")
        if origin and origin != "null":
            try:
                name = urlsplit(origin).hostname or ""
            except ValueError:
                name = ""
            if not (loopback_name(name) or name in allowed):
                return "origin"
        return None

    def process(self) -> None:
        """Add the security headers, then answer."""
        if getattr(self, "_refused", False):
            return
        for name, value in SECURITY_HEADERS:
            self.setHeader(name, value)
        foreign = self._foreign()
        if foreign is not None:
            self.setResponseCode(403)
            self.setHeader(b"content-type", b"application/json")
            self.setHeader(b"cache-control", b"no-store")
            self.write(json.dumps({"error": {
                "status": 403, "field": foreign,
                "message": f"this dashboard answers only to loopback names and "
                           f"dashboard.allowed_hosts; the {foreign} header names another "
                           "host"}}).encode())
            self.finish()
            return
        super().process()


class DashboardListener(ListenerService):
    """The dashboard's listener: it samples the broker's counters while it runs, and ends the
    event streams when it stops."""

    def __init__(self, reactor: Any, endpoint: str, site: Site, api: ApiResource) -> None:
        super().__init__(reactor, endpoint, site, "dashboard")
        self.api = api

    def startService(self) -> None:
        """Listen and start sampling."""
        super().startService()
        self.api.sampler.start()

    def stopService(self) -> Deferred[None]:
        """Stop sampling, end the event streams, close the port."""
        self.api.sampler.stop()
        self.api.close_streams()
        return super().stopService()


def dashboard_site(service: Any, auth: DashboardAuth, config: Mapping[str, Any],
                   secure: bool = False,
                   limits: DashboardLimits = DEFAULT_DASHBOARD_LIMITS) -> Site:
    """The site: ``/`` and ``/static/`` the dashboard's files, ``/api/`` the admin API."""
    api = ApiResource(service, auth, Sampler(service.broker, service.reactor), config, secure,
                      limits)
    root = Resource()
    static = StaticFiles(str(STATIC))
    static.indexNames = []
    root.putChild(b"", File(str(STATIC / "index.html"), defaultType="text/html"))
    root.putChild(b"static", static)
    root.putChild(b"api", api)
    site = Site(root, timeout=limits.idle_timeout)
    site.requestFactory = DashboardRequest
    site.noisy = False
    site.api = api  # type: ignore[attr-defined]
    site.limits = limits  # type: ignore[attr-defined]
    return site
