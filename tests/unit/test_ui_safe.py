"""Terminal escape sequences from hosts are neutralised before printing; --json stays raw but escaped."""

from __future__ import annotations

import json

import pytest

from fleet.ssh.runner import HostResult
from fleet.view import console as ui

HOSTILE = "ok\x1b]0;title\x07\x1b[2J\x9b31m\u202eevil\r\x00\x7f"


def test_safe_makes_control_characters_visible() -> None:
    assert ui.safe(HOSTILE) == "ok\\x1b]0;title\\x07\\x1b[2J\\x9b31m\\u202eevil\\x0d\\x00\\x7f"
    assert ui.safe("two\nlines\tand tab, ünïcode ✓") == "two\nlines\tand tab, ünïcode ✓"


def test_table_cells_and_title_neutralised(capsys: pytest.CaptureFixture[str]) -> None:
    ui.table("t\x1b[2J", ["host", "detail"], [["h1", HOSTILE], ["h2", "a\tb"]])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\r" not in out
    assert "# t\\x1b[2J" in out
    assert "h1\tok\\x1b]0;title" in out and "h2\ta\\x09b" in out  # a tab in a cell cannot shift columns


def test_results_table_neutralises_host_output(capsys: pytest.CaptureFixture[str]) -> None:
    results = [
        HostResult(host="h1", status="ok", exit_code=0, stdout="first\nok\x1b]0;title\x07 done\n"),
        HostResult(host="h2", status="failed", error="step failed: \x1b[31mred\x1b[0m"),
    ]
    ui.results_table("exec", results)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "ok\\x1b]0;title" in out and "step failed: \\x1b[31mred" in out


def test_error_neutralised(capsys: pytest.CaptureFixture[str]) -> None:
    ui.error("h1: failed: \x1b]8;;http://evil\x07click\x1b]8;;\x07\n  hint: fix it")
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert err == "error: h1: failed: \\x1b]8;;http://evil\\x07click\\x1b]8;;\\x07\n  hint: fix it\n"


def test_json_keeps_raw_values_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    ui.print_json({"stdout": HOSTILE})
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\u001b" in out and "\x9b" not in out
    assert json.loads(out)["stdout"] == HOSTILE
