"""What the admin API shows: JSON-ready views of a broker's clients, subscriptions, retained
messages, figures, listeners, configuration and auth rules, and the checks of its inputs.

Plain functions over the broker (no Twisted web objects), so that they are cheap to test."""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import os
import re
import socket
import sys
from dataclasses import fields, is_dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from twisted_mqtt import __version__
from twisted_mqtt.packets import ProtocolLevel
from twisted_mqtt.topics import split_shared

MAX_LIMIT = 500
"""The most items one page may hold."""
DEFAULT_LIMIT = 50
MAX_OFFSET = 10_000_000
MAX_SEARCH = 256
"""The longest search text accepted."""
PREVIEW_BYTES = 64
"""The payload bytes a retained message's list entry shows."""
MASK = "********"
"""What a secret in the configuration is shown as."""
SECRET_WORDS = ("password", "secret", "key", "token", "credential")
"""A configuration key or URL query field whose name contains one of these is masked."""

def node_name(broker: Any = None) -> str:
    """This broker's node name: its name in its cluster, else ``TWISTED_MQTT_NODE``, else the
    host name and process id (read when asked: a daemon's process id is its own only once it
    has forked)."""
    return (getattr(broker, "node_name", None) or os.environ.get("TWISTED_MQTT_NODE")
            or f"{socket.gethostname()}:{os.getpid()}")


def cluster_admin(service: Any) -> Any:
    """The ``twisted_mqtt.cluster.admin.ClusterAdmin`` of the service's cluster, or None."""
    return next((part.admin for part in service if getattr(part, "admin", None) is not None),
                None)


class InputError(ValueError):
    """A bad request: ``field`` names the parameter or body field, ``status`` the HTTP code."""

    def __init__(self, field: str, problem: str, status: int = 400) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.status = status


# -- inputs --------------------------------------------------------------------------------------


def page(args: Mapping[str, str]) -> Tuple[int, int]:
    """``limit`` (1 to ``MAX_LIMIT``, default ``DEFAULT_LIMIT``) and ``offset`` from the query."""
    return (integer(args, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
            integer(args, "offset", 0, 0, MAX_OFFSET))


def integer(args: Mapping[str, Any], name: str, default: Optional[int], low: int,
            high: int, digits: bool = True) -> Any:
    """An integer argument between ``low`` and ``high``; ``default`` if absent.  ``digits``:
    a string of digits is taken too (query parameters); else only a JSON number."""
    raw = args.get(name)
    if raw is None:
        if default is None:
            raise InputError(name, "required")
        return default
    if isinstance(raw, bool) or not isinstance(raw, (int, str) if digits else int):
        raise InputError(name, "must be an integer")
    try:
        number = int(raw)
    except ValueError:
        raise InputError(name, f"must be an integer, not {str(raw)[:40]!r}") from None
    if not low <= number <= high:
        raise InputError(name, f"must be from {low} to {high}")
    return number


def text(args: Mapping[str, Any], name: str, default: Optional[str] = None,
         longest: int = 65535) -> Any:
    """A string argument of at most ``longest`` characters; ``default`` if absent (None:
    required)."""
    raw = args.get(name)
    if raw is None:
        if default is None:
            raise InputError(name, "required")
        return default
    if not isinstance(raw, str):
        raise InputError(name, "must be a string")
    if len(raw) > longest:
        raise InputError(name, f"longer than {longest} characters")
    return raw


def paged(items: Sequence[Any], limit: int, offset: int, order: Callable[[Any], Any],
          show: Callable[[Any], Dict[str, Any]]) -> Dict[str, Any]:
    """One page of ``items`` in the order of the key ``order``: the items shown, with the total
    and the page's bounds.  Only the items up to the page's end are sorted (a heap), so an
    early page of a large set costs one pass over it."""
    first = heapq.nsmallest(offset + limit, items, key=order)
    return {"total": len(items), "limit": limit, "offset": offset,
            "items": [show(item) for item in first[offset:]]}


# -- clients -------------------------------------------------------------------------------------


def version_name(level: int) -> str:
    """``3.1``, ``3.1.1`` or ``5.0``."""
    names = {int(ProtocolLevel.MQTT_3_1): "3.1", int(ProtocolLevel.MQTT_3_1_1): "3.1.1"}
    return names.get(level, "5.0")


def client_summary(broker: Any, session: Any) -> Dict[str, Any]:
    """A session and its connection (if any), as the clients list shows it."""
    conn = session.connection
    connected = conn is not None and conn in broker.connections
    client = session.client
    return {
        "client_id": session.client_id,
        "connected": connected,
        "username": client.username if client is not None else None,
        "address": conn.address if connected else None,
        "listener": conn.listener if connected else None,
        "protocol_version": version_name(session.protocol_level),
        "keep_alive": conn.keep_alive if connected else None,
        "connected_since": conn.opened_at if connected else None,
        "session_expiry_interval": session.expiry_interval,
        "subscriptions": len(session.subscriptions),
        "queued": len(session.queue),
        "inflight": len(session.inflight),
        "node": node_name(broker),
    }


def find_clients(broker: Any, search: str) -> List[Any]:
    """Sessions of network clients whose client id, user name or address contains
    ``search`` (any case)."""
    needle = search.lower()
    found = []
    for client_id, session in broker.sessions.items():
        if getattr(session.connection, "acl_exempt", False):
            continue  # the inline client's receivers
        if needle:
            client = session.client
            conn = session.connection
            haystack = [client_id, client.username if client is not None else None,
                        conn.address if conn is not None else None]
            if not any(part and needle in part.lower() for part in haystack):
                continue
        found.append(session)
    return found


def subscription_view(topic_filter: str, entry: Any) -> Dict[str, Any]:
    """One subscription with its options and shared group."""
    group, plain = split_shared(topic_filter)
    sub = entry.subscription
    return {"client_id": entry.client_id, "filter": topic_filter, "topic_filter": plain,
            "share_group": group, "qos": sub.qos, "no_local": sub.no_local,
            "retain_as_published": sub.retain_as_published,
            "retain_handling": sub.retain_handling, "subscription_id": entry.sub_id}


def client_detail(broker: Any, session: Any) -> Dict[str, Any]:
    """A client with its subscriptions."""
    found = client_summary(broker, session)
    found["subscription_list"] = [subscription_view(f, e)
                                  for f, e in sorted(session.subscriptions.items())]
    return found


def all_subscriptions(broker: Any, search: str) -> List[Tuple[str, Any]]:
    """Every subscription whose filter or client id contains ``search``: (filter, entry)."""
    found = []
    for session in broker.sessions.values():
        if getattr(session.connection, "acl_exempt", False):
            continue
        for topic_filter, entry in session.subscriptions.items():
            if search and search not in topic_filter and search not in session.client_id:
                continue
            found.append((topic_filter, entry))
    return found


def shared_groups(broker: Any) -> List[Dict[str, Any]]:
    """Each shared group with its filter and members."""
    groups: Dict[Tuple[str, str], List[str]] = {}
    for session in broker.sessions.values():
        for topic_filter in session.subscriptions:
            group, plain = split_shared(topic_filter)
            if group is not None:
                groups.setdefault((group, plain), []).append(session.client_id)
    return [{"group": group, "topic_filter": plain, "members": sorted(members)}
            for (group, plain), members in sorted(groups.items())]


# -- retained messages ---------------------------------------------------------------------------


def retained_matching(broker: Any, topic_filter: str) -> List[Any]:
    """Retained messages whose topic matches ``topic_filter``."""
    if topic_filter in ("#", ""):
        now = broker.tick()
        messages = [m for m in broker.retained.values() if not m.expired(now)]
    else:
        messages = broker.retained_for(topic_filter)
    return messages


def _utf8(payload: bytes, cut: bool) -> Optional[str]:
    """``payload`` as UTF-8 text, or None; a ``cut`` payload may end inside a character,
    which is dropped."""
    for end in range(len(payload), max(-1, len(payload) - (4 if cut else 1)), -1):
        try:
            return payload[:end].decode("utf-8")
        except UnicodeDecodeError as error:
            if error.start < end - 3 or not cut:
                return None
    return None


def payload_views(payload: bytes, longest: Optional[int] = None) -> Dict[str, Any]:
    """A payload as text (if it is UTF-8), JSON (if it parses), hex and base64; of a payload
    longer than ``longest`` bytes only the first ``longest`` are shown (``truncated``, and no
    JSON view)."""
    cut = longest is not None and len(payload) > longest
    shown = payload[:longest] if cut else payload
    views: Dict[str, Any] = {"size": len(payload), "truncated": cut, "shown": len(shown),
                             "hex": binascii.hexlify(shown).decode(),
                             "base64": base64.b64encode(shown).decode(), "text": None,
                             "json": None}
    decoded = _utf8(shown, cut)
    if decoded is None:
        return views
    views["text"] = decoded
    if cut:
        return views
    try:
        views["json"] = json.dumps(json.loads(decoded), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or nested beyond the parser's depth
        pass
    return views


def retained_summary(message: Any) -> Dict[str, Any]:
    """A retained message as the list shows it."""
    preview = message.payload[:PREVIEW_BYTES]
    return {"topic": message.topic, "qos": message.qos, "size": len(message.payload),
            "preview": preview.decode("utf-8", "replace"), "expires_at": message.expires_at,
            "origin": message.origin}


def retained_detail(message: Any, longest: Optional[int] = None) -> Dict[str, Any]:
    """A retained message with its payload in every view (at most ``longest`` bytes of it)
    and its properties."""
    found = retained_summary(message)
    del found["preview"]
    found["payload"] = payload_views(message.payload, longest)
    found["properties"] = plain(message.properties)
    return found


def plain(value: Any) -> Any:
    """A dataclass, tuple or bytes value as JSON-ready data (None fields left out)."""
    if is_dataclass(value) and not isinstance(value, type):
        out = {}
        for field in fields(value):
            item = getattr(value, field.name)
            if item is not None and item != ():
                out[field.name] = plain(item)
        return out
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "name") and hasattr(value, "value") and isinstance(value.value, int):
        return value.name.lower()  # an enum
    return value


# -- figures -------------------------------------------------------------------------------------


def memory_bytes() -> Optional[int]:
    """This process's resident memory, bytes (None where it cannot be read)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def node_view(broker: Any) -> Dict[str, Any]:
    """This node's figures."""
    figures = broker.sys_figures()
    return {
        "node": node_name(broker), "self": True, "status": "running", "version": __version__,
        "python": f"{sys.implementation.name} {sys.version.split()[0]}",
        "uptime": figures["uptime"], "clients_connected": figures["clients/connected"],
        "sessions": figures["clients/total"], "subscriptions": figures["subscriptions/count"],
        "retained": figures["messages/retained"], "inflight": figures["messages/inflight"],
        "memory_bytes": memory_bytes(), "bans": len(broker.bans),
    }


# -- configuration and auth ----------------------------------------------------------------------


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/]*):[^@/]*@", re.I)
QUERY_SECRET = re.compile(r"(?P<name>[?&;][^=&;]*(?:password|secret|key|token)[^=&;]*=)"
                          r"[^&;]*", re.I)


def mask(name: str, value: Any) -> Any:
    """``value`` of the configuration key ``name`` with its secrets masked: a key named like a
    secret, a URL's password, a query field named like a secret, a TLS private key path."""
    if isinstance(value, (list, tuple)):
        return [mask(name, item) for item in value]
    if isinstance(value, Mapping):
        return {k: mask(k, v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if not isinstance(value, str):
        value = str(value)
    if _secret_name(name.rsplit(".", 1)[-1]) and not name.endswith(("_file", "-file")):
        return MASK
    if value.startswith("memory:"):  # a twisted.cred checker: memory:USER:PASSWORD...
        return "memory:" + MASK
    value = URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", value)
    return QUERY_SECRET.sub(lambda m: m.group("name") + MASK, value)


def config_view(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The configuration in force, secrets masked."""
    return {name: mask(name, value) for name, value in sorted(config.items())}


def auth_view(hooks: Iterable[Any]) -> Dict[str, Any]:
    """The auth ledgers' users (without passwords) and rules, and the other auth hooks."""
    from twisted_mqtt.auth.ledger import Ledger

    ledgers = []
    others = []
    for hook in hooks:
        if isinstance(hook, Ledger):
            rules = hook.rules
            ledgers.append({
                "path": str(hook.path) if hook.path is not None else None,
                "users": [{"username": name, "disallow": user.disallow,
                           "acl": [{"filter": f, "access": plain(a)} for f, a in user.acl],
                           "password": MASK if user.password else None}
                          for name, user in sorted(rules.users.items())],
                "auth": [{**plain(rule.who), "allow": rule.allow,
                          "password": MASK if rule.password else None}
                         for rule in rules.auth],
                "acl": [{**plain(rule.who),
                         "filters": [{"filter": f, "access": plain(a)} for f, a in rule.filters]}
                        for rule in rules.acl],
                "acl_default": "allow" if rules.acl_default else "deny",
            })
        else:
            others.append(type(hook).__name__)
    return {"ledgers": ledgers, "hooks": others}


def listener_view(listener: Any) -> Dict[str, Any]:
    """A listener: what it serves and where."""
    port = getattr(listener, "port", None)
    address = None
    if port is not None:
        try:
            host = port.getHost()
            address = f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}"
        except Exception:
            address = None
    tracker = getattr(listener, "tracker", None)
    return {"kind": listener.kind, "endpoint": mask("endpoint", listener.description),
            "listening": bool(getattr(listener, "listening", False)), "address": address,
            "connections": len(tracker.connections) if tracker is not None else None}

