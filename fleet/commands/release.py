"""Commands for the host layout of releases and for the compose project that runs the current one.

    /opt/fleet/dify/
      releases/<id>/     one rendered bundle per release (docker-compose.yaml, .env 0600, release.json ...)
      config/<dir>-<hash>/  content-addressed copies of the releases' mounted config dirs (nginx/ ...)
      current  -> releases/<id>    switched atomically (symlink renamed over the old one)
      previous -> releases/<id>    what `current` pointed at before the last switch (rollback target)
      volumes/           persistent data, never inside a release
      state/drain        present = nginx answers /health with 503
      history.jsonl      append-only audit, one JSON object per line

Every builder is pure: it validates its inputs (ids, names, paths), quotes every value and returns a
`Command` (or a parser result). Compose always runs with the release's own directory as project
directory. The config directories a release mounts (nginx/, ssrf_proxy/, certs/) are mounted from
config/<dir>-<content hash>, not from the release (the bundle rewrites those mounts and lists them in
releases/<id>/config-dirs; `compose_up` copies each one there once): the same content has the same
path in every release, so a switch recreates exactly the services whose config or mounted files
changed. See docs/compose.md for how deploy/status/rollback use these.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from fleet.commands.base import Command, abs_path, name, q, release_id, secret_forms, sh
from fleet.commands.health import DOCKER_CHECKS, health_command
from fleet.errors import FleetError

DEFAULT_ROOT = "/opt/fleet/dify"
COMPOSE_FILE = "docker-compose.yaml"
ENV_FILE = ".env"
RELEASE_FILE = "release.json"
CONFIG_DIRS_FILE = "config-dirs"  # lines `<dir in the release> <name under config/>`
CONFIG_DIR_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")  # one path component, never . or ..
DEFAULT_PROJECT = "dify"
_SHA256_RE = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
_WORKING_DIR_RE = re.compile(r"com\.docker\.compose\.project\.working_dir=([^,]*)")
_CONFIG_HASH_RE = re.compile(r"com\.docker\.compose\.config-hash=([0-9a-f]{64})")
_OWNER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}(?::[a-z_][a-z0-9_-]{0,31})?$")
_PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SECTION = "@@"


@dataclass(frozen=True)
class Layout:
    """Where one host keeps its releases, and the compose project name (fixed across releases)."""

    root: str = DEFAULT_ROOT
    project: str = DEFAULT_PROJECT

    def __post_init__(self) -> None:
        abs_path(self.root, "app dir")
        if self.root == "/":
            raise FleetError("the app dir cannot be /", hint="use a directory such as /opt/fleet/dify")
        if not isinstance(self.project, str) or not _PROJECT_RE.fullmatch(self.project):
            raise FleetError(
                f"invalid compose project {self.project!r}",
                hint="lowercase letters, digits, '-' and '_', starting with a letter or digit",
            )

    @property
    def releases(self) -> str:
        return f"{self.root}/releases"

    @property
    def current(self) -> str:
        return f"{self.root}/current"

    @property
    def previous(self) -> str:
        return f"{self.root}/previous"

    @property
    def volumes(self) -> str:
        return f"{self.root}/volumes"

    @property
    def state(self) -> str:
        return f"{self.root}/state"

    @property
    def config(self) -> str:
        """Content-addressed config dirs shared by the releases (see `ensure_config_dirs`)."""
        return f"{self.root}/config"

    @property
    def drain_flag(self) -> str:
        return f"{self.state}/drain"

    @property
    def history(self) -> str:
        return f"{self.root}/history.jsonl"

    def release(self, rid: str) -> str:
        return f"{self.releases}/{release_id(rid)}"


def _script(*lines: str) -> str:
    return "\n".join(("set -eu", *lines))


def _owner(value: str) -> str:
    """`user` (becomes `user:`, i.e. the user's login group) or `user:group`."""
    if not isinstance(value, str) or not _OWNER_RE.fullmatch(value):
        raise FleetError(f"invalid owner {value!r}", hint="a user name, or user:group")
    return value if ":" in value else value + ":"


# --------------------------------------------------------------------------- layout


def prepare_layout(layout: Layout, owner: str | None = None) -> Command:
    """Directories of the layout (idempotent). Run with sudo when `owner` is given."""
    dirs = [layout.root, layout.releases, layout.volumes, layout.state]
    lines = [f"mkdir -p {' '.join(q(d) for d in dirs)}", f"touch {q(layout.history)}"]
    if owner:
        lines.append(f"chown {q(_owner(owner))} {' '.join(q(d) for d in (*dirs, layout.history))}")
    lines.append(f"chmod 0750 {q(layout.releases)}")
    return Command(_script(*lines), "prepare the host layout", sudo=bool(owner))


def release_present(layout: Layout, rid: str) -> Command:
    """Prints `present` when releases/<id> is complete (renamed into place whole), else `absent`."""
    path = layout.release(rid)
    script = f"if [ -f {q(path + '/' + RELEASE_FILE)} ]; then echo present; else echo absent; fi"
    return Command(script, f"is release {rid} staged")


def present_or_slot(layout: Layout, rid: str) -> Command:
    """`release_present`, and when the release is absent `upload_slot` in the same round trip:
    prints `present` (nothing else done) or, once the slot is ready, `absent`."""
    path = layout.release(rid)
    script = (
        f"if [ -f {q(path + '/' + RELEASE_FILE)} ]; then echo present; exit 0; fi\n"
        f"( {upload_slot(layout, rid).script}\n) || exit $?\necho absent"
    )
    return Command(script, f"prepare the upload of release {rid}")


def parse_present(stdout: str) -> bool:
    word = stdout.strip()
    if word not in ("present", "absent"):
        raise FleetError(f"unexpected answer {word[:80]!r} to the release check")
    return word == "present"


LEFTOVER_MINUTES = 10
_UPLOAD_PREFIX = ".upload-"
_UPLOAD_FILE = "bundle.tar"


def upload_dir(layout: Layout, rid: str) -> str:
    """Where the bundle tar of release <id> is uploaded: a private (0700) directory inside releases/."""
    return f"{layout.releases}/{_UPLOAD_PREFIX}{release_id(rid)}"


def upload_path(layout: Layout, rid: str) -> str:
    return f"{upload_dir(layout, rid)}/{_UPLOAD_FILE}"


def private_releases(layout: Layout) -> list[str]:
    """Shell lines making releases/ exist and private (0750): a host bootstrapped by an older version
    has it 0755, and everything staged below it carries the release's secrets."""
    return [
        f"mkdir -p {q(layout.releases)}",
        f"chmod 0750 {q(layout.releases)} || "
        "{ echo 'cannot make releases/ private (chmod 0750): does the deploy user own it?' >&2; exit 6; }",
    ]


def sweep_lines(layout: Layout, keep: str | None = None) -> list[str]:
    """Shell lines deleting what an interrupted stage left in releases/: uploaded archives (`.upload-*`)
    and half-unpacked `<id>.tmp` dirs older than LEFTOVER_MINUTES (a younger one may belong to a stage
    still running). `keep` (a release id) spares that release's own upload."""
    spare = f" ! -name {q(_UPLOAD_PREFIX + release_id(keep))}" if keep else ""
    return [
        f"find {q(layout.releases)} -mindepth 1 -maxdepth 1 \\( -name {q(_UPLOAD_PREFIX + '*')} "
        f"-o -name '*.tmp' \\){spare} -mmin +{LEFTOVER_MINUTES} -exec rm -rf {{}} + 2>/dev/null || true",
    ]


def sweep(layout: Layout) -> Command:
    """Delete leftovers of interrupted stages (see `sweep_lines`); prune runs it on every host."""
    return Command(_script(*sweep_lines(layout)), "sweep leftover uploads")


def upload_slot(layout: Layout, rid: str) -> Command:
    """Before an sftp upload: releases/ private, old leftovers swept, and an empty 0600 file in a fresh
    0700 directory for the upload to write into (sftp keeps an existing file's mode), so the archive,
    which holds the .env, is never readable by another user of the host."""
    slot = upload_dir(layout, rid)
    lines = [
        "umask 077",
        *private_releases(layout),
        *sweep_lines(layout, keep=rid),
        f"rm -rf {q(slot)}",
        f"mkdir -m 0700 {q(slot)}",
        f": > {q(upload_path(layout, rid))}",
    ]
    return Command(_script(*lines), f"prepare the upload of release {rid}")


def discard_upload(layout: Layout, rid: str) -> Command:
    return Command(f"rm -rf {q(upload_dir(layout, rid))}", f"discard the upload of release {rid}")


def stage(
    layout: Layout,
    rid: str,
    checksums: Mapping[str, str],
    *,
    owner: str | None = None,
    archive: str | None = None,
) -> Command:
    """Unpack the bundle tar (stdin, or an uploaded `archive` file) into a private releases/<id>.tmp,
    verify every file's sha256, lock down .env, then rename to releases/<id>: a release directory is
    never partial. If the release already exists the upload is discarded (idempotent). On every exit
    (failure, signal) the .tmp and the archive (its upload directory when it is `upload_path`) are
    removed; older leftovers are swept first."""
    final = layout.release(rid)
    tmp = final + ".tmp"
    source = "-" if archive is None else q(abs_path(archive, "archive path"))
    if not checksums or ENV_FILE not in checksums:
        raise FleetError("stage needs the bundle's checksums, including .env", hint="use Bundle.checksums()")
    sums = []
    for rel, digest in sorted(checksums.items()):
        match = _SHA256_RE.fullmatch(digest)
        if not match or rel.startswith("/") or ".." in rel.split("/") or "\n" in rel:
            raise FleetError(f"invalid checksum entry {rel!r}: {digest!r}")
        sums.append(f"{match.group(1)}  {rel}")
    cleanup = [q(tmp)]
    if archive is not None:
        cleanup.append(q(upload_dir(layout, rid)) if archive == upload_path(layout, rid) else source)
    lines = [
        "umask 027",
        *private_releases(layout),
        f"cleanup() {{ rm -rf {' '.join(cleanup)}; }}",
        "trap cleanup EXIT",
        "trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM",
        *sweep_lines(layout, keep=rid),
        f"rm -rf {q(tmp)}",
        f"mkdir -m 0700 {q(tmp)}",
        f"tar -x --no-same-owner -f {source} -C {q(tmp)}",
        f"(cd {q(tmp)} && printf '%s\\n' {' '.join(q(s) for s in sums)} | sha256sum -c --quiet --strict -)",
        f"chmod 0600 {q(tmp + '/' + ENV_FILE)}",
        f"chmod 0750 {q(tmp)}",
    ]
    if owner:
        lines.append(f"chown -R {q(_owner(owner))} {q(tmp)}")
    lines.append(f"if [ ! -e {q(final)} ]; then mv -T {q(tmp)} {q(final)}; fi")
    return Command(_script(*lines), f"stage release {rid}", sudo=bool(owner))


def switch(layout: Layout, rid: str) -> Command:
    """Point `current` at releases/<id> atomically (rename of a fresh symlink); the old target becomes
    `previous`. Refuses a release that is not staged. Relative links, so the tree can be moved."""
    target = f"releases/{release_id(rid)}"
    root = q(layout.root)
    lines = [
        f"cd {root}",
        f"[ -f {q(target + '/' + RELEASE_FILE)} ] || {{ echo 'release {rid} is not staged' >&2; exit 3; }}",
        "old=$(readlink current 2>/dev/null || true)",
        f'if [ -n "$old" ] && [ "$old" != {q(target)} ]; then',
        '  ln -sfn "$old" .previous.new && mv -T .previous.new previous',
        "fi",
        f"ln -sfn {q(target)} .current.new",
        "mv -T .current.new current",
    ]
    return Command(_script(*lines), f"switch current to {rid}")


def host_state(layout: Layout) -> Command:
    """One round trip for status: current/previous ids, drain flag, current release.json, last history line.
    Reads no secret (release.json lists secret names only)."""
    root = q(layout.root)
    lines = [
        f"cd {root} 2>/dev/null || {{ echo 'missing=yes'; exit 0; }}",
        'cur=$(readlink current 2>/dev/null || true); printf "current=%s\\n" "${cur##*/}"',
        'prev=$(readlink previous 2>/dev/null || true); printf "previous=%s\\n" "${prev##*/}"',
        f"if [ -e {q(layout.drain_flag)} ]; then echo drained=yes; else echo drained=no; fi",
        f"echo {_SECTION}release",
        f'[ -z "$cur" ] || cat current/{RELEASE_FILE} 2>/dev/null || true',
        f"echo {_SECTION}history",
        "tail -n 1 history.jsonl 2>/dev/null || true",
        f"echo {_SECTION}end",
    ]
    return Command("\n".join(lines), "read release state")


@dataclass(frozen=True)
class HostState:
    """What `host_state` found. `record` is the current release.json (None when there is none)."""

    exists: bool
    current: str | None
    previous: str | None
    drained: bool
    record: dict[str, Any] | None
    last_history: dict[str, Any] | None

    @property
    def version(self) -> str | None:
        value = (self.record or {}).get("version")
        return value if isinstance(value, str) else None


def _sections(stdout: str) -> tuple[dict[str, str], dict[str, str]]:
    head: dict[str, str] = {}
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stdout.splitlines():
        if line.startswith(_SECTION):
            current = blocks.setdefault(line[len(_SECTION) :].strip(), [])
        elif current is not None:
            current.append(line)
        else:
            key, sep, value = line.partition("=")
            if sep:
                head[key.strip()] = value.strip()
    return head, {k: "\n".join(v) for k, v in blocks.items()}


def _json_or_none(text: str) -> dict[str, Any] | None:
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_host_state(stdout: str) -> HostState:
    head, blocks = _sections(stdout)
    if head.get("missing") == "yes":
        return HostState(False, None, None, False, None, None)
    if "end" not in blocks:
        raise FleetError(
            "truncated answer to the release-state probe", hint="is the host's disk or shell broken?"
        )
    cur, prev = head.get("current") or None, head.get("previous") or None
    return HostState(
        exists=True,
        current=release_id(cur) if cur else None,
        previous=release_id(prev) if prev else None,
        drained=head.get("drained") == "yes",
        record=_json_or_none(blocks.get("release", "")),
        last_history=_json_or_none(blocks.get("history", "")),
    )


def archive_release(layout: Layout, rid: str | None = None) -> Command:
    """The files of releases/<id> (default: current) as base64 of a tar, for `fleet.release.bundle.diff`.
    The OUTPUT holds the release's .env with its secrets: decode it, never log it."""
    path = layout.release(rid) if rid else layout.current
    script = f"if [ -d {q(path + '/')} ]; then tar -C {q(path + '/')} -cf - . | base64 -w0; fi; echo"
    return Command(script, f"read files of release {rid or 'current'} (output holds secrets: never log it)")


def decode_archive(stdout: str, where: str | None = None) -> dict[str, bytes]:
    """Files of the release archived by `archive_release`; {} when the host has none."""
    text = stdout.strip()
    if not text:
        return {}
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FleetError("the release archive is not base64", where=where) from None
    return files_from_tar(data, where)


# --------------------------------------------------------------------------- compose


def compose_argv(layout: Layout, rid: str, *args: str) -> list[str]:
    """`docker compose` for one release: the project name is fixed, the directory is the release's."""
    path = layout.release(rid)
    return [
        "docker",
        "compose",
        "-p",
        layout.project,
        "--project-directory",
        path,
        "-f",
        f"{path}/{COMPOSE_FILE}",
        "--env-file",
        f"{path}/{ENV_FILE}",
        *args,
    ]


def compose_check(layout: Layout, rid: str) -> Command:
    """`docker compose config --quiet`: the staged release is valid on this host's Compose."""
    return Command(sh(*compose_argv(layout, rid, "config", "--quiet")), f"validate release {rid}")


def compose_check_hashes(layout: Layout, rid: str) -> Command:
    """`compose_check`, then `compose_hashes` of the valid release: one round trip while staging
    (the hashes of a staged release never change: its directory is never rewritten)."""
    return Command(
        f"{compose_check(layout, rid).script} && {compose_hashes(layout, rid).script}",
        f"validate release {rid}",
    )


def compose_pull(layout: Layout, rid: str) -> Command:
    """Pull every enabled service's image; an unknown version fails here, before anything changes."""
    return Command(sh(*compose_argv(layout, rid, "pull", "--quiet")), f"pull images of release {rid}")


def remove_services(layout: Layout, services: Iterable[str]) -> list[str]:
    """Shell lines removing the project's containers of `services` (by label: works whatever release
    created them). `up --remove-orphans` leaves containers of profile-disabled services running."""
    lines = []
    for svc in services:
        filters = [
            f"label=com.docker.compose.project={layout.project}",
            f"label=com.docker.compose.service={name(svc, 'service name')}",
        ]
        ps = sh("docker", "ps", "-aq", "--filter", filters[0], "--filter", filters[1])
        lines.append(f'ids=$({ps}); if [ -n "$ids" ]; then docker rm -f $ids >/dev/null; fi')
    return lines


def compose_up(
    layout: Layout,
    rid: str,
    *,
    disabled: Sequence[str] = (),
    wait_timeout: int | None = None,
) -> Command:
    """Converge the project on release <id>: drop services disabled on this host (Bundle.disabled_services,
    e.g. worker_beat off the beat host), then `up -d --remove-orphans` (optionally `--wait`)."""
    args = ["up", "-d", "--remove-orphans"]
    if wait_timeout is not None:
        if not isinstance(wait_timeout, int) or wait_timeout <= 0:
            raise FleetError(f"invalid wait timeout {wait_timeout!r}", hint="a positive number of seconds")
        args += ["--wait", "--wait-timeout", str(wait_timeout)]
    lines = [
        *compose_lock(layout),
        *ensure_config_dirs(layout, rid),
        *remove_interrupted(layout),
        *remove_services(layout, disabled),
        sh(*compose_argv(layout, rid, *args)),
    ]
    return Command(_script(*lines), f"start release {rid}")


def ensure_config_dirs(layout: Layout, rid: str) -> list[str]:
    """Shell lines (under the compose lock) making every config dir that release <id> lists in its
    `config-dirs` exist under config/: copied from the release (a verified upload) into a `.tmp` and
    renamed, so a name under config/ always holds that content whole. A release without the file
    (staged by an older compose-fleet) mounts its own dirs and needs nothing here."""
    rel = layout.release(rid)
    manifest = q(f"{rel}/{CONFIG_DIRS_FILE}")
    cfg = q(layout.config)
    return [
        f"if [ -f {manifest} ]; then",
        f"  [ -d {cfg} ] || mkdir -m 0750 {cfg}",
        "  while read -r src dst; do",
        '    for part in "$src" "$dst"; do case "$part" in ""|.|..|*/*) '
        f"echo {q(f'bad line in {CONFIG_DIRS_FILE} of release {rid}')} >&2; exit 7;; esac; done",
        f'    [ -d {cfg}/"$dst" ] && continue',
        f'    rm -rf {cfg}/"$dst.tmp"',
        f'    cp -a {q(rel)}/"$src" {cfg}/"$dst.tmp"',
        f'    mv -T {cfg}/"$dst.tmp" {cfg}/"$dst"',
        f"  done < {manifest}",
        "fi",
    ]


def sweep_config_lines(layout: Layout) -> list[str]:
    """Shell lines (under the compose lock: no `up` is copying meanwhile) deleting config dirs that no
    release left in releases/ lists, and `.tmp` copies an interrupted `up` left."""
    cfg = q(layout.config)
    listed = f"cat {q(layout.releases)}/*/{CONFIG_DIRS_FILE} 2>/dev/null | awk '{{print $2}}'"
    return [
        f"if [ -d {cfg} ]; then",
        f"  listed=$({listed})",
        f"  for d in {cfg}/*; do",
        '    [ -e "$d" ] || continue',
        "    n=${d##*/}",
        '    if ! printf "%s\\n" "$listed" | grep -qxF -- "$n"; then rm -rf -- "$d"; fi',
        "  done",
        "fi",
    ]


MIGRATE_SERVICE = "api"
MIGRATE_COMMAND = ("flask", "upgrade-db")


def compose_migrate(
    layout: Layout, rid: str, command: Sequence[str] = MIGRATE_COMMAND, service: str = MIGRATE_SERVICE
) -> Command:
    """The database migration as a one-off container of release <id>: `docker compose run --rm
    --no-deps -T --entrypoint <command[0]> api <command[1:]...>`, under the host's compose lock. The
    entrypoint is replaced because Dify's api entrypoint ignores its arguments (it starts gunicorn);
    `--no-deps` leaves the running services alone, whatever release they run."""
    words = [str(w) for w in command]
    if not words or any(not w or "\0" in w or "\n" in w for w in words):
        raise FleetError(f"invalid migration command {list(command)!r}", hint="a list of non-empty words")
    argv = compose_argv(
        layout,
        rid,
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "--entrypoint",
        words[0],
        name(service, "service name"),
        *words[1:],
    )
    lines = [*compose_lock(layout), *ensure_config_dirs(layout, rid), sh(*argv)]
    return Command(_script(*lines), f"migrate the database with release {rid}")


COMPOSE_LOCK_WAIT = 300


def compose_lock(layout: Layout) -> list[str]:
    """Shell lines taking the host's compose lock on fd 9 (held until the script and the compose it
    starts exit). An operator killed mid-`up` can leave that compose running on the host; a second `up`
    at the same time races it over the same containers, so the second one waits here instead."""
    lock = f"{layout.state}/compose.lock"
    busy = q(f"another compose operation on this host holds {lock}")
    return [
        f"mkdir -p {q(layout.state)}",
        f"exec 9>>{q(lock)}",
        f"flock -w {COMPOSE_LOCK_WAIT} 9 || {{ echo {busy} >&2; exit 5; }}",
    ]


_HEX12 = "[0-9a-f]" * 12  # spelled out: mawk has no {12} interval


def remove_interrupted(layout: Layout) -> list[str]:
    """Shell lines removing containers an interrupted recreate left behind: Compose renames the old
    container to `<id12>_<name>` before it creates the new one, and a killed run leaves that name
    taken, which makes the next `up` fail with a name conflict."""
    ps = sh(
        "docker",
        "ps",
        "-a",
        "--filter",
        f"label=com.docker.compose.project={layout.project}",
        "--format",
        "{{.ID}} {{.Names}}",
    )
    return [
        f"ids=$({ps} | awk '$2 ~ /^{_HEX12}_/ {{print $1}}'); "
        'if [ -n "$ids" ]; then docker rm -f $ids >/dev/null; fi'
    ]


def compose_hashes(layout: Layout, rid: str) -> Command:
    """`config --hash '*'`: per enabled service, the config hash Compose stamps on the containers it
    creates from release <id>. Containers with another hash do not match that release (drift)."""
    return Command(sh(*compose_argv(layout, rid, "config", "--hash", "*")), f"config hashes of release {rid}")


def parse_hashes(stdout: str) -> dict[str, str]:
    hashes = {}
    for line in stdout.splitlines():
        svc, _, digest = line.strip().partition(" ")
        if svc and re.fullmatch(r"[0-9a-f]{64}", digest.strip()):
            hashes[svc] = digest.strip()
    return hashes


def compose_ps(layout: Layout) -> Command:
    """Every container of the project, whichever release made it (project-only mode: no file needed)."""
    return Command(
        sh("docker", "compose", "-p", layout.project, "ps", "--all", "--format", "json"), "list containers"
    )


LOOK_SECTION = f"{_SECTION}fleet-health"
LOOK_PS_FAILED = 96


def look(layout: Layout, port: int) -> Command:
    """`compose_ps` then the /health probe through nginx, in one round trip (a verify poll): the ps
    JSON, a section line, the probe's output. Exit LOOK_PS_FAILED (stderr says why) when ps fails."""
    return Command(
        f"{compose_ps(layout).script} || exit {LOOK_PS_FAILED}\necho {LOOK_SECTION}\n"
        f"{health_command(port).script}",
        "list containers and probe /health",
    )


def split_look(stdout: str) -> tuple[str, str]:
    """(ps output, probe output) of `look`; FleetError when the section line is missing."""
    head, sep, tail = stdout.partition(f"{LOOK_SECTION}\n")
    if not sep:
        raise FleetError("the container list and /health probe printed no section line")
    return head, tail


def compose_down(layout: Layout) -> Command:
    """Stop and remove the project's containers and networks (volumes are host directories: kept)."""
    return Command(
        sh("docker", "compose", "-p", layout.project, "down", "--remove-orphans"), "stop the stack"
    )


@dataclass(frozen=True)
class ServiceState:
    """One container of the project, from `docker compose ps --format json`."""

    service: str
    container: str
    state: str  # running, exited, restarting, created, paused, dead
    health: str  # healthy, unhealthy, starting, or "" without healthcheck
    image: str
    release: str | None  # the release whose directory created (or last recreated) it
    exit_code: int | None = None
    config_hash: str | None = None  # Compose's com.docker.compose.config-hash label

    @property
    def ok(self) -> bool:
        return self.state == "running" and self.health in ("", "healthy")


def _ps_records(stdout: str) -> list[dict[str, Any]]:
    text = stdout.strip()
    if not text:
        return []
    if text.startswith("["):  # Compose before 2.21 printed one JSON array
        data = json.loads(text)
        return [d for d in data if isinstance(d, dict)]
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            value = json.loads(line)
            if isinstance(value, dict):
                records.append(value)
    return records


def parse_ps(stdout: str, layout: Layout, where: str | None = None) -> list[ServiceState]:
    """Containers sorted by service; `release` read from the compose working_dir label."""
    try:
        records = _ps_records(stdout)
    except ValueError:
        raise FleetError("`docker compose ps` did not print JSON", where=where) from None
    out = []
    prefix = layout.releases + "/"
    for rec in records:
        labels = rec.get("Labels")
        working = config_hash = None
        if isinstance(labels, dict):
            working = labels.get("com.docker.compose.project.working_dir")
            config_hash = labels.get("com.docker.compose.config-hash")
        elif isinstance(labels, str):
            match = _WORKING_DIR_RE.search(labels)
            working = match.group(1) if match else None
            match = _CONFIG_HASH_RE.search(labels)
            config_hash = match.group(1) if match else None
        rid = None
        if isinstance(working, str) and working.startswith(prefix):
            candidate = working[len(prefix) :].rstrip("/")
            rid = candidate if re.fullmatch(r"[0-9a-f]{12,64}", candidate) else None
        exit_code = rec.get("ExitCode")
        out.append(
            ServiceState(
                service=str(rec.get("Service", "")),
                container=str(rec.get("Name", "")),
                state=str(rec.get("State", "")),
                health=str(rec.get("Health", "") or ""),
                image=str(rec.get("Image", "")),
                release=rid,
                exit_code=exit_code if isinstance(exit_code, int) else None,
                config_hash=config_hash if isinstance(config_hash, str) else None,
            )
        )
    return sorted(out, key=lambda s: (s.service, s.container))


def drift(states: Sequence[ServiceState], expected: Mapping[str, str]) -> list[str]:
    """Why the running containers do not match the current release (empty list = no drift).
    `expected` is service -> config hash of the current release (`parse_hashes(compose_hashes(...))`):
    a container matches when Compose would not recreate it. (A service whose config did not change
    keeps the container, and its working_dir label, of an older release: that is not drift.)"""
    problems = []
    seen = {s.service for s in states}
    for svc in expected:
        if svc not in seen:
            problems.append(f"{svc}: no container")
    for s in states:
        want = expected.get(s.service)
        if want is None:
            problems.append(f"{s.service}: not in the current release ({s.container} {s.state})")
        elif s.config_hash != want:
            made_by = f"release {s.release}" if s.release else "an unknown release"
            problems.append(f"{s.service}: config differs from the current release (made by {made_by})")
        elif s.state != "running":
            problems.append(f"{s.service}: {s.state}")
    return problems


# --------------------------------------------------------------------------- drain, history, disk


def drain(layout: Layout) -> Command:
    """nginx starts answering /health with 503 (the load balancer stops sending new requests)."""
    return Command(_script(f"mkdir -p {q(layout.state)}", f"touch {q(layout.drain_flag)}"), "drain")


def undrain(layout: Layout) -> Command:
    return Command(f"rm -f {q(layout.drain_flag)}", "undrain")


def history_entry(
    action: str,
    result: str,
    *,
    operator: str,
    release: str | None = None,
    version: str | None = None,
    rollout: str | None = None,
    detail: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """The audit record DESIGN.md describes. Never put a secret in `detail`."""
    entry: dict[str, Any] = {
        "time": (time or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "operator": operator,
        "action": name(action, "history action"),
        "result": name(result, "history result"),
    }
    if release is not None:
        entry["release"] = release_id(release)
    if version is not None:
        entry["version"] = version
    if rollout is not None:
        entry["rollout"] = rollout
    if detail is not None:
        entry["detail"] = detail
    return entry


def history_line(entry: Mapping[str, Any]) -> str:
    """One JSON object on one line (json escapes newlines); bounded so one append stays one write."""
    line = json.dumps(dict(entry), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    if len(line) > 3500:
        raise FleetError("history entry too long", hint="keep `detail` short (under 3 KB)")
    return line


def history_append(layout: Layout, entry: Mapping[str, Any], secrets: Sequence[str] = ()) -> Command:
    """Append one line to history.jsonl (O_APPEND, one write). Refuses an entry holding any of `secrets`
    in any form (the JSON line escapes quotes and backslashes, so the raw value alone is not enough)."""
    line = history_line(entry)
    leaked = [s for s in secrets if s and any(form in line for form in secret_forms(s))]
    if leaked:
        raise FleetError(
            "refusing to write a secret value into history.jsonl", hint="remove it from the entry"
        )
    return Command(f"printf '%s\\n' {q(line)} >> {q(layout.history)}", "record history", tuple(secrets))


def history_read(layout: Layout, limit: int | None = None) -> Command:
    """The last `limit` entries (all when None), oldest first as stored."""
    if limit is None:
        script = f"cat {q(layout.history)} 2>/dev/null || true"
    else:
        if not isinstance(limit, int) or limit <= 0:
            raise FleetError(f"invalid history limit {limit!r}", hint="a positive number of entries")
        script = f"tail -n {limit} {q(layout.history)} 2>/dev/null || true"
    return Command(script, "read history")


def parse_history(stdout: str) -> list[dict[str, Any]]:
    """Entries newest first; a damaged line is kept as {"unparsed": text} rather than dropped."""
    entries: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        value = _json_or_none(line)
        entries.append(value if value is not None else {"unparsed": line[:500]})
    entries.reverse()
    return entries


def disk_free(layout: Layout) -> Command:
    """Free megabytes on the file systems of the layout and of Docker's data root (prints `mb path`)."""
    probe = (
        # a stopped daemon prints an empty line and fails: fall back to Docker's default data root
        'root=$(docker info --format "{{.DockerRootDir}}" 2>/dev/null | tr -d "\\n"); '
        '[ -n "$root" ] || root=/var/lib/docker; '
        'for p in "$1" "$root"; do '
        'd=$p; while [ ! -e "$d" ]; do d=$(dirname "$d"); done; '
        'printf "%s %s\\n" "$(df -Pk "$d" | awk \'NR==2 {print int($4/1024)}\')" "$p"; done'
    )
    return Command(f"sh -c {q(probe)} sh {q(layout.root)}", "free disk space")


def parse_disk_free(stdout: str) -> dict[str, int]:
    free = {}
    for line in stdout.splitlines():
        mb, _, path = line.strip().partition(" ")
        if path and mb.isdigit():
            free[path] = int(mb)
    return free


def require_free(layout: Layout, need_mb: int) -> Command:
    """Fails (exit 4, a message naming the path) when the layout or Docker's root has < need_mb MB free."""
    if not isinstance(need_mb, int) or need_mb < 0:
        raise FleetError(f"invalid free-space requirement {need_mb!r}", hint="megabytes, >= 0")
    check = (
        f"{disk_free(layout).script} | while read -r mb p; do "
        f'if [ "$mb" -lt {need_mb} ]; then '
        f'echo "disk full: $p has $mb MB free, need {need_mb} MB" >&2; exit 4; fi; '
        "done"
    )
    return Command(check, f"check {need_mb} MB free")


DISK_SHORT = 4


def ready_state(layout: Layout, need_mb: int) -> Command:
    """A preflight in one round trip: Docker and Compose usable (exit 10-12, health.DOCKER_FAILED),
    then `host_state`, then, when the layout exists, `require_free` (exit DISK_SHORT). Read-only."""
    script = "\n".join(
        (
            DOCKER_CHECKS,
            f"( {host_state(layout).script}\n)",  # a subshell: it ends early when the layout is missing
            f"if [ -d {q(layout.root)} ]; then {require_free(layout, need_mb).script} || exit {DISK_SHORT}; "
            "fi",
        )
    )
    return Command(script, "check Docker, Compose, the layout and free disk")


# --------------------------------------------------------------------------- prune


@dataclass(frozen=True)
class ReleaseDir:
    id: str
    mtime: int  # seconds since the epoch: staging time, the pruning order
    version: str | None = None


def list_releases(layout: Layout) -> Command:
    """`<mtime> <id> <version>` per staged release (leftover .tmp dirs are not listed)."""
    script = (
        f"cd {q(layout.releases)} 2>/dev/null || exit 0; "
        "for d in */; do d=${d%/}; case $d in *.tmp|'*') continue;; esac; "
        f'[ -f "$d/{RELEASE_FILE}" ] || continue; '
        f'v=$(sed -n \'s/^ *"version": *"\\([^"]*\\)".*/\\1/p\' "$d/{RELEASE_FILE}" | head -n1); '
        'printf "%s %s %s\\n" "$(stat -c %Y "$d")" "$d" "$v"; done'
    )
    return Command(script, "list releases")


def parse_releases(stdout: str) -> list[ReleaseDir]:
    """Newest first."""
    out = []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and re.fullmatch(r"[0-9a-f]{12,64}", parts[1]):
            out.append(ReleaseDir(parts[1], int(parts[0]), parts[2] if len(parts) > 2 else None))
    return sorted(out, key=lambda r: (r.mtime, r.id), reverse=True)


def prune_plan(
    releases: Sequence[ReleaseDir], keep: int, current: str | None, previous: str | None
) -> list[str]:
    """Release ids to delete: all but the newest `keep`, never `current` or `previous`."""
    if not isinstance(keep, int) or keep < 2:
        raise FleetError(f"invalid keep {keep!r}", hint="keep at least 2 releases (current and previous)")
    protected = {r for r in (current, previous) if r}
    ordered = sorted(releases, key=lambda r: (r.mtime, r.id), reverse=True)
    kept = {r.id for r in ordered[:keep]} | protected
    return [r.id for r in ordered if r.id not in kept]


def release_images(layout: Layout, ids: Iterable[str]) -> Command:
    """`<id> <image>` for every image a release uses (compose interpolates its .env; no daemon needed)."""
    lines = []
    for rid in ids:
        argv = compose_argv(layout, rid, "config", "--images")
        lines.append(f"{sh(*argv)} 2>/dev/null | sed 's/^/{release_id(rid)} /' || true")
    return Command("\n".join(lines) or "true", "list release images")


def parse_release_images(stdout: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for line in stdout.splitlines():
        rid, _, image = line.strip().partition(" ")
        if image and re.fullmatch(r"[0-9a-f]{12,64}", rid):
            found.setdefault(rid, set()).add(image.strip())
    return found


def unused_images(images: Mapping[str, set[str]], pruned: Iterable[str]) -> list[str]:
    """Images used only by pruned releases (running containers still protect theirs: `docker rmi` refuses)."""
    pruned_set = set(pruned)
    keep = set().union(*(imgs for rid, imgs in images.items() if rid not in pruned_set)) if images else set()
    drop = set().union(*(imgs for rid, imgs in images.items() if rid in pruned_set)) if images else set()
    return sorted(drop - keep)


_IMAGE_REF_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")


def prune(
    layout: Layout, ids: Sequence[str], images: Sequence[str] = (), *, protect: Sequence[str] = ()
) -> Command:
    """Delete release dirs (re-checking on the host that none is current or previous), leftovers of
    interrupted stages, and unused images; an image still used by a container is left alone (`docker
    rmi` refuses, we carry on)."""
    lines = [
        f"cd {q(layout.root)}",
        *sweep_lines(layout),
        "cur=$(readlink current 2>/dev/null || true); prev=$(readlink previous 2>/dev/null || true)",
    ]
    for rid in ids:
        if rid in protect:
            raise FleetError(f"refusing to prune protected release {rid}")
        rel = f"releases/{release_id(rid)}"
        lines.append(
            f'if [ "$cur" = {q(rel)} ] || [ "$prev" = {q(rel)} ]; then echo "kept {rid}: in use" >&2; '
            f"else rm -rf {q(rel)} {q(rel + '.tmp')}; fi"
        )
    # config dirs only the pruned releases listed: under the compose lock, in a subshell (the lock is
    # let go before the images are removed)
    lines.append("(")
    lines += [*compose_lock(layout), *sweep_config_lines(layout)]
    lines.append(")")
    for image in images:
        if not _IMAGE_REF_RE.fullmatch(image):
            raise FleetError(f"invalid image reference {image!r}")
        lines.append(f"docker image rm {q(image)} >/dev/null 2>&1 || true")
    return Command(_script(*lines), f"prune {len(ids)} releases")


def files_from_tar(data: bytes, where: str | None = None) -> dict[str, bytes]:
    """Regular files of a release tar (e.g. a host's current release), refusing unsafe names."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if not member.isfile() or not name:
                    continue
                if name.startswith("/") or ".." in PurePosixPath(name).parts:
                    raise FleetError(f"unsafe path {member.name!r} in release archive", where=where)
                extracted = tar.extractfile(member)
                out[name] = extracted.read() if extracted else b""
    except tarfile.TarError as exc:
        raise FleetError(f"not a release archive: {exc}", where=where) from None
    return out
