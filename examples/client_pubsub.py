"""A Twisted MQTT client: subscribe with a callback, publish at QoS 0, 1 and 2, disconnect.

    python examples/client_pubsub.py tcp:127.0.0.1:1883 [5|4]

It prints each message it gets back and each publication's acknowledgement, then exits.  Any
Twisted client endpoint works (``tls:HOST:PORT:trustRoots=DIR``, ``unix:path=SOCKET``), and so
does a WebSocket URL (``ws://HOST:PORT/mqtt``).
"""

from __future__ import annotations

import sys
from typing import Any, List

from twisted.internet import defer, task

from twisted_mqtt.client import ConnectionRefused, Message, MQTTClient


@defer.inlineCallbacks
def main(reactor: Any, endpoint: str = "tcp:127.0.0.1:1883", version: str = "5") -> Any:
    """Connect to ``endpoint``, send three messages to ourselves, print what comes back."""
    client = MQTTClient(reactor, endpoint, "example-client", protocol_level=int(version))
    try:
        connected = yield client.connect()
    except ConnectionRefused as refused:
        print(f"refused: {refused}")
        return
    print(f"connected, session present: {connected.session_present}")
    received: List[Message] = []
    all_in: defer.Deferred = defer.Deferred()

    def on_greeting(message: Message) -> None:
        print(f"received {message.topic} {message.payload.decode()} qos {message.qos}")
        received.append(message)
        if len(received) == 3:
            all_in.callback(None)

    granted = yield client.subscribe("greetings/#", on_greeting, qos=2)
    print(f"subscribed, granted QoS {granted[0]}")
    for qos in (0, 1, 2):
        ack = yield client.publish("greetings/world", f"hello {qos}".encode(), qos=qos)
        print(f"published at QoS {qos}: {type(ack).__name__ if ack else 'sent'}")
    yield all_in
    yield client.disconnect()
    print("disconnected")


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
