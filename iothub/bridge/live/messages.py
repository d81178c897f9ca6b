"""The live protocol's messages, transport-neutral: what a client sends, what the hub answers.

Client messages are pydantic models (``frozen``, ``extra="forbid"``), told apart by ``type``;
:func:`parse` turns one JSON text into one of them or raises :class:`ProtocolError` with the
:class:`ErrorCode` and the offending ``ref`` or subscription id, so the transport can answer with an
``error`` frame and carry on. The hub's answers are plain dataclasses with a ``view()`` (the JSON
object a WebSocket frame carries; gRPC maps the same fields onto its messages).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from iothub.hub.commands import MAX_TIMEOUT_S

ClientId = Annotated[str, Field(min_length=1, max_length=64)]
"""A subscription id or command ref: chosen by the client, echoed back."""


class ErrorCode(enum.StrEnum):
    """What an ``error`` frame's ``code`` says; the connection stays up after each."""

    BAD_JSON = "bad_json"  # the frame is not a JSON object
    UNKNOWN_TYPE = "unknown_type"  # ``type`` names no message
    BAD_MESSAGE = "bad_message"  # a field is missing, unknown or of the wrong kind
    BAD_FILTER = "bad_filter"  # devices, labels, metrics or types cannot be served
    BAD_RESUME = "bad_resume"  # ``resume_from`` is ahead of the newest event
    DUPLICATE_SUBSCRIPTION = "duplicate_subscription"  # this connection already has that id
    UNKNOWN_SUBSCRIPTION = "unknown_subscription"  # unsubscribe from an id it does not have
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    DUPLICATE_REF = "duplicate_ref"  # a command with this ref is still waiting for its result
    TOO_MANY_COMMANDS = "too_many_commands"  # too many commands waiting on this connection
    ALREADY_AUTHENTICATED = "already_authenticated"


class ProtocolError(Exception):
    """A client message the hub refuses; the connection stays up."""

    def __init__(self, code: ErrorCode, message: str, ref: str | None = None, subscription: str | None = None):
        super().__init__(message)
        self.code = code
        self.ref = ref
        self.subscription = subscription

    def reply(self) -> ErrorReply:
        return ErrorReply(self.code, str(self), self.ref, self.subscription)


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Auth(_Message):
    type: Literal["auth"]
    token: str


class Subscribe(_Message):
    """The SSE stream's filters; empty lists mean everything. ``resume_from``: the last event id the
    client has, to replay what came after it from the store before live events."""

    type: Literal["subscribe"]
    id: ClientId
    devices: list[str] = []
    labels: list[str] = []
    metrics: list[str] = []
    types: list[str] = []
    resume_from: Annotated[int, Field(ge=0)] | None = None


class Unsubscribe(_Message):
    type: Literal["unsubscribe"]
    id: ClientId


class Command(_Message):
    type: Literal["command"]
    ref: ClientId
    device: str
    name: str
    args: dict[str, Any] = {}
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] = 10.0
    queue: bool = False


class Ping(_Message):
    type: Literal["ping"]
    data: Any = None  # echoed in the pong


ClientMessage = Auth | Subscribe | Unsubscribe | Command | Ping
_ADAPTER: TypeAdapter[ClientMessage] = TypeAdapter(Annotated[ClientMessage, Field(discriminator="type")])
TYPES = ("auth", "subscribe", "unsubscribe", "command", "ping")


def parse(text: str | bytes) -> ClientMessage:
    """One client frame as a message; :class:`ProtocolError` names what is wrong with it."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, f"expected a JSON object, got {type(raw).__name__}")
    ref = raw.get("ref") if isinstance(raw.get("ref"), str) else None
    subscription = raw.get("id") if isinstance(raw.get("id"), str) and raw.get("type") != "command" else None
    kind = raw.get("type")
    if kind not in TYPES:
        problem = "has no 'type'" if kind is None else f"has type {kind!r}"
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"message {problem}; known types: {', '.join(TYPES)}", ref, subscription
        )
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{kind}: {_explain(exc)}", ref, subscription) from None


def _explain(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"][1:])  # the first part is the union tag
        problems.append(f"field {field!r}: {err['msg'].lower()}" if field else err["msg"])
    return "; ".join(problems)


# -- the hub's answers ---------------------------------------------------------------------------


class CommandStatus(enum.StrEnum):
    OK = "ok"  # the device answered ok; ``result`` holds its result
    DEVICE_ERROR = "device_error"  # the device answered with an error
    TIMEOUT = "timeout"  # no answer within the command's timeout
    OFFLINE = "offline"  # the device is offline or disabled (and the command was not queued)
    UNKNOWN_DEVICE = "unknown_device"
    BAD_COMMAND = "bad_command"  # bad name, or the device's queue is full
    UNAVAILABLE = "unavailable"  # not sent: the hub's external broker is unreachable (try again later)


@dataclass(frozen=True, slots=True)
class Authenticated:
    token_id: str
    scope: str

    def view(self) -> dict[str, Any]:
        return {"type": "authenticated", "token_id": self.token_id, "scope": self.scope}


@dataclass(frozen=True, slots=True)
class Subscribed:
    """Live events are routed to the subscription from now on (a replay, if asked for, comes first)."""

    subscription: str

    def view(self) -> dict[str, Any]:
        return {"type": "subscribed", "subscription": self.subscription}


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """Nothing more comes for the subscription."""

    subscription: str

    def view(self) -> dict[str, Any]:
        return {"type": "unsubscribed", "subscription": self.subscription}


@dataclass(frozen=True, slots=True)
class CommandReply:
    ref: str
    status: CommandStatus
    device: str
    name: str
    result: dict[str, Any] | None = None  # status ok
    error: str | None = None  # every other status: what went wrong
    request_id: str | None = None  # the id the command went to the device with
    latency_ms: int | None = None

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "command_result", "ref": self.ref, "status": self.status.value}
        out.update(device=self.device, name=self.name)
        if self.status is CommandStatus.OK:
            out["result"] = self.result or {}
        else:
            out["error"] = self.error
        if self.request_id is not None:
            out.update(id=self.request_id, latency_ms=self.latency_ms)
        return out


@dataclass(frozen=True, slots=True)
class ErrorReply:
    code: ErrorCode
    message: str
    ref: str | None = None
    subscription: str | None = None

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "error", "code": self.code.value, "message": self.message}
        if self.ref is not None:
            out["ref"] = self.ref
        if self.subscription is not None:
            out["subscription"] = self.subscription
        return out


@dataclass(frozen=True, slots=True)
class Pong:
    data: Any = None

    def view(self) -> dict[str, Any]:
        return {"type": "pong", "data": self.data}


Reply = Authenticated | Subscribed | Unsubscribed | CommandReply | ErrorReply | Pong
