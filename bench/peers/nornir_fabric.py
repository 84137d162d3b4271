"""Nornir threaded runner (one worker per host) with a task that runs the command over a Fabric
connection; paramiko trusts only the pinned known_hosts (RejectPolicy)."""

import json
import sys
from pathlib import Path

import paramiko
from fabric import Config, Connection
from nornir.core import Nornir
from nornir.core.inventory import Defaults, Groups, Host, Hosts, Inventory
from nornir.core.task import Result, Task
from nornir.plugins.runners import ThreadedRunner


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    hosts = Hosts(
        {
            name: Host(name=name, hostname="127.0.0.1", port=port, username=spec["user"])
            for name, port in spec["hosts"]
        }
    )
    nr = Nornir(
        inventory=Inventory(hosts=hosts, groups=Groups(), defaults=Defaults()),
        runner=ThreadedRunner(num_workers=len(spec["hosts"])),
    )

    def run(task: Task) -> Result:
        h = task.host
        # one Config per connection: a Config shared by connections built in parallel threads races
        # (seen: "No attribute or config key found for 'gateway'" on 2 of 100 hosts)
        config = Config(overrides={"load_ssh_configs": False})
        c = Connection(
            h.hostname,
            user=h.username,
            port=h.port,
            config=config,
            connect_kwargs={"key_filename": [spec["key_file"]], "allow_agent": False, "look_for_keys": False},
        )
        c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.client.load_system_host_keys(spec["known_hosts"])
        try:
            r = c.run(spec["command"], hide=True, warn=True, in_stream=False)
        finally:
            c.close()
        return Result(host=h, result=r.stdout, failed=r.exited != 0)

    agg = nr.run(task=run)
    for name, multi in agg.items():
        print(f"{name}: {multi[0].result if not multi.failed else multi[0].exception}")
    return 1 if agg.failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
