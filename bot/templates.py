"""Jinja2, sandboxed. In shell commands every `{{ value }}` is shell-quoted on the way out,
so untrusted text (alert labels, chat arguments, captured facts) is never read as shell syntax."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _shell_finalize(value: Any) -> str:
    return shlex.quote(str(value))


_plain = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                       keep_trailing_newline=False)
_shell = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                       finalize=_shell_finalize)
_QUOTED_EXPR = re.compile(r"""(['"])\s*\{\{[^}]*\}\}\s*\1""")


def check_template(text: str, *, shell: bool) -> str | None:
    """A one-line problem with this template, or None."""
    try:
        (_shell if shell else _plain).parse(text)
    except TemplateSyntaxError as exc:
        return f"template error: {exc.message}"
    if shell and _QUOTED_EXPR.search(text):
        return "do not quote {{ ... }} yourself: values are shell-quoted when rendered"
    return None


def template_names(text: str) -> set[str]:
    """Top-level names a template reads (to check them against the runbook's parameters)."""
    return set(meta.find_undeclared_variables(_plain.parse(text)))


def render(text: str, context: Mapping[str, Any], *, shell: bool) -> str:
    env = _shell if shell else _plain
    return env.from_string(text).render(**context)


def check_condition(expr: str) -> str | None:
    try:
        _plain.compile_expression(expr)
    except TemplateSyntaxError as exc:
        return f"condition error: {exc.message}"
    return None


def evaluate(expr: str, context: Mapping[str, Any]) -> bool:
    return bool(_plain.compile_expression(expr, undefined_to_none=True)(**context))
