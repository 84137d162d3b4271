"""`fab`/`fleet` start with the cyclic garbage collector off (issue 17: start-up CPU) and every task turns
it back on: no task may run a whole rollout without it."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from invoke import Collection

from fleet.cli import common, namespace

REPO = Path(__file__).resolve().parents[2]


def _tasks(ns: Collection) -> Iterator[tuple[str, object]]:
    for name, task in ns.tasks.items():
        yield name, task
    for sub_name, sub in ns.collections.items():
        for name, task in _tasks(sub):
            yield f"{sub_name}.{name}", task


def test_every_task_ends_the_gc_free_start_up() -> None:
    wrapper_code = common.fleet_errors(lambda: None).__code__
    tasks = dict(_tasks(namespace()))
    assert len(tasks) > 20
    unwrapped = [name for name, t in tasks.items() if getattr(t, "body").__code__ is not wrapper_code]  # noqa: B009
    assert unwrapped == [], f"tasks without @fleet_errors (they would run with the GC off): {unwrapped}"


@pytest.mark.parametrize("entry", ["fabfile", "fleet.cli.program"])
def test_entry_point_starts_with_gc_off_and_a_task_runs_with_it_on(entry: str) -> None:
    script = f"""
import gc
import {entry}
assert not gc.isenabled(), "the entry point leaves start-up with the collector on"
from fleet.cli.common import fleet_errors

seen = {{}}

@fleet_errors
def task():
    seen["enabled"] = gc.isenabled()
    seen["frozen"] = gc.get_freeze_count()

task()
print(seen["enabled"], seen["frozen"])
"""
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    enabled, frozen = r.stdout.split()
    assert enabled == "True"
    assert int(frozen) > 10_000  # what start-up made was frozen, not left for the first collections


@pytest.fixture
def first_load(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(common, "_loaded_once", False)
    enabled = gc.isenabled()
    yield
    gc.unfreeze()  # this test process keeps collecting what the test froze
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_startup_gc_pauses_then_restores_and_freezes_once(first_load: None) -> None:
    gc.enable()
    gc.unfreeze()
    with common.startup_gc():
        assert not gc.isenabled()
        kept = [[i] for i in range(1000)]  # objects made while loading, alive afterwards
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept)
    with common.startup_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen  # only the first load is frozen

    gc.disable()
    with common.startup_gc():
        pass
    assert not gc.isenabled()  # a caller that had it off keeps it off
