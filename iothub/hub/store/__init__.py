"""Store backends. :class:`Store` is what the rest of the hub depends on."""

from iothub.hub.store.base import Agg, Batch, Point, Series, Store, StoredDevice
from iothub.hub.store.sqlite import SqliteStore

__all__ = ["Agg", "Batch", "Point", "Series", "SqliteStore", "Store", "StoredDevice"]
