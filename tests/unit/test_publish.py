"""A deploy that succeeded on the whole fleet becomes the release store's desired release: sealed per
role set with the Secret Manager versions it was rendered from (real rendering, the real Storage and
Secret Manager clients against their stand-ins; the SSH part is stubbed, as in test_deploy_service)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.errors import FleetError
from fleet.release import sealed as sealing
from fleet.rollout import deploy as dp
from fleet.rollout import publish
from fleet.store import desired, history
from fleet.store.location import parse
from standins.secretmanager_api import LocalSecretManager
from standins.storage import StorageServer
from tests.unit.test_bundle import SECRETS, VARS

PROJECT = "my-project"


@pytest.fixture
def sm() -> Iterator[LocalSecretManager]:
    with LocalSecretManager() as server:
        for key, value in SECRETS.items():
            server.put(PROJECT, key.lower().replace("_", "-"), value)
        yield server


@pytest.fixture
def inv(tmp_path: Path, gcs_server: StorageServer, gcs_bucket: str, sm: LocalSecretManager) -> str:
    root = tmp_path / "inv"
    root.mkdir()
    hosts = {
        "w1": {"hostname": "127.0.0.1", "port": 2201, "data": {"roles": ["app", "beat"]}},
        "w2": {"hostname": "127.0.0.1", "port": 2202},
        "w3": {"hostname": "127.0.0.1", "port": 2203},
    }
    (root / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    refs = {
        k: {"secret_manager": f"projects/{PROJECT}/secrets/{k.lower().replace('_', '-')}"} for k in SECRETS
    }
    data = {
        "roles": ["app"],
        "vars": VARS,
        "secrets": refs,
        "gce": {"secretmanager_endpoint": sm.url},
        "store": {"url": f"gs://{gcs_bucket}/fleets/prod", "endpoint": gcs_server.endpoint},
    }
    (root / "defaults.yaml").write_text(yaml.safe_dump({"data": data}))
    return str(root)


def store_of(inv: str) -> Any:
    from fleet import inventory
    from fleet.store.location import from_inventory

    store = from_inventory(inventory.load(inv))
    assert store is not None
    return store


def stub_ssh(monkeypatch: pytest.MonkeyPatch, failed: str | None = None) -> list[str]:
    deployed: list[str] = []

    def deploy(inventory: Any, hosts: Any, bundles: Any, **kw: Any) -> dp.DeployReport:
        deployed.extend(h.name for h in hosts)
        results = [dp.DeployOutcome(h.name, "failed" if h.name == failed else "deployed") for h in hosts]
        return dp.DeployReport(next(iter(bundles.values())).version, results)

    monkeypatch.setattr(dp, "deploy", deploy)
    return deployed


def test_a_whole_fleet_deploy_moves_desired_to_its_sealed_variants(
    inv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub_ssh(monkeypatch)
    from fleet import inventory

    loaded = inventory.load(inv)
    bundles = dp.render_all(loaded, list(loaded.hosts.values()), version="1.1.0")
    report = dp.deploy_release(loaded, bundles=bundles, warn=print)
    assert report.ok
    store = store_of(inv)
    found, _generation = desired.read(store)
    assert found is not None and found.version == "1.1.0" and found.action == "deploy"
    assert found.variants == {"app": bundles["w2"].release_id, "app+beat": bundles["w1"].release_id}
    assert bundles["w2"].release_id == bundles["w3"].release_id != bundles["w1"].release_id
    # what a VM reads: the manifest and archive, with the pinned versions; no value in them
    from fleet.store import releases

    manifest = releases.read_manifest(store, found.variants["app"])
    archive = releases.read_archive(store, found.variants["app"])
    assert manifest is not None and archive is not None
    refs = sealing.secret_refs(manifest)
    assert refs["DB_PASSWORD"] == f"projects/{PROJECT}/secrets/db-password/versions/1"
    stored = str(manifest).encode() + archive
    assert not [v for v in SECRETS.values() if v.encode() in stored]
    files = sealing.unseal(manifest, archive, {k: SECRETS[k] for k in refs})
    assert files == {p: (f.data, f.mode) for p, f in bundles["w2"].files.items()}
    events = history.read(store)
    assert [(e["action"], e["result"], e["version"]) for e in events] == [("deploy", "ok", "1.1.0")]


def test_a_partial_or_failed_deploy_leaves_desired_where_it_was(
    inv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet import inventory

    loaded = inventory.load(inv)
    warnings: list[str] = []
    stub_ssh(monkeypatch)
    assert dp.deploy_release(loaded, [loaded.hosts["w2"]], version="1.1.0", warn=warnings.append).ok
    assert any("covered 1 of 3 hosts" in w for w in warnings), warnings
    stub_ssh(monkeypatch, failed="w3")
    assert not dp.deploy_release(loaded, version="1.1.0", warn=warnings.append).ok
    store = store_of(inv)
    assert desired.read(store) == (None, 0)
    assert [(e["action"], e["result"]) for e in history.read(store)] == [("deploy", "failed")]


def test_with_a_store_a_secret_from_the_operators_machine_is_refused_before_anything(
    inv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = Path(inv) / "defaults.yaml"
    doc = yaml.safe_load(defaults.read_text())
    doc["data"]["secrets"]["SANDBOX_API_KEY"] = {"env": "FLEET_TEST_SANDBOX_KEY"}
    defaults.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("FLEET_TEST_SANDBOX_KEY", "from-env")
    deployed = stub_ssh(monkeypatch)
    with pytest.raises(FleetError, match="secrets come from the operator's machine: SANDBOX_API_KEY") as exc:
        dp.deploy_release(inv, version="1.1.0")
    assert "secrets.push" in exc.value.render() and deployed == []


def test_a_whole_fleet_rollback_restores_the_previous_desired_release(
    inv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet import inventory

    loaded = inventory.load(inv)
    stub_ssh(monkeypatch)
    old = dp.render_all(loaded, list(loaded.hosts.values()), version="1.0.0")
    dp.deploy_release(loaded, bundles=old)
    dp.deploy_release(loaded, version="1.1.0")
    store = store_of(inv)
    warnings: list[str] = []
    # the hosts do not run the store's previous release: nothing is guessed
    wrong = {h: "f" * 16 for h in loaded.hosts}
    publish.record_run(
        loaded, "rollback", "succeeded", None, wrong, actor="op", rollout_id="rb-1", warn=warnings.append
    )
    assert desired.read(store)[0].version == "1.1.0" and "not moved" in warnings[-1]
    back = {h: b.release_id for h, b in old.items()}
    publish.record_run(
        loaded, "rollback", "succeeded", None, back, actor="op", rollout_id="rb-2", warn=warnings.append
    )
    now = desired.read(store)[0]
    assert now.version == "1.0.0" and now.action == "rollback" and now.previous["version"] == "1.1.0"
    assert [e["action"] for e in history.read(store)] == ["deploy", "deploy", "rollback"]


def test_parse_is_the_inventorys_store(inv: str, gcs_server: StorageServer, gcs_bucket: str) -> None:
    assert store_of(inv).url == parse(f"gs://{gcs_bucket}/fleets/prod", gcs_server.endpoint).url


def test_a_replace_rollout_uploads_its_releases_first_and_leaves_desired(inv: str) -> None:
    """--strategy replace: the VMs the MIG recreates boot the release their template pins, read from
    the store, so it is there before any of them boots; desired moves only when the rollout succeeded."""
    from fleet import inventory
    from fleet.store import releases

    loaded = inventory.load(inv)
    bundles = dp.render_all(loaded, list(loaded.hosts.values()), version="1.1.0")
    targets = {h: b.release_id for h, b in bundles.items()}
    warnings: list[str] = []
    store = store_of(inv)
    assert releases.read_manifest(store, targets["w2"]) is None
    uploaded = publish.upload_releases(loaded, bundles, targets, {}, warnings.append)
    assert sorted(uploaded) == sorted(set(targets.values())) and len(uploaded) == 2  # one per variant
    assert all(releases.read_manifest(store, rid) is not None for rid in targets.values())
    assert desired.read(store) == (None, 0)  # not the fleet's release yet
    # a resume (or a rollout by id) finds them there: nothing uploaded twice
    assert publish.upload_releases(loaded, None, targets, {}, warnings.append) == []

    # the same releases rendered at another time (release.json says when and by whom, not the id):
    # what is stored is kept, nothing sealed again (publishing it would be refused as different)
    def rerendered(b: Any) -> Any:
        when = b.files["release.json"]
        files = {**b.files, "release.json": dataclasses.replace(when, data=when.data + b" ")}
        return dataclasses.replace(b, files=files)

    later = {h: rerendered(b) for h, b in bundles.items()}
    assert {h: b.release_id for h, b in later.items()} == targets
    assert publish.upload_releases(loaded, later, targets, {}, warnings.append) == []
    # a source release that is not in the store: said (no way back through the store)
    publish.upload_releases(loaded, bundles, targets, {"w2": "e" * 16}, warnings.append)
    assert any("cannot boot its way back" in w and "e" * 16 in w for w in warnings), warnings
    with pytest.raises(FleetError, match=r"not in the release store: f{16}"):
        publish.upload_releases(loaded, None, {"w2": "f" * 16}, {}, warnings.append)
