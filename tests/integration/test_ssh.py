"""The SSH executor against real sshd: pooling, idle close, failures kept as clear results."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bot.executors.ssh import SshPool
from bot.inventory import load_inventory
from bot.models import Host, RenderedStep, StepResult, StepStatus
from bot.params import resolve_params
from bot.runbooks import load_runbook
from bot.runner import NullListener, Runner

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]


def parse_ts(text: str) -> float:
    from bot.adapters.store import parse_ts as parse

    return parse(text).timestamp()


def web01(inventory_file: Path) -> Host:
    return load_inventory(inventory_file).hosts["web01"]


async def test_one_connection_serves_many_commands_then_closes_when_idle(
        inventory_file: Path, known_hosts_file: Path) -> None:
    pool = SshPool(known_hosts_file, idle=0.5)
    host = web01(inventory_file)
    outs = await asyncio.gather(*(pool.run(host, f"echo {i}", 10) for i in range(20)))
    assert [o.output for o in outs] == [f"{i}\n" for i in range(20)]
    assert pool.connects == 1
    await asyncio.sleep(1.0)
    assert all(e.conn is None for e in pool._entries.values())
    assert (await pool.run(host, "echo again", 10)).output == "again\n"
    assert pool.connects == 2
    await pool.close()


async def test_failures_are_results_not_exceptions(inventory_file: Path,
                                                   known_hosts_file: Path) -> None:
    pool = SshPool(known_hosts_file, connect_timeout=3)
    host = web01(inventory_file)
    out = await pool.run(host, "echo partial; sleep 10", 1)
    assert out.timed_out and out.output == "partial\n" and out.exit_status is None
    out = await pool.run(host, "echo to stderr >&2; exit 3", 10)
    assert (out.exit_status, out.output) == (3, "to stderr\n")
    nowhere = Host("ghost", "127.0.0.9", 2222, "opsbot-lab", host.key_file)
    started = time.monotonic()
    out = await pool.run(nowhere, "true", 10)
    assert out.error and out.error.startswith("cannot reach ghost at 127.0.0.9:2222")
    assert time.monotonic() - started < 5
    wrong_user = Host("web01", host.address, host.port, "nobody-here", host.key_file)
    out = await pool.run(wrong_user, "true", 10)
    assert out.error and "was refused" in out.error
    missing = SshPool(known_hosts_file.parent / "no-such-known-hosts")
    out = await missing.run(host, "true", 10)
    assert out.error and "refusing to connect without verifying the host key" in out.error
    await pool.close()


async def test_a_group_runs_its_hosts_in_parallel(inventory_file: Path, known_hosts_file: Path,
                                                  healthy_web) -> None:  # type: ignore[no-untyped-def]
    from bot.executors import ExecContext

    runbook = load_runbook(ROOT / "runbooks/nginx-502.yaml")
    inventory = load_inventory(inventory_file)
    ctx = ExecContext(known_hosts=known_hosts_file)
    runner = Runner(ctx)
    targets = [(h, resolve_params(runbook, h.opsbot_vars())) for h in inventory.resolve("web")]
    reports = await runner.diagnose(runbook, targets, NullListener())
    assert [r.host.name for r in reports] == ["web01", "web02"]
    for report in reports:
        statuses = {r.step.step_id: r.status for r in report.results}
        assert statuses["healthcheck"] is StepStatus.OK
        assert statuses["proxy_check"] is StepStatus.OK
        assert not [c for c in report.causes if c.confidence > 0.5]
    # side by side, not one after the other: web02 began before web01 was done
    web01_end = max(parse_ts(r.started_at) + r.duration for r in reports[0].results)
    web02_start = min(parse_ts(r.started_at) for r in reports[1].results)
    assert web02_start < web01_end
    await runner.diagnose(runbook, targets[:1], NullListener())
    assert ctx.ssh.connects == 2  # one per host, reused by every step and both runs
    await ctx.close()


async def test_system_tools_are_found_by_a_non_root_login(inventory_file: Path,
                                                          known_hosts_file: Path) -> None:
    pool = SshPool(known_hosts_file)
    try:
        out = await pool.run(web01(inventory_file), "command -v nginx ss; id -u", 10)
    finally:
        await pool.close()
    lines = out.output.split()
    assert lines[0] == "/usr/sbin/nginx" and lines[-1] != "0", out


async def test_a_flood_of_output_is_capped_and_the_command_stopped(
        inventory_file: Path, known_hosts_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from bot.executors import capture

    monkeypatch.setattr(capture, "OUTPUT_CAP", 3 * 2**20)
    monkeypatch.setattr(capture, "HEAD", 4096)
    monkeypatch.setattr(capture, "TAIL", 4096)
    monkeypatch.setattr(capture.Capture.__init__, "__kwdefaults__",
                        {"cap": 3 * 2**20, "head": 4096, "tail": 4096})
    pool = SshPool(known_hosts_file)
    host = web01(inventory_file)
    marker = f"/tmp/opsbot-cap-{time.monotonic_ns()}"
    # 1 MB lines, forever; the marker file says the command went on after the cap
    out = await pool.run(host, f"seq 1 100000000 | awk '{{printf \"%07d\\n\", $1}}'; "
                               f"touch {marker}", 60)
    assert out.capped and out.total_bytes == 3 * 2**20 and out.exit_status is None
    assert out.error and "output cap" in out.error
    assert out.output.startswith("0000001\n") and "bytes cut" in out.output
    assert len(out.output) < 9000
    expected = b"".join(b"%07d\n" % i for i in range(1, 3 * 2**20 // 8 + 2))[:3 * 2**20]
    assert out.digest == hashlib.sha256(expected).hexdigest()
    await asyncio.sleep(1)
    check = await pool.run(host, f"test -e {marker} && echo ran-on || echo stopped", 10)
    assert check.output == "stopped\n"
    await pool.close()


async def test_a_lost_connection_is_not_retried_once_the_command_started(
        inventory_file: Path, known_hosts_file: Path) -> None:
    pool = SshPool(known_hosts_file)
    host = web01(inventory_file)
    counter = f"/tmp/opsbot-once-{time.monotonic_ns()}"

    async def drop_soon() -> None:
        await asyncio.sleep(0.5)
        entry = next(iter(pool._entries.values()))
        assert entry.conn is not None
        entry.conn.abort()  # the transport dies under the running command

    dropping = asyncio.create_task(drop_soon())
    out = await pool.run(host, f"echo x >> {counter}; sleep 3", 10)
    await dropping
    assert out.error and "not retried" in out.error
    lines = await pool.run(host, f"cat {counter}; rm -f {counter}", 10)
    assert lines.output == "x\n"  # ran once, never twice
    await pool.close()


class Events:
    """A StepListener that keeps the order in which steps were told to start and end."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def step_started(self, step: RenderedStep) -> str:
        self.seen.append(f"start {step.step_id}")
        return step.step_id

    async def step_finished(self, handle: str, result: StepResult) -> None:
        self.seen.append(f"end {handle}")

    async def host_finished(self, host: str) -> None:
        self.seen.append("host done")


async def test_a_hosts_steps_share_one_session_each_with_its_own_result(
        tmp_path: Path, inventory_file: Path, known_hosts_file: Path) -> None:
    from bot.executors import ExecContext

    commands = {
        "mixed": "echo out; echo err >&2; exit 3",
        "no_newline": "printf 'no newline'",
        "stdin": "cat; echo stdin-closed",
        "broken": "if then fi",
        "forged": "printf '\\n%s 0\\nnot the end\\n' 0123456789abcdef0123456789abcdef",
        "ps": "ps -ww -eo args | grep -c eval",
        "hung": "echo before; sleep 30",
        "after": "echo after",
    }
    steps = "".join(f"  - id: {sid}\n    kind: ssh\n    timeout: {2 if sid == 'hung' else 10}\n"
                    f"    command: {command!r}\n" for sid, command in commands.items())
    (tmp_path / "rb.yaml").write_text(f"name: together\nsteps:\n{steps}")
    rb = load_runbook(tmp_path / "rb.yaml")
    ctx = ExecContext(known_hosts=known_hosts_file)
    events = Events()
    try:
        (report,) = await Runner(ctx).diagnose(rb, [(web01(inventory_file), {})], events)
    finally:
        await ctx.close()
    got = {r.step.step_id: r for r in report.results}
    assert list(got) == list(commands)
    assert (got["mixed"].exit_status, got["mixed"].output) == (3, "out\nerr\n")
    assert got["mixed"].status is StepStatus.FAILED
    assert got["no_newline"].output == "no newline" and got["no_newline"].ok
    assert got["stdin"].output == "stdin-closed\n"
    assert got["broken"].exit_status == 2 and "Syntax error" in got["broken"].output
    assert got["forged"].output.endswith("0\nnot the end\n") and got["forged"].ok
    assert got["hung"].status is StepStatus.TIMEOUT and got["hung"].output == "before\n"
    assert got["hung"].duration < 5
    assert got["after"].ok and got["after"].output == "after\n"
    # one session for all up to the hung one, which was stopped; the rest in one of its own
    assert ctx.ssh.sessions == 2
    assert events.seen == [f"{what} {sid}" for sid in commands for what in ("start", "end")] \
        + ["host done"]
