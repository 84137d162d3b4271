"""Staging over real OpenSSH: no moment at which another local user of the host can read a secret.

The sshd hosts run as root on this machine; a second, unprivileged account (created here if missing)
tries to read everything the stage left behind, with `runuser`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fleet.commands import bootstrap as bc
from fleet.commands import release as rc
from fleet.inventory import load
from fleet.local.sshd_hosts import SshdFleet
from fleet.release import bundle
from fleet.release import hoststeps as ht
from fleet.ssh.runner import HostContext, HostResult, command_step, run_on
from tests.unit.test_commands_release import META, SECRETS

pytestmark = pytest.mark.sshd

PROBE_USER = "fleet-probe"


@pytest.fixture(scope="module")
def probe_user() -> str:
    """An unprivileged local account that is not in the deploy user's group."""
    if subprocess.run(["id", PROBE_USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PROBE_USER],
            check=True,
            capture_output=True,
        )
    return PROBE_USER


@pytest.fixture
def fleet_host(tmp_path: Path) -> Iterator[tuple[SshdFleet, Path]]:
    """One sshd host whose app dir sits under a directory everyone may traverse (unlike tmp_path)."""
    public = Path(tempfile.mkdtemp(prefix="cf-stage-"))
    public.chmod(0o755)
    fleet = SshdFleet(tmp_path / "fleet").create(1)
    defaults_path = fleet.inventory_dir / "defaults.yaml"
    defaults = yaml.safe_load(defaults_path.read_text())
    defaults["data"]["app"]["dir"] = str(public / "app")
    defaults_path.write_text(yaml.safe_dump(defaults))
    for h in fleet.hosts:  # like a real VM: the sftp subsystem is there (older stages uploaded with it)
        config = fleet.root / h.name / "sshd_config"
        config.write_text(config.read_text() + "Subsystem sftp internal-sftp\n")
    fleet.start()
    try:
        yield fleet, public / "app"
    finally:
        fleet.destroy()
        shutil.rmtree(public, ignore_errors=True)


def readable_by(user: str, path: Path) -> bool:
    """Can `user` read the file (or list the directory) at `path`?"""
    argv = ["ls", "-A", str(path)] if path.is_dir() else ["cat", str(path)]
    proc = subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, check=False)
    return proc.returncode == 0


def make(root: str, version: str = "1.0.0") -> bundle.Bundle:
    variables = {
        "DIFY_VERSION": version,
        "DB_HOST": "10.0.0.3",
        "REDIS_HOST": "10.0.0.4",
        "PGVECTOR_HOST": "10.0.0.5",
        "GOOGLE_STORAGE_BUCKET_NAME": "files",
        **bundle.host_variables(root),
    }
    return bundle.render(bundle.load_source(), variables, SECRETS, META)


def run_step(fleet: SshdFleet, step: object) -> HostResult:
    inv = load(str(fleet.inventory_dir))
    return run_on(inv, list(inv.hosts.values()), step)[0]  # type: ignore[arg-type]


def test_failed_stage_leaves_nothing_another_user_can_read(
    fleet_host: tuple[SshdFleet, Path], probe_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, app = fleet_host
    layout = rc.Layout(str(app))
    # a host prepared the way older bootstraps did it: every directory 0755
    for d in (layout.root, layout.releases, layout.volumes, layout.state):
        Path(d).mkdir(parents=True, exist_ok=True)
        Path(d).chmod(0o755)
    b = make(layout.root)
    good = b.checksums()
    monkeypatch.setattr(bundle.Bundle, "checksums", lambda self: {**good, ".env": "0" * 64})

    def stage(ctx: HostContext) -> HostResult:
        ht.stage(ctx, b)
        return HostResult(ctx.host.name, "ok")

    result = run_step(fleet, stage)
    assert result.status == "failed" and "stage" in (result.error or ""), result
    assert not Path(layout.release(b.release_id)).exists()

    releases = Path(layout.releases)
    for path in [releases, *releases.rglob("*")]:
        assert not readable_by(probe_user, path), path
    assert releases.stat().st_mode & 0o777 == 0o750
    leftovers = sorted(p.name for p in releases.iterdir())
    assert leftovers == [], f"the failed stage left {leftovers} behind"

    # the next stage (with the right checksums) works, and its .env is readable by nobody else either
    monkeypatch.setattr(bundle.Bundle, "checksums", lambda self: good)
    assert run_step(fleet, stage).ok
    env = Path(layout.release(b.release_id)) / bundle.ENV_FILE
    assert env.read_bytes() == b.files[bundle.ENV_FILE].data
    assert env.stat().st_mode & 0o777 == 0o600
    for path in [releases, *releases.rglob("*")]:
        assert not readable_by(probe_user, path), path
    assert SECRETS["DB_PASSWORD"].encode() in env.read_bytes()  # the probe really had something to find


def test_next_stage_and_prune_sweep_leftovers(fleet_host: tuple[SshdFleet, Path]) -> None:
    """Archives and half-unpacked directories that a killed stage of an older version left behind."""
    fleet, app = fleet_host
    layout = rc.Layout(str(app))
    releases = Path(layout.releases)
    releases.mkdir(parents=True)

    def leave_litter() -> list[Path]:
        litter = [releases / ".upload-0123456789abcdef.tar", releases / "fedcba9876543210.tmp"]
        litter[0].write_text("DB_PASSWORD=leftover\n")
        litter[0].chmod(0o644)
        litter[1].mkdir()
        (litter[1] / ".env").write_text("DB_PASSWORD=leftover\n")
        for p in litter:  # old enough not to be a stage still running
            os.utime(p, (1_700_000_000, 1_700_000_000))
        return litter

    litter = leave_litter()
    b = make(layout.root)

    def stage(ctx: HostContext) -> HostResult:
        ht.stage(ctx, b)
        return HostResult(ctx.host.name, "ok")

    assert run_step(fleet, stage).ok
    assert not [p for p in litter if p.exists()]

    litter = leave_litter()
    # prune with nothing to prune still sweeps
    res = run_step(fleet, lambda ctx: HostResult(ctx.host.name, "ok", data={"pruned": ht.prune(ctx, 5)}))
    assert res.ok, res
    assert not [p for p in litter if p.exists()]
    assert Path(layout.release(b.release_id), bundle.ENV_FILE).exists()


def test_bootstrap_directory_section_sets_the_modes(
    fleet_host: tuple[SshdFleet, Path], probe_user: str
) -> None:
    """The layout part of `fab bootstrap`, run for real: releases/ ends 0750 (also on a 0755 leftover),
    and a second run reports nothing changed."""
    fleet, app = fleet_host
    layout = rc.Layout(str(app))
    Path(layout.releases).mkdir(parents=True)
    Path(layout.releases).chmod(0o755)
    script = bc.layout_script(layout, fleet.user)
    first = run_step(fleet, command_step(script))
    assert first.ok, first
    assert f"changed: dir {layout.releases}" in first.stdout
    assert Path(layout.releases).stat().st_mode & 0o777 == 0o750
    assert not readable_by(probe_user, Path(layout.releases))
    again = run_step(fleet, command_step(script))
    assert again.ok and "changed:" not in again.stdout, again.stdout
    assert bc.layout_script(layout, fleet.user) in bc.bootstrap_command(layout, fleet.user).script
