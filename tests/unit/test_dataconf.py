"""The configuration surface: image pairing (compose/releases.yaml), pass-through of upstream variables
(compose/upstream-env.yaml), TLS settings to the data layer, and the database connection budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.errors import FleetError
from fleet.inventory import load
from fleet.release import budget, bundle, derived, envfile, pairing, passthrough, sealed, tls
from fleet.release import hoststeps as ht

META = bundle.ReleaseMeta(operator="ci", source_commit="c0ffee", created="2026-11-26T07:00:00Z")
# resolved secrets are remembered process-wide (fleet.release.secrets.remember) and masked in every later
# error text of the worker: long values that no other test's text contains
SECRET_ENV = {
    "T_SECRET_KEY": "dataconf-sk-1a",
    "T_DB_PASSWORD": "dataconf-db-pw-2b",
    "T_REDIS_PASSWORD": "dataconf-redis-pw-3c",
    "T_PGVECTOR_PASSWORD": "dataconf-pgv-pw-4d",
    "T_SANDBOX_API_KEY": "dataconf-sandbox-5e",
    "T_PLUGIN_DAEMON_KEY": "dataconf-plugin-6f",
    "T_PLUGIN_DIFY_INNER_API_KEY": "dataconf-inner-7g",
}
VARS = {
    "DIFY_VERSION": "1.1.0",
    "DB_HOST": "10.20.0.3",
    "REDIS_HOST": "10.20.0.5",
    "PGVECTOR_HOST": "10.20.0.4",
    "GOOGLE_STORAGE_BUCKET_NAME": "files",
}


@pytest.fixture(scope="module")
def source() -> bundle.Source:
    return bundle.load_source()


def inventory(tmp_path: Path, data: dict[str, Any] | None = None, **hosts: Any) -> Any:
    refs = {k.removeprefix("T_"): {"env": k} for k in SECRET_ENV}
    base: dict[str, Any] = {"vars": dict(VARS), "secrets": refs, "roles": ["app"]}
    for key, value in (data or {}).items():
        base[key] = {**base[key], **value} if isinstance(base.get(key), dict) else value
    inv = tmp_path / "inv"
    inv.mkdir(exist_ok=True)
    (inv / "hosts.yaml").write_text(yaml.safe_dump(hosts or {"h1": {"data": {"roles": ["app", "beat"]}}}))
    (inv / "defaults.yaml").write_text(yaml.safe_dump({"data": base}))
    return load(str(inv))


def render(source: bundle.Source, inv: Any, host: str = "h1", env: dict[str, str] | None = None) -> Any:
    return ht.bundle_for(inv, inv.hosts[host], source, META, environ={**SECRET_ENV, **(env or {})})


# --------------------------------------------------------------------------- pairing


def test_unset_tags_come_from_the_manifest(source: bundle.Source, tmp_path: Path) -> None:
    b = render(source, inventory(tmp_path))
    assert (b.env["SANDBOX_VERSION"], b.env["PLUGIN_DAEMON_VERSION"]) == ("0.2.10", "0.0.5-local")
    b = render(source, inventory(tmp_path, {"vars": {"DIFY_VERSION": "1.3.1"}}))
    assert (b.env["SANDBOX_VERSION"], b.env["PLUGIN_DAEMON_VERSION"]) == ("0.2.11", "0.0.9-local")


def test_an_unknown_release_is_refused_naming_it_and_the_override(
    source: bundle.Source, tmp_path: Path
) -> None:
    with pytest.raises(FleetError) as err:
        render(source, inventory(tmp_path, {"vars": {"DIFY_VERSION": "1.2.0"}}))
    text = err.value.render()
    assert "DIFY_VERSION 1.2.0 has no sandbox / plugin-daemon pairing" in text
    assert "1.0.0, 1.1.0, 1.3.0-migration-fails, 1.3.1" in text and "allow_unpaired_images: true" in text
    assert text.startswith("h1: ")


def test_a_mismatched_tag_is_refused_unless_overridden(source: bundle.Source, tmp_path: Path) -> None:
    data = {"vars": {"PLUGIN_DAEMON_VERSION": "0.3.0-local"}}
    with pytest.raises(FleetError) as err:
        render(source, inventory(tmp_path, data))
    assert "DIFY_VERSION 1.1.0 is paired with sandbox 0.2.10 and plugin daemon 0.0.5-local" in str(err.value)
    assert "PLUGIN_DAEMON_VERSION 0.3.0-local (paired: 0.0.5-local)" in str(err.value)
    b = render(source, inventory(tmp_path, {**data, "dify": {"allow_unpaired_images": True}}))
    assert (b.env["SANDBOX_VERSION"], b.env["PLUGIN_DAEMON_VERSION"]) == ("0.2.10", "0.3.0-local")
    # the override also lets an unknown release through with the schema's tags
    b = render(
        source,
        inventory(tmp_path, {"vars": {"DIFY_VERSION": "1.2.0"}, "dify": {"allow_unpaired_images": True}}),
    )
    assert b.version == "1.2.0"


def test_local_stand_in_tags_pair_with_every_release(source: bundle.Source, tmp_path: Path) -> None:
    data = {"vars": {"DIFY_VERSION": "9.9.9", "SANDBOX_VERSION": "local", "PLUGIN_DAEMON_VERSION": "local"}}
    b = render(source, inventory(tmp_path, data))
    assert (b.env["SANDBOX_VERSION"], b.env["PLUGIN_DAEMON_VERSION"]) == ("local", "local")


def test_the_rollout_version_override_is_paired_too(source: bundle.Source, tmp_path: Path) -> None:
    inv = inventory(tmp_path)
    b = ht.bundle_for(inv, inv.hosts["h1"], source, META, {"DIFY_VERSION": "1.0.0"}, environ=SECRET_ENV)
    assert b.env["PLUGIN_DAEMON_VERSION"] == "0.0.3-local"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("releases: {1.10: {sandbox: '1', plugin_daemon: '2'}}", "must be a quoted string"),
        ("releases: {'1.0': {sandbox: '1'}}", "exactly `sandbox` and `plugin_daemon`"),
        ("releases: {'1.0': {sandbox: 'a b', plugin_daemon: '2'}}", "is not a Docker tag"),
        ("pairs: {}", "expected `releases:"),
    ],
)
def test_a_malformed_manifest_is_refused(text: str, message: str) -> None:
    with pytest.raises(FleetError, match=message):
        pairing.parse_manifest(text)


# --------------------------------------------------------------------------- pass-through


def test_pass_through_values_reach_their_services_only(source: bundle.Source, tmp_path: Path) -> None:
    data = {
        "dify": {
            "env_extra": {
                "MAIL_TYPE": "smtp",
                "SMTP_SERVER": "smtp.example.com",
                "SMTP_PORT": 465,
                "SMTP_USE_TLS": True,
                "UPLOAD_FILE_SIZE_LIMIT": 50,
                "NEXT_PUBLIC_COOKIE_DOMAIN": "example.com",
                "PLUGIN_AWS_REGION": "eu-west-1",
            }
        },
        "secrets": {"SMTP_PASSWORD": {"env": "T_SMTP"}, "PLUGIN_AWS_SECRET_KEY": {"env": "T_AWS"}},
    }
    b = render(
        source, inventory(tmp_path, data), env={"T_SMTP": "smtp-$ecret'", "T_AWS": "dataconf-aws-secret-9i"}
    )
    env = envfile.parse(b.files[".env"].data)
    assert env["MAIL_TYPE"] == "smtp" and env["SMTP_PORT"] == "465" and env["SMTP_USE_TLS"] == "true"
    assert env["SMTP_PASSWORD"] == "smtp-$ecret'" and env["PLUGIN_AWS_SECRET_KEY"] == "dataconf-aws-secret-9i"
    doc = yaml.safe_load(b.files["docker-compose.yaml"].data)
    for svc in ("api", "worker", "worker_beat"):
        app = doc["services"][svc]["environment"]
        assert app["MAIL_TYPE"] == "${MAIL_TYPE}" and app["SMTP_PASSWORD"] == "${SMTP_PASSWORD}", svc
        assert "NEXT_PUBLIC_COOKIE_DOMAIN" not in app and "AWS_REGION" not in app
        assert app["MODE"]  # the anchor's merge still works
    web = doc["services"]["web"]["environment"]
    assert web["NEXT_PUBLIC_COOKIE_DOMAIN"] == "${NEXT_PUBLIC_COOKIE_DOMAIN}" and "SMTP_PASSWORD" not in web
    daemon = doc["services"]["plugin_daemon"]["environment"]
    assert daemon["AWS_REGION"] == "${PLUGIN_AWS_REGION}"
    assert daemon["AWS_SECRET_KEY"] == "${PLUGIN_AWS_SECRET_KEY}"
    # without pass-through the compose file is the source's, byte for byte, but for its config mounts
    # (content-addressed: bundle.content_addressed)
    plain = render(source, inventory(tmp_path))
    as_is = bundle.content_addressed(source.files)["docker-compose.yaml"].data
    assert plain.files["docker-compose.yaml"].data == as_is
    assert b"- ./nginx/" in source.files["docker-compose.yaml"].data and b"- ./nginx/" not in as_is
    # secrets: masked, sealed by reference, and in no file but .env
    assert {"SMTP_PASSWORD", "PLUGIN_AWS_SECRET_KEY"} <= b.secret_keys
    assert b.masked_env()["SMTP_PASSWORD"] == bundle.MASK and b.masked_env()["MAIL_TYPE"] == "smtp"
    for path, f in b.files.items():
        if path != ".env":
            assert b"smtp-$ecret" not in f.data and b"dataconf-aws-secret-9i" not in f.data, path
    with pytest.raises(FleetError, match="SMTP_PASSWORD"):
        sealed.seal(
            {p: (f.data, f.mode) for p, f in b.files.items()},
            b.env,
            b.secret_keys,
            {},
            release_id=b.release_id,
            version=b.version,
        )


def test_the_release_changes_with_a_pass_through_value(source: bundle.Source, tmp_path: Path) -> None:
    a = render(source, inventory(tmp_path, {"dify": {"env_extra": {"MAIL_TYPE": "smtp"}}}))
    b = render(source, inventory(tmp_path, {"dify": {"env_extra": {"MAIL_TYPE": "resend"}}}))
    assert a.release_id != b.release_id
    text = bundle.diff(a, b).render()
    assert "~ MAIL_TYPE" in text and "'smtp' -> 'resend'" in text


@pytest.mark.parametrize(
    ("extra", "secrets", "message"),
    [
        (
            {"MAIL_TIPE": "smtp"},
            {},
            "MAIL_TIPE is not an upstream Dify variable of this stack's services (did you mean MAIL_TYPE?)",
        ),
        ({"DB_HOST": "x"}, {}, "DB_HOST is declared in compose/env.schema.yaml: set it under data.vars"),
        ({"SMTP_PASSWORD": "plain"}, {}, "SMTP_PASSWORD is a secret: set it under data.secrets"),
        ({"SENTRY_DSN": "https://k@sentry.io/1"}, {}, "SENTRY_DSN is a secret"),
        ({"SMTP_USE_TLS": "maybe"}, {}, "SMTP_USE_TLS='maybe' is not true or false"),
        ({"SMTP_PORT": "99999"}, {}, "SMTP_PORT='99999' is not a TCP port"),
        ({"MARKETPLACE_API_URL": "not a url"}, {}, "is not a URL"),
        (
            {"POSTGRES_MAX_CONNECTIONS": "100"},
            {},
            "POSTGRES_MAX_CONNECTIONS is not an upstream Dify variable",
        ),
        ({}, {"REDIS_SSL_KEYFILE_X": {"env": "T_X"}}, "REDIS_SSL_KEYFILE_X is not an upstream"),
    ],
)
def test_bad_pass_through_is_refused_by_name(
    source: bundle.Source, tmp_path: Path, extra: dict[str, Any], secrets: dict[str, Any], message: str
) -> None:
    data: dict[str, Any] = {"dify": {"env_extra": extra}}
    if secrets:
        data["secrets"] = secrets
    with pytest.raises(FleetError) as err:
        render(source, inventory(tmp_path, data), env={"T_X": "dataconf-t-x-value"})
    assert message in str(err.value)
    assert "h1: pass-through variables refused" in str(err.value)


def test_every_problem_is_named_at_once(source: bundle.Source) -> None:
    assert source.catalog is not None
    with pytest.raises(FleetError) as err:
        passthrough.build(
            source.catalog, source.compose, source.variables, {"A_B": "1", "MAIL_TIPE": "x"}, {}
        )
    assert "A_B is not" in str(err.value) and "MAIL_TIPE is not" in str(err.value)


def test_a_name_the_compose_file_fixes_is_refused(source: bundle.Source) -> None:
    """compose's `environment` wins over env_file: a pass-through of the same name would do nothing."""
    catalog = passthrough.parse_catalog(
        "groups: {app: {names: [CODE_EXECUTION_ENDPOINT]}, sandbox: {names: [X=GIN_MODE]}}"
    )
    for name in ("CODE_EXECUTION_ENDPOINT", "X"):
        with pytest.raises(FleetError, match=f"{name} is fixed by compose/docker-compose.yaml"):
            passthrough.build(catalog, source.compose, source.variables, {name: "v"}, {})


def test_the_catalog_knows_no_schema_variable(source: bundle.Source) -> None:
    """A name in both would be ambiguous (vars or env_extra?): the schema owns it."""
    assert source.catalog is not None
    assert not set(source.catalog.known()) & set(source.variables)


def test_the_catalog_and_manifest_never_go_into_a_release(source: bundle.Source) -> None:
    assert not {"releases.yaml", "upstream-env.yaml", "env.schema.yaml"} & set(source.files)


def test_a_compose_file_without_the_marker_is_refused() -> None:
    extra = passthrough.Extra({"MAIL_TYPE": "smtp"}, frozenset(), {"app": {"MAIL_TYPE": "MAIL_TYPE"}})
    with pytest.raises(FleetError, match="no `# fleet: pass-through app` line"):
        passthrough.render_compose("services:\n  api:\n    environment:\n      A: b\n", extra)
    text = "x: &e\n  A: b\n  # fleet: pass-through app\nservices: {}\n"
    assert yaml.safe_load(passthrough.render_compose(text, extra))["x"] == {
        "A": "b",
        "MAIL_TYPE": "${MAIL_TYPE}",
    }


# --------------------------------------------------------------------------- TLS to the data layer

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def with_ca(source: bundle.Source, name: str = "memorystore-ca.pem", data: bytes = CA) -> bundle.Source:
    from dataclasses import replace

    return replace(source, files={**source.files, f"certs/{name}": bundle.SourceFile(data, 0o644)})


def test_memorystore_tls_with_its_ca(source: bundle.Source, tmp_path: Path) -> None:
    data = {
        "vars": {
            "REDIS_PORT": 6378,
            "REDIS_USE_SSL": True,
            "REDIS_SSL_CERT_REQS": "CERT_REQUIRED",
            "REDIS_SSL_CA_CERTS": "/fleet/certs/memorystore-ca.pem",
            "DB_SSL_MODE": "verify-ca",
            "DB_SSL_ROOT_CERT": "/fleet/certs/memorystore-ca.pem",
        }
    }
    b = render(with_ca(source), inventory(tmp_path, data))
    assert b.env["CELERY_BROKER_URL"].startswith("rediss://:dataconf-redis-pw-3c@10.20.0.5:6378/")
    assert b.env["DB_PLUGIN_SSL_MODE"] == "require"
    assert b.files["certs/memorystore-ca.pem"].data == CA


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"REDIS_USE_SSL": True, "REDIS_SSL_CERT_REQS": "CERT_REQUIRED"},
            "CERT_REQUIRED needs REDIS_SSL_CA_CERTS",
        ),
        ({"DB_SSL_MODE": "verify-full"}, "DB_SSL_MODE=verify-full needs DB_SSL_ROOT_CERT"),
        ({"DB_SSL_ROOT_CERT": "/fleet/certs/none.pem"}, "compose/certs/none.pem does not exist"),
        ({"DB_SSL_ROOT_CERT": "/etc/ssl/ca.pem"}, "is not a file under /fleet/certs/"),
        ({"REDIS_SSL_CA_CERTS": "/fleet/certs/README.md"}, "holds no PEM certificate"),
        ({"DB_SSL_MODE": "on"}, "is not a libpq sslmode"),
        ({"REDIS_SSL_CERT_REQS": "required"}, "is not CERT_NONE, CERT_OPTIONAL or CERT_REQUIRED"),
    ],
)
def test_tls_settings_that_cannot_work_are_refused(
    source: bundle.Source, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(FleetError, match=message.replace(".", r"\.")):
        render(source, inventory(tmp_path, {"vars": values}))


@pytest.mark.parametrize(
    ("mode", "daemon"),
    [
        ("disable", "disable"),
        ("allow", "disable"),
        ("prefer", "disable"),
        ("require", "require"),
        ("verify-ca", "require"),
        ("verify-full", "require"),
    ],
)
def test_the_plugin_daemon_gets_the_ssl_mode_it_knows(mode: str, daemon: str) -> None:
    assert derived.plugin_ssl_mode({"DB_SSL_MODE": mode}) == daemon


def test_the_default_keeps_libpq_behaviour(source: bundle.Source, tmp_path: Path) -> None:
    b = render(source, inventory(tmp_path))
    assert (b.env["DB_SSL_MODE"], b.env["DB_SSL_ROOT_CERT"], b.env["DB_PLUGIN_SSL_MODE"]) == (
        "prefer",
        "",
        "disable",
    )
    tls.check(b.env, b.files)  # nothing to refuse


# --------------------------------------------------------------------------- connection budget


def test_budget_arithmetic_per_process_and_instance() -> None:
    env = {
        "SERVER_WORKER_AMOUNT": "4",
        "SQLALCHEMY_POOL_SIZE": "30",
        "SQLALCHEMY_MAX_OVERFLOW": "10",
        "CELERY_WORKER_AMOUNT": "8",
        "PLUGIN_DB_MAX_OPEN_CONNS": "30",
        "PGVECTOR_MAX_CONNECTION": "5",
    }
    main, vector = budget.compute([env], 10, db_limit=1000, pgvector_limit=500)
    # api 4 x 40 x 10 + worker (gevent: one process) 1 x 40 x 10 + daemon 30 x 10 + beat 40
    assert main.total == 1600 + 400 + 300 + 40 and main.status == "OVER"
    assert "exceeds max_connections 1000" in (main.warning() or "")
    assert vector.total == (4 + 1) * 5 * 10 and vector.status == "ok" and vector.warning() is None
    prefork = budget.compute([{**env, "CELERY_WORKER_CLASS": "prefork"}], 10)[0]
    assert prefork.lines[1].processes == 8 and prefork.status == "no limit given"
    auto = {**env, "CELERY_WORKER_CLASS": "prefork", "CELERY_AUTO_SCALE": "true", "CELERY_MAX_WORKERS": "12"}
    assert budget.worker_processes(auto) == 12


def test_budget_warns_near_the_limit_and_takes_the_largest_host() -> None:
    small = {
        "SERVER_WORKER_AMOUNT": "1",
        "SQLALCHEMY_POOL_SIZE": "5",
        "SQLALCHEMY_MAX_OVERFLOW": "0",
        "PLUGIN_DB_MAX_OPEN_CONNS": "5",
    }
    big = {**small, "SERVER_WORKER_AMOUNT": "2"}
    (b,) = budget.compute([small, big], 2, db_limit=40, shared=True)
    # api 2x5x2 + worker 1x5x2 + daemon 5x2 + beat 5 + pgvector (2+1)x5x2 (default 5 per process)
    assert b.total == 20 + 10 + 10 + 5 + 30 and b.database == "main (with pgvector)"
    (b,) = budget.compute([small], 2, db_limit=40, shared=True)
    assert b.total == 10 + 10 + 10 + 5 + 20 and b.status == "OVER"
    (b,) = budget.compute([{**small, "PGVECTOR_MAX_CONNECTION": "1"}], 2, db_limit=40, shared=True)
    assert b.total == 39 and b.status == "near" and "within 20 %" in (b.warning() or "")
    assert "max_connections 40 (near)" in b.render()[0]


def test_budget_for_an_inventory_uses_the_fleets_largest_size(source: bundle.Source, tmp_path: Path) -> None:
    data = {
        "dify": {"db_max_connections": 500, "pgvector_max_connections": 100},
        "monitoring": {"scale": {"max": 6}},
    }
    inv = inventory(tmp_path, data, h1={"data": {"roles": ["app", "beat"]}}, h2={})
    bundles = {h: render(source, inv, h) for h in inv.hosts}
    main, vector = budget.for_inventory(inv, bundles)
    assert {line.instances for line in main.lines if line.what != "worker_beat"} == {6}
    # defaults: api 1 x 40, worker 1 x 40, daemon 30, per instance; beat 40 once
    assert main.total == (40 + 40 + 30) * 6 + 40 and main.limit == 500 and main.status == "OVER"
    assert vector.total == 2 * 5 * 6 and vector.limit == 100
    inv = inventory(tmp_path, {"dify": {"max_instances": 2}})
    (main, _) = budget.for_inventory(inv, {"h1": render(source, inv)})
    assert main.lines[0].instances == 2


def test_the_example_production_inventory_still_renders(source: bundle.Source) -> None:
    inv_dir = Path(bundle.COMPOSE_DIR).parent / "inventory" / "example-production"
    from fleet.inventory.schema import Data

    data = Data.model_validate(yaml.safe_load((inv_dir / "defaults.yaml").read_text())["data"])
    assert data.dify.db_max_connections is not None
    assert pairing.resolve(source.manifest, data.vars) == {  # type: ignore[arg-type]
        "SANDBOX_VERSION": "0.2.10",
        "PLUGIN_DAEMON_VERSION": "0.0.5-local",
    }


def test_the_dry_run_prints_the_budget_and_its_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fleet.cli import rollout as cli
    from fleet.view import rollout as view

    class Plan:
        def as_dict(self) -> dict[str, Any]:
            return {"rollout_id": "ro-1"}

    monkeypatch.setattr(view, "print_plan", lambda plan: print("PLAN"))
    env = {"SQLALCHEMY_POOL_SIZE": "30", "SQLALCHEMY_MAX_OVERFLOW": "10"}
    budgets = budget.compute([env], 10, db_limit=1000, pgvector_limit=800)
    cli._dry_run(Plan(), {}, False, budgets=budgets)
    out = capsys.readouterr().out
    assert out.index("PLAN") < out.index("database connections at the fleet's largest size:")
    assert "  main database: 1140 connections / max_connections 1000 (OVER)" in out
    assert "    api: 1 process(es) x 40 x 10 instance(s) = 400" in out
    assert "  pgvector database: 100 connections / max_connections 800 (ok)" in out
    assert "WARNING: the main database: 1140 connections at the fleet's largest size exceeds" in out
    assert out.rstrip().endswith("dry run: nothing was changed")
    cli._dry_run(Plan(), {}, True, budgets=budgets)
    payload = json.loads(capsys.readouterr().out)
    assert [(c["database"], c["total"], c["status"]) for c in payload["connections"]] == [
        ("main", 1140, "OVER"),
        ("pgvector", 100, "ok"),
    ]


def test_no_catalog_name_is_one_the_compose_file_fixes(source: bundle.Source) -> None:
    """Every listed name can really pass through: none lands on a name the service's `environment` sets."""
    assert source.catalog is not None
    fixed = passthrough.fixed_by_compose(source.compose)
    assert fixed["app"] >= {"CODE_EXECUTION_ENDPOINT", "PLUGIN_DAEMON_URL"}  # the check sees them
    clashes = [
        (name, group, container)
        for name in source.catalog.known()
        for group, container in source.catalog.targets(name).items()
        if container in fixed[group]
    ]
    assert clashes == []


def test_a_pass_through_secret_round_trips_through_the_store(source: bundle.Source, tmp_path: Path) -> None:
    """What a VM's agent does: the sealed release names the secret's version; unsealed with the value it
    reads, the files are byte for byte the operator's (checksums verified by unseal)."""
    data = {"secrets": {"SMTP_PASSWORD": {"env": "T_SMTP"}}, "dify": {"env_extra": {"MAIL_TYPE": "smtp"}}}
    b = render(source, inventory(tmp_path, data), env={"T_SMTP": "dataconf-smtp-pw-8h"})
    values = {k: v for k, v in b.env.items() if k in b.secret_keys and v and k != "CELERY_BROKER_URL"}
    refs = {k: f"projects/p/secrets/{k.lower().replace('_', '-')}/versions/1" for k in values}
    s = sealed.seal(
        {p: (f.data, f.mode) for p, f in b.files.items()},
        b.env,
        b.secret_keys,
        refs,
        release_id=b.release_id,
        version=b.version,
    )
    assert b"dataconf-smtp-pw-8h" not in s.archive and "dataconf-smtp-pw-8h" not in json.dumps(s.manifest)
    assert sealed.secret_refs(s.manifest)["SMTP_PASSWORD"].endswith("smtp-password/versions/1")
    files = sealed.unseal(s.manifest, s.archive, values)
    assert files[".env"][0] == b.files[".env"].data
    assert files["docker-compose.yaml"][0] == b.files["docker-compose.yaml"].data


# --------------------------------------------------------------------------- plugin storage in the bucket


def daemon_env(b: Any) -> dict[str, str]:
    """The plugin daemon's environment as Compose would resolve it from the release's .env."""
    doc = yaml.safe_load(b.files["docker-compose.yaml"].data)
    env = envfile.parse(b.files[".env"].data.decode())
    out = {}
    for key, value in doc["services"]["plugin_daemon"]["environment"].items():
        text = str(value)
        if text.startswith("${"):
            name = text[2:].split(":", 1)[0].rstrip("}")
            text = env[name]
        out[key] = text
    return out


def test_plugins_go_to_the_fleets_bucket_by_default(source: bundle.Source, tmp_path: Path) -> None:
    b = render(source, inventory(tmp_path))
    assert (b.env["PLUGIN_STORAGE_TYPE"], b.env["PLUGIN_STORAGE_OSS_BUCKET"]) == ("gcs", "files")
    assert b.env["PLUGIN_GCS_CREDENTIALS"] == ""  # the VM's own service account
    daemon = daemon_env(b)
    # the names upstream's plugin daemon reads
    assert daemon["PLUGIN_STORAGE_TYPE"] == "gcs"
    assert daemon["PLUGIN_STORAGE_OSS_BUCKET"] == "files"
    assert daemon["GCS_CREDENTIALS"] == ""


def test_plugin_storage_shares_the_file_storage_key_and_masks_it(
    source: bundle.Source, tmp_path: Path
) -> None:
    key = "ZGF0YWNvbmYtZ2NzLWtleS05aQ=="
    data = {"secrets": {"GOOGLE_STORAGE_SERVICE_ACCOUNT_JSON_BASE64": {"env": "T_GCS_KEY"}}}
    b = render(source, inventory(tmp_path, data), env={"T_GCS_KEY": key})
    assert b.env["PLUGIN_GCS_CREDENTIALS"] == key
    assert "PLUGIN_GCS_CREDENTIALS" in b.secret_keys
    assert b.masked_env()["PLUGIN_GCS_CREDENTIALS"] == bundle.MASK
    assert daemon_env(b)["GCS_CREDENTIALS"] == key
    # a VM's agent derives it from the file storage key's Secret Manager version: no second secret
    ref = "projects/p/secrets/gcs-key/versions/3"
    s = sealed.seal(
        {p: (f.data, f.mode) for p, f in b.files.items()},
        b.env,
        b.secret_keys,
        {k: ref.replace("gcs-key", k.lower()) for k in b.secret_keys if b.env.get(k)},
        release_id=b.release_id,
        version=b.version,
    )
    assert {"derived": "PLUGIN_GCS_CREDENTIALS"} not in s.manifest["env"]["lines"]  # it has its own ref here
    s2 = sealed.seal(
        {p: (f.data, f.mode) for p, f in b.files.items()},
        b.env,
        b.secret_keys,
        {k: ref for k in b.secret_keys if b.env.get(k) and k not in derived.DERIVED},
        release_id=b.release_id,
        version=b.version,
    )
    assert {"derived": "PLUGIN_GCS_CREDENTIALS"} in s2.manifest["env"]["lines"]
    values = {k: b.env[k] for k in sealed.secret_refs(s2.manifest)}
    files = sealed.unseal(s2.manifest, s2.archive, values)
    assert files[".env"][0] == b.files[".env"].data


def test_another_bucket_can_be_named(source: bundle.Source, tmp_path: Path) -> None:
    b = render(source, inventory(tmp_path, {"vars": {"PLUGIN_STORAGE_OSS_BUCKET": "dify-plugins"}}))
    assert (b.env["PLUGIN_STORAGE_OSS_BUCKET"], b.env["GOOGLE_STORAGE_BUCKET_NAME"]) == (
        "dify-plugins",
        "files",
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"PLUGIN_STORAGE_OSS_BUCKET": ""},
            "PLUGIN_STORAGE_TYPE is gcs but PLUGIN_STORAGE_OSS_BUCKET is empty",
        ),
        ({"PLUGIN_STORAGE_OSS_BUCKET": "Bad_Bucket"}, "is not a Cloud Storage bucket name"),
        ({"PLUGIN_STORAGE_OSS_BUCKET": "ab"}, "is not a Cloud Storage bucket name"),
        ({"PLUGIN_STORAGE_TYPE": "google-storage"}, "is not a plugin storage type"),
    ],
)
def test_plugin_storage_that_cannot_work_is_refused(
    source: bundle.Source, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(FleetError, match=message) as info:
        render(source, inventory(tmp_path, {"vars": values}))
    assert info.value.where == "h1"


def test_local_plugin_storage_needs_no_bucket(source: bundle.Source, tmp_path: Path) -> None:
    values = {"PLUGIN_STORAGE_TYPE": "local", "PLUGIN_STORAGE_OSS_BUCKET": ""}
    b = render(source, inventory(tmp_path, {"vars": values}))
    assert daemon_env(b)["PLUGIN_STORAGE_TYPE"] == "local"
    assert daemon_env(b)["PLUGIN_STORAGE_LOCAL_ROOT"] == "/app/storage"
