"""The agent on this machine: its executor stages and switches a sealed release through the same
hoststeps `fab deploy` uses (real `sh`, a tmp layout, no Docker), the zipapp runs with the standard
library alone, and the template's startup script is valid bash with every value quoted."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.agent import build, flow
from fleet.agent.local import AppSettings, HostSettings, LocalContext, LocalHost
from fleet.commands import agent as agent_cmd
from fleet.commands import release as rc
from fleet.errors import FleetError
from fleet.release import hoststeps as ht
from fleet.release import sealed
from tests.unit.test_commands_release import SECRETS, make_bundle

REFS = {k: f"projects/p/secrets/{k.lower().replace('_', '-')}/versions/1" for k in SECRETS}


@pytest.fixture
def ctx(tmp_path: Path) -> LocalContext:
    # a root that needs quoting everywhere; nothing named "pwned" may ever appear
    root = str(tmp_path / "app $(touch pwned) 'q'")
    c = LocalContext(LocalHost("vm-1", HostSettings(AppSettings(dir=root, project="dify", http_port=1))))
    assert c.run(rc.prepare_layout(ht.layout_of(c.host)).shell()).exited == 0
    return c


def unsealed(root: str) -> flow.Unsealed:
    b = make_bundle(root, "1.0.0")
    s = sealed.seal(
        {p: (f.data, f.mode) for p, f in b.files.items()},
        b.env,
        b.secret_keys,
        REFS,
        release_id=b.release_id,
        version=b.version,
        disabled_services=b.disabled_services,
    )
    files = sealed.unseal(s.manifest, s.archive, SECRETS)
    return flow.Unsealed(b.release_id, b.version, b.disabled_services, files, tuple(SECRETS.values()))


def test_the_executor_runs_host_steps_stage_and_switch(ctx: LocalContext, tmp_path: Path) -> None:
    r = ctx.run("printf '%s' \"$(cat)\"; echo err >&2; exit 3", stdin="in put")
    assert (r.exited, r.stdout, r.stderr) == (3, "in put", "err\n")
    assert ctx.run("sleep 5", timeout=0.2).exited == 124

    release = unsealed(ctx.host.settings.app.dir)
    assert ht.stage(ctx, release) > 0
    assert ht.stage(ctx, release) == 0  # present: nothing sent again
    ht.switch(ctx, release.release_id)
    state = ht.read_state(ctx)
    assert state.current == release.release_id and state.version == "1.0.0"
    env = Path(ht.layout_of(ctx.host).release(release.release_id)) / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert env.read_bytes() == dict(release.files)[".env"][0]
    ht.drain(ctx)
    assert ht.read_state(ctx).drained
    assert not list(tmp_path.rglob("pwned"))


def test_put_creates_a_private_file_and_keeps_an_existing_mode(tmp_path: Path) -> None:
    c = LocalContext(LocalHost("vm-1"))
    new = tmp_path / "new"
    c.put(b"data", str(new))
    assert new.read_bytes() == b"data" and stat.S_IMODE(new.stat().st_mode) == 0o600
    old = tmp_path / "old"
    old.write_bytes(b"xxxxxxxx")
    old.chmod(0o640)
    c.put(b"yy", str(old))
    assert old.read_bytes() == b"yy" and stat.S_IMODE(old.stat().st_mode) == 0o640


def test_metadata_values_are_validated() -> None:
    with pytest.raises(FleetError, match="fleet-app-dir"):
        LocalHost.from_attributes("vm", {"fleet-app-dir": "relative/dir"})
    with pytest.raises(FleetError):
        LocalHost.from_attributes("vm", {"fleet-app-project": "Bad Project"})
    h = LocalHost.from_attributes("vm", {})
    assert (h.settings.app.dir, h.settings.app.project, h.settings.app.http_port) == (
        rc.DEFAULT_ROOT,
        "dify",
        80,
    )


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build.build(tmp_path_factory.mktemp("agent"))


def test_the_zipapp_runs_without_site_packages(pyz: Path, ctx: LocalContext, tmp_path: Path) -> None:
    names = build.modules()
    assert "fleet.agent.flow" in names and "fleet.release.activation" in names
    assert not [
        n for n in names if n.startswith(("fleet.inventory", "fleet.ssh", "fleet.rollout", "fleet.gcp"))
    ]
    assert (
        build.store_name(pyz).startswith("agent/fleet-agent-")
        and build.build(tmp_path).read_bytes() == pyz.read_bytes()
    )

    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    help_ = subprocess.run(
        [sys.executable, "-I", "-S", str(pyz), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert help_.returncode == 0 and "boot" in help_.stdout and "apply" in help_.stdout, help_.stderr

    release = unsealed(ctx.host.settings.app.dir)
    ht.stage(ctx, release)
    ht.switch(ctx, release.release_id)
    argv = [
        sys.executable,
        "-I",
        "-S",
        str(pyz),
        "status",
        "--json",
        "--app-dir",
        ctx.host.settings.app.dir,
        "--http-port",
        "1",
    ]
    st = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert st.returncode == 0, st.stderr
    found = json.loads(st.stdout)
    assert found["release"] == release.release_id and found["version"] == "1.0.0" and found["layout"] is True
    assert found["health"]["code"] == 0  # nothing listens on port 1

    step = subprocess.run(
        [*argv[:5], "--app-dir", ctx.host.settings.app.dir],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    line = json.loads(step.stdout.splitlines()[-1])
    assert {"ts", "step", "msg"} <= set(line) and line["step"] == "status"


def test_startup_script_text_and_syntax(tmp_path: Path) -> None:
    text = agent_cmd.startup_script("gs://fleet-releases/fleets/prod")
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
    assert "bucket=fleet-releases" in text and "prefix=fleets/prod" in text
    assert "current_object=fleets%2Fprod%2Fagent%2Fcurrent" in text
    assert '"${GCE_METADATA_HOST:-metadata.google.internal}"' in text and "Metadata-Flavor: Google" in text
    assert "instance/attributes/fleet-storage-endpoint" in text and "https://storage.googleapis.com" in text
    assert "apt-get install -y -q $need" in text and '--retry "$attempts"' in text
    assert 'python3 "$agent_dir/fleet-agent.pyz" boot' in text
    assert "StrictHostKeyChecking" not in text
    script = tmp_path / "startup.sh"
    script.write_text(text)
    assert (
        subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=30, check=False).returncode
        == 0
    )
    odd = agent_cmd.startup_script("gs://b-1/fleets/x", agent_dir="/opt/it's here")
    assert "agent_dir='/opt/it'\"'\"'s here'" in odd
    script.write_text(odd)
    assert (
        subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=30, check=False).returncode
        == 0
    )
    for bad in ("gs://b/", "s3://b/x", "gs://b/x/../y", "gs://b/x;rm -rf /"):
        with pytest.raises(FleetError):
            agent_cmd.startup_script(bad)


def test_startup_script_fetches_the_current_agent_checks_it_and_boots(tmp_path: Path) -> None:
    import hashlib
    import threading
    import zipapp

    from tests.unit.test_agent_apis import Server

    app = tmp_path / "app"
    app.mkdir()
    (app / "__main__.py").write_text("import sys\nprint('agent ran:', *sys.argv[1:])\n")
    pyz = tmp_path / "a.pyz"
    zipapp.create_archive(app, pyz)
    data = pyz.read_bytes()
    name = f"fleets/prod/agent/fleet-agent-{hashlib.sha256(data).hexdigest()[:16]}.pyz"
    objects = {"fleets%2Fprod%2Fagent%2Fcurrent": name.encode() + b"\n", name.replace("/", "%2F"): data}
    server = Server()

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if path.startswith("/computeMetadata/v1/"):
            assert headers["metadata-flavor"] == "Google"
            key = path.removeprefix("/computeMetadata/v1/")
            if key == "instance/service-accounts/default/token":
                return 200, b'{"access_token": "T", "expires_in": 3600}'
            if key == "instance/attributes/fleet-storage-endpoint":
                return 200, server.url.encode()
            return 404, b""
        prefix = "/download/storage/v1/b/bkt/o/"
        assert (
            headers["authorization"] == "Bearer T" and path.startswith(prefix) and path.endswith("?alt=media")
        )
        obj = objects.get(path.removeprefix(prefix).removesuffix("?alt=media"))
        return (200, obj) if obj is not None else (404, b"")

    server.answer = answer
    threading.Thread(target=server.httpd.serve_forever, daemon=True).start()
    try:
        script = tmp_path / "startup.sh"
        target = tmp_path / "lib dir"
        script.write_text(agent_cmd.startup_script("gs://bkt/fleets/prod", agent_dir=str(target), attempts=1))
        env = {"PATH": os.environ["PATH"], "GCE_METADATA_HOST": server.host}
        r = subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, env=env, timeout=60, check=False
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "agent ran: boot" in r.stdout and (target / "fleet-agent.pyz").read_bytes() == data
        # no download left behind; the heartbeat's pid file (the next boot stops that one, no other)
        assert sorted(p.name for p in target.iterdir()) == ["fleet-agent.pyz", "watch.pid"]
        assert "pkill" not in script.read_text(), "a pattern kill reaches every agent on the host"

        objects[name.replace("/", "%2F")] = data + b"tampered"
        r = subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, env=env, timeout=60, check=False
        )
        assert r.returncode != 0 and "agent download damaged" in r.stdout
        assert (target / "fleet-agent.pyz").read_bytes() == data  # the good copy stays
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def test_as_root_the_steps_run_as_the_deploy_user_and_bootstrap_as_root() -> None:
    if os.geteuid() != 0:
        c = LocalContext(LocalHost("vm-1"), user="nobody")
        assert c.user is None  # not root: it runs as itself, runuser would fail
        return
    c = LocalContext(LocalHost("vm-1"), user="nobody")
    assert c.run("id -un").stdout.strip() == "nobody"
    assert c.run("id -un", as_root=True).stdout.strip() == "root"
    from fleet.commands.base import Command

    assert c.run_privileged(Command("id -un", "who", sudo=True)).stdout.strip() == "root"
    assert LocalContext(LocalHost("vm-1"), user="root").user is None


def test_wait_healthy_polls_every_half_second_until_the_verdict_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deploy's and the agent's health wait: as often as the rollout engine's verify (0.5 s), the
    config hashes read once, the last verdict returned when time is up."""
    now = [0.0]
    slept: list[float] = []
    verdicts = iter([ht.Verdict(False, ["api: starting"]), ht.Verdict(False, ["api: starting"])])
    calls: list[dict[str, str]] = []
    monkeypatch.setattr(ht, "config_hashes", lambda _ctx, rid: {"api": rid})

    def check(_ctx: object, version: str, rid: str, **kw: object) -> ht.Verdict:
        calls.append(kw["hashes"])  # type: ignore[arg-type]
        return next(verdicts, ht.Verdict(True))

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(ht, "check", check)
    verdict = ht.wait_healthy(object(), "1.0.0", "r1", timeout=10, clock=lambda: now[0], sleep=sleep)  # type: ignore[arg-type]
    assert verdict.ok and slept == [0.5, 0.5] and calls == [{"api": "r1"}] * 3
    monkeypatch.setattr(ht, "check", lambda *_a, **_k: ht.Verdict(False, ["web: unhealthy"]))
    now[0], slept[:] = 0.0, []
    verdict = ht.wait_healthy(object(), "1.0.0", "r1", timeout=2, clock=lambda: now[0], sleep=sleep)  # type: ignore[arg-type]
    assert not verdict.ok and verdict.problems == ["web: unhealthy"] and slept == [0.5] * 4
