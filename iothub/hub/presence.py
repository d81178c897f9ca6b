"""Presence: why a device is online or offline, and since when.

Sources, applied in the order the broker saw them (one ordered ingest stream):

* the embedded broker's connection events: ``connected``; ``clean_disconnect`` (DISCONNECT packet),
  ``last_will`` (dropped with a Will set), ``connection_lost`` (dropped without one),
  ``keepalive_timeout`` (silent for 1.5x its keepalive; the Will goes out), ``taken_over`` (a new
  connection with the same client id replaced it; followed by ``connected``);
* ``devices/{id}/status`` messages: ``reported_online`` / ``reported_offline`` (the device's own
  ``reason`` text is kept as ``detail``); with an external broker this is the only source;
* the hub itself: ``hub_stopped`` for devices connected when the hub stopped (or crashed),
  ``disabled`` when an operator disabled or removed a connected device, ``acl_violation`` when the
  hub closed a connection for publishing where it may not (``mqtt.acl_violation = "disconnect"``).

A Will arrives after the disconnect that caused it, so the broker's reason wins over the Will's text.
"""

from __future__ import annotations

import enum


class PresenceReason(enum.StrEnum):
    UNKNOWN = "unknown"
    CONNECTED = "connected"
    REPORTED_ONLINE = "reported_online"
    CLEAN_DISCONNECT = "clean_disconnect"
    LAST_WILL = "last_will"
    CONNECTION_LOST = "connection_lost"
    REPORTED_OFFLINE = "reported_offline"
    HUB_STOPPED = "hub_stopped"
    DISABLED = "disabled"
    KEEPALIVE_TIMEOUT = "keepalive_timeout"
    TAKEN_OVER = "taken_over"
    ACL_VIOLATION = "acl_violation"


ONLINE_REASONS = frozenset({PresenceReason.CONNECTED, PresenceReason.REPORTED_ONLINE})
