"""The dashboard under attack, with real HTTP against a real ``twistd mqtt --dashboard`` and
real paho clients: sign-in guessing slowed by a back-off, a session replaced at sign-in, DNS
rebinding refused on a loopback listener, retained payloads built to break the views, event
streams bounded per user, the limits set in the configuration file, and malformed requests to
every route answered without a traceback (the broker log is checked when each broker stops).

A malicious client's retained message is one a PUBLISH with RETAIN 1 stored
[MQTT-3.3.1-5]."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tests.certs import make_pki
from tests.cluster_helpers import wait_for
from tests.conftest import StartBroker
from tests.paho import MakeClient
from tests.spec import check_cited_labels
from tests.web_helpers import PASSWORD, USER, Dashboard, Http, start_dashboard
from twisted_mqtt.web.api import ROUTES

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dashboard(module_brokers: StartBroker, tmp_path_factory: pytest.TempPathFactory
              ) -> Dashboard:
    """One broker with a dashboard for the module."""
    return start_dashboard(module_brokers, tmp_path_factory.mktemp("dashboard"),
                           "--sys-interval", "0")


def test_cited_labels() -> None:
    check_cited_labels(sys.modules[__name__])


def raw_request(port: int, method: str, path: str, headers: Dict[str, str],
                body: bytes = b"") -> Tuple[int, Dict[str, str], bytes]:
    """One request sent as given (no normalisation of the path or the Host header)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        if body:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        reply = connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        connection.close()


# -- signing in ----------------------------------------------------------------------------------


def test_sign_in_guessing_waits_a_back_off(start_broker: StartBroker, tmp_path: Path) -> None:
    """Past --dashboard-sign-in-attempts failures from one address, a sign-in (even with the
    right password, even for another user) is answered 429 with Retry-After without checking
    the password, once in the log; after the wait the right password works."""
    dashboard = start_dashboard(start_broker, tmp_path, "--dashboard-sign-in-attempts", "2")
    guesser = Http(dashboard.base)
    for guess in ("guess-1", "guess-2"):
        assert guesser.login(USER, guess)[0] == 401
    for user, password in ((USER, PASSWORD), ("someone-else", "x")):
        status, headers, body = guesser.request("POST", "/api/v1/login",
                                                {"username": user, "password": password})
        assert status == 429, body
        assert body["error"]["field"] == "password"
        assert int(headers["Retry-After"]) >= 1
    dashboard.broker.wait_for_log("too many failures")
    status, body = wait_for(lambda: (lambda got: got if got[0] == 200 else None)(
        guesser.login()), "the sign-in after the back-off")
    assert body["user"] == USER


def test_the_cookie_is_secure_over_tls(start_broker: StartBroker, tmp_path: Path) -> None:
    """Over a TLS dashboard listener the session cookie is marked Secure (and HttpOnly,
    SameSite=Strict); over plain HTTP it cannot be."""
    pki = make_pki(tmp_path)
    endpoint = (f"ssl:0:interface=127.0.0.1:privateKey={pki.server_key}:"
                f"certKey={pki.server_cert}:extraCertChain={pki.intermediate}")
    dashboard = start_dashboard(start_broker, tmp_path, "--dashboard", endpoint)
    context = ssl.create_default_context(cafile=str(pki.root))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", dashboard.broker.port_of("dashboard", 1), timeout=10, context=context)
    try:
        connection.request("POST", "/api/v1/login", json.dumps(
            {"username": USER, "password": PASSWORD}), {"Content-Type": "application/json"})
        reply = connection.getresponse()
        cookie = reply.getheader("Set-Cookie") or ""
        assert reply.status == 200, reply.read()
    finally:
        connection.close()
    flags = {flag.strip().lower() for flag in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= flags, cookie
    status, headers, _ = Http(dashboard.base).request(
        "POST", "/api/v1/login", {"username": USER, "password": PASSWORD})
    assert status == 200 and "secure" not in headers["Set-Cookie"].lower()


def test_every_write_needs_the_sessions_csrf_token(dashboard: Dashboard) -> None:
    """Every write route (publish, kick, bans, retained delete, sign-out) from a browser
    session is 403 without the CSRF token, or with another session's."""
    browser, other = Http(dashboard.base), Http(dashboard.base)
    browser.login()
    other.login()
    writes = [route for route in ROUTES if route.write and not route.public]
    assert {route.handler for route in writes} >= {"publish", "kick", "add_ban", "remove_ban",
                                                   "delete_retained", "logout"}
    for token in (None, other.csrf):
        browser_token, browser.csrf = browser.csrf, token
        for route in writes:
            path = "/api/v1/" + route.pattern.replace("{client_id}", "c").replace(
                "{kind}", "client_id").replace("{value}", "v")
            status, _, body = browser.request(route.method, path + "?topic=t",
                                              {"topic": "t", "kind": "client_id", "value": "v"})
            assert status == 403 and body["error"]["field"] == "x-csrf-token", (path, body)
        browser.csrf = browser_token
    assert browser.get("/api/v1/session")["user"] == USER  # still signed in


def test_a_sign_in_ends_the_session_the_browser_held(dashboard: Dashboard) -> None:
    """Signing in again replaces the browser's session: the old cookie no longer works, and
    signing out is logged with who did it."""
    browser = Http(dashboard.base)
    assert browser.login()[0] == 200
    first = next(c.value for c in browser.cookies if c.name == "twisted_mqtt_session")
    assert browser.login()[0] == 200
    second = next(c.value for c in browser.cookies if c.name == "twisted_mqtt_session")
    assert first != second
    old = Http(dashboard.base)
    status, _, _ = old.request("GET", "/api/v1/session",
                               headers={"Cookie": f"twisted_mqtt_session={first}"})
    assert status == 401
    assert browser.request("POST", "/api/v1/logout")[0] == 200
    dashboard.broker.wait_for_log(f"user {USER} signed out")


# -- DNS rebinding -------------------------------------------------------------------------------


@pytest.mark.parametrize("headers, field", [
    ({"Host": "attacker.example"}, "host"),
    ({"Host": "attacker.example:8080"}, "host"),
    ({"Host": "127.0.0.1.attacker.example"}, "host"),
    ({"Host": "localhost", "Origin": "http://attacker.example"}, "origin"),
])
def test_a_loopback_listener_refuses_other_host_names(dashboard: Dashboard,
                                                      headers: Dict[str, str],
                                                      field: str) -> None:
    """Bound to 127.0.0.1, the dashboard answers a request naming another host (a page whose
    name was rebound to 127.0.0.1) with 403 naming the header, for the pages and the API
    alike, with the API key too."""
    for path in ("/", "/static/app.js", "/api/v1/clients"):
        status, got, body = raw_request(dashboard.port, "GET", path,
                                        {**headers, "X-API-Key": dashboard.key})
        assert status == 403, (path, body)
        assert json.loads(body)["error"]["field"] == field
        assert got["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "LOCALHOST.", "[::1]",
                                  "dash.localhost"])
def test_a_loopback_listener_answers_loopback_names(dashboard: Dashboard, host: str) -> None:
    """Loopback names, with or without the port, are answered."""
    for name in (host, f"{host}:{dashboard.port}"):
        status, _, _ = raw_request(dashboard.port, "GET", "/api/v1/nodes",
                                   {"Host": name, "X-API-Key": dashboard.key,
                                    "Origin": f"http://{name}"})
        assert status == 200, name


# -- what malicious clients leave behind ---------------------------------------------------------


def test_retained_payloads_built_to_break_the_views(clients: MakeClient,
                                                    dashboard: Dashboard) -> None:
    """A retained JSON payload nested deeper than the parser goes is shown as text (no JSON
    view, no 500); a payload larger than dashboard.payload_view_bytes is cut there and
    flagged, its size told whole."""
    api = dashboard.api()
    tag = uuid.uuid4().hex[:8]
    publisher = dashboard.client(clients).connect()
    deep = b"[" * 20_000 + b"]" * 20_000
    big = "é".encode() * 40_000  # 80,000 bytes, two-byte characters
    publisher.publish(f"evil/{tag}/deep", deep, 1, retain=True)
    publisher.publish(f"evil/{tag}/big", big, 1, retain=True)
    shown = api.get(f"/api/v1/retained/message?topic=evil/{tag}/deep")["payload"]
    assert shown["json"] is None and shown["text"] == deep.decode()
    assert shown["truncated"] is False
    shown = api.get(f"/api/v1/retained/message?topic=evil/{tag}/big")["payload"]
    assert shown["size"] == 80_000 and shown["truncated"] is True
    assert shown["shown"] == 65_536 and len(shown["hex"]) == 2 * 65_536
    assert shown["text"] == "é" * 32_768 and shown["json"] is None


# -- event streams -------------------------------------------------------------------------------


def open_stream(port: int, headers: str) -> Tuple[socket.socket, bytes]:
    """A connection that asked for the event stream, and the head of its answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return sock, received


def test_event_streams_per_user(dashboard: Dashboard) -> None:
    """One API key may hold dashboard.max_streams_per_user (4) event streams; the next is
    429, while a signed-in user may still open one; a stream closed frees its place."""
    key = f"X-API-Key: {dashboard.key}\r\n"
    opened: List[socket.socket] = []
    try:
        for _ in range(4):
            sock, head = open_stream(dashboard.port, key)
            opened.append(sock)
            assert head.startswith(b"HTTP/1.1 200"), head
        sock, head = open_stream(dashboard.port, key)
        opened.append(sock)
        assert head.startswith(b"HTTP/1.1 429"), head
        browser = Http(dashboard.base)
        browser.login()
        cookie = next(c.value for c in browser.cookies if c.name == "twisted_mqtt_session")
        sock, head = open_stream(dashboard.port, f"Cookie: twisted_mqtt_session={cookie}\r\n")
        opened.append(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        opened.pop(0).close()

        def another() -> bool:
            sock, head = open_stream(dashboard.port, key)
            opened.append(sock)
            return head.startswith(b"HTTP/1.1 200")

        wait_for(another, "a stream's place freed")
    finally:
        for sock in opened:
            sock.close()


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    """What the socket receives until ``marker`` (its timeout bounds each wait)."""
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return received


def test_an_event_stream_ends_with_its_session(dashboard: Dashboard) -> None:
    """Signing out ends the event streams the session opened (they would otherwise go on
    showing the figures to whoever holds the connection)."""
    browser = Http(dashboard.base)
    browser.login()
    cookie = next(c.value for c in browser.cookies if c.name == "twisted_mqtt_session")
    sock, _ = open_stream(dashboard.port, f"Cookie: twisted_mqtt_session={cookie}\r\n")
    with sock:
        received = read_until(sock, b"event: stats")
        assert browser.request("POST", "/api/v1/logout")[0] == 200
        deadline = time.monotonic() + 10
        while not received.endswith(b"\r\n0\r\n\r\n"):  # the last chunk
            assert time.monotonic() < deadline, "the stream goes on"
            chunk = sock.recv(65536)
            assert chunk, received[-200:]
            received += chunk


# -- limits from the configuration file ----------------------------------------------------------


def test_limits_from_the_configuration_file(start_broker: StartBroker, tmp_path: Path) -> None:
    """dashboard.max_body, dashboard.max_streams_per_user and dashboard.allowed_hosts set in
    the file take effect."""
    config = tmp_path / "broker.yaml"
    config.write_text("dashboard:\n  max_body: 1000\n  max_streams_per_user: 1\n"
                      "  allowed_hosts: [dash.example.org]\n")
    dashboard = start_dashboard(start_broker, tmp_path, "--config", str(config))
    api = dashboard.api()
    status, _, body = api.request("POST", "/api/v1/publish",
                                  {"topic": "a", "payload": "x" * 1200})
    assert status == 413, body
    assert api.request("POST", "/api/v1/publish", {"topic": "a", "payload": "x" * 900})[0] == 200
    status, _, _ = raw_request(dashboard.port, "GET", "/api/v1/nodes",
                               {"Host": "dash.example.org", "X-API-Key": dashboard.key})
    assert status == 200
    key = f"X-API-Key: {dashboard.key}\r\n"
    first, head = open_stream(dashboard.port, key)
    second, refused = open_stream(dashboard.port, key)
    first.close()
    second.close()
    assert head.startswith(b"HTTP/1.1 200") and refused.startswith(b"HTTP/1.1 429")


def test_every_limit_from_the_file_and_the_command_line(tmp_path: Path) -> None:
    """Every dashboard.* key reaches the dashboard's limits; the command line wins over the
    file for the two limits it has options for."""
    from twisted_mqtt.dashboard_limits import DashboardLimits
    from twisted_mqtt.tap import Options

    given = {"max_body": 1000, "max_streams": 3, "max_streams_per_user": 2,
             "stream_stall": 5.0, "max_sessions": 7, "session_idle": 60.0,
             "idle_timeout": 9.0, "sign_in_attempts": 3, "sign_in_backoff": 30.0,
             "payload_view_bytes": 100, "allowed_hosts": ["dash.example.org"]}
    config = tmp_path / "broker.yaml"
    config.write_text(json.dumps({"dashboard": given}))
    options = Options()
    options.parseOptions(["--config", str(config), "--dashboard", "0"])
    assert options.dashboard_limits() == DashboardLimits(
        **{**given, "allowed_hosts": ("dash.example.org",)})  # type: ignore[arg-type]
    options = Options()
    options.parseOptions(["--config", str(config), "--dashboard", "0",
                          "--dashboard-session-idle", "30", "--dashboard-sign-in-attempts", "9"])
    limits = options.dashboard_limits()
    assert (limits.session_idle, limits.sign_in_attempts, limits.max_body) == (30, 9, 1000)


def test_an_idle_connection_is_closed(start_broker: StartBroker, tmp_path: Path) -> None:
    """A connection that sends nothing is closed after dashboard.idle_timeout."""
    config = tmp_path / "broker.yaml"
    config.write_text("dashboard:\n  idle_timeout: 1.0\n")
    dashboard = start_dashboard(start_broker, tmp_path, "--config", str(config))
    with socket.create_connection(("127.0.0.1", dashboard.port), timeout=30) as sock:
        assert sock.recv(100) == b""


# -- malformed requests --------------------------------------------------------------------------


BODIES = [b"", b"{", b"null", b"[]", b'"x"', b"1e999999", b'{"topic": []}', b"\xff\xfe",
          b'{"kind": {"a": 1}, "value": null}', b'{"username": 1, "password": []}',
          b"[" * 5000, json.dumps({"topic": "\ud800", "payload": "x"}).encode(),
          json.dumps({"topic": "a/b", "payload": "é" * 10, "encoding": "base64"}).encode(),
          json.dumps({"kind": "address", "value": "300.1.1.1/99"}).encode(),
          json.dumps({"kind": "client_id", "value": "x", "duration": 1e308}).encode(),
          json.dumps({"kind": "client_id", "value": "x", "duration": float("nan")}).encode()]
PATHS = ["/api/v1/clients/%ff%fe", "/api/v1/clients/%00/kick", "/api/v1/bans/x/%2e%2e",
         "/api/v1/retained?filter=%23%23&limit=-1&offset=x", "/api/v1/retained?filter=" +
         "a/" * 5000, "/api/v1/clients?search=" + "%C3%A9" * 300, "/api/v1/clients?limit=1e3",
         "/api/v1/retained/message?topic=%00", "/api/v1//clients", "/api/v1/%2e%2e/openapi.json",
         "/api/v1/clients?offset=99999999999999999999999"]


def test_malformed_requests_never_fail(dashboard: Dashboard) -> None:
    """Every route, with every method and malformed bodies, headers and paths, is answered
    with a JSON 4xx (or a success), never a 500; the broker log holds no traceback when it
    stops."""
    headers = {"Host": "127.0.0.1", "X-API-Key": dashboard.key,
               "Content-Type": "application/json"}
    seen = set()
    for route in ROUTES:
        path = "/api/v1/" + route.pattern.replace("{client_id}", "c%2Fx").replace(
            "{kind}", "client_id").replace("{value}", "%F0%9F%92%A5")
        for method in ("GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"):
            if route.handler == "events" and method == "GET":
                continue  # a stream: test_event_streams_per_user
            for body in (BODIES if method in ("POST", "DELETE") else [b""]):
                status, got, answer = raw_request(dashboard.port, method, path, headers, body)
                assert status < 500, (method, path, body, answer)
                seen.add(status)
    for path in PATHS:
        for method in ("GET", "POST", "DELETE"):
            status, got, answer = raw_request(dashboard.port, method, path, headers, b"{}")
            assert status < 500, (method, path, answer)
            assert got["content-type"] == "application/json", (path, answer)
    for value in ("text/plain", "application/jsonx", "multipart/form-data"):
        status, _, _ = raw_request(dashboard.port, "POST", "/api/v1/publish",
                                   {**headers, "Content-Type": value}, b'{"topic": "a"}')
        assert status in (400, 415), value
    assert {400, 404, 405} <= seen


@pytest.mark.parametrize("path", [
    "/static/../../setup.cfg", "/static/..%2f..%2fsetup.cfg", "/static/%2e%2e/%2e%2e/setup.cfg",
    "/static/vendor/../../../setup.cfg", "/static/%2e%2e%2f%2e%2e%2fsetup.cfg",
    "/static/..\\..\\setup.cfg", "/static/app.js%00.png", "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
])
def test_static_files_stay_in_their_folder(dashboard: Dashboard, path: str) -> None:
    """A path that climbs out of the dashboard's files gets a 4xx, never a file from
    elsewhere, never a 500."""
    status, _, body = raw_request(dashboard.port, "GET", path, {"Host": "127.0.0.1"})
    assert 400 <= status < 500, (path, status)
    assert b"[metadata]" not in body and b"root:" not in body
