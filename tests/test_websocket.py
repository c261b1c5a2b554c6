"""MQTT over WebSocket end to end: paho-mqtt (ws and wss), MQTT.js in headless Chromium (ws and
wss), and raw WebSocket clients for what must be refused: text frames, wrong subprotocols,
paths, origins, and X-Forwarded-For from untrusted peers.

MQTT.js comes from ``tests/js/node_modules`` (``npm ci --prefix tests/js``); the browser loads
its bundle from a page this module serves, and reports its verdict by fetching a URL of the
same server.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import threading
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from tests.certs import PKI, make_pki, mqtts_endpoint
from tests.conftest import LOOPBACK, BrokerProcess, StartBroker
from tests.paho import TIMEOUT, V5, V311, Client
from tests.test_listeners import connect_packet, read_until_closed, record_of, roundtrip

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
JS_DIR = Path(__file__).resolve().parent / "js"
MQTT_JS = JS_DIR / "node_modules" / "mqtt" / "dist" / "mqtt.min.js"
BROWSER_TIMEOUT = 60.0
CONNACK_OK = b"\x20\x02\x00\x00"
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8


# -- a raw WebSocket client ---------------------------------------------------------------------


class RawWebSocket:
    """Just enough of a WebSocket client to send what real clients would not."""

    def __init__(self, port: int, path: str = "/mqtt", protocols: Sequence[str] = ("mqtt",),
                 headers: Optional[Dict[str, str]] = None) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        if protocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            response += chunk
        head, _, self.buffer = response.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1]) if status_line else 0
        self.headers = {k.strip().lower(): v.strip()
                        for k, _, v in (h.partition(":") for h in header_lines)}

    def send(self, payload: bytes, opcode: int = BINARY) -> None:
        """Send one masked frame."""
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def receive(self) -> Tuple[int, bytes]:
        """The next (unmasked) frame from the server: opcode and payload."""
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read(8))[0]
        return first & 0x0F, self._read(length)

    def closed_by_peer(self) -> bool:
        """Whether the server closes the TCP connection (reading and discarding until then)."""
        self.sock.settimeout(TIMEOUT)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@pytest.fixture
def raw_sockets() -> Iterator[Any]:
    """Make raw WebSocket clients; all are closed when the test ends."""
    made: List[RawWebSocket] = []

    def make(*args: Any, **kwargs: Any) -> RawWebSocket:
        ws = RawWebSocket(*args, **kwargs)
        made.append(ws)
        return ws

    yield make
    for ws in made:
        ws.close()


@pytest.fixture
def clients() -> Iterator[Any]:
    """Make paho clients over WebSocket (``tests.paho.Client``); all are stopped when the test
    ends."""
    made: List[Client] = []

    def make(port: int, version: int = V5, *, transport: str = "websockets",
             path: str = "/mqtt", pki: Optional[PKI] = None) -> Client:
        client = Client(port, version)
        client.paho.transport = transport
        if transport == "websockets":
            client.paho.ws_set_options(path=path)
        if pki is not None:
            client.paho.tls_set(ca_certs=str(pki.root))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def topic() -> str:
    """A topic no other test uses."""
    return f"ws/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """Certificates for the wss listener."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def ws_broker(module_brokers: StartBroker, pki: PKI) -> BrokerProcess:
    """A broker (default authentication: loopback only) with TCP, ws and wss listeners and a
    4 KiB maximum packet size."""
    return module_brokers("--ws", LOOPBACK, "--ws", mqtts_endpoint(pki),
                          "--max-packet-size", "4096")


@pytest.fixture(scope="module")
def strict_broker(module_brokers: StartBroker) -> BrokerProcess:
    """A recording broker whose ws listener wants path /mqtt and origin https://good.example,
    and believes X-Forwarded-For from 127.0.0.1."""
    return module_brokers("--ws", LOOPBACK, "--ws-path", "/mqtt", "--ws-origin",
                          "https://Good.example/", "--ws-trusted-proxy", "127.0.0.1",
                          module="tests.recording_broker")


@pytest.fixture(scope="module")
def null_listed_broker(module_brokers: StartBroker) -> BrokerProcess:
    """A broker whose ws listener accepts https://good.example and pages without an origin
    (``null``: opened from ``file://``)."""
    return module_brokers("--ws", LOOPBACK, "--ws-origin", "https://good.example",
                          "--ws-origin", "null")


def ws_port(broker: BrokerProcess, secure: bool = False) -> int:
    """The broker's ws (or wss) port."""
    return broker.port_of("WebSocket", 1 if secure else 0)


# -- paho-mqtt ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [pytest.param(V311, id="v311"), pytest.param(V5, id="v5")])
def test_paho_websocket(ws_broker: BrokerProcess, clients: Any, topic: str,
                        version: int) -> None:
    """paho over ws:// talks to a paho client over TCP through the same broker."""
    over_ws = clients(ws_port(ws_broker), version).connect()
    over_tcp = clients(ws_broker.port, version, transport="tcp").connect()
    roundtrip(over_ws, over_tcp, topic)
    roundtrip(over_tcp, over_ws, topic + "/back")


def test_paho_secure_websocket(ws_broker: BrokerProcess, clients: Any, pki: PKI,
                               topic: str) -> None:
    """paho over wss:// verifying the server certificate."""
    sub = clients(ws_port(ws_broker, secure=True), pki=pki).connect()
    pub = clients(ws_port(ws_broker, secure=True), pki=pki).connect()
    roundtrip(sub, pub, topic)


# -- subprotocols, frames, limits ---------------------------------------------------------------


@pytest.mark.parametrize("offered, chosen", [
    (["mqtt"], "mqtt"),
    (["mqttv3.1"], "mqttv3.1"),
    (["binary", "mqtt"], "mqtt"),
    (["mqttv3.1", "mqtt"], "mqtt"),
    (["binary", "base64"], None),
    ([], None),
])
def test_subprotocol(ws_broker: BrokerProcess, raw_sockets: Any, offered: List[str],
                     chosen: Optional[str]) -> None:
    """``mqtt`` is chosen when offered (``mqttv3.1`` for old clients offering only that); a
    client offering neither is refused [MQTT-6.0.0-4, MQTT-6.0.0-4 (3.1.1)]."""
    ws = raw_sockets(ws_port(ws_broker), protocols=offered)
    if chosen is None:
        assert ws.status == 400
        assert ws.closed_by_peer()
        return
    assert ws.status == 101
    assert ws.headers["sec-websocket-protocol"] == chosen
    ws.send(connect_packet(f"raw-{uuid.uuid4().hex[:8]}"))
    assert ws.receive() == (BINARY, CONNACK_OK)


def test_text_frame_closes(ws_broker: BrokerProcess, raw_sockets: Any, clients: Any,
                           topic: str) -> None:
    """A text frame closes the connection with close code 1003; others carry on
    [MQTT-6.0.0-1, MQTT-6.0.0-1 (3.1.1)]."""
    sub = clients(ws_port(ws_broker)).connect()
    pub = clients(ws_port(ws_broker)).connect()
    ws = raw_sockets(ws_port(ws_broker))
    ws.send(connect_packet("text-sender"))
    assert ws.receive() == (BINARY, CONNACK_OK)
    ws.send(b"\x30\x05\x00\x01ahi", opcode=TEXT)
    opcode, payload = ws.receive()
    assert opcode == CLOSE and struct.unpack("!H", payload[:2])[0] == 1003
    ws.send(payload[:2], opcode=CLOSE)
    assert ws.closed_by_peer()
    roundtrip(sub, pub, topic)


def test_packets_split_and_joined_across_frames(ws_broker: BrokerProcess,
                                                raw_sockets: Any) -> None:
    """Frames are a byte stream: a packet may span frames and a frame may hold several
    [MQTT-6.0.0-2, MQTT-6.0.0-2 (3.1.1)]."""
    ws = raw_sockets(ws_port(ws_broker))
    connect = connect_packet("split-frames")
    ws.send(connect[:3])
    ws.send(connect[3:] + b"\xc0\x00")  # the rest of CONNECT, then PINGREQ
    received = b""
    while len(received) < 6:
        opcode, payload = ws.receive()
        assert opcode == BINARY
        received += payload
    assert received == CONNACK_OK + b"\xd0\x00"


def test_packet_size_limit(ws_broker: BrokerProcess, raw_sockets: Any) -> None:
    """The broker's maximum packet size applies over WebSocket as over TCP."""
    ws = raw_sockets(ws_port(ws_broker))
    ws.send(connect_packet("too-large"))
    assert ws.receive() == (BINARY, CONNACK_OK)
    payload = b"x" * 5000
    body = b"\x00\x01t" + payload
    length = len(body)
    ws.send(bytes([0x30, (length & 0x7F) | 0x80, length >> 7]) + body)
    opcode, _ = ws.receive()
    assert opcode == CLOSE
    assert ws.closed_by_peer()


def test_http_without_upgrade_refused(ws_broker: BrokerProcess) -> None:
    with socket.create_connection((HOST, ws_port(ws_broker)), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        response = read_until_closed(sock, 65536)
    assert response.startswith(b"HTTP/1.1 4")


def test_forwarded_for_ignored_from_untrusted_peer(ws_broker: BrokerProcess,
                                                   raw_sockets: Any) -> None:
    """Without --ws-trusted-proxy, X-Forwarded-For is ignored: the loopback-only default
    authentication still sees 127.0.0.1 and accepts."""
    ws = raw_sockets(ws_port(ws_broker), headers={"X-Forwarded-For": "203.0.113.9"})
    ws.send(connect_packet("spoofing"))
    assert ws.receive() == (BINARY, CONNACK_OK)


# -- path, origin, trusted proxies --------------------------------------------------------------


@pytest.mark.parametrize("path, origin, status", [
    ("/mqtt", None, 101),
    ("/mqtt", "https://good.example", 101),
    ("/other", None, 404),
    ("/", None, 404),
    ("/mqtt", "https://evil.example", 403),
    ("/mqtt", "http://good.example", 403),
    ("/mqtt", "null", 403),  # an allow-list without null refuses pages opened from file://
])
def test_path_and_origin(strict_broker: BrokerProcess, raw_sockets: Any, path: str,
                         origin: Optional[str], status: int) -> None:
    headers = {"Origin": origin} if origin else {}
    ws = raw_sockets(ws_port(strict_broker), path=path, headers=headers)
    assert ws.status == status
    if status != 101:
        assert ws.closed_by_peer()


def test_null_origin_by_default(ws_broker: BrokerProcess, raw_sockets: Any) -> None:
    """Without --ws-origin any origin is accepted, ``Origin: null`` too (a page opened from
    ``file://``): the handshake succeeds and MQTT runs over it."""
    ws = raw_sockets(ws_port(ws_broker), headers={"Origin": "null"})
    assert ws.status == 101
    ws.send(connect_packet(f"null-origin-{uuid.uuid4().hex[:8]}"))
    assert ws.receive() == (BINARY, CONNACK_OK)


@pytest.mark.parametrize("origin, status", [
    ("null", 101), ("https://good.example", 101), ("https://evil.example", 403)])
def test_null_origin_when_listed(null_listed_broker: BrokerProcess, raw_sockets: Any,
                                 origin: str, status: int) -> None:
    """An allow-list that names ``null`` accepts pages opened from ``file://``."""
    ws = raw_sockets(ws_port(null_listed_broker), headers={"Origin": origin})
    assert ws.status == status


@pytest.mark.parametrize("forwarded, address", [
    ("203.0.113.9", "203.0.113.9"),
    ("198.51.100.1, 203.0.113.9", "203.0.113.9"),  # the rightmost untrusted entry
    ("203.0.113.9, 127.0.0.1", "203.0.113.9"),  # trusted hops are skipped
    (None, "127.0.0.1"),
])
def test_forwarded_for_from_trusted_proxy(strict_broker: BrokerProcess, raw_sockets: Any,
                                          forwarded: Optional[str], address: str) -> None:
    client_id = f"forwarded-{uuid.uuid4().hex[:8]}"
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    ws = raw_sockets(ws_port(strict_broker), headers=headers)
    ws.send(connect_packet(client_id))
    assert ws.receive() == (BINARY, CONNACK_OK)
    assert record_of(strict_broker, client_id)["address"] == address


# -- MQTT.js in headless Chromium ---------------------------------------------------------------

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>MQTT.js</title></head><body>
<script src="/mqtt.min.js"></script>
<script>
const query = new URLSearchParams(location.search);
const topic = query.get("topic");
const text = "hello from the browser";
let done = false;
function report(verdict, detail) {
  if (done) return;
  done = true;
  fetch("/verdict?" + new URLSearchParams({verdict: verdict, detail: String(detail)}));
}
try {
  const client = mqtt.connect(query.get("broker"),
                              {protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 10000});
  client.on("connect", () => {
    client.subscribe(topic, {qos: 1}, (err) => {
      if (err) { report("fail", "subscribe: " + err); return; }
      client.publish(topic, text, {qos: 1});
    });
  });
  client.on("message", (t, payload) => {
    if (t === topic && payload.toString() === text) {
      report("ok", "");
      client.end();
    } else {
      report("fail", "unexpected message on " + t);
    }
  });
  client.on("error", (err) => report("fail", "error: " + err));
  client.on("close", () => report("fail", "closed before the message came back"));
} catch (err) {
  report("fail", "exception: " + err);
}
</script></body></html>
"""


class PageServer:
    """Serves the test page and MQTT.js's bundle; collects the page's verdicts."""

    def __init__(self) -> None:
        verdicts: queue.Queue[Dict[str, str]] = queue.Queue()
        self.verdicts = verdicts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/verdict":
                    verdicts.put(dict(urllib.parse.parse_qsl(url.query)))
                    body, kind = b"thanks", "text/plain"
                elif url.path == "/mqtt.min.js":
                    body, kind = MQTT_JS.read_bytes(), "application/javascript"
                elif url.path == "/":
                    body, kind = PAGE.encode(), "text/html; charset=utf-8"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(TIMEOUT)


@pytest.fixture(scope="module")
def page_server() -> Iterator[PageServer]:
    """The page server for the browser tests."""
    assert MQTT_JS.exists(), f"{MQTT_JS} missing: run npm ci --prefix tests/js"
    server = PageServer()
    yield server
    server.close()


def chromium() -> str:
    """The Chromium executable."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("no chromium: apt-get install chromium")


@pytest.mark.parametrize("secure", [pytest.param(False, id="ws"), pytest.param(True, id="wss")])
def test_mqtt_js_in_chromium(ws_broker: BrokerProcess, page_server: PageServer, pki: PKI,
                             tmp_path: Path, topic: str, secure: bool) -> None:
    """MQTT.js in headless Chromium connects, subscribes, publishes and gets its own message;
    over wss Chromium trusts the server's key through its SPKI hash."""
    scheme = "wss" if secure else "ws"
    broker_url = f"{scheme}://{HOST}:{ws_port(ws_broker, secure)}/mqtt"
    page = (f"http://{HOST}:{page_server.port}/?"
            + urllib.parse.urlencode({"broker": broker_url, "topic": topic}))
    profile = tmp_path / "profile"
    profile.mkdir()
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}",
            f"--ignore-certificate-errors-spki-list={pki.server_spki_sha256}", page]
    log_path = tmp_path / "chromium.log"
    with open(log_path, "wb") as log_file:
        browser = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        try:
            verdict = page_server.verdicts.get(timeout=BROWSER_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no verdict from the page within {BROWSER_TIMEOUT}s:\n"
                                 f"{log_path.read_text(errors='replace')}") from None
        assert verdict.get("verdict") == "ok", json.dumps(verdict)
    finally:
        os.killpg(browser.pid, signal.SIGTERM)
        try:
            browser.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()
