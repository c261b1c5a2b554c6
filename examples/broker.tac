"""A broker as a twistd application file:

    MQTT_LISTEN=tcp:1883 twistd -ny examples/broker.tac

``BrokerService`` is a ``MultiService``: here it is the whole application, but it can as well
be one child among a web site and other services of an existing ``Application``.
"""

import os

from twisted.application.service import Application

from twisted_mqtt.auth import LocalOnly
from twisted_mqtt.service import BrokerService

application = Application("mqtt")
broker = BrokerService(authenticator=LocalOnly())
broker.add_listener(os.environ.get("MQTT_LISTEN", "tcp:1883"))
broker.setServiceParent(application)
