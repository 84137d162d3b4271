"""bench/instant_docker (the engine-at-scale benchmark's benchmark-only stand-ins for `docker` and
`curl`) against the product's own commands and parsers: the scripts fleet/commands/ builds, run by
`sh` with the stand-ins first on PATH, on a release rendered by the real bundle code. If a command
changes (a new docker subcommand, another output format), this fails instead of the benchmark
silently measuring something else. No SSH and no Docker here: the stand-ins are plain shell."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from fleet.commands import facts as fc
from fleet.commands import health
from fleet.commands import release as rc
from fleet.commands import rollout as cr
from fleet.commands.base import Command
from fleet.release import bundle

STANDINS = Path(__file__).resolve().parents[2] / "bench" / "instant_docker"
META = bundle.ReleaseMeta(operator="bench@local", source_commit="0" * 40, created="2026-11-29T00:00:00Z")
SECRETS = {
    k: f"bench-{k.lower()}-0123456789"
    for k in (
        "SECRET_KEY",
        "DB_PASSWORD",
        "REDIS_PASSWORD",
        "PGVECTOR_PASSWORD",
        "SANDBOX_API_KEY",
        "PLUGIN_DAEMON_KEY",
        "PLUGIN_DIFY_INNER_API_KEY",
    )
}
VARS = {
    "DB_HOST": "10.10.0.3",
    "REDIS_HOST": "10.10.0.4",
    "PGVECTOR_HOST": "10.10.0.5",
    "GOOGLE_STORAGE_BUCKET_NAME": "files",
}


class Host:
    """One host's release layout and the stand-ins' state, in a temporary directory."""

    def __init__(self, root: Path, beat: bool) -> None:
        self.root = root
        self.layout = rc.Layout(str(root / "app"), "h001")
        self.beat = beat
        self.env = {
            "PATH": f"{STANDINS}:/usr/local/bin:/usr/bin:/bin",
            "INSTANT_DOCKER_STATE": str(root / "instant-docker"),
            "INSTANT_APP_DIR": self.layout.root,
        }
        (root / "instant-docker").mkdir()
        for d in (self.layout.releases, self.layout.state):
            Path(d).mkdir(parents=True)

    def stage(self, version: str) -> bundle.Bundle:
        variables = {**VARS, "DIFY_VERSION": version}
        variables |= bundle.host_variables(self.layout.root, ["app", "beat"] if self.beat else ["app"], 80)
        b = bundle.render(bundle.load_source(), variables, SECRETS, META, where="h001")
        with tarfile.open(fileobj=io.BytesIO(b.tar_bytes())) as tar:
            tar.extractall(self.layout.release(b.release_id), filter="data")
        return b

    def run(self, cmd: Command, ok: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["sh", "-c", cmd.shell()], env=self.env, capture_output=True, text=True, check=False, timeout=30
        )
        if ok:
            assert r.returncode == 0, (cmd.purpose, r.stdout, r.stderr)
        return r


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path, beat=True)


def test_preflight_probes_and_facts_parse(host: Host) -> None:
    assert host.run(health.DOCKER_PROBE).stdout.strip() == "ok"
    free = rc.parse_disk_free(host.run(rc.disk_free(host.layout)).stdout)
    assert set(free) == {host.layout.root, host.env["INSTANT_DOCKER_STATE"]}
    host.run(rc.require_free(host.layout, 1))
    facts = fc.parse_facts(host.run(fc.facts_command(host.layout.root)).stdout)
    assert facts["docker"] == "27.0.0-instant" and facts["compose"] == "2.29.7-instant"
    # the rollout's one-round-trip preflight
    assert rc.parse_host_state(host.run(rc.ready_state(host.layout, 1)).stdout).exists


def test_validation_hashes_and_the_migration_phase(host: Host) -> None:
    b = host.stage("1.0.0")
    hashes = rc.parse_hashes(host.run(rc.compose_check_hashes(host.layout, b.release_id)).stdout)
    assert set(hashes) == set(b.services)
    assert "instant migration" in host.run(rc.compose_migrate(host.layout, b.release_id)).stdout


def test_a_switch_and_up_verify_through_the_products_parsers(host: Host) -> None:
    old, new = host.stage("1.0.0"), host.stage("1.1.0")
    port = 80
    assert health.parse_health(host.run(health.health_command(port), ok=False).stdout) == (0, None)
    for b in (old, new):
        host.run(rc.compose_check(host.layout, b.release_id))
        host.run(rc.compose_pull(host.layout, b.release_id))
        host.run(cr.switch_when_idle(host.layout, b.release_id))
        host.run(rc.compose_up(host.layout, b.release_id, disabled=b.disabled_services))
        hashes = rc.parse_hashes(host.run(rc.compose_hashes(host.layout, b.release_id)).stdout)
        assert set(hashes) == set(b.services)
        states = rc.parse_ps(host.run(rc.compose_ps(host.layout)).stdout, host.layout)
        assert {s.service for s in states} == set(b.services)
        assert all(s.ok and s.release == b.release_id for s in states)
        assert rc.drift(states, hashes) == []
        assert health.parse_health(host.run(health.health_command(port)).stdout) == (200, b.version)
        ps_out, probe_out = rc.split_look(host.run(rc.look(host.layout, port)).stdout)
        assert rc.parse_ps(ps_out, host.layout) == states
        assert health.parse_health(probe_out) == (200, b.version)
        state = rc.parse_host_state(host.run(rc.host_state(host.layout)).stdout)
        assert (state.current, state.version) == (b.release_id, b.version)
    # the old release's hashes no longer match what runs: drift, as with Compose
    old_hashes = rc.parse_hashes(host.run(rc.compose_hashes(host.layout, old.release_id)).stdout)
    assert rc.drift(rc.parse_ps(host.run(rc.compose_ps(host.layout)).stdout, host.layout), old_hashes)


def test_drain_and_worker_beat(host: Host) -> None:
    b = host.stage("1.0.0")
    host.run(cr.switch_when_idle(host.layout, b.release_id))
    host.run(rc.compose_up(host.layout, b.release_id, disabled=b.disabled_services))
    host.run(rc.drain(host.layout))
    assert health.parse_health(host.run(health.health_command(80)).stdout)[0] == 503
    r = host.run(cr.undrain_then_probe(host.layout, 80))
    assert health.parse_health(r.stdout) == (200, "1.0.0")
    assert host.run(cr.beat_running(host.layout)).stdout.strip()
    host.run(cr.beat_stop(host.layout))
    assert not host.run(cr.beat_running(host.layout)).stdout.strip()
    host.run(cr.beat_start(host.layout, b.release_id))
    assert host.run(cr.beat_running(host.layout)).stdout.strip()


def test_anything_else_is_refused_loudly(host: Host) -> None:
    for script in ("docker run busybox", "docker compose -p h001 logs", "curl https://example.com"):
        r = host.run(Command(script, "unsupported"), ok=False)
        assert r.returncode == 64 and "unsupported" in r.stderr
