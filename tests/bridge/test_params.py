import pytest

from iothub.bridge.errors import BadRequest
from iothub.bridge.params import parse_duration_ms, parse_int, parse_time_ms

NOW = 1_790_000_000_000


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("30s", 30_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("2d", 172_800_000),
        ("10", 10_000),
        ("1.5s", 1500),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms("step", text) == ms


@pytest.mark.parametrize("text", ["", "5x", "-1s", "0s", "s", "1 h"])
def test_bad_durations_name_the_parameter(text: str) -> None:
    with pytest.raises(BadRequest, match="parameter 'step'"):
        parse_duration_ms("step", text)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("now", NOW),
        ("-1h", NOW - 3_600_000),
        ("1789999999000", 1_789_999_999_000),
        ("2026-09-21T14:13:20Z", 1_790_000_000_000),
        ("2026-09-21T16:13:20+02:00", 1_790_000_000_000),
    ],
)
def test_times(text: str, ms: int) -> None:
    assert parse_time_ms("from", text, NOW) == ms


@pytest.mark.parametrize(
    ("text", "message"),
    [("yesterday", "is not epoch ms"), ("2026-09-21T14:13:20", "UTC offset"), ("-soon", "not a duration")],
)
def test_bad_times(text: str, message: str) -> None:
    with pytest.raises(BadRequest, match=rf"parameter 'from'.*{message}"):
        parse_time_ms("from", text, NOW)


def test_ints() -> None:
    assert parse_int("limit", "5", 1, 10) == 5
    with pytest.raises(BadRequest, match="not an integer"):
        parse_int("limit", "five", 1, 10)
    with pytest.raises(BadRequest, match=r"outside 1\.\.10"):
        parse_int("limit", "11", 1, 10)
