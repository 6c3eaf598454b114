"""Property-based tests (hypothesis) of what parses untrusted input: the Alertmanager payload,
Slack bodies and signatures, the slash-command parser, and the `opsbot` command line. Each
either accepts or refuses with one line of the project's errors; nothing else escapes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import cli, commands
from bot.adapters.slack_requests import check_signature, parse_body
from bot.app import build
from bot.config import Settings
from bot.errors import IngestError
from bot.ingest import parse_alertmanager
from tests.botfixtures import ROOT
from tests.slacksign import sign

FAST = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
SLOW = settings(FAST, max_examples=80)  # strategies that cost more per example

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)
labels = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), min_size=1,
                         max_size=6)
alert = st.fixed_dictionaries(
    {"labels": labels},
    optional={"status": st.sampled_from(["firing", "resolved", "FIRING"]),
              "annotations": st.dictionaries(st.text(), st.text(), max_size=3),
              "startsAt": st.text(max_size=30), "endsAt": st.text(max_size=30) | st.none(),
              "fingerprint": st.text(max_size=16), "generatorURL": st.text(max_size=30),
              "extra": json_values})
webhook = st.fixed_dictionaries(
    {"alerts": st.lists(alert, min_size=1, max_size=5)},
    optional={"version": st.sampled_from(["4", "3", 4, None]),
              "groupKey": st.text(max_size=40) | st.integers() | st.none(),
              "status": st.sampled_from(["firing", "resolved"]),
              "receiver": st.text(max_size=20), "groupLabels": labels,
              "commonLabels": labels, "commonAnnotations": labels,
              "truncatedAlerts": st.integers(-5, 10**6) | st.text(max_size=5),
              "notification_reason": st.sampled_from(["first notification",
                                                      "repeat interval elapsed", ""]),
              "externalURL": st.text(max_size=20)})


@FAST
@given(st.binary(max_size=2000))
def test_any_bytes_are_alerts_or_one_line(body: bytes) -> None:
    try:
        group = parse_alertmanager(body)
    except IngestError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert group.alerts and group.group_key


@FAST
@given(json_values)
def test_any_json_is_alerts_or_one_line(value: Any) -> None:
    try:
        parse_alertmanager(json.dumps(value).encode())
    except IngestError as exc:
        assert "\n" not in str(exc)


@SLOW
@given(webhook)
def test_every_alertmanager_shaped_payload_is_accepted(payload: dict[str, Any]) -> None:
    group = parse_alertmanager(json.dumps(payload).encode())
    assert len(group.alerts) == len(payload["alerts"])
    assert group.status in ("firing", "resolved") and group.group_key
    assert all(a.status in ("firing", "resolved") for a in group.alerts)
    if isinstance(payload.get("groupKey"), int):
        assert group.group_key == str(payload["groupKey"])


@FAST
@given(st.binary(max_size=2000), st.sampled_from(["application/json",
                                                   "application/x-www-form-urlencoded", ""]))
def test_any_slack_body_is_a_payload_or_one_line(body: bytes, content_type: str) -> None:
    try:
        assert isinstance(parse_body(body, content_type), dict)
    except IngestError as exc:
        assert "\n" not in str(exc)


@FAST
@given(st.text(max_size=30) | st.none(), st.text(max_size=80) | st.none(),
       st.binary(max_size=200))
def test_any_signature_headers_are_checked_without_error(timestamp: str | None,
                                                         signature: str | None,
                                                         body: bytes) -> None:
    assert check_signature("secret", timestamp, signature, body, time.time()) is not None


@FAST
@given(st.binary(max_size=500))
def test_slack_signed_bodies_pass_once(body: bytes) -> None:
    headers = sign("secret", body)
    ts, sig = headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
    assert check_signature("secret", ts, sig, body, time.time()) is None
    assert check_signature("other", ts, sig, body, time.time()) is not None


@pytest.fixture(scope="module")
def console_bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """A bot without Slack, and its own event loop, for the slash-command parser."""
    tmp = tmp_path_factory.mktemp("parser")
    inventory = tmp / "inventory.yaml"
    inventory.write_text("all:\n  hosts:\n    edge01:\n      ansible_host: 127.0.0.1\n"
                         "      ansible_port: 1\n")
    loop = asyncio.new_event_loop()

    async def make() -> Any:
        return build(Settings(db=tmp / "o.db", runbooks=ROOT / "runbooks", inventory=inventory,
                              known_hosts=tmp / "known_hosts"), out=io.StringIO())

    runtime = loop.run_until_complete(make())
    yield runtime.bot, loop
    loop.run_until_complete(runtime.close())
    loop.close()


words = st.sampled_from(["help", "runbooks", "run", "diag", "incidents", "status", "timeline",
                         "resolve", "nginx-502", "edge01", "INC-1", "INC-²", "--plan", "md",
                         "k=v", "'", '"', "\\", "\x00", "٣"]) | st.text(max_size=12)


@FAST
@given(st.lists(words, max_size=8).map(" ".join) | st.text(max_size=200), st.booleans())
def test_slash_command_parser_answers_everything(console_bot: tuple[Any, Any], text: str,
                                                 operator: bool) -> None:
    bot, loop = console_bot
    if operator and text.split()[:1] == ["run"] and "--plan" not in text:
        text += " --plan"  # an operator's real run would start work on the host
    answer = loop.run_until_complete(commands.handle(bot, text, "U0FUZZ", operator=operator))
    assert isinstance(answer.now, str) and answer.now
    if answer.later is None and answer.now != commands.HELP:
        assert "Traceback" not in answer.now


cli_words = st.sampled_from(["runbooks", "list", "show", "validate", "run", "analyze",
                             "incidents", "export", "approve", "reject", "resolve", "audit",
                             "verify", "prune", "--json", "--dry-run", "--format", "md", "csv",
                             "--evidence", "--param", "--before", "INC-1", "nginx-502", "k=v",
                             "-o", "out.txt", "evidence.json", "2026-01-01T00:00:00Z"]) | \
    st.text(max_size=10).filter(lambda w: not w.startswith(("/", "~")) and ".." not in w)


@SLOW
@given(st.lists(cli_words, min_size=1, max_size=6))
def test_command_line_exits_with_a_code(tmp_path_factory: pytest.TempPathFactory,
                                        argv: list[str]) -> None:
    if argv[0] in ("serve", "discover"):  # a server, or SSH discovery: not for fuzzing
        return
    tmp = _cli_home(tmp_path_factory)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(tmp), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err), _env(tmp):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse: usage error (2) or --help (0)
            code = exc.code if isinstance(exc.code, int) else 2
    assert code in (0, 1, 2), (argv, code)
    assert "Traceback" not in err.getvalue(), (argv, err.getvalue())


_HOME: list[Path] = []


def _cli_home(factory: pytest.TempPathFactory) -> Path:
    if not _HOME:
        tmp = factory.mktemp("cli")
        (tmp / "inventory.yaml").write_text("all:\n  hosts:\n    edge01:\n      ansible_host: "
                                            "127.0.0.1\n      ansible_port: 1\n")
        (tmp / "evidence.json").write_text('{"proxy_check": "HTTP 502"}')
        _HOME.append(tmp)
    return _HOME[0]


@contextlib.contextmanager
def _env(tmp: Path) -> Iterator[None]:
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(("SLACK_", "OPSBOT_"))]:
        del os.environ[key]
    os.environ.update({"OPSBOT_DB": str(tmp / "o.db"), "OPSBOT_RUNBOOKS": str(ROOT / "runbooks"),
                       "OPSBOT_INVENTORY": str(tmp / "inventory.yaml"),
                       "OPSBOT_KNOWN_HOSTS": str(tmp / "known_hosts")})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@FAST
@given(st.text(max_size=80))
def test_a_key_is_used_once_until_it_expires(tmp_path_factory: pytest.TempPathFactory,
                                             key: str) -> None:
    from bot.adapters.store import Store

    store = Store(_cli_home(tmp_path_factory) / "seen.db")
    try:
        now = time.time()
        assert store.first_use(key, now + 60) and not store.first_use(key, now + 60)
        assert store.first_use(f"old:{key}", now - 1)  # already expired: pruned next time
        assert store.first_use(f"old:{key}", now + 60)
    finally:
        store.close()
