"""A Twisted MQTT 3.1.1 and 5.0 client on the broker's sans-IO codec.

``MQTTClient`` connects through any Twisted client endpoint string (``tcp:``, ``tls:``,
``unix:``) or a ``ws://``/``wss://`` URL, returns Deferreds, keeps its session across
reconnections and honours the server's flow-control limits.  See docs/client.md.
"""

from typing import Any

from twisted_mqtt.client._client import MQTTClient
from twisted_mqtt.client._errors import (
    ClientStopped,
    ConnectionRefused,
    MQTTClientError,
    PublishFailed,
    QueueFull,
)
from twisted_mqtt.client._protocol import MQTTClientProtocol, client_endpoint
from twisted_mqtt.client._values import ConnectResult, Message, ReconnectPolicy
from twisted_mqtt.packets import Will
from twisted_mqtt.properties import Properties

__all__ = [
    "ClientStopped",
    "ConnectResult",
    "ConnectionRefused",
    "MQTTClient",
    "MQTTClientError",
    "MQTTClientProtocol",
    "Message",
    "Properties",
    "PublishFailed",
    "QueueFull",
    "ReconnectPolicy",
    "WebSocketEndpoint",
    "Will",
    "client_endpoint",
]


def __getattr__(name: str) -> Any:
    """``WebSocketEndpoint``, imported (with Autobahn) only when asked for."""
    if name == "WebSocketEndpoint":
        from twisted_mqtt.client._websocket import WebSocketEndpoint

        return WebSocketEndpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
