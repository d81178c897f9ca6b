"""Clients of a running hub's live channels, for people and tests: ``iothub watch`` and
:mod:`iothub.testing` are built on this package.

One small interface for every channel (:mod:`iothub.watch.channels`): ``open_channel(name, target,
selection)`` is an async context manager that connects, subscribes, and hands back an async iterator
of :class:`WatchEvent` (entering returns once the hub routes events to it, so nothing published
afterwards is missed). :mod:`iothub.watch.events` formats events as readable lines or JSON;
:mod:`iothub.watch.expect` matches events against an expectation and explains the misses;
:mod:`iothub.watch.receiver` is a webhook receiver that checks signatures.

Errors::

    WatchError              one line saying what failed: a hub that cannot be reached, a refused
    │                       token or filter (the hub's own message), a bad option
    └── WatchTimeout        the events asked for did not come in time; says what it saw
"""

from iothub.watch.events import Selection, Target, WatchError, WatchEvent, WatchTimeout

__all__ = ["Selection", "Target", "WatchError", "WatchEvent", "WatchTimeout"]
