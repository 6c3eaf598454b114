"""Files read and parsed once, again only when they change (mtime, size or inode)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerVersion(Generic[T]):
    """What `parse(path)` made of a file, kept until the file changes: however many runbooks
    name a rules file it is parsed once, and asyncssh's known_hosts once per edit, not per
    connection. An OSError of the file's stat or of `parse` reaches the caller, and nothing is
    kept."""

    def __init__(self, parse: Callable[[str], T]) -> None:
        self.parse = parse
        self._kept: dict[str, tuple[tuple[int, int, int], T]] = {}  # real path -> (stamp, value)

    def get(self, path: str | os.PathLike[str]) -> T:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        key = os.path.realpath(path)
        kept = self._kept.get(key)
        if kept is None or kept[0] != stamp:
            kept = self._kept[key] = (stamp, self.parse(os.fspath(path)))
        return kept[1]
