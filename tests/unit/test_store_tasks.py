"""`store.show` and `history` through the installed `fleet` program, against the Cloud Storage stand-in
and a temporary inventory with a `store:` section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from fleet.store import desired, history
from fleet.store.location import Store, parse
from standins.storage import StorageServer

FLEET = Path(sys.executable).with_name("fleet")


def run(*args: str, project: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FLEET), *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FLEET_PROJECT_DIR": str(project), **(env or {})},
        check=False,
    )


def _inventory(project: Path, store: dict[str, str] | None) -> None:
    inv = project / "inventory" / "prod"
    inv.mkdir(parents=True, exist_ok=True)
    (inv / "hosts.yaml").write_text(yaml.safe_dump({"vm-1": {"hostname": "10.0.0.5", "groups": ["app"]}}))
    (inv / "groups.yaml").write_text(yaml.safe_dump({"app": {}}))
    data: dict[str, object] = {"gce": {"project": "my-project"}}
    if store is not None:
        data["store"] = store
    (inv / "defaults.yaml").write_text(yaml.safe_dump({"username": "deploy", "data": data}))


@pytest.fixture
def project(tmp_path: Path, gcs_server: StorageServer, gcs_bucket: str) -> tuple[Path, Store]:
    _inventory(tmp_path, {"url": f"gs://{gcs_bucket}/fleets/prod", "endpoint": gcs_server.endpoint})
    return tmp_path, parse(f"gs://{gcs_bucket}/fleets/prod", endpoint=gcs_server.endpoint, project="p")


def test_store_show_prints_the_desired_release(project: tuple[Path, Store]) -> None:
    path, store = project
    r = run("store.show", "--inventory", "prod", "--json", project=path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["desired"] is None
    for version, by in (("1.0.0", "alice@laptop"), ("1.1.0", "bob@desk")):
        now, gen = desired.read(store)
        desired.move(
            store,
            desired.Desired(
                version=version,
                variants={"app": "a" * 12, "app+beat": "b" * 12},
                published_by=by,
                published_at="2026-11-29T15:00:00Z",
                action="rollout",
                rollout_id="ro-7",
                previous={"version": now.version, "variants": now.variants} if now else None,
            ),
            gen,
        )
    r = run("store.show", "--inventory", "prod", "--json", project=path)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["store"] == store.url and shown["generation"] > 0
    assert shown["desired"]["version"] == "1.1.0" and shown["desired"]["published_by"] == "bob@desk"
    assert shown["desired"]["previous"]["version"] == "1.0.0"
    r = run("store.show", "--inventory", "prod", project=path)
    assert r.returncode == 0, r.stderr
    for text in ("1.1.0", "b" * 12, "bob@desk", "rollout (ro-7)", "previous\t1.0.0"):
        assert text in r.stdout, text


def test_history_reads_the_central_history(project: tuple[Path, Store]) -> None:
    path, store = project
    t0 = datetime(2026, 11, 29, 15, 0, tzinfo=UTC)
    for i, inst in enumerate(["vm-1", None, "vm-gone"]):
        history.append(
            store,
            history.Event(
                action="agent-boot" if inst else "rollout",
                result="ok",
                actor=f"agent@{inst}" if inst else "alice@laptop",
                instance=inst,
                version=f"1.0.{i}",
                at=t0 + timedelta(minutes=i),
            ),
        )
    r = run("history", "--inventory", "prod", "--json", project=path)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["store"] == store.url
    assert [e["version"] for e in got["entries"]] == ["1.0.2", "1.0.1", "1.0.0"]  # newest first
    r = run("history", "--inventory", "prod", "--json", "--limit", "1", project=path)
    assert [e["version"] for e in json.loads(r.stdout)["entries"]] == ["1.0.2"]
    # a recreated VM's past is still there, though the instance is no longer in the inventory
    r = run("history", "--inventory", "prod", "--json", "--hosts", "vm-gone", project=path)
    assert [e["instance"] for e in json.loads(r.stdout)["entries"]] == ["vm-gone"]
    r = run("history", "--inventory", "prod", project=path)
    assert r.returncode == 0 and "agent@vm-gone" in r.stdout and "alice@laptop" in r.stdout


def test_without_a_store_show_says_so(tmp_path: Path) -> None:
    _inventory(tmp_path, None)
    r = run("store.show", "--inventory", "prod", project=tmp_path)
    assert r.returncode == 2
    assert "no release store" in r.stderr and "docs/release-store.md" in r.stderr


def test_a_malformed_store_url_is_an_inventory_error(tmp_path: Path) -> None:
    _inventory(tmp_path, {"url": "gs://my-bucket/prod"})
    r = run("store.show", "--inventory", "prod", project=tmp_path)
    assert r.returncode == 2
    assert "field data.store.url" in r.stderr and "is not gs://BUCKET/fleets/<fleet>" in r.stderr
    _inventory(tmp_path, {"url": "gs://my-bucket/fleets/prod", "endpoint": "http://8.8.8.8:80"})
    r = run("store.show", "--inventory", "prod", project=tmp_path)
    assert r.returncode == 2 and "not a local stand-in endpoint" in r.stderr


def test_the_storage_endpoint_comes_from_the_environment(
    tmp_path: Path, gcs_server: StorageServer, gcs_bucket: str
) -> None:
    _inventory(tmp_path, {"url": f"gs://{gcs_bucket}/fleets/prod"})  # no endpoint: the real API
    r = run(
        "store.show", "--inventory", "prod", "--json", project=tmp_path,
        env={"FLEET_STORAGE_ENDPOINT": gcs_server.endpoint},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown == {"store": f"gs://{gcs_bucket}/fleets/prod", "generation": 0, "desired": None}


def test_agent_publish_then_template_give_a_vm_everything_it_needs(project: tuple[Path, Store]) -> None:
    """agent.publish uploads the zipapp (agent/current names it); agent.template prints the metadata and
    writes the startup script that fetches exactly that object."""
    path, store = project
    r = run("agent.publish", "--inventory", "prod", "--json", project=path)
    assert r.returncode == 0, r.stderr
    published = json.loads(r.stdout)
    assert published["object"].startswith("fleets/prod/agent/fleet-agent-") and published["bytes"] > 10_000
    current = store.blob("agent/current").download_as_bytes().decode().strip()
    assert current.endswith(published["object"].rsplit("/", 1)[-1])
    script = path / "startup.sh"
    r = run("agent.template", "--inventory", "prod", "--roles", "app", "--beat", "first",
            "--script-file", str(script), "--json", project=path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["metadata"]["fleet-store"] == store.url and shown["metadata"]["fleet-beat"] == "first"
    assert shown["metadata"]["enable-guest-attributes"] == "TRUE"
    assert shown["metadata"]["fleet-deploy-user"] == "deploy"
    assert script.read_text() == shown["startup-script"]
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    r = run("agent.template", "--inventory", "prod", "--beat", "sometimes", project=path)
    assert r.returncode == 2 and "--beat 'sometimes'" in r.stderr
