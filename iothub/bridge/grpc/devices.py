"""``iothub.v1.DeviceService``: ListDevices (filters, page tokens), GetDevice, WatchPresence."""

from __future__ import annotations

import asyncio
import base64
import binascii

from iothub.bridge.errors import BadRequest, NotFound
from iothub.bridge.grpc import convert
from iothub.bridge.grpc.auth import authorize
from iothub.bridge.grpc.handlers import Handlers
from iothub.bridge.grpc.status import Context
from iothub.bridge.grpc.streams import GrpcStreams
from iothub.bridge.streams import StreamFilter
from iothub.devices import is_valid_id
from iothub.hub.core import Hub
from iothub.hub.events import EventType, HubEvent
from iothub.hub.registry import Scope
from iothub.v1 import devices_pb2

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def page_token(last_id: str) -> str:
    """Opaque to clients: where the next page starts (after this id, so devices added meanwhile
    neither shift nor repeat the pages)."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def after_id(token: str) -> str | None:
    if not token:
        return None
    try:
        last = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        last = ""
    if not is_valid_id(last):
        raise BadRequest(f"field 'page_token': {token!r} is not a page token this hub gave")
    return last


def device_id_of(value: str, field: str = "id") -> str:
    if not is_valid_id(value):
        raise BadRequest(f"field {field!r}: {value!r} breaks the device id rule [A-Za-z0-9_.-]{{1,64}}")
    return value


class DeviceService:
    def __init__(self, hub: Hub, streams: GrpcStreams) -> None:
        self.hub = hub
        self.streams = streams

    def handlers(self) -> Handlers:
        service = Handlers(devices_pb2.DESCRIPTOR.services_by_name["DeviceService"])
        service.unary("ListDevices", self.list_devices, devices_pb2.ListDevicesRequest)
        service.unary("GetDevice", self.get_device, devices_pb2.GetDeviceRequest)
        service.stream("WatchPresence", self.watch_presence, devices_pb2.WatchPresenceRequest)
        return service

    async def list_devices(
        self, request: devices_pb2.ListDevicesRequest, context: Context
    ) -> devices_pb2.ListDevicesResponse:
        await authorize(self.hub, context, Scope.READ)
        size = request.page_size or DEFAULT_PAGE
        if not 0 < size <= MAX_PAGE:
            raise BadRequest(f"field 'page_size': {request.page_size} is outside 0..{MAX_PAGE}")
        wanted = StreamFilter.parse(labels=request.labels, where="field")
        after = after_id(request.page_token)
        records = {r.id: r for r in await asyncio.to_thread(self.hub.registry.devices)}
        fleet = self.hub.fleet
        page: list[devices_pb2.Device] = []
        more = False
        for device_id in sorted(records.keys() | fleet.devices.keys()):
            if (after is not None and device_id <= after) or not device_id.startswith(request.id_prefix):
                continue
            record, state = records.get(device_id), fleet.get(device_id)
            if request.HasField("online") and (state is not None and state.online) != request.online:
                continue
            labels = record.labels if record is not None else {}
            if any(labels.get(k) != v for k, v in wanted.labels):
                continue
            if len(page) == size:
                more = True
                break
            page.append(convert.device(record, state, device_id))
        token = page_token(page[-1].id) if more else ""
        return devices_pb2.ListDevicesResponse(devices=page, next_page_token=token)

    async def get_device(self, request: devices_pb2.GetDeviceRequest, context: Context) -> devices_pb2.Device:
        await authorize(self.hub, context, Scope.READ)
        device_id = device_id_of(request.id)
        record = await asyncio.to_thread(self.hub.registry.find_device, device_id)
        state = self.hub.fleet.get(device_id)
        if record is None and state is None:
            raise NotFound(f"no device {device_id!r}")
        return convert.device(record, state, device_id)

    async def watch_presence(self, request: devices_pb2.WatchPresenceRequest, context: Context) -> None:
        token = await authorize(self.hub, context, Scope.READ)
        stream_filter = StreamFilter.parse(request.devices, request.labels, types=["status"], where="field")
        resume = request.resume_from if request.HasField("resume_from") else None
        first = await self._current(stream_filter) if request.current else []
        await self.streams.serve(context, token.id, stream_filter, resume, first)

    async def _current(self, stream_filter: StreamFilter) -> list[bytes]:
        """The presence of every matching device, as status events with id 0: what the hub saw of
        each, and a registered device it has never seen as offline, reason ``unknown``, ``since_ms`` 0."""
        fleet = self.hub.fleet.devices
        registered = {record.id for record in await asyncio.to_thread(self.hub.registry.devices)}
        never = {"online": False, "reason": "unknown", "detail": None, "since": None}
        frames = []
        for device_id in sorted(registered | fleet.keys()):
            state = fleet.get(device_id)
            if state is not None and state.since is not None:
                e = HubEvent(0, EventType.STATUS, state.since, device_id, state.presence_view())
            elif device_id in registered:
                e = HubEvent(0, EventType.STATUS, 0, device_id, never)
            else:
                continue
            if stream_filter.wants(e, self.hub.labels.get(device_id)):
                frames.append(convert.event_frame(e, e.json))
        return frames
