"""`fab` entry point: tasks live in fleet/cli; `fab --list` shows them, `fab --help TASK` explains one."""

import gc

# off while `fab` starts (imports and parsing make objects that all live on); each task turns it back
# on as it begins (fleet.cli.common.end_startup)
gc.disable()

from fleet.cli import namespace  # noqa: E402
from fleet.cli.pipes import quiet_broken_pipe  # noqa: E402

quiet_broken_pipe()

ns = namespace()
