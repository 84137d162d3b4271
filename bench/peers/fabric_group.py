"""Fabric ThreadingGroup: one thread per host; paramiko trusts only the pinned known_hosts (RejectPolicy)."""

import json
import sys
from pathlib import Path

import paramiko
from fabric import Config, Connection, ThreadingGroup


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    config = Config(overrides={"load_ssh_configs": False})
    conns = []
    for _name, port in spec["hosts"]:
        c = Connection(
            "127.0.0.1",
            user=spec["user"],
            port=port,
            config=config,
            connect_kwargs={"key_filename": [spec["key_file"]], "allow_agent": False, "look_for_keys": False},
        )
        # Fabric installs AutoAddPolicy: replace it, and trust only the fleet's known_hosts
        c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.client.load_system_host_keys(spec["known_hosts"])
        conns.append(c)
    results = ThreadingGroup.from_connections(conns).run(
        spec["command"], hide=True, warn=True, in_stream=False
    )
    failed = 0
    for conn, result in results.items():
        if isinstance(result, Exception) or result.exited != 0:
            failed += 1
            print(f"{conn.port}: {result}", file=sys.stderr)
        else:
            print(f"{conn.port}: {result.stdout.strip()}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
