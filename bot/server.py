"""The HTTP server: Alertmanager webhooks, Slack requests, health and metrics. It answers on a
thread and event loop of its own (bot.edge.ServerThread); the bot's work runs on the loop that
`serve` runs on."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

from aiohttp import web

from bot import edge
from bot.app import Runtime, build, load_definitions
from bot.config import Settings
from bot.edge import MAX_BODY, ServerThread, bearer_ok, error, one_line_errors, store_ok
from bot.errors import BotError
from bot.executors import KINDS
from bot.metrics import CONTENT_TYPE
from bot.models import AlertGroup
from bot.offload import off_loop, serve_batch_below, start_default_executor, stop_processes
from bot.runbooks import Catalog

log = logging.getLogger("opsbot.server")
RUNTIME = web.AppKey("runtime", Runtime)
EXPIRY_INTERVAL = 15.0  # seconds between checks for expired approvals
TAKEOVER_EVERY = 5.0  # seconds between looks for work of replicas that are gone
HANDOVER_INTERVAL = 1.0  # seconds between looks for approvals decided in other terminals
SWITCH_INTERVAL = 0.001  # the interpreter's lock changes threads at least this often (s)
# a full collection while serving at most once per this many collections of the middle
# generation (CPython's default: 10); see `serving_collections`
FULL_COLLECTION_EVERY = 100


def may_see_details(request: web.Request, settings: Settings) -> bool:
    """/metrics and the detailed /healthz: open unless OPSBOT_METRICS_TOKEN is set."""
    token = settings.metrics_token
    return not token or bearer_ok(request.headers.get("Authorization"), token)


async def healthz(request: web.Request) -> web.Response:
    """Read-only (no store write). Callers learn whether opsbot is up and its Slack mode; with
    OPSBOT_METRICS_TOKEN set and presented, also what is loaded (never the database path)."""
    rt = request.app[RUNTIME]
    ok = await rt.requests.call(store_ok, rt.requests.sync)  # not behind a run's writes
    body: dict[str, Any] = {
        "status": "ok" if ok else "error",
        "slack": "socket" if rt.settings.socket_mode else "http" if rt.settings.slack_enabled
        else "console",
    }
    token = rt.settings.metrics_token
    if token and bearer_ok(request.headers.get("Authorization"), token):
        body.update({"store": "ok" if ok else "not writable",
                     "runbooks": sorted(rt.bot.catalog.runbooks),
                     "runbook_errors": list(rt.bot.catalog.errors),
                     "hosts": len(rt.bot.inventory.hosts)})
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if not may_see_details(request, rt.settings):
        return error(401, "GET /metrics needs Authorization: Bearer $OPSBOT_METRICS_TOKEN")
    text = await rt.store.call(rt.metrics.render)  # reads the store: on its thread
    return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE,
                                            "X-Content-Type-Options": "nosniff"})


def _process_figures(rt: Runtime) -> dict[str, float]:
    return {"runbooks_loaded": len(rt.bot.catalog.runbooks),
            "runbook_errors": len(rt.bot.catalog.errors),
            "background_tasks": len(rt.bot.tasks.running),
            # read on the store's thread while the bot's loop changes it: copied at once (in C)
            "live_incidents": sum(1 for n in list(rt.bot.tasks.live.values()) if n),
            "ssh_connects": rt.ctx.ssh.connects if rt.ctx._ssh else 0,
            "webhook_batches": rt.intake.batches,
            "alert_batches": rt.bot.alert_batches,
            "alerts_queued": rt.bot.alerts_queued}


async def slack_disabled(request: web.Request) -> web.Response:
    return error(404, "Slack is not configured (SLACK_BOT_TOKEN is unset), or runs in "
                       "Socket Mode")


@web.middleware
async def timed(request: web.Request, handler: Any) -> web.StreamResponse:
    """How long each answer took once its request was read (opsbot_http_answer_seconds), by
    route: the known routes only, so that no caller can grow the label set."""
    began = time.perf_counter()
    try:
        return await handler(request)  # type: ignore[no-any-return]
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "other"
        request.app[RUNTIME].metrics.answer_seconds.labels(route).observe(
            time.perf_counter() - began)


def web_app(rt: Runtime, inbound: Any = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[timed, one_line_errors])
    app[RUNTIME] = rt
    def accepted(group: AlertGroup, webhook_id: int) -> None:
        rt.metrics.payloads_received.inc()
        rt.metrics.alerts_received.inc(len(group.alerts))
        rt.bot.accept_alert(group, webhook_id)

    alertmanager = edge.alertmanager_handler(rt.settings.alert_token, rt.intake,
                                             lambda: rt.bot.accepting, accepted)
    routes = [web.post("/alerts/alertmanager", alertmanager), web.get("/healthz", healthz),
              web.get("/metrics", metrics)]
    if inbound is not None and not rt.settings.socket_mode:
        from bot.adapters.slack import slack_route

        routes.append(slack_route(inbound, rt, rt.settings.slack_signing_secret or ""))
    else:
        routes.append(web.post("/slack/events", slack_disabled))
    app.add_routes(routes)
    return app


async def _expiry_loop(rt: Runtime) -> None:
    """Approvals that expire, and incidents with nothing left to do that close by themselves."""
    interval = min(EXPIRY_INTERVAL, max(0.5, rt.settings.approval_ttl / 4),
                   max(0.5, rt.settings.close_after / 4), max(0.5, rt.settings.remind_after / 4))
    while True:
        await asyncio.sleep(interval)
        try:
            await rt.bot.approvals.expire()
            await rt.bot.approvals.remind()
            await rt.bot.incidents.close_idle()
        except Exception:  # keep the loop alive; the next round tries again
            log.exception("expiring approvals or closing idle incidents failed")


async def _handover_loop(rt: Runtime, woken: asyncio.Event) -> None:
    """A sign of life in the store, and approvals decided in another terminal carried out
    (looked for every HANDOVER_INTERVAL, or at once when a NOTIFY says one was decided)."""
    while True:
        try:
            woken.clear()
            await rt.store.heartbeat()
            await rt.bot.approvals.carry_out_handovers()
        except Exception:
            log.exception("taking over approvals from other terminals failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), HANDOVER_INTERVAL)


async def _listen_loop(rt: Runtime, handover: asyncio.Event) -> None:
    """Replicas on PostgreSQL: another replica's commit wakes this one (LISTEN/NOTIFY): its
    outbox rows go out at once, a handed-over approval is claimed at once. The pollers stay,
    as the fallback (a lost notification, a lost listening connection)."""
    def wake(channel: str) -> None:
        if channel == "outbox":
            rt.outbox.wake()
        elif channel == "approvals":
            handover.set()

    await rt.store.listen(wake)


async def _takeover_loop(rt: Runtime, first: asyncio.Task[None]) -> None:
    """Replicas on PostgreSQL: every TAKEOVER_EVERY seconds, the replica holding the `takeover`
    lock finishes what replicas that are gone (their lease ran out) left: their accepted
    webhooks, commands and clicks, their runs (a diagnosis runs again; a remediation never)."""
    with contextlib.suppress(Exception):
        await asyncio.shield(first)  # the start-up resume first, never two at once
    while True:
        await asyncio.sleep(TAKEOVER_EVERY)
        try:
            if await rt.store.call(rt.store.sync.leader, "takeover"):
                await rt.bot.resume(await rt.store.last_work_id())
        except Exception:  # keep the loop alive; the next round tries again
            log.exception("taking over the work of a stopped replica failed")


def take_handed(rt: Runtime, inbound: Any, message: Any) -> None:
    """What the edge process hands over (bot.edgeproc), on the bot's loop: an answered
    webhook with its parsed alerts, or the id of a work row it recorded (a click, or a
    command it took while this process could not be reached)."""
    if message[0] == "alert":
        _, webhook_id, group = message
        rt.metrics.payloads_received.inc()
        rt.metrics.alerts_received.inc(len(group.alerts))
        rt.bot.accept_alert(group, webhook_id)
    elif message[0] == "work":
        rt.bot.tasks.spawn(_take_work(rt, inbound, message[1]))


async def _take_work(rt: Runtime, inbound: Any, work_id: int) -> None:
    row = await rt.requests.work_item(work_id)
    if row is None:  # done already (a resume got to it first)
        return
    if row.kind == "click" and inbound is not None:
        rt.bot.run_work(row.id, inbound.click_work(row.payload))
    elif row.kind == "command":
        await rt.bot.replay_command(row)


def reload(rt: Runtime) -> None:
    """SIGHUP: read the runbooks and the inventory again. Open incidents and pending approvals
    stay; an approval whose step now renders differently is refused when clicked (digest)."""
    try:
        catalog, inventory = load_definitions(rt.settings)
    except BotError as exc:
        log.error("reload failed, nothing changed: %s", exc)
        return
    rt.bot.catalog, rt.bot.inventory = catalog, inventory
    log.info("reloaded: %d runbook(s), %d host(s)", len(catalog.runbooks), len(inventory.hosts))


def _first_run_work(catalog: Catalog) -> None:
    """What a server's first run did, done at start-up, off the loop: the runbooks' templates
    compiled (6 ms for nginx-502's, on the loop: a group of steps rendered together was the
    longest callback of a 50-host run in the ack benchmark); the discovery's and the step
    kinds' imports (the docker SDK; about 75 ms of CPU in all), on a thread, but taking turns
    with the loop for the interpreter's lock while the run went on. (The diagnosis loads with
    the runbooks' rules.)"""
    import bot.discovery  # noqa: F401

    for name in sorted(catalog.kinds()):
        kind = KINDS.get(name)
        for module in kind.first_use_imports if kind else ():
            importlib.import_module(module)
    catalog.precompile()


def serving_collections() -> tuple[int, int, int]:
    """The cyclic collector's full collections made rarer while serving (the thresholds
    before are returned, for the stop). A full collection walks every object made since the
    server was ready (a 50-host diagnosis's hosts, connections and records: 30-53 ms of CPU
    each in the ack benchmark, 2-3 in a 10 s round) holding the interpreter's lock, and every
    answer in flight waits for it (for 120-250 ms when its thread lost its core meanwhile).
    Young collections are left as they are: they free what dies young; what reaches the oldest
    generation and dies in a cycle waits longer to be freed."""
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], max(thresholds[2], FULL_COLLECTION_EVERY))
    return thresholds


async def serve(settings: Settings, *, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or until `stop` is set, for tests). Stopping: no new work
    is taken, running steps get `stop_timeout` seconds to finish, the rest is marked
    interrupted (the next start takes it up), and the outbox is flushed as far as Slack allows."""
    rt = build(settings)
    # threads not started by their first caller, under load; batch work below the answers
    # and this loop (bot.offload: the offload threads and what they start). The store's
    # threads stay: a run's transaction holds the write lock that an answer's lane waits for
    serve_batch_below(settings.batch_nice)
    restore_executor = start_default_executor()
    for lane in (rt.store, rt.requests, rt.intake.store):
        lane.start_thread()
    rt.metrics.watch_store(rt.store.sync.metrics, lambda: _process_figures(rt))
    rt.bot.intake_busy = rt.intake.busy
    inbound = None
    socket_handler = None
    if settings.slack_enabled:
        from bot.adapters.slack import SlackInbound

        inbound = SlackInbound(rt.bot, settings, rt.client)
    edge_process = None
    core_dir = None
    if settings.edge == "process":  # answers in a process of its own (bot.edgeproc)
        from bot import logs
        from bot.edgeproc import EdgeProcess, Hello

        core_dir = tempfile.mkdtemp(prefix="opsbot-core-")
        edge_process = EdgeProcess(settings, Hello(
            settings, rt.store.sync.owner, os.getpid(), os.path.join(core_dir, "http.sock"),
            dict(logs.CHOSEN), edge.HEADER_TIMEOUT, edge.BODY_TIMEOUT),
            lambda message: take_handed(rt, inbound, message))
        # before the work is counted: an edge left by a stopped core ends (its work on disk)
        await off_loop(edge_process.bind)
    earlier_work = await rt.store.last_work_id()  # what earlier processes left is resumed
    # on a thread and loop of its own: answers never wait for this loop's runs (bot.edge).
    # keepalive_timeout closes a connection that sends no complete request in time: it bounds
    # the wait for headers (slow or idle clients) as well as idle keep-alive connections
    http = ServerThread(web_app(rt, inbound), settings.listen_host, settings.listen_port,
                        path=edge_process.hello.core_socket if edge_process else None,
                        access_log=None, keepalive_timeout=edge.HEADER_TIMEOUT,
                        shutdown_timeout=5)
    try:
        await http.start()
        if edge_process is not None:
            await edge_process.start()
    except BaseException:
        if edge_process is not None:
            await edge_process.stop()
        await http.stop()
        raise
    if inbound is not None and settings.socket_mode:  # its acks on the server's thread too
        from bot.adapters.slack import bolt_app, start_socket_mode

        async def socket_mode() -> Any:
            return await start_socket_mode(bolt_app(inbound, rt.client),
                                           settings.slack_app_token or "")

        try:
            socket_handler = await http.call(socket_mode())
        except BaseException:
            await http.stop()
            raise
    mode = "Socket Mode" if settings.socket_mode else "HTTP" if settings.slack_enabled \
        else "console (no SLACK_BOT_TOKEN)"
    log.info("opsbot listening on http://%s:%d (Slack: %s; %d runbook(s), %d host(s))",
             settings.listen_host, settings.listen_port, mode, len(rt.bot.catalog.runbooks),
             len(rt.bot.inventory.hosts))
    resume = asyncio.create_task(rt.bot.resume(earlier_work))
    expiry = asyncio.create_task(_expiry_loop(rt))
    takeover = asyncio.create_task(_takeover_loop(rt, resume)) if rt.store.sync.shared \
        else None
    woken = asyncio.Event()
    handover = asyncio.create_task(_handover_loop(rt, woken))
    listener = asyncio.create_task(_listen_loop(rt, woken)) if rt.store.sync.shared else None
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, reload, rt)
    await off_loop(_first_run_work, rt.bot.catalog)
    # what start-up made (modules, runbooks, inventory) lives as long as the server: out of
    # the collector's sight, a full collection no longer walks it, holding the loop meanwhile
    gc.collect()
    gc.freeze()
    thresholds = serving_collections()
    # the edge's thread answers Slack while the loop's thread handles 50 hosts' output: each
    # time one waits for the interpreter's lock it waits up to the switch interval (5 ms by
    # default), several times a request; 1 ms keeps an answer's wait for the lock short (in the
    # bench not shown to lower the ack p99 beyond its run-to-run spread: docs/bench.md)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        gc.unfreeze()  # collectable again once this server is gone (tests start many)
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(switch)
        log.info("opsbot stopping: no new work; running steps get %gs to finish",
                 settings.stop_timeout)
        rt.bot.accepting = False
        expiry.cancel()
        if takeover is not None:
            takeover.cancel()
        if not resume.done():
            resume.cancel()
        handover.cancel()
        if listener is not None:
            listener.cancel()
        if socket_handler is not None:
            await http.call(socket_handler.close_async())
        if edge_process is not None:
            await edge_process.stop()
        await http.stop()
        if core_dir is not None:
            shutil.rmtree(core_dir, ignore_errors=True)
        await rt.close(work_timeout=settings.stop_timeout,
                       flush_timeout=max(10.0, settings.stop_timeout / 2))
        await off_loop(stop_processes)  # the diagnosis workers, idle once the work is done
        restore_executor()
        if inbound is not None:  # after the work it answers for
            await inbound.close()
        log.info("opsbot stopped")
