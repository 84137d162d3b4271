"""Where the project's files are: one anchor for the checkout (or the configured project directory).

`fab` in the checkout finds everything beside the package. The installed `fleet` program finds the
project directory from FLEET_PROJECT_DIR (inventories, journal, local state); the compose stack and
the functions source ship inside the package when the checkout is not there.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_DIR.parent  # the repository root when running from a checkout (or an editable install)
PROJECT_ENV = "FLEET_PROJECT_DIR"


def _project_root() -> Path:
    configured = os.environ.get(PROJECT_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    if (CHECKOUT / "compose").is_dir() or (CHECKOUT / "pyproject.toml").is_file():
        return CHECKOUT
    return Path.cwd()


def _shipped(name: str) -> Path:
    """A directory of the checkout, or its copy shipped inside the package (a wheel install)."""
    here = PROJECT_ROOT / name
    if here.is_dir():
        return here
    for candidate in (CHECKOUT / name, PACKAGE_DIR / "_data" / name):
        if candidate.is_dir():
            return candidate
    return here


PROJECT_ROOT = _project_root()  # inventories, journals, local state
REPO_ROOT = PROJECT_ROOT  # the name the local fleet and tests know
COMPOSE_DIR = _shipped("compose")
FUNCTIONS_DIR = _shipped("functions")
INVENTORY_ROOT = PROJECT_ROOT / "inventory"
STATE_DIR = PROJECT_ROOT / ".fleet"
DOCS_DIR = CHECKOUT / "docs"
