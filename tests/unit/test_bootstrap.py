"""The bootstrap script as data: quoting, idempotence markers, parsing."""

from __future__ import annotations

import pytest

from fleet.commands.bootstrap import bootstrap_command, parse_bootstrap
from fleet.commands.release import Layout
from fleet.errors import FleetError


def test_runs_with_sudo_and_quotes_layout() -> None:
    cmd = bootstrap_command(Layout("/opt/fleet/dify", "dify"), "deploy")
    assert cmd.sudo and cmd.shell().startswith("sudo -n sh -c ")
    assert "usermod -aG docker deploy" in cmd.script
    assert "/opt/fleet/dify/volumes/app/storage" in cmd.script and "chown 1001:1001" in cmd.script


@pytest.mark.parametrize("user", ["root;reboot", "$(id)", "a b", ""])
def test_refuses_hostile_user(user: str) -> None:
    with pytest.raises(FleetError):
        bootstrap_command(Layout(), user)


def test_parse_reports_changed_and_unchanged() -> None:
    changed, ok = parse_bootstrap("ok: docker engine present\nchanged: sysctls\nnoise\nok: dir /x\n")
    assert changed == ["sysctls"] and ok == ["docker engine present", "dir /x"]
