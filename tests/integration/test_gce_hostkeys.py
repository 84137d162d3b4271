"""Host keys from guest attributes, against real sshd servers and a local Compute endpoint (real
google-cloud-compute client): MIG members are trusted by the key their instance publishes under
`hostkeys/`, pinned under `compute.<instance-id>`; a stale pin, a wrong published key and an instance
that publishes nothing are refused. Never trust on first use."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet import inventory
from fleet.local.sshd_hosts import SshdFleet
from fleet.ssh.runner import command_step, run_on
from standins.compute_api import ComputeApi
from standins.compute_state import InMemoryCompute
from tests.fixtures.sshd import fab

pytestmark = pytest.mark.sshd

PROJECT = "my-project"
ZONE = "europe-west1-b"


@pytest.fixture
def mig(fresh_sshd: SshdFleet, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A MIG of two members whose SSH servers are the two sshd hosts, and an inventory of it."""
    backend = InMemoryCompute(action_seconds=0.1, op_seconds=0.05)
    names = backend.add_mig(PROJECT, ZONE, "dify-mig", size=2, base_instance_name="dify")
    server = ComputeApi(backend).start()
    servers = dict(zip(names, fresh_sshd.hosts, strict=False))
    ids = {i["name"]: i["id"] for i in backend.dump()["instances"]}
    inv = tmp_path / "prod"
    inv.mkdir()
    defaults = {
        "username": fresh_sshd.user,
        "data": {
            "ssh": {
                "key_file": str(fresh_sshd.key_file),
                "proxy": "none",
                "connect_timeout": 5,
                "connect_retries": 0,
            },
            "gce": {
                "project": PROJECT,
                "api_endpoint": server.url,
                "migs": [{"zone": ZONE, "name": "dify-mig"}],
                "discovery": "mig",
            },
        },
    }
    # the sshd servers listen on 127.0.0.1 ports: point each member there (a hosts.yaml override)
    hosts = {name: {"hostname": "127.0.0.1", "port": s.port} for name, s in servers.items()}
    (inv / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    (inv / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    (inv / "known_hosts").write_text("")

    def publish(name: str, key_line: str | None) -> None:
        attrs = {} if key_line is None else {f"hostkeys/{key_line.split()[0]}": key_line.split()[1]}
        backend.update_instance(PROJECT, ZONE, name, guest_attributes=attrs)

    for name, s in servers.items():
        publish(name, s.host_key_pub)
    yield {"inv": inv, "servers": servers, "ids": ids, "publish": publish, "api": server}
    server.stop()
    backend.close()


def run(inv_dir: Path) -> dict[str, Any]:
    inv = inventory.load(str(inv_dir))
    return {r.host: r for r in run_on(inv, list(inv.hosts.values()), command_step("echo ok"))}


def test_members_are_reached_with_the_keys_their_instances_publish(mig: dict[str, Any]) -> None:
    results = run(mig["inv"])
    assert {h: (r.status, r.stdout.strip()) for h, r in results.items()} == {
        n: ("ok", "ok") for n in mig["servers"]
    }
    assert (mig["inv"] / "known_hosts").read_text() == ""  # nothing written, nothing learnt on first use
    gets = [c for c in mig["api"].calls("instances.getGuestAttributes")]
    assert {c.path.split("/")[-2] for c in gets} == set(mig["servers"])
    assert all(c.query.get("queryPath") == "hostkeys/" for c in gets)

    r = fab("exec", "--inventory", str(mig["inv"]), "--cmd", "echo ok", "--json")
    assert r.returncode == 0, r.stderr
    assert all(x["status"] == "ok" for x in json.loads(r.stdout)["results"])


def test_a_stale_pin_is_refused(mig: dict[str, Any]) -> None:
    first, second = list(mig["servers"])
    stale = mig["servers"][second].host_key_pub.split()  # some other machine's key
    port = mig["servers"][first].port
    (mig["inv"] / "known_hosts").write_text(f"[compute.{mig['ids'][first]}]:{port} {stale[0]} {stale[1]}\n")
    results = run(mig["inv"])
    assert results[second].ok
    assert results[first].status == "unreachable"
    assert "not the one the instance publishes in its guest attributes" in (results[first].error or "")


def test_a_published_key_the_server_does_not_have_is_refused(mig: dict[str, Any]) -> None:
    first, second = list(mig["servers"])
    mig["publish"](first, mig["servers"][second].host_key_pub)  # the instance claims another key
    results = run(mig["inv"])
    assert results[first].status == "unreachable" and "MISMATCH" in (results[first].error or "")
    assert results[second].ok


def test_nothing_published_is_refused_with_how_to_fix_it_and_an_explicit_pin_works(
    mig: dict[str, Any],
) -> None:
    first, _ = list(mig["servers"])
    mig["publish"](first, None)
    results = run(mig["inv"])
    assert results[first].status == "unreachable"
    error = results[first].error or ""
    assert "publishes no SSH host keys" in error and "enable-guest-attributes=TRUE" in error

    key = mig["servers"][first].host_key_pub.split()
    port = mig["servers"][first].port
    (mig["inv"] / "known_hosts").write_text(f"[compute.{mig['ids'][first]}]:{port} {key[0]} {key[1]}\n")
    assert run(mig["inv"])[first].ok
