"""Readiness probes run on a host: Docker and Compose usable, and /health through the host's nginx
(the go/no-go for every host of a deploy or rollout), with the parser of the probe's output."""

from __future__ import annotations

import json

from fleet.commands.base import Command
from fleet.errors import FleetError

# exits 10 (no docker), 11 (no engine), 12 (no Compose v2) with the reason on stderr
DOCKER_CHECKS = (
    "if ! command -v docker >/dev/null 2>&1; then echo 'docker: not installed' >&2; exit 10; fi; "
    "if ! docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; then "
    "echo 'docker engine: not running or not accessible to this user' >&2; exit 11; fi; "
    "if ! docker compose version --short >/dev/null 2>&1; then "
    "echo 'docker compose v2: missing' >&2; exit 12; fi"
)
DOCKER_FAILED = (10, 11, 12)
DOCKER_PROBE = Command(f"{DOCKER_CHECKS}; echo ok", "check Docker and Compose")


# the body goes to a file mktemp creates (never a predictable /tmp name another user could pre-create)
HEALTH_PROBE = (
    "f=$(mktemp) || exit 1; code=$(curl -s -o \"$f\" -w '%{{http_code}}' -m 3 "
    "http://127.0.0.1:{port}/health || true); "
    'printf "%s\\n" "$code"; cat "$f" 2>/dev/null; rm -f "$f"'
)


def health_command(port: int) -> Command:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise FleetError(f"invalid http port {port!r}")
    return Command(HEALTH_PROBE.format(port=port), "probe /health through the host's nginx")


def parse_health(stdout: str) -> tuple[int, str | None]:
    """(HTTP status, version reported by the api) from the probe's output; status 0 = no answer."""
    first, _, body = stdout.partition("\n")
    first = first.strip()
    code = int(first) if first.isascii() and first.isdigit() and len(first) == 3 else 0
    version = None
    try:
        payload = json.loads(body)
        if isinstance(payload, dict) and isinstance(payload.get("version"), str):
            version = payload["version"]
    except ValueError:
        pass
    return code, version
