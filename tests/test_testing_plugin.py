"""The pytest plugin (``iothub.testing``) as a user meets it: sample test projects run with plain
``pytest`` in a subprocess, in a directory of their own (no conftest, no settings of ours)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SAMPLES = Path(__file__).parent / "testing_samples"
README = Path(__file__).parent.parent / "README.md"


def run_pytest(project: Path, *samples: str) -> subprocess.CompletedProcess[str]:
    """Copy the samples into ``project`` as test files and run plain ``pytest`` there."""
    project.mkdir()
    for name in samples:
        (project / f"test_{name}.py").write_text((SAMPLES / f"{name}.py").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "IOTHUB_"))}
    return subprocess.run(
        # warnings are errors, but for pytest-asyncio's own about a loop scope left to its default
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
         "-W", "ignore::pytest.PytestDeprecationWarning"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_sample_project_passes_with_plain_pytest(tmp_path: Path) -> None:
    result = run_pytest(tmp_path / "project", "passing", "fleet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b3 passed\b", result.stdout), result.stdout


def test_a_failing_expectation_shows_what_arrived_and_why_each_missed(tmp_path: Path) -> None:
    result = run_pytest(tmp_path / "project", "failing")
    assert result.returncode == 1, result.stdout + result.stderr
    out = "\n".join(re.sub(r"^E\s+(E\s+)?", "", line) for line in result.stdout.splitlines())  # pytest's margin
    assert "expected a telemetry event from th-1 where temperature=99 on ws within 1 s" in out, out
    assert re.search(r"- #\d+ \S+Z th-2 telemetry temperature=99\n\s*device is th-2, not th-1", out), out
    assert re.search(r"- #\d+ \S+Z th-1 telemetry temperature=21.5\n\s*temperature is 21.5, not 99", out), out
    assert re.search(r"th-1 status online=true reason=connected.*\n\s*type is status, not telemetry", out), out
    assert "1 failed" in out, out


def test_the_readme_example_is_the_sample_that_passes() -> None:
    example = (SAMPLES / "passing.py").read_text().strip()
    assert example in README.read_text(), "README's 'Testing your integration' example differs from the sample"
