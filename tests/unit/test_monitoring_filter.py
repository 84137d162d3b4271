"""The local Monitoring endpoint's filter check (standins/monitoring_filter.py): what it accepts is what
fleet/alerting/policies.py writes; what it refuses is what the real API refuses."""

from __future__ import annotations

import pytest

from fleet.alerting import policies as mon
from standins import monitoring_filter as mf


def test_the_cpu_members_filter_parses_to_the_label_selector() -> None:
    found = mf.parse(mon.cpu_members_filter("dify-mig"))
    assert [(c.selector, c.op, c.args) for c in found] == [
        ("metric.type", "=", ("compute.googleapis.com/instance/cpu/utilization",)),
        ("resource.type", "=", ("gce_instance",)),
        ('metadata.user_labels."fleet-mig"', "=", ("dify-mig",)),
    ]
    assert mf.label_key(found[2].selector) == "fleet-mig"


@pytest.mark.parametrize(
    "text",
    [
        'metric.type="monitoring.googleapis.com/uptime_check/check_passed" AND resource.type="gce_instance" '
        'AND metric.label.check_id=one_of("check-a", "check-b")',
        'metric.type="x" AND metric.label.instance_name=starts_with("dify-")',
        'metric.type="x" resource.labels.zone=monitoring.regex.full_match("europe-.*")',
        'metric.type="x" AND (metadata.system_labels.region="us-central1" OR NOT project="p-1")',
        'metric.type="x" AND metric.labels.response_code>=500 AND metadata.user_labels.env!="dev"',
        'metric.type = "x" AND resource.label."url_map_name" = "dify-lb"',
    ],
)
def test_filters_monitoring_accepts(text: str) -> None:
    assert mf.parse(text)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('metric.type="x" AND metadata.user_labels.fleet-mig="a"', "unexpected character|unknown selector"),
        ("metric.type=x", "quoted string"),
        ('metric.type="x" AND instance_name="a"', "unknown selector 'instance_name'"),
        ('metric.type="x" AND metric.label.a=starts_with("a", "b")', "takes 1 argument"),
        ('metric.type="x" AND metric.label.a=one_of(a)', "quoted strings"),
        ('metric.type="x" AND (resource.type="y"', "expected"),
        ('metric.type="x" AND metric.label.a>starts_with("a")', "compared with = or !="),
        ("", "empty"),
    ],
)
def test_filters_monitoring_refuses(text: str, error: str) -> None:
    with pytest.raises(mf.FilterError, match=error):
        mf.parse(text)
