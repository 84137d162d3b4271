"""fleet-agent: runs ON a fleet VM and converges it to the fleet's desired release from the release store.

It runs the very steps `fab deploy` runs over SSH (fleet.release.activation, fleet.release.hoststeps,
the commands of fleet.commands) through a local executor, so it is not a second implementation.
Standard library only: a Debian VM runs it with the distro's python3 (see docs/agent.md).
"""
