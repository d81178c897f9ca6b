"""The other direction: a command through the hub's REST API, a publish as an MQTT service account."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

import aiomqtt
import httpx

from iothub.watch.events import Target, WatchError, WatchTimeout
from iothub.watch.http import hub_error, unreachable

SLACK_S = 10.0  # on top of the command's timeout, for the hub to answer


async def send_command(
    target: Target, device_id: str, name: str, args: dict[str, Any], timeout_s: float, queue: bool = False
) -> dict[str, Any]:
    """``POST /api/v1/devices/{id}/commands/{name}``: the hub's answer (``ok``, ``result`` or
    ``error``, ``latency_ms``); :class:`WatchTimeout` when the device did not answer in time."""
    url = f"{target.base}/api/v1/devices/{quote(device_id, safe='')}/commands/{quote(name, safe='')}"
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    body = {"args": args, "timeout": timeout_s, "queue": queue}
    try:
        async with httpx.AsyncClient(timeout=timeout_s + SLACK_S, headers=headers) as client:
            response = await client.post(url, json=body)
    except httpx.TransportError as exc:
        raise unreachable(url, exc) from None
    if response.status_code == 504:
        raise WatchTimeout(f"{device_id} {name}: no answer from the device in {timeout_s:g} s")
    if response.status_code != 200:
        raise hub_error(url, response)
    answer: dict[str, Any] = response.json()
    return answer


async def publish_message(target: Target, topic: str, payload: bytes, qos: int, retain: bool) -> None:
    """Publish as the target's service account; with QoS 1/2, returns once the broker acknowledged."""
    if not topic or "+" in topic or "#" in topic:
        raise WatchError(f"topic {topic!r}: a topic to publish on has no wildcards (+, #) and is not empty")
    client = aiomqtt.Client(
        target.mqtt_host, target.mqtt_port, identifier=f"svc-publish-{secrets.token_hex(4)}",
        username=target.username, password=target.password, timeout=target.connect_timeout_s,
    )  # fmt: skip
    try:
        async with client:
            await client.publish(topic, payload, qos=qos, retain=retain)
    except aiomqtt.MqttError as exc:
        raise WatchError(f"cannot publish to {target.mqtt_url} as {target.username or 'anonymous'}: {exc}") from None
