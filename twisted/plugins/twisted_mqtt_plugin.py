"""The ``twistd mqtt`` plugin, the ``mqtts:`` server endpoint string parser and the ``mqtt``
reactor (``twistd --reactor=mqtt``)."""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

from twisted_mqtt.tls import MQTTSServerParser

mqtt = ServiceMaker(
    "twisted_mqtt", "twisted_mqtt.tap", "An MQTT 3.1, 3.1.1 and 5.0 broker.", "mqtt"
)
mqtts = MQTTSServerParser()
mqtt_reactor = Reactor(
    "mqtt", "twisted_mqtt.reactor",
    "epoll with less overhead per socket event, for twisted_mqtt (Linux only)",
)
