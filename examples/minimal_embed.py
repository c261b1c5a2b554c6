"""The smallest embedding: a broker inside your own program, on the endpoint given.

    python examples/minimal_embed.py tcp:1883

Without an authenticator the library refuses every client; ``LocalOnly`` lets in clients
from loopback addresses and Unix sockets (use ``AllowAll`` to let in everyone).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import globalLogBeginner, textFileLogObserver

from twisted_mqtt.auth import LocalOnly
from twisted_mqtt.service import BrokerService


def main(reactor: Any, endpoint: str = "tcp:1883") -> Deferred[None]:
    """Run a broker on ``endpoint`` until the process is stopped."""
    service = BrokerService(reactor=reactor, authenticator=LocalOnly())
    service.add_listener(endpoint)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    return Deferred()  # run until SIGTERM or SIGINT


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    task.react(main, sys.argv[1:])
