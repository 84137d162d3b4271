"""Inventory -> SSH parameters: proxies, host key names (pure)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from fleet.inventory import load
from fleet.ssh import connection
from fleet.ssh.connection import iap_proxy_command, ssh_params


def inv_with(tmp_path: Path, data: dict, port: int = 22) -> object:
    d = tmp_path / "inv"
    d.mkdir()
    (d / "hosts.yaml").write_text(
        yaml.safe_dump({"web": {"hostname": "10.1.2.3", "port": port, "data": data}})
    )
    return load(str(d))


def test_iap_uses_gcloud_tunnel_and_compute_alias(tmp_path: Path) -> None:
    inv = inv_with(
        tmp_path,
        {
            "ssh": {"proxy": "iap"},
            "gce": {
                "project": "p-1",
                "zone": "europe-west1-b",
                "instance": "web-x",
                "instance_id": "123456789",
            },
        },
    )
    p = ssh_params(inv.hosts["web"], inv)
    assert p.host == "compute.123456789" and p.known_hosts_name == "compute.123456789"
    assert shlex.split(p.proxy_command) == [
        "gcloud",
        "compute",
        "start-iap-tunnel",
        "web-x",
        "22",
        "--listen-on-stdin",
        "--zone=europe-west1-b",
        "--project=p-1",
        "--verbosity=warning",
    ]


def test_iap_command_quotes_values() -> None:
    cmd = iap_proxy_command("a;b", "z $(x)", "p")
    assert shlex.split(cmd)[3] == "a;b" and "--zone=z $(x)" in shlex.split(cmd)


def test_direct_nonstandard_port_known_hosts_name(tmp_path: Path) -> None:
    inv = inv_with(tmp_path, {}, port=2201)
    p = ssh_params(inv.hosts["web"], inv)
    assert p.proxy_command is None and p.known_hosts_name == "[10.1.2.3]:2201"
    assert p.known_hosts.endswith("inv/known_hosts")


def test_jump_host(tmp_path: Path) -> None:
    inv = inv_with(tmp_path, {"ssh": {"proxy": {"jump": "ops@bastion:2022"}}})
    p = ssh_params(inv.hosts["web"], inv)
    argv = shlex.split(p.proxy_command)
    assert argv[0] == "ssh" and "StrictHostKeyChecking=yes" in argv and argv[-1] == "ops@bastion"
    assert argv[argv.index("-W") : argv.index("-W") + 2] == ["-W", "10.1.2.3:22"] and "2022" in argv


def test_custom_proxy_command_substitutes_host_and_port(tmp_path: Path) -> None:
    inv = inv_with(tmp_path, {"ssh": {"proxy": {"command": "nc %h %p"}, "host_key_alias": "web.internal"}})
    p = ssh_params(inv.hosts["web"], inv)
    assert p.proxy_command == "nc 10.1.2.3 22" and p.host == "web.internal"


def test_a_new_connection_leaves_the_shared_fabric_config_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection of the process shares one Fabric Config; a write into it re-merges it, and a
    thread reading it meanwhile finds it empty ('No attribute or config key found for gateway')."""
    shared = connection._shared_config()
    before = dict(shared)
    merges: list[object] = []
    monkeypatch.setattr(type(shared), "merge", lambda self: merges.append(self))
    conn = connection._connection_class()(
        host="127.0.0.1", user="deploy", port=2222, config=shared, connect_kwargs={}
    )
    monkeypatch.undo()
    assert merges == [] and dict(shared) == before
    assert conn.inline_ssh_env == shared.inline_ssh_env  # still what the Config says
