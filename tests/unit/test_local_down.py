"""`fab local.down` with no Docker engine running: it starts the engine before it asks Docker for the
fleet's containers (they outlive a stopped daemon), and without Docker at all it only forgets the
fleet's own files."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.local import compute_endpoint, engine, execute, inventory_writer
from fleet.local.config import LocalConfig
from fleet.local.instances import LocalFleet


class Started(Exception):
    pass


@pytest.fixture
def root() -> Iterator[Path]:
    """A short root: the LB's stats socket path under it must fit a Unix socket's 107 bytes, which
    pytest's own temporary directories (under xdist) do not."""
    path = Path(tempfile.mkdtemp(prefix="fd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_engine_is_started_before_docker_is_asked(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    monkeypatch.setattr(compute_endpoint, "stop_endpoint", lambda _cfg: order.append("endpoint"))
    monkeypatch.setattr(shutil, "which", lambda _n: "/usr/bin/docker")

    def ensure(_cfg: Any = None, **_kw: Any) -> str:
        order.append("engine")
        raise Started

    def run(argv: Any, **_kw: Any) -> Any:
        order.append("docker")
        raise AssertionError(f"docker asked before the engine was started: {argv}")

    monkeypatch.setattr(engine, "ensure_engine", ensure)
    monkeypatch.setattr(execute, "run", run)
    with pytest.raises(Started):
        LocalFleet(LocalConfig(root=root)).down()
    assert order == ["endpoint", "engine"]


def test_without_docker_only_the_fleets_files_go(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    removed: list[str] = []
    monkeypatch.setattr(compute_endpoint, "stop_endpoint", lambda _cfg: None)
    monkeypatch.setattr(shutil, "which", lambda _n: None)
    monkeypatch.setattr(engine, "ensure_engine", lambda *_a, **_k: pytest.fail("no engine to start"))
    monkeypatch.setattr(execute, "run", lambda *_a, **_k: pytest.fail("no docker to ask"))
    monkeypatch.setattr(inventory_writer, "remove", lambda cfg: removed.append(cfg.name))
    fleet = LocalFleet(LocalConfig(root=root))
    fleet._state_path.parent.mkdir(parents=True, exist_ok=True)
    fleet._state_path.write_text("{}")
    fleet.down()
    assert removed == [fleet.config.name] and not fleet._state_path.exists()
