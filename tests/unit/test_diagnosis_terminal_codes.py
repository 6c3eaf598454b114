"""Logs written for a terminal (colours: a container run with a TTY, uvicorn --use-colors,
.NET's console logger) are matched as a reader sees them and quoted as they were printed.

tests/data/terminal/uvicorn-0.54.0-use-colors.log is real output, captured here with
`python3 -m uvicorn a:app --use-colors --host 127.0.0.1 --port 18766` (uvicorn 0.54.0)."""

from __future__ import annotations

from pathlib import Path

from bot.diagnosis import diagnose, load_rules
from bot.logline import plain
from bot.similar import words

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "runbooks" / "rules" / "http-502.yaml")
COLOURED = (ROOT / "tests" / "data" / "terminal" / "uvicorn-0.54.0-use-colors.log").read_text()


def test_the_capture_holds_terminal_codes_inside_the_banner() -> None:
    banner = next(line for line in COLOURED.splitlines() if "Uvicorn running on" in line)
    assert "on \x1b[1mhttp://127.0.0.1:18766\x1b[0m" in banner
    assert plain(banner) == "INFO:     Uvicorn running on http://127.0.0.1:18766 " \
                            "(Press CTRL+C to quit)"


def test_a_coloured_banner_names_its_cause_and_is_quoted_as_printed() -> None:
    causes = diagnose(RULES, {"docker_logs": COLOURED})
    assert causes, "no cause"
    first = causes[0]
    assert (first.cause, first.detail) == ("wrong_proxy_config", "backend_listens_on_loopback")
    raw_lines = set(COLOURED.splitlines())
    assert first.evidence and all(line in raw_lines for line in first.evidence)
    assert any("\x1b[1m" in line for line in first.evidence)


def test_the_same_log_without_colours_reads_the_same() -> None:
    bare = "\n".join(plain(line) for line in COLOURED.splitlines())
    coloured = [(c.cause, c.detail) for c in diagnose(RULES, {"docker_logs": COLOURED})]
    assert coloured == [(c.cause, c.detail) for c in diagnose(RULES, {"docker_logs": bare})]


def test_past_incidents_compare_words_not_colour_codes() -> None:
    line = "\x1b[31mERROR\x1b[0m:    Error loading ASGI app."
    assert words(line) == words(plain(line)) == {"error", "loading", "asgi", "app"}


def test_plain_leaves_other_text_alone() -> None:
    for line in ("", "no codes [32m here", "tab\there", "a lone escape at the end\x1b"):
        assert plain(line) == line
    assert plain("\x1b]0;title\x07x\x1b[2Ky") == "xy"


def test_the_thread_shows_the_quotes_without_terminal_codes() -> None:
    import json

    from bot.render import Finding, finding_message

    causes = diagnose(RULES, {"docker_logs": COLOURED})
    shown = json.dumps(finding_message(Finding(("web01",), tuple(causes))).blocks)
    assert "Uvicorn running on http://127.0.0.1:18766" in shown
    assert "\\u001b" not in shown and "\x1b" not in shown
