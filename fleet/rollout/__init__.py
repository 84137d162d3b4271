"""The rollout engine: plan -> lock -> stage everywhere -> batches through the load balancer.

Per host, in order: mark the instance (autoheal leaves it alone) -> drain -> wait until the LB stopped
sending it requests -> switch `current` -> `up -d --remove-orphans` -> verify while drained (every
service of the release running/healthy) -> undrain -> verify through nginx (/health 200 with the
version) -> wait until the LB sends traffic again -> min-ready soak -> record history -> unmark.

A host that fails is put back on the release it ran, through the same gates. Failures count
against a budget; past it the rollout stops and (by default) undoes every updated host, newest
batch first. Every step goes to the journal first, so an interrupted rollout resumes from each
host's real state. Whatever happens, a host this engine drained is undrained before it lets go of
it, or the summary says why it could not (unreachable).

The same engine runs `fab rollback` (target = each host's previous release) and `--resume`.
"""

from fleet.commands.rollout import (
    BEAT,
    UNDRAIN_FAILED,
    beat_running,
    beat_start,
    beat_stop,
    compose_idle,
    release_record,
    set_previous,
    switch_when_idle,
    undrain_then_probe,
)
from fleet.rollout.engine import POLL, SERVE_TIMEOUT, Engine, Observer
from fleet.rollout.hostops import HostOps, SshHostOps
from fleet.rollout.inplace import InPlace
from fleet.rollout.marks import Marks
from fleet.rollout.model import (
    BEAT_ROLE,
    DONE_RESULTS,
    EXIT_CODES,
    FAILED_RESULTS,
    ON_FAILURE,
    HostFailed,
    HostJob,
    HostOutcome,
    Interrupted,
    Plan,
    Release,
    Report,
)
from fleet.rollout.planning import (
    beat_hosts,
    cap_batches,
    check_beat_singleton,
    decide,
    final_outcome,
    make_plan,
    new_rollout_id,
    pick_release,
    resolve_options,
    resume_command,
)
from fleet.rollout.run import Run, execute, read_states, staged_targets

__all__ = [
    "BEAT",
    "BEAT_ROLE",
    "DONE_RESULTS",
    "EXIT_CODES",
    "FAILED_RESULTS",
    "ON_FAILURE",
    "POLL",
    "SERVE_TIMEOUT",
    "UNDRAIN_FAILED",
    "Engine",
    "HostFailed",
    "HostJob",
    "HostOps",
    "HostOutcome",
    "InPlace",
    "Interrupted",
    "Marks",
    "Observer",
    "Plan",
    "Release",
    "Report",
    "Run",
    "SshHostOps",
    "beat_hosts",
    "beat_running",
    "beat_start",
    "beat_stop",
    "cap_batches",
    "check_beat_singleton",
    "compose_idle",
    "decide",
    "execute",
    "final_outcome",
    "make_plan",
    "new_rollout_id",
    "pick_release",
    "read_states",
    "release_record",
    "resolve_options",
    "resume_command",
    "set_previous",
    "staged_targets",
    "switch_when_idle",
    "undrain_then_probe",
]
