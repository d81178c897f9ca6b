"""The hub's error tree (drawn in :mod:`iothub.hub`)."""


class HubError(Exception):
    """Base of the hub's own errors."""


class SettingsError(HubError):
    """Settings that cannot run; the message names each setting at fault."""


class StoreError(HubError):
    """The store, or the broker's saved state (``broker.db``), could not be opened, read or written."""


class AlertsError(HubError):
    """A rule, webhook endpoint or delivery request that cannot be done; the message says why."""


class UnknownName(AlertsError):
    """No rule, endpoint or delivery by that name or id."""


class NameTaken(AlertsError):
    """A rule name already in use (in the settings file or added before)."""
