"""iothub/mqtt is a layer under the hub: it imports nothing of ours outside itself, and its modules
import one another without a circle. Read from the source with ``ast`` (imports under TYPE_CHECKING count)."""

from __future__ import annotations

from pathlib import Path

import iothub.mqtt
from tests.imports import imports as _imports

PACKAGE = Path(iothub.mqtt.__file__).parent


def _graph() -> dict[str, set[str]]:
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    return {
        path.stem: {name.split(".")[2] for name in _imports(path) if name.startswith("iothub.mqtt.")} & modules
        for path in PACKAGE.glob("*.py")
    }


def test_the_mqtt_layer_imports_nothing_of_ours_but_itself() -> None:
    outside = {
        f"{path.name}: {name}"
        for path in PACKAGE.glob("*.py")
        for name in _imports(path)
        if (name == "iothub" or name.startswith("iothub.")) and not name.startswith("iothub.mqtt")
    }
    assert not outside
    assert _imports(PACKAGE / "server.py") >= {"iothub.mqtt.connection", "iothub.mqtt.policy"}  # the walk sees imports


def test_its_modules_import_each_other_without_a_circle() -> None:
    graph = _graph()
    assert "transport" in graph["amqtt_listeners"]  # the walk sees imports
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
    assert "server" not in graph["connection"]
    assert "server" not in graph["persistence"]


def test_only_the_listener_adapter_touches_amqtt() -> None:
    touching = {path.name for path in PACKAGE.glob("*.py") if any(n.startswith("amqtt") for n in _imports(path))}
    assert touching == {"amqtt_listeners.py"}
