"""Delivery targets: what the broker sends a session's messages to.

A session's ``connection`` is a delivery target: a network client's ``Connection``, an inline
subscription's receiver, or another node of a cluster.  The broker routes to targets through
this one interface and does not know which kind it holds.  This module imports nothing of the
broker, its connections or sessions, so each of them can name the interface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol, Tuple

if TYPE_CHECKING:
    from twisted_mqtt.session import Delivery, Message


class DeliveryTarget(Protocol):
    """What the broker asks of the target of a session's messages."""

    @property
    def blocked(self) -> bool:
        """True while it takes no more messages (QoS 0 messages for it are dropped, others
        queued in the session)."""

    @property
    def blocked_since(self) -> Optional[float]:
        """Since when it has been blocked (None: it is not)."""

    @property
    def overflowed(self) -> bool:
        """True once it is being dropped for holding too much."""

    @property
    def v5(self) -> Optional[bool]:
        """The protocol family of a network client (None: not a network client), which decides
        whether a run of packets may be written to it as received."""

    @property
    def alias_max_out(self) -> int:
        """The highest topic alias it takes (0: none)."""

    @property
    def max_packet_out(self) -> Optional[int]:
        """The largest packet it takes (None: any)."""

    @property
    def acl_exempt(self) -> bool:
        """True when the authorizers are not asked what it may receive."""

    @property
    def remote(self) -> bool:
        """True for another node of a cluster: it stands for that node's subscriptions."""

    def send_qos0(self, message: Message, retain: bool, sub_ids: Tuple[int, ...]) -> None:
        """Send a QoS 0 message."""

    def send_delivery(self, delivery: Delivery) -> None:
        """Send a QoS 1/2 message (the session's send quota allowing it)."""


class ApplicationTarget:
    """The defaults of a target that is not a network client: never blocked, exempt from the
    ACL, and never sent a run of packets as they were received."""

    blocked = False
    paused = False
    acl_exempt = True
    remote = False
    v5: Optional[bool] = None
    alias_max_out = 0
    max_packet_out: Optional[int] = None
    blocked_since: Optional[float] = None
    overflowed = False


def is_remote(target: object) -> bool:
    """Whether a session's ``connection`` stands for another node of a cluster."""
    return getattr(target, "remote", False) is True
