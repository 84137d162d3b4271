"""The release bundle, the compose stack's static contract, .env quoting and secret resolution (pure)."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from fleet.commands.release import files_from_tar
from fleet.errors import FleetError
from fleet.release import bundle, envfile, secrets

COMPOSE = bundle.COMPOSE_DIR
META = bundle.ReleaseMeta(operator="alice@laptop", source_commit="0" * 40, created="2026-11-26T07:00:00Z")
META2 = bundle.ReleaseMeta(operator="bob@ci", source_commit="1" * 40, created="2027-01-01T00:00:00Z")
SECRETS = {
    "SECRET_KEY": "sk-Zq9'x\"$HOME`id`",
    "DB_PASSWORD": "db pass; rm -rf /",
    "REDIS_PASSWORD": "redis/pa:ss@word",
    "PGVECTOR_PASSWORD": "pgv-$(reboot)",
    "SANDBOX_API_KEY": "sandbox-key-123",
    "PLUGIN_DAEMON_KEY": "plugin-daemon-key-456",
    "PLUGIN_DIFY_INNER_API_KEY": "inner-key-789",
}
VARS: dict[str, object] = {
    "DIFY_VERSION": "1.0.0",
    "DB_HOST": "10.10.0.3",
    "REDIS_HOST": "10.10.0.4",
    "PGVECTOR_HOST": "10.10.0.5",
    "GOOGLE_STORAGE_BUCKET_NAME": "dify-files",
}
EIGHT = {"nginx", "web", "api", "worker", "worker_beat", "sandbox", "plugin_daemon", "ssrf_proxy"}


@pytest.fixture(scope="module")
def source() -> bundle.Source:
    return bundle.load_source(COMPOSE)


def host_vars(beat: bool = False, root: str = "/opt/fleet/dify") -> dict[str, object]:
    return {**VARS, **bundle.host_variables(root, ["app", "beat"] if beat else ["app"], 80)}


def render(source: bundle.Source, beat: bool = False, **overrides: object) -> bundle.Bundle:
    return bundle.render(source, {**host_vars(beat), **overrides}, SECRETS, META, where="app-1")


# --------------------------------------------------------------------------- the compose stack


def compose_doc() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())


def test_stack_has_the_eight_services_and_no_bundled_data_layer() -> None:
    services = compose_doc()["services"]
    assert set(services) == EIGHT
    text = (COMPOSE / "docker-compose.yaml").read_text()
    for bundled in ("postgres:", "redis:", "weaviate", "pgvector/pgvector", "db_postgres"):
        assert bundled not in text


def test_every_service_restarts_rotates_logs_and_runs_an_init() -> None:
    for svc_name, svc in compose_doc()["services"].items():
        assert svc["restart"] == "unless-stopped", svc_name
        assert svc["init"] is True, svc_name
        # logging comes from logging.yaml's template for LOG_DRIVER; a service's own `logging:`
        # would merge its options into the template's and break the other driver
        assert svc["extends"] == {"file": "logging.yaml", "service": "${LOG_DRIVER:-json-file}"}, svc_name
        assert "logging" not in svc, svc_name


def test_logging_templates_rotate_on_disk_for_both_drivers() -> None:
    templates = yaml.safe_load((COMPOSE / "logging.yaml").read_text())["services"]
    assert set(templates) == {"json-file", "gcplogs"}
    assert templates["json-file"]["logging"] == {
        "driver": "json-file",
        "options": {"max-size": "${LOG_MAX_SIZE:-50m}", "max-file": "${LOG_MAX_FILE:-5}"},
    }
    gcp = templates["gcplogs"]["logging"]
    assert gcp["driver"] == "gcplogs"
    # only options gcplogs accepts (it refuses json-file's max-size), the local cache bounded alike
    assert gcp["options"]["cache-max-size"] == "${LOG_MAX_SIZE:-50m}"
    assert gcp["options"]["cache-max-file"] == "${LOG_MAX_FILE:-5}"
    assert gcp["options"]["labels"].split(",") == [
        "com.docker.compose.project",
        "com.docker.compose.service",
        "com.docker.compose.project.working_dir",
    ]
    assert "gcp-project" not in gcp["options"]  # the VM's own project, from the metadata server


def test_healthchecks_where_there_are_health_endpoints() -> None:
    services = compose_doc()["services"]
    checked = {n for n, s in services.items() if "healthcheck" in s}
    assert checked == {"api", "web", "sandbox", "plugin_daemon", "nginx", "ssrf_proxy"}
    assert services["api"]["healthcheck"]["test"][:3] == ["CMD", "curl", "-fsS"]
    assert services["api"]["healthcheck"]["test"][-1] == "http://localhost:5001/health"
    assert services["plugin_daemon"]["healthcheck"]["test"][-1] == "http://localhost:5002/health/check"
    assert services["sandbox"]["healthcheck"]["test"][-1] == "http://localhost:8194/health"
    # nginx's own check must not depend on the drain flag
    nginx_test = " ".join(services["nginx"]["healthcheck"]["test"])
    assert "/nginx-health" in nginx_test and "/health " not in nginx_test + " "
    for svc in checked:
        hc = services[svc]["healthcheck"]
        assert hc["interval"] == "${HEALTHCHECK_INTERVAL:-30s}"
        assert hc["start_interval"] == "${HEALTHCHECK_START_INTERVAL:-2s}"


def test_images_are_per_service_variables_with_upstream_defaults() -> None:
    images = {n: s["image"] for n, s in compose_doc()["services"].items()}
    assert images["api"] == images["worker"] == images["worker_beat"]
    assert images["api"].startswith("${API_IMAGE:-langgenius/dify-api}:${DIFY_VERSION:?")
    assert images["web"].startswith("${WEB_IMAGE:-langgenius/dify-web}:${DIFY_VERSION:?")
    assert images["sandbox"] == "${SANDBOX_IMAGE:-langgenius/dify-sandbox}:${SANDBOX_VERSION:-0.2.12}"
    assert images["plugin_daemon"] == (
        "${PLUGIN_DAEMON_IMAGE:-langgenius/dify-plugin-daemon}:${PLUGIN_DAEMON_VERSION:-0.3.0-local}"
    )
    assert images["nginx"] == "${NGINX_IMAGE:-nginx}:${NGINX_VERSION:-1.27}"
    assert images["ssrf_proxy"] == "${SSRF_PROXY_IMAGE:-ubuntu/squid}:${SSRF_PROXY_VERSION:-latest}"


def test_worker_beat_is_a_profile_and_workers_get_a_grace_period() -> None:
    services = compose_doc()["services"]
    assert services["worker_beat"]["profiles"] == ["beat"]
    assert [n for n, s in services.items() if s.get("profiles")] == ["worker_beat"]
    for svc in ("worker", "worker_beat"):
        assert services[svc]["stop_grace_period"] == "${WORKER_STOP_GRACE_PERIOD:-60s}"


def test_persistent_data_is_outside_the_release_and_the_drain_dir_is_mounted_read_only() -> None:
    services = compose_doc()["services"]
    for svc_name, svc in services.items():
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            assert src.startswith(
                ("${FLEET_VOLUMES_DIR", "${FLEET_STATE_DIR", "./nginx/", "./ssrf_proxy/", "./certs")
            ), (
                svc_name,
                volume,
            )
            if src.startswith("./"):
                assert volume.endswith(":ro"), volume  # release files are config, never data
    assert "${FLEET_STATE_DIR:?FLEET_STATE_DIR must be set}:/fleet/state:ro" in services["nginx"]["volumes"]


def test_sandbox_egress_only_through_the_ssrf_proxy() -> None:
    doc = compose_doc()
    assert doc["networks"]["ssrf_proxy_network"]["internal"] is True
    on_internal = {n for n, svc in doc["services"].items() if "ssrf_proxy_network" in svc.get("networks", [])}
    assert on_internal == {"sandbox", "ssrf_proxy"}  # nothing else for sandboxed code to reach
    assert doc["services"]["sandbox"]["networks"] == ["ssrf_proxy_network"]
    assert set(doc["services"]["ssrf_proxy"]["networks"]) == {"ssrf_proxy_network", "default"}
    assert doc["services"]["api"]["environment"]["CODE_EXECUTION_ENDPOINT"] == "http://ssrf_proxy:8194"
    env = doc["services"]["sandbox"]["environment"]
    assert env["HTTP_PROXY"] == env["HTTPS_PROXY"] == "http://ssrf_proxy:3128"


def test_app_points_at_the_managed_data_layer() -> None:
    env = compose_doc()["services"]["api"]["environment"]
    assert env["VECTOR_STORE"] == "${VECTOR_STORE:-pgvector}"
    assert env["STORAGE_TYPE"] == "${STORAGE_TYPE:-google-storage}"
    assert env["DB_HOST"].startswith("${DB_HOST:?") and env["PGVECTOR_HOST"].startswith("${PGVECTOR_HOST:?")
    assert env["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert env["CELERY_BROKER_URL"].startswith("${CELERY_BROKER_URL:?")
    assert env["MODE"] == "api"


_DEFAULT_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-?])([^}]*))?\}")


def test_schema_and_compose_agree_on_names_defaults_and_required(source: bundle.Source) -> None:
    # the stack and the logging templates its services extend
    lines = [
        *(COMPOSE / "docker-compose.yaml").read_text().splitlines(),
        *(COMPOSE / "logging.yaml").read_text().splitlines(),
    ]
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    uses: dict[str, set[tuple[str, str]]] = {}
    for match in _DEFAULT_RE.finditer(text):
        uses.setdefault(match.group(1), set()).add((match.group(2) or "", match.group(3) or ""))
    declared = set(source.variables)
    # read by compose itself, or only an input of a derived value
    assert declared - set(uses) == {"COMPOSE_PROFILES", "CELERY_BROKER_DB"}
    assert set(uses) <= declared
    for var_name, forms in uses.items():
        var = source.variables[var_name]
        for op, arg in forms:
            if op == "-" and var.derived:
                # a derived value may be empty (no key = the VM's service account); the bundle renders it
                assert arg == "", f"{var_name}: derived, so compose cannot know a default ({arg!r})"
            elif op == "-":
                assert var.default == arg, f"{var_name}: compose default {arg!r} != schema {var.default!r}"
            elif op == "?":
                assert var.default is None, f"{var_name} is required in compose but has a schema default"
        if var.default is None and not var.derived:
            assert all(op == "?" for op, _ in forms), (
                f"{var_name}: required in the schema, defaulted in compose"
            )


def test_schema_marks_the_secrets(source: bundle.Source) -> None:
    marked = {v.name for v in source.schema if v.secret}
    assert marked == {
        "SECRET_KEY",
        "DB_PASSWORD",
        "REDIS_PASSWORD",
        "PGVECTOR_PASSWORD",
        "SANDBOX_API_KEY",
        "PLUGIN_DAEMON_KEY",
        "PLUGIN_DIFY_INNER_API_KEY",
        "GOOGLE_STORAGE_SERVICE_ACCOUNT_JSON_BASE64",
        "CELERY_BROKER_URL",
        "PLUGIN_GCS_CREDENTIALS",
    }
    assert all(v.description for v in source.schema)


# --------------------------------------------------------------------------- nginx and squid


def nginx_locations() -> dict[str, str]:
    text = (COMPOSE / "nginx/conf.d/default.conf").read_text()
    found = {}
    for match in re.finditer(r"location\s+(=\s+)?(\S+)\s*\{(.*?)\n    \}", text, re.S):
        found[(match.group(1) or "").strip() + match.group(2)] = match.group(3)
    return found


def test_nginx_routes_match_upstream_dify() -> None:
    locations = nginx_locations()
    upstream = {path: re.search(r"proxy_pass\s+([^;]+);", body) for path, body in locations.items()}
    targets = {path: m.group(1) for path, m in upstream.items() if m}
    for path in ("/console/api", "/api", "/v1", "/files", "/mcp", "/triggers"):
        assert targets[path] == "$api", path
    assert targets["/e/"] == "$plugin_daemon"
    assert targets["/explore"] == targets["/"] == "$web"
    text = (COMPOSE / "nginx/conf.d/default.conf").read_text()
    assert "set $api http://api:5001;" in text
    assert "set $web http://web:3000;" in text
    assert "set $plugin_daemon http://plugin_daemon:5002;" in text


def test_nginx_health_is_503_while_drained_else_the_api() -> None:
    body = nginx_locations()["=/health"]
    assert re.search(r"if \(-f /fleet/state/drain\) \{\s*return 503 ", body)
    assert "proxy_pass $api/health;" in body
    assert body.index("if (-f") < body.index("proxy_pass")
    assert "return 200" in nginx_locations()["=/nginx-health"]


def test_nginx_main_config_owns_port_80_alone() -> None:
    text = (COMPOSE / "nginx/nginx.conf").read_text()
    main = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "include /etc/nginx/conf.d/*.conf;" in main
    assert "sites-enabled" not in main and not re.search(r"^\s*user\s", main, re.M)
    # the include file must not be loaded as a server by *.conf
    assert not (COMPOSE / "nginx/conf.d/proxy.inc").name.endswith(".conf")


def test_squid_denies_private_link_local_and_metadata_before_allowing() -> None:
    lines = [
        line.split("#")[0].strip()
        for line in (COMPOSE / "ssrf_proxy/squid.conf").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    blocked = {line.split()[3] for line in lines if line.startswith("acl ssrf_blocked dst")}
    for net in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
        "::1",
    ):
        assert net in blocked, net
    assert "acl ssrf_metadata dstdomain metadata.google.internal metadata.goog metadata" in lines
    access = [line for line in lines if line.startswith("http_access")]
    assert access.index("http_access deny ssrf_blocked") < access.index("http_access allow localnet")
    assert access.index("http_access deny ssrf_metadata") < access.index("http_access allow localnet")
    assert access[-1] == "http_access deny all"
    # the sandbox reverse proxy: port 8194 only ever reaches the sandbox peer
    assert "http_port 8194 accel defaultsite=sandbox no-vhost name=sandbox_accel" in lines
    assert "cache_peer sandbox parent 8194 0 no-query no-digest originserver name=sandbox" in lines
    assert "never_direct allow sandbox_accel" in lines
    assert "cache_peer_access sandbox deny all" in lines


# --------------------------------------------------------------------------- rendering


def test_release_id_is_a_content_hash_independent_of_time_and_operator(source: bundle.Source) -> None:
    a = bundle.render(source, host_vars(), SECRETS, META)
    b = bundle.render(source, host_vars(), SECRETS, META2)
    assert re.fullmatch(r"[0-9a-f]{16}", a.release_id)
    assert a.release_id == b.release_id
    assert a.files[".env"] == b.files[".env"]
    assert a.files["release.json"] != b.files["release.json"]
    assert render(source, DIFY_VERSION="1.1.0").release_id != a.release_id
    changed = dict(SECRETS, DB_PASSWORD="rotated")
    assert bundle.render(source, host_vars(), changed, META).release_id != a.release_id


def test_release_json_records_version_id_created_operator_commit(source: bundle.Source) -> None:
    b = render(source)
    record = json.loads(b.files["release.json"].data)
    assert record["id"] == b.release_id and record["version"] == "1.0.0" == b.version
    assert record["created"] == META.created
    assert record["operator"] == META.operator
    assert record["source_commit"] == META.source_commit
    assert record["services"] == list(b.services)
    assert record["disabled_services"] == ["worker_beat"]
    assert set(record["files"]) == set(b.files) - {"release.json"}
    for secret in SECRETS.values():
        assert secret not in b.files["release.json"].data.decode()


def test_bundle_files_and_modes(source: bundle.Source) -> None:
    b = render(source)
    assert set(b.files) == {
        "docker-compose.yaml",
        "logging.yaml",
        "nginx/nginx.conf",
        "nginx/conf.d/default.conf",
        "nginx/conf.d/proxy.inc",
        "ssrf_proxy/squid.conf",
        "certs/README.md",
        "config-dirs",
        ".env",
        "release.json",
    }
    assert b.files[".env"].mode == 0o600
    assert {f.mode for p, f in b.files.items() if p != ".env"} == {0o644}
    # the compose file as written, but its config dirs mounted from content-addressed paths
    source_text = (COMPOSE / "docker-compose.yaml").read_text()
    names = dict(line.split() for line in b.files["config-dirs"].data.decode().splitlines())
    assert sorted(names) == ["certs", "nginx", "ssrf_proxy"]
    expected = source_text
    for d, n in names.items():
        expected = expected.replace(f"- ./{d}", f"- ../../config/{n}")
    assert b.files["docker-compose.yaml"].data.decode() == expected


def test_env_lists_every_schema_variable_in_order_with_secrets(source: bundle.Source) -> None:
    b = render(source)
    env = envfile.parse(b.files[".env"].data)
    assert list(env) == [v.name for v in source.schema]
    assert env == dict(b.env)
    for key, value in SECRETS.items():
        assert env[key] == value
    assert env["FLEET_VOLUMES_DIR"] == "/opt/fleet/dify/volumes"
    assert env["FLEET_STATE_DIR"] == "/opt/fleet/dify/state"
    assert env["EXPOSE_NGINX_PORT"] == "80"
    assert env["LOG_MAX_SIZE"] == "50m"  # defaults are rendered explicitly


def test_beat_only_on_the_beat_host_and_ids_differ(source: bundle.Source) -> None:
    beat = render(source, beat=True)
    plain = render(source)
    assert beat.env["COMPOSE_PROFILES"] == "beat" and plain.env["COMPOSE_PROFILES"] == ""
    assert "worker_beat" in beat.services and beat.disabled_services == ()
    assert "worker_beat" not in plain.services and plain.disabled_services == ("worker_beat",)
    assert set(plain.services) == EIGHT - {"worker_beat"}
    assert beat.release_id != plain.release_id
    assert set(plain.healthchecked) == {"api", "web", "sandbox", "plugin_daemon", "nginx", "ssrf_proxy"}


def test_celery_broker_url_is_derived_with_the_password_url_encoded(source: bundle.Source) -> None:
    b = render(source)
    assert b.env["CELERY_BROKER_URL"] == "redis://:redis%2Fpa%3Ass%40word@10.10.0.4:6379/1"
    tls = render(source, REDIS_USE_SSL=True, REDIS_PORT=6378, CELERY_BROKER_DB=2)
    assert tls.env["CELERY_BROKER_URL"] == "rediss://:redis%2Fpa%3Ass%40word@10.10.0.4:6378/2"
    assert tls.env["REDIS_USE_SSL"] == "true"
    given = bundle.render(source, host_vars(), {**SECRETS, "CELERY_BROKER_URL": "redis://x:y@h:1/3"}, META)
    assert given.env["CELERY_BROKER_URL"] == "redis://x:y@h:1/3"


def test_missing_variables_and_secrets_are_all_named_and_no_value_leaks(source: bundle.Source) -> None:
    partial = {k: v for k, v in host_vars().items() if k not in ("DB_HOST", "DIFY_VERSION")}
    some = {k: v for k, v in SECRETS.items() if k not in ("REDIS_PASSWORD", "SECRET_KEY")}
    with pytest.raises(FleetError) as err:
        bundle.render(source, partial, some, META, where="app-7")
    text = err.value.render()
    assert text.startswith("app-7: missing required variables DIFY_VERSION, DB_HOST")
    assert "secrets SECRET_KEY, REDIS_PASSWORD" in text
    assert "{env: VAR}, {file: PATH} or {secret_manager: NAME}" in text
    for value in some.values():
        assert value not in text


def test_an_empty_required_value_counts_as_missing(source: bundle.Source) -> None:
    with pytest.raises(FleetError, match="missing required variables DB_HOST"):
        render(source, DB_HOST="")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"DB_PASSWORD": "x"}, "DB_PASSWORD is a secret and cannot be set under vars"),
        ({"DB_HOTS": "x"}, "unknown variable DB_HOTS (did you mean DB_HOST?)"),
        ({"DIFY_VERSION": "1.0; rm -rf /"}, "DIFY_VERSION='1.0; rm -rf /' is not a Docker tag"),
        ({"DIFY_VERSION": "$(id)"}, "is not a Docker tag"),
        ({"API_IMAGE": "repo/dify-api:1.0"}, "is not an image repository"),
        ({"FLEET_VOLUMES_DIR": "relative/dir"}, "is not an absolute, normalised path"),
        ({"FLEET_STATE_DIR": "/opt/../etc"}, "is not an absolute, normalised path"),
        ({"EXPOSE_NGINX_PORT": 70000}, "is not a TCP port"),
        ({"HEALTHCHECK_INTERVAL": "soon"}, "is not a duration"),
        ({"MIGRATION_ENABLED": "yes"}, "is not true or false"),
        ({"DB_HOST": "10.0.0.1\nINJECTED=1"}, "contains a control character"),
        ({"DB_HOST": ["a", "b"]}, "must be a string, number or boolean"),
        ({"COMPOSE_PROFILES": "*"}, "is not profile names"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(
    source: bundle.Source, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(FleetError) as err:
        render(source, **overrides)
    assert message in err.value.render()
    assert err.value.where == "app-1"


def test_secret_rules(source: bundle.Source) -> None:
    with pytest.raises(FleetError, match="DB_HOST is not a secret variable"):
        bundle.render(source, host_vars(), {**SECRETS, "DB_HOST": "x"}, META)
    with pytest.raises(FleetError, match="unknown secret DB_PASSWROD"):
        bundle.render(source, host_vars(), {**SECRETS, "DB_PASSWROD": "x"}, META)
    with pytest.raises(FleetError) as err:
        bundle.render(source, host_vars(), {**SECRETS, "DB_PASSWORD": "two\nlines"}, META)
    assert "two" not in err.value.render() and "DB_PASSWORD" in err.value.render()


def test_masked_env_and_secret_values(source: bundle.Source) -> None:
    b = render(source)
    masked = b.masked_env()
    for key in SECRETS:
        assert masked[key] == "******"
    assert masked["CELERY_BROKER_URL"] == "******"
    assert masked["GOOGLE_STORAGE_SERVICE_ACCOUNT_JSON_BASE64"] == ""  # empty: nothing to hide
    assert masked["DB_HOST"] == "10.10.0.3"
    assert set(b.secret_values()) == {*SECRETS.values(), b.env["CELERY_BROKER_URL"]}
    shown = repr(b) + json.dumps(masked)
    for value in b.secret_values():
        assert value not in shown


def test_host_variables() -> None:
    assert bundle.host_variables("/srv/app", ["beat"], 8080) == {
        "FLEET_VOLUMES_DIR": "/srv/app/volumes",
        "FLEET_STATE_DIR": "/srv/app/state",
        "COMPOSE_PROFILES": "beat",
        "EXPOSE_NGINX_PORT": "8080",
    }
    with pytest.raises(FleetError):
        bundle.host_variables("srv/app")


def test_release_meta_is_validated_and_local_meta_reads_git() -> None:
    with pytest.raises(FleetError, match="invalid created time"):
        bundle.ReleaseMeta("a", "b", "yesterday")
    with pytest.raises(FleetError, match="invalid operator"):
        bundle.ReleaseMeta("a\nb", "c", "2026-11-26T07:00:00Z")
    meta = bundle.local_meta("carol", now=datetime(2026, 11, 26, 8, 0, 0, tzinfo=UTC))
    assert meta.operator == "carol" and meta.created == "2026-11-26T08:00:00Z"
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", meta.source_commit)


# --------------------------------------------------------------------------- tar


def test_tar_is_deterministic_and_round_trips(source: bundle.Source) -> None:
    b = render(source)
    data = b.tar_bytes()
    assert data == render(source).tar_bytes()
    assert b.size == len(data) and data
    assert files_from_tar(data) == b.file_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members[".env"].mode == 0o600 and members["docker-compose.yaml"].mode == 0o644
    assert members["nginx"].isdir() and members["nginx/conf.d"].isdir()
    assert {m.mtime for m in members.values()} == {1795676400}  # META.created
    assert list(members) == sorted(members, key=lambda n: (not members[n].isdir(), n))


def test_checksums_cover_every_file(source: bundle.Source) -> None:
    b = render(source)
    sums = b.checksums()
    assert set(sums) == set(b.files)
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in sums.values())


def test_files_from_tar_refuses_escaping_paths() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../etc/passwd")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(FleetError, match="unsafe path"):
        files_from_tar(buf.getvalue(), where="app-1")
    with pytest.raises(FleetError, match="not a release archive"):
        files_from_tar(b"garbage" * 100)


# --------------------------------------------------------------------------- diff


def assert_no_secret(text: str, values: object) -> None:
    for value in values:  # type: ignore[attr-defined]
        assert value not in text, f"secret {value[:3]}... leaked"


def test_diff_same_release_is_empty(source: bundle.Source) -> None:
    b = render(source)
    d = bundle.diff(b, render(source))
    assert d.empty and d.render().endswith(": no changes")


def test_diff_shows_version_and_masks_secret_changes(source: bundle.Source) -> None:
    old = render(source)
    new = bundle.render(
        source, {**host_vars(), "DIFY_VERSION": "1.1.0"}, {**SECRETS, "DB_PASSWORD": "n3w-pw"}, META
    )
    d = bundle.diff(old.file_bytes(), new)
    changes = {c.key: c for c in d.env}
    assert set(changes) == {"DIFY_VERSION", "DB_PASSWORD"}
    assert (changes["DIFY_VERSION"].old, changes["DIFY_VERSION"].new) == ("'1.0.0'", "'1.1.0'")
    assert (changes["DB_PASSWORD"].old, changes["DB_PASSWORD"].new) == ("******", "****** (changed)")
    text = d.render() + json.dumps(d.as_dict())
    assert "DIFY_VERSION : '1.0.0' -> '1.1.0'" in text
    assert d.old_id == old.release_id and d.old_version == "1.0.0" and d.new_version == "1.1.0"
    assert_no_secret(text, [*SECRETS.values(), "n3w-pw", old.env["CELERY_BROKER_URL"]])


def test_diff_against_a_fresh_host_and_a_changed_compose_file(source: bundle.Source, tmp_path: Path) -> None:
    new = render(source)
    fresh = bundle.diff(None, new)
    assert fresh.old_id is None and not fresh.empty
    assert {c.change for c in fresh.env} == {"added"}
    assert_no_secret(fresh.render(), new.secret_values())

    copy = tmp_path / "compose"
    shutil.copytree(COMPOSE, copy)
    conf = copy / "nginx/conf.d/default.conf"
    conf.write_text(conf.read_text().replace("proxy_read_timeout 3600s;", "proxy_read_timeout 600s;"))
    changed = bundle.render(bundle.load_source(copy), host_vars(), SECRETS, META)
    d = bundle.diff(new, changed)
    # the nginx file, and the new content address of nginx/ (in the mounts and in config-dirs)
    paths = [path for path, _ in d.files]
    assert paths == ["config-dirs", "docker-compose.yaml", "nginx/conf.d/default.conf"]
    shown = dict(d.files)
    conf_diff = shown["nginx/conf.d/default.conf"]
    assert "-    proxy_read_timeout 3600s;" in conf_diff and "+    proxy_read_timeout 600s;" in conf_diff
    old_nginx = bundle.config_dir_name("nginx", new.files)
    new_nginx = bundle.config_dir_name("nginx", changed.files)
    assert old_nginx != new_nginx
    assert f"-      - ../../config/{old_nginx}/conf.d:/etc/nginx/conf.d:ro" in shown["docker-compose.yaml"]
    assert f"+      - ../../config/{new_nginx}/conf.d:/etc/nginx/conf.d:ro" in shown["docker-compose.yaml"]
    assert "certs" not in shown["docker-compose.yaml"] and "ssrf_proxy" not in shown["docker-compose.yaml"]
    assert d.env == ()


def test_diff_masks_secretish_keys_unknown_to_the_schema(source: bundle.Source) -> None:
    new = render(source)
    old = new.file_bytes()
    old[".env"] = old[".env"] + b"LEGACY_API_TOKEN='tok-very-secret'\nOLD_PLAIN='visible'\n"
    d = bundle.diff(old, new)
    removed = {c.key: c for c in d.env}
    # unknown to the schema: masked by default, whatever the name looks like
    assert removed["LEGACY_API_TOKEN"].old == "******" and removed["OLD_PLAIN"].old == "******"
    assert "tok-very-secret" not in d.render() and "visible" not in d.render()


# --------------------------------------------------------------------------- source checks


def test_compose_using_an_undeclared_variable_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "compose"
    shutil.copytree(COMPOSE, copy)
    path = copy / "docker-compose.yaml"
    path.write_text(path.read_text().replace("${LOG_LEVEL:-INFO}", "${LOG_LEVLE:-INFO}"))
    with pytest.raises(FleetError, match=r"uses LOG_LEVLE, not declared in env\.schema\.yaml"):
        bundle.load_source(copy)


def test_invalid_compose_yaml_and_generated_files_in_the_source_are_refused(tmp_path: Path) -> None:
    copy = tmp_path / "compose"
    shutil.copytree(COMPOSE, copy)
    (copy / "docker-compose.yaml").write_text("services: [unclosed\n")
    with pytest.raises(FleetError, match="not valid YAML"):
        bundle.load_source(copy)
    (copy / "docker-compose.yaml").write_text("version: '3'\n")
    with pytest.raises(FleetError, match="no `services` mapping"):
        bundle.load_source(copy)
    shutil.copy(COMPOSE / "docker-compose.yaml", copy / "docker-compose.yaml")
    (copy / "release.json").write_text("{}")
    with pytest.raises(FleetError, match="generated by the bundle"):
        bundle.load_source(copy)
    (copy / "release.json").unlink()
    (copy / "link.conf").symlink_to("/etc/passwd")
    with pytest.raises(FleetError, match="is a symlink"):
        bundle.load_source(copy)


def test_schema_errors_are_explained() -> None:
    with pytest.raises(FleetError, match="unknown keys"):
        bundle.parse_schema("variables:\n  A:\n    description: x\n    secrte: true\n")
    with pytest.raises(FleetError, match="unknown kind"):
        bundle.parse_schema("variables:\n  A:\n    description: x\n    kind: number\n")
    with pytest.raises(FleetError, match="default 'x' is not a whole number"):
        bundle.parse_schema("variables:\n  A:\n    description: d\n    kind: int\n    default: x\n")
    with pytest.raises(FleetError, match="needs a mapping with a description"):
        bundle.parse_schema("variables:\n  A: {}\n")


# --------------------------------------------------------------------------- .env quoting


HOSTILE = [
    "plain",
    "",
    "with space",
    "it's",
    'dq"inside',
    "$HOME and ${HOME} and $$",
    "back\\slash\\n",
    "hash # not a comment",
    "'; rm -rf / #",
    "`id` $(id)",
    "tab\tinside",
    "ünïcødé",
    "mixed 'single' and \"double\" and $var and \\",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_env_values_round_trip(value: str) -> None:
    data = envfile.render({"K": value})
    assert envfile.parse(data) == {"K": value}


def test_env_quoting_forms() -> None:
    assert envfile.quote("K", "a $b") == "'a $b'"
    assert envfile.quote("K", 'it\'s $x "q" \\') == '"it\'s \\$x \\"q\\" \\\\"'
    with pytest.raises(FleetError, match="control character"):
        envfile.quote("K", "a\rb")
    with pytest.raises(FleetError):
        envfile.render({"BAD-KEY": "x"})
    with pytest.raises(FleetError, match="line 2 is not KEY=value"):
        envfile.parse("A='1'\nnot a line\n")


# --------------------------------------------------------------------------- secret resolution


def test_secrets_from_env_and_files(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/redis.txt").write_text("from-file\n")
    absolute = tmp_path / "abs.txt"
    absolute.write_text("abs-value")
    got = secrets.resolve(
        {
            "DB_PASSWORD": {"env": "MY_DB_PW"},
            "REDIS_PASSWORD": {"file": "secrets/redis.txt"},
            "SECRET_KEY": {"file": str(absolute)},
        },
        base_dir=tmp_path,
        environ={"MY_DB_PW": "from-env"},
    )
    assert got == {"DB_PASSWORD": "from-env", "REDIS_PASSWORD": "from-file", "SECRET_KEY": "abs-value"}


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"env": "NOPE_NOT_SET"}, "secret DB_PASSWORD: environment variable NOPE_NOT_SET is not set"),
        ({"file": "missing.txt"}, "secret DB_PASSWORD: file {tmp}/missing.txt does not exist"),
        ({"file": "empty.txt"}, "secret DB_PASSWORD: file {tmp}/empty.txt is empty"),
        ({"vault": "x"}, "secret DB_PASSWORD: unknown reference"),
        ("plain-value-in-inventory", "secret DB_PASSWORD: unknown reference"),
        ({"env": ""}, "secret DB_PASSWORD: env must be a non-empty string"),
    ],
)
def test_secret_sources_missing_are_named(tmp_path: Path, ref: object, message: str) -> None:
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(FleetError) as err:
        secrets.resolve({"DB_PASSWORD": ref}, base_dir=tmp_path, environ={}, where="app-2")
    assert message.format(tmp=tmp_path) in err.value.render()
    assert err.value.where == "app-2"


# --------------------------------------------------------------------------- content-addressed config dirs


def _files(compose: str, **extra: str) -> dict[str, bundle.SourceFile]:
    files = {"docker-compose.yaml": bundle.SourceFile(compose.encode(), 0o644)}
    files.update({path: bundle.SourceFile(text.encode(), 0o644) for path, text in extra.items()})
    return files


def test_config_mounts_get_the_same_path_for_the_same_content_in_every_release(source: bundle.Source) -> None:
    one, two = render(source), render(source, DIFY_VERSION="1.1.0")
    assert one.release_id != two.release_id
    mounts = {
        name: svc.get("volumes", [])
        for name, svc in yaml.safe_load(two.files["docker-compose.yaml"].data)["services"].items()
    }
    nginx = bundle.config_dir_name("nginx", one.files)
    assert nginx == bundle.config_dir_name("nginx", two.files) and re.fullmatch(r"nginx-[0-9a-f]{16}", nginx)
    assert f"../../config/{nginx}/nginx.conf:/etc/nginx/nginx.conf:ro" in mounts["nginx"]
    # a relative source stays a relative source (resolved against the release dir by Compose), and none
    # is left pointing into the release: a switch no longer changes their paths
    relative = [v for vols in mounts.values() for v in vols if isinstance(v, str) and v.startswith(".")]
    assert relative and all(v.startswith("../../config/") for v in relative), relative
    assert one.files["docker-compose.yaml"] == two.files["docker-compose.yaml"]
    assert one.files["config-dirs"] == two.files["config-dirs"]
    # a byte or a mode of a file in the dir is a new address; another dir's file is not
    changed = dict(one.files)
    changed["nginx/nginx.conf"] = bundle.SourceFile(one.files["nginx/nginx.conf"].data + b"#", 0o644)
    assert bundle.config_dir_name("nginx", changed) != nginx
    changed["nginx/nginx.conf"] = bundle.SourceFile(one.files["nginx/nginx.conf"].data, 0o755)
    assert bundle.config_dir_name("nginx", changed) != nginx
    changed = dict(one.files)
    changed["ssrf_proxy/squid.conf"] = bundle.SourceFile(b"other", 0o644)
    assert bundle.config_dir_name("nginx", changed) == nginx


def test_only_carried_dirs_mounted_relative_are_rewritten_long_syntax_too() -> None:
    compose = (
        "services:\n"
        "  a:\n"
        "    image: x\n"
        "    volumes:\n"
        "      - ./conf/a.conf:/a.conf:ro\n"
        '      - "./conf:/all:ro"\n'
        "      - ./missing:/m\n"  # not in the bundle: left alone
        "      - /abs/conf:/abs\n"
        "      - type: bind\n"
        "        source: ./other\n"
        "        target: /o\n"
        "    env_file: ./conf/env\n"  # not a mount: left alone
    )
    out = bundle.content_addressed(_files(compose, **{"conf/a.conf": "1", "conf/env": "E=1", "other/x": "2"}))
    conf = bundle.config_dir_name("conf", out)
    other = bundle.config_dir_name("other", out)
    text = out["docker-compose.yaml"].data.decode()
    assert f"      - ../../config/{conf}/a.conf:/a.conf:ro\n" in text
    assert f'      - "../../config/{conf}:/all:ro"\n' in text
    assert f"        source: ../../config/{other}\n" in text
    assert "      - ./missing:/m\n" in text and "    env_file: ./conf/env\n" in text
    assert out["config-dirs"].data.decode() == f"conf {conf}\nother {other}\n"


def test_a_stack_without_relative_mounts_is_left_as_is_and_an_unrewritable_one_is_refused() -> None:
    plain = _files("services:\n  a:\n    image: x\n    volumes: [/abs:/abs]\n", **{"conf/a": "1"})
    assert bundle.content_addressed(plain) == plain
    flow = _files("services:\n  a:\n    image: x\n    volumes: [./conf:/c]\n", **{"conf/a": "1"})
    with pytest.raises(FleetError, match="cannot rewrite the bind mounts of conf"):
        bundle.content_addressed(flow)


def test_the_manifest_name_is_reserved_in_the_source(tmp_path: Path) -> None:
    copy = tmp_path / "compose"
    shutil.copytree(COMPOSE, copy)
    (copy / "config-dirs").write_text("nginx /etc\n")
    with pytest.raises(FleetError, match="config-dirs is generated by the bundle"):
        bundle.load_source(copy)
