"""The dashboard and the admin REST API: a twisted.web site served by the broker itself.

``/`` is the dashboard (plain HTML, CSS and JavaScript from ``static/``, with uPlot for the
charts), ``/api/v1/`` the admin API (``twisted_mqtt.web.api``, described at
``/api/v1/openapi.json``).  ``BrokerService.add_dashboard_listener`` serves it; docs/dashboard.md
tells how to configure users and API keys.  Nothing here is imported by a broker that does not
serve the dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from twisted.internet.defer import Deferred
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from twisted.web.static import File

from twisted_mqtt.listeners import ListenerService
from twisted_mqtt.web.api import MAX_BODY, ApiResource, Sampler
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
IDLE_TIMEOUT = 120
"""Seconds an HTTP connection may stay idle (the event streams write every second)."""


class StaticFiles(File):
    """The dashboard's files, without directory listings."""

    def directoryListing(self) -> IResource:
        """Not found."""
        return notFound()


class DashboardRequest(Request):
    """A request with the dashboard's security headers and a bounded body."""

    def gotLength(self, length: Optional[int]) -> None:
        """Refuse a declared body larger than ``MAX_BODY`` before reading it."""
        self._received = 0
        if length is not None and length > MAX_BODY:
            self._refuse_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Refuse a (chunked) body once it passes ``MAX_BODY``."""
        self._received = getattr(self, "_received", 0) + len(data)
        if self._received > MAX_BODY:
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

    def process(self) -> None:
        """Add the security headers, then answer."""
        if getattr(self, "_refused", False):
            return
        for name, value in SECURITY_HEADERS:
            self.setHeader(name, value)
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
                   secure: bool = False) -> Site:
    """The site: ``/`` and ``/static/`` the dashboard's files, ``/api/`` the admin API."""
    api = ApiResource(service, auth, Sampler(service.broker, service.reactor), config, secure)
    root = Resource()
    static = StaticFiles(str(STATIC))
    static.indexNames = []
    root.putChild(b"", File(str(STATIC / "index.html"), defaultType="text/html"))
    root.putChild(b"static", static)
    root.putChild(b"api", api)
    site = Site(root, timeout=IDLE_TIMEOUT)
    site.requestFactory = DashboardRequest
    site.noisy = False
    site.api = api  # type: ignore[attr-defined]
    return site
