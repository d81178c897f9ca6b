"""The runner raises the open-files limit at start: every MQTT connection is a descriptor."""

from __future__ import annotations

import logging
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from iothub.runner import raise_open_files


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(caplog: pytest.LogCaptureFixture) -> None:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = before
    lowered = min(256, soft) if soft != resource.RLIM_INFINITY else 256
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        with caplog.at_level(logging.DEBUG, logger="iothub.runner"):
            assert raise_open_files()[1] == hard
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert raised > lowered
        assert raised == hard or hard == resource.RLIM_INFINITY
        assert f"raised from {lowered} to {raised}" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_a_hard_limit_too_low_for_many_connections_is_said(tmp_path: Path) -> None:
    """The hard limit cannot be raised without privileges: the hub says what it bounds (in a process of its own)."""
    code = (
        "import logging, resource; logging.basicConfig();"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256));"
        "from iothub.runner import raise_open_files; raise_open_files()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "open files: the limit is 256 (hard limit 256)" in result.stderr
    assert "raise the hard limit" in result.stderr
