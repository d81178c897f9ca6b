from pathlib import Path

import pytest

from iothub.hub.credentials import new_secret, verify_secret
from iothub.hub.registry import AlreadyExists, NotFound, Registry, RegistryError, Role, Scope


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry.db")


def test_devices(registry: Registry) -> None:
    record, secret = registry.add_device("th-1", "Kitchen", "thermostat", {"site": "berlin"})
    assert (record.name, record.type, record.labels, record.enabled) == (
        "Kitchen",
        "thermostat",
        {"site": "berlin"},
        True,
    )
    assert secret not in record.secret_hash  # stored hashed (SHA-256: the secret is random, 192 bits)
    assert record.secret_hash.startswith("sha256$")
    assert verify_secret(secret, record.secret_hash)
    with pytest.raises(AlreadyExists, match="device 'th-1' already exists"):
        registry.add_device("th-1")
    assert registry.update_device("th-1", labels={"site": "paris"}).labels == {"site": "paris"}
    assert not registry.set_enabled("th-1", False).enabled
    _, new = registry.rotate_secret("th-1")
    assert verify_secret(new, registry.device("th-1").secret_hash)
    assert not verify_secret(secret, registry.device("th-1").secret_hash)
    assert [d.id for d in registry.devices()] == ["th-1"]
    registry.remove_device("th-1")
    assert registry.find_device("th-1") is None
    for call in (registry.remove_device, registry.rotate_secret, registry.device):
        with pytest.raises(NotFound, match="no device 'th-1'"):
            call("th-1")
    with pytest.raises(NotFound):
        registry.set_enabled("th-1", True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device_id": "a b"}, "device id 'a b' breaks the rule"),
        ({"device_id": "ok", "type": "no spaces"}, "device type"),
        ({"device_id": "ok", "labels": {"bad key": "v"}}, "label 'bad key'"),
    ],
)
def test_bad_device_input(registry: Registry, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        registry.add_device(**kwargs)  # type: ignore[arg-type]


def test_tokens(registry: Registry) -> None:
    record, token = registry.create_token(Scope.COMMAND, "ops")
    assert token.startswith("iothub_")
    found = registry.lookup_token(token)
    assert found is not None
    assert (found.id, found.scope, found.revoked) == (record.id, Scope.COMMAND, None)
    assert registry.lookup_token(token + "x") is None
    revoked = registry.revoke_token(record.id)
    assert revoked.revoked is not None
    assert registry.revoke_token(record.id).revoked == revoked.revoked  # idempotent
    with pytest.raises(NotFound):
        registry.revoke_token("nope")
    assert [t.id for t in registry.tokens()] == [record.id]
    assert Scope.ADMIN.allows(Scope.COMMAND)
    assert Scope.COMMAND.allows(Scope.READ)
    assert not Scope.READ.allows(Scope.COMMAND)


def test_accounts(registry: Registry) -> None:
    account, secret = registry.add_account("bridge", Role.SERVICE)
    assert verify_secret(secret, account.secret_hash)
    with pytest.raises(AlreadyExists):
        registry.add_account("bridge", Role.OBSERVER)
    with pytest.raises(RegistryError, match="account name"):
        registry.add_account("a:b", Role.OBSERVER)
    assert [a.name for a in registry.accounts()] == ["bridge"]
    registry.remove_account("bridge")
    assert registry.find_account("bridge") is None
    with pytest.raises(NotFound):
        registry.remove_account("bridge")


def test_changes_by_another_process_are_noticed(tmp_path: Path) -> None:
    mine, other = Registry(tmp_path / "r.db"), Registry(tmp_path / "r.db")
    assert mine.changed()
    assert not mine.changed()
    other.add_device("x")
    assert mine.changed()
    assert mine.find_device("x") is not None


def test_a_file_that_cannot_be_the_registry_is_named(tmp_path: Path) -> None:
    corrupt = tmp_path / "registry.db"
    corrupt.write_text("garbage\n")
    with pytest.raises(RegistryError, match=f"^cannot open the registry at {corrupt}: file is not a database$"):
        Registry(corrupt)
    not_a_dir = tmp_path / "afile"
    not_a_dir.write_text("")
    with pytest.raises(
        RegistryError, match=f"^cannot open the registry at {not_a_dir}/registry.db: {not_a_dir} is not a"
    ):
        Registry(not_a_dir / "registry.db")
    with pytest.raises(RegistryError, match=f"at {not_a_dir}/sub/registry.db: {not_a_dir} is not a directory$"):
        Registry(not_a_dir / "sub" / "registry.db")


def test_a_secret_never_looks_like_a_command_line_option() -> None:
    # One in 64 random URL-safe strings starts with "-"; 5,000 of them would hold ~78 such.
    made = [new_secret() for _ in range(5000)]
    assert not [s for s in made if s.startswith("-")]
    assert len(set(made)) == 5000
    assert all(len(s) == 32 for s in made)  # 192 bits
