"""Every registered device's labels, in memory, so code on the event loop never asks SQLite for them.

The live streams route each event by its device's labels; :meth:`LabelDirectory.get` is one dict
lookup. The directory is kept current three ways:

- :meth:`LabelDirectory.load` reads the whole registry in a thread when the hub starts (it is
  idempotent, so whoever needs the labels first may call it);
- this process's registry writes (REST, the hub's own CLI paths) reach it at once, through
  :meth:`Registry.on_device_change`, before the write's caller resumes;
- other processes' writes (``iothub devices ...`` beside a running hub) through
  :meth:`LabelDirectory.refresh`, which the hub's registry watcher calls within a second of any change.

The listener does not trust the record it is handed (two threads writing one device may call it
in the other order): it reads the device again from the registry under the directory's lock, as a
reload reads everything under it. Whichever runs last reads after every write that called it, so
the newest state always wins. It runs in the writing thread (the hub writes off the event loop).
Readers on the event loop take no lock: replacing a dict entry, or the dict itself, is atomic.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from types import MappingProxyType

from iothub.hub.registry import DeviceRecord, Registry

NO_LABELS: Mapping[str, str] = MappingProxyType({})


class LabelDirectory:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._labels: dict[str, Mapping[str, str]] = {}
        self._lock = threading.Lock()
        self._loaded = False
        self.version = 0  # grows with every change: readers tell whether the set of devices may differ
        registry.on_device_change(self._changed)

    def get(self, device_id: str) -> Mapping[str, str]:
        """The device's labels (read-only; empty for an unregistered device)."""
        return self._labels.get(device_id, NO_LABELS)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._labels

    def device_ids(self) -> list[str]:
        """Every registered device's id."""
        return list(self._labels)

    @property
    def loaded(self) -> bool:
        return self._loaded

    async def load(self) -> None:
        """Read the registry once (in a thread); later calls return at once."""
        if not self._loaded:
            await self.refresh()

    async def refresh(self) -> None:
        """Read the registry again (in a thread): for changes made by other processes."""
        await asyncio.to_thread(self._reload)

    def _reload(self) -> None:
        with self._lock:
            self._labels = dict(self._registry.device_labels())
            self._loaded = True
            self.version += 1

    def _changed(self, device_id: str, _: DeviceRecord | None) -> None:
        with self._lock:
            record = self._registry.find_device(device_id)  # committed before this call: never older
            if record is None:
                self._labels.pop(device_id, None)
            else:
                self._labels[device_id] = record.labels
            self.version += 1
