"""Root pytest configuration: fixture plugins shared by every test package."""

pytest_plugins = [
    "tests.fixtures.sshd",
    "tests.fixtures.localfleet",
    "tests.fixtures.storage",
]
