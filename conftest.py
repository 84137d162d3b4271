"""Root pytest configuration: fixture plugins shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures.sshd",
    "tests.fixtures.localfleet",
    "tests.fixtures.storage",
]


@pytest.fixture(autouse=True, scope="session")
def _inventory_memo_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`fab exec` memoizes inventories (fleet/inventory/memo.py) in the user's cache by default; the
    suite's thousands of temporary inventories go to a directory of its own (removed with pytest's)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLEET_INVENTORY_CACHE", str(tmp_path_factory.mktemp("inventory-memo")))
        yield
