"""`fab rollout` / `fab rollback` on a local fleet of 4 instances behind haproxy, under load.

A load generator sends requests through the LB during every operation and counts each non-2xx and
each connection error; the rollouts must not fail a single one. The fleet is the session's shared
one (tests/fixtures/localfleet.py: 4 instances, its LB, Compute endpoint and inventory), so the suite
brings up, bootstraps and deploys no fleet of its own for these tests: they run after the other users
of the shared fleet (`nox -s tests` runs them in its `loadproof` run, after the others; in one pytest
run this module sorts last among them), starting from 1.0.0 everywhere (deployed
here when the fleet runs another version), and leave the fleet to be taken down (worker_beat moved
to the third host). Do not run them while another session deploys to the shared fleet: the rollouts
hold its lock. Tests run in file order, each starting from the versions the previous one left:

  1.0.0 -> rollout 1.1.0 -> a failing migration -> broken canary rolled back
  -> rollback to 1.0.0 refused, then forced (SIGINT + resume)
  -> rollout 1.1.0 (SIGKILL + resume) -> rollout 1.0.0 with an instance stopped (pause + resume)
  -> the worker_beat role moves -> the lock refuses a second operator

The chain runs with migrations as a phase (`dify.migrations: phase` in a copy of the fleet's inventory):
the stand-ins migrate the fleet's real PostgreSQL (fleet/local/dataservices.py), and every run of their
`flask upgrade-db` is a row of `standin_migration_runs`, read here. So 1.0.0 -> 1.1.0 migrates exactly
once, a release whose migration fails switches nothing, and a rollback across the migration is refused
naming the restore point before it is forced.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.gcp.compute import Compute
from fleet.local import dataservices
from fleet.local.config import LocalConfig
from fleet.local.instances import LocalFleet
from fleet.rollout.lock import FleetLock
from fleet.scenarios.loadgen import LoadGen, LoadReport
from functions.fleet_contract import ROLLOUT_LABEL, Lock, lock_to_json
from tests.fixtures.standin import load_standin

pytestmark = [pytest.mark.localfleet, pytest.mark.loadproof]

FLEET = LocalConfig.from_env()  # the shared fleet's (tests/fixtures/localfleet.py)
REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))
HOSTS = [FLEET.host_name(i) for i in range(1, 5)]
H1, H2, H3, H4 = HOSTS  # H1 is the beat host (the inventory writer gives it the beat role)
STEPS = ["state", "mark", "drain", "lb-out", "switch", "up", "verify", "undrain", "serve", "lb-in", "soak"]
STEPS += ["record", "unmark"]


# --------------------------------------------------------------------------- fixtures and helpers


class Ctx:
    def __init__(self, fleet: LocalFleet, journal_dir: Path) -> None:
        self.fleet = fleet
        self.inv = str(fleet.inventory_dir)
        self.env = {**os.environ, "FLEET_JOURNAL_DIR": str(journal_dir), "FLEET_OPERATOR": "tester@ci"}
        self.journal_dir = journal_dir
        defaults = yaml.safe_load((fleet.inventory_dir / "defaults.yaml").read_text())
        self.compute = Compute(defaults["data"]["gce"]["api_endpoint"])

    def fab(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FAB, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [FAB, *args], cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def json(self, *args: str, inventory: str | None = None) -> tuple[int, Any, str]:
        r = self.fab(*args, "--inventory", inventory or self.inv, "--json")
        try:
            payload = json.loads(r.stdout) if r.stdout.strip() else None
        except ValueError:
            pytest.fail(f"not JSON (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r.returncode, payload, r.stdout + r.stderr

    def status(self) -> dict[str, dict[str, Any]]:
        _code, payload, out = self.json("status")
        assert payload is not None, out
        return {h["host"]: h for h in payload["hosts"]}

    def ensure(self, version: str) -> None:
        """Start from `version` everywhere (a no-op in file order; lets a single test run alone). The
        deploy migrates as `fab rollout` does (dify.migrations: phase): forward across a schema change
        (a fresh fleet's first deploy included) exactly once, back (forced) not at all."""
        if {s["version"] for s in self.status().values()} != {version}:
            runs_before = migration_runs(self)
            code, payload, out = self.json("deploy", "--version", version, "--force-schema-rollback")
            assert code == 0, out
            runs = migration_runs(self)[len(runs_before) :]
            if payload["migration"] is None:
                assert runs == [], out
            else:
                assert payload["migration"]["status"] == "done", out
                assert [(v, r) for v, _rev, r in runs] in ([(version, "applied")], [(version, "current")]), (
                    runs
                )

    def load(self) -> LoadGen:
        return LoadGen(f"http://127.0.0.1:{FLEET.lb_port}", threads=4, rate=20, max_seconds=900)

    def labels(self) -> dict[str, dict[str, str]]:
        return {h: dict(self.compute.instance(FLEET.project, FLEET.zone, h).labels) for h in HOSTS}

    def lock_store(self) -> FleetLock:
        return FleetLock(self.compute, FLEET.project, Path(self.inv).name)  # the lock `fab` takes

    def newest_journal(self) -> list[dict[str, Any]]:
        paths = sorted(self.journal_dir.rglob("*.jsonl"), key=lambda p: p.stat().st_mtime)
        return [json.loads(line) for line in paths[-1].read_text().splitlines() if line.strip()]

    def wait_for_step(self, proc: subprocess.Popen[str], host: str, step: str, timeout: float = 240) -> None:
        """Block until the running rollout's journal says `host` started `step`."""
        marker = f'"host":"{host}","step":"{step}","status":"start"'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"fab ended early: {proc.communicate()}"
            for path in self.journal_dir.rglob("*.jsonl"):
                if path.stat().st_mtime > self.started and marker in path.read_text():
                    return
            time.sleep(0.05)
        pytest.fail(f"{host} never reached {step}")

    started = 0.0

    def beat_running_now(self) -> set[str]:
        running = set()
        for h in HOSTS:
            r = self.fleet.exec(
                h,
                ["docker", "ps", "-q", "--filter", "label=com.docker.compose.service=worker_beat"],
                check=False,
            )
            if r.stdout.strip():
                running.add(h)
        return running

    def watch(self) -> Events:
        return Events(self.fleet, HOSTS)


class Events:
    """Each instance's own Docker container start/die events, streamed while a test runs (the daemon
    keeps only a short history, and healthchecks fill it within a minute)."""

    FORMAT = '{{.TimeNano}} {{.Action}} {{index .Actor.Attributes "com.docker.compose.service"}} '
    FORMAT += '{{index .Actor.Attributes "exitCode"}}'

    def __init__(self, fleet: LocalFleet, hosts: list[str]) -> None:
        self.procs = {}
        for h in hosts:
            container = fleet.config.container_name(fleet.config.index_of(h))
            argv = ["docker", "exec", container, "docker", "events", "--filter", "type=container"]
            argv += ["--filter", "event=start", "--filter", "event=die", "--format", self.FORMAT]
            self.procs[h] = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        time.sleep(1)  # `docker events` subscribes asynchronously
        self.lines: dict[str, list[list[str]]] = {}

    def stop(self) -> Events:
        time.sleep(1)
        for h, proc in self.procs.items():
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
            self.lines[h] = [line.split() for line in out.splitlines() if line.strip()]
        return self

    def of(self, service: str) -> list[tuple[int, str, str, str]]:
        """(time ns, host, action, exit code) for `service`, in time order."""
        found = []
        for h, rows in self.lines.items():
            for row in rows:
                if len(row) >= 3 and row[2] == service:
                    found.append((int(row[0]), h, row[1], row[3] if len(row) > 3 else ""))
        return sorted(found)

    def most_at_once(self, service: str, running_before: set[str]) -> int:
        running = dict.fromkeys(running_before, 1)
        most = len(running_before)
        for _t, h, action, _code in self.of(service):
            running[h] = running.get(h, 0) + (1 if action == "start" else -1)
            most = max(most, sum(1 for v in running.values() if v > 0))
        return most


@pytest.fixture(scope="module")
def ctx(local_fleet: LocalFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    names = [r.name for r in local_fleet.instances()]
    assert names == HOSTS, f"these tests need the shared fleet at exactly {HOSTS}, found {names}"
    c = Ctx(local_fleet, tmp_path_factory.mktemp("journal"))
    # the fleet's inventory with migrations as a phase (same name: the same fleet lock)
    inv = tmp_path_factory.mktemp("inventory") / local_fleet.inventory_dir.name
    shutil.copytree(local_fleet.inventory_dir, inv, symlinks=True)
    defaults = yaml.safe_load((inv / "defaults.yaml").read_text())
    defaults["data"]["dify"] = {**defaults["data"].get("dify", {}), "migrations": "phase"}
    (inv / "defaults.yaml").write_text(yaml.safe_dump(defaults, sort_keys=False))
    c.inv = str(inv)
    code, _payload, out = c.json("bootstrap")  # idempotent: a no-op after test_deploy.py
    assert code == 0, out
    c.ensure("1.0.0")
    yield c


def assert_no_failed_requests(report: LoadReport, at_least: int = 200) -> None:
    assert report.failed == 0, f"{report.summary()}\n" + "\n".join(report.first_failures)
    assert report.requests >= at_least, report.summary()  # the load really ran


def assert_fleet_on(c: Ctx, version: str) -> dict[str, dict[str, Any]]:
    st = c.status()
    for h in HOSTS:
        assert st[h]["version"] == version and st[h]["drained"] is False, st[h]
        assert st[h]["health"] == {"code": 200, "version": version} and st[h]["drift"] == [], st[h]
    return st


STANDIN = load_standin("standin_client")  # its PostgreSQL client reads the fleet's database


def migration_runs(c: Ctx) -> list[tuple[str, str, str]]:
    """(version, to_revision, result) of every `flask upgrade-db` run against the fleet's database."""
    password = (c.fleet.inventory_dir / "secrets" / "DB_PASSWORD").read_text().strip()
    address = dataservices.address(c.fleet.config)
    with STANDIN.Postgres(address, dataservices.PG_PORT, "dify", password, "dify", sslmode="require") as db:
        if db.query("SELECT to_regclass('standin_migration_runs')") == [(None,)]:
            return []
        rows = db.query("SELECT version, to_revision, result FROM standin_migration_runs ORDER BY id")
    return [(str(v), str(t), str(r)) for v, t, r in rows]


def assert_settled(c: Ctx) -> None:
    """Nothing drained (status), no rollout label left, the lock free."""
    code, lock, out = c.json("lock.status")
    assert code == 0 and lock["held"] is False and lock["lock"] is None, out
    assert all(ROLLOUT_LABEL not in labels for labels in c.labels().values())


# --------------------------------------------------------------------------- the proof tests


def test_rollout_under_load_with_zero_failed_requests(ctx: Ctx) -> None:
    beats_before = ctx.beat_running_now()
    assert beats_before == {H1}
    runs_before = migration_runs(ctx)
    events = ctx.watch()
    with ctx.load() as load:
        code, report, out = ctx.json(
            "rollout", "--version", "1.1.0", "--yes", "--canary", "1", "--batch", "50%"
        )
    events.stop()
    assert code == 0, out
    # the schema revision changed (dify-1.0.0 -> dify-1.1.0): migrated once, before the canary
    assert migration_runs(ctx)[len(runs_before) :] == [("1.1.0", "dify-1.1.0", "applied")]
    assert_no_failed_requests(load.report())
    assert set(load.report().versions) == {"1.0.0", "1.1.0"}

    assert report["outcome"] == "succeeded" and report["exit_code"] == 0
    assert [h["result"] for h in report["hosts"]] == ["updated"] * 4
    assert [h["batch"] for h in report["hosts"]] == [0, 1, 1, 2]  # canary, 50% of 4, the rest
    st = assert_fleet_on(ctx, "1.1.0")
    for h in HOSTS:
        last = st[h]["last"]
        assert (last["action"], last["result"], last["rollout"]) == ("rollout", "ok", report["rollout_id"])
    assert_settled(ctx)

    # every host went through every gate, in order, and a batch started only after the last one ended
    journal = ctx.newest_journal()
    steps: dict[str, list[str]] = {}
    for e in journal:
        if e["event"] == "step" and e["status"] == "start" and e["step"] not in ("stage", "pull"):
            steps.setdefault(e["host"], []).append(e["step"])
    assert steps == dict.fromkeys(HOSTS, STEPS)
    order = [(e["host"], e["step"]) for e in journal if e["event"] == "step" and e["status"] == "start"]
    assert order.index((H1, "record")) < order.index((H2, "mark"))
    assert max(order.index((H2, "record")), order.index((H3, "record"))) < order.index((H4, "mark"))
    assert max(order.index((h, "pull")) for h in HOSTS) < order.index((H1, "drain"))  # staged first

    # worker_beat never ran on two hosts at once; workers stopped gracefully (exit 0, not killed)
    assert [(h, a) for _t, h, a, _c in events.of("worker_beat")] == [(H1, "die"), (H1, "start")]
    assert events.most_at_once("worker_beat", beats_before) == 1
    assert ctx.beat_running_now() == {H1}
    died = [(h, code) for _t, h, a, code in events.of("worker") if a == "die"]
    assert sorted(died) == [(h, "0") for h in HOSTS], events.of("worker")


def test_a_failing_migration_switches_nothing_and_releases_the_lock(ctx: Ctx) -> None:
    ctx.ensure("1.1.0")
    before, runs_before = ctx.status(), migration_runs(ctx)
    r = ctx.fab("rollout", "--inventory", ctx.inv, "--version", "1.3.0-migration-fails", "--yes")
    text = r.stdout + r.stderr
    assert r.returncode == 1, text
    assert "failed on purpose" in text and "nothing was switched on any host" in text
    assert "restore point: timestamp" in text
    assert migration_runs(ctx)[len(runs_before) :] == [
        ("1.3.0-migration-fails", "standin-1.3.0-fails", "failed")
    ]
    st = assert_fleet_on(ctx, "1.1.0")
    assert {h: st[h]["release"] for h in HOSTS} == {h: before[h]["release"] for h in HOSTS}
    assert_settled(ctx)


def test_broken_canary_is_rolled_back_and_the_rollout_stops(ctx: Ctx) -> None:
    """The breakage is a wrong database password (issue 16): the same version 1.1.0 with DB_PASSWORD
    from another secret is a new release; its api's /health fails on the refused login to the fleet's
    real PostgreSQL, so the canary fails its health gate and is rolled back, and nothing else moves."""
    ctx.ensure("1.1.0")
    before = ctx.status()
    previous = {h: ctx.fleet.exec(h, ["readlink", "/opt/fleet/dify/previous"]).stdout.strip() for h in HOSTS}
    defaults = Path(ctx.inv) / "defaults.yaml"
    saved = defaults.read_text()
    doc = yaml.safe_load(saved)
    # a fleet with a release store reads its secrets from Secret Manager (VMs the MIG creates must
    # read them too): the wrong password is pushed there as a secret of its own
    doc["data"]["secrets"]["DB_PASSWORD"] = {"secret_manager": "test-wrong-db-password"}
    defaults.write_text(yaml.safe_dump(doc, sort_keys=False))
    wrong = "wrong-" + os.urandom(6).hex()
    ctx.env["FLEET_TEST_WRONG_DB_PASSWORD"] = wrong
    try:
        r = ctx.fab("secrets.push", "--inventory", ctx.inv, "--name", "DB_PASSWORD", "--from-env",
                    "FLEET_TEST_WRONG_DB_PASSWORD")  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        with ctx.load() as load:
            code, report, out = ctx.json("rollout", "--version", "1.1.0", "--yes", "--health-timeout", "10")
    finally:
        defaults.write_text(saved)
        del ctx.env["FLEET_TEST_WRONG_DB_PASSWORD"]
    assert code == 3, out
    assert_no_failed_requests(load.report(), at_least=100)
    assert set(load.report().versions) == {"1.1.0"}
    assert report["outcome"] == "rolled-back" and report["migration"] is None, out
    results = {h["host"]: h for h in report["hosts"]}
    assert results[H1]["result"] == "rolled-back" and "1.1.0 not healthy" in results[H1]["error"]
    journal = "\n".join(p.read_text() for p in ctx.journal_dir.rglob("*.jsonl"))
    assert wrong not in out + r.stdout + r.stderr and wrong not in journal  # masked everywhere
    assert [results[h]["result"] for h in HOSTS[1:]] == ["not-started"] * 3
    st = assert_fleet_on(ctx, "1.1.0")
    assert {h: st[h]["release"] for h in HOSTS} == {h: before[h]["release"] for h in HOSTS}
    assert st[H1]["last"]["action"] == "rollback" and st[H1]["last"]["result"] == "ok"
    # the canary is left exactly as before: even its `previous` link (a later rollback goes to 1.0.0)
    assert {
        h: ctx.fleet.exec(h, ["readlink", "/opt/fleet/dify/previous"]).stdout.strip() for h in HOSTS
    } == previous
    assert_settled(ctx)


def test_sigint_mid_batch_then_resume(ctx: Ctx) -> None:
    ctx.ensure("1.1.0")
    # back to 1.0.0 crosses the migration of the first test: refused, naming its restore point
    r = ctx.fab("rollback", "--inventory", ctx.inv, "--yes")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "rollback across a database schema change" in r.stderr
    assert "the restore point taken before migrating to dify-1.1.0" in r.stderr
    assert "--force-schema-rollback" in r.stderr
    assert_fleet_on(ctx, "1.1.0")
    with ctx.load() as load:
        ctx.started = time.time() - 1
        proc = ctx.start(
            "rollback",
            "--inventory",
            ctx.inv,
            "--yes",
            "--json",
            "--canary",
            "0",
            "--batch",
            "2",
            "--force-schema-rollback",
        )
        ctx.wait_for_step(proc, H1, "up")
        ctx.wait_for_step(proc, H2, "up")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 4, stdout + stderr
        report = json.loads(stdout)
        assert report["outcome"] == "interrupted"
        results = {h["host"]: h["result"] for h in report["hosts"]}
        # the batch in flight finished its hosts (they had switched); the next batch never started
        assert results == {H1: "updated", H2: "updated", H3: "not-started", H4: "not-started"}
        assert "fab rollback --inventory" in stderr and "--resume" in stderr
        st = ctx.status()
        assert not any(st[h]["drained"] for h in HOSTS)
        assert_settled(ctx)

        code, resumed, out = ctx.json("rollback", "--resume")
    assert code == 0, out
    assert resumed["rollout_id"] == report["rollout_id"] and resumed["outcome"] == "succeeded"
    assert {h["host"]: h["result"] for h in resumed["hosts"]} == dict.fromkeys(HOSTS, "updated")
    assert_no_failed_requests(load.report())
    assert_fleet_on(ctx, "1.0.0")
    assert_settled(ctx)


def test_sigkill_mid_step_then_resume(ctx: Ctx) -> None:
    ctx.ensure("1.0.0")
    runs_before = migration_runs(ctx)
    with ctx.load() as load:
        ctx.started = time.time() - 1
        proc = ctx.start(
            "rollout", "--inventory", ctx.inv, "--version", "1.1.0", "--yes", "--canary", "0", "--batch", "2"
        )
        ctx.wait_for_step(proc, H2, "up")
        proc.kill()
        proc.communicate(timeout=30)
        # killed with a host drained: the fleet still says so, and the lock still holds the fleet
        st = ctx.status()
        assert st[H2]["drained"] is True
        code, lock, _ = ctx.json("lock.status")
        assert lock["held"] is True and lock["lock"]["owner"] == "tester@ci"
        killed_id = lock["lock"]["rollout_id"]
        assert ctx.labels()[H2].get(ROLLOUT_LABEL) == killed_id  # autoheal keeps away meanwhile

        code, resumed, out = ctx.json("rollout", "--resume")
    assert code == 0, out
    assert resumed["rollout_id"] == killed_id and resumed["outcome"] == "succeeded"
    assert_no_failed_requests(load.report())
    # the migration phase ran once (the database already was at dify-1.1.0), not again on resume
    assert migration_runs(ctx)[len(runs_before) :] == [("1.1.0", "dify-1.1.0", "current")]
    st = assert_fleet_on(ctx, "1.1.0")
    assert all(st[h]["last"]["rollout"] == killed_id for h in HOSTS)
    assert_settled(ctx)


def test_instance_stopped_mid_batch_pauses_then_resume(ctx: Ctx) -> None:
    ctx.ensure("1.1.0")
    with ctx.load() as load:
        ctx.started = time.time() - 1
        proc = ctx.start(
            "rollout",
            "--inventory",
            ctx.inv,
            "--version",
            "1.0.0",
            "--yes",
            "--json",
            "--canary",
            "0",
            "--batch",
            "4",
            "--on-failure",
            "pause",
        )
        ctx.wait_for_step(proc, H2, "up")
        ctx.fleet.stop_instance(H2)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 4, stdout + stderr
        report = json.loads(stdout)
        assert report["outcome"] == "paused" and report["failures"] == 1 and report["resume_command"]
        hosts = {h["host"]: h for h in report["hosts"]}
        # --batch 4 asked for the whole fleet at once: one host stays in the LB (the next batch)
        assert [hosts[h]["batch"] for h in HOSTS] == [0, 0, 0, 1]
        assert hosts[H4]["result"] == "not-started"
        # whatever the stop hit first (sshd or the host's dockerd), the host is reported as failed
        assert hosts[H2]["result"] in ("unreachable", "failed") and hosts[H2]["error"]
        assert [hosts[h]["result"] for h in (H1, H3)] == ["updated"] * 2
        code, lock, _ = ctx.json("lock.status")
        assert lock["held"] is False  # paused: the lock is released, the operator decides

        ctx.fleet.start_instance(H2)
        code, resumed, out = ctx.json("rollout", "--resume")
    assert code == 0, out
    results = {h["host"]: h["result"] for h in resumed["hosts"]}
    assert results[H2] == "updated" and results[H4] == "updated"
    assert_no_failed_requests(load.report())
    assert_fleet_on(ctx, "1.0.0")
    assert_settled(ctx)


def test_beat_role_moves_without_two_beats_and_takes_over_an_expired_lock(ctx: Ctx, tmp_path: Path) -> None:
    ctx.ensure("1.0.0")
    moved = tmp_path / "inventory"
    shutil.copytree(ctx.fleet.inventory_dir, moved, symlinks=True)
    hosts = yaml.safe_load((moved / "hosts.yaml").read_text())
    hosts[H1]["data"]["roles"] = ["app"]
    hosts[H3]["data"]["roles"] = ["app", "beat"]
    (moved / "hosts.yaml").write_text(yaml.safe_dump(hosts))
    # a rollout that died an hour ago left its lock behind: it has expired, so it is taken over
    old = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    dead = Lock("inventory", "ghost@gone", "", "ro-20200101-000000-dead", old, old + timedelta(minutes=5))
    items, fp = ctx.compute.project_metadata("local-project")
    ctx.compute.set_project_metadata("local-project", {**items, "compose-fleet-lock": lock_to_json(dead)}, fp)

    before = ctx.beat_running_now()
    assert before == {H1}
    events = ctx.watch()
    with ctx.load() as load:
        # the new beat host goes first, while the old one still runs its release with beat enabled
        code, report, out = ctx.json(
            "rollout", "--hosts", H3, "--yes", "--version", "1.0.0", inventory=str(moved)
        )
        assert code == 0, out
        assert "taking over an expired lock" in out and "ghost@gone" in out
        assert [(h["host"], h["result"]) for h in report["hosts"]] == [(H3, "updated")]
        assert ctx.beat_running_now() == {H3}
        code, _report, out = ctx.json(
            "rollout", "--hosts", H1, "--yes", "--version", "1.0.0", inventory=str(moved)
        )
        assert code == 0, out
    events.stop()
    assert_no_failed_requests(load.report(), at_least=100)
    # stopped on the old host before the new host started it
    assert [(h, a) for _t, h, a, _c in events.of("worker_beat")] == [(H1, "die"), (H3, "start")]
    assert events.most_at_once("worker_beat", before) == 1
    assert ctx.beat_running_now() == {H3}
    assert_settled(ctx)


def test_a_held_lock_refuses_a_second_operator(ctx: Ctx) -> None:
    store = ctx.lock_store()
    store.acquire("alice@elsewhere", "hotfix in progress", "ro-20261126-000000-beef", ttl=600)
    try:
        before = {h: s["release"] for h, s in ctx.status().items()}
        r = ctx.fab("rollout", "--inventory", ctx.inv, "--version", "1.1.0", "--yes")
        assert r.returncode == 2, r.stdout + r.stderr
        for word in (
            "alice@elsewhere",
            "hotfix in progress",
            "ro-20261126-000000-beef",
            "lock.release --force",
        ):
            assert word in r.stderr
        assert {h: s["release"] for h, s in ctx.status().items()} == before
        assert not any(s["drained"] for s in ctx.status().values())

        _code, lock, _ = ctx.json("lock.status")
        assert lock["held"] and lock["lock"]["owner"] == "alice@elsewhere"
        r = ctx.fab("lock.release", "--inventory", ctx.inv)
        assert r.returncode == 2 and "not yours" in r.stderr
        r = ctx.fab("lock.release", "--inventory", ctx.inv, "--force")
        assert r.returncode == 0 and "alice@elsewhere" in r.stdout + r.stderr
    finally:
        store.release(owner="alice@elsewhere", force=True)
    assert_settled(ctx)
