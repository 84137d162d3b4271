"""One error type the CLI knows how to print: what went wrong, where, and what to do next."""

from __future__ import annotations


class FleetError(Exception):
    """An operator-facing error. `where` names the file/host/field; `hint` says what to do."""

    def __init__(self, what: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.what = what
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.hint:
            parts.append(f"  hint: {self.hint}")
        return "\n".join(parts)


class InventoryError(FleetError):
    """The inventory files are malformed or inconsistent."""


class HostKeyError(FleetError):
    """A host offered a key that is not pinned, or does not match the pinned one."""


class HostSetupError(FleetError):
    """The machine running the tool lacks something (package, privilege) the task needs."""
