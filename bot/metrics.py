"""What /metrics shows, through prometheus-client: counters kept by this process (alerts
received, Slack errors, step durations) and figures read from the store when scraped (incidents
by phase, steps by kind and status, outbox depth, the oldest unfinished work).

prometheus-client is imported only by a bot whose metrics are exported (`opsbot serve`): a
terminal command keeps no figures (importing it was a tenth of a cold `opsbot run`'s CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# an answer to Slack is due within 3 s; most take a few milliseconds
ANSWER_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 3, 5)


class StoreCollector:
    """Figures that must survive a restart come from the store, read at scrape time."""

    def __init__(self, read: Callable[[], dict[str, Any]],
                 extra: Callable[[], dict[str, float]]) -> None:
        self.read, self.extra = read, extra

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.read()
        phases = GaugeMetricFamily("opsbot_incidents", "Incidents by phase (resolved ones "
                                   "as phase resolved)", labels=["phase"])
        for phase, count in sorted(m["incidents_by_phase"].items()):
            phases.add_metric([phase or "unknown"], count)
        yield phases
        yield GaugeMetricFamily("opsbot_incidents_open", "Open incidents",
                                value=m["incidents_open"])
        steps = CounterMetricFamily("opsbot_steps", "Steps run, by kind and status",
                                    labels=["kind", "status"])
        for kind, status, count in m["steps_by_kind_status"]:
            steps.add_metric([kind or "", status or ""], count)
        yield steps
        for name, doc in (("webhooks", "Webhooks received (kept, accepted or not)"),
                          ("alerts", "Alerts recorded from accepted webhooks"),
                          ("incidents", "Incidents opened")):
            key = "incidents_total" if name == "incidents" else f"{name}_total"
            yield CounterMetricFamily(f"opsbot_{name}_recorded" if name == "incidents"
                                      else f"opsbot_{name}", doc, value=m[key])
        yield GaugeMetricFamily("opsbot_approvals_pending", "Approvals waiting for a decision",
                                value=m["approvals_pending"])
        yield GaugeMetricFamily("opsbot_audit_records", "Records in the audit log",
                                value=m["audit_records"])
        yield GaugeMetricFamily("opsbot_work_pending", "Accepted webhooks, commands and clicks "
                                "not done yet", value=m["work_pending"])
        yield GaugeMetricFamily("opsbot_oldest_work_seconds", "Age of the oldest unfinished "
                                "work (0 when none)", value=m["oldest_work_seconds"])
        yield GaugeMetricFamily("opsbot_outbox_depth", "Slack messages waiting to be sent",
                                value=m["outbox_depth"])
        yield GaugeMetricFamily("opsbot_outbox_oldest_seconds", "Age of the oldest waiting "
                                "Slack message (0 when none)", value=m["oldest_outbox_seconds"])
        yield GaugeMetricFamily("opsbot_outbox_failed", "Slack messages given up (Slack "
                                "refused them for good)", value=m["outbox_failed"])
        for name, value in sorted(self.extra().items()):
            yield GaugeMetricFamily(f"opsbot_{name}", name.replace("_", " "), value=value)


class _Unexported:
    """A counter or histogram of a process that exports no metrics: every call does nothing."""

    def labels(self, *values: str, **labels: str) -> _Unexported:
        return self

    def inc(self, amount: float = 1) -> None:
        return None

    def observe(self, amount: float) -> None:
        return None


class Metrics:
    """One registry per running bot (tests run several in one process); `exported=False`
    (a terminal command): no registry, and the counters do nothing."""

    registry: CollectorRegistry | None
    alerts_received: Counter
    payloads_received: Counter
    slack_errors: Counter
    step_seconds: Histogram
    answer_seconds: Histogram

    def __init__(self, *, exported: bool = True) -> None:
        self._store_collector: StoreCollector | None = None
        if not exported:
            unexported: Any = _Unexported()
            self.registry = None
            self.alerts_received = self.payloads_received = unexported
            self.slack_errors = self.step_seconds = self.answer_seconds = unexported
            return
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=False)
        self.alerts_received = Counter("opsbot_alerts_received", "Alerts in accepted webhook "
                                       "payloads", registry=self.registry)
        self.payloads_received = Counter("opsbot_alert_payloads_received", "Alertmanager "
                                         "payloads answered 2xx", registry=self.registry)
        self.slack_errors = Counter("opsbot_slack_errors", "Slack calls that failed, by kind "
                                    "(ratelimited, server, connection, refused)",
                                    ["kind"], registry=self.registry)
        self.step_seconds = Histogram("opsbot_step_duration_seconds", "Step durations",
                                      ["kind", "status"], buckets=STEP_BUCKETS,
                                      registry=self.registry)
        self.answer_seconds = Histogram("opsbot_http_answer_seconds", "Time from a request's "
                                        "headers read to its answer, by route",
                                        ["route"], buckets=ANSWER_BUCKETS,
                                        registry=self.registry)

    def watch_store(self, read: Callable[[], dict[str, Any]],
                    extra: Callable[[], dict[str, float]]) -> None:
        if self.registry is None:
            raise RuntimeError("these metrics are not exported")
        self._store_collector = StoreCollector(read, extra)
        self.registry.register(cast("Collector", self._store_collector))

    def render(self) -> bytes:
        """The text format; reads the store, so call it off the event loop."""
        from prometheus_client import generate_latest

        if self.registry is None:
            raise RuntimeError("these metrics are not exported")
        return generate_latest(self.registry)
