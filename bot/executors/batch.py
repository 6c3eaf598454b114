"""Several shell commands in one session: the script, and its output told apart per command.

Each command runs in a subshell of its own (`( eval 'command' ) </dev/null`: a syntax error, an
`exit` or an `exec` ends only that command), but for one that is a single program and its
arguments (`simple`: no shell syntax, not a word any shell takes as its own): it runs as
`hash -r; eval 'command' </dev/null`, a program the shell starts, that can change nothing of the
shell, with the same output and status, and the host forks one process less for it (a tenth of
the host's CPU for a `tail` or an `ss`). Then the script prints a marker line with the
command's exit status: a newline, a random marker and the status. The marker never appears whole
in the script (so not in `ps` output either) and is not exported, so no command and no host can
print it to end a command's output early or forge its status.

With `ack`, the script first prints a marker line of its own (status 0) before any command
runs: a shell session kept open between batches (bot.executors.ssh) thus says it took the
script, as a new session's open confirmation does.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Sequence

Piece = bytes | int | None  # output of the current command | its exit status (None: unreadable)


_PLAIN = r"(?:[A-Za-z0-9_./:@%+,-]|'[^']*')"  # a plain character, or single-quoted text
# a program's name or path, then words of plain characters, single-quoted text and `=` (not
# first: zsh expands `=name`), one blank apart: no expansion, redirection, glob, list, pipe,
# comment or newline outside the quotes
_SIMPLE = re.compile(rf"[A-Za-z0-9_./-]+(?: {_PLAIN}(?:{_PLAIN}|=)*)*")
# words the POSIX shell, bash or zsh runs as their own (builtins, keywords, precommand
# modifiers): in the shell itself they could change it (`cd`, `read`, `umask`, `exec` ...)
SHELL_WORDS = frozenset("""
    - . : [ [[ ]] alias autoload bg bind break builtin bye caller case cd chdir command compgen
    complete compopt continue coproc declare dirs disable disown do done echo elif else emulate
    enable end esac eval exec exit export false fc fg fi float for foreach function getln
    getopts hash help history if in integer jobs kill let limit local logout mapfile noglob
    nocorrect popd print printf pushd pushln pwd r read readarray readonly rehash repeat return
    sched select set setopt shift shopt source suspend test then time times trap true ttyctl
    type typeset ulimit umask unalias unfunction unhash unlimit unset unsetopt until vared wait
    whence where which while zcompile zformat zle zmodload zparseopts zstyle
""".split())


def simple(command: str) -> bool:
    """One program and its arguments, no shell syntax: nothing it runs can change the shell."""
    return _SIMPLE.fullmatch(command) is not None and \
        command.split(" ", 1)[0] not in SHELL_WORDS


# builtins that change nothing of the shell, whatever their arguments (not `printf`: bash's
# `printf -v` sets a variable)
HARMLESS = frozenset(("[", "test", "echo", "true", "false"))
_TEST = re.compile(rf"\[(?: {_PLAIN}(?:{_PLAIN}|=)*)* \]")  # `[ ... ]`, plain words
_JOINED = re.compile(r" (?:&&|\|\||\|) ")


def _part(command: str) -> bool:
    if _TEST.fullmatch(command) is not None:
        return True
    return _SIMPLE.fullmatch(command) is not None and \
        (command.split(" ", 1)[0] not in SHELL_WORDS or command.split(" ", 1)[0] in HARMLESS)


def in_shell(command: str) -> bool:
    """A `simple` command, or simple commands and harmless builtins (`[ -f x ]`, `test`,
    `echo`, `true`, `false`) joined by ` && `, ` || ` or ` | `: nothing in it can change the
    shell (the parts of a pipeline run in processes of their own, or, zsh's last part, are
    harmless). A joiner inside quotes leaves an odd quote in a part, which then is not plain:
    such a command is not taken."""
    if simple(command):
        return True
    parts = _JOINED.split(command)
    return len(parts) > 1 and all(_part(p) for p in parts)


def _line(command: str) -> str:
    """The script's line that runs `command` (with stdin from /dev/null): one that can change
    nothing of the shell (`in_shell`) in the shell, after `hash -r` (bash keeps a program's
    path once it ran one, and would not find it again where a batch later moved it), so the
    host forks no subshell for it; any other in a subshell of its own."""
    quoted = shlex.quote(command)
    return f"hash -r; eval {quoted} </dev/null" if in_shell(command) else \
        f"( eval {quoted} ) </dev/null"


class Batch:
    def __init__(self, commands: Sequence[str], *, ack: bool = False) -> None:
        marker = secrets.token_hex(16)
        self.sep = f"\n{marker} ".encode()
        self.ack = ack
        half = len(marker) // 2
        lines = [f'M={marker[:half]}""{marker[half:]}']
        if ack:
            lines.append("printf '\\n%s 0\\n' \"$M\"")
        lines += [f"{_line(c)}; printf '\\n%s %s\\n' \"$M\" \"$?\"" for c in commands]
        self.script = "\n".join(lines) + "\n"
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Piece]:
        """What `data` adds: output bytes of the current command, and an int (its exit
        status) where it ended. Bytes that may begin a marker are held until they can tell."""
        self._buf += data
        out: list[Piece] = []
        while True:
            pos = self._buf.find(self.sep)
            if pos < 0:  # hold back only a tail that may be the start of a marker
                hold = self._buf.find(b"\n", max(0, len(self._buf) - len(self.sep) + 1))
                while hold >= 0 and not self.sep.startswith(self._buf[hold:]):
                    hold = self._buf.find(b"\n", hold + 1)
                cut = len(self._buf) if hold < 0 else hold
                if cut:
                    out.append(bytes(self._buf[:cut]))
                    del self._buf[:cut]
                return out
            end = self._buf.find(b"\n", pos + len(self.sep))
            if pos:
                out.append(bytes(self._buf[:pos]))
                del self._buf[:pos]
            if end < 0:  # the status line is not whole yet
                return out
            status = bytes(self._buf[len(self.sep):end - pos])
            out.append(int(status) if status.isdigit() and len(status) < 4 else None)
            del self._buf[:end - pos + 1]

    def rest(self) -> bytes:
        """What is held back, at the end of the session."""
        rest, self._buf = bytes(self._buf), bytearray()
        return rest
