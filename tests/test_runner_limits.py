"""The runner raises the open-files limit at start: every MQTT connection is a descriptor."""

from __future__ import annotations

import logging
import resource

import pytest

from iothub.runner import raise_open_files


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(caplog: pytest.LogCaptureFixture) -> None:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = before
    lowered = min(256, soft) if soft != resource.RLIM_INFINITY else 256
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        with caplog.at_level(logging.INFO, logger="iothub.runner"):
            assert raise_open_files()[1] == hard
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert raised > lowered
        assert raised == hard or hard == resource.RLIM_INFINITY
        assert f"raised from {lowered} to {raised}" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)
