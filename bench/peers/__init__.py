"""Driver scripts for the peer tools `bench ssh` compares `fab exec` with (Fabric, Nornir, pyinfra).

Each driver runs as its own process in the separate `.nox/bench-peers` venv (pinned in
requirements.txt here, so the product's lock never changes) and reads the hosts from `hosts.json`
(written by bench/ssh_fanout.py): `{"user", "key_file", "known_hosts", "command", "hosts": [[name, port]]}`.
Every driver verifies host keys against that known_hosts and refuses unknown keys.
"""
