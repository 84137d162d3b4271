"""The stand-in images' use of the data layer (images/standin/standin.py), against real processes: a
PostgreSQL cluster (scram-sha-256, TLS) and a redis-server (AUTH, TLS listener) started here, no fleet.

The api's /health fails with the reason when its database is unreachable or refuses the credentials;
`flask upgrade-db` applies the release's schema revision once and counts its runs; beat enqueues into
Redis and a worker consumes; and the wire protocols themselves (SCRAM, sslmode, RESP, TLS)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from standins.logging_api import make_tls
from tests.fixtures.standin import STANDIN, load_standin

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PW = "standin-db-pw-7q"
REDIS_PW = "standin-redis-pw-8r"


S = load_standin()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pg:
    port: int
    ca: Path
    data: Path
    sock: Path

    def admin(self, sql: str) -> str:
        argv = ["psql", "-X", "-q", "-At", "-h", str(self.sock), "-p", str(self.port), "-U", "postgres"]
        proc = subprocess.run([*argv, "-d", "dify", "-c", sql], capture_output=True, text=True, check=True)
        return proc.stdout.strip()


def as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture(scope="module")
def pg() -> Iterator[Pg]:
    if not PG_BINS:
        pytest.skip(
            "no PostgreSQL server (Debian: apt-get install postgresql; `python -m fleet.hostsetup tests`)"
        )
    bindir = PG_BINS[-1].parent
    # not under pytest's temporary root (0700 root): the server runs as postgres when we are root
    root = Path(tempfile.mkdtemp(prefix="standin-pg-"))
    os.chmod(root, 0o755)
    tls = make_tls(root / "tls", ("localhost",))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (root, sock):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust"]
    subprocess.run(as_postgres([*initdb, "--auth-host=scram-sha-256"]), check=True, capture_output=True)
    key = data / "server.key"
    shutil.copy(tls.key, key)
    os.chmod(key, 0o600)
    if os.geteuid() == 0:
        os.chown(key, owner.pw_uid, owner.pw_gid)
    port = free_port()
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sock}'\n"
            f"ssl = on\nssl_cert_file = '{tls.cert}'\nssl_key_file = '{key}'\nfsync = off\n"
        )
    os.chmod(tls.cert.parent, 0o755)
    subprocess.run(
        as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        argv = ["psql", "-X", "-q", "-h", str(sock), "-p", str(port), "-U", "postgres", "-d", "postgres"]
        for sql in (f"CREATE ROLE dify LOGIN PASSWORD '{PW}'", "CREATE DATABASE dify OWNER dify"):
            subprocess.run([*argv, "-c", sql], check=True, capture_output=True)
        yield Pg(port, tls.ca_cert, data, sock)
    finally:
        subprocess.run(
            as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )


@dataclass
class RedisProc:
    port: int
    tls_port: int
    ca: Path


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProc]:
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip(
            "no redis-server (Debian: apt-get install redis-server; `python -m fleet.hostsetup tests`)"
        )
    root = tmp_path_factory.mktemp("redis")
    tls = make_tls(root / "tls", ("localhost",))
    port, tls_port = free_port(), free_port()
    conf = root / "redis.conf"
    conf.write_text(
        f"bind 127.0.0.1\nport {port}\ntls-port {tls_port}\ntls-cert-file {tls.cert}\n"
        f"tls-key-file {tls.key}\ntls-ca-cert-file {tls.ca_cert}\ntls-auth-clients no\n"
        f'requirepass "{REDIS_PW}"\nsave ""\nappendonly no\ndaemonize no\ndir {root}\n'
    )
    proc = subprocess.Popen([REDIS_SERVER, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                with S.Redis("127.0.0.1", port, password=REDIS_PW) as r:
                    if r.call("PING") == "PONG":
                        break
            except S.DataError:
                time.sleep(0.05)
        yield RedisProc(port, tls_port, tls.ca_cert)
    finally:
        proc.terminate()
        proc.wait(10)


def db_env(pg: Pg, **over: str) -> dict[str, str]:
    env = {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(pg.port),
        "DB_USERNAME": "dify",
        "DB_PASSWORD": PW,
        "DB_DATABASE": "dify",
        "PGSSLMODE": "prefer",
    }
    return {**env, **over}


def standin(tmp_path: Path, env: dict[str, str], *args: str, name: str = "standin") -> list[str]:
    """argv running the stand-in as the image does (`flask` is a link to it there)."""
    link = tmp_path / name
    if not link.exists():
        link.symlink_to(STANDIN)
    return [sys.executable, str(link), *args]


def run_env(env: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME")}
    return {**keep, "PYTHONDONTWRITEBYTECODE": "1", **env}


# --------------------------------------------------------------------------- PostgreSQL protocol


def test_scram_login_and_simple_queries(pg: Pg) -> None:
    with S.Postgres("127.0.0.1", pg.port, "dify", PW, "dify", sslmode="disable") as db:
        assert db.tls is False
        assert db.query("SELECT 1, NULL, 'it''s'") == [("1", None, "it's")]
        with pytest.raises(S.DataError, match="42601"):  # a syntax error; the connection stays usable
            db.query("SELEKT 1")
        assert db.query("SELECT current_user") == [("dify",)]
        assert db.query(f"SELECT {S.literal(chr(39) + 'x')}") == [("'x",)]
    # the server asked for SCRAM (the role's verifier is one), not for a cleartext or md5 password
    rules = "SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'host'"
    assert pg.admin(rules) == "scram-sha-256"
    assert pg.admin("SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'dify'") == "SCRAM-SHA-256$"


def test_sslmodes_as_libpq(pg: Pg) -> None:
    for mode in ("prefer", "require"):
        with S.Postgres("127.0.0.1", pg.port, "dify", PW, "dify", sslmode=mode) as db:
            assert db.tls is True and db.query(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ) == [("t",)]
    with S.Postgres(
        "localhost", pg.port, "dify", PW, "dify", sslmode="verify-full", sslrootcert=str(pg.ca)
    ) as db:
        assert db.tls is True
    with pytest.raises(S.DataError, match="certificate"):  # the certificate names localhost, not the IP
        S.Postgres("127.0.0.1", pg.port, "dify", PW, "dify", sslmode="verify-full", sslrootcert=str(pg.ca))
    with pytest.raises(S.DataError, match="sslmode 'bogus'"):
        S.Postgres("127.0.0.1", pg.port, "dify", PW, "dify", sslmode="bogus")


def test_wrong_credentials_and_unreachable_server(pg: Pg) -> None:
    with pytest.raises(S.DataError, match=r"28P01.*password authentication failed") as wrong:
        S.Postgres("127.0.0.1", pg.port, "dify", "not-the-password", "dify")
    assert "not-the-password" not in str(wrong.value)
    with pytest.raises(S.DataError, match="3D000"):
        S.Postgres("127.0.0.1", pg.port, "dify", PW, "no_such_db")
    with pytest.raises(S.DataError, match="cannot connect"):
        S.Postgres("127.0.0.1", free_port(), "dify", PW, "dify", timeout=1)


# --------------------------------------------------------------------------- Redis protocol


def test_redis_auth_and_tls(redis: RedisProc) -> None:
    with S.Redis("127.0.0.1", redis.port) as r, pytest.raises(S.DataError, match="NOAUTH"):
        r.call("SET", "k", "v")
    with pytest.raises(S.DataError, match=r"WRONGPASS|invalid password"):
        S.Redis("127.0.0.1", redis.port, password="wrong")
    with S.Redis("127.0.0.1", redis.port, password=REDIS_PW, db=3) as r:
        assert r.call("SET", "k", "v w") == "OK" and r.call("GET", "k") == "v w"
        assert r.call("GET", "absent") is None and r.call("INCR", "n") == 1
        assert r.call("LPUSH", "l", "a", "b") == 2 and r.call("LRANGE", "l", "0", "-1") == ["b", "a"]
    tls = S.Redis(
        "localhost",
        redis.tls_port,
        password=REDIS_PW,
        db=3,
        tls=True,
        cert_reqs="CERT_REQUIRED",
        ca_file=str(redis.ca),
    )
    with tls as r:
        assert r.call("GET", "k") == "v w"
    url = f"rediss://:{REDIS_PW}@127.0.0.1:{redis.tls_port}/3"
    with S.Redis.from_url(url) as r:  # CERT_NONE (upstream's default) without REDIS_SSL_* set
        assert r.call("GET", "k") == "v w"


# --------------------------------------------------------------------------- the api's /health


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def health_of(tmp_path: Path, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    port = free_port()
    full = run_env({"STANDIN_ROLE": "api", "STANDIN_VERSION": "1.1.0", "STANDIN_PORT": str(port), **env})
    proc = subprocess.Popen(
        standin(tmp_path, env), env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for _ in range(100):
            try:
                code, body = get(f"http://127.0.0.1:{port}/health")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        else:
            pytest.fail("the stand-in did not listen")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    return code, body, out


def test_health_follows_the_database(pg: Pg, tmp_path: Path) -> None:
    code, body, _ = health_of(tmp_path, db_env(pg))
    assert (code, body["status"], body["version"]) == (200, "ok", "1.1.0")

    code, body, log = health_of(tmp_path, db_env(pg, DB_PASSWORD="a-wrong-password"))
    assert code == 503 and "password authentication failed" in body["status"]
    assert body["status"].startswith("database unavailable: postgresql://dify@127.0.0.1")
    assert "password authentication failed" in log and "a-wrong-password" not in log + body["status"]

    code, body, _ = health_of(tmp_path, db_env(pg, DB_PORT=str(free_port())))
    assert code == 503 and "cannot connect" in body["status"]

    code, body, _ = health_of(tmp_path, db_env(pg, DB_DATABASE="other"))
    assert code == 503 and 'database "other" does not exist' in body["status"]


def test_health_without_a_database_setting_is_the_plain_stand_in(tmp_path: Path) -> None:
    code, body, _ = health_of(tmp_path, {})
    assert (code, body["status"]) == (200, "ok")


# --------------------------------------------------------------------------- flask upgrade-db


def upgrade(
    tmp_path: Path, pg: Pg, version: str, schema: str, **env: str
) -> subprocess.CompletedProcess[str]:
    full = run_env({**db_env(pg), "STANDIN_VERSION": version, "STANDIN_SCHEMA": schema, "MODE": "api", **env})
    return subprocess.run(
        standin(tmp_path, full, "upgrade-db", name="flask"),
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def runs(pg: Pg) -> list[str]:
    text = pg.admin(
        "SELECT version, coalesce(from_revision, '-'), to_revision, result "
        "FROM standin_migration_runs ORDER BY id"
    )
    return text.splitlines()


def test_upgrade_db_applies_each_revision_once_and_counts_runs(pg: Pg, tmp_path: Path) -> None:
    pg.admin("DROP TABLE IF EXISTS standin_items, standin_schema_version, standin_migration_runs")
    first = upgrade(tmp_path, pg, "1.0.0", "dify-1.0.0")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "none -> dify-1.0.0 applied" in first.stdout
    assert pg.admin("SELECT revision FROM standin_schema_version") == "dify-1.0.0"
    assert (
        pg.admin("SELECT count(*) FROM information_schema.columns WHERE table_name = 'standin_items'") == "3"
    )

    pg.admin("INSERT INTO standin_items (note) VALUES ('written by 1.0.0')")
    second = upgrade(tmp_path, pg, "1.1.0", "dify-1.1.0")
    assert second.returncode == 0 and "dify-1.0.0 -> dify-1.1.0 applied (steps: dify-1.1.0)" in second.stdout
    # backward compatible: the new column is nullable, 1.0.0's insert still works, old rows kept
    pg.admin("INSERT INTO standin_items (note) VALUES ('1.0.0 again')")
    assert pg.admin("SELECT count(*), count(label) FROM standin_items") == "2|0"

    again = upgrade(tmp_path, pg, "1.1.0", "dify-1.1.0")
    assert again.returncode == 0 and "already at this revision" in again.stdout
    older = upgrade(tmp_path, pg, "1.0.0", "dify-1.0.0")  # an older release's run changes nothing
    assert older.returncode == 0 and "database is at dify-1.1.0" in older.stdout

    failing = upgrade(tmp_path, pg, "1.3.0-migration-fails", "standin-1.3.0-fails", STANDIN_MIGRATION="fail")
    assert failing.returncode == 1 and "failed on purpose" in failing.stdout
    assert "the schema stays at dify-1.1.0" in failing.stdout
    assert pg.admin("SELECT revision FROM standin_schema_version") == "dify-1.1.0"

    wrong = upgrade(tmp_path, pg, "1.1.0", "dify-1.1.0", DB_PASSWORD="wrong-one")
    assert wrong.returncode == 1 and "password authentication failed" in wrong.stdout
    assert runs(pg) == [
        "1.0.0|-|dify-1.0.0|applied",
        "1.1.0|dify-1.0.0|dify-1.1.0|applied",
        "1.1.0|dify-1.1.0|dify-1.1.0|current",
        "1.0.0|dify-1.1.0|dify-1.0.0|current",
        "1.3.0-migration-fails|dify-1.1.0|standin-1.3.0-fails|failed",
    ]


def test_upgrade_db_without_a_revision_does_nothing(pg: Pg, tmp_path: Path) -> None:
    done = upgrade(tmp_path, pg, "1.2.0-broken", "")
    assert done.returncode == 0 and "records no schema revision" in done.stdout
    unknown = subprocess.run(
        standin(tmp_path, {}, "db", "heads", name="flask"),
        env=run_env({}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert unknown.returncode == 2 and "unknown command" in unknown.stdout


# --------------------------------------------------------------------------- beat -> Redis -> worker


def test_beat_enqueues_and_the_worker_consumes(redis: RedisProc, tmp_path: Path) -> None:
    with S.Redis("127.0.0.1", redis.port, password=REDIS_PW, db=5) as r:
        r.call("FLUSHDB")
    broker = {
        "CELERY_BROKER_URL": f"rediss://:{REDIS_PW}@localhost:{redis.tls_port}/5",
        "REDIS_SSL_CERT_REQS": "CERT_REQUIRED",
        "REDIS_SSL_CA_CERTS": str(redis.ca),
        "STANDIN_BEAT_SECONDS": "0.1",
        "STANDIN_TASK_SECONDS": "0.01",
        "STANDIN_VERSION": "1.1.0",
    }
    procs = [
        subprocess.Popen(
            standin(tmp_path, {}),
            env=run_env({**broker, "MODE": mode}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for mode in ("beat", "worker")
    ]
    try:
        with S.Redis("127.0.0.1", redis.port, password=REDIS_PW, db=5) as r:
            for _ in range(200):
                done = int(r.call("GET", S.DONE) or 0)
                if done >= 3:
                    break
                time.sleep(0.05)
            assert done >= 3
            assert int(r.call("GET", S.ENQUEUED) or 0) >= done
            by = r.call("HGETALL", S.DONE_BY)
            assert isinstance(by, list) and by[0] == socket.gethostname() and int(by[1]) >= 3
    finally:
        outs = []
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            outs.append(proc.communicate(timeout=10)[0])
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "beat: scheduled task 1" in outs[0] and "worker: task 1 done" in outs[1]
    assert REDIS_PW not in "".join(outs)


def test_an_unreachable_broker_is_retried_not_fatal(tmp_path: Path) -> None:
    port = free_port()
    env = run_env(
        {"MODE": "worker", "CELERY_BROKER_URL": f"redis://:x@127.0.0.1:{port}/0", "STANDIN_VERSION": "1"}
    )
    proc = subprocess.Popen(
        standin(tmp_path, {}), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    time.sleep(1.5)
    assert proc.poll() is None  # still running, retrying
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=10)[0]
    assert proc.returncode == 0 and out.count("broker unavailable") == 1 and "cannot connect" in out


def test_health_keeps_its_connection_and_reports_an_outage_after_a_grace(pg: Pg, tmp_path: Path) -> None:
    port = free_port()
    env = run_env(
        {"STANDIN_ROLE": "api", "STANDIN_VERSION": "1.1.0", "STANDIN_PORT": str(port), **db_env(pg)}
    )
    proc = subprocess.Popen(
        standin(tmp_path, env), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}/health"
    try:
        for _ in range(100):
            try:
                assert get(url)[0] == 200
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        time.sleep(1.1)
        assert get(url)[0] == 200  # the second check reuses the connection: one backend, not one per check
        assert pg.admin("SELECT count(*) FROM pg_stat_activity WHERE usename = 'dify'") == "1"
        # an outage: the connection is cut and new logins are refused
        pg.admin("ALTER ROLE dify PASSWORD 'changed-meanwhile'")
        pg.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'dify'")
        time.sleep(1.1)
        assert get(url)[0] == 200  # within the grace: not yet reported
        deadline = time.monotonic() + 10
        while (answer := get(url))[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert answer[0] == 503 and "password authentication failed" in answer[1]["status"]
    finally:
        pg.admin(f"ALTER ROLE dify PASSWORD '{PW}'")
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=10)[0]
    assert "not yet reported" in out
