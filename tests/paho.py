"""A paho-mqtt client for end-to-end tests: connect, subscribe and publish with deadlines, and
collect what arrives."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5
TIMEOUT = 5.0
HOST = "127.0.0.1"


class Acks:
    """Acknowledgement results by packet id, waited for with a deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._results: Dict[int, Any] = {}

    def put(self, mid: int, value: Any) -> None:
        with self._cond:
            self._results[mid] = value
            self._cond.notify_all()

    def wait(self, mid: int, timeout: float = TIMEOUT) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._results, timeout):
                raise AssertionError(f"no acknowledgement for packet {mid} within {timeout}s")
            return self._results.pop(mid)


class Client:
    """A paho client running its network loop in a thread; records what the broker sends."""

    def __init__(self, port: int, version: int = V5, client_id: str = "", *,
                 clean: bool = True, host: str = HOST) -> None:
        self.port = port
        self.host = host
        self.version = version
        self.v5 = version == V5
        kwargs: Dict[str, Any] = {"client_id": client_id, "protocol": version,
                                  "reconnect_on_failure": False}
        if not self.v5:
            kwargs["clean_session"] = clean
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_message = self._on_message
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack_flags: Any = None
        self.connack_rc: Any = None
        self.connack_props: Any = None
        self.disconnect_rc: Any = None
        self.subacks = Acks()
        self._started = False

    # callbacks (paho's network thread)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        self.connack_flags, self.connack_rc, self.connack_props = flags, reason_code, properties
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self.disconnect_rc = reason_code
        self.disconnected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        self.subacks.put(mid, [rc.value for rc in reason_codes])

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)

    # actions

    def connect(self, keepalive: int = 30, clean_start: bool = True,
                properties: Optional[Properties] = None, expect_success: bool = True) -> Client:
        """Connect and wait for CONNACK (a success unless ``expect_success`` is false)."""
        kwargs: Dict[str, Any] = {}
        if self.v5:
            kwargs = {"clean_start": clean_start, "properties": properties}
        self.paho.connect(self.host, self.port, keepalive, **kwargs)
        self.paho.loop_start()
        self._started = True
        assert self.connected.wait(TIMEOUT), "no CONNACK"
        if expect_success:
            assert not self.connack_rc.is_failure, f"connection refused: {self.connack_rc}"
        return self

    def subscribe(self, topic: Any, qos: int = 0,
                  properties: Optional[Properties] = None) -> List[int]:
        """Subscribe and return the SUBACK reason codes."""
        if isinstance(topic, list):
            result, mid = self.paho.subscribe(topic, properties=properties)
        else:
            result, mid = self.paho.subscribe(topic, qos, properties=properties)
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
        return self.subacks.wait(mid)

    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False,
                properties: Optional[Properties] = None) -> None:
        """Publish and wait until it is acknowledged (QoS 1/2) or written (QoS 0)."""
        info = self.paho.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"publish to {topic!r} not completed within {TIMEOUT}s"

    def expect(self, count: int = 1, timeout: float = TIMEOUT) -> List[mqtt.MQTTMessage]:
        """The next ``count`` messages, failing if they do not all arrive in time."""
        deadline = time.monotonic() + timeout
        got: List[mqtt.MQTTMessage] = []
        while len(got) < count:
            try:
                got.append(self.messages.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"got {len(got)} of {count} messages: "
                                     f"{[(m.topic, m.payload) for m in got]}") from None
        return got

    def expect_until(self, topic: str, timeout: float = TIMEOUT) -> List[mqtt.MQTTMessage]:
        """Messages up to (not including) the first one on ``topic``, a barrier: the broker
        sends one client's messages in order, so nothing published before it comes later."""
        deadline = time.monotonic() + timeout
        got: List[mqtt.MQTTMessage] = []
        while True:
            try:
                message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no message on {topic} within {timeout}s; got "
                                     f"{[(m.topic, m.payload) for m in got]}") from None
            if message.topic == topic:
                return got
            got.append(message)

    def disconnect(self) -> None:
        """Disconnect normally and wait until the network loop has ended."""
        if self.paho.is_connected():
            self.paho.disconnect()
            self.disconnected.wait(TIMEOUT)
        self.close()

    def close(self) -> None:
        """Stop the network loop (disconnecting first if still connected)."""
        if self._started:
            if self.paho.is_connected():
                self.paho.disconnect()
                self.disconnected.wait(TIMEOUT)
            self.paho.loop_stop()
            self._started = False


MakeClient = Callable[..., Client]


