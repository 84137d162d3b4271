"""Quoting, validation and masking shared by every command builder."""

from __future__ import annotations

import subprocess

import pytest

from fleet.commands import base
from fleet.commands.facts import facts_command, parse_facts
from fleet.errors import FleetError

HOSTILE = ["; rm -rf /", "$(touch /tmp/pwned)", "`id`", "a'b", 'a"b', "a\nb", "x && y", "*", "~root"]


@pytest.mark.parametrize("value", HOSTILE)
def test_sh_quotes_every_word(value: str) -> None:
    # the shell must see exactly the value, as one word
    out = subprocess.run(
        ["sh", "-c", base.sh("printf", "%s", value)], capture_output=True, text=True, check=True
    )
    assert out.stdout == value


@pytest.mark.parametrize("value", HOSTILE)
def test_validators_refuse_hostile_values(value: str) -> None:
    for check in (base.name, base.version, base.release_id, base.env_key):
        with pytest.raises(FleetError):
            check(value)


@pytest.mark.parametrize("good", ["1.0.0", "1.2.0-broken", "v2_rc.1+build.5", "latest"])
def test_versions_accepted(good: str) -> None:
    assert base.version(good) == good


@pytest.mark.parametrize("bad", ["relative/path", "/a/../b", "/a/b/", "/a//b", "/a\nb", ""])
def test_abs_path_refuses(bad: str) -> None:
    with pytest.raises(FleetError):
        base.abs_path(bad)


def test_command_masks_secrets_in_display_but_not_in_shell() -> None:
    cmd = base.Command(base.sh("echo", "pw=hunter 2"), "t", secrets=("hunter 2",))
    assert "hunter 2" in cmd.shell()
    assert "hunter 2" not in cmd.display() and "******" in cmd.display()


def test_sudo_wraps_script_as_one_word() -> None:
    cmd = base.Command("echo a; echo b", "t", sudo=True)
    assert cmd.shell() == "sudo -n sh -c 'echo a; echo b'"


def test_facts_command_quotes_app_dir(tmp_path) -> None:
    hostile = str(tmp_path / "$(touch PWNED)")
    script = facts_command(hostile).shell()
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert not (tmp_path / "PWNED").exists()
    facts = parse_facts(out.stdout)
    assert facts["kernel"] and facts["release"] is None and isinstance(facts["disk_free_mb"], int)


def test_facts_reads_current_release(tmp_path) -> None:
    rel = tmp_path / "releases" / "abcdef123456"
    rel.mkdir(parents=True)
    (rel / "release.json").write_text('{"id": "abcdef123456", "version": "1.1.0"}')
    (tmp_path / "current").symlink_to(rel)
    out = subprocess.run(["sh", "-c", facts_command(str(tmp_path)).shell()], capture_output=True, text=True)
    facts = parse_facts(out.stdout)
    assert facts["release"] == "abcdef123456" and facts["release_version"] == "1.1.0"


def test_parse_facts_ignores_unknown_and_garbage() -> None:
    facts = parse_facts("os=Debian\nnoise\nevil=1\ndisk_free_mb=abc\nmem_available_mb=12\n")
    assert facts["os"] == "Debian" and "evil" not in facts
    assert facts["disk_free_mb"] is None and facts["mem_available_mb"] == 12
