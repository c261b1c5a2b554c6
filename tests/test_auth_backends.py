"""What every auth backend shares, driven in memory with a ``task.Clock``: the blacklist, the
credentials check, the per-client ACL cache (TTL, refetch on reconnect, drop at session end),
timeouts and the failure policy; plus the twisted.cred authenticator and the command line.

The backend here keeps its users and rules in dictionaries and can be told to hold its answers
or never answer, standing in for a slow or dead server.  Refusals reach the client as CONNACK
reason codes (v5 0x86, 0x87, 0x88, 0x8A; v3 4, 5, 3, 5) and close the connection
[MQTT-3.1.4-2].
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Tuple

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.defer import Deferred
from twisted.python import usage

from tests.auth_helpers import FakeReactor, FakeThreadPool, MemoryBackend
from tests.spec import check_cited_labels
from twisted_mqtt.auth import AllowAll, Anonymous, LocalOnly
from twisted_mqtt.auth.backends import (
    BackendSettings,
    UserRecord,
    backend_settings,
)
from twisted_mqtt.auth.cred import CredAuthenticator, UsernamePassword
from twisted_mqtt.auth.passwords import PasswordVerifier, hash_password
from twisted_mqtt.interfaces import ClientInfo, ConnectRequest, Veto
from twisted_mqtt.packets import Connect, PubAck, Publish, SubAck, Subscribe, Subscription
from twisted_mqtt.testing import InMemoryBroker, InMemoryClient

levels = pytest.mark.parametrize("level", (3, 4, 5))


def _hub(**settings: Any) -> Tuple[InMemoryBroker, MemoryBackend]:
    hub = InMemoryBroker(start=False)
    backend = MemoryBackend(BackendSettings(**settings), hub.clock)
    hub.broker.authenticator = backend
    hub.broker.start()
    backend.users["alice"] = UserRecord("apw")
    backend.acls["alice"] = {"alice/#": 3, "public/#": 1}
    return hub, backend


def _connect(hub: InMemoryBroker, client_id: str, level: int = 5, **fields: Any) -> Any:
    client = hub.client(protocol_level=level, address="10.0.0.1")
    client.send(Connect(client_id, level, fields.pop("clean_start", True), 0, **fields))
    return client


def _ack(client: InMemoryClient) -> Any:
    packets = client.received()
    assert packets, "no CONNACK yet"
    return packets[0]


def _join(hub: InMemoryBroker, client_id: str = "a1", level: int = 5,
          **fields: Any) -> InMemoryClient:
    fields.setdefault("username", "alice")
    fields.setdefault("password", b"apw")
    client = hub.client(protocol_level=level, address="10.0.0.1")
    assert client.connect(client_id, **fields).reason_code == 0
    return client


def _topics(client: InMemoryClient) -> List[str]:
    return [p.topic for p in client.received() if isinstance(p, Publish)]


@levels
@pytest.mark.parametrize("user, password, v5, v3", [
    ("alice", b"apw", 0, 0),
    ("alice", b"wrong", 0x86, 4),
    ("nobody", b"apw", 0x86, 4),
    ("disabled", b"dpw", 0x87, 5),
    ("disabled", b"wrong", 0x86, 4),
])
def test_credentials(level: int, user: str, password: bytes, v5: int, v3: int) -> None:
    """Unknown users and wrong passwords get 0x86 (v3 4), a user the backend disallows 0x87
    (v3 5) only with the right password, the right one 0 [MQTT-3.1.4-2, MQTT-3.2.2-6]."""
    hub, backend = _hub()
    backend.users["disabled"] = UserRecord("dpw", allow=False)
    client = _connect(hub, "c", level, username=user, password=password)
    ack = _ack(client)
    assert ack.reason_code == (v5 if level == 5 else v3)
    assert ack.session_present is False
    assert client.closed is (v5 != 0)
    assert ("c" in backend._acl) is (v5 == 0)  # refused clients leave nothing cached


@pytest.mark.parametrize("scheme", ["md5", "sha256", "hmac-sha512", "pbkdf2", "bcrypt"])
def test_password_schemes(scheme: str) -> None:
    """The configured scheme checks stored passwords; slow ones go through the verifier's pool
    [MQTT-3.1.4-2]."""
    pool = FakeThreadPool()
    hub = InMemoryBroker(start=False)
    verifier = PasswordVerifier(FakeReactor(), pool, nice=0)  # (runs in this thread)
    backend = MemoryBackend(BackendSettings(password_hash=scheme, hash_key="k"), hub.clock,
                            verifier)
    hub.broker.authenticator = backend
    hub.broker.start()
    made = {"pbkdf2": "pbkdf2_sha256", "bcrypt": "bcrypt"}.get(scheme, scheme)
    backend.users["u"] = UserRecord(hash_password("pw", made, key="k", rounds=4 if scheme ==
                                                  "bcrypt" else 100))
    right = _connect(hub, "r", username="u", password=b"pw")
    wrong = _connect(hub, "w", username="u", password=b"px")
    pool.run()
    assert (_ack(right).reason_code, _ack(wrong).reason_code) == (0, 0x86)
    assert bool(pool.ran) is (scheme in ("pbkdf2", "bcrypt"))


@levels
def test_blacklist_is_checked_first(level: int) -> None:
    """A blacklisted client id, username or address is refused with 0x8A Banned (v3 5) before
    the backend is asked, even with the right password [MQTT-3.1.4-2, MQTT-3.2.2-6]."""
    hub, backend = _hub(blacklist=[{"client": "bad-*"}, {"username": "mallory"},
                                   {"remote": "10.0.0.0/24"}])
    backend.users["mallory"] = UserRecord("m")
    for client_id, user, password in (("bad-1", "alice", b"apw"), ("ok", "mallory", b"m")):
        client = _connect(hub, client_id, level, username=user, password=password)
        assert _ack(client).reason_code == (0x8A if level == 5 else 5)
    assert backend.calls == []
    veto = backend.authenticate(ConnectRequest(ClientInfo("x", address="10.0.0.9"), None))
    assert veto == Veto(0x8A)


def test_acl_loaded_at_connect_and_cached_for_the_ttl() -> None:
    """The ACL is fetched while the client connects; publish, subscribe and delivery then
    answer from the cache without asking the backend until the TTL passes [MQTT-3.1.4-2,
    MQTT-3.3.4-1]."""
    hub, backend = _hub(cache_ttl=60)
    client = _join(hub)
    assert backend.calls == [("auth", "alice"), ("acl", "alice")]
    client.send(Subscribe(1, (Subscription("alice/#", 0), Subscription("other/#", 0))))
    client.send(Publish("alice/x", b"1", 1, packet_id=1), Publish("public/x", b"2", 1,
                                                                 packet_id=2))
    packets = client.received()
    assert [p.reason_codes for p in packets if isinstance(p, SubAck)] == [(0, 0x87)]
    assert [(p.packet_id, p.reason_code) for p in packets if isinstance(p, PubAck)] == [
        (1, 0), (2, 0x87)]
    assert [p.topic for p in packets if isinstance(p, Publish)] == ["alice/x"]
    assert len(backend.calls) == 2
    backend.acls["alice"] = {"alice/#": 1}
    hub.advance(59)
    client.send(Publish("alice/y", b"3", 0))
    assert _topics(client) == ["alice/y"] and len(backend.calls) == 2  # still cached
    hub.advance(2)
    client.send(Publish("alice/z", b"4", 1, packet_id=3))
    packets = client.received()
    assert [(p.packet_id, p.reason_code) for p in packets if isinstance(p, PubAck)] == [
        (3, 0x87)]  # the new rules: read only
    assert backend.calls[-1] == ("acl", "alice")


def test_rules_are_fetched_again_on_reconnect() -> None:
    """A client connecting again gets its rules fetched afresh, TTL or not; a session that
    ends drops them, a kept session keeps them for its queued messages [MQTT-3.1.4-2]."""
    hub, backend = _hub(cache_ttl=3600)
    first = _join(hub, "a1")
    backend.acls["alice"] = {"alice/#": 1}
    first.drop()
    hub.advance(0)
    assert "a1" not in backend._acl  # the session ended with the connection
    again = _join(hub, "a1")
    assert backend.calls.count(("acl", "alice")) == 2
    again.send(Publish("alice/x", b"1", 1, packet_id=1))
    assert [p.reason_code for p in again.received() if isinstance(p, PubAck)] == [0x87]
    kept = _join(hub, "k1", properties=_expiry(300))
    kept.drop()
    hub.advance(0)
    assert "k1" in backend._acl


def _expiry(seconds: int) -> Any:
    from twisted_mqtt.properties import Properties

    return Properties(session_expiry_interval=seconds)


@levels
def test_dead_backend_fails_closed_after_the_timeout(level: int) -> None:
    """A backend that does not answer within ``timeout`` refuses the client with 0x88 Server
    unavailable (v3 3) — not sooner, not never [MQTT-3.1.4-2, MQTT-3.2.2-6]."""
    hub, backend = _hub(timeout=2.0)
    backend.down = True
    client = _connect(hub, "c", level, username="alice", password=b"apw")
    hub.clock.advance(1.9)
    assert client.received() == []
    hub.clock.advance(0.2)
    assert _ack(client).reason_code == (0x88 if level == 5 else 3)
    backend.down = False
    assert _join(hub, "c2", level) is not None  # it answers again


def test_fail_open_lets_clients_through() -> None:
    """With ``fail_open`` a dead backend lets clients and their actions through
    [MQTT-3.1.4-2]."""
    hub, backend = _hub(timeout=1.0, fail_open=True)
    backend.down = True
    client = _connect(hub, "c", username="alice", password=b"whatever")
    hub.clock.advance(1.0)
    assert _ack(client).reason_code == 0
    client.send(Publish("any/topic", b"x", 1, packet_id=1))
    assert [p.reason_code for p in client.received() if isinstance(p, PubAck)] == [0x10]


def test_backend_dying_later_refuses_topics() -> None:
    """Once a client's rules expire and the backend cannot give them again, its publishes and
    subscriptions are refused after the timeout, and it receives nothing [MQTT-3.1.4-2,
    MQTT-3.3.4-1]."""
    hub, backend = _hub(cache_ttl=10, timeout=2.0, retry_after=5.0)
    client = _join(hub)
    client.send(Subscribe(1, (Subscription("alice/#", 0),)))
    client.received()
    publisher = _join(hub, "p", username="alice")
    backend.down = True
    hub.clock.advance(11)
    publisher.send(Publish("alice/x", b"1", 1, packet_id=1))
    assert publisher.received() == []  # waiting for the backend
    hub.clock.advance(2)
    assert [p.reason_code for p in publisher.received() if isinstance(p, PubAck)] == [0x87]
    # the subscriber's stale rules were refetched in the background and failed: nothing
    hub.clock.advance(0)
    client.send(Subscribe(2, (Subscription("public/#", 0),)))
    assert [p.reason_codes for p in client.received() if isinstance(p, SubAck)] == [(0x87,)]
    assert backend.may_receive(client.connection.client, "alice/x") is False
    assert not client.closed and not publisher.closed


def test_a_slow_backend_delays_no_one_else() -> None:
    """While the backend holds one client's authentication, other connected clients publish,
    subscribe and receive at once [MQTT-3.1.4-2, MQTT-3.3.4-1]."""
    hub, backend = _hub(timeout=30)
    sub = _join(hub, "s")
    sub.send(Subscribe(1, (Subscription("alice/#", 0),)))
    sub.received()
    pub = _join(hub, "p")
    backend.holding = True
    waiting = _connect(hub, "w", username="alice", password=b"apw")
    for index in range(10):
        pub.send(Publish(f"alice/{index}", b"x", 1, packet_id=index + 1))
    assert len([p for p in pub.received() if isinstance(p, PubAck)]) == 10
    assert len(_topics(sub)) == 10
    assert waiting.received() == []
    backend.release()
    backend.release()
    assert _ack(waiting).reason_code == 0


def test_may_receive_without_rules_denies_then_asks_the_broker_again() -> None:
    """``may_receive`` must answer at once: a client whose rules are not loaded gets nothing
    (fail closed) while they load, then the broker is told to decide again
    (``acl_changed``) and the next messages arrive [MQTT-3.1.4-2]."""
    hub = InMemoryBroker(start=False)
    backend = MemoryBackend(BackendSettings(), hub.clock)
    hub.broker.hooks.add(backend)  # an authorizer only: AllowAll lets the client in
    hub.broker.start()
    backend.acls["bob"] = {"#": 1}
    changed: List[int] = []
    original = hub.broker.acl_changed

    def spy() -> None:
        changed.append(1)
        original()

    hub.broker.acl_changed = spy  # type: ignore[method-assign]
    client = hub.client(protocol_level=5)
    assert client.connect("b", username="bob").reason_code == 0
    assert backend.calls == []  # AllowAll answered first
    backend.holding = True
    assert backend.may_receive(client.connection.client, "x") is False
    backend.release()
    hub.clock.advance(0)
    assert changed == [1]
    assert backend.may_receive(client.connection.client, "x") is True


def test_reload_refetches_while_using_the_old_rules() -> None:
    """``reload`` marks every client's rules stale: they are used until the new ones arrive,
    so nothing is dropped meanwhile [MQTT-3.1.4-2]."""
    hub, backend = _hub(cache_ttl=3600)
    client = _join(hub)
    info = client.connection.client
    backend.holding = True
    backend.acls["alice"] = {}
    assert backend.reload() is True
    assert backend.may_receive(info, "alice/x") is True  # old rules, refetch started
    backend.release()
    assert backend.may_receive(info, "alice/x") is False


def test_settings_from_mappings_and_urls() -> None:
    """Settings come from plain mappings (comqtt's names understood) or ``--auth-backend``
    URLs, and bad values are refused with the setting's name [MQTT-3.1.4-2]."""
    settings = BackendSettings.from_dict({"auth-mode": 2, "acl-mode": 1, "password-hash": 4,
                                          "hash-key": "", "timeout": "3", "fail-open": "yes"})
    assert (settings.auth_by, settings.acl_by, settings.password_hash, settings.timeout,
            settings.fail_open) == ("client_id", "username", "sha256", 3.0, True)
    kind, redis = backend_settings("redis://:pw@127.0.0.1:6380/2?auth_prefix=a&acl_prefix=b")
    assert kind == "redis"
    assert (redis.host, redis.port, redis.db, redis.password,  # type: ignore[attr-defined]
            redis.auth_prefix, redis.acl_prefix) == ("127.0.0.1", 6380, 2, "pw", "a", "b")
    kind, http = backend_settings("https://auth.example:8443/comqtt?method=get&timeout=1")
    assert kind == "http"
    assert http.auth_url == "https://auth.example:8443/comqtt/auth"  # type: ignore
    assert http.acl_url == "https://auth.example:8443/comqtt/acl"  # type: ignore
    kind, sql = backend_settings("postgresql://u:p%40ss@db:5433/mqtt?auth_table=users")
    assert (kind, sql.engine, sql.host, sql.port, sql.user, sql.password,  # type: ignore
            sql.database, sql.auth_table) == ("sql", "postgresql", "db", 5433, "u", "p@ss",
                                              "mqtt", "users")
    assert backend_settings("mariadb://root@localhost/x")[1].port == 3306  # type: ignore
    for url, problem in (("ftp://x", "unknown backend"),
                         ("redis://h/x?timeout=1", "database number"),
                         ("redis://h/0?colour=red", "unknown setting 'colour'"),
                         ("mysql://h/db?auth_table=a;drop", "not a plain SQL identifier"),
                         ("http://h/?method=put", "method"),
                         ("redis://h/0?password_hash=hmac-sha1", "needs a hash_key"),
                         ("redis://h/0?auth_by=email", "auth_by")):
        with pytest.raises(ValueError, match=problem):
            backend_settings(url)


# -- twisted.cred ---------------------------------------------------------------------------


@levels
def test_cred_checker_authenticator(level: int) -> None:
    """Any twisted.cred checker of user names and passwords authenticates: the right password
    is accepted, a wrong one or an unknown user gets 0x86 (v3 4), no user name leaves the
    decision to the next authenticator [MQTT-3.1.4-2, MQTT-3.2.2-6]."""
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"wonderland")
    hub = InMemoryBroker(authenticator=CredAuthenticator([checker]))
    assert hub.client(level).connect("a", username="alice",
                                     password=b"wonderland").reason_code == 0
    for fields in ({"username": "alice", "password": b"x"}, {"username": "bob",
                                                              "password": b"wonderland"}):
        assert hub.client(level).connect("b", **fields).reason_code == (0x86 if level == 5
                                                                         else 4)
    assert CredAuthenticator([checker]).authenticate(
        ConnectRequest(ClientInfo("c"), None)) is None


def test_cred_credentials_compare_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The credentials given to checkers compare passwords with ``hmac.compare_digest``
    [MQTT-3.1.4-2]."""
    import twisted_mqtt.auth.cred as cred

    calls: List[Any] = []
    original = cred.hmac.compare_digest
    monkeypatch.setattr(cred.hmac, "compare_digest",
                        lambda a, b: calls.append(1) or original(a, b))
    credentials = UsernamePassword(b"u", b"pw")
    assert credentials.checkPassword(b"pw") and not credentials.checkPassword("px")
    assert len(calls) == 2


def _options(*argv: str) -> Any:
    from twisted_mqtt.tap import Options

    options = Options()
    options.parseOptions(list(argv))
    return options


def test_command_line_auth_options(tmp_path: Path) -> None:
    """``--auth memory:``/``file:`` (Twisted's strcred), ``--auth-ledger`` and
    ``--auth-backend`` install their hooks in that order; ``--allow-anonymous`` beside them
    accepts only clients without credentials; bad values are usage errors [MQTT-3.1.4-2]."""
    from twisted.internet.testing import MemoryReactorClock

    from twisted_mqtt.tap import auth_hooks, makeService

    ledger = tmp_path / "ledger.yaml"
    ledger.write_text("auth: [{username: carol, password: cpw, allow: true}]\n")
    passwd = tmp_path / "passwd"
    passwd.write_text("dave:dpw\n")
    options = _options("--auth", "memory:alice:apw", "--auth", f"file:{passwd}",
                       "--auth-ledger", str(ledger), "--allow-anonymous",
                       "--auth-backend", "http://127.0.0.1:1/x?timeout=1")
    hooks = auth_hooks(options, MemoryReactorClock())
    assert [type(h).__name__ for h in hooks] == ["CredAuthenticator", "Ledger", "HTTPAuth"]
    service = makeService(options, MemoryReactorClock())
    installed = list(service.broker.hooks)
    assert [type(h).__name__ for h in installed] == ["CredAuthenticator", "Ledger",
                                                    "HTTPAuth", "Anonymous"]
    authenticate = service.broker.hooks.authenticate
    for user, password, expected in (("alice", b"apw", 0), ("dave", b"dpw", 0),
                                     ("carol", b"cpw", 0), (None, None, 0),
                                     ("alice", b"bad", 0x86)):
        request = ConnectRequest(ClientInfo("c", user, "10.0.0.1"), password)
        answer = authenticate(request)
        if isinstance(answer, Deferred):
            results: List[Any] = []
            answer.addBoth(results.append)
            answer = results[0] if results else "pending"
        if password == b"bad":
            assert answer == "pending"  # the HTTP backend (never answering here) is asked last
        else:
            assert answer == expected, (user, answer)
    installed[2].close()
    for argv, problem in ((["--auth-ledger", str(tmp_path / "missing")], "cannot read"),
                          (["--auth-backend", "gopher://x"], "unknown backend"),
                          (["--auth", "nonsense:x"], "not recognized")):
        with pytest.raises(usage.UsageError, match=problem):
            _options(*argv)


def test_defaults_without_auth_configuration() -> None:
    """Without auth options the command line keeps LocalOnly (AllowAll with
    --allow-anonymous), and a fake reactor gets no SIGHUP handler [MQTT-3.1.4-2]."""
    import signal

    from twisted.internet.testing import MemoryReactorClock

    from twisted_mqtt.tap import install_reload_signal, makeService

    before = signal.getsignal(signal.SIGHUP)
    service = makeService(_options(), MemoryReactorClock())
    assert [type(h) for h in service.broker.hooks] == [LocalOnly]
    service = makeService(_options("--allow-anonymous"), MemoryReactorClock())
    assert [type(h) for h in service.broker.hooks] == [AllowAll]
    assert signal.getsignal(signal.SIGHUP) is before
    assert install_reload_signal(service, MemoryReactorClock()) is False
    assert Anonymous().authenticate(ConnectRequest(ClientInfo("c", "u"), None)) is None


def test_hooks_provide_their_interfaces() -> None:
    """Every auth hook shipped provides the interfaces it claims, method by method
    [MQTT-3.1.4-2]."""
    from twisted.internet.testing import MemoryReactorClock
    from zope.interface.verify import verifyObject

    from twisted_mqtt.auth.backends.http import HTTPAuth, HTTPSettings
    from twisted_mqtt.auth.ledger import Ledger
    from twisted_mqtt.interfaces import IAuthenticator, IAuthorizer

    checker = InMemoryUsernamePasswordDatabaseDontUse(a=b"b")
    http = HTTPAuth(HTTPSettings(), reactor=MemoryReactorClock())
    for hook in (Ledger.from_text("auth: []"), MemoryBackend(), http):
        assert verifyObject(IAuthenticator, hook) and verifyObject(IAuthorizer, hook)
    for authenticator in (CredAuthenticator([checker]), Anonymous()):
        assert verifyObject(IAuthenticator, authenticator)
    http.close()


def test_cited_labels() -> None:
    check_cited_labels(sys.modules[__name__], every_test=True)

