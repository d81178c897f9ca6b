"""The MQTT channel: a service account subscribed to the device topics (aiomqtt).

MQTT carries what devices publish, as they publish it, before the hub stores it: no event ids (so no
``--from``) and no labels (so no ``--label``). Messages become events of the live stream's types:
``devices/{id}/telemetry`` -> ``telemetry``, ``.../status`` -> ``status``, ``.../responses`` ->
``command_result``, ``hub/alerts/{rule}/{id}`` -> ``alert``. A payload that breaks the device
contract is shown as ``invalid`` with the reason (the hub refuses it). Entering returns once the
broker has acknowledged the subscriptions (retained status messages then come first).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt

from iothub.devices import DeviceContractError, TopicKind, decode_status, decode_telemetry, parse
from iothub.devices.payloads import decode_response
from iothub.watch.events import Selection, Target, WatchError, WatchEvent

MAX_BYTES = 16 * 1024 * 1024
MAX_FUTURE_MS = 10 * 365 * 86_400_000  # a watcher shows what came; judging the clock is the hub's job
_TOPICS = {
    "telemetry": "devices/{d}/telemetry",
    "status": "devices/{d}/status",
    "command_result": "devices/{d}/responses",
    "alert": "hub/alerts/+/{d}",
}


def topics(selection: Selection) -> list[str]:
    devices = [d for d in selection.devices if d != "*"] if "*" not in selection.devices else []
    return [
        pattern.format(d=device)
        for kind, pattern in _TOPICS.items()
        if not selection.types or kind in selection.types
        for device in (devices or ["+"])
    ]


def to_event(topic: str, payload: bytes, now_ms: int) -> WatchEvent:
    """The event an MQTT message stands for (``invalid`` when it breaks the device contract)."""
    device_id = ""
    try:
        if topic.startswith("hub/alerts/"):
            body: dict[str, Any] = json.loads(payload)
            device_id = str(body.get("device_id") or topic.rsplit("/", 1)[-1])
            return _event("alert", device_id, body.get("ts") or now_ms, body)
        parsed = parse(topic)
        if parsed is None:
            return _event("mqtt", "", now_ms, {"topic": topic, "payload": payload.decode(errors="replace")})
        device_id = parsed.device_id
        if parsed.kind is TopicKind.TELEMETRY:
            telemetry = decode_telemetry(payload, now_ms=now_ms, max_bytes=MAX_BYTES, max_future_ms=MAX_FUTURE_MS)
            fields = {"seq": telemetry.seq, "metrics": telemetry.metrics}
            return _event("telemetry", device_id, telemetry.ts or now_ms, fields)
        if parsed.kind is TopicKind.STATUS:
            status = decode_status(payload, now_ms=now_ms, max_bytes=MAX_BYTES, max_future_ms=MAX_FUTURE_MS)
            return _event("status", device_id, status.ts or now_ms, {"online": status.online, "reason": status.reason})
        if parsed.kind is TopicKind.RESPONSE:
            response = decode_response(payload, max_bytes=MAX_BYTES)
            return _event("command_result", device_id, now_ms, response.model_dump(exclude_none=True))
    except (DeviceContractError, ValueError) as exc:
        return _event("invalid", device_id, now_ms, {"topic": topic, "reason": str(exc)})
    return _event("mqtt", device_id, now_ms, {"topic": topic, "payload": payload.decode(errors="replace")})


def _event(kind: str, device_id: str, ts: int, fields: dict[str, Any]) -> WatchEvent:
    data = {"type": kind, "ts": ts, "device_id": device_id, **fields}
    return WatchEvent(kind, device_id, ts, data, None, "mqtt")


def trim(event: WatchEvent, metrics: tuple[str, ...]) -> WatchEvent | None:
    """A telemetry event trimmed to ``metrics`` (None when it has none of them), as the hub's streams do."""
    if not metrics or event.type != "telemetry":
        return event
    kept = {k: v for k, v in event.data["metrics"].items() if k in metrics}
    if not kept:
        return None
    return WatchEvent(event.type, event.device_id, event.ts, {**event.data, "metrics": kept}, None, event.channel)


@asynccontextmanager
async def open_mqtt(target: Target, selection: Selection) -> AsyncIterator[AsyncIterator[WatchEvent]]:
    selection.check()
    if selection.resume_from is not None:
        raise WatchError("option '--from': MQTT has no event ids to resume from; use sse or ws")
    if selection.labels:
        raise WatchError("option '--label': MQTT does not carry device labels; use sse or ws")
    wanted = set(selection.types)
    client = aiomqtt.Client(
        target.mqtt_host, target.mqtt_port, identifier=f"svc-watch-{secrets.token_hex(4)}",
        username=target.username, password=target.password, timeout=target.connect_timeout_s,
    )  # fmt: skip
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        raise WatchError(f"cannot connect to {target.mqtt_url} as {target.username or 'anonymous'}: {exc}") from None
    try:
        for topic in topics(selection):
            await client.subscribe(topic, qos=1)

        async def events() -> AsyncIterator[WatchEvent]:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                event = trim(to_event(message.topic.value, payload, int(time.time() * 1000)), selection.metrics)
                if event is not None and (not wanted or event.type in wanted or event.type == "invalid"):
                    yield event

        yield events()
    except aiomqtt.MqttError as exc:
        raise WatchError(f"{target.mqtt_url}: {exc}") from None
    finally:
        await client.__aexit__(None, None, None)
