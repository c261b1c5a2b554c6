"""Zope interfaces through which the broker asks its hooks for decisions."""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Optional, Tuple

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


@value
class Veto:
    """A hook's refusal that no later hook can overturn: the reason code the client is answered
    with (a code the answering packet cannot carry, or below 0x80, becomes 0x80)."""

    reason_code: int


class IAuthenticator(Interface):
    """Decides whether a client may connect.

    Authenticators are asked in the order they were added.  The first that answers True lets the
    client in and no later one is asked; a ``Veto`` refuses at once; False, None or a reason code
    (0x80 or more, e.g. 0x86 bad user name or password) leaves the decision to the next one.
    When none lets the client in, it is refused with the first reason code given, else 0x87.
    """

    def authenticate(request: ConnectRequest) -> Any:
        """Return True, False, None, a reason code or a ``Veto``; or a Deferred firing with one
        of these."""


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
    """Decides what a connected client may do with topics.

    Every authorizer added must allow an action for it to be allowed (a deny wins); with none
    added, everything is allowed but publishing to ``$SYS``.
    """

    def may_publish(client: ClientInfo, topic: str) -> Any:
        """Whether ``client`` may publish to ``topic``: a bool, or a Deferred firing with one."""

    def may_subscribe(client: ClientInfo, topic_filter: str) -> Any:
        """Whether ``client`` may subscribe to ``topic_filter``: a bool, or a Deferred firing
        with one."""

    def may_receive(client: ClientInfo, topic: str) -> bool:
        """Whether ``client`` may be sent a message published to ``topic``, whatever filter
        it holds.  Synchronous: asked while routing, and remembered per topic until
        ``Broker.acl_changed`` is called or a client connects."""


class IConnectionSink(Interface):
    """What the core needs of a transport: the Twisted ``ITransport`` subset it writes to."""

    disconnecting = Attribute("True once the connection is being closed.")

    def write(data: bytes) -> None:
        """Send bytes."""

    def loseConnection() -> None:
        """Close after the buffered bytes are sent."""


# -- event hooks ----------------------------------------------------------------------------------
# Each interface groups the events of one concern.  A hook provides any of them (usually by
# subclassing ``twisted_mqtt.hooks.Hook`` and overriding the methods it needs); the broker calls a
# method only on hooks that override it.  "Veto", "modify" and "observe" say what an answer does.


class ILifecycleHook(Interface):
    """The broker starting, stopping and publishing its $SYS figures (observe)."""

    def on_started(broker: Any) -> None:
        """The broker started (after the store, if any, was loaded)."""

    def on_stopped(broker: Any) -> None:
        """The broker stopped: every client was disconnected."""

    def on_sys_info_tick(figures: Dict[str, Any]) -> None:
        """The $SYS figures, by topic suffix, as they are published."""


class IConnectHook(Interface):
    """Connections and sessions."""

    def on_connect(client: ClientInfo, packet: Any) -> Any:
        """A CONNECT arrived, before authentication.  Veto: return a ``Veto`` to refuse."""

    def on_auth_packet(client: ClientInfo, packet: Any) -> Any:
        """An AUTH packet arrived.  Modify: return the ``Auth`` packet to act on."""

    def on_session_establish(client: ClientInfo, packet: Any) -> None:
        """The client was authenticated; its session is about to be opened (observe)."""

    def on_session_established(client: ClientInfo, packet: Any, session_present: bool) -> None:
        """The session is open and CONNACK is queued (observe)."""

    def on_disconnect(client: ClientInfo, reason_code: Optional[int], session_kept: bool) -> None:
        """The connection ended: ``reason_code`` is the DISCONNECT's (sent or received; None
        when the network connection just closed); ``session_kept`` whether the session
        outlives it (observe)."""

    def on_will(client_id: str, will: Any) -> Any:
        """A Will Message is due.  Modify: return the ``Will`` to publish, or None for none."""

    def on_will_sent(client_id: str, message: Any) -> None:
        """A Will Message was published (observe)."""

    def on_client_expired(client_id: str) -> None:
        """A session expired and was discarded (observe)."""


class ISubscribeHook(Interface):
    """Subscriptions and the choice of who gets a message."""

    def on_subscribe(client: ClientInfo, packet: Any) -> Any:
        """A SUBSCRIBE arrived.  Modify: return the ``Subscribe`` to act on."""

    def on_subscribed(client: ClientInfo, packet: Any, reason_codes: Tuple[int, ...]) -> None:
        """The SUBACK's reason codes were decided (observe)."""

    def on_unsubscribe(client: ClientInfo, packet: Any) -> Any:
        """An UNSUBSCRIBE arrived.  Modify: return the ``Unsubscribe`` to act on."""

    def on_unsubscribed(client: ClientInfo, packet: Any, reason_codes: Tuple[int, ...]) -> None:
        """The UNSUBACK's reason codes were decided (observe)."""

    def on_select_subscribers(message: Any, client_ids: FrozenSet[str]) -> Any:
        """Modify: return which of the client ids holding a (non-shared) matching
        subscription get ``message`` (a subset)."""


class IPublishHook(Interface):
    """Application messages on their way in, and retained messages."""

    def on_publish(client: ClientInfo, message: Any) -> Any:
        """A client published ``message`` (after the ACL allowed it).  Modify or veto: return
        the ``Message`` to route (``message.evolve(...)`` makes a changed copy), None to drop
        it (acknowledged as usual), or a ``Veto`` to refuse it (MQTT 5 acknowledgements carry
        its reason code)."""

    def on_published(client: ClientInfo, message: Any, count: int) -> None:
        """``message`` was routed to ``count`` sessions (observe)."""

    def on_publish_dropped(client_id: str, message: Any, reason: str) -> None:
        """A message for ``client_id`` was dropped (``reason``: "queue full", "expired",
        "slow consumer", "too large", "offline") (observe)."""

    def on_retain_message(message: Any, change: int) -> None:
        """A retained message was stored (1), cleared (-1) or refused by the limit (0)
        (observe)."""

    def on_retain_published(client: ClientInfo, message: Any) -> None:
        """A retained message was sent to a client because it subscribed (observe)."""

    def on_retained_expired(topic: str) -> None:
        """The retained message of ``topic`` expired (observe)."""


class IDeliveryHook(Interface):
    """QoS 1 and 2 messages to one session: queued, in flight, completed (observe)."""

    def on_message_queued(client_id: str, delivery: Any) -> None:
        """A delivery was queued for later (client offline, quota or packet ids full)."""

    def on_qos_publish(client_id: str, packet_id: int, delivery: Any, resend: bool) -> None:
        """A QoS 1/2 PUBLISH was sent under ``packet_id`` (``resend``: again, with DUP)."""

    def on_qos_progress(client_id: str, packet_id: int, delivery: Any) -> None:
        """A QoS 2 PUBLISH was received by the client (PUBREC; PUBREL sent)."""

    def on_qos_complete(client_id: str, packet_id: int, delivery: Any) -> None:
        """A QoS 1/2 delivery was acknowledged (PUBACK or PUBCOMP, or a failure PUBREC)."""

    def on_qos_dropped(client_id: str, packet_id: Optional[int], delivery: Any) -> None:
        """A queued or in-flight delivery was discarded (expired in the queue, too large for the
        client, or handed over to another member of its shared subscription).  A session that
        ends discards its deliveries without this event (``on_disconnect`` with
        ``session_kept`` False, ``on_client_expired``, or ``on_session_established`` with
        ``session_present`` False tell it)."""

    def on_packet_ids_exhausted(client_id: str, delivery: Any) -> None:
        """All 65,535 packet identifiers of ``client_id`` are in flight (a safety net: the send
        quota, at most 65,535, normally queues deliveries before this can happen)."""

    def on_inbound_qos2(client_id: str, packet_id: int, received: bool) -> None:
        """A QoS 2 message from ``client_id`` was received (True: PUBREC sent) or released
        (False: PUBCOMP sent)."""


class IPacketHook(Interface):
    """Every packet in and out.  Installing one takes each connection off the fast paths (it
    decodes and re-encodes what it forwards), so it costs throughput; without one, nothing."""

    def on_packet_read(client: ClientInfo, packet: Any) -> Any:
        """A packet was decoded.  Modify: return the packet to process, or None to ignore it."""

    def on_packet_encode(client: ClientInfo, packet: Any) -> Any:
        """A packet is about to be sent.  Modify: return the packet to send, or None to send
        nothing."""

    def on_packet_sent(client: ClientInfo, packet: Any, data: bytes) -> None:
        """A packet was queued for the transport as ``data`` (observe)."""

    def on_packet_processed(client: ClientInfo, packet: Any) -> None:
        """The broker finished handling a packet (observe)."""


class IStoredState(Interface):
    """What a store read at start-up: the broker restores it before it accepts clients.  Each
    method returns a list (or a Deferred firing with one) of ``twisted_mqtt.storage`` records."""

    def stored_sessions() -> Any:
        """Sessions with their subscriptions, queued and in-flight messages and wills."""

    def stored_retained() -> Any:
        """Retained messages."""

    def stored_sys_info() -> Any:
        """The $SYS counters saved when the broker last ran (a dict, or None)."""
