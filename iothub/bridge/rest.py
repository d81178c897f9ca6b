"""REST API ``/api/v1``: devices (registry and what the hub saw of them) and their telemetry.

Handlers raise errors (:mod:`iothub.bridge.errors`, the hub's own); the HTTP app's one exception
table answers them (:data:`iothub.bridge.http.ERROR_STATUS`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from iothub.bridge.auth import requires
from iothub.bridge.errors import BadRequest, NotFound
from iothub.bridge.params import check_known, parse_duration_ms, parse_int, parse_time_ms
from iothub.devices import is_valid_id
from iothub.hub.core import Hub
from iothub.hub.fleet import DeviceState, iso
from iothub.hub.ingest import now_ms
from iothub.hub.registry import DeviceRecord, Scope
from iothub.hub.store import Agg

DEFAULT_WINDOW_MS = 3_600_000
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
MAX_BUCKETS = 100_000


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def device_id_of(request: Request) -> str:
    """The path's device id; :class:`BadRequest` when it breaks the id rule."""
    device_id: str = request.path_params["device_id"]
    if not is_valid_id(device_id):
        raise BadRequest(f"device id {device_id!r} breaks the rule [A-Za-z0-9_.-]{{1,64}}")
    return device_id


def device_view(record: DeviceRecord | None, state: DeviceState | None, device_id: str) -> dict[str, Any]:
    """What the registry says of a device merged with what the hub saw of it."""
    if state is not None:
        seen = state.view()
        if seen["last_rejection"] is not None:
            seen["last_rejection"] = {**seen["last_rejection"], "ts": iso(seen["last_rejection"]["ts"])}
    else:
        seen = {"id": device_id, "online": False, "reason": "unknown", "detail": None, "since": None,
                "last_seen": None, "first_seen": None, "latest": {}, "messages": 0, "duplicates": 0, "seq_gaps": 0,
                "rejected": {}, "rejected_total": 0, "last_rejection": None}  # fmt: skip
    registered: dict[str, Any] = {"registered": record is not None}
    if record is not None:
        registered |= {k: v for k, v in record.view().items() if k != "id"}
        registered["created"] = iso(record.created)
        registered["secret_rotated"] = iso(record.secret_rotated)
    return {"id": device_id, **registered, **seen}


async def list_devices(request: Request) -> JSONResponse:
    q = request.query_params
    check_known(q.keys(), ("online", "label"))
    online = q.get("online")
    if online not in (None, "true", "false"):
        raise BadRequest(f"parameter 'online': {online!r} is not true or false")
    wanted_labels = {}
    for label in q.getlist("label"):
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise BadRequest(f"parameter 'label': {label!r} is not key=value")
        wanted_labels[key] = value
    hub = hub_of(request)
    records = {r.id: r for r in await asyncio.to_thread(hub.registry.devices)}
    views = [
        device_view(records.get(i), hub.fleet.get(i), i) for i in sorted(records.keys() | hub.fleet.devices.keys())
    ]
    if online is not None:
        views = [v for v in views if v["online"] == (online == "true")]
    if wanted_labels:
        views = [v for v in views if wanted_labels.items() <= v.get("labels", {}).items()]
    return JSONResponse({"devices": views, "count": len(views)})


async def get_device(request: Request) -> JSONResponse:
    device_id = device_id_of(request)
    hub = hub_of(request)
    record = await asyncio.to_thread(hub.registry.find_device, device_id)
    state = hub.fleet.get(device_id)
    if record is None and state is None:
        raise NotFound(f"no device {device_id!r}")
    return JSONResponse(device_view(record, state, device_id))


async def get_telemetry(request: Request) -> JSONResponse:
    """A device's series; a registered device that has sent nothing yet has none (200, empty)."""
    device_id = device_id_of(request)
    hub = hub_of(request)
    if hub.fleet.get(device_id) is None and await asyncio.to_thread(hub.registry.find_device, device_id) is None:
        raise NotFound(f"no device {device_id!r}")
    q = request.query_params
    check_known(q.keys(), ("metric", "from", "to", "step", "agg", "limit"))
    now = now_ms()
    end = parse_time_ms("to", q["to"], now) if "to" in q else now
    start = parse_time_ms("from", q["from"], now) if "from" in q else end - DEFAULT_WINDOW_MS
    if start > end:
        raise BadRequest("parameter 'from' is after 'to'")
    step = parse_duration_ms("step", q["step"]) if "step" in q else None
    if step is not None and (end - start) // step > MAX_BUCKETS:
        raise BadRequest(f"parameter 'step': more than {MAX_BUCKETS} buckets in the range; use a larger step")
    try:
        agg = Agg(q.get("agg", "avg" if step else "last"))
    except ValueError:
        raise BadRequest(f"parameter 'agg': {q['agg']!r} is not one of {', '.join(Agg)}") from None
    limit = parse_int("limit", q["limit"], 1, MAX_LIMIT) if "limit" in q else DEFAULT_LIMIT
    known = await hub.store.metrics_of(device_id)
    wanted = q.getlist("metric") or known
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise NotFound(f"device {device_id!r} has no metric {', '.join(map(repr, unknown))}")
    series = await hub.store.query(device_id, wanted, start, end, step, agg, limit) if wanted else []
    return JSONResponse(
        {
            "device_id": device_id,
            "from": iso(start),
            "to": iso(end),
            "step_ms": step,
            "agg": agg.value if step else None,
            "series": {s.metric: s.points for s in series},
            "truncated": [s.metric for s in series if s.truncated],  # older points left out for `limit`
        }
    )


routes = [
    Route("/api/v1/devices", requires(Scope.READ)(list_devices), methods=["GET"]),
    Route("/api/v1/devices/{device_id}", requires(Scope.READ)(get_device), methods=["GET"]),
    Route("/api/v1/devices/{device_id}/telemetry", requires(Scope.READ)(get_telemetry), methods=["GET"]),
]
