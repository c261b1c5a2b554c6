"""The ``twistd mqtt`` plugin and the ``mqtts:`` server endpoint string parser."""

from twisted.application.service import ServiceMaker

from twisted_mqtt.tls import MQTTSServerParser

mqtt = ServiceMaker(
    "twisted_mqtt", "twisted_mqtt.tap", "An MQTT 3.1, 3.1.1 and 5.0 broker.", "mqtt"
)
mqtts = MQTTSServerParser()
