"""What a simulated fleet did, and why its connections failed, in words a user can act on."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

# paho-mqtt reports an MQTT 3.1.1 CONNACK refusal as the MQTT 5 reason code it maps to.
_CONNACK_311 = {132: 0x01, 133: 0x02, 136: 0x03, 134: 0x04, 135: 0x05}
_CONNACK_TEXT = {
    0x01: "unacceptable protocol version",
    0x02: "client id refused",
    0x03: "server unavailable",
    0x04: "bad username or password",
    0x05: "not authorised",
}


def connect_failure(exc: aiomqtt.MqttError) -> str:
    """Why a connection attempt failed: ``connection refused``, ``refused by the broker: ... (CONNACK
    0x04)``, ``no CONNACK within the timeout`` and the like."""
    if isinstance(exc, MqttConnectError):
        value = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
        code = _CONNACK_311.get(value, value) if isinstance(value, int) else 0x80
        return f"refused by the broker: {_CONNACK_TEXT.get(code, str(exc.rc).lower())} (CONNACK 0x{code:02x})"
    message = str(exc)
    if message == "Operation timed out":
        return "no CONNACK within the timeout (is it an MQTT broker?)"
    message = re.sub(r"^\[Errno -?\d+\] ", "", message)
    return message[:1].lower() + message[1:] if message else type(exc).__name__


@dataclass
class FleetStats:
    sent: int = 0
    failed: int = 0
    connects: int = 0
    connect_errors: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)  # reason -> attempts
    chaos_drops: int = 0
    commands: int = 0
    started: float = field(default_factory=time.monotonic)

    def connect_failed(self, broker: str, exc: aiomqtt.MqttError) -> None:
        """Count a failed attempt; the first of each reason is logged (the devices keep retrying)."""
        reason = connect_failure(exc)
        self.connect_errors += 1
        if reason not in self.connect_failures:
            log.warning("cannot connect to %s: %s (retrying with backoff)", broker, reason)
        self.connect_failures[reason] += 1

    def failures(self) -> str:
        """``45 x connection refused``, most frequent first."""
        return ", ".join(f"{n} x {reason}" for reason, n in self.connect_failures.most_common())

    def summary(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        errors = f" ({self.failures()})" if self.connect_failures else ""
        return (
            f"sent {self.sent} messages in {elapsed:.1f} s ({self.sent / elapsed:.0f}/s); "
            f"{self.failed} failed, {self.connects} connects, {self.connect_errors} connect errors{errors}, "
            f"{self.chaos_drops} chaos drops, {self.commands} commands answered"
        )
