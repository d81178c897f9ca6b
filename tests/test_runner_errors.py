"""How a start-up failure is told: the setting at fault, found in whatever wraps the OSError, or the
hub's own error found in a group."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from iothub.hub.errors import StoreError
from iothub.runner import serve, startup_error
from tests.conftest import hub_settings


def test_a_bind_failure_is_found_inside_groups_and_causes(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path, mqtt={"port": 1883}, http={"port": 8080})
    refused = OSError(errno.EACCES, "error while attempting to bind on address ('127.0.0.1', 8080): permission denied")
    try:
        try:
            raise refused
        except OSError as exc:
            raise RuntimeError("Broker instance can't be started") from exc
    except RuntimeError as wrapped:
        group = ExceptionGroup("unhandled errors in a TaskGroup", [wrapped])
    error = startup_error(group, settings)
    assert str(error) == "setting http.port [IOTHUB_HTTP__PORT]: cannot listen on 127.0.0.1:8080: permission denied"


def test_other_failures_are_left_alone_or_told_plainly(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path)
    assert startup_error(ExceptionGroup("bug", [ValueError("not a start-up problem")]), settings) is None
    full = OSError(errno.ENOSPC, "No space left on device")
    assert str(startup_error(full, settings)) == "cannot start the hub: [Errno 28] No space left on device"


async def test_a_failed_first_start_keeps_the_first_token_for_the_next(tmp_path: Path) -> None:
    """The first admin token is shown once: a start that fails (a busy port) must not use it up unseen."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        settings = hub_settings(tmp_path / "data", http={"port": busy.getsockname()[1]})
        failure: Exception | None = None
        try:
            async with serve(settings):
                pass
        except Exception as exc:  # an ExceptionGroup from the hub's task group, holding the OSError
            failure = exc
        assert "already in use" in str(startup_error(failure, settings)) if failure else False
    async with serve(hub_settings(tmp_path / "data")) as running:
        assert running.hub.first_token is not None
        assert [t.name for t in running.hub.registry.tokens()] == ["first-start"]


def test_the_hubs_own_error_is_told_as_it_is(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path)
    unusable = StoreError("cannot open the broker state x/broker.db: file is not a database; move it aside")
    try:
        try:
            raise OSError(errno.ENOTDIR, "Not a directory")
        except OSError as exc:
            raise unusable from exc
    except StoreError:
        group = ExceptionGroup("unhandled errors in a TaskGroup", [unusable])
    assert startup_error(group, settings) is unusable
