"""Input edges: inventory values that would become ssh/gcloud options, validators that accepted a
trailing newline, remote scripts with unquoted paths or predictable /tmp names."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet import rollout
from fleet.commands import base, bootstrap, facts, health
from fleet.commands import release as rc
from fleet.errors import FleetError, InventoryError
from fleet.inventory import load
from fleet.rollout import planning
from fleet.ssh.connection import iap_proxy_command, jump_proxy_command, ssh_params

GCE = {"project": "p-123456", "zone": "europe-west1-b", "instance": "web-1", "instance_id": "42"}


def inv_dir(tmp_path: Path, host: dict[str, Any], name: str = "web") -> Path:
    d = tmp_path / "inv"
    d.mkdir(exist_ok=True)
    (d / "hosts.yaml").write_text(yaml.safe_dump({name: host}))
    return d


@pytest.mark.parametrize(
    ("host", "field"),
    [
        ({"hostname": "-oProxyCommand=touch /tmp/x"}, "hostname"),
        ({"hostname": "-v"}, "hostname"),
        ({"hostname": "10.0.0.1\n"}, "hostname"),
        ({"hostname": "a b"}, "hostname"),
        ({"username": "-oProxyCommand=x"}, "username"),
        ({"username": "deploy\n"}, "username"),
        ({"data": {"ssh": {"proxy": {"jump": "-Ejournal"}}}}, "data.ssh.proxy"),
        ({"data": {"ssh": {"proxy": {"jump": "ops@-v"}}}}, "data.ssh.proxy"),
        ({"data": {"ssh": {"proxy": {"jump": "bastion\n"}}}}, "data.ssh.proxy"),
        ({"data": {"ssh": {"host_key_alias": "-x"}}}, "data.ssh.host_key_alias"),
        (
            {"data": {"ssh": {"proxy": "iap"}, "gce": {**GCE, "instance": "--project=evil"}}},
            "data.gce.instance",
        ),
        ({"data": {"ssh": {"proxy": "iap"}, "gce": {**GCE, "instance": "web-1\n"}}}, "data.gce.instance"),
        ({"data": {"ssh": {"proxy": "iap"}, "gce": {**GCE, "zone": "-x"}}}, "data.gce.zone"),
        ({"data": {"ssh": {"proxy": "iap"}, "gce": {**GCE, "project": "-x"}}}, "data.gce.project"),
        ({"data": {"ssh": {"proxy": "iap"}, "gce": {**GCE, "project": "p-123456\n"}}}, "data.gce.project"),
        ({"data": {"gce": {"region": "--format=x"}}}, "data.gce.region"),
        ({"data": {"ssh": {"proxy": "iap"}, "gce": {**GCE, "instance_id": "42\n"}}}, "data.gce.instance_id"),
    ],
)
def test_option_like_or_newline_inventory_values_rejected(tmp_path: Path, host: dict, field: str) -> None:
    with pytest.raises(InventoryError, match=re.escape(f"field {field}")):
        load(str(inv_dir(tmp_path, host)))


def test_good_values_still_load(tmp_path: Path) -> None:
    host = {
        "hostname": "web-1.internal",
        "username": "deploy",
        "data": {
            "ssh": {"proxy": "iap", "host_key_alias": "[web]:22"},
            "gce": {**GCE, "region": "europe-west1"},
        },
    }
    inv = load(str(inv_dir(tmp_path, host)))
    assert ssh_params(inv.hosts["web"], inv).host == "[web]:22"
    for good in ("10.0.0.1", "::1", "fe80::1%eth0", "web_1.example.com"):
        load(str(inv_dir(tmp_path, {"hostname": good}, name="h")))
    load(str(inv_dir(tmp_path, {"data": {"ssh": {"proxy": {"jump": "ops@bastion.example:2022"}}}}, name="h")))


@pytest.mark.parametrize("name", ["web\n", "-web"])
def test_host_and_group_names_full_match(tmp_path: Path, name: str) -> None:
    with pytest.raises(InventoryError, match="invalid host name"):
        load(str(inv_dir(tmp_path, {}, name=name)))
    d = tmp_path / "g"
    d.mkdir()
    (d / "hosts.yaml").write_text(yaml.safe_dump({"web": {}}))
    (d / "groups.yaml").write_text(yaml.safe_dump({name: {}}))
    with pytest.raises(InventoryError, match="invalid group name"):
        load(str(d))


def test_jump_destination_after_double_dash() -> None:
    argv = shlex.split(jump_proxy_command("ops@bastion:2022", "10.0.0.1", 22))
    assert argv[-2:] == ["--", "ops@bastion"] and argv.index("-p") < argv.index("--")
    with pytest.raises(FleetError, match="jump host"):
        jump_proxy_command("-oProxyCommand=x", "10.0.0.1", 22)
    with pytest.raises(FleetError):
        jump_proxy_command("bastion", "-oProxyCommand=x", 22)


@pytest.mark.parametrize("args", [("-x", "z", "p"), ("i", "-z", "p"), ("i", "z", "-p"), ("i\n", "z", "p")])
def test_iap_command_refuses_option_like_values(args: tuple[str, str, str]) -> None:
    with pytest.raises(FleetError):
        iap_proxy_command(*args)


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (base.name, "web\n"),
        (base.version, "1.2.3\n"),
        (base.release_id, "0123456789ab\n"),
        (base.env_key, "KEY\n"),
        (lambda v: rc.Layout(project=v), "dify\n"),
        (lambda v: rc.Layout(root=v), "/opt/fleet\n"),
        (lambda v: bootstrap.bootstrap_command(rc.Layout(), v), "deploy\n"),
        (lambda v: rc.stage(rc.Layout(), "0" * 12, {".env": v}), "a" * 64 + "\n"),
        (lambda v: rc.prune(rc.Layout(), [], [v]), "nginx:1\n"),
    ],
)
def test_validators_refuse_a_trailing_newline(check: Any, value: str) -> None:
    with pytest.raises(FleetError):
        check(value)


def test_pick_release_id_full_match() -> None:
    rels = [rc.ReleaseDir("0123456789ab", 1, "1.0")]
    assert rollout.pick_release(rels, "0123", "h") == "0123456789ab"
    assert planning._RID_RE.fullmatch("0123\n") is None


def test_compose_lock_message_path_quoted() -> None:
    layout = rc.Layout(root="/opt/it's here")
    script = "\n".join(rc.compose_lock(layout))
    # every word parses (an unquoted ' in the echo would leave the script unbalanced)
    for line in script.splitlines():
        shlex.split(line)
    assert (
        shlex.quote("another compose operation on this host holds /opt/it's here/state/compose.lock")
        in script
    )


def test_facts_paths_quoted_whole() -> None:
    script = facts.facts_command("/opt/my app").script
    assert "'/opt/my app/current'" in script and "'/opt/my app/current/release.json'" in script


def test_health_probe_uses_no_predictable_tmp_name() -> None:
    script = health.health_command(8080).script
    assert "/tmp/" not in script and "$$" not in script and "mktemp" in script
    assert 'rm -f "$f"' in script
