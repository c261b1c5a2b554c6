"""The hook chain: which hooks handle which event, in which order, and how answers combine.

Hooks are asked in the order they were added.  The rules (docs/hooks.md tells them in full):

- authentication: the first authenticator answering True lets the client in; a ``Veto`` refuses at
  once; with no authenticator, or none letting the client in, the client is refused;
- authorisation: every authorizer must allow (a deny wins); with none, all is allowed;
- modifying events pass each hook's answer to the next hook; None (drop) or a ``Veto`` stops the
  chain;
- observing events reach every hook that handles them.

A hook that raises is logged and counts as absent, except an authenticator or authorizer, whose
exception refuses (fail closed).  Each event's callbacks are computed when a hook is added or
removed, so an event no hook handles costs one empty-tuple test.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer
from zope.interface.interface import InterfaceClass

from twisted_mqtt.interfaces import (
    ClientInfo,
    ConnectRequest,
    IAuthenticator,
    IAuthorizer,
    IConnectHook,
    IDeliveryHook,
    ILifecycleHook,
    IPacketHook,
    IPublishHook,
    ISubscribeHook,
    Veto,
)

log = Logger()

NOT_AUTHORIZED = 0x87
UNSPECIFIED_ERROR = 0x80

EVENT_INTERFACES: Tuple[InterfaceClass, ...] = (
    ILifecycleHook, IConnectHook, ISubscribeHook, IPublishHook, IDeliveryHook, IPacketHook,
)
EVENTS: Dict[str, InterfaceClass] = {
    name: interface for interface in EVENT_INTERFACES for name in interface.names()
}
"""Every event name and the interface that declares it."""


@implementer(*EVENT_INTERFACES)
class Hook:
    """A hook that does nothing: subclass it and override the events you need.  Only the
    overridden methods are ever called."""

    def on_started(self, broker: Any) -> None:
        """Observe."""

    def on_stopped(self, broker: Any) -> None:
        """Observe."""

    def on_sys_info_tick(self, figures: Dict[str, Any]) -> None:
        """Observe."""

    def on_connect(self, client: ClientInfo, packet: Any) -> Any:
        """Allow."""
        return None

    def on_auth_packet(self, client: ClientInfo, packet: Any) -> Any:
        """Unchanged."""
        return packet

    def on_session_establish(self, client: ClientInfo, packet: Any) -> None:
        """Observe."""

    def on_session_established(self, client: ClientInfo, packet: Any,
                               session_present: bool) -> None:
        """Observe."""

    def on_disconnect(self, client: ClientInfo, reason_code: Optional[int],
                      session_kept: bool) -> None:
        """Observe."""

    def on_will(self, client_id: str, will: Any) -> Any:
        """Unchanged."""
        return will

    def on_will_sent(self, client_id: str, message: Any) -> None:
        """Observe."""

    def on_client_expired(self, client_id: str) -> None:
        """Observe."""

    def on_subscribe(self, client: ClientInfo, packet: Any) -> Any:
        """Unchanged."""
        return packet

    def on_subscribed(self, client: ClientInfo, packet: Any,
                      reason_codes: Tuple[int, ...]) -> None:
        """Observe."""

    def on_unsubscribe(self, client: ClientInfo, packet: Any) -> Any:
        """Unchanged."""
        return packet

    def on_unsubscribed(self, client: ClientInfo, packet: Any,
                        reason_codes: Tuple[int, ...]) -> None:
        """Observe."""

    def on_select_subscribers(self, message: Any, client_ids: Any) -> Any:
        """Unchanged."""
        return client_ids

    def on_publish(self, client: ClientInfo, message: Any) -> Any:
        """Unchanged."""
        return message

    def on_published(self, client: ClientInfo, message: Any, count: int) -> None:
        """Observe."""

    def on_publish_dropped(self, client_id: str, message: Any, reason: str) -> None:
        """Observe."""

    def on_retain_message(self, message: Any, change: int) -> None:
        """Observe."""

    def on_retain_published(self, client: ClientInfo, message: Any) -> None:
        """Observe."""

    def on_retained_expired(self, topic: str) -> None:
        """Observe."""

    def on_message_queued(self, client_id: str, delivery: Any) -> None:
        """Observe."""

    def on_qos_publish(self, client_id: str, packet_id: int, delivery: Any,
                       resend: bool) -> None:
        """Observe."""

    def on_qos_progress(self, client_id: str, packet_id: int, delivery: Any) -> None:
        """Observe."""

    def on_qos_complete(self, client_id: str, packet_id: int, delivery: Any) -> None:
        """Observe."""

    def on_qos_dropped(self, client_id: str, packet_id: Optional[int], delivery: Any) -> None:
        """Observe."""

    def on_packet_ids_exhausted(self, client_id: str, delivery: Any) -> None:
        """Observe."""

    def on_inbound_qos2(self, client_id: str, packet_id: int, received: bool) -> None:
        """Observe."""

    def on_packet_read(self, client: ClientInfo, packet: Any) -> Any:
        """Unchanged."""
        return packet

    def on_packet_encode(self, client: ClientInfo, packet: Any) -> Any:
        """Unchanged."""
        return packet

    def on_packet_sent(self, client: ClientInfo, packet: Any, data: bytes) -> None:
        """Observe."""

    def on_packet_processed(self, client: ClientInfo, packet: Any) -> None:
        """Observe."""


def handles(hook: Any, event: str) -> bool:
    """Whether ``hook`` handles ``event``: it provides the event's interface and, if it is a
    ``Hook``, overrides the no-op method."""
    if not EVENTS[event].providedBy(hook):
        return False
    method = getattr(type(hook), event, None)
    return method is not None and method is not getattr(Hook, event)


def _normalise(answer: Any) -> Any:
    """An authenticator's answer as 0 (accept), a ``Veto``, a reason code or None (no)."""
    if answer is True:
        return 0
    if answer is False or answer is None:
        return None
    if isinstance(answer, Veto):
        return answer
    return int(answer) if int(answer) >= 0x80 else UNSPECIFIED_ERROR


Callbacks = Tuple[Callable[..., Any], ...]


class Hooks:
    """The hooks installed on a broker, with one tuple of callbacks per event (empty when no
    hook handles it)."""

    on_started: Callbacks
    on_stopped: Callbacks
    on_sys_info_tick: Callbacks
    on_connect: Callbacks
    on_auth_packet: Callbacks
    on_session_establish: Callbacks
    on_session_established: Callbacks
    on_disconnect: Callbacks
    on_will: Callbacks
    on_will_sent: Callbacks
    on_client_expired: Callbacks
    on_subscribe: Callbacks
    on_subscribed: Callbacks
    on_unsubscribe: Callbacks
    on_unsubscribed: Callbacks
    on_select_subscribers: Callbacks
    on_publish: Callbacks
    on_published: Callbacks
    on_publish_dropped: Callbacks
    on_retain_message: Callbacks
    on_retain_published: Callbacks
    on_retained_expired: Callbacks
    on_message_queued: Callbacks
    on_qos_publish: Callbacks
    on_qos_progress: Callbacks
    on_qos_complete: Callbacks
    on_qos_dropped: Callbacks
    on_packet_ids_exhausted: Callbacks
    on_inbound_qos2: Callbacks
    on_packet_read: Callbacks
    on_packet_encode: Callbacks
    on_packet_sent: Callbacks
    on_packet_processed: Callbacks

    def __init__(self) -> None:
        self._hooks: List[Any] = []
        self.authenticators: Tuple[Any, ...] = ()
        self.authorizers: Tuple[Any, ...] = ()
        self.may_receive: Tuple[Callable[[ClientInfo, str], bool], ...] = ()
        self._may_publish: Callbacks = ()
        self._may_subscribe: Callbacks = ()
        self.packets = False
        """Whether a hook handles a packet event (``IPacketHook``)."""
        self._watchers: List[Callable[[], None]] = []
        self._refresh()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def add(self, hook: Any, first: bool = False) -> None:
        """Install a hook after the others (or before them, with ``first``)."""
        if first:
            self._hooks.insert(0, hook)
        else:
            self._hooks.append(hook)
        self._refresh()

    def remove(self, hook: Any) -> None:
        """Uninstall a hook."""
        self._hooks.remove(hook)
        self._refresh()

    def replace(self, interface: InterfaceClass, hook: Any) -> None:
        """Uninstall every hook providing ``interface`` and install ``hook`` in the place of the
        first of them."""
        place = next((i for i, h in enumerate(self._hooks) if interface.providedBy(h)),
                     len(self._hooks))
        kept = [h for h in self._hooks if not interface.providedBy(h)]
        kept.insert(min(place, len(kept)), hook)
        self._hooks = kept
        self._refresh()

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every change of the installed hooks (to refresh a decision
        taken from them, such as a connection's fast paths)."""
        self._watchers.append(callback)

    def _refresh(self) -> None:
        hooks = self._hooks
        for event in EVENTS:
            setattr(self, event, tuple(getattr(h, event) for h in hooks if handles(h, event)))
        self.authenticators = tuple(h for h in hooks if IAuthenticator.providedBy(h))
        self.authorizers = tuple(h for h in hooks if IAuthorizer.providedBy(h))
        self.may_receive = tuple(h.may_receive for h in self.authorizers
                                 if getattr(h, "may_receive", None) is not None)
        self._may_publish = tuple(h.may_publish for h in self.authorizers)
        self._may_subscribe = tuple(h.may_subscribe for h in self.authorizers)
        self.packets = bool(self.on_packet_read or self.on_packet_encode
                            or self.on_packet_sent or self.on_packet_processed)
        for watcher in self._watchers:
            watcher()

    # -- combination ----------------------------------------------------------------------------

    def notify(self, callbacks: Callbacks, *args: Any) -> None:
        """Call each observer; one that raises is logged and the others still run."""
        for callback in callbacks:
            try:
                callback(*args)
            except Exception:
                log.failure("hook {hook!r} failed", hook=callback)

    def modify(self, callbacks: Callbacks, *args: Any) -> Any:
        """Pass the last argument through each hook; stop at None or a ``Veto``."""
        *fixed, value = args
        for callback in callbacks:
            try:
                answer = callback(*fixed, value)
            except Exception:
                log.failure("hook {hook!r} failed; ignoring it", hook=callback)
                continue
            if answer is None or isinstance(answer, Veto):
                return answer
            value = answer
        return value

    def authenticate(self, request: ConnectRequest) -> Any:
        """0 to accept the client, or the reason code (or ``Veto``) to refuse it with; or a
        Deferred firing with that when an authenticator answers with a Deferred."""
        return self._authenticate(request, 0, None)

    def _authenticate(self, request: ConnectRequest, start: int, code: Optional[int]) -> Any:
        authenticators = self.authenticators
        for index in range(start, len(authenticators)):
            try:
                answer = authenticators[index].authenticate(request)
            except Exception:
                log.failure("authenticator {hook!r} failed", hook=authenticators[index])
                answer = UNSPECIFIED_ERROR
            if isinstance(answer, Deferred):
                return answer.addErrback(self._failed, authenticators[index]).addCallback(
                    self._then, request, index, code)
            answer = _normalise(answer)
            if answer == 0 or isinstance(answer, Veto):
                return answer
            if code is None:
                code = answer
        return NOT_AUTHORIZED if code is None else code

    def _then(self, answer: Any, request: ConnectRequest, index: int, code: Optional[int]) -> Any:
        answer = _normalise(answer)
        if answer == 0 or isinstance(answer, Veto):
            return answer
        if code is None:
            code = answer
        return self._authenticate(request, index + 1, code)

    def _failed(self, failure: Any, hook: Any) -> int:
        log.failure("authenticator {hook!r} failed", failure, hook=hook)
        return UNSPECIFIED_ERROR

    def may_publish(self, client: ClientInfo, topic: str) -> Any:
        """Whether every authorizer lets ``client`` publish to ``topic`` (a bool, or a Deferred
        firing with one)."""
        return self._all(self._may_publish, client, topic)

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> Any:
        """Whether every authorizer lets ``client`` subscribe to ``topic_filter`` (a bool, or a
        Deferred firing with one)."""
        return self._all(self._may_subscribe, client, topic_filter)

    def allowed_to_receive(self, client: ClientInfo, topic: str) -> bool:
        """Whether every authorizer lets ``client`` be sent a message on ``topic``."""
        for may_receive in self.may_receive:
            try:
                if not may_receive(client, topic):
                    return False
            except Exception:
                log.failure("authorizer {hook!r} failed", hook=may_receive)
                return False
        return True

    def _all(self, checks: Callbacks, client: ClientInfo, subject: str) -> Any:
        """True if every check allows, False at the first that does not (or raises); a
        Deferred if one answers with a Deferred."""
        for index, check in enumerate(checks):
            try:
                answer = check(client, subject)
            except Exception:
                log.failure("authorizer {hook!r} failed", hook=check)
                return False
            if answer is True:
                continue
            if isinstance(answer, Deferred):
                def next_one(allowed: Any, index: int = index) -> Any:
                    return self._all(checks[index + 1:], client, subject) if allowed else False

                def refuse(failure: Any, check: Any = check) -> bool:
                    log.failure("authorizer {hook!r} failed", failure, hook=check)
                    return False

                return answer.addCallbacks(next_one, refuse)
            if not answer:
                return False
        return True
