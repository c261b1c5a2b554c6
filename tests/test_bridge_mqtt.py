"""The MQTT bridge (``twisted_mqtt.bridges.mqtt``) without a network: its topic rules
(Mosquitto's ``topic`` rule), its configuration (``bridges:``, ``--bridge``), the local side
(export, import, no loop), the outbound queue and its bounds, expiry, notifications and metrics.

The remote side is a ``RecordingLink`` that stands where the MQTT client would: it records
what the bridge publishes and the test decides when the remote is up and when it acknowledges.
In memory on a ``task.Clock``; the end-to-end tests against Mosquitto are in
tests/test_bridge_mqtt_e2e.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Tuple

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from tests.hook_helpers import hub, join, subscribe
from tests.spec import check_cited_labels
from twisted_mqtt.bridges.mqtt import STATE_TOPIC, STATUS_TOPIC, MqttBridge, Outgoing
from twisted_mqtt.bridges.mqtt_settings import (
    BridgeSettings,
    RuleError,
    TopicRule,
    bridges_from_options,
    make_rule,
    parse_rule,
)
from twisted_mqtt.config import ConfigError, load_config
from twisted_mqtt.inline import InlineMessage
from twisted_mqtt.packets import Publish
from twisted_mqtt.properties import Properties
from twisted_mqtt.tap import Options
from twisted_mqtt.testing import InMemoryBroker

ADDRESS = "tcp:host=127.0.0.1:port=1883"


class RecordingLink:
    """The remote side of a bridge in a test: records publications, acknowledged at will."""

    def __init__(self, bridge: MqttBridge) -> None:
        self.bridge = bridge
        self.published: List[Tuple[Outgoing, Deferred[Any]]] = []
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)

    def publish(self, message: Outgoing) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self.published.append((message, done))
        return done

    def up(self) -> None:
        self.bridge.remote_up()

    def down(self, reason: str = "connection lost") -> None:
        self.bridge.remote_down(reason)

    def ack_all(self) -> None:
        for _message, done in self.published:
            if not done.called:
                done.callback(None)

    def topics(self) -> List[str]:
        return [message.topic for message, _ in self.published]


def bridge_on(broker: InMemoryBroker, *rules: str, **settings: Any) -> Tuple[MqttBridge,
                                                                           RecordingLink]:
    """A started bridge ``b`` on ``broker`` with ``rules`` and its ``RecordingLink``."""
    links: List[RecordingLink] = []

    def factory(bridge: MqttBridge) -> RecordingLink:
        links.append(RecordingLink(bridge))
        return links[0]

    bridge = MqttBridge(broker.broker, BridgeSettings(
        "b", ADDRESS, tuple(parse_rule(rule) for rule in rules), **settings), factory)
    bridge.startService()
    return bridge, links[0]


def inline_messages(broker: InMemoryBroker, topic_filter: str) -> List[InlineMessage]:
    got: List[InlineMessage] = []
    broker.broker.inline.subscribe(topic_filter, got.append, retain_as_published=True)
    return got


# -- topic rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, rule", [
    ("sensors/#", TopicRule("sensors/#", "out", 0, "", "")),
    ("sensors/# in", TopicRule("sensors/#", "in", 0, "", "")),
    ("+/temp both 2", TopicRule("+/temp", "both", 2, "", "")),
    ("# out 1 site/ cloud/site1/", TopicRule("#", "out", 1, "site/", "cloud/site1/")),
    ('"" in 1 local/alarm remote/alarm', TopicRule("", "in", 1, "local/alarm", "remote/alarm")),
    ('a/+ out 1 "" cloud/', TopicRule("a/+", "out", 1, "", "cloud/")),
])
def test_rules_in_mosquittos_words(text: str, rule: TopicRule) -> None:
    """``pattern [direction [qos [local-prefix remote-prefix]]]``, ``""`` an empty word; the
    defaults are Mosquitto's (out, QoS 0, no prefixes)."""
    assert parse_rule(text) == rule


@pytest.mark.parametrize("text, problem", [
    ("a/# sideways", "direction must be out, in or both"),
    ("a/# out 3", "QoS must be 0, 1 or 2"),
    ("a/# out one", "QoS must be 0, 1 or 2"),
    ("a/# out 1 local/", "expected 'PATTERN"),
    ("a/# out 1 local/+/ remote/", "local prefix 'local/+/' must not contain + or #"),
    ('"" out 1 "" remote/', "an empty pattern"),
    ("a/#/b", "the local filter 'a/#/b' is not valid"),
    ("", "expected 'PATTERN"),
    ("$share/g/a/#", "a shared subscription"),
    ("a/# in 0 \"\" $share/g/", "a shared subscription"),
])
def test_rules_refused_with_the_reason(text: str, problem: str) -> None:
    """A rule that cannot be used says why."""
    with pytest.raises(RuleError, match=problem.replace("+", r"\+")):
        parse_rule(text)


def test_rule_maps_topics_both_ways() -> None:
    """A local topic ``local-prefix + X`` is ``remote-prefix + X`` on the remote, and the other
    way round; a remote topic outside the rule is not imported."""
    rule = make_rule("sensors/+/temp", "both", 1, "site/", "cloud/site1/")
    assert rule.local_filter == "site/sensors/+/temp"
    assert rule.remote_filter == "cloud/site1/sensors/+/temp"
    assert rule.to_remote("site/sensors/k1/temp") == "cloud/site1/sensors/k1/temp"
    assert rule.to_local("cloud/site1/sensors/k1/temp") == "site/sensors/k1/temp"
    assert rule.to_local("cloud/site2/sensors/k1/temp") is None
    assert make_rule("a/#", "out").to_local("a/b") is None  # out only: nothing comes in


# -- configuration ------------------------------------------------------------------------------


def _write(directory: Path, text: str) -> str:
    path = directory / "broker.yaml"
    path.write_text(text)
    return str(path)


FULL = """\
bridges:
  - name: cloud
    address: tcp:host=127.0.0.1:port=8883
    client_id: site1
    username: bridge
    password: secret
    protocol: 3.1.1
    clean_start: true
    session_expiry: 60
    keepalive: 30
    queue_messages: 500
    queue_bytes: 100000
    inflight: 10
    notifications: false
    topics:
      - sensors/# out 1 site/ cloud/site1/
      - {pattern: "commands/#", direction: in, qos: 2, remote_prefix: cloud/site1/}
"""


def test_yaml_bridge_with_every_key(tmp_path: Path) -> None:
    """Every key of a ``bridges:`` entry, topic rules as Mosquitto's words or mappings."""
    config = load_config(_write(tmp_path, FULL))
    (bridge,) = config.values["bridges"]
    assert bridge == BridgeSettings(
        "cloud", "tcp:host=127.0.0.1:port=8883",
        (TopicRule("sensors/#", "out", 1, "site/", "cloud/site1/"),
         TopicRule("commands/#", "in", 2, "", "cloud/site1/")),
        "site1", "bridge", "secret", "3.1.1", True, 60, 30, 500, 100000, 10, False)
    assert "secret" not in repr(bridge)


def test_command_line_gives_the_same_bridge(tmp_path: Path) -> None:
    """``--bridge``, ``--bridge-topic`` and ``--bridge-option`` give what the file gives, and
    replace the file's ``bridges``."""
    argv = ["--config", _write(tmp_path, FULL.replace("cloud", "other")),
            "--bridge", "cloud=tcp:host=127.0.0.1:port=8883",
            "--bridge-topic", "cloud=sensors/# out 1 site/ cloud/site1/",
            "--bridge-topic", 'cloud=commands/# in 2 "" cloud/site1/']
    for key, item in (("client_id", "site1"), ("username", "bridge"), ("password", "secret"),
                      ("protocol", "3.1.1"), ("clean_start", "true"), ("session_expiry", "60"),
                      ("keepalive", "30"), ("queue_messages", "500"), ("queue_bytes", "100000"),
                      ("inflight", "10"), ("notifications", "false")):
        argv += ["--bridge-option", f"cloud.{key}={item}"]
    options = Options()
    options.parseOptions(argv)
    assert options["bridges"] == load_config(_write(tmp_path, FULL)).values["bridges"]


@pytest.mark.parametrize("text, message", [
    ("bridges:\n  - name: a\n    topics: ['#']\n",
     "line 2: bridges[0]: missing address"),
    ("bridges:\n  - name: a\n    address: tcp:host=h:port=1\n    topic: ['#']\n",
     "line 4: bridges[0].topic: unknown key; did you mean topics?"),
    ("bridges:\n  - name: a\n    address: tcp:host=h:port=1\n    topics: ['# out 3']\n",
     "line 4: bridges[0].topics[0]: QoS must be 0, 1 or 2, not 3"),
    ("bridges:\n  - name: a\n    address: tcp:host=h:port=1\n    topics: []\n",
     "line 4: bridges[0].topics: a bridge needs at least one topic rule"),
    ("bridges:\n  - name: a\n    address: 'nope:x'\n    topics: ['#']\n",
     "line 3: bridges[0].address: bad endpoint 'nope:x'"),
    ("bridges:\n  - name: a\n    address: tcp:host=h:port=1\n    protocol: 3.1\n"
     "    topics: ['#']\n", "line 4: bridges[0].protocol: expected 3.1.1 or 5, not 3.1"),
    ("bridges:\n  - name: a b\n    address: tcp:host=h:port=1\n    topics: ['#']\n",
     "line 2: bridges[0].name: expected a name of letters"),
    ("bridges:\n  - {name: a, address: 'tcp:host=h:port=1', topics: ['#']}\n"
     "  - {name: a, address: 'tcp:host=h:port=2', topics: ['#']}\n",
     "line 3: bridges[1].name: a second bridge named 'a'"),
])
def test_yaml_mistakes_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    """A mistake in a bridge stops start-up with one line: file, line, key path, problem."""
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("address, message", [
    ("tls:host=h:port=1:trustRoots=/nonexistent",
     "cannot read trustRoots=/nonexistent: No such file or directory; expected a directory of "
     "CA certificates"),
    ("tls:host=h:port=1:certificate=/nonexistent/c.pem:privateKey=/nonexistent/k.pem",
     "cannot read certificate=/nonexistent/c.pem: No such file or directory; expected a "
     "readable certificate or key file"),
])
def test_tls_files_that_cannot_be_read(tmp_path: Path, address: str, message: str) -> None:
    """A certificate, key or CA directory of the remote address that cannot be read is named."""
    text = f"bridges:\n  - {{name: a, address: '{address}', topics: ['#']}}\n"
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    assert f"line 2: bridges[0].address: {message}" in str(caught.value)


def test_the_documented_example_is_valid(tmp_path: Path) -> None:
    """The YAML example of docs/bridges.md is a valid configuration (its files made here)."""
    from tests.certs import make_pki

    pki = make_pki(tmp_path)
    roots = tmp_path / "cloud-ca"
    roots.mkdir()
    (roots / "root.pem").write_bytes(pki.root.read_bytes())
    docs = (Path(__file__).parent.parent / "docs" / "bridges.md").read_text()
    example = docs.split("## MQTT bridge", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    example = (example.replace("/etc/ssl/cloud-ca", str(roots))
               .replace("/etc/mqtt/site1.pem", str(pki.client_cert))
               .replace("/etc/mqtt/site1.key", str(pki.client_key)))
    (bridge,) = load_config(_write(tmp_path, example)).values["bridges"]
    assert (bridge.name, bridge.client_id, len(bridge.topics)) == ("cloud", "site1", 4)


@pytest.mark.parametrize("argv, message", [
    (["--bridge", "cloud"], "--bridge: expected NAME=ADDRESS, not 'cloud'"),
    (["--bridge-topic", "cloud=#"], "--bridge-topic: no --bridge cloud=ADDRESS"),
    (["--bridge", f"c={ADDRESS}", "--bridge-topic", "c=# out 1 a/"],
     "--bridge c.topics[0]: expected 'PATTERN"),
    (["--bridge", f"c={ADDRESS}", "--bridge-topic", "c=#", "--bridge-option", "c=5"],
     "--bridge-option: expected NAME.KEY=VALUE"),
    (["--bridge", f"c={ADDRESS}", "--bridge-topic", "c=#", "--bridge-option",
      "c.queue_messages=-1"], "--bridge c.queue_messages: expected an integer >= 0, not -1"),
])
def test_command_line_mistakes(argv: List[str], message: str) -> None:
    """The options say which one is wrong, and why."""
    with pytest.raises(ConfigError) as caught:
        Options().parseOptions(argv)
    assert message in str(caught.value)


def test_bridges_refused_with_workers() -> None:
    """Each worker would run every bridge under the same client id, taking it over from the
    others: bridges and ``--workers`` together are a configuration error."""
    with pytest.raises(ConfigError) as caught:
        Options().parseOptions(["--workers", "2", "--cluster", "redis://127.0.0.1:6379/0",
                                "--bridge", f"c={ADDRESS}", "--bridge-topic", "c=#"])
    assert "--workers: MQTT bridges run in one process" in str(caught.value)


def test_bridges_from_options_keeps_the_order() -> None:
    """Bridges come in the order of their ``--bridge``, each with its own rules."""
    bridges = bridges_from_options([f"one={ADDRESS}", f"two={ADDRESS}"],
                                   ["two=b/#", "one=a/#"], [])
    assert [(bridge.name, bridge.topics[0].pattern) for bridge in bridges] == [
        ("one", "a/#"), ("two", "b/#")]


# -- local to remote ----------------------------------------------------------------------------


def test_export_maps_the_topic_and_keeps_the_message() -> None:
    """A message published here on an ``out`` rule goes to the remote topic, with its QoS (at
    most the rule's), RETAIN flag, user properties, content type and remaining expiry."""
    broker = hub()
    bridge, link = bridge_on(broker, "sensors/# out 1 site/ cloud/site1/")
    link.up()
    publisher = join(broker, "p")
    props = Properties(user_properties=(("unit", "C"),), content_type="text/plain",
                       message_expiry_interval=60, payload_format_indicator=1)
    broker.clock.advance(0)
    publisher.send(Publish("site/sensors/t1", b"21.5", 2, True, False, 1, props))
    publisher.send(Publish("site/other", b"x", 1, False, False, 2))
    (sent, _), = link.published
    assert (sent.topic, sent.payload, sent.qos, sent.retain) == (
        "cloud/site1/sensors/t1", b"21.5", 1, True)
    assert sent.properties == props
    link.ack_all()
    assert bridge.counters.sent == 1


def test_v3_remote_gets_no_properties() -> None:
    """An MQTT 3.1.1 remote cannot carry properties: the message goes without them."""
    broker = hub()
    _bridge, link = bridge_on(broker, "a/# out 1", protocol="3.1.1")
    link.up()
    broker.broker.inline.publish("a/b", b"x", 1, properties=Properties(content_type="t"))
    assert link.published[0][0].properties == Properties()


def test_retained_messages_are_exported_at_start() -> None:
    """The retained messages matching an ``out`` rule go to the remote when the bridge starts,
    RETAIN set (as a Mosquitto bridge's local subscription gets them)."""
    broker = hub()
    broker.broker.inline.publish("a/b", b"kept", 1, retain=True)
    bridge, link = bridge_on(broker, "a/# out 1")
    link.up()
    assert [(m.topic, m.payload, m.retain) for m, _ in link.published] == [("a/b", b"kept", True)]


# -- remote to local ----------------------------------------------------------------------------


def test_import_by_the_first_matching_rule() -> None:
    """A remote message is published here by the first ``in`` rule matching it (Mosquitto's
    order), with the lower of its QoS and the rule's, its RETAIN flag and its message
    properties (not the properties of the hop, such as a topic alias)."""
    broker = hub()
    bridge, _link = bridge_on(broker, "cmd/# in 1 here/ there/", "# in 2 all/ there/")
    got = inline_messages(broker, "#")
    props = Properties(user_properties=(("k", "v"),), content_type="c", topic_alias=3,
                       correlation_data=b"id")
    bridge.remote_message("there/cmd/reboot", b"now", 2, True, props)
    bridge.remote_message("there/x", b"y", 2, False)
    bridge.remote_message("elsewhere/x", b"z", 2, False)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in got] == [
        ("here/cmd/reboot", b"now", 1, True), ("all/x", b"y", 2, False)]
    assert got[0].properties == Properties(user_properties=(("k", "v"),), content_type="c",
                                           correlation_data=b"id")
    assert bridge.counters.received == 2
    assert bridge.remote_filters() == [
        ("there/cmd/#", 1), ("there/#", 2)]


def test_a_remote_message_that_cannot_be_published_here(logged: List[str]) -> None:
    """A message from the remote that cannot be published here (its payload format indicator
    says UTF-8 and it is not) is counted as rejected, logged the first time only, until one is
    published again."""
    broker = hub()
    bridge, _link = bridge_on(broker, "# in 1")
    got = inline_messages(broker, "#")
    bad = Properties(payload_format_indicator=1)
    bridge.remote_message("a/b", b"\xff", 1, False, bad)
    bridge.remote_message("a/c", b"\xfe", 1, False, bad)
    bridge.remote_message("a/d", b"fine", 1, False, bad)
    assert [m.payload for m in got] == [b"fine"]
    assert (bridge.counters.rejected, bridge.counters.received) == (2, 1)
    assert sum("a/b from the remote not published here" in line for line in logged) == 1
    assert sum("not published here" in line for line in logged) == 1
    assert any("messages from the remote are published here again (2 rejected)" in line
               for line in logged)


def test_a_both_rule_does_not_send_back_what_it_imported() -> None:
    """Loop prevention, local side: what the bridge imported is published here (local
    subscribers get it) but never exported again, even by a ``both`` rule matching it."""
    broker = hub()
    bridge, link = bridge_on(broker, "# both 1")
    link.up()
    subscriber = join(broker, "s")
    subscribe(subscriber, "#", 1)
    bridge.remote_message("a/b", b"from remote", 1, False)
    assert [p.payload for p in subscriber.received() if isinstance(p, Publish)] == [
        b"from remote"]
    assert link.published == []
    broker.broker.inline.publish("a/b", b"from here", 1)
    assert [m.payload for m, _ in link.published] == [b"from here"]


def test_v3_remote_echo_is_not_published_again() -> None:
    """An MQTT 3.1.1 remote has no No Local: it sends back what the bridge published on a
    ``both`` rule; the bridge recognises each such message once and does not publish it here
    again, while the same message published on the remote by someone else still comes in."""
    broker = hub()
    bridge, link = bridge_on(broker, "# both 1", protocol="3.1.1")
    link.up()
    got = inline_messages(broker, "a/#")
    broker.broker.inline.publish("a/b", b"mine", 1)
    assert len(link.published) == 1 and len(got) == 1
    bridge.remote_message("a/b", b"mine", 1, False)  # the echo
    assert len(got) == 1 and bridge.status()["echoes"] == 1
    bridge.remote_message("a/b", b"mine", 1, False)  # published there again, by another client
    assert [m.payload for m in got] == [b"mine", b"mine"]
    assert len(link.published) == 1


# -- the remote down: the queue -------------------------------------------------------------


def test_queued_while_down_then_sent_in_order(logged: List[str]) -> None:
    """While the remote is down, QoS 1/2 messages wait (up to ``queue_messages``; more are
    dropped, counted, logged once) and QoS 0 messages are dropped; after reconnecting, the
    queue is sent in order."""
    broker = hub()
    bridge, link = bridge_on(broker, "a/# out 2", queue_messages=3)
    publish = broker.broker.inline.publish
    for number in range(5):
        publish("a/n", str(number).encode(), 1)
    publish("a/zero", b"q0", 0)
    assert link.published == [] and len(bridge.queue) == 3
    assert bridge.counters.dropped == 3
    assert bridge.counters.by_reason == {"queue full": 2, "remote down": 1}
    assert sum("outbound queue full" in line for line in logged) == 1
    link.up()
    assert [m.payload for m, _ in link.published] == [b"0", b"1", b"2"]
    assert sum("the queue has room again (3 messages dropped" in line for line in logged) == 1
    link.ack_all()
    assert bridge.counters.sent == 3 and len(bridge.queue) == 0


def test_queue_bound_in_bytes() -> None:
    """The queue also holds at most ``queue_bytes`` bytes of topic and payload."""
    broker = hub()
    bridge, link = bridge_on(broker, "a/# out 1", queue_bytes=25)
    for _ in range(3):
        broker.broker.inline.publish("a/b", b"0123456789", 1)  # 13 bytes each
    assert (len(bridge.queue), bridge.queue.bytes, bridge.counters.dropped) == (1, 13, 2)


def test_inflight_window_bounds_what_the_link_holds() -> None:
    """At most ``inflight`` messages are with the link unacknowledged; the others wait in the
    queue, in order, and follow as acknowledgements come."""
    broker = hub()
    bridge, link = bridge_on(broker, "a/# out 1", inflight=2)
    link.up()
    for number in range(5):
        broker.broker.inline.publish("a/n", str(number).encode(), 1)
    assert [m.payload for m, _ in link.published] == [b"0", b"1"]
    link.published[0][1].callback(None)
    assert [m.payload for m, _ in link.published] == [b"0", b"1", b"2"]
    link.ack_all()
    link.ack_all()
    link.ack_all()
    assert [m.payload for m, _ in link.published] == [b"0", b"1", b"2", b"3", b"4"]
    assert bridge.counters.sent == 5 and bridge.inflight == 0


def test_qos0_held_by_the_link_counts_in_the_window() -> None:
    """A QoS 0 message the link holds (its connection's send buffer full: the client writes it
    later) counts in the in-flight window until written, so that further messages wait in the
    bridge's bounded queue, and beyond it are dropped, rather than piling up in the client."""
    broker = hub()
    bridge, link = bridge_on(broker, "a/# out 1", inflight=2, queue_messages=2)
    link.up()
    for number in range(5):
        broker.broker.inline.publish("a/n", str(number).encode(), 0)
    assert [m.payload for m, _ in link.published] == [b"0", b"1"]
    assert (len(bridge.queue), bridge.counters.by_reason) == (2, {"queue full": 1})
    link.ack_all()  # written
    link.ack_all()
    assert [m.payload for m, _ in link.published] == [b"0", b"1", b"2", b"3"]


def test_expiry_counts_down_while_queued() -> None:
    """A queued message goes with the expiry interval it has left, or not at all once it has
    expired (counted) [MQTT-3.3.2-6]."""
    broker = hub()
    bridge, link = bridge_on(broker, "a/# out 1")
    publish = broker.broker.inline.publish
    publish("a/short", b"s", 1, properties=Properties(message_expiry_interval=5))
    publish("a/long", b"l", 1, properties=Properties(message_expiry_interval=100))
    broker.clock.advance(10)
    link.up()
    (sent, _), = link.published
    assert sent.topic == "a/long" and sent.properties.message_expiry_interval == 90
    assert bridge.counters.expired == 1


def test_refused_by_the_remote_is_dropped_and_logged(logged: List[str]) -> None:
    """A publication the remote refuses is counted as dropped; the first is logged with its
    topic and reason, the next ones only counted until the remote accepts one again."""
    broker = hub()
    bridge, link = bridge_on(broker, "a/# out 1")
    link.up()
    for _ in range(3):
        broker.broker.inline.publish("a/b", b"x", 1)
    for _message, done in link.published[:2]:
        done.errback(Failure(ValueError("NOT_AUTHORIZED")))
    link.ack_all()
    assert bridge.counters.by_reason == {"refused": 2}
    assert [line for line in logged if "a/b not sent to the remote: NOT_AUTHORIZED" in line]
    assert sum("not sent to the remote" in line for line in logged) == 1
    assert any("the remote accepts messages again (2 refused)" in line for line in logged)


def test_a_message_the_link_cannot_take_is_dropped(logged: List[str]) -> None:
    """A message the client refuses at once (a remote topic longer than MQTT allows, after the
    prefix) is dropped and logged; the publisher here is not affected."""
    broker = hub()
    bridge, link = bridge_on(broker, "a/# out 1 \"\" " + "r" * 65530 + "/")

    def refuse(message: Outgoing) -> Deferred[Any]:
        raise ValueError("topic longer than 65,535 bytes")

    link.publish = refuse  # type: ignore[method-assign]
    link.up()
    publisher = join(broker, "p")
    publisher.send(Publish("a/bc", b"x", 1, False, False, 1))
    assert publisher.received()[-1].packet_id == 1  # PUBACK: the publisher goes on
    assert bridge.counters.by_reason == {"refused": 1}
    assert any("topic longer than 65,535 bytes" in line for line in logged)
    assert bridge.inflight == 0


# -- notifications and metrics ------------------------------------------------------------------


def test_state_notifications() -> None:
    """The retained ``$SYS/broker/connection/NAME/state`` is 0 until connected, 1 while
    connected (Mosquitto's notifications), and our JSON status follows each change."""
    broker = hub()
    bridge, link = bridge_on(broker, "a/# out 1")
    retained = broker.broker.retained
    assert retained[STATE_TOPIC.format(name="b")].payload == b"0"
    link.up()
    assert retained[STATE_TOPIC.format(name="b")].payload == b"1"
    status = json.loads(retained[STATUS_TOPIC.format(name="b")].payload)
    assert (status["state"], status["connects"], status["remote"]) == ("connected", 1, ADDRESS)
    link.down("remote closed the connection")
    assert retained[STATE_TOPIC.format(name="b")].payload == b"0"
    status = json.loads(retained[STATUS_TOPIC.format(name="b")].payload)
    assert (status["state"], status["reason"]) == ("disconnected", "remote closed the connection")
    bridge.stopService()
    assert link.stopped
    assert json.loads(retained[STATUS_TOPIC.format(name="b")].payload)["state"] == "stopped"


def test_status_refreshed_with_sys() -> None:
    """The JSON status is published again at each $SYS publication, with the counters then."""
    broker = hub(sys_interval=10)
    bridge, link = bridge_on(broker, "a/# out 1")
    link.up()
    broker.broker.inline.publish("a/b", b"x", 1)
    link.ack_all()
    status = STATUS_TOPIC.format(name="b")
    assert json.loads(broker.broker.retained[status].payload)["sent"] == 0
    broker.advance(10)
    assert json.loads(broker.broker.retained[status].payload)["sent"] == 1
    bridge.stopService()
    broker.broker.inline.publish("a/b", b"x", 1)
    broker.advance(10)
    assert json.loads(broker.broker.retained[status].payload)["state"] == "stopped"


def test_metrics_by_bridge() -> None:
    """``/metrics`` has each bridge's figures, labelled with its name."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry
    from twisted.internet.task import Clock

    from twisted_mqtt.bridges.mqtt import add_bridges
    from twisted_mqtt.metrics import BrokerCollector
    from twisted_mqtt.service import BrokerService

    service = BrokerService(reactor=Clock())
    (bridge,) = add_bridges(service, [BridgeSettings("cloud", ADDRESS, (parse_rule("a/# out 1"),),
                                                     queue_messages=1)], RecordingLink)
    bridge.startService()
    for _ in range(3):
        service.broker.inline.publish("a/b", b"x", 1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(service))
    text = generate_latest(registry).decode()
    assert 'mqtt_bridge_connected{bridge="cloud"} 0.0' in text
    assert 'mqtt_bridge_queued_messages{bridge="cloud"} 1.0' in text
    assert 'mqtt_bridge_messages_dropped_total{bridge="cloud"} 2.0' in text


check_cited_labels(sys.modules[__name__])
