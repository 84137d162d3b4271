"""The fleet inventory as a Nornir inventory plugin, and host selection with Nornir's filters (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.inventory import load
from fleet.inventory.nornir_plugin import PLUGIN_NAME, FleetInventory, FleetNornirHost, fleet_host
from tests.unit.test_inventory import good  # noqa: F401 - the shared inventory fixture


def test_build_nornir_goes_through_the_plugin_and_carries_one_host_model(
    good: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nornir.core.plugins.inventory import InventoryPluginRegister

    from fleet.ssh.connection import CONNECTION_NAME
    from fleet.ssh.runner import build_nornir

    monkeypatch.chdir(tmp_path)
    inv = load(str(good))
    nr = build_nornir(inv, [inv.hosts["a3"], inv.hosts["a1"]], workers=3)
    assert InventoryPluginRegister.available[PLUGIN_NAME] is FleetInventory
    assert nr.config.inventory.plugin == PLUGIN_NAME
    assert list(nr.inventory.hosts) == ["a1", "a3"]  # inventory order, only the hosts asked for
    a1 = nr.inventory.hosts["a1"]
    assert isinstance(a1, FleetNornirHost)
    assert fleet_host(a1) is inv.hosts["a1"]
    assert a1.data is inv.hosts["a1"].data  # one host model: the same dict, not a copy
    assert "fleet_host" not in a1.data
    assert (a1.hostname, a1.port, a1.username) == ("10.0.0.1", 22, "deploy")
    assert a1["gce"]["zone"] == "europe-west1-b" and a1.get("vars") == {"X": "app", "Y": "eu", "Z": "d"}
    assert [g.name for g in a1.groups] == ["eu", "app"]
    assert a1.has_parent_group("app") and not a1.has_parent_group("us")
    assert [g.name for g in nr.inventory.groups["eu"].groups] == ["app"]
    assert nr.inventory.defaults.data["ssh"]["connect_timeout"] == 3
    params = a1.connection_options[CONNECTION_NAME].extras["params"]  # type: ignore[index]
    assert (params.address, params.user) == ("10.0.0.1", "deploy")
    assert nr.runner.num_workers == 3  # type: ignore[attr-defined]
    assert not (tmp_path / "nornir.log").exists()  # Nornir's logging stays off


def test_plugin_without_a_host_list_holds_every_host(good: Path) -> None:  # noqa: F811
    inv = load(str(good))
    ninv = FleetInventory(inv).load()
    assert list(ninv.hosts) == list(inv.hosts)
    assert all(h.connection_options == {} for h in ninv.hosts.values())


def test_fleet_host_refuses_a_foreign_nornir_host() -> None:
    from nornir.core.inventory import Host

    with pytest.raises(TypeError, match="not a fleet host"):
        fleet_host(Host(name="x"))
