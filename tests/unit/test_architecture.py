"""The layout holds: imports go down the layers, the stand-ins and the functions stand apart, and no
two modules or packages import each other (import-linter's contracts in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(binary), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=False,
    )


def test_import_contracts_hold() -> None:
    r = _lint_imports(ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_a_cycle_breaks_the_contract(tmp_path: Path) -> None:
    """The check can fail: a copy of the tree where the SSH runner imports the rollout engine."""
    copy = tmp_path / "tree"
    for part in ("fleet", "standins", "functions"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    runner = copy / "fleet" / "ssh" / "runner.py"
    runner.write_text(
        runner.read_text() + "\n\ndef _cycle() -> None:\n    from fleet.rollout import engine  # noqa: F401\n"
    )
    r = _lint_imports(copy)
    assert r.returncode != 0
    assert "fleet.ssh.runner -> fleet.rollout" in r.stdout
