"""The one `show stat` parser, on a real haproxy 2.6 answer (captured from `show stat` on the admin
socket: a frontend, backend `app` with an UP, a DOWN (connection refused) and a MAINT server after
three requests, and a backend `other` whose server has no health check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.commands.haproxy import SHOW_STAT, parse_show_stat
from fleet.errors import FleetError

SAMPLE = (Path(__file__).parents[1] / "fixtures" / "haproxy-2.6-show-stat.csv").read_text()


def test_the_sample_is_haproxy_2_csv() -> None:
    assert SAMPLE.startswith("# pxname,svname,qcur,")
    assert SHOW_STAT == "show stat"


def test_servers_of_the_backend_with_their_state_check_and_address() -> None:
    stat = parse_show_stat(SAMPLE, "app")
    assert list(stat.servers) == ["local-1", "local-2", "local-3"]  # no FRONTEND/BACKEND rows
    one, two, three = stat.servers.values()
    assert (one.status, one.raw, one.check, one.address, one.weight, one.sessions) == (
        "UP", "UP", "L7OK", "127.0.0.1:38911", 1, 0,
    )  # fmt: skip
    assert one.serving and one.steady
    assert (two.status, two.check, two.address) == ("DOWN", "L4CON", "127.0.0.1:38912")
    assert not two.serving
    assert three.status == "MAINT" and three.check == "" and not three.serving


def test_the_backend_row_gives_the_request_total() -> None:
    assert parse_show_stat(SAMPLE, "app").requests == 3
    other = parse_show_stat(SAMPLE, "other")
    assert other.requests == 0 and list(other.servers) == ["x"]
    assert other.servers["x"].raw == "no check"


def test_a_backend_it_does_not_have_is_empty() -> None:
    stat = parse_show_stat(SAMPLE, "nope")
    assert stat.requests == 0 and stat.servers == {}


def test_transitions_and_in_flight_requests() -> None:
    """haproxy says "UP 1/2" while a server fails its checks (still serving) and "DOWN 1/2" while it
    recovers (not yet); scur counts the requests in flight."""
    text = SAMPLE.replace("app,local-1,0,0,0,1,", "app,local-1,0,0,2,1,").replace(
        ",UP,1,1,0,0,0,2,", ",UP 1/2,1,1,0,0,0,2,", 1
    )
    text = text.replace(",DOWN,1,1,0,1,1,", ",DOWN 1/2,1,1,0,1,1,")
    one, two, _ = parse_show_stat(text, "app").servers.values()
    assert (one.status, one.raw, one.sessions) == ("UP", "UP 1/2", 2)
    assert one.serving and not one.steady
    assert (two.status, two.raw) == ("DOWN", "DOWN 1/2")
    assert not two.serving and not two.steady


def test_a_missing_session_count_is_none_not_zero() -> None:
    header = "# pxname,svname,scur,status,addr\n"
    stat = parse_show_stat(header + "app,a,,UP,10.0.0.1:80\n", "app")
    assert stat.servers["a"].sessions is None
    assert stat.servers["a"].weight == 0


@pytest.mark.parametrize("answer", ["", "Unknown command. Please enter one of the following commands", "\n"])
def test_anything_else_than_the_csv_is_an_error(answer: str) -> None:
    with pytest.raises(FleetError, match="show stat") as info:
        parse_show_stat(answer, "app")
    assert info.value.where == "haproxy stats socket"
