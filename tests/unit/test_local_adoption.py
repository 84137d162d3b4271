"""Which existing instance containers `local.up` may adopt: only those this checkout made with the
inventory's deploy key. CI once found a fleet of the same name left by an earlier run; adopting it
gave an inventory that every host refused ("authentication failed")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleet.local.config import LocalConfig
from fleet.local.instances import KEYS_ENV, OWNER_LABEL, LocalFleet

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyOfThisCheckout deploy@fleet-local"


def fleet(root: Path) -> LocalFleet:
    return LocalFleet(LocalConfig(root=root))


@pytest.fixture
def root() -> Path:
    """A short root: nothing is written there, and the LB's stats socket path (under the root) must
    stay within a Unix socket's 107 bytes whatever pytest's own temporary directory is."""
    return Path("/nonexistent/checkout")


def info(env: list[str], labels: dict[str, str]) -> dict[str, Any]:
    return {"Config": {"Env": env, "Labels": labels}}


def test_this_checkouts_instance_with_the_inventorys_key_is_adopted(root: Path) -> None:
    f = fleet(root)
    own = {OWNER_LABEL: str(f.config.state_dir)}
    assert f._foreign(info(["PATH=/usr/bin", f"{KEYS_ENV}={KEY}"], own), KEY) == ""
    # made before the owner label existed: the key alone decides
    assert f._foreign(info([f"{KEYS_ENV}={KEY}\n"], {}), KEY) == ""


def test_another_checkouts_instance_is_not_adopted_even_with_the_same_key(root: Path) -> None:
    f = fleet(root / "a")
    other = str(LocalConfig(root=root / "b").state_dir)
    why = f._foreign(info([f"{KEYS_ENV}={KEY}"], {OWNER_LABEL: other}), KEY)
    assert why == f"made by the fleet in {other}"


def test_an_instance_authorizing_another_key_is_not_adopted(root: Path) -> None:
    f = fleet(root)
    own = {OWNER_LABEL: str(f.config.state_dir)}
    old = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOldKeyBeforeInventoryWasRemade deploy@fleet-local"
    for env in ([f"{KEYS_ENV}={old}"], [], ["FLEET_OTHER=1"]):
        why = f._foreign(info(env, own), KEY)
        assert why == f"authorizes another deploy key than {f.key_file}", env
