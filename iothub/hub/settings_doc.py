"""The settings tables of the docs, rendered from the settings model (a tool for the docs pages).

One row per leaf setting, in the model's order: its dotted name, its environment variable, its
default as a user would write it, and the field's description. ``docs/configuration.md`` has the
table of every setting; a channel's page has the table of its sections (``ws``; ``broker, store``).
Each table sits between a :func:`begin` marker, which names the sections, and :data:`END`.
``python -m iothub.hub.settings_doc [PAGE...]`` (``scripts/settings-table``) rewrites them; a test
fails when a page differs from what this renders.
"""

from __future__ import annotations

import json
import re
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

DOCS = Path(__file__).resolve().parents[2] / "docs"
EVERY = "every setting"
_BEGIN = re.compile(
    r"<!-- settings table of (?P<what>[^:>]+): written by scripts/settings-table from the settings model;"
    r" edit the model -->\n"
)
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


def begin(sections: Sequence[str] = ()) -> str:
    """The marker before the table of ``sections`` (every setting when empty)."""
    what = ", ".join(sections) or EVERY
    return (
        f"<!-- settings table of {what}: written by scripts/settings-table from the settings model; edit the model -->"
    )


def render(model: type[BaseModel] = Settings, sections: Sequence[str] = ()) -> str:
    """The Markdown table of ``sections`` (``ws``, ``store.influx``; every setting when empty), header included."""
    chosen = [r for r in rows(model) if not sections or any(_within(r.setting.strip("`"), s) for s in sections)]
    if not chosen:
        raise ValueError(f"no setting in {', '.join(sections)}")
    lines = (f"| {r.setting} | {r.variable} | {r.default} | {_cell(r.description)} |\n" for r in chosen)
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


def replace_tables(page: str, model: type[BaseModel] = Settings) -> str:
    """``page`` with each table between a :func:`begin` marker and :data:`END` rendered anew;
    ValueError for a page without one, or a marker without its end."""
    out, at = [], 0
    for marker in _BEGIN.finditer(page):
        end = page.find(END, marker.end())
        if end < 0:
            raise ValueError(f"a settings table has no end marker {END!r}")
        what = marker["what"].strip()
        sections = [] if what == EVERY else [s.strip() for s in what.split(",")]
        out += [page[at : marker.end()], render(model, sections)]
        at = end
    if not out:
        raise ValueError(f"the page has no settings table (a marker like {begin()!r})")
    return "".join([*out, page[at:]])


def pages() -> list[Path]:
    """The docs pages that hold a settings table."""
    return [p for p in sorted(DOCS.glob("*.md")) if _BEGIN.search(p.read_text())]


def main(argv: Sequence[str] = ()) -> int:
    """Rewrite the settings tables of the pages named (default: every docs page that has one)."""
    for page in [Path(a) for a in argv] or pages():
        try:
            old = page.read_text()
            new = replace_tables(old)
        except (OSError, ValueError) as exc:
            print(f"settings-table: {page}: {exc}", file=sys.stderr)
            return 1
        if new != old:
            page.write_text(new)
        print(f"{page}: settings table {'rewritten' if new != old else 'unchanged'}")
    return 0


def _within(name: str, section: str) -> bool:
    return name == section or name.startswith(section + ".")


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
