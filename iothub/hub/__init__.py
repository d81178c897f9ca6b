"""The running hub: settings, embedded broker, ingest, store, presence and the event fan-out.

Errors::

    HubError
    ├── SettingsError     bad settings at start-up; the message names the setting
    ├── StoreError        the store, or the broker's saved state, could not be opened, read or written
    └── AlertsError       a rule, webhook endpoint or delivery request refused; the message says why
        ├── UnknownName   no rule, endpoint or delivery by that name or id
        └── NameTaken     a rule name already in use
"""

from iothub.hub.errors import HubError, SettingsError, StoreError

__all__ = ["HubError", "SettingsError", "StoreError"]
