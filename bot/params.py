"""Runbook parameters: their types, where their values may come from, and the checks every
value passes before it is used.

Values are untrusted (alert labels, chat arguments, `--param`): each is validated against its
declared type, pattern and choices. Provenance: a runbook opens parameters to alerts and to chat
by name (`open_to`, default: none); the host's inventory beats alert labels; and a parameter that
picks what runs where (sudo, a path, a URL, a host, a unit/program/container name) takes a value
from an alert or chat only when the host has it: the runbook's `choices`, the host's own
`opsbot_<name>` variable, or its allow-list `opsbot_allowed_<name>`. Shell quoting happens later,
when a command is rendered.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from bot import pydanticlib  # noqa: F401 (first: pydantic without its plugin search)
from bot.errors import ParamInvalid
from bot.redact import redact

if TYPE_CHECKING:
    from bot.runbooks import Runbook

ParamType = Literal["str", "name", "int", "float", "bool", "port", "path", "url", "host"]
Source = Literal["alert", "chat", "terminal"]
# types whose value picks a file, a URL, a host or a program/unit/container
SENSITIVE_TYPES = frozenset({"path", "url", "host", "name"})
NEVER_OPEN = frozenset({"sudo"})  # no alert or chat message may turn on privileges


class ParamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: ParamType = "str"
    default: Any = None
    required: bool = False
    pattern: str | None = None
    choices: list[Any] | None = None
    min: float | None = None
    max: float | None = None
    description: str = ""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,199}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\.?$")
_URL = re.compile(r"^https?://[^\s'\"`\\<>]+$")


def _shown(value: Any) -> str:
    """An untrusted value as an error message quotes it: redacted first, then cut."""
    return redact(str(value))[:80]


def coerce_param(name: str, spec: ParamSpec, value: Any) -> Any:
    """Validate one parameter value (untrusted) against its spec; return it typed."""

    def bad(why: str) -> ParamInvalid:
        return ParamInvalid(f"parameter {name}: {why}, got {_shown(value)!r}")

    text = str(value)
    if any(c in text for c in "\x00\n\r"):
        raise bad("must be one line of text")
    kind = spec.type
    if kind in ("int", "port"):
        try:
            out: Any = int(text, 10)
        except ValueError:
            raise bad("must be a whole number") from None
        lo, hi = (1, 65535) if kind == "port" else (spec.min, spec.max)
        if (lo is not None and out < lo) or (hi is not None and out > hi):
            raise bad(f"must be between {lo if lo is not None else '-inf'} and "
                      f"{hi if hi is not None else 'inf'}")
    elif kind == "float":
        try:
            out = float(text)
        except ValueError:
            raise bad("must be a number") from None
        if (spec.min is not None and out < spec.min) or (spec.max is not None and out > spec.max):
            raise bad(f"must be between {spec.min} and {spec.max}")
    elif kind == "bool":
        if text.lower() not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            raise bad("must be true or false")
        out = text.lower() in ("true", "yes", "1", "on")
    elif kind == "name":
        if not _NAME.match(text):
            raise bad("must be a name of letters, digits and _.:@/+-")
        out = text
    elif kind == "path":
        if not text.startswith("/") or "/../" in f"{text}/":
            raise bad("must be an absolute path without ..")
        out = text
    elif kind == "url":
        if not _URL.match(text):
            raise bad("must be an http:// or https:// URL")
        out = text
    elif kind == "host":
        try:
            out = str(ipaddress.ip_address(text))
        except ValueError:
            if not _HOSTNAME.match(text):
                raise bad("must be a host name or IP address") from None
            out = text
    else:
        out = text
    if spec.pattern and not re.fullmatch(spec.pattern, str(out)):
        raise bad(f"must match {spec.pattern}")
    if spec.choices is not None and out not in spec.choices:
        raise bad(f"must be one of {', '.join(map(str, spec.choices))}")
    return out


def parse_assignments(words: Iterable[str]) -> dict[str, str]:
    """`key=value` words (from chat or `--param`) -> a mapping; values are checked later."""
    out = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ParamInvalid(f"expected key=value, got {word!r}")
        out[key] = value
    return out


def resolve_params(runbook: Runbook, *layers: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults, then each layer in order (later wins). Layers hold untrusted values: each is
    validated. Unknown keys in the last layer (what a person typed) are errors; in earlier
    layers (host variables, alert labels) they are ignored."""
    values: dict[str, Any] = {n: s.default for n, s in runbook.params.items()
                              if s.default is not None}
    for index, layer in enumerate(layers):
        last = index == len(layers) - 1
        for key, value in layer.items():
            if key not in runbook.params:
                if last:
                    accepted = ", ".join(sorted(runbook.params)) or "none"
                    raise ParamInvalid(f"unknown parameter {key!r} for runbook {runbook.name}"
                                       f" (accepted: {accepted})")
                continue
            values[key] = coerce_param(key, runbook.params[key], value)
    for name, spec in runbook.params.items():
        if name not in values:
            if spec.required:
                raise ParamInvalid(f"parameter {name} is required by runbook {runbook.name}")
        else:
            values[name] = coerce_param(name, spec, values[name])
    return values


def sensitive(name: str, spec: ParamSpec) -> bool:
    """A parameter an alert or chat may set only to a value the host has."""
    return spec.type in SENSITIVE_TYPES or name in NEVER_OPEN or spec.type == "bool" and \
        "sudo" in name


@dataclass(frozen=True)
class Resolved:
    """Parameters for one host, and the notes on values that were dropped."""

    values: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _host_allows(name: str, spec: ParamSpec, value: Any, host_vars: Mapping[str, Any],
                 discovered: Mapping[str, Any]) -> bool:
    if spec.choices is not None:  # already checked against them by coerce_param
        return True
    allowed = host_vars.get(f"allowed_{name}")
    allowed_values = list(allowed) if isinstance(allowed, list) else [allowed] if allowed else []
    allowed_values += [layer[name] for layer in (host_vars, discovered) if name in layer]
    return any(str(value) == str(a) for a in allowed_values)


def resolve_for_host(runbook: Runbook, host_vars: Mapping[str, Any],
                     labels: Mapping[str, Any], explicit: Mapping[str, Any], *,
                     source: Source, discovered: Mapping[str, Any] | None = None) -> Resolved:
    """Defaults < discovered (what opsbot found on the host) < alert labels (only those the
    runbook opens to alerts) < the host's inventory (`opsbot_<name>`, prefix removed in
    `host_vars`) < what a person typed (chat: only what the runbook opens to chat; terminal: any
    parameter). A label or discovered value that fails is dropped with a note; a typed value
    that fails is an error (ParamInvalid)."""
    notes: list[str] = []
    found: dict[str, Any] = {}
    for key, value in (discovered or {}).items():
        if key in runbook.params:
            try:
                found[key] = coerce_param(key, runbook.params[key], value)
            except ParamInvalid as exc:
                notes.append(f"discovered value left out: {exc}")
    from_alert: dict[str, Any] = {}
    for key, value in labels.items():
        spec = runbook.params.get(key)
        if spec is None:
            continue
        if key not in runbook.open_to_alerts:
            notes.append(f"Ignored alert label {key}: runbook {runbook.name} does not open it to "
                         "alerts")
            continue
        if key in host_vars:
            continue  # the inventory wins
        try:
            typed = coerce_param(key, spec, value)
        except ParamInvalid as exc:
            notes.append(f"Ignored alert label: {exc}")
            continue
        if sensitive(key, spec) and not _host_allows(key, spec, typed, host_vars, found):
            notes.append(f"Ignored alert label {key}: {_shown(value)!r} is not among the values "
                         f"the host allows (choices, opsbot_{key}, opsbot_allowed_{key})")
            continue
        from_alert[key] = typed
    typed_by_person: dict[str, Any] = {}
    for key, value in explicit.items():
        spec = runbook.params.get(key)
        if spec is not None and source == "chat":
            if key not in runbook.open_to_chat:
                opened = ", ".join(sorted(runbook.open_to_chat)) or "none"
                raise ParamInvalid(f"parameter {key} cannot be set from chat (runbook "
                                   f"{runbook.name} opens: {opened})")
            typed = coerce_param(key, spec, value)
            if sensitive(key, spec) and not _host_allows(key, spec, typed, host_vars, found):
                raise ParamInvalid(f"parameter {key}: {_shown(value)!r} is not among the "
                                   f"values the host allows (choices, opsbot_{key}, "
                                   f"opsbot_allowed_{key})")
        typed_by_person[key] = value
    inventory = {k: v for k, v in host_vars.items() if k in runbook.params}
    values = resolve_params(runbook, found, from_alert, inventory, typed_by_person)
    return Resolved(values, notes)
