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

from twisted.logger import Logger
from zope.interface import implementer

from twisted_mqtt.__main__ import main
from twisted_mqtt.interfaces import ClientInfo, ConnectRequest, IAuthenticator
from twisted_mqtt.service import BrokerService

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


def install(service: BrokerService) -> None:
    """Replace the authenticator with the recording one."""
    service.broker.authenticator = RecordingAuthenticator()


if __name__ == "__main__":
    sys.exit(main(configure=install))
