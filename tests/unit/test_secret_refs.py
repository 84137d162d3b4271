"""`{secret_manager: ...}` references: the forms, their validation, and reading them (latest pinned to a
number) through the operator's client against the Secret Manager stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.errors import FleetError
from fleet.gcp.secretmanager import SecretManager
from fleet.release import secrets
from fleet.release.secrets import SecretVersionRef
from standins.secretmanager_api import LocalSecretManager


@pytest.fixture
def api() -> Iterator[LocalSecretManager]:
    with LocalSecretManager() as api:
        yield api


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("db", SecretVersionRef("home", "db", "latest")),
        ("db/versions/3", SecretVersionRef("home", "db", "3")),
        ("db_Pass-2/versions/latest", SecretVersionRef("home", "db_Pass-2", "latest")),
        ("projects/other/secrets/db", SecretVersionRef("other", "db", "latest")),
        ("projects/other/secrets/db/versions/12", SecretVersionRef("other", "db", "12")),
    ],
)
def test_reference_forms(source: str, expected: SecretVersionRef) -> None:
    assert secrets.parse_secret_manager(source, project="home") == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("bad.name", "invalid secret name 'bad.name'"),
        ("x" * 256, "invalid secret name"),
        ("db/versions/0", "invalid version '0'"),
        ("db/versions/newest", "invalid version 'newest'"),
        ("db/extra", "not a Secret Manager reference"),
        ("projects/Bad_Project/secrets/db", "not a Secret Manager reference"),
    ],
)
def test_bad_references_are_named(source: str, message: str) -> None:
    with pytest.raises(FleetError) as err:
        secrets.parse_secret_manager(source, project="home", key="DB_PASSWORD", where="app-1")
    assert message in err.value.what and err.value.what.startswith("secret DB_PASSWORD:")
    assert err.value.where == "app-1"


def test_a_short_name_needs_a_project() -> None:
    with pytest.raises(FleetError, match="needs a project") as err:
        secrets.resolve({"K": {"secret_manager": "db"}}, environ={})
    assert err.value.hint is not None and "gce.project" in err.value.hint


def test_resolve_pinned_pins_latest_and_mixes_forms(api: LocalSecretManager, tmp_path: Path) -> None:
    api.put("home", "db", "old-db")
    api.put("home", "db", "new-db")
    api.put("shared", "smtp", "smtp-1")
    (tmp_path / "redis.txt").write_text("from-file\n")
    values, pinned = secrets.resolve_pinned(
        {
            "DB_PASSWORD": {"secret_manager": "db"},
            "OLD_DB": {"secret_manager": "db/versions/1"},
            "SMTP_PASSWORD": {"secret_manager": "projects/shared/secrets/smtp/versions/latest"},
            "REDIS_PASSWORD": {"file": "redis.txt"},
            "API_KEY": {"env": "MY_KEY"},
        },
        base_dir=tmp_path,
        environ={"MY_KEY": "from-env"},
        project="home",
        client=SecretManager(api.url),
    )
    assert values == {
        "DB_PASSWORD": "new-db",
        "OLD_DB": "old-db",
        "SMTP_PASSWORD": "smtp-1",
        "REDIS_PASSWORD": "from-file",
        "API_KEY": "from-env",
    }
    assert pinned == {
        "DB_PASSWORD": "projects/home/secrets/db/versions/2",
        "OLD_DB": "projects/home/secrets/db/versions/1",
        "SMTP_PASSWORD": "projects/shared/secrets/smtp/versions/1",
    }
    assert {"new-db", "old-db", "smtp-1"} <= set(secrets.known())  # masked from now on


def test_resolve_reads_the_endpoint_from_the_environment(
    api: LocalSecretManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.put("home", "db", "env-endpoint-value")
    monkeypatch.setenv("FLEET_SECRETMANAGER_ENDPOINT", api.url)
    got = secrets.resolve({"DB_PASSWORD": {"secret_manager": "db"}}, environ={}, project="home")
    assert got == {"DB_PASSWORD": "env-endpoint-value"}


def test_missing_and_disabled_secrets_name_the_secret_not_a_value(api: LocalSecretManager) -> None:
    client = SecretManager(api.url)
    with pytest.raises(FleetError) as missing:
        ref = {"DB_PASSWORD": {"secret_manager": "nope"}}
        secrets.resolve(ref, project="home", client=client, where="app-1")
    text = missing.value.render()
    assert "secret DB_PASSWORD: projects/home/secrets/nope/versions/latest: not found" in text
    assert "fab secrets.push" in text and missing.value.where == "app-1"
    name = api.put("home", "off", "disabled-value-xyz")
    version = api._version("home", "off", "1")  # disable it through the API's own path
    assert version["state"] == "ENABLED"
    api.dispatch("POST", f"/v1/{name}:disable", {}, {})
    with pytest.raises(FleetError) as disabled:
        secrets.resolve({"K": {"secret_manager": "off/versions/1"}}, project="home", client=client)
    assert "DISABLED" in disabled.value.render() and "disabled-value-xyz" not in disabled.value.render()


def test_a_permission_error_says_which_role(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.api_core import exceptions as gexc

    client = SecretManager("http://127.0.0.1:9")

    class Denied:
        def access_secret_version(self, name: str) -> None:
            raise gexc.PermissionDenied("denied")

    monkeypatch.setattr(client, "_client", Denied())
    with pytest.raises(FleetError) as err:
        secrets.resolve({"K": {"secret_manager": "db"}}, project="home", client=client)
    assert err.value.hint is not None and "roles/secretmanager.secretAccessor" in err.value.hint


def test_secrets_module_imports_no_google_library_at_module_level() -> None:
    import subprocess
    import sys

    heavy = ("google.cloud.secretmanager", "google.api_core", "google.auth", "fleet.gcp")
    code = f"import sys, fleet.release.secrets; print(any(m.startswith({heavy!r}) for m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert r.stdout.strip() == "False"
