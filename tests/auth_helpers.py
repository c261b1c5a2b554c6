"""Helpers shared by the authentication tests: a thread pool and reactor that run work when the
test says so, and an in-memory auth backend whose answers the test controls."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed

from twisted_mqtt.auth.backends import BackendAuth, BackendSettings, UserRecord
from twisted_mqtt.interfaces import ConnectRequest


class FakeThreadPool:
    """Queues what ``deferToThreadPool`` gives it; ``run`` does the work (in the test's thread)
    and reports it as a worker thread would."""

    def __init__(self) -> None:
        self.queued: List[Tuple[Callable[..., Any], Callable[..., Any], tuple, dict]] = []
        self.ran: List[str] = []

    def callInThreadWithCallback(self, on_result: Callable[..., Any], function: Callable[..., Any],
                                 *args: Any, **kwargs: Any) -> None:
        self.queued.append((on_result, function, args, kwargs))

    def run(self, count: Optional[int] = None) -> int:
        """Run ``count`` queued calls (all by default); return how many ran."""
        done = 0
        while self.queued and (count is None or done < count):
            on_result, function, args, kwargs = self.queued.pop(0)
            self.ran.append(getattr(function, "__name__", repr(function)))
            try:
                result = function(*args, **kwargs)
            except Exception as error:  # pragma: no cover - reported like a worker would
                on_result(False, error)
            else:
                on_result(True, result)
            done += 1
        return done

    def stop(self) -> None:
        """Nothing to stop."""


class FakeReactor:
    """Just what ``deferToThreadPool`` and ``PasswordVerifier`` use of a reactor."""

    def __init__(self) -> None:
        self.triggers: List[Any] = []
        self.threads: List[int] = []

    def callFromThread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.threads.append(threading.get_ident())
        function(*args, **kwargs)

    def addSystemEventTrigger(self, *args: Any) -> None:
        self.triggers.append(args)


class MemoryBackend(BackendAuth):
    """A backend over dictionaries; ``hold`` makes its answers wait for ``release``."""

    kind = "memory"

    def __init__(self, settings: Optional[BackendSettings] = None, clock: Any = None,
                 verifier: Any = None) -> None:
        super().__init__(settings or BackendSettings(), clock, verifier)
        self.users: Dict[str, UserRecord] = {}
        self.acls: Dict[str, Dict[str, int]] = {}
        self.calls: List[Tuple[str, str]] = []
        self.held: List[Tuple[Deferred[Any], Any]] = []
        self.holding = False
        self.down = False

    def _reply(self, value: Any) -> Any:
        if self.down:
            return Deferred()  # never answers: the timeout must
        if self.holding:
            waiting: Deferred[Any] = Deferred()
            self.held.append((waiting, value))
            return waiting
        return succeed(value)

    def release(self) -> None:
        """Answer everything held."""
        held, self.held = self.held, []
        for waiting, value in held:
            if not waiting.called:
                waiting.callback(value)

    def fetch_credentials(self, key: str, request: ConnectRequest) -> Any:
        self.calls.append(("auth", key))
        return self._reply(self.users.get(key))

    def fetch_acl(self, key: str) -> Any:
        self.calls.append(("acl", key))
        return self._reply(dict(self.acls.get(key, {})))
