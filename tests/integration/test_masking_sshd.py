"""No secret, in any form, in anything the tool prints or writes: `fab diff`, `fab deploy --dry-run`,
`fab rollout --dry-run` (text and --json) against real OpenSSH hosts whose current release holds old
secrets, old .env keys the schema no longer knows, and values that need escaping; plus a failing host
step whose error output echoes the release's .env line."""

from __future__ import annotations

import json
import os
import re
import shlex
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fleet.commands import release as rc
from fleet.commands.base import Command
from fleet.inventory import load
from fleet.local.sshd_hosts import SshdFleet
from fleet.release import bundle, envfile
from fleet.release import hoststeps as ht
from fleet.ssh.runner import HostContext, HostResult, run_on
from tests.fixtures.sshd import fab

pytestmark = pytest.mark.sshd

META = bundle.ReleaseMeta(operator="alice", source_commit="c0ffee", created="2026-11-26T07:00:00Z")
VARS = {
    "DIFY_VERSION": "1.1.0",
    "DB_HOST": "10.0.0.3",
    "REDIS_HOST": "10.0.0.4",
    "PGVECTOR_HOST": "10.0.0.5",
    "GOOGLE_STORAGE_BUCKET_NAME": "files",
}
# what the inventory resolves now (from the operator's environment) ...
NEW = {
    "SECRET_KEY": "NEWsk-Q7'r\"$HOME\\x",
    "DB_PASSWORD": "NEWdb-K3 p@ss/w:rd",
    "REDIS_PASSWORD": "NEWredis-M8/pa:ss@w%rd '",
    "PGVECTOR_PASSWORD": "NEWpgv-Z1$(id)",
    "SANDBOX_API_KEY": "NEWsandbox-J4key",
    "PLUGIN_DAEMON_KEY": "NEWplugin-H6key",
    "PLUGIN_DIFY_INNER_API_KEY": "NEWinner-G2key",
}
# ... and what the host's current release still holds (rotated since), with retired keys
OLD = {k: v.replace("NEW", "OLD") for k, v in NEW.items()}
RETIRED = {
    "SENTRY_DSN": "https://OLDsentry9f8e7d@o1.ingest.sentry.io/42",
    "SMTP_PASS": "OLDsmtp-hunter2",
    "DATABASE_URL": "postgresql://dify:OLDdburl-x1y2@10.0.0.3/dify",
}


def forms(value: str) -> set[str]:
    return {
        value,
        shlex.quote(value),
        envfile.quote("K", value)[1:-1],
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
        json.dumps(value)[1:-1],
    }


SEEDED = [*NEW.values(), *OLD.values(), *RETIRED.values()]
# the distinctive core of each value: a partial leak (say, the part before a quote) is a leak too
CORES = ["NEWsk-Q7", "NEWdb-K3", "NEWredis-M8", "NEWpgv-Z1", "OLDsk-Q7", "OLDdb-K3", "OLDredis-M8"]
CORES += ["OLDpgv-Z1", "OLDsentry9f8e7d", "OLDsmtp-hunter2", "OLDdburl-x1y2", "sandbox-J4key", "plugin-H6key"]
CORES += ["inner-G2key"]


def assert_clean(where: str, text: str) -> None:
    for value in SEEDED:
        for form in forms(value):
            assert form not in text, f"{where}: a form of {value[:6]}... leaked"
    for core in CORES:
        assert core not in text, f"{where}: {core} leaked"


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[SshdFleet, dict[str, str]]]:
    fleet = SshdFleet(tmp_path / "fleet").create(2)  # both hosts are this machine: one app dir
    defaults_path = fleet.inventory_dir / "defaults.yaml"
    defaults = yaml.safe_load(defaults_path.read_text())
    defaults["data"]["vars"] = VARS
    defaults["data"]["secrets"] = {k: {"env": f"SEEDED_{k}"} for k in NEW}
    defaults_path.write_text(yaml.safe_dump(defaults))
    for h in fleet.hosts:
        config = fleet.root / h.name / "sshd_config"
        config.write_text(config.read_text() + "Subsystem sftp internal-sftp\n")
    fleet.start()

    # h01 runs an older release: old secrets, retired keys, and a compose file that spelled the
    # broker URL out (password URL-encoded) where the new one does not
    layout = rc.Layout(str(fleet.root / "app"))
    source = bundle.load_source()
    old = bundle.render(
        source, {**VARS, "DIFY_VERSION": "1.0.0", **bundle.host_variables(layout.root)}, OLD, META
    )
    files = old.file_bytes()
    files[bundle.ENV_FILE] += envfile.render(RETIRED)
    broker = old.env["CELERY_BROKER_URL"]
    files[bundle.COMPOSE_FILE] += f"# result backend was {broker.rsplit('/', 1)[0]}/3\n".encode()
    rel = Path(layout.release(old.release_id))
    for path, data in files.items():
        (rel / path).parent.mkdir(parents=True, exist_ok=True)
        (rel / path).write_bytes(data)
    (rel / bundle.ENV_FILE).chmod(0o600)
    Path(layout.state).mkdir(parents=True)
    Path(layout.history).touch()
    os.symlink(f"releases/{old.release_id}", layout.current)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **{f"SEEDED_{k}": v for k, v in NEW.items()},
        "FLEET_JOURNAL_DIR": str(tmp_path / "journal"),
        "HOME": str(home),
    }
    try:
        yield fleet, env
    finally:
        fleet.destroy()


def written_files(fleet: SshdFleet, env: dict[str, str]) -> list[Path]:
    """Everything the tool could have written: journal, HOME, the hosts' app dirs (but the releases
    themselves, which hold the .env by design)."""
    roots = [Path(env["FLEET_JOURNAL_DIR"]), Path(env["HOME"]), fleet.root / "app", fleet.inventory_dir]
    out = []
    for root in roots:
        if root.exists():
            out += [p for p in root.rglob("*") if p.is_file() and "releases" not in p.relative_to(root).parts]
    return out


def test_diff_and_dry_run_print_and_write_no_secret(seeded: tuple[SshdFleet, dict[str, str]]) -> None:
    fleet, env = seeded
    inv = ["--inventory", str(fleet.inventory_dir)]
    runs = {
        "diff": fab("diff", *inv, env=env),
        "diff --json": fab("diff", *inv, "--json", env=env),
        "deploy --dry-run": fab("deploy", "--dry-run", *inv, env=env),
        "deploy --dry-run --json": fab("deploy", "--dry-run", *inv, "--json", env=env),
        "rollout --dry-run": fab("rollout", "--dry-run", *inv, env=env),
        "rollout --dry-run --json": fab("rollout", "--dry-run", *inv, "--json", env=env),
    }
    for name, r in runs.items():
        assert r.returncode == 0, (name, r.stdout[-2000:], r.stderr[-2000:])
        assert_clean(f"{name} stdout", r.stdout)
        assert_clean(f"{name} stderr", r.stderr)
    # the diff did show what changed, with the retired keys named and masked
    text = runs["diff"].stdout
    assert re.search(r"~ DIFY_VERSION +: '1\.0\.0' -> '1\.1\.0'", text), text
    for key in RETIRED:
        assert f"- {key}" in text and "(was ******)" in text
    assert "docker-compose.yaml" in text and "# result backend was" in text
    report = json.loads(runs["diff --json"].stdout)
    h01 = next(h for h in report["hosts"] if h["host"] == "h01")
    removed = {c["key"]: c["old"] for c in h01["diff"]["env"] if c["change"] == "removed"}
    assert removed == dict.fromkeys(RETIRED, "******")
    for path in written_files(fleet, env):
        assert_clean(str(path), path.read_text(errors="replace"))


def test_failing_step_output_with_the_env_line_is_masked(seeded: tuple[SshdFleet, dict[str, str]]) -> None:
    """A step fails on the host and its stderr quotes the staged .env (as escaped there) and the
    broker URL (password URL-encoded): the error the operator sees carries neither."""
    fleet, env = seeded
    for key, value in env.items():
        os.environ[key] = value
    try:
        inventory = load(str(fleet.inventory_dir))
        hosts = [inventory.hosts["h02"]]
        b = ht.bundle_for(inventory, hosts[0], bundle.load_source(), META)

        def step(ctx: HostContext) -> HostResult:
            ht.stage(ctx, b)
            release = ht.layout_of(ctx.host).release(b.release_id)
            lines = "^(SECRET_KEY|DB_PASSWORD|REDIS_PASSWORD|CELERY_BROKER_URL)="
            env_file = shlex.quote(release + "/.env")
            echo = Command(f"grep -E '{lines}' {env_file} >&2; exit 1", "validate release")
            ht.run(ctx, echo, "validate")
            return HostResult(ctx.host.name, "ok")

        result = run_on(inventory, hosts, step)[0]
    finally:
        for key in env:
            os.environ.pop(key, None)
    assert result.status == "failed" and result.error, result
    assert "validate release failed" in result.error and "CELERY_BROKER_URL=" in result.error
    assert_clean("step error", result.error)
