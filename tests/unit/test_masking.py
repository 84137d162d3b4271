"""Masking: every form a secret takes on its way out (raw, shell-quoted, .env-escaped, URL-encoded,
JSON-escaped), values of old .env keys the schema does not know, and step error output."""

from __future__ import annotations

import json
import re
import shlex
import urllib.parse
from types import SimpleNamespace
from typing import Any

import pytest

from fleet.commands.base import Command, mask
from fleet.errors import FleetError
from fleet.inventory import FleetHost
from fleet.release import bundle, envfile, secrets
from fleet.release import hoststeps as hosttasks
from tests.unit.test_bundle import META, SECRETS, host_vars, render

# distinctive, and full of characters every encoding changes
NASTY = "Zx9'q\"u$o\\te/sl:ash@at%pc ~"


def forms(value: str) -> dict[str, str]:
    return {
        "raw": value,
        "shell": shlex.quote(value),
        "env": envfile.quote("K", value)[1:-1],
        "url": urllib.parse.quote(value, safe=""),
        "url-plus": urllib.parse.quote_plus(value),
        "json": json.dumps(value)[1:-1],
    }


@pytest.mark.parametrize("form", sorted(forms(NASTY)))
def test_mask_covers_every_encoding_of_a_secret(form: str) -> None:
    shown = forms(NASTY)[form]
    text = mask(f"before {shown} after", [NASTY])
    assert text.startswith("before ") and text.endswith(" after")
    for variant in forms(NASTY).values():
        assert variant not in text, (form, text)
    assert "******" in text


def test_broker_url_password_is_masked_when_printed_url_encoded() -> None:
    b = bundle.render(bundle.load_source(), host_vars(), {**SECRETS, "REDIS_PASSWORD": NASTY}, META)
    url = b.env["CELERY_BROKER_URL"]
    encoded = urllib.parse.quote(NASTY, safe="")
    assert encoded in url
    # e.g. celery reporting the broker it cannot reach, with another db number than the rendered one
    line = "consumer: Cannot connect to " + url.rsplit("/", 1)[0] + "/9: Connection refused"
    out = mask(line, b.secret_values())
    assert encoded not in out and NASTY not in out and "Connection refused" in out


def older(new: bundle.Bundle) -> dict[str, bytes]:
    """The files of `new` as if they were another (older) release on the host."""
    old = new.file_bytes()
    record = json.loads(old[bundle.RELEASE_FILE])
    old[bundle.RELEASE_FILE] = json.dumps({**record, "id": "0ld0ld0ld0ld0ld0"}).encode()
    return old


def test_diff_masks_old_keys_the_schema_does_not_know() -> None:
    new = render(bundle.load_source())
    old = older(new)
    extra = {
        "SENTRY_DSN": "https://abc123sentrykey@o1.ingest.sentry.io/42",
        "SMTP_PASS": "smtp-hunter2-xyz",
        "DATABASE_URL": "postgresql://u:dburl-s3cret@db/x",
        "LEGACY_FLAG": "plain-but-unknown",
    }
    old[".env"] = old[".env"] + envfile.render(extra)
    d = bundle.diff(old, new)
    removed = {c.key: c for c in d.env if c.change == "removed"}
    assert set(extra) <= set(removed)
    for key in extra:
        assert removed[key].old == "******", key
    text = d.render() + json.dumps(d.as_dict())
    for value in extra.values():
        assert value not in text


def test_diff_still_shows_old_values_of_plain_schema_keys() -> None:
    source = bundle.load_source()
    new = render(source, DB_HOST="10.10.0.99")
    d = bundle.diff(render(source).file_bytes(), new)
    change = {c.key: c for c in d.env}["DB_HOST"]
    assert (change.old, change.new) == ("'10.10.0.3'", "'10.10.0.99'")


def test_diff_masks_an_old_secret_in_changed_files_in_every_form() -> None:
    source = bundle.load_source()
    new = render(source)
    old = older(new)
    old[".env"] = old[".env"] + envfile.render({"OLD_TOKEN_FOR_X": NASTY})
    compose = old["docker-compose.yaml"].decode()
    old["docker-compose.yaml"] = (compose + f"# {forms(NASTY)['url']} {forms(NASTY)['env']}\n").encode()
    text = bundle.diff(old, new).render()
    assert "docker-compose.yaml" in text
    for variant in forms(NASTY).values():
        assert variant not in text


def test_masked_env_hides_secrets_inside_plain_values() -> None:
    b = render(bundle.load_source(), GOOGLE_STORAGE_BUCKET_NAME="dify-files")
    fake = bundle.Bundle(
        **{
            **{f: getattr(b, f) for f in b.__dataclass_fields__},
            "env": {**b.env, "PLAIN_NOTE": "uses " + urllib.parse.quote(SECRETS["REDIS_PASSWORD"], safe="")},
        }
    )
    shown = json.dumps(fake.masked_env())
    assert urllib.parse.quote(SECRETS["REDIS_PASSWORD"], safe="") not in shown


class FakeCtx:
    """Enough of HostContext for hosttasks.run: the command 'fails' and echoes what we give it."""

    def __init__(self, stderr: str) -> None:
        self.host = SimpleNamespace(name="h1")
        self._stderr = stderr

    def run(self, script: str, **_: Any) -> Any:
        return SimpleNamespace(exited=1, stdout="", stderr=self._stderr)


def test_step_errors_are_masked_with_the_secrets_resolved_for_the_run() -> None:
    values = secrets.resolve({"DB_PASSWORD": {"env": "X_DB_PW"}}, environ={"X_DB_PW": "step-s3cret-" + NASTY})
    secret = values["DB_PASSWORD"]
    for form in forms(secret).values():
        ctx = FakeCtx(f"compose: invalid value {form} for DB_PASSWORD")
        with pytest.raises(hosttasks.StepError) as info:
            hosttasks.run(ctx, Command("docker compose up -d", "start release"), "up")  # type: ignore[arg-type]
        text = info.value.render()
        assert re.search(r"invalid value '?\*{6}'? for DB_PASSWORD", text) and "step-s3cret" not in text, text


def test_step_errors_mask_old_release_secrets_seen_in_a_diff() -> None:
    new = render(bundle.load_source())
    old = new.file_bytes()
    old[".env"] = old[".env"] + envfile.render({"RETIRED_THING": "old-release-only-v4lue"})
    bundle.diff(old, new)
    with pytest.raises(hosttasks.StepError) as info:
        hosttasks.run(
            FakeCtx("restore failed: old-release-only-v4lue"),  # type: ignore[arg-type]
            Command("true", "x"),
            "rollback",
        )
    assert "old-release-only-v4lue" not in info.value.render()


def test_step_error_tail_never_cuts_a_secret_in_half() -> None:
    secrets.remember(["tail-cut-s3cret-abcdefghij"])
    for pad in range(0, 30):  # wherever the 600-character tail starts, no fragment survives
        ctx = FakeCtx("x" * 100 + "url=redis://:tail-cut-s3cret-abcdefghij@h" + "y" * (575 - pad))
        with pytest.raises(hosttasks.StepError) as info:
            hosttasks.run(ctx, Command("true", "x"), "up")  # type: ignore[arg-type]
        assert "s3cret" not in info.value.render() and "ghij@" not in info.value.render(), pad


def test_deploy_report_masks_errors_the_runner_made_from_any_exception() -> None:
    from fleet.rollout import deploy
    from fleet.ssh.runner import HostResult

    secrets.remember(["runner-s3cret/x y"])
    res = HostResult("h1", "failed", error="TimeoutError: redis://:runner-s3cret%2Fx%20y@10.0.0.4 hung")
    outcome = deploy._outcome_from_failure(res, None, "failed")
    assert outcome.error is not None and "runner-s3cret" not in outcome.error and "hung" in outcome.error
    assert deploy.mask_known(None) is None


def test_history_refuses_a_secret_in_any_form_and_record_masks_the_detail() -> None:
    from fleet.commands import release as rc

    layout = rc.Layout()
    entry = {"action": "deploy", "detail": "compose said: " + NASTY}
    with pytest.raises(FleetError):  # the JSON line holds NASTY escaped (\\", \\\\), not as is
        rc.history_append(layout, entry, secrets=[NASTY])
    with pytest.raises(FleetError):
        rc.history_append(layout, {"detail": urllib.parse.quote(NASTY, safe="")}, secrets=[NASTY])

    secrets.remember([NASTY])
    sent: list[str] = []

    class Ctx(FakeCtx):
        def run(self, script: str, **_: Any) -> Any:
            sent.append(script)
            return SimpleNamespace(exited=0, stdout="", stderr="")

    ctx = Ctx("")
    ctx.host = FleetHost("h1", "127.0.0.1", 22, "deploy", ())
    hosttasks.record(ctx, entry)  # type: ignore[arg-type]
    assert len(sent) == 1 and "******" in sent[0]
    for form in forms(NASTY).values():
        assert form not in sent[0]
