"""Environment variables and setting names: ``IOTHUB_*`` names of settings, and the check that
refuses a variable that looks like a setting but names none (with the closest name)."""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

ENV_PREFIX = "IOTHUB_"
ENV_DELIMITER = "__"


def env_name(setting: str) -> str:
    """The environment variable of a dotted setting name: ``mqtt.tls.port`` -> ``IOTHUB_MQTT__TLS__PORT``."""
    return ENV_PREFIX + setting.replace(".", ENV_DELIMITER).upper()


def unknown_variables(environ: Mapping[str, str], model: type[BaseModel]) -> list[str]:
    """One line per ``IOTHUB_*`` variable in ``environ`` that names no setting, with the closest one.

    The known names come from the settings model itself (every section and every field in it, any
    key under a mapping field), so a setting added to the model is accepted from the environment as
    soon as it exists.
    """
    known = _KnownVariables(model)
    lines = []
    for variable in sorted(environ):
        name = variable.upper()
        if name.startswith(ENV_PREFIX) and not known.accepts(name) and known.meant_for_us(name):
            lines.append(f"setting {variable}: no such setting ({known.hint(name)})")
    return lines


def foreign_variables(environ: Mapping[str, str], model: type[BaseModel]) -> list[str]:
    """``IOTHUB_*`` variables that name no setting and do not look like one: another product's, such
    as ``IOTHUB_CONNECTION_STRING`` (Azure IoT Hub's convention). They are left alone."""
    known = _KnownVariables(model)
    return [
        variable
        for variable in sorted(environ)
        if variable.upper().startswith(ENV_PREFIX)
        and not known.accepts(variable.upper())
        and not known.meant_for_us(variable.upper())
    ]


class _KnownVariables:
    """The environment variables a settings model reads, found by walking its fields."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.exact: set[str] = set()
        self.leaves: set[str] = set()  # the variables of single values, what a typo is compared with
        self.open_prefixes: list[str] = []  # a mapping field takes any key below it
        self.sections: dict[str, list[str]] = {}  # "IOTHUB_MQTT__" -> what it holds, for hints
        self._walk(model, ENV_PREFIX)

    def _walk(self, model: type[BaseModel], prefix: str) -> None:
        shown = self.sections.setdefault(prefix, [])
        for name, field in model.model_fields.items():
            variable = prefix + name.upper()
            self.exact.add(variable)
            shown.append(variable)
            self.leaves.add(variable)
            for kind in types_in(field.annotation):
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    shown[-1] = variable + ENV_DELIMITER + "*"
                    self.leaves.discard(variable)
                    self._walk(kind, variable + ENV_DELIMITER)
                elif kind is Any or kind is dict or get_origin(kind) in (dict, Mapping):
                    self.open_prefixes.append(variable + ENV_DELIMITER)

    def accepts(self, name: str) -> bool:
        return name in self.exact or name.startswith(tuple(self.open_prefixes))

    def meant_for_us(self, name: str) -> bool:
        """Whether an unknown name looks like one of ours: nested with ``__`` (``IOTHUB_HTTPX__PORT``,
        ``IOTHUB_BROKER__URL``), a single word (``IOTHUB_PORT``), or close to a setting's name."""
        rest = name[len(ENV_PREFIX) :]
        return ENV_DELIMITER in rest or "_" not in rest or bool(self._close(name))

    def _close(self, name: str) -> list[str]:
        return difflib.get_close_matches(name, sorted(self.leaves), n=1, cutoff=0.8)

    def hint(self, name: str) -> str:
        close = self._close(name)
        if close:
            return f"did you mean {close[0]}?"
        section = max((p for p in self.sections if name.startswith(p)), key=len)
        return "known: " + ", ".join(self.sections[section])


def types_in(annotation: Any) -> Iterator[Any]:
    """The types an annotation allows: ``X | None`` and ``Annotated[X, ...]`` are opened up."""
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from types_in(get_args(annotation)[0])
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            yield from types_in(arg)
    else:
        yield annotation
