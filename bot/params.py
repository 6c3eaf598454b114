"""Runbook parameters: their types, and the checks every value passes before it is used.

Values are untrusted (alert labels, chat arguments, `--param`): each is validated against its
declared type, pattern and choices. Shell quoting happens later, when a command is rendered.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from bot.errors import ParamInvalid

if TYPE_CHECKING:
    from bot.runbooks import Runbook

ParamType = Literal["str", "name", "int", "float", "bool", "port", "path", "url", "host"]


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


def coerce_param(name: str, spec: ParamSpec, value: Any) -> Any:
    """Validate one parameter value (untrusted) against its spec; return it typed."""

    def bad(why: str) -> ParamInvalid:
        return ParamInvalid(f"parameter {name}: {why}, got {str(value)[:80]!r}")

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
