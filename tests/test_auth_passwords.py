"""Stored-password schemes, constant-time comparison, the bcrypt thread pool, and the rule
helpers (patterns, filters, the most-specific-filter decision, the blacklist).

Wrong credentials must be told apart only by their CONNACK code, after a comparison whose time
does not depend on where the strings differ [MQTT-3.1.4-2].
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from tests.auth_helpers import FakeReactor, FakeThreadPool
from tests.spec import check_cited_labels
from twisted_mqtt.auth import passwords
from twisted_mqtt.auth.passwords import (
    PasswordVerifier,
    ServerBusy,
    check_password,
    hash_password,
    is_hashed,
    is_slow,
    normalise_scheme,
    scheme_of,
)
from twisted_mqtt.auth.rules import (
    Access,
    Blacklist,
    decide,
    filter_matches,
    parse_access,
    parse_rules,
    pattern_matches,
    remote_matches,
)
from twisted_mqtt.interfaces import ClientInfo

KEY = "s3cret-key"


def _results(deferred: Deferred[Any]) -> List[Any]:
    got: List[Any] = []
    deferred.addBoth(got.append)
    return got


# -- schemes ------------------------------------------------------------------------------------

UNSALTED = {
    "md5": hashlib.md5(b"pw").hexdigest(),
    "sha1": hashlib.sha1(b"pw").hexdigest(),
    "sha256": hashlib.sha256(b"pw").hexdigest(),
    "sha512": hashlib.sha512(b"pw").hexdigest(),
    "hmac-sha1": hmac.new(KEY.encode(), b"pw", hashlib.sha1).hexdigest(),
    "hmac-sha256": hmac.new(KEY.encode(), b"pw", hashlib.sha256).hexdigest(),
    "hmac-sha512": hmac.new(KEY.encode(), b"pw", hashlib.sha512).hexdigest(),
    "plain": "pw",
}


@pytest.mark.parametrize("scheme", sorted(UNSALTED))
def test_comqtt_schemes(scheme: str) -> None:
    """comqtt's unsalted schemes (hex digests, HMAC with a configured key) accept the right
    password only [MQTT-3.1.4-2]; hash_password makes the same strings."""
    stored = UNSALTED[scheme]
    assert hash_password("pw", scheme, key=KEY) == stored
    assert check_password(stored, b"pw", scheme, KEY)
    assert not check_password(stored, b"pw2", scheme, KEY)
    assert not check_password(stored, None, scheme, KEY)
    if scheme.startswith("hmac-"):
        assert not check_password(stored, b"pw", scheme, "other key")
    else:  # upper-case hex from a database still matches
        assert check_password(stored.upper() if scheme != "plain" else stored, b"pw", scheme)


def test_comqtt_numbers_and_spellings() -> None:
    """comqtt's password-hash numbers 0-8 and other spellings name the same schemes
    [MQTT-3.1.4-2]."""
    assert [normalise_scheme(n) for n in range(9)] == [
        "plain", "bcrypt", "md5", "sha1", "sha256", "sha512", "hmac-sha1", "hmac-sha256",
        "hmac-sha512"]
    assert normalise_scheme("HMAC_SHA256") == "hmac-sha256"
    assert normalise_scheme("none") == "plain"
    assert normalise_scheme("7") == "hmac-sha256"
    with pytest.raises(ValueError, match="unknown password hash"):
        normalise_scheme("rot13")
    with pytest.raises(ValueError):
        normalise_scheme(9)


def test_bcrypt() -> None:
    """bcrypt hashes ($2b$, and $2a$/$2y$ as other tools write them) verify the right
    password only; a password longer than bcrypt's 72 bytes never matches [MQTT-3.1.4-2]."""
    stored = hash_password("pw", "bcrypt", rounds=4)
    assert stored.startswith("$2b$04$") and scheme_of(stored) == "bcrypt" and is_slow(stored)
    assert check_password(stored, b"pw") and check_password(stored, b"pw", "bcrypt")
    assert not check_password(stored, b"pw!")
    for prefix in ("$2a$", "$2y$"):
        assert check_password(prefix + stored[4:], b"pw")
    long_password = b"x" * 73
    long_stored = hash_password(b"x" * 72, "bcrypt", rounds=4)
    assert check_password(long_stored, b"x" * 72)
    assert not check_password(long_stored, long_password)
    assert not check_password("not a hash", b"pw", "bcrypt")


def test_pbkdf2_django_format() -> None:
    """``pbkdf2_sha256$iterations$salt$base64`` (Django's format) and its SHA-512 variant
    verify [MQTT-3.1.4-2]; the stored string is exactly what hashlib computes."""
    salt = "c2FsdHNhbHQ"
    digest = hashlib.pbkdf2_hmac("sha256", b"pw", salt.encode(), 1000)
    stored = f"pbkdf2_sha256$1000${salt}${base64.b64encode(digest).decode()}"
    assert hash_password("pw", "pbkdf2_sha256", rounds=1000, salt=salt.encode()) == stored
    assert scheme_of(stored) == "pbkdf2" and is_slow(stored) and is_hashed(stored)
    assert check_password(stored, b"pw") and not check_password(stored, b"pW")
    made = hash_password("pw", "pbkdf2_sha512", rounds=1000)
    assert made.startswith("pbkdf2_sha512$1000$") and check_password(made, b"pw")
    assert not check_password("pbkdf2_sha256$x$salt$AAAA", b"pw")
    assert not check_password("pbkdf2_md5$10$salt$AAAA", b"pw")


def test_mosquitto_formats() -> None:
    """Mosquitto's ``$7$`` (PBKDF2-SHA512) and ``$6$`` (salted SHA-512) password-file hashes
    verify, so a mosquitto_passwd file's hashes can be moved into a ledger [MQTT-3.1.4-2]."""
    salt = b"123456789012"
    seven = hash_password("pw", "mosquitto", rounds=101, salt=salt)
    expected = hashlib.pbkdf2_hmac("sha512", b"pw", salt, 101)
    assert seven == (f"$7$101${base64.b64encode(salt).decode()}$"
                     f"{base64.b64encode(expected).decode()}")
    assert check_password(seven, b"pw") and not check_password(seven, b"px")
    six = (f"$6${base64.b64encode(salt).decode()}$"
           f"{base64.b64encode(hashlib.sha512(b'pw' + salt).digest()).decode()}")
    assert scheme_of(six) == "salted-sha512" and not is_slow(six)
    assert check_password(six, b"pw") and not check_password(six, b"px")


def test_mosquitto_passwd_file_hash(tmp_path: Path) -> None:
    """A hash written by the real mosquitto_passwd verifies [MQTT-3.1.4-2]."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd is missing: it comes with Debian's mosquitto, which "
                    ".ci/run installs", pytrace=False)
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "alice", "wonderland"],
                   check=True, capture_output=True, timeout=30)
    stored = path.read_text().strip().split(":", 1)[1]
    assert is_hashed(stored)
    assert check_password(stored, b"wonderland") and not check_password(stored, b"wonder")


def test_every_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every scheme compares through ``hmac.compare_digest`` [MQTT-3.1.4-2]."""
    calls: List[Any] = []
    original = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(passwords.hmac, "compare_digest", spy)
    stored_by_scheme = dict(UNSALTED)
    stored_by_scheme["bcrypt"] = hash_password("pw", "bcrypt", rounds=4)
    stored_by_scheme["pbkdf2"] = hash_password("pw", "pbkdf2_sha256", rounds=10)
    stored_by_scheme["auto"] = hash_password("pw", "mosquitto", rounds=10)
    for scheme, stored in stored_by_scheme.items():
        for given in (b"pw", b"wrong", b""):
            before = len(calls)
            assert check_password(stored, given, scheme, KEY) == (given == b"pw")
            assert len(calls) == before + 1, scheme


# -- the thread pool ----------------------------------------------------------------------------


def test_slow_hashes_go_to_the_pool_fast_ones_do_not() -> None:
    """bcrypt and PBKDF2 checks are queued in the verifier's pool and answered through
    ``callFromThread``; plaintext and unsalted hashes answer at once [MQTT-3.1.4-2]."""
    pool, reactor = FakeThreadPool(), FakeReactor()
    verifier = PasswordVerifier(reactor, pool, nice=0)  # (the fake pool runs in this thread)
    fast = _results(verifier.verify(UNSALTED["sha256"], b"pw", "sha256"))
    assert fast == [True] and not pool.queued
    for stored in (hash_password("pw", "bcrypt", rounds=4),
                   hash_password("pw", "pbkdf2_sha512", rounds=10)):
        right = _results(verifier.verify(stored, b"pw"))
        wrong = _results(verifier.verify(stored, b"nope"))
        assert right == [] and wrong == [] and verifier.pending == 2
        assert pool.run() == 2
        assert right == [True] and wrong == [False] and verifier.pending == 0
    assert pool.ran == ["_in_worker"] * 4


def test_pool_queue_is_bounded() -> None:
    """Past ``max_pending`` waiting checks, a check fails at once with ServerBusy (the client
    gets 0x89, v3 3) instead of growing the queue [MQTT-3.1.4-2]."""
    pool = FakeThreadPool()
    verifier = PasswordVerifier(FakeReactor(), pool, max_pending=3, nice=0)
    stored = hash_password("pw", "bcrypt", rounds=4)
    waiting = [_results(verifier.verify(stored, b"pw")) for _ in range(3)]
    refused = _results(verifier.verify(stored, b"pw"))
    assert len(refused) == 1 and refused[0].check(ServerBusy)
    pool.run()
    assert waiting == [[True]] * 3
    assert _results(verifier.verify(stored, b"pw")) == []  # room again


@pytest_twisted.inlineCallbacks
def test_bcrypt_runs_off_the_reactor_thread(monkeypatch: pytest.MonkeyPatch) -> Any:
    """With a real reactor and pool, bcrypt never runs on the reactor thread but in the
    pool's threads, at a lower priority than the reactor's [MQTT-3.1.4-2]."""
    import bcrypt
    from twisted.internet import reactor

    threads: List[str] = []
    priorities: List[int] = []
    original = bcrypt.hashpw

    def spy(password: bytes, salt: bytes) -> bytes:
        threads.append(threading.current_thread().name)
        priorities.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return original(password, salt)

    monkeypatch.setattr(bcrypt, "hashpw", spy)
    stored = original(b"pw", bcrypt.gensalt(4))
    verifier = PasswordVerifier(reactor, max_threads=1)
    try:
        answers = yield Deferred.fromCoroutine(_gather(verifier, stored))
    finally:
        verifier.stop()
    assert answers == [True, False] * 4
    assert len(threads) == 8
    assert threading.main_thread().name not in threads
    assert all("mqtt-passwords" in name for name in threads), threads
    if sys.platform.startswith("linux"):  # the pool threads run below the reactor's priority
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert all(p == min(19, own + passwords.DEFAULT_NICE) for p in priorities), priorities


async def _gather(verifier: PasswordVerifier, stored: bytes) -> List[bool]:
    from twisted.internet.defer import gatherResults

    checks = []
    for _ in range(4):
        checks += [verifier.verify(stored, b"pw"), verifier.verify(stored, b"px")]
    return list(await gatherResults(checks))


def test_hash_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m twisted_mqtt.auth.passwords`` prints a hash that verifies [MQTT-3.1.4-2]."""
    assert passwords.main(["--scheme", "pbkdf2_sha256", "--rounds", "1000"],
                          read_password=lambda: "hunter2") == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("pbkdf2_sha256$1000$") and check_password(printed, b"hunter2")


# -- rule helpers -------------------------------------------------------------------------------


def test_patterns_mochi_semantics() -> None:
    """Mochi's RString matching: empty and ``*`` match anything, ``x*`` needs at least one
    more character, text without ``*`` must be equal [MQTT-3.1.4-2]."""
    assert pattern_matches("*", "any") and pattern_matches("*", "") and pattern_matches("", "x")
    assert pattern_matches(None, None) and pattern_matches("*", None)
    assert not pattern_matches("no", "any") and not pattern_matches("no", "")
    assert pattern_matches("111.*", "111.0.0.1") and not pattern_matches("111.*", "111.")
    assert pattern_matches("sensor-*-eu", "sensor-12-eu")
    assert not pattern_matches("sensor-*-eu", "sensor-12-us")
    assert not pattern_matches("a.b", "axb")  # no regular expressions


def test_remote_patterns() -> None:
    """Remote addresses: Mochi/comqtt's ``HOST:*`` form, CIDR networks, IPv4-mapped IPv6;
    a Unix-socket peer (no address) matches only an empty or ``*`` pattern [MQTT-3.1.4-2]."""
    assert remote_matches("127.0.0.1:*", "127.0.0.1")
    assert remote_matches("10.0.0.0/8", "10.2.3.4") and not remote_matches("10.0.0.0/8", "11.0.0.1")
    assert remote_matches("192.168.1.*", "::ffff:192.168.1.7")
    assert remote_matches("::1", "::1") and not remote_matches("::1", None)
    assert remote_matches("*", None) and remote_matches(None, None)


def test_filters_and_most_specific_decision() -> None:
    """Rule filters match topics with ``+`` and ``#`` (``a/#`` covers ``a``); of several
    matching filters the longest decides, a deny winning a tie [MQTT-3.1.4-2]."""
    assert filter_matches("a/+/c", "a/b/c") and not filter_matches("a/+/c", "a/b/c/d")
    assert filter_matches("a/#", "a") and filter_matches("#", "$SYS/x")
    assert not filter_matches("a/b", "a") and not filter_matches("t", "t2")
    rules = parse_rules({"#": 1, "updates/#": "deny", "updates/mine": "readwrite"})
    assert decide(rules, "news", False) is True and decide(rules, "news", True) is False
    assert decide(rules, "updates/x", False) is False
    assert decide(rules, "updates/mine", True) is True
    assert decide(parse_rules({"a/+": 3}), "b", False) is None
    assert decide([("x/#", Access.READWRITE), ("x/+", Access.DENY)], "x/y", True) is False


def test_access_values() -> None:
    """Access levels: 0-3 or their names [MQTT-3.1.4-2]."""
    assert [parse_access(v) for v in (0, "1", "write", "READWRITE", "subscribe", "pubsub")] == [
        Access.DENY, Access.READ, Access.WRITE, Access.READWRITE, Access.READ, Access.READWRITE]
    for bad in (4, "rw", True, None, 1.5):
        with pytest.raises(ValueError):
            parse_access(bad)


def test_blacklist() -> None:
    """Blacklist entries match by client id, username and remote address; an entry naming
    nothing is refused rather than banning everyone [MQTT-3.1.4-2]."""
    blacklist = Blacklist.from_config([{"client": "evil-*"}, {"username": "mallory"},
                                       {"remote": "203.0.113.0/24"}])
    assert blacklist.banned(ClientInfo("evil-1"))
    assert blacklist.banned(ClientInfo("ok", username="mallory"))
    assert blacklist.banned(ClientInfo("ok", address="203.0.113.9"))
    assert not blacklist.banned(ClientInfo("ok", username="alice", address="198.51.100.1"))
    with pytest.raises(ValueError, match="give a client"):
        Blacklist.from_config([{}])
    with pytest.raises(ValueError, match="unknown keys"):
        Blacklist.from_config([{"ip": "1.2.3.4"}])


def test_cited_labels() -> None:
    import sys

    check_cited_labels(sys.modules[__name__], every_test=True)
