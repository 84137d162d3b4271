"""The commands that do in one round trip what took several (issue 17: the engine at 200 hosts), run
in a real shell against scripted `docker` and `curl` on PATH: the preflight (`ready_state`), the
verify poll (`look`: containers and /health), validation with the config hashes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from fleet.commands import health
from fleet.commands import release as rc
from fleet.commands.base import Command
from fleet.errors import FleetError

PS = {
    "Service": "api",
    "Name": "dify-api-1",
    "State": "running",
    "Health": "healthy",
    "Image": "api:1.1.0",
    "ExitCode": 0,
    "Labels": "com.docker.compose.project.working_dir=/x/releases/0123456789abcdef,"
    "com.docker.compose.config-hash=" + "a" * 64,
}

DOCKER = """#!/bin/sh
# scripted docker: $FAKE_DOCKER_FAIL names the subcommand that fails
case "$1 $2" in
  "info --format") [ "$FAKE_DOCKER_FAIL" = info ] && exit 1; echo 27.0.0 ;;
  "info "*) echo /var/lib/docker ;;
  "compose version") [ "$FAKE_DOCKER_FAIL" = compose ] && exit 1; echo 2.29.7 ;;
  "compose -p")
    for a in "$@"; do
      case "$a" in
        ps) [ "$FAKE_DOCKER_FAIL" = ps ] && { echo 'Cannot connect to the Docker daemon' >&2; exit 1; }
            cat "$FAKE_PS" ;;
        --quiet) [ "$FAKE_DOCKER_FAIL" = config ] && { echo 'services.api: bad' >&2; exit 15; }; exit 0 ;;
        --hash) printf 'api %s\\nweb %s\\n' "$(printf 'a%.0s' $(seq 64))" "$(printf 'b%.0s' $(seq 64))" ;;
      esac
    done ;;
  *) echo "unexpected docker $*" >&2; exit 64 ;;
esac
"""

CURL = """#!/bin/sh
# scripted curl: writes $FAKE_BODY to the -o file, prints $FAKE_CODE
while [ $# -gt 0 ]; do case "$1" in -o) shift; out=$1 ;; esac; shift; done
printf '%s' "$FAKE_BODY" > "$out"; printf '%s' "$FAKE_CODE"
"""


@pytest.fixture
def shell(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH finds the scripted docker and curl first."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", DOCKER), ("curl", CURL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    ps = tmp_path / "ps.json"
    ps.write_text(json.dumps(PS) + "\n")
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_PS": str(ps),
        "FAKE_CODE": "200",
        "FAKE_BODY": '{"status":"ok","version":"1.1.0"}',
        "FAKE_DOCKER_FAIL": "",
    }


def run(cmd: Command, env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", cmd.shell()], env={**env, **extra}, capture_output=True, text=True, timeout=60
    )


def layout_at(path: Path) -> rc.Layout:
    return rc.Layout(root=str(path), project="dify")


def prepared(tmp_path: Path) -> rc.Layout:
    layout = layout_at(tmp_path / "app")
    assert run(rc.prepare_layout(layout), {"PATH": os.environ["PATH"]}).returncode == 0
    return layout


# --------------------------------------------------------------------------- preflight


def test_ready_state_prints_the_state_of_a_ready_host(tmp_path: Path, shell: dict[str, str]) -> None:
    layout = prepared(tmp_path)
    proc = run(rc.ready_state(layout, 0), shell)
    assert proc.returncode == 0, proc.stderr
    state = rc.parse_host_state(proc.stdout)
    assert state.exists and state.current is None and not state.drained


@pytest.mark.parametrize(
    ("fail", "code", "why"),
    [("info", 11, "docker engine: not running"), ("compose", 12, "docker compose v2: missing")],
)
def test_ready_state_stops_at_docker_first(
    tmp_path: Path, shell: dict[str, str], fail: str, code: int, why: str
) -> None:
    proc = run(rc.ready_state(prepared(tmp_path), 0), shell, FAKE_DOCKER_FAIL=fail)
    assert proc.returncode == code and code in health.DOCKER_FAILED
    assert why in proc.stderr and proc.stdout == ""


def test_ready_state_without_docker_at_all(tmp_path: Path, shell: dict[str, str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for tool in ("sh", "readlink", "cat", "tail", "dirname", "df", "awk", "tr", "printf"):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True)
        if found.stdout.strip().startswith("/"):
            (empty / tool).symlink_to(found.stdout.strip())
    proc = run(rc.ready_state(prepared(tmp_path), 0), shell, PATH=str(empty))
    assert proc.returncode == 10 and "docker: not installed" in proc.stderr


def test_ready_state_of_a_host_without_the_layout_checks_no_disk(
    tmp_path: Path, shell: dict[str, str]
) -> None:
    proc = run(rc.ready_state(layout_at(tmp_path / "missing"), 10**9), shell)
    assert proc.returncode == 0, proc.stderr
    assert not rc.parse_host_state(proc.stdout).exists


def test_ready_state_refuses_a_full_disk_after_reading_the_state(
    tmp_path: Path, shell: dict[str, str]
) -> None:
    layout = prepared(tmp_path)
    proc = run(rc.ready_state(layout, 10**9), shell)
    assert proc.returncode == rc.DISK_SHORT
    assert f"disk full: {layout.root} has" in proc.stderr


# --------------------------------------------------------------------------- verify poll


def test_look_returns_the_containers_and_the_health_answer(tmp_path: Path, shell: dict[str, str]) -> None:
    layout = layout_at(tmp_path)
    proc = run(rc.look(layout, 8080), shell)
    assert proc.returncode == 0, proc.stderr
    ps_out, probe_out = rc.split_look(proc.stdout)
    assert [s.service for s in rc.parse_ps(ps_out, layout)] == ["api"]
    assert health.parse_health(probe_out) == (200, "1.1.0")


def test_look_with_no_containers_and_a_drained_nginx(tmp_path: Path, shell: dict[str, str]) -> None:
    empty = tmp_path / "none.json"
    empty.write_text("")
    proc = run(rc.look(layout_at(tmp_path), 8080), shell, FAKE_PS=str(empty), FAKE_CODE="503")
    ps_out, probe_out = rc.split_look(proc.stdout)
    assert ps_out == "" and health.parse_health(probe_out)[0] == 503


def test_look_fails_with_the_ps_error_and_probes_nothing(tmp_path: Path, shell: dict[str, str]) -> None:
    proc = run(rc.look(layout_at(tmp_path), 8080), shell, FAKE_DOCKER_FAIL="ps")
    assert proc.returncode == rc.LOOK_PS_FAILED
    assert "Cannot connect" in proc.stderr and rc.LOOK_SECTION not in proc.stdout


def test_split_look_refuses_output_without_its_section_line() -> None:
    with pytest.raises(FleetError, match="no section line"):
        rc.split_look('{"Service": "api"}\n200\n')


# --------------------------------------------------------------------------- validate + hashes


def test_validation_prints_the_config_hashes_of_a_valid_release(
    tmp_path: Path, shell: dict[str, str]
) -> None:
    proc = run(rc.compose_check_hashes(layout_at(tmp_path), "0123456789abcdef"), shell)
    assert proc.returncode == 0, proc.stderr
    assert rc.parse_hashes(proc.stdout) == {"api": "a" * 64, "web": "b" * 64}


def test_an_invalid_release_fails_validation_and_prints_no_hash(
    tmp_path: Path, shell: dict[str, str]
) -> None:
    check = rc.compose_check_hashes(layout_at(tmp_path), "0123456789abcdef")
    proc = run(check, shell, FAKE_DOCKER_FAIL="config")
    assert proc.returncode == 15 and "services.api: bad" in proc.stderr and proc.stdout == ""
