"""asyncssh, imported without its search for liboqs where liboqs is not installed.

On import, asyncssh asks `ctypes.util.find_library` for liboqs (post-quantum key exchange),
which runs `ldconfig -p` and then gcc: about 0.1 s of every cold `opsbot run`. Where no
liboqs library is in the usual folders, that search is answered "not found" at once; where one
is, asyncssh searches as it always does.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import sys

LIB_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/local/lib64",
            "/lib/*-linux-gnu", "/usr/lib/*-linux-gnu", "/usr/local/lib/*-linux-gnu")


def liboqs_installed() -> bool:
    dirs = [*LIB_DIRS, *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]
    return any(glob.glob(f"{d}/liboqs.so*") for d in dirs)


def _import() -> None:
    if "asyncssh" in sys.modules or liboqs_installed():
        return
    search = ctypes.util.find_library

    def without_oqs(name: str) -> str | None:
        return None if name in ("oqs", "liboqs") else search(name)

    ctypes.util.find_library = without_oqs
    try:
        import asyncssh  # noqa: F401
    finally:
        ctypes.util.find_library = search


_import()
import asyncssh  # noqa: E402 (after the search is answered)

__all__ = ["asyncssh"]
