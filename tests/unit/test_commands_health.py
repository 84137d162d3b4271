"""The /health probe's parser decides go/no-go for every host: what it makes of each answer."""

from __future__ import annotations

import pytest

from fleet.commands.health import DOCKER_PROBE, health_command, parse_health
from fleet.errors import FleetError


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ('200\n{"status": "ok", "version": "1.1.0"}', (200, "1.1.0")),
        ("503\ndraining", (503, None)),  # drained: nginx answers itself, no JSON
        ('200\n{"version": 7}', (200, None)),  # a version that is not a string is no version
        ('200\n["1.1.0"]', (200, None)),
        ("200\n", (200, None)),
        ("000\n", (0, None)),  # curl's code when nothing answered
        ("", (0, None)),
        ("garbage\n{}", (0, None)),
        ("²⁰⁰\n{}", (0, None)),  # digits that are not ASCII are no status
        ("2000\n{}", (0, None)),
        ('  200  \n{"version": "2.0"}', (200, "2.0")),
    ],
)
def test_parse_health(stdout: str, expected: tuple[int, str | None]) -> None:
    assert parse_health(stdout) == expected


def test_health_command_probes_the_hosts_nginx_with_a_private_temp_file() -> None:
    script = health_command(8080).script
    assert "http://127.0.0.1:8080/health" in script
    assert "mktemp" in script and "/tmp/" not in script
    with pytest.raises(FleetError):
        health_command(0)
    with pytest.raises(FleetError):
        health_command(70000)


def test_docker_probe_says_what_is_missing() -> None:
    script = DOCKER_PROBE.script
    for missing, code in (("docker: not installed", 10), ("not running", 11), ("compose v2: missing", 12)):
        assert missing in script and f"exit {code}" in script
