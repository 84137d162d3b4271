"""What a timed-out wait of the self-healing proof prints: the events that matter, not the
re-notifications that repeat every few seconds, each member's last health judgement and the LB."""

from __future__ import annotations

from types import SimpleNamespace

from fleet.scenarios import selfheal
from fleet.scenarios.monitor import Event


class FakeMonitor:
    def __init__(self, events: list[Event], why: dict[str, str]) -> None:
        self._events = events
        self.health = SimpleNamespace(why=why)

    def timeline(self, kind: str | None = None) -> list[Event]:
        return [e for e in self._events if kind is None or e.kind == kind]


def test_the_diagnosis_leaves_out_renotifications_and_says_why_each_member_is_judged() -> None:
    events = [Event(1.0, "action", "sh-2", "RECREATING"), Event(2.0, "lb", "sh-2", "UP")]
    events += [Event(3.0 + i, "incident", "mig", "re-sent scale in", state="renotify") for i in range(40)]
    why = {"sh-1": "agent reports ok", "sh-2": "no data (never reported)"}
    path = SimpleNamespace(monitor=FakeMonitor(events, why), config=None)
    text = selfheal._diagnosis(path)  # type: ignore[arg-type]
    assert "re-sent scale in" not in text
    assert "action sh-2: RECREATING" in text and "lb sh-2: UP" in text
    assert "health of sh-2: no data (never reported)" in text
    assert "LB: not read" in text  # no fleet here: said, not raised
