from bot.redact import bound, redact


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
