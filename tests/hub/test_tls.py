"""The TLS listener: server certificate, optional client certificates whose CN is the device id."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import aiomqtt
import pytest

from iothub.hub.errors import SettingsError
from iothub.runner import Running, serve
from tests.certs import Pki, make_pki
from tests.conftest import WAIT_S, EventWaiter, device_secret, hub_settings, telemetry
from tests.mqtt_raw import connect_packet


def tls_context(pki: Pki, client: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    if client is not None:
        cert, key = pki.client(client)
        context.load_cert_chain(cert, key)
    return context


def tls_client(running: Running, pki: Pki, client_id: str, cert: str | None, **kwargs: object) -> aiomqtt.Client:
    return aiomqtt.Client(
        "localhost", running.ports["mqtts"], identifier=client_id, tls_context=tls_context(pki, cert),
        timeout=WAIT_S, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_client_certificates_map_their_cn_to_the_device(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", clients=("meter-1", "stranger"))
    tls = {"port": 0, "certfile": pki.server_cert, "keyfile": pki.server_key, "cafile": pki.ca}
    async with serve(hub_settings(tmp_path / "data", mqtt={"tls": tls})) as running:
        events = EventWaiter(running.hub.bus.subscribe("t"))
        secret = device_secret(running, "meter-1")
        async with tls_client(running, pki, "meter-1", cert="meter-1") as client:  # no password needed
            await client.publish("devices/meter-1/telemetry", telemetry({"kwh": 1.5}), qos=1)
            event = await events.telemetry_from("meter-1")
        assert event.data["metrics"] == {"kwh": 1.5}
        # Without a certificate the secret still works over TLS.
        async with tls_client(running, pki, "meter-1", cert=None, username="meter-1", password=secret):
            pass
        # A certificate for a device the registry does not know, or a username that is not its CN, is refused.
        with pytest.raises(aiomqtt.MqttError, match=r"[Bb]ad user name or password"):
            async with tls_client(running, pki, "stranger", cert="stranger"):
                pass
        with pytest.raises(aiomqtt.MqttError, match=r"[Bb]ad user name or password"):
            async with tls_client(running, pki, "meter-1", cert="meter-1", username="other", password="x"):
                pass


async def test_client_certificates_can_be_required(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", clients=("meter-2",))
    tls = {"port": 0, "certfile": pki.server_cert, "keyfile": pki.server_key, "cafile": pki.ca,
           "require_client_cert": True}  # fmt: skip
    async with serve(hub_settings(tmp_path / "data", mqtt={"tls": tls})) as running:
        secret = device_secret(running, "meter-2")
        # Without a certificate the TLS session is torn down before any CONNACK.
        reader, writer = await asyncio.open_connection("localhost", running.ports["mqtts"], ssl=tls_context(pki))
        writer.write(connect_packet("meter-2", username="meter-2", password=secret))
        with pytest.raises((ssl.SSLError, asyncio.IncompleteReadError, ConnectionResetError)):
            async with asyncio.timeout(WAIT_S):
                await reader.readexactly(4)
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):
            await writer.wait_closed()
        async with tls_client(running, pki, "meter-2", cert="meter-2"):
            pass


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"port": 0}, "a TLS port needs certfile and keyfile"),
        ({"port": 0, "certfile": "/nope.crt", "keyfile": "/nope.key"}, "certfile /nope.crt does not exist"),
        ({"require_client_cert": True, "port": 0, "certfile": __file__, "keyfile": __file__}, "needs cafile"),
    ],
)
def test_tls_settings_are_checked(tmp_path: Path, tls: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        hub_settings(tmp_path, mqtt={"tls": tls})
