"""Several commands in one session: their output told apart, whatever the chunks."""

from __future__ import annotations

from bot.executors.batch import Batch


def split(batch: Batch, stream: bytes, size: int) -> list[tuple[bytes, int | None]]:
    pieces = []
    for i in range(0, len(stream), size):
        pieces += batch.feed(stream[i:i + size])
    pieces.append(batch.rest())
    out, current = [], b""
    for piece in pieces:
        if isinstance(piece, bytes):
            current += piece
        else:
            out.append((current, piece))
            current = b""
    assert current == b""
    return out


def test_outputs_and_statuses_come_apart_at_any_chunk_size() -> None:
    for size in (1, 2, 7, 33, 4096):
        batch = Batch(["a", "b", "c"])
        sep = batch.sep
        stream = b"one\n" + sep + b"0\n" + b"no newline" + sep + b"3\n" + sep + b"127\n"
        assert split(batch, stream, size) == [(b"one\n", 0), (b"no newline", 3), (b"", 127)]


def test_the_marker_is_new_each_time_and_never_whole_in_the_script() -> None:
    a, b = Batch(["true"]), Batch(["true"])
    assert a.sep != b.sep
    assert a.sep.strip().decode() not in a.script
    forged = b"\n" + b"0" * 32 + b" 0\n"  # a marker of the right shape, but not this one
    assert split(a, forged + a.sep + b"0\n", 5) == [(forged, 0)]


def test_commands_are_quoted_into_their_own_subshell() -> None:
    batch = Batch(["echo 'it''s'; exit 3"])
    assert "( eval 'echo '\"'\"'it'\"'\"''\"'\"'s'\"'\"'; exit 3' ) </dev/null;" in batch.script


def test_an_acknowledged_batch_says_it_took_the_script_before_any_command() -> None:
    batch = Batch(["echo a"], ack=True)
    lines = batch.script.splitlines()
    assert lines[1] == "printf '\\n%s 0\\n' \"$M\"" and lines[2].startswith("( eval 'echo a' )")
    assert batch.sep.strip().decode() not in batch.script
    assert split(batch, batch.sep + b"0\n" + b"a\n" + batch.sep + b"0\n", 3) == \
        [(b"", 0), (b"a\n", 0)]
