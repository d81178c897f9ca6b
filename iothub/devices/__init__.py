"""The device contract: topic scheme and payload models. Pure, no I/O.

Errors::

    DeviceContractError
    ├── TopicError      a topic that does not follow the scheme
    └── PayloadError    a payload that is not what the topic promises (carries a RejectReason)
"""

from iothub.devices.errors import DeviceContractError, PayloadError, RejectReason, TopicError
from iothub.devices.payloads import (
    CommandRequest,
    CommandResponse,
    MetricValue,
    Status,
    Telemetry,
    TwinDocument,
    decode_status,
    decode_telemetry,
)
from iothub.devices.topics import DeviceTopic, TopicKind, is_valid_id, parse, topic_for

__all__ = [
    "CommandRequest",
    "CommandResponse",
    "DeviceContractError",
    "DeviceTopic",
    "MetricValue",
    "PayloadError",
    "RejectReason",
    "Status",
    "Telemetry",
    "TopicError",
    "TopicKind",
    "TwinDocument",
    "decode_status",
    "decode_telemetry",
    "is_valid_id",
    "parse",
    "topic_for",
]
