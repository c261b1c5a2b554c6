"""The admin REST API, with real HTTP (urllib) against a real ``twistd mqtt --dashboard`` and
real paho clients: every endpoint, authentication (API key, browser session with its CSRF
token), bad input answered with a 4xx naming the field, pagination bounds.

A kick is MQTT 5 DISCONNECT 0x98, a valid DISCONNECT reason code [MQTT-3.14.2-1]; a banned
client's CONNACK 0x8A is followed by the close [MQTT-3.2.2-7]."""

from __future__ import annotations

import json
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_helpers import wait_for
from tests.conftest import StartBroker, run_twistd
from tests.paho import V311, MakeClient
from tests.spec import check_cited_labels
from tests.web_helpers import KEY_NAME, PASSWORD, USER, Dashboard, Http, start_dashboard
from twisted_mqtt.auth.passwords import hash_password
from twisted_mqtt.listeners import loopback_endpoint
from twisted_mqtt.web.api import MAX_BODY, ROUTES
from twisted_mqtt.web.views import MASK, mask

pytestmark = pytest.mark.e2e

LEDGER = """
users:
  alice:
    password: "$2b$04$3zCDfb0X5v2xh/NgWhKzXOGnS2vGwPPLd4q.ffnNYzGkwIGvuBOaG"
    acl: {"alice/#": readwrite}
auth:
  - {remote: "127.0.0.1", allow: true}
acl:
  - {username: bob, filters: {"bob/#": 3, "secret/#": deny}}
"""


@pytest.fixture(scope="module")
def dashboard(module_brokers: StartBroker, tmp_path_factory: pytest.TempPathFactory
              ) -> Dashboard:
    """One broker with a dashboard (and an auth ledger) for the module."""
    directory = tmp_path_factory.mktemp("dashboard")
    ledger = directory / "ledger.yaml"
    ledger.write_text(LEDGER)
    return start_dashboard(module_brokers, directory, "--auth-ledger", str(ledger),
                           "--sys-interval", "0")


@pytest.fixture
def api(dashboard: Dashboard) -> Http:
    """An API key holder."""
    return Http(dashboard.base, dashboard.key)


def test_cited_labels() -> None:
    check_cited_labels(sys.modules[__name__])


def example_path(route: Any) -> str:
    path = route.pattern
    for name in route.names:
        path = path.replace("{" + name + "}", "x")
    return "/api/v1/" + path


def test_every_endpoint_needs_credentials(dashboard: Dashboard) -> None:
    """Without an API key or a session, or with a wrong key, every endpoint but sign-in and
    the OpenAPI document answers 401 with a JSON error."""
    anonymous = Http(dashboard.base)
    wrong = Http(dashboard.base, "not-the-key-" + "x" * 30)
    for route in ROUTES:
        if route.public:
            continue
        for client in (anonymous, wrong):
            status, headers, body = client.request(route.method, example_path(route),
                                                   {} if route.write else None)
            assert status == 401, (route.pattern, status, body)
            assert headers["Content-Type"] == "application/json"
            assert body["error"]["status"] == 401
    status, _, document = anonymous.request("GET", "/api/v1/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")


def test_openapi_describes_every_route(api: Http) -> None:
    """The OpenAPI document has every route, its parameters and request bodies."""
    document = api.get("/api/v1/openapi.json")
    for route in ROUTES:
        operation = document["paths"]["/api/v1/" + route.pattern][route.method.lower()]
        assert operation["summary"] == route.summary
        assert ("requestBody" in operation) == (route.body is not None)
    clients = document["paths"]["/api/v1/clients"]["get"]
    assert {p["name"] for p in clients["parameters"]} == {"search", "limit", "offset"}


def test_unknown_path_and_method(api: Http) -> None:
    """An unknown path is 404, a known path with another method 405 with Allow, both JSON."""
    status, _, body = api.request("GET", "/api/v1/nothing")
    assert status == 404 and body["error"]["field"] == "path"
    status, headers, body = api.request("PUT", "/api/v1/bans", {})
    assert status == 405 and headers["Allow"] == "GET, POST"


def test_clients_list_detail_and_kick(api: Http, clients: MakeClient, dashboard: Dashboard) -> None:
    """A connected client is listed with its fields, found by search, shown with its
    subscriptions; kicking it sends MQTT 5 DISCONNECT 0x98 [MQTT-3.14.2-1]."""
    client_id = f"kick-{uuid.uuid4().hex[:8]}"
    client = dashboard.client(clients, client_id).connect(keepalive=45)
    client.subscribe("kick/topic", 1)
    found = api.get(f"/api/v1/clients?search={client_id}")
    assert found["total"] == 1
    item = found["items"][0]
    assert item["client_id"] == client_id and item["connected"] is True
    assert item["address"] == "127.0.0.1" and item["protocol_version"] == "5.0"
    assert item["keep_alive"] == 45 and item["subscriptions"] == 1 and item["node"]
    detail = api.get(f"/api/v1/clients/{client_id}")
    assert [s["filter"] for s in detail["subscription_list"]] == ["kick/topic"]
    assert detail["subscription_list"][0]["qos"] == 1
    status, _, body = api.request("POST", f"/api/v1/clients/{client_id}/kick")
    assert status == 200 and body == {"kicked": client_id}
    assert client.disconnected.wait(10)
    assert client.disconnect_rc.value == 0x98
    status, _, body = api.request("POST", f"/api/v1/clients/{client_id}/kick")
    assert status == 404 and body["error"]["field"] == "client_id"
    status, _, body = api.request("GET", "/api/v1/clients/no-such-client")
    assert status == 404 and body["error"]["field"] == "client_id"


def test_ban_through_the_api(api: Http, clients: MakeClient, dashboard: Dashboard) -> None:
    """A ban added through the API disconnects the client and refuses its reconnect with
    CONNACK 0x8A [MQTT-3.2.2-7] (MQTT 3.1.1: return code 5 [MQTT-3.2.2-5 (3.1.1)]); it is
    listed, logged with who added it, and lifted."""
    client_id = f"ban-{uuid.uuid4().hex[:8]}"
    client = dashboard.client(clients, client_id).connect()
    status, _, ban = api.request("POST", "/api/v1/bans", {
        "kind": "client_id", "value": client_id, "duration": 600, "reason": "testing"})
    assert status == 201 and ban["value"] == client_id and ban["expires_at"]
    assert client.disconnected.wait(10) and client.disconnect_rc.value == 0x98
    again = dashboard.client(clients, client_id).connect(expect_success=False)
    assert again.connack_rc.value == 0x8A
    old = dashboard.client(clients, client_id, V311).connect(expect_success=False)
    assert old.connack_rc.value == 0x87  # paho's name for MQTT 3 return code 5
    assert any(b["value"] == client_id for b in api.get("/api/v1/bans")["bans"])
    dashboard.broker.wait_for_log(f"client_id {client_id} banned for 600s by dashboard "
                                  f"api-key {KEY_NAME}: testing")
    status, _, _ = api.request("DELETE", f"/api/v1/bans/client_id/{client_id}")
    assert status == 200
    dashboard.client(clients, client_id).connect()
    status, _, body = api.request("DELETE", f"/api/v1/bans/client_id/{client_id}")
    assert status == 404 and body["error"]["field"] == "value"


def test_cidr_ban_round_trip(api: Http) -> None:
    """An address ban is normalised; its path names the network with / as %2F."""
    status, _, ban = api.request("POST", "/api/v1/bans",
                                 {"kind": "address", "value": "192.0.2.7/24"})
    assert status == 201 and ban["value"] == "192.0.2.0/24"
    status, _, _ = api.request("DELETE", "/api/v1/bans/address/192.0.2.0%2F24")
    assert status == 200


@pytest.mark.parametrize("body, field", [
    ({"value": "x"}, "kind"),
    ({"kind": "ip", "value": "x"}, "kind"),
    ({"kind": "client_id"}, "value"),
    ({"kind": "client_id", "value": ""}, "value"),
    ({"kind": "client_id", "value": 7}, "value"),
    ({"kind": "address", "value": "not-an-address"}, "value"),
    ({"kind": "username", "value": "u", "duration": 0}, "duration"),
    ({"kind": "username", "value": "u", "duration": "long"}, "duration"),
    ({"kind": "username", "value": "u", "reason": "r" * 2000}, "reason"),
])
def test_bad_ban_input(api: Http, body: Any, field: str) -> None:
    """Bad ban input: 400 naming the field, nothing banned."""
    status, _, answer = api.request("POST", "/api/v1/bans", body)
    assert status == 400, answer
    assert answer["error"]["field"] == field


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=501", "limit"), ("limit=ten", "limit"),
    ("offset=-1", "offset"), ("offset=99999999999", "offset"),
    ("search=" + "x" * 300, "search"),
])
def test_pagination_bounds(api: Http, query: str, field: str) -> None:
    """``limit`` is 1 to 500 and ``offset`` 0 or more: out of bounds is 400 naming it."""
    for path in ("clients", "subscriptions", "retained"):
        status, _, body = api.request("GET", f"/api/v1/{path}?{query}")
        if path == "retained" and field == "search":
            continue  # retained messages are browsed by filter
        assert status == 400 and body["error"]["field"] == field, (path, body)


def test_pages(api: Http, clients: MakeClient, dashboard: Dashboard) -> None:
    """Pages of clients cover every client once, in order, within the limit."""
    tag = uuid.uuid4().hex[:8]
    for index in range(5):
        dashboard.client(clients, f"page-{tag}-{index}").connect()
    seen = []
    for offset in (0, 2, 4):
        page = api.get(f"/api/v1/clients?search=page-{tag}&limit=2&offset={offset}")
        assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == offset
        assert len(page["items"]) <= 2
        seen += [item["client_id"] for item in page["items"]]
    assert seen == [f"page-{tag}-{index}" for index in range(5)]


def test_subscriptions_and_shared_groups(api: Http, clients: MakeClient,
                                         dashboard: Dashboard) -> None:
    """Who is subscribed to what, and the members of shared groups."""
    tag = uuid.uuid4().hex[:8]
    one = dashboard.client(clients, f"s1-{tag}").connect()
    two = dashboard.client(clients, f"s2-{tag}").connect()
    one.subscribe(f"$share/g{tag}/jobs/#", 1)
    two.subscribe(f"$share/g{tag}/jobs/#", 0)
    one.subscribe(f"plain/{tag}", 2)
    found = api.get(f"/api/v1/subscriptions?search={tag}")
    assert {(s["client_id"], s["topic_filter"], s["share_group"], s["qos"])
            for s in found["items"]} == {
        (f"s1-{tag}", "jobs/#", f"g{tag}", 1), (f"s2-{tag}", "jobs/#", f"g{tag}", 0),
        (f"s1-{tag}", f"plain/{tag}", None, 2)}
    groups = api.get("/api/v1/subscriptions/shared")["groups"]
    assert {"group": f"g{tag}", "topic_filter": "jobs/#",
            "members": [f"s1-{tag}", f"s2-{tag}"]} in groups


def test_retained_browse_view_delete(api: Http, clients: MakeClient, dashboard: Dashboard) -> None:
    """Retained messages by filter; one shown as text, pretty JSON and hex; deleted, a new
    subscriber gets nothing."""
    tag = uuid.uuid4().hex[:8]
    publisher = dashboard.client(clients).connect()
    publisher.publish(f"ret/{tag}/json", b'{"a": [1, 2]}', 1, retain=True)
    publisher.publish(f"ret/{tag}/bin", b"\x00\xff", 1, retain=True)
    listed = api.get(f"/api/v1/retained?filter=ret/{tag}/%23")
    assert [m["topic"] for m in listed["items"]] == [f"ret/{tag}/bin", f"ret/{tag}/json"]
    shown = api.get(f"/api/v1/retained/message?topic=ret/{tag}/json")
    assert shown["payload"]["text"] == '{"a": [1, 2]}'
    assert json.loads(shown["payload"]["json"]) == {"a": [1, 2]}
    assert "\n" in shown["payload"]["json"]
    binary = api.get(f"/api/v1/retained/message?topic=ret/{tag}/bin")["payload"]
    assert binary["hex"] == "00ff" and binary["text"] is None
    status, _, _ = api.request("DELETE", f"/api/v1/retained/message?topic=ret/{tag}/json")
    assert status == 200
    status, _, body = api.request("GET", f"/api/v1/retained/message?topic=ret/{tag}/json")
    assert status == 404 and body["error"]["field"] == "topic"
    subscriber = dashboard.client(clients).connect()
    subscriber.subscribe(f"ret/{tag}/#", 1)
    assert [m.topic for m in subscriber.expect(1)] == [f"ret/{tag}/bin"]


@pytest.mark.parametrize("query, status, field", [
    ("retained?filter=a/%23/b", 400, "filter"),
    ("retained?filter=%24share/g/a", 400, "filter"),
    ("retained/message", 400, "topic"),
    ("retained/message?topic=no/such/topic", 404, "topic"),
])
def test_bad_retained_input(api: Http, query: str, status: int, field: str) -> None:
    """A bad filter, a missing or unknown topic: 4xx naming the field."""
    got, _, body = api.request("GET", "/api/v1/" + query)
    assert got == status and body["error"]["field"] == field


def test_publish(api: Http, clients: MakeClient, dashboard: Dashboard) -> None:
    """A message published through the API reaches a paho subscriber with its MQTT 5
    properties; the write is logged with who made it."""
    tag = uuid.uuid4().hex[:8]
    subscriber = dashboard.client(clients).connect()
    subscriber.subscribe(f"pub/{tag}", 1)
    status, _, body = api.request("POST", "/api/v1/publish", {
        "topic": f"pub/{tag}", "payload": "68656c6c6f", "encoding": "hex", "qos": 1,
        "properties": {"content_type": "text/plain", "user_properties": [["k", "v"]],
                       "message_expiry_interval": 60}})
    assert status == 200 and body == {"topic": f"pub/{tag}", "routed": 1}
    message = subscriber.expect(1)[0]
    assert message.payload == b"hello" and message.qos == 1
    properties: Any = message.properties
    assert properties.ContentType == "text/plain"
    assert properties.UserProperty == [("k", "v")]
    dashboard.broker.wait_for_log(f"api-key {KEY_NAME} published 5 bytes to pub/{tag}")


@pytest.mark.parametrize("body, field", [
    ({"payload": "x"}, "topic"),
    ({"topic": "a/+"}, "topic"),
    ({"topic": ""}, "topic"),
    ({"topic": "a", "qos": 3}, "qos"),
    ({"topic": "a", "qos": "1"}, "qos"),
    ({"topic": "a", "retain": "yes"}, "retain"),
    ({"topic": "a", "payload": "zz", "encoding": "hex"}, "payload"),
    ({"topic": "a", "payload": "x", "encoding": "rot13"}, "encoding"),
    ({"topic": "a", "properties": {"topic_alias": 3}}, "properties.topic_alias"),
    ({"topic": "a", "properties": {"user_properties": [["k"]]}}, "properties.user_properties"),
    ({"topic": "a", "properties": {"message_expiry_interval": -1}}, "message_expiry_interval"),
    ({"topic": "a", "payload": "/w==", "encoding": "base64",
      "properties": {"payload_format_indicator": 1}}, "properties"),
])
def test_bad_publish_input(api: Http, body: Any, field: str) -> None:
    """Bad publish input: 400 naming the field."""
    status, _, answer = api.request("POST", "/api/v1/publish", body)
    assert status == 400, answer
    assert answer["error"]["field"] == field


def test_bad_bodies(api: Http) -> None:
    """Not JSON, not an object, the wrong content type, too large: 4xx naming it, and the
    server still answers afterwards."""
    status, _, body = api.request("POST", "/api/v1/publish", raw=b"{not json",
                                  headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["field"] == "body"
    status, _, body = api.request("POST", "/api/v1/publish", [1, 2])
    assert status == 400 and body["error"]["field"] == "body"
    status, _, body = api.request("POST", "/api/v1/publish", raw=b"[" * 100_000,
                                  headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["field"] == "body"
    status, _, body = api.request("POST", "/api/v1/publish", raw=b"topic=a",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and body["error"]["field"] == "content-type"
    status, _, body = api.request("POST", "/api/v1/publish", raw=b"x" * (MAX_BODY + 1),
                                  headers={"Content-Type": "application/json"})
    assert status == 413 and body["error"]["field"] == "body"
    assert api.get("/api/v1/nodes")["nodes"]


def test_figures_listeners_config_auth(api: Http, dashboard: Dashboard) -> None:
    """Stats with samples, this node, the listeners, the configuration (no secret in it) and
    the ledger's users and rules with passwords masked."""
    stats = wait_for(lambda: (lambda s: s if s["samples"] else None)(api.get("/api/v1/stats")),
                     what="a sample")
    assert {"messages_in", "messages_out", "bytes_in", "bytes_out", "t"} <= set(
        stats["samples"][-1])
    assert stats["summary"]["version"] and stats["figures"]["uptime"] >= 0
    nodes = api.get("/api/v1/nodes")["nodes"]
    assert len(nodes) == 1 and nodes[0]["self"] and nodes[0]["node"] == stats["node"]
    listeners = api.get("/api/v1/listeners")["listeners"]
    assert {(entry["kind"], entry["listening"]) for entry in listeners} == {
        ("MQTT", True), ("dashboard", True)}
    config = api.get("/api/v1/config")
    assert config["options"]["listeners.dashboard"] == ["tcp:0:interface=127.0.0.1"]
    assert config["capabilities"]["maximum_bans"] == 10000
    assert dashboard.key not in json.dumps(config)
    auth = api.get("/api/v1/auth")
    ledger = auth["ledgers"][0]
    assert ledger["users"] == [{"username": "alice", "disallow": False, "password": MASK,
                                "acl": [{"filter": "alice/#", "access": "readwrite"}]}]
    assert ledger["acl"][0]["username"] == "bob"
    assert {"filter": "secret/#", "access": "deny"} in ledger["acl"][0]["filters"]
    assert "$2b$" not in json.dumps(auth)


@pytest.mark.parametrize("name, value, shown", [
    ("store.url", "redis://:hunter2@db:6379/0", f"redis://:{MASK}@db:6379/0"),
    ("auth.backends", ["http://u:pw@h/x?password_hash=bcrypt&hmac_key=k1"],
     [f"http://u:{MASK}@h/x?password_hash={MASK}&hmac_key={MASK}"]),
    ("listeners.mqtt", ["ssl:8883:privateKey=key.pem"], ["ssl:8883:privateKey=key.pem"]),
    ("cluster.password", "s3cret", MASK),
    ("dashboard.api_keys_file", "/etc/keys", "/etc/keys"),
    ("auth.checkers", ["memory:admin:pw", "file:/etc/passwd"],
     [f"memory:{MASK}", "file:/etc/passwd"]),
])
def test_secrets_masked(name: str, value: Any, shown: Any) -> None:
    """Passwords in URLs, secret query fields and secret keys are masked; file paths are
    not secrets."""
    assert mask(name, value) == shown


def test_browser_session(dashboard: Dashboard) -> None:
    """Sign-in sets an HttpOnly, SameSite=Strict cookie; a write from the session needs the
    CSRF token; a wrong password is 401 naming it; signing out ends the session."""
    browser = Http(dashboard.base)
    status, body = browser.login(USER, "wrong")
    assert status == 401 and body["error"]["field"] == "password"
    status, body = browser.login("nobody", PASSWORD)
    assert status == 401
    status, _, headers_body = browser.request("POST", "/api/v1/login",
                                              {"username": USER, "password": PASSWORD})
    assert status == 200
    csrf = headers_body["csrf"]
    cookie = next(iter(browser.cookies))
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite", "").lower() == "strict"
    assert browser.get("/api/v1/session") == {"user": USER, "kind": "user", "csrf": csrf}
    status, _, body = browser.request("POST", "/api/v1/publish", {"topic": "csrf/test"})
    assert status == 403 and body["error"]["field"] == "x-csrf-token"
    for wrong in ("wrong", "\u00e9t\u00e9"):
        browser.csrf = wrong
        status, _, _ = browser.request("POST", "/api/v1/publish", {"topic": "csrf/test"})
        assert status == 403
    browser.csrf = csrf
    status, _, _ = browser.request("POST", "/api/v1/publish", {"topic": "csrf/test"})
    assert status == 200
    dashboard.broker.wait_for_log(f"user {USER} published 0 bytes to csrf/test")
    status, _, _ = browser.request("POST", "/api/v1/logout")
    assert status == 200
    status, _, _ = browser.request("GET", "/api/v1/session")
    assert status == 401


def test_event_stream(dashboard: Dashboard) -> None:
    """``/api/v1/events`` sends a ``stats`` event every second."""
    with socket.create_connection(("127.0.0.1", dashboard.port), timeout=10) as sock:
        sock.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {dashboard.key}"
                     "\r\n\r\n".encode())
        received = b""
        while received.count(b"event: stats") < 2:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    assert b"text/event-stream" in received
    data = received.split(b"event: stats\r\n" if b"\r\ndata" in received
                          else b"event: stats\n")[1]
    event = json.loads(data.split(b"data: ", 1)[1].split(b"\n", 1)[0])
    assert {"sample", "summary"} <= set(event)


def test_static_files(dashboard: Dashboard) -> None:
    """The pages, uPlot and its licence are served with a strict Content-Security-Policy;
    directories are not listed."""
    anonymous = Http(dashboard.base)
    status, headers, page = anonymous.request("GET", "/")
    assert status == 200 and "<main" in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    for path in ("/static/app.js", "/static/app.css", "/static/vendor/uplot/uPlot.iife.min.js",
                 "/static/vendor/uplot/LICENSE"):
        assert anonymous.request("GET", path)[0] == 200, path
    assert anonymous.request("GET", "/static/")[0] == 404
    assert anonymous.request("GET", "/static/vendor/")[0] == 404


def test_loopback_by_default() -> None:
    """A bare port or a tcp: endpoint without an interface listens on loopback only."""
    assert loopback_endpoint("8080") == "tcp:8080:interface=127.0.0.1"
    assert loopback_endpoint("tcp:8080") == "tcp:8080:interface=127.0.0.1"
    assert loopback_endpoint("tcp:8080:interface=0.0.0.0") == "tcp:8080:interface=0.0.0.0"
    assert loopback_endpoint("unix:/run/mqtt-dashboard.sock") == "unix:/run/mqtt-dashboard.sock"


@pytest.mark.parametrize("users, keys, option, problem", [
    ("admin:plain-password\n", None, "--dashboard-users", "plain-text password for admin"),
    (None, "script:short\n", "--dashboard-api-keys", "shorter than 24 characters"),
])
def test_bad_dashboard_files(tmp_path: Path, users: Any, keys: Any, option: str,
                             problem: str) -> None:
    """A users file with a plain-text password, or a short API key: one line naming the
    option, exit status 78."""
    args = ["-n", "mqtt", "--dashboard", "tcp:0"]
    if users is not None:
        (tmp_path / "users").write_text(users)
        args += ["--dashboard-users", str(tmp_path / "users")]
    if keys is not None:
        (tmp_path / "keys").write_text(keys)
        args += ["--dashboard-api-keys", str(tmp_path / "keys")]
    result = run_twistd(*args)
    assert result.returncode == 78
    assert option in result.stderr and problem in result.stderr


def test_bans_survive_a_restart(start_broker: StartBroker, tmp_path: Path,
                                clients: MakeClient) -> None:
    """With an SQLite store, a ban added through the API still refuses the client after the
    broker restarts: CONNACK 0x8A [MQTT-3.2.2-7]."""
    options = ("--store", f"sqlite:{tmp_path / 'broker.db'}")
    first = start_dashboard(start_broker, tmp_path, *options)
    status, _, _ = Http(first.base, first.key).request(
        "POST", "/api/v1/bans", {"kind": "username", "value": "mallory"})
    assert status == 201
    first.broker.check_clean_exit()
    second = start_dashboard(start_broker, tmp_path, *options)
    assert Http(second.base, second.key).get("/api/v1/bans")["bans"][0]["value"] == "mallory"
    client = second.client(clients)
    client.paho.username_pw_set("mallory")
    assert client.connect(expect_success=False).connack_rc.value == 0x8A


def test_dashboard_from_the_configuration_file(start_broker: StartBroker,
                                               tmp_path: Path) -> None:
    """``listeners.dashboard`` and ``dashboard.users_file`` in the YAML file: the dashboard
    listens and its user signs in; the configuration it shows is the file's."""
    users = tmp_path / "users"
    users.write_text(f"{USER}:{hash_password(PASSWORD, 'bcrypt', rounds=4)}\n")
    config = tmp_path / "broker.yaml"
    config.write_text("listeners:\n  dashboard: [tcp:0:interface=127.0.0.1]\n"
                      f"dashboard:\n  users_file: {users}\n")
    broker = start_broker("--config", str(config))
    broker.wait_ready(2)
    browser = Http(f"http://127.0.0.1:{broker.port_of('dashboard')}")
    assert browser.login()[0] == 200
    options = browser.get("/api/v1/config")["options"]
    assert options["dashboard.users_file"] == str(users)


def test_stop_with_an_event_stream_open(start_broker: StartBroker, tmp_path: Path) -> None:
    """The broker stops cleanly (SIGTERM) while a browser holds an event stream open: the
    stream is ended."""
    dashboard = start_dashboard(start_broker, tmp_path)
    with socket.create_connection(("127.0.0.1", dashboard.port), timeout=10) as sock:
        sock.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {dashboard.key}"
                     "\r\n\r\n".encode())
        assert b"text/event-stream" in sock.recv(65536)
        dashboard.broker.check_clean_exit()
        while sock.recv(65536):  # read to the end: the broker closed the stream
            pass


def test_static_files_are_package_data() -> None:
    """Every file of the dashboard is listed as package data in setup.cfg (so that a wheel
    holds it), the uPlot licence included."""
    import configparser
    import fnmatch

    from twisted_mqtt.web import STATIC

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).parent.parent / "setup.cfg")
    patterns = setup["options.package_data"]["twisted_mqtt.web"].split()
    files = [str(path.relative_to(STATIC.parent)) for path in STATIC.rglob("*") if path.is_file()]
    assert "static/vendor/uplot/LICENSE" in files
    assert [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)] == []
