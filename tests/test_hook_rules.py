"""How hooks combine (``twisted_mqtt.hooks``): several authenticators, several authorizers,
decisions that arrive later as Deferreds, chains of modifying hooks, and the cost-free skipping
of events no hook handles.  Also ``verifyObject`` on every shipped hook implementation.

The rules proven here:

- authentication: authenticators are asked in order; the first answering True lets the client
  in and no later one is asked; a ``Veto`` refuses at once; otherwise the first reason code given
  refuses (else 0x87); no authenticator refuses everyone; one that raises counts as a refusal
  with 0x80 (the next one is still asked);
- authorisation: every authorizer must allow (a deny wins, and the later ones are not asked);
  one that raises denies; ``may_receive`` hides a topic from a client whatever it subscribed
  to, retained and shared deliveries included, and ``Broker.acl_changed`` applies new rules;
- a Deferred decision holds the client's later packets, which are then handled in order;
- modifying hooks pass their answer to the next hook in order; None or a ``Veto`` stops the
  chain; one that raises is skipped;
- an event no hook overrides has an empty tuple of callbacks.

In memory on a ``task.Clock``; docstrings cite ``[MQTT-x.y.z-n]`` (MQTT 5.0) and
``[MQTT-x.y.z-n (3.1.1)]`` labels a test also proves.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, List

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

import twisted_mqtt.auth
from tests.hook_helpers import (
    Rules,
    hub,
    join,
    payloads,
    publishes,
    recorder,
    subscribe,
    watch,
)
from tests.spec import check_cited_labels
from twisted_mqtt.auth import AllowAll, AllowAllTopics, DenyAll, LocalOnly
from twisted_mqtt.broker import Broker
from twisted_mqtt.capabilities import Capabilities
from twisted_mqtt.hooks import EVENT_INTERFACES, EVENTS, Hook, Hooks
from twisted_mqtt.interfaces import (
    ClientInfo,
    ConnectRequest,
    IAuthenticator,
    IAuthorizer,
    IPublishHook,
    Veto,
)
from twisted_mqtt.packets import (
    ConnAck,
    Connect,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    PubRec,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
)
from twisted_mqtt.session import Message
from twisted_mqtt.testing import InMemoryBroker

levels = pytest.mark.parametrize("level", (4, 5))


@implementer(IAuthenticator)
class Answer:
    """An authenticator with a fixed answer, counting how often it was asked."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked = 0

    def authenticate(self, request: ConnectRequest) -> Any:
        self.asked += 1
        return self.answer


@implementer(IAuthenticator)
class Raising:
    """An authenticator whose directory is down."""

    def __init__(self) -> None:
        self.asked = 0

    def authenticate(self, request: ConnectRequest) -> Any:
        self.asked += 1
        raise RuntimeError("directory down")


def _authenticated_by(*authenticators: Any, level: int = 5) -> ConnAck:
    """The CONNACK a client gets from a broker with these authenticators (and no other)."""
    broker = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authenticator=None,
                            hooks=authenticators)
    return broker.client(protocol_level=level).connect("c")


# -- authentication -----------------------------------------------------------------------------


@levels
def test_first_accepting_authenticator_wins(level: int) -> None:
    """Authenticators are asked in order; None and False leave the decision to the next; the
    first True lets the client in (CONNACK 0x00 [MQTT-3.1.4-5, MQTT-3.1.4-4 (3.1.1)]) and no
    later one is asked."""
    chain = [Answer(None), Answer(False), Answer(True), Answer(Veto(0x8A))]
    ack = _authenticated_by(*chain, level=level)
    assert ack.reason_code == 0
    assert [a.asked for a in chain] == [1, 1, 1, 0]


@levels
def test_veto_stops_authentication(level: int) -> None:
    """A ``Veto`` refuses at once with its reason code (v5 0x8A, v3 return code 5), Session
    Present 0 [MQTT-3.2.2-6, MQTT-3.2.2-7, MQTT-3.2.2-5 (3.1.1)]; later authenticators are
    not asked, even one that would accept."""
    chain = [Answer(None), Answer(Veto(0x8A)), Answer(True)]
    ack = _authenticated_by(*chain, level=level)
    assert ack == ConnAck(0x8A if level == 5 else 5)
    assert [a.asked for a in chain] == [1, 1, 0]


@levels
def test_first_reason_code_used_when_none_accepts(level: int) -> None:
    """When no authenticator lets the client in, the first reason code given refuses it (0x86
    Bad user name or password; v3 return code 4); with no reason code at all, 0x87 (v3: 5)
    [MQTT-3.1.4-2, MQTT-3.2.2-8, MQTT-3.2.2-5 (3.1.1)]."""
    chain = [Answer(None), Answer(0x86), Answer(0x8C), Answer(False)]
    assert _authenticated_by(*chain, level=level) == ConnAck(0x86 if level == 5 else 4)
    assert [a.asked for a in chain] == [1, 1, 1, 1]
    silent = [Answer(None), Answer(False)]
    assert _authenticated_by(*silent, level=level) == ConnAck(0x87 if level == 5 else 5)


@levels
def test_no_authenticator_refuses(level: int) -> None:
    """With no authenticator installed every client is refused with 0x87 (v3: 5), whatever
    other hooks there are [MQTT-3.1.4-2, MQTT-3.2.2-5 (3.1.1)]."""
    ack = _authenticated_by(recorder("on_connect"), AllowAllTopics(), level=level)
    assert ack == ConnAck(0x87 if level == 5 else 5)


@levels
def test_raising_authenticator_refuses(level: int) -> None:
    """An authenticator that raises refuses for its part with 0x80 (v3: 5), fail closed
    [MQTT-3.1.4-2, MQTT-3.2.2-5 (3.1.1)]: alone it keeps the client out, before another
    refusal its 0x80 is the first reason code; a later authenticator may still let the
    client in (an answer of its own)."""
    assert _authenticated_by(Raising(), level=level) == ConnAck(0x80 if level == 5 else 5)
    assert _authenticated_by(Raising(), Answer(0x86), level=level) == ConnAck(
        0x80 if level == 5 else 5)
    assert _authenticated_by(Raising(), Answer(True), level=level).reason_code == 0


@levels
def test_deferred_authenticators(level: int) -> None:
    """A Deferred answer holds the connection: nothing is answered, and the packets sent after
    CONNECT wait [MQTT-3.1.4-6]; when it fires None the next authenticator is asked, and on
    acceptance CONNACK comes first, then the held packets are handled in order
    [MQTT-4.6.0-6, MQTT-3.2.0-1 (3.1.1)]."""
    first, second, third = Answer(None), Answer(True), Answer(True)
    broker = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authenticator=first,
                            hooks=[second, third])
    watcher = join(broker, "w")
    assert [a.asked for a in (first, second, third)] == [1, 1, 0]
    subscribe(watcher, "t", 1)
    later: Deferred[Any] = Deferred()
    first.answer = later
    client = broker.client(protocol_level=level)
    client.send(Connect("c", level), Subscribe(1, (Subscription("t", 1),)),
                Publish("t", b"one", 1, packet_id=2), Publish("t", b"two", 0), PingReq())
    broker.advance(5)
    assert client.received() == []
    assert second.asked == 1
    later.callback(None)
    assert [a.asked for a in (first, second, third)] == [2, 2, 0]
    packets = client.received()
    assert [type(p) for p in packets] == [ConnAck, SubAck, Publish, PubAck, Publish, PingResp]
    assert payloads(watcher) == [b"one", b"two"]


@levels
def test_deferred_veto(level: int) -> None:
    """A Deferred firing a ``Veto`` refuses with its code and the later authenticators are not
    asked; the held packets are never handled [MQTT-3.1.4-2, MQTT-3.2.2-6,
    MQTT-3.1.4-5 (3.1.1)]."""
    pending: Deferred[Any] = Deferred()
    first, second = Answer(pending), Answer(True)
    broker = InMemoryBroker(capabilities=Capabilities(sys_interval=0), authenticator=first,
                            hooks=[second])
    client = broker.client(protocol_level=level)
    client.send(Connect("c", level), Publish("t", b"held", 0))
    pending.callback(Veto(0x8C))
    assert client.received() == [ConnAck(0x8C if level == 5 else 5)]
    assert second.asked == 0
    assert client.closed
    assert "c" not in broker.broker.sessions


def test_synchronous_decisions_stay_synchronous() -> None:
    """With synchronous hooks the chain answers synchronously (no Deferred on the hot path):
    0 to accept, and plain booleans from the authorizers [MQTT-3.1.4-2]."""
    hooks = Hooks()
    hooks.add(Answer(None))
    hooks.add(AllowAll())
    hooks.add(AllowAllTopics())
    hooks.add(Rules(publish=lambda c, t: t != "no"))
    client = ClientInfo("c")
    assert hooks.authenticate(ConnectRequest(client)) == 0
    assert hooks.may_publish(client, "yes") is True
    assert hooks.may_publish(client, "no") is False
    assert hooks.may_subscribe(client, "#") is True
    assert hooks.allowed_to_receive(client, "x") is True


# -- authorisation ------------------------------------------------------------------------------


@levels
def test_every_authorizer_must_allow(level: int) -> None:
    """Every authorizer must allow a PUBLISH or a SUBSCRIBE; a deny wins and the authorizers
    after it are not asked: the v5 PUBACK and SUBACK say 0x87, a v3 SUBACK 0x80 and the
    message goes nowhere [MQTT-3.4.2-1, MQTT-3.9.3-1, MQTT-3.9.3-2 (3.1.1)]."""
    first = Rules(publish=lambda c, t: t != "a-denies", subscribe=lambda c, f: f != "a-denies")
    second = Rules(publish=lambda c, t: t != "b-denies", subscribe=lambda c, f: f != "b-denies")
    broker = hub(first, second)
    watcher = watch(broker, "#")
    client = join(broker, "c", level)
    client.send(Publish("a-denies", b"1", 1, packet_id=1), Publish("b-denies", b"2", 1,
                                                                    packet_id=2),
                Publish("ok", b"3", 1, packet_id=3))
    code = 0x87 if level == 5 else 0
    assert client.received() == [PubAck(1, code), PubAck(2, code), PubAck(3)]
    assert payloads(watcher) == [b"3"]
    asked = [(name, topic) for name, cid, topic in first.asked if cid == "c"]
    assert asked == [("publish", "a-denies"), ("publish", "b-denies"), ("publish", "ok")]
    asked = [(name, topic) for name, cid, topic in second.asked if cid == "c"]
    assert asked == [("publish", "b-denies"), ("publish", "ok")]
    client.send(Subscribe(4, (Subscription("a-denies", 1), Subscription("b-denies", 1),
                              Subscription("ok", 1))))
    refused = 0x87 if level == 5 else 0x80
    assert client.received() == [SubAck(4, (refused, refused, 1))]


@levels
def test_deferred_may_publish_keeps_order(level: int) -> None:
    """A Deferred ``may_publish`` holds the packets the client sends after that PUBLISH; when
    it fires they are handled in order: the PUBACK comes before the PINGRESP of a PINGREQ sent
    after it [MQTT-4.6.0-6, MQTT-3.12.4-1], and the messages reach subscribers in the order
    sent [MQTT-4.6.0-5].  A refusal fired later answers PUBACK 0x87 (v5) in its place."""
    pending: List[Deferred[Any]] = []

    def slow(client_id: str, topic: str) -> Any:
        if not topic.startswith("slow"):
            return True
        decision: Deferred[Any] = Deferred()
        pending.append(decision)
        return decision

    broker = hub(Rules(publish=slow))
    watcher = watch(broker, "#", 1)
    client = join(broker, "c", level)
    client.send(Publish("slow/1", b"a", 1, packet_id=1), PingReq(),
                Publish("fast", b"b", 1, packet_id=2), Publish("slow/2", b"c", 2, packet_id=3),
                Publish("fast", b"d", 0))
    assert client.received() == []
    assert watcher.received() == []
    pending[0].callback(True)
    assert client.received() == [PubAck(1), PingResp(), PubAck(2)]
    pending[1].callback(False)
    assert client.received() == [PubRec(3, 0x87 if level == 5 else 0)]
    assert payloads(watcher) == [b"a", b"b", b"d"]


def test_deferred_may_publish_for_a_run_of_qos0() -> None:
    """A run of QoS 0 PUBLISH packets to one topic waits for one Deferred decision, and the
    packets after the run wait with it; all are then handled in order [MQTT-4.6.0-6]."""
    decision: Deferred[Any] = Deferred()
    broker = hub(Rules(publish=lambda c, t: decision if t == "slow" else True))
    watcher = watch(broker, "#", 0)
    client = join(broker, "c")
    client.send(Publish("slow", b"1"), Publish("slow", b"2"), Publish("other", b"3"), PingReq())
    assert client.received() == [] and watcher.received() == []
    decision.callback(True)
    assert client.received() == [PingResp()]
    assert payloads(watcher) == [b"1", b"2", b"3"]


@levels
def test_deferred_may_subscribe(level: int) -> None:
    """A Deferred ``may_subscribe`` holds the SUBACK and the packets after it; when the
    decisions are in, the SUBACK has one code per filter in order (the refused one 0x87, v3
    0x80) [MQTT-3.8.4-6, MQTT-3.9.3-1, MQTT-3.9.3-1 (3.1.1)], then the later packets are
    handled."""
    decision: Deferred[Any] = Deferred()
    broker = hub(Rules(subscribe=lambda c, f: decision if f == "maybe" else True))
    client = join(broker, "c", level)
    client.send(Subscribe(1, (Subscription("yes", 1), Subscription("maybe", 1))), PingReq(),
                Publish("yes", b"mine", 1, packet_id=5))
    assert client.received() == []
    decision.callback(False)
    packets = client.received()
    refused = 0x87 if level == 5 else 0x80
    assert packets[:2] == [SubAck(1, (1, refused)), PingResp()]
    assert sorted(type(p).__name__ for p in packets[2:]) == ["PubAck", "Publish"]
    assert list(broker.broker.sessions["c"].subscriptions) == ["yes"]


def test_mixed_synchronous_and_deferred_authorizers() -> None:
    """A synchronous authorizer and a Deferred one combine: the Deferred's allow lets the next
    one decide, and a later deny still wins [MQTT-3.4.2-1]."""
    decision: Deferred[Any] = Deferred()
    broker = hub(Rules(publish=lambda c, t: decision), Rules(publish=lambda c, t: t == "ok"))
    watcher = watch(broker, "#")
    client = join(broker, "c")
    client.send(Publish("no", b"x", 1, packet_id=1))
    decision.callback(True)
    assert client.received() == [PubAck(1, 0x87)]
    assert watcher.received() == []


def test_raising_authorizer_denies() -> None:
    """An authorizer that raises denies (fail closed): PUBACK 0x87, SUBACK 0x87 [MQTT-3.4.2-1,
    MQTT-3.9.3-1], no delivery from ``may_receive``; so does a ``may_publish`` Deferred that
    fails."""

    def boom(*args: Any) -> Any:
        raise RuntimeError("ACL store down")

    failing: Deferred[Any] = Deferred()
    rules = Rules(publish=lambda c, t: failing if t == "later" else boom(),
                  subscribe=lambda c, f: boom() if f == "bad" else True,
                  receive=lambda c, t: boom() if t == "hidden" else True)
    broker = hub(rules)
    watcher = watch(broker, "#", 1)
    client = join(broker, "c")
    client.send(Publish("now", b"x", 1, packet_id=1), Publish("later", b"y", 1, packet_id=2))
    failing.errback(RuntimeError("timeout"))
    assert client.received() == [PubAck(1, 0x87), PubAck(2, 0x87)]
    client.send(Subscribe(3, (Subscription("bad", 0),)))
    assert client.received() == [SubAck(3, (0x87,))]
    broker.broker.inline.publish("hidden", b"z")
    broker.broker.inline.publish("shown", b"w")
    assert payloads(watcher) == [b"w"]


def test_may_receive_hides_topics() -> None:
    """``may_receive`` decides what a client is sent whatever filter it holds: a client
    subscribed to "#" never gets a topic it may not read, neither as it is published, nor as
    a retained message when it subscribes, nor through a shared subscription (another member
    that may read it gets it) [MQTT-4.8.2-3, MQTT-3.3.1-9]."""
    rules = Rules(receive=lambda c, t: not t.startswith("private/") or c.startswith("owner"))
    broker = hub(rules)
    nosy = watch(broker, "#", 1, client_id="nosy")
    owner = watch(broker, "#", 1, client_id="owner")
    publisher = join(broker, "p")
    publisher.send(Publish("private/x", b"secret", 0), Publish("public", b"news", 0),
                   Publish("private/r", b"kept", 1, packet_id=1, retain=True))
    assert publisher.received() == [PubAck(1)]
    assert payloads(nosy) == [b"news"]
    assert payloads(owner) == [b"secret", b"news", b"kept"]
    late = join(broker, "nosy-later")
    assert subscribe(late, "#", 1) == []
    late_owner = join(broker, "owner-later")
    assert [p.payload for p in subscribe(late_owner, "#", 1)] == [b"kept"]
    members = {name: join(broker, name) for name in ("m-nosy", "owner-member")}
    for member in members.values():
        subscribe(member, "$share/g/private/#", 0)
    for n in range(4):
        publisher.send(Publish("private/s", bytes([n]), 0))
    assert members["m-nosy"].received() == []
    assert len(publishes(members["owner-member"])) == 4


def test_acl_changed() -> None:
    """Delivery decisions are remembered per topic; ``Broker.acl_changed`` forgets them, so a
    changed ``may_receive`` rule takes effect for the next message [MQTT-4.5.0-1]."""
    readable = {"news"}
    broker = hub(Rules(receive=lambda c, t: c != "reader" or t in readable))
    reader = watch(broker, "#", 0, client_id="reader")
    publisher = join(broker, "p")
    publisher.send(Publish("news", b"1"), Publish("gossip", b"2"))
    assert payloads(reader) == [b"1"]
    readable.clear()
    readable.add("gossip")
    broker.broker.acl_changed()
    publisher.send(Publish("news", b"3"), Publish("gossip", b"4"))
    assert payloads(reader) == [b"4"]


# -- modifying chains ---------------------------------------------------------------------------


def _appending(tag: bytes) -> Any:
    return lambda client, message: message.evolve(payload=message.payload + tag)


def test_modifying_chain_in_order() -> None:
    """Each ``on_publish`` hook gets the previous hook's answer, in the order the hooks were
    added (``add(first=True)`` puts one before the others); the subscriber gets the last
    answer [MQTT-4.5.0-1]."""
    one, two = recorder(on_publish=_appending(b"1")), recorder(on_publish=_appending(b"2"))
    broker = hub(one, two)
    zero = recorder(on_publish=_appending(b"0"))
    broker.broker.hooks.add(zero, first=True)
    watcher = watch(broker, "t")
    join(broker, "p").send(Publish("t", b"m", 0))
    assert payloads(watcher) == [b"m012"]
    assert [m.payload for _, m in one.of("on_publish")] == [b"m0"]
    assert [m.payload for _, m in two.of("on_publish")] == [b"m01"]


@pytest.mark.parametrize("stop", (None, Veto(0x97)))
def test_modifying_chain_stops(stop: Any) -> None:
    """None (drop) or a ``Veto`` from a modifying hook ends the chain: the hooks after it are
    not asked and the message goes nowhere; the v5 PUBACK is 0x00 for a drop, the veto's code
    (0x97 Quota exceeded) for a veto [MQTT-3.4.2-1]."""
    first = recorder(on_publish=lambda client, message: stop)
    second = recorder("on_publish")
    broker = hub(first, second)
    watcher = watch(broker, "t")
    client = join(broker, "p")
    client.send(Publish("t", b"m", 1, packet_id=1))
    assert client.received() == [PubAck(1, 0 if stop is None else 0x97)]
    assert len(first.of("on_publish")) == 1
    assert second.calls == []
    assert watcher.received() == []


def test_veto_code_the_packet_cannot_carry() -> None:
    """A ``Veto`` is always a refusal: a reason code the answering packet cannot carry (0x8A
    Banned in PUBACK, SUBACK or UNSUBACK) or below 0x80 (even 0x00) is answered as 0x80
    Unspecified error, so the broker never sends a reason code outside the packet's table
    [MQTT-3.2.2-8, MQTT-3.4.2-1, MQTT-3.9.3-2, MQTT-3.11.3-2]."""
    veto = recorder(
        on_connect=lambda client, packet: Veto(0) if client.client_id == "zero" else None,
        on_publish=lambda client, message: Veto(0x8A),
        on_subscribe=lambda client, packet: Veto(0x8A),
        on_unsubscribe=lambda client, packet: Veto(0x00),
    )
    broker = hub(veto)
    assert broker.client(protocol_level=5).connect("zero") == ConnAck(0x80)
    client = join(broker, "c")
    client.send(Publish("t", b"x", 1, packet_id=1), Publish("t", b"y", 2, packet_id=2),
                Subscribe(3, (Subscription("t", 0),)), Unsubscribe(4, ("t",)))
    assert client.received() == [PubAck(1, 0x80), PubRec(2, 0x80), SubAck(3, (0x80,)),
                                 UnsubAck(4, (0x80,))]
    assert _authenticated_by(Answer(Veto(0))) == ConnAck(0x80)


def test_raising_modifier_is_skipped() -> None:
    """A modifying hook that raises counts as absent: the next hook gets the value it was
    given, and the message is routed [MQTT-4.5.0-1]."""

    def boom(client: ClientInfo, message: Message) -> Message:
        raise RuntimeError("hook bug")

    broken, after = recorder(on_publish=boom), recorder(on_publish=_appending(b"+"))
    broker = hub(broken, after)
    watcher = watch(broker, "t")
    join(broker, "p").send(Publish("t", b"m", 0))
    assert payloads(watcher) == [b"m+"]
    assert [m.payload for _, m in after.of("on_publish")] == [b"m"]


def test_select_subscribers_chain() -> None:
    """``on_select_subscribers`` hooks narrow the set one after the other; an empty answer
    sends the message to no non-shared subscriber [MQTT-4.5.0-1]."""
    first = recorder(on_select_subscribers=lambda message, ids: ids - {"a"})
    second = recorder(on_select_subscribers=lambda message, ids: ids - {"b"})
    broker = hub(first, second)
    clients = {name: watch(broker, "t", client_id=name) for name in "abc"}
    join(broker, "p").send(Publish("t", b"m", 0))
    assert {name: payloads(c) for name, c in clients.items()} == {
        "a": [], "b": [], "c": [b"m"]}
    assert second.of("on_select_subscribers")[0][1] == frozenset("bc")
    broker.broker.hooks.add(recorder(on_select_subscribers=lambda m, ids: frozenset()))
    join(broker, "q").send(Publish("t", b"n", 0))
    assert all(c.received() == [] for c in clients.values())


# -- cost-free skipping -------------------------------------------------------------------------


def test_no_hooks_no_callbacks() -> None:
    """A broker without hooks has an empty tuple of callbacks for every event, no
    authenticator and no authorizer: each hook point costs one empty-tuple test, and the
    library default refuses every client [MQTT-3.1.4-2]."""
    broker = Broker(Clock())
    assert len(EVENTS) == 33
    for event in EVENTS:
        assert getattr(broker.hooks, event) == (), event
    assert broker.hooks.authenticators == ()
    assert broker.hooks.authorizers == ()
    assert broker.hooks.may_receive == ()
    assert len(broker.hooks) == 0


def test_hook_overriding_one_event() -> None:
    """A ``Hook`` subclass overriding one method is called for that event only: its method is
    the only callback of ``on_published`` and every other event's tuple stays empty; the
    connections stay on their fast paths (no packet hook); removing it empties the tuple
    again.  The event still fires [MQTT-4.5.0-1]."""

    class Counting(Hook):
        def __init__(self) -> None:
            self.count = 0

        def on_published(self, client: ClientInfo, message: Any, count: int) -> None:
            self.count += 1

    hook = Counting()
    broker = hub(hook)
    hooks = broker.broker.hooks
    assert hooks.on_published == (hook.on_published,)
    assert [e for e in EVENTS if getattr(hooks, e)] == ["on_published"]
    client = join(broker, "c")
    assert client.connection._observed is False
    client.send(Publish("t", b"x", 0))
    assert hook.count == 1
    hooks.remove(hook)
    assert hooks.on_published == ()
    packet_hook = recorder("on_packet_sent")
    hooks.add(packet_hook)
    assert [e for e in EVENTS if getattr(hooks, e)] == ["on_packet_sent"]
    assert join(broker, "d").connection._observed is True


def test_plain_provider_handles_its_interface_only() -> None:
    """An object that is no ``Hook`` but provides one event interface handles every event of
    that interface and no other; an authorizer is not an event hook [MQTT-4.5.0-1]."""

    namespace = {name: (lambda self, *args: args[-1]) for name in IPublishHook.names()}
    Publishing = implementer(IPublishHook)(type("Publishing", (), namespace))
    hooks = Hooks()
    hooks.add(Publishing())
    hooks.add(AllowAllTopics())
    handled = sorted(e for e in EVENTS if getattr(hooks, e))
    assert handled == sorted(IPublishHook.names())
    assert len(hooks.authorizers) == 1


# -- verifyObject -------------------------------------------------------------------------------


def test_hook_provides_every_event_interface() -> None:
    """``Hook()`` provides every event interface, checked by ``verifyObject``; its methods do
    nothing, passing a modifiable value through unchanged [MQTT-4.5.0-1]."""
    hook = Hook()
    for interface in EVENT_INTERFACES:
        assert verifyObject(interface, hook)
    message = Message("t", b"", 0, False)
    client = ClientInfo("c")
    assert hook.on_publish(client, message) is message
    assert hook.on_connect(client, None) is None
    assert hook.on_select_subscribers(message, frozenset("ab")) == frozenset("ab")


def _shipped_auth_hooks() -> List[Any]:
    """An instance of every class of ``twisted_mqtt.auth`` that implements ``IAuthenticator``
    or ``IAuthorizer`` and takes no argument."""
    found = []
    for value in vars(twisted_mqtt.auth).values():
        if not inspect.isclass(value) or value.__module__ != twisted_mqtt.auth.__name__:
            continue
        if not (IAuthenticator.implementedBy(value) or IAuthorizer.implementedBy(value)):
            continue
        if all(p.default is not p.empty for p in
               list(inspect.signature(value).parameters.values())):
            found.append(value())
    return found


def test_shipped_auth_hooks_verify() -> None:
    """``AllowAll``, ``DenyAll``, ``LocalOnly``, ``AllowAllTopics`` (and any other argument-free
    class of ``twisted_mqtt.auth``) pass ``verifyObject`` for the interfaces they declare;
    the authenticators answer as named [MQTT-3.1.4-2]."""
    shipped = _shipped_auth_hooks()
    names = {type(h).__name__ for h in shipped}
    assert {"AllowAll", "DenyAll", "LocalOnly", "AllowAllTopics"} <= names
    for hook in shipped:
        for interface in (IAuthenticator, IAuthorizer):
            if interface.providedBy(hook):
                assert verifyObject(interface, hook)
    assert verifyObject(IAuthorizer, AllowAllTopics())
    request = ConnectRequest(ClientInfo("c", address="10.0.0.1"))
    assert AllowAll().authenticate(request) is True
    assert DenyAll().authenticate(request) is False
    assert LocalOnly().authenticate(request) is False


def test_internal_error_after_a_deferred_decision_disconnects() -> None:
    """An unexpected error while acting on an ACL answer that came later (a Deferred) is
    handled as one while reading: the client gets DISCONNECT 0x83 and the connection closes;
    nothing escapes to Twisted as an unhandled error, and other clients are unaffected
    [MQTT-4.13.2-1]."""
    pending: Deferred[bool] = Deferred()
    broker = hub(Rules(publish=lambda c, t: pending if c == "p" else True))
    publisher = join(broker, "p")
    other = join(broker, "other")

    def broken(message: Message) -> int:
        raise RuntimeError("a bug in routing")

    broker.broker.publish = broken  # type: ignore[method-assign]
    publisher.send(Publish("t", b"x", 1, packet_id=1))
    outcome: List[Any] = []
    pending.callback(True)
    pending.addBoth(outcome.append)
    assert outcome == [None]  # the error did not travel down the Deferred
    (disconnect,) = [p for p in publisher.received() if not isinstance(p, PubAck)]
    assert getattr(disconnect, "reason_code", None) == 0x83 and publisher.closed
    other.send(PingReq())
    assert other.received() == [PingResp()]


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names."""
    check_cited_labels(sys.modules[__name__])
