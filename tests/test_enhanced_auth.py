"""MQTT 5 enhanced authentication: the AUTH exchange routed to an ``IEnhancedAuthenticator``."""

from __future__ import annotations

import sys
from typing import Any, List, Optional, Tuple

from twisted.internet.defer import Deferred
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.spec import check_cited_labels
from twisted_mqtt.interfaces import AuthStep, ClientInfo, IEnhancedAuthenticator
from twisted_mqtt.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Publish,
    Subscribe,
    Subscription,
)
from twisted_mqtt.properties import Properties
from twisted_mqtt.testing import InMemoryBroker, InMemoryClient

CHALLENGE = "CHALLENGE"


@implementer(IEnhancedAuthenticator)
class Challenge:
    """Sends a nonce, accepts the client if it answers with the nonce reversed."""

    methods = (CHALLENGE,)

    def __init__(self, deferred: bool = False) -> None:
        self.deferred = deferred
        self.calls: List[Tuple[str, Optional[bytes], Any]] = []
        self.waiting: List[Deferred[AuthStep]] = []

    def step(self, client: ClientInfo, method: str, data: Optional[bytes], state: Any) -> Any:
        self.calls.append((client.client_id, data, state))
        if state is None:
            answer = AuthStep(0x18, b"nonce", state="sent")
        elif data == b"ecnon":
            answer = AuthStep(0x00, b"welcome")
        else:
            answer = AuthStep(0x86)
        if not self.deferred:
            return answer
        waiting: Deferred[AuthStep] = Deferred()
        waiting.addCallback(lambda _: answer)
        self.waiting.append(waiting)
        return waiting


def _auth(code: int, data: Optional[bytes], method: str = CHALLENGE) -> Auth:
    return Auth(code, Properties(authentication_method=method, authentication_data=data))


def _start(authenticator: Optional[Challenge]) -> Tuple[InMemoryBroker, InMemoryClient]:
    hub = InMemoryBroker(enhanced_authenticator=authenticator)
    return hub, hub.client(protocol_level=5)


def _connect(client: InMemoryClient, method: str = CHALLENGE) -> None:
    client.send(Connect("device", 5, properties=Properties(
        authentication_method=method, authentication_data=b"hello")))


def test_challenge_accepted() -> None:
    """CONNECT with a supported method gets AUTH 0x18 carrying the method, the client answers
    with AUTH 0x18, and success is a CONNACK with the same method and the server's data
    [MQTT-4.12.0-2, MQTT-4.12.0-3, MQTT-4.12.0-5]; the broker's AUTH uses an Authenticate
    Reason Code [MQTT-3.15.2-1]."""
    authenticator = Challenge()
    verifyObject(IEnhancedAuthenticator, authenticator)
    hub, client = _start(authenticator)
    _connect(client)
    assert client.received() == [_auth(0x18, b"nonce")]
    client.send(_auth(0x18, b"ecnon"))
    (ack,) = client.received()
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    assert ack.properties.authentication_method == CHALLENGE
    assert ack.properties.authentication_data == b"welcome"
    assert authenticator.calls == [("device", b"hello", None), ("device", b"ecnon", "sent")]
    client.send(Subscribe(1, (Subscription("a", 0),)))
    assert client.received()[0].reason_codes == (0,)


def test_challenge_failed() -> None:
    """A wrong answer refuses the connection with the authenticator's reason code (0x86) and
    closes it [MQTT-4.12.0-4]."""
    hub, client = _start(Challenge())
    _connect(client)
    client.received()
    client.send(_auth(0x18, b"wrong"))
    assert client.received() == [ConnAck(0x86)]
    assert client.closed
    assert hub.broker.stats.auth_failures == 1


def test_unsupported_method() -> None:
    """An Authentication Method the server does not support, or any method when no enhanced
    authenticator is configured, gets CONNACK 0x8C [MQTT-4.12.0-1]."""
    for authenticator in (None, Challenge()):
        hub, client = _start(authenticator)
        _connect(client, method="SCRAM-SHA-1")
        assert client.received() == [ConnAck(0x8C)]
        assert client.closed


def test_only_auth_before_connack() -> None:
    """A client that sends anything but AUTH or DISCONNECT before its CONNACK is refused with
    0x82 [MQTT-3.1.2-30]."""
    hub, client = _start(Challenge())
    _connect(client)
    client.received()
    client.send(Publish("a", b"x"))
    assert client.received() == [ConnAck(0x82)]
    assert client.closed


def test_auth_with_another_method() -> None:
    """Every AUTH of the exchange names the method of CONNECT; another one is a protocol error
    [MQTT-4.12.0-5]."""
    hub, client = _start(Challenge())
    _connect(client)
    client.received()
    client.send(_auth(0x18, b"ecnon", method="OTHER"))
    assert client.received() == [ConnAck(0x82)]


def test_auth_without_method_in_connect() -> None:
    """AUTH from a client that did not start enhanced authentication is a protocol error
    [MQTT-4.12.0-7]. The broker itself sends no AUTH to such a client [MQTT-4.12.0-6]."""
    hub = InMemoryBroker()
    client = hub.client(protocol_level=5)
    client.connect("plain")
    client.send(_auth(0x19, None))
    assert client.received() == [Disconnect(0x82, Properties(reason_string="unexpected AUTH"))]
    assert client.closed


def test_deferred_steps_hold_input() -> None:
    """An authenticator answering with Deferreds: nothing is sent until it answers, and the
    exchange then continues as with synchronous answers [MQTT-4.12.0-2]."""
    authenticator = Challenge(deferred=True)
    hub, client = _start(authenticator)
    _connect(client)
    assert client.received() == []
    authenticator.waiting.pop().callback(None)
    assert client.received() == [_auth(0x18, b"nonce")]
    client.send(_auth(0x18, b"ecnon"))
    assert client.received() == []
    authenticator.waiting.pop().callback(None)
    (ack,) = client.received()
    assert ack.reason_code == 0 and ack.properties.authentication_data == b"welcome"


def test_reauthentication() -> None:
    """After CONNACK the client re-authenticates with AUTH 0x19; success is AUTH 0x00, and a
    failed re-authentication is a DISCONNECT with a DISCONNECT reason code [MQTT-4.12.1-1,
    MQTT-4.12.1-2, MQTT-3.14.2-1]; the broker's AUTH packets use Authenticate Reason Codes
    [MQTT-3.15.2-1]."""
    hub, client = _start(Challenge())
    _connect(client)
    client.received()
    client.send(_auth(0x18, b"ecnon"))
    client.received()
    client.send(_auth(0x19, b"again"))
    assert client.received() == [_auth(0x18, b"nonce")]
    client.send(_auth(0x18, b"ecnon"))
    assert client.received() == [_auth(0x00, b"welcome")]
    client.send(_auth(0x19, b"again"))
    client.received()
    client.send(_auth(0x18, b"bad"))
    assert client.received() == [Disconnect(0x87)]  # 0x86 is not a DISCONNECT reason
    assert client.closed


def test_cited_labels() -> None:
    """Every test cites the statements it proves [MQTT-4.12.0-1]."""
    check_cited_labels(sys.modules[__name__], every_test=True)
