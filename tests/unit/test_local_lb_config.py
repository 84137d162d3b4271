"""The local haproxy's configuration, rendered from the backend-service settings (fleet/local/lb.py):
session affinity, the readiness check's interval and thresholds, connection draining. haproxy itself
checks each rendered file (`haproxy -c`) when it is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fleet.errors import FleetError
from fleet.inventory.schema import LBSettings
from fleet.local.config import LocalConfig
from fleet.local.lb import (
    AFFINITY_COOKIE,
    BackendConfig,
    LbServer,
    add_server_commands,
    render_config,
    server_id,
)

# rendering only: nothing is created there (a short path: haproxy's stats socket allows 97 bytes)
ROOT = Path("/nonexistent/lbt")


def backend_lines(text: str) -> list[str]:
    section = text.split("\nbackend ", 1)[1]
    return [line.strip() for line in section.splitlines()[1:] if line.strip()]


def haproxy_accepts(text: str, tmp_path: Path) -> None:
    if shutil.which("haproxy") is None:
        return
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    proc = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("affinity", "expected"),
    [
        ("CLIENT_IP", ["balance source", "hash-type consistent"]),
        ("NONE", ["balance roundrobin"]),
        (
            "GENERATED_COOKIE",
            [
                "balance roundrobin",
                f"cookie {AFFINITY_COOKIE} insert indirect nocache dynamic",
                "dynamic-cookie-key compose-fleet-local",
            ],
        ),
    ],
)
def test_session_affinity_becomes_the_balance_algorithm(
    tmp_path: Path, affinity: str, expected: list[str]
) -> None:
    config = LocalConfig(root=ROOT, lb={"session_affinity": affinity})
    text = render_config(config)
    lines = backend_lines(text)
    assert lines[: len(expected)] == expected
    rest = lines[len(expected) :]
    assert not [line for line in rest if line.startswith(("balance", "cookie", "hash-type"))]
    haproxy_accepts(text, tmp_path)


def test_the_readiness_check_and_draining_come_from_the_settings(tmp_path: Path) -> None:
    config = LocalConfig(
        root=ROOT,
        lb={"check_interval": 3, "healthy_threshold": 4, "unhealthy_threshold": 5, "draining_timeout": 7},
    )
    settings = BackendConfig.from_settings(config.lb_settings)
    assert settings == BackendConfig("NONE", "/health", 3.0, 3.0, 4, 5, 7.0)
    text = render_config(config, settings)
    lines = backend_lines(text)
    assert "option httpchk GET /health" in lines and "timeout check 3000ms" in lines
    assert "connection draining 7 s" in text
    haproxy_accepts(text, tmp_path)
    command = add_server_commands("app", LbServer("local-2", 8102), settings)
    assert command.startswith(f"add server app/local-2 127.0.0.1:8102 id {server_id('local-2')} check ")
    assert "inter 3000ms fastinter 3000ms downinter 3000ms rise 4 fall 5;" in command
    # a new member starts DOWN and serves only once `rise` checks passed (as a backend service does)
    assert command.endswith("set server app/local-2 state ready; set server app/local-2 health down")


def test_the_local_fleets_defaults_keep_waits_short() -> None:
    settings = BackendConfig.from_settings(LocalConfig(root=ROOT).lb_settings)
    assert settings == BackendConfig("NONE", "/health", 1.0, 1.0, 2, 2, 10.0)
    assert settings.check_params() == {
        "inter": "1000ms",
        "fastinter": "1000ms",
        "downinter": "1000ms",
        "rise": 2,
        "fall": 2,
    }


def test_a_backend_service_and_health_check_as_compute_returns_them(tmp_path: Path) -> None:
    service = {
        "name": "dify-backend",
        "sessionAffinity": "CLIENT_IP",
        "connectionDraining": {"drainingTimeoutSec": 30},
        "healthChecks": ["https://compute.googleapis.com/compute/v1/projects/p/global/healthChecks/ready"],
    }
    check = {
        "name": "ready",
        "type": "HTTP",
        "checkIntervalSec": 5,
        "timeoutSec": 3,
        "healthyThreshold": 2,
        "unhealthyThreshold": 3,
        "httpHealthCheck": {"port": 80, "requestPath": "/health"},
    }
    settings = BackendConfig.from_api(service, check)
    assert settings == BackendConfig("CLIENT_IP", "/health", 5.0, 3.0, 2, 3, 30.0)
    text = render_config(LocalConfig(root=ROOT), settings)
    assert backend_lines(text)[:2] == ["balance source", "hash-type consistent"]
    haproxy_accepts(text, tmp_path)
    # the API's defaults where the resources leave fields out
    assert BackendConfig.from_api({}, {"type": "HTTP"}) == BackendConfig("NONE", "/", 5.0, 5.0, 2, 2, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"session_affinity": "CLIENT_IP_PORT_PROTO"}, "not supported by the local LB"),
        ({"check_path": "/health check"}, "cannot be used"),
        ({"check_path": "/health#x"}, "cannot be used"),
        ({"check_interval": 0}, "must be > 0"),
        ({"unhealthy_threshold": 0}, "thresholds must be >= 1"),
    ],
)
def test_settings_haproxy_cannot_take_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(FleetError, match=message):
        BackendConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_local_overrides_are_refused_with_the_key() -> None:
    with pytest.raises(FleetError, match="session_affinity"):
        LocalConfig(root=ROOT, lb={"session_affinity": "STICKY"})
    with pytest.raises(FleetError, match=r"liveness\.unhealthy_threshold"):
        LocalConfig(root=ROOT, lb={"liveness": {"unhealthy_threshold": 0}})


def test_server_ids_are_stable_and_spread() -> None:
    ids = [server_id(f"local-{i}") for i in range(1, 21)]
    assert ids == [server_id(f"local-{i}") for i in range(1, 21)]  # not the order of addition
    assert len(set(ids)) == 20 and all(0 < i < 2**31 for i in ids)


def test_settings_from_the_inventory_schema_defaults() -> None:
    """An inventory's lb section as GCP fleets write it (5 s checks, CLIENT_IP by default)."""
    settings = BackendConfig.from_settings(LBSettings())
    assert settings == BackendConfig("CLIENT_IP", "/health", 5.0, 5.0, 2, 2, 10.0)
