"""Idempotent host preparation, as one root shell script that reports `changed: X` / `ok: X` per item.

Each item checks before it acts, so a second run prints only `ok:` lines (tested). Run with sudo.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

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


# --------------------------------------------------------------------------- dry run: facts, then a diff

STORAGE_UID = "1001"  # the api image's user, owner of volumes/app/storage (see bootstrap_command)
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"  # dockerd lives there; a login user's PATH may lack it


def _layout_dirs(layout: Layout) -> list[tuple[str, str]]:
    """(directory, mode or "" for any) in the order `layout_script` ensures them."""
    return [(layout.root, ""), (layout.releases, "750"), (layout.volumes, ""), (layout.state, "")]


def bootstrap_facts_command(layout: Layout, user: str) -> Command:
    """Reads what `bootstrap_command` checks, as the deploy user without sudo, and changes nothing.

    One `key<TAB>value…` line per fact, so values with spaces survive; a missing tool prints an empty
    value. The diff against what bootstrap wants is `diff_bootstrap` (pure)."""
    _user(user)
    log_probe = (
        "import json, sys\n"
        "try:\n"
        "    cur = json.load(open(sys.argv[1]))\n"
        "except FileNotFoundError:\n"
        "    cur = {}\n"
        "except Exception as exc:\n"
        "    print('error: %s' % type(exc).__name__); sys.exit()\n"
        "print(json.dumps({k: cur.get(k) for k in sys.argv[2:]}, sort_keys=True))\n"
    )
    storage = layout.volumes + "/app/storage"
    lines = [
        "export LC_ALL=C",
        f'PATH="$PATH:{_SBIN}"',
        'fact() { k=$1; shift; printf \'%s\' "$k"; for v in "$@"; do printf \'\\t%s\' "$v"; done; echo; }',
        'fact docker_cli "$(command -v docker)"',
        'fact dockerd "$(command -v dockerd)"',
        "fact docker_version \"$(docker version --format '{{.Server.Version}}' 2>/dev/null"
        " || docker --version 2>/dev/null | sed -n 's/^Docker version \\([^,]*\\).*/\\1/p')\"",
        'fact compose_version "$(docker compose version --short 2>/dev/null)"',
        "if docker info >/dev/null 2>&1 || [ -S /var/run/docker.sock ]; then fact engine_running yes;"
        " else fact engine_running no; fi",
        'fact apt_get "$(command -v apt-get)"',
        "if [ -d /run/systemd/system ]; then fact systemd yes; else fact systemd no; fi",
        f'fact user_id "$(id -u {q(user)} 2>/dev/null)"',
        f'fact user_groups "$(id -nG {q(user)} 2>/dev/null)"',
        *(
            f"fact dir {q(d)} \"$(stat -c '%U %u %a' {q(d)} 2>/dev/null)\""
            for d in [*(d for d, _ in _layout_dirs(layout)), storage]
        ),
        f"if [ -f {q(layout.history)} ]; then fact history yes; else fact history no; fi",
        'fact python3 "$(command -v python3)"',
        "if command -v python3 >/dev/null 2>&1; then"
        f' fact log_config "$(python3 -c {q(log_probe)} {q(DAEMON_JSON)} {" ".join(q(k) for k in LOG_OPTS)}'
        ' 2>/dev/null)"; fi',
        f"if [ -f {q(SYSCTL_FILE)} ]; then fact sysctl_file yes;"
        f' while IFS= read -r line || [ -n "$line" ]; do fact sysctl_line "$line"; done < {q(SYSCTL_FILE)};'
        " else fact sysctl_file no; fi",
        *(
            f'fact sysctl {q(key)} "$(cat {q("/proc/sys/" + key.replace(".", "/"))} 2>/dev/null'
            " | tr '\\t' ' ')\""
            for key in SYSCTLS
        ),
    ]
    return Command("\n".join(lines), "read what bootstrap would change")


def parse_bootstrap_facts(stdout: str) -> dict[str, Any]:
    """The probe's lines as data: scalars by key, `dirs` {path: (owner, uid, mode) or None},
    `sysctl_lines` (the file's lines) and `sysctls` {key: live value}."""
    facts: dict[str, Any] = {}
    dirs: dict[str, tuple[str, str, str] | None] = {}
    sysctl_lines: list[str] = []
    live: dict[str, str] = {}
    for line in stdout.splitlines():
        key, *values = line.split("\t")
        if key == "dir" and len(values) == 2:
            parts = values[1].split()
            dirs[values[0]] = (parts[0], parts[1], parts[2]) if len(parts) == 3 else None
        elif key == "sysctl_line" and values:
            sysctl_lines.append("\t".join(values))
        elif key == "sysctl" and len(values) == 2:
            live[values[0]] = values[1]
        elif len(values) == 1:
            facts[key] = values[0]
    facts["dirs"] = dirs
    facts["sysctl_lines"] = sysctl_lines
    facts["sysctls"] = live
    return facts


@dataclass(frozen=True)
class Change:
    """One bootstrap item on one host: `ok`, `would change` or `would fail` (bootstrap would stop)."""

    item: str
    state: str
    current: str
    wanted: str


def _dir_change(item: str, seen: tuple[str, str, str] | None, owner: str, mode: str, by_uid: bool) -> Change:
    wanted = f"owner {owner}" + (f", mode {mode}" if mode else "")
    if seen is None:
        return Change(item, "would change", "absent", wanted)
    name, uid, cur_mode = seen
    current = f"owner {uid if by_uid else name}, mode {cur_mode}"
    fine = (uid if by_uid else name) == owner and (not mode or cur_mode == mode)
    return Change(item, "ok" if fine else "would change", current, wanted)


def diff_bootstrap(facts: dict[str, Any], layout: Layout, user: str) -> list[Change]:
    """What `bootstrap_command` would do on a host with these facts, item by item, in its order."""
    _user(user)
    out: list[Change] = []
    has_docker = bool(facts.get("docker_cli")) and bool(facts.get("dockerd"))
    apt = bool(facts.get("apt_get"))
    version = facts.get("docker_version") or ""
    if has_docker:
        out.append(Change("docker engine", "ok", version or "present", "installed"))
    else:
        state = "would change" if apt else "would fail"
        out.append(Change("docker engine", state, "absent", "installed (apt-get install docker.io)"))
    compose = facts.get("compose_version") or ""
    out.append(
        Change("compose v2", "ok", compose, "v2")
        if compose
        else Change(
            "compose v2", "would change" if apt else "would fail", "absent", "v2 (docker-compose-plugin)"
        )
    )
    running = facts.get("engine_running") == "yes"
    if running:
        out.append(Change("docker engine running", "ok", "running", "running"))
    else:
        can_start = facts.get("systemd") == "yes"
        out.append(
            Change(
                "docker engine running",
                "would change" if can_start else "would fail",
                "not running" if has_docker else "not installed",
                "running (systemctl enable --now docker)"
                if can_start
                else "running (no systemd to start it)",
            )
        )
    groups = str(facts.get("user_groups") or "").split()
    if not facts.get("user_id"):
        out.append(
            Change(f"user {user} in group docker", "would fail", f"no user {user}", "an existing user")
        )
    else:
        fine = "docker" in groups
        out.append(
            Change(
                f"user {user} in group docker",
                "ok" if fine else "would change",
                "groups " + (" ".join(groups) or "-"),
                "in group docker",
            )
        )
    dirs: dict[str, Any] = facts.get("dirs") or {}
    for path, mode in _layout_dirs(layout):
        out.append(_dir_change(f"dir {path}", dirs.get(path), user, mode, by_uid=False))
    history = facts.get("history") == "yes"
    out.append(
        Change(
            "history file", "ok" if history else "would change", "present" if history else "absent", "present"
        )
    )
    storage = layout.volumes + "/app/storage"
    out.append(_dir_change(f"dir {storage}", dirs.get(storage), STORAGE_UID, "", by_uid=True))
    wanted_log = json.dumps(LOG_OPTS, sort_keys=True)
    if not facts.get("python3"):
        out.append(Change("docker log rotation", "ok", "skipped: no python3", "per service in the stack"))
    else:
        current = str(facts.get("log_config") or "")
        try:
            fine = json.loads(current) == LOG_OPTS
        except ValueError:
            fine = False
        out.append(
            Change("docker log rotation", "ok" if fine else "would change", current or "unknown", wanted_log)
        )
    lines: list[str] = facts.get("sysctl_lines") or []
    want_text = "".join(f"{k} = {v}\n" for k, v in SYSCTLS.items())
    fine = facts.get("sysctl_file") == "yes" and "\n".join(lines).rstrip("\n") == want_text.rstrip("\n")
    live: dict[str, str] = facts.get("sysctls") or {}
    out.append(
        Change(
            "sysctls",
            "ok" if fine else "would change",
            ("file " if facts.get("sysctl_file") == "yes" else "no file ")
            + SYSCTL_FILE
            + "; live "
            + ", ".join(f"{k}={live.get(k, '?')}" for k in SYSCTLS),
            ", ".join(f"{k}={v}" for k, v in SYSCTLS.items()),
        )
    )
    return out
