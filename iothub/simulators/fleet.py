"""A fleet of simulated devices on real MQTT connections (aiomqtt), cheap enough for 1,000 per process.

Each device: connects with its Last Will (``{"online": false}`` on ``devices/{id}/status``, retained),
announces itself online, publishes telemetry with ``seq`` at its rate, answers commands on
``devices/{id}/commands/+``, and reconnects with jittered exponential backoff. ``chaos`` drops a
connection ungracefully (the socket is shut without DISCONNECT, so the broker sends the Will); each
drop is expected, so it is logged at debug level and counted, and the count logged at info at the end.
Stopping (duration, message count, SIGINT/SIGTERM) is graceful: status offline, then DISCONNECT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiomqtt
from pydantic import ValidationError

from iothub.devices import CommandRequest, CommandResponse, TopicKind, TwinDocument, is_valid_id, topic_for
from iothub.simulators.profiles import Profile, make_profile
from iothub.simulators.stats import FleetStats

__all__ = ["FleetConfig", "FleetStats", "SimulatedDevice", "parse_broker_url", "run_fleet"]

log = logging.getLogger(__name__)
CONNECT_CONCURRENCY = 100  # connection attempts in flight at once, so 1,000 devices do not stampede
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class FleetConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    devices: int = 10
    rate: float = 1.0  # messages per second per device; 0 = as fast as acks allow (QoS 1/2)
    qos: int = 1
    chaos: float = 0.0
    prefix: str = "sim"
    profiles: tuple[str, ...] = ("thermostat", "power_meter", "tracker")
    keepalive: int = 30
    duration: float | None = None
    messages: int | None = None
    seed: int | None = None
    first: int = 0  # index of the first device (several processes can share one prefix)
    credentials: dict[str, str] | None = field(default=None, repr=False)  # device id -> secret

    def __post_init__(self) -> None:
        if self.rate == 0 and self.qos == 0:
            raise ValueError("rate 0 (as fast as possible) needs QoS 1 or 2: QoS 0 has no acks to pace it")
        for kind in self.profiles:
            make_profile(kind, random.Random(0))
        longest = f"{self.prefix}-{self.first + self.devices - 1:04d}"
        if not is_valid_id(longest):
            raise ValueError(
                f"prefix {self.prefix!r}: device ids PREFIX-NNNN must follow [A-Za-z0-9_.-]{{1,64}}, "
                f"and {longest!r} does not"
            )

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> FleetConfig:
        host, port = parse_broker_url(url)
        return cls(host=host, port=port, **kwargs)  # type: ignore[arg-type]

    def device_ids(self) -> list[str]:
        return [f"{self.prefix}-{i:04d}" for i in range(self.first, self.first + self.devices)]


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://host[:port]`` -> (host, port); a ValueError says what form is expected."""
    expected = "expected mqtt://host:port, e.g. mqtt://127.0.0.1:1883"
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"broker URL {url!r}: {expected}")
    try:
        port = parts.port
    except ValueError as exc:  # not a number, or past 65535
        raise ValueError(f"broker URL {url!r}: {exc}; {expected}") from None
    return parts.hostname, 1883 if port is None else port


class _Dropped(Exception):
    """The device dropped its connection on purpose (chaos or reboot)."""


class SimulatedDevice:
    def __init__(self, device_id: str, profile: Profile, config: FleetConfig, rng: random.Random) -> None:
        self.id = device_id
        self.profile = profile
        self.config = config
        self.rng = rng
        self.interval = 1 / config.rate if config.rate > 0 else 0.0
        self.seq = 0
        self.status_topic = topic_for(device_id, TopicKind.STATUS)
        self.telemetry_topic = topic_for(device_id, TopicKind.TELEMETRY)
        self.response_topic = topic_for(device_id, TopicKind.RESPONSE)
        self.desired_topic = topic_for(device_id, TopicKind.STATE_DESIRED)
        self.reported_topic = topic_for(device_id, TopicKind.STATE_REPORTED)
        self.settings: dict[str, object] = {}  # the desired state it runs with
        self._closing = False  # the session is ending: the command listener stops after its message
        self.started = time.monotonic()
        self.secret = (config.credentials or {}).get(device_id)
        self._reboot = False

    def _status(self, online: bool, reason: str) -> bytes:
        return json.dumps({"online": online, "ts": int(time.time() * 1000), "reason": reason}).encode()

    def _done(self) -> bool:
        return self.config.messages is not None and self.seq >= self.config.messages

    async def run(self, stats: FleetStats, stop: asyncio.Event, gate: asyncio.Semaphore) -> None:
        attempt = 0
        while not stop.is_set() and not self._done():
            will = aiomqtt.Will(self.status_topic, self._status(False, "connection lost"), qos=1, retain=True)
            client = aiomqtt.Client(
                self.config.host,
                self.config.port,
                identifier=self.id,
                will=will,
                keepalive=self.config.keepalive,
                clean_session=True,
                username=self.id if self.secret is not None else None,
                password=self.secret,
                timeout=10,
            )
            try:
                async with gate:
                    await client.__aenter__()
            except aiomqtt.MqttError as exc:
                stats.connect_failed(f"{self.config.host}:{self.config.port}", exc)
                attempt += 1
                log.debug("%s: connect failed (%s)", self.id, exc)
                await self._backoff(attempt, stop)
                continue
            _read_disconnect_reason(client)
            stats.connects += 1
            attempt = 0
            try:
                await self._session(client, stats, stop)
            except* aiomqtt.MqttError as group:
                log.debug("%s: connection lost (%s)", self.id, group.exceptions[0])
                attempt = 1
            except* _Dropped:
                attempt = 1
            finally:
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.__aexit__(None, None, None)
            if attempt:
                await self._backoff(attempt, stop)

    async def _session(self, client: aiomqtt.Client, stats: FleetStats, stop: asyncio.Event) -> None:
        # Subscribe first: once it says it is online, a command sent to it must reach it.
        await client.subscribe(f"devices/{self.id}/commands/+", qos=1)
        await client.subscribe(self.desired_topic, qos=1)
        await client.publish(self.status_topic, self._status(True, "connected"), qos=1, retain=True)
        self._closing = False
        async with asyncio.TaskGroup() as tasks:
            listener = tasks.create_task(self._answer_commands(client, stats), name=f"{self.id}-commands")
            try:
                await self._publish(client, stats, stop)
            finally:
                # On Python 3.11 a cancel that lands as a publish's PUBACK arrives is lost (asyncio.wait_for
                # returns the result): the listener then ends at this flag, after that message.
                self._closing = True
                listener.cancel()
        # Graceful end: say so, then the caller's __aexit__ sends DISCONNECT (no Will).
        await client.publish(self.status_topic, self._status(False, "shutdown"), qos=1, retain=True)

    async def _publish(self, client: aiomqtt.Client, stats: FleetStats, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.rng.uniform(0, self.interval)
        while not stop.is_set() and not self._done():
            if self.interval:
                delay = next_at - loop.time()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        return
                    except TimeoutError:
                        pass
                next_at = max(next_at + self.interval, loop.time() - self.interval)
                if self.config.chaos and self.rng.random() < self.config.chaos * self.interval:
                    self._drop(client, stats)
            if self._reboot:
                self._reboot = False
                self.seq = 0
                raise _Dropped
            payload = {
                "ts": int(time.time() * 1000),
                "seq": self.seq,
                "metrics": self.profile.sample(time.time()),
            }
            try:
                await client.publish(self.telemetry_topic, json.dumps(payload), qos=self.config.qos)
            except aiomqtt.MqttError:
                stats.failed += 1
                raise
            self.seq += 1
            stats.sent += 1

    def _drop(self, client: aiomqtt.Client, stats: FleetStats) -> None:
        """Shut the socket without DISCONNECT: to the broker this is a crashed device."""
        stats.chaos_drops += 1
        log.debug("%s: chaos: dropping the connection", self.id)
        sock = client._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        raise _Dropped

    async def _answer_commands(self, client: aiomqtt.Client, stats: FleetStats) -> None:
        async for message in client.messages:
            await self._answer(client, stats, message)
            if self._closing:
                return

    async def _answer(self, client: aiomqtt.Client, stats: FleetStats, message: aiomqtt.Message) -> None:
        name = str(message.topic).rsplit("/", 1)[-1]
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        if str(message.topic) == self.desired_topic:
            await self._apply_desired(client, payload)
            return
        try:
            request = CommandRequest.model_validate_json(payload)
        except ValidationError:
            log.warning("%s: ignoring a malformed command on %s", self.id, message.topic)
            return
        try:
            result = self._execute(name, request.args)
            response = CommandResponse(id=request.id, ok=True, result=result)
        except ValueError as exc:
            response = CommandResponse(id=request.id, ok=False, error=str(exc))
        stats.commands += 1  # counted once executed: the answer's PUBACK may come after the fleet stops
        await client.publish(self.response_topic, response.model_dump_json(exclude_none=True), qos=1)

    async def _apply_desired(self, client: aiomqtt.Client, payload: bytes) -> None:
        """Take what it can of the desired state and report what it runs with, at the same version.

        The report follows the desired document: a key removed from it is no longer reported, and a
        value the device refuses is reported as the one it kept (if any).
        """
        try:
            desired = TwinDocument.model_validate_json(payload)
        except ValidationError:
            log.warning("%s: ignoring a malformed desired state", self.id)
            return
        applied: dict[str, object] = {}
        for key, value in desired.state.items():
            try:
                if key == "rate":
                    self._execute("set_rate", {"rate": value})
                elif key == "setpoint":
                    self._execute("set_setpoint", {"setpoint": value})
            except ValueError as exc:
                log.warning("%s: desired %s=%r refused: %s", self.id, key, value, exc)
                if key in self.settings:
                    applied[key] = self.settings[key]
                continue
            applied[key] = value
        self.settings = applied
        report = {"version": desired.version, "state": self.settings}
        await client.publish(self.reported_topic, json.dumps(report), qos=1)

    def _execute(self, name: str, args: dict[str, object]) -> dict[str, object]:
        if name == "ping":
            return {"pong": True, "uptime_s": round(time.monotonic() - self.started, 1), "seq": self.seq}
        if name == "set_rate":
            rate = args.get("rate")
            if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 < rate <= 1000:
                raise ValueError("args.rate must be a number of messages per second in (0, 1000]")
            self.interval = 1 / rate
            return {"rate": rate}
        if name == "reboot":
            self._reboot = True
            return {"rebooting": True}
        result = self.profile.command(name, args)
        if result is None:
            raise ValueError(f"unknown command {name!r} for a {self.profile.kind}")
        return result

    async def _backoff(self, attempt: int, stop: asyncio.Event) -> None:
        delay = self.rng.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


def _read_disconnect_reason(client: aiomqtt.Client) -> None:
    """Mark the reason of an unexpected disconnection read as soon as aiomqtt records it.

    aiomqtt 2.x keeps it in a future that only its message iterator reads. A connection dropped on
    purpose (chaos) ends while nothing iterates, ``__aexit__`` returns early without reading it, and
    asyncio would report each one as "Future exception was never retrieved". The device learns of a
    loss from the call that fails (or, for chaos, caused it), so nothing is hidden by reading it here.
    """
    client._disconnected.add_done_callback(lambda done: done.cancelled() or done.exception())


def build_fleet(config: FleetConfig) -> list[SimulatedDevice]:
    rng = random.Random(config.seed)
    devices = []
    for i, device_id in enumerate(config.device_ids()):
        device_rng = random.Random(rng.random())
        profile = make_profile(config.profiles[i % len(config.profiles)], device_rng)
        devices.append(SimulatedDevice(device_id, profile, config, device_rng))
    return devices


async def run_fleet(config: FleetConfig, stop: asyncio.Event | None = None) -> FleetStats:
    """Run until ``stop`` is set, SIGINT/SIGTERM, ``duration`` passes or every device sent ``messages``."""
    stop = stop or asyncio.Event()
    stats = FleetStats()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    timer = loop.call_later(config.duration, stop.set) if config.duration else None
    log.info("simulating %d devices against %s:%d", config.devices, config.host, config.port)
    try:
        async with asyncio.TaskGroup() as tasks:
            for device in build_fleet(config):
                tasks.create_task(device.run(stats, stop, gate), name=device.id)
    finally:
        if timer is not None:
            timer.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
    if config.chaos:
        log.info("chaos dropped %d connections (each is logged at debug level)", stats.chaos_drops)
    return stats
