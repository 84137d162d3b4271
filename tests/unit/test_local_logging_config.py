"""The local fleet's side of container logging, pure: the VM container mounts the fleet's CA, the
fleet's log driver setting is checked, and each fleet runs its own tag of the VM image."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.errors import FleetError
from fleet.local import dockercmd, images
from fleet.local.config import LocalConfig


def _spec(ca: Path | None) -> dockercmd.InstanceSpec:
    return dockercmd.InstanceSpec(
        name="fleet-x-1",
        hostname="x-1",
        image="fleet-local/vm:fleet-x",
        network="fleet-x",
        ssh_port=2201,
        http_port=8101,
        docker_volume="fleet-x-1-docker",
        extra_hosts={"metadata.google.internal": "10.9.0.1", "logging.googleapis.com": "10.9.0.1"},
        ca_cert=ca,
    )


def test_the_vm_mounts_the_fleets_ca_read_only_and_resolves_logging_to_the_gateway(tmp_path: Path) -> None:
    ca = tmp_path / "tls" / "ca.crt"
    argv = dockercmd.run_instance(_spec(ca))
    i = argv.index(f"{ca}:{dockercmd.VM_CA_PATH}:ro")
    assert argv[i - 1] == "--volume"
    host = argv.index("logging.googleapis.com:10.9.0.1")
    assert argv[host - 1] == "--add-host"
    assert not any(a.endswith(f"{dockercmd.VM_CA_PATH}:ro") for a in dockercmd.run_instance(_spec(None)))


def test_log_driver_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LocalConfig().log_driver == "json-file"
    assert LocalConfig(log_driver="gcplogs").log_driver == "gcplogs"
    with pytest.raises(FleetError, match="invalid log driver 'syslog'"):
        LocalConfig(log_driver="syslog")
    monkeypatch.setenv("FLEET_LOCAL_LOG_DRIVER", "gcplogs")
    assert LocalConfig.from_env().log_driver == "gcplogs"
    monkeypatch.setenv("FLEET_LOCAL_LOG_DRIVER", "")
    assert LocalConfig.from_env().log_driver == "json-file"


def test_each_fleet_runs_its_own_vm_image_tag() -> None:
    a, b = LocalConfig(name="a1"), LocalConfig(name="b2")
    assert images.fleet_vm_ref(a) == "fleet-local/vm:fleet-a1"
    assert images.fleet_vm_ref(a) != images.fleet_vm_ref(b)
    dockercmd.check_ref(images.fleet_vm_ref(a))  # a valid reference for docker run / tag
