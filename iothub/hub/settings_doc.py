"""The settings table of ``docs/configuration.md``, rendered from the settings model.

One row per leaf setting, in the model's order: its dotted name, its environment variable, its
default as a user would write it, and the field's description. ``python -m iothub.hub.settings_doc
[FILE]`` (``scripts/settings-table``) rewrites the part of the page between :data:`BEGIN` and
:data:`END`; a test fails when the page differs from what this renders.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from iothub.hub.broker_settings import CLIENT_ID_FORM, default_client_id
from iothub.hub.settings import Settings
from iothub.hub.settings_env import env_name, types_in

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
BEGIN = "<!-- settings table: written by scripts/settings-table from the settings model; edit the model -->"
END = "<!-- end of settings table -->"
HEADER = "| setting | environment | default | |\n|---|---|---|---|\n"

# Defaults computed at start-up, as the table shows them.
COMPUTED: dict[Callable[[], Any], str] = {default_client_id: CLIENT_ID_FORM}


@dataclass(frozen=True)
class Row:
    setting: str
    variable: str
    default: str
    description: str


def leaves(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every setting that holds a value (not a section), by dotted name, in the model's order."""
    for name, field in model.model_fields.items():
        sections = [t for t in types_in(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        if sections:
            yield from leaves(sections[0], f"{prefix}{name}.")
        else:
            yield prefix + name, field


def rows(model: type[BaseModel] = Settings) -> list[Row]:
    """The table's rows; ValueError naming a setting without a description or whose default cannot be shown."""
    table = []
    for name, field in leaves(model):
        description = (field.description or "").strip()
        if not description or "\n" in description:
            raise ValueError(f"setting {name}: give it a one-line Field(description=...)")
        variable = f"`{env_name(name)}`" + (" (JSON)" if _is_json(field) else "")
        table.append(Row(f"`{name}`", variable, shown_default(name, field), description))
    return table


def render(model: type[BaseModel] = Settings) -> str:
    """The Markdown table, header included."""
    lines = (f"| {r.setting} | {r.variable} | {r.default} | {_cell(r.description)} |\n" for r in rows(model))
    return HEADER + "".join(lines)


def shown_default(name: str, field: FieldInfo) -> str:
    """A default as a user writes it: ``true``/``false``, ``unset`` for nothing, JSON for a list."""
    if field.default_factory is not None:
        if field.default_factory not in COMPUTED:
            raise ValueError(f"setting {name}: its default is computed; say how it is shown in COMPUTED")
        return f"`{COMPUTED[field.default_factory]}`"
    value = field.default
    if isinstance(value, SecretStr):
        return "unset" if not value.get_secret_value() else "(a secret)"
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, tuple | list):
        return "`" + json.dumps([_plain(v) for v in value]) + "`"
    return f"`{value}`"


def replace_table(page: str, table: str) -> str:
    """``page`` with the text between its markers replaced by ``table``; ValueError without them."""
    head, begin, rest = page.partition(BEGIN + "\n")
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the page has no settings table between {BEGIN!r} and {END!r}")
    return head + begin + table + end + tail


def main(argv: Sequence[str] = ()) -> int:
    """Rewrite the settings table of the page named (default: ``docs/configuration.md``)."""
    page = Path(argv[0]) if argv else PAGE
    try:
        old = page.read_text()
        new = replace_table(old, render())
    except (OSError, ValueError) as exc:
        print(f"settings-table: {page}: {exc}", file=sys.stderr)
        return 1
    if new != old:
        page.write_text(new)
    print(f"{page}: settings table {'rewritten' if new != old else 'unchanged'}")
    return 0


def _is_json(field: FieldInfo) -> bool:
    """Whether the environment gives this setting as JSON (a list, a mapping, a structured value)."""
    return any(
        get_origin(t) in (tuple, list, dict, set) or (isinstance(t, type) and issubclass(t, tuple | list | dict | set))
        for t in types_in(field.annotation)
    )


def _number(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
