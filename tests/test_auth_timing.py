"""Refusing an unknown user costs what refusing a known user's wrong password costs: every
authenticator that checks stored passwords (the ledger, the Redis/SQL backends through
``BackendAuth``, the ``--auth file:``/``memory:`` checkers) checks an unknown user's password
against a dummy hash of the same format and cost as its stored ones, through the same path
(slow hashes in the verifier's thread pool), and refuses whatever the result.

No clock is read here: each test records which stored passwords the password check is asked
about (``passwords.check_password``), which is what decides the time a refusal takes.
benchmarks/auth_timing.py measures the times against a running broker [MQTT-3.1.4-2].
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest
from twisted.cred import strcred

from tests.auth_helpers import FakeReactor, FakeThreadPool, MemoryBackend
from tests.spec import check_cited_labels
from twisted_mqtt.auth import ledger as ledger_module
from twisted_mqtt.auth import passwords
from twisted_mqtt.auth.backends import BackendSettings, UserRecord
from twisted_mqtt.auth.cred import CredAuthenticator
from twisted_mqtt.auth.ledger import Ledger
from twisted_mqtt.auth.passwords import PasswordVerifier, dummy_hash, hash_password
from twisted_mqtt.interfaces import ClientInfo, ConnectRequest

BCRYPT_5 = hash_password("s3cret", "bcrypt", rounds=5)
Checks = List[Tuple[str, bytes]]


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Checks:
    """The (stored, given) pairs the password check is asked about; every check answers
    "no match" without hashing (the tests look at what is checked, not at the answer)."""
    asked: Checks = []

    def record(stored: Any, password: Any, scheme: Any = "auto", key: Any = None) -> bool:
        asked.append((stored.decode() if isinstance(stored, bytes) else stored,
                      password or b""))
        return False

    monkeypatch.setattr(passwords, "check_password", record)
    monkeypatch.setattr(ledger_module, "check_password", record)
    return asked


def _verifier() -> Tuple[PasswordVerifier, FakeThreadPool]:
    pool = FakeThreadPool()
    threadpool: Any = pool  # (runs in this thread)
    return PasswordVerifier(FakeReactor(), threadpool, nice=0), pool


def _answer(result: Any, pool: FakeThreadPool) -> Any:
    """What an authenticator answered, once the pool has run what it queued."""
    if not hasattr(result, "addBoth"):
        return result
    answers: List[Any] = []
    result.addBoth(answers.append)
    pool.run()
    assert answers, "no answer after the pool ran"
    return answers[0]


def _request(username: Optional[str], password: bytes = b"guess") -> ConnectRequest:
    return ConnectRequest(ClientInfo("c", username, "10.0.0.9"), password)


def _form(stored: str) -> Tuple[str, ...]:
    """What a check's cost depends on: bcrypt's prefix and cost; PBKDF2's name, iterations
    and salt/hash sizes; ``$6$``'s sizes; else the kind of stored password."""
    kind = passwords.scheme_of(stored) or "plain"
    parts = stored.split("$")
    if kind == "bcrypt":
        return (kind, stored[:7], str(len(stored)))
    if stored.startswith("$7$"):
        return ("$7$", parts[2], *(str(len(base64.b64decode(p))) for p in parts[3:]))
    if kind == "pbkdf2":
        return (parts[0], parts[1], str(len(parts[2])), str(len(base64.b64decode(parts[3]))))
    if kind == "salted-sha512":
        return ("$6$", *(str(len(base64.b64decode(p))) for p in parts[2:]))
    return (kind,)


# -- the dummy hash ------------------------------------------------------------------------------


@pytest.mark.parametrize("like", [
    BCRYPT_5,
    hash_password("s3cret", "bcrypt", rounds=4).replace("$2b$", "$2a$"),
    hash_password("s3cret", "pbkdf2_sha256", rounds=1000),
    hash_password("s3cret", "pbkdf2_sha512", rounds=2000),
    hash_password("s3cret", "mosquitto"),
    hash_password("s3cret", "mosquitto", rounds=5000),
    hash_password("s3cret", "mosquitto_sha512"),
])
def test_a_dummy_hash_has_the_format_and_cost_of_the_stored_one(like: str) -> None:
    """A dummy hash keeps what the check's cost depends on (bcrypt cost, PBKDF2 iterations
    and sizes) with a fresh salt and hash, and no password matches it [MQTT-3.1.4-2]."""
    dummy = dummy_hash(like)
    assert dummy != like and _form(dummy) == _form(like)
    assert passwords.is_slow(dummy) == passwords.is_slow(like)
    assert not passwords.check_password(dummy, b"s3cret")


def test_dummy_hashes_without_a_stored_one_and_for_unsalted_schemes() -> None:
    """Without a stored password to copy, a dummy hash takes the scheme's default cost
    (bcrypt 12, PBKDF2 600,000 iterations, what ``python -m twisted_mqtt.auth.passwords``
    writes); the unsalted schemes get a digest of their length; the most common form among
    many stored passwords wins [MQTT-3.1.4-2]."""
    assert _form(dummy_hash()) == ("bcrypt", "$2b$12$", "60")
    assert _form(dummy_hash(None, "bcrypt")) == ("bcrypt", "$2b$12$", "60")
    assert _form(dummy_hash(None, "pbkdf2"))[:2] == ("pbkdf2_sha256", "600000")
    for scheme, size in (("md5", 32), ("sha1", 40), ("sha256", 64), ("hmac-sha512", 128)):
        assert len(dummy_hash(None, scheme)) == size
        assert len(dummy_hash("ab" * (size // 2), scheme)) == size
    assert passwords.scheme_of(dummy_hash("plaintext")) is None
    seven = hash_password("x", "mosquitto")
    mixed = [BCRYPT_5, seven, hash_password("y", "mosquitto")]
    assert _form(passwords.dummy_hash_for(mixed) or "") == _form(seven)
    assert passwords.dummy_hash_for([]) is None


# -- the ledger -----------------------------------------------------------------------------------


def test_ledger_checks_an_unknown_users_password_against_a_dummy_hash(checks: Checks) -> None:
    """An unknown user, and a user entry without a password, get their password checked
    against a dummy hash of the ledger's format and cost, in the thread pool, before 0x86 —
    as a known user's wrong password is checked against the user's hash [MQTT-3.1.4-2]."""
    verifier, pool = _verifier()
    ledger = Ledger.from_text(json.dumps({
        "users": {"alice": {"password": BCRYPT_5}, "mochi": {"acl": {"#": 3}}},
        "auth": [{"remote": "127.0.0.1", "allow": True}],
    }), verifier=verifier)
    assert _answer(ledger.authenticate(_request("alice")), pool) == 0x86
    assert checks == [(BCRYPT_5, b"guess")]
    for name in ("mallory", "mochi"):
        del checks[:]
        assert _answer(ledger.authenticate(_request(name)), pool) == 0x86
        [(stored, given)] = checks
        assert stored != BCRYPT_5 and _form(stored) == _form(BCRYPT_5) and given == b"guess"
    assert set(pool.ran) == {"_in_worker"}  # never on the reactor thread


def test_ledger_rule_passwords_and_ledgers_without_passwords(checks: Checks) -> None:
    """A ledger whose passwords are in its auth rules gives unknown users a dummy like them;
    one refusal checks one password (a wrong rule password is not checked twice); a ledger
    without passwords checks none [MQTT-3.1.4-2]."""
    verifier, pool = _verifier()
    seven = hash_password("pw", "mosquitto", rounds=3000)
    ledger = Ledger.from_text(json.dumps({
        "auth": [{"username": "bob", "password": seven, "allow": True}]}), verifier=verifier)
    assert _answer(ledger.authenticate(_request("bob")), pool) == 0x86
    assert _answer(ledger.authenticate(_request("eve")), pool) == 0x86
    assert [stored == seven for stored, _ in checks] == [True, False]
    assert _form(checks[1][0]) == _form(seven)
    del checks[:]
    open_ledger = Ledger.from_text("auth: [{remote: 127.0.0.1, allow: true}]\n")
    assert open_ledger.authenticate(_request("eve")) == 0x86 and checks == []


# -- the backends (Redis, SQL: BackendAuth) --------------------------------------------------------


def test_backend_checks_an_unknown_users_password_against_a_dummy_hash(checks: Checks) -> None:
    """A backend that finds no user checks the password against a dummy hash: at the
    scheme's default cost until it has fetched a stored password, then like the last one
    fetched, or like ``dummy_like`` when set; in the thread pool, then 0x86 [MQTT-3.1.4-2]."""
    verifier, pool = _verifier()
    backend = MemoryBackend(BackendSettings(password_hash="bcrypt"), verifier=verifier)
    backend.users["alice"] = UserRecord(BCRYPT_5)
    assert _answer(backend.authenticate(_request("nobody")), pool) == 0x86
    assert _form(checks[-1][0]) == ("bcrypt", "$2b$12$", "60")
    assert _answer(backend.authenticate(_request("alice")), pool) == 0x86
    assert checks[-1] == (BCRYPT_5, b"guess")
    assert _answer(backend.authenticate(_request("nobody")), pool) == 0x86
    assert checks[-1][0] != BCRYPT_5 and _form(checks[-1][0]) == _form(BCRYPT_5)
    assert set(pool.ran) == {"_in_worker"} and len(pool.ran) == 3

    configured = hash_password("x", "mosquitto", rounds=7000)
    backend = MemoryBackend(BackendSettings(password_hash="auto", dummy_like=configured),
                            verifier=verifier)
    backend.users["alice"] = UserRecord(BCRYPT_5)
    for name in ("nobody", "alice", "nobody"):
        assert _answer(backend.authenticate(_request(name)), pool) == 0x86
    assert [_form(stored) for stored, _ in checks[-3:]] == [
        _form(configured), _form(BCRYPT_5), _form(configured)]


def test_backend_unsalted_schemes_check_a_dummy_digest(checks: Checks) -> None:
    """With comqtt's unsalted schemes the dummy is a digest of the scheme's length, checked
    at once (no pool, as for known users) [MQTT-3.1.4-2]."""
    verifier, pool = _verifier()
    backend = MemoryBackend(BackendSettings(password_hash="sha256"), verifier=verifier)
    assert _answer(backend.authenticate(_request("nobody")), pool) == 0x86
    [(stored, _given)] = checks
    assert len(stored) == 64 and not pool.ran


# -- twisted.cred: --auth file: and memory: --------------------------------------------------------


def _mosquitto_passwd(*args: str) -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd is missing: it comes with Debian's mosquitto, which "
                    ".ci/run installs", pytrace=False)
    subprocess.run(["mosquitto_passwd", *args], check=True, capture_output=True, timeout=30)


def test_auth_file_checks_an_unknown_users_password_against_a_dummy_hash(
        tmp_path: Path, checks: Checks) -> None:
    """``--auth file:`` over a mosquitto_passwd file: an unknown user's password is checked
    against a ``$7$`` dummy of the file's iterations and sizes, in the pool, then refused with
    0x86, as a known user's wrong password is [MQTT-3.1.4-2]."""
    path = tmp_path / "passwd"
    _mosquitto_passwd("-c", "-b", str(path), "alice", "wonderland")
    stored = path.read_text().strip().split(":", 1)[1]
    verifier, pool = _verifier()
    authenticator = CredAuthenticator([strcred.makeChecker(f"file:{path}")], verifier)
    assert _answer(authenticator.authenticate(_request("alice")), pool) == 0x86
    assert _answer(authenticator.authenticate(_request("mallory")), pool) == 0x86
    assert checks[0] == (stored, b"guess")
    assert checks[1][0] != stored and _form(checks[1][0]) == _form(stored) == ("$7$", "101",
                                                                               "12", "64")
    assert len(checks) == 2 and pool.ran == ["_in_worker"] * 2


def test_auth_memory_checks_an_unknown_users_password_too(checks: Checks) -> None:
    """``--auth memory:U:P``: an unknown user's password is compared with a dummy plaintext
    password, as a known user's is with the stored one [MQTT-3.1.4-2]."""
    verifier, pool = _verifier()
    authenticator = CredAuthenticator([strcred.makeChecker("memory:alice:apw")], verifier)
    assert _answer(authenticator.authenticate(_request("alice")), pool) == 0x86
    assert _answer(authenticator.authenticate(_request("mallory")), pool) == 0x86
    assert checks[0] == ("apw", b"guess")
    assert checks[1][0] != "apw" and passwords.scheme_of(checks[1][0]) is None
    assert len(checks) == 2 and not pool.ran


def test_cited_labels() -> None:
    check_cited_labels(sys.modules[__name__], every_test=True)
