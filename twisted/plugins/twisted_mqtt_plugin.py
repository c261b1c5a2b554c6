"""The ``twistd mqtt`` plugin."""

from twisted.application.service import ServiceMaker

mqtt = ServiceMaker(
    "twisted_mqtt", "twisted_mqtt.tap", "An MQTT 3.1, 3.1.1 and 5.0 broker.", "mqtt"
)
