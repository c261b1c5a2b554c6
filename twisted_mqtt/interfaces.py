"""Zope interfaces through which the broker asks its hooks for decisions."""

from __future__ import annotations

from typing import Any, Optional

from zope.interface import Attribute, Interface

from twisted_mqtt._value import value


@value
class ClientInfo:
    """Who a connection is: what authentication and authorisation decisions are made about."""

    client_id: str
    username: Optional[str] = None
    address: Optional[str] = None
    """The peer's host address (IPv4/IPv6 text), or None for a Unix socket or in-memory peer."""
    listener: str = ""
    protocol_level: int = 4
    certificate_subject: Optional[str] = None
    """The verified TLS client certificate's subject as an RFC 4514 string (e.g.
    ``CN=sensor-1,O=Example``), or None without TLS or without a client certificate."""
    certificate_common_name: Optional[str] = None
    """That subject's common name (CN), or None."""


@value
class ConnectRequest:
    """A CONNECT awaiting an authentication decision."""

    client: ClientInfo
    password: Optional[bytes] = None
    connect: Any = None
    """The decoded ``Connect`` packet."""


class IAuthenticator(Interface):
    """Decides whether a client may connect."""

    def authenticate(request: ConnectRequest) -> Any:
        """Return True to accept, False to refuse as not authorised, or an MQTT 5 reason code
        (e.g. 0x86 bad user name or password); or a Deferred firing with one of these."""


@value
class AuthStep:
    """An enhanced authenticator's answer to one step of an AUTH exchange."""

    reason_code: int
    """0x00 success, 0x18 continue authentication, or a failure reason code (0x80 or more)."""
    data: Optional[bytes] = None
    """Authentication Data to send to the client with this answer."""
    state: Any = None
    """Anything the authenticator wants back at its next step of the same exchange."""


class IEnhancedAuthenticator(Interface):
    """Runs MQTT 5 enhanced authentication (CONNECT with an Authentication Method, then AUTH
    packets) for the methods it names."""

    methods = Attribute("The Authentication Method names this authenticator supports.")

    def step(client: ClientInfo, method: str, data: Optional[bytes], state: Any) -> Any:
        """Take the client's Authentication Data (``state`` is None at the first step of an
        exchange) and return an ``AuthStep``, or a Deferred firing with one."""


class IAuthorizer(Interface):
    """Decides what a connected client may do with topics."""

    def may_publish(client: ClientInfo, topic: str) -> bool:
        """Whether ``client`` may publish to ``topic``."""

    def may_subscribe(client: ClientInfo, topic_filter: str) -> bool:
        """Whether ``client`` may subscribe to ``topic_filter``."""


class IConnectionSink(Interface):
    """What the core needs of a transport: the Twisted ``ITransport`` subset it writes to."""

    disconnecting = Attribute("True once the connection is being closed.")

    def write(data: bytes) -> None:
        """Send bytes."""

    def loseConnection() -> None:
        """Close after the buffered bytes are sent."""
