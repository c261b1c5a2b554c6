"""A custom authentication and authorisation hook: users with passwords, each confined to
``users/<username>/...``.

    python examples/auth_hook.py tcp:1883

Try ``mosquitto_pub -u alice -P wonderland -t users/alice/status -m hi`` (allowed) and
``-t users/bob/status`` (refused: v5 PUBACK 0x87, nothing routed).
"""

from __future__ import annotations

import hmac
import sys
from typing import Any, Dict

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from zope.interface import implementer

from twisted_mqtt.interfaces import ClientInfo, ConnectRequest, IAuthenticator, IAuthorizer
from twisted_mqtt.service import BrokerService
from twisted_mqtt.topics import matches

log = Logger()


@implementer(IAuthenticator, IAuthorizer)
class HomeDirectories:
    """Lets in known users and confines each to its own topic tree."""

    def __init__(self, passwords: Dict[str, bytes]) -> None:
        self.passwords = passwords

    def authenticate(self, request: ConnectRequest) -> Any:
        """Accept a known user with the right password; else 0x86 (v3: return code 4)."""
        username = request.client.username
        expected = self.passwords.get(username or "")
        if expected is None or request.password is None:
            return 0x86
        if not hmac.compare_digest(expected, request.password):
            return 0x86
        log.info("{username} logged in", username=username)
        return True

    def _own(self, client: ClientInfo, topic: str) -> bool:
        return matches(f"users/{client.username}/#", topic)

    def may_publish(self, client: ClientInfo, topic: str) -> bool:
        """Only under the user's own tree."""
        return self._own(client, topic)

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> bool:
        """Only filters inside the user's own tree."""
        return topic_filter.startswith(f"users/{client.username}/")

    def may_receive(self, client: ClientInfo, topic: str) -> bool:
        """Only messages from the user's own tree."""
        return self._own(client, topic)


def main(reactor: Any, endpoint: str = "tcp:1883") -> Deferred[None]:
    """Run a broker with the hook on ``endpoint``."""
    hook = HomeDirectories({"alice": b"wonderland", "bob": b"builder"})
    service = BrokerService(reactor=reactor, authenticator=hook, authorizer=hook)
    service.add_listener(endpoint)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    return Deferred()


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    task.react(main, sys.argv[1:])
