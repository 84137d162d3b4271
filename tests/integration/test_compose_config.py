"""Rendered bundles against the real Compose v2 CLI (`docker compose config`: no daemon needed).

The CLI comes from fleet.local.hostcompose (installed from Debian trixie's package when the machine
has only Compose v1). Each test renders a bundle, unpacks its tar exactly as a host would, and asks
Compose what it makes of it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from fleet.commands import release as r
from fleet.errors import FleetError
from fleet.local import dataservices, hostcompose
from fleet.release import bundle

META = bundle.ReleaseMeta(operator="ci", source_commit="f" * 40, created="2026-11-26T07:00:00Z")
SECRETS = {
    "SECRET_KEY": "sk-'single' \"double\" $HOME ${X} $$ `id` $(id) \\ # not a comment",
    "DB_PASSWORD": "db'pw$1",
    "REDIS_PASSWORD": "redis/pa:ss@word",
    "PGVECTOR_PASSWORD": "pgv pw with spaces",
    "SANDBOX_API_KEY": "sandbox-key",
    "PLUGIN_DAEMON_KEY": "lYkiYYT6owG+71oLerGzA7GXCgOT++6ovaezWAjpCjf+Sjc3ZtU+qUEi",
    "PLUGIN_DIFY_INNER_API_KEY": "QaHbTe77CtuXmsfyhR7+vRjI/+XbV1AaFy691iy+kGDv2Jvy0/eAh8Y1",
}
COMMON = {
    "DB_HOST": "10.20.0.3",
    "REDIS_HOST": "10.20.0.4",
    "PGVECTOR_HOST": "10.20.0.5",
    "GOOGLE_STORAGE_BUCKET_NAME": "dify-files-prod",
}
REGISTRY = "fleet-registry:5000"
LOCAL = {  # the local fleet's stand-ins, through the same compose file
    "API_IMAGE": f"{REGISTRY}/dify-api",
    "WEB_IMAGE": f"{REGISTRY}/dify-web",
    "SANDBOX_IMAGE": f"{REGISTRY}/dify-sandbox",
    "SANDBOX_VERSION": "local",
    "PLUGIN_DAEMON_IMAGE": f"{REGISTRY}/dify-plugin-daemon",
    "PLUGIN_DAEMON_VERSION": "local",
    "NGINX_IMAGE": f"{REGISTRY}/nginx",
    "NGINX_VERSION": "local",
    "SSRF_PROXY_IMAGE": f"{REGISTRY}/squid",
    "SSRF_PROXY_VERSION": "local",
    "HEALTHCHECK_INTERVAL": "2s",
    "HEALTHCHECK_START_INTERVAL": "500ms",
    "HEALTHCHECK_START_PERIOD": "20s",
    "WORKER_STOP_GRACE_PERIOD": "2s",
}


@pytest.fixture(scope="module")
def compose() -> list[str]:
    return hostcompose.compose_cli()


@pytest.fixture(scope="module")
def source() -> bundle.Source:
    return bundle.load_source()


def stage(b: bundle.Bundle, layout: r.Layout) -> Path:
    """Unpack the bundle the way a host does (the real stage script, run by sh)."""
    proc = subprocess.run(
        ["sh", "-c", r.stage(layout, b.release_id, b.checksums()).shell()],
        input=b.tar_bytes(),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return Path(layout.release(b.release_id))


def config(compose: list[str], release_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    files = ["-f", str(release_dir / "docker-compose.yaml"), "--env-file", str(release_dir / ".env")]
    argv = [*compose, "-p", "dify", "--project-directory", str(release_dir), *files, "config", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def resolved(compose: list[str], release_dir: Path) -> dict:
    proc = config(compose, release_dir, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def unescape(value: str) -> str:
    """`config` output is itself a compose file: it writes every literal $ as $$."""
    return value.replace("$$", "$")


def test_local_stand_ins_beat_host(compose: list[str], source: bundle.Source, tmp_path: Path) -> None:
    layout = r.Layout(root=str(tmp_path / "opt/fleet/dify"))
    values = {
        **COMMON,
        **LOCAL,
        "DIFY_VERSION": "1.0.0",
        **bundle.host_variables(layout.root, ["beat"], 8101),
    }
    b = bundle.render(source, values, SECRETS, META, where="local-1")
    rel = stage(b, layout)

    quiet = config(compose, rel, "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == "", quiet.stderr
    services = config(compose, rel, "--services").stdout.split()
    assert (
        sorted(services)
        == sorted(b.services)
        == sorted(bundle.render(source, values, SECRETS, META).services)
    )
    assert "worker_beat" in services

    doc = resolved(compose, rel)
    svc = doc["services"]
    assert (
        svc["api"]["image"]
        == svc["worker"]["image"]
        == svc["worker_beat"]["image"]
        == f"{REGISTRY}/dify-api:1.0.0"
    )
    assert svc["web"]["image"] == f"{REGISTRY}/dify-web:1.0.0"
    assert svc["sandbox"]["image"] == f"{REGISTRY}/dify-sandbox:local"
    assert svc["nginx"]["image"] == f"{REGISTRY}/nginx:local"
    assert svc["ssrf_proxy"]["image"] == f"{REGISTRY}/squid:local"
    assert {s["environment"]["MODE"] for n, s in svc.items() if n in ("api", "worker", "worker_beat")} == {
        "api",
        "worker",
        "beat",
    }
    # short health timings for tests, through variables
    assert svc["api"]["healthcheck"]["interval"] == "2s"
    assert svc["api"]["healthcheck"]["start_interval"] == "500ms"
    assert svc["api"]["healthcheck"]["retries"] == 3
    assert svc["worker"]["stop_grace_period"] == "2s"
    assert svc["nginx"]["logging"] == {"driver": "json-file", "options": {"max-file": "5", "max-size": "50m"}}
    assert svc["nginx"]["ports"][0]["published"] == "8101" and svc["nginx"]["ports"][0]["target"] == 80

    mounts = {m["target"]: m for m in svc["nginx"]["volumes"]}
    assert mounts["/fleet/state"]["source"] == f"{layout.root}/state" and mounts["/fleet/state"]["read_only"]
    # config dirs are mounted from their content address, not from the release (bundle.content_addressed)
    nginx_dir = bundle.config_dir_name("nginx", b.files)
    assert mounts["/etc/nginx/conf.d"]["source"] == f"{layout.root}/config/{nginx_dir}/conf.d"
    assert mounts["/etc/nginx/nginx.conf"]["source"] == f"{layout.root}/config/{nginx_dir}/nginx.conf"
    squid_dir = bundle.config_dir_name("ssrf_proxy", b.files)
    assert svc["ssrf_proxy"]["volumes"][0]["source"] == f"{layout.root}/config/{squid_dir}/squid.conf"
    assert (rel / "config-dirs").read_text().split() == [
        "certs",
        bundle.config_dir_name("certs", b.files),
        "nginx",
        nginx_dir,
        "ssrf_proxy",
        squid_dir,
    ]
    assert svc["api"]["volumes"][0]["source"] == f"{layout.root}/volumes/app/storage"
    assert svc["plugin_daemon"]["volumes"][0]["source"] == f"{layout.root}/volumes/plugin_daemon"
    assert doc["networks"]["ssrf_proxy_network"]["internal"] is True


def test_secrets_reach_the_containers_byte_for_byte(
    compose: list[str], source: bundle.Source, tmp_path: Path
) -> None:
    layout = r.Layout(root=str(tmp_path / "app"))
    values = {**COMMON, **LOCAL, "DIFY_VERSION": "1.0.0", **bundle.host_variables(layout.root)}
    b = bundle.render(source, values, SECRETS, META)
    env = resolved(compose, stage(b, layout))["services"]["api"]["environment"]
    assert unescape(env["SECRET_KEY"]) == SECRETS["SECRET_KEY"]
    assert unescape(env["DB_PASSWORD"]) == SECRETS["DB_PASSWORD"]
    assert unescape(env["PGVECTOR_PASSWORD"]) == SECRETS["PGVECTOR_PASSWORD"]
    assert env["CODE_EXECUTION_API_KEY"] == SECRETS["SANDBOX_API_KEY"]
    assert env["INNER_API_KEY_FOR_PLUGIN"] == SECRETS["PLUGIN_DIFY_INNER_API_KEY"]
    assert env["CELERY_BROKER_URL"] == "redis://:redis%2Fpa%3Ass%40word@10.20.0.4:6379/1"


def test_worker_beat_is_off_elsewhere(compose: list[str], source: bundle.Source, tmp_path: Path) -> None:
    layout = r.Layout(root=str(tmp_path / "app"))
    values = {**COMMON, **LOCAL, "DIFY_VERSION": "1.1.0", **bundle.host_variables(layout.root, ["app"])}
    b = bundle.render(source, values, SECRETS, META)
    rel = stage(b, layout)
    services = config(compose, rel, "--services").stdout.split()
    assert "worker_beat" not in services and sorted(services) == sorted(b.services)
    assert b.disabled_services == ("worker_beat",)


def test_production_values(compose: list[str], source: bundle.Source, tmp_path: Path) -> None:
    layout = r.Layout(root=str(tmp_path / "opt/fleet/dify"))
    key = base64.b64encode(json.dumps({"type": "service_account", "project_id": "p"}).encode()).decode()
    values = {
        **COMMON,
        "DIFY_VERSION": "1.3.1",
        "REDIS_USE_SSL": True,
        "DB_SSL_MODE": "require",
        "CONSOLE_API_URL": "https://dify.example.com",
        "APP_API_URL": "https://dify.example.com",
        **bundle.host_variables(layout.root, ["app", "beat"], 80),
    }
    b = bundle.render(source, values, {**SECRETS, "GOOGLE_STORAGE_SERVICE_ACCOUNT_JSON_BASE64": key}, META)
    rel = stage(b, layout)
    assert config(compose, rel, "--quiet").returncode == 0
    svc = resolved(compose, rel)["services"]
    assert svc["api"]["image"] == "langgenius/dify-api:1.3.1"
    assert svc["web"]["image"] == "langgenius/dify-web:1.3.1"
    assert svc["sandbox"]["image"] == "langgenius/dify-sandbox:0.2.12"
    assert svc["plugin_daemon"]["image"] == "langgenius/dify-plugin-daemon:0.3.0-local"
    assert svc["nginx"]["image"] == "nginx:1.27"
    assert svc["ssrf_proxy"]["image"] == "ubuntu/squid:latest"
    api = svc["api"]["environment"]
    assert api["GOOGLE_STORAGE_SERVICE_ACCOUNT_JSON_BASE64"] == key
    assert api["STORAGE_TYPE"] == "google-storage" and api["VECTOR_STORE"] == "pgvector"
    assert api["CELERY_BROKER_URL"].startswith("rediss://") and api["BROKER_USE_SSL"] == "true"
    assert (
        svc["api"]["healthcheck"]["interval"] == "30s" and svc["api"]["healthcheck"]["start_interval"] == "2s"
    )
    assert svc["plugin_daemon"]["environment"]["DB_SSL_MODE"] == "require"
    assert "db" not in svc and "redis" not in svc


def test_gcplogs_release_logs_to_cloud_logging_with_a_bounded_cache(
    compose: list[str], source: bundle.Source, tmp_path: Path
) -> None:
    """LOG_DRIVER=gcplogs: every service gets gcplogs with only the options gcplogs accepts."""
    layout = r.Layout(root=str(tmp_path / "opt/fleet/dify"))
    values = {
        **COMMON,
        "DIFY_VERSION": "1.3.1",
        "LOG_DRIVER": "gcplogs",
        "LOG_MAX_SIZE": "20m",
        "LOG_MAX_FILE": "3",
        **bundle.host_variables(layout.root, ["app", "beat"], 80),
    }
    b = bundle.render(source, values, SECRETS, META)
    assert b.env["LOG_DRIVER"] == "gcplogs"
    rel = stage(b, layout)
    svc = resolved(compose, rel)["services"]
    assert set(svc) == set(b.services)  # the logging templates are not services of the stack
    for name, one in svc.items():
        assert one["logging"] == {
            "driver": "gcplogs",
            "options": {
                "labels": "com.docker.compose.project,com.docker.compose.service,"
                "com.docker.compose.project.working_dir",
                "cache-max-size": "20m",
                "cache-max-file": "3",
            },
        }, name
    with pytest.raises(FleetError, match="json-file or gcplogs"):
        bundle.render(source, {**values, "LOG_DRIVER": "syslog"}, SECRETS, META)


def test_the_release_commands_drive_compose(
    compose: list[str], source: bundle.Source, tmp_path: Path
) -> None:
    """compose_check and release_images, as built for hosts, run here against the staged release."""
    layout = r.Layout(root=str(tmp_path / "root with space"))
    values = {**COMMON, **LOCAL, "DIFY_VERSION": "1.0.0", **bundle.host_variables(layout.root, ["beat"])}
    b = bundle.render(source, values, SECRETS, META)
    stage(b, layout)
    prefix = " ".join(compose)

    def run(cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", "-c", cmd.replace("docker compose", prefix)], capture_output=True, text=True
        )

    check = run(r.compose_check(layout, b.release_id).shell())
    assert check.returncode == 0, check.stderr
    images = r.parse_release_images(run(r.release_images(layout, [b.release_id]).shell()).stdout)
    assert images == {
        b.release_id: {
            f"{REGISTRY}/dify-api:1.0.0",
            f"{REGISTRY}/dify-web:1.0.0",
            f"{REGISTRY}/dify-sandbox:local",
            f"{REGISTRY}/dify-plugin-daemon:local",
            f"{REGISTRY}/nginx:local",
            f"{REGISTRY}/squid:local",
        }
    }


def test_a_broken_compose_is_rejected_with_a_clear_error(
    compose: list[str], source: bundle.Source, tmp_path: Path
) -> None:
    layout = r.Layout(root=str(tmp_path / "app"))
    values = {**COMMON, **LOCAL, "DIFY_VERSION": "1.0.0", **bundle.host_variables(layout.root)}
    rel = stage(bundle.render(source, values, SECRETS, META), layout)

    compose_file = rel / "docker-compose.yaml"
    good = compose_file.read_text()
    compose_file.write_text(good.replace("    restart: unless-stopped\n", "    restrat: unless-stopped\n", 1))
    bad = config(compose, rel, "--quiet")
    assert bad.returncode != 0 and "restrat" in bad.stderr

    compose_file.write_text(good)
    env_file = rel / ".env"
    env_file.write_text(
        "\n".join(line for line in env_file.read_text().splitlines() if not line.startswith("DB_HOST="))
    )
    missing = config(compose, rel, "--quiet")
    assert missing.returncode != 0 and "DB_HOST must be set" in missing.stderr
    for value in SECRETS.values():
        assert value not in missing.stderr

    # and the bundle refuses the same mistakes before anything reaches a host
    with pytest.raises(FleetError, match="missing required variables DB_HOST"):
        bundle.render(source, {k: v for k, v in values.items() if k != "DB_HOST"}, SECRETS, META)


# --------------------------------------------------------------------------- the CLI helper itself


def test_hostcompose_reports_v2(compose: list[str]) -> None:
    proc = subprocess.run([*compose, "version", "--short"], capture_output=True, text=True, check=True)
    version = hostcompose.parse_version(proc.stdout)
    assert version is not None and version[0] >= 2


def test_hostcompose_pure_parts(tmp_path: Path) -> None:
    assert hostcompose.parse_version("Docker Compose version v2.26.1") == (2, 26, 1)
    assert hostcompose.parse_version("2.26.1-4\n") == (2, 26, 1)
    assert hostcompose.parse_version("docker-compose version 1.29.2, build unknown") == (1, 29, 2)
    assert hostcompose.parse_version("nothing") is None
    text = hostcompose.sources_text("http://deb.debian.org/debian")
    assert "Suites: trixie\n" in text and "URIs: http://deb.debian.org/debian\n" in text
    options = hostcompose.apt_options(tmp_path)
    # every piece of apt state points into our own directory, never the system's
    assert f"Dir::State::Lists={tmp_path}/lists" in options
    assert f"Dir::Cache={tmp_path}/cache" in options
    assert "Dir::Etc::SourceParts=/dev/null" in options
    assert hostcompose.download_argv(tmp_path)[-2:] == ["download", "docker-compose"]


def test_fetch_plugin_with_a_private_apt_state(tmp_path: Path) -> None:
    """The download path runs even when this machine already has v2: trixie's package, our own apt dirs."""
    before = sorted(p.name for p in Path("/var/lib/apt/lists").glob("*trixie*"))
    plugin = hostcompose.fetch_plugin(tmp_path / "cache")
    proc = subprocess.run([str(plugin), "version", "--short"], capture_output=True, text=True, check=True)
    assert (hostcompose.parse_version(proc.stdout) or (0,))[0] == 2
    # the system apt state is untouched
    assert sorted(p.name for p in Path("/var/lib/apt/lists").glob("*trixie*")) == before
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["docker-compose"]  # lists and .deb cleaned up


# --------------------------------------------------------------------------- the stack, running


@pytest.mark.localfleet
def test_the_stack_runs_on_an_instance(source: bundle.Source, local_fleet) -> None:  # type: ignore[no-untyped-def]
    """The rendered stack on a real local-fleet instance (Engine 26, stand-in images): every service healthy,
    nginx routes, /health 503 while drained, squid refusing private and metadata destinations, and a switch
    to 1.1.0 without the beat role. Its own project, root and loopback port, so a deploy of `dify` on the
    same instance is left alone."""
    inst = local_fleet.instances()[-1]
    local_fleet.load_images([inst.name])
    layout = r.Layout(root="/opt/fleet/stackcheck", project="stackcheck")
    port = 18080
    where = inst.name

    def sh(script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return local_fleet.exec(inst.name, ["sh", "-c", script], check=check, timeout=180)

    def curl(path: str) -> tuple[int, str]:
        out = sh(f"curl -s -m 5 -w '\\n%{{http_code}}' http://127.0.0.1:{port}{path}").stdout
        body, _, code = out.rpartition("\n")
        return int(code), body.rstrip("\n")

    # the stand-in api's /health logs in to the fleet's database: its data services and their passwords
    data_layer = {
        k: v for k, v in dataservices.inventory_vars(local_fleet.config).items() if k in source.variables
    }
    secrets_dir = local_fleet.inventory_dir / "secrets"
    logins = {k: (secrets_dir / k).read_text().strip() for k in dataservices.SECRETS}

    def deploy(version: str, roles: list[str], extra: object = None) -> bundle.Bundle:
        values = {
            **COMMON,
            **LOCAL,
            **data_layer,
            "DIFY_VERSION": version,
            **bundle.host_variables(layout.root, roles, port),
        }
        values["EXPOSE_NGINX_ADDRESS"] = "127.0.0.1"
        b = bundle.render(source, values, {**SECRETS, **logins}, META, where=where, extra=extra)  # type: ignore[arg-type]
        data = base64.b64encode(b.tar_bytes()).decode()
        archive = f"/tmp/stackcheck-{b.release_id}.tar"
        sh(f"printf '%s' {data} | base64 -d > {archive}")
        for cmd in (
            r.prepare_layout(layout),
            r.stage(layout, b.release_id, b.checksums(), archive=archive),
            r.switch(layout, b.release_id),
            r.compose_up(layout, b.release_id, disabled=b.disabled_services, wait_timeout=120),
        ):
            sh(cmd.shell())
        return b

    def states(b: bundle.Bundle) -> list[r.ServiceState]:
        found = r.parse_ps(sh(r.compose_ps(layout).shell()).stdout, layout, where)
        expected = r.parse_hashes(sh(r.compose_hashes(layout, b.release_id).shell()).stdout)
        assert set(expected) == set(b.services)
        assert r.drift(found, expected) == []
        return found

    try:
        one = deploy("1.0.0", ["app", "beat"])
        running = states(one)
        assert {s.service for s in running} == EIGHT_SERVICES
        assert all(s.ok for s in running), running
        assert {s.service for s in running if s.health == "healthy"} == set(one.healthchecked)

        code, body = curl("/health")
        assert code == 200 and json.loads(body)["version"] == "1.0.0"
        for path in ("/console/api/ping", "/api/x", "/v1/x", "/files/x", "/mcp/x", "/triggers/x"):
            code, body = curl(path)
            assert code == 200 and json.loads(body)["version"] == "1.0.0", (path, body)
        assert json.loads(curl("/e/hook")[1])["service"] == "plugin_daemon"
        assert "dify web stand-in" in curl("/explore")[1] and "dify web stand-in" in curl("/apps")[1]

        sh(r.drain(layout).shell())
        assert curl("/health") == (503, '{"status":"draining"}')
        assert curl("/nginx-health") == (200, "ok")
        sh(r.undrain(layout).shell())
        assert curl("/health")[0] == 200

        project = f"docker compose -p {layout.project} exec -T"
        ssrf = f"{project} sandbox curl -s -o /dev/null -w '%{{http_code}}' -m 5"
        proxy = "-x http://ssrf_proxy:3128"
        assert sh(f"{ssrf} {proxy} http://169.254.169.254/computeMetadata/v1/").stdout == "403"
        assert sh(f"{ssrf} {proxy} http://metadata.google.internal/").stdout == "403"
        assert sh(f"{ssrf} {proxy} http://api:5001/health").stdout == "403"
        assert (
            sh(f"{ssrf} --noproxy '*' http://api:5001/health", check=False).stdout == "000"
        )  # not on its net
        reverse = f"{project} api curl -s -m 5 http://ssrf_proxy:8194/health"

        # squid's reverse-proxy peer can lag the container's start on a loaded machine: until it is up
        # squid answers nothing or its own error page (ERR_READ_ERROR); poll for the sandbox's answer
        def sandbox_answer() -> str | None:
            out = sh(reverse, check=False).stdout
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return str(json.loads(out)["service"])
            return None

        deadline = time.monotonic() + 60
        while (seen := sandbox_answer()) is None and time.monotonic() < deadline:
            time.sleep(1)
        assert seen == "sandbox", sh(reverse, check=False).stdout[-500:]
        direct = f"{project} api curl -s -o /dev/null -w '%{{http_code}}' -m 5 http://sandbox:8194/health"
        assert sh(direct, check=False).stdout == "000"  # no shared network with the sandbox

        # with upstream variables passed through: still no drift (config --hash matches what up stamps)
        from fleet.release import passthrough

        assert source.catalog is not None
        extra = passthrough.build(
            source.catalog,
            source.compose,
            source.variables,
            {"MAIL_TYPE": "smtp"},
            {"SMTP_PASSWORD": "pw $x'"},
        )
        two = deploy("1.1.0", ["app"], extra)
        running = states(two)
        printenv = f"{project} api printenv"
        assert sh(f"{printenv} MAIL_TYPE").stdout == "smtp\n"
        assert sh(f"{printenv} SMTP_PASSWORD").stdout == "pw $x'\n"
        assert {s.service for s in running} == EIGHT_SERVICES - {"worker_beat"}
        made_by = {s.service: s.release for s in running}
        assert made_by["api"] == made_by["worker"] == made_by["web"] == two.release_id  # new image
        # unchanged config: not recreated, and not drift. nginx, ssrf_proxy and plugin_daemon mount
        # config dirs: content-addressed, so the new release mounts the same paths
        unchanged = {made_by[svc] for svc in ("sandbox", "nginx", "ssrf_proxy", "plugin_daemon")}
        assert unchanged == {one.release_id}, made_by
        assert sh(f"ls {layout.config}").stdout.split() == sorted(
            line.split()[1] for line in two.files["config-dirs"].data.decode().splitlines()
        )  # one copy each, shared by both releases
        hashes_one = r.parse_hashes(sh(r.compose_hashes(layout, one.release_id).shell()).stdout)
        assert r.drift(running, hashes_one)  # against the old release, the new containers are drift
        assert json.loads(curl("/health")[1])["version"] == "1.1.0"
        state = r.parse_host_state(sh(r.host_state(layout).shell()).stdout)
        assert (state.current, state.previous) == (two.release_id, one.release_id)
    finally:
        sh(f"{r.compose_down(layout).shell()}; rm -rf {layout.root} /tmp/stackcheck-*.tar", check=False)


EIGHT_SERVICES = {"nginx", "web", "api", "worker", "worker_beat", "sandbox", "plugin_daemon", "ssrf_proxy"}


def test_pass_through_and_tls_settings_reach_their_services(
    compose: list[str], source: bundle.Source, tmp_path: Path
) -> None:
    """Pass-through values (one a secret full of shell and Compose syntax) land in exactly the services
    upstream gives them to, under the daemon's own names; the TLS settings and the CA mount follow.
    (That `config --hash` matches what `up` stamps is checked on a real instance below.)"""
    from dataclasses import replace

    from fleet.release import passthrough

    assert source.catalog is not None
    ca = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    src = replace(source, files={**source.files, "certs/ca.pem": bundle.SourceFile(ca, 0o644)})
    smtp = "smtp-'pw' $HOME ${X} $$ `id` \\ # x"
    extra = passthrough.build(
        source.catalog,
        source.compose,
        source.variables,
        {"MAIL_TYPE": "smtp", "NEXT_PUBLIC_COOKIE_DOMAIN": "example.com", "PLUGIN_AWS_REGION": "eu-west-1"},
        {"SMTP_PASSWORD": smtp},
    )
    layout = r.Layout(root=str(tmp_path / "app"))
    values = {
        **COMMON,
        **LOCAL,
        "DIFY_VERSION": "1.1.0",
        "REDIS_PORT": "6378",
        "REDIS_USE_SSL": "true",
        "REDIS_SSL_CERT_REQS": "CERT_REQUIRED",
        "REDIS_SSL_CA_CERTS": "/fleet/certs/ca.pem",
        "DB_SSL_MODE": "verify-full",
        "DB_SSL_ROOT_CERT": "/fleet/certs/ca.pem",
        **bundle.host_variables(layout.root, ["app", "beat"]),
    }
    b = bundle.render(src, values, SECRETS, META, extra=extra)
    rel = stage(b, layout)
    assert (rel / "certs" / "ca.pem").read_bytes() == ca
    services = resolved(compose, rel)["services"]
    for name in ("api", "worker", "worker_beat"):
        env = services[name]["environment"]
        assert env["MAIL_TYPE"] == "smtp" and unescape(env["SMTP_PASSWORD"]) == smtp, name
        assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", "/fleet/certs/ca.pem")
        assert (env["REDIS_SSL_CERT_REQS"], env["REDIS_SSL_CA_CERTS"]) == (
            "CERT_REQUIRED",
            "/fleet/certs/ca.pem",
        )
        assert env["CELERY_BROKER_URL"].startswith("rediss://") and env["BROKER_USE_SSL"] == "true"
        assert "NEXT_PUBLIC_COOKIE_DOMAIN" not in env and "AWS_REGION" not in env
        mounts = {(v["source"], v["target"], v.get("read_only")) for v in services[name]["volumes"]}
        certs = f"{layout.config}/{bundle.config_dir_name('certs', b.files)}"  # content-addressed
        assert (certs, "/fleet/certs", True) in mounts, name
    web = services["web"]["environment"]
    assert web["NEXT_PUBLIC_COOKIE_DOMAIN"] == "example.com" and "MAIL_TYPE" not in web
    daemon = services["plugin_daemon"]["environment"]
    assert daemon["AWS_REGION"] == "eu-west-1" and "PLUGIN_AWS_REGION" not in daemon
    assert (daemon["DB_SSL_MODE"], daemon["DB_MAX_OPEN_CONNS"]) == ("require", "30")
    assert "SMTP_PASSWORD" not in services["sandbox"]["environment"]
