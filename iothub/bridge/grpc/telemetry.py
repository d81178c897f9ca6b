"""``iothub.v1.TelemetryService``: Query (raw or downsampled history), Latest, Subscribe (live events)."""

from __future__ import annotations

import asyncio

from iothub.bridge.errors import BadRequest, NotFound
from iothub.bridge.grpc import convert
from iothub.bridge.grpc.auth import authorize
from iothub.bridge.grpc.devices import device_id_of
from iothub.bridge.grpc.handlers import Handlers
from iothub.bridge.grpc.status import Context
from iothub.bridge.grpc.streams import GrpcStreams
from iothub.bridge.rest import DEFAULT_LIMIT, DEFAULT_WINDOW_MS, MAX_BUCKETS, MAX_LIMIT
from iothub.bridge.streams import StreamFilter
from iothub.hub.core import Hub
from iothub.hub.ingest import now_ms
from iothub.hub.registry import Scope
from iothub.hub.store import Agg
from iothub.v1 import telemetry_pb2

AGGREGATIONS = {
    telemetry_pb2.AGGREGATION_UNSPECIFIED: Agg.AVG,
    telemetry_pb2.AGGREGATION_AVG: Agg.AVG,
    telemetry_pb2.AGGREGATION_MIN: Agg.MIN,
    telemetry_pb2.AGGREGATION_MAX: Agg.MAX,
    telemetry_pb2.AGGREGATION_LAST: Agg.LAST,
    telemetry_pb2.AGGREGATION_COUNT: Agg.COUNT,
}
AS_PROTO = {agg: number for number, agg in AGGREGATIONS.items() if number}
FILTER_FIELDS = {name: f"filter.{name}" for name in ("devices", "labels", "metrics", "types")}


class TelemetryService:
    def __init__(self, hub: Hub, streams: GrpcStreams) -> None:
        self.hub = hub
        self.streams = streams

    def handlers(self) -> Handlers:
        service = Handlers(telemetry_pb2.DESCRIPTOR.services_by_name["TelemetryService"])
        service.unary("Query", self.query, telemetry_pb2.QueryRequest)
        service.unary("Latest", self.latest, telemetry_pb2.LatestRequest)
        service.stream("Subscribe", self.subscribe, telemetry_pb2.SubscribeRequest)
        return service

    async def _known_device(self, device_id: str) -> None:
        hub = self.hub
        if hub.fleet.get(device_id) is None and await asyncio.to_thread(hub.registry.find_device, device_id) is None:
            raise NotFound(f"no device {device_id!r}")

    async def query(self, request: telemetry_pb2.QueryRequest, context: Context) -> telemetry_pb2.QueryResponse:
        await authorize(self.hub, context, Scope.READ)
        device_id = device_id_of(request.device_id, "device_id")
        end = request.to_ms if request.HasField("to_ms") else now_ms()
        start = request.from_ms if request.HasField("from_ms") else end - DEFAULT_WINDOW_MS
        if start > end:
            raise BadRequest(f"field 'from_ms': {start} is after to_ms ({end})")
        step = request.step_ms if request.HasField("step_ms") else None
        if step is not None and step <= 0:
            raise BadRequest(f"field 'step_ms': {step} is not a positive number of milliseconds")
        if step is not None and (end - start) // step > MAX_BUCKETS:
            raise BadRequest(f"field 'step_ms': more than {MAX_BUCKETS} buckets in the range; use a larger step")
        if request.aggregation not in AGGREGATIONS:
            names = ", ".join(telemetry_pb2.Aggregation.Name(n) for n in AGGREGATIONS)
            raise BadRequest(f"field 'aggregation': {request.aggregation} is not one of {names}")
        if request.aggregation and step is None:
            raise BadRequest("field 'aggregation': it needs step_ms (raw points are not aggregated)")
        agg = AGGREGATIONS[request.aggregation] if step is not None else Agg.LAST
        limit = request.limit or DEFAULT_LIMIT
        if not 0 < limit <= MAX_LIMIT:
            raise BadRequest(f"field 'limit': {request.limit} is outside 0..{MAX_LIMIT}")
        await self._known_device(device_id)
        known = await self.hub.store.metrics_of(device_id)
        wanted: list[str] = [*request.metrics] or known
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise NotFound(f"device {device_id!r} has no metric {', '.join(map(repr, unknown))}")
        series = await self.hub.store.query(device_id, wanted, start, end, step, agg, limit) if wanted else []
        return telemetry_pb2.QueryResponse(
            device_id=device_id, from_ms=start, to_ms=end, step_ms=step,
            aggregation=AS_PROTO[agg] if step is not None else telemetry_pb2.AGGREGATION_UNSPECIFIED,
            series=[
                telemetry_pb2.Series(
                    metric=s.metric, truncated=s.truncated,
                    points=[telemetry_pb2.Point(ts_ms=ts, value=convert.value(v)) for ts, v in s.points],
                )
                for s in series
            ],
        )  # fmt: skip

    async def latest(self, request: telemetry_pb2.LatestRequest, context: Context) -> telemetry_pb2.LatestResponse:
        await authorize(self.hub, context, Scope.READ)
        device_id = device_id_of(request.device_id, "device_id")
        await self._known_device(device_id)
        state = self.hub.fleet.get(device_id)
        latest = dict(state.latest) if state is not None else {}
        unknown = [m for m in request.metrics if m not in latest]
        if unknown:
            raise NotFound(f"device {device_id!r} has no value of metric {', '.join(map(repr, unknown))}")
        out = telemetry_pb2.LatestResponse(device_id=device_id)
        for metric in request.metrics or sorted(latest):
            ts, v = latest[metric]
            out.latest[metric].CopyFrom(convert.reading(ts, v))
        return out

    async def subscribe(self, request: telemetry_pb2.SubscribeRequest, context: Context) -> None:
        token = await authorize(self.hub, context, Scope.READ)
        f = request.filter
        stream_filter = StreamFilter.parse(f.devices, f.labels, f.metrics, f.types, where="field", names=FILTER_FIELDS)
        resume = request.resume_from if request.HasField("resume_from") else None
        await self.streams.serve(context, token.id, stream_filter, resume)
