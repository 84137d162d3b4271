"""The local fleet, really exercised: instances over strict-host-key SSH, Compose v2 inside them,
a stand-in stack pulled from the local registry and served through haproxy, and instance lifecycle
(add, stop/start, restart, recreate, remove) seen by the inventory and the LB.

The lifecycle tests work on an extra instance they add themselves, so the session's instances
(shared with other test modules) are never disturbed. The first tests need no Docker at all: they
check the pure command/config builders.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
import yaml

from fleet.errors import FleetError
from fleet.local import dockercmd, images, inventory_writer, lb, rootfs
from fleet.local.config import LocalConfig
from fleet.local.instances import Instance, LocalFleet

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- pure builders


def test_instance_run_uses_measured_capabilities_not_privileged(tmp_path: Path) -> None:
    spec = dockercmd.InstanceSpec(
        name="fleet-local-7",
        hostname="local-7",
        image="fleet-local/vm:latest",
        network="fleet-local",
        ssh_port=2207,
        http_port=8107,
        docker_volume="fleet-local-7-docker",
        tarball_dir=tmp_path,
        env={"FLEET_SSH_AUTHORIZED_KEYS": "ssh-ed25519 AAAA x"},
    )
    argv = dockercmd.run_instance(spec)
    assert "--privileged" not in argv
    joined = " ".join(argv)
    assert "--cap-add ALL --cap-drop SYS_RESOURCE" in joined
    assert "seccomp=unconfined" in joined and "systempaths=unconfined" in joined
    assert "127.0.0.1:2207:22" in argv and "127.0.0.1:8107:80" in argv
    assert "fleet-local-7-docker:/var/lib/docker" in argv
    assert argv[-1] == "fleet-local/vm:latest"


@pytest.mark.parametrize(
    "bad",
    ["fleet local", "x;rm -rf /", "-rf", "a" * 200, "../etc", "név"],
)
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(FleetError):
        dockercmd.exec_(bad, ["true"])


def test_index_of_accepts_both_name_forms_and_refuses_others() -> None:
    cfg = LocalConfig()
    assert cfg.index_of("local-3") == 3
    assert cfg.index_of("fleet-local-12") == 12
    assert cfg.index_of("5") == 5
    for bad in ("local-0", "prod-1", "local-x", ""):
        with pytest.raises(FleetError):
            cfg.index_of(bad)


def test_mirror_is_read_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    deb822 = (
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
    )
    assert rootfs.mirrors_from(deb822) == ["http://mirror.example/debian"]
    assert rootfs.mirrors_from("deb [arch=amd64] http://ftp.example/debian/ bookworm main\n") == [
        "http://ftp.example/debian"
    ]
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(deb822)
    assert rootfs.configured_mirror(tmp_path) == "http://mirror.example/debian"


def test_image_input_hash_follows_its_inputs(tmp_path: Path) -> None:
    shutil.copytree(REPO / "images" / "standin", tmp_path / "standin")
    spec = next(s for s in images.specs(LocalConfig()) if s.ref.endswith("/dify-api:1.0.0"))
    sibling = next(s for s in images.specs(LocalConfig()) if s.ref.endswith("/dify-api:1.1.0"))
    before = spec.input_hash("base:1", tmp_path)
    assert spec.input_hash("base:1", tmp_path) == before
    assert spec.input_hash("base:2", tmp_path) != before
    assert sibling.input_hash("base:1", tmp_path) != before
    (tmp_path / "standin" / "standin.py").write_text("# changed\n")
    assert spec.input_hash("base:1", tmp_path) != before


def test_lb_config_and_runtime_commands() -> None:
    cfg = LocalConfig(lb_port=18080)
    text = lb.render_config(cfg)
    assert "bind 127.0.0.1:18080" in text
    assert "option httpchk GET /health" in text
    add = lb.add_server_commands("app", lb.LbServer("local-2", 8102))
    assert add.startswith("add server app/local-2 127.0.0.1:8102 id ")  # id from the name (lb.py)
    assert "check inter 1000ms" in add and "rise 2 fall 2" in add  # the readiness check's settings
    assert add.endswith("set server app/local-2 health down")  # starts unhealthy, like GCP
    with pytest.raises(FleetError):
        lb.set_state_command("app", "local-2", "up; shutdown")
    with pytest.raises(FleetError):
        lb.LbServer("bad name", 80)


def test_inventory_documents(tmp_path: Path) -> None:
    cfg = LocalConfig(root=tmp_path)
    hosts = [
        inventory_writer.HostEntry("local-2", 2202, 8102, "22", "ssh-ed25519 BBBB", ("app",)),
        inventory_writer.HostEntry("local-1", 2201, 8101, "11", "ssh-ed25519 AAAA comment", ("app", "beat")),
    ]
    doc = inventory_writer.hosts_doc(hosts, cfg)
    assert list(doc) == ["local-1", "local-2"]
    one = doc["local-1"]
    assert (one["hostname"], one["port"], one["username"]) == ("127.0.0.1", 2201, "deploy")
    assert one["data"]["gce"]["instance_id"] == "11" and one["data"]["lb"]["server"] == "local-1"
    assert one["data"]["lb"]["address"] == "127.0.0.1:8101" and one["data"]["roles"] == ["app", "beat"]
    assert "app" not in one["data"]  # app.http_port (80, inside the instance) comes from defaults
    assert inventory_writer.known_hosts_text(hosts) == (
        "[127.0.0.1]:2201 ssh-ed25519 AAAA\n[127.0.0.1]:2202 ssh-ed25519 BBBB\n"
    )
    with pytest.raises(FleetError):
        inventory_writer.known_hosts_text([inventory_writer.HostEntry("x", 1, 2, "3", "garbage", ())])
    schema = {"DIFY_VERSION": {}, "API_IMAGE": {"default": "x"}, "SECRET_KEY": {"secret": True}}
    assert set(inventory_writer.local_vars(schema)) == {"DIFY_VERSION", "API_IMAGE"}
    assert inventory_writer.required_secrets(schema) == ["SECRET_KEY"]


# --------------------------------------------------------------------------- helpers


def ssh(fleet: LocalFleet, inst: Instance, known_hosts: Path | None = None) -> paramiko.SSHClient:
    """Strict: only keys pinned in known_hosts are accepted (RejectPolicy for anything else)."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.load_host_keys(str(known_hosts or fleet.known_hosts))
    client.connect(
        "127.0.0.1",
        port=inst.ssh_port,
        username="deploy",
        key_filename=str(fleet.key_file),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
        banner_timeout=10,
    )
    return client


def run(client: paramiko.SSHClient, command: str, timeout: float = 120) -> tuple[int, str, str]:
    _in, out, err = client.exec_command(command, timeout=timeout)
    code = out.channel.recv_exit_status()
    return code, out.read().decode(), err.read().decode()


def disk_of(container: str) -> str:
    """The Docker volume an instance container runs its inner Docker engine on (its "disk")."""
    proc = subprocess.run(["docker", "container", "inspect", container], capture_output=True, check=True)
    info = json.loads(proc.stdout)
    [disk] = [m["Name"] for m in info[0]["Mounts"] if m["Destination"] == "/var/lib/docker"]
    return str(disk)


def volume_exists(name: str) -> bool:
    return subprocess.run(["docker", "volume", "inspect", name], capture_output=True).returncode == 0


def ok(client: paramiko.SSHClient, command: str, timeout: float = 120) -> str:
    code, out, err = run(client, command, timeout)
    assert code == 0, f"{command!r} exited {code}: {err or out}"
    return out


def http_get(url: str) -> tuple[int, dict[str, str], str]:
    """Status, headers (lower-case names: haproxy sends them lower-cased) and body."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


STACK_NGINX = """server {
    listen 80;
    location = /health { proxy_pass http://api:5001/health; }
    location / { proxy_pass http://web:3000; }
}
"""
STACK_COMPOSE = """services:
  api:
    image: fleet-registry:5000/dify-api:${VERSION:-1.0.0}
    init: true
    restart: unless-stopped
    healthcheck:
      test: ["CMD", "curl", "-fsS", "http://localhost:5001/health"]
      interval: 2s
      timeout: 2s
      retries: 2
      start_period: 20s
      start_interval: 1s
  worker:
    image: fleet-registry:5000/dify-api:${VERSION:-1.0.0}
    environment: {MODE: worker}
    restart: unless-stopped
  web:
    image: fleet-registry:5000/dify-web:${VERSION:-1.0.0}
    restart: unless-stopped
  nginx:
    image: fleet-registry:5000/nginx:local
    restart: unless-stopped
    volumes: ["./conf.d:/etc/nginx/conf.d:ro"]
    ports: ["80:80"]
    depends_on:
      api: {condition: service_healthy}
"""
STACK_DIR = "/home/deploy/standin-stack"


def deploy_stack(client: paramiko.SSHClient) -> str:
    """Upload a small stand-in stack, pull it from the local registry, start it and wait until healthy."""
    ok(client, f"mkdir -p {STACK_DIR}/conf.d")
    sftp = client.open_sftp()
    sftp.putfo(io.BytesIO(STACK_COMPOSE.encode()), f"{STACK_DIR}/compose.yaml")
    sftp.putfo(io.BytesIO(STACK_NGINX.encode()), f"{STACK_DIR}/conf.d/default.conf")
    sftp.close()
    pulled = ok(client, f"cd {STACK_DIR} && docker compose -p standin pull 2>&1")
    ok(client, f"cd {STACK_DIR} && docker compose -p standin up -d --wait 2>&1", timeout=180)
    return pulled


def compose_states(client: paramiko.SSHClient) -> dict[str, tuple[str, str]]:
    out = ok(client, f"cd {STACK_DIR} && docker compose -p standin ps --all --format json")
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {row["Service"]: (row["State"], row.get("Health", "")) for row in rows}


# --------------------------------------------------------------------------- the shared fleet


@pytest.mark.localfleet
def test_every_instance_answers_strict_ssh_with_compose_v2(local_fleet: LocalFleet) -> None:
    records = local_fleet.instances()
    assert len(records) >= 4
    for inst in records:
        client = ssh(local_fleet, inst)
        try:
            assert ok(client, "hostname").strip() == inst.name
            version = ok(client, "docker compose version --short").strip().lstrip("v")
            assert version.split(".")[0] == "2", version
            assert "docker" in ok(client, "id -nG").split()
            ok(client, "sudo -n true")
            assert ok(client, "docker info --format '{{.Driver}}'").strip() == "overlay2"
        finally:
            client.close()


@pytest.mark.localfleet
def test_abandoned_and_refused_logins_never_lock_the_other_clients_out(
    local_fleet: LocalFleet, tmp_path: Path
) -> None:
    """All clients reach an instance's sshd from one address (the fleet network's gateway): OpenSSH's
    per-source penalties (15 s of abandoned logins at 1 s each and the source is refused) would turn
    one client's failures into everybody's "Error reading SSH protocol banner"."""
    inst = local_fleet.instances()[0]
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    for _ in range(25):  # 25 s of `noauth` penalties: a banner read, then the connection dropped
        with socket.create_connection(("127.0.0.1", inst.ssh_port), timeout=10) as sock:
            assert sock.recv(64).startswith(b"SSH-2.0-")
    for _ in range(5):  # and 25 s of `authfail` ones: a key the instance does not authorize
        stranger = paramiko.SSHClient()
        stranger.load_host_keys(str(local_fleet.known_hosts))
        stranger.set_missing_host_key_policy(paramiko.RejectPolicy())
        with pytest.raises(paramiko.AuthenticationException):
            stranger.connect(
                "127.0.0.1",
                port=inst.ssh_port,
                username="deploy",
                key_filename=str(key),
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
            )
        stranger.close()
    client = ssh(local_fleet, inst)
    try:
        assert ok(client, "hostname").strip() == inst.name
    finally:
        client.close()


@pytest.mark.localfleet
def test_known_hosts_hold_each_instances_own_key(local_fleet: LocalFleet, tmp_path: Path) -> None:
    records = local_fleet.instances()
    pinned = local_fleet.known_hosts.read_text().splitlines()
    keys = set()
    for inst in records:
        inside = local_fleet.exec(inst.name, ["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[:2]
        assert f"[127.0.0.1]:{inst.ssh_port} {inside[0]} {inside[1]}" in pinned
        keys.add(inside[1])
    assert len(keys) == len(records)  # generated at first boot: no two instances share one

    # a host key that is not the pinned one is refused, and so is a host with no pinned key
    first, second = records[0], records[1]
    other_key = next(
        line.split(" ", 1)[1] for line in pinned if line.startswith(f"[127.0.0.1]:{second.ssh_port} ")
    )
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[127.0.0.1]:{first.ssh_port} {other_key}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        ssh(local_fleet, first, wrong)
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException):
        ssh(local_fleet, first, empty)


@pytest.mark.localfleet
def test_inventory_matches_the_instances(local_fleet: LocalFleet) -> None:
    records = {r.name: r for r in local_fleet.instances()}
    hosts = yaml.safe_load((local_fleet.inventory_dir / "hosts.yaml").read_text())
    defaults = yaml.safe_load((local_fleet.inventory_dir / "defaults.yaml").read_text())
    assert set(hosts) == set(records)
    for name, host in hosts.items():
        assert host["port"] == records[name].ssh_port
        assert host["data"]["lb"]["address"] == f"127.0.0.1:{records[name].http_port}"
        assert host["data"]["gce"]["instance_id"] == records[name].instance_id
    assert sum("beat" in h["data"]["roles"] for h in hosts.values()) == 1
    assert Path(defaults["data"]["lb"]["stats_socket"]).is_socket()
    assert (local_fleet.inventory_dir / defaults["data"]["ssh"]["key_file"]).exists()


@pytest.mark.localfleet
def test_fab_exec_against_local_inventory(local_fleet: LocalFleet) -> None:
    """The issue's "done" check: `fab exec --inventory local --cmd 'docker compose version'`."""
    fab = Path(sys.executable).with_name("fab")
    proc = subprocess.run(
        [str(fab), "exec", "--inventory", "local", "--cmd", "docker compose version", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    text = proc.stdout
    names = [r.name for r in local_fleet.instances()]
    for name in names:
        assert name in text
    assert text.count("Docker Compose version 2.") >= len(names)


@pytest.mark.localfleet
def test_lb_has_one_server_per_instance(local_fleet: LocalFleet) -> None:
    servers = local_fleet.lb.servers()
    records = local_fleet.instances()
    assert set(servers) == {r.name for r in records}
    for inst in records:
        assert servers[inst.name].address == f"127.0.0.1:{inst.http_port}"
        assert servers[inst.name].status in lb.STATES


@pytest.mark.localfleet
def test_images_are_cached_and_in_the_registry(local_fleet: LocalFleet) -> None:
    report = images.build_all(local_fleet.config, local_fleet.progress)
    assert report.built == [] and report.pushed == []
    from fleet.local import registry

    for ref in images.standin_refs(local_fleet.config):
        repo, tag = registry.split_ref(ref, local_fleet.config)
        assert tag in registry.tags(local_fleet.config, repo)
    assert report.tarball is not None and report.tarball.stat().st_size > 0


@pytest.mark.localfleet
def test_engine_says_what_is_wrong_for_a_user_without_the_socket(local_fleet: LocalFleet) -> None:
    """A daemon runs but this user may not use it: a clear error, not a second dockerd."""
    python = Path("/usr/bin/python3")
    if not python.exists() or shutil.which("setpriv") is None:
        pytest.skip("needs /usr/bin/python3 and setpriv to run as another user")
    script = (
        "from fleet.local.engine import ensure_engine\n"
        "from fleet.errors import FleetError\n"
        "try:\n    ensure_engine()\nexcept FleetError as exc:\n    print(exc.render())\n"
    )
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(python), "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "HOME": "/tmp", "PATH": "/usr/local/bin:/usr/bin:/bin"},
    )
    assert "may not use its socket" in proc.stdout, proc.stdout + proc.stderr
    assert "docker` group" in proc.stdout


# --------------------------------------------------------------------------- an instance of our own


@pytest.fixture(scope="module")
def extra(local_fleet: LocalFleet) -> Iterator[dict[str, object]]:
    """One more instance for lifecycle tests, with the stand-in stack deployed on it."""
    before = {r.name: r.container_id for r in local_fleet.instances()}
    inst = local_fleet.add_instance()
    client = ssh(local_fleet, inst)
    try:
        pull_output = deploy_stack(client)
    finally:
        client.close()
    try:
        yield {"name": inst.name, "before": before, "pull": pull_output}
    finally:
        if inst.name in {r.name for r in local_fleet.instances()}:
            local_fleet.remove_instance(inst.name)


@pytest.mark.localfleet
def test_add_instance_leaves_the_others_alone(local_fleet: LocalFleet, extra: dict[str, object]) -> None:
    now = {r.name: r.container_id for r in local_fleet.instances()}
    before = extra["before"]
    assert isinstance(before, dict)
    assert extra["name"] not in before
    assert {k: v for k, v in now.items() if k != extra["name"]} == before
    hosts = yaml.safe_load((local_fleet.inventory_dir / "hosts.yaml").read_text())
    assert extra["name"] in hosts
    assert extra["name"] in local_fleet.lb.servers()


@pytest.mark.localfleet
def test_stack_pulled_healthy_and_served_through_the_lb(
    local_fleet: LocalFleet, extra: dict[str, object]
) -> None:
    name = str(extra["name"])
    inst = local_fleet.instance(name)
    client = ssh(local_fleet, inst)
    try:
        states = compose_states(client)
        # pulled from the registry (a `docker load`ed image would carry no registry digest)
        digests = ok(
            client, "docker image inspect -f '{{json .RepoDigests}}' fleet-registry:5000/dify-api:1.0.0"
        )
    finally:
        client.close()
    assert "fleet-registry:5000/dify-api@sha256:" in digests
    assert states["api"] == ("running", "healthy")
    assert {s for s, _ in states.values()} == {"running"}
    code, _h, body = http_get(f"http://127.0.0.1:{inst.http_port}/health")
    assert code == 200 and json.loads(body) == {"status": "ok", "version": "1.0.0", "service": "api"}

    assert local_fleet.lb.wait_for(name, ("UP",), timeout=30).serving
    up = [n for n, s in local_fleet.lb.servers().items() if s.serving]
    seen = set()
    for _ in range(2 * len(up) + 2):  # round robin over the UP servers reaches ours
        code, headers, body = http_get(f"{local_fleet.lb.frontend}/console")
        seen.add(headers.get("x-fleet-server"))
        if headers.get("x-fleet-server") == name:
            assert code == 200
            assert headers.get("x-standin-version") == "1.0.0" and "dify web" in body
    assert name in seen


@pytest.mark.localfleet
def test_lb_drain_and_maint_are_visible(local_fleet: LocalFleet, extra: dict[str, object]) -> None:
    name = str(extra["name"])
    local_fleet.lb.wait_for(name, ("UP",), timeout=30)
    try:
        local_fleet.lb.set_state(name, "drain")
        assert local_fleet.lb.servers()[name].status == "DRAIN"
        assert not local_fleet.lb.servers()[name].serving
        local_fleet.lb.set_state(name, "maint")
        assert local_fleet.lb.servers()[name].status == "MAINT"
    finally:
        local_fleet.lb.set_state(name, "ready")
    assert local_fleet.lb.wait_for(name, ("UP",), timeout=30).status == "UP"


@pytest.mark.localfleet
def test_stopped_instance_goes_down_in_the_lb_and_comes_back(
    local_fleet: LocalFleet, extra: dict[str, object]
) -> None:
    name = str(extra["name"])
    local_fleet.lb.wait_for(name, ("UP",), timeout=30)
    stopped = local_fleet.stop_instance(name)
    assert stopped.state == "exited"
    assert local_fleet.lb.wait_for(name, ("DOWN",), timeout=30).check != "L7OK"
    started = local_fleet.start_instance(name)
    assert started.state == "running" and started.host_key == stopped.host_key
    # the compose project comes back by its restart policy, and the LB puts the host back
    assert local_fleet.lb.wait_for(name, ("UP",), timeout=60).status == "UP"


@pytest.mark.localfleet
def test_restart_is_a_clean_reboot_keeping_key_and_stack(
    local_fleet: LocalFleet, extra: dict[str, object]
) -> None:
    name = str(extra["name"])
    before = local_fleet.instance(name)
    after = local_fleet.restart_instance(name)
    assert after.host_key == before.host_key
    assert after.instance_id == before.instance_id
    logs = subprocess.run(["docker", "logs", after.container], capture_output=True, text=True, check=True)
    assert "fleet-init: stopped" in logs.stdout  # shut down cleanly, not killed
    local_fleet.lb.wait_for(name, ("UP",), timeout=60)
    client = ssh(local_fleet, after)  # the pinned key still matches
    try:
        assert compose_states(client)["api"] == ("running", "healthy")
    finally:
        client.close()


@pytest.mark.localfleet
def test_standin_knobs_inside_an_instance(local_fleet: LocalFleet, extra: dict[str, object]) -> None:
    name = str(extra["name"])
    client = ssh(local_fleet, local_fleet.instance(name))
    try:
        # 1.2.0-broken never becomes healthy; STANDIN_UNHEALTHY does the same to any version
        ok(client, "docker pull -q fleet-registry:5000/dify-api:1.2.0-broken")
        ok(client, "docker run -d --name broken fleet-registry:5000/dify-api:1.2.0-broken")
        ok(client, "docker run -d --name sick -e STANDIN_UNHEALTHY=1 fleet-registry:5000/dify-api:1.0.0")
        ok(client, "docker run -d --name slow -e STANDIN_START_DELAY=600 fleet-registry:5000/dify-api:1.0.0")
        for box in ("broken", "sick", "slow"):
            probe = (
                f"for i in $(seq 100); do c=$(docker exec {box} curl -s -o /dev/null -w '%{{http_code}}' "
                'http://127.0.0.1:5001/health); [ "$c" != 000 ] && break; sleep 0.1; done; echo $c'
            )
            assert ok(client, probe).strip() == "503", box
        # a worker stops on SIGTERM by itself (exit 0), not by the SIGKILL after the grace period
        ok(client, "docker run -d --name worker1 -e MODE=worker fleet-registry:5000/dify-api:1.0.0")
        ok(client, "until docker logs worker1 2>&1 | grep -q 'task 1 done'; do sleep 0.2; done", timeout=30)
        ok(client, "docker stop -t 10 worker1")
        assert ok(client, "docker inspect -f '{{.State.ExitCode}}' worker1").strip() == "0"
        assert "worker stopped after" in ok(client, "docker logs worker1 2>&1")
        # STANDIN_CRASH_AFTER makes a service exit with status 1
        ok(client, "docker run -d --name crash -e STANDIN_CRASH_AFTER=0.5 fleet-registry:5000/dify-web:1.0.0")
        assert ok(client, "docker wait crash").strip() == "1"
    finally:
        run(client, "docker rm -f broken sick slow worker1 crash")
        client.close()


@pytest.mark.localfleet
def test_recreate_gives_a_new_disk_and_host_key(
    local_fleet: LocalFleet, extra: dict[str, object], tmp_path: Path
) -> None:
    name = str(extra["name"])
    before = local_fleet.instance(name)
    old_known = tmp_path / "known_hosts_old"
    shutil.copy(local_fleet.known_hosts, old_known)
    others = {r.name: r.container_id for r in local_fleet.instances() if r.name != name}
    old_disk = disk_of(before.container)

    after = local_fleet.recreate_instance(name)
    assert after.name == name and (after.ssh_port, after.http_port) == (before.ssh_port, before.http_port)
    assert disk_of(after.container) != old_disk
    # the old disk is deleted in the background, not left behind
    deadline = time.monotonic() + 60
    while volume_exists(old_disk) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not volume_exists(old_disk), f"{old_disk} outlived its instance"
    assert after.container_id != before.container_id and after.instance_id != before.instance_id
    assert after.host_key != before.host_key
    assert {r.name: r.container_id for r in local_fleet.instances() if r.name != name} == others
    with pytest.raises(paramiko.BadHostKeyException):
        ssh(local_fleet, after, old_known)  # the old pin no longer matches: no silent re-trust
    client = ssh(local_fleet, after)
    try:
        assert ok(client, "docker ps -aq").strip() == ""  # a fresh disk: nothing deployed
        local_fleet.load_images([name])  # the fast path where pull is not under test
        ok(client, "docker image inspect fleet-registry:5000/dify-api:1.1.0 >/dev/null")
    finally:
        client.close()
    assert local_fleet.lb.wait_for(name, ("DOWN",), timeout=30).status == "DOWN"


@pytest.mark.localfleet
def test_remove_instance_only_removes_that_one(local_fleet: LocalFleet, extra: dict[str, object]) -> None:
    name = str(extra["name"])
    gone = local_fleet.instance(name)
    others = {r.name: r.container_id for r in local_fleet.instances() if r.name != name}
    local_fleet.remove_instance(name)
    assert {r.name: r.container_id for r in local_fleet.instances()} == others
    assert name not in local_fleet.lb.servers()
    assert name not in yaml.safe_load((local_fleet.inventory_dir / "hosts.yaml").read_text())
    assert f"[127.0.0.1]:{gone.ssh_port} " not in local_fleet.known_hosts.read_text()
    inspect = subprocess.run(["docker", "inspect", gone.container], capture_output=True, text=True)
    assert inspect.returncode != 0
    with pytest.raises(FleetError):
        local_fleet.remove_instance(name)  # a clear error, not a crash
