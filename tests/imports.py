"""What a module of ours imports, read from its source with ``ast`` (imports under TYPE_CHECKING count)."""

from __future__ import annotations

import ast
from pathlib import Path

import iothub

ROOT = Path(iothub.__file__).parent


def module_name(path: Path) -> str:
    """``iothub/hub/store/sqlite.py`` -> ``iothub.hub.store.sqlite`` (a package's ``__init__`` is the package)."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names (``from pkg import name`` adds ``pkg.name`` too)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found
