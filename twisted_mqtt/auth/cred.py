"""An authenticator over Twisted's ``twisted.cred`` checkers.

Any ``ICredentialsChecker`` accepting ``IUsernamePassword`` credentials will do: those Twisted's
``--auth`` options make (``twistd mqtt --auth file:/etc/mqtt/passwd``, ``--auth memory:user:pass``,
``--auth unix``), or one of your own.  The client's user name and password are offered to each
checker in turn; the first that accepts them lets the client in.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Iterable, List, Optional, Tuple, Union

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mqtt.interfaces import ConnectRequest, IAuthenticator

log = Logger()

BAD_USER_NAME_OR_PASSWORD = 0x86


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


@implementer(IAuthenticator)
class CredAuthenticator:
    """Accepts a client whose user name and password one of ``checkers`` accepts; answers
    0x86 (v3: 4) when none does, and has no opinion about clients without a user name."""

    def __init__(self, checkers: Iterable[ICredentialsChecker]) -> None:
        self.checkers: List[ICredentialsChecker] = [
            checker for checker in checkers
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
        # Checkers disagree on the type of user names: FilePasswordDB keys them by bytes,
        # the memory: checker by text.  Each is offered both.
        attempts = [(checker, UsernamePassword(name, password)) for checker in self.checkers
                    for name in (username.encode("utf-8"), username)]
        return self._try(attempts, 0)

    def _try(self, attempts: List[Tuple[ICredentialsChecker, UsernamePassword]],
             index: int) -> Deferred[Any]:
        checker, credentials = attempts[index]

        def refused(failure: Failure) -> Any:
            if not failure.check(UnauthorizedLogin, UnhandledCredentials, KeyError):
                log.failure("credentials checker {checker!r} failed", failure, checker=checker)
            if index + 1 < len(attempts):
                return self._try(attempts, index + 1)
            return BAD_USER_NAME_OR_PASSWORD

        return maybeDeferred(checker.requestAvatarId, credentials).addCallbacks(
            lambda _avatar_id: True, refused)
