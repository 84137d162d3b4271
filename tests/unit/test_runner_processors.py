"""Per-host progress is a Nornir processor on the runner (no network: the steps never connect)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fleet.inventory import load
from fleet.ssh.runner import HostContext, HostProcessor, HostResult, build_nornir, run_on, run_step
from tests.unit.test_inventory import good  # noqa: F401 - the shared inventory fixture


class Recorder(HostProcessor):
    def __init__(self) -> None:
        self.started: list[str] = []
        self.done: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def host_started(self, host: str) -> None:
        with self.lock:
            self.started.append(host)

    def host_done(self, result: HostResult) -> None:
        with self.lock:
            self.done.append((result.host, result.status))


def step(ctx: HostContext) -> HostResult:
    if ctx.host.name == "a2":
        raise RuntimeError("boom")  # the runner turns it into a failed result; the processor sees it
    return HostResult(ctx.host.name, "ok")


def test_processors_see_every_host_finish_with_its_result(good: Path) -> None:  # noqa: F811
    inv = load(str(good))
    nr = build_nornir(inv, list(inv.hosts.values()))
    first, second = Recorder(), Recorder()
    results = run_step(nr, step, processors=[first, second])
    assert [(r.host, r.status) for r in results] == [("a1", "ok"), ("a2", "failed"), ("a3", "ok")]
    for rec in (first, second):
        assert sorted(rec.started) == ["a1", "a2", "a3"]
        assert sorted(rec.done) == [("a1", "ok"), ("a2", "failed"), ("a3", "ok")]


def test_run_on_passes_processors_to_nornir(good: Path) -> None:  # noqa: F811
    inv = load(str(good))
    rec = Recorder()
    run_on(inv, [inv.hosts["a3"]], step, processors=[rec])
    assert rec.done == [("a3", "ok")]


def test_host_progress_is_a_processor_printing_a_line_per_host(
    good: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fleet.view import console as ui

    monkeypatch.setattr(ui, "is_tty", lambda: False)
    inv = load(str(good))
    with ui.host_progress("exec", 3) as progress:
        assert isinstance(progress, HostProcessor)
        run_on(inv, list(inv.hosts.values()), step, processors=[progress])
    err = capsys.readouterr().err
    assert "exec: a1 ok (" in err and "exec: a2 failed (" in err and "exec: a3 ok (" in err
    with ui.host_progress("exec", 3, enabled=False) as quiet:  # --json: nothing on stderr
        run_on(inv, list(inv.hosts.values()), step, processors=[quiet])
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(ui, "is_tty", lambda: True)
    with ui.host_progress("exec", 3) as bar:  # the live bar advances from the runner's threads
        assert isinstance(bar, HostProcessor)
        run_on(inv, list(inv.hosts.values()), step, processors=[bar])
