"""The application as a client of its own broker: it subscribes to temperatures and
publishes an alert (QoS 1, retained) when one is too high.

    python examples/inline_pubsub.py tcp:1883

``mosquitto_pub -t sensors/kitchen/temperature -m 31.5`` makes it publish
``alerts/kitchen`` = ``too hot: 31.5``.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import globalLogBeginner, textFileLogObserver

from twisted_mqtt.auth import LocalOnly
from twisted_mqtt.inline import InlineMessage
from twisted_mqtt.service import BrokerService

LIMIT = 30.0


def main(reactor: Any, endpoint: str = "tcp:1883") -> Deferred[None]:
    """Run a broker on ``endpoint`` with the temperature watcher inside."""
    service = BrokerService(reactor=reactor, authenticator=LocalOnly())
    inline = service.broker.inline

    def on_temperature(message: InlineMessage) -> None:
        sensor = message.topic.split("/")[1]
        try:
            value = float(message.payload)
        except ValueError:
            return
        if value > LIMIT:
            inline.publish(f"alerts/{sensor}", f"too hot: {value}", qos=1, retain=True)

    inline.subscribe("sensors/+/temperature", on_temperature)
    service.add_listener(endpoint)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    return Deferred()


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    task.react(main, sys.argv[1:])
