"""The `fab` task namespace. Task modules import their heavy dependencies inside the task bodies, so
`fab --list` only pays for Fabric itself."""

from __future__ import annotations

import importlib.util

from invoke import Collection

from fleet.tasks import core, release


def namespace() -> Collection:
    ns = Collection()
    for t in (
        core.hosts,
        core.exec_,
        core.facts,
        release.bootstrap,
        release.deploy,
        release.diff,
        release.status,
        release.history,
    ):
        ns.add_task(t)
    # sub-collections: `fab local.up`, ...
    for sub in ("local", "monitoring", "functions"):
        if importlib.util.find_spec(f"fleet.tasks.{sub}") is not None:
            ns.add_collection(Collection.from_module(importlib.import_module(f"fleet.tasks.{sub}")), name=sub)
    return ns
