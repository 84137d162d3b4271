"""The inventory memo (fleet/inventory/memo.py): a hit gives what the full load gives; every input that
changes is a miss; corrupt, foreign or open memos are ignored and rewritten; errors come from the loader."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.errors import FleetError, InventoryError
from fleet.inventory import load, memo
from fleet.inventory.loader import Inventory
from fleet.ssh.connection import memo_connections, ssh_params

ROOT = Path(__file__).resolve().parents[2]


def _yaml(path: Path, doc: object) -> None:
    path.write_text(yaml.safe_dump(doc))


@pytest.fixture
def inv_dir(tmp_path: Path) -> Path:
    inv = tmp_path / "inv"
    inv.mkdir()
    (inv / "key").write_text("k")
    _yaml(
        inv / "defaults.yaml",
        {
            "username": "deploy",
            "data": {"ssh": {"key_file": "key", "connect_timeout": 3}, "vars": {"X": "d", "F": 1.0}},
        },
    )
    _yaml(
        inv / "hosts.yaml",
        {
            "a1": {"hostname": "10.0.0.1", "groups": ["eu"], "data": {"ssh": {"keepalive": 5}}},
            "a2": {
                "hostname": "10.0.0.2",
                "port": 2222,
                "data": {"ssh": {"proxy": {"jump": "ops@bastion:2200"}, "host_key_alias": "a2.internal"}},
            },
            "a3": {"groups": ["eu"], "data": {"ssh": {"proxy": {"command": "nc %h %p"}}}},
        },
    )
    _yaml(inv / "groups.yaml", {"eu": {"data": {"gce": {"zone": "europe-west1-b"}, "roles": ["app"]}}})
    return inv


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache" / "compose-fleet"
    monkeypatch.setenv("FLEET_INVENTORY_CACHE", str(directory))
    return directory


@pytest.fixture
def full_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str | None]]:
    """Every full load (a miss) the memo makes, by inventory name."""
    calls: list[str | None] = []

    def counting(name: str | None) -> Inventory:
        calls.append(name)
        return load(name)

    monkeypatch.setattr(memo, "full_load", counting)
    yield calls


def memo_load(inv: Path) -> Inventory:
    return memo.load(str(inv), derive=memo_connections)


def the_file(cache: Path, inv: Path) -> Path:
    return memo.memo_file(cache, inv.resolve())


def test_hit_is_the_full_load(inv_dir: Path, cache: Path, full_loads: list[str | None]) -> None:
    first = memo_load(inv_dir)
    again = memo_load(inv_dir)
    assert len(full_loads) == 1  # the second came from the memo
    full = load(str(inv_dir))
    for got in (first, again):
        assert (got.name, got.path, got.groups, got.defaults) == (
            full.name,
            full.path,
            full.groups,
            full.defaults,
        )
        assert list(got.hosts) == list(full.hosts)
        for name, host in full.hosts.items():
            assert got.hosts[name] == host  # name, address, port, user, groups, merged data
            assert type(got.hosts[name].groups) is tuple
            assert got.hosts[name].settings == host.settings  # built on first use from the same data
            assert ssh_params(got.hosts[name], got) == ssh_params(host, full)
    assert again.connections and not full.connections
    # a host changed after the load is not given the memo's parameters
    from dataclasses import replace

    moved = replace(again.hosts["a1"], hostname="10.9.9.9")
    assert ssh_params(moved, again).address == "10.9.9.9"
    assert ssh_params(again.hosts["a1"], again).address == "10.0.0.1"
    assert ssh_params(again.hosts["a2"], again).proxy_command is not None
    assert ssh_params(again.hosts["a3"], again).proxy_command == "nc a3 22"


def test_memo_file_is_private(inv_dir: Path, cache: Path) -> None:
    memo_load(inv_dir)
    file = the_file(cache, inv_dir)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700  # created parents too
    assert [p.name for p in cache.iterdir()] == [file.name]  # no temporary file left behind
    doc = json.loads(file.read_text())
    assert doc["path"] == str(inv_dir.resolve())
    assert doc["files"] == [str(inv_dir.resolve() / "key")]


EDITS: dict[str, Callable[[Path, pytest.MonkeyPatch], None]] = {
    "hosts.yaml": lambda inv, mp: (inv / "hosts.yaml").write_text(
        (inv / "hosts.yaml").read_text().replace("10.0.0.2", "10.0.0.9")
    ),
    "defaults.yaml": lambda inv, mp: (inv / "defaults.yaml").write_text(
        (inv / "defaults.yaml").read_text() + "port: 2200\n"
    ),
    "groups.yaml removed": lambda inv, mp: (inv / "groups.yaml").unlink(),
    "a comment only": lambda inv, mp: (inv / "hosts.yaml").write_text(
        (inv / "hosts.yaml").read_text() + "# a comment\n"
    ),
    "HOME": lambda inv, mp: mp.setenv("HOME", str(inv)),
    "FLEET_COMPUTE_ENDPOINT": lambda inv, mp: mp.setenv("FLEET_COMPUTE_ENDPOINT", "http://127.0.0.1:1"),
    "FLEET_PROJECT_DIR": lambda inv, mp: mp.setenv("FLEET_PROJECT_DIR", str(inv)),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_each_input_changed_is_a_miss(
    edit: str,
    inv_dir: Path,
    cache: Path,
    full_loads: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if edit == "groups.yaml removed":  # the hosts that named the group must not
        hosts = yaml.safe_load((inv_dir / "hosts.yaml").read_text())
        for spec in hosts.values():
            spec.pop("groups", None)
        _yaml(inv_dir / "hosts.yaml", hosts)
    memo_load(inv_dir)
    memo_load(inv_dir)
    assert len(full_loads) == 1
    EDITS[edit](inv_dir, monkeypatch)
    got = memo_load(inv_dir)
    assert len(full_loads) == 2, f"{edit}: the memo was used"
    assert got == load(str(inv_dir))
    memo_load(inv_dir)
    assert len(full_loads) == 2  # rewritten: the next run hits again


def test_a_changed_source_is_a_miss(
    inv_dir: Path, cache: Path, full_loads: list[str | None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any module of the inventory's packages loaded when the memo was written is part of its key."""
    source = tmp_path / "probe.py"
    source.write_text("X = 1\n")
    probe = types.ModuleType("fleet.inventory._memo_probe")
    probe.__file__ = str(source)
    monkeypatch.setitem(sys.modules, probe.__name__, probe)
    memo_load(inv_dir)
    assert str(source) in json.loads(the_file(cache, inv_dir).read_text())["sources"]
    memo_load(inv_dir)
    assert len(full_loads) == 1
    source.write_text("X = 2\n")
    memo_load(inv_dir)
    assert len(full_loads) == 2
    source.unlink()  # gone: cannot match
    memo_load(inv_dir)
    assert len(full_loads) == 3


def test_the_schema_and_the_ssh_layer_are_sources(inv_dir: Path, cache: Path) -> None:
    memo_load(inv_dir)
    sources = json.loads(the_file(cache, inv_dir).read_text())["sources"]
    for module in ("fleet/inventory/schema.py", "fleet/inventory/loader.py", "fleet/ssh/connection.py"):
        assert str(ROOT / module) in sources
    assert any(s.endswith(os.path.join("pydantic", "version.py")) for s in sources)


def test_a_removed_key_file_gives_the_loaders_error(
    inv_dir: Path, cache: Path, full_loads: list[str | None]
) -> None:
    memo_load(inv_dir)
    (inv_dir / "key").unlink()
    with pytest.raises(InventoryError) as via_memo:
        memo_load(inv_dir)
    with pytest.raises(InventoryError) as direct:
        load(str(inv_dir))
    assert "ssh.key_file" in via_memo.value.render()
    assert via_memo.value.render() == direct.value.render()
    assert len(full_loads) == 2


def test_an_invalid_inventory_errs_as_the_loader_does_and_writes_nothing(inv_dir: Path, cache: Path) -> None:
    memo_load(inv_dir)
    (inv_dir / "hosts.yaml").write_text("a1:\n  data:\n    ssh:\n      keepalive: -1\n      typo: 1\n")
    with pytest.raises(InventoryError) as via_memo:
        memo_load(inv_dir)
    with pytest.raises(InventoryError) as direct:
        load(str(inv_dir))
    assert via_memo.value.render() == direct.value.render()
    assert "unknown key" in via_memo.value.render()
    # the old memo stays, but can never match these files
    assert (
        memo.read(the_file(cache, inv_dir), inv_dir.resolve(), memo.inputs(inv_dir.resolve(), os.environ))
        is None
    )


CORRUPT: dict[str, Callable[[Path], None]] = {
    "not JSON": lambda f: f.write_text("{not json"),
    "truncated": lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]),
    "empty": lambda f: f.write_text(""),
    "a list": lambda f: f.write_text("[1, 2]"),
    "hosts of the wrong shape": lambda f: f.write_text(
        json.dumps({**json.loads(f.read_text()), "hosts": [1, 2]})
    ),
    "a connection missing": lambda f: f.write_text(
        json.dumps({**json.loads(f.read_text()), "connections": {}})
    ),
    "another format": lambda f: f.write_text(json.dumps({**json.loads(f.read_text()), "format": 0})),
    "another fingerprint": lambda f: f.write_text(
        json.dumps({**json.loads(f.read_text()), "fingerprint": "0" * 64})
    ),
}


@pytest.mark.parametrize("damage", list(CORRUPT))
def test_a_corrupt_memo_is_ignored_and_rewritten(
    damage: str, inv_dir: Path, cache: Path, full_loads: list[str | None]
) -> None:
    memo_load(inv_dir)
    file = the_file(cache, inv_dir)
    CORRUPT[damage](file)
    assert memo_load(inv_dir) == load(str(inv_dir))
    assert len(full_loads) == 2
    json.loads(file.read_text())  # whole again
    memo_load(inv_dir)
    assert len(full_loads) == 2


def test_a_memo_open_to_others_or_not_ours_is_ignored(
    inv_dir: Path, cache: Path, full_loads: list[str | None]
) -> None:
    memo_load(inv_dir)
    file = the_file(cache, inv_dir)
    file.chmod(0o644)
    memo_load(inv_dir)
    assert len(full_loads) == 2
    assert stat.S_IMODE(file.stat().st_mode) == 0o600  # rewritten private
    if os.geteuid() == 0:
        os.chown(file, 4242, -1)
        memo_load(inv_dir)
        assert len(full_loads) == 3
        assert file.stat().st_uid == 0


def test_a_symlink_in_place_of_the_memo_is_not_followed(
    inv_dir: Path, cache: Path, full_loads: list[str | None], tmp_path: Path
) -> None:
    memo_load(inv_dir)
    file = the_file(cache, inv_dir)
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_bytes(file.read_bytes())
    elsewhere.chmod(0o600)
    file.unlink()
    file.symlink_to(elsewhere)
    memo_load(inv_dir)
    assert len(full_loads) == 2
    assert not file.is_symlink()  # replaced by our own file


def test_off_writes_nothing(inv_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_INVENTORY_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert memo_load(inv_dir) == load(str(inv_dir))
    assert not (tmp_path / "xdg").exists()


def test_default_place_is_the_users_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet import settings

    monkeypatch.delenv("FLEET_INVENTORY_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert settings.load().inventory_cache_dir() == tmp_path / "xdg" / "compose-fleet" / "inventory"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home_cache = tmp_path / "home" / ".cache" / "compose-fleet" / "inventory"
    assert settings.load().inventory_cache_dir() == home_cache


def test_an_unwritable_cache_only_costs_time(
    inv_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_loads: list[str | None]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FLEET_INVENTORY_CACHE", str(blocker / "cache"))  # under a regular file
    assert memo_load(inv_dir) == load(str(inv_dir))
    memo_load(inv_dir)
    assert len(full_loads) == 2


def test_a_failed_rename_leaves_no_temporary_file(
    inv_dir: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(memo.os, "replace", refuse)
    assert memo_load(inv_dir) == load(str(inv_dir))
    assert list(cache.iterdir()) == []


def test_concurrent_writers_leave_one_whole_memo(inv_dir: Path, cache: Path) -> None:
    """Writers replace the file atomically: readers see a whole memo (or none), never a mix."""
    import threading

    full = load(str(inv_dir))
    inputs = memo.inputs(inv_dir.resolve(), os.environ)
    file = the_file(cache, inv_dir)
    seen: list[Inventory | None] = []

    def writer() -> None:
        for _ in range(20):
            memo.write(file, full, memo_connections, inputs, derive_module=memo_connections.__module__)

    def reader() -> None:
        for _ in range(40):
            seen.append(memo.read(file, inv_dir.resolve(), inputs))

    threads = [threading.Thread(target=writer) for _ in range(3)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.name for p in cache.iterdir()] == [file.name]
    assert all(got is None or got == full for got in seen)
    assert memo.read(file, inv_dir.resolve(), inputs) == full


def test_mig_inventories_are_not_memoized(inv_dir: Path, cache: Path) -> None:
    full = load(str(inv_dir))
    assert memo.memoizable(full)
    with_migs = Inventory(
        full.name,
        full.path,
        full.hosts,
        full.groups,
        {**full.defaults, "data": {"gce": {"migs": [{"name": "m", "zone": "europe-west1-b"}]}}},
    )
    assert not memo.memoizable(with_migs)
    inputs = memo.inputs(inv_dir.resolve(), os.environ)
    file = the_file(cache, inv_dir)
    assert not memo.write(file, with_migs, memo_connections, inputs, derive_module="x")
    assert not file.exists()


def test_guest_attribute_host_keys_are_not_memoized(inv_dir: Path, cache: Path) -> None:
    hosts = yaml.safe_load((inv_dir / "hosts.yaml").read_text())
    hosts["a1"]["data"]["ssh"]["host_keys"] = "guest_attributes"
    gce = {"project": "p", "zone": "europe-west1-b", "instance": "a1", "instance_id": "1"}
    hosts["a1"]["data"]["gce"] = gce
    _yaml(inv_dir / "hosts.yaml", hosts)
    got = memo_load(inv_dir)
    assert got == load(str(inv_dir))
    assert not the_file(cache, inv_dir).exists()


def test_a_derive_error_writes_nothing(inv_dir: Path, cache: Path) -> None:
    def failing(inv: Inventory) -> dict[str, dict[str, Any]]:
        raise FleetError("invalid host name '-x': it would be read as an option")

    assert memo.load(str(inv_dir), derive=failing) == load(str(inv_dir))
    assert not the_file(cache, inv_dir).exists()


def test_a_hit_imports_no_pydantic(inv_dir: Path, tmp_path: Path) -> None:
    """In a fresh interpreter: the first run writes the memo, the second neither imports pydantic nor
    builds the schema until a host's typed settings are read."""
    script = (
        "import sys\n"
        "from fleet.inventory import memo\n"
        "from fleet.ssh.connection import memo_connections, ssh_params\n"
        f"inv = memo.load({str(inv_dir)!r}, derive=memo_connections)\n"
        "params = [ssh_params(h, inv) for h in inv.hosts.values()]\n"
        "print('pydantic' in sys.modules, 'fleet.inventory.schema' in sys.modules)\n"
        "print(inv.hosts['a1'].settings.ssh.keepalive, 'pydantic' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLEET_INVENTORY_CACHE": str(tmp_path / "c")}
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
        ).stdout.split("\n")
        for _ in range(2)
    ]
    assert runs[0][:2] == ["True True", "5 True"]  # the miss validated with pydantic
    assert runs[1][:2] == ["False False", "5 True"]  # the hit did not, until settings were read


def test_a_value_json_would_change_is_not_memoized(inv_dir: Path, cache: Path) -> None:
    """A memo must give back exactly what the load gave: a tuple would come back a list."""
    from dataclasses import replace

    full = load(str(inv_dir))
    a1 = full.hosts["a1"]
    odd = replace(full, hosts={**full.hosts, "a1": replace(a1, data={**a1.data, "roles": ("app",)})})
    inputs = memo.inputs(inv_dir.resolve(), os.environ)
    file = the_file(cache, inv_dir)
    assert not memo.write(file, odd, memo_connections, inputs, derive_module="x")
    assert not file.exists()
    assert memo.write(file, full, memo_connections, inputs, derive_module="x")


def test_files_changed_during_the_load_are_not_memoized(
    inv_dir: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def load_then_edit(name: str | None) -> Inventory:
        inv = load(name)
        (inv_dir / "hosts.yaml").write_text((inv_dir / "hosts.yaml").read_text() + "# edited\n")
        return inv

    monkeypatch.setattr(memo, "full_load", load_then_edit)
    memo_load(inv_dir)
    assert not the_file(cache, inv_dir).exists()
