"""What the incident loop's parts (bot.approvals, bot.runs, bot.incidents and the Opsbot in
bot.service that wires them) share: one frozen set of dependencies, handed to each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.inventory import Inventory
    from bot.notify import Reporter
    from bot.ports import Store
    from bot.runbooks import Catalog
    from bot.runner import Runner
    from bot.tasks import Tasks


@dataclass(frozen=True)
class Deps:
    settings: Settings
    store: Store
    requests: Store  # the request lane: what an answer waits for goes first (else `store`)
    catalog: Catalog
    inventory: Inventory
    runner: Runner
    reporter: Reporter
    tasks: Tasks


class Part:
    """A part of the incident loop: its dependencies as attributes."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.store = deps.store
        self.requests = deps.requests
        self.catalog = deps.catalog
        self.inventory = deps.inventory
        self.runner = deps.runner
        self.reporter = deps.reporter
        self.tasks = deps.tasks
