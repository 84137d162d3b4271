"""Configuration of the functions from environment variables, validated once at cold start.

Every problem names the variable it comes from; values of secret variables (webhook URLs) never
appear in an error, a repr or a log line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from fleet_contract import ContractError, MigRef
else:
    try:
        from fleet_contract import ContractError, MigRef
    except ModuleNotFoundError:  # the operator side imports this module as functions.settings
        from functions.fleet_contract import ContractError, MigRef

__all__ = ["ConfigError", "MigRef", "Secret", "Settings", "load", "parse_mig"]

_TOPIC = re.compile(r"projects/(?P<project>[^/]+)/topics/(?P<topic>[A-Za-z][\w.~+%-]{2,254})")


class ConfigError(ValueError):
    """A configuration variable is missing or wrong; `variable` names it, `hint` says what to set."""

    def __init__(self, variable: str, problem: str, hint: str = "") -> None:
        self.variable = variable
        self.problem = problem
        self.hint = hint
        super().__init__(f"{variable}: {problem}" + (f" (hint: {hint})" if hint else ""))


class Secret:
    """A string that does not print itself: webhook URLs carry their credentials in the URL."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    """Everything the three entry points read from the environment."""

    fleet: str
    migs: tuple[MigRef, ...]
    heal_max_concurrent: int
    heal_max_percent: float | None
    heal_initial_delay: int
    heal_settle: int
    heal_window: int
    scale_step: int
    scale_min: int
    scale_max: int
    scale_cooldown: int
    scale_in_stabilization: int
    events_topic: str | None
    slack_webhook: Secret | None
    chat_webhook: Secret | None
    generic_webhook: Secret | None
    compute_endpoint: str | None
    api_timeout: float
    operation_wait: float
    webhook_timeout: float


def parse_mig(text: str, variable: str = "FLEET_MIGS") -> MigRef:
    """`project/zone/name` or `project/region/name` (the rule is the contract's)."""
    try:
        return MigRef.parse(text)
    except ContractError as exc:
        raise ConfigError(variable, str(exc)) from None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(name, f"{value} is below the minimum {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not a number") from None
    if not value >= minimum:  # also refuses NaN
        raise ConfigError(name, f"{raw} is below the minimum {minimum}")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _webhook(env: Mapping[str, str], name: str) -> Secret | None:
    raw = env.get(name, "").strip()
    if raw == "":
        return None
    try:
        parts = urlsplit(raw)
        host = parts.hostname or ""
    except ValueError:
        raise ConfigError(name, "not a URL (value not shown: it is a secret)") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(name, "not an http(s) URL (value not shown: it is a secret)")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(name, "plain http is only allowed to a loopback address", "use the https URL")
    return Secret(raw)


def load(env: Mapping[str, str]) -> Settings:
    """Parse and check the environment; raises ConfigError naming the first bad variable."""
    fleet = env.get("FLEET_NAME", "").strip() or "fleet"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", fleet):
        raise ConfigError("FLEET_NAME", f"{fleet!r} must be [a-z0-9_-], <= 63 chars")
    migs_raw = env.get("FLEET_MIGS", "").strip()
    migs = tuple(parse_mig(item) for item in migs_raw.split(",") if item.strip()) if migs_raw else ()
    if len(set(migs)) != len(migs):
        raise ConfigError("FLEET_MIGS", "a managed instance group is listed twice")

    percent_raw = env.get("FLEET_HEAL_MAX_PERCENT", "").strip()
    percent: float | None = None
    if percent_raw:
        percent = _float(env, "FLEET_HEAL_MAX_PERCENT", 0.0, minimum=0.0)
        if not 0 < percent <= 100:
            raise ConfigError("FLEET_HEAL_MAX_PERCENT", f"{percent_raw} is not in (0, 100]")

    settle = _int(env, "FLEET_HEAL_SETTLE", 180)
    window = _int(env, "FLEET_HEAL_WINDOW", 1800)
    if window < settle:
        raise ConfigError("FLEET_HEAL_WINDOW", f"{window}s is shorter than FLEET_HEAL_SETTLE ({settle}s)")
    scale_min = _int(env, "FLEET_SCALE_MIN", 1)
    scale_max = _int(env, "FLEET_SCALE_MAX", 10, minimum=1)
    if scale_max < scale_min:
        raise ConfigError("FLEET_SCALE_MAX", f"{scale_max} is below FLEET_SCALE_MIN ({scale_min})")

    topic = env.get("FLEET_EVENTS_TOPIC", "").strip() or None
    if topic is not None and not _TOPIC.fullmatch(topic):
        raise ConfigError("FLEET_EVENTS_TOPIC", f"{topic!r} is not projects/PROJECT/topics/TOPIC")
    endpoint = env.get("COMPUTE_API_ENDPOINT", "").strip() or None
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise ConfigError(
            "COMPUTE_API_ENDPOINT", f"{endpoint!r} is not an http(s) URL", "unset it in production"
        )

    return Settings(
        fleet=fleet,
        migs=migs,
        heal_max_concurrent=_int(env, "FLEET_HEAL_MAX_CONCURRENT", 1, minimum=1),
        heal_max_percent=percent,
        heal_initial_delay=_int(env, "FLEET_HEAL_INITIAL_DELAY", 300),
        heal_settle=settle,
        heal_window=window,
        scale_step=_int(env, "FLEET_SCALE_STEP", 1, minimum=1),
        scale_min=scale_min,
        scale_max=scale_max,
        scale_cooldown=_int(env, "FLEET_SCALE_COOLDOWN", 300),
        scale_in_stabilization=_int(env, "FLEET_SCALE_IN_STABILIZATION", 600),
        events_topic=topic,
        slack_webhook=_webhook(env, "FLEET_SLACK_WEBHOOK_URL"),
        chat_webhook=_webhook(env, "FLEET_CHAT_WEBHOOK_URL"),
        generic_webhook=_webhook(env, "FLEET_GENERIC_WEBHOOK_URL"),
        compute_endpoint=endpoint,
        api_timeout=_float(env, "FLEET_API_TIMEOUT", 30.0, minimum=0.1),
        operation_wait=_float(env, "FLEET_OPERATION_WAIT", 0.0),
        webhook_timeout=_float(env, "FLEET_WEBHOOK_TIMEOUT", 10.0, minimum=0.1),
    )
