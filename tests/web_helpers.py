"""A broker with its dashboard listener, and an HTTP client for the admin API (urllib, with a
cookie jar for the browser session)."""

from __future__ import annotations

import http.cookiejar
import json
import secrets
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from tests.conftest import LOOPBACK, BrokerProcess, StartBroker
from tests.paho import V5, Client, MakeClient
from twisted_mqtt.auth.passwords import hash_password

USER = "admin"
PASSWORD = "correct horse battery staple"
KEY_NAME = "script"
TIMEOUT = 10.0


class Dashboard:
    """A running broker with a dashboard: its MQTT and dashboard ports, user and API key."""

    def __init__(self, broker: BrokerProcess, key: str) -> None:
        self.broker = broker
        self.key = key
        self.mqtt_port = broker.port_of("MQTT")
        self.port = broker.port_of("dashboard")
        self.base = f"http://127.0.0.1:{self.port}"

    def api(self) -> Http:
        """An HTTP client holding this dashboard's API key."""
        return Http(self.base, self.key)

    def client(self, make: MakeClient, client_id: str = "", version: int = V5,
               **kwargs: Any) -> Client:
        """A paho client of this broker, made by the ``clients`` fixture's ``make``."""
        return make(self.mqtt_port, version, client_id or f"c-{uuid.uuid4().hex[:8]}",
                    **kwargs)


def start_dashboard(start_broker: StartBroker, directory: Path, *options: str) -> Dashboard:
    """Start ``twistd mqtt`` with ``--dashboard`` on a loopback ephemeral port, one dashboard
    user (bcrypt, cost 4: fast for tests) and one API key."""
    users = directory / "dashboard-users"
    users.write_text(f"{USER}:{hash_password(PASSWORD, 'bcrypt', rounds=4)}\n")
    key = secrets.token_urlsafe(32)
    keys = directory / "dashboard-keys"
    keys.write_text(f"{KEY_NAME}:{key}\n")
    broker = start_broker("--dashboard", LOOPBACK, "--dashboard-users", str(users),
                          "--dashboard-api-keys", str(keys), "--allow-anonymous", *options)
    return Dashboard(broker, key)


class Http:
    """Requests to a dashboard: as an API key holder (``key``), or as a browser would (the
    session cookie, and the CSRF token once signed in)."""

    def __init__(self, base: str, key: Optional[str] = None) -> None:
        self.base = base
        self.key = key
        self.csrf: Optional[str] = None
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def request(self, method: str, path: str, body: Any = None,
                headers: Optional[Dict[str, str]] = None,
                raw: Optional[bytes] = None) -> Tuple[int, Dict[str, str], Any]:
        """Status, headers and the parsed JSON body (text if not JSON) of one request."""
        sent = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        if self.key is not None:
            sent.setdefault("X-API-Key", self.key)
        if self.csrf is not None and method != "GET":
            sent.setdefault("X-CSRF-Token", self.csrf)
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers=sent)
        try:
            with self.opener.open(request, timeout=TIMEOUT) as reply:
                status, got, content = reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as error:
            status, got, content = error.code, dict(error.headers), error.read()
        try:
            return status, got, json.loads(content)
        except ValueError:
            return status, got, content.decode("utf-8", "replace")

    def get(self, path: str) -> Any:
        """The JSON of a GET that must succeed."""
        status, _, body = self.request("GET", path)
        assert status == 200, (path, status, body)
        return body

    def login(self, user: str = USER, password: str = PASSWORD) -> Any:
        """Sign in; keep the CSRF token."""
        status, _, body = self.request("POST", "/api/v1/login",
                                       {"username": user, "password": password})
        if status == 200:
            self.csrf = body["csrf"]
        return status, body


