"""Run the benchmarks named on the command line (all by default); each updates docs/PERFORMANCE.md."""

from __future__ import annotations

import importlib
import importlib.util
import sys

# name -> module with a main() that runs the benchmark and writes its section
BENCHMARKS = {
    "ssh": "bench.ssh_fanout",
    "startup": "bench.startup",
}
OPTIONAL = {
    "local_fleet": "bench.local_fleet",
    "functions": "bench.functions",
    "rollout": "bench.rollout",
    "gce": "bench.gce",
    "selfheal": "bench.selfheal",
    "agent": "bench.agent",
    "step_latency": "bench.step_latency",
    "engine_scale": "bench.engine_scale",
    "replace": "bench.replace",
    "replace_fleet": "bench.replace_fleet",
}
for _name, _module in OPTIONAL.items():
    if importlib.util.find_spec(_module) is not None:
        BENCHMARKS[_name] = _module


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== bench {name}", flush=True)
        module = importlib.import_module(BENCHMARKS[name])
        module.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
