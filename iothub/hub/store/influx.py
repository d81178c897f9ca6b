"""InfluxDB store: telemetry points to InfluxDB 2.x / Cloud, everything else in SQLite.

``store.backend = "influxdb"``. Each ingest batch is one write of line protocol
(:mod:`iothub.hub.store.influx_protocol`) to ``/api/v2/write`` through ``influxdb-client``'s async
write API, then the batch's events and device state are committed to the SQLite store it wraps, which
keeps the event log (ids, resume), presence, the webhook outbox and alert history; the registry stays
in its own SQLite file. Batching is ingest's group commit (a batch grows while the previous one is
written); retries are ingest's (0.1 s doubling to 5 s, the hub holding the queue meanwhile). A retry
writes the same lines again, which InfluxDB takes as the same points (same series and timestamp), so
a batch whose events failed after its points went through leaves no duplicates.

History and metric names are read with Flux (InfluxDB 2.x and Cloud only). A restarted hub knows its
devices' presence and counters but not their latest values until they send again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api_async import WriteApiAsync
from influxdb_client.domain.write_precision import WritePrecision

from iothub.hub.errors import StoreError
from iothub.hub.events import HubEvent
from iothub.hub.settings import InfluxSettings
from iothub.hub.store.base import Agg, Batch, Series, StoredDevice, Value
from iothub.hub.store.influx_protocol import history_query, line_protocol, metrics_query
from iothub.hub.store.sqlite import SqliteStore

log = logging.getLogger(__name__)


class InfluxStore:
    def __init__(
        self, settings: InfluxSettings, events: SqliteStore, labels_of: Callable[[str], Mapping[str, str]]
    ) -> None:
        self.settings = settings
        self.events = events
        self._labels_of = labels_of
        self._wanted = frozenset(settings.tag_labels)
        self._client: InfluxDBClientAsync | None = None
        self._writer: WriteApiAsync | None = None

    def _tags(self, device_id: str) -> Mapping[str, str]:
        if not self._wanted:
            return {}
        return {k: v for k, v in self._labels_of(device_id).items() if k in self._wanted}

    async def open(self) -> None:
        await self.events.open()
        s = self.settings
        self._client = InfluxDBClientAsync(
            url=s.url, token=s.token.get_secret_value(), org=s.org, timeout=int(s.timeout_s * 1000)
        )
        self._writer = self._client.write_api()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = self._writer = None
        await self.events.close()

    def _require(self) -> InfluxDBClientAsync:
        if self._client is None:
            raise StoreError("the InfluxDB store is closed")
        return self._client

    async def write(self, batch: Batch) -> list[HubEvent]:
        if batch.points:
            lines = line_protocol(batch.points, self.settings.measurement, self._tags)
            try:
                if self._writer is None:
                    raise StoreError("the InfluxDB store is closed")
                await self._writer.write(
                    bucket=self.settings.bucket,
                    org=self.settings.org,
                    record=lines,
                    write_precision=WritePrecision.MS,  # type: ignore[arg-type]
                )
            except StoreError:
                raise
            except Exception as exc:  # the client raises aiohttp's and its own errors; one kind for ingest
                raise StoreError(f"cannot write to InfluxDB at {self.settings.url}: {_short(exc)}") from exc
        return await self.events.write(Batch(events=batch.events, devices=batch.devices))

    async def _query(self, flux: str) -> list[dict[str, Any]]:
        try:
            tables = await self._require().query_api().query(flux, org=self.settings.org)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot query InfluxDB at {self.settings.url}: {_short(exc)}") from exc
        return [record.values for table in tables for record in table.records]

    async def load_devices(self) -> list[StoredDevice]:
        return await self.events.load_devices()

    async def metrics_of(self, device_id: str) -> list[str]:
        rows = await self._query(metrics_query(self.settings.bucket, self.settings.measurement, device_id))
        return sorted({str(row["_value"]) for row in rows})

    async def query(
        self,
        device_id: str,
        metrics: list[str],
        start_ms: int,
        end_ms: int,
        step_ms: int | None,
        agg: Agg,
        limit: int,
    ) -> list[Series]:
        out = []
        s = self.settings
        for metric in metrics:
            flux = history_query(s.bucket, s.measurement, device_id, metric, start_ms, end_ms, step_ms, agg, limit)
            rows = await self._query(flux)
            points: list[tuple[int, Value | None]] = [
                (int(row["_time"].timestamp() * 1000), row["_value"]) for row in rows
            ]
            out.append(Series(metric, points[:limit][::-1], len(points) > limit))
        return out

    async def events_after(self, after_id: int, limit: int) -> list[HubEvent]:
        return await self.events.events_after(after_id, limit)

    async def event_bounds(self) -> tuple[int, int]:
        return await self.events.event_bounds()


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
