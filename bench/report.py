"""Write one benchmark's results into its own section of docs/PERFORMANCE.md.

Each benchmark owns the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, so benchmarks
run separately never overwrite each other's figures.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

from fleet.paths import CHECKOUT

DOC = CHECKOUT / "docs" / "PERFORMANCE.md"
HEADER = (
    "# Performance\n\n"
    "Every figure below was produced by the command written next to it, on the machine described.\n"
    "Re-run `nox -s bench` (or the single benchmark's command) to refresh a section.\n"
)


def machine() -> str:
    """A one-line description of the machine the figures come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({cpu}){mem}, {system}, Python {platform.python_version()}"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        )
        return out.stdout.strip() or "uncommitted"
    except OSError:
        return "unknown"


def write_section(name: str, title: str, command: str, body: str, doc: Path = DOC) -> None:
    """Replace (or append) the section `name` with a titled block that names its command."""
    block = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"Command: `{command}`  \nMachine: {machine()}  \nCommit: {git_commit()}\n\n"
        f"{body.rstrip()}\n<!-- /bench:{name} -->\n"
    )
    text = doc.read_text() if doc.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n?", re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
