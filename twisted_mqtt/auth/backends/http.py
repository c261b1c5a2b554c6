"""HTTP backend (``treq``; ``pip install twisted-mqtt-broker[http]``), comqtt's contract:

- authentication: a request to ``auth_url`` (default ``http://localhost:8080/comqtt/auth``)
  carrying ``user`` (the user name, or the client id with ``auth_by: client_id``) and
  ``password``, plus ``clientid``, ``username`` and ``ip`` (which comqtt does not send);
  ``method: post`` (default) sends them as a JSON object (``content_type: application/json``,
  default) or as a form (``application/x-www-form-urlencoded``); ``method: get`` sends them in
  the query string.  The answer: a 2xx status with the body ``1`` lets the client in; any other
  body, or a 4xx status, refuses it (0x86); a 5xx status, a network error or no answer within
  ``timeout`` is a backend failure (failure policy: 0x88 by default).  The service alone
  decides, so it alone can make refusing an unknown user take as long as refusing a known
  user's wrong password (by checking the password against a dummy hash, as the other backends
  here do); otherwise its answer times tell which users exist.
- ACL: a request to ``acl_url`` (default ``http://localhost:8080/comqtt/acl``) carrying ``user``
  (the user name, or the client id with ``acl_by: client_id``), answered by a 2xx status and a
  JSON object mapping topic filters to access 0-3, e.g. ``{"alice/#": 3, "public/#": 1}``; 404
  means no rules (nothing allowed); anything else is a backend failure.

``https://`` URLs use TLS, verifying the server against the system's trust store, or against
``ca_file`` if given; ``client_cert`` (and ``client_key`` unless the key is in the same file)
presents a client certificate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Dict, Optional

from twisted.logger import Logger
from twisted.web.http_headers import Headers
from zope.interface import implementer

from twisted_mqtt.auth.backends import BackendAuth, BackendSettings, access_rules, require
from twisted_mqtt.auth.passwords import PasswordVerifier
from twisted_mqtt.interfaces import ConnectRequest

log = Logger()

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MAX_BODY = 1 << 20


class BackendError(Exception):
    """The HTTP service answered with an error status or an unusable body."""


@dataclass
class HTTPSettings(BackendSettings):
    """The URLs of the auth service and how to call them."""

    auth_url: str = "http://localhost:8080/comqtt/auth"
    acl_url: str = "http://localhost:8080/comqtt/acl"
    method: str = "post"
    content_type: str = JSON
    ca_file: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    pool_size: int = 10
    """Persistent connections kept open per host."""

    def client(self) -> ModuleType:
        """treq's client module (ImportError naming the extra that brings treq)."""
        return require("treq.client", "HTTP", "treq", "http")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.method = str(self.method).strip().lower()
        if self.method not in ("get", "post"):
            raise ValueError(f"method: expected get or post, not {self.method!r}")
        content_type = str(self.content_type).strip().lower()
        content_type = {"json": JSON, "form": FORM}.get(content_type, content_type)
        if content_type not in (JSON, FORM):
            raise ValueError(f"content_type: expected {JSON} or {FORM}, not {content_type!r}")
        self.content_type = content_type
        for name in ("auth_url", "acl_url"):
            url = str(getattr(self, name))
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{name}: expected an http:// or https:// URL, not {url!r}")
        self.pool_size = int(self.pool_size)


def _tls_policy(settings: HTTPSettings) -> Any:
    """A TLS policy trusting ``ca_file`` and presenting ``client_cert``, or None for Twisted's
    default (the system's trust store)."""
    if not settings.ca_file and not settings.client_cert:
        return None
    from twisted.internet import ssl
    from twisted.web.iweb import IPolicyForHTTPS

    trust: Any = None
    if settings.ca_file:
        with open(settings.ca_file, "rb") as file:
            trust = ssl.Certificate.loadPEM(file.read())
    client: Any = None
    if settings.client_cert:
        with open(settings.client_cert, "rb") as file:
            pem = file.read()
        if settings.client_key:
            with open(settings.client_key, "rb") as file:
                pem += b"\n" + file.read()
        client = ssl.PrivateCertificate.loadPEM(pem)

    @implementer(IPolicyForHTTPS)
    class Policy:
        """Trusts ``ca_file`` and presents ``client_cert``."""

        def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
            """TLS options verifying ``hostname``."""
            kwargs: Dict[str, Any] = {}
            if trust is not None:
                kwargs["trustRoot"] = trust
            if client is not None:
                kwargs["clientCertificate"] = client
            return ssl.optionsForClientTLS(hostname.decode("ascii"), **kwargs)

    return Policy()


class HTTPAuth(BackendAuth):
    """Credentials checked and ACL rules given by an HTTP service (comqtt's contract)."""

    kind = "http"

    def __init__(self, settings: HTTPSettings, clock: Any = None,
                 verifier: Optional[PasswordVerifier] = None, reactor: Any = None) -> None:
        super().__init__(settings, clock, verifier)
        self.settings: HTTPSettings = settings
        HTTPClient = settings.client().HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        if reactor is None:
            from twisted.internet import reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = settings.pool_size
        self.pool.retryAutomatically = False
        policy = _tls_policy(settings)
        agent = (Agent(reactor, pool=self.pool) if policy is None
                 else Agent(reactor, contextFactory=policy, pool=self.pool))
        self.http = HTTPClient(agent)

    def describe(self) -> str:
        """``http URL``."""
        return f"http {self.settings.auth_url}"

    def _request(self, url: str, fields: Dict[str, str]) -> Any:
        settings = self.settings
        if settings.method == "get":
            return self.http.get(url, params=fields)
        if settings.content_type == JSON:
            return self.http.post(url, data=json.dumps(fields).encode("utf-8"),
                                  headers=Headers({"Content-Type": [JSON]}))
        return self.http.post(url, data=fields)

    def fetch_credentials(self, key: str, request: ConnectRequest) -> Any:
        """Ask ``auth_url``: True for a 2xx ``1``, False for another answer but a 5xx."""
        client = request.client
        fields = {"user": key,
                  "password": (request.password or b"").decode("utf-8", "replace"),
                  "clientid": client.client_id, "username": client.username or "",
                  "ip": client.address or ""}

        def answered(response: Any) -> Any:
            if response.code >= 500:
                response.deliverBody(_Discard())
                raise BackendError(f"{self.settings.auth_url} answered {response.code}")
            return response.content().addCallback(
                lambda body: 200 <= response.code < 300 and body.strip() == b"1")

        return self._request(self.settings.auth_url, fields).addCallback(answered)

    def fetch_acl(self, key: str) -> Any:
        """Ask ``acl_url`` for ``{filter: access}``."""
        url = self.settings.acl_url

        def answered(response: Any) -> Any:
            if response.code == 404:
                response.deliverBody(_Discard())
                return []
            if not 200 <= response.code < 300:
                response.deliverBody(_Discard())
                raise BackendError(f"{url} answered {response.code}")
            return response.content().addCallback(decode)

        def decode(body: bytes) -> Any:
            if len(body) > MAX_BODY:
                raise BackendError(f"{url}: ACL answer too large")
            try:
                rules = json.loads(body)
            except ValueError:
                raise BackendError(f"{url}: the ACL answer is not JSON") from None
            if not isinstance(rules, dict):
                raise BackendError(f"{url}: the ACL answer is not a JSON object")
            return access_rules(rules, f"{url} for {key}")

        return self._request(url, {"user": key}).addCallback(answered)

    def close(self) -> Any:
        """Close the persistent connections."""
        return self.pool.closeCachedConnections()


class _Discard:
    """Reads and drops a response body (so its connection can be reused or closed)."""

    def makeConnection(self, transport: Any) -> None:
        """Nothing to do."""

    def dataReceived(self, data: bytes) -> None:
        """Drop it."""

    def connectionLost(self, reason: Any) -> None:
        """Done."""
