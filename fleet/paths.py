"""Where the project's files are: one anchor for the checkout (or the configured project directory).

`fab` in the checkout finds everything beside the package. The installed `fleet` program finds the
project directory (inventories, journal, local state, and `compose/` and `functions/` when it has
them) from FLEET_PROJECT_DIR; `compose/` and `functions/` otherwise come from the checkout the package
was installed from (they are not shipped inside a wheel).
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
    """The project directory's `name`, else the checkout's."""
    here = PROJECT_ROOT / name
    return here if here.is_dir() or not (CHECKOUT / name).is_dir() else CHECKOUT / name


PROJECT_ROOT = _project_root()  # inventories, journals, local state
COMPOSE_DIR = _shipped("compose")
FUNCTIONS_DIR = _shipped("functions")
INVENTORY_ROOT = PROJECT_ROOT / "inventory"
STATE_DIR = PROJECT_ROOT / ".fleet"
