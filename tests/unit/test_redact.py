import pytest

from bot.redact import bound, console_safe, redact, redact_value, slack_escape


def test_secrets_are_masked_but_lines_still_read() -> None:
    text = ("db password=hunter22 ok\nAuthorization: Bearer abc.def.ghi\n"
            "token: xoxb-123456789-abcdef\namqp://guest:s3cret@127.0.0.1:5672\n"
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlaGVyZQ\n"
            '"secret": "inbox-jwt-secret"\n')
    out = redact(text)
    for secret in ("hunter22", "abc.def.ghi", "xoxb-123456789", "s3cret", "eyJhbGci",
                   "inbox-jwt-secret"):
        assert secret not in out
    assert "db password=[REDACTED] ok" in out
    assert "connect() failed (111: Connection refused)" == redact(
        "connect() failed (111: Connection refused)")


def test_bound_keeps_head_and_tail_and_says_the_cut() -> None:
    text = "\n".join(f"line {i}" for i in range(10_000))
    out, cut = bound(text, 2000)
    assert cut and len(out) <= 2000
    assert out.startswith("line 0\n") and out.rstrip().endswith("line 9999")
    assert "characters cut" in out
    assert bound("short", 10) == ("short", False)


@pytest.mark.parametrize(("text", "shown"), [
    ("mysqldump --password hunter22 db", "mysqldump --password [REDACTED] db"),
    ("mysql --db-password=hunter22", "mysql --db-password=[REDACTED]"),
    ("mysql -u root -phunter22 db", "mysql -u root -p[REDACTED] db"),
    ("redis://:hunter22@127.0.0.1:6379/0", "redis://:[REDACTED]@127.0.0.1:6379/0"),
    ("Cookie: sid=hunter22; theme=dark", "Cookie: [REDACTED]"),
    ("set-cookie: sid=hunter22; Path=/", "set-cookie: [REDACTED]"),
    ('password: "correct horse battery"', 'password: "[REDACTED]"'),
    ("DB_PASSWORD='it is hunter22'", "DB_PASSWORD='[REDACTED]'"),
    ('{"password": "a\\"b hunter22", "n": 1}', '{"password": "[REDACTED]", "n": 1}'),
    ("x-api-key: hunter22", "x-api-key: [REDACTED]"),
    ("İstanbul password=hunter22", "İstanbul password=[REDACTED]"),
])
def test_more_secret_shapes_are_masked(text: str, shown: str) -> None:
    assert redact(text) == shown


@pytest.mark.parametrize("text", [
    "ssh -p2222 web01", "docker run -p8080:80 nginx", "mkdir -p /srv/x", "the password is wrong",
    "PWD=/home/ops", "monkey=banana", "token: 5", "upstream timed out (110: Connection timed out)",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize("line", [
    "password" * 4000,  # the 32,000-character line of issue 10 stalled the old rule for 18 s
    "a" * 32_000, "a=" * 16_000, "eyJ-" * 8_000, "--password " * 3_000, "-p-p" * 8_000,
    "://x:" * 6_400, "api_key" * 4_600, 'password="' * 3_200,
])
def test_hostile_lines_are_redacted_whole(line: str) -> None:
    """Shapes that made backtracking rules quadratic (timings are in bench/, not here):
    the result is complete and masks what it must."""
    out = redact(line + " password=hunter22")
    assert out.endswith("password=[REDACTED]") and "hunter22" not in out


def test_a_secret_is_masked_before_the_cut() -> None:
    text = "x" * 5000 + " password=hunter22hunter22 " + "y" * 5000
    shown, cut = bound(redact(text), 5030, keep_head=0.999)
    assert cut and "hunter22" not in shown


def test_slack_and_console_text_is_defused() -> None:
    assert slack_escape("<!here> <@U123> & <https://x|y>") == \
        "&lt;!here&gt; &lt;@U123&gt; &amp; &lt;https://x|y&gt;"
    assert console_safe("ok\x1b[2J\x07\ttab\nline\u202e") == "ok\\x1b[2J\\x07\ttab\nline\\u202e"


def test_nested_values_and_secret_keys_are_masked() -> None:
    value = {"labels": {"db_password": "plain", "host": "web01"},
             "notes": ["token=abcdef1234"], "n": 3}
    assert redact_value(value) == {"labels": {"db_password": "[REDACTED]", "host": "web01"},
                                   "notes": ["token=[REDACTED]"], "n": 3}


def test_every_kind_of_value_is_redacted_the_same_however_often_it_repeats() -> None:
    """Short values are read once and kept (audit records repeat them); long ones, other
    mappings, str subclasses and numbers come out as before."""
    from enum import StrEnum
    from types import MappingProxyType

    class Phase(StrEnum):
        DIAGNOSTIC = "diagnostic"

    long_text = "x" * 300 + " password=hunter22 " + "y" * 300
    value = {"host": "web01", "cmd": "mysql -phunter22", "phase": Phase.DIAGNOSTIC,
             "n": 3, "f": 0.5, "ok": True, "none": None, "long": long_text,
             "proxy": MappingProxyType({"api_key": "abcdef", "n": 1}), "t": ("token=abcdef1",)}
    for _ in range(3):
        assert redact_value(value) == {
            "host": "web01", "cmd": "mysql -p[REDACTED]", "phase": "diagnostic", "n": 3,
            "f": 0.5, "ok": True, "none": None,
            "long": "x" * 300 + " password=[REDACTED] " + "y" * 300,
            "proxy": {"api_key": "[REDACTED]", "n": 1}, "t": ["token=[REDACTED]"]}


def test_no_secret_is_remembered_in_its_raw_form() -> None:
    """Short values and keys are read once and remembered, but only those with nothing to mask:
    a secret redacted from a value or a key never stays in the process's memory as it came."""
    from bot import redact as module

    redact_value({"host": "web01", "cmd": "mysql -phunter2297", "token=abcdef9876": "x"})
    remembered = " ".join([*module._CLEAN, *module._KEYS])
    assert "web01" in module._CLEAN and "host" in module._KEYS
    assert "hunter2297" not in remembered and "abcdef9876" not in remembered


def test_every_rule_compiles_and_each_is_compiled_only_for_a_text_holding_its_needle() -> None:
    """The rules are compiled on first need (a cold start compiled all of them): each one
    compiles, a text with no needle compiles none, and a text holding one compiles that one."""
    import re
    import subprocess
    import sys

    from bot.redact import RULES

    for rule in RULES:
        assert isinstance(rule.pattern, re.Pattern) and rule.needle
    code = ("from bot.redact import RULES, redact\n"
            "compiled = lambda: sorted(r.needle for r in RULES if 'pattern' in vars(r))\n"
            "assert redact('0.52 0.48 0.40 2/345 12345') == '0.52 0.48 0.40 2/345 12345'\n"
            "print(compiled())\n"
            "print(redact('export API_TOKEN=abcdef123'), compiled())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["[]", "export API_TOKEN=[REDACTED] ['token']"]
