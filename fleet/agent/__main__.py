"""`python3 -m fleet.agent boot|apply|status` (or `python3 fleet-agent.pyz ...` on a VM): JSON lines out,
exit 0 when the VM serves the desired release, 1 when it does not (reported in guest attributes)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fleet.agent import flow
from fleet.agent.local import LocalContext, LocalHost
from fleet.commands import release as rc
from fleet.errors import FleetError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet-agent", description="Converge this VM to the fleet's desired release."
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("boot", help="at VM start: bootstrap if needed, fetch, stage, start, verify, report")
    apply = sub.add_parser(
        "apply", help="on request: as boot, refused under the fleet lock or a rollout mark"
    )
    apply.add_argument(
        "--force", action="store_true", help="apply even under the fleet lock or a rollout mark"
    )
    sub.add_parser("report", help="write what this VM runs now into its guest attributes, once")
    watch = sub.add_parser("watch", help="report every --every seconds, until stopped (the heartbeat)")
    watch.add_argument("--every", type=float, default=30.0, help="seconds between reports (default 30)")
    st = sub.add_parser("status", help="what this VM runs (local, no API call)")
    st.add_argument("--json", action="store_true", help="one JSON object instead of a step line")
    st.add_argument("--app-dir", help="default: metadata fleet-app-dir, else " + rc.DEFAULT_ROOT)
    st.add_argument("--project", help="compose project (default: metadata fleet-app-project, else dify)")
    st.add_argument(
        "--http-port", type=int, help="nginx port on this VM (default: metadata fleet-http-port, else 80)"
    )
    return p


def _status_host(args: argparse.Namespace) -> LocalHost:
    if args.app_dir:
        attrs = {
            "fleet-app-dir": args.app_dir,
            "fleet-app-project": args.project,
            "fleet-http-port": str(args.http_port) if args.http_port else None,
        }
        return LocalHost.from_attributes("localhost", attrs)  # validated as the metadata's values
    from fleet.agent.apis import Metadata

    md = Metadata()
    keys = ("fleet-app-dir", "fleet-app-project", "fleet-http-port")
    return LocalHost.from_attributes(md.instance_name(), {k: md.attribute(k) for k in keys})


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log = flow.Log()
    try:
        if args.command == "status":
            found = flow.status(LocalContext(_status_host(args)))
            if args.json:
                print(json.dumps(found, sort_keys=True))
            else:
                log("status", f"release {found['release']} version {found['version']}", **found)
            return 0
        clients = flow.google_clients()
    except FleetError as exc:
        log("failed", exc.render())
        return 1
    agent = flow.Agent(clients, log=log, busy_file=flow.BUSY_FILE)
    if args.command == "report":
        return agent.observe()
    if args.command == "watch":
        if not 1 <= args.every <= 3600:
            log("failed", f"--every {args.every}: 1..3600 seconds")
            return 2
        return agent.watch(args.every)
    return agent.run(args.command, force=getattr(args, "force", False))


if __name__ == "__main__":
    sys.exit(main())
