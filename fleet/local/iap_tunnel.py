"""A stand-in for `gcloud compute start-iap-tunnel ... --listen-on-stdin` on the local fleet.

Same arguments as gcloud (INSTANCE PORT --listen-on-stdin --zone Z --project P), after a
`--state-dir` that names the local fleet: it finds the instance's container, and relays stdin/stdout
to the port Docker publishes for it on 127.0.0.1, so an inventory with `ssh.proxy: iap` reaches the
local fleet exactly the way it reaches production (host keys pinned under `compute.<instance-id>`).
The inventory selects it with `ssh.iap_command` (inventory/local/mig/defaults.yaml does).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from pathlib import Path

from fleet.errors import FleetError
from fleet.local import dockercmd, execute


def published_port(state_dir: Path, project: str, zone: str, instance: str, port: int) -> int:
    """The 127.0.0.1 port that reaches `port` of the instance (what IAP would connect to)."""
    from fleet.local.compute_endpoint import load_config

    config = load_config(state_dir)
    if project != config.project or zone != config.zone:
        raise FleetError(
            f"no instance {instance} in {project}/{zone}",
            where="iap tunnel",
            hint=f"the local fleet is {config.project}/{config.zone}",
        )
    container = config.container_name(config.index_of(instance))
    proc = execute.run(dockercmd.inspect_containers([container]), check=False, timeout=30)
    if proc.returncode != 0:
        raise FleetError(f"instance {instance} does not exist", where="iap tunnel")
    info = json.loads(proc.stdout)[0]
    bindings = ((info.get("HostConfig") or {}).get("PortBindings") or {}).get(f"{port}/tcp") or []
    if not bindings:
        raise FleetError(f"port {port} of {instance} is not reachable", where="iap tunnel")
    return int(bindings[0]["HostPort"])


def relay(sock: socket.socket, stdin: int = 0, stdout: int = 1) -> None:
    """Copy both ways until the remote side closes (stdin's end only half-closes the socket)."""

    def upstream() -> None:
        try:
            while data := os.read(stdin, 65536):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, daemon=True).start()
    while data := sock.recv(65536):
        view = memoryview(data)
        while view:
            view = view[os.write(stdout, view) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fleet.local.iap_tunnel", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="the local fleet's compute state dir")
    parser.add_argument("instance")
    parser.add_argument("port", type=int)
    parser.add_argument("--listen-on-stdin", action="store_true", required=True)
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--verbosity", default="warning")
    args = parser.parse_args(argv)
    try:
        port = published_port(args.state_dir, args.project, args.zone, args.instance, args.port)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except (FleetError, OSError) as exc:
        message = exc.render() if isinstance(exc, FleetError) else f"cannot connect: {exc}"
        print(f"ERROR: (iap tunnel) {message}", file=sys.stderr)
        return 1
    sock.settimeout(None)
    try:
        relay(sock)
    except OSError:
        return 1
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
