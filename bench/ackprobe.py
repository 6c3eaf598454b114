"""What each answer of the ack benchmark was made of (OPSBOT_ACK_PROBE=FILE; bench/ack.py).

In the server (`install`): for every request to /slack/events, its signature (the key joining
it to the driver's own timing), when the handler began and ended (wall clock), and the HTTP
thread's CPU and wait for a core meanwhile (schedstat); for each call of the request lane
(`first_use`, `add_work`), when its thread took it up, got the process's write lock, got
SQLite's (BEGIN IMMEDIATE), ran the body, and committed (the fsync of FULL); every pause of the
cyclic collector (any thread); every callback of the bot's loop over 10 ms (asyncio's debug
hook, `slow_callback_duration`). Written as one JSON object to FILE at the stop (`dump`).

In the driver: bench/ack.py's `drive` writes each request's signature, start (wall clock) and
latency to FILE.driver, and its own loop's lag (a 5 ms ticker, as the server's) to
FILE.driver-lag. `python bench/ackprobe.py SERVER.json DRIVER.json` then splits the slowest 1% of
answers into their parts. For finding causes, never for figures.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

requests: list[dict[str, Any]] = []
lane: list[dict[str, Any]] = []
# each collection: start, ms, generation, thread, its CPU ms, its wait for a core (ms)
pauses: list[tuple[float, float, int, str, float, float]] = []
slow: list[tuple[float, float, str]] = []  # end, ms, callback
fulls: list[dict[str, Any]] = []  # each full collection: objects walked, collected
_local = threading.local()


def _sched() -> tuple[float, float]:
    with open("/proc/thread-self/schedstat", "rb") as f:
        ran, waited, _ = f.read().split()
    return int(ran) / 1e6, int(waited) / 1e6


def install() -> None:
    from aiohttp import web, web_protocol

    import bot.server
    from bot.adapters import sql
    from bot.adapters.store import Store

    made = web_protocol.RequestHandler.connection_made
    accepted: dict[int, float] = {}  # by id(protocol): RequestHandler has __slots__

    def connection_made(self: Any, transport: Any) -> None:
        accepted[id(self)] = time.time()
        made(self, transport)

    web_protocol.RequestHandler.connection_made = connection_made  # type: ignore[method-assign]
    timed = bot.server.timed

    @web.middleware
    async def probed(request: web.Request, handler: Any) -> web.StreamResponse:
        t0, s0 = time.time(), _sched()
        try:
            return await timed(request, handler)
        finally:
            s1 = _sched()
            requests.append({"sig": request.headers.get("X-Slack-Signature", ""),
                             "t0": t0, "t1": time.time(), "ran": s1[0] - s0[0],
                             "accepted": accepted.pop(id(request.protocol), t0),
                             "waited": s1[1] - s0[1]})

    bot.server.timed = probed

    first_use = Store._first_use

    def keyed(self: Store, conn: Any, key: str, until: float) -> bool:
        rec = getattr(_local, "rec", None)
        if rec is not None:
            rec["key"] = key
        return first_use(self, conn, key, until)

    Store._first_use = keyed  # type: ignore[method-assign]

    @contextlib.contextmanager
    def tx(self: sql.SqliteDatabase) -> Iterator[Any]:  # SqliteDatabase.tx, timed
        rec: dict[str, Any] = {"key": "", "t0": time.time()}
        _local.rec = rec
        s0 = _sched()
        raw = self.raw
        self.lock.acquire(self.urgent)
        rec["locked"] = time.time()
        try:
            with sql.translated(self.target):
                self._begin()
                rec["begun"] = time.time()
                try:
                    yield self.conn
                    rec["body"] = time.time()
                    raw.execute("COMMIT")
                    rec["committed"] = time.time()
                except BaseException:
                    if raw.in_transaction:
                        raw.execute("ROLLBACK")
                    raise
        finally:
            self.lock.release()
            _local.rec = None
            s1 = _sched()
            rec.update(t9=time.time(), ran=s1[0] - s0[0], waited=s1[1] - s0[1])
            if self.urgent:
                lane.append(rec)
        if not self.urgent and not self.lock.held_here():
            self.checkpoint()

    sql.SqliteDatabase.tx = tx  # type: ignore[method-assign]

    began: dict[int, tuple[float, float, float]] = {}

    def collected(phase: str, info: dict[str, Any]) -> None:
        tid = threading.get_ident()
        if phase == "start":
            if info["generation"] == 2:  # how much a full collection walks
                import traceback

                fulls.append({"t": time.time(), "walked": sum(
                    len(gc.get_objects(g)) for g in range(3)),
                    "where": traceback.format_stack(limit=6)[:-1]})
            began[tid] = (time.perf_counter(), *_sched())
        elif tid in began:
            t0, ran0, waited0 = began.pop(tid)
            took = (time.perf_counter() - t0) * 1e3
            ran, waited = _sched()
            if info["generation"] == 2 and fulls:
                fulls[-1].update(collected=info["collected"], ms=took, ran=ran - ran0)
            pauses.append((time.time() - took / 1e3, took, info["generation"],
                           threading.current_thread().name, ran - ran0, waited - waited0))

    gc.callbacks.append(collected)


def watch_loop() -> None:
    """The running (bot's) loop reports its callbacks over 10 ms (asyncio debug's hook without
    the rest of debug mode: Handle._run timed)."""
    import asyncio.events

    run = asyncio.events.Handle._run
    loop_thread = threading.get_ident()

    def timed_run(self: asyncio.events.Handle) -> None:
        if threading.get_ident() != loop_thread:
            return run(self)
        t0 = time.perf_counter()
        run(self)
        took = (time.perf_counter() - t0) * 1e3
        if took > 10:
            slow.append((time.time(), took, repr(self)[:200]))
        return None

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]


def dump(path: str) -> None:
    Path(path).write_text(json.dumps({"requests": requests, "lane": lane, "pauses": pauses,
                                      "slow": slow, "fulls": fulls, "pid": os.getpid()}))


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * q))] if xs else 0.0


def analyse(server: dict[str, Any], driver: list[dict[str, Any]],
            driver_lags: list[float] | None = None) -> str:
    by_sig = {r["sig"]: r for r in server["requests"]}
    by_key = {}
    for rec in server["lane"]:
        by_key[rec["key"].removeprefix("slack:")] = rec
    rows = []
    for d in driver:
        s = by_sig.get(d["sig"])
        if s is None:
            continue
        ln = by_key.get(d["sig"])
        start, end = d["t0"], d["t0"] + d["ms"] / 1e3
        row = {"kind": d["kind"], "total": d["ms"], "start": start,
               "to_accept": (s["accepted"] - start) * 1e3,
               "accept_to_handler": (s["t0"] - s["accepted"]) * 1e3,
               "after_handler": (end - s["t1"]) * 1e3,
               "handler": (s["t1"] - s["t0"]) * 1e3,
               "http_ran": s["ran"], "http_waited": s["waited"]}
        if ln and "committed" in ln:
            row.update(to_lane=(ln["t0"] - s["t0"]) * 1e3,
                       lock=(ln["locked"] - ln["t0"]) * 1e3,
                       begin=(ln["begun"] - ln["locked"]) * 1e3,
                       body=(ln["body"] - ln["begun"]) * 1e3,
                       commit=(ln["committed"] - ln["body"]) * 1e3,
                       lane_total=(ln["t9"] - ln["t0"]) * 1e3,
                       from_lane=(s["t1"] - ln["t9"]) * 1e3,
                       lane_waited=ln["waited"])
        row["gc"] = sum(ms for t, ms, *_ in server["pauses"] if start <= t <= end)
        row["slow_cb"] = sum(ms for t, ms, _ in server["slow"] if start <= t - ms / 1e3 <= end
                             or start <= t <= end)
        rows.append(row)
    rows.sort(key=lambda r: r["total"])
    top = rows[int(len(rows) * 0.99):]
    keys = ["total", "to_accept", "accept_to_handler", "handler", "after_handler", "http_ran",
            "http_waited", "to_lane", "lock", "begin", "body", "commit", "lane_total",
            "lane_waited",
            "from_lane", "gc", "slow_cb"]
    out = [f"{len(rows)} answers joined; the slowest {len(top)} (p99 and over), medians "
           "and max of their parts (ms):"]
    for k in keys:
        vals = [r[k] for r in top if k in r]
        allv = [r[k] for r in rows if k in r]
        out.append(f"  {k:15} top1%: median {pct(vals, 0.5):7.1f} max {max(vals or [0]):7.1f}"
                   f" | all: median {pct(allv, 0.5):6.1f} p99 {pct(allv, 0.99):7.1f}")
    out.append("  the 10 slowest: total = driver's send to the accept + handler (HTTP thread's "
               "wait for a core in it) + handler's end to the driver's read; full collections "
               "overlapping (ms)")
    fulls_at = [(p[0], p[0] + p[1] / 1e3, p[1]) for p in server["pauses"] if p[2] == 2]
    for r in rows[::-1][:10]:
        over = [round(f[2]) for f in fulls_at
                if f[0] < r["start"] + r["total"] / 1e3 and f[1] > r["start"]]
        out.append(f"    {r['kind']:5} {r['total']:6.1f} = {r['to_accept']:6.1f} + "
                   f"{r['accept_to_handler'] + r['handler']:6.1f} ({r['http_waited']:6.1f}) + "
                   f"{r['after_handler']:6.1f}; lane: to {r.get('to_lane', 0):.1f}, in "
                   f"{r.get('lane_total', 0):.1f}, back {r.get('from_lane', 0):.1f}; "
                   f"full collections {over}")
    ps = [p[1] for p in server["pauses"]]
    out.append(f"  gc pauses: {len(ps)}, total {sum(ps):.0f} ms, max {max(ps or [0]):.1f} ms, "
               f"gen2 {sum(1 for p in server['pauses'] if p[2] == 2)}")
    for p in sorted(server["pauses"], key=lambda p: -p[1])[:6]:
        out.append(f"    {p[1]:6.1f} ms gen{p[2]} on {p[3]}: ran {p[4]:.1f} ms, waited for a "
                   f"core {p[5]:.1f} ms")
    for f in server.get("fulls", []):
        out.append(f"  full collection: walked {f['walked']} objects, collected "
                   f"{f.get('collected')}, {f.get('ran', 0):.1f} ms of CPU, from "
                   + " < ".join(line.strip().split("\n")[0] for line in f.get("where", [])[::-1]))
    sl = sorted(server["slow"], key=lambda s: -s[1])
    out.append(f"  bot loop callbacks over 10 ms: {len(sl)}, total {sum(s[1] for s in sl):.0f}"
               " ms; the longest:")
    out += [f"    {ms:6.1f} ms {what}" for _, ms, what in sl[:8]]
    if driver_lags:
        out.append(f"  the driver's own loop (5 ms ticker): lag p99 "
                   f"{pct(driver_lags, 0.99):.1f} ms, worst {max(driver_lags):.1f} ms")
    return "\n".join(out)


if __name__ == "__main__":
    srv = json.loads(Path(sys.argv[1]).read_text())
    drv = json.loads(Path(sys.argv[2]).read_text())
    lag_file = Path(f"{sys.argv[2]}-lag")
    print(analyse(srv, drv, json.loads(lag_file.read_text()) if lag_file.exists() else None))
