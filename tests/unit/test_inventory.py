"""Inventory loading, inheritance, validation errors and host selection (pure, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleet.errors import InventoryError
from fleet.inventory import load, select_hosts


def write(inv: Path, hosts: object, groups: object | None = None, defaults: object | None = None) -> Path:
    inv.mkdir(parents=True, exist_ok=True)
    (inv / "hosts.yaml").write_text(hosts if isinstance(hosts, str) else yaml.safe_dump(hosts))
    if groups is not None:
        (inv / "groups.yaml").write_text(groups if isinstance(groups, str) else yaml.safe_dump(groups))
    if defaults is not None:
        (inv / "defaults.yaml").write_text(
            defaults if isinstance(defaults, str) else yaml.safe_dump(defaults)
        )
    return inv


@pytest.fixture
def good(tmp_path: Path) -> Path:
    (tmp_path / "inv").mkdir()
    (tmp_path / "inv" / "key").write_text("k")
    return write(
        tmp_path / "inv",
        {
            "a1": {
                "hostname": "10.0.0.1",
                "groups": ["eu"],
                "data": {
                    "roles": ["app", "beat"],
                    "ssh": {"keepalive": 5},
                    "gce": {"instance": "a1", "instance_id": "11"},
                },
            },
            "a2": {"hostname": "10.0.0.2", "port": 2222, "groups": ["us"], "data": {"vars": {"X": "host"}}},
            "a3": {"groups": ["eu"], "username": "ops"},
        },
        groups={
            "app": {"data": {"vars": {"X": "app", "Y": "app"}, "ssh": {"proxy": "none"}}},
            "eu": {"groups": ["app"], "data": {"gce": {"zone": "europe-west1-b"}, "vars": {"Y": "eu"}}},
            "us": {"groups": ["app"], "data": {"gce": {"zone": "us-east1-b"}}},
        },
        defaults={
            "username": "deploy",
            "data": {
                "ssh": {"key_file": "key", "connect_timeout": 3},
                "roles": ["app"],
                "vars": {"X": "default", "Z": "d"},
            },
        },
    )


def test_inheritance_host_groups_defaults(good: Path) -> None:
    inv = load(str(good))
    a1, a2, a3 = inv.hosts["a1"], inv.hosts["a2"], inv.hosts["a3"]
    assert a1.groups == ("eu", "app")
    assert a1.get("gce.zone") == "europe-west1-b" and a1.get("gce.instance") == "a1"
    # mappings merge key by key: host keepalive + default key_file + group proxy
    assert a1.get("ssh.keepalive") == 5 and a1.get("ssh.key_file") == "key" and a1.get("ssh.proxy") == "none"
    assert a1.get("vars") == {"X": "app", "Y": "eu", "Z": "d"}  # nearest group wins over its parent
    assert a2.get("vars") == {"X": "host", "Y": "app", "Z": "d"}
    assert a1.get("roles") == ["app", "beat"] and a2.get("roles") == ["app"]  # lists replace
    assert (a2.hostname, a2.port, a2.username) == ("10.0.0.2", 2222, "deploy")
    assert (a3.hostname, a3.port, a3.username) == ("a3", 22, "ops")


def test_select_by_names_group_and_where(good: Path) -> None:
    inv = load(str(good))
    assert [h.name for h in select_hosts(inv, hosts=["a3", "a1"])] == ["a1", "a3"]
    assert [h.name for h in select_hosts(inv, group="eu")] == ["a1", "a3"]
    assert [h.name for h in select_hosts(inv, group="app")] == ["a1", "a2", "a3"]
    assert [h.name for h in select_hosts(inv, where=["gce.zone=us-east1-b"])] == ["a2"]
    assert [h.name for h in select_hosts(inv, where=["roles=beat"])] == ["a1"]
    assert [h.name for h in select_hosts(inv, group="eu", where=["port=22", "username=ops"])] == ["a3"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hosts": ["nope"]}, "unknown host(s): nope"),
        ({"group": "nope"}, "unknown group 'nope'"),
        ({"where": ["novalue"]}, "is not KEY=VALUE"),
    ],
)
def test_select_errors(good: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(InventoryError, match=None) as exc:
        select_hosts(load(str(good)), **kwargs)
    assert message in str(exc.value)


def test_no_implicit_inventory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_INVENTORY", raising=False)
    with pytest.raises(InventoryError, match="no inventory selected"):
        load(None)


def test_env_var_selects_inventory(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_INVENTORY", str(good))
    assert set(load(None).hosts) == {"a1", "a2", "a3"}


def test_unknown_inventory_name() -> None:
    with pytest.raises(InventoryError, match="inventory 'does-not-exist' not found"):
        load("does-not-exist")


def errmsg(inv: Path) -> str:
    with pytest.raises(InventoryError) as exc:
        load(str(inv))
    return str(exc.value)


def test_unknown_key_names_file_host_and_field(tmp_path: Path) -> None:
    msg = errmsg(write(tmp_path / "i", {"web": {"hostname": "x", "data": {"ssh": {"proxi": "none"}}}}))
    assert "hosts.yaml: host 'web'" in msg and "field data.ssh.proxi: unknown key" in msg


def test_wrong_type_names_field(tmp_path: Path) -> None:
    msg = errmsg(write(tmp_path / "i", {"web": {"hostname": "x", "port": "twenty-two"}}))
    assert "host 'web'" in msg and "field port" in msg and "integer" in msg


def test_port_out_of_range(tmp_path: Path) -> None:
    msg = errmsg(write(tmp_path / "i", {"web": {"port": 70000}}))
    assert "field port" in msg and "65535" in msg


def test_duplicate_host_rejected_with_line(tmp_path: Path) -> None:
    msg = errmsg(write(tmp_path / "i", "web:\n  hostname: a\nweb:\n  hostname: b\n"))
    assert "duplicate key 'web' (first at line 1)" in msg and "hosts.yaml:3" in msg


def test_unknown_group(tmp_path: Path) -> None:
    msg = errmsg(write(tmp_path / "i", {"web": {"groups": ["ghost"]}}, groups={"real": {}}))
    assert "unknown group 'ghost'" in msg and "host 'web'" in msg and "known: real" in msg


def test_group_cycle(tmp_path: Path) -> None:
    msg = errmsg(
        write(
            tmp_path / "i",
            {"web": {"groups": ["a"]}},
            groups={"a": {"groups": ["b"]}, "b": {"groups": ["a"]}},
        )
    )
    assert "group cycle: a -> b -> a" in msg


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    msg = errmsg(write(tmp_path / "i", "web:\n  hostname: [unclosed\n"))
    assert "not valid YAML" in msg and "hosts.yaml:" in msg


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    assert "expected a mapping at the top, found list" in errmsg(write(tmp_path / "i", "- a\n- b\n"))


def test_hosts_file_missing(tmp_path: Path) -> None:
    (tmp_path / "i").mkdir()
    assert "hosts.yaml: file is missing" in errmsg(tmp_path / "i")


def test_bad_host_name(tmp_path: Path) -> None:
    assert "invalid host name 'we b'" in errmsg(write(tmp_path / "i", {"we b": {}}))


def test_iap_needs_gce_fields(tmp_path: Path) -> None:
    msg = errmsg(write(tmp_path / "i", {"web": {"data": {"ssh": {"proxy": "iap"}, "gce": {"project": "p"}}}}))
    assert "ssh.proxy is iap but gce.zone, gce.instance, gce.instance_id missing" in msg


def test_unknown_proxy_form(tmp_path: Path) -> None:
    msg = errmsg(write(tmp_path / "i", {"web": {"data": {"ssh": {"proxy": "telnet"}}}}))
    assert "host 'web'" in msg and "data.ssh.proxy" in msg


def test_missing_key_file(tmp_path: Path) -> None:
    msg = errmsg(write(tmp_path / "i", {"web": {"data": {"ssh": {"key_file": "nope"}}}}))
    assert "field ssh.key_file" in msg and "does not exist" in msg


def test_app_dir_with_shell_metacharacters_refused(tmp_path: Path) -> None:
    msg = errmsg(write(tmp_path / "i", {"web": {"data": {"app": {"dir": "/opt/$(reboot)"}}}}))
    assert "field data.app.dir" in msg
