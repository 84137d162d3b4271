"""The settings object: one read of the environment, one precedence rule (inventory -> env -> flag)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleet import settings
from fleet.gcp.compute import endpoint_for
from fleet.paths import PACKAGE_DIR, STATE_DIR
from fleet.rollout import journal, lock


def test_defaults_when_nothing_is_set() -> None:
    s = settings.load({})
    assert s.inventory_for() is None
    assert s.journal_dir == STATE_DIR / "journal"
    assert re.fullmatch(r".+@.+", s.operator_for())
    assert s.compute_endpoint_for() is None
    assert s.workers_for(3) == 3 and s.workers_for(500) == settings.MAX_WORKERS and s.workers_for(0) == 1
    assert s.lock_ttl_for() == settings.DEFAULT_LOCK_TTL


def test_environment_overrides_the_default() -> None:
    s = settings.load({"FLEET_JOURNAL_DIR": "/tmp/j", "FLEET_OPERATOR": "ann@ci", "FLEET_INVENTORY": "edge"})
    assert s.journal_dir == Path("/tmp/j")
    assert s.operator_for() == "ann@ci"
    assert s.inventory_for() == "edge"


def test_environment_overrides_the_inventory_file() -> None:
    s = settings.load({"FLEET_COMPUTE_ENDPOINT": "http://env", "FLEET_MONITORING_ENDPOINT": "127.0.0.1:1"})
    assert s.compute_endpoint_for("http://inventory") == "http://env"
    assert s.monitoring_endpoint_for("127.0.0.1:2") == "127.0.0.1:1"
    assert s.pubsub_endpoint_for("127.0.0.1:3") == "127.0.0.1:3"  # its variable is unset: the file's


def test_flag_overrides_environment_and_inventory_file() -> None:
    s = settings.load({"FLEET_INVENTORY": "edge", "FLEET_OPERATOR": "ann@ci"})
    assert s.inventory_for("core") == "core"
    assert s.operator_for("bob@laptop") == "bob@laptop"
    assert s.workers_for(50, inventory=8, flag=2) == 2
    assert settings.layered("default", inventory="file", env="env", flag="flag") == "flag"


def test_inventory_file_overrides_the_default_and_unset_layers_fall_through() -> None:
    s = settings.load({"FLEET_COMPUTE_ENDPOINT": ""})
    assert s.compute_endpoint_for("http://inventory") == "http://inventory"
    assert s.workers_for(50, inventory=8, flag=0) == 8  # --workers 0 = unset
    assert s.lock_ttl_for(45) == 45.0
    assert settings.layered("default", inventory=None, env="", flag=None) == "default"


def test_load_is_one_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_OPERATOR", "first@ci")
    s = settings.load()
    monkeypatch.setenv("FLEET_OPERATOR", "second@ci")
    assert s.operator_for() == "first@ci"
    assert settings.load().operator_for() == "second@ci"
    with pytest.raises(TypeError):
        s.environ["X"] = "y"  # type: ignore[index]


def test_modules_read_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEET_COMPUTE_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("FLEET_JOURNAL_DIR", str(tmp_path))
    monkeypatch.setenv("FLEET_OPERATOR", "ann@ci")
    assert endpoint_for("http://from-inventory") == "http://127.0.0.1:9"
    assert journal.root() == tmp_path
    assert lock.operator() == "ann@ci"


def test_no_module_reads_the_environment_for_a_setting_on_its_own() -> None:
    """Outside the rehearsal tooling (local/, scenarios/): settings.py reads it; paths.py reads
    FLEET_PROJECT_DIR (below settings); hostsetup passes the environment on to apt."""
    allowed = {"settings.py", "paths.py", "hostsetup.py"}
    offenders = [
        str(p.relative_to(PACKAGE_DIR))
        for p in PACKAGE_DIR.rglob("*.py")
        if p.parts[len(PACKAGE_DIR.parts)] not in ("local", "scenarios")
        and str(p.relative_to(PACKAGE_DIR)) not in allowed
        and re.search(r"os\.environ\b(?!`)|os\.getenv|getenv\(", p.read_text())
    ]
    assert offenders == []
