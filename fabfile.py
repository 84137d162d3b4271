"""`fab` entry point: tasks live in fleet/cli; `fab --list` shows them, `fab --help TASK` explains one."""

from fleet.cli import namespace

ns = namespace()
