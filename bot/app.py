"""Wiring: settings -> store, runbooks, inventory, executors, transport -> Opsbot."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TextIO

from bot.adapters.store import AsyncStore, Store, WebhookIntake
from bot.config import Settings
from bot.executors import ExecContext
from bot.inventory import Inventory, load_inventory, missing_inventory, unknown_opsbot_vars
from bot.metrics import Metrics
from bot.notify import ConsoleTransport, Reporter
from bot.outbox import Outbox, Transport
from bot.redact import redact_logs
from bot.runbooks import Catalog, load_catalog
from bot.runner import Runner
from bot.service import Opsbot

log = logging.getLogger("opsbot")


@dataclass
class Runtime:
    settings: Settings
    bot: Opsbot
    store: AsyncStore
    ctx: ExecContext
    transport: Transport
    outbox: Outbox
    metrics: Metrics
    intake: WebhookIntake
    requests: AsyncStore  # the request path's lane to the store (AsyncStore.lane)
    client: Any = None  # the Slack Web API client, when Slack is configured

    async def close(self, *, work_timeout: float | None = None,
                    flush_timeout: float = 15.0) -> None:
        """Let background work finish (cancelled past `work_timeout`: the next start resumes
        it), send what the outbox holds as far as Slack allows, then close everything."""
        self.bot.accepting = False
        busy = {i for i, n in self.bot.tasks.live.items() if n}
        cancelled = await self.bot.tasks.drain(work_timeout)
        if cancelled:
            interrupted = await self.store.interrupt_stale_runs("opsbot")
            for incident_id in busy:
                await self.store.interrupt_steps(incident_id, "opsbot")
            log.warning("stopping: %d task(s) did not finish in time, %d run(s) marked "
                        "interrupted; the next start takes them up", cancelled, interrupted)
        await self.bot.reporter.close()
        await self.outbox.stop(flush_timeout)
        await self.ctx.close()
        await self.transport.close()
        self.intake.close()
        if self.requests is not self.store:
            self.requests.close()
        self.store.close()


def load_definitions(settings: Settings) -> tuple[Catalog, Inventory]:
    """The runbooks (invalid ones left out, their errors logged) and the inventory."""
    missing = missing_inventory(settings.inventory)
    if missing:
        log.warning("%s", missing)
    inventory = load_inventory(settings.inventory)
    catalog = load_catalog(settings.runbooks)
    for line in catalog.errors:
        log.error("runbook left out: %s", line)
    params = {name for rb in catalog.runbooks.values() for name in rb.params}
    for line in unknown_opsbot_vars(inventory, params):
        log.warning("%s", line)
    return catalog, inventory


def build(settings: Settings, *, out: TextIO | None = None,
          export_metrics: bool = True) -> Runtime:
    """Everything one process needs. Must be called inside a running event loop.
    `export_metrics=False` (terminal commands, which serve no /metrics) keeps no figures."""
    redact_logs()
    catalog, inventory = load_definitions(settings)
    store = AsyncStore(Store(settings.db, audit_key=settings.audit_key, synchronous="NORMAL"))
    ctx = ExecContext(known_hosts=settings.known_hosts, ssh_idle=settings.ssh_idle,
                      ssh_reuse_sessions=settings.ssh_reuse_sessions,
                      ssh_client=settings.ssh_client)
    client = None
    transport: Transport
    if settings.slack_enabled:
        from bot.adapters.slack import SlackTransport, web_client

        client = web_client(settings)
        transport = SlackTransport(web_client(settings, retries=False), settings.channel or "")
    else:
        transport = ConsoleTransport(out)
    metrics = Metrics(exported=export_metrics)
    outbox = Outbox(store, transport, metrics)
    outbox.start()
    reporter = Reporter(store, outbox, approvers=settings.approvers)
    requests = store.lane()
    # a serving process (it exports metrics) diagnoses in worker processes: see bot/offload.py
    bot = Opsbot(settings, store, catalog, inventory, Runner(ctx, apart=export_metrics), reporter,
                 requests=requests)
    intake = WebhookIntake(store.sync)
    return Runtime(settings, bot, store, ctx, transport, outbox, metrics, intake, requests,
                   client)
