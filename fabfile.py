"""`fab` entry point: tasks live in fleet/tasks; `fab --list` shows them, `fab --help TASK` explains one."""

from fleet.tasks import namespace

ns = namespace()
