"""The auth backends against real servers: a private redis-server, PostgreSQL and MariaDB
(``tests/servers.py`` starts them; ``.ci/run`` installs them) and an HTTP auth service this
module serves with twisted.web (plain and TLS).  Each backend is held to comqtt's contract
(docs/auth.md), in the reactor pytest-twisted runs.

Credentials decide the CONNACK code (0 accepted; 0x86 bad user name or password; 0x87 not
authorised; 0x88 server unavailable when the backend cannot answer) [MQTT-3.1.4-2].
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.web import resource, server

from tests.servers import (  # noqa: F401  (fixtures)
    KillableRedis,
    MariaDBServer,
    PostgresServer,
    RedisServer,
    mariadb_server,
    postgres_server,
    redis_server,
)
from tests.spec import check_cited_labels
from twisted_mqtt.auth.backends import BackendAuth, backend_from_url
from twisted_mqtt.auth.backends.http import HTTPAuth, HTTPSettings
from twisted_mqtt.auth.backends.sql import SQLAuth, SQLSettings
from twisted_mqtt.auth.passwords import hash_password
from twisted_mqtt.interfaces import ClientInfo, ConnectRequest, Veto

REDIS_DB = 9
BCRYPT = hash_password("bpw", "bcrypt", rounds=4)


def _request(username: Optional[str], password: Optional[bytes], client_id: str = "c1",
             address: str = "10.0.0.1") -> ConnectRequest:
    return ConnectRequest(ClientInfo(client_id, username, address), password)


def _verdicts(backend: BackendAuth, cases: List[Tuple[str, bytes]]) -> Any:
    """The authenticate answers for (username, password) cases, in order."""
    return defer.gatherResults([defer.maybeDeferred(backend.authenticate, _request(u, p))
                                for u, p in cases])


@defer.inlineCallbacks
def _acl_answers(backend: BackendAuth, username: str) -> Any:
    client = ClientInfo("acl-" + username, username, "10.0.0.1")
    answers = []
    for call, subject in (("may_publish", "alice/x"), ("may_subscribe", "alice/#"),
                          ("may_publish", "public/x"), ("may_subscribe", "public/+"),
                          ("may_publish", "other")):
        answer = yield defer.maybeDeferred(getattr(backend, call), client, subject)
        answers.append(answer)
    answers.append(backend.may_receive(client, "public/news"))
    answers.append(backend.may_receive(client, "secret/x"))
    return answers


EXPECTED_ACL = [True, True, False, True, False, True, False]
AUTH_CASES = [("alice", b"apw"), ("alice", b"wrong"), ("nobody", b"apw"), ("bob", b"bpw"),
              ("bob", b"nope"), ("dis", b"dpw")]
EXPECTED_AUTH = [True, 0x86, 0x86, True, 0x86, 0x87]


# -- Redis --------------------------------------------------------------------------------------


def _fill_redis(redis: RedisServer, prefix: str = "comqtt") -> None:
    """Write comqtt's layout into database REDIS_DB with redis-cli (beside redis-server)."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.fail("redis-cli is missing (it comes with redis-server, which .ci/run installs)",
                    pytrace=False)
    assert cli is not None
    for args in (
        ("DEL", f"{prefix}:auth", f"{prefix}:acl:alice"),
        ("HSET", f"{prefix}:auth", "alice", json.dumps({"password": "apw", "allow": True})),
        ("HSET", f"{prefix}:auth", "bob", json.dumps({"password": BCRYPT, "allow": True})),
        ("HSET", f"{prefix}:auth", "dis", json.dumps({"password": "dpw", "allow": False})),
        ("HSET", f"{prefix}:acl:alice", "alice/#", "3", "public/#", "1", "public/x", "2"),
    ):
        subprocess.run([cli, "-h", redis.host, "-p", str(redis.port), "-n", str(REDIS_DB),
                        *args], check=True, capture_output=True, timeout=10)


@pytest_twisted.inlineCallbacks
def test_redis_contract(redis_server: RedisServer) -> Any:  # noqa: F811
    """comqtt's Redis layout: ``comqtt:auth`` maps users to ``{"password", "allow"}`` (plain or
    hashed), ``comqtt:acl:<user>`` maps filters to access; the most specific filter decides
    [MQTT-3.1.4-2]."""
    _fill_redis(redis_server)
    backend = backend_from_url(f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
                               "?password_hash=auto&timeout=20")
    try:
        verdicts = yield _verdicts(backend, AUTH_CASES)
        assert verdicts == EXPECTED_AUTH
        answers = yield _acl_answers(backend, "alice")  # the first answer loads the rules
        assert answers == EXPECTED_ACL
    finally:
        yield backend.close()


@pytest_twisted.inlineCallbacks
def test_redis_killed_fails_closed_and_recovers(tmp_path: Path) -> Any:
    """A Redis server killed mid-test: clients are refused with 0x88 (fail closed) within the
    timeout, publishing is refused, and once the server is back (empty, then refilled) the
    same client is accepted again [MQTT-3.1.4-2]."""
    from twisted.internet import reactor

    redis = KillableRedis(tmp_path)
    _fill_redis(redis)
    backend = backend_from_url(f"redis://127.0.0.1:{redis.port}/{REDIS_DB}"
                               "?timeout=3&cache_ttl=0&reconnect_max_delay=0.5")
    try:
        verdicts = yield _verdicts(backend, [("alice", b"apw")])
        assert verdicts == [True] and backend.available
        redis.kill()
        started = reactor.seconds()
        verdicts = yield _verdicts(backend, [("alice", b"apw"), ("alice", b"apw")])
        assert verdicts == [0x88, 0x88]
        assert reactor.seconds() - started < 10  # two timeouts of 3 s, concurrently
        allowed = yield defer.maybeDeferred(backend.may_publish,
                                            ClientInfo("c1", "alice"), "alice/x")
        assert allowed is False and not backend.available
        redis.restart()
        _fill_redis(redis)
        deadline = reactor.seconds() + 20
        while True:
            verdicts = yield _verdicts(backend, [("alice", b"apw")])
            if verdicts == [True] or reactor.seconds() > deadline:
                break
            yield _sleep(0.2)
        assert verdicts == [True] and backend.available
    finally:
        yield backend.close()
        redis.stop()


def _sleep(seconds: float) -> Any:
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds, lambda: None)


# -- PostgreSQL and MariaDB ---------------------------------------------------------------------


def _fill_sql(execute: Any, serial: str, text: str, auth: str = "auth", acl: str = "acl",
              user: str = "username") -> None:
    execute(f"DROP TABLE IF EXISTS {auth}")
    execute(f"DROP TABLE IF EXISTS {acl}")
    execute(f"CREATE TABLE {auth} (id {serial} PRIMARY KEY, {user} {text} NOT NULL UNIQUE, "
            f"password {text} NOT NULL, allow SMALLINT DEFAULT 1 NOT NULL)")
    execute(f"CREATE TABLE {acl} (id {serial} PRIMARY KEY, {user} {text} NOT NULL, "
            f"topic {text} NOT NULL, access SMALLINT DEFAULT 3 NOT NULL)")
    for name, password, allow in (("alice", "apw", 1), ("bob", BCRYPT, 1), ("dis", "dpw", 0)):
        execute(f"INSERT INTO {auth} ({user}, password, allow) VALUES (%s, %s, %s)",
                (name, password, allow))
    for topic, access in (("alice/#", 3), ("public/#", 1), ("public/x", 2)):
        execute(f"INSERT INTO {acl} ({user}, topic, access) VALUES (%s, %s, %s)",
                ("alice", topic, access))


@pytest_twisted.inlineCallbacks
def test_postgresql_contract(postgres_server: PostgresServer) -> Any:  # noqa: F811
    """comqtt's PostgreSQL schema (``auth``: username, password, allow; ``acl``: username,
    topic, access) through adbapi, and renamed tables and columns [MQTT-3.1.4-2]."""
    _fill_sql(postgres_server.execute, "serial", "TEXT")
    backend = backend_from_url(postgres_server.url() + "?password_hash=auto&timeout=20")
    try:
        verdicts = yield _verdicts(backend, AUTH_CASES)
        assert verdicts == EXPECTED_AUTH
        answers = yield _acl_answers(backend, "alice")
        assert answers == EXPECTED_ACL
    finally:
        backend.close()
    _fill_sql(postgres_server.execute, "serial", "TEXT", "mqtt_user", "mqtt_acl", "login")
    renamed = SQLAuth(SQLSettings(engine="postgresql", host=postgres_server.host,
                                  port=postgres_server.port, user="postgres",
                                  database="comqtt", password_hash="auto",
                                  auth_table="mqtt_user", user_column="login",
                                  acl_table="mqtt_acl", acl_user_column="login",
                                  timeout=20))
    try:
        verdicts = yield _verdicts(renamed, AUTH_CASES)
        assert verdicts == EXPECTED_AUTH
    finally:
        renamed.close()


@pytest_twisted.inlineCallbacks
def test_mariadb_contract(mariadb_server: MariaDBServer) -> Any:  # noqa: F811
    """comqtt's MySQL schema on a real MariaDB through pymysql and adbapi [MQTT-3.1.4-2]."""
    _fill_sql(mariadb_server.execute, "INT AUTO_INCREMENT", "VARCHAR(255)")
    backend = backend_from_url(mariadb_server.url() + "?password_hash=auto&timeout=20")
    try:
        verdicts = yield _verdicts(backend, AUTH_CASES)
        assert verdicts == EXPECTED_AUTH
        answers = yield _acl_answers(backend, "alice")
        assert answers == EXPECTED_ACL
    finally:
        backend.close()


@pytest_twisted.inlineCallbacks
def test_sql_server_gone_fails_closed(postgres_server: PostgresServer) -> Any:  # noqa: F811
    """A database that cannot be reached refuses clients with 0x88 within the timeout, and
    a blacklisted client is refused with a Veto before the database is asked [MQTT-3.1.4-2]."""
    backend = SQLAuth(SQLSettings(engine="postgresql", host="127.0.0.1", port=1, timeout=2,
                                  user="postgres", blacklist=[{"username": "mallory"}]))
    try:
        verdicts = yield _verdicts(backend, [("alice", b"apw")])
        assert verdicts == [0x88]
        assert backend.authenticate(_request("mallory", b"x")) == Veto(0x8A)
    finally:
        backend.close()


# -- HTTP ---------------------------------------------------------------------------------------


class AuthService(resource.Resource):
    """comqtt's HTTP auth contract: ``/comqtt/auth`` answers ``1`` for a right password,
    ``/comqtt/acl`` a JSON object of filter -> access; records every request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: List[Dict[str, Any]] = []
        self.status = 200
        self.delay: Optional[float] = None

    def render(self, request: Any) -> Any:
        body = request.content.read()
        content_type = (request.getHeader("content-type") or "").split(";")[0]
        if content_type == "application/json":
            fields = json.loads(body)
        else:
            fields = {k.decode(): v[0].decode() for k, v in request.args.items()}
        self.requests.append({"method": request.method.decode(), "path": request.path.decode(),
                              "type": content_type, "fields": fields})
        request.setResponseCode(self.status)
        if request.path == b"/comqtt/auth":
            users = {"alice": "apw", "bob": "bpw"}
            answer = b"1" if users.get(fields.get("user")) == fields.get("password") else b"0"
        elif request.path == b"/comqtt/acl":
            rules = {"alice": {"alice/#": 3, "public/#": 1, "public/x": 2}}
            if fields.get("user") not in rules:
                request.setResponseCode(404)
                return b"no such user"
            answer = json.dumps(rules[fields["user"]]).encode()
        else:
            request.setResponseCode(404)
            return b""
        if self.delay is None:
            return answer
        from twisted.internet import reactor

        gone: List[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def late() -> None:
            if not gone:
                request.write(answer)
                request.finish()

        reactor.callLater(self.delay, late)
        return server.NOT_DONE_YET


@pytest.fixture
def auth_service() -> Iterator[Tuple[AuthService, Any]]:
    """The HTTP auth service on a free loopback port: (resource, listening port)."""
    from twisted.internet import reactor

    service = AuthService()
    site = server.Site(service)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield service, port
    port.stopListening()


@pytest.mark.parametrize("method, content_type", [("post", "json"), ("post", "form"),
                                                  ("get", "json")])
@pytest_twisted.inlineCallbacks
def test_http_contract(auth_service: Tuple[AuthService, Any], method: str,
                       content_type: str) -> Any:
    """comqtt's HTTP contract, POST with JSON or a form, or GET: ``user`` and ``password``
    to the auth URL, body ``1`` lets in; ``user`` to the ACL URL, a JSON object of filters
    back [MQTT-3.1.4-2]."""
    service, port = auth_service
    base = f"http://127.0.0.1:{port.getHost().port}/comqtt"
    backend = backend_from_url(f"{base}?method={method}&content_type={content_type}"
                               "&timeout=20")
    try:
        verdicts = yield _verdicts(backend, [("alice", b"apw"), ("alice", b"x"),
                                             ("bob", b"bpw"), ("zed", b"z")])
        assert verdicts == [True, 0x86, True, 0x86]
        answers = yield _acl_answers(backend, "alice")
        assert answers == EXPECTED_ACL
        (first,) = [r for r in service.requests if r["fields"].get("password") == "apw"]
        assert first["path"] == "/comqtt/auth" and first["method"] == method.upper()
        assert first["fields"]["user"] == "alice" and first["fields"]["password"] == "apw"
        assert first["fields"]["clientid"] == "c1" and first["fields"]["ip"] == "10.0.0.1"
        if method == "post":
            expected = "application/json" if content_type == "json" else (
                "application/x-www-form-urlencoded")
            assert first["type"] == expected
        acl_requests = [r for r in service.requests if r["path"] == "/comqtt/acl"]
        assert {"user": "alice"} in [r["fields"] for r in acl_requests]
    finally:
        yield backend.close()


@pytest_twisted.inlineCallbacks
def test_http_errors_and_slowness_fail_closed(auth_service: Tuple[AuthService, Any]) -> Any:
    """A 5xx answer or no answer within the timeout refuses with 0x88 (fail closed); with
    ``fail_open`` the client is let in [MQTT-3.1.4-2]."""
    service, port = auth_service
    base = f"http://127.0.0.1:{port.getHost().port}/comqtt"
    closed = backend_from_url(f"{base}?timeout=2")
    opened = backend_from_url(f"{base}?timeout=2&fail_open=true")
    try:
        service.status = 503
        verdicts = yield _verdicts(closed, [("alice", b"apw")])
        assert verdicts == [0x88]
        service.status = 200
        service.delay = 5.0
        verdicts = yield _verdicts(closed, [("alice", b"apw")])
        assert verdicts == [0x88]
        verdicts = yield _verdicts(opened, [("alice", b"wrong")])
        assert verdicts == [True]
        service.delay = None
        verdicts = yield _verdicts(closed, [("alice", b"apw")])
        assert verdicts == [True] and closed.available
    finally:
        yield closed.close()
        yield opened.close()


@pytest_twisted.inlineCallbacks
def test_https_with_a_private_ca(tmp_path: Path) -> Any:
    """An ``https://`` auth service is verified against ``ca_file``; without it (system
    trust) the self-made certificate is refused, which fails closed [MQTT-3.1.4-2]."""
    from twisted.internet import endpoints, reactor

    from tests.certs import make_pki

    pki = make_pki(tmp_path)
    service = AuthService()
    site = server.Site(service)
    endpoint = endpoints.serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={pki.server_key}:"
                 f"certKey={pki.server_cert}:extraCertChain={pki.intermediate}")
    port = yield endpoint.listen(site)
    base = f"https://127.0.0.1:{port.getHost().port}/comqtt"
    trusting = HTTPAuth(HTTPSettings(auth_url=f"{base}/auth", acl_url=f"{base}/acl",
                                     ca_file=str(pki.root), timeout=20))
    untrusting = HTTPAuth(HTTPSettings(auth_url=f"{base}/auth", acl_url=f"{base}/acl",
                                       timeout=20))
    try:
        verdicts = yield _verdicts(trusting, [("alice", b"apw"), ("alice", b"x")])
        assert verdicts == [True, 0x86]
        verdicts = yield _verdicts(untrusting, [("alice", b"apw")])
        assert verdicts == [0x88]
        assert len(service.requests) == 3  # 2 auth + 1 ACL, none from the untrusting client
    finally:
        yield trusting.close()
        yield untrusting.close()
        yield port.stopListening()


def test_cited_labels() -> None:
    check_cited_labels(sys.modules[__name__], every_test=True)
