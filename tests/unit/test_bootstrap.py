"""The bootstrap script as data: quoting, idempotence markers, parsing."""

from __future__ import annotations

import pytest

from fleet.commands.bootstrap import (
    SYSCTL_FILE,
    bootstrap_command,
    bootstrap_facts_command,
    diff_bootstrap,
    parse_bootstrap,
    parse_bootstrap_facts,
)
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


# --------------------------------------------------------------------------- dry run: probe, parser, diff


LAYOUT = Layout("/opt/fleet/dify", "dify")
ROOT = "/opt/fleet/dify"
NO_DOCKER = "\n".join(
    [
        "docker_cli\t",
        "dockerd\t",
        "docker_version\t",
        "compose_version\t",
        "engine_running\tno",
        "apt_get\t/usr/bin/apt-get",
        "systemd\tyes",
        "user_id\t1000",
        "user_groups\tdeploy sudo",
        f"dir\t{ROOT}\t",
        f"dir\t{ROOT}/releases\t",
        f"dir\t{ROOT}/volumes\t",
        f"dir\t{ROOT}/state\t",
        f"dir\t{ROOT}/volumes/app/storage\t",
        "history\tno",
        "python3\t/usr/bin/python3",
        'log_config\t{"log-driver": null, "log-opts": null}',
        "sysctl_file\tno",
        "sysctl\tnet.core.somaxconn\t128",
        "sysctl\tnet.ipv4.ip_local_port_range\t32768\t60999",
    ]
)
PREPARED = "\n".join(
    [
        "docker_cli\t/usr/bin/docker",
        "dockerd\t/usr/sbin/dockerd",
        "docker_version\t24.0.5",
        "compose_version\t2.20.2",
        "engine_running\tyes",
        "apt_get\t/usr/bin/apt-get",
        "systemd\tyes",
        "user_id\t1000",
        "user_groups\tdeploy docker",
        f"dir\t{ROOT}\tdeploy 1000 755",
        f"dir\t{ROOT}/releases\tdeploy 1000 750",
        f"dir\t{ROOT}/volumes\tdeploy 1000 755",
        f"dir\t{ROOT}/state\tdeploy 1000 755",
        f"dir\t{ROOT}/volumes/app/storage\tdify 1001 755",
        "history\tyes",
        "python3\t/usr/bin/python3",
        'log_config\t{"log-driver": "json-file", "log-opts": {"max-file": "5", "max-size": "20m"}}',
        "sysctl_file\tyes",
        "sysctl_line\tnet.core.somaxconn = 4096",
        "sysctl_line\tnet.ipv4.ip_local_port_range = 10240 65000",
        "sysctl\tnet.core.somaxconn\t4096",
    ]
)


def states(stdout: str) -> dict[str, tuple[str, str, str]]:
    facts = parse_bootstrap_facts(stdout)
    return {c.item: (c.state, c.current, c.wanted) for c in diff_bootstrap(facts, LAYOUT, "deploy")}


def test_facts_probe_reads_only_as_the_deploy_user() -> None:
    cmd = bootstrap_facts_command(LAYOUT, "deploy")
    assert not cmd.sudo and cmd.shell() == cmd.script
    for verb in (
        "mkdir",
        "chown",
        "chmod",
        "usermod",
        "apt-get install",
        "systemctl",
        "touch",
        "> /",
        "sysctl -",
    ):
        assert verb not in cmd.script, verb
    assert "id -u deploy" in cmd.script and f"stat -c '%U %u %a' {ROOT}/releases" in cmd.script
    assert f"< {SYSCTL_FILE}" in cmd.script and "/proc/sys/net/core/somaxconn" in cmd.script


def test_facts_probe_quotes_paths_and_refuses_hostile_users() -> None:
    cmd = bootstrap_facts_command(Layout("/srv/my app", "dify"), "deploy")
    assert "'/srv/my app/releases'" in cmd.script
    with pytest.raises(FleetError):
        bootstrap_facts_command(LAYOUT, "$(reboot)")


def test_parse_facts_keeps_tabs_and_missing_dirs() -> None:
    facts = parse_bootstrap_facts(NO_DOCKER)
    assert facts["docker_cli"] == "" and facts["dirs"][ROOT] is None
    assert facts["sysctls"] == {"net.core.somaxconn": "128"}  # a value with a tab in it is not a pair
    assert parse_bootstrap_facts(PREPARED)["dirs"][f"{ROOT}/releases"] == ("deploy", "1000", "750")


def test_diff_on_a_host_without_docker_says_docker_would_be_installed() -> None:
    diff = states(NO_DOCKER)
    assert diff["docker engine"] == ("would change", "absent", "installed (apt-get install docker.io)")
    assert diff["compose v2"][0] == "would change"
    assert diff["docker engine running"] == (
        "would change",
        "not installed",
        "running (systemctl enable --now docker)",
    )
    assert diff["user deploy in group docker"] == ("would change", "groups deploy sudo", "in group docker")
    assert diff[f"dir {ROOT}/releases"] == ("would change", "absent", "owner deploy, mode 750")
    assert diff[f"dir {ROOT}/volumes/app/storage"] == ("would change", "absent", "owner 1001")
    assert diff["history file"][0] == diff["docker log rotation"][0] == diff["sysctls"][0] == "would change"
    assert "live net.core.somaxconn=128" in diff["sysctls"][1]


def test_diff_on_a_bootstrapped_host_is_all_ok() -> None:
    diff = states(PREPARED)
    assert {item: s for item, (s, _c, _w) in diff.items() if s != "ok"} == {}
    assert diff["docker engine"][1] == "24.0.5"


def test_diff_names_what_bootstrap_would_fail_on() -> None:
    no_user_no_apt = NO_DOCKER.replace("user_id\t1000", "user_id\t").replace(
        "apt_get\t/usr/bin/apt-get", "apt_get\t"
    )
    diff = states(no_user_no_apt.replace("systemd\tyes", "systemd\tno"))
    assert diff["docker engine"][0] == "would fail"
    assert diff["docker engine running"][0] == "would fail"
    assert diff["user deploy in group docker"] == ("would fail", "no user deploy", "an existing user")


def test_diff_sees_wrong_modes_owners_and_log_options() -> None:
    text = (
        PREPARED.replace(f"{ROOT}/releases\tdeploy 1000 750", f"{ROOT}/releases\tdeploy 1000 755")
        .replace(f"{ROOT}/state\tdeploy 1000 755", f"{ROOT}/state\troot 0 755")
        .replace('"max-file": "5"', '"max-file": "3"')
        .replace("sysctl_line\tnet.core.somaxconn = 4096", "sysctl_line\tnet.core.somaxconn = 1024")
    )
    diff = states(text)
    assert diff[f"dir {ROOT}/releases"] == (
        "would change",
        "owner deploy, mode 755",
        "owner deploy, mode 750",
    )
    assert diff[f"dir {ROOT}/state"] == ("would change", "owner root, mode 755", "owner deploy")
    assert diff["docker log rotation"][0] == "would change"
    assert diff["sysctls"][0] == "would change"
    assert diff[f"dir {ROOT}/volumes"][0] == "ok"
    # no python3: bootstrap skips the daemon-wide rotation (the stack sets it per service)
    assert (
        states(PREPARED.replace("python3\t/usr/bin/python3", "python3\t"))["docker log rotation"][0] == "ok"
    )
