"""The agent's boot/apply flow with the Google APIs replaced by in-memory fakes (the client interfaces of
fleet/agent/flow.py) and the host steps by a recording stand-in: what it reports, whether the VM stays
drained, what it refuses."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fleet.agent import apis, flow
from fleet.agent.http import HttpError
from fleet.agent.local import LocalHost
from fleet.commands import release as rc
from fleet.errors import FleetError
from fleet.release import activation, envfile, sealed
from fleet.release import hoststeps as ht
from functions.fleet_contract import LOCK_METADATA_KEY, ROLLOUT_LABEL, Lock, lock_to_json

RID = "a" * 16
BEAT_RID = "b" * 16
SECRET = "s3cr3t-Value"
REF = "projects/p/secrets/db-password/versions/4"
NOW = datetime(2026, 11, 29, 15, 0, tzinfo=UTC)
PREFIX = "fleets/prod"


def sealed_release(rid: str) -> sealed.Sealed:
    env = envfile.render({"VERSION": "1.2.0", "DB_PASSWORD": SECRET})
    files = {".env": (env, 0o600), "docker-compose.yaml": (b"services: {}\n", 0o644)}
    return sealed.seal(
        files,
        {"VERSION": "1.2.0", "DB_PASSWORD": SECRET},
        {"DB_PASSWORD"},
        {"DB_PASSWORD": REF},
        release_id=rid,
        version="1.2.0",
        disabled_services=["worker_beat"] if rid == RID else [],
    )


class FakeMetadata:
    def __init__(self, **attrs: str) -> None:
        self.attrs = {
            "fleet-name": "prod",
            "fleet-store": f"gs://bkt/{PREFIX}",
            "fleet-roles": "app",
            "fleet-beat": "first",
            "fleet-mig": "projects/p/zones/europe-west1-b/instanceGroupManagers/prod",
            **attrs,
        }
        self.project: dict[str, str] = {}
        self.guest: dict[str, str] = {}
        self.guest_log: list[tuple[str, str]] = []

    def attribute(self, key: str) -> str | None:
        return self.attrs.get(key)

    def project_attribute(self, key: str) -> str | None:
        return self.project.get(key)

    def instance_name(self) -> str:
        return "prod-2"

    def zone(self) -> str:
        return "europe-west1-b"

    def project_id(self) -> str:
        return "p"

    def put_guest(self, key: str, value: str) -> None:
        self.guest[key] = value
        self.guest_log.append((key, value))


class FakeStorage:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.reads: list[str] = []
        self.down = False
        desired = {"format": 1, "version": "1.2.0", "variants": {"app": RID, "app+beat": BEAT_RID}}
        self.objects[f"{PREFIX}/desired.json"] = json.dumps(desired).encode()
        for rid in (RID, BEAT_RID):
            s = sealed_release(rid)
            self.objects[f"{PREFIX}/releases/{rid}/manifest.json"] = s.manifest_bytes()
            self.objects[f"{PREFIX}/releases/{rid}/files.tar"] = s.archive

    def read(self, bucket: str, name: str) -> bytes:
        assert bucket == "bkt"
        self.reads.append(name)
        if self.down:
            raise HttpError(f"read: GET https://storage/{name}: no answer (gave up after 6 tries)")
        if name not in self.objects:
            raise apis.NotFound("read: not found", where=name)  # what the real client raises on a 404
        return self.objects[name]

    def create(self, bucket: str, name: str, data: bytes, content_type: str = "application/json") -> None:
        assert name not in self.objects
        self.objects[name] = data

    def history(self) -> list[dict[str, Any]]:
        return [json.loads(v) for k, v in sorted(self.objects.items()) if k.startswith(f"{PREFIX}/history/")]


class FakeSecrets:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def access(self, version: str) -> str:
        if version not in self.values:
            raise FleetError("access: not found", where=version, hint="does the secret version exist?")
        return self.values[version]


class FakeCompute:
    def __init__(self, members: list[str], labels: dict[str, str] | None = None) -> None:
        self._members = members
        self._labels = labels or {}

    def members(self, mig: str) -> list[str]:
        return self._members

    def labels(self, project: str, zone: str, instance: str) -> dict[str, str]:
        return self._labels


class FakeHost:
    """The host side: records which steps ran; `healthy` decides activation's and serving's verdicts."""

    def __init__(self, healthy: bool = True, docker: bool = True) -> None:
        self.host = LocalHost("prod-2")
        self.healthy = healthy
        self.docker = docker
        self.drained = False
        self.steps: list[str] = []
        self.history: list[dict[str, Any]] = []

    def run(self, script: str, *, timeout: float | None = None, stdin: str | None = None) -> Any:
        from fleet.agent.local import Result

        if "docker-compose-plugin" in script:  # the bootstrap command
            self.steps.append("bootstrap")
            self.docker = True
            return Result(0, "changed: docker engine installed\n", "")
        if "docker compose version" in script:
            return Result(0 if self.docker else 10, "ok\n", "" if self.docker else "docker: not installed")
        if "/health" in script:  # the probe through nginx
            code = 503 if self.drained else (200 if self.healthy else 502)
            return Result(0, f'{code}\n{{"version": "1.2.0"}}\n', "")
        return Result(0, "", "")

    def put(self, data: bytes, remote: str) -> None:  # pragma: no cover - preflight is faked
        raise AssertionError


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    h = FakeHost()

    def drain(ctx: FakeHost) -> None:
        ctx.drained = True
        ctx.steps.append("drain")

    def undrain(ctx: FakeHost) -> None:
        ctx.drained = False
        ctx.steps.append("undrain")

    def preflight(ctx: FakeHost, release: Any, pull_timeout: float | None = None) -> dict[str, Any]:
        ctx.steps.append(f"preflight {release.release_id}")
        assert ctx.drained, "preflight runs with the host drained"
        assert release.checksums() == sealed_release(release.release_id).manifest["checksums"]
        return {"state": rc.HostState(True, None, None, True, None, None), "bytes_sent": 10}

    def activate(ctx: FakeHost, release: Any, state: rc.HostState, **kw: Any) -> activation.DeployOutcome:
        ctx.steps.append(f"activate {release.release_id} {kw['action']} {kw['operator']}")
        assert ctx.drained and state.drained
        out = activation.DeployOutcome("prod-2", "deployed", None, None, release.release_id, release.version)
        if not ctx.healthy:
            out.result, out.error = "failed", f"unhealthy after switch: api: unhealthy ({SECRET})"
        return out

    def wait_healthy(ctx: FakeHost, version: str, rid: str, **kw: Any) -> ht.Verdict:
        ctx.steps.append("serving?")
        return ht.Verdict(ok=not ctx.drained and ctx.healthy, problems=[] if ctx.healthy else ["/health 502"])

    def record(ctx: FakeHost, entry: dict[str, Any], secrets: Any = ()) -> None:
        ctx.history.append(entry)

    def read_state(ctx: FakeHost) -> rc.HostState:
        return rc.HostState(True, RID, None, ctx.drained, {"version": "1.2.0"}, None)

    monkeypatch.setattr(ht, "drain", drain)
    monkeypatch.setattr(ht, "undrain", undrain)
    monkeypatch.setattr(ht, "wait_healthy", wait_healthy)
    monkeypatch.setattr(ht, "record", record)
    monkeypatch.setattr(ht, "read_state", read_state)
    monkeypatch.setattr(activation, "preflight", preflight)
    monkeypatch.setattr(activation, "activate", activate)
    return h


def agent(
    host: FakeHost,
    *,
    md: FakeMetadata | None = None,
    storage: FakeStorage | None = None,
    secrets: dict[str, str] | None = None,
    compute: FakeCompute | None = None,
) -> tuple[flow.Agent, flow.Clients, io.StringIO]:
    clients = flow.Clients(
        md or FakeMetadata(),
        storage or FakeStorage(),
        FakeSecrets({REF: SECRET} if secrets is None else secrets),
        compute or FakeCompute(["prod-1", "prod-2"]),
    )
    out = io.StringIO()
    return flow.Agent(clients, log=flow.Log(out), context=lambda cfg: host, clock=lambda: NOW), clients, out


def test_boot_serves_the_desired_release_and_reports_it(host: FakeHost) -> None:
    a, c, out = agent(host)
    assert a.run("boot") == 0, out.getvalue()
    assert host.steps == [
        "drain",
        f"preflight {RID}",
        f"activate {RID} agent-boot agent@prod-2",
        "undrain",
        "serving?",
    ]
    md: Any = c.metadata
    assert md.guest_log[:4] == [
        ("action", "boot"),
        ("result", "running"),
        ("error", ""),
        ("health", "starting"),
    ]
    assert {k: md.guest[k] for k in ("release", "version", "health", "action", "result", "error")} == {
        "release": RID,
        "version": "1.2.0",
        "health": "ok",
        "action": "boot",
        "result": "ok",
        "error": "",
    }
    assert md.guest["at"] == "2026-11-29T15:00:00Z"
    assert host.history[-1]["action"] == "agent-boot" and host.history[-1]["result"] == "ok"
    (event,) = c.storage.history()  # type: ignore[attr-defined]
    assert event["actor"] == "agent@prod-2" and event["release"] == RID and event["result"] == "ok"
    assert event["action"] == "agent-boot" and event["fleet"] == "prod" and event["instance"] == "prod-2"
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {"ts", "step", "msg"} <= set(lines[0]) and [x["step"] for x in lines][-3:] == [
        "serve",
        "history",
        "done",
    ]
    assert SECRET not in out.getvalue()


def test_the_first_member_by_name_takes_the_beat_variant(host: FakeHost) -> None:
    a, _, _ = agent(host, compute=FakeCompute(["prod-10", "prod-2", "prod-3"]))
    assert a.run("boot") == 0
    assert f"activate {BEAT_RID} agent-boot agent@prod-2" in host.steps


def test_a_missing_secret_is_reported_and_the_vm_stays_drained(host: FakeHost) -> None:
    a, c, _ = agent(host, secrets={})
    assert a.run("boot") != 0
    md: Any = c.metadata
    assert md.guest["result"] == "failed" and md.guest["health"] == "failed"
    assert "secret DB_PASSWORD" in md.guest["error"] and REF in md.guest["error"]
    assert md.guest["release"] == RID
    assert "undrain" not in host.steps and host.drained  # never entered the load balancer
    assert not any(s.startswith("activate") for s in host.steps)
    (event,) = c.storage.history()  # type: ignore[attr-defined]
    assert event["result"] == "failed" and "DB_PASSWORD" in event["detail"]


def test_unhealthy_release_stays_drained_and_the_error_is_masked(host: FakeHost) -> None:
    host.healthy = False
    a, c, out = agent(host)
    assert a.run("boot") != 0
    md: Any = c.metadata
    assert "undrain" not in host.steps and host.drained
    assert "unhealthy after switch" in md.guest["error"] and SECRET not in md.guest["error"]
    assert "******" in md.guest["error"]
    assert SECRET not in out.getvalue() and SECRET not in json.dumps(c.storage.history())  # type: ignore[attr-defined]
    assert host.history[-1]["result"] == "failed" and SECRET not in json.dumps(host.history)


def test_store_unreachable_is_reported_after_the_client_gave_up(host: FakeHost) -> None:
    storage = FakeStorage()
    storage.down = True
    a, c, _ = agent(host, storage=storage)
    assert a.run("boot") != 0
    md: Any = c.metadata
    assert "desired release not read" in md.guest["error"] and "gave up after 6 tries" in md.guest["error"]
    assert host.steps == ["drain"]  # the failure path drains an existing layout, nothing else ran


def test_apply_is_refused_under_the_fleet_lock_unless_forced(host: FakeHost) -> None:
    md = FakeMetadata()
    lock = Lock("prod", "alice@laptop", "rollout 1.3.0", "ro-1", NOW, NOW + timedelta(minutes=5))
    md.project[LOCK_METADATA_KEY] = lock_to_json(lock)
    a, c, _ = agent(host, md=md)
    assert a.run("apply") != 0
    assert "fleet lock is held by alice@laptop" in md.guest["error"] and md.guest["action"] == "apply"
    assert host.steps == [] and host.history == []  # the host is not touched
    assert "health" not in md.guest  # nor its reported health: it serves what it served
    assert c.storage.history()[0]["result"] == "refused"  # type: ignore[attr-defined]
    assert a.run("apply", force=True) == 0


def test_an_unreachable_metadata_server_is_not_asked_again_for_every_attribute(host: FakeHost) -> None:
    md = FakeMetadata()
    calls = []

    def down(key: str, value: str) -> None:
        calls.append(key)
        raise FleetError("guest attribute: no answer (gave up after 6 tries)")

    md.put_guest = down  # type: ignore[method-assign]
    a, _, out = agent(host, md=md)
    assert a.run("boot") == 0
    assert len(calls) == 2  # once at the start, once at the end
    assert "guest attributes not written" in out.getvalue()


def test_apply_ignores_an_expired_lock_but_not_the_rollout_label(host: FakeHost) -> None:
    md = FakeMetadata()
    old = Lock(
        "prod", "alice@laptop", "rollout", "ro-1", NOW - timedelta(hours=1), NOW - timedelta(minutes=1)
    )
    md.project[LOCK_METADATA_KEY] = lock_to_json(old)
    a, _, _ = agent(host, md=md)
    assert a.run("apply") == 0
    b, _, _ = agent(host, md=md, compute=FakeCompute(["prod-1"], {ROLLOUT_LABEL: "ro-2"}))
    assert b.run("apply") != 0 and "rollout label" in md.guest["error"]


def test_boot_bootstraps_a_vm_without_docker_first(host: FakeHost) -> None:
    host.docker = False
    a, _, out = agent(host)
    assert a.run("boot") == 0, out.getvalue()
    assert host.steps[:3] == ["bootstrap", "drain", f"preflight {RID}"]
    assert '"step": "bootstrap"' in out.getvalue()


def test_boot_before_any_release_was_published_bootstraps_and_says_so(host: FakeHost) -> None:
    storage = FakeStorage()
    del storage.objects["fleets/prod/desired.json"]
    host.docker = False
    a, c, out = agent(host, storage=storage)
    assert a.run("boot") == 0, out.getvalue()
    assert host.steps == ["bootstrap"]  # nothing staged, nothing drained: there is nothing to serve
    md: Any = c.metadata
    assert (md.guest["result"], md.guest["health"], md.guest["release"]) == ("ok", "none", "")
    assert "no desired release yet" in out.getvalue()


def test_the_heartbeat_reports_what_runs_now_and_keeps_the_last_action(host: FakeHost) -> None:
    a, c, out = agent(host)
    assert a.run("boot") == 0, out.getvalue()
    md: Any = c.metadata
    action = {k: md.guest[k] for k in ("action", "result", "at")}
    host.drained = True  # an operator's rollout drained it over SSH
    assert a.watch(every=0.0, rounds=2, sleep=lambda _s: None) == 0
    assert (md.guest["release"], md.guest["version"], md.guest["health"]) == (RID, "1.2.0", "drained")
    host.drained, host.healthy = False, False
    a.observe()
    assert md.guest["health"] == "failed"
    host.healthy = True
    a.observe()
    assert md.guest["health"] == "ok" and md.guest["observed"] == "2026-11-29T15:00:00Z"
    assert {k: md.guest[k] for k in ("action", "result", "at")} == action  # the boot's record stays


def test_apply_does_not_bootstrap_a_vm_without_docker(host: FakeHost) -> None:
    host.docker = False
    a, c, _ = agent(host)
    assert a.run("apply") != 0
    md: Any = c.metadata
    assert "docker: not installed" in md.guest["error"]
    assert host.steps == []  # nothing changed: apply leaves a VM it did not touch as it was


def test_bad_metadata_is_reported() -> None:
    with pytest.raises(FleetError, match="fleet-beat"):
        flow.read_config(FakeMetadata(**{"fleet-beat": "all"}))  # type: ignore[arg-type]
    with pytest.raises(FleetError, match="release store URL"):
        flow.read_config(FakeMetadata(**{"fleet-store": "gs://bkt"}))  # type: ignore[arg-type]
    with pytest.raises(FleetError, match="fleet-http-port"):
        flow.read_config(FakeMetadata(**{"fleet-http-port": "80; rm -rf /"}))  # type: ignore[arg-type]
    cfg = flow.read_config(FakeMetadata(**{"fleet-roles": "app, worker", "fleet-http-port": "8080"}))  # type: ignore[arg-type]
    assert cfg.roles == ("app", "worker") and cfg.host.settings.app.http_port == 8080
    assert cfg.store.bucket == "bkt" and cfg.store.key("desired.json") == f"{PREFIX}/desired.json"


def test_a_served_release_prunes_old_ones_as_a_deploy_does(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept: list[int] = []

    def prune(ctx: FakeHost, keep: int) -> list[str]:
        assert not ctx.drained, "prune runs once the release serves"
        kept.append(keep)
        return ["c" * 16]

    monkeypatch.setattr(ht, "prune", prune)
    a, _, out = agent(host, md=FakeMetadata(**{"fleet-keep-releases": "3"}))
    assert a.run("boot") == 0
    assert kept == [3]
    assert f"removed 1 old release(s): {'c' * 16}" in out.getvalue()


def test_a_failed_prune_is_logged_and_the_release_still_serves(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    def prune(ctx: FakeHost, keep: int) -> list[str]:
        raise FleetError(f"rm: cannot remove: Permission denied ({SECRET})", where="prod-2")

    monkeypatch.setattr(ht, "prune", prune)
    a, clients, out = agent(host)
    assert a.run("apply") == 0
    log = out.getvalue()
    assert "not pruned: rm: cannot remove" in log and SECRET not in log
    assert clients.metadata.guest["result"] == "ok"  # type: ignore[attr-defined]


def test_a_failed_release_prunes_nothing(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ht, "prune", lambda ctx, keep: pytest.fail("pruned after a failure"))
    host.healthy = False
    a, _, _ = agent(host)
    assert a.run("boot") == 1


@pytest.mark.parametrize("value", ["1", "x", "-3"])
def test_a_bad_keep_releases_is_reported(value: str) -> None:
    with pytest.raises(FleetError, match="fleet-keep-releases"):
        flow.read_config(FakeMetadata(**{"fleet-keep-releases": value}))


def test_a_release_pinned_by_the_template_is_served_whatever_desired_says(host: FakeHost) -> None:
    """A `--strategy replace` template names its release: the MIG updater moves the fleet, the store's
    pointer (still the previous release until the rollout is done) does not decide."""
    storage = FakeStorage()
    del storage.objects[f"{PREFIX}/desired.json"]  # not even published yet: the template is enough
    a, clients, out = agent(host, md=FakeMetadata(**{"fleet-release": BEAT_RID}), storage=storage)
    assert a.run("boot") == 0
    assert f"activate {BEAT_RID} agent-boot agent@prod-2" in host.steps
    assert f"{PREFIX}/desired.json" not in storage.reads
    assert clients.metadata.guest["release"] == BEAT_RID  # type: ignore[attr-defined]
    assert "pinned by the instance template" in out.getvalue()


def test_a_pinned_release_that_is_not_a_release_id_is_reported() -> None:
    with pytest.raises(FleetError, match="fleet-release"):
        flow.read_config(FakeMetadata(**{"fleet-release": "../../etc"}))
