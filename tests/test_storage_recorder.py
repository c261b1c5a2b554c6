"""The recorder: broker events turned into one store batch per reactor turn, and a restart that
restores sessions, subscriptions, queued and in-flight messages, inbound QoS 2 ids, expiry and
will timers, retained messages and counters.

Everything runs on an ``InMemoryBroker`` (a ``task.Clock``) with a ``MemoryStore``; a "restart"
is a new broker restored from the same store at the same time on its clock.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet.defer import Deferred
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_mqtt.interfaces import IStoredState
from twisted_mqtt.packets import (
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    Subscription,
    Unsubscribe,
    Will,
)
from twisted_mqtt.properties import Properties
from twisted_mqtt.session import Message
from twisted_mqtt.storage import Batch, IStore, StoredState
from twisted_mqtt.storage.memory import MemoryStore
from twisted_mqtt.storage.recorder import Recorder
from twisted_mqtt.testing import InMemoryBroker, InMemoryClient

V5 = 5
HOUR = 3600


def start(store: MemoryStore, at: float = 0.0, durable: bool = False,
          **kwargs: Any) -> Tuple[InMemoryBroker, Recorder]:
    """A broker (clock at ``at``) restored from ``store``, recording into it."""
    hub = InMemoryBroker(start=False, **kwargs)
    hub.clock.advance(at)
    recorder = Recorder(hub.broker, store, durable)
    opened: List[Any] = []
    recorder.open().addBoth(opened.append)
    assert isinstance(opened[0], StoredState), opened
    hub.broker.start()
    return hub, recorder


def turn(hub: InMemoryBroker) -> None:
    """End the reactor turn: the recorder's flush runs."""
    hub.clock.advance(0)


def persistent(hub: InMemoryBroker, client_id: str, level: int = V5, expiry: int = HOUR,
               **fields: Any) -> InMemoryClient:
    client = hub.client(protocol_level=level)
    props = Properties(session_expiry_interval=expiry) if level == V5 else Properties()
    ack = client.connect(client_id, clean_start=False, properties=props, **fields)
    assert ack.reason_code == 0
    return client


def state_of(hub: InMemoryBroker) -> Dict[str, Any]:
    """What a restart must keep, in comparable form."""
    broker = hub.broker
    sessions = {}
    for client_id, s in broker.sessions.items():
        if not s.expiry_interval:
            continue  # ends with its connection: not stored
        sessions[client_id] = {
            "expiry": s.expiry_interval,
            "level": s.protocol_level,
            "subscriptions": {f: (e.subscription, e.sub_id) for f, e in s.subscriptions.items()},
            "queue": [(d.message.topic, d.message.payload, d.qos, d.retain, d.sub_ids)
                      for d in s.queue],
            "inflight": {p: (d.message.topic, d.message.payload, d.qos, d.retain, d.sub_ids,
                             d.state) for p, d in s.inflight.items()},
            "inbound_qos2": set(s.inbound_qos2),
            "will": s.will,
            "online": s.connection is not None,
        }
    retained = {t: (m.payload, m.qos, m.properties, m.expires_at)
                for t, m in broker.retained.items() if not t.startswith("$SYS")}
    return {"sessions": sessions, "retained": retained}


def offline(state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` as it is after a restart: every session offline."""
    for session in state["sessions"].values():
        session["online"] = False
    return state


def test_interfaces() -> None:
    """The recorder is a hook that provides IStoredState; the memory store provides IStore."""
    store = MemoryStore()
    hub, recorder = start(store)
    assert verifyObject(IStoredState, recorder)
    assert verifyObject(IStore, store)
    assert recorder in list(hub.broker.hooks)
    assert recorder.stored_sessions() == [] and recorder.stored_sys_info() is None


def test_one_batch_per_turn() -> None:
    """Twenty messages queued for an offline persistent session in one turn are one commit."""
    store = MemoryStore()
    hub, recorder = start(store)
    sub = persistent(hub, "sub")
    sub.send(Subscribe(1, (Subscription("t/#", 1),)))
    sub.send(Disconnect())
    turn(hub)
    pub = hub.client()
    pub.connect("pub")
    before = store.commits
    pub.send(*[Publish("t/x", b"%d" % i, 1, packet_id=i + 1) for i in range(20)])
    assert store.commits == before  # nothing is written within the turn
    turn(hub)
    assert store.commits == before + 1
    assert len(store.batches[-1].deliveries) == 20
    assert [d.message.payload for d in store.state().sessions[0].deliveries] == [
        b"%d" % i for i in range(20)]


def test_coalescing_within_a_turn() -> None:
    """A delivery sent and acknowledged within one turn writes nothing; one acknowledged in a
    later turn is written, then deleted."""
    store = MemoryStore()
    hub, _ = start(store)
    sub = persistent(hub, "sub")
    sub.send(Subscribe(1, (Subscription("t", 1),)))
    pub = hub.client()
    pub.connect("pub")
    turn(hub)
    before = store.commits
    pub.send(Publish("t", b"a", 1, packet_id=1))
    (publish,) = [p for p in sub.received() if isinstance(p, Publish)]
    sub.send(PubAck(publish.packet_id))
    turn(hub)
    assert store.commits == before  # nothing left to write
    pub.send(Publish("t", b"b", 1, packet_id=2))
    turn(hub)
    assert [d.message.payload for d in store.batches[-1].deliveries.values()] == [b"b"]
    (publish,) = [p for p in sub.received() if isinstance(p, Publish)]
    sub.send(PubAck(publish.packet_id))
    turn(hub)
    assert list(store.batches[-1].deleted) == list(store.batches[-2].deliveries)
    assert store.deliveries == {}


def test_clean_sessions_are_not_stored() -> None:
    """Sessions that end with their connection (clean session, expiry 0) are not written."""
    store = MemoryStore()
    hub, _ = start(store)
    sub = hub.client()
    sub.connect("sub", clean_start=True)
    sub.send(Subscribe(1, (Subscription("t", 1),)))
    pub = hub.client()
    pub.connect("pub")
    pub.send(Publish("t", b"x", 1, packet_id=1))
    turn(hub)
    assert store.commits == 0 and store.heads == {}


def build_state(store: MemoryStore) -> InMemoryBroker:
    """A broker with everything a restart must keep, recorded into ``store``."""
    hub, _ = start(store)
    will = Will("wills/a", b"gone", 1, True, Properties(will_delay_interval=600))
    a = persistent(hub, "a", will=will)
    a.send(Subscribe(1, (Subscription("q1/#", 1), Subscription("q2/#", 2, no_local=True)),
                     Properties(subscription_identifiers=(7,))))
    a.send(Subscribe(2, (Subscription("gone", 1),)))
    a.send(Unsubscribe(3, ("gone",)))
    b = persistent(hub, "b", level=4)  # MQTT 3.1.1, clean session 0: never expires
    b.send(Subscribe(1, (Subscription("q1/#", 2),)))
    pub = hub.client(protocol_level=V5)
    pub.connect("pub")
    turn(hub)
    # In flight to a: a QoS 1 PUBLISH and a QoS 2 one in its PUBREL phase.
    pub.send(Publish("q1/a", b"one", 1, packet_id=1), Publish("q2/a", b"two", 2, packet_id=2))
    turn(hub)
    sent = [p for p in a.received() if isinstance(p, Publish)]
    assert [p.payload for p in sent] == [b"one", b"two"]
    a.send(PubRec(sent[1].packet_id))
    turn(hub)
    # a sends a QoS 2 message and does not release it: its packet id stays.
    a.send(Publish("elsewhere", b"in", 2, packet_id=9))
    turn(hub)
    a.drop()  # no DISCONNECT: its will is delayed
    b.drop()
    turn(hub)
    # Queued for both, offline.
    pub.send(Publish("q1/b", b"three", 1, packet_id=3),
             Publish("q1/c", b"four", 2, packet_id=4, properties=Properties(
                 message_expiry_interval=HOUR, user_properties=(("k", "v"),))),
             Publish("r/1", b"kept", 1, retain=True, packet_id=5),
             Publish("r/2", b"cleared", 0, retain=True),
             Publish("r/2", b"", 0, retain=True))
    turn(hub)
    return hub


def test_restart_restores_everything() -> None:
    """A new broker restored from the store has the same sessions (offline), subscriptions,
    queues, in-flight messages with their packet ids and QoS 2 states, inbound QoS 2 ids,
    delayed wills and retained messages."""
    store = MemoryStore()
    hub = build_state(store)
    expected = offline(state_of(hub))
    assert set(expected["sessions"]) == {"a", "b"}
    assert expected["sessions"]["a"]["inflight"] and expected["sessions"]["a"]["queue"]
    assert expected["sessions"]["a"]["inbound_qos2"] == {9}
    assert set(expected["retained"]) == {"r/1"}
    hub.broker.stop()  # a graceful stop records nothing that changes this
    turn(hub)
    hub2, recorder2 = start(store, at=hub.clock.seconds())
    assert state_of(hub2) == expected
    assert [s.client_id for s in recorder2.stored_sessions()] == ["a", "b"]
    # The expiry and delayed will timers run with the time that remained.
    a = hub2.broker.sessions["a"]
    assert a.expiry_timer is not None and a.will_timer is not None
    assert round(a.expiry_timer.getTime() - hub2.clock.seconds()) == HOUR
    assert round(a.will_timer.getTime() - hub2.clock.seconds()) == 600
    assert hub2.broker.sessions["b"].expiry_timer is None  # never expires


def test_restored_session_keeps_its_user_name() -> None:
    """A restored session's client keeps the user name it last connected with, so that
    username-based ACLs decide on its deliveries while it is away as before the restart."""
    store = MemoryStore()
    hub, _ = start(store)
    persistent(hub, "u", username="alice").drop()
    turn(hub)
    hub.broker.stop()
    turn(hub)
    hub2, _ = start(store, at=hub.clock.seconds())
    client = hub2.broker.sessions["u"].client
    assert client is not None and (client.client_id, client.username) == ("u", "alice")


def test_reconnect_after_restart_resends_same_packet_ids() -> None:
    """After a restart, the client continuing its session gets Session Present 1, its
    unacknowledged messages again under the same packet ids (DUP; PUBREL for the one in its
    PUBREL phase), then what was queued; releasing its own QoS 2 message is answered."""
    store = MemoryStore()
    hub = build_state(store)
    inflight = dict(hub.broker.sessions["a"].inflight)
    hub2, _ = start(store, at=hub.clock.seconds() + 10)
    a = hub2.client(protocol_level=V5)
    ack = a.connect("a", clean_start=False,
                    properties=Properties(session_expiry_interval=HOUR))
    assert ack.session_present
    got = a.received()
    qos1 = [p for p in got if isinstance(p, Publish) and p.dup]
    assert [(p.packet_id, p.payload) for p in qos1] == [
        (pid, d.message.payload) for pid, d in inflight.items() if d.state == 0]
    assert [p.packet_id for p in got if isinstance(p, PubRel)] == [
        pid for pid, d in inflight.items() if d.state == 1]
    fresh = [p.payload for p in got if isinstance(p, Publish) and not p.dup]
    assert fresh == [b"three", b"four"]
    a.send(PubRel(9))
    assert PubComp(9) in a.received()


def test_expired_while_down() -> None:
    """A session whose expiry passed while the broker was down is gone after the restart
    (and deleted from the store); its will, due by then, is published."""
    store = MemoryStore()
    hub, _ = start(store)
    watcher = persistent(hub, "watcher", expiry=10 * HOUR)
    watcher.send(Subscribe(1, (Subscription("wills/#", 1),)))
    will = Will("wills/short", b"bye", 1, False, Properties(will_delay_interval=100))
    short = persistent(hub, "short", expiry=60, will=will)
    short.drop()
    watcher.drop()
    turn(hub)
    assert set(store.heads) == {"watcher", "short"}
    hub2, _ = start(store, at=hub.clock.seconds() + 61)
    assert set(hub2.broker.sessions) == {"watcher"}
    queued = hub2.broker.sessions["watcher"].queue
    assert [d.message.payload for d in queued] == [b"bye"]
    turn(hub2)
    assert set(store.heads) == {"watcher"}
    assert [d.message.payload for d in store.deliveries.values()] == [b"bye"]


def test_expiry_after_restart() -> None:
    """A restored session expires when its remaining time is up, and is deleted then."""
    store = MemoryStore()
    hub, _ = start(store)
    persistent(hub, "s", expiry=100).drop()
    turn(hub)
    hub2, _ = start(store, at=hub.clock.seconds() + 40)
    hub2.advance(59)
    assert "s" in hub2.broker.sessions
    hub2.advance(2)
    assert "s" not in hub2.broker.sessions
    turn(hub2)
    assert store.heads == {}


def test_clean_start_deletes_stored_session() -> None:
    """Connecting with Clean Start deletes what was stored of that client id."""
    store = MemoryStore()
    hub, _ = start(store)
    client = persistent(hub, "c")
    client.send(Subscribe(1, (Subscription("t", 1),)))
    client.drop()
    turn(hub)
    assert store.subscriptions["c"]
    again = hub.client(protocol_level=V5)
    again.connect("c", clean_start=True, properties=Properties(session_expiry_interval=HOUR))
    turn(hub)
    assert "c" in store.heads and not store.subscriptions.get("c")


def test_connected_session_restored_offline_with_expiry_from_restart() -> None:
    """A session that was connected when the broker died counts as disconnected at the
    restart: its expiry starts then, and the store is updated to say so."""
    store = MemoryStore()
    hub, _ = start(store)
    persistent(hub, "c", expiry=100)
    turn(hub)
    assert store.heads["c"].disconnected_at is None
    hub2, _ = start(store, at=hub.clock.seconds() + 1000)
    session = hub2.broker.sessions["c"]
    assert session.connection is None
    assert round(session.expiry_timer.getTime() - hub2.clock.seconds()) == 100
    turn(hub2)
    assert store.heads["c"].disconnected_at == hub2.clock.seconds()


def test_counters_restored() -> None:
    """The $SYS counters saved at the last tick or stop come back after a restart."""
    store = MemoryStore()
    hub, _ = start(store)
    pub = hub.client()
    pub.connect("pub")
    pub.send(*[Publish("t", b"x", 1, packet_id=i + 1) for i in range(5)])
    hub.broker.stop()
    turn(hub)
    received = hub.broker.stats.messages_received
    assert received >= 5
    hub2, _ = start(store, at=hub.clock.seconds())
    assert hub2.broker.stats.messages_received == received
    assert hub2.broker.stats.messages_received_by_qos == hub.broker.stats.messages_received_by_qos


@implementer(IStore)
class HeldStore(MemoryStore):
    """A memory store whose commits complete only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.held: List[Tuple[Batch, Deferred[None]]] = []

    def commit(self, batch: Batch) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.held.append((batch, d))
        return d

    def release(self) -> None:
        batch, d = self.held.pop(0)
        MemoryStore.commit(self, batch)
        d.callback(None)


def qos2_subscriber(store: HeldStore) -> Tuple[InMemoryBroker, InMemoryClient,
                                                InMemoryClient]:
    """A durable broker on ``store``, a persistent subscriber to ``t`` at QoS 2 whose records
    are committed, and a publisher with a clean session."""
    hub, _ = start(store, durable=True)
    sub = persistent(hub, "sub")
    sub.send(Subscribe(1, (Subscription("t", 2),)))
    turn(hub)
    store.release()
    sub.received()
    pub = hub.client()
    pub.connect("pub")
    return hub, sub, pub


def test_durable_acknowledges_after_commit() -> None:
    """In durable mode PUBACK and PUBREC wait for the commit of the batch holding the message;
    messages arriving meanwhile go into the next batch (one commit at a time)."""
    store = HeldStore()
    hub, recorder = start(store, durable=True)
    assert hub.broker.ack_barriers == [recorder.barrier]
    sub = persistent(hub, "sub")
    sub.send(Subscribe(1, (Subscription("t", 2),)))
    sub.send(Disconnect())
    turn(hub)
    store.release()
    pub = hub.client()
    pub.connect("pub")
    pub.send(Publish("t", b"1", 1, packet_id=1), Publish("t", b"2", 2, packet_id=2))
    turn(hub)
    assert pub.received() == []
    assert len(store.held) == 1
    pub.send(Publish("t", b"3", 1, packet_id=3))
    turn(hub)
    assert len(store.held) == 1  # the next batch waits for this one
    store.release()
    assert pub.received() == [PubAck(1), PubRec(2)]
    assert len(store.held) == 1
    store.release()
    assert pub.received() == [PubAck(3)]
    assert [d.message.payload for d in store.deliveries.values()] == [b"1", b"2", b"3"]


def test_durable_sends_qos2_once_its_record_is_committed() -> None:
    """In durable mode a QoS 2 PUBLISH to a stored session goes out only once its record is
    committed, so that a broker killed in between never delivers it again under another packet
    identifier [MQTT-4.4.0-1]; a QoS 1 PUBLISH goes at once.  A connection closed while its
    output waits gets its DISCONNECT but not the held PUBLISH, which stays in flight and is
    resent with its packet identifier to the next connection, once committed."""
    store = HeldStore()
    hub, sub, pub = qos2_subscriber(store)
    pub.send(Publish("t", b"1", 1, packet_id=1), Publish("t", b"2", 2, packet_id=2))
    got = [(p.payload, p.qos) for p in sub.received()]
    assert got == [(b"1", 1)]
    turn(hub)
    assert sub.received() == []
    store.release()
    assert [(p.payload, p.qos, p.packet_id) for p in sub.received()] == [(b"2", 2, 2)]
    sub.send(PubAck(1), PubRec(2))
    turn(hub)
    store.release()
    assert sub.received() == [PubRel(2)]

    pub.send(Publish("t", b"3", 2, packet_id=3))
    turn(hub)
    assert sub.received() == []
    again = persistent(hub, "sub", level=V5)  # takes the session over
    assert [(type(p).__name__, getattr(p, "reason_code", None)) for p in sub.received()] == [
        ("Disconnect", 0x8E)]
    resent = [p for p in again.received() if isinstance(p, Publish)]
    assert resent == []
    store.release()
    turn(hub)
    while store.held:
        store.release()
    resent = [(p.payload, p.packet_id, p.dup) for p in again.received()
              if isinstance(p, Publish)]
    assert resent == [(b"3", 3, True)]


def test_durable_qos2_stream_goes_out_commit_by_commit() -> None:
    """QoS 2 messages that keep coming while their records are committed go out as each commit
    ends (each waits for its own record's commit alone), in order [MQTT-4.6.0-6], not once the
    stream pauses for a whole commit."""
    store = HeldStore()
    hub, sub, pub = qos2_subscriber(store)
    for n in range(1, 5):
        pub.send(Publish("t", str(n).encode(), 2, packet_id=n), Publish("t", b"q0", 0))
        turn(hub)  # a commit of message n starts (or waits for the one under way)
        if n > 1:
            store.release()  # message n - 1's commit ends while message n waits for its own
            assert [(p.payload, p.qos) for p in sub.received()] == [
                (str(n - 1).encode(), 2), (b"q0", 0)]
            assert pub.received() == [PubRec(n - 1)]
    store.release()
    assert [(p.payload, p.qos) for p in sub.received()] == [(b"4", 2), (b"q0", 0)]


def test_durable_batch_that_cancels_out_sends_what_waited() -> None:
    """A batch whose changes cancel out within the turn (a subscriber that answers PUBREC and
    PUBCOMP to the QoS 2 PUBLISH it has not been sent yet) commits nothing: the publisher's
    PUBREC and the subscriber's held output go out at once, not at the next unrelated write."""
    store = HeldStore()
    hub, sub, pub = qos2_subscriber(store)
    pub.send(Publish("t", b"x", 2, packet_id=7))
    sub.send(PubRec(1), PubComp(1))
    assert (pub.received(), sub.received()) == ([], [])
    turn(hub)
    assert store.held == []
    assert pub.received() == [PubRec(7)]
    assert [(type(p).__name__, p.packet_id) for p in sub.received()] == [
        ("Publish", 1), ("PubRel", 1)]


def test_durable_answers_pingreq_while_a_qos2_publish_waits() -> None:
    """While a QoS 2 PUBLISH waits for its commit (the store slow, or down and retried), PINGREQ
    is answered [MQTT-3.12.4-1] ahead of it, so that the client keeps its connection; what was
    queued after the PUBLISH keeps its place behind it."""
    store = HeldStore()
    hub, sub, pub = qos2_subscriber(store)
    pub.send(Publish("t", b"2", 2, packet_id=1), Publish("t", b"0", 0))
    sub.send(PingReq())
    assert sub.received() == [PingResp()]
    turn(hub)  # the commit starts, and does not end
    sub.send(PingReq(), PingReq())
    assert sub.received() == [PingResp(), PingResp()]
    store.release()
    assert [(type(p).__name__, getattr(p, "payload", None)) for p in sub.received()] == [
        ("Publish", b"2"), ("Publish", b"0")]


def test_durable_no_write_no_wait() -> None:
    """A message that changes nothing stored is acknowledged at once."""
    store = HeldStore()
    hub, _ = start(store, durable=True)
    pub = hub.client()
    pub.connect("pub")
    pub.send(Publish("nobody", b"x", 1, packet_id=1))
    assert pub.received() == [PubAck(1)]


class FailingStore(MemoryStore):
    """A memory store whose first ``failures`` commits fail."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def commit(self, batch: Batch) -> Deferred[None]:
        if self.failures:
            self.failures -= 1
            from twisted.internet.defer import fail

            return fail(OSError("disk full"))
        return MemoryStore.commit(self, batch)


def test_failed_commit_is_retried() -> None:
    """A commit that fails is retried (the broker runs on); durable acknowledgements wait."""
    store = FailingStore(failures=2)
    hub, _ = start(store, durable=True)
    sub = persistent(hub, "sub")
    sub.send(Subscribe(1, (Subscription("t", 1),)))
    sub.drop()
    pub = hub.client()
    pub.connect("pub")
    pub.send(Publish("t", b"x", 1, packet_id=1))
    turn(hub)
    assert pub.received() == []
    hub.advance(5, step=0.25)
    assert pub.received() == [PubAck(1)]
    assert [d.message.payload for d in store.deliveries.values()] == [b"x"]


def test_retained_survive_and_clear() -> None:
    """Retained messages are stored, replaced and cleared; $SYS topics are not stored."""
    store = MemoryStore()
    hub, _ = start(store)
    pub = hub.client()
    pub.connect("pub")
    pub.send(Publish("r", b"1", 0, retain=True), Publish("r", b"2", 1, retain=True, packet_id=1))
    turn(hub)
    assert {t: m.payload for t, m in store.retained.items()} == {"r": b"2"}
    hub.broker.publish(Message("$SYS/broker/uptime", b"1", 0, True))
    turn(hub)
    assert "$SYS/broker/uptime" in hub.broker.retained
    assert set(store.retained) == {"r"}
    pub.send(Publish("r", b"", 0, retain=True))
    turn(hub)
    assert store.retained == {}


def test_reconnected_client_acknowledges_restored_message() -> None:
    """Acknowledging a restored in-flight message deletes its record."""
    store = MemoryStore()
    hub, _ = start(store)
    sub = persistent(hub, "sub")
    sub.send(Subscribe(1, (Subscription("t", 1),)))
    pub = hub.client()
    pub.connect("pub")
    pub.send(Publish("t", b"x", 1, packet_id=1))
    turn(hub)
    assert len(store.deliveries) == 1
    hub2, _ = start(store, at=hub.clock.seconds())
    again = hub2.client(protocol_level=V5)
    again.connect("sub", clean_start=False, properties=Properties(session_expiry_interval=HOUR))
    (publish,) = [p for p in again.received() if isinstance(p, Publish)]
    assert publish.dup and publish.payload == b"x"
    again.send(PubAck(publish.packet_id))
    turn(hub2)
    assert store.deliveries == {}


def test_takeover_keeps_recording() -> None:
    """A second connection taking the session over continues it in the store."""
    store = MemoryStore()
    hub, _ = start(store)
    first = persistent(hub, "c")
    first.send(Subscribe(1, (Subscription("t", 1),)))
    turn(hub)
    second = hub.client(protocol_level=V5)
    ack = second.connect("c", clean_start=False,
                         properties=Properties(session_expiry_interval=HOUR))
    assert ack.session_present
    turn(hub)
    hub.advance(1)
    assert "t" in store.subscriptions["c"]

