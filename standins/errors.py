"""The stand-ins' own error: what went wrong, where, what to do (the same shape as the fleet's, which
the stand-ins must not import: they are Google's side of the wire)."""

from __future__ import annotations


class StandinError(Exception):
    """A stand-in cannot start or act: bad state file, unknown resource, impossible request."""

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
