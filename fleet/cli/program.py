"""The `fleet` program: the same tasks as `fab` in the checkout, as a command that works anywhere.

`pip install compose-fleet` puts `fleet` on the PATH; it needs no fabfile. Inventories, journals and
the local fleet's state are found in the project directory: FLEET_PROJECT_DIR, else the checkout the
package was installed from (see fleet/paths.py).
"""

from __future__ import annotations

import gc

# off while the program starts (imports and parsing make objects that all live on); each task turns it
# back on as it begins (fleet.cli.common.end_startup)
gc.disable()

from importlib import metadata  # noqa: E402

from fabric import Config, Executor  # noqa: E402
from fabric.main import Fab  # noqa: E402

from fleet.cli import namespace  # noqa: E402
from fleet.cli.pipes import quiet_broken_pipe  # noqa: E402

quiet_broken_pipe()


def _version() -> str:
    try:
        return metadata.version("compose-fleet")
    except metadata.PackageNotFoundError:
        return "unknown"


program = Fab(
    name="compose-fleet",
    binary="fleet",
    binary_names=["fleet"],
    version=_version(),
    namespace=namespace(),
    executor_class=Executor,
    config_class=Config,
)


def main() -> None:
    program.run()


if __name__ == "__main__":
    main()
