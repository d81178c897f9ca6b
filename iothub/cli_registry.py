"""``iothub devices|tokens|accounts ...``: the registry of a hub's data dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from iothub.cli_common import data_options, print_data, registry_of
from iothub.hub.fleet import iso
from iothub.hub.records import DeviceRecord, TokenRecord
from iothub.hub.registry import Role, Scope


def _device(record: DeviceRecord) -> dict[str, Any]:
    """A device as the REST API shows it: times in ISO 8601."""
    return {**record.view(), "created": iso(record.created), "secret_rotated": iso(record.secret_rotated)}


def _token(record: TokenRecord) -> dict[str, Any]:
    return {**record.view(), "created": iso(record.created), "revoked": iso(record.revoked)}


@click.group()
def devices() -> None:
    """Register and manage devices (MQTT client id = username = device id, password = its secret)."""


@devices.command("add")
@click.argument("device_id")
@click.option("--name", help="Display name [the id].")
@click.option("--type", "device_type", default="generic", show_default=True)
@click.option("--label", "labels", multiple=True, help="key=value; repeat for more.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@data_options
def devices_add(
    device_id: str, name: str | None, device_type: str, labels: tuple[str, ...], as_json: bool,
    config_file: Path | None, data_dir: Path | None,
) -> None:  # fmt: skip
    """Register a device and print its secret (shown this once)."""
    parsed = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep:
            raise click.BadParameter(f"{label!r} is not key=value", param_hint="--label")
        parsed[key] = value
    record, secret = registry_of(config_file, data_dir, create=True).add_device(device_id, name, device_type, parsed)
    shown = f"(shown once; connect with client id and username {record.id})"
    text = f"device {record.id} registered\nsecret: {secret}\n{shown}"
    print_data({**_device(record), "secret": secret}, as_json, text)


@devices.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@data_options
def devices_list(as_json: bool, config_file: Path | None, data_dir: Path | None) -> None:
    """List registered devices."""
    records = registry_of(config_file, data_dir).devices()
    lines = [f"{'ID':24} {'TYPE':14} {'ENABLED':8} LABELS"] + [
        f"{r.id:24} {r.type:14} {'yes' if r.enabled else 'no':8} {' '.join(f'{k}={v}' for k, v in r.labels.items())}"
        for r in records
    ]
    print_data([_device(r) for r in records], as_json, "\n".join(lines))


@devices.command("show")
@click.argument("device_id")
@data_options
def devices_show(device_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Show one device's registry entry (as JSON)."""
    record = registry_of(config_file, data_dir).device(device_id)
    click.echo(json.dumps(_device(record), indent=2))


def _set_enabled(device_id: str, enabled: bool, config_file: Path | None, data_dir: Path | None) -> None:
    registry_of(config_file, data_dir).set_enabled(device_id, enabled)
    click.echo(f"device {device_id} {'enabled' if enabled else 'disabled'}")


@devices.command("disable")
@click.argument("device_id")
@data_options
def devices_disable(device_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Refuse the device's connections (a running hub also disconnects it)."""
    _set_enabled(device_id, False, config_file, data_dir)


@devices.command("enable")
@click.argument("device_id")
@data_options
def devices_enable(device_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Let a disabled device connect again."""
    _set_enabled(device_id, True, config_file, data_dir)


@devices.command("rotate-secret")
@click.argument("device_id")
@data_options
def devices_rotate(device_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Give the device a new secret (the old one stops working) and print it once."""
    _, secret = registry_of(config_file, data_dir).rotate_secret(device_id)
    click.echo(f"new secret for {device_id}: {secret}")


@devices.command("remove")
@click.argument("device_id")
@data_options
def devices_remove(device_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Remove a device from the registry (its stored telemetry stays)."""
    registry_of(config_file, data_dir).remove_device(device_id)
    click.echo(f"device {device_id} removed")


@click.group()
def tokens() -> None:
    """API tokens for HTTP (Authorization: Bearer ...): scopes read < command < admin."""


@tokens.command("create")
@click.option("--scope", type=click.Choice([s.value for s in Scope]), required=True)
@click.option("--name", default="", help="What the token is for.")
@data_options
def tokens_create(scope: str, name: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Create a token and print it (shown this once; stored hashed)."""
    record, token = registry_of(config_file, data_dir, create=True).create_token(Scope(scope), name)
    click.echo(f"token {record.id} ({record.scope}): {token}")


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@data_options
def tokens_list(as_json: bool, config_file: Path | None, data_dir: Path | None) -> None:
    """List tokens (never their values)."""
    records = registry_of(config_file, data_dir).tokens()
    lines = [f"{'ID':14} {'SCOPE':8} {'STATE':8} NAME"] + [
        f"{t.id:14} {t.scope.value:8} {'revoked' if t.revoked else 'active':8} {t.name}" for t in records
    ]
    print_data([_token(t) for t in records], as_json, "\n".join(lines))


@tokens.command("revoke")
@click.argument("token_id")
@data_options
def tokens_revoke(token_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Revoke a token by its id (from 'tokens list')."""
    registry_of(config_file, data_dir).revoke_token(token_id)
    click.echo(f"token {token_id} revoked")


@click.group()
def accounts() -> None:
    """MQTT service accounts (username svc:NAME): observer subscribes anywhere, service also publishes."""


@accounts.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@data_options
def accounts_add(name: str, role: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Create a service account and print its secret (shown this once)."""
    _, secret = registry_of(config_file, data_dir, create=True).add_account(name, Role(role))
    click.echo(f"account svc:{name} ({role})\nsecret: {secret}")


@accounts.command("list")
@data_options
def accounts_list(config_file: Path | None, data_dir: Path | None) -> None:
    """List service accounts."""
    for account in registry_of(config_file, data_dir).accounts():
        click.echo(f"svc:{account.name}  {account.role.value}")


@accounts.command("remove")
@click.argument("name")
@data_options
def accounts_remove(name: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Remove a service account."""
    registry_of(config_file, data_dir).remove_account(name)
    click.echo(f"account svc:{name} removed")
