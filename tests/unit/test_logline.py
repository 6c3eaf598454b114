"""Where a log message starts (bot/logline.py MESSAGE_START, `{^}` in the rules): after the
envelope of every collector a deployment may use, as the collectors print it.

tests/data/envelopes/ holds one real crash (`python3 -m crash_app`, Python 3.11.7, a module
that raises RuntimeError) as captured here: bare, through s6-log 2.11.3.2 (Debian s6) with its
T and t actions (`| s6-log -b T 1`, `| s6-log -b t 1`), and through Docker (`docker run -i
busybox cat < bare.log`, then `docker logs --timestamps`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bot.diagnosis import Condition, diagnose, load_rules
from bot.logline import MESSAGE_START, MESSAGE_START_TOKEN

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "runbooks" / "rules" / "http-502.yaml"
RULES = load_rules(RULES_FILE).model_copy(update={"similar": None})
CAPTURES = ROOT / "tests" / "data" / "envelopes"
MESSAGE = re.compile(MESSAGE_START + r"(?P<message>Traceback \(most recent call last\):)$")

# (envelope, message) as printed: each a real line, its source beside it
ENVELOPED = [
    # supervisord 4.2.5's own log, run here (logfile=, a program exiting 1)
    ("2026-12-01 01:13:04,867 ", "WARN exited: app (exit status 1; not expected)"),
    # docker-compose v1 (`name_1     | `): https://github.com/itzg/docker-bungeecord/issues/63
    ("survival_1     | ", "[00:51:09 INFO]:         __"),
    # the CRI log file (kubelet, containerd): Grafana Loki's cri stage,
    # https://grafana.com/docs/loki/v2.8.x/clients/promtail/stages/cri
    ("2019-04-30T02:12:41.8443515Z stdout F ", "message"),
    # journald with a pid: the training case upstream_crashloop--f-certimate-go-systemd-binds-
    # 443-held-by-nginx (a public thread)
    ("Aug 31 18:19:06 host-172-31-11-61 certimate[4560]: ",
     "Error: listen tcp 0.0.0.0:443: bind: address already in use"),
    # syslog without a pid: oom_killed--s-nvidia-keycloak-1gib-limit-oomkilled-at-start
    ("Feb 12 13:28:08 ... kernel: ", "Memory cgroup out of memory: Killed process 94702 (java)"),
    # Heroku's log drain: https://devcenter.heroku.com/articles/logging
    ("2010-09-16T15:13:46.677020+00:00 app[web.1]: ", "Processing PostController#list"),
]


def _capture(name: str) -> str:
    return (CAPTURES / f"python-3.11.7-m-crash-{name}.log").read_text()


@pytest.mark.parametrize("name", ["bare", "s6T", "s6t", "dockerT"])
def test_a_message_starts_after_each_collectors_envelope(name: str) -> None:
    line = _capture(name).splitlines()[0]
    match = MESSAGE.search(line)
    assert match, line
    assert match.group("message") == _capture("bare").splitlines()[0]


@pytest.mark.parametrize(("envelope", "message"), ENVELOPED)
def test_the_envelopes_quoted_from_their_sources(envelope: str, message: str) -> None:
    match = re.search(MESSAGE_START + "(?P<m>" + re.escape(message) + ")$", envelope + message)
    assert match and match.start("m") == len(envelope)
    assert re.match(MESSAGE_START + re.escape(message), message)  # and without one


def test_a_colon_inside_a_message_does_not_start_one() -> None:
    # a message that quotes a client's error (dependency_down--n-coderdojo-zen-postgres-not-running)
    line = "Postgres connection error: Error: connect ECONNREFUSED 127.0.0.1:5432"
    assert not re.search(MESSAGE_START + r"Error: connect ECONNREFUSED", line)
    assert re.search(MESSAGE_START + r"Postgres connection error: ", line)


@pytest.mark.skipif(shutil.which("s6-log") is None, reason="s6-log is not installed")
def test_s6_log_prints_its_envelopes_so_now() -> None:
    for actions in (["T"], ["t"], ["t", "T"]):
        out = subprocess.run(["s6-log", "-b", *actions, "1"], input="Killed\n", text=True,
                             capture_output=True, check=True, timeout=10).stdout
        match = re.search(MESSAGE_START + "(?P<m>Killed)$", out.rstrip("\n"))
        assert match and match.start("m") > 0, (actions, out)


def test_the_rules_spell_the_start_once() -> None:
    """`{^}` is replaced when a rules file is read; no pattern spells its own envelopes."""
    assert Condition(step="app_logs", pattern="{^}Killed$").pattern == MESSAGE_START + "Killed$"
    text = RULES_FILE.read_text()
    assert text.count(MESSAGE_START_TOKEN) >= 30
    assert "(?:^|[|:\\]]\\s" not in text and "(?:^|\\|\\s)" not in text
    patterns = [c.pattern for rule in RULES.causes.values() for s in rule.signals
                for c in (s, *s.also, *s.unless)]
    assert not any(MESSAGE_START_TOKEN in p for p in patterns)


def test_the_same_crash_reads_the_same_under_any_envelope() -> None:
    def read(name: str) -> list[tuple[str, str | None, float]]:
        return [(c.cause, c.detail, c.confidence)
                for c in diagnose(RULES, {"docker_logs": _capture(name)})]

    bare = read("bare")
    assert bare and bare[0][0] == "upstream_crashloop"
    for name in ("s6T", "s6t", "dockerT"):
        assert read(name) == bare, name
