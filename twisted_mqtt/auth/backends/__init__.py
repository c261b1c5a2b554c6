"""Authentication and ACL backends: Redis, HTTP, PostgreSQL and MySQL/MariaDB, with comqtt's
contracts as defaults (docs/auth.md states each contract).

``BackendAuth`` is what they share: one hook providing ``IAuthenticator`` and ``IAuthorizer``
that

- refuses a blacklisted client (client id, username, remote address) at once with 0x8A
  (Banned; v3 5) before asking the backend anything;
- asks the backend with a timeout (on the injected clock) and never blocks the reactor;
- when the backend fails or is too slow, answers by the failure policy: fail closed by default
  (CONNACK 0x88 Server unavailable, v3 3; publish and subscribe refused; nothing delivered),
  fail open (``fail_open``) lets the client and its actions through;
- loads a client's ACL rules while authenticating it, caches them for ``cache_ttl`` seconds
  (refreshing in the background after that) and loads them afresh whenever the client connects
  again; they are dropped when its session ends.

``may_receive`` must answer at once, from the cache: a client whose rules are not loaded gets
nothing (or everything, failing open) until they are; the broker is then told to ask again
(``Broker.acl_changed``).

Each backend's settings are a dataclass that ``from_dict`` builds from a plain mapping (a YAML
configuration's section), and ``backend_from_url`` builds a backend from the command line's
``--auth-backend URL``.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field, fields
from types import ModuleType
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Tuple,
    Type,
    TypeVar,
)
from urllib.parse import parse_qsl, unquote, urlsplit

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mqtt.auth.passwords import (
    PasswordVerifier,
    ServerBusy,
    default_verifier,
    dummy_hash,
    normalise_scheme,
)
from twisted_mqtt.auth.rules import Access, Blacklist, decide, parse_access, parse_rules
from twisted_mqtt.hooks import Hook
from twisted_mqtt.interfaces import ClientInfo, ConnectRequest, IAuthenticator, IAuthorizer, Veto

log = Logger()

BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
SERVER_BUSY = 0x89
BANNED = 0x8A

_MODES = {"0": "anonymous", "anonymous": "anonymous", "none": "anonymous",
          "1": "username", "username": "username", "user": "username",
          "2": "client_id", "clientid": "client_id", "client_id": "client_id",
          "client-id": "client_id"}
_COMQTT_NAMES = {"auth_mode": "auth_by", "acl_mode": "acl_by", "auth_prefix": "auth_prefix",
                 "acl_prefix": "acl_prefix"}

S = TypeVar("S", bound="BackendSettings")


def require(module: str, backend: str, package: str, extra: str) -> ModuleType:
    """Import ``module`` for the ``backend``, or raise an ImportError that says which
    ``package`` it needs and which extra of this distribution brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"the {backend} backend needs {package}: "
                          f"pip install 'twisted-mqtt-broker[{extra}]'") from None


def parse_mode(value: Any, where: str) -> str:
    """``username``, ``client_id`` or ``anonymous`` from those names or comqtt's 1, 2, 0."""
    text = str(value).strip().lower()
    if isinstance(value, bool) or text not in _MODES:
        raise ValueError(f"{where}: expected username, client_id or anonymous "
                         f"(comqtt: 1, 2, 0), not {value!r}")
    return _MODES[text]


def parse_flag(value: Any, where: str) -> bool:
    """A boolean from a bool or the text true/false/yes/no/1/0/on/off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{where}: expected true or false, not {value!r}")


@dataclass
class BackendSettings:
    """What every backend is configured with (docs/auth.md)."""

    auth_by: str = "username"
    """Look credentials up by ``username``, ``client_id``, or accept everyone (``anonymous``,
    comqtt's auth-mode 0)."""
    acl_by: str = "username"
    """Look ACL rules up by ``username`` or ``client_id``, or allow every topic
    (``anonymous``)."""
    password_hash: str = "plain"
    """How stored passwords are hashed (comqtt's default: plain); see ``passwords.SCHEMES``."""
    hash_key: str = ""
    """The key of the HMAC schemes."""
    timeout: float = 5.0
    """Seconds to wait for any backend answer."""
    cache_ttl: float = 60.0
    """Seconds a client's ACL rules are used before they are fetched again."""
    retry_after: float = 1.0
    """After a failure, seconds during which the backend is not asked again for the same
    client's ACL (the failure policy answers at once)."""
    fail_open: bool = False
    """Let clients and their actions through when the backend cannot answer (default: refuse)."""
    blacklist: Blacklist = field(default_factory=Blacklist)
    """Clients refused with 0x8A before the backend is asked."""
    dummy_like: str = ""
    """A stored password in the format and cost of the backend's (one of its hashes will do;
    only its form is used): an unknown user's password is checked against a dummy hash like
    it, so that the refusal takes as long as a wrong password's.  Empty: like the last
    stored password the backend returned (before any, the ``password_hash`` scheme's default
    cost: bcrypt 12, PBKDF2 600,000 iterations)."""

    def client(self) -> ModuleType:
        """The backend's client library, imported (ImportError naming the extra of this
        distribution that brings it); see ``require``."""
        raise NotImplementedError

    def __post_init__(self) -> None:
        self.auth_by = parse_mode(self.auth_by, "auth_by")
        self.acl_by = parse_mode(self.acl_by, "acl_by")
        self.password_hash = normalise_scheme(self.password_hash)
        self.hash_key = "" if self.hash_key is None else str(self.hash_key)
        self.dummy_like = "" if self.dummy_like is None else str(self.dummy_like)
        self.fail_open = parse_flag(self.fail_open, "fail_open")
        self.blacklist = Blacklist.from_config(self.blacklist)
        for name in ("timeout", "cache_ttl", "retry_after"):
            value = float(getattr(self, name))
            if not value >= 0 or math.isinf(value) and name == "timeout":
                raise ValueError(f"{name}: expected a number of seconds >= 0, not {value!r}")
            setattr(self, name, value)
        if self.password_hash.startswith("hmac-") and not self.hash_key:
            raise ValueError(f"password_hash {self.password_hash} needs a hash_key")

    @classmethod
    def from_dict(cls: Type[S], data: Mapping[str, Any]) -> S:
        """Settings from a mapping; keys may be spelt with dashes (comqtt's ``auth-mode``,
        ``acl-mode``, ``password-hash``, ``hash-key`` are understood).  ValueError names an
        unknown key."""
        known = {f.name for f in fields(cls)}
        values: Dict[str, Any] = {}
        for raw_key, value in data.items():
            name = str(raw_key).replace("-", "_")
            name = _COMQTT_NAMES.get(name, name)
            if name not in known:
                raise ValueError(f"unknown setting {raw_key!r}; known: "
                                 f"{', '.join(sorted(known))}")
            values[name] = value
        try:
            return cls(**values)
        except TypeError as error:
            raise ValueError(str(error)) from None

    @classmethod
    def from_query(cls: Type[S], query: str, **values: Any) -> S:
        """Settings from a URL's query string plus ``values`` (the URL's own parts)."""
        merged = dict(values)
        for key, value in parse_qsl(query, keep_blank_values=True):
            merged[key] = value
        return cls.from_dict(merged)


@dataclass(frozen=True)
class UserRecord:
    """What a backend stores about one user: the stored password and whether the user may
    connect at all."""

    password: str
    allow: bool = True


@dataclass
class _ACL:
    """A client's cached ACL rules."""

    client: ClientInfo
    key: Optional[str]
    rules: Optional[List[Tuple[str, Access]]] = None
    """None: not loaded, or the last load failed."""
    loaded_at: float = -math.inf
    failed_at: float = -math.inf
    loading: Optional[Deferred[Any]] = None


@implementer(IAuthenticator, IAuthorizer)
class BackendAuth(Hook):
    """Authentication and ACL from an outside service; subclasses say how to ask it."""

    kind = "backend"

    def __init__(self, settings: BackendSettings, clock: Any = None,
                 verifier: Optional[PasswordVerifier] = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.settings = settings
        self.clock = clock
        self._verifier = verifier
        self._acl: Dict[str, _ACL] = {}
        self._broker: Any = None
        self._change_pending = False
        self._last_stored: Optional[str] = None
        """The last stored password fetched (what an unknown user's dummy hash is like)."""
        self.available = True
        """False after a backend call failed, until one succeeds."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    def describe(self) -> str:
        """Where the backend is (for logs; never a password)."""
        return self.kind

    # -- what a backend implements --------------------------------------------------------------

    def fetch_credentials(self, key: str, request: ConnectRequest) -> Any:
        """A ``UserRecord`` (or None for an unknown user, whose password is then checked
        against a dummy hash) to check the password against, or a verdict: True, False, or a
        reason code; or a Deferred firing with one of these."""
        raise NotImplementedError

    def fetch_acl(self, key: str) -> Any:
        """The ACL rules of ``key`` as ``[(filter, Access)]`` (or a mapping of filter to
        access), or a Deferred firing with them."""
        raise NotImplementedError

    def close(self) -> Any:
        """Release connections; may return a Deferred."""
        return None

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def verifier(self) -> PasswordVerifier:
        """What checks passwords (the process-wide verifier unless one was given)."""
        if self._verifier is None:
            self._verifier = default_verifier()
        return self._verifier

    def bind(self, broker: Any) -> None:
        """Tell ``broker`` (``acl_changed``) when cached rules change; done at broker start."""
        self._broker = broker

    def on_started(self, broker: Any) -> None:
        """Remember the broker (see ``bind``)."""
        self.bind(broker)

    def on_stopped(self, broker: Any) -> None:
        """Close the backend's connections."""
        try:
            self.close()
        except Exception:
            log.failure("closing {backend!r} failed", backend=self)

    def _call(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Call the backend with the timeout; log when it goes down and when it comes back."""
        result: Deferred[Any] = maybeDeferred(function, *args)
        result.addTimeout(self.settings.timeout, self.clock)

        def worked(value: Any) -> Any:
            if not self.available:
                self.available = True
                log.info("{backend}: answering again", backend=self.describe())
            return value

        def failed(failure: Failure) -> Failure:
            if self.available:
                self.available = False
                log.error("{backend}: no answer ({error}); {policy} until it answers",
                          backend=self.describe(), error=_describe(failure),
                          policy=("letting clients through (fail_open)"
                                  if self.settings.fail_open else
                                  "refusing clients (0x88) and topics (fail closed)"))
            return failure

        return result.addCallbacks(worked, failed)

    def _key(self, client: ClientInfo, mode: str) -> Optional[str]:
        if mode == "client_id":
            return client.client_id or None
        return client.username or None

    def _changed(self) -> None:
        """Cached rules changed: have the broker forget its delivery decisions (once per turn,
        never in the middle of routing)."""
        if self._broker is None or self._change_pending:
            return
        self._change_pending = True

        def tell() -> None:
            self._change_pending = False
            acl_changed = getattr(self._broker, "acl_changed", None)
            if acl_changed is not None:
                acl_changed()

        self.clock.callLater(0, tell)

    # -- authentication -------------------------------------------------------------------------

    def authenticate(self, request: ConnectRequest) -> Any:
        """Veto(0x8A) for a blacklisted client; None without the user name (or client id)
        credentials are looked up by; else a Deferred firing True, 0x86 (unknown user or wrong
        password), 0x87 (user not allowed), 0x89 (too many password checks waiting) or, when the
        backend cannot answer, 0x88 (fail closed) or True (fail open)."""
        client = request.client
        settings = self.settings
        if settings.blacklist.banned(client):
            log.info("{client_id}: blacklisted; refused", client_id=client.client_id)
            return Veto(BANNED)
        if settings.auth_by == "anonymous":
            return self._load(self._fresh_entry(client)).addCallback(lambda _: True)
        key = self._key(client, settings.auth_by)
        if key is None:
            return None
        answer = self._call(self.fetch_credentials, key, request)
        answer.addCallback(self._check, request)
        answer.addErrback(self._unavailable, client)

        def then_acl(verdict: Any) -> Any:
            if verdict is not True:
                return verdict  # (no cache entry is made for a refused client)
            loading = self._load(self._fresh_entry(client))
            if not self.available:  # let in by fail_open: do not wait for a second timeout
                return True
            return loading.addCallback(lambda _: True)

        return answer.addCallback(then_acl)

    def _check(self, record: Any, request: ConnectRequest) -> Any:
        settings = self.settings
        if record is None:  # an unknown user: as long to refuse as a wrong password
            like = settings.dummy_like or self._last_stored
            dummy = self.verifier.verify(dummy_hash(like, settings.password_hash),
                                         request.password, settings.password_hash,
                                         settings.hash_key)
            return dummy.addCallback(lambda _matched: BAD_USER_NAME_OR_PASSWORD)
        if record is True:
            return True
        if record is False:
            return BAD_USER_NAME_OR_PASSWORD
        if isinstance(record, int):
            return record
        if not isinstance(record, UserRecord):
            raise TypeError(f"backend answered {record!r}")
        self._last_stored = record.password
        checked = self.verifier.verify(record.password, request.password,
                                       settings.password_hash, settings.hash_key)

        def verdict(matched: bool) -> Any:
            if not matched:
                return BAD_USER_NAME_OR_PASSWORD
            return True if record.allow else NOT_AUTHORIZED

        return checked.addCallback(verdict)

    def _unavailable(self, failure: Failure, client: ClientInfo) -> Any:
        if failure.check(ServerBusy):
            return SERVER_BUSY
        if self.settings.fail_open:
            log.warn("{client_id}: {backend} cannot answer; let in (fail_open)",
                     client_id=client.client_id, backend=self.describe())
            return True
        log.info("{client_id}: {backend} cannot answer ({error}); refused with 0x88",
                 client_id=client.client_id, backend=self.describe(), error=_describe(failure))
        return SERVER_UNAVAILABLE

    # -- ACL cache ------------------------------------------------------------------------------

    def _fresh_entry(self, client: ClientInfo) -> _ACL:
        """A new, empty cache entry for a client (re)connecting."""
        entry = _ACL(client, self._key(client, self.settings.acl_by))
        self._acl[client.client_id] = entry
        return entry

    def _entry(self, client: ClientInfo) -> _ACL:
        key = self._key(client, self.settings.acl_by)
        entry = self._acl.get(client.client_id)
        if entry is None or entry.key != key:
            entry = _ACL(client, key)
            self._acl[client.client_id] = entry
        return entry

    def _fresh(self, entry: _ACL) -> bool:
        return entry.rules is not None and self.clock.seconds() - entry.loaded_at < (
            self.settings.cache_ttl)

    def _resting(self, entry: _ACL) -> bool:
        """Whether the last load failed too recently to ask again."""
        return self.clock.seconds() - entry.failed_at < self.settings.retry_after

    def _load(self, entry: _ACL) -> Deferred[_ACL]:
        """(Re)load an entry's rules; the Deferred fires with the entry, never fails."""
        if self.settings.acl_by == "anonymous":
            entry.rules = [("#", Access.READWRITE)]
            entry.loaded_at = math.inf
            return succeed(entry)
        if entry.loading is not None:
            waiter: Deferred[_ACL] = Deferred()

            def wake(result: Any) -> Any:
                waiter.callback(entry)
                return result

            entry.loading.addBoth(wake)
            return waiter
        if entry.key is None:
            loading: Deferred[Any] = succeed([])
        else:
            loading = self._call(self.fetch_acl, entry.key)
        before = entry.rules

        def loaded(rules: Any) -> _ACL:
            entry.rules = parse_rules(rules, f"ACL of {entry.key}")
            entry.loaded_at = self.clock.seconds()
            entry.failed_at = -math.inf
            return entry

        def failed(failure: Failure) -> _ACL:
            entry.rules = None
            entry.failed_at = self.clock.seconds()
            log.info("{client_id}: ACL not loaded from {backend} ({error})",
                     client_id=entry.client.client_id, backend=self.describe(),
                     error=_describe(failure))
            return entry

        def done(result: _ACL) -> _ACL:
            entry.loading = None
            if entry.rules != before and self._acl.get(entry.client.client_id) is entry:
                self._changed()
            return result

        entry.loading = loading
        return loading.addCallbacks(loaded, failed).addCallback(done)

    def _answer(self, entry: _ACL, subject: str, write: bool) -> bool:
        if entry.rules is None:
            return self.settings.fail_open
        return bool(decide(entry.rules, subject, write))

    def _ask(self, client: ClientInfo, subject: str, write: bool) -> Any:
        entry = self._entry(client)
        if self._fresh(entry):
            return self._answer(entry, subject, write)
        if not self.available or self._resting(entry):
            # no waiting on a backend known to be down: the policy answers, while a load in
            # the background finds out when it is back
            if entry.loading is None and not self._resting(entry):
                self._load(entry)
            return self.settings.fail_open
        return self._load(entry).addCallback(self._answer, subject, write)

    def may_publish(self, client: ClientInfo, topic: str) -> Any:
        """Whether the client's rules let it write ``topic`` (no matching filter: no); a
        Deferred when the rules must be fetched first."""
        return self._ask(client, topic, True)

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> Any:
        """Whether the client's rules let it read ``topic_filter``; a Deferred when the rules
        must be fetched first."""
        return self._ask(client, topic_filter, False)

    def may_receive(self, client: ClientInfo, topic: str) -> bool:
        """Whether the client's cached rules let it read ``topic``.  Rules past their TTL are
        used while they are fetched again; missing rules, or a backend known to be down, get
        the failure policy's answer."""
        entry = self._entry(client)
        if self._fresh(entry):
            return self._answer(entry, topic, False)
        if entry.loading is None and not self._resting(entry):
            self._load(entry)
        if not self.available:
            return self.settings.fail_open
        return self._answer(entry, topic, False)

    def on_disconnect(self, client: ClientInfo, reason_code: Optional[int],
                      session_kept: bool) -> None:
        """Drop the client's rules when its session ends with the connection (a kept session
        keeps them, for the messages queued while it is away)."""
        entry = self._acl.get(client.client_id)
        if entry is not None and entry.client is client and not session_kept:
            del self._acl[client.client_id]

    def on_client_expired(self, client_id: str) -> None:
        """Drop the rules of an expired session."""
        self._acl.pop(client_id, None)

    def reload(self) -> bool:
        """Fetch every client's rules again (each is used until its new rules arrive)."""
        for entry in self._acl.values():
            entry.loaded_at = -math.inf
            entry.failed_at = -math.inf
        log.info("{backend}: cached ACL rules of {count} clients will be fetched again",
                 backend=self.describe(), count=len(self._acl))
        return True


def access_rules(raw: Any, where: str) -> List[Tuple[str, Access]]:
    """``[(filter, access)]`` from a decoded mapping, skipping (and logging) unusable
    entries, as comqtt does."""
    rules = []
    for rule_filter, value in dict(raw or {}).items():
        if isinstance(rule_filter, bytes):
            rule_filter = rule_filter.decode("utf-8", "replace")
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        try:
            rules.append((str(rule_filter), parse_access(value)))
        except ValueError as error:
            log.warn("{where}: ignoring {filter!r}: {error}", where=where, filter=rule_filter,
                     error=str(error))
    return rules


def _describe(failure: Failure) -> str:
    from twisted.internet.defer import TimeoutError as DeferredTimeout

    if failure.check(DeferredTimeout):
        return "timed out"
    name = failure.type.__name__ if failure.type is not None else "error"
    return f"{name}: {failure.getErrorMessage()}"


BACKEND_SCHEMES = ("redis", "rediss", "http", "https", "postgresql", "postgres", "mysql",
                   "mariadb")


def backend_settings(url: str) -> Tuple[str, BackendSettings]:
    """The kind (``redis``, ``http``, ``sql``) and settings of ``--auth-backend URL``:
    ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS),
    ``http(s)://host:port/base`` (``base/auth`` and ``base/acl``),
    ``postgresql://user:password@host:port/database`` or ``mysql://...`` (also ``mariadb://``),
    with settings in the query string (``?password_hash=bcrypt&timeout=2``).  ValueError for a
    URL or a setting that cannot be used; ImportError (naming the extra to install) if the
    backend's client library is missing.  Nothing is connected."""
    kind, settings = _parse_backend_url(url)
    settings.client()
    return kind, settings


def _parse_backend_url(url: str) -> Tuple[str, BackendSettings]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in BACKEND_SCHEMES:
        raise ValueError(f"unknown backend {url!r}; use one of "
                         f"{', '.join(s + '://' for s in BACKEND_SCHEMES)}")
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"{url!r}: {error}") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    host = parts.hostname or None
    values: Dict[str, Any]
    if scheme in ("redis", "rediss"):
        from twisted_mqtt.auth.backends.redis import RedisSettings

        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{url!r}: the path must be a database number, not {path!r}")
        values = {"host": host or "localhost", "port": port or 6379,
                  "db": int(path) if path else 0, "tls": scheme == "rediss"}
        if password is not None:
            values["password"] = password
        if user:
            values["username"] = user
        return "redis", RedisSettings.from_query(parts.query, **values)
    if scheme in ("http", "https"):
        from twisted_mqtt.auth.backends.http import HTTPSettings

        base = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        return "http", HTTPSettings.from_query(parts.query, auth_url=f"{base}/auth",
                                               acl_url=f"{base}/acl")
    from twisted_mqtt.auth.backends.sql import SQLSettings

    values = {"engine": "postgresql" if scheme.startswith("postgres") else "mysql"}
    if host:
        values["host"] = host
    if port:
        values["port"] = port
    if user:
        values["user"] = user
    if password is not None:
        values["password"] = password
    if parts.path.strip("/"):
        values["database"] = unquote(parts.path.strip("/"))
    return "sql", SQLSettings.from_query(parts.query, **values)


def make_backend(kind: str, settings: BackendSettings, clock: Any = None, reactor: Any = None,
                 verifier: Optional[PasswordVerifier] = None) -> BackendAuth:
    """The backend of ``kind`` (``redis``, ``http``, ``sql``) with ``settings``; its timeouts
    run on ``clock``, else on ``reactor``, else on the global reactor."""
    if clock is None:
        clock = reactor
    if kind == "redis":
        from twisted_mqtt.auth.backends.redis import RedisAuth

        return RedisAuth(settings, clock, verifier)  # type: ignore[arg-type]
    if kind == "http":
        from twisted_mqtt.auth.backends.http import HTTPAuth

        return HTTPAuth(settings, clock, verifier, reactor)  # type: ignore[arg-type]
    if kind == "sql":
        from twisted_mqtt.auth.backends.sql import SQLAuth

        return SQLAuth(settings, clock, verifier, reactor)  # type: ignore[arg-type]
    raise ValueError(f"unknown backend kind {kind!r}")


def backend_from_url(url: str, clock: Any = None, reactor: Any = None,
                     verifier: Optional[PasswordVerifier] = None) -> BackendAuth:
    """A backend from ``--auth-backend URL`` (see ``backend_settings``)."""
    kind, settings = backend_settings(url)
    return make_backend(kind, settings, clock, reactor, verifier)
