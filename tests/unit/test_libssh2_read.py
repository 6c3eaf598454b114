"""The libssh2 client's read of a session: output that arrives with the session's end."""

from __future__ import annotations

from ssh2.error_codes import LIBSSH2_ERROR_EAGAIN

from bot.executors.libssh2 import _read


class Channel:
    """A session whose last output and end are taken in by one read of the other stream (as
    libssh2 does: any read takes every packet that came)."""

    def __init__(self) -> None:
        self.ended = False
        self.stdout: list[bytes] = []

    def eof(self) -> bool:
        return self.ended

    def read(self, size: int) -> tuple[int, bytes]:
        if self.stdout:
            data = self.stdout.pop(0)
            return len(data), data
        return (0 if self.ended else LIBSSH2_ERROR_EAGAIN), b""

    def read_stderr(self, size: int) -> tuple[int, bytes]:
        if not self.ended:  # the packets come in: the last output, then the end
            self.stdout.append(b"last line\n")
            self.ended = True
        return 0, b""


def test_the_last_output_is_read_before_the_end() -> None:
    channel = Channel()
    assert _read(channel) == b"last line\n"
    assert _read(channel) == b""


def test_nothing_yet_is_none() -> None:
    class Idle(Channel):
        def read_stderr(self, size: int) -> tuple[int, bytes]:
            return LIBSSH2_ERROR_EAGAIN, b""

    assert _read(Idle()) is None
