import hashlib

from bot.executors.capture import Capture


def test_small_output_is_kept_whole() -> None:
    cap = Capture(cap=1000, head=100, tail=100)
    assert cap.feed(b"one\ntwo\n") and cap.text() == "one\ntwo\n" and cap.total == 8


def test_head_and_tail_on_line_boundaries_digest_of_everything() -> None:
    data = b"".join(b"line %05d\n" % i for i in range(10_000))
    cap = Capture(cap=10**9, head=1000, tail=1000)
    for i in range(0, len(data), 777):
        assert cap.feed(data[i:i + 777])
    text = cap.text()
    assert text.startswith("line 00000\n") and text.endswith("line 09999\n")
    assert "bytes cut" in text and len(text) < 2100
    assert all(len(line) == 10 for line in text.splitlines() if line.startswith("line"))
    assert cap.digest == hashlib.sha256(data).hexdigest() and cap.total == len(data)


def test_the_cap_stops_feeding() -> None:
    cap = Capture(cap=50, head=10, tail=10)
    assert cap.feed(b"x" * 40)
    assert not cap.feed(b"y" * 40)
    assert cap.capped and cap.total == 50 and not cap.feed(b"z")
    assert cap.digest == hashlib.sha256(b"x" * 40 + b"y" * 10).hexdigest()
    assert "the output cap" in cap.text()
