"""A broker killed with SIGKILL in the middle of a QoS 1 and a QoS 2 stream loses nothing it
acknowledged: the real ``twistd mqtt`` with a durable store (SQLite, then Redis), a subscriber
offline with a persistent session, a paho publisher streaming with up to 20 messages in flight.

After the restart on the same store the subscriber continues its session (Session Present 1)
and receives every message the publisher had an acknowledgement for (PUBACK for QoS 1, PUBREC
for QoS 2): QoS 1 at least once, QoS 2 exactly once; the retained message is still there.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Set

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import LOOPBACK, BrokerProcess, StartBroker, twistd_command
from tests.paho import V5, MakeClient
from tests.servers import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.e2e

SUBSCRIBER = "offline-subscriber"
ACKED_BEFORE_KILL = 300
STREAM_TIMEOUT = 30.0
WINDOW = 20


def session_properties(expiry: int = 3600) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    return props


class Stream:
    """A paho publisher streaming QoS 1 (``s/q1``) and QoS 2 (``s/q2``) messages in turn,
    with up to ``WINDOW`` unacknowledged; it records which were acknowledged."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.payloads: Dict[int, bytes] = {}
        self.acked_mids: Set[int] = set()  # PUBACK (QoS 1), PUBREC (QoS 2)
        self.completed_mids: Set[int] = set()  # PUBACK, PUBCOMP
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="streamer",
                                  protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        self.client.max_inflight_messages_set(WINDOW)
        self.client.on_publish = self._on_publish
        self.client.on_log = self._on_log
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        with self.lock:
            self.completed_mids.add(mid)
            self.acked_mids.add(mid)

    def _on_log(self, client: Any, userdata: Any, level: int, text: str) -> None:
        if text.startswith("Received PUBREC (Mid: "):
            with self.lock:
                self.acked_mids.add(int(text.split(": ")[1].rstrip(")")))

    def _run(self) -> None:
        number = 0
        while not self.stop.is_set():
            with self.lock:
                waiting = len(self.payloads) - len(self.completed_mids)
            if waiting >= WINDOW:
                time.sleep(0.001)  # (the publisher's own pacing, not a wait for the broker)
                continue
            qos = 1 + number % 2
            payload = b"%d-%06d" % (qos, number)
            info = self.client.publish(f"s/q{qos}", payload, qos)
            with self.lock:
                self.payloads[info.mid] = payload
            number += 1

    def acknowledged(self) -> int:
        with self.lock:
            return len(self.acked_mids)

    def acked(self, qos: int) -> Set[bytes]:
        with self.lock:
            return {self.payloads[m] for m in self.acked_mids
                    if m in self.payloads and self.payloads[m].startswith(b"%d-" % qos)}

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.loop_stop()


def start_killable(tmp_path: Path, *options: str) -> BrokerProcess:
    """A broker that the test kills (so not checked for a clean exit)."""
    argv = [*twistd_command(), "-n", "--pidfile=", "mqtt", "--listen", LOOPBACK, *options]
    broker = BrokerProcess(argv, tmp_path / "killed.log")
    try:
        broker.wait_ready(1)
    except BaseException:
        broker.proc.kill()
        broker.proc.wait()
        raise
    return broker


def kill_mid_stream(tmp_path: Path, clients: MakeClient, options: List[str]) -> Stream:
    """Set up the offline subscriber and a retained message, stream, and SIGKILL the broker
    once ``ACKED_BEFORE_KILL`` messages were acknowledged, with more still in flight."""
    broker = start_killable(tmp_path, *options)
    try:
        sub = clients(broker.port, V5, SUBSCRIBER)
        sub.connect(clean_start=False, properties=session_properties())
        assert sub.subscribe([("s/q1", 1), ("s/q2", 2), ("s/end", 2)]) == [1, 2, 2]
        sub.disconnect()
        setter = clients(broker.port, V5, "retainer")
        setter.connect()
        setter.publish("r/kept", b"retained survives", 1, retain=True)
        setter.disconnect()
        stream = Stream(broker.port)
        stream.thread.start()
        deadline = time.monotonic() + STREAM_TIMEOUT
        while stream.acknowledged() < ACKED_BEFORE_KILL:
            assert time.monotonic() < deadline, (
                f"only {stream.acknowledged()} acknowledgements within {STREAM_TIMEOUT}s:\n"
                f"{broker.log()}")
            time.sleep(0.005)
        broker.proc.send_signal(signal.SIGKILL)
        broker.proc.wait(10)
        assert broker.proc.returncode == -signal.SIGKILL
        with stream.lock:
            in_flight = len(stream.payloads) - len(stream.completed_mids)
        stream.close()
        assert in_flight > 0, "the broker was not killed mid-stream"
        return stream
    finally:
        if broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()


def check_restart(start_broker: StartBroker, clients: MakeClient, options: List[str],
                  stream: Stream) -> None:
    """Restart on the same store; every acknowledged message reaches the subscriber."""
    broker = start_broker(*options)
    assert "restored 1 sessions" in broker.log(), broker.log()
    sub = clients(broker.port, V5, SUBSCRIBER)
    sub.connect(clean_start=False, properties=session_properties())
    assert sub.connack_flags.session_present, "the session did not survive"
    marker = clients(broker.port, V5, "marker")
    marker.connect()
    marker.publish("s/end", b"end", 2)
    got = sub.expect_until("s/end", timeout=20.0)
    received = collections.Counter(m.payload for m in got)
    q1 = {p for p in received if p.startswith(b"1-")}
    q2 = [p for p in received if p.startswith(b"2-")]
    acked_q1, acked_q2 = stream.acked(1), stream.acked(2)
    assert len(acked_q1) + len(acked_q2) >= ACKED_BEFORE_KILL
    missing_q1 = sorted(acked_q1 - q1)
    missing_q2 = sorted(acked_q2 - set(q2))
    assert not missing_q1, f"acknowledged QoS 1 messages lost: {missing_q1[:10]}"
    assert not missing_q2, f"acknowledged QoS 2 messages lost: {missing_q2[:10]}"
    duplicates = [p for p in q2 if received[p] > 1]
    assert not duplicates, f"QoS 2 messages delivered twice: {duplicates[:10]}"
    reader = clients(broker.port, V5, "reader")
    reader.connect()
    reader.subscribe("r/kept", 1)
    (retained,) = reader.expect(1)
    assert retained.payload == b"retained survives" and retained.retain


def test_sqlite_durable_survives_sigkill(tmp_path: Path, start_broker: StartBroker,
                                         clients: MakeClient) -> None:
    """SQLite in durable mode: SIGKILL mid-stream loses no acknowledged message."""
    options = ["--store", f"sqlite:{tmp_path / 'broker.db'}", "--durable", "--sys-interval",
               "0"]
    stream = kill_mid_stream(tmp_path, clients, options)
    check_restart(start_broker, clients, options, stream)


def test_redis_durable_survives_sigkill(tmp_path: Path, start_broker: StartBroker,
                                        clients: MakeClient,
                                        redis_server: RedisServer) -> None:  # noqa: F811
    """Redis in durable mode: SIGKILL mid-stream loses no acknowledged message."""
    prefix = f"restart{uuid.uuid4().hex[:8]}:"
    options = ["--store", redis_server.url(0, prefix), "--durable", "--sys-interval", "0"]
    stream = kill_mid_stream(tmp_path, clients, options)
    check_restart(start_broker, clients, options, stream)


def test_write_behind_restart_keeps_sessions(tmp_path: Path, start_broker: StartBroker,
                                             clients: MakeClient) -> None:
    """SQLite write-behind: after a graceful restart the session, its queued messages and the
    retained message are back (what was committed within a turn survives)."""
    options = ["--store", f"sqlite:{tmp_path / 'wb.db'}", "--sys-interval", "0"]
    first = start_broker(*options)
    sub = clients(first.port, V5, SUBSCRIBER)
    sub.connect(clean_start=False, properties=session_properties())
    sub.subscribe([("s/q1", 1)])
    sub.disconnect()
    pub = clients(first.port, V5, "pub")
    pub.connect()
    for number in range(50):
        pub.publish("s/q1", b"%d" % number, 1)
    pub.publish("r/kept", b"retained survives", 1, retain=True)
    pub.disconnect()
    first.check_clean_exit()
    second = start_broker(*options)
    again = clients(second.port, V5, SUBSCRIBER)
    again.connect(clean_start=False, properties=session_properties())
    assert again.connack_flags.session_present
    assert [m.payload for m in again.expect(50)] == [b"%d" % n for n in range(50)]


def test_memory_store_is_the_default(start_broker: StartBroker) -> None:
    """The README's command line persists nothing, and says so."""
    broker = start_broker()
    assert "store: memory; sessions and messages do not survive a restart" in broker.log()
