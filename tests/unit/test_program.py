"""The installed `fleet` program runs the same tasks as `fab`, from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

FLEET = Path(sys.executable).with_name("fleet")


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FLEET), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_fleet_lists_the_same_tasks_as_fab(tmp_path: Path) -> None:
    r = run("--list", cwd=tmp_path)  # no fabfile here
    assert r.returncode == 0, r.stderr
    for task in ("bootstrap", "deploy", "rollout", "rollback", "status", "local.up", "lock.status"):
        assert f"  {task} " in r.stdout or f"  {task}\n" in r.stdout, task
    assert "Can't find any collection" not in r.stderr


def test_fleet_finds_inventories_in_the_project_dir(tmp_path: Path) -> None:
    project = tmp_path / "ops"
    inv = project / "inventory" / "edge"
    inv.mkdir(parents=True)
    (inv / "hosts.yaml").write_text(yaml.safe_dump({"web-1": {"hostname": "10.0.0.5", "groups": ["app"]}}))
    (inv / "groups.yaml").write_text(yaml.safe_dump({"app": {}}))
    (inv / "defaults.yaml").write_text(yaml.safe_dump({"username": "deploy"}))
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    r = run("hosts", "--inventory", "edge", "--json", cwd=elsewhere, env={"FLEET_PROJECT_DIR": str(project)})
    assert r.returncode == 0, r.stdout + r.stderr
    hosts = json.loads(r.stdout)
    assert hosts["inventory"] == "edge"
    names = [h["host"] for h in hosts["hosts"]]
    assert names == ["web-1"]
