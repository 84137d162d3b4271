"""Developer and CI entry points. `nox -s tests` is what .ci/run and the README run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests"]

PYTHON = "3.11"


# every tool environment installs exactly these versions (the tested set); `nox -s lock` renews it
LOCK = "requirements-dev.lock"
COMPILE = {"UV_COMPILE_BYTECODE": "1", "PIP_COMPILE": "1"}


def _install(session: nox.Session) -> None:
    # bytecode is compiled at install: the environment sets PYTHONDONTWRITEBYTECODE, and without .pyc
    # files every `fab` start-up would re-parse fabric and paramiko (0.3 s instead of 0.14 s)
    session.install("-r", LOCK, env=COMPILE)
    session.install("--no-deps", "-e", ".", env=COMPILE)
    # an editable install compiles nothing of the project itself: without this every `fab` (and every
    # test that starts one) re-parsed fleet/ from source, ~0.15 s of CPU per start (issue 17 profile)
    session.run("python", "-m", "compileall", "-q", "-j", "0", "fleet", "functions", silent=True)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite: unit, real-sshd integration, local fleet, functions. Installs what it needs."""
    _install(session)
    session.run("python", "-m", "fleet.hostsetup", "tests")
    if session.posargs:
        session.run("pytest", *session.posargs)
        return
    # The tests without a local fleet (real sshd, stand-ins, functions servers) run in 3 worker
    # processes; the local-fleet tests in one process, one fleet at a time. The fleet tests marked
    # `loadproof` (zero failed requests under load, heal and scale timings, CPU shares) have the machine
    # to themselves; the shared fleet's functional tests (deploy, lifecycle, the stack) run beside the
    # workers, which would otherwise leave the fleet idle for ~3 minutes. The shared fleet stays up
    # between those two fleet runs (FLEET_LOCAL_KEEP), for the rollout proofs that use it too.
    # Test modules' assertion rewrites are cached as .pyc, which a PYTHONDONTWRITEBYTECODE environment
    # forbids: every pytest process re-rewrote all of them (~9 s of CPU).
    # The slowest tests of each run are printed: the suite's time budget (docs/PERFORMANCE.md) is watched.
    cache = {"PYTHONDONTWRITEBYTECODE": ""}
    modules = _fleet_modules()
    # the engine first: a test without a fleet that looks at this machine's Docker must not see it start
    session.run("python", "-c", "from fleet.local.engine import ensure_engine; ensure_engine()")
    unit_log = Path(session.create_tmp()) / "tests-without-a-fleet.log"
    with unit_log.open("w") as out:
        unit = subprocess.Popen(
            [str(Path(session.bin) / "pytest"), "-n", "3", "-m", "not localfleet", "--durations=10", "tests"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **cache, "PATH": session.bin + os.pathsep + os.environ.get("PATH", "")},
        )
    shared_ok = False
    try:
        session.run(
            "pytest", "-m", "localfleet and not loadproof", "--durations=10", *modules,
            env={**cache, "FLEET_LOCAL_KEEP": "1"}, success_codes=[0, 5],
        )  # fmt: skip
        shared_ok = True
    finally:
        code = unit.wait()
        session.log(f"tests without a fleet (ran beside the fleet's functional tests), exit {code}:")
        print(unit_log.read_text(), flush=True)
        if not shared_ok:  # nothing will use the kept shared fleet: take it down
            session.run("fab", "local.down", success_codes=[0, 1, 2])
    if code != 0:
        session.error(f"the tests without a fleet failed (exit {code}): their output is above")
    session.run("pytest", "-m", "localfleet and loadproof", "--durations=25", *modules, env=cache)


def _fleet_modules() -> list[str]:
    """The test modules that mark tests `localfleet`: the fleet run collects only these (collecting
    all ~1,500 tests again cost ~15 s of a loaded machine before its first fleet came up)."""
    found = sorted(
        str(p) for p in Path("tests").rglob("test_*.py") if "pytest.mark.localfleet" in p.read_text()
    )
    return found or ["tests"]


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("-c", LOCK, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy over fleet/, functions/ and fabfile.py."""
    _install(session)
    session.run("mypy")
    # functions/ is its own deployable source dir whose modules import each other top-level:
    # checked on its own, or mypy sees fleet_contract twice under two module names
    session.run("mypy", "functions")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job: bring up the local fleet and roll a release across it (see README)."""
    _install(session)
    session.run("python", "-m", "fleet.hostsetup", "demo")
    session.run("python", "-m", "fleet.scenarios.demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks; each writes its own section of docs/PERFORMANCE.md. Args pick benchmarks by name."""
    _install(session)
    session.run("python", "-m", "fleet.hostsetup", "bench")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session(python=False)
def lock(session: nox.Session) -> None:
    """Re-resolve the pinned tool environment (requirements-dev.lock) from pyproject.toml's ranges."""
    session.run(
        "uv",
        "pip",
        "compile",
        "pyproject.toml",
        "--extra",
        "dev",
        "--python-version",
        PYTHON,
        "--upgrade",
        "--quiet",
        "--output-file",
        LOCK,
        *session.posargs,
    )
