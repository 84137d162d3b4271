"""The Monitoring filter language, as far as the local Monitoring endpoint checks it.

A time-series filter (https://cloud.google.com/monitoring/api/v3/filters) is selectors compared
with values, joined by AND / OR (AND when nothing is written), negated with NOT, grouped with
parentheses:

    selector  project | group.id | resource.type | metric.type
              | resource.label(s).KEY | metric.label(s).KEY
              | metadata.system_labels.KEY | metadata.user_labels.KEY
              KEY is a bare name ([A-Za-z_][A-Za-z0-9_]*) or a double-quoted string, which a key
              with '-', '.' or '/' needs (metadata.user_labels."fleet-mig")
    operator  =  !=  :  >  <  >=  <=
    value     "string" | number | true | false
              | starts_with("s") | ends_with("s") | has_substring("s")
              | monitoring.regex.full_match("re") | one_of("a", "b", ...)

`parse` returns the comparisons found, or raises FilterError saying where the text went wrong, so
a policy the real API would refuse (an unquoted string, an unknown selector, a dash in a bare
label key) is refused here too. What a comparison means for data is not evaluated: this endpoint
stores policies; it has no time series.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<op>!=|>=|<=|=|:|>|<)
      | (?P<paren>[(),])
      | (?P<number>-?\d+(?:\.\d+)?(?![\w.]))
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\]|\\.)*"))*)
    )""",
    re.VERBOSE,
)
_KEY = r'(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\]|\\.)+")'
_SELECTORS = (
    re.compile(r"project|group\.id|resource\.type|metric\.type"),
    re.compile(rf"(?:resource|metric)\.labels?\.{_KEY}"),
    re.compile(rf"metadata\.(?:system|user)_labels\.{_KEY}"),
)
_FUNCTIONS = {
    "starts_with": 1,
    "ends_with": 1,
    "has_substring": 1,
    "monitoring.regex.full_match": 1,
    "one_of": -1,  # one or more
}
_TYPE_SELECTORS = ("metric.type", "resource.type", "group.id", "project")


class FilterError(ValueError):
    """The filter is not valid Monitoring filter syntax."""


@dataclass(frozen=True)
class Comparison:
    selector: str  # as written, key quotes included: metadata.user_labels."fleet-mig"
    op: str
    value: str  # the literal as written: "x", 0.5, one_of("a","b")
    function: str = ""  # starts_with, one_of, ... ('' for a plain literal)
    args: tuple[str, ...] = ()  # the function's string arguments, unquoted (or the plain string)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise FilterError(f"unexpected character at offset {pos}: {text[pos : pos + 20]!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0
        self.found: list[Comparison] = []

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, what: str) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise FilterError(f"expected {what} at the end of the filter")
        self.i += 1
        return tok

    def expression(self) -> None:
        self.term()
        while (tok := self.peek()) is not None and tok != ("paren", ")"):
            if tok in (("word", "AND"), ("word", "OR")):
                self.i += 1
            self.term()  # juxtaposition is an implicit AND

    def term(self) -> None:
        kind, value = self.take("a selector")
        if (kind, value) == ("word", "NOT"):
            self.term()
            return
        if (kind, value) == ("paren", "("):
            self.expression()
            if self.take("')'") != ("paren", ")"):
                raise FilterError("expected ')'")
            return
        if kind != "word" or not any(p.fullmatch(value) for p in _SELECTORS):
            raise FilterError(
                f"unknown selector {value!r}: expected project, group.id, resource.type, metric.type, "
                "resource.labels.KEY, metric.labels.KEY or metadata.(system|user)_labels.KEY (a key with "
                "'-', '.' or '/' must be quoted)"
            )
        op_kind, op = self.take(f"an operator after {value}")
        if op_kind != "op":
            raise FilterError(f"expected an operator after {value}, got {op!r}")
        self.found.append(self.value(value, op))

    def value(self, selector: str, op: str) -> Comparison:
        kind, token = self.take(f"a value for {selector}")
        if kind == "string":
            return Comparison(selector, op, token, args=(_unquote(token),))
        if kind == "number" or (kind == "word" and token in ("true", "false")):
            if selector in _TYPE_SELECTORS:
                raise FilterError(f"{selector} takes a quoted string, got {token}")
            return Comparison(selector, op, token)
        if kind == "word" and token in _FUNCTIONS:
            if self.take("'('") != ("paren", "("):
                raise FilterError(f"expected '(' after {token}")
            args: list[str] = []
            while True:
                arg_kind, arg = self.take(f"an argument of {token}")
                if arg_kind != "string":
                    raise FilterError(f"arguments of {token} are quoted strings, got {arg!r}")
                args.append(_unquote(arg))
                sep = self.take(f"',' or ')' in {token}(...)")
                if sep == ("paren", ")"):
                    break
                if sep != ("paren", ","):
                    raise FilterError(f"expected ',' or ')' in {token}(...), got {sep[1]!r}")
            want = _FUNCTIONS[token]
            if want > 0 and len(args) != want:
                raise FilterError(f"{token} takes {want} argument, got {len(args)}")
            if op not in ("=", "!="):
                raise FilterError(f"{token}(...) is compared with = or !=, not {op}")
            literal = f"{token}({', '.join(repr(a) for a in args)})"
            return Comparison(selector, op, literal, token, tuple(args))
        raise FilterError(
            f"value of {selector} must be a quoted string, a number, true/false or a "
            f"function (starts_with, one_of, ...), got {token!r}"
        )


def parse(text: str) -> list[Comparison]:
    """Every comparison in the filter; FilterError if it is not valid filter syntax."""
    if not text.strip():
        raise FilterError("the filter is empty")
    parser = _Parser(text)
    parser.expression()
    if parser.peek() is not None:
        raise FilterError(f"unexpected {parser.peek()[1]!r}")  # type: ignore[index]
    return parser.found


def label_key(selector: str) -> str:
    """The label key of a label selector, unquoted: metadata.user_labels."fleet-mig" -> fleet-mig."""
    rest = re.sub(r"^(?:resource|metric)\.labels?\.|^metadata\.(?:system|user)_labels\.", "", selector)
    return _unquote(rest) if rest.startswith('"') else rest
