"""standins/compute_resources.py's pure parts: list filters, JSON merge patch, reference parsing."""

from __future__ import annotations

import pytest

from standins.compute_resources import matches, merge_patch, ref_key
from standins.compute_state import ComputeApiError

ITEM = {
    "name": "dify-mig-ready",
    "description": "readiness (fleet-infra:prod; managed by `fab infra.apply`)",
    "checkIntervalSec": 5,
    "labels": {"fleet": "prod"},
    "enabled": True,
}


@pytest.mark.parametrize(
    ("expression", "hit"),
    [
        ("", True),
        ('name = "dify-mig-ready"', True),
        ("name = dify-mig-ready", True),
        ('name != "dify-mig-ready"', False),
        ("name eq dify-mig-.*", True),
        ("name eq mig-.*", False),  # eq is a whole-string RE2 match
        ("name ne dify-.*", False),
        ('description eq ".*fleet-infra:prod;.*"', True),
        ('description eq ".*fleet-infra:prod2;.*"', False),
        ("checkIntervalSec = 5", True),
        ("labels.fleet = prod", True),
        ("labels.fleet:*", True),
        ("labels.team:*", False),
        ("enabled = true", True),
        ('(name = "dify-mig-ready") AND (checkIntervalSec = 6)', False),
        ('(name = "dify-mig-ready") (checkIntervalSec = 5)', True),
    ],
)
def test_list_filters(expression: str, hit: bool) -> None:
    assert matches(expression, ITEM) is hit


@pytest.mark.parametrize("expression", ["name ~~ x", "name = a OR name = b", "name eq ("])
def test_bad_filters_are_400(expression: str) -> None:
    with pytest.raises(ComputeApiError) as err:
        matches(expression, ITEM)
    assert err.value.status == 400


def test_merge_patch_replaces_lists_merges_maps_and_null_deletes() -> None:
    base = {"a": {"x": 1, "y": 2}, "l": [1, 2], "gone": 1}
    assert merge_patch(base, {"a": {"y": 3}, "l": [9], "gone": None}) == {"a": {"x": 1, "y": 3}, "l": [9]}
    assert base == {"a": {"x": 1, "y": 2}, "l": [1, 2], "gone": 1}  # not changed in place


def test_references_full_or_relative() -> None:
    full = "https://www.googleapis.com/compute/v1/projects/p/global/healthChecks/hc"
    assert ref_key(full) == ("p", "global", "healthChecks", "hc")
    assert ref_key("projects/p/regions/europe-west1/subnetworks/s") == (
        "p",
        "regions/europe-west1",
        "subnetworks",
        "s",
    )
    assert ref_key("hc") is None
