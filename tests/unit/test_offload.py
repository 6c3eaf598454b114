"""Work off the event loop: threads, and worker processes for what holds the interpreter's lock."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.diagnosis_report import case_since, load_case
from bot.diagnosis import diagnose, diagnose_file, load_rules
from bot.offload import (
    BATCH_NICE,
    import_off_loop,
    off_loop,
    off_loop_shared,
    off_process,
    prestart,
    started_pool,
    stop_processes,
)

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "runbooks" / "rules" / "http-502.yaml"
CASE = ROOT / "tests" / "data" / "evidence" / "upstream_down--nginx-log-only.json"


async def test_off_process_runs_in_another_process_and_gives_the_same_diagnosis():
    try:
        assert await off_process(os.getpid) != os.getpid()
        # below the server's threads: a diagnosis never delays an answer for its CPU
        assert await off_process(os.nice, 0) >= min(19, os.nice(0) + BATCH_NICE)
        case = load_case(CASE)
        apart = await off_process(diagnose_file, str(RULES_FILE), case["evidence"],
                                  case.get("params") or {}, case_since(case))
        here = diagnose(load_rules(RULES_FILE), case["evidence"], case.get("params") or {},
                        case_since(case))
        assert apart == here and apart[0].cause == "upstream_down"
    finally:
        await off_loop(stop_processes)


async def test_a_killed_worker_loses_no_work(caplog):
    """The OOM killer takes a worker: the call it was to run is run on a thread instead, said
    in one log line, and the next call gets new workers."""
    try:
        worker = await off_process(os.getpid)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the pool notices its worker's death
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        assert await off_process(sum, [1, 2, 3]) == 6
        assert await off_process(os.getpid) != os.getpid()  # new workers
    finally:
        await off_loop(stop_processes)
    warned = [r.getMessage() for r in caplog.records if "worker processes" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0], warned


def test_a_worker_reads_the_rules_file_only_while_it_holds_what_the_runbook_loaded(tmp_path):
    import shutil

    from bot.runbooks import load_runbook
    from bot.runner import _rules_unchanged

    shutil.copytree(ROOT / "runbooks", tmp_path / "runbooks")
    runbook = load_runbook(tmp_path / "runbooks" / "nginx-502.yaml")
    assert runbook.rules_file == tmp_path / "runbooks" / "rules" / "http-502.yaml"
    assert _rules_unchanged(runbook)
    with runbook.rules_file.open("a", encoding="utf-8") as f:
        f.write("# edited since the runbook was loaded\n")
    assert not _rules_unchanged(runbook)  # the loaded rules run, on a thread
    runbook.rules_file.write_text("causes: [", encoding="utf-8")
    assert not _rules_unchanged(runbook)


def test_a_worker_importing_python_m_bot_as_its_main_module_runs_no_cli():
    """A forkserver worker imports the parent's main module under another name: `python -m bot
    serve` must not start a second server (or anything) in each diagnosis worker."""
    import runpy

    namespace = runpy.run_module("bot.__main__", run_name="__mp_main__")
    assert callable(namespace["main"])  # imported, not run (running it would exit)


GATE = threading.Event()  # set by the loop while the module below is being imported


async def test_an_import_under_way_on_a_thread_never_holds_the_loop(tmp_path, monkeypatch):
    """Callers that come while the first caller's import runs (it is in sys.modules already)
    wait for it without blocking the loop: the loop itself opens the gate the import waits
    for. An `import` on the loop would wait for the module's lock and never open it."""
    name = f"opsbot_slow_import_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(
        "import threading\n"
        "from tests.unit import test_offload\n"
        "assert test_offload.GATE.wait(20), 'the loop never opened the gate'\n"
        "THREAD = threading.current_thread()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    GATE.clear()
    try:
        first = asyncio.create_task(import_off_loop(name))
        for _ in range(2000):  # until the import is under way on an offload thread
            if name in sys.modules:
                break
            await asyncio.sleep(0.01)
        later = [asyncio.create_task(import_off_loop(name)) for _ in range(3)]
        await asyncio.sleep(0.05)  # the later callers ran up to their wait
        assert not any(t.done() for t in (first, *later))
        GATE.set()
        await asyncio.wait_for(asyncio.gather(first, *later), 30)
        assert sys.modules[name].THREAD is not threading.main_thread()
    finally:
        GATE.set()
        sys.modules.pop(name, None)


async def test_a_failed_import_is_raised_to_every_caller_and_tried_again(tmp_path, monkeypatch):
    name = f"opsbot_broken_import_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text("raise ImportError('not yet')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    for _ in range(2):
        with pytest.raises(ImportError, match="not yet"):
            await import_off_loop(name)
    (tmp_path / f"{name}.py").write_text("FIXED = True\n", encoding="utf-8")
    importlib.invalidate_caches()
    await import_off_loop(name)
    assert sys.modules.pop(name).FIXED


async def test_callers_asking_for_the_same_work_while_it_runs_share_one_call():
    """50 hosts sharing one nginx configuration: one parse, not 50 at once."""
    calls: list[str] = []
    opened = threading.Event()

    def parse(text: str) -> list[str]:
        calls.append(text)
        assert opened.wait(20), "the loop never opened the gate"
        return text.split()

    callers = [asyncio.create_task(off_loop_shared(parse, "a b c")) for _ in range(5)]
    other = asyncio.create_task(off_loop_shared(parse, "d e"))
    await asyncio.sleep(0.05)  # every caller ran up to its wait
    opened.set()
    results = await asyncio.wait_for(asyncio.gather(*callers), 30)
    assert all(r is results[0] for r in results) and results[0] == ["a", "b", "c"]
    assert await other == ["d", "e"]
    assert sorted(calls) == ["a b c", "d e"]
    assert await off_loop_shared(parse, "a b c") == ["a", "b", "c"]  # ended: a new call
    assert len(calls) == 3


def test_prestart_starts_the_pools_threads_before_any_work():
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="opsbot-prestart-test")
    made = started_pool(2, "opsbot-started-test")
    try:
        prestart(pool, 3)
        names = [t.name for t in threading.enumerate()]
        assert sum(n.startswith("opsbot-prestart-test") for n in names) == 3
        assert sum(n.startswith("opsbot-started-test") for n in names) == 2
        assert made.submit(sum, [1, 2]).result(10) == 3
    finally:
        pool.shutdown(wait=True)
        made.shutdown(wait=True)


SERVER = """
import asyncio, os
from bot.offload import off_process

async def main():
    print(await off_process(os.getpid), flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    """Running (a zombie, or a pid gone, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_the_workers_end_when_the_server_is_killed():
    """A server killed outright (SIGKILL, the OOM killer) leaves no diagnosis worker and no fork
    server behind: each worker watches the server and ends with it."""
    import subprocess

    server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert server.stdout is not None
        worker = int(server.stdout.readline())
        forkserver = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert _alive(worker) and _alive(forkserver) and forkserver != server.pid
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 20
    while (_alive(worker) or _alive(forkserver)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker) and not _alive(forkserver)


GATED_SERVER = """
import asyncio, os, sys, threading
from pathlib import Path
from bot import offload

offload.PRELOAD = ["opsbot_gate"]  # the fork server waits, importing it, for the gate file

async def main():
    offload.serve_batch_below(7)
    asyncio.get_running_loop().call_later(0.05, Path(os.environ["GATE"]).touch)
    worker = await offload.off_process(os.getpid)
    lowered = [t.native_id for t in threading.enumerate() if t.name.startswith("opsbot-offload")]
    print(worker, *lowered, flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the test is done looking
    await offload.off_loop(offload.stop_processes)

asyncio.run(main())
"""
GATE_MODULE = """
import os, time
from pathlib import Path

for _ in range(600):  # 30 s
    if Path(os.environ["GATE"]).exists():
        break
    time.sleep(0.05)
else:
    Path(os.environ["GATE"] + ".held").touch()  # the server's loop never opened it
"""


def _nice_of(stat: Path) -> int:
    return int(stat.read_text().rsplit(")", 1)[1].split()[16])


def test_batch_work_runs_below_the_serving_threads_and_starts_off_the_loop(tmp_path):
    """A serving process's batch work yields the cores to its answers: the offload threads, the
    workers' fork server (a Python start-up and the diagnosis's import) and the workers run
    `batch_nice` steps below the loop's thread, which stays where it was. The workers start
    off the loop: the fork server here waits for a file that only the loop makes, so a start
    on the loop (as before) would hold it until the fork server gave up."""
    import subprocess

    (tmp_path / "opsbot_gate.py").write_text(GATE_MODULE, encoding="utf-8")
    gate = tmp_path / "gate"
    env = {**os.environ, "GATE": str(gate),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    server = subprocess.Popen([sys.executable, "-c", GATED_SERVER], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdin is not None
        worker, *threads = (int(n) for n in server.stdout.readline().split())
        forkserver = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
        base = _nice_of(Path(f"/proc/{server.pid}/stat"))
        assert not Path(f"{gate}.held").exists(), "the workers were started on the loop"
        assert len(threads) == 2
        assert [_nice_of(Path(f"/proc/{server.pid}/task/{t}/stat")) for t in threads] == \
            [min(19, base + 7)] * 2
        assert _nice_of(Path(f"/proc/{forkserver}/stat")) == min(19, base + 7)
        assert _nice_of(Path(f"/proc/{worker}/stat")) == min(19, base + 7)
        server.stdin.close()  # the server stops its workers and ends
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
