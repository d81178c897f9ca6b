"""REST API ``/api/v1``: devices and their telemetry."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from iothub.bridge.errors import BadRequest
from iothub.bridge.params import parse_duration_ms, parse_int, parse_time_ms
from iothub.devices import is_valid_id
from iothub.hub.core import Hub
from iothub.hub.fleet import DeviceState, iso
from iothub.hub.ingest import now_ms
from iothub.hub.store import Agg

DEFAULT_WINDOW_MS = 3_600_000
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
MAX_BUCKETS = 100_000


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _device(request: Request) -> DeviceState | JSONResponse:
    device_id = request.path_params["device_id"]
    if not is_valid_id(device_id):
        return error(400, f"device id {device_id!r} breaks the rule [A-Za-z0-9_.-]{{1,64}}")
    state = _hub(request).fleet.get(device_id)
    if state is None:
        return error(404, f"no device {device_id!r}")
    return state


def _view(state: DeviceState) -> dict[str, Any]:
    view = state.view()
    if view["last_rejection"] is not None:
        view["last_rejection"] = {**view["last_rejection"], "ts": iso(view["last_rejection"]["ts"])}
    return view


async def list_devices(request: Request) -> JSONResponse:
    online = request.query_params.get("online")
    if online not in (None, "true", "false"):
        return error(400, f"parameter 'online': {online!r} is not true or false")
    devices = sorted(_hub(request).fleet.devices.values(), key=lambda d: d.id)
    if online is not None:
        devices = [d for d in devices if d.online == (online == "true")]
    return JSONResponse({"devices": [_view(d) for d in devices], "count": len(devices)})


async def get_device(request: Request) -> JSONResponse:
    state = _device(request)
    if isinstance(state, JSONResponse):
        return state
    return JSONResponse(_view(state))


async def get_telemetry(request: Request) -> JSONResponse:
    state = _device(request)
    if isinstance(state, JSONResponse):
        return state
    q = request.query_params
    hub = _hub(request)
    now = now_ms()
    try:
        end = parse_time_ms("to", q["to"], now) if "to" in q else now
        start = parse_time_ms("from", q["from"], now) if "from" in q else end - DEFAULT_WINDOW_MS
        if start > end:
            raise BadRequest("parameter 'from' is after 'to'")
        step = parse_duration_ms("step", q["step"]) if "step" in q else None
        if step is not None and (end - start) // step > MAX_BUCKETS:
            raise BadRequest(
                f"parameter 'step': more than {MAX_BUCKETS} buckets in the range; use a larger step"
            )
        try:
            agg = Agg(q.get("agg", "avg" if step else "last"))
        except ValueError:
            raise BadRequest(f"parameter 'agg': {q['agg']!r} is not one of avg, min, max, last") from None
        limit = parse_int("limit", q["limit"], 1, MAX_LIMIT) if "limit" in q else DEFAULT_LIMIT
    except BadRequest as exc:
        return error(400, str(exc))
    known = await hub.store.metrics_of(state.id)
    wanted = q.getlist("metric") or known
    unknown = [m for m in wanted if m not in known]
    if unknown:
        return error(404, f"device {state.id!r} has no metric {', '.join(map(repr, unknown))}")
    series = await hub.store.query(state.id, wanted, start, end, step, agg, limit)
    return JSONResponse(
        {
            "device_id": state.id,
            "from": iso(start),
            "to": iso(end),
            "step_ms": step,
            "agg": agg.value if step else None,
            "series": {s.metric: s.points for s in series},
        }
    )


routes = [
    Route("/api/v1/devices", list_devices),
    Route("/api/v1/devices/{device_id}", get_device),
    Route("/api/v1/devices/{device_id}/telemetry", get_telemetry),
]
