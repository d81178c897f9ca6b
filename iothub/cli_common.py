"""What the ``iothub`` verbs share: the data-dir options, settings, the registry, output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from iothub.hub.registry import Registry
from iothub.hub.settings import Settings, load_settings


def data_options(fn: Any) -> Any:
    """``--data-dir`` and ``--config``, for verbs that work on a hub's data dir."""
    fn = click.option("--data-dir", type=click.Path(path_type=Path), help="The hub's data dir [./iothub-data].")(fn)
    return click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file.")(fn)


def settings_of(config_file: Path | None, data_dir: Path | None, **overrides: Any) -> Settings:
    return load_settings(config_file, **overrides, **({} if data_dir is None else {"data_dir": data_dir}))


def registry_of(config_file: Path | None, data_dir: Path | None, *, create: bool = False) -> Registry:
    """The registry of the data dir; only verbs that add to it (``create``) may start a new one."""
    settings = settings_of(config_file, data_dir)
    path = settings.data_dir / "registry.db"
    if not create and not path.is_file():
        default = Settings.model_fields["data_dir"].default
        raise click.ClickException(f"no hub data in {settings.data_dir} (--data-dir; the default is ./{default})")
    return Registry(path)


def print_data(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)
