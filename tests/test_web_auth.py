"""Dashboard sign-in, sessions and API keys in memory (``task.Clock``, a stand-in password
verifier): session idle expiry, the bound on sessions, a password pool that is full, keys.

No MQTT packet is involved; the module cites the CONNACK label its bans enforce elsewhere,
[MQTT-3.2.2-7], to keep the label check uniform."""

from __future__ import annotations

import json
import sys
from io import BytesIO
from typing import Any, List

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from tests.spec import check_cited_labels
from twisted_mqtt.auth.passwords import ServerBusy
from twisted_mqtt.dashboard_limits import DashboardLimits
from twisted_mqtt.testing import InMemoryBroker
from twisted_mqtt.web import auth as web_auth
from twisted_mqtt.web.api import ApiResource, EventStream, Sampler
from twisted_mqtt.web.auth import DashboardAuth, SignInLimiter


class Verifier:
    """Answers ``verify`` with ``answer`` (a bool) or a failure."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.checked: List[Any] = []

    def verify(self, stored: str, password: str) -> Deferred[bool]:
        self.checked.append((stored, password))
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        return succeed(self.answer and password == "right")


def test_cited_labels() -> None:
    check_cited_labels(sys.modules[__name__])


def signed_in(auth: DashboardAuth) -> Any:
    found: List[Any] = []
    auth.login("admin", "right").addCallback(found.append)
    return found[0]


def test_session_expires_when_idle() -> None:
    """A session lasts ``SESSION_IDLE`` seconds after its last use, then is refused."""
    clock = Clock()
    auth = DashboardAuth({"admin": "$2b$04$x"}, {}, Verifier(True), clock)
    token, who = signed_in(auth)
    assert who.name == "admin" and who.csrf
    clock.advance(web_auth.SESSION_IDLE - 1)
    assert auth.session(token.encode()) is not None  # used: its idle time restarts
    clock.advance(web_auth.SESSION_IDLE - 1)
    assert auth.session(token.encode()) is not None
    clock.advance(web_auth.SESSION_IDLE + 1)
    assert auth.session(token.encode()) is None
    assert auth.session(b"\xff not ascii") is None


def test_sessions_are_bounded() -> None:
    """Beyond ``dashboard.max_sessions`` the least recently used session is forgotten."""
    clock = Clock()
    auth = DashboardAuth({"admin": "$2b$04$x"}, {}, Verifier(True), clock,
                         DashboardLimits(max_sessions=3))
    tokens = []
    for _ in range(4):
        clock.advance(1)
        tokens.append(signed_in(auth)[0])
    assert auth.session(tokens[0].encode()) is None
    assert all(auth.session(t.encode()) is not None for t in tokens[1:])


def test_wrong_password_and_unknown_user() -> None:
    """A wrong password and an unknown user both answer None; the unknown user's password is
    checked against a dummy hash all the same [MQTT-3.2.2-7]."""
    verifier = Verifier(True)
    auth = DashboardAuth({"admin": "$2b$04$" + "a" * 53}, {}, verifier, Clock())
    found: List[Any] = []
    auth.login("admin", "wrong").addCallback(found.append)
    auth.login("nobody", "right").addCallback(found.append)
    assert found == [None, None]
    assert len(verifier.checked) == 2 and verifier.checked[1][0].startswith("$2b$")


def test_api_keys() -> None:
    """An API key names its holder; any other value is nobody."""
    auth = DashboardAuth({}, {"ci": "k" * 30, "ops": "o" * 30}, Verifier(False), Clock())
    who = auth.api_key(b"o" * 30)
    assert who is not None and str(who) == "api-key ops"
    assert auth.api_key(b"k" * 29) is None


def test_sign_in_while_the_password_pool_is_full() -> None:
    """When the password pool has too many checks waiting, sign-in answers 503 naming the
    password field, without a traceback."""
    hub = InMemoryBroker()
    service: Any = type("Service", (), {"broker": hub.broker})()
    auth = DashboardAuth({"admin": "$2b$04$x"}, {}, Verifier(ServerBusy("full")), hub.clock)
    api = ApiResource(service, auth, Sampler(hub.broker, hub.clock), {})
    request = DummyRequest([b"api", b"v1", b"login"])
    request.method = b"POST"
    request.path = b"/api/v1/login"
    request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.content = BytesIO(json.dumps({"username": "admin", "password": "x"}).encode())
    api.render(request)
    assert request.responseCode == 503
    answer = json.loads(b"".join(request.written))
    assert answer["error"]["field"] == "password"


def test_sign_in_back_off_doubles_per_address_and_user() -> None:
    """Past ``attempts`` failures an address must wait 1 s, then 2 s, 4 s ... up to
    ``longest``; the user name is counted across addresses, an IPv6 /64 as one address; a
    success starts the counts again, and a count is forgotten ``longest`` after its back-off
    ends."""
    clock = Clock()
    limiter = SignInLimiter(2, 8.0, clock.seconds)
    assert limiter.begin("10.0.0.1", "a") == 0 and limiter.begin("10.0.0.1", "b") == 0
    waits = []
    for index in range(6):
        wait = limiter.begin("10.0.0.1", f"c{index}")
        waits.append(wait)
        clock.advance(wait)
        assert limiter.begin("10.0.0.1", f"c{index}") == 0  # after the wait: one more failure
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    clock.advance(8.0 + 7.9)
    assert limiter.begin("10.0.0.1", "d") == 0  # the wait is over, the count remembered
    assert limiter.begin("10.0.0.1", "d1") == 8.0
    clock.advance(8.0 + 8.0)
    assert [limiter.begin("10.0.0.1", f"e{i}") for i in range(3)] == [0, 0, 1.0]  # forgotten
    for address in ("10.0.0.2", "10.0.0.3"):
        limiter.begin(address, "admin")
    assert limiter.begin("10.0.0.4", "admin") == 1.0  # the user, from any address
    limiter.begin("2001:db8::1", "x")
    limiter.begin("2001:db8::2", "y")
    assert limiter.begin("2001:db8::ffff", "z") == 1.0  # one /64
    assert limiter.begin("2001:db8:0:1::1", "z") == 0
    clock.advance(1.0)
    assert limiter.begin("10.0.0.9", "e") == 0
    limiter.succeeded("10.0.0.9", "e")
    assert limiter.begin("10.0.0.9", "e") == 0 and limiter.begin("10.0.0.9", "e") == 0


class Channel:
    """The connection of a ``StreamRequest``."""

    def __init__(self) -> None:
        self.transport = self
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class StreamRequest:
    """What an ``EventStream`` writes to."""

    def __init__(self) -> None:
        self.written: List[bytes] = []
        self.channel = Channel()
        self.finished = False

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_a_slow_event_stream_reader_is_skipped_then_dropped() -> None:
    """While the transport has paused a stream (its send buffer full) no event is queued for
    it; one paused longer than ``stream_stall`` is closed; a reader that catches up gets the
    events again."""
    clock = Clock()
    request: Any = StreamRequest()
    stream = EventStream(request, "user admin", 30.0, clock)
    stream.send(b"1")
    stream.pauseProducing()
    for _ in range(20):
        clock.advance(1)
        stream.send(b"x" * 1000)
    assert request.written == [b"1"] and stream.skipped == 20
    stream.resumeProducing()
    stream.send(b"2")
    assert request.written == [b"1", b"2"]
    stream.pauseProducing()
    clock.advance(31)
    stream.send(b"3")
    assert request.channel.aborted and request.written == [b"1", b"2"]
