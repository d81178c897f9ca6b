"""pytest plugin: a running hub, a simulated fleet and a client per live channel, for testing what is
built on iothub's real-time notifications (registered as the ``pytest11`` entry point ``iothub``).

Fixtures (async; they need ``pytest-asyncio``, ``pip install 'iothub[testing]'``):

- ``iothub_hub``: a hub on free loopback ports with its data in a temporary directory
  (:class:`HubUnderTest`: addresses, an admin token, devices, telemetry, commands, more clients).
  Override the ``iothub_settings`` fixture to change its settings (``{"sse": {"heartbeat_s": 1}}``).
- ``iothub_fleet``: simulated devices connected to it (:class:`Fleet`); ``@pytest.mark.iothub_fleet(
  devices=3, rate=2.0, profiles=("thermostat",))`` sizes it.
- ``iothub_sse``, ``iothub_ws``, ``iothub_grpc``, ``iothub_mqtt``: a client of each channel, subscribed to everything
  before the test starts, with ``await client.expect(event_type, device=..., where=..., timeout=...)``.

``expect`` returns the earliest matching event not returned before (it may have arrived earlier),
or fails the test with what it waited for and the last events that arrived, each with the reason it
did not match.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from iothub.watch.events import Selection, Target, WatchEvent
from iothub.watch.expect import Expectation, Where, report

if TYPE_CHECKING:
    import aiomqtt

    from iothub.runner import Running

try:
    import pytest_asyncio
except ImportError:  # the plugin loads wherever iothub is installed; only its fixtures need it
    pytest_asyncio = None  # type: ignore[assignment]

WAIT_S = 10.0
FLEET_DEFAULTS: dict[str, Any] = {"devices": 3, "rate": 2.0, "profiles": ("thermostat",), "prefix": "sim"}


class ExpectationFailed(AssertionError):
    """``expect`` saw no matching event in time; the message shows what arrived and why each missed."""


@dataclass(eq=False)
class ChannelClient:
    """One live channel's events as they arrive, read in the background from the moment it connected."""

    channel: str
    received: list[WatchEvent] = field(default_factory=list)
    _taken: set[int] = field(default_factory=set)  # indexes of events an expect returned
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _failure: BaseException | None = None

    async def _read(self, events: AsyncIterator[WatchEvent]) -> None:
        try:
            async for event in events:
                self.received.append(event)
                self._changed.set()
        except Exception as exc:  # the channel broke: every expect says so instead of timing out
            self._failure = exc
            self._changed.set()

    async def expect(
        self,
        event_type: str,
        *,
        device: str | None = None,
        where: Where = None,
        timeout: float = WAIT_S,  # noqa: ASYNC109 (the deadline is the point of an expectation)
    ) -> WatchEvent:
        """The earliest event of ``event_type`` (from ``device``, matching ``where``) not yet returned.

        ``where``: ``{"temperature": 21.5}`` (telemetry: its metrics; other events: their fields; a
        value may be a predicate, ``{"temperature": lambda t: t > 30}``), or a predicate of the event.
        """
        expectation = Expectation(event_type, device, where)
        checked = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for index in range(checked, len(self.received)):
                        if index not in self._taken and expectation.mismatch(self.received[index]) is None:
                            self._taken.add(index)
                            return self.received[index]
                    checked = len(self.received)
                    if self._failure is not None:
                        raise ExpectationFailed(f"the {self.channel} client stopped: {self._failure}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            unclaimed = [e for i, e in enumerate(self.received) if i not in self._taken]
            raise ExpectationFailed(report(expectation, self.channel, timeout, unclaimed)) from None


@dataclass
class Fleet:
    """Simulated devices (``iothub simulate``'s), each online when the fixture hands it over."""

    ids: list[str]
    secrets: dict[str, str]
    stop: asyncio.Event


class HubUnderTest:
    """A running hub and the ways in: addresses, an admin token, devices, service accounts, clients."""

    def __init__(self, running: Running) -> None:
        self.running = running
        assert running.hub.first_token is not None
        self.token: str = running.hub.first_token
        self.url = f"http://{running.address('http')}"
        self.mqtt_port: int = running.ports["mqtt"]
        self.grpc_address = running.address("grpc") if "grpc" in running.ports else "127.0.0.1:50051"
        self._secrets: dict[str, str] = {}

    @property
    def target(self) -> Target:
        return Target(
            url=self.url, token=self.token, mqtt_port=self.mqtt_port, connect_timeout_s=WAIT_S,
            grpc_address=self.grpc_address,
        )  # fmt: skip

    async def add_device(self, device_id: str, type: str = "test", labels: dict[str, str] | None = None) -> str:
        """Register a device (once) and return its MQTT secret."""
        if device_id not in self._secrets:
            registry = self.running.hub.registry
            _, secret = await asyncio.to_thread(registry.add_device, device_id, None, type, labels or {})
            self._secrets[device_id] = secret
        return self._secrets[device_id]

    async def device(self, device_id: str, **kwargs: Any) -> aiomqtt.Client:
        """An MQTT client (not yet connected: ``async with``) authenticated as ``device_id``."""
        import aiomqtt

        secret = await self.add_device(device_id)
        return aiomqtt.Client(
            "127.0.0.1", self.mqtt_port, identifier=device_id, username=device_id, password=secret, timeout=WAIT_S,
            **kwargs,
        )  # fmt: skip

    async def send_telemetry(self, device_id: str, metrics: dict[str, Any], **fields: Any) -> None:
        """Connect as ``device_id``, publish one telemetry message with QoS 1 (stored once acknowledged)."""
        async with await self.device(device_id) as client:
            payload = json.dumps({"metrics": metrics, **fields})
            await client.publish(f"devices/{device_id}/telemetry", payload, qos=1)

    async def service_account(self, name: str, role: str = "service") -> tuple[str, str]:
        """Create an MQTT service account (``observer`` or ``service``); its username and password."""
        from iothub.hub.registry import Role

        key = f"svc:{name}"
        if key not in self._secrets:
            registry = self.running.hub.registry
            _, self._secrets[key] = await asyncio.to_thread(registry.add_account, name, Role(role))
        return key, self._secrets[key]

    async def command(
        self, device_id: str, name: str, args: dict[str, Any] | None = None, timeout_s: float = 5.0
    ) -> Any:
        """Send a command through the REST API, as ``iothub command`` does; the hub's answer."""
        from iothub.watch.remote import send_command

        return await send_command(self.target, device_id, name, args or {}, timeout_s)

    @asynccontextmanager
    async def connect(self, channel: str, **selection: Any) -> AsyncIterator[ChannelClient]:
        """A client of ``channel`` (``sse``, ``ws``, ``grpc``, ``mqtt``) with filters (``devices=[...]``,
        ``labels``, ``metrics``, ``types``) and ``resume_from``; subscribed when this returns."""
        from iothub.watch.channels import open_channel

        target = self.target
        if channel == "mqtt":
            username, password = await self.service_account("iothub-testing", "observer")
            target = dataclasses.replace(target, username=username, password=password)
        wanted = Selection(**{k: _values(v) for k, v in selection.items()})
        client = ChannelClient(channel)
        async with open_channel(channel, target, wanted) as events:
            reader = asyncio.create_task(client._read(events), name=f"iothub-testing-{channel}")
            try:
                yield client
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    @asynccontextmanager
    async def fleet(self, devices: int = 3, **options: Any) -> AsyncIterator[Fleet]:
        """Simulated devices connected to the hub (online when this returns); stopped on leaving."""
        from iothub.simulators.fleet import FleetConfig, run_fleet

        config = FleetConfig(port=self.mqtt_port, **{**FLEET_DEFAULTS, **options, "devices": devices})
        secrets = {d: await self.add_device(d, config.profiles[0]) for d in config.device_ids()}
        config = dataclasses.replace(config, credentials=secrets)
        stop = asyncio.Event()
        async with self.connect("sse", types=["status"], devices=config.device_ids()) as statuses:
            task = asyncio.create_task(run_fleet(config, stop), name="iothub-testing-fleet")
            try:
                for device_id in config.device_ids():
                    await statuses.expect("status", device=device_id, where={"online": True})
                yield Fleet(config.device_ids(), secrets, stop)
            finally:
                stop.set()
                async with asyncio.timeout(WAIT_S):
                    await task


def _values(value: Any) -> Any:
    """A filter given as a list (or one string) as the tuple :class:`Selection` holds."""
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, Sequence) else value


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "iothub_fleet(**options): size the iothub_fleet fixture (devices, rate, ...)")


def _needs_pytest_asyncio() -> None:
    pytest.fail("iothub's fixtures need pytest-asyncio: pip install 'iothub[testing]'", pytrace=False)


if pytest_asyncio is None:

    def _missing_fixture(name: str) -> Any:
        def fixture() -> None:
            _needs_pytest_asyncio()

        return pytest.fixture(name=name)(fixture)

    iothub_hub, iothub_fleet, iothub_sse, iothub_ws, iothub_grpc, iothub_mqtt = (
        _missing_fixture(name)
        for name in ("iothub_hub", "iothub_fleet", "iothub_sse", "iothub_ws", "iothub_grpc", "iothub_mqtt")
    )

else:

    @pytest.fixture
    def iothub_settings() -> dict[str, Any]:
        """Setting overrides for ``iothub_hub`` (override this fixture); ports and data dir are set."""
        return {}

    @pytest_asyncio.fixture
    async def iothub_hub(tmp_path: Path, iothub_settings: dict[str, Any]) -> AsyncIterator[HubUnderTest]:
        """A running hub on free loopback ports, its data in a temporary directory."""
        from iothub.hub.settings import load_settings
        from iothub.runner import serve

        overrides: dict[str, Any] = {**iothub_settings, "data_dir": tmp_path / "iothub-data"}
        overrides["mqtt"] = {**overrides.get("mqtt", {}), "port": 0, "ws_port": 0}
        overrides["http"] = {**overrides.get("http", {}), "port": 0}
        overrides["grpc"] = {**overrides.get("grpc", {}), "port": 0}
        async with serve(load_settings(None, **overrides)) as running:
            yield HubUnderTest(running)

    @pytest_asyncio.fixture
    async def iothub_fleet(iothub_hub: HubUnderTest, request: pytest.FixtureRequest) -> AsyncIterator[Fleet]:
        """Simulated devices on ``iothub_hub``, all online; ``@pytest.mark.iothub_fleet(devices=...)``."""
        marker = request.node.get_closest_marker("iothub_fleet")
        async with iothub_hub.fleet(**(marker.kwargs if marker else {})) as fleet:
            yield fleet

    @pytest_asyncio.fixture
    async def iothub_sse(iothub_hub: HubUnderTest) -> AsyncIterator[ChannelClient]:
        """The SSE stream, subscribed to every event."""
        async with iothub_hub.connect("sse") as client:
            yield client

    @pytest_asyncio.fixture
    async def iothub_ws(iothub_hub: HubUnderTest) -> AsyncIterator[ChannelClient]:
        """The WebSocket live protocol, subscribed to every event."""
        async with iothub_hub.connect("ws") as client:
            yield client

    @pytest_asyncio.fixture
    async def iothub_grpc(iothub_hub: HubUnderTest) -> AsyncIterator[ChannelClient]:
        """The gRPC API's TelemetryService.Subscribe, subscribed to every event."""
        async with iothub_hub.connect("grpc") as client:
            yield client

    @pytest_asyncio.fixture
    async def iothub_mqtt(iothub_hub: HubUnderTest) -> AsyncIterator[ChannelClient]:
        """The broker's device topics, read as an observer service account."""
        async with iothub_hub.connect("mqtt") as client:
            yield client


__all__ = ["ChannelClient", "ExpectationFailed", "Fleet", "HubUnderTest"]
