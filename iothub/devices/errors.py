"""Errors of the device contract, each naming what is at fault."""

from __future__ import annotations

import enum


class RejectReason(enum.StrEnum):
    """Why a device message was refused. The values appear in metrics labels and the REST API."""

    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    MALFORMED_JSON = "malformed_json"
    INVALID = "invalid"
    TS_IN_FUTURE = "ts_in_future"
    TS_OUT_OF_RANGE = "ts_out_of_range"
    BAD_DEVICE_ID = "bad_device_id"
    UNKNOWN_TOPIC = "unknown_topic"
    QUEUE_FULL = "queue_full"
    UNKNOWN_REQUEST = "unknown_request"
    WRONG_DEVICE = "wrong_device"
    STALE_VERSION = "stale_version"


class DeviceContractError(ValueError):
    """Base of every error raised by :mod:`iothub.devices`."""

    reason: RejectReason = RejectReason.INVALID

    def __init__(self, message: str, *, reason: RejectReason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TopicError(DeviceContractError):
    """A topic under ``devices/`` that breaks the id rule or has an unknown shape."""

    reason = RejectReason.UNKNOWN_TOPIC


class PayloadError(DeviceContractError):
    """A payload that fails decoding or validation."""
