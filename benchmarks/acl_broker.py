"""``python -m twisted_mqtt`` with an allow-all ACL hook installed (an authorizer that answers
every ``may_publish``, ``may_subscribe`` and ``may_receive`` with True): what an application
with an ACL pays on the hot path.  ``run.py --brokers twisted_mqtt,twisted_mqtt+acl,mosquitto``
runs it beside the plain broker."""

from __future__ import annotations

import sys

from twisted_mqtt.__main__ import main
from twisted_mqtt.auth import AllowAllTopics
from twisted_mqtt.service import BrokerService


def install(service: BrokerService) -> None:
    """Add the allow-all authorizer."""
    service.broker.hooks.add(AllowAllTopics())


if __name__ == "__main__":
    sys.exit(main(configure=install))
