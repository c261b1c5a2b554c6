"""The auth ledger: Mochi MQTT's rule file for who may connect and what they may do.

A ledger is YAML or JSON (docs/auth.md has the full format)::

    users:                      # checked first, by username
      alice:
        password: "$2b$12$..."  # bcrypt, pbkdf2_sha256$..., $7$... or (warned about) plaintext
        acl: {"alice/#": readwrite}
        disallow: false
    auth:                       # then these, in order: the first rule matching decides
      - {username: bob, password: "pbkdf2_sha256$...", allow: true}
      - {remote: 127.0.0.1, allow: true}
    acl:                        # in order: the first rule matching the client that has a
      - {remote: 127.0.0.1}     # filter matching the topic decides; no filters: allow all
      - username: alice
        filters: {"alice/#": 3, "updates/#": 2}
      - filters: {"#": read, "updates/#": deny}

Semantics are Mochi MQTT's (``hooks/auth/ledger.go``), with these differences, each stated in
docs/auth.md: within one rule (or a user's ``acl``) the most specific matching filter decides,
as in comqtt, where Mochi takes whichever Go's random map order gives first; ``*`` may stand
anywhere in a pattern; remote addresses are matched without their port (``127.0.0.1:*`` still
works) and may be CIDR networks; ``acl_default: deny`` makes the ACL refuse what no rule decides
(Mochi allows it); and ``reload`` replaces the users as well as the rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mqtt.auth.passwords import (
    PasswordVerifier,
    ServerBusy,
    check_password,
    default_verifier,
    dummy_hash_for,
    is_hashed,
    is_slow,
)
from twisted_mqtt.auth.rules import (
    Access,
    ClientPattern,
    decide,
    parse_rules,
    pattern_matches,
)
from twisted_mqtt.interfaces import ClientInfo, ConnectRequest, IAuthenticator, IAuthorizer

log = Logger()

BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_BUSY = 0x89


class LedgerError(ValueError):
    """A ledger file that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class User:
    """An entry of the ledger's ``users`` map."""

    password: str = ""
    acl: Tuple[Tuple[str, Access], ...] = ()
    disallow: bool = False


@dataclass(frozen=True)
class AuthRule:
    """A connection rule: who (each part optional, ``*`` wildcards) and whether to allow."""

    who: ClientPattern = ClientPattern()
    password: str = ""
    allow: bool = False


@dataclass(frozen=True)
class ACLRule:
    """A topic rule: who (each part optional) and filters with their access."""

    who: ClientPattern = ClientPattern()
    filters: Tuple[Tuple[str, Access], ...] = ()


@dataclass(frozen=True)
class LedgerRules:
    """The parsed content of a ledger."""

    users: Mapping[str, User] = field(default_factory=dict)
    auth: Tuple[AuthRule, ...] = ()
    acl: Tuple[ACLRule, ...] = ()
    acl_default: bool = True
    """What the ACL answers when no rule decides (Mochi: allow)."""

    @property
    def plaintext(self) -> List[str]:
        """Where the ledger holds plaintext passwords, e.g. ``users.alice``, ``auth[2]``."""
        found = [f"users.{name}" for name, user in self.users.items()
                 if user.password and not is_hashed(user.password)]
        found += [f"auth[{index}]" for index, rule in enumerate(self.auth)
                  if rule.password and rule.password != "*" and "*" not in rule.password
                  and not is_hashed(rule.password)]
        return found

    @cached_property
    def dummy_password(self) -> Optional[str]:
        """What a password is checked against when no stored one was (an unknown user): a
        dummy hash of the most common format and cost among the ledger's passwords, so the
        refusal takes as long as a wrong password's; None if the ledger checks no password."""
        stored = [user.password for user in self.users.values() if user.password]
        stored += [rule.password for rule in self.auth if rule.password
                   and (is_hashed(rule.password) or "*" not in rule.password)]
        return dummy_hash_for(stored)


_TOP_KEYS = {"users", "auth", "acl", "acl_default"}
_USER_KEYS = {"username", "password", "acl", "disallow"}
_AUTH_KEYS = {"client", "username", "remote", "password", "allow"}
_ACL_KEYS = {"client", "username", "remote", "filters"}


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise LedgerError(f"{where}: expected text, got {value!r}")
    return str(value)


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise LedgerError(f"{where}: expected true or false, got {value!r}")
    return value


def _rule_entries(top: Mapping[str, Any], name: str,
                  keys: set) -> Iterator[Tuple[str, Mapping[str, Any]]]:
    """The entries of the rule list ``name``, one by one with where each is (``name[i]``),
    checked to be mappings with only ``keys``."""
    raw = top.get(name) or []
    if not isinstance(raw, list):
        raise LedgerError(f"{name}: expected a list of rules, got {raw!r}")
    for index, item in enumerate(raw):
        where = f"{name}[{index}]"
        yield where, _mapping(item or {}, where, keys)


def _mapping(value: Any, where: str, keys: set) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise LedgerError(f"{where}: expected a mapping, got {value!r}")
    unknown = sorted(str(k) for k in set(value) - keys)
    if unknown:
        raise LedgerError(f"{where}: unknown keys {unknown} (known: {sorted(keys)})")
    return value


def _who(entry: Mapping[str, Any], where: str) -> ClientPattern:
    return ClientPattern(_text(entry.get("client"), f"{where}.client") or None,
                         _text(entry.get("username"), f"{where}.username") or None,
                         _text(entry.get("remote"), f"{where}.remote") or None)


def _filters(value: Any, where: str) -> Tuple[Tuple[str, Access], ...]:
    try:
        return tuple(parse_rules(value, where))
    except ValueError as error:
        raise LedgerError(str(error)) from None


def parse_ledger(data: Any) -> LedgerRules:
    """Ledger rules from decoded YAML/JSON; ``LedgerError`` saying where the problem is."""
    if data is None:
        data = {}
    top = _mapping(data, "ledger", _TOP_KEYS)
    users: Dict[str, User] = {}
    raw_users = top.get("users") or {}
    if not isinstance(raw_users, Mapping):
        raise LedgerError(f"users: expected a mapping of username to user, got {raw_users!r}")
    for name, raw in raw_users.items():
        where = f"users.{name}"
        entry = _mapping(raw or {}, where, _USER_KEYS)
        users[str(name)] = User(_text(entry.get("password"), f"{where}.password"),
                                _filters(entry.get("acl"), f"{where}.acl"),
                                _flag(entry.get("disallow"), f"{where}.disallow"))
    auth = [AuthRule(_who(entry, where), _text(entry.get("password"), f"{where}.password"),
                     _flag(entry.get("allow"), f"{where}.allow"))
            for where, entry in _rule_entries(top, "auth", _AUTH_KEYS)]
    acl = [ACLRule(_who(entry, where), _filters(entry.get("filters"), f"{where}.filters"))
           for where, entry in _rule_entries(top, "acl", _ACL_KEYS)]
    default = top.get("acl_default", "allow")
    if default not in ("allow", "deny"):
        raise LedgerError(f"acl_default: expected allow or deny, got {default!r}")
    return LedgerRules(users, tuple(auth), tuple(acl), default == "allow")


def load_ledger(text: Union[str, bytes], source: str = "ledger") -> LedgerRules:
    """Ledger rules from YAML or JSON text (JSON when it starts with ``{``, as Mochi decides);
    ``LedgerError`` naming ``source`` and the place of the problem."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        if text.lstrip().startswith("{"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ValueError as error:  # json.JSONDecodeError
        raise LedgerError(f"{source}: not valid JSON: {error}") from None
    except Exception as error:  # yaml.YAMLError
        raise LedgerError(f"{source}: not valid YAML: {error}") from None
    try:
        return parse_ledger(data)
    except LedgerError as error:
        raise LedgerError(f"{source}: {error}") from None


def read_ledger(path: Union[str, Path]) -> LedgerRules:
    """Ledger rules from a YAML or JSON file; ``LedgerError`` naming the file and the place of
    the problem."""
    try:
        text = Path(path).read_bytes()
    except OSError as error:
        raise LedgerError(f"{path}: cannot read: {error.strerror or error}") from None
    return load_ledger(text, str(path))


@implementer(IAuthenticator, IAuthorizer)
class Ledger:
    """Authenticates clients and authorises topics from a ledger (a file, or rules given).

    Passwords stored hashed are checked through ``verifier`` (bcrypt and PBKDF2 in its thread
    pool); plaintext ones are compared at once, in constant time, and warned about when loaded.
    """

    def __init__(self, rules: Optional[LedgerRules] = None, path: Union[str, Path, None] = None,
                 verifier: Optional[PasswordVerifier] = None,
                 in_thread: Optional[Callable[..., Deferred[Any]]] = None) -> None:
        self.path = Path(path) if path is not None else None
        self._verifier = verifier
        self.in_thread = in_thread
        """How ``reload`` reads the file off the reactor thread (``deferToThread``, say); None
        reads it at once."""
        if rules is None:
            if self.path is None:
                raise ValueError("give the ledger's rules or its file")
            rules = self._read()
        self.rules = rules
        self._warn_plaintext(rules)

    @classmethod
    def from_file(cls, path: Union[str, Path], verifier: Optional[PasswordVerifier] = None,
                  in_thread: Optional[Callable[..., Deferred[Any]]] = None) -> Ledger:
        """A ledger read from a YAML or JSON file (``LedgerError`` if it cannot be used);
        ``in_thread`` is how later reloads read it."""
        return cls(path=path, verifier=verifier, in_thread=in_thread)

    @classmethod
    def from_text(cls, text: Union[str, bytes],
                  verifier: Optional[PasswordVerifier] = None) -> Ledger:
        """A ledger from YAML or JSON text."""
        return cls(load_ledger(text), verifier=verifier)

    @property
    def verifier(self) -> PasswordVerifier:
        """What checks passwords (the process-wide verifier unless one was given)."""
        if self._verifier is None:
            self._verifier = default_verifier()
        return self._verifier

    def __repr__(self) -> str:
        return f"<Ledger {str(self.path) if self.path else 'in memory'}>"

    def _read(self) -> LedgerRules:
        assert self.path is not None
        return read_ledger(self.path)

    def _warn_plaintext(self, rules: LedgerRules) -> None:
        plain = rules.plaintext
        if plain:
            log.warn("ledger {source}: plaintext passwords in {places}; store bcrypt or PBKDF2 "
                     "hashes instead (python -m twisted_mqtt.auth.passwords makes them)",
                     source=str(self.path) if self.path else "(in memory)",
                     places=", ".join(plain))

    def reload(self) -> Any:
        """Read the file again (through ``in_thread`` if set) and use its rules from now on;
        connected clients stay.  A file that cannot be used is logged, and the rules in force
        are kept.  Whether the rules were replaced: a bool, or a Deferred firing with one."""
        if self.path is None:
            return False
        if self.in_thread is None:
            return self._use(self._attempt())
        return self.in_thread(self._attempt).addCallback(self._use)

    def _attempt(self) -> Union[LedgerRules, LedgerError]:
        """The file's rules, or why they cannot be used (no logging: this may run in a
        thread)."""
        try:
            return self._read()
        except LedgerError as error:
            return error

    def _use(self, rules: Union[LedgerRules, LedgerError]) -> bool:
        if isinstance(rules, LedgerError):
            log.error("ledger not reloaded, keeping the rules in force: {error}",
                      error=str(rules))
            return False
        self.rules = rules
        self._warn_plaintext(rules)
        log.info("ledger {path} reloaded: {users} users, {auth} auth rules, {acl} ACL rules",
                 path=str(self.path), users=len(rules.users), auth=len(rules.auth),
                 acl=len(rules.acl))
        return True

    # -- authentication -------------------------------------------------------------------------

    def authenticate(self, request: ConnectRequest) -> Any:
        """True if a user entry or the first matching auth rule allows the client; 0x87 if
        that rule disallows it; 0x86 if nothing matched and credentials were given, else None
        (no opinion).  A Deferred when a hashed password must be checked.  A refusal that
        checked no stored password (an unknown user) checks the dummy one first, so that it
        takes as long as a wrong password's."""
        rules = self.rules
        client = request.client
        password = request.password
        user = rules.users.get(client.username or "") if client.username is not None else None
        if user is not None and user.password:
            def after_user(matched: bool) -> Any:
                if matched:
                    return NOT_AUTHORIZED if user.disallow else True
                return self._auth_rules(rules, request, 0, True)

            return self._then(self._check(user.password, password), after_user)
        return self._auth_rules(rules, request, 0, False)

    def _auth_rules(self, rules: LedgerRules, request: ConnectRequest, start: int,
                    checked: bool) -> Any:
        """The auth rules from ``start`` on; ``checked``: whether a stored password was
        checked already (if not, a refusal checks the dummy one first)."""
        client = request.client
        for index in range(start, len(rules.auth)):
            rule = rules.auth[index]
            if not rule.who.matches(client):
                continue
            if not rule.password or rule.password == "*":
                return True if rule.allow else NOT_AUTHORIZED
            if is_hashed(rule.password) or "*" not in rule.password:
                def after_rule(matched: bool, rule: AuthRule = rule, index: int = index) -> Any:
                    if matched:
                        return True if rule.allow else NOT_AUTHORIZED
                    return self._auth_rules(rules, request, index + 1, True)

                return self._then(self._check(rule.password, request.password), after_rule)
            given = (request.password or b"").decode("utf-8", "replace")
            if pattern_matches(rule.password, given):
                return True if rule.allow else NOT_AUTHORIZED
        if client.username is not None or request.password is not None:
            dummy = rules.dummy_password
            if checked or dummy is None:
                return BAD_USER_NAME_OR_PASSWORD
            return self._then(self._check(dummy, request.password),
                              lambda _matched: BAD_USER_NAME_OR_PASSWORD)
        return None

    def _check(self, stored: str, password: Optional[bytes]) -> Any:
        """True/False at once for plaintext and fast hashes; a Deferred for slow ones."""
        if is_slow(stored):
            return self.verifier.verify(stored, password)
        return check_password(stored, password)

    @staticmethod
    def _then(result: Any, continuation: Any) -> Any:
        if not isinstance(result, Deferred):
            return continuation(result)

        def failed(failure: Failure) -> int:
            if failure.check(ServerBusy):
                return SERVER_BUSY
            log.failure("ledger: password check failed", failure)
            return BAD_USER_NAME_OR_PASSWORD

        return result.addCallbacks(continuation, failed)

    # -- authorisation --------------------------------------------------------------------------

    def allowed(self, client: ClientInfo, topic: str, write: bool) -> bool:
        """Whether the ledger lets ``client`` write (publish) or read (subscribe, receive)
        ``topic``: the user's own ``acl`` first, then the first ACL rule matching the client
        whose filters cover the topic (a rule without filters allows everything), else
        ``acl_default``."""
        rules = self.rules
        if client.username is not None:
            user = rules.users.get(client.username)
            if user is not None and user.acl:
                answer = decide(user.acl, topic, write)
                if answer is not None:
                    return answer
        for rule in rules.acl:
            if not rule.who.matches(client):
                continue
            if not rule.filters:
                return True
            answer = decide(rule.filters, topic, write)
            if answer is not None:
                return answer
        return rules.acl_default

    def may_publish(self, client: ClientInfo, topic: str) -> bool:
        """Whether the client may write ``topic``."""
        return self.allowed(client, topic, True)

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> bool:
        """Whether the client may read ``topic_filter`` (its wildcards compared as plain
        levels, as Mochi does; each message is checked again at delivery)."""
        return self.allowed(client, topic_filter, False)

    def may_receive(self, client: ClientInfo, topic: str) -> bool:
        """Whether the client may read ``topic``."""
        return self.allowed(client, topic, False)
