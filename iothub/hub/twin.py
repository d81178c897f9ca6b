"""Device twins: a desired and a reported state document per device, each with a version.

The hub owns ``desired`` (changed through :meth:`Twins.patch_desired`, a JSON merge patch, RFC 7396)
and publishes it retained on ``devices/{id}/state/desired``, so a device receives it whenever it
(re)connects and subscribes; the hub re-announces every desired document when it starts (the
broker's retained messages live in memory). The device owns ``reported`` and publishes it on
``devices/{id}/state/reported``; a report whose version is not newer than the stored one is refused
as stale. The delta is every desired key whose value the device has not reported.

A desired document is refused when its published payload would be larger than the caller's
``max_bytes`` (the hub passes ``ingest.max_payload_bytes``): the device echoes it on
``state/reported``, and an echo over the limit would be refused, or close the device's connection,
every time the retained document reached it again.

Errors::

    TwinError
    ├── VersionConflict   the caller's expected version is not the current one (HTTP 409)
    └── DesiredTooLarge   the document would be published over the size limit (HTTP 413)
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from iothub.devices import RejectReason, TopicKind, TwinDocument, topic_for
from iothub.hub.commands import Publisher
from iothub.hub.errors import HubError
from iothub.hub.registry import Registry

log = logging.getLogger(__name__)


class TwinError(HubError):
    pass


class VersionConflict(TwinError):
    pass


class DesiredTooLarge(TwinError):
    pass


@dataclass
class Twin:
    desired: dict[str, Any]
    desired_version: int
    reported: dict[str, Any]
    reported_version: int

    def delta(self) -> dict[str, Any]:
        return {k: v for k, v in self.desired.items() if self.reported.get(k) != v}

    def view(self) -> dict[str, Any]:
        return {
            "desired": {"version": self.desired_version, "state": self.desired},
            "reported": {"version": self.reported_version, "state": self.reported},
            "delta": self.delta(),
        }


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7396: ``null`` removes a key, objects merge recursively, anything else replaces."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out


class Twins:
    def __init__(self, registry: Registry, publisher: Publisher) -> None:
        self.registry = registry
        self.publisher = publisher
        self._lock = asyncio.Lock()

    async def get(self, device_id: str) -> Twin:
        return Twin(*await asyncio.to_thread(self.registry.twin, device_id))

    async def patch_desired(
        self,
        device_id: str,
        patch: dict[str, Any],
        expected_version: int | None = None,
        *,
        max_bytes: int | None = None,
    ) -> Twin:
        """Merge ``patch`` into the desired state, store it and publish it (retained).

        :class:`DesiredTooLarge` when the published document would be over ``max_bytes``, which is
        ``ingest.max_payload_bytes``: what the device's report of the same state must fit in.
        """
        async with self._lock:  # one read-modify-write at a time
            twin = await self.get(device_id)
            if expected_version is not None and expected_version != twin.desired_version:
                raise VersionConflict(
                    f"desired state of {device_id!r} is at version {twin.desired_version}, not {expected_version}"
                )
            twin.desired = merge_patch(twin.desired, patch)
            twin.desired_version += 1
            payload = _document(twin.desired, twin.desired_version)
            if max_bytes is not None and len(payload) > max_bytes:
                raise DesiredTooLarge(
                    f"desired state of {device_id!r} would be published as {len(payload)} bytes, over the "
                    f"{max_bytes}-byte limit (ingest.max_payload_bytes) that the device's reported state must fit in"
                )
            await asyncio.to_thread(
                self.registry.save_twin, device_id, twin.desired, twin.desired_version, twin.reported,
                twin.reported_version,
            )  # fmt: skip
        await self._publish(device_id, payload)
        return twin

    async def on_reported(self, device_id: str, report: TwinDocument) -> RejectReason | None:
        async with self._lock:
            twin = await self.get(device_id)
            if report.version <= twin.reported_version:
                return RejectReason.STALE_VERSION
            await asyncio.to_thread(
                self.registry.save_twin, device_id, twin.desired, twin.desired_version, report.state, report.version
            )
        return None

    async def announce_all(self, max_bytes: int | None = None) -> int:
        """Publish every stored desired document (retained messages live in memory); one over
        ``max_bytes`` (stored before that limit existed) is left out, with a warning."""
        twins = await asyncio.to_thread(self.registry.twins)
        for device_id, (desired, version) in twins.items():
            payload = _document(desired, version)
            if max_bytes is not None and len(payload) > max_bytes:
                log.warning(
                    "not announcing the desired state of %s: %d bytes, over ingest.max_payload_bytes (%d); "
                    "patch it smaller", device_id, len(payload), max_bytes,
                )  # fmt: skip
                continue
            await self._publish(device_id, payload)
        return len(twins)

    async def _publish(self, device_id: str, payload: bytes) -> None:
        await self.publisher.publish(topic_for(device_id, TopicKind.STATE_DESIRED), payload, qos=1, retain=True)


def _document(desired: dict[str, Any], version: int) -> bytes:
    """The desired state as published on ``devices/{id}/state/desired``."""
    return json.dumps({"version": version, "state": desired}).encode()
