"""The dashboard's limits (``dashboard.*`` in the configuration file): a plain dataclass, so
that the configuration knows them without importing twisted.web."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, Tuple

__all__ = ["DEFAULT_DASHBOARD_LIMITS", "DashboardLimits"]


@dataclass(frozen=True)
class DashboardLimits:
    """What one dashboard listener allows; every field a ``dashboard.NAME`` key."""

    max_body: int = 256 * 1024
    """The largest request body accepted, bytes."""
    max_streams: int = 32
    """Server-Sent Events streams open at once, in all."""
    max_streams_per_user: int = 4
    """Event streams one user or API key may hold open at once."""
    stream_stall: float = 30.0
    """Seconds an event stream's reader may leave its events unread (the connection's send
    buffer full, events skipped meanwhile) before the stream is closed."""
    max_sessions: int = 1000
    """Browser sessions kept at once; the least recently used is forgotten beyond this."""
    session_idle: float = 8 * 3600.0
    """Seconds a browser session lasts without a request."""
    idle_timeout: float = 120.0
    """Seconds an HTTP connection may stay idle (an event stream writes every second)."""
    sign_in_attempts: int = 5
    """Failed sign-ins in a row allowed from one address, or for one user name, before each
    further attempt waits a back-off that doubles (1 s, 2 s, 4 s, ...)."""
    sign_in_backoff: float = 300.0
    """The longest sign-in back-off, seconds; a failure count is forgotten after this long
    without a failure."""
    payload_view_bytes: int = 64 * 1024
    """The payload bytes one retained message's view shows (beyond: truncated, flagged)."""
    allowed_hosts: Tuple[str, ...] = field(default=())
    """Host names accepted in the Host header besides loopback ones when the listener is
    bound to a loopback address (a reverse proxy's name)."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> DashboardLimits:
        """The limits with ``settings`` (field name -> value) over the defaults."""
        known = {f.name for f in fields(cls)}
        values: Dict[str, Any] = {name: (tuple(value) if name == "allowed_hosts" else value)
                  for name, value in settings.items() if name in known and value is not None}
        return cls(**values)


DEFAULT_DASHBOARD_LIMITS = DashboardLimits()
