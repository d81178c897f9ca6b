"""Fixtures: a real hub on free loopback ports, real MQTT clients, and waits that always time out."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from iothub.hub.events import Gap, HubEvent, Subscription
from iothub.hub.registry import Role
from iothub.hub.settings import Settings, load_settings
from iothub.runner import Running, serve
from tests.loopwatch import LoopWatch

WAIT_S = 10.0
BLOCKING_S = 0.5
_ids = itertools.count()


def unique_id(prefix: str = "dev") -> str:
    """A device id no other test uses (tests share nothing but may share a hub)."""
    return f"{prefix}-{next(_ids):05d}"


def hub_settings(data_dir: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "mqtt": {"port": 0, "ws_port": 0},
        "http": {"port": 0},
        "grpc": {"port": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_settings(None, **base)


@pytest.fixture(autouse=True)
async def _event_loop_never_blocks() -> AsyncIterator[None]:
    """asyncio debug mode for every test; a callback that holds the loop over 0.5 s fails it.

    Time the loop's thread spent waiting for a CPU (a loaded machine) is not held against the
    callback: see :mod:`tests.loopwatch`.
    """
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = BLOCKING_S
    logger = logging.getLogger("asyncio")
    with LoopWatch(BLOCKING_S) as watch:
        logger.addHandler(watch)
        try:
            yield
        finally:
            logger.removeHandler(watch)
    assert not watch.blocked, f"the event loop was blocked: {watch.blocked}"


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Running]:
    async with serve(hub_settings(tmp_path / "data")) as running:
        yield running


@pytest.fixture
async def http(hub: Running) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with an admin token."""
    assert hub.hub.first_token is not None
    headers = {"Authorization": f"Bearer {hub.hub.first_token}"}
    async with httpx.AsyncClient(base_url=f"http://{hub.address('http')}", timeout=WAIT_S, headers=headers) as client:
        yield client


def device_secret(hub: Running, device_id: str) -> str:
    """Register ``device_id`` on first use (as an operator would) and return its secret."""
    key = (str(hub.hub.registry.path), device_id)
    if key not in _secrets:
        _, _secrets[key] = hub.hub.registry.add_device(device_id, type="test")
    return _secrets[key]


def mqtt_client(hub: Running, device_id: str, port: str = "mqtt", **kwargs: Any) -> aiomqtt.Client:
    """A client authenticated as device ``device_id`` (registered on first use)."""
    secret = device_secret(hub, device_id)
    return aiomqtt.Client(
        "127.0.0.1", hub.ports[port], identifier=device_id, username=device_id, password=secret, timeout=WAIT_S,
        **kwargs,
    )  # fmt: skip


def service_client(hub: Running, name: str, role: Role = Role.SERVICE, **kwargs: Any) -> aiomqtt.Client:
    """A client authenticated as service account ``name`` (created on first use)."""
    key = (str(hub.hub.registry.path), f"svc:{name}")
    if key not in _secrets:
        _, _secrets[key] = hub.hub.registry.add_account(name, role)
    return aiomqtt.Client(
        "127.0.0.1", hub.ports["mqtt"], identifier=f"svc-{name}", username=f"svc:{name}", password=_secrets[key],
        timeout=WAIT_S, **kwargs,
    )  # fmt: skip


_secrets: dict[tuple[str, str], str] = {}


def telemetry(metrics: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"metrics": metrics, **extra}).encode()


class EventWaiter:
    """Reads the hub's fan-out like a bridge would; every wait has a deadline.

    ``until`` returns the earliest matching event not returned before, whether it arrived earlier
    (while waiting for something else) or arrives within the timeout.
    """

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.seen: list[HubEvent | Gap] = []
        self._claimed: set[int] = set()

    async def until(self, match: Callable[[HubEvent], bool], within: float = WAIT_S) -> HubEvent:
        def claim(items: list[HubEvent | Gap]) -> HubEvent | None:
            for item in items:
                if isinstance(item, HubEvent) and item.id not in self._claimed and match(item):
                    self._claimed.add(item.id)
                    return item
            return None

        found = claim(self.seen)
        async with asyncio.timeout(within):
            while found is None:
                batch = await self.sub.next_batch()
                self.seen.extend(batch)
                found = claim(batch)
        return found

    async def telemetry_from(self, device_id: str, within: float = WAIT_S) -> HubEvent:
        return await self.until(lambda e: e.type == "telemetry" and e.device_id == device_id, within)

    async def status_of(self, device_id: str, online: bool, within: float = WAIT_S) -> HubEvent:
        return await self.until(
            lambda e: e.type == "status" and e.device_id == device_id and e.data["online"] is online, within
        )


@pytest.fixture
def events(hub: Running) -> EventWaiter:
    return EventWaiter(hub.hub.bus.subscribe("test"))


async def lock_store(path: Path) -> sqlite3.Connection:
    """Hold the SQLite database at ``path`` as another process would (``BEGIN EXCLUSIVE``); the caller
    rolls back and closes the connection returned.

    The hub's writer holds the lock only while it commits, but on a loaded machine that can take a
    while: the lock is waited for (up to :data:`WAIT_S`), off the event loop.
    """
    blocker = sqlite3.connect(path, timeout=WAIT_S, check_same_thread=False)
    try:
        await asyncio.to_thread(blocker.execute, "BEGIN EXCLUSIVE")
    except BaseException:
        blocker.close()
        raise
    return blocker
