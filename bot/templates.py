"""Jinja2, sandboxed. In shell commands every `{{ value }}` is shell-quoted on the way out,
so untrusted text (alert labels, chat arguments, captured facts) is never read as shell syntax."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta
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


@lru_cache(maxsize=2048)
def _compiled(text: str, shell: bool) -> Template:
    """Compiled once per text: compiling costs far more than rendering (50 hosts render the
    same step's command 50 times)."""
    return (_shell if shell else _plain).from_string(text)


@lru_cache(maxsize=2048)
def _expression(expr: str) -> Callable[..., Any]:
    return _plain.compile_expression(expr, undefined_to_none=True)


def render(text: str, context: Mapping[str, Any], *, shell: bool) -> str:
    return _compiled(text, shell).render(**context)


def check_condition(expr: str) -> str | None:
    try:
        _plain.compile_expression(expr)
    except TemplateSyntaxError as exc:
        return f"condition error: {exc.message}"
    return None


def evaluate(expr: str, context: Mapping[str, Any]) -> bool:
    return bool(_expression(expr)(**context))
