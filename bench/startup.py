"""Start-up cost of the command line: `fab --list` and `fleet --list` beside a bare `import fabric.main`.

The floor is the Python interpreter plus Fabric itself; everything the project adds on top is what
`fab --list` costs beyond it. Runs alternate so drift in machine load hits all three alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.report import write_section
from fleet.paths import CHECKOUT

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))
REPO = CHECKOUT


def _time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    bindir = Path(sys.executable).parent
    commands = {
        "python -c 'import fabric.main' (floor)": [sys.executable, "-c", "import fabric.main"],
        "fab --list": [str(bindir / "fab"), "--list"],
        "fleet --list": [str(bindir / "fleet"), "--list"],
    }
    for argv in commands.values():  # warm the page cache and .pyc files
        _time(argv)
    times: dict[str, list[float]] = {name: [] for name in commands}
    load_before = os.getloadavg()[0]
    for _ in range(ROUNDS):
        for name, argv in commands.items():
            times[name].append(_time(argv))
    load_after = os.getloadavg()[0]
    floor = statistics.median(next(iter(times.values())))
    rows = ["| command | median | min | max | x floor |", "|---|---|---|---|---|"]
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(f"| `{name}` | {med:.3f} s | {min(ts):.3f} s | {max(ts):.3f} s | {med / floor:.2f} |")
    body = (
        f"{ROUNDS} interleaved rounds after one warm-up each; load average {load_before:.1f} before, "
        f"{load_after:.1f} after.\n\n" + "\n".join(rows) + "\n"
    )
    print(body)
    write_section("startup", "CLI start-up", "nox -s bench -- startup", body)


if __name__ == "__main__":
    main()
