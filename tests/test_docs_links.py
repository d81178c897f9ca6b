"""Every relative link in the README and under docs/ points to a file that exists, and every `IOTHUB_*`
variable they name is one the hub reads."""

from __future__ import annotations

import re
from pathlib import Path

from iothub.hub.settings import Settings
from iothub.hub.settings_env import foreign_variables, unknown_variables

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
    assert len(PAGES) >= 10  # the README and the docs pages it links


# The pages show a mistyped variable and another product's on purpose, to say how the hub treats them.
SHOWN_AS_WRONG = {"IOTHUB_HTTPX__PORT", "IOTHUB_CONNECTION_STRING"}


def test_every_iothub_variable_the_docs_name_is_a_setting() -> None:
    """A variable a page or example tells users to set must not stop the hub that reads the same
    environment (an example once read ``IOTHUB_TOKEN``, which ``iothub run`` refuses)."""
    texts = {p: p.read_text() for p in [*PAGES, *sorted((ROOT / "docs" / "examples").glob("*.py"))]}
    named = {v for text in texts.values() for v in re.findall(r"\bIOTHUB_[A-Z0-9_]*[A-Z0-9]\b", text)}
    refused = unknown_variables(dict.fromkeys(named - SHOWN_AS_WRONG, "x"), Settings)
    assert refused == []
    assert foreign_variables(dict.fromkeys(named - SHOWN_AS_WRONG, "x"), Settings) == []
    assert {"IOTHUB_CLIENT__TOKEN", "IOTHUB_MQTT__TLS__PORT"} <= named  # the scan sees pages and examples
