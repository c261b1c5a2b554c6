"""The broker's limits (capabilities) and its named compatibility switches, kept apart."""

from __future__ import annotations

from typing import Optional, Tuple

from twisted_mqtt._value import value


@value
class Capabilities:
    """Limits the broker applies and advertises in CONNACK.  All are bounded by default."""

    maximum_packet_size: int = 1024 * 1024
    """Largest packet accepted from a client, fixed header included (CONNACK: 0x27)."""
    receive_maximum: int = 1024
    """Unacknowledged QoS 1/2 PUBLISH packets a client may have towards the broker (0x21)."""
    topic_alias_maximum: int = 64
    """Highest topic alias a client may use (0x22); 0 disables inbound aliases."""
    maximum_qos: int = 2
    """Highest QoS granted and accepted (0x24)."""
    retain_available: bool = True
    wildcard_subscription_available: bool = True
    subscription_identifier_available: bool = True
    shared_subscription_available: bool = True
    maximum_keep_alive: Optional[int] = None
    """If set, a client asking for a longer (or no) keep alive is given this one (0x13)."""
    maximum_session_expiry: int = 0xFFFFFFFF
    """Longest session expiry interval granted, seconds (0xFFFFFFFF: never expires)."""
    maximum_inflight: int = 1024
    """Unacknowledged QoS 1/2 messages sent to one client, also bounded by its receive maximum."""
    maximum_pending_bytes: int = 8 * 1024 * 1024
    """Bytes queued for a client and not yet taken by its transport (whatever put them there:
    messages, retained messages, resends, acknowledgements) beyond which the connection is
    blocked: its publishers are held back, its QoS 1/2 messages wait in its session, and after
    ``slow_consumer_grace`` its QoS 0 messages are dropped; at twice this the connection is
    dropped and what it had queued freed."""
    slow_consumer_grace: float = 10.0
    """Seconds a blocked client may hold back the clients publishing to it (their input is not
    read until it drains, so that nothing is lost); after that, its QoS 0 messages are dropped
    and the publishers read again."""
    maximum_queued_messages: int = 10_000
    """Messages held per session beyond the inflight window (offline or flow-controlled)."""
    maximum_queued_bytes: int = 16 * 1024 * 1024
    """Topic and payload bytes of the messages held per session beyond the inflight window; a
    message that would pass it is dropped (and counted), like one past
    ``maximum_queued_messages``."""
    maximum_subscriptions: int = 100_000
    """Subscriptions one session may hold; a SUBSCRIBE for a new filter beyond it is refused
    for that filter with SUBACK 0x97 Quota exceeded (MQTT 3: 0x80)."""
    maximum_retained_messages: int = 1_000_000
    """Retained messages kept; a new retained topic beyond this is not stored (and counted)."""
    retained_lookup_per_turn: int = 10_000
    """Levels of the retained index the lookups of one SUBSCRIBE may visit in one reactor turn;
    the retained messages of its further filters are sent on the following turns."""
    maximum_bans: int = 10_000
    """Bans (client ids, user names, addresses) in force at once; adding one more is refused."""
    maximum_client_id_length: int = 65535
    maximum_topic_levels: int = 128
    refused_filters: Tuple[str, ...] = ()
    """Topic filters a subscription to which is refused with SUBACK 0x80 (exact string match)."""
    response_information: Optional[str] = None
    """Returned in CONNACK to a client that requests response information; ``{client_id}`` is
    replaced by the client's identifier."""
    sys_interval: float = 10.0
    """Seconds between $SYS publications; 0 disables them."""
    connect_timeout: float = 10.0
    """Seconds a new connection may take to complete CONNECT, authentication included; then it
    is closed without an answer."""
    keepalive_sweep_interval: float = 1.0
    """Seconds between checks of keep alive deadlines (one sweep for all connections)."""
    retained_message_expiry: Optional[int] = None
    """If set, retained messages without their own expiry expire after this many seconds."""


@value
class Compatibilities:
    """Named switches for behaviour the specification leaves open, with the safe default."""

    queue_qos0_offline: bool = False
    """Queue QoS 0 messages for an offline client with a persistent session."""
    allow_empty_client_id_v31: bool = False
    """Accept a zero-length client id from MQTT 3.1 clients (3.1 requires 1 to 23 characters)."""
    disconnect_v3_on_refused_publish: bool = False
    """Close an MQTT 3 connection that publishes to a topic it may not (v3 has no reason codes;
    the default drops the message silently, as Mosquitto does)."""


DEFAULT_CAPABILITIES = Capabilities()
DEFAULT_COMPATIBILITIES = Compatibilities()
