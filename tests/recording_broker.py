"""``python -m tests.recording_broker [twistd mqtt options]``: the broker in the foreground, as
``python -m twisted_mqtt``, but with an authentication hook that accepts every client and logs
the ``ClientInfo`` it was given as one JSON line: ``auth hook saw {...}``.

The end-to-end tests read that line to check what reaches authentication hooks (the TLS client
certificate's subject, the address from a PROXY header or X-Forwarded-For).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict

from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from zope.interface import implementer

from twisted_mqtt.interfaces import ClientInfo, ConnectRequest, IAuthenticator

log = Logger()
FIELDS = ("client_id", "username", "address", "listener", "protocol_level",
          "certificate_subject", "certificate_common_name")


def client_record(client: ClientInfo) -> Dict[str, Any]:
    """The fields of a ``ClientInfo`` as a dictionary."""
    return {name: getattr(client, name) for name in FIELDS}


@implementer(IAuthenticator)
class RecordingAuthenticator:
    """Accepts every client and logs what it was told about it."""

    def authenticate(self, request: ConnectRequest) -> bool:
        """Log the client's ``ClientInfo`` and accept."""
        log.info("auth hook saw {record}", record=json.dumps(client_record(request.client)))
        return True


def main() -> int:
    """Parse ``twistd mqtt`` options and run the broker with the recording hook."""
    from twisted.internet import reactor

    from twisted_mqtt.tap import Options, makeService

    options = Options()
    options.parseOptions(sys.argv[1:])
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    service = makeService(options, reactor)
    service.broker.authenticator = RecordingAuthenticator()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
