"""An authenticator over Twisted's ``twisted.cred`` checkers.

Any ``ICredentialsChecker`` accepting ``IUsernamePassword`` credentials will do: those Twisted's
``--auth`` options make (``twistd mqtt --auth file:/etc/mqtt/passwd``, ``--auth memory:user:pass``,
``--auth unix``), or one of your own.  The client's user name and password are offered to each
checker in turn; the first that accepts them lets the client in.

Twisted's ``file:`` and ``memory:`` checkers are replaced by ``PasswordFileChecker`` and
``PasswordsChecker``: the same users, but a password may also be stored hashed (Mosquitto's
``$7$`` and ``$6$``, bcrypt, PBKDF2), slow hashes are checked off the reactor thread, the file
is read at start and on reload (SIGHUP) instead of at every login on the reactor thread, and an
unknown user's password is checked against a dummy hash like the stored ones, so that refusing
an unknown user takes as long as refusing a wrong password.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from twisted.cred.checkers import (
    FilePasswordDB,
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mqtt.auth.passwords import (
    PasswordVerifier,
    ServerBusy,
    default_verifier,
    dummy_hash_for,
    is_hashed,
)
from twisted_mqtt.interfaces import ConnectRequest, IAuthenticator

log = Logger()

BAD_USER_NAME_OR_PASSWORD = 0x86
SERVER_BUSY = 0x89


@implementer(IUsernamePassword)
class UsernamePassword:
    """``IUsernamePassword`` credentials whose ``checkPassword`` compares in constant time
    (Twisted's own compares with ``==``)."""

    def __init__(self, username: Union[bytes, str], password: bytes) -> None:
        self.username = username
        self.password = password

    def checkPassword(self, password: Union[bytes, str]) -> bool:
        """Whether ``password`` is the one the client sent."""
        if isinstance(password, str):
            password = password.encode("utf-8")
        return hmac.compare_digest(hashlib.sha256(password).digest(),
                                   hashlib.sha256(self.password).digest())


Stored = Union[str, bytes]


def _text(value: Stored) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@implementer(ICredentialsChecker)
class PasswordsChecker:
    """Checks user names and passwords against ``users`` (user name to stored password, either
    as text or bytes): plaintext or any format ``twisted_mqtt.auth.passwords`` reads, slow
    hashes in ``verifier``'s thread pool.  An unknown user's password is checked against a
    dummy hash of the most common format and cost among the stored passwords (computed when
    the users are set), and refused whatever the result."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: Mapping[Any, Stored],
                 verifier: Optional[PasswordVerifier] = None) -> None:
        self._verifier = verifier
        self.users: Mapping[Any, Stored] = {}
        self.dummy_password: Optional[str] = None
        """What an unknown user's password is checked against (None: no stored password)."""
        self.set_users(users)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self.users)} users>"

    @property
    def verifier(self) -> PasswordVerifier:
        """What checks passwords (the process-wide verifier unless one was given)."""
        if self._verifier is None:
            self._verifier = default_verifier()
        return self._verifier

    def set_users(self, users: Mapping[Any, Stored]) -> None:
        """Check against ``users`` from now on."""
        self.users = users
        self.dummy_password = dummy_hash_for(_text(stored) for stored in users.values())

    def stored_password(self, username: Union[str, bytes]) -> Optional[Stored]:
        """The stored password of ``username`` (looked up as text and as bytes), or None."""
        text = _text(username)
        for key in (text, text.encode("utf-8")):
            stored = self.users.get(key)
            if stored is not None:
                return stored
        return None

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[Any]:
        """A Deferred firing with the user name, or failing with ``UnauthorizedLogin`` (or
        ``ServerBusy`` when too many slow checks wait)."""
        username = credentials.username
        stored = self.stored_password(username)
        if stored is None:
            if self.dummy_password is None:
                return fail(UnauthorizedLogin())
            checked = self.verifier.verify(self.dummy_password, credentials.password)
            return checked.addCallback(lambda _matched: Failure(UnauthorizedLogin()))

        def matched(ok: bool) -> Any:
            return username if ok else Failure(UnauthorizedLogin())

        return self.verifier.verify(stored, credentials.password).addCallback(matched)


class PasswordFileChecker(PasswordsChecker):
    """``PasswordsChecker`` over a Mosquitto password file (``twisted_mqtt.passwd``: lines
    ``user:password``, the password plain or hashed), read now and again by ``reload``
    (through ``in_thread``, e.g. ``deferToThread``, off the reactor thread).  A file that
    cannot be read is logged; until it can, nobody is let in by it."""

    def __init__(self, path: Union[str, Path], verifier: Optional[PasswordVerifier] = None,
                 in_thread: Optional[Callable[..., Deferred[Any]]] = None) -> None:
        self.path = Path(path)
        self.in_thread = in_thread
        super().__init__({}, verifier)
        self._use(self._attempt())

    def __repr__(self) -> str:
        return f"<PasswordFileChecker {self.path}: {len(self.users)} users>"

    def _attempt(self) -> Union[Tuple[Dict[str, str], List[int]], Exception]:
        """The file's users and bad lines, or why it cannot be read (no logging: this may run
        in a thread)."""
        from twisted_mqtt.passwd import PasswordFileError, read_password_file

        try:
            return read_password_file(self.path)
        except PasswordFileError as error:
            return error

    def _use(self, read: Union[Tuple[Dict[str, str], List[int]], Exception]) -> bool:
        if isinstance(read, Exception):
            log.error("password file {error}; {kept}", error=str(read),
                      kept=f"keeping its {len(self.users)} users" if self.users
                      else "nobody is let in by it until it can be read")
            return False
        users, bad = read
        if bad:
            log.warn("password file {path}: lines {lines} are not user:password; skipped",
                     path=str(self.path), lines=", ".join(map(str, bad)))
        plain = sorted(user for user, stored in users.items() if not is_hashed(stored))
        if plain:
            log.warn("password file {path}: plaintext passwords for {count} users; "
                     "python -m twisted_mqtt.passwd -U {path} hashes them",
                     path=str(self.path), count=len(plain))
        self.set_users(users)
        return True

    def reload(self) -> Any:
        """Read the file again (through ``in_thread`` if set); whether its users are used now
        (a bool, or a Deferred firing with one).  A file that cannot be read is logged and the
        users in force are kept."""
        if self.in_thread is None:
            return self._use(self._attempt())
        return self.in_thread(self._attempt).addCallback(self._use)


def adopt_checker(checker: Any, verifier: Optional[PasswordVerifier] = None,
                  in_thread: Optional[Callable[..., Deferred[Any]]] = None) -> Any:
    """``checker``, or this module's equivalent of Twisted's ``file:`` checker (a
    ``FilePasswordDB`` with its default layout and no hash function) and ``memory:`` checker
    (sharing its ``users``)."""
    if type(checker) is FilePasswordDB and checker.hash is None and (
            checker.delim == b":" and checker.ufield == 0 and checker.pfield == 1
            and checker.caseSensitive):
        filename = checker.filename
        return PasswordFileChecker(_text(filename), verifier, in_thread)
    if type(checker) is InMemoryUsernamePasswordDatabaseDontUse:
        return PasswordsChecker(checker.users, verifier)
    return checker


@implementer(IAuthenticator)
class CredAuthenticator:
    """Accepts a client whose user name and password one of ``checkers`` accepts; answers
    0x86 (v3: 4) when none does (0x89 when too many password checks wait), and has no opinion
    about clients without a user name.  Twisted's ``file:`` and ``memory:`` checkers are
    replaced by this module's (``adopt_checker``), checking through ``verifier``; file reloads
    read through ``in_thread``."""

    def __init__(self, checkers: Iterable[ICredentialsChecker],
                 verifier: Optional[PasswordVerifier] = None,
                 in_thread: Optional[Callable[..., Deferred[Any]]] = None) -> None:
        self.checkers: List[ICredentialsChecker] = [
            adopt_checker(checker, verifier, in_thread) for checker in checkers
            if IUsernamePassword in getattr(checker, "credentialInterfaces", ())
        ]
        if not self.checkers:
            raise ValueError("no checker accepts user name and password credentials")

    def __repr__(self) -> str:
        return f"<CredAuthenticator {self.checkers!r}>"

    def authenticate(self, request: ConnectRequest) -> Optional[Deferred[Any]]:
        """A Deferred firing True or 0x86; None without a user name."""
        username = request.client.username
        if username is None:
            return None
        password = request.password or b""
        # Other checkers disagree on the type of user names (FilePasswordDB keys them by
        # bytes, the memory: checker by text): each is offered both.  This module's take text.
        attempts = [(checker, UsernamePassword(name, password)) for checker in self.checkers
                    for name in ((username,) if isinstance(checker, PasswordsChecker)
                                 else (username.encode("utf-8"), username))]
        return self._try(attempts, 0)

    def reload(self) -> Any:
        """Read the password files again (SIGHUP); a Deferred firing with whether any was
        read, or False without password files."""
        files = [c for c in self.checkers if isinstance(c, PasswordFileChecker)]
        if not files:
            return False
        return gatherResults([maybeDeferred(c.reload) for c in files]).addCallback(any)

    def _try(self, attempts: List[Tuple[ICredentialsChecker, UsernamePassword]],
             index: int) -> Deferred[Any]:
        checker, credentials = attempts[index]

        def refused(failure: Failure) -> Any:
            if failure.check(ServerBusy):
                return SERVER_BUSY
            if not failure.check(UnauthorizedLogin, UnhandledCredentials, KeyError):
                log.failure("credentials checker {checker!r} failed", failure, checker=checker)
            if index + 1 < len(attempts):
                return self._try(attempts, index + 1)
            return BAD_USER_NAME_OR_PASSWORD

        return maybeDeferred(checker.requestAvatarId, credentials).addCallbacks(
            lambda _avatar_id: True, refused)
