"""Wills and sessions under the ACL: a will is published only where its client may publish,
and a session is resumed only by the identity (user name) that created it.

Wills: the authorizers' ``may_publish`` decides about the will topic at CONNECT (a refusal
answers CONNACK 0x87, v3 return code 5) and again when the will is sent (a refusal drops the
will, counted in ``Stats.wills_denied`` and logged); ``$SYS`` is never writable by a will.

Sessions: a client id connected with Clean Start 0 under another user name than the session's
gets a fresh session (Session Present 0) and the old one ends as at a clean start; a resumed
session's queued and in-flight messages are checked again with ``may_receive``.

In memory on a ``task.Clock`` with the auth ledger as authorizer; docstrings cite
``[MQTT-x.y.z-n]`` (MQTT 5.0) and ``[MQTT-x.y.z-n (3.1.1)]`` labels.
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional, Tuple

import pytest
from twisted.internet.defer import Deferred

from tests.hook_helpers import Rules, hub, join, payloads, publishes, subscribe, watch
from tests.spec import check_cited_labels
from twisted_mqtt.auth.ledger import Ledger, load_ledger
from twisted_mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    Will,
)
from twisted_mqtt.properties import NO_PROPERTIES, Properties
from twisted_mqtt.storage.memory import MemoryStore
from twisted_mqtt.storage.recorder import Recorder, publish_due_wills, restore
from twisted_mqtt.testing import InMemoryBroker, InMemoryClient

NEVER = 0xFFFFFFFF
levels = pytest.mark.parametrize("level", (4, 5))

RULES = """
auth: []
acl_default: deny
acl:
  - username: mallory
    filters: {"public/#": write}
  - username: alice
    filters: {"alice/#": readwrite, "secret/#": read, "public/#": read, "$SYS/#": read}
  - username: bob
    filters: {"bob/#": readwrite, "alice/#": write}
"""
"""mallory may write only public/#; alice reads her topics, secret/# and public/#."""

RELOADED = RULES.replace('"public/#": write', '"elsewhere/#": write').replace(
    '"alice/#": readwrite, ', '"alice/#": write, ')
"""The same users after a reload: mallory's public/# and alice's reading of alice/# gone."""


def _ledger_hub(**caps: Any) -> Tuple[InMemoryBroker, Ledger]:
    ledger = Ledger.from_text(RULES)
    return hub(ledger, **caps), ledger


def _reload(hub_: InMemoryBroker, ledger: Ledger) -> None:
    """The rules change while the broker runs (as a SIGHUP reload does)."""
    ledger.rules = load_ledger(RELOADED)
    hub_.broker.acl_changed()


def _connect(hub_: InMemoryBroker, client_id: str, user: Optional[str], level: int = 5,
             clean: bool = True, expiry: int = 0, **fields: Any) -> Tuple[InMemoryClient, ConnAck]:
    client = hub_.client(protocol_level=level)
    props = Properties(session_expiry_interval=expiry) if level == 5 and expiry else NO_PROPERTIES
    return client, client.connect(client_id, clean_start=clean, properties=props, username=user,
                                  **fields)


def _user(hub_: InMemoryBroker, client_id: str, user: Optional[str], level: int = 5,
          clean: bool = True, expiry: int = 0, **fields: Any) -> InMemoryClient:
    client, ack = _connect(hub_, client_id, user, level, clean, expiry, **fields)
    assert ack.reason_code == 0, ack
    return client


def _refused_as_not_authorized(ack: ConnAck, level: int) -> None:
    assert ack.session_present is False
    assert ack.reason_code == (0x87 if level == 5 else 5), ack


def _will_lines(logged: List[str]) -> List[str]:
    return [line for line in logged if "will" in line and "not authori" in line]


# -- wills at CONNECT ---------------------------------------------------------------------------


@levels
@pytest.mark.parametrize("topic,retain", (("secret/will", False), ("alice/will", True),
                                          ("$SYS/will", False)))
def test_will_topic_refused_at_connect(level: int, topic: str, retain: bool,
                                       logged: List[str]) -> None:
    """A will on a topic its client may not publish to is refused with CONNACK 0x87 (v3
    return code 5), Session Present 0, and the connection closed: the authorisation check of
    [MQTT-3.1.4-2] covers the Will Message, which would otherwise have to be stored and
    published [MQTT-3.1.2-7, MQTT-3.1.2-8 (3.1.1)]; nothing is published, nothing retained
    [MQTT-3.2.2-6, MQTT-3.2.2-4 (3.1.1)]."""
    hub_, _ = _ledger_hub()
    alice = _user(hub_, "alice-reader", "alice")
    for packet_id, topic_filter in enumerate(("secret/#", "alice/#", "$SYS/#"), 1):
        subscribe(alice, topic_filter, 1, packet_id)
    mallory, ack = _connect(hub_, "m", "mallory", level, will=Will(topic, b"W", 0, retain))
    _refused_as_not_authorized(ack, level)
    assert mallory.closed
    mallory.drop()
    hub_.advance(1)
    assert publishes(alice) == []
    assert topic not in hub_.broker.retained and "m" not in hub_.broker.sessions
    assert len(_will_lines(logged)) == 1, logged


@levels
def test_will_topic_allowed_is_published(level: int) -> None:
    """A will on a topic its client may publish to is accepted and published when the
    connection breaks [MQTT-3.1.2-8, MQTT-3.1.2-8 (3.1.1)]."""
    hub_, _ = _ledger_hub()
    alice = _user(hub_, "alice-reader", "alice")
    subscribe(alice, "public/#", 1)
    mallory = _user(hub_, "m", "mallory", level, will=Will("public/will", b"W", 1))
    mallory.drop()
    assert payloads(alice) == [b"W"]
    assert hub_.broker.stats.wills_sent == 1


@levels
def test_sys_will_refused_without_any_authorizer(level: int) -> None:
    """With no authorizer installed (everything allowed), a will on ``$SYS`` is still
    refused: the broker's own topics are never writable by a client [MQTT-3.1.4-2]."""
    hub_ = hub()
    client, ack = _connect(hub_, "c", None, level, will=Will("$SYS/broker/uptime", b"0"))
    _refused_as_not_authorized(ack, level)


@pytest.mark.parametrize("allowed", (True, False))
def test_will_decided_later(allowed: bool) -> None:
    """An authorizer answering about the will with a Deferred holds the CONNECT and the
    packets after it; the answer then accepts (the held packets handled in order) or refuses
    with 0x87 [MQTT-3.1.4-2, MQTT-3.2.2-6]."""
    answers: List[Deferred] = []

    def publish(client_id: str, topic: str) -> Any:
        answers.append(Deferred())
        return answers[-1]

    hub_ = hub(Rules(publish=publish))
    client = hub_.client(protocol_level=5)
    client.send(Connect("c", 5, True, 0, will=Will("w", b"W")), PingReq())
    assert client.received() == [] and len(answers) == 1
    answers[0].callback(allowed)
    packets = client.received()
    if allowed:
        assert packets == [ConnAck(0, False, packets[0].properties), PingResp()]
    else:
        assert [type(p) for p in packets] == [ConnAck] and packets[0].reason_code == 0x87
        assert client.closed


# -- wills when sent ----------------------------------------------------------------------------


@pytest.mark.parametrize("when", ("connection lost", "will delay", "session ends"))
def test_will_checked_again_when_sent(when: str, logged: List[str]) -> None:
    """Rules reloaded between CONNECT and the will's publication apply to it: the will is
    dropped, counted and logged once, whether it goes out when the connection breaks, after
    its Will Delay Interval, or when a new clean start ends the session
    [MQTT-3.1.2-8, MQTT-3.1.3-9, MQTT-3.1.2-4]."""
    hub_, ledger = _ledger_hub()
    alice = _user(hub_, "alice-reader", "alice")
    subscribe(alice, "public/#", 1)
    delay = 0 if when == "connection lost" else 30
    props = Properties(will_delay_interval=delay) if delay else NO_PROPERTIES
    mallory = _user(hub_, "m", "mallory", expiry=3600,
                    will=Will("public/will", b"W", 1, properties=props))
    _reload(hub_, ledger)
    mallory.drop()
    if when == "will delay":
        hub_.advance(delay)
    elif when == "session ends":
        _user(hub_, "m", "mallory", clean=True)
    assert payloads(alice) == []
    stats = hub_.broker.stats
    assert (stats.wills_sent, stats.wills_denied) == (0, 1)
    assert len(_will_lines(logged)) == 1, logged


def test_will_checked_for_its_owner_when_sent() -> None:
    """The check at send time asks about the will's own client (its user name), not about
    an anonymous client with its client id [MQTT-3.1.2-8]."""
    asked: List[Any] = []
    ledger = Ledger.from_text(RULES)
    original = ledger.may_publish

    def may_publish(client: Any, topic: str) -> bool:
        asked.append((client.client_id, client.username, topic))
        return original(client, topic)

    ledger.may_publish = may_publish  # type: ignore[method-assign]
    hub_ = hub(ledger)
    alice = _user(hub_, "alice-reader", "alice")
    subscribe(alice, "public/#", 1)
    _user(hub_, "m", "mallory", will=Will("public/will", b"W")).drop()
    assert asked == [("m", "mallory", "public/will")] * 2
    assert payloads(alice) == [b"W"]


@pytest.mark.parametrize("allowed", (True, False))
def test_will_decided_later_when_sent(allowed: bool) -> None:
    """An authorizer answering with a Deferred when the will is due: the will goes out (or
    is dropped and counted) when the answer comes [MQTT-3.1.2-8]."""
    pending: List[Deferred] = []

    def publish(client_id: str, topic: str) -> Any:
        if client_id == "c" and not pending and topic == "w":
            pending.append(Deferred())  # the first answer (CONNECT) is immediate
            return True
        pending.append(Deferred())
        return pending[-1]

    hub_ = hub(Rules(publish=publish))
    watcher = watch(hub_, "w", 1)
    join(hub_, "c", will=Will("w", b"W")).drop()
    assert publishes(watcher) == [] and len(pending) == 2
    pending[1].callback(allowed)
    assert payloads(watcher) == ([b"W"] if allowed else [])
    assert hub_.broker.stats.wills_denied == (0 if allowed else 1)


# -- sessions belong to an identity -------------------------------------------------------------


def _leave_three_queued(hub_: InMemoryBroker, level: int) -> None:
    """alice leaves a persistent session "phone" with three QoS 1 messages queued."""
    phone = _user(hub_, "phone", "alice", level, clean=False, expiry=NEVER)
    subscribe(phone, "alice/inbox", 1)
    phone.send(Disconnect())
    sender = _user(hub_, "alice-sender", "alice")
    for number in range(3):
        sender.send(Publish("alice/inbox", b"m%d" % number, 1, packet_id=number + 1))
    assert len(hub_.broker.sessions["phone"].queue) == 3


@levels
def test_other_user_gets_a_fresh_session(level: int, logged: List[str]) -> None:
    """bob connecting with alice's client id and Clean Start 0 gets Session Present 0 and
    none of her queued messages or subscriptions: her session is discarded as at a clean
    start [MQTT-3.1.2-4, MQTT-3.2.2-3, MQTT-3.1.2-6 (3.1.1), MQTT-3.2.2-3 (3.1.1)]."""
    hub_, _ = _ledger_hub()
    _leave_three_queued(hub_, level)
    bob, ack = _connect(hub_, "phone", "bob", level, clean=False, expiry=NEVER)
    assert ack.reason_code == 0 and ack.session_present is False
    assert publishes(bob) == []
    session = hub_.broker.sessions["phone"]
    assert (session.subscriptions, list(session.queue), session.inflight) == ({}, [], {})
    assert hub_.broker.stats.dropped == 3
    assert len([line for line in logged if "not resumed" in line]) == 1, logged
    bob.send(Disconnect())
    alice, ack = _connect(hub_, "phone", "alice", level, clean=False, expiry=NEVER)
    assert ack.session_present is False  # bob's fresh session is not hers either


@levels
def test_same_user_resumes_the_session(level: int) -> None:
    """alice connecting again with her client id and Clean Start 0 resumes her session:
    Session Present 1 and her three queued messages [MQTT-3.1.2-5, MQTT-3.2.2-3,
    MQTT-3.1.2-4 (3.1.1), MQTT-3.2.2-2 (3.1.1)]."""
    hub_, _ = _ledger_hub()
    _leave_three_queued(hub_, level)
    alice, ack = _connect(hub_, "phone", "alice", level, clean=False, expiry=NEVER)
    assert ack.session_present is True
    assert payloads(alice) == [b"m0", b"m1", b"m2"]


@pytest.mark.parametrize("first,second", (("alice", None), (None, "alice")))
def test_anonymous_is_an_identity_of_its_own(first: Optional[str],
                                             second: Optional[str]) -> None:
    """A session made without a user name is not resumed by a named user, nor the other way
    round [MQTT-3.2.2-3]."""
    hub_ = hub()
    _user(hub_, "c", first, clean=False, expiry=NEVER).send(Disconnect())
    _, ack = _connect(hub_, "c", second, clean=False, expiry=NEVER)
    assert ack.session_present is False
    _, ack = _connect(hub_, "c", second, clean=False, expiry=NEVER)
    assert ack.session_present is True


@levels
def test_live_takeover_by_other_user(level: int) -> None:
    """bob connecting with the client id of the connected alice still closes her connection
    (v5: DISCONNECT 0x8E) [MQTT-3.1.4-3, MQTT-3.1.4-2 (3.1.1)], but gets a fresh session,
    without her unacknowledged message [MQTT-3.2.2-3]."""
    hub_, _ = _ledger_hub()
    alice = _user(hub_, "phone", "alice", level, clean=False, expiry=NEVER)
    subscribe(alice, "alice/inbox", 1)
    _user(hub_, "alice-sender", "alice").send(Publish("alice/inbox", b"secret", 1,
                                                      packet_id=1))
    assert payloads(alice) == [b"secret"]  # and not acknowledged
    bob, ack = _connect(hub_, "phone", "bob", level, clean=False, expiry=NEVER)
    assert alice.closed
    if level == 5:
        assert alice.received() == [Disconnect(0x8E)]
    assert ack.session_present is False
    assert publishes(bob) == []
    assert hub_.broker.sessions["phone"].inflight == {}


@levels
def test_resumed_queue_checked_with_may_receive(level: int) -> None:
    """Queued and in-flight messages of a resumed session are checked again with
    ``may_receive``: those the client may no longer read (rules reloaded while it was away)
    are dropped and counted, not sent nor resent [MQTT-3.1.2-5, MQTT-4.4.0-1]."""
    hub_, ledger = _ledger_hub()
    phone = _user(hub_, "phone", "alice", level, clean=False, expiry=NEVER)
    subscribe(phone, "alice/#", 1)
    subscribe(phone, "public/#", 1, packet_id=2)
    sender = _user(hub_, "alice-sender", "alice")
    sender.send(Publish("alice/inbox", b"in flight", 1, packet_id=1))
    assert payloads(phone) == [b"in flight"]
    phone.drop()
    sender.send(Publish("alice/inbox", b"queued", 1, packet_id=2))
    _user(hub_, "m", "mallory").send(Publish("public/news", b"still allowed", 1, packet_id=1))
    _reload(hub_, ledger)
    dropped = hub_.broker.stats.dropped
    alice, ack = _connect(hub_, "phone", "alice", level, clean=False, expiry=NEVER)
    assert ack.session_present is True
    (news,) = publishes(alice)
    assert news.payload == b"still allowed"
    assert hub_.broker.stats.dropped == dropped + 2
    alice.send(PubAck(news.packet_id))  # type: ignore[arg-type]
    assert hub_.broker.sessions["phone"].inflight == {}


@levels
def test_restored_session_keeps_its_owner(level: int) -> None:
    """A session restored from a store after a restart is resumed only by the user that
    made it: bob gets a fresh one, alice hers [MQTT-3.1.2-5, MQTT-3.2.2-3,
    MQTT-3.1.2-4 (3.1.1)]."""
    store = MemoryStore()
    first = InMemoryBroker(authorizer=Ledger.from_text(RULES), start=False)
    Recorder(first.broker, store).open()
    first.broker.start()
    _leave_three_queued(first, level)
    first.clock.advance(0)  # the recorder writes the turn's changes
    for resumer, present in (("bob", False), ("alice", True)):
        again = InMemoryBroker(authorizer=Ledger.from_text(RULES))
        restore(again.broker, store.state())
        client, ack = _connect(again, "phone", resumer, level, clean=False, expiry=NEVER)
        assert ack.session_present is present
        assert len(publishes(client)) == (3 if present else 0)


@pytest.mark.parametrize("rules,sent", ((RULES, True), (RELOADED, False)),
                         ids=("allowed", "reloaded"))
def test_will_due_after_restart_checked_for_its_owner(rules: str, sent: bool) -> None:
    """A stored will that fell due while the broker was down is published at restart only if
    the rules then in force let its client (the user name stored with its session) publish
    to its topic [MQTT-3.1.2-8, MQTT-3.1.3-9]."""
    store = MemoryStore()
    first = InMemoryBroker(authorizer=Ledger.from_text(RULES), start=False)
    Recorder(first.broker, store).open()
    first.broker.start()
    will = Will("public/will", b"W", 1, properties=Properties(will_delay_interval=30))
    _user(first, "m", "mallory", expiry=3600, will=will).drop()
    first.clock.advance(0)
    again = InMemoryBroker(authorizer=Ledger.from_text(rules))
    again.clock.advance(60)
    restored = restore(again.broker, store.state())
    alice = _user(again, "alice-reader", "alice")
    subscribe(alice, "public/#", 1)
    publish_due_wills(again.broker, restored)
    assert payloads(alice) == ([b"W"] if sent else [])
    assert again.broker.stats.wills_denied == (0 if sent else 1)


def test_cited_labels() -> None:
    """Every label cited in this module exists in the specification it names
    [MQTT-3.1.4-2]."""
    check_cited_labels(sys.modules[__name__], every_test=True)

