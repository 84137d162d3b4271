"""The main job on the embedded local fleet: bring it up, bootstrap, deploy 1.0.0, show the status.

`nox -s demo` runs this; everything it does is also a `fab` task the user can run next.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INSTANCES = 4


def fab(*args: str) -> int:
    """Run a fab task as the user would, output straight to the terminal."""
    print(f"\n$ fab {' '.join(args)}", flush=True)
    fab_bin = Path(sys.executable).with_name("fab")
    return subprocess.run([str(fab_bin), *args], cwd=REPO, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    steps = [
        ("local.up", "--instances", str(INSTANCES)),
        ("bootstrap", "--inventory", "local"),
        ("deploy", "--inventory", "local", "--version", "1.0.0"),
        ("status", "--inventory", "local"),
    ]
    for step in steps:
        code = fab(*step)
        if code != 0:
            print(f"demo stopped: `fab {' '.join(step)}` exited {code}", file=sys.stderr)
            return code
    print(
        "\nThe local fleet is running (haproxy on http://127.0.0.1:8080). Try next:\n"
        "  fab deploy --inventory local --version 1.1.0\n"
        "  fab history --inventory local\n"
        "  fab local.status\n"
        "  fab local.down"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
