"""Jinja2, sandboxed. In shell commands every `{{ value }}` is shell-quoted on the way out,
so untrusted text (alert labels, chat arguments, captured facts) is never read as shell syntax.

A text without `{` holds no Jinja syntax (no `{{`, `{%` or `{#`): it is used as Jinja would
render it, without loading Jinja, which a cold `opsbot run` of plain commands then never imports.
Jinja's errors come out as `TemplateFailed`, with Jinja's message.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from bot.errors import TemplateFailed

if TYPE_CHECKING:
    from jinja2 import Template
    from jinja2.sandbox import ImmutableSandboxedEnvironment

_QUOTED_EXPR = re.compile(r"""(['"])\s*\{\{[^}]*\}\}\s*\1""")
_NEWLINE = re.compile(r"\r\n|\r|\n")


def _shell_finalize(value: Any) -> str:
    return shlex.quote(str(value))


@cache
def _env(shell: bool) -> ImmutableSandboxedEnvironment:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if shell:
        return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                             finalize=_shell_finalize)
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                         keep_trailing_newline=False)


@contextmanager
def _jinja_errors() -> Iterator[None]:
    from jinja2 import TemplateError

    try:
        yield
    except TemplateError as exc:
        raise TemplateFailed(str(exc)) from exc


def _plain_text(text: str) -> str:
    """What Jinja renders for a text with no syntax in it: line breaks made newlines, one
    trailing line break dropped (keep_trailing_newline is off)."""
    lines = _NEWLINE.split(text)
    if lines[-1] == "":
        del lines[-1]
    return "\n".join(lines)


def check_template(text: str, *, shell: bool) -> str | None:
    """A one-line problem with this template, or None."""
    if "{" not in text:
        return None
    from jinja2 import TemplateSyntaxError

    try:
        _env(shell).parse(text)
    except TemplateSyntaxError as exc:
        return f"template error: {exc.message}"
    if shell and _QUOTED_EXPR.search(text):
        return "do not quote {{ ... }} yourself: values are shell-quoted when rendered"
    return None


@lru_cache(maxsize=2048)
def template_names(text: str) -> frozenset[str]:
    """Top-level names a template reads (to check them against the runbook's parameters).
    Kept per text: the runbooks' load asks first, a run's grouping of steps again (a parse on
    the loop, at a server's first run, was one of its longest callbacks)."""
    if "{" not in text:
        return frozenset()
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(_env(False).parse(text)))


@lru_cache(maxsize=2048)
def _compiled(text: str, shell: bool) -> Template:
    """Compiled once per text: compiling costs far more than rendering (50 hosts render the
    same step's command 50 times)."""
    with _jinja_errors():
        return _env(shell).from_string(text)


@lru_cache(maxsize=2048)
def _expression(expr: str) -> Callable[..., Any]:
    with _jinja_errors():
        return _env(False).compile_expression(expr, undefined_to_none=True)


def precompile(text: str, *, shell: bool) -> None:
    """Compile a template now (a checked one: errors were reported when it was loaded)."""
    if "{" in text:
        with suppress(TemplateFailed):
            _compiled(text, shell)


def precompile_condition(expr: str) -> None:
    with suppress(TemplateFailed):
        _expression(expr)


def render(text: str, context: Mapping[str, Any], *, shell: bool) -> str:
    if "{" not in text:
        return _plain_text(text)
    template = _compiled(text, shell)
    with _jinja_errors():
        return template.render(**context)


def check_condition(expr: str) -> str | None:
    from jinja2 import TemplateSyntaxError

    try:
        _env(False).compile_expression(expr)
    except TemplateSyntaxError as exc:
        return f"condition error: {exc.message}"
    return None


def evaluate(expr: str, context: Mapping[str, Any]) -> bool:
    function = _expression(expr)
    with _jinja_errors():
        return bool(function(**context))
