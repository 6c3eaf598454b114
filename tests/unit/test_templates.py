"""Templates: a text with no Jinja syntax is used as Jinja itself renders it, without Jinja."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bot import templates
from bot.errors import TemplateFailed

PLAIN = ["", "\n", "cat /proc/loadavg", "cat /proc/loadavg\n", "a\n\n", "a\r\nb\rc\n",
         "tail -n 40 /var/log/nginx/error.log\r\n", "  spaced  \n\n\n", "x\x0by\x1cz\u2028w",
         "echo %s $HOME `id` 'q' \"d\" }} %} #}"]


@pytest.mark.parametrize("text", PLAIN)
@pytest.mark.parametrize("shell", [False, True])
def test_plain_text_renders_as_jinja_renders_it(text: str, shell: bool) -> None:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    assert templates.render(text, {}, shell=shell) == env.from_string(text).render()
    assert templates.check_template(text, shell=shell) is None
    assert templates.template_names(text) == set()


def test_values_are_shell_quoted_and_errors_are_template_failed() -> None:
    assert templates.render("cat {{ path }}", {"path": "a b;rm"}, shell=True) == "cat 'a b;rm'"
    assert templates.render("{{ n }}", {"n": "a b"}, shell=False) == "a b"
    with pytest.raises(TemplateFailed, match="'missing' is undefined"):
        templates.render("cat {{ missing }}", {}, shell=True)
    with pytest.raises(TemplateFailed):
        templates.evaluate("steps.x.ok and", {})
    assert templates.evaluate("n > 1", {"n": 2}) is True
    assert templates.check_template("{{ x ", shell=False) is not None


def test_a_plain_command_never_loads_jinja() -> None:
    code = ("import sys\nfrom bot import templates\n"
            "assert templates.render('uptime\\n', {}, shell=True) == 'uptime'\n"
            "assert templates.check_template('uptime', shell=True) is None\n"
            "print('jinja2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_a_precompiled_catalog_renders_without_compiling() -> None:
    """A server compiles its runbooks' templates at start-up (bot.server): its runs then
    only render, none of them compiles on the loop."""
    from bot.executors import KINDS
    from bot.runbooks import load_catalog

    catalog = load_catalog(Path(__file__).resolve().parents[2] / "runbooks")
    templates._compiled.cache_clear()
    templates._expression.cache_clear()
    catalog.precompile()
    compiled, expressions = templates._compiled.cache_info(), templates._expression.cache_info()
    texts = [(text, shell) for rb in catalog.runbooks.values()
             for step in (*rb.steps, *rb.remediation)
             for _, text, shell in KINDS.get(step.kind).templates_of(step.params)
             if "{" in text]
    conditions = [step.when for rb in catalog.runbooks.values()
                  for step in (*rb.steps, *rb.remediation) if step.when]
    assert len(texts) > 20 and conditions and compiled.currsize >= len(set(texts))
    for text, shell in texts:
        templates._compiled(text, shell)
    for expr in conditions:
        templates._expression(expr)
    assert templates._compiled.cache_info().misses == compiled.misses
    assert templates._expression.cache_info().misses == expressions.misses
    names = templates.template_names.cache_info()  # read when the runbooks loaded
    for text, _ in texts:
        templates.template_names(text)
    assert templates.template_names.cache_info().misses == names.misses


def test_a_server_does_its_first_runs_imports_at_start_up() -> None:
    """bot.server._first_run_work: the discovery and the imports of the step kinds the
    runbooks use (the docker SDK) are loaded before a run needs them."""
    script = """
import sys
from pathlib import Path
from bot.runbooks import load_catalog
from bot.server import _first_run_work
catalog = load_catalog(Path("runbooks"))
assert "docker" in catalog.kinds()
wanted = ("bot.discovery", "docker.errors", "requests.exceptions")  # not loaded by the catalog
before = [m for m in wanted if m in sys.modules]
_first_run_work(catalog)
print(before, all(m in sys.modules for m in wanted))
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "[] True", done.stderr
