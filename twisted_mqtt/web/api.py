"""The admin REST API under ``/api/v1/``: one table of routes (method, path, handler, what it
takes), from which the requests are dispatched and the OpenAPI document is written.

Every answer is JSON; bad input is a 4xx whose ``error.field`` names the parameter or body
field, an unexpected failure a 500 with one log line and no traceback in the answer.  Every
write is logged with who made it."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import re
from collections import deque
from operator import attrgetter
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Pattern, Tuple
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from twisted_mqtt.auth.passwords import ServerBusy
from twisted_mqtt.bans import KINDS, BanError
from twisted_mqtt.dashboard_limits import DEFAULT_DASHBOARD_LIMITS, DashboardLimits
from twisted_mqtt.errors import CodecError
from twisted_mqtt.properties import Properties
from twisted_mqtt.topics import validate_topic_filter
from twisted_mqtt.web import views
from twisted_mqtt.web.auth import API_KEY_HEADER, COOKIE, CSRF_HEADER, DashboardAuth, Identity
from twisted_mqtt.web.views import InputError

log = Logger()

MAX_BODY = DEFAULT_DASHBOARD_LIMITS.max_body
"""The largest request body accepted by default, bytes (a published payload is at most this,
less its JSON and base64 overhead)."""
MAX_USER_NAME = 256
"""The longest user name a sign-in may give."""
MAX_PASSWORD = 1024
"""The longest password a sign-in may give."""
HISTORY = 600
"""Seconds of per-second figures kept for the charts."""
PREFIX = "/api/v1/"

Handler = Callable[..., Any]


class Route:
    """One operation: ``pattern`` is the path after ``/api/v1/`` with ``{name}`` segments."""

    def __init__(self, method: str, pattern: str, handler: str, summary: str,
                 query: Tuple[Tuple[str, str, str], ...] = (),
                 body: Optional[Dict[str, Any]] = None, public: bool = False,
                 status: int = 200) -> None:
        self.method = method
        self.pattern = pattern
        self.handler = handler
        self.summary = summary
        self.query = query
        """(name, JSON type, description) of each query parameter."""
        self.body = body
        """The JSON schema of the request body, if it takes one."""
        self.public = public
        self.status = status
        self.names = re.findall(r"{(\w+)}", pattern)
        self.regex: Pattern[str] = re.compile(
            "^" + re.sub(r"{\w+}", "([^/]+)", pattern) + "$")

    @property
    def write(self) -> bool:
        """Whether the operation changes anything (it needs the CSRF token in a browser)."""
        return self.method in ("POST", "DELETE")


PAGE = (("limit", "integer", f"items per page, 1 to {views.MAX_LIMIT} (default "
         f"{views.DEFAULT_LIMIT})"),
        ("offset", "integer", "items skipped (default 0)"))
BAN_SCHEMA = {"type": "object", "required": ["kind", "value"], "properties": {
    "kind": {"type": "string", "enum": list(KINDS)},
    "value": {"type": "string", "description": "client id, user name, address or CIDR network"},
    "duration": {"type": "number", "description": "seconds; absent: until lifted"},
    "reason": {"type": "string"}}}
PUBLISH_SCHEMA = {"type": "object", "required": ["topic"], "properties": {
    "topic": {"type": "string"},
    "payload": {"type": "string", "description": "the payload, encoded as `encoding` says"},
    "encoding": {"type": "string", "enum": ["text", "base64", "hex"], "default": "text"},
    "qos": {"type": "integer", "enum": [0, 1, 2], "default": 0},
    "retain": {"type": "boolean", "default": False},
    "properties": {"type": "object", "description": "MQTT 5 message properties",
                   "properties": {
                       "content_type": {"type": "string"},
                       "response_topic": {"type": "string"},
                       "correlation_data": {"type": "string"},
                       "message_expiry_interval": {"type": "integer"},
                       "payload_format_indicator": {"type": "integer", "enum": [0, 1]},
                       "user_properties": {"type": "array", "items": {
                           "type": "array", "items": {"type": "string"},
                           "minItems": 2, "maxItems": 2}}}}}}
LOGIN_SCHEMA = {"type": "object", "required": ["username", "password"], "properties": {
    "username": {"type": "string"}, "password": {"type": "string"}}}

ROUTES: Tuple[Route, ...] = (
    Route("POST", "login", "login", "Sign in as a dashboard user: sets the session cookie and "
          "returns the CSRF token to send as X-CSRF-Token with every write", body=LOGIN_SCHEMA,
          public=True),
    Route("POST", "logout", "logout", "End the browser session"),
    Route("GET", "session", "whoami", "Who is signed in, and the session's CSRF token"),
    Route("GET", "openapi.json", "openapi", "This document", public=True),
    Route("GET", "stats", "stats", "This node's figures and the per-second rates of the last "
          "minutes"),
    Route("GET", "nodes", "nodes", "The nodes: this one, or every live node of its cluster "
          "and the cluster's total"),
    Route("GET", "events", "events", "Server-Sent Events: a `stats` event every second"),
    Route("GET", "clients", "clients", "Sessions and their clients, by client id",
          (("search", "string", "part of the client id, user name or address"),) + PAGE),
    Route("GET", "clients/{client_id}", "client", "A client with its subscriptions"),
    Route("POST", "clients/{client_id}/kick", "kick", "Disconnect a client (MQTT 5: "
          "DISCONNECT 0x98 Administrative action)"),
    Route("GET", "bans", "bans", "The bans in force"),
    Route("POST", "bans", "add_ban", "Ban a client id, user name or address/CIDR network; "
          "connected clients it names are disconnected", body=BAN_SCHEMA, status=201),
    Route("DELETE", "bans/{kind}/{value}", "remove_ban", "Lift a ban (a CIDR network's / "
          "written %2F)"),
    Route("GET", "subscriptions", "subscriptions", "Every subscription, by filter",
          (("search", "string", "part of the filter or client id"),) + PAGE),
    Route("GET", "subscriptions/shared", "shared", "Shared subscription groups and members"),
    Route("GET", "retained", "retained", "Retained messages whose topic matches a filter",
          (("filter", "string", "a topic filter (default #)"),) + PAGE),
    Route("GET", "retained/message", "retained_message", "One retained message, its payload "
          "as text, pretty-printed JSON, hex and base64",
          (("topic", "string", "the topic (required)"),)),
    Route("DELETE", "retained/message", "delete_retained", "Delete a retained message",
          (("topic", "string", "the topic (required)"),)),
    Route("POST", "publish", "publish", "Publish a message through the broker's inline client",
          body=PUBLISH_SCHEMA),
    Route("GET", "listeners", "listeners", "The listeners"),
    Route("GET", "config", "config", "The configuration in force, secrets masked"),
    Route("GET", "auth", "auth", "The auth ledgers' users and rules (read-only, passwords "
          "masked)"),
)


class Sampler:
    """The broker's counters read every second, for the per-second rates of the charts."""

    def __init__(self, broker: Any, clock: Any) -> None:
        self.broker = broker
        self.clock = clock
        self.samples: Deque[Dict[str, Any]] = deque(maxlen=HISTORY)
        self._last: Optional[Tuple[float, Tuple[int, ...]]] = None
        self._call: Any = None
        self.listeners: List[Callable[[Dict[str, Any]], None]] = []

    def start(self) -> None:
        """Sample now and every second."""
        if self._call is None:
            self._sample()

    def stop(self) -> None:
        """Stop sampling."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _sample(self) -> None:
        self._call = self.clock.callLater(1.0, self._sample)
        broker = self.broker
        now = broker.tick()
        stats = broker.stats
        counters = (stats.messages_received, stats.messages_sent, stats.bytes_received,
                    stats.bytes_sent)
        last, self._last = self._last, (now, counters)
        if last is None or now <= last[0]:
            return
        elapsed = now - last[0]
        rates = [max(0, b - a) / elapsed for a, b in zip(last[1], counters)]
        sample = {"t": now, "messages_in": rates[0], "messages_out": rates[1],
                  "bytes_in": rates[2], "bytes_out": rates[3],
                  "clients": broker.connected, "node": views.node_name(broker)}
        self.samples.append(sample)
        for listener in list(self.listeners):
            listener(sample)


def _query(request: Request) -> Dict[str, str]:
    args: Dict[str, str] = {}
    for raw, values in (request.args or {}).items():
        try:
            args[raw.decode("utf-8")] = values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(raw.decode("utf-8", "replace"), "not UTF-8") from None
    return args


def _body(request: Request, longest: int = MAX_BODY) -> Dict[str, Any]:
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind != b"application/json":
        raise InputError("content-type", "must be application/json", 415)
    if request.content is None:
        raise InputError("body", "missing")
    request.content.seek(0)
    raw = request.content.read(longest + 1)
    if len(raw) > longest:
        raise InputError("body", f"larger than {longest} bytes", 413)
    try:
        found = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError("body", "not JSON, or nested too deep") from None
    if not isinstance(found, dict):
        raise InputError("body", "must be a JSON object")
    return found


def _client_host(request: Request) -> str:
    """The client's address (its host), or its description for a non-IP transport."""
    address = request.getClientAddress()
    return str(getattr(address, "host", None) or address)


def _still_open(request: Request) -> bool:
    """Whether an answer may still be written (the client has not gone, nothing was sent)."""
    return not request.finished and not getattr(request, "_disconnected", False)


def _boolean(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InputError(name, "must be true or false")
    return value


def _properties(raw: Any) -> Optional[Properties]:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InputError("properties", "must be an object")
    known = {"content_type", "response_topic", "correlation_data", "message_expiry_interval",
             "payload_format_indicator", "user_properties"}
    for name in raw:
        if name not in known:
            raise InputError(f"properties.{name}", "not a message property")
    fields: Dict[str, Any] = {}
    for name in ("content_type", "response_topic"):
        if raw.get(name) is not None:
            fields[name] = views.text(raw, name, longest=65535)
    if raw.get("correlation_data") is not None:
        fields["correlation_data"] = views.text(raw, "correlation_data").encode("utf-8")
    if raw.get("message_expiry_interval") is not None:
        fields["message_expiry_interval"] = views.integer(raw, "message_expiry_interval", None,
                                                          0, 0xFFFFFFFF, False)
    if raw.get("payload_format_indicator") is not None:
        fields["payload_format_indicator"] = views.integer(raw, "payload_format_indicator",
                                                           None, 0, 1, False)
    pairs = raw.get("user_properties")
    if pairs is not None:
        if not isinstance(pairs, list) or len(pairs) > 100 or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p)
                for p in pairs):
            raise InputError("properties.user_properties",
                             "must be a list of at most 100 [name, value] string pairs")
        fields["user_properties"] = tuple((k, v) for k, v in pairs)
    return Properties(**fields) if fields else None


def _payload(body: Mapping[str, Any]) -> bytes:
    raw = views.text(body, "payload", "", MAX_BODY)
    encoding = views.text(body, "encoding", "text", 10)
    if encoding == "text":
        return str(raw).encode("utf-8")
    try:
        if encoding == "base64":
            return base64.b64decode(raw, validate=True)
        if encoding == "hex":
            return binascii.unhexlify(raw)
    except (ValueError, binascii.Error):
        raise InputError("payload", f"not {encoding}") from None
    raise InputError("encoding", "must be text, base64 or hex")


@implementer(IPushProducer)
class EventStream:
    """One Server-Sent Events stream.  Its events are written while the reader keeps up; when
    the connection's send buffer fills, the transport pauses it and events are skipped (the
    bytes queued for a slow reader stay bounded by that buffer), and a stream paused longer
    than ``stall`` seconds is closed.  A stream whose ``alive()`` turns false (its session
    ended) is finished."""

    def __init__(self, request: Request, who: str, stall: float, clock: Any,
                 alive: Callable[[], bool] = lambda: True) -> None:
        self.request = request
        self.who = who
        self.stall = stall
        self.clock = clock
        self.alive = alive
        self.paused_at: Optional[float] = None
        self.skipped = 0

    def pauseProducing(self) -> None:
        """The reader is behind: skip events."""
        if self.paused_at is None:
            self.paused_at = float(self.clock.seconds())

    def resumeProducing(self) -> None:
        """The reader caught up."""
        self.paused_at = None

    def stopProducing(self) -> None:
        """The connection is going away."""
        self.paused_at = None

    def send(self, data: bytes) -> None:
        """Write one event, unless the reader is behind (then close a stream stalled too
        long)."""
        if not _still_open(self.request):
            return
        if not self.alive():
            self.request.unregisterProducer()
            self.request.finish()
            return
        if self.paused_at is None:
            self.request.write(data)
            return
        self.skipped += 1
        if self.clock.seconds() - self.paused_at > self.stall:
            log.info("dashboard: closed the event stream of {who}: its reader left events "
                     "unread for {stall} s", who=self.who, stall=self.stall)
            transport: Any = self.request.channel.transport if self.request.channel else None
            if transport is not None:
                transport.abortConnection()


class ApiResource(Resource):
    """``/api/v1/``: dispatches to the routes; ``service`` is the ``BrokerService``."""

    isLeaf = True

    def __init__(self, service: Any, auth: DashboardAuth, sampler: Sampler,
                 config: Mapping[str, Any], secure: bool = False,
                 limits: DashboardLimits = DEFAULT_DASHBOARD_LIMITS) -> None:
        super().__init__()
        self.service = service
        self.broker = service.broker
        self.auth = auth
        self.sampler = sampler
        self.config = dict(config)
        self.secure = secure
        """Whether the cookie is marked Secure (the listener is TLS; a request that came over
        TLS marks it too)."""
        self.limits = limits
        self.streams: List[Request] = []
        self._streams_of: Dict[str, int] = {}
        """Open event streams by who opened them."""

    # -- dispatch -------------------------------------------------------------------------------

    def render(self, request: Request) -> Any:
        """Answer one request."""
        request.setHeader(b"cache-control", b"no-store")
        try:
            return self._dispatch(request)
        except InputError as error:
            return self._error(request, error.status, error.problem, error.field)
        except Exception:
            log.failure("dashboard: {method} {path} failed", method=request.method,
                        path=request.path)
            return self._error(request, 500, "internal error")

    def _dispatch(self, request: Request) -> Any:
        path = request.path.decode("latin-1")
        if not path.startswith(PREFIX):
            return self._error(request, 404, "not found", "path")
        rest = path[len(PREFIX):]
        method = request.method.decode("latin-1")
        allowed = []
        for route in ROUTES:
            found = route.regex.match(rest)
            if found is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            identity = None
            if not route.public:
                identity = self._identify(request)
                if identity is None:
                    return self._error(request, 401, "sign in or send an API key (X-API-Key)")
                if route.write and identity.kind == "user" and not hmac.compare_digest(
                        request.getHeader(CSRF_HEADER) or b"",
                        (identity.csrf or "").encode()):
                    return self._error(request, 403, "missing or wrong CSRF token",
                                       "x-csrf-token")
            params = {name: unquote(value) for name, value in zip(route.names, found.groups())}
            result = getattr(self, "do_" + route.handler)(request, identity, **params)
            if isinstance(result, Deferred):
                result.addCallback(self._finish, request, route.status)
                result.addErrback(self._failed, request)
                return NOT_DONE_YET
            if result is NOT_DONE_YET:
                return result
            return self._json(request, result, route.status)
        if allowed:
            request.setHeader(b"allow", ", ".join(sorted(set(allowed))).encode())
            return self._error(request, 405, "method not allowed", "method")
        return self._error(request, 404, "not found", "path")

    def _identify(self, request: Request) -> Optional[Identity]:
        key = request.getHeader(API_KEY_HEADER)
        if key:
            return self.auth.api_key(key)
        cookie = request.getCookie(COOKIE)
        return self.auth.session(cookie) if cookie else None

    def _json(self, request: Request, result: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(result, ensure_ascii=False, default=str).encode("utf-8")

    def _error(self, request: Request, status: int, message: str,
               field: Optional[str] = None) -> bytes:
        error: Dict[str, Any] = {"status": status, "message": message}
        if field is not None:
            error["field"] = field
        return self._json(request, {"error": error}, status)

    def _finish(self, result: Any, request: Request, status: int) -> None:
        if _still_open(request):
            request.write(self._json(request, result, status))
            request.finish()

    def _failed(self, failure: Any, request: Request) -> None:
        if failure.check(InputError):
            error = failure.value
            body = self._error(request, error.status, error.problem, error.field)
        else:
            log.failure("dashboard: {path} failed", failure, path=request.path)
            body = self._error(request, 500, "internal error")
        if _still_open(request):
            request.write(body)
            request.finish()

    def _who(self, identity: Optional[Identity]) -> str:
        return str(identity) if identity is not None else "anonymous"

    # -- session --------------------------------------------------------------------------------

    def _body(self, request: Request) -> Dict[str, Any]:
        return _body(request, self.limits.max_body)

    def do_login(self, request: Request, identity: None) -> Any:
        """Check the password (unless this address or user must wait); set the cookie (a new
        session: one the browser held already ends)."""
        body = self._body(request)
        user = views.text(body, "username", longest=MAX_USER_NAME)
        password = views.text(body, "password", longest=MAX_PASSWORD)
        address = _client_host(request)
        wait = self.auth.limiter.begin(address, user)
        if wait > 0:
            seconds = math.ceil(wait)
            request.setHeader(b"retry-after", str(seconds).encode())
            log.info("dashboard: sign-in for {user!r} from {address} refused: too many "
                     "failures, {seconds} s to wait", user=user, address=address,
                     seconds=seconds)
            raise InputError("password", f"too many failed sign-ins; try again in {seconds} s",
                             429)
        d = self.auth.login(user, password)

        def busy(failure: Any) -> Any:
            failure.trap(ServerBusy)
            raise InputError("password", "too many sign-ins waiting; try again later", 503)

        def done(opened: Any) -> Any:
            if opened is None:
                log.info("dashboard: sign-in refused for {user!r} from {address}", user=user,
                         address=address)
                raise InputError("password", "wrong user name or password", 401)
            self.auth.limiter.succeeded(address, user)
            token, who = opened
            previous = request.getCookie(COOKIE)
            if previous:
                self.auth.logout(previous)
            request.addCookie(COOKIE, token.encode(), path=b"/", httpOnly=True,
                              sameSite="strict", secure=self._secure(request))
            log.info("dashboard: {who} signed in", who=who)
            return {"user": who.name, "csrf": who.csrf}

        return d.addCallbacks(done, busy)

    def do_logout(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """Forget the session."""
        cookie = request.getCookie(COOKIE)
        if cookie:
            self.auth.logout(cookie)
        request.addCookie(COOKIE, b"", path=b"/", httpOnly=True, sameSite="strict",
                          secure=self._secure(request), max_age="0")
        log.info("dashboard: {who} signed out", who=identity)
        return {"signed_out": identity.name}

    def _secure(self, request: Request) -> bool:
        return self.secure or bool(request.isSecure())

    def do_whoami(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """Who is signed in."""
        return {"user": identity.name, "kind": identity.kind, "csrf": identity.csrf}

    def do_openapi(self, request: Request, identity: None) -> Dict[str, Any]:
        """The OpenAPI document."""
        from twisted_mqtt.web.openapi import document

        return document(ROUTES)

    # -- figures --------------------------------------------------------------------------------

    def do_stats(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """Figures now and the last samples."""
        self.broker.tick()
        return {"node": views.node_name(self.broker), "figures": self.broker.sys_figures(),
                "summary": views.node_view(self.broker), "samples": list(self.sampler.samples)}

    def do_nodes(self, request: Request, identity: Identity) -> Any:
        """This node, or every live node of its cluster and the cluster's total."""
        admin = views.cluster_admin(self.service)
        if admin is not None:
            return admin.nodes()
        self.broker.tick()
        return {"nodes": [views.node_view(self.broker)]}

    def do_events(self, request: Request, identity: Identity) -> Any:
        """Open a Server-Sent Events stream (bounded in all and per user or key)."""
        limits = self.limits
        who = str(identity)
        if len(self.streams) >= limits.max_streams:
            raise InputError("events", f"{limits.max_streams} event streams already open", 503)
        if self._streams_of.get(who, 0) >= limits.max_streams_per_user:
            raise InputError("events", f"{limits.max_streams_per_user} event streams of yours "
                             "already open", 429)
        request.setHeader(b"content-type", b"text/event-stream")
        request.write(b"retry: 2000\n\n")
        self.streams.append(request)
        self._streams_of[who] = self._streams_of.get(who, 0) + 1
        cookie = request.getCookie(COOKIE) if identity.kind == "user" else None
        stream = EventStream(request, who, limits.stream_stall, self.service.reactor,
                             (lambda: self.auth.alive(cookie)) if cookie else (lambda: True))
        request.registerProducer(stream, True)

        def send(sample: Dict[str, Any]) -> None:
            event = {"sample": sample, "summary": views.node_view(self.broker)}
            stream.send(b"event: stats\ndata: " + json.dumps(event).encode() + b"\n\n")

        self.sampler.listeners.append(send)

        def closed(_: Any) -> None:
            self.sampler.listeners.remove(send)
            self.streams.remove(request)
            left = self._streams_of.pop(who) - 1
            if left:
                self._streams_of[who] = left

        request.notifyFinish().addBoth(closed)
        return NOT_DONE_YET

    def close_streams(self) -> None:
        """End the event streams (the listener stops)."""
        for request in list(self.streams):
            request.unregisterProducer()
            request.finish()

    # -- clients and bans -----------------------------------------------------------------------

    def do_clients(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """A page of clients."""
        args = _query(request)
        limit, offset = views.page(args)
        search = views.text(args, "search", "", views.MAX_SEARCH)
        found = views.find_clients(self.broker, search)
        return views.paged(found, limit, offset, attrgetter("client_id"),
                           lambda session: views.client_summary(self.broker, session))

    def _session(self, client_id: str) -> Any:
        session = self.broker.sessions.get(client_id)
        if session is None or getattr(session.connection, "acl_exempt", False):
            raise InputError("client_id", f"no session {client_id!r}", 404)
        return session

    def do_client(self, request: Request, identity: Identity, client_id: str) -> Dict[str, Any]:
        """One client."""
        return views.client_detail(self.broker, self._session(client_id))

    def do_kick(self, request: Request, identity: Identity, client_id: str) -> Any:
        """Disconnect a client (in a cluster, on whichever node it is connected)."""
        admin = views.cluster_admin(self.service)
        by = f"dashboard {identity}"
        if admin is None:
            return self._kicked(self.broker.kick(client_id, by=by), client_id)
        return admin.kick(client_id, by).addCallback(self._kicked, client_id)

    def _kicked(self, kicked: bool, client_id: str) -> Dict[str, Any]:
        if not kicked:
            raise InputError("client_id", f"no connected client {client_id!r}", 404)
        return {"kicked": client_id}

    def do_bans(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """The bans."""
        return {"bans": [ban.as_dict() for ban in self.broker.list_bans()]}

    def do_add_ban(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """Ban."""
        body = self._body(request)
        kind = views.text(body, "kind", longest=20)
        value = views.text(body, "value")
        duration = body.get("duration")
        if duration is not None and (isinstance(duration, bool)
                                     or not isinstance(duration, (int, float))):
            raise InputError("duration", "must be a number of seconds")
        reason = views.text(body, "reason", "", 1024)
        try:
            ban = self.broker.ban(kind, value, duration, reason, by=f"dashboard {identity}")
        except BanError as error:
            raise InputError(error.field, error.problem) from None
        return ban.as_dict()

    def do_remove_ban(self, request: Request, identity: Identity, kind: str,
                      value: str) -> Dict[str, Any]:
        """Lift a ban."""
        if kind not in KINDS:
            raise InputError("kind", f"must be one of {', '.join(KINDS)}")
        if not self.broker.unban(kind, value, by=f"dashboard {identity}"):
            raise InputError("value", f"no {kind} ban {value!r}", 404)
        return {"lifted": {"kind": kind, "value": value}}

    # -- subscriptions and retained messages ----------------------------------------------------

    def do_subscriptions(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """A page of subscriptions."""
        args = _query(request)
        limit, offset = views.page(args)
        search = views.text(args, "search", "", views.MAX_SEARCH)
        found = views.all_subscriptions(self.broker, search)
        return views.paged(found, limit, offset, lambda pair: (pair[0], pair[1].client_id),
                           lambda pair: views.subscription_view(*pair))

    def do_shared(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """The shared groups."""
        return {"groups": views.shared_groups(self.broker)}

    def do_retained(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """A page of retained messages."""
        args = _query(request)
        limit, offset = views.page(args)
        topic_filter = views.text(args, "filter", "#", 65535)
        try:
            validate_topic_filter(topic_filter, self.broker.capabilities.maximum_topic_levels)
        except CodecError as error:
            raise InputError("filter", str(error)) from None
        if topic_filter.startswith("$share/"):
            raise InputError("filter", "a shared filter matches no retained message")
        found = views.retained_matching(self.broker, topic_filter)
        return views.paged(found, limit, offset, attrgetter("topic"), views.retained_summary)

    def _retained(self, request: Request) -> Tuple[str, Any]:
        topic = views.text(_query(request), "topic", longest=65535)
        message = self.broker.retained.get(topic)
        if message is None or message.expired(self.broker.tick()):
            raise InputError("topic", f"no retained message on {topic!r}", 404)
        return topic, message

    def do_retained_message(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """One retained message."""
        return views.retained_detail(self._retained(request)[1], self.limits.payload_view_bytes)

    def do_delete_retained(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """Delete a retained message."""
        topic, _ = self._retained(request)
        self.broker.delete_retained(topic)
        log.info("dashboard: {who} deleted the retained message of {topic}",
                 who=identity, topic=topic)
        return {"deleted": topic}

    def do_publish(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """Publish."""
        body = self._body(request)
        topic = views.text(body, "topic", longest=65535)
        payload = _payload(body)
        qos = views.integer(body, "qos", 0, 0, 2, digits=False)
        retain = _boolean(body, "retain", False)
        properties = _properties(body.get("properties"))
        try:
            routed = self.broker.inline.publish(topic, payload, qos, retain, properties)
        except ValueError as error:
            text = str(error)
            raise InputError("properties" if "propert" in text or "payload format" in text
                             else "qos" if "QoS" in text else "topic", text) from None
        log.info("dashboard: {who} published {size} bytes to {topic} (QoS {qos}{retained})",
                 who=identity, size=len(payload), topic=topic, qos=qos,
                 retained=", retained" if retain else "")
        return {"topic": topic, "routed": routed}

    # -- listeners, configuration, auth ---------------------------------------------------------

    def do_listeners(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """The listeners."""
        from twisted_mqtt.listeners import ListenerService

        return {"listeners": [views.listener_view(child) for child in self.service
                              if isinstance(child, ListenerService)]}

    def do_config(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """The configuration."""
        caps = self.broker.capabilities
        return {"options": views.config_view(self.config),
                "capabilities": views.plain(caps),
                "compatibilities": views.plain(self.broker.compatibilities)}

    def do_auth(self, request: Request, identity: Identity) -> Dict[str, Any]:
        """The auth rules."""
        return views.auth_view(self.broker.hooks)
