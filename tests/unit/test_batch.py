"""Several commands in one session: their output told apart, whatever the chunks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bot.executors.batch import Batch, in_shell, simple


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


def test_one_program_and_its_arguments_is_simple_and_shell_syntax_is_not() -> None:
    for command in ("ss -ltnp", "tail -n 40 /var/log/nginx/error.log", "df -hP",
                    "curl -sS -m 5 -o - -w '\\nHTTP %{http_code}\\n' http://127.0.0.1:8000/x",
                    "/usr/sbin/nginx -t -c /etc/nginx/nginx.conf", "docker ps -aq --no-trunc",
                    "ls --color=never /", "grep -c 'a b; c | $(d)' /etc/hosts"):
        assert simple(command), command
    for command in ("cd /tmp", "exec nginx", "exit 3", "read x", "umask 077", "printf x",
                    "true", "test -f x", "time ls", "command ls", "FOO=1 ls", "ls; cd /",
                    "ls | wc", "ls && ls", "ls > f", "ls $HOME", "ls ~", "ls *.log",
                    "ls `pwd`", "ls \"a\"", "ls 'a", "ls =ls", "ls # x", "ls\nls", "ls &",
                    "ls\tx", "", "ls {a,b}", "if true; then ls; fi", "( ls )", "- ls",
                    "coproc ls"):
        assert not simple(command), command


def run_script(shell: str, script: str, cwd: Path) -> str:
    done = subprocess.run([shell, "-s"], input=script, capture_output=True, text=True,
                          cwd=cwd, timeout=30, check=False)
    return done.stdout


SHELLS = [s for s in ("/bin/sh", "/bin/dash", "/bin/bash", "/bin/zsh") if Path(s).exists()]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_simple_command_runs_without_the_subshell_and_changes_nothing(
        shell: str, tmp_path: Path) -> None:
    commands = ["/bin/pwd", "cd /; exit 3", "/bin/pwd", "ls /no-such-folder",
                "no-such-program -x", "/bin/sh -c 'kill -9 $$'", "/bin/pwd"]
    batch = Batch(commands)
    assert "hash -r; eval /bin/pwd </dev/null;" in batch.script
    assert "( eval 'cd /; exit 3' ) </dev/null;" in batch.script
    script = "exec 2>&1\n" + batch.script  # as bot.executors.sshcommon.PRELUDE joins them
    pieces = split(batch, run_script(shell, script, tmp_path).encode(), 4096)
    here = f"{tmp_path.resolve()}\n".encode()
    assert [status for _, status in pieces] == [0, 3, 0, 2, 127, 137, 0]
    assert pieces[0][0] == pieces[2][0] == pieces[6][0] == here  # the shell's folder kept
    assert b"no-such-program" in pieces[4][0] and b"not found" in pieces[4][0]
    assert b"no-such-folder" in pieces[3][0]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_program_moved_between_commands_is_found_again(shell: str, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "prog").write_text("#!/bin/sh\necho first\n")
    (first / "prog").chmod(0o755)
    batch = Batch(["prog", f"mv {first}/prog {second}/prog && echo moved", "prog"])
    script = f"PATH={first}:{second}:$PATH\n" + batch.script
    pieces = split(batch, run_script(shell, script, tmp_path).encode(), 4096)
    assert pieces == [(b"first\n", 0), (b"moved\n", 0), (b"first\n", 0)]


def test_programs_and_harmless_builtins_joined_by_and_or_pipe_run_in_the_shell() -> None:
    for command in ("test -d /run/systemd/system && echo systemd",
                    "[ -f /etc/supervisord.conf ] && cat -- /etc/supervisord.conf",
                    "[ -f '/a b' ] && cat -- '/a b'", "dmesg -T | tail -n 40",
                    "getent ahosts db || echo getent: db: Name or service not known",
                    "ss -ltnp", "true && ls", "ls | wc -l"):
        assert in_shell(command), command
    for command in ("ls && cd /", "ls | read x", "ls || exit 3", "x=1 && ls", "printf x",
                    "echo $HOME && ls", "echo 'a && b' && ls", "echo 'a | b' c 'd | e'",
                    "[ -f x", "[ x ] ]", "ls &&  ls", "ls; ls", "ls & ls", "ls |& ls",
                    "ls && exec ls", "ls | (cd /)", "echo a > f && ls", "time ls | wc",
                    "echo a", "true"):
        assert not in_shell(command), command


@pytest.mark.parametrize("shell", [*SHELLS, *(["/usr/bin/busybox"] if Path(
    "/usr/bin/busybox").exists() else [])])
def test_a_list_of_programs_runs_in_the_shell_with_the_statuses_and_output_of_a_subshell(
        shell: str, tmp_path: Path) -> None:
    (tmp_path / "there").write_text("text\n")
    commands = ["/bin/pwd", "[ -f there ] && cat -- there", "[ -f missing ] && cat -- missing",
                "test -d / && echo dir", "ls /no-such-folder || echo ls: failed",
                "echo a b | cut -d ' ' -f 2", "false || false", "cat there | wc -l",
                "/bin/sh -c 'kill -9 $$' | cat", "/bin/pwd"]
    batch = Batch(commands)
    assert all(f"hash -r; eval {c} </dev/null;" in batch.script for c in ("/bin/pwd",))
    assert "( eval" not in batch.script
    argv = [shell, "sh"] if shell.endswith("busybox") else [shell]
    done = subprocess.run([*argv, "-s"], input="exec 2>&1\n" + batch.script,
                          capture_output=True, text=True, cwd=tmp_path, timeout=30, check=False)
    pieces = split(batch, done.stdout.encode(), 4096)
    here = f"{tmp_path.resolve()}\n".encode()
    assert [status for _, status in pieces] == [0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    assert [out for out, _ in pieces[1:8]] == [b"text\n", b"", b"dir\n", pieces[4][0], b"b\n",
                                              b"", pieces[7][0]]
    assert pieces[4][0].endswith(b"ls: failed\n") and pieces[7][0].strip() == b"1"
    assert pieces[0][0] == pieces[9][0] == here  # the shell's folder kept
