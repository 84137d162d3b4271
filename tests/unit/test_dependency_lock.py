"""The tool environment is reproducible: tested ranges in pyproject.toml, exact pins in the lock file
that nox (and so CI) installs. A new major of a dependency can only arrive through `nox -s lock`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements-dev.lock"


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = list(project["dependencies"]) + [d for ds in project["optional-dependencies"].values() for d in ds]
    return [Requirement(r) for r in raw]


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line.strip())
        if m:
            pins[canonicalize_name(m.group(1).split("[")[0])] = m.group(2)
    return pins


def test_every_dependency_has_a_tested_upper_bound() -> None:
    unbounded = [
        str(r) for r in _declared() if not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)
    ]
    assert unbounded == [], f"no upper bound (a new major would resolve silently): {unbounded}"


def test_the_lock_pins_every_dependency_inside_its_range() -> None:
    pins = _pins()
    assert len(pins) > 20, "the lock file lists the whole resolved environment"
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in {LOCK.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} in {LOCK.name} is outside {req.specifier}: run `nox -s lock`"
        )


def test_nox_installs_from_the_lock() -> None:
    noxfile = (ROOT / "noxfile.py").read_text()
    assert f'LOCK = "{LOCK.name}"' in noxfile
    assert 'session.install("-r", LOCK' in noxfile
    assert '"--no-deps", "-e", "."' in noxfile
