"""`fab rollout --strategy replace` end to end through the real CLI: the plan is read over SSH from
sshd hosts (their release layout is a directory here; `docker` answers the preflight and the
worker_beat probe: nothing runs), and the MIG is the in-memory Compute stand-in served over HTTP
(standins/compute_api.py), its VMs booted by the agent's report (tests/integration/
test_rollout_replace.py). No Docker. Success, a broken canary put back, SIGKILL then --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.gcp import migupdate as mu
from fleet.local.sshd_hosts import SshdFleet
from fleet.rollout.journal import read
from tests.integration.test_rollout_replace import BASE, PROJECT, ZONE, Stand
from tests.unit.test_rollout_engine import BAD, NEW, OLD, OLDER

pytestmark = pytest.mark.sshd

REPO = Path(__file__).resolve().parents[2]

# what the preflight (fleet/commands/health.py DOCKER_PROBE) and the worker_beat probe ask of Docker
DOCKER = """#!/bin/sh
case "$1" in
  info) echo 26.1.5 ;;
  compose) echo 2.26.1 ;;
  ps) ;;
  *) echo "docker $*: not expected on a host of a replace rollout" >&2; exit 1 ;;
esac
"""


class Rig:
    """Four MIG members in the stand-in, four sshd hosts naming them (gce.instance), one inventory."""

    def __init__(self, root: Path) -> None:
        self.stand = Stand(4)
        bindir = root / "bin"
        bindir.mkdir(parents=True)
        (bindir / "docker").write_text(DOCKER)
        (bindir / "docker").chmod(0o755)
        path = f"{bindir}:/usr/local/bin:/usr/bin:/bin"
        self.fleet = SshdFleet(root / "fleet").create(4, session_env=lambda name, hdir: {"PATH": path})
        app = self.fleet.root / "app"
        for i, rel in enumerate((OLDER, OLD, NEW, BAD)):
            d = app / "releases" / rel.id
            d.mkdir(parents=True)
            body = {"version": rel.version, "disabled_services": list(rel.disabled)}
            (d / "release.json").write_text(json.dumps(body, indent=2) + "\n")  # as a bundle writes it
            os.utime(d, (1_700_000_000 + i, 1_700_000_000 + i))
        (app / "current").symlink_to(f"releases/{OLD.id}")
        (app / "previous").symlink_to(f"releases/{OLDER.id}")
        inv = self.fleet.inventory_dir
        hosts = yaml.safe_load((inv / "hosts.yaml").read_text())
        self.host_of = dict(zip(self.stand.members, hosts, strict=True))  # MIG member -> inventory host
        for member, name in self.host_of.items():
            hosts[name]["data"] = {"gce": {"instance": member}}
        (inv / "hosts.yaml").write_text(yaml.safe_dump(hosts, sort_keys=False))
        defaults = yaml.safe_load((inv / "defaults.yaml").read_text())
        defaults["data"]["app"]["min_free_mb"] = 0
        defaults["data"]["gce"] = {
            "project": PROJECT,
            "zone": ZONE,
            "api_endpoint": self.stand.api.url,
            "migs": [{"project": PROJECT, "zone": ZONE, "name": "web"}],
        }
        defaults["data"]["lb"] = {"kind": "gcp", "backend": "web-bs", "check_interval": 0.5}
        defaults["data"]["rollout"] = {"strategy": "replace", "canary": 1, "batch": 2}
        # these releases change the schema revision (compose/releases.yaml), and the replace strategy
        # runs no migration: the operator migrates (test_a_schema_change_is_refused_by_replace)
        defaults["data"]["dify"] = {**(defaults["data"].get("dify") or {}), "migrations": "off"}
        (inv / "defaults.yaml").write_text(yaml.safe_dump(defaults, sort_keys=False))
        self.fleet.start()
        self.journals = root / "journals"
        self.env = {**os.environ, "FLEET_JOURNAL_DIR": str(self.journals)}
        self.env.pop("FLEET_COMPUTE_ENDPOINT", None)

    def argv(self, *args: str) -> list[str]:
        fab = str(Path(sys.executable).with_name("fab"))
        return [fab, *args, "--inventory", str(self.fleet.inventory_dir)]

    def fab(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), cwd=REPO, capture_output=True, text=True, timeout=180, env=self.env
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )

    def lock(self) -> tuple[bool, str | None]:
        """(held, rollout id) of the fleet lock, as `fab lock.status` shows it."""
        r = self.fab("lock.status", "--json")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        return got["held"], (got["lock"] or {}).get("rollout_id")

    def journal(self) -> list[dict[str, Any]]:
        [path] = sorted(self.journals.rglob("*.jsonl"))
        return read(path)

    def template_of(self, release: Any) -> str:
        base = self.stand.move.template(BASE)
        assert base is not None
        return mu.template_name(BASE, mu.release_properties(base, release.id, release.version))

    def close(self) -> None:
        self.fleet.destroy()
        self.stand.close()


@pytest.fixture(autouse=True)
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def test_dry_run_shows_the_template_diff_and_policy_and_changes_nothing(rig: Rig) -> None:
    before = len(rig.stand.api.actions())
    r = rig.fab("rollout", "--release", NEW.version, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)
    assert payload["dry_run"] is True and payload["strategy"] == "replace"
    replace = payload["replace"]
    assert replace["mig"] == f"{PROJECT}/{ZONE}/web" and replace["current"] == BASE
    assert replace["template"] == rig.template_of(NEW) and replace["exists"] is False
    assert f"{mu.RELEASE_KEY}: - -> {NEW.id}" in replace["diff"]
    assert replace["update_policy"]["replacementMethod"] == "RECREATE"
    assert replace["update_policy"]["maxUnavailable"] == {"fixed": 2}
    assert [len(b) for b in payload["batches"]] == [1, 2, 1]
    text = rig.fab("rollout", "--release", NEW.version, "--dry-run")
    assert text.returncode == 0, text.stderr
    assert f"template {BASE} -> {rig.template_of(NEW)} (to be created)" in text.stdout
    assert len(rig.stand.api.actions()) == before  # nothing created, set or recreated
    assert not rig.journals.exists() or not list(rig.journals.rglob("*.jsonl"))


def test_a_schema_change_is_refused_by_replace_and_nothing_changes(rig: Rig) -> None:
    defaults_path = rig.fleet.inventory_dir / "defaults.yaml"
    defaults = yaml.safe_load(defaults_path.read_text())
    defaults["data"]["dify"]["migrations"] = "phase"
    defaults_path.write_text(yaml.safe_dump(defaults, sort_keys=False))
    before = len(rig.stand.api.actions())
    for extra in (("--dry-run",), ("--yes",)):
        r = rig.fab("rollout", "--release", NEW.version, *extra)
        assert r.returncode != 0, r.stdout
        assert "--strategy replace does not run database migrations yet" in r.stderr, r.stderr
        assert "--strategy ssh" in r.stderr and "nothing was changed" in r.stderr
    assert len(rig.stand.api.actions()) == before  # no template, no policy, no recreate
    assert "the fleet lock is free" in rig.fab("lock.status").stdout


def test_replace_rollout_succeeds_with_lock_journal_and_json(rig: Rig) -> None:
    r = rig.fab("rollout", "--release", NEW.version, "--yes", "--json", "--min-ready", "0.2")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["outcome"] == "succeeded" and report["exit_code"] == 0
    assert {h["result"] for h in report["hosts"]} == {"updated"}
    template = rig.template_of(NEW)
    assert rig.stand.state() == dict.fromkeys(rig.stand.members, (template, NEW.id))
    applied = rig.stand.api.calls("instanceGroupManagers.applyUpdatesToInstances")
    assert [len(c.body["instances"]) for c in applied] == [1, 2, 1]
    events = rig.journal()
    assert events[0]["event"] == "plan" and events[0]["strategy"] == "replace"
    assert events[-1]["event"] == "end" and events[-1]["outcome"] == "succeeded"
    assert [e["template"] for e in events if e["event"] == "mig"] == [template] * 3  # one per batch
    assert rig.lock() == (False, None)  # released at the end


def test_broken_canary_puts_the_mig_back_on_the_previous_template(rig: Rig) -> None:
    r = rig.fab("rollout", "--release", BAD.version, "--yes", "--json", "--min-ready", "0.2")
    assert r.returncode == 3, (r.stdout, r.stderr)
    report = json.loads(r.stdout)
    assert report["outcome"] == "rolled-back" and report["exit_code"] == 3
    results = {h["host"]: h["result"] for h in report["hosts"]}
    assert sorted(results.values()) == ["not-started"] * 3 + ["rolled-back"]
    canary = next(h for h, res in results.items() if res == "rolled-back")
    assert "agent failed to boot" in next(h["error"] for h in report["hosts"] if h["host"] == canary)
    old = rig.template_of(OLD)
    states = rig.stand.state()
    igm = rig.stand.compute.mig(rig.stand.move.mig)
    assert igm.instance_template.endswith(f"/{old}")  # the MIG's template is the previous release's
    member = next(m for m, h in rig.host_of.items() if h == canary)
    assert states[member] == (old, OLD.id)  # the canary recreated from it
    assert {s for m, s in states.items() if m != member} == {(BASE, OLD.id)}  # the others untouched


def test_sigkill_mid_rollout_then_resume_completes(rig: Rig) -> None:
    proc = rig.start("rollout", "--release", NEW.version, "--yes", "--json", "--min-ready", "0.2")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # killed once the second batch's MIG call went out
            applied = rig.stand.api.calls("instanceGroupManagers.applyUpdatesToInstances")
            if len(applied) >= 2:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the second batch never started")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed = rig.journal()
    assert killed[-1]["event"] != "end"
    assert rig.lock() == (True, killed[0]["rollout_id"])  # left held by the killed operator
    r = rig.fab("rollout", "--resume", "--yes", "--json", "--min-ready", "0.2")
    assert r.returncode == 0, (r.stdout, r.stderr)
    report = json.loads(r.stdout)
    assert report["outcome"] == "succeeded"
    assert rig.stand.state() == dict.fromkeys(rig.stand.members, (rig.template_of(NEW), NEW.id))
    applied = rig.stand.api.calls("instanceGroupManagers.applyUpdatesToInstances")
    recreated = [u.rsplit("/", 1)[-1] for c in applied for u in c.body["instances"]]
    assert sorted(recreated) == sorted(rig.stand.members)  # each member recreated once, not twice
    events = rig.journal()
    assert [e["event"] for e in events].count("resume") == 1 and events[-1]["event"] == "end"
    assert report["rollout_id"] == killed[0]["rollout_id"] and rig.lock() == (False, None)
