"""A web endpoint that publishes what is POSTed to it, sharing the reactor with the broker:

    python examples/web_publish.py tcp:1883 tcp:8080
    curl -d 21.5 'http://localhost:8080/publish/sensors/hall?qos=1&retain=1'

answers ``{"topic": "sensors/hall", "routed": N}`` with N the number of sessions it reached.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from twisted_mqtt.auth import LocalOnly
from twisted_mqtt.inline import InlineClient
from twisted_mqtt.listeners import ListenerService
from twisted_mqtt.service import BrokerService


class Publish(Resource):
    """``POST /publish/<topic>?qos=Q&retain=1``: publish the body to the topic."""

    isLeaf = True

    def __init__(self, inline: InlineClient) -> None:
        super().__init__()
        self.inline = inline

    def render_POST(self, request: Request) -> bytes:
        """Publish the request body; 400 for a bad topic or QoS."""
        request.setHeader(b"content-type", b"application/json")
        topic = "/".join(p.decode("utf-8") for p in request.postpath)
        args = request.args or {}
        try:
            qos = int(args.get(b"qos", [b"0"])[0])
            retain = args.get(b"retain", [b"0"])[0] in (b"1", b"true")
            body = request.content.read() if request.content is not None else b""
            routed = self.inline.publish(topic, body, qos=qos, retain=retain)
        except ValueError as error:
            request.setResponseCode(400)
            return json.dumps({"error": str(error)}).encode()
        return json.dumps({"topic": topic, "routed": routed}).encode()


def main(reactor: Any, mqtt: str = "tcp:1883", http: str = "tcp:8080") -> Deferred[None]:
    """Run the broker on ``mqtt`` and the web endpoint on ``http``."""
    service = BrokerService(reactor=reactor, authenticator=LocalOnly())
    service.add_listener(mqtt)
    root = Resource()
    root.putChild(b"publish", Publish(service.broker.inline))
    ListenerService(reactor, http, Site(root), "HTTP").setServiceParent(service)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    return Deferred()


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    task.react(main, sys.argv[1:])
