"""Helpers shared by the hook tests (``test_hooks``, ``test_hook_rules``, ``test_inline``).

``recorder("on_published", on_publish=rewrite)`` builds a ``twisted_mqtt.hooks.Hook`` subclass
that overrides exactly the events named, so the broker calls it for those events only; it
records every call as ``(event, args)`` and answers as the no-op ``Hook`` does (a modifying
event's value passed through, an observer's None) unless a function is given for the event.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from zope.interface import implementer

from twisted_mqtt.capabilities import Capabilities
from twisted_mqtt.hooks import Hook
from twisted_mqtt.interfaces import ClientInfo, IAuthorizer
from twisted_mqtt.packets import Publish, SubAck, Subscribe, Subscription
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.testing import InMemoryBroker, InMemoryClient

NEVER = 0xFFFFFFFF


class Recorder(Hook):
    """A hook that remembers the events it handled, in order."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Tuple[Any, ...]]] = []

    def of(self, event: str) -> List[Tuple[Any, ...]]:
        """The arguments of each call of ``event``."""
        return [args for name, args in self.calls if name == event]

    def events(self) -> List[str]:
        """The names of the events handled, in order."""
        return [name for name, _ in self.calls]


def _method(event: str, answer: Optional[Callable[..., Any]]) -> Callable[..., Any]:
    default = getattr(Hook, event)

    def handle(self: Recorder, *args: Any) -> Any:
        self.calls.append((event, args))
        if answer is not None:
            return answer(*args)
        return default(self, *args)

    handle.__name__ = event
    return handle


def recorder(*events: str, **answers: Callable[..., Any]) -> Recorder:
    """A ``Recorder`` handling ``events`` and the events of ``answers`` (which answer them)."""
    namespace: Dict[str, Any] = {event: _method(event, None) for event in events}
    namespace.update({event: _method(event, answer) for event, answer in answers.items()})
    hook: Recorder = type("Recording", (Recorder,), namespace)()
    return hook


@implementer(IAuthorizer)
class Rules:
    """An authorizer answering from functions of (client id, topic or filter); each call is
    recorded in ``asked`` as (method, client id, subject)."""

    def __init__(self, publish: Callable[[str, str], Any] = lambda c, t: True,
                 subscribe: Callable[[str, str], Any] = lambda c, f: True,
                 receive: Callable[[str, str], Any] = lambda c, t: True) -> None:
        self.publish = publish
        self.subscribe = subscribe
        self.receive = receive
        self.asked: List[Tuple[str, str, str]] = []

    def may_publish(self, client: ClientInfo, topic: str) -> Any:
        self.asked.append(("publish", client.client_id, topic))
        return self.publish(client.client_id, topic)

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> Any:
        self.asked.append(("subscribe", client.client_id, topic_filter))
        return self.subscribe(client.client_id, topic_filter)

    def may_receive(self, client: ClientInfo, topic: str) -> bool:
        self.asked.append(("receive", client.client_id, topic))
        return bool(self.receive(client.client_id, topic))


def hub(*hooks: Any, start: bool = True, **caps: Any) -> InMemoryBroker:
    """An in-memory broker (every client accepted, no $SYS unless asked) with ``hooks``."""
    caps.setdefault("sys_interval", 0)
    return InMemoryBroker(capabilities=Capabilities(**caps), hooks=hooks, start=start)


def join(broker: InMemoryBroker, client_id: str, level: int = 5, clean: bool = True,
         expiry: Optional[int] = None, **fields: Any) -> InMemoryClient:
    """A client connected and accepted; ``expiry`` is its v5 Session Expiry Interval."""
    client = broker.client(protocol_level=level)
    props = fields.pop("properties", NO_PROPERTIES)
    if expiry is not None:
        props = Properties(session_expiry_interval=expiry)
    ack = client.connect(client_id, clean_start=clean, properties=props, **fields)
    assert ack.reason_code == 0, ack
    return client


def subscribe(client: InMemoryClient, topic_filter: str, qos: int = 2, packet_id: int = 1,
              **options: Any) -> List[Any]:
    """Subscribe, check the SUBACK grants it, and return what followed (retained messages)."""
    client.send(Subscribe(packet_id, (Subscription(topic_filter, qos, **options),)))
    packets = client.received()
    assert packets and isinstance(packets[0], SubAck), packets
    assert packets[0].packet_id == packet_id
    assert packets[0].reason_codes[0] < 0x80, packets[0]
    return packets[1:]


def watch(broker: InMemoryBroker, topic_filter: str = "#", qos: int = 2,
          client_id: str = "watcher", level: int = 5) -> InMemoryClient:
    """A client subscribed to ``topic_filter``."""
    client = join(broker, client_id, level)
    assert subscribe(client, topic_filter, qos) == []
    return client


def publishes(client: InMemoryClient) -> List[Publish]:
    """The packets received since the last read, all of which must be PUBLISH."""
    packets = client.received()
    assert all(isinstance(p, Publish) for p in packets), packets
    return packets


def payloads(client: InMemoryClient) -> List[bytes]:
    """The payloads of the PUBLISH packets received since the last read."""
    return [p.payload for p in publishes(client)]
