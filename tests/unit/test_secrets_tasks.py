"""`fleet secrets.push` / `fleet secrets.list` through the installed program, against the Secret Manager
stand-in: versions are added, names are printed, values never are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from standins.secretmanager_api import LocalSecretManager

FLEET = Path(sys.executable).with_name("fleet")
DB_VALUE = "db-value-Zq81"
SMTP_VALUE = "smtp-value-Kp02"


@pytest.fixture
def api() -> Iterator[LocalSecretManager]:
    with LocalSecretManager() as api:
        yield api


@pytest.fixture
def inv(tmp_path: Path) -> Path:
    path = tmp_path / "inv"
    path.mkdir()
    (path / "hosts.yaml").write_text(yaml.safe_dump({"web-1": {"hostname": "10.0.0.5"}}))
    data = {
        "gce": {"project": "home-proj"},
        "secrets": {
            "DB_PASSWORD": {"secret_manager": "db"},
            "SMTP_PASSWORD": {"secret_manager": "projects/shared-proj/secrets/smtp/versions/1"},
            "REDIS_PASSWORD": {"env": "SOME_VAR"},
        },
    }
    (path / "defaults.yaml").write_text(yaml.safe_dump({"data": data}))
    return path


def fleet(
    api: LocalSecretManager, *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the installed program."""
    r = subprocess.run(
        [str(FLEET), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FLEET_SECRETMANAGER_ENDPOINT": api.url, **(env or {})},
        check=False,
    )
    return r.returncode, r.stdout, r.stderr


def test_push_one_from_stdin_then_all_from_env_and_list(api: LocalSecretManager, inv: Path) -> None:
    push = ("secrets.push", "--inventory", str(inv))
    rc, out, err = fleet(api, *push, "--name", "DB_PASSWORD", "--value-file", "-", stdin=DB_VALUE + "\n")
    assert rc == 0, err
    assert "DB_PASSWORD -> projects/home-proj/secrets/db/versions/1 (created the secret)" in out
    got = api._access("home-proj", "db", "latest")
    assert (
        got["name"].endswith("/versions/1") and got["payload"]["data"] == "ZGItdmFsdWUtWnE4MQ=="
    )  # no newline

    env = {"DB_PASSWORD": DB_VALUE + "-2", "SMTP_PASSWORD": SMTP_VALUE}
    rc, out, err = fleet(api, *push, "--all-from-env", "--json", env=env)
    assert rc == 0, err
    assert DB_VALUE not in out + err and SMTP_VALUE not in out + err
    pushed = {e["key"]: e for e in json.loads(out)["pushed"]}
    assert pushed["DB_PASSWORD"]["version"] == "projects/home-proj/secrets/db/versions/2"
    assert pushed["SMTP_PASSWORD"]["version"] == "projects/shared-proj/secrets/smtp/versions/1"
    assert "pins versions/1" in pushed["SMTP_PASSWORD"]["warning"]
    assert "REDIS_PASSWORD" not in pushed  # an env reference is not Secret Manager's

    rc, out, err = fleet(api, "secrets.list", "--inventory", str(inv))
    assert rc == 0, err
    assert "DB_PASSWORD" in out and "latest 2 ENABLED, 2 version(s)" in out
    assert DB_VALUE not in out + err and SMTP_VALUE not in out + err


def test_push_refuses_before_anything_is_written(api: LocalSecretManager, inv: Path) -> None:
    push = ("secrets.push", "--inventory", str(inv))
    rc, _, err = fleet(api, *push, "--all-from-env", env={"DB_PASSWORD": DB_VALUE})
    assert rc == 2 and "environment variables not set: SMTP_PASSWORD" in err and "nothing was pushed" in err
    assert DB_VALUE not in err
    rc, _, err = fleet(api, *push, "--name", "REDIS_PASSWORD", "--from-env", "X")
    assert rc == 2 and "not a Secret Manager reference" in err
    rc, _, err = fleet(api, *push)
    assert rc == 2 and "say what to push" in err
    assert api.calls() == []


def test_dry_run_changes_nothing(api: LocalSecretManager, inv: Path) -> None:
    api.put("home-proj", "db", "old")
    args = ("--name", "DB_PASSWORD", "--from-env", "NEW_DB", "--dry-run")
    rc, out, err = fleet(api, "secrets.push", "--inventory", str(inv), *args, env={"NEW_DB": DB_VALUE})
    assert rc == 0, err
    assert "DB_PASSWORD -> projects/home-proj/secrets/db: would add a version (latest now: " in out
    assert DB_VALUE not in out + err
    assert api.calls("secrets.addVersion") == []
