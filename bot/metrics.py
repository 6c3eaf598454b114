"""What /metrics shows, through prometheus-client: counters kept by this process (alerts
received, Slack errors, step durations) and figures read from the store when scraped (incidents
by phase, steps by kind and status, outbox depth, the oldest unfinished work)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class StoreCollector(Collector):
    """Figures that must survive a restart come from the store, read at scrape time."""

    def __init__(self, read: Callable[[], dict[str, Any]],
                 extra: Callable[[], dict[str, float]]) -> None:
        self.read, self.extra = read, extra

    def collect(self) -> Iterator[Metric]:
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


class Metrics:
    """One registry per running bot (tests run several in one process)."""

    def __init__(self) -> None:
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
        self._store_collector: StoreCollector | None = None

    def watch_store(self, read: Callable[[], dict[str, Any]],
                    extra: Callable[[], dict[str, float]]) -> None:
        self._store_collector = StoreCollector(read, extra)
        self.registry.register(self._store_collector)

    def render(self) -> bytes:
        """The text format; reads the store, so call it off the event loop."""
        return generate_latest(self.registry)
