"""Idempotent host preparation, as one root shell script that reports `changed: X` / `ok: X` per item.

Each item checks before it acts, so a second run prints only `ok:` lines (tested). Run with sudo.
"""

from __future__ import annotations

import json
import re

from fleet.commands.base import Command, q
from fleet.commands.release import Layout
from fleet.errors import FleetError

DAEMON_JSON = "/etc/docker/daemon.json"
SYSCTL_FILE = "/etc/sysctl.d/60-compose-fleet.conf"
# what the stack needs from the kernel: nginx/api accept queues under load, fewer port collisions
SYSCTLS = {"net.core.somaxconn": "4096", "net.ipv4.ip_local_port_range": "10240 65000"}
LOG_OPTS = {"log-driver": "json-file", "log-opts": {"max-size": "20m", "max-file": "5"}}
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

# merges LOG_OPTS into daemon.json, keeping every other key; prints "changed" or "ok"
_MERGE = r"""
import json, os, sys
path, wanted = sys.argv[1], json.loads(sys.argv[2])
try:
    with open(path) as fh:
        cur = json.load(fh)
except FileNotFoundError:
    cur = {}
new = dict(cur)
new.update(wanted)
if new == cur:
    print("ok")
else:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".fleet-new", "w") as fh:
        json.dump(new, fh, indent=2, sort_keys=True)
    os.replace(path + ".fleet-new", path)
    print("changed")
"""


def _user(user: str) -> str:
    if not isinstance(user, str) or not _USER_RE.fullmatch(user):
        raise FleetError(f"invalid deploy user {user!r}", hint="a plain login name")
    return user


def layout_script(layout: Layout, user: str) -> str:
    """The layout part of bootstrap (also runnable alone): the app directories owned by `user`, and
    releases/ 0750 (every release below it carries the .env; staging re-asserts the mode too)."""
    _user(user)
    dirs = [(layout.root, ""), (layout.releases, "750"), (layout.volumes, ""), (layout.state, "")]
    lines = [
        "set -eu",
        'report() { printf \'%s: %s\\n\' "$1" "$2"; }',
        "ensure_dir() {",
        f'  if [ -d "$1" ] && [ "$(stat -c %U "$1")" = {q(user)} ]'
        ' && { [ -z "$2" ] || [ "$(stat -c %a "$1")" = "$2" ]; }; then report ok "dir $1";',
        f'  else mkdir -p "$1"; chown {q(user)}: "$1"; [ -z "$2" ] || chmod "$2" "$1";',
        '    report changed "dir $1"; fi',
        "}",
        *(f"ensure_dir {q(d)} {q(mode)}" for d, mode in dirs),
        f"if [ -f {q(layout.history)} ]; then report ok 'history file';"
        f" else touch {q(layout.history)}; chown {q(user)}: {q(layout.history)};"
        " report changed 'history file'; fi",
    ]
    return "\n".join(lines)


def bootstrap_command(layout: Layout, user: str) -> Command:
    _user(user)
    sysctl_text = "".join(f"{k} = {v}\n" for k, v in SYSCTLS.items())
    lines = [
        "set -eu",
        "export DEBIAN_FRONTEND=noninteractive",
        'report() { printf \'%s: %s\\n\' "$1" "$2"; }',
        # 1. Docker engine + Compose v2
        "if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then",
        "  command -v apt-get >/dev/null 2>&1 || "
        "{ echo 'no Docker and no apt-get to install it' >&2; exit 20; }",
        "  apt-get update -q >/dev/null && apt-get install -y -q docker.io >/dev/null",
        "  report changed 'docker engine installed'",
        "else report ok 'docker engine present'; fi",
        "if ! docker compose version >/dev/null 2>&1; then",
        "  command -v apt-get >/dev/null 2>&1 || { echo 'no Compose v2 and no apt-get' >&2; exit 21; }",
        "  apt-get update -q >/dev/null",
        "  apt-get install -y -q docker-compose-plugin >/dev/null 2>&1 || "
        "apt-get install -y -q docker-compose >/dev/null 2>&1 || true",
        "  docker compose version >/dev/null 2>&1 || "
        "{ echo 'Compose v2 is not available from the apt sources of this host: "
        "add the Docker apt repository (docker-compose-plugin)' >&2; exit 22; }",
        "  report changed 'compose v2 installed'",
        "else report ok 'compose v2 present'; fi",
        "if ! docker info >/dev/null 2>&1; then",
        "  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then"
        " systemctl enable --now docker;"
        " else echo 'docker engine is not running and there is no systemd to start it' >&2; exit 23; fi",
        "  report changed 'docker engine started'",
        "else report ok 'docker engine running'; fi",
        # 2. deploy user may use Docker
        f"id {q(user)} >/dev/null 2>&1 || {{ echo {q(f'user {user} does not exist')} >&2; exit 24; }}",
        f"if id -nG {q(user)} | tr ' ' '\\n' | grep -qx docker; then"
        f" report ok {q(f'user {user} in group docker')};"
        f" else usermod -aG docker {q(user)}; report changed {q(f'user {user} added to group docker')}; fi",
        # 3. directories
        layout_script(layout, user),
        # the api image runs as uid 1001 (dify's "dify" user) and writes its file storage here
        f"storage={q(layout.volumes + '/app/storage')}",
        'if [ -d "$storage" ] && [ "$(stat -c %u "$storage")" = 1001 ]; then report ok "dir $storage";',
        'else mkdir -p "$storage"; chown 1001:1001 "$storage"; report changed "dir $storage"; fi',
        # 4. Docker log rotation (daemon-wide default; the stack also sets it per service)
        "if command -v python3 >/dev/null 2>&1; then",
        f"  r=$(python3 -c {q(_MERGE)} {q(DAEMON_JSON)} {q(json.dumps(LOG_OPTS, sort_keys=True))})",
        '  if [ "$r" = changed ]; then',
        "    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then"
        " systemctl restart docker;"
        " report changed 'docker log rotation (engine restarted)';",
        "    else report changed 'docker log rotation (applies at the next engine restart)'; fi",
        "  else report ok 'docker log rotation'; fi",
        "else report ok 'docker log rotation skipped: no python3 (the stack sets rotation per service)'; fi",
        # 5. sysctls
        f"want={q(sysctl_text)}",
        f'if [ -f {q(SYSCTL_FILE)} ] && [ "$(cat {q(SYSCTL_FILE)})" = "$(printf %s "$want")" ]; then',
        "  report ok sysctls",
        "else",
        f'  printf %s "$want" > {q(SYSCTL_FILE)}',
        f"  sysctl -q -p {q(SYSCTL_FILE)} >/dev/null 2>&1 || true",
        "  report changed sysctls",
        "fi",
    ]
    return Command("\n".join(lines), "bootstrap the host", sudo=True)


def parse_bootstrap(stdout: str) -> tuple[list[str], list[str]]:
    """(changed items, unchanged items)."""
    changed, ok = [], []
    for line in stdout.splitlines():
        kind, sep, item = line.partition(": ")
        if sep and kind == "changed":
            changed.append(item)
        elif sep and kind == "ok":
            ok.append(item)
    return changed, ok
