"""The local fleet's data services as data (fleet/local/dataservices.py, dockercmd.run_data): where they
sit, what the inventory is told, the configuration directory the container reads, when an existing
container is adopted; the stand-in images' schema revisions; the migration steps of the stand-in."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fleet.errors import FleetError
from fleet.local import dataservices, dockercmd, images, inventory_writer
from fleet.local.config import LocalConfig
from tests.fixtures.standin import load_standin


def config(tmp_path: Path, **kw: object) -> LocalConfig:
    return LocalConfig(root=tmp_path, **kw)  # type: ignore[arg-type]


def test_the_data_services_take_the_subnets_last_address(tmp_path: Path) -> None:
    assert dataservices.address(config(tmp_path)) == "10.213.0.254"
    assert dataservices.address(config(tmp_path, subnet="10.9.8.0/29")) == "10.9.8.6"
    with pytest.raises(FleetError, match="no room"):
        dataservices.address(config(tmp_path, subnet="10.9.8.0/31"))  # one address: the gateway


def test_the_inventory_points_the_stack_at_them(tmp_path: Path) -> None:
    cfg = config(tmp_path, subnet="10.50.0.0/24")
    schema = inventory_writer.schema_variables()
    got = inventory_writer.data_vars(cfg, schema)
    assert got == {
        "DB_HOST": "10.50.0.254",
        "DB_PORT": "5432",
        "PGVECTOR_HOST": "10.50.0.254",
        "PGVECTOR_PORT": "5432",
        "REDIS_HOST": "10.50.0.254",
        "REDIS_PORT": "6379",
        "DB_USERNAME": "dify",
        "DB_DATABASE": "dify",
        "DB_PLUGIN_DATABASE": "dify_plugin",
        "PGVECTOR_USER": "dify_vector",
        "PGVECTOR_DATABASE": "dify_vector",
    }
    assert schema is not None and all(k in schema and not schema[k].get("secret") for k in got)
    # the passwords are secrets the writer generates for every fleet (required by the schema)
    assert set(dataservices.SECRETS) <= set(inventory_writer.required_secrets(schema))


def test_the_inventory_says_whether_migrations_are_a_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    short = Path("/srv/ck")  # only named (the LB socket's path must stay short), never written
    assert inventory_writer.defaults_doc(config(short))["data"]["dify"] == {"migrations": "off"}
    monkeypatch.setenv("FLEET_LOCAL_MIGRATIONS", "phase")
    phase = LocalConfig.from_env(root=short)
    assert inventory_writer.defaults_doc(phase)["data"]["dify"] == {"migrations": "phase"}
    with pytest.raises(FleetError, match="invalid migrations setting 'always'"):
        config(short, migrations="always")


def secret_files(tmp_path: Path, **values: str) -> dict[str, Path]:
    out = {}
    for name in dataservices.SECRETS:
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(values.get(name, f"{name.lower()}-value") + "\n")
        out[name] = path
    return out


def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    paths = tuple(tmp_path / "in" / n for n in ("ca.pem", "cert.pem", "key.pem"))
    for path in paths:
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"-- {path.name} --\n")
    return paths  # type: ignore[return-value]


def test_the_configuration_directory_holds_copies_readable_by_root_only(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    digest = dataservices.write_conf(cfg, secret_files(tmp_path), tls_files(tmp_path))
    conf = dataservices.conf_dir(cfg)
    assert conf == cfg.state_dir / "data"
    assert (conf / "names.env").read_text().splitlines() == [
        f"{k}={v}" for k, v in dataservices.NAMES.items()
    ]
    assert (conf / "secrets" / "REDIS_PASSWORD").read_text() == "redis_password-value\n"
    assert (conf / "tls" / "server.key").read_text() == "-- key.pem --\n"
    for path in (conf / "secrets" / "DB_PASSWORD", conf / "tls" / "server.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(conf.stat().st_mode) == 0o700
    # the same inputs give the same digest; a changed password another
    assert dataservices.write_conf(cfg, secret_files(tmp_path), tls_files(tmp_path)) == digest
    changed = secret_files(tmp_path, DB_PASSWORD="rotated")
    assert dataservices.write_conf(cfg, changed, tls_files(tmp_path)) != digest
    with pytest.raises(FleetError, match="no value for REDIS_PASSWORD"):
        dataservices.write_conf(
            cfg, {k: v for k, v in changed.items() if k != "REDIS_PASSWORD"}, tls_files(tmp_path)
        )


def test_an_existing_container_is_adopted_only_when_this_fleet_made_it_alike(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    labels = dataservices.spec(cfg, "fleet-local/data:latest", "abc").labels
    assert dataservices.adoptable({"Config": {"Labels": dict(labels)}}, cfg, "abc") == ""
    assert "passwords, certificate or image changed" in dataservices.adoptable(
        {"Config": {"Labels": dict(labels)}}, cfg, "abd"
    )
    other = {**labels, dataservices.OWNER_LABEL: "/elsewhere/.fleet/local"}
    assert dataservices.adoptable({"Config": {"Labels": other}}, cfg, "abc") == (
        "made by the fleet in /elsewhere/.fleet/local"
    )
    assert dataservices.adoptable({"Config": {"Labels": {}}}, cfg, "abc") == "not made by a local fleet"


def test_the_data_container_command(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    argv = dockercmd.run_data(dataservices.spec(cfg, "fleet-local/data:latest", "abc"))
    assert argv[:3] == ["docker", "run", "--detach"]
    pairs = dict(zip(argv[3:-1:2], argv[4:-1:2], strict=False))
    assert pairs["--name"] == "fleet-local-data" and pairs["--network"] == "fleet-local"
    assert pairs["--ip"] == "10.213.0.254" and pairs["--restart"] == "unless-stopped"
    assert f"{cfg.state_dir / 'data'}:/fleet/data:ro" in argv
    assert "--publish" not in argv and "-e" not in argv  # nothing on this machine, no secret in its env
    assert f"fleet.local.owner={cfg.state_dir}" in argv and "fleet.local.data.inputs=abc" in argv
    assert argv[-1] == "fleet-local/data:latest"
    bad = dataservices.spec(cfg, "fleet-local/data:latest", "abc")
    with pytest.raises(ValueError):
        dockercmd.run_data(dockercmd.DataSpec(**{**bad.__dict__, "address": "10.0.0.1; rm"}))


def test_stand_in_images_carry_their_schema_revision_from_the_manifest(tmp_path: Path) -> None:
    by_ref = {s.ref: dict(s.build_args) for s in images.specs(config(tmp_path))}
    api = "fleet-registry:5000/dify-api:"
    assert by_ref[api + "1.0.0"]["SCHEMA"] == "dify-1.0.0" and by_ref[api + "1.1.0"]["SCHEMA"] == "dify-1.1.0"
    assert "SCHEMA" not in by_ref[api + "1.2.0-broken"] and "MIGRATION" not in by_ref[api + "1.1.0"]
    assert by_ref[api + "1.3.0-migration-fails"]["MIGRATION"] == "fail"
    data = next(s for s in images.specs(config(tmp_path)) if s.ref == images.DATA_IMAGE)
    assert data.standin is False and data.inputs == ("fleet-data-init",)


def test_the_stand_in_migration_steps() -> None:
    s = load_standin("standin_steps")
    steps = s.steps_to  # type: ignore[attr-defined]
    assert [n for n, _ in steps(None, "dify-1.0.0")] == ["dify-1.0.0"]
    assert [n for n, _ in steps(None, "dify-1.1.0")] == ["dify-1.0.0", "dify-1.1.0"]
    assert [n for n, _ in steps("dify-1.0.0", "dify-1.1.0")] == ["dify-1.1.0"]
    assert steps("dify-1.1.0", "dify-1.1.0") == [] and steps("dify-1.1.0", "dify-1.0.0") == []
    assert [n for n, _ in steps("dify-1.0.0", "dify-9.9.9")] == ["dify-1.1.0"]  # unknown target: all after
    assert steps("someone-elses", "dify-1.1.0") == []
    literal = s.literal  # type: ignore[attr-defined]
    assert literal("it's") == "'it''s'"
    with pytest.raises(s.DataError):  # type: ignore[attr-defined]
        literal("a\0b")


def test_a_fleet_with_its_google_services_points_the_storage_clients_at_its_bucket(tmp_path: Path) -> None:
    from fleet.local.config import FILES_BUCKET

    cfg = config(tmp_path, subnet="10.50.0.0/24")
    got = inventory_writer.storage_vars(cfg, inventory_writer.schema_variables())
    assert got == {
        "STORAGE_EMULATOR_HOST": "http://10.50.0.1:4443",
        "GOOGLE_STORAGE_BUCKET_NAME": FILES_BUCKET,
    }
    assert cfg.storage_endpoint == got["STORAGE_EMULATOR_HOST"]  # the stand-in vmservices serves there
    assert inventory_writer.storage_vars(cfg, {"GOOGLE_STORAGE_BUCKET_NAME": {}}) == {
        "GOOGLE_STORAGE_BUCKET_NAME": FILES_BUCKET
    }
