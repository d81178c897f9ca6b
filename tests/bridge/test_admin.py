"""Tokens on every entry point, and the admin API, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from iothub.hub.registry import Scope
from iothub.runner import Running, serve
from tests.conftest import hub_settings
from tests.mqtt_raw import connack_code


def client_with(hub: Running, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.AsyncClient(base_url=f"http://{hub.address('http')}", headers=headers, timeout=10)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/devices"), ("GET", "/api/v1/devices/x"), ("GET", "/api/v1/devices/x/telemetry"),
     ("GET", "/metrics"), ("POST", "/api/v1/devices"), ("GET", "/api/v1/tokens")],
)  # fmt: skip
async def test_every_entry_point_needs_a_token(hub: Running, method: str, path: str) -> None:
    async with client_with(hub, None) as anonymous:
        response = await anonymous.request(method, path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "API token" in response.json()["error"]


async def test_bad_tokens(hub: Running) -> None:
    record, token = hub.hub.registry.create_token(Scope.READ, "reader")
    async with client_with(hub, "iothub_not-a-token") as bad:
        assert (await bad.get("/api/v1/devices")).json() == {"error": "unknown API token"}
    async with httpx.AsyncClient(base_url=f"http://{hub.address('http')}") as raw:
        response = await raw.get("/api/v1/devices", headers={"Authorization": "Basic abc"})
        assert response.status_code == 401
        assert "malformed" in response.json()["error"]
    async with client_with(hub, token) as reader:
        assert (await reader.get("/api/v1/devices")).status_code == 200
        assert (await reader.get("/healthz")).status_code == 200
        forbidden = await reader.post("/api/v1/devices", json={"id": "x"})
        assert forbidden.status_code == 403
        assert forbidden.json()["error"] == f"API token '{record.id}' has scope 'read'; this needs 'admin'"
        hub.hub.registry.revoke_token(record.id)
        revoked = await reader.get("/api/v1/devices")
        assert revoked.status_code == 401
        assert "revoked" in revoked.json()["error"]


async def test_device_lifecycle(hub: Running, http: httpx.AsyncClient) -> None:
    created = await http.post("/api/v1/devices", json={"id": "pump-1", "type": "pump", "labels": {"site": "a"}})
    assert created.status_code == 201
    body = created.json()
    secret = body.pop("secret")
    assert (body["id"], body["type"], body["labels"], body["enabled"], body["registered"]) == (
        "pump-1", "pump", {"site": "a"}, True, True)  # fmt: skip
    port = hub.ports["mqtt"]
    assert await connack_code(port, "pump-1", username="pump-1", password=secret) == 0
    assert (await http.post("/api/v1/devices", json={"id": "pump-1"})).status_code == 409
    listed = (await http.get("/api/v1/devices", params={"label": "site=a"})).json()
    assert [d["id"] for d in listed["devices"]] == ["pump-1"]
    assert (await http.get("/api/v1/devices", params={"label": "site=b"})).json()["count"] == 0
    assert (await http.get("/api/v1/devices", params={"label": "nonsense"})).status_code == 400
    patched = await http.patch("/api/v1/devices/pump-1", json={"enabled": False, "name": "Pump"})
    assert (patched.json()["enabled"], patched.json()["name"]) == (False, "Pump")
    assert await connack_code(port, "pump-1", username="pump-1", password=secret) == 0x05
    await http.patch("/api/v1/devices/pump-1", json={"enabled": True})
    rotated = (await http.post("/api/v1/devices/pump-1/secret")).json()
    assert await connack_code(port, "pump-1", username="pump-1", password=secret) == 0x04
    assert await connack_code(port, "pump-1", username="pump-1", password=rotated["secret"]) == 0
    assert (await http.delete("/api/v1/devices/pump-1")).status_code == 204
    gone = await http.get("/api/v1/devices/pump-1")  # what the hub saw of it stays: it connected
    assert (gone.status_code, gone.json()["registered"]) == (200, False)
    assert (await http.delete("/api/v1/devices/pump-1")).status_code == 404
    assert (await http.patch("/api/v1/devices/pump-1", json={"name": "x"})).status_code == 404
    assert (await http.post("/api/v1/devices/pump-1/secret")).status_code == 404


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"id": "a b"}, "request body: id: String should match pattern"),
        ({"id": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"id": "x", "labels": {"k": 1}}, "labels.k: Input should be a valid string"),
        ({}, "id: Field required"),
    ],
)
async def test_bad_device_bodies(http: httpx.AsyncClient, payload: dict[str, object], message: str) -> None:
    response = await http.post("/api/v1/devices", json=payload)
    assert response.status_code == 400
    assert message in response.json()["error"]


async def test_malformed_json_body(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/v1/devices", content=b"{not json")
    assert response.status_code == 400
    assert "invalid JSON" in response.json()["error"]


async def test_tokens_api(http: httpx.AsyncClient, hub: Running) -> None:
    created = await http.post("/api/v1/tokens", json={"scope": "command", "name": "ops"})
    assert created.status_code == 201
    token = created.json()["token"]
    listed = (await http.get("/api/v1/tokens")).json()["tokens"]
    assert {t["name"] for t in listed} == {"first-start", "ops"}
    assert all("token" not in t for t in listed)
    async with client_with(hub, token) as ops:
        assert (await ops.get("/api/v1/devices")).status_code == 200
    assert (await http.delete(f"/api/v1/tokens/{created.json()['id']}")).json()["revoked"] is not None
    assert (await http.delete("/api/v1/tokens/unknown")).status_code == 404
    bad = await http.post("/api/v1/tokens", json={"scope": "root"})
    assert bad.status_code == 400
    assert "scope" in bad.json()["error"]


async def test_a_body_over_the_limit_is_refused_before_it_is_read(hub: Running, http: httpx.AsyncClient) -> None:
    limit = hub.hub.settings.http.max_body_bytes
    labels = {f"k{i}": "v" * 128 for i in range(limit // 128)}  # each label is valid: only the size is wrong
    response = await http.post("/api/v1/devices", json={"id": "big-1", "labels": labels})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error.startswith("request body: ")
    assert error.endswith(f"bytes, over the {limit}-byte limit (http.max_body_bytes)")
    assert hub.hub.registry.find_device("big-1") is None


async def test_a_chunked_body_is_refused_once_it_passes_the_limit(tmp_path: Path) -> None:
    limit = 4096  # http.max_body_bytes set small
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the size is known only while reading
        nonlocal sent
        yield b'{"name": "'
        while sent <= 4 * limit:
            sent += 1024
            yield b"x" * 1024
        yield b'"}'

    async with serve(hub_settings(tmp_path / "data", http={"max_body_bytes": limit})) as hub:
        assert hub.hub.first_token is not None
        device = "chunked-1"
        hub.hub.registry.add_device(device)
        async with client_with(hub, hub.hub.first_token) as http:
            response = await http.patch(f"/api/v1/devices/{device}", content=chunks())
            assert response.status_code == 413
            assert response.json() == {"error": f"request body: over the {limit}-byte limit (http.max_body_bytes)"}
            assert hub.hub.registry.device(device).name == device
            ok = await http.patch(f"/api/v1/devices/{device}", content=b'{"name": "' + b"y" * 200 + b'"}')
            assert ok.status_code == 400  # within the limit: read whole and validated (a name is at most 128)
            assert "name" in ok.json()["error"]
