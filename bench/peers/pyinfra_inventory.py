"""pyinfra inventory for `pyinfra bench/peers/pyinfra_inventory.py exec -- CMD`: the hosts of the
hosts.json named by $BENCH_PEER_SPEC, strict host key checking against its known_hosts."""

import json
import os
from pathlib import Path

_spec = json.loads(Path(os.environ["BENCH_PEER_SPEC"]).read_text())

hosts = [
    (
        name,
        {
            "ssh_hostname": "127.0.0.1",
            "ssh_port": port,
            "ssh_user": _spec["user"],
            "ssh_key": _spec["key_file"],
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
            "ssh_known_hosts_file": _spec["known_hosts"],
            "ssh_strict_host_key_checking": "yes",
            "ssh_config_file": os.devnull,
        },
    )
    for name, port in _spec["hosts"]
]
