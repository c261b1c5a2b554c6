"""Who may use the dashboard and the admin API: dashboard users (a password file), API keys
(a header, for scripts), and the browser sessions a login opens (an HttpOnly, SameSite=Strict
cookie, with a CSRF token that every write must echo in a header).

Passwords are checked by ``twisted_mqtt.auth.passwords.PasswordVerifier`` (bcrypt and PBKDF2 in
its thread pool, never on the reactor); an unknown user costs the same check against a dummy
hash.  API keys are long random secrets: they are compared by their SHA-256 digests, in
constant time, against every key.  Failed sign-ins are counted per address and per user
name (``SignInLimiter``): past ``DashboardLimits.sign_in_attempts`` each further attempt waits
a doubling back-off, answered 429 without checking the password."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from twisted_mqtt.auth.passwords import default_verifier, dummy_hash_for, is_hashed
from twisted_mqtt.dashboard_limits import DEFAULT_DASHBOARD_LIMITS, DashboardLimits
from twisted_mqtt.passwd import PasswordFileError, read_password_file

log = Logger()

COOKIE = b"twisted_mqtt_session"
API_KEY_HEADER = b"x-api-key"
CSRF_HEADER = b"x-csrf-token"
API_KEY_ENV = "TWISTED_MQTT_DASHBOARD_API_KEY"
"""An API key given through the environment, as ``NAME:KEY``."""
MIN_KEY_LENGTH = 24
SESSION_IDLE = DEFAULT_DASHBOARD_LIMITS.session_idle
"""Seconds a browser session lasts without a request, by default."""
MAX_TRACKED = 10_000
"""Addresses and user names whose failed sign-ins are remembered at once (the least recently
failed is forgotten beyond this)."""


class DashboardConfigError(ValueError):
    """A users or API keys file that cannot be used; the message names it and the problem."""


class Identity:
    """Who made a request: a dashboard user (with the session's CSRF token) or an API key."""

    __slots__ = ("name", "kind", "csrf")

    def __init__(self, name: str, kind: str, csrf: Optional[str] = None) -> None:
        self.name = name
        self.kind = kind
        self.csrf = csrf

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def _digest(key: Union[str, bytes]) -> bytes:
    return hashlib.sha256(key.encode("utf-8") if isinstance(key, str) else key).digest()


def read_users(path: Union[str, Path]) -> Dict[str, str]:
    """The dashboard users of a password file (``user:hash`` lines, the format of
    ``python -m twisted_mqtt.passwd``); plain-text passwords are refused."""
    try:
        users, _ = read_password_file(path)
    except (OSError, PasswordFileError) as error:
        raise DashboardConfigError(f"dashboard users file {path}: {error}") from None
    plain = sorted(user for user, stored in users.items() if not is_hashed(stored))
    if plain:
        raise DashboardConfigError(
            f"dashboard users file {path}: plain-text password for {', '.join(plain[:3])}; "
            "hash it (python -m twisted_mqtt.passwd -U FILE)")
    return users


def read_api_keys(path: Optional[Union[str, Path]],
                  environ: Mapping[str, str] = os.environ) -> Dict[str, str]:
    """API keys by name: from a file of ``name:key`` lines, and ``TWISTED_MQTT_DASHBOARD_API_KEY``
    (``NAME:KEY``); each key at least ``MIN_KEY_LENGTH`` characters."""
    keys: Dict[str, str] = {}
    if path is not None:
        try:
            keys, _ = read_password_file(path)
        except (OSError, PasswordFileError) as error:
            raise DashboardConfigError(f"dashboard API keys file {path}: {error}") from None
    given = environ.get(API_KEY_ENV)
    if given:
        name, sep, key = given.partition(":")
        if not sep or not name:
            raise DashboardConfigError(f"{API_KEY_ENV} must be NAME:KEY")
        keys[name] = key
    short = sorted(name for name, key in keys.items() if len(key) < MIN_KEY_LENGTH)
    if short:
        raise DashboardConfigError(f"dashboard API key {short[0]!r}: shorter than "
                                   f"{MIN_KEY_LENGTH} characters (python -c 'import secrets; "
                                   "print(secrets.token_urlsafe(32))' makes one)")
    return keys


def address_key(host: str) -> str:
    """What sign-ins are counted by for a client address: the address itself, or its /64
    network for IPv6 (one host usually holds a whole /64)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6 and getattr(address, "ipv4_mapped", None) is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(getattr(address, "ipv4_mapped", None) or address)


class SignInLimiter:
    """Failed sign-ins counted per address and per user name.  An attempt counts as a failure
    from the moment it starts (so that many attempts sent at once are counted) until it
    succeeds; after ``attempts`` failures in a row each further attempt must wait a back-off
    that doubles (1 s, 2 s, 4 s ... up to ``longest``).  A count is forgotten ``longest``
    seconds after its back-off ends without a new failure."""

    def __init__(self, attempts: int, longest: float, now: Any) -> None:
        self.attempts = attempts
        self.longest = longest
        self._now = now
        self._failures: OrderedDict[Tuple[str, str], Tuple[int, float]] = OrderedDict()
        """(kind, name) -> (failures in a row, time of the last)."""

    def _wait(self, key: Tuple[str, str], now: float) -> float:
        found = self._failures.get(key)
        if found is None:
            return 0.0
        failures, last = found
        backoff = 0.0
        if failures >= self.attempts:
            backoff = min(self.longest, 2.0 ** min(failures - self.attempts, 30))
        if now - last >= backoff + self.longest:
            del self._failures[key]
            return 0.0
        return max(0.0, last + backoff - now)

    def begin(self, address: str, user: str) -> float:
        """Seconds the attempt of ``user`` from ``address`` must still wait (it is refused);
        0: it may go on, and counts as a failure until ``succeeded``."""
        now = float(self._now())
        keys = (("address", address_key(address)), ("user", user))
        wait = max(self._wait(key, now) for key in keys)
        if wait > 0:
            return wait
        for key in keys:
            failures = self._failures.pop(key, (0, now))[0]
            self._failures[key] = (failures + 1, now)
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)
        return 0.0

    def succeeded(self, address: str, user: str) -> None:
        """The attempt succeeded: the address's and the user's counts start again."""
        self._failures.pop(("address", address_key(address)), None)
        self._failures.pop(("user", user), None)


class DashboardAuth:
    """Checks logins, API keys and session cookies."""

    def __init__(self, users: Mapping[str, str], api_keys: Mapping[str, str],
                 verifier: Any = None, clock: Any = None,
                 limits: DashboardLimits = DEFAULT_DASHBOARD_LIMITS) -> None:
        self.users = dict(users)
        self._keys: List[Tuple[bytes, str]] = [(_digest(key), name)
                                               for name, key in api_keys.items()]
        self._verifier = verifier
        self.clock = clock
        self.limits = limits
        self.limiter = SignInLimiter(limits.sign_in_attempts, limits.sign_in_backoff,
                                     self._now)
        self._sessions: Dict[str, Tuple[str, str, float]] = {}
        """Session token -> (user, CSRF token, last use)."""
        self._dummy = dummy_hash_for(self.users.values()) if self.users else None

    @property
    def configured(self) -> bool:
        """Whether anyone at all can sign in."""
        return bool(self.users or self._keys)

    def _now(self) -> float:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        return float(self.clock.seconds())

    def api_key(self, presented: bytes) -> Optional[Identity]:
        """The identity of an API key, if it is one."""
        digest = _digest(presented)
        found = None
        for known, name in self._keys:  # every key compared, whichever matches
            if hmac.compare_digest(known, digest):
                found = name
        return Identity(found, "api-key") if found is not None else None

    def login(self, user: str, password: str) -> Deferred[Optional[Tuple[str, Identity]]]:
        """Check a user's password (in the verifier's pool); fires with (session token,
        identity), or None if the user or password is wrong."""
        stored = self.users.get(user)
        check = stored if stored is not None else self._dummy
        if check is None:
            from twisted.internet.defer import succeed

            return succeed(None)
        verifier = self._verifier or default_verifier()  # the process-wide pool by default
        d: Deferred[Any] = verifier.verify(check, password)

        def checked(matched: bool) -> Optional[Tuple[str, Identity]]:
            if not matched or stored is None:
                return None
            return self._open(user)

        return d.addCallback(checked)

    def _open(self, user: str) -> Tuple[str, Identity]:
        now = self._now()
        self._expire(now)
        while len(self._sessions) >= self.limits.max_sessions:
            oldest = min(self._sessions, key=lambda token: self._sessions[token][2])
            del self._sessions[oldest]
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        self._sessions[token] = (user, csrf, now)
        return token, Identity(user, "user", csrf)

    def _expire(self, now: float) -> None:
        for token in [t for t, (_, _, used) in self._sessions.items()
                      if now - used > self.limits.session_idle]:
            del self._sessions[token]

    def session(self, token: bytes) -> Optional[Identity]:
        """The identity of a session cookie still valid (its idle time restarts)."""
        try:
            key = token.decode("ascii")
        except UnicodeDecodeError:
            return None
        found = self._sessions.get(key)
        now = self._now()
        if found is None or now - found[2] > self.limits.session_idle \
                or found[0] not in self.users:
            self._sessions.pop(key, None)
            return None
        self._sessions[key] = (found[0], found[1], now)
        return Identity(found[0], "user", found[1])

    def alive(self, token: bytes) -> bool:
        """Whether a session is still valid (without counting this as a use)."""
        found = self._sessions.get(token.decode("ascii", "replace"))
        return found is not None and found[0] in self.users and \
            self._now() - found[2] <= self.limits.session_idle

    def logout(self, token: bytes) -> None:
        """End a browser session."""
        self._sessions.pop(token.decode("ascii", "replace"), None)
