"""The facts probe: one POSIX shell script that prints `key=value` lines, and its parser."""

from __future__ import annotations

from typing import Any

from fleet.commands.base import Command, abs_path, q

FACT_KEYS = (
    "os",
    "kernel",
    "arch",
    "docker",
    "compose",
    "disk_free_mb",
    "mem_available_mb",
    "release",
    "release_version",
)


def facts_command(app_dir: str = "/opt/fleet/dify") -> Command:
    """Reads only; every probe tolerates a missing tool (prints an empty value)."""
    root = abs_path(app_dir, "app dir")
    script = "\n".join(
        [
            "export LC_ALL=C",
            'printf "os=%s\\n" "$( (. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME") || uname -s)"',
            'printf "kernel=%s\\n" "$(uname -r)"',
            'printf "arch=%s\\n" "$(uname -m)"',
            'printf "docker=%s\\n" "$(docker version --format \'{{.Server.Version}}\' 2>/dev/null)"',
            'printf "compose=%s\\n" "$(docker compose version --short 2>/dev/null)"',
            'printf "disk_free_mb=%s\\n" "$(df -Pk / | awk \'NR==2 {print int($4/1024)}\')"',
            'printf "mem_available_mb=%s\\n" '
            "\"$(awk '/^MemAvailable:/ {print int($2/1024)}' /proc/meminfo)\"",
            f"cur=$(readlink {q(root + '/current')} 2>/dev/null || true); "
            'printf "release=%s\\n" "${cur##*/}"',
            f'ver=$(sed -n \'s/.*"version": *"\\([^"]*\\)".*/\\1/p\' {q(root + "/current/release.json")} '
            "2>/dev/null "
            "| head -n1); "
            'printf "release_version=%s\\n" "$ver"',
        ]
    )
    return Command(script=script, purpose="read host facts")


def parse_facts(stdout: str) -> dict[str, Any]:
    """Known keys only; missing values become None, numbers become ints."""
    facts: dict[str, Any] = dict.fromkeys(FACT_KEYS)
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in facts:
            value = value.strip()
            if key.endswith("_mb"):
                facts[key] = int(value) if value.isdigit() else None
            else:
                facts[key] = value or None
    return facts
