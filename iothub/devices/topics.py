"""The MQTT topic scheme of DESIGN.md, as pure functions.

``parse("devices/th-1/telemetry")`` gives ``DeviceTopic("th-1", TopicKind.TELEMETRY)``; topics outside
``devices/`` give ``None`` (the broker carries other traffic too); a topic under ``devices/`` that breaks
the id rule or has an unknown shape raises :class:`TopicError`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from iothub.devices.errors import RejectReason, TopicError

ID_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
_ID_RE = re.compile(ID_PATTERN)
PREFIX = "devices/"


class TopicKind(enum.StrEnum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    COMMAND = "command"
    RESPONSE = "responses"
    STATE_REPORTED = "state/reported"
    STATE_DESIRED = "state/desired"


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    device_id: str
    kind: TopicKind
    command: str | None = None  # the command name, for TopicKind.COMMAND


_SIMPLE = {
    "telemetry": TopicKind.TELEMETRY,
    "status": TopicKind.STATUS,
    "responses": TopicKind.RESPONSE,
}
_STATE = {"reported": TopicKind.STATE_REPORTED, "desired": TopicKind.STATE_DESIRED}


def is_valid_id(value: str) -> bool:
    """True when ``value`` follows the device id (and metric name) rule ``[A-Za-z0-9_.-]{1,64}``."""
    return _ID_RE.fullmatch(value) is not None


def parse(topic: str) -> DeviceTopic | None:
    """Classify ``topic``; ``None`` for topics outside ``devices/``."""
    if not topic.startswith(PREFIX):
        return None
    parts = topic[len(PREFIX) :].split("/")
    device_id = parts[0]
    if not is_valid_id(device_id):
        raise TopicError(
            f"topic {topic!r}: device id {device_id!r} breaks the rule {ID_PATTERN}",
            reason=RejectReason.BAD_DEVICE_ID,
        )
    rest = parts[1:]
    if len(rest) == 1 and rest[0] in _SIMPLE:
        return DeviceTopic(device_id, _SIMPLE[rest[0]])
    if len(rest) == 2 and rest[0] == "state" and rest[1] in _STATE:
        return DeviceTopic(device_id, _STATE[rest[1]])
    if len(rest) == 2 and rest[0] == "commands" and is_valid_id(rest[1]):
        return DeviceTopic(device_id, TopicKind.COMMAND, command=rest[1])
    raise TopicError(f"topic {topic!r}: unknown topic shape for device {device_id!r}")


def topic_for(device_id: str, kind: TopicKind, command: str | None = None) -> str:
    """Build the topic of ``kind`` for ``device_id``; the inverse of :func:`parse`."""
    if not is_valid_id(device_id):
        raise TopicError(f"device id {device_id!r} breaks the rule {ID_PATTERN}", reason=RejectReason.BAD_DEVICE_ID)
    if kind is TopicKind.COMMAND:
        if command is None or not is_valid_id(command):
            raise TopicError(f"command name {command!r} breaks the rule {ID_PATTERN}")
        return f"{PREFIX}{device_id}/commands/{command}"
    return f"{PREFIX}{device_id}/{kind.value}"
