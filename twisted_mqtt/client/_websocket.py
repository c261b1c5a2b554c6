"""MQTT over WebSocket for the client: an endpoint whose connections carry MQTT in binary frames
with the subprotocol ``mqtt`` [MQTT-6.0.0-1, MQTT-6.0.0-3], through Autobahn."""

from __future__ import annotations

from typing import Any, Optional, Union
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

SUBPROTOCOL = "mqtt"


class _FrameTransport:
    """What the MQTT protocol writes to: one binary message per write; its producer is the TCP
    transport's."""

    def __init__(self, websocket: _MQTTOverWebSocket) -> None:
        self.websocket = websocket

    def write(self, data: bytes) -> None:
        self.websocket.sendMessage(data, isBinary=True)

    def loseConnection(self) -> None:
        self.websocket.sendClose()

    def abortConnection(self) -> None:
        self.websocket.dropConnection(abort=True)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.websocket.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.websocket.unregisterProducer()

    def pauseProducing(self) -> None:
        self.websocket.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.websocket.transport.resumeProducing()

    def getPeer(self) -> Any:
        return self.websocket.transport.getPeer()

    def getHost(self) -> Any:
        return self.websocket.transport.getHost()


class _MQTTOverWebSocket(WebSocketClientProtocol):
    factory: _Factory
    transport: Any
    mqtt: Optional[Any] = None

    def onOpen(self) -> None:
        if self.websocket_protocol_in_use != SUBPROTOCOL:
            self.factory.fail(ConnectionLost(
                f"the server chose the WebSocket subprotocol {self.websocket_protocol_in_use!r}, "
                f"not {SUBPROTOCOL!r}"))
            self.dropConnection(abort=True)
            return
        mqtt = self.factory.mqtt_factory.buildProtocol(self.transport.getPeer())
        if mqtt is None:
            self.dropConnection(abort=True)
            return
        self.mqtt = mqtt
        self.factory.opened(mqtt)
        mqtt.makeConnection(_FrameTransport(self))  # type: ignore[arg-type]

    # A message is not gathered whole (Autobahn's default, with no bound): its bytes go to the
    # MQTT decoder as they arrive, so the client's Maximum Packet Size bounds what is buffered.

    def onMessageBegin(self, isBinary: bool) -> None:
        self.message_is_binary = isBinary
        if self.mqtt is not None and not isBinary:
            self.sendClose(1003, "MQTT travels in binary frames")

    def onMessageFrameBegin(self, length: int) -> None:
        self.frame_length = length

    def onMessageFrameData(self, payload: bytes) -> None:
        if self.mqtt is not None and self.message_is_binary and not self.failedByMe:
            self.mqtt.dataReceived(payload)

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        pass

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        mqtt, self.mqtt = self.mqtt, None
        text = f"WebSocket closed ({code}{': ' + reason if reason else ''})"
        if mqtt is None:
            self.factory.fail(ConnectionLost(text))
        else:
            mqtt.connectionLost(Failure(ConnectionDone(text)))


class _Factory(WebSocketClientFactory):
    protocol = _MQTTOverWebSocket  # type: ignore[assignment]

    def __init__(self, url: str, mqtt_factory: IProtocolFactory) -> None:
        super().__init__(url, protocols=[SUBPROTOCOL])
        self.mqtt_factory = mqtt_factory
        self.result: Optional[Deferred] = None
        """Fires with the MQTT protocol once the WebSocket is open."""

    def opened(self, mqtt: Any) -> None:
        result, self.result = self.result, None
        if result is not None:
            result.callback(mqtt)

    def fail(self, reason: Union[Exception, Failure]) -> None:
        result, self.result = self.result, None
        if result is not None:
            result.errback(reason)


@implementer(IStreamClientEndpoint)
class WebSocketEndpoint:
    """Connects to ``ws://HOST:PORT/PATH`` (or ``wss://``) and carries MQTT inside.

    The TCP or TLS connection under the WebSocket is made by ``transport`` (an endpoint or an
    endpoint string: say ``tls:...:trustRoots=...`` for a private CA); by default ``tcp:`` for
    ``ws://`` and ``tls:`` for ``wss://`` to the URL's host and port.  ``connect`` fires with the
    MQTT protocol once the WebSocket is open.
    """

    def __init__(self, reactor: Any, url: str,
                 transport: Union[None, str, IStreamClientEndpoint] = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a WebSocket URL: {url!r}")
        self.url = url
        if transport is None:
            port = parts.port or (443 if parts.scheme == "wss" else 80)
            host = parts.hostname.replace(":", r"\:")
            transport = f"{'tls' if parts.scheme == 'wss' else 'tcp'}:{host}:{port}"
        self.transport = (clientFromString(reactor, transport) if isinstance(transport, str)
                          else transport)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred:
        """Open the WebSocket; fires with the MQTT protocol built by ``protocolFactory``."""
        factory = _Factory(self.url, protocolFactory)
        dialing = self.transport.connect(factory)
        factory.result = Deferred(lambda _: dialing.cancel())
        dialing.addErrback(factory.fail)
        return factory.result
