"""twisted_mqtt: an embeddable MQTT 3.1, 3.1.1 and 5.0 broker built on Twisted."""

from __future__ import annotations

__version__ = "0.1.0"
