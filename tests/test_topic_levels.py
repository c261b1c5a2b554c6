"""Deep topics, ``maximum_topic_levels``, the retained index and the end of a session.

* ``Capabilities.maximum_topic_levels`` bounds topic names (PUBLISH, Will Topic) and filters
  (SUBSCRIBE, UNSUBSCRIBE): v5 answers with DISCONNECT 0x90 (PUBLISH), CONNACK 0x90 (Will
  Topic), SUBACK and UNSUBACK 0x8F per filter; v3 closes the connection (CONNECT, PUBLISH) or
  answers SUBACK 0x80.
* Under a limit raised above the interpreter's recursion limit, subscriptions, publications,
  retained messages and wills on topics of thousands of levels are routed: no matching walk
  recurses per level.
* A session whose will cannot be published (a route fails) still ends: it leaves
  ``broker.sessions`` and the subscription tree, and the error is logged once.
* The retained index: a SUBSCRIBE of 1,000 wildcard filters while 10,000 messages are retained
  costs what the filters reach, counted in executed lines (not timed); filters that reach much
  are looked up a few per reactor turn (``retained_lookup_per_turn``), per connection, in order;
  the expiry sweep costs what expires.
* End to end, over real sockets: a deep-topic will sent on a connection reset reaches its
  subscriber and leaves no session behind.

Every label cited in this module is checked to exist in the specification text
(``test_cited_labels_exist``); a label followed by "(3.1.1)" is one of MQTT 3.1.1, any other
one of MQTT 5.0.
"""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import pytest

from tests.conftest import StartBroker, log_problems
from tests.hook_helpers import hub as hook_hub
from tests.hook_helpers import recorder
from tests.paho import HOST, TIMEOUT, V5, MakeClient
from tests.spec import check_cited_labels
from tests.test_broker_messaging import (
    V311,
    connect,
    disconnect_reason,
    make_hub,
    publishes,
    subscribe,
)
from twisted_mqtt.codec import decode_all, encode
from twisted_mqtt.packets import (
    ConnAck,
    Connect,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from twisted_mqtt.properties import Properties
from twisted_mqtt.session import Message

DEEP = "a/" * max(1200, sys.getrecursionlimit() + 200) + "b"
"""A topic with more levels than the interpreter lets a function recurse."""
DEEP_LEVELS = DEEP.count("/") + 1
TOPIC_NAME_INVALID = 0x90
TOPIC_FILTER_INVALID = 0x8F


def levels(count: int) -> str:
    """A topic of ``count`` levels."""
    return "/".join(["l"] * count)


# -- maximum_topic_levels -----------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1])
def test_publish_over_level_limit_v5(qos: int) -> None:
    """A topic name of more levels than the broker accepts is not malformed but not accepted:
    DISCONNECT 0x90 Topic Name invalid [MQTT-4.13.2-1], routed to nobody; the limit itself
    passes."""
    hub = make_hub(maximum_topic_levels=4)
    watcher = connect(hub, "watcher")
    assert subscribe(watcher, Subscription("#")).reason_codes == (0,)
    publisher = connect(hub, "publisher")
    publisher.send(Publish(levels(4), b"ok", qos, packet_id=1 if qos else None))
    assert [p.topic for p in publishes(watcher)] == [levels(4)]
    publisher.received()
    publisher.send(Publish(levels(5), b"deep", qos, packet_id=2 if qos else None))
    assert disconnect_reason(publisher) == TOPIC_NAME_INVALID
    assert publishes(watcher) == []


def test_publish_run_over_level_limit_v5() -> None:
    """Consecutive PUBLISH packets to one topic (decoded as a run) are refused alike
    [MQTT-4.13.2-1]."""
    hub = make_hub(maximum_topic_levels=4)
    watcher = connect(hub, "watcher")
    subscribe(watcher, Subscription("#", 1))
    publisher = connect(hub, "publisher")
    for qos in (0, 1):
        runner = connect(hub, f"runner{qos}")
        runner.send(*[Publish(levels(5), b"x", qos, packet_id=i + 1 if qos else None)
                      for i in range(3)])
        assert disconnect_reason(runner) == TOPIC_NAME_INVALID
    assert publishes(watcher) == []
    assert not publisher.closed


def test_publish_over_level_limit_v3() -> None:
    """MQTT 3.1.1 has no reason codes: the connection is closed."""
    hub = make_hub(maximum_topic_levels=4)
    publisher = connect(hub, "publisher", level=V311)
    publisher.send(Publish(levels(5), b"deep", 1, packet_id=1))
    assert publisher.closed
    assert publisher.received() == []


def test_will_topic_over_level_limit() -> None:
    """A Will Topic the broker does not accept: v5 CONNACK 0x90 Topic Name invalid; v3.1.1
    closes without CONNACK, no return code applying [MQTT-3.2.2-6 (3.1.1)]."""
    hub = make_hub(maximum_topic_levels=4)
    client = hub.client(protocol_level=V5)
    ack = client.connect("w5", will=Will(levels(5), b"gone"))
    assert ack.reason_code == TOPIC_NAME_INVALID
    assert client.closed
    old = hub.client(protocol_level=V311)
    old.send(Connect("w3", V311, will=Will(levels(5), b"gone")))
    assert old.received() == []
    assert old.closed
    assert hub.broker.sessions == {}
    accepted = hub.client(protocol_level=V5)
    assert accepted.connect("ok", will=Will(levels(4), b"gone")).reason_code == 0


def test_subscribe_over_level_limit() -> None:
    """Each filter of more levels than the broker accepts is refused in the SUBACK: v5 0x8F
    Topic Filter invalid, v3.1.1 0x80 [MQTT-3.9.3-1 (3.1.1)]; the others are granted; a
    shared filter's levels are counted after ``$share/{name}/``."""
    hub = make_hub(maximum_topic_levels=3)
    client = connect(hub, "c5")
    ack = subscribe(client, Subscription(levels(3)), Subscription(levels(4)),
                    Subscription("+/+/+/#"), Subscription("$share/g/" + levels(3)))
    assert ack.reason_codes == (0, TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID, 0)
    old = connect(hub, "c3", level=V311)
    assert subscribe(old, Subscription(levels(4)), Subscription("x")).reason_codes == (0x80, 0)
    assert set(hub.broker.sessions["c5"].subscriptions) == {levels(3),
                                                             "$share/g/" + levels(3)}


def test_unsubscribe_over_level_limit() -> None:
    """UNSUBSCRIBE of a filter too deep to have been subscribed: UNSUBACK 0x8F Topic Filter
    invalid [MQTT-3.11.3-1]."""
    hub = make_hub(maximum_topic_levels=3)
    client = connect(hub, "c")
    subscribe(client, Subscription(levels(3)))
    client.send(Unsubscribe(2, (levels(3), levels(4), "x")))
    assert client.received() == [UnsubAck(2, (0, TOPIC_FILTER_INVALID, 0x11))]


def test_inline_client_level_limit() -> None:
    """The inline client is held to the same limit (``ValueError``)."""
    hub = make_hub(maximum_topic_levels=3)
    with pytest.raises(ValueError, match="more than 3 levels"):
        hub.broker.inline.publish(levels(4), b"x")
    with pytest.raises(ValueError, match="more than 3 levels"):
        hub.broker.inline.subscribe(levels(3) + "/#", lambda *args: None)


# -- deep topics under a raised limit -----------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1])
def test_deep_topic_routed(qos: int) -> None:
    """With the limit raised, a subscription, a PUBLISH, a retained message and an
    unsubscription on a topic of thousands of levels work, for exact and wildcard filters."""
    hub = make_hub(maximum_topic_levels=DEEP_LEVELS)
    subscriber = connect(hub, "sub")
    filters = (DEEP, DEEP[:-1] + "+", "a/+/" + DEEP[4:], "a/#")
    ack = subscribe(subscriber, *[Subscription(f, 1) for f in filters])
    assert ack.reason_codes == (1, 1, 1, 1)
    publisher = connect(hub, "pub")
    publisher.send(Publish(DEEP, b"deep", qos, retain=True, packet_id=1 if qos else None))
    if qos:
        assert publisher.received() == [PubAck(1)]
    [message] = publishes(subscriber)  # one copy for the overlapping subscriptions
    assert message.topic == DEEP and message.qos == qos
    late = connect(hub, "late")
    subscribe(late, *[Subscription(f) for f in filters])
    assert [p.topic for p in publishes(late)] == [DEEP] * len(filters)
    subscriber.send(Unsubscribe(9, filters))
    assert subscriber.received() == [UnsubAck(9, (0, 0, 0, 0))]


def test_deep_topic_will_on_connection_lost() -> None:
    """A will on a deep topic, sent when the connection breaks (clean start, session expiry 0),
    reaches its subscriber [MQTT-3.1.2-8], and the session ends (its expiry interval is 0)."""
    hub = make_hub(maximum_topic_levels=DEEP_LEVELS)
    subscriber = connect(hub, "sub")
    subscribe(subscriber, Subscription(DEEP, 1))
    leaver = hub.client(protocol_level=V5)
    assert leaver.connect("leaver", will=Will(DEEP, b"bye", 1)).reason_code == 0
    leaver.drop()
    [will] = publishes(subscriber)
    assert (will.topic, will.payload) == (DEEP, b"bye")
    assert set(hub.broker.sessions) == {"sub"}


# -- the end of a session -----------------------------------------------------------------------


@pytest.mark.parametrize("expiry", [0, 30])
def test_session_ends_when_its_will_fails(monkeypatch: pytest.MonkeyPatch, expiry: int,
                                          logged: List[str]) -> None:
    """A route that raises while the will goes out is logged once; the session still ends (at
    once, or when its expiry interval is over) and leaves the subscription tree."""
    hub = make_hub()
    leaver = hub.client(protocol_level=V5)
    properties = Properties(session_expiry_interval=expiry) if expiry else Properties()
    ack = leaver.connect("leaver", will=Will("will", b"bye"), properties=properties)
    assert ack.reason_code == 0
    subscribe(leaver, Subscription("x/#"))

    def failing(message: Message) -> int:
        raise RuntimeError("route failed")

    monkeypatch.setattr(hub.broker, "publish", failing)
    leaver.drop()
    assert sum("publishing its will failed" in line for line in logged) == 1
    if expiry:
        assert "leaver" in hub.broker.sessions
        hub.advance(expiry)
    assert hub.broker.sessions == {}
    assert hub.broker.tree.count == 0 and hub.broker.tree.match("x/y") == ([], [])


def _fail(*args: Any) -> Any:
    raise RuntimeError("hook failed")


@pytest.mark.parametrize("answers, sent", [
    ({"on_will": _fail}, True),
    ({"on_select_subscribers": _fail}, True),
    ({"on_select_subscribers": lambda message, client_ids: 5}, False),
], ids=["on_will raises", "on_select_subscribers raises", "on_select_subscribers answers 5"])
def test_session_ends_whatever_the_will_hooks_do(answers: Any, sent: bool,
                                                 logged: List[str]) -> None:
    """A will hook that raises counts as absent (the will goes out); one whose answer breaks
    the route stops the will, logged once; either way the session ends."""
    broker = hook_hub(recorder(**answers))
    watcher = connect(broker, "watcher")
    subscribe(watcher, Subscription("will"))
    leaver = broker.client(protocol_level=V5)
    assert leaver.connect("leaver", will=Will("will", b"bye")).reason_code == 0
    leaver.drop()
    assert [p.payload for p in publishes(watcher)] == ([b"bye"] if sent else [])
    assert sum("publishing its will failed" in line for line in logged) == (0 if sent else 1)
    assert set(broker.broker.sessions) == {"watcher"}


def test_session_ends_when_handing_on_fails(monkeypatch: pytest.MonkeyPatch,
                                            logged: List[str]) -> None:
    """A failure while a leaving session's messages are handed on is logged once and does not
    keep the session."""
    hub = make_hub()
    leaver = connect(hub, "leaver")
    subscribe(leaver, Subscription("x/#"))

    def failing(session: Any) -> None:
        raise RuntimeError("hand over failed")

    monkeypatch.setattr(hub.broker, "_redistribute_shared", failing)
    leaver.drop()
    assert sum("handing on its messages failed" in line for line in logged) == 1
    assert hub.broker.sessions == {}
    assert hub.broker.tree.count == 0


# -- the retained index -------------------------------------------------------------------------


class _OverBudget(BaseException):
    """Raised by the line counter once the budget is spent (not an ``Exception``, so that no
    handler of the code under test takes it)."""


def executed_lines(work: Callable[[], None], budget: int) -> int:
    """How many Python lines ``work()`` executes; stops it past ``budget``."""
    count = 0

    def trace(frame: Any, event: str, arg: Any) -> Optional[Callable[..., Any]]:
        nonlocal count
        if event == "line":
            count += 1
            if count > budget:
                raise _OverBudget
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        work()
    except _OverBudget:
        pass
    finally:
        sys.settrace(previous)
    return count


def retained_hub(count: int, **caps: Any) -> Any:
    """A broker holding ``count`` retained messages, on ``r/{index}/v``."""
    hub = make_hub(**caps)
    for index in range(count):
        hub.broker.publish(Message(f"r/{index}/v", b"x", 0, True))
    return hub


def count_turns(hub: Any, monkeypatch: pytest.MonkeyPatch) -> List[float]:
    """From now on, record the delay of every call ``hub`` schedules on its clock."""
    delays: List[float] = []
    schedule = hub.clock.callLater

    def call_later(delay: float, *args: Any, **kwargs: Any) -> Any:
        delays.append(delay)
        return schedule(delay, *args, **kwargs)

    monkeypatch.setattr(hub.clock, "callLater", call_later)
    return delays


def test_retained_lookup_costs_what_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 retained messages and one SUBSCRIBE of 1,000 wildcard filters, 10 of which match
    one message each: the broker's work follows what the filters reach, not the retained set
    (counted in executed lines: a scan of every retained message per filter costs tens of
    millions), all in one turn [MQTT-3.3.1-9]."""
    hub = retained_hub(10_000)
    client = connect(hub, "sub")
    delays = count_turns(hub, monkeypatch)
    filters = [f"+/{index}/#" for index in range(10)]
    filters += [f"r/{index}/+/x/#" for index in range(990)]
    packet = encode(Subscribe(1, tuple(Subscription(f) for f in filters)), V5)
    budget = 1000 * len(filters)
    lines = executed_lines(lambda: client.send_bytes(packet), budget)
    assert lines < budget, f"more than {budget} lines for one SUBSCRIBE"
    packets = client.received()
    assert isinstance(packets[0], SubAck) and packets[0].reason_codes == (0,) * len(filters)
    assert sorted(p.topic for p in packets[1:]) == sorted(f"r/{i}/v" for i in range(10))
    assert delays == [0]  # only the end of the turn's bound, which sends nothing more
    hub.clock.advance(0)
    assert client.received() == []


def test_retained_lookups_spread_over_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Filters that reach every retained topic (``+`` over 10,000 levels) are looked up a few
    per reactor turn (``retained_lookup_per_turn``), so that one SUBSCRIBE does not hold up the
    other clients; every matching retained message is still sent, after the SUBACK."""
    hub = retained_hub(10_000)
    client = connect(hub, "sub")
    delays = count_turns(hub, monkeypatch)
    filters = [f"r/+/w{index}" for index in range(50)] + [f"+/{i}/#" for i in range(10)]
    packet = encode(Subscribe(1, tuple(Subscription(f) for f in filters)), V5)
    budget = 200_000
    lines = executed_lines(lambda: client.send_bytes(packet), budget)
    assert lines < budget, f"more than {budget} lines in the SUBSCRIBE's turn"
    [ack] = client.received()
    assert isinstance(ack, SubAck) and ack.reason_codes == (0,) * len(filters)
    hub.clock.advance(0)
    assert delays.count(0) >= 50
    assert sorted(p.topic for p in publishes(client)) == sorted(f"r/{i}/v" for i in range(10))


def test_retained_expiry_sweep_costs_what_expires() -> None:
    """With 10,000 retained messages that do not expire, the periodic sweep costs what expires
    (two messages), not a look at every retained message; the expired ones are no longer
    sent [MQTT-3.3.2-5]."""
    hub = retained_hub(10_000)
    broker = hub.broker
    now = broker.now
    for index, interval in enumerate((1, 2, 50)):
        properties = Properties(message_expiry_interval=interval)
        broker.publish(Message(f"e/{index}", b"x", 0, True, properties, now + interval))
    hub.clock.advance(2.5)  # the sweep runs each keepalive_sweep_interval (1 s)
    lines = executed_lines(lambda: hub.clock.advance(1), 1000)
    assert lines < 1000, "the sweep looks at every retained message"
    assert "e/0" not in broker.retained and "e/1" not in broker.retained
    assert "e/2" in broker.retained and len(broker.retained) == 10_001
    client = connect(hub, "sub")
    subscribe(client, Subscription("e/+"))
    assert [p.topic for p in publishes(client)] == ["e/2"]


def test_retained_lookups_of_one_connection_queue() -> None:
    """A SUBSCRIBE arriving while an earlier one's lookups are under way waits behind them:
    per turn, one connection's lookups stay within the bound, and its retained messages come
    in the order of its subscriptions."""
    hub = retained_hub(3, retained_lookup_per_turn=1)
    client = connect(hub, "sub")
    subscribe(client, Subscription("r/0/+"), Subscription("r/1/+"))
    assert [p.topic for p in publishes(client)] == ["r/0/v"]
    subscribe(client, Subscription("r/2/+"), packet_id=2)
    assert publishes(client) == []
    hub.clock.advance(0)
    assert [p.topic for p in publishes(client)] == ["r/1/v", "r/2/v"]


def test_retained_lookups_later_follow_the_session() -> None:
    """A filter unsubscribed before its turn gets no retained message; a connection closed
    meanwhile gets nothing more, and nothing fails."""
    hub = retained_hub(3, retained_lookup_per_turn=1)
    client = connect(hub, "sub")
    subscribe(client, *[Subscription(f"r/{index}/+") for index in range(3)])
    assert [p.topic for p in publishes(client)] == ["r/0/v"]
    client.send(Unsubscribe(2, ("r/1/+",)))
    client.received()
    hub.clock.advance(0)
    assert [p.topic for p in publishes(client)] == ["r/2/v"]
    other = connect(hub, "other")
    subscribe(other, *[Subscription(f"r/{index}/+") for index in range(3)])
    assert [p.topic for p in publishes(other)] == ["r/0/v"]
    other.drop()
    hub.clock.advance(0)
    assert other.received() == []


def test_retained_lookups_of_many_subscribes_share_one_turn() -> None:
    """A thousand SUBSCRIBE packets of one filter in one read share the turn's bound, as the
    filters of one SUBSCRIBE do (a lookup each would cost a walk of the retained set each);
    those not yet looked up wait as one, so the queue grows with the filters, not with the
    packets: the retained messages are sent once now and once for the rest [MQTT-3.3.1-9]."""
    hub = retained_hub(50, retained_lookup_per_turn=1)
    client = connect(hub, "sub")
    client.send(*[Subscribe(index + 1, (Subscription("r/+/v"),)) for index in range(1000)])
    packets = client.received()
    assert sum(isinstance(p, SubAck) for p in packets) == 1000
    assert sum(isinstance(p, Publish) for p in packets) == 50
    hub.clock.advance(0)
    assert len(publishes(client)) == 50
    hub.clock.advance(0)
    assert client.received() == []


def test_retained_lookup_later_uses_the_subscription_in_force() -> None:
    """A filter subscribed to again before its retained messages were looked up gets them
    once, with the Maximum QoS and Subscription Identifier of the subscription in force when
    they are sent [MQTT-3.8.4-8]."""
    hub = make_hub(retained_lookup_per_turn=1)
    for topic in ("a/x", "b/x"):
        hub.broker.publish(Message(topic, b"kept", 2, True))
    client = connect(hub, "sub")
    subscribe(client, Subscription("a/+", 2), Subscription("b/+", 2), sub_id=1)
    assert [(p.topic, p.qos) for p in publishes(client)] == [("a/x", 2)]
    subscribe(client, Subscription("b/+", 0), packet_id=2, sub_id=2)
    hub.clock.advance(0)
    [late] = publishes(client)
    assert (late.topic, late.qos, late.properties.subscription_identifiers) == ("b/x", 0, (2,))


# -- end to end ---------------------------------------------------------------------------------


def _recv_packet(sock: socket.socket) -> bytes:
    """One whole MQTT packet read from ``sock``."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
        try:
            decode_all(data, V5)
        except Exception:
            continue
        return data


def test_deep_topic_will_through_a_reset_connection(start_broker: StartBroker,
                                                    clients: MakeClient, tmp_path: Path) -> None:
    """End to end: a v5 client (clean start, session expiry 0) with a will on a topic of
    thousands of levels resets its TCP connection; the subscriber gets the will, the client's
    session is gone when it comes back (its expiry interval was 0), and the broker logs no unhandled
    error."""
    config = tmp_path / "broker.yaml"
    config.write_text(f"capabilities:\n  maximum_topic_levels: {DEEP_LEVELS}\n")
    broker = start_broker("--allow-anonymous", "--config", str(config))
    subscriber = clients(broker.port, V5).connect()
    assert subscriber.subscribe(DEEP, 1) == [1]
    connect_packet = encode(Connect("deep-will", V5, will=Will(DEEP, b"bye", 1)), V5)
    with socket.create_connection((HOST, broker.port), timeout=TIMEOUT) as sock:
        sock.sendall(connect_packet)
        [ack] = decode_all(_recv_packet(sock), V5)
        assert isinstance(ack, ConnAck) and ack.reason_code == 0
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    [will] = subscriber.expect()
    assert (will.topic, will.payload) == (DEEP, b"bye")
    again = encode(Connect("deep-will", V5, clean_start=False), V5)
    with socket.create_connection((HOST, broker.port), timeout=TIMEOUT) as sock:
        sock.sendall(again)
        [ack] = decode_all(_recv_packet(sock), V5)
        assert isinstance(ack, ConnAck) and ack.reason_code == 0
        assert not ack.session_present
    assert not log_problems(broker.log()), broker.log()


def test_cited_labels_exist() -> None:
    """Each label cited in this module names a normative statement of the specification."""
    check_cited_labels(sys.modules[__name__])
