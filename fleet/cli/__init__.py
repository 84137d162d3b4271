"""The `fab` task namespace. Task modules import their heavy dependencies inside the task bodies, so
`fab --list` only pays for Fabric itself."""

from __future__ import annotations

from invoke import Collection

from fleet.cli import (
    agent,
    core,
    functions,
    infra,
    infra_data,
    local,
    lock,
    monitoring,
    release,
    rollout,
    secrets,
    store,
)


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
        rollout.rollout,
        rollout.rollback,
    ):
        ns.add_task(t)
    # sub-collections: `fab local.up`, ...
    for name, module in (
        ("local", local),
        ("monitoring", monitoring),
        ("infra", infra),
        ("functions", functions),
        ("lock", lock),
        ("secrets", secrets),
        ("store", store),
        ("agent", agent),
    ):
        ns.add_collection(Collection.from_module(module), name=name)
    # `fab infra.data`: the data layer's check, beside infra.plan/apply
    ns.collections["infra"].add_task(infra_data.data)
    return ns
