"""The release store on the Cloud Storage stand-in: publishing is idempotent and refuses a damaged copy,
desired moves only by compare-and-swap, history appends masked events and reads them back in order."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from fleet.errors import FleetError
from fleet.release import bundle, sealed
from fleet.release import secrets as known_secrets
from fleet.store import agent, desired, history, releases
from fleet.store.location import Store, check_endpoint, parse
from standins.storage import StorageServer
from tests.unit.test_bundle import META, SECRETS, VARS
from tests.unit.test_sealed import REFS


@pytest.fixture(scope="module")
def rendered() -> bundle.Bundle:
    source = bundle.load_source(bundle.COMPOSE_DIR)
    variables = {**VARS, **bundle.host_variables("/opt/fleet/dify", ["app", "beat"], None)}
    return bundle.render(source, variables, SECRETS, META, where="app-1")


@pytest.fixture
def store(gcs_server: StorageServer, gcs_bucket: str) -> Store:
    return parse(f"gs://{gcs_bucket}/fleets/prod", endpoint=gcs_server.endpoint, project="p")


def test_publish_is_idempotent_and_reads_back(store: Store, rendered: bundle.Bundle) -> None:
    s = releases.seal_bundle(rendered, REFS, ["app", "beat"])
    assert releases.publish(store, s) is True
    assert releases.publish(store, s) is False  # already there: a no-op
    assert releases.read_manifest(store, s.release_id) == s.manifest
    archive = releases.read_archive(store, s.release_id)
    assert archive == s.archive
    assert sealed.unseal(s.manifest, archive, SECRETS)[".env"][0] == rendered.files[".env"].data
    assert releases.read_manifest(store, "0" * 12) is None


def test_a_damaged_stored_release_is_refused(store: Store, rendered: bundle.Bundle) -> None:
    s = releases.seal_bundle(rendered, REFS, ["app"])
    releases.publish(store, s)
    store.blob(f"releases/{s.release_id}/files.tar").upload_from_string(b"garbage")
    with pytest.raises(FleetError, match="stored archive differs") as exc:
        releases.publish(store, s)
    assert "delete releases/" in exc.value.render()
    store.blob(f"releases/{s.release_id}/files.tar").upload_from_string(s.archive)
    damaged = dict(s.manifest, checksums={**s.manifest["checksums"], "docker-compose.yaml": "0" * 64})
    store.blob(f"releases/{s.release_id}/manifest.json").upload_from_string(
        sealed.Sealed(damaged, s.archive).manifest_bytes()
    )
    with pytest.raises(FleetError, match="stored manifest differs"):
        releases.publish(store, s)


def _desired(version: str, rid: str, by: str) -> desired.Desired:
    return desired.Desired(
        version=version,
        variants={"app": rid},
        published_by=by,
        published_at=desired.now_iso(),
        action="deploy",
    )


def test_desired_moves_by_compare_and_swap_and_the_loser_is_told(store: Store) -> None:
    assert desired.read(store) == (None, 0)
    desired.move(store, _desired("1.0.0", "a" * 12, "alice@laptop"), 0)
    now, gen = desired.read(store)
    assert now is not None and now.version == "1.0.0" and gen > 0
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def writer(who: str) -> None:
        barrier.wait()
        try:
            desired.move(store, _desired("2.0.0", "b" * 12, who), gen)
            results[who] = "ok"
        except FleetError as exc:
            results[who] = exc

    threads = [threading.Thread(target=writer, args=(w,)) for w in ("bob@a", "carol@b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [w for w, r in results.items() if r == "ok"]
    assert len(winners) == 1, results
    (loser,) = set(results) - set(winners)
    err = results[loser]
    assert isinstance(err, FleetError)
    assert f"desired release changed under you (by {winners[0]} at" in err.render()
    assert "fab store.show" in err.render()
    assert desired.read(store)[0].published_by == winners[0]  # type: ignore[union-attr]


def test_publish_fleet_uploads_variants_and_keeps_the_previous(store: Store, rendered: bundle.Bundle) -> None:
    s = releases.seal_bundle(rendered, REFS, ["app", "beat"])
    first = desired.publish_fleet(
        store, {"app+beat": s}, version="1.0.0", action="deploy", actor="alice@laptop", rollout_id=None
    )
    assert first.previous is None and first.variants == {"app+beat": s.release_id}
    assert releases.read_manifest(store, s.release_id) is not None
    second = desired.publish_fleet(
        store, {"app+beat": s}, version="1.0.1", action="rollout", actor="bob@desk", rollout_id="ro-1"
    )
    now, _ = desired.read(store)
    assert now == second
    assert now.previous == {"version": "1.0.0", "variants": {"app+beat": s.release_id}}
    assert now.rollout_id == "ro-1" and now.action == "rollout"
    assert desired.variant_key(["beat", "app"]) == "app+beat"


def test_history_appends_masked_events_and_reads_newest_last(store: Store) -> None:
    known_secrets.remember(["hunter2-secret"])
    t0 = datetime(2026, 11, 29, 15, 0, tzinfo=UTC)
    for i in range(5):
        history.append(
            store,
            history.Event(
                action="agent-boot" if i % 2 else "deploy",
                result="ok",
                actor="agent@vm-1" if i % 2 else "alice@laptop",
                instance="vm-1" if i % 2 else None,
                version=f"1.0.{i}",
                detail=f"step {i} with password hunter2-secret",
                at=t0 + timedelta(minutes=i),
            ),
        )
    events = history.read(store)
    assert [e["version"] for e in events] == [f"1.0.{i}" for i in range(5)]
    assert all("hunter2-secret" not in (e["detail"] or "") and "******" in e["detail"] for e in events)
    assert events[0]["fleet"] == "prod" and events[0]["at"] == "2026-11-29T15:00:00Z"
    assert [e["version"] for e in history.read(store, limit=2)] == ["1.0.3", "1.0.4"]
    assert [e["version"] for e in history.read(store, instance="vm-1")] == ["1.0.1", "1.0.3"]
    assert [e["version"] for e in history.read(store, instance="vm-1", limit=1)] == ["1.0.3"]
    assert [e["version"] for e in history.read(store, since=t0 + timedelta(minutes=3))] == ["1.0.3", "1.0.4"]
    with pytest.raises(FleetError, match="unknown history action"):
        history.append(store, history.Event(action="nap", result="ok", actor="x"))


def test_agent_upload_is_content_addressed(store: Store) -> None:
    name = agent.upload_agent(store, b"PK-zipapp")
    assert name.startswith("fleets/prod/agent/fleet-agent-") and name.endswith(".pyz")
    assert agent.upload_agent(store, b"PK-zipapp") == name
    assert store.blob(agent.CURRENT).download_as_bytes().decode().strip() == name
    assert store.blob(name.removeprefix("fleets/prod/")).download_as_bytes() == b"PK-zipapp"


@pytest.mark.parametrize(
    "url",
    ["s3://b/fleets/x", "gs://b/fleets/x", "gs://bucket/x", "gs://bucket/fleets/", "gs://Bucket/fleets/x",
     "gs://bucket/fleets/x/y", "gs://bucket/fleets/x;rm"],
)  # fmt: skip
def test_malformed_store_urls_are_refused(url: str) -> None:
    with pytest.raises(FleetError, match="is not gs://BUCKET/fleets/<fleet>"):
        parse(url)


@pytest.mark.parametrize(
    "endpoint", ["ftp://127.0.0.1:1", "http://8.8.8.8:443", "http://127.0.0.1", "127.0.0.1:9"]
)
def test_only_local_endpoints_are_accepted(endpoint: str) -> None:
    with pytest.raises(FleetError, match="not a local stand-in endpoint"):
        check_endpoint(endpoint)
    assert check_endpoint("http://10.213.0.1:4443/") == "http://10.213.0.1:4443"
