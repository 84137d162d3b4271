"""The fleet inventory as a Nornir inventory plugin, and host selection with Nornir's filters (no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleet.errors import FleetError, InventoryError
from fleet.inventory import choose, load, select_hosts
from fleet.inventory.nornir_plugin import PLUGIN_NAME, FleetInventory, FleetNornirHost, fleet_host
from fleet.inventory.selection import select
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
    assert list(nr.inventory.hosts) == ["a3", "a1"]  # only the hosts asked for, in that order
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


def test_plugin_holds_the_very_hosts_it_is_given(good: Path) -> None:  # noqa: F811
    import dataclasses

    inv = load(str(good))
    moved = dataclasses.replace(inv.hosts["a2"], port=2200)
    ninv = FleetInventory(inv, hosts=[moved]).load()
    assert fleet_host(ninv.hosts["a2"]) is moved and ninv.hosts["a2"].port == 2200


def test_fleet_host_refuses_a_foreign_nornir_host() -> None:
    from nornir.core.inventory import Host

    with pytest.raises(TypeError, match="not a fleet host"):
        fleet_host(Host(name="x"))


def _legacy_select(inv: Any, hosts: Any = None, group: Any = None, where: Any = ()) -> list[str]:
    """The selection as it was before Nornir's filters (kept here as the oracle for the same results)."""
    chosen = list(inv.hosts.values())
    if hosts:
        chosen = [h for h in chosen if h.name in set(hosts)]
    if group:
        chosen = [h for h in chosen if group in h.groups]
    for expr in where:
        key, _, value = expr.partition("=")
        key, value = key.strip(), value.strip()
        kept = []
        for h in chosen:
            actual: Any
            if key in ("name", "hostname", "port", "username"):
                actual = getattr(h, key)
            elif key == "groups":
                actual = list(h.groups)
            else:
                actual = h.get(key)
            if isinstance(actual, list):
                ok = value in [str(a) for a in actual]
            else:
                ok = actual is not None and str(actual) == value
            if ok:
                kept.append(h)
        chosen = kept
    return [h.name for h in chosen]


HOSTS_CHOICES = [None, ["a1"], ["a3", "a1"], ["a2", "a3"], ["a1", "a1"]]
GROUP_CHOICES = [None, "eu", "us", "app"]
WHERE_CHOICES: list[list[str]] = [
    [],
    ["gce.zone=europe-west1-b"],
    ["roles=beat"],
    ["roles=app"],
    ["port=22"],
    ["port=2222"],
    ["username=ops"],
    ["hostname=10.0.0.2"],
    ["name=a3"],
    ["groups=app"],
    ["groups=us"],
    ["vars.X=app"],
    ["ssh.keepalive=5"],
    ["gce.zone = us-east1-b"],
    ["gce.nothing=x"],
    ["gce=x"],
    ["port=22", "username=ops"],
    ["roles=app", "vars.Y=eu"],
]


@pytest.mark.parametrize("where", WHERE_CHOICES, ids=lambda w: ",".join(w) or "none")
def test_nornir_filters_select_what_the_old_selection_did(good: Path, where: list[str]) -> None:  # noqa: F811
    inv = load(str(good))
    for hosts in HOSTS_CHOICES:
        for group in GROUP_CHOICES:
            got = [h.name for h in select_hosts(inv, hosts=hosts, group=group, where=where)]
            assert got == _legacy_select(inv, hosts, group, where), (hosts, group, where)


def test_selection_is_a_nornir_filter_over_the_plugin_inventory(good: Path) -> None:  # noqa: F811
    from nornir.core.filter import AND, F

    from fleet.inventory.selection import Setting, selection_filter

    inv = load(str(good))
    flt = selection_filter(inv, hosts=["a1", "a2"], group="app", where=["roles=app"])
    assert isinstance(flt, AND)
    assert selection_filter(inv) is None
    assert isinstance(selection_filter(inv, where=["port=22"]), Setting)
    assert isinstance(selection_filter(inv, group="eu"), F)
    ninv = FleetInventory(inv).load().filter(flt)  # type: ignore[arg-type]
    assert list(ninv.hosts) == ["a1", "a2"]
    with pytest.raises(NotImplementedError):  # F's NOT would compare the raw values: refused
        ~Setting("port", "22")


@pytest.mark.parametrize(
    ("kwargs", "message", "hint"),
    [
        ({"hosts": ["a1", "nope", "gone"]}, "unknown host(s): nope, gone", "known hosts: a1, a2, a3"),
        ({"group": "nope"}, "unknown group 'nope'", "known groups: app, eu, us"),
        ({"where": ["novalue"]}, "--where 'novalue' is not KEY=VALUE", "e.g. --where gce.zone="),
        ({"where": ["=x"]}, "--where '=x' is not KEY=VALUE", "e.g. --where gce.zone="),
        # checked in this order, whatever the other filters would leave
        ({"hosts": ["nope"], "group": "nope"}, "unknown host(s): nope", "known hosts"),
        ({"group": "us", "where": ["roles=beat", "bad"]}, "--where 'bad' is not KEY=VALUE", "e.g."),
    ],
)
def test_selection_errors_name_what_is_unknown(
    good: Path,  # noqa: F811
    kwargs: dict[str, Any],
    message: str,
    hint: str,
) -> None:
    with pytest.raises(InventoryError) as exc:
        select_hosts(load(str(good)), **kwargs)
    assert exc.value.what == message
    assert hint in (exc.value.hint or "")


def test_choose_is_the_one_selection_for_cli_and_rollout(
    good: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fleet.cli import common
    from fleet.rollout import service

    inv, chosen = choose(str(good), "a3, a1", "eu", ["username=ops"])
    assert inv.name == "inv" and [h.name for h in chosen] == ["a3"]
    with pytest.raises(FleetError) as exc:
        choose(str(good), None, "us", ["roles=beat"])
    assert exc.value.what == "no host matches the selection"
    assert exc.value.hint == "check --hosts/--group/--where; `fab hosts --inventory NAME` lists the hosts"
    calls: list[tuple[Any, ...]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise FleetError("stop here")

    monkeypatch.setattr("fleet.inventory.choose", spy)
    with pytest.raises(FleetError, match="stop here"):
        common.select(str(good), "a1", None, None)
    with pytest.raises(FleetError, match="stop here"):
        service.perform(service.Request("rollout", str(good), version="1", hosts="a2", dry_run=True))
    assert calls == [(str(good), "a1", None, None), (str(good), "a2", None, ())]


def test_unready_mig_members_are_skipped_and_named(
    good: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    import dataclasses

    from fleet.inventory import FleetHost

    base = load(str(good))

    def member(name: str, **gce: str) -> FleetHost:
        return FleetHost(name, "10.0.0.1", 22, "deploy", ("app",), {"gce": gce, "roles": ["app"]})

    members = [
        member("m1", status="RUNNING", current_action="NONE"),
        member("m2", status="STOPPING"),
        member("m3", status="RUNNING", current_action="RECREATING"),
    ]
    inv = dataclasses.replace(base, hosts={h.name: h for h in members})
    assert [h.name for h in select(inv, group="app")] == ["m1"]
    err = capsys.readouterr().err
    assert "skipped m2: instance is STOPPING, not RUNNING" in err
    assert "skipped m3: MIG action RECREATING in progress" in err
    assert [h.name for h in select(inv, include_unready=True)] == ["m1", "m2", "m3"]
    assert [h.name for h in select(inv, where=["gce.status=RUNNING"])] == ["m1"]
    assert [h.name for h in select(inv, where=["gce.status=RUNNING"], include_unready=True)] == ["m1", "m3"]
