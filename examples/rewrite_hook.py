"""Hooks that rewrite what clients send: messages published under the old ``legacy/`` prefix
are routed under ``v2/``, and subscriptions asking for QoS 2 are downgraded to QoS 1.

    python examples/rewrite_hook.py tcp:1883
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import globalLogBeginner, textFileLogObserver

from twisted_mqtt.auth import LocalOnly
from twisted_mqtt.hooks import Hook
from twisted_mqtt.interfaces import ClientInfo
from twisted_mqtt.packets import Subscribe
from twisted_mqtt.service import BrokerService
from twisted_mqtt.session import Message


class Rewrite(Hook):
    """Moves ``legacy/...`` to ``v2/...`` and caps subscriptions at QoS 1."""

    def on_publish(self, client: ClientInfo, message: Message) -> Any:
        """Route legacy topics under their new name."""
        if message.topic.startswith("legacy/"):
            return message.evolve(topic="v2/" + message.topic[len("legacy/"):])
        return message

    def on_subscribe(self, client: ClientInfo, packet: Subscribe) -> Any:
        """Grant at most QoS 1."""
        capped = tuple(replace(s, qos=min(s.qos, 1)) for s in packet.subscriptions)
        return replace(packet, subscriptions=capped)


def main(reactor: Any, endpoint: str = "tcp:1883") -> Deferred[None]:
    """Run a broker with the rewriting hook on ``endpoint``."""
    service = BrokerService(reactor=reactor, authenticator=LocalOnly(), hooks=[Rewrite()])
    service.add_listener(endpoint)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    return Deferred()


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    task.react(main, sys.argv[1:])
