import pytest

from iothub.devices import DeviceTopic, RejectReason, TopicError, TopicKind, is_valid_id, parse, topic_for


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("devices/th-1/telemetry", DeviceTopic("th-1", TopicKind.TELEMETRY)),
        ("devices/a.b_c/status", DeviceTopic("a.b_c", TopicKind.STATUS)),
        ("devices/x/responses", DeviceTopic("x", TopicKind.RESPONSE)),
        ("devices/x/state/reported", DeviceTopic("x", TopicKind.STATE_REPORTED)),
        ("devices/x/state/desired", DeviceTopic("x", TopicKind.STATE_DESIRED)),
        ("devices/x/commands/reboot", DeviceTopic("x", TopicKind.COMMAND, "reboot")),
    ],
)
def test_parse_known_shapes(topic: str, expected: DeviceTopic) -> None:
    assert parse(topic) == expected
    assert topic_for(expected.device_id, expected.kind, expected.command) == topic


@pytest.mark.parametrize("topic", ["hub/status", "device/x/telemetry", "", "devicesx/telemetry"])
def test_topics_outside_devices_are_not_ours(topic: str) -> None:
    assert parse(topic) is None


@pytest.mark.parametrize(
    "topic",
    [
        "devices/x/temp",
        "devices/x/telemetry/extra",
        "devices/x",
        "devices/x/state/other",
        "devices/x/commands/",
        "devices/x/commands/a b",
    ],
)
def test_unknown_shapes_are_refused_with_reason(topic: str) -> None:
    with pytest.raises(TopicError, match="unknown topic shape") as info:
        parse(topic)
    assert info.value.reason is RejectReason.UNKNOWN_TOPIC


@pytest.mark.parametrize("device_id", ["", "a b", "x" * 65, "ümlaut", "a+b", "a#"])
def test_ids_breaking_the_rule_are_refused(device_id: str) -> None:
    assert not is_valid_id(device_id)
    with pytest.raises(TopicError, match="breaks the rule") as info:
        parse(f"devices/{device_id}/telemetry")
    assert info.value.reason is RejectReason.BAD_DEVICE_ID
    with pytest.raises(TopicError):
        topic_for(device_id, TopicKind.TELEMETRY)


def test_command_topic_needs_a_valid_name() -> None:
    with pytest.raises(TopicError, match="command name"):
        topic_for("x", TopicKind.COMMAND)
    assert is_valid_id("x" * 64)
