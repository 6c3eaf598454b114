"""Wiring: settings -> store, runbooks, inventory, executors, transport -> Opsbot."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TextIO

from bot.adapters.store import AsyncStore, Store
from bot.config import Settings
from bot.executors import ExecContext
from bot.inventory import Inventory, load_inventory, missing_inventory, unknown_opsbot_vars
from bot.notify import ConsoleTransport, Reporter, Transport
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
    client: Any = None  # the Slack Web API client, when Slack is configured

    async def close(self) -> None:
        await self.bot.drain()
        await self.ctx.close()
        await self.transport.close()
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


def build(settings: Settings, *, out: TextIO | None = None) -> Runtime:
    """Everything one process needs. Must be called inside a running event loop."""
    redact_logs()
    catalog, inventory = load_definitions(settings)
    store = AsyncStore(Store(settings.db, audit_key=settings.audit_key))
    ctx = ExecContext(known_hosts=settings.known_hosts, ssh_idle=settings.ssh_idle)
    client = None
    transport: Transport
    if settings.slack_enabled:
        from bot.adapters.slack import SlackTransport, web_client

        client = web_client(settings)
        transport = SlackTransport(client, settings.channel or "")
    else:
        transport = ConsoleTransport(out)
    reporter = Reporter(store, transport, approvers=settings.approvers)
    bot = Opsbot(settings, store, catalog, inventory, Runner(ctx), reporter)
    return Runtime(settings, bot, store, ctx, transport, client)
