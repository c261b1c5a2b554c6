"""Stored passwords: checking one against what a client sent, in constant time, and making them.

Self-describing formats, recognised wherever a stored password is read ("auto"):

=====================================================  ==========================================
``$2b$12$<53 characters>`` (also ``$2a$``, ``$2y$``)   bcrypt (the ``bcrypt`` library)
``pbkdf2_sha256$<iterations>$<salt>$<base64 hash>``    PBKDF2-HMAC-SHA256, Django's format
``pbkdf2_sha512$<iterations>$<salt>$<base64 hash>``    PBKDF2-HMAC-SHA512, the same format
``$7$<iterations>$<base64 salt>$<base64 hash>``        PBKDF2-HMAC-SHA512, ``mosquitto_passwd``'s
``$6$<base64 salt>$<base64 hash>``                     SHA-512 of password + salt, Mosquitto 1.x
=====================================================  ==========================================

Anything else is a plaintext password.  The backends' ``password_hash`` setting names comqtt's
unsalted schemes instead: ``plain``, ``md5``, ``sha1``, ``sha256``, ``sha512`` (hex digests) and
``hmac-sha1``, ``hmac-sha256``, ``hmac-sha512`` (hex HMAC with a configured key); ``bcrypt`` and
``auto`` take the formats above.

Every comparison goes through ``hmac.compare_digest``.  bcrypt and PBKDF2 are slow on purpose, so
``PasswordVerifier`` runs them in a small thread pool of their own, never on the reactor thread;
its size (one thread less than the machine has cores, at least one) and its queue are bounded, and
its threads run at the lowest priority (nice 19, Linux), so a flood of wrong passwords queues up
there instead of taking CPU from connected clients.

``python -m twisted_mqtt.auth.passwords [--scheme bcrypt|pbkdf2_sha256|pbkdf2_sha512]`` prints
the hash of a password read from the terminal (or standard input).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import sys
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

log = Logger()

SCHEMES = ("auto", "plain", "bcrypt", "pbkdf2", "md5", "sha1", "sha256", "sha512",
           "hmac-sha1", "hmac-sha256", "hmac-sha512")
"""The values of a backend's ``password_hash`` setting."""

COMQTT_HASH_TYPES = {0: "plain", 1: "bcrypt", 2: "md5", 3: "sha1", 4: "sha256", 5: "sha512",
                     6: "hmac-sha1", 7: "hmac-sha256", 8: "hmac-sha512"}
"""comqtt's ``password-hash`` numbers."""

BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
BCRYPT_MAX_PASSWORD = 72
"""bcrypt uses at most 72 bytes of a password; a longer password never matches a bcrypt hash
here (the ``bcrypt`` library refuses to truncate silently)."""
DEFAULT_BCRYPT_ROUNDS = 12
DEFAULT_PBKDF2_ITERATIONS = 600_000
DEFAULT_NICE = 19
MAX_PENDING = 1024
"""Slow verifications waiting for a pool thread, beyond which clients are answered "server busy"
(0x89) at once."""

_DIGESTS = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256,
            "sha512": hashlib.sha512}


class ServerBusy(Exception):
    """Too many slow password verifications are waiting: answer the client 0x89 (v3: 3)."""


def normalise_scheme(scheme: Union[str, int, None]) -> str:
    """A ``password_hash`` setting as one of ``SCHEMES``: comqtt's numbers (0-8) and spellings
    such as ``none``, ``hmac_sha256`` or ``HMAC-SHA256`` are accepted; ValueError otherwise."""
    if scheme is None:
        return "auto"
    if isinstance(scheme, int) and not isinstance(scheme, bool):
        if scheme in COMQTT_HASH_TYPES:
            return COMQTT_HASH_TYPES[scheme]
        raise ValueError(f"password hash must be 0-8 (comqtt's numbers), not {scheme}")
    text = str(scheme).strip().lower().replace("_", "-")
    if text.isdigit():
        return normalise_scheme(int(text))
    text = {"none": "plain", "plaintext": "plain", "hmacsha1": "hmac-sha1",
            "hmacsha256": "hmac-sha256", "hmacsha512": "hmac-sha512",
            "pbkdf2-sha256": "pbkdf2", "pbkdf2-sha512": "pbkdf2"}.get(text, text)
    if text not in SCHEMES:
        raise ValueError(f"unknown password hash {scheme!r}; use one of {', '.join(SCHEMES)}")
    return text


def scheme_of(stored: str) -> Optional[str]:
    """The self-describing format of a stored password: ``bcrypt``, ``pbkdf2`` (Django's or
    Mosquitto's ``$7$``), ``salted-sha512`` (Mosquitto's ``$6$``), or None (plaintext)."""
    if stored.startswith(BCRYPT_PREFIXES):
        return "bcrypt"
    if stored.startswith(("pbkdf2_sha256$", "pbkdf2_sha512$", "$7$")):
        return "pbkdf2"
    if stored.startswith("$6$"):
        return "salted-sha512"
    return None


def is_hashed(stored: str) -> bool:
    """Whether a stored password is in one of the self-describing hashed formats."""
    return scheme_of(stored) is not None


def is_slow(stored: str, scheme: str = "auto") -> bool:
    """Whether checking against ``stored`` is deliberately slow (bcrypt, PBKDF2), so belongs in
    the thread pool."""
    scheme = normalise_scheme(scheme)
    if scheme == "auto":
        return scheme_of(stored) in ("bcrypt", "pbkdf2")
    return scheme in ("bcrypt", "pbkdf2")


def _bytes(value: Union[str, bytes, None]) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _same(a: bytes, b: bytes) -> bool:
    """Constant-time equality, whatever the lengths (both are hashed to 32 bytes first)."""
    return hmac.compare_digest(hashlib.sha256(a).digest(), hashlib.sha256(b).digest())


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _check_bcrypt(stored: str, password: bytes) -> bool:
    import bcrypt

    if len(password) > BCRYPT_MAX_PASSWORD or not stored.startswith(BCRYPT_PREFIXES):
        return False
    try:
        computed = bcrypt.hashpw(password, stored.encode("ascii"))
    except ValueError:
        return False
    return hmac.compare_digest(computed, stored.encode("ascii"))


def _check_pbkdf2(stored: str, password: bytes) -> bool:
    parts = stored.split("$")
    try:
        if stored.startswith("$7$"):  # $7$iterations$salt_b64$hash_b64
            _, _, iterations, salt_b64, hash_b64 = parts
            digest, salt = "sha512", _b64decode(salt_b64)
        else:  # pbkdf2_sha256$iterations$salt$hash_b64
            algorithm, iterations, salt_text, hash_b64 = parts
            digest, salt = algorithm[len("pbkdf2_"):], salt_text.encode("utf-8")
        expected = _b64decode(hash_b64)
        rounds = int(iterations)
    except (ValueError, binascii.Error):
        return False
    if digest not in ("sha256", "sha512") or not 0 < rounds <= 100_000_000 or not expected:
        return False
    computed = hashlib.pbkdf2_hmac(digest, password, salt, rounds, len(expected))
    return hmac.compare_digest(computed, expected)


def _check_salted_sha512(stored: str, password: bytes) -> bool:
    parts = stored.split("$")
    try:
        _, _, salt_b64, hash_b64 = parts
        salt, expected = _b64decode(salt_b64), _b64decode(hash_b64)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(hashlib.sha512(password + salt).digest(), expected)


def check_password(stored: Union[str, bytes], password: Union[str, bytes, None],
                   scheme: Union[str, int, None] = "auto",
                   key: Union[str, bytes, None] = None) -> bool:
    """Whether ``password`` (what the client sent; None as empty) matches ``stored`` under
    ``scheme``, compared in constant time.  Synchronous: run slow schemes through
    ``PasswordVerifier``."""
    scheme = normalise_scheme(scheme)
    stored_text = stored.decode("utf-8", "replace") if isinstance(stored, bytes) else stored
    given = _bytes(password)
    if scheme == "auto":
        scheme = scheme_of(stored_text) or "plain"
    if scheme == "plain":
        return _same(_bytes(stored_text), given)
    if scheme == "bcrypt":
        return _check_bcrypt(stored_text, given)
    if scheme == "pbkdf2":
        return _check_pbkdf2(stored_text, given)
    if scheme == "salted-sha512":
        return _check_salted_sha512(stored_text, given)
    if scheme.startswith("hmac-"):
        computed = hmac.new(_bytes(key), given, _DIGESTS[scheme[5:]]).hexdigest()
    else:
        computed = _DIGESTS[scheme](given).hexdigest()
    return _same(computed.encode("ascii"), stored_text.strip().lower().encode("utf-8"))


_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_HEX_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}


def _random_b64(size: int) -> str:
    return base64.b64encode(os.urandom(size)).decode("ascii")


def _b64_size(text: str, default: int) -> int:
    """How many bytes the base64 ``text`` holds (``default`` if it is not base64)."""
    try:
        return len(_b64decode(text)) or default
    except (ValueError, binascii.Error):
        return default


def _dummy_bcrypt(like: str) -> str:
    import bcrypt

    prefix, cost = "2b", DEFAULT_BCRYPT_ROUNDS
    if like.startswith(BCRYPT_PREFIXES) and like[4:6].isdigit() and 4 <= int(like[4:6]) <= 31:
        prefix, cost = like[1:3], int(like[4:6])
    salt = bcrypt.gensalt(cost, prefix.encode("ascii")).decode("ascii")
    return salt + "".join(_BCRYPT_ALPHABET[byte % 64] for byte in os.urandom(31))


def _dummy_pbkdf2(like: str) -> str:
    parts = like.split("$")
    if like.startswith("$7$") and len(parts) == 5 and parts[2].isdigit():
        return (f"$7${parts[2]}${_random_b64(_b64_size(parts[3], 12))}$"
                f"{_random_b64(_b64_size(parts[4], 64))}")
    if like.startswith(("pbkdf2_sha256$", "pbkdf2_sha512$")) and len(parts) == 4 and (
            parts[1].isdigit()):
        salt = os.urandom(len(parts[2]) or 12).hex()[:len(parts[2]) or 12]
        return f"{parts[0]}${parts[1]}${salt}${_random_b64(_b64_size(parts[3], 32))}"
    return f"pbkdf2_sha256${DEFAULT_PBKDF2_ITERATIONS}${os.urandom(6).hex()}${_random_b64(32)}"


def dummy_hash(like: Optional[str] = None, scheme: Union[str, int, None] = "auto") -> str:
    """A stored password of the format and cost of ``like`` (one of the same store's stored
    passwords) under ``scheme``, with a random salt and hash: checking a password against it
    costs what checking against ``like`` does (bcrypt: same cost; PBKDF2 and ``$7$``: same
    iterations and lengths; ``$6$``, plaintext and unsalted digests: same form).  Without
    ``like``: bcrypt at cost 12 (``auto``, ``bcrypt``), PBKDF2-SHA256 at 600,000 iterations
    (``pbkdf2``), else the scheme's form.  An unknown user's password is checked against one,
    and refused whatever the result, so that refusing an unknown user takes as long as
    refusing a known user's wrong password."""
    scheme = normalise_scheme(scheme)
    kind = scheme
    if scheme == "auto":
        kind = "bcrypt" if like is None else scheme_of(like) or "plain"
    like = like or ""
    if kind == "bcrypt":
        return _dummy_bcrypt(like)
    if kind == "pbkdf2":
        return _dummy_pbkdf2(like)
    if kind == "salted-sha512":
        parts = like.split("$")
        salt_size = _b64_size(parts[2], 12) if len(parts) == 4 else 12
        return f"$6${_random_b64(salt_size)}${_random_b64(64)}"
    digest = kind[5:] if kind.startswith("hmac-") else kind
    if digest in _HEX_LENGTHS:
        return os.urandom(_HEX_LENGTHS[digest] // 2).hex()
    return os.urandom(16).hex()  # (plaintext: both sides are hashed before comparing)


def dummy_hash_for(stored: Iterable[str], scheme: Union[str, int, None] = "auto") -> Optional[str]:
    """``dummy_hash`` like the most common format and cost among ``stored`` (a store's
    passwords; the first seen wins a tie), or None when there are none."""
    counts: Dict[Tuple[str, ...], int] = {}
    first: Dict[Tuple[str, ...], str] = {}
    for password in stored:
        key = _cost_signature(password)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, password)
    if not counts:
        return None
    best = max(counts, key=lambda key: counts[key])  # (max keeps the first of equals)
    return dummy_hash(first[best], scheme)


def _cost_signature(stored: str) -> Tuple[str, ...]:
    """What a check's cost depends on: the format and its cost fields."""
    kind = scheme_of(stored)
    if kind == "bcrypt":
        return (kind, stored[:7])
    if kind == "pbkdf2":
        parts = stored.split("$")
        if stored.startswith("$7$"):  # $7$iterations$salt$hash
            return (kind, "$7$", parts[2], str(len(parts[-1])))
        return (kind, parts[0], parts[1], str(len(parts[-1])))  # name$iterations$salt$hash
    return (kind or "plain",)


def hash_password(password: Union[str, bytes], scheme: str = "bcrypt",
                  key: Union[str, bytes, None] = None, rounds: Optional[int] = None,
                  salt: Optional[bytes] = None) -> str:
    """The stored form of ``password``: ``bcrypt`` (``rounds`` is its cost, default 12),
    ``pbkdf2_sha256``/``pbkdf2_sha512`` (``rounds`` iterations, default 600,000), ``mosquitto``
    (``$7$``, PBKDF2-SHA512, 101 iterations unless told), ``mosquitto_sha512`` (``$6$``,
    Mosquitto 1.x's salted SHA-512), or one of comqtt's unsalted schemes."""
    given = _bytes(password)
    if scheme == "bcrypt":
        import bcrypt

        return bcrypt.hashpw(given, bcrypt.gensalt(rounds or DEFAULT_BCRYPT_ROUNDS)).decode()
    if scheme in ("pbkdf2_sha256", "pbkdf2_sha512", "pbkdf2"):
        digest = "sha256" if scheme in ("pbkdf2_sha256", "pbkdf2") else "sha512"
        iterations = rounds or DEFAULT_PBKDF2_ITERATIONS
        salt_text = (salt or base64.b64encode(os.urandom(12))).decode("ascii").replace("$", "")
        computed = hashlib.pbkdf2_hmac(digest, given, salt_text.encode(), iterations)
        return f"pbkdf2_{digest}${iterations}${salt_text}${base64.b64encode(computed).decode()}"
    if scheme == "mosquitto":
        iterations = rounds or 101
        raw_salt = salt or os.urandom(12)
        computed = hashlib.pbkdf2_hmac("sha512", given, raw_salt, iterations)
        return (f"$7${iterations}${base64.b64encode(raw_salt).decode()}$"
                f"{base64.b64encode(computed).decode()}")
    if scheme == "mosquitto_sha512":
        raw_salt = salt or os.urandom(12)
        computed = hashlib.sha512(given + raw_salt).digest()
        return (f"$6${base64.b64encode(raw_salt).decode()}$"
                f"{base64.b64encode(computed).decode()}")
    scheme = normalise_scheme(scheme)
    if scheme == "plain":
        return given.decode("utf-8")
    if scheme.startswith("hmac-"):
        return hmac.new(_bytes(key), given, _DIGESTS[scheme[5:]]).hexdigest()
    if scheme in _DIGESTS:
        return _DIGESTS[scheme](given).hexdigest()
    raise ValueError(f"cannot make a {scheme!r} hash")


_worker = threading.local()


def lower_thread_priority(nice: int) -> bool:
    """Raise the calling thread's nice value by ``nice`` (Linux keeps one per thread; elsewhere
    this would apply to the whole process, so it is not done).  Whether it was done."""
    get_native_id = getattr(threading, "get_native_id", None)
    if not sys.platform.startswith("linux") or get_native_id is None:
        return False
    try:
        tid = get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
        return True
    except OSError:
        return False


def default_threads() -> int:
    """Pool threads for slow hashes: one less than the cores, at least one, so that a flood of
    logins never takes every core from the reactor."""
    return max(1, (os.cpu_count() or 2) - 1)


class PasswordVerifier:
    """Checks passwords, running slow schemes in a bounded thread pool of its own.

    ``reactor`` receives the results (``callFromThread``) and stops the pool at shutdown;
    ``threadpool`` may be given (a test's fake, or a shared pool), else one of ``max_threads``
    threads is started on first use.  At most ``max_pending`` slow checks wait at once; beyond
    that ``verify`` fails at once with ``ServerBusy``.
    """

    def __init__(self, reactor: Any = None, threadpool: Optional[ThreadPool] = None,
                 max_threads: Optional[int] = None, max_pending: int = MAX_PENDING,
                 nice: int = DEFAULT_NICE) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self.max_threads = max_threads or default_threads()
        self.max_pending = max_pending
        self.nice = nice
        """How much lower than the reactor thread the pool's threads run (Linux: a thread's
        nice value), so that when cores are short, routing messages wins over hashing."""
        self.pending = 0
        """Slow checks queued or running."""
        self._owned = False

    @property
    def reactor(self) -> Any:
        """The reactor results are delivered through (the global one unless given)."""
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    @property
    def threadpool(self) -> ThreadPool:
        """The pool slow checks run in, started on first use."""
        if self._threadpool is None:
            pool = ThreadPool(minthreads=0, maxthreads=self.max_threads, name="mqtt-passwords")
            pool.start()
            self._threadpool = pool
            self._owned = True
            self.reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        return self._threadpool

    def verify(self, stored: Union[str, bytes], password: Union[str, bytes, None],
               scheme: Union[str, int, None] = "auto",
               key: Union[str, bytes, None] = None) -> Deferred[bool]:
        """A Deferred firing with whether ``password`` matches ``stored`` (see
        ``check_password``); slow schemes run in the pool, fast ones answer at once."""
        stored_text = stored.decode("utf-8", "replace") if isinstance(stored, bytes) else stored
        if not is_slow(stored_text, normalise_scheme(scheme)):
            try:
                return succeed(check_password(stored_text, password, scheme, key))
            except Exception:
                return fail()
        if self.pending >= self.max_pending:
            return fail(ServerBusy(f"{self.pending} password checks waiting"))
        self.pending += 1
        from twisted.internet.threads import deferToThreadPool

        result: Deferred[bool] = deferToThreadPool(self.reactor, self.threadpool,
                                                   self._in_worker, stored_text, password,
                                                   scheme, key)

        def done(value: Any) -> Any:
            self.pending -= 1
            return value

        return result.addBoth(done)

    def _in_worker(self, stored: str, password: Union[str, bytes, None],
                   scheme: Union[str, int, None], key: Union[str, bytes, None]) -> bool:
        """``check_password`` in a pool thread, whose priority is lowered the first time."""
        if self.nice and not getattr(_worker, "niced", False):
            _worker.niced = True
            lower_thread_priority(self.nice)
        return check_password(stored, password, scheme, key)

    def stop(self) -> None:
        """Stop the pool if this verifier started it."""
        if self._owned and self._threadpool is not None:
            self._threadpool.stop()
            self._threadpool = None
            self._owned = False


_default: List[PasswordVerifier] = []


def default_verifier() -> PasswordVerifier:
    """The process-wide verifier (global reactor, its own pool), made on first use."""
    if not _default:
        _default.append(PasswordVerifier())
    return _default[0]


def main(argv: Optional[List[str]] = None,
         read_password: Optional[Callable[[], str]] = None) -> int:
    """``python -m twisted_mqtt.auth.passwords``: print the hash of a password."""
    import argparse
    import getpass

    parser = argparse.ArgumentParser(prog="python -m twisted_mqtt.auth.passwords",
                                     description="Print the stored form of a password.")
    parser.add_argument("--scheme", default="bcrypt",
                        choices=["bcrypt", "pbkdf2_sha256", "pbkdf2_sha512", "mosquitto"])
    parser.add_argument("--rounds", type=int, default=None,
                        help="bcrypt cost or PBKDF2 iterations")
    args = parser.parse_args(argv)
    if read_password is None:
        read_password = (getpass.getpass if sys.stdin.isatty()
                         else lambda: sys.stdin.readline().rstrip("\n"))
    print(hash_password(read_password(), args.scheme, rounds=args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
