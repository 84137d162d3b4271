"""Bootstrap, deploy, status, history and diff on the local fleet, over real SSH and real Compose.

The tests run in file order on the shared session fleet: bootstrap, then 1.0.0, then 1.1.0, with the
refusals in between checked to leave `current` untouched everywhere.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.sshd import fab

pytestmark = pytest.mark.localfleet


def run_json(*args: str) -> tuple[int, Any, str]:
    r = fab(*args, "--json")
    try:
        payload = json.loads(r.stdout) if r.stdout.strip() else None
    except ValueError:
        pytest.fail(f"not JSON (exit {r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")
    return r.returncode, payload, r.stdout + r.stderr


def inv_args(fleet: Any) -> list[str]:
    return ["--inventory", str(fleet.inventory_dir)]


def remote(fleet: Any, cmd: str, hosts: str | None = None) -> dict[str, dict[str, Any]]:
    args = ["exec", *inv_args(fleet), "--cmd", cmd]
    if hosts:
        args += ["--hosts", hosts]
    _code, payload, out = run_json(*args)
    assert payload is not None, out
    return {r["host"]: r for r in payload["results"]}


def currents(fleet: Any) -> dict[str, str]:
    res = remote(fleet, "readlink /opt/fleet/dify/current || echo none")
    return {h: r["stdout"] for h, r in res.items()}


def assert_current_unchanged(fleet: Any, before: dict[str, str]) -> None:
    after = currents(fleet)
    assert {h: after.get(h) for h in before} == before


def secret_values(fleet: Any) -> list[str]:
    return [p.read_text().strip() for p in (Path(fleet.inventory_dir) / "secrets").iterdir() if p.is_file()]


ALL_OUTPUT: list[str] = []  # every CLI output of this module, searched for secrets at the end


def fab_logged(*args: str) -> tuple[int, Any, str]:
    code, payload, out = run_json(*args)
    ALL_OUTPUT.append(out)
    return code, payload, out


def test_bootstrap_is_idempotent(local_fleet: Any) -> None:
    code, first, out = fab_logged("bootstrap", *inv_args(local_fleet))
    assert code == 0, out
    assert all(h["status"] == "ok" for h in first["hosts"])
    code, second, out = fab_logged("bootstrap", *inv_args(local_fleet))
    assert code == 0, out
    for h in second["hosts"]:
        assert h["changed"] == [], h  # a second run changes nothing
        assert "docker engine running" in h["unchanged"] and "user deploy in group docker" in h["unchanged"]


def test_missing_secret_refused_before_anything_changes(local_fleet: Any, tmp_path: Path) -> None:
    """The local fleet's secrets live in Secret Manager: one that is not there stops the deploy."""
    import yaml

    before = currents(local_fleet)
    defaults = Path(local_fleet.inventory_dir) / "defaults.yaml"
    saved = defaults.read_text()
    doc = yaml.safe_load(saved)
    assert "secret_manager" in doc["data"]["secrets"]["SECRET_KEY"]
    doc["data"]["secrets"]["SECRET_KEY"] = {"secret_manager": "no-such-secret"}
    defaults.write_text(yaml.safe_dump(doc))
    try:
        code, payload, out = fab_logged("deploy", *inv_args(local_fleet))
    finally:
        defaults.write_text(saved)
    assert code == 2 and payload is None
    assert "secret SECRET_KEY" in out and "no-such-secret" in out and "nothing was changed on any host" in out
    assert_current_unchanged(local_fleet, before)


def test_deploy_1_0_0_to_all(local_fleet: Any) -> None:
    code, report, out = fab_logged("deploy", *inv_args(local_fleet), "--version", "1.0.0")
    assert code == 0, out
    assert report["ok"] and report["stopped_at"] is None
    for h in report["hosts"]:
        assert h["result"] == "deployed" and h["to_version"] == "1.0.0" and h["bytes_sent"] > 0, h


def test_status_shows_release_services_and_no_drift(local_fleet: Any) -> None:
    code, status, out = fab_logged("status", *inv_args(local_fleet))
    assert code == 0, out
    hosts = status["hosts"]
    assert len(hosts) == len(local_fleet.instances())
    for h in hosts:
        assert h["version"] == "1.0.0" and h["drained"] is False and h["drift"] == []
        assert h["health"] == {"code": 200, "version": "1.0.0"}
        assert h["services"]["api"] == "running/healthy" and h["services"]["nginx"].startswith("running")
        assert h["last"]["action"] == "deploy" and h["last"]["result"] == "ok"
    beat = [h for h in hosts if "worker_beat" in h["services"]]
    assert len(beat) == 1  # the singleton runs on exactly one host


def test_redeploy_is_a_noop_and_sends_no_bundle_bytes(local_fleet: Any) -> None:
    code, report, out = fab_logged("deploy", *inv_args(local_fleet), "--version", "1.0.0")
    assert code == 0, out
    for h in report["hosts"]:
        assert h["result"] == "unchanged" and h["bytes_sent"] == 0, h


def test_env_file_mode_and_owner(local_fleet: Any) -> None:
    res = remote(local_fleet, "stat -c '%a %U' /opt/fleet/dify/current/.env")
    assert {r["stdout"] for r in res.values()} == {"600 deploy"}


def test_unknown_version_stops_before_any_switch(local_fleet: Any) -> None:
    before = currents(local_fleet)
    code, report, out = fab_logged("deploy", *inv_args(local_fleet), "--version", "9.9.9")
    assert code == 1, out
    assert report["stopped_at"] == "preflight"
    errors = [h["error"] for h in report["hosts"] if h["result"] == "failed"]
    assert errors and all("pull" in e for e in errors), errors
    assert_current_unchanged(local_fleet, before)


def test_host_without_docker_named_and_nothing_switched(local_fleet: Any) -> None:
    victim = local_fleet.instances()[-1].name
    before = currents(local_fleet)
    remote(local_fleet, "sudo mv /usr/bin/docker /usr/bin/docker.away", hosts=victim)
    try:
        code, report, out = fab_logged("deploy", *inv_args(local_fleet), "--version", "1.1.0")
    finally:
        remote(local_fleet, "sudo mv /usr/bin/docker.away /usr/bin/docker", hosts=victim)
    assert code == 1, out
    assert report["stopped_at"] == "preflight"
    bad = {h["host"]: h for h in report["hosts"] if h["result"] == "failed"}
    assert list(bad) == [victim] and "docker: not installed" in bad[victim]["error"]
    assert "fab bootstrap" in bad[victim]["error"]
    assert_current_unchanged(local_fleet, before)


def test_full_disk_refused(local_fleet: Any, tmp_path: Path) -> None:
    """The free-space floor comes from the inventory; one far above the disk size is a full disk."""
    before = currents(local_fleet)
    inv = Path(local_fleet.inventory_dir)
    defaults = inv / "defaults.yaml"
    saved = defaults.read_text()
    import yaml

    doc = yaml.safe_load(saved)
    doc["data"]["app"]["min_free_mb"] = 10**9
    defaults.write_text(yaml.safe_dump(doc))
    try:
        code, report, out = fab_logged("deploy", *inv_args(local_fleet), "--version", "1.1.0")
    finally:
        defaults.write_text(saved)
    assert code == 1, out
    assert report["stopped_at"] == "preflight"
    assert all("disk full" in h["error"] for h in report["hosts"]), report
    assert_current_unchanged(local_fleet, before)


def test_diff_masks_secrets(local_fleet: Any) -> None:
    code, payload, out = fab_logged("diff", *inv_args(local_fleet), "--version", "1.1.0")
    assert code == 0, out
    for h in payload["hosts"]:
        changes = {c["key"]: c for c in h["diff"]["env"]}
        assert (changes["DIFY_VERSION"]["old"], changes["DIFY_VERSION"]["new"]) == ("'1.0.0'", "'1.1.0'")
        assert h["env"]["SECRET_KEY"] == "******"


def test_deploy_1_1_0_switches(local_fleet: Any) -> None:
    code, report, out = fab_logged("deploy", *inv_args(local_fleet), "--version", "1.1.0")
    assert code == 0, out
    for h in report["hosts"]:
        assert h["result"] == "deployed" and h["from_version"] == "1.0.0" and h["to_version"] == "1.1.0"
    code, status, out = fab_logged("status", *inv_args(local_fleet))
    assert {h["health"]["version"] for h in status["hosts"]} == {"1.1.0"}
    assert all(h["previous"] and h["drift"] == [] for h in status["hosts"])


def test_a_plugin_stored_through_one_instance_is_read_through_another(local_fleet: Any) -> None:
    """Nothing stateful on the VMs' disks: a plugin package and a file uploaded through one instance's
    nginx land in the fleet's bucket (the Cloud Storage stand-in) and are read through another's."""
    import hashlib
    import os
    import urllib.parse
    import urllib.request

    from fleet.local.config import FILES_BUCKET

    first, second = local_fleet.instances()[:2]

    def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read()

    def in_bucket(name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        url = f"{local_fleet.config.storage_endpoint}/storage/v1/b/{FILES_BUCKET}/o/{quoted}?alt=media"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return bytes(resp.read())

    package = b"PK\x03\x04 plugin " + os.urandom(4096)
    digest = hashlib.sha256(package).hexdigest()
    code, raw = call(first.http_port, "POST", "/console/api/workspaces/current/plugin/upload/pkg", package)
    reply = json.loads(raw)
    assert code == 200 and reply["data"]["location"] == f"gs://{FILES_BUCKET}/plugin_packages/{digest}", reply
    assert in_bucket(f"plugin_packages/{digest}") == package
    assert call(second.http_port, "GET", f"/console/api/workspaces/current/plugin/pkg/{digest}") == (
        200,
        package,
    )

    data = os.urandom(2048)
    code, raw = call(second.http_port, "POST", "/console/api/files/upload", data)
    meta = json.loads(raw)
    assert code == 201 and in_bucket(meta["key"]) == data, meta
    assert call(first.http_port, "GET", f"/console/api/files/{meta['id']}") == (200, data)


def test_history_newest_first(local_fleet: Any) -> None:
    # the fleet's central history in the release store: each whole-fleet deploy, newest first
    code, payload, out = fab_logged("history", *inv_args(local_fleet))
    assert code == 0, out
    fleet_wide = [e for e in payload["entries"] if e["action"] == "deploy" and e["result"] == "ok"]
    assert [e["version"] for e in fleet_wide[:2]] == ["1.1.0", "1.0.0"]
    times = [datetime.fromisoformat(e["at"].replace("Z", "+00:00")) for e in payload["entries"]]
    assert times == sorted(times, reverse=True)
    # and every host's own history.jsonl, over SSH
    code, payload, out = fab_logged("history", *inv_args(local_fleet), "--on-hosts")
    assert code == 0, out
    entries = payload["entries"]
    times = [e["time"] for e in entries]
    assert times == sorted(times, reverse=True)
    per_host = [
        e for e in entries if e["host"] == "local-1" and e["action"] == "deploy" and e["result"] == "ok"
    ]
    assert [e["version"] for e in per_host[:2]] == ["1.1.0", "1.0.0"]


def test_secrets_never_appear_in_outputs_or_history(local_fleet: Any) -> None:
    secrets = secret_values(local_fleet)
    assert secrets and all(len(s) >= 8 for s in secrets)
    res = remote(local_fleet, "cat /opt/fleet/dify/history.jsonl /opt/fleet/dify/current/release.json")
    texts = ALL_OUTPUT + [r["stdout"] for r in res.values()]
    for s in secrets:
        assert not any(s in t for t in texts), "a secret value leaked"
    # while the .env on the host does hold them (it is the only place they belong)
    env = remote(local_fleet, "cat /opt/fleet/dify/current/.env", hosts="local-1")["local-1"]["stdout"]
    assert any(s in env for s in secrets)
