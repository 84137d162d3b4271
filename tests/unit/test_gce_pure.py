"""The pure parts of the GCE integration: host-key parsing and trust rules, MIG references, skip
reasons, the local Compute backend's status mapping."""

from __future__ import annotations

import base64
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleet.errors import FleetError, HostKeyError
from fleet.gcp.compute import mig_ref, natural_key
from fleet.inventory import FleetHost, Inventory, partition, skip_reason
from fleet.inventory.mig import beat_host, wanted
from fleet.local.compute_docker import Action, docker_time, gce_status
from fleet.ssh.connection import iap_proxy_command, ssh_params
from fleet.ssh.hostkeys import known_hosts_lines, parse_known_hosts, parse_published, trusted
from functions import fleet_contract as contract


def blob(key_type: str, payload: bytes = b"\x01" * 32) -> str:
    """An SSH public key blob naming `key_type` (what guest attributes carry, base64)."""
    raw = struct.pack(">I", len(key_type)) + key_type.encode() + struct.pack(">I", len(payload)) + payload
    return base64.b64encode(raw).decode()


ED = blob("ssh-ed25519")
ED2 = blob("ssh-ed25519", b"\x02" * 32)
RSA = blob("ssh-rsa", b"\x03" * 64)


# --------------------------------------------------------------------------- published keys


def test_published_keys_in_the_guest_agent_format_and_with_a_type_prefix() -> None:
    items = [
        ("hostkeys", "ssh-ed25519", ED),
        ("hostkeys", "ssh-rsa", f"ssh-rsa {RSA}"),
        ("other", "ssh-ed25519", ED2),  # another namespace: not host keys
    ]
    assert parse_published(items) == {"ssh-ed25519": ED, "ssh-rsa": RSA}


@pytest.mark.parametrize(
    "value",
    [
        RSA,  # the blob names ssh-rsa, the attribute says ssh-ed25519: a lie, dropped
        "not base64!",
        "",
        base64.b64encode(b"\x00\x00\x00").decode(),  # too short to name a type
    ],
)
def test_published_keys_that_do_not_hold_together_are_dropped(value: str) -> None:
    assert parse_published([("hostkeys", "ssh-ed25519", value)]) == {}


def test_unknown_key_types_are_ignored() -> None:
    assert parse_published([("hostkeys", "ssh-dss", blob("ssh-dss"))]) == {}


def test_known_hosts_lookup_plain_names_only() -> None:
    text = "\n".join(
        [
            "# comment",
            f"compute.1,other ssh-ed25519 {ED}",
            f"|1|hashed= ssh-ed25519 {ED2}",
            f"@revoked compute.1 ssh-rsa {RSA}",
            f"[compute.1]:2222 ssh-ed25519 {ED2}",
            "garbage",
        ]
    )
    assert parse_known_hosts(text, "compute.1") == {"ssh-ed25519": ED}
    assert parse_known_hosts(text, "[compute.1]:2222") == {"ssh-ed25519": ED2}
    assert parse_known_hosts(text, "compute.2") == {}


# --------------------------------------------------------------------------- trust rules


def test_published_keys_are_trusted_and_agreeing_pins_kept() -> None:
    assert trusted("compute.1", {}, {"ssh-ed25519": ED}, "kh") == {"ssh-ed25519": ED}
    both = trusted("compute.1", {"ssh-rsa": RSA, "ssh-ed25519": ED}, {"ssh-ed25519": ED}, "kh")
    assert list(both) == ["ssh-ed25519", "ssh-rsa"]  # strongest first: paramiko negotiates the first


def test_a_pin_that_disagrees_with_the_published_key_is_refused() -> None:
    with pytest.raises(HostKeyError, match="not the one the instance publishes") as err:
        trusted("compute.1", {"ssh-ed25519": ED}, {"ssh-ed25519": ED2}, "/inv/known_hosts")
    assert "delete the line for compute.1" in (err.value.hint or "")


def test_nothing_published_and_nothing_pinned_is_refused_with_how_to_fix_it() -> None:
    with pytest.raises(HostKeyError, match="publishes no SSH host keys") as err:
        trusted("compute.1", {}, {}, "/inv/known_hosts")
    hint = err.value.hint or ""
    assert "enable-guest-attributes=TRUE" in hint and "/inv/known_hosts" in hint and "compute.1" in hint


def test_an_explicit_pin_alone_is_enough() -> None:
    assert trusted("compute.1", {"ssh-ed25519": ED}, {}, "kh") == {"ssh-ed25519": ED}


def test_pin_lines() -> None:
    assert known_hosts_lines("compute.7", {"ssh-ed25519": ED}) == [f"compute.7 ssh-ed25519 {ED}"]


# --------------------------------------------------------------------------- MIG references


def test_mig_refs_zonal_and_regional() -> None:
    z = mig_ref({"project": "my-project", "zone": "europe-west1-b", "name": "dify-mig"})
    r = mig_ref({"project": "my-project", "region": "europe-west1", "name": "dify-mig"})
    assert not z.regional and r.regional and str(r) == "my-project/europe-west1/dify-mig"
    assert isinstance(z, contract.MigRef) and z == contract.MigRef.parse("my-project/europe-west1-b/dify-mig")


@pytest.mark.parametrize(
    "zone",
    ["europe-west1-b", "local-zone-a", "eu1-west-b", "europe-west1-b-c", "europe-west-b", "us-central1-ab"],
)
def test_the_operator_takes_the_zones_the_functions_take(zone: str) -> None:
    """One rule (functions/fleet_contract.py): inventory MIGs the functions would refuse are refused here."""
    spec = {"project": "my-project", "zone": zone, "name": "m"}
    if contract.is_zone(zone):
        assert str(mig_ref(spec)) == str(contract.MigRef.parse(f"my-project/{zone}/m"))
    else:
        with pytest.raises(FleetError, match="zone"):
            mig_ref(spec)


@pytest.mark.parametrize(
    "spec",
    [
        {"project": "my-project", "zone": "europe-west1-b", "region": "europe-west1", "name": "m"},
        {"project": "my-project", "name": "m"},
        {"project": "my-project", "zone": "europe-west1", "name": "m"},  # a region given as zone
        {"project": "my-project", "region": "europe-west1-b", "name": "m"},
        {"project": "my-project", "zone": "europe-west1-b", "name": "Bad_Name"},
        {"project": "x", "zone": "europe-west1-b", "name": "m"},
        {"project": "my-project", "zone": "europe-west1-b;rm", "name": "m"},
    ],
)
def test_bad_mig_refs_are_refused(spec: dict[str, str]) -> None:
    with pytest.raises(FleetError):
        mig_ref(spec)


def test_natural_order() -> None:
    assert sorted(["local-10", "local-2", "local-1"], key=natural_key) == ["local-1", "local-2", "local-10"]
    assert beat_host(["local-10", "local-2"], "first") == "local-2"
    assert beat_host(["local-10", "local-2"], None) is None


# --------------------------------------------------------------------------- skipping


def host(name: str, **gce: str) -> FleetHost:
    return FleetHost(name, "10.0.0.1", 22, "deploy", (), {"gce": gce})


def test_skip_reasons() -> None:
    assert skip_reason(host("a", status="RUNNING", current_action="NONE")) is None
    assert skip_reason(host("b")) is None  # a static host: nothing known, never skipped
    assert (
        skip_reason(host("c", status="STOPPING", current_action="DELETING"))
        == "instance is STOPPING, not RUNNING"
    )
    assert (
        skip_reason(host("d", status="RUNNING", current_action="VERIFYING"))
        == "MIG action VERIFYING in progress"
    )
    ready, skipped = partition([host("a", status="RUNNING"), host("e", status="TERMINATED")])
    assert [h.name for h in ready] == ["a"] and [(h.name, r) for h, r in skipped] == [
        ("e", "instance is TERMINATED, not RUNNING")
    ]


def test_when_discovery_runs() -> None:
    migs = {"data": {"gce": {"migs": [{"name": "m"}]}}}
    assert wanted(migs, {})
    assert not wanted(migs, {"static-1": {}})
    assert wanted({"data": {"gce": {"migs": [{"name": "m"}], "discovery": "mig"}}}, {"static-1": {}})
    assert not wanted({"data": {"gce": {"migs": [{"name": "m"}], "discovery": "off"}}}, {})
    assert not wanted({"data": {}}, {})


# --------------------------------------------------------------------------- SSH parameters


def test_mig_member_connects_under_its_instance_id_with_guest_keys(tmp_path: Path) -> None:
    inv = Inventory("prod", tmp_path, {}, {}, {})
    member = FleetHost(
        "dify-abcd",
        "10.0.0.5",
        22,
        "deploy",
        (),
        {
            "ssh": {
                "proxy": "iap",
                "iap_command": ["python", "-m", "fleet.local.iap_tunnel", "--state-dir", "/x y"],
            },
            "gce": {
                "project": "my-project",
                "zone": "europe-west1-b",
                "instance": "dify-abcd",
                "instance_id": "42",
                "mig": "my-project/europe-west1-b/dify-mig",
                "api_endpoint": "http://127.0.0.1:1",
            },
        },
    )
    p = ssh_params(member, inv)
    assert p.known_hosts_name == "compute.42"
    assert p.guest_keys is not None and p.guest_keys.endpoint == "http://127.0.0.1:1"
    assert p.proxy_command == (
        "python -m fleet.local.iap_tunnel --state-dir '/x y' dify-abcd 22 --listen-on-stdin "
        "--zone=europe-west1-b --project=my-project --verbosity=warning"
    )
    static = FleetHost("s", "10.0.0.6", 22, "deploy", (), {"gce": {"instance_id": "7"}})
    assert ssh_params(static, inv).guest_keys is None  # known_hosts only unless asked


def test_default_iap_program_is_gcloud() -> None:
    assert iap_proxy_command("i", "z", "p").startswith("gcloud compute start-iap-tunnel i 22 ")


# --------------------------------------------------------------------------- local backend


def test_instance_status_follows_container_and_action() -> None:
    assert gce_status("running", None) == "RUNNING"
    assert gce_status("exited", None) == "TERMINATED"
    assert gce_status(None, None) == "TERMINATED"
    assert gce_status(None, Action("CREATING")) == "PROVISIONING"
    assert gce_status("running", Action("RECREATING", replaces="old")) == "STAGING"
    assert gce_status("running", Action("RECREATING", replaces="old"), "old") == "STOPPING"
    assert gce_status("running", Action("DELETING")) == "STOPPING"
    assert gce_status("running", Action("RESTARTING")) == "RUNNING"


def test_docker_created_time() -> None:
    expected = datetime(2026, 11, 26, 7, 18, 40, 508123, tzinfo=UTC).timestamp()
    assert docker_time("2026-11-26T07:18:40.508123456Z") == pytest.approx(expected, abs=1e-6)
    assert docker_time("2026-11-26T08:18:40+01:00") == pytest.approx(expected - 0.508123, abs=1e-6)
    assert docker_time("garbage") == 0.0
