"""Where alert rules come from and where their history goes: the settings file's rules (read-only)
and the ones added over REST or the CLI (the ``alert_rules`` table of ``iothub.db``), and the
``alert_history`` the store writes with every transition.

Synchronous and short, like the registry: the CLI calls it directly, the hub from a thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from iothub.devices.payloads import describe
from iothub.hub import outbox
from iothub.hub.errors import AlertsError, NameTaken, UnknownName
from iothub.hub.rules import KIND_ERROR, KINDS, RULE, MetricRule, OfflineRule

AnyRule = MetricRule | OfflineRule


def rule_view(rule: AnyRule, source: str) -> dict[str, Any]:
    return {**rule.model_dump(mode="json"), "source": source}


def parse_rule(data: str | bytes | dict[str, Any]) -> AnyRule:
    """A rule from JSON or a dict; :class:`AlertsError` naming the field at fault."""
    try:
        return RULE.validate_json(data) if isinstance(data, str | bytes) else RULE.validate_python(data)
    except ValidationError as exc:
        raise AlertsError(f"rule: {_kind_problem(exc) or describe(exc)}") from None


def _kind_problem(exc: ValidationError) -> str | None:
    """What is wrong with ``kind``, in words (pydantic speaks of tags and discriminators)."""
    for err in exc.errors(include_url=False):
        if err["type"] == KIND_ERROR:
            if not isinstance(err["input"], dict):
                return f"expected an object, got {type(err['input']).__name__}"
            if "kind" not in err["input"]:
                return f"field 'kind': missing (one of {', '.join(KINDS)})"
            return f"field 'kind': {err['input']['kind']!r} is not one of {', '.join(KINDS)}"
    return None


@dataclass(frozen=True, slots=True)
class BadRule:
    """A stored rule that no longer validates (written by an older version, or edited by hand)."""

    name: str
    error: str

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "source": "api", "invalid": self.error, "remove": self.remedy}

    @property
    def remedy(self) -> str:
        return f"iothub rules remove {self.name} (or DELETE /api/v1/rules/{self.name})"


class Rulebook(outbox.OutboxDb):
    def __init__(self, path: Path, configured: Sequence[AnyRule] = ()) -> None:
        super().__init__(path)
        self.configured = tuple(configured)

    def rules(self) -> list[tuple[AnyRule, str]]:
        """Every valid rule with where it comes from (``settings`` or ``api``), settings first."""
        return self.catalogue()[0]

    def catalogue(self) -> tuple[list[tuple[AnyRule, str]], list[BadRule]]:
        """The valid rules (as :meth:`rules`), and the stored ones that do not validate."""
        with self._lock:
            rows = self._db().execute("SELECT name, spec FROM alert_rules ORDER BY name").fetchall()
        found: list[tuple[AnyRule, str]] = [(r, "settings") for r in self.configured]
        bad = []
        for name, spec in rows:
            try:
                found.append((parse_rule(spec), "api"))
            except AlertsError as exc:
                bad.append(BadRule(name, str(exc)))
        return found, bad

    def add(self, rule: AnyRule) -> None:
        if any(r.name == rule.name for r in self.configured):
            raise NameTaken(f"rule {rule.name!r} is defined in the settings file")
        if parse_rule(rule.model_dump_json()) != rule:  # what is stored must read back as the same rule
            raise AlertsError(f"rule {rule.name!r} does not survive storing; check its numbers")
        with self._lock:
            try:
                self._db().execute(
                    "INSERT INTO alert_rules (name, spec, created) VALUES (?, ?, ?)",
                    (rule.name, rule.model_dump_json(), time.time_ns() // 1_000_000),
                )
            except sqlite3.IntegrityError:
                raise NameTaken(f"rule {rule.name!r} exists already (remove it first)") from None

    def remove(self, name: str) -> None:
        if any(r.name == name for r in self.configured):
            raise AlertsError(f"rule {name!r} is defined in the settings file; remove it there")
        with self._lock:
            if self._db().execute("DELETE FROM alert_rules WHERE name = ?", (name,)).rowcount == 0:
                raise UnknownName(f"no rule named {name!r}")

    def history(self, rule: str | None = None, device_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Alert transitions, newest first."""
        rows = self._newest(
            "SELECT event_id, ts, rule, device_id, state, data FROM alert_history",
            {"rule": rule, "device_id": device_id},
            limit,
        )
        return [
            {**json.loads(data), "event_id": event_id, "ts": outbox.iso_ms(ts), "rule": r, "device_id": d, "state": s}
            for event_id, ts, r, d, s, data in rows
        ]

    def firing(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(rule, device_id, data)`` of every alert whose last transition is ``firing``."""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    "SELECT h.rule, h.device_id, h.data FROM alert_history h"
                    " JOIN (SELECT MAX(id) AS id FROM alert_history GROUP BY rule, device_id) last ON last.id = h.id"
                    " WHERE h.state = 'firing'"
                )
                .fetchall()
            )
        return [(r, d, json.loads(data)) for r, d, data in rows]
