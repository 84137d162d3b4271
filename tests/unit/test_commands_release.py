"""Host-layout and compose command builders: exact text, hostile values, and the layout scripts run for
real by /bin/sh against a temporary directory (tar, sha256sum, ln, mv: the same tools a host uses)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from fleet.commands import release as r
from fleet.commands.base import Command
from fleet.errors import FleetError
from fleet.release import bundle

RID = "0123456789abcdef"
L = r.Layout()
META = bundle.ReleaseMeta(operator="alice", source_commit="c0ffee", created="2026-11-26T07:00:00Z")
SECRETS = {
    "SECRET_KEY": "sk-'quoted' $(id)",
    "DB_PASSWORD": "db-pw",
    "REDIS_PASSWORD": "redis-pw",
    "PGVECTOR_PASSWORD": "pgv-pw",
    "SANDBOX_API_KEY": "sandbox-key",
    "PLUGIN_DAEMON_KEY": "plugin-key",
    "PLUGIN_DIFY_INNER_API_KEY": "inner-key",
}
PREFIX = (
    "docker compose -p dify --project-directory /opt/fleet/dify/releases/0123456789abcdef "
    "-f /opt/fleet/dify/releases/0123456789abcdef/docker-compose.yaml "
    "--env-file /opt/fleet/dify/releases/0123456789abcdef/.env"
)


def make_bundle(
    root: str, version: str = "1.0.0", beat: bool = False, source: bundle.Source | None = None
) -> bundle.Bundle:
    variables = {
        "DIFY_VERSION": version,
        "DB_HOST": "10.0.0.3",
        "REDIS_HOST": "10.0.0.4",
        "PGVECTOR_HOST": "10.0.0.5",
        "GOOGLE_STORAGE_BUCKET_NAME": "files",
        **bundle.host_variables(root, ["beat"] if beat else []),
    }
    return bundle.render(source or bundle.load_source(), variables, SECRETS, META)


def run(cmd: Command, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert not cmd.sudo, "local runs are unprivileged"
    return subprocess.run(
        ["sh", "-c", cmd.shell()], input=stdin, capture_output=True, timeout=60, check=False
    )


def ok(cmd: Command, stdin: bytes | None = None) -> str:
    proc = run(cmd, stdin)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


# --------------------------------------------------------------------------- exact text


def test_layout_paths() -> None:
    assert (L.releases, L.current, L.previous, L.volumes, L.state, L.drain_flag, L.history) == (
        "/opt/fleet/dify/releases",
        "/opt/fleet/dify/current",
        "/opt/fleet/dify/previous",
        "/opt/fleet/dify/volumes",
        "/opt/fleet/dify/state",
        "/opt/fleet/dify/state/drain",
        "/opt/fleet/dify/history.jsonl",
    )
    assert L.release(RID) == "/opt/fleet/dify/releases/0123456789abcdef"


def test_compose_commands_exact() -> None:
    assert r.compose_argv(L, RID, "ps")[:4] == ["docker", "compose", "-p", "dify"]
    assert r.compose_pull(L, RID).script == f"{PREFIX} pull --quiet"
    assert r.compose_check(L, RID).script == f"{PREFIX} config --quiet"
    rel = "/opt/fleet/dify/releases/0123456789abcdef"
    lock_and_cleanup = (
        "mkdir -p /opt/fleet/dify/state\n"
        "exec 9>>/opt/fleet/dify/state/compose.lock\n"
        "flock -w 300 9 || { echo 'another compose operation on this host holds "
        "/opt/fleet/dify/state/compose.lock' >&2; exit 5; }\n"
        # the release's content-addressed config dirs, copied once under the lock
        f"if [ -f {rel}/config-dirs ]; then\n"
        "  [ -d /opt/fleet/dify/config ] || mkdir -m 0750 /opt/fleet/dify/config\n"
        "  while read -r src dst; do\n"
        '    for part in "$src" "$dst"; do case "$part" in ""|.|..|*/*) '
        "echo 'bad line in config-dirs of release 0123456789abcdef' >&2; exit 7;; esac; done\n"
        '    [ -d /opt/fleet/dify/config/"$dst" ] && continue\n'
        '    rm -rf /opt/fleet/dify/config/"$dst.tmp"\n'
        f'    cp -a {rel}/"$src" /opt/fleet/dify/config/"$dst.tmp"\n'
        '    mv -T /opt/fleet/dify/config/"$dst.tmp" /opt/fleet/dify/config/"$dst"\n'
        f"  done < {rel}/config-dirs\n"
        "fi\n"
        "ids=$(docker ps -a --filter label=com.docker.compose.project=dify --format '{{.ID}} {{.Names}}' "
        "| awk '$2 ~ /^" + "[0-9a-f]" * 12 + "_/ {print $1}'); "
        'if [ -n "$ids" ]; then docker rm -f $ids >/dev/null; fi\n'
    )
    assert r.compose_up(L, RID).script == f"set -eu\n{lock_and_cleanup}{PREFIX} up -d --remove-orphans"
    assert r.compose_up(L, RID, disabled=["worker_beat"], wait_timeout=60).script == (
        "set -eu\n"
        f"{lock_and_cleanup}"
        "ids=$(docker ps -aq --filter label=com.docker.compose.project=dify "
        "--filter label=com.docker.compose.service=worker_beat); "
        'if [ -n "$ids" ]; then docker rm -f $ids >/dev/null; fi\n'
        f"{PREFIX} up -d --remove-orphans --wait --wait-timeout 60"
    )
    assert r.compose_ps(L).script == "docker compose -p dify ps --all --format json"
    assert r.compose_down(L).script == "docker compose -p dify down --remove-orphans"


def test_layout_commands_exact() -> None:
    assert r.drain(L).script == "set -eu\nmkdir -p /opt/fleet/dify/state\ntouch /opt/fleet/dify/state/drain"
    assert r.undrain(L).script == "rm -f /opt/fleet/dify/state/drain"
    assert r.release_present(L, RID).script == (
        "if [ -f /opt/fleet/dify/releases/0123456789abcdef/release.json ]; "
        "then echo present; else echo absent; fi"
    )
    assert r.switch(L, RID).script == (
        "set -eu\n"
        "cd /opt/fleet/dify\n"
        "[ -f releases/0123456789abcdef/release.json ] || "
        "{ echo 'release 0123456789abcdef is not staged' >&2; exit 3; }\n"
        "old=$(readlink current 2>/dev/null || true)\n"
        'if [ -n "$old" ] && [ "$old" != releases/0123456789abcdef ]; then\n'
        '  ln -sfn "$old" .previous.new && mv -T .previous.new previous\n'
        "fi\n"
        "ln -sfn releases/0123456789abcdef .current.new\n"
        "mv -T .current.new current"
    )
    assert r.history_read(L, 5).script == "tail -n 5 /opt/fleet/dify/history.jsonl 2>/dev/null || true"
    assert r.history_read(L).script == "cat /opt/fleet/dify/history.jsonl 2>/dev/null || true"


def test_stage_exact_with_owner_runs_under_sudo() -> None:
    cmd = r.stage(L, RID, {".env": "a" * 64, "docker-compose.yaml": "sha256:" + "b" * 64}, owner="deploy")
    tmp = "/opt/fleet/dify/releases/0123456789abcdef.tmp"
    assert cmd.sudo
    rels = "/opt/fleet/dify/releases"
    assert cmd.script == (
        "set -eu\n"
        "umask 027\n"
        f"mkdir -p {rels}\n"
        f"chmod 0750 {rels} || "
        "{ echo 'cannot make releases/ private (chmod 0750): does the deploy user own it?' >&2; exit 6; }\n"
        f"cleanup() {{ rm -rf {tmp}; }}\n"
        "trap cleanup EXIT\n"
        "trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM\n"
        f"find {rels} -mindepth 1 -maxdepth 1 \\( -name '.upload-*' -o -name '*.tmp' \\) "
        f"! -name .upload-{RID} -mmin +10 -exec rm -rf {{}} + 2>/dev/null || true\n"
        f"rm -rf {tmp}\n"
        f"mkdir -m 0700 {tmp}\n"
        f"tar -x --no-same-owner -f - -C {tmp}\n"
        f"(cd {tmp} && printf '%s\\n' '{'a' * 64}  .env' '{'b' * 64}  docker-compose.yaml' "
        "| sha256sum -c --quiet --strict -)\n"
        f"chmod 0600 {tmp}/.env\n"
        f"chmod 0750 {tmp}\n"
        f"chown -R deploy: {tmp}\n"
        f"if [ ! -e {rels}/{RID} ]; then mv -T {tmp} {rels}/{RID}; fi"
    )
    assert cmd.shell().startswith("sudo -n sh -c 'set -eu\n")


def test_history_line_is_one_quoted_json_line() -> None:
    entry = {"action": "deploy", "detail": "x'; rm -rf / #\n$(id)`id`", "n": 1}
    cmd = r.history_append(L, entry)
    line = r.history_line(entry)
    assert "\n" not in line and json.loads(line) == entry
    assert (
        cmd.script
        == "printf '%s\\n' " + "'" + line.replace("'", "'\"'\"'") + "'" + " >> /opt/fleet/dify/history.jsonl"
    )


def test_history_entry_fields() -> None:
    from datetime import UTC, datetime

    entry = r.history_entry(
        "deploy",
        "ok",
        operator="alice",
        release=RID,
        version="1.0.0",
        rollout="r-1",
        time=datetime(2026, 11, 26, 7, 0, tzinfo=UTC),
    )
    assert entry == {
        "time": "2026-11-26T07:00:00Z",
        "operator": "alice",
        "action": "deploy",
        "result": "ok",
        "release": RID,
        "version": "1.0.0",
        "rollout": "r-1",
    }


# --------------------------------------------------------------------------- hostile values


@pytest.mark.parametrize(
    "build",
    [
        lambda: r.Layout(root="relative/dir"),
        lambda: r.Layout(root="/opt/../etc"),
        lambda: r.Layout(root="/"),
        lambda: r.Layout(root="/opt/x\nrm -rf /"),
        lambda: r.Layout(project="Dify"),
        lambda: r.Layout(project="dify; rm -rf /"),
        lambda: r.Layout(project="a b"),
        lambda: r.switch(L, "abc; rm -rf /"),
        lambda: r.switch(L, "$(reboot)"),
        lambda: r.release_present(L, "../../etc"),
        lambda: r.compose_up(L, RID, disabled=["worker_beat; rm -rf /"]),
        lambda: r.compose_up(L, RID, wait_timeout=0),
        lambda: r.stage(L, RID, {".env": "a" * 64}, owner="root; id"),
        lambda: r.stage(L, RID, {".env": "nothex"}),
        lambda: r.stage(L, RID, {".env": "a" * 64, "x\ny": "b" * 64}),
        lambda: r.stage(L, RID, {".env": "a" * 64, "../x": "b" * 64}),
        lambda: r.stage(L, RID, {"docker-compose.yaml": "a" * 64}),
        lambda: r.stage(L, RID, {".env": "a" * 64}, archive="tmp/rel.tar"),
        lambda: r.history_entry("deploy; rm", "ok", operator="x"),
        lambda: r.history_append(L, {"detail": "pw=hunter2"}, secrets=["hunter2"]),
        lambda: r.history_append(L, {"detail": "x" * 4000}),
        lambda: r.history_read(L, 0),
        lambda: r.prune(L, [RID], ["img; rm -rf /"]),
        lambda: r.prune(L, [RID], protect=[RID]),
        lambda: r.prune_plan([], 1, None, None),
        lambda: r.require_free(L, -1),
        lambda: r.release_images(L, ["nothex"]),
    ],
)
def test_hostile_values_are_refused(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FleetError):
        build()


def test_hostile_but_valid_paths_are_quoted() -> None:
    layout = r.Layout(root="/srv/$(reboot) `id` 'x'")
    for cmd in (
        r.switch(layout, RID),
        r.drain(layout),
        r.stage(layout, RID, {".env": "a" * 64}),
        r.host_state(layout),
        r.compose_pull(layout, RID),
        r.compose_up(layout, RID),
        r.history_append(layout, {"a": 1}),
        r.prune(layout, [RID], ["nginx:1"]),
    ):
        tokens = [t for line in cmd.script.splitlines() for t in shlex.split(line)]
        # the compose lock's redirection (`9>>PATH`) and its message ("... holds PATH") carry it too
        busy = "another compose operation on this host holds "
        tokens = [t.removeprefix("9>>").removeprefix(busy) for t in tokens]
        hostile = [t for t in tokens if "reboot" in t]
        assert hostile, cmd.script
        # every word that carries the path is the whole path (one quoted word), never split or expanded
        assert all(t.startswith(layout.root) for t in hostile), hostile


def test_history_append_masks_secrets_in_display() -> None:
    cmd = r.history_append(L, {"a": 1}, secrets=["never-shown"])
    assert cmd.secrets == ("never-shown",)


# --------------------------------------------------------------------------- run for real


@pytest.fixture
def layout(tmp_path: Path) -> r.Layout:
    # a root that needs quoting everywhere; nothing named "pwned" may ever appear
    return r.Layout(root=str(tmp_path / "app $(touch pwned) 'q'"), project="dify")


def test_stage_switch_and_state_for_real(layout: r.Layout, tmp_path: Path) -> None:
    ok(r.prepare_layout(layout))
    assert r.parse_host_state(ok(r.host_state(layout))) == r.HostState(True, None, None, False, None, None)
    one = make_bundle(layout.root, "1.0.0")
    assert r.parse_present(ok(r.release_present(layout, one.release_id))) is False
    ok(r.stage(layout, one.release_id, one.checksums()), one.tar_bytes())
    assert r.parse_present(ok(r.release_present(layout, one.release_id))) is True

    staged = Path(layout.release(one.release_id))
    assert {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()} == set(one.files)
    for rel, f in one.files.items():
        assert (staged / rel).read_bytes() == f.data
    assert stat.S_IMODE((staged / ".env").stat().st_mode) == 0o600
    assert (staged / ".env").stat().st_uid == os.getuid()

    ok(r.switch(layout, one.release_id))
    state = r.parse_host_state(ok(r.host_state(layout)))
    assert (state.current, state.previous, state.version) == (one.release_id, None, "1.0.0")
    assert os.readlink(layout.current) == f"releases/{one.release_id}"

    two = make_bundle(layout.root, "1.1.0")
    ok(r.stage(layout, two.release_id, two.checksums()), two.tar_bytes())
    ok(r.switch(layout, two.release_id))
    ok(r.switch(layout, two.release_id))  # idempotent: previous stays the real previous
    state = r.parse_host_state(ok(r.host_state(layout)))
    assert (state.current, state.previous, state.version) == (two.release_id, one.release_id, "1.1.0")
    assert state.record is not None and state.record["operator"] == "alice"

    # a release that is not staged is refused and `current` does not move
    proc = run(r.switch(layout, "feedfacefeedface"))
    assert proc.returncode == 3 and b"not staged" in proc.stderr
    assert os.readlink(layout.current) == f"releases/{two.release_id}"
    assert not list(tmp_path.rglob("pwned"))


def test_a_corrupted_upload_never_becomes_a_release(layout: r.Layout) -> None:
    b = make_bundle(layout.root)
    sums = dict(b.checksums())
    sums[".env"] = "0" * 64
    proc = run(r.stage(layout, b.release_id, sums), b.tar_bytes())
    assert proc.returncode != 0 and b".env: FAILED" in proc.stdout
    assert not Path(layout.release(b.release_id)).exists()
    truncated = b.tar_bytes()[:1000]
    proc = run(r.stage(layout, b.release_id, b.checksums()), truncated)
    assert proc.returncode != 0
    assert not Path(layout.release(b.release_id)).exists()
    # the leftover .tmp is cleaned by the next stage, which succeeds
    ok(r.stage(layout, b.release_id, b.checksums()), b.tar_bytes())
    assert r.parse_present(ok(r.release_present(layout, b.release_id)))
    assert not Path(layout.release(b.release_id) + ".tmp").exists()


def test_stage_is_idempotent_and_accepts_an_uploaded_archive(layout: r.Layout, tmp_path: Path) -> None:
    b = make_bundle(layout.root)
    archive = tmp_path / "upload.tar"
    archive.write_bytes(b.tar_bytes())
    ok(r.stage(layout, b.release_id, b.checksums(), archive=str(archive)))
    assert not archive.exists()
    env = Path(layout.release(b.release_id)) / ".env"
    before = env.stat().st_mtime_ns
    ok(r.stage(layout, b.release_id, b.checksums()), b.tar_bytes())
    assert env.stat().st_mtime_ns == before  # the existing release was left alone


def test_archive_round_trip_feeds_the_diff(layout: r.Layout) -> None:
    assert r.decode_archive(ok(r.archive_release(layout))) == {}
    b = make_bundle(layout.root)
    ok(r.stage(layout, b.release_id, b.checksums()), b.tar_bytes())
    ok(r.switch(layout, b.release_id))
    files = r.decode_archive(ok(r.archive_release(layout)))
    assert files == b.file_bytes()
    assert r.decode_archive(ok(r.archive_release(layout, b.release_id))) == b.file_bytes()
    assert bundle.diff(files, b).empty
    newer = make_bundle(layout.root, "1.1.0")
    text = bundle.diff(files, newer).render()
    assert "DIFY_VERSION : '1.0.0' -> '1.1.0'" in text
    for value in b.secret_values():
        assert value not in text
    with pytest.raises(FleetError, match="not base64"):
        r.decode_archive("@@@ not base64 @@@")


def test_history_append_and_read_for_real(layout: r.Layout) -> None:
    ok(r.prepare_layout(layout))
    entries = [
        r.history_entry("deploy", "ok", operator="alice", release=RID, version="1.0.0"),
        {"action": "note", "detail": "quote ' dq \" dollar $(id) newline \n backtick `id`"},
        r.history_entry("rollback", "failed", operator="bob", detail="health timeout"),
    ]
    for entry in entries:
        ok(r.history_append(layout, entry))
    lines = Path(layout.history).read_text().splitlines()
    assert [json.loads(line) for line in lines] == entries
    assert r.parse_history(ok(r.history_read(layout))) == entries[::-1]
    assert r.parse_history(ok(r.history_read(layout, 1))) == [entries[-1]]
    last = r.parse_host_state(ok(r.host_state(layout))).last_history
    assert last == entries[-1]
    with open(layout.history, "a") as handle:
        handle.write("{broken\n")
    assert r.parse_history(ok(r.history_read(layout, 1))) == [{"unparsed": "{broken"}]


def test_drain_flag_for_real(layout: r.Layout) -> None:
    ok(r.prepare_layout(layout))
    ok(r.drain(layout))
    assert Path(layout.drain_flag).exists()
    assert r.parse_host_state(ok(r.host_state(layout))).drained
    ok(r.undrain(layout))
    ok(r.undrain(layout))  # idempotent
    assert not r.parse_host_state(ok(r.host_state(layout))).drained


def test_list_and_prune_keep_current_and_previous(layout: r.Layout) -> None:
    bundles = [make_bundle(layout.root, v) for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0")]
    for age, b in enumerate(bundles):
        ok(r.stage(layout, b.release_id, b.checksums()), b.tar_bytes())
        stamp = 1_800_000_000 + age * 60  # staging order, oldest first
        os.utime(layout.release(b.release_id), (stamp, stamp))
    ok(r.switch(layout, bundles[0].release_id))  # an old release is current (a rollback happened)
    ok(r.switch(layout, bundles[1].release_id))
    ok(r.switch(layout, bundles[0].release_id))
    state = r.parse_host_state(ok(r.host_state(layout)))
    listed = r.parse_releases(ok(r.list_releases(layout)))
    assert [x.id for x in listed] == [b.release_id for b in reversed(bundles)]
    assert [x.version for x in listed] == ["1.4.0", "1.3.0", "1.2.0", "1.1.0", "1.0.0"]

    doomed = r.prune_plan(listed, 2, state.current, state.previous)
    assert doomed == [bundles[2].release_id]  # 1.4.0, 1.3.0 newest; 1.1.0 previous; 1.0.0 current
    ok(r.prune(layout, doomed))
    remaining = {x.id for x in r.parse_releases(ok(r.list_releases(layout)))}
    assert remaining == {b.release_id for b in bundles} - set(doomed)

    # the host re-checks: even when asked, it keeps what current/previous point at
    proc = run(r.prune(layout, [bundles[0].release_id]))
    assert proc.returncode == 0 and b"in use" in proc.stderr
    assert Path(layout.release(bundles[0].release_id)).is_dir()


def _changed_nginx_source(tmp_path: Path) -> bundle.Source:
    copy = tmp_path / "compose-copy"
    shutil.copytree(bundle.COMPOSE_DIR, copy)
    conf = copy / "nginx/conf.d/default.conf"
    conf.write_text(conf.read_text().replace("proxy_read_timeout 3600s;", "proxy_read_timeout 600s;"))
    return bundle.load_source(copy)


def test_config_dirs_are_content_addressed_shared_and_pruned_for_real(
    layout: r.Layout, tmp_path: Path
) -> None:
    ok(r.prepare_layout(layout))
    one, two = make_bundle(layout.root, "1.0.0"), make_bundle(layout.root, "1.1.0")
    three = make_bundle(layout.root, "1.1.0", source=_changed_nginx_source(tmp_path))
    for b in (one, two, three):
        ok(r.stage(layout, b.release_id, b.checksums()), b.tar_bytes())
    lines = {b.release_id: b.files["config-dirs"].data.decode().split("\n") for b in (one, two, three)}
    assert lines[one.release_id] == lines[two.release_id]  # a new version, the same config: same paths
    names = dict(line.split() for line in lines[one.release_id] if line)
    changed = dict(line.split() for line in lines[three.release_id] if line)
    assert changed["nginx"] != names["nginx"] and changed["ssrf_proxy"] == names["ssrf_proxy"]

    def ensure(b: bundle.Bundle) -> None:
        ok(Command(r._script(*r.ensure_config_dirs(layout, b.release_id)), "ensure"))

    config = Path(layout.config)
    ensure(one)
    assert sorted(p.name for p in config.iterdir()) == sorted(names.values())
    for src, dst in names.items():
        files = [p for p in (config / dst).rglob("*") if p.is_file()]
        assert {p.relative_to(config / dst).as_posix(): p.read_bytes() for p in files} == {
            p.removeprefix(src + "/"): f.data for p, f in one.files.items() if p.startswith(src + "/")
        }
    assert stat.S_IMODE(config.stat().st_mode) == 0o750
    before = {p.name: p.stat().st_mtime_ns for p in config.iterdir()}
    ensure(two)  # the same content: nothing copied again
    assert {p.name: p.stat().st_mtime_ns for p in config.iterdir()} == before
    ensure(three)
    assert sorted(p.name for p in config.iterdir()) == sorted({*names.values(), changed["nginx"]})

    # a manifest line naming a path outside its dir is refused before anything is copied
    bad = Path(layout.release(one.release_id)) / "config-dirs"
    bad.write_text("../../.. stolen\n")
    proc = run(Command(r._script(*r.ensure_config_dirs(layout, one.release_id)), "ensure"))
    assert proc.returncode == 7 and b"bad line in config-dirs" in proc.stderr
    assert not (config / "stolen").exists()
    bad.write_text(one.files["config-dirs"].data.decode())

    # prune: a dir no remaining release lists goes (and a copy an interrupted `up` left), the rest stay
    (config / "nginx-0000000000000000.tmp").mkdir()
    ok(r.switch(layout, one.release_id))
    ok(r.switch(layout, two.release_id))
    ok(r.prune(layout, [three.release_id]))
    assert sorted(p.name for p in config.iterdir()) == sorted(names.values())
    assert not list(tmp_path.rglob("pwned"))


def test_prune_plan_and_unused_images() -> None:
    rel = [r.ReleaseDir(f"{i:016x}", 100 + i) for i in range(6)]
    assert r.prune_plan(rel, 3, None, None) == [f"{i:016x}" for i in (2, 1, 0)]
    assert r.prune_plan(rel, 3, f"{0:016x}", f"{1:016x}") == [f"{2:016x}"]
    images = {"a" * 16: {"api:1.0", "nginx:1"}, "b" * 16: {"api:1.1", "nginx:1"}}
    assert r.unused_images(images, ["a" * 16]) == ["api:1.0"]
    assert r.unused_images({}, ["a" * 16]) == []


def test_disk_checks_for_real(layout: r.Layout) -> None:
    ok(r.prepare_layout(layout))
    free = r.parse_disk_free(ok(r.disk_free(layout)))
    assert free[layout.root] > 0 and len(free) == 2
    ok(r.require_free(layout, 0))
    proc = run(r.require_free(layout, 10**9))
    assert proc.returncode == 4
    assert f"disk full: {layout.root} has".encode() in proc.stderr and b"need 1000000000 MB" in proc.stderr


def test_disk_checks_when_the_docker_daemon_is_down(
    layout: r.Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stopped daemon makes `docker info --format` print an empty line and fail: the probe must
    # still report Docker's default data root, not a path with a newline in it
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    ok(r.prepare_layout(layout))
    free = r.parse_disk_free(ok(r.disk_free(layout)))
    assert set(free) == {layout.root, "/var/lib/docker"}, free
    assert all(mb > 0 for mb in free.values())


def test_host_state_of_a_host_without_the_layout(tmp_path: Path) -> None:
    missing = r.Layout(root=str(tmp_path / "nothing-here"))
    assert r.parse_host_state(ok(r.host_state(missing))) == r.HostState(False, None, None, False, None, None)
    with pytest.raises(FleetError, match="truncated"):
        r.parse_host_state("current=\nprevious=\ndrained=no\n@@release\n")


# --------------------------------------------------------------------------- compose ps parsing

PS_LINE = {
    "Command": '"/usr/local/bin/stan…"',
    "ExitCode": 0,
    "Health": "healthy",
    "Image": "fleet-registry:5000/dify-api:1.0.0",
    "Labels": f"com.docker.compose.config-hash={'5' * 64},com.docker.compose.service=api,"
    "com.docker.compose.depends_on=web:service_started:false,api:service_started:false,"
    f"com.docker.compose.project.working_dir=/opt/fleet/dify/releases/{RID},com.docker.compose.version=2.26.1",
    "Name": "dify-api-1",
    "Project": "dify",
    "Service": "api",
    "State": "running",
    "Status": "Up 8 seconds (healthy)",
}


def test_parse_ps_json_lines_and_array() -> None:
    worker = dict(PS_LINE, Service="worker", Name="dify-worker-1", Health="")
    old = dict(
        PS_LINE,
        Service="nginx",
        Name="dify-nginx-1",
        State="exited",
        ExitCode=137,
        Labels="com.docker.compose.project.working_dir=/opt/fleet/dify/releases/feedfacefeedface",
    )
    text = "\n".join(json.dumps(x) for x in (PS_LINE, worker, old)) + "\n"
    states = r.parse_ps(text, L)
    assert [(s.service, s.state, s.health, s.release) for s in states] == [
        ("api", "running", "healthy", RID),
        ("nginx", "exited", "healthy", "feedfacefeedface"),
        ("worker", "running", "", RID),
    ]
    assert states[0].ok and not states[1].ok and states[2].ok and states[1].exit_code == 137
    assert r.parse_ps(json.dumps([PS_LINE]), L)[0].release == RID
    assert r.parse_ps("", L) == []
    with pytest.raises(FleetError, match="did not print JSON"):
        r.parse_ps("NAME IMAGE", L, where="app-1")


def test_drift_compares_compose_config_hashes() -> None:
    base = r.parse_ps(json.dumps(PS_LINE), L)
    assert base[0].config_hash == "5" * 64
    assert r.drift(base, {"api": "5" * 64}) == []
    assert r.drift(base, {"api": "6" * 64}) == [
        f"api: config differs from the current release (made by release {RID})"
    ]
    assert r.drift(base, {"api": "5" * 64, "web": "7" * 64}) == ["web: no container"]
    beat = r.parse_ps(json.dumps(dict(PS_LINE, Service="worker_beat", Name="dify-worker_beat-1")), L)
    assert r.drift(base + beat, {"api": "5" * 64}) == [
        "worker_beat: not in the current release (dify-worker_beat-1 running)"
    ]
    stopped = r.parse_ps(json.dumps(dict(PS_LINE, State="exited")), L)
    assert r.drift(stopped, {"api": "5" * 64}) == ["api: exited"]


def test_compose_hashes_exact_and_parsed() -> None:
    assert r.compose_hashes(L, RID).script == f"{PREFIX} config --hash '*'"
    out = f"api {'a' * 64}\nnginx {'b' * 64}\nnoise\n"
    assert r.parse_hashes(out) == {"api": "a" * 64, "nginx": "b" * 64}


def test_upload_slot_is_private_and_stage_removes_it_on_every_exit(layout: r.Layout) -> None:
    b = make_bundle(layout.root)
    releases = Path(layout.releases)
    releases.mkdir(parents=True)
    releases.chmod(0o755)  # as older bootstraps left it
    slot = Path(r.upload_dir(layout, b.release_id))
    upload = Path(r.upload_path(layout, b.release_id))
    assert upload.parent == slot and slot.parent == releases

    ok(r.upload_slot(layout, b.release_id))
    assert stat.S_IMODE(releases.stat().st_mode) == 0o750
    assert stat.S_IMODE(slot.stat().st_mode) == 0o700
    assert stat.S_IMODE(upload.stat().st_mode) == 0o600 and upload.stat().st_size == 0
    upload.write_bytes(b.tar_bytes())  # what the sftp upload does: the existing file keeps its mode
    assert stat.S_IMODE(upload.stat().st_mode) == 0o600

    bad = {**b.checksums(), ".env": "0" * 64}
    proc = run(r.stage(layout, b.release_id, bad, archive=str(upload)))
    assert proc.returncode != 0
    assert sorted(p.name for p in releases.iterdir()) == []  # no release, no .tmp, no upload

    ok(r.upload_slot(layout, b.release_id))
    upload.write_bytes(b.tar_bytes())
    ok(r.stage(layout, b.release_id, b.checksums(), archive=str(upload)))
    assert sorted(p.name for p in releases.iterdir()) == [b.release_id]


def test_present_or_slot_prepares_the_slot_only_for_an_absent_release(layout: r.Layout) -> None:
    b = make_bundle(layout.root)
    ok(r.prepare_layout(layout))
    upload = Path(r.upload_path(layout, b.release_id))
    assert r.parse_present(ok(r.present_or_slot(layout, b.release_id))) is False
    assert stat.S_IMODE(upload.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(upload.stat().st_mode) == 0o600 and upload.stat().st_size == 0
    upload.write_bytes(b.tar_bytes())
    ok(r.stage(layout, b.release_id, b.checksums(), archive=str(upload)))
    # staged: nothing more is prepared (no new slot next to the release)
    assert r.parse_present(ok(r.present_or_slot(layout, b.release_id))) is True
    assert sorted(p.name for p in Path(layout.releases).iterdir()) == [b.release_id]


def test_present_or_slot_fails_when_the_slot_cannot_be_made(layout: r.Layout) -> None:
    b = make_bundle(layout.root)
    ok(r.prepare_layout(layout))
    releases = Path(layout.releases)
    releases.rmdir()
    releases.write_text("not a directory\n")  # no slot can be made in there
    proc = run(r.present_or_slot(layout, b.release_id))
    assert proc.returncode != 0 and proc.stderr and b"absent" not in proc.stdout


def _group_runs(pgid: int, comm: str) -> bool:
    """Whether a process named `comm` runs in process group `pgid` (read from /proc, Linux)."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        if name == comm and int(fields[2]) == pgid:
            return True
    return False


def test_a_killed_stage_removes_its_tmp(layout: r.Layout) -> None:
    """SSH going away signals the remote shell and its children: the traps still clean up."""
    import signal
    import time

    b = make_bundle(layout.root)
    tmp = Path(layout.release(b.release_id) + ".tmp")
    proc = subprocess.Popen(
        ["sh", "-c", r.stage(layout, b.release_id, b.checksums()).shell()],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(b.tar_bytes()[:2048])  # tar is now blocked, mid-archive
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not (tmp.exists() and _group_runs(proc.pid, "tar")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tmp.exists() and _group_runs(proc.pid, "tar")
    # Signal only once tar runs: a signal caught between mkdir and the fork is acted on after tar
    # returns, and this tar would wait on stdin for ever (ssh going away also closes it; kept open here).
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    proc.stdin.close()
    assert not tmp.exists()
    assert not Path(layout.release(b.release_id)).exists()
