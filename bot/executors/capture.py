"""A step's output, streamed and bounded: the head and the tail kept, a digest of all of it.

Executors feed bytes as they arrive; once `OUTPUT_CAP` bytes came, `feed` says stop and the
executor stops the command. Memory stays under HEAD + TAIL bytes whatever a command prints.
The kept text is cut on line boundaries, so redaction (which comes after) sees whole lines and
no secret is split across the cut.
"""

from __future__ import annotations

import hashlib

OUTPUT_CAP = 8 * 2**20  # bytes a step may print before it is stopped
HEAD = 256 * 1024  # bytes kept from the start
TAIL = 768 * 1024  # bytes kept from the end (the diagnosis reads the end of logs)


class Capture:
    def __init__(self, *, cap: int = OUTPUT_CAP, head: int = HEAD, tail: int = TAIL) -> None:
        self.cap, self.head_size, self.tail_size = cap, head, tail
        self._head = bytearray()
        self._tail = bytearray()
        self._sha = hashlib.sha256()
        self.total = 0
        self.capped = False  # the cap was reached: the command was stopped

    def feed(self, data: bytes) -> bool:
        """Take `data`; False once the cap is reached (what came beyond it is dropped)."""
        if self.capped:
            return False
        if self.total + len(data) >= self.cap:
            data, self.capped = data[: self.cap - self.total], True
        self.total += len(data)
        self._sha.update(data)
        room = self.head_size - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > 2 * self.tail_size:  # trim now and then, not on every chunk
                del self._tail[: len(self._tail) - self.tail_size]
        return not self.capped

    @property
    def digest(self) -> str:
        return self._sha.hexdigest()

    def text(self) -> str:
        """Head and tail, decoded, with what was cut said in one line between them."""
        tail = bytes(self._tail[-self.tail_size:]) if self._tail else b""
        head = bytes(self._head)
        cut = self.total - len(head) - len(tail)
        if cut <= 0 and not self.capped:
            return (head + tail).decode("utf-8", "replace")
        if cut > 0:  # whole lines on both sides of the cut
            if b"\n" in head[len(head) // 2:]:
                head = head[: head.rindex(b"\n") + 1]
            if b"\n" in tail[: len(tail) // 2]:
                tail = tail[tail.index(b"\n") + 1:]
            cut = self.total - len(head) - len(tail)
        note = f"… [{cut} bytes cut] …\n" if cut > 0 else ""
        stop = f"… [stopped after {self.total} bytes: the output cap] …\n" if self.capped else ""
        return head.decode("utf-8", "replace") + note + tail.decode("utf-8", "replace") + stop
