"""Real blackbox exporter + Prometheus + Alertmanager delivering webhooks to the bot.

Prometheus probes `probe_url` through the blackbox exporter every second; the rule
`NginxBadGateway` (`probe_http_status_code >= 500`, `for: 0s`) fires with labels
severity=critical, host=<host_label> and instance=<probe_url>; Alertmanager groups by
[alertname, host] and posts payload version 4 to `webhook_url` with `Authorization: Bearer
<token>`, resolved notifications included.

With the default 1 s scrape interval the scrape (and so the probe) times out after 1 s: a backend
slower than that (nginx's 504 comes after 2 s) gives probe_http_status_code 0, not 504. Pass
scrape_interval="3s" to see the 504.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .process import (
    LabProcess,
    free_port,
    http_get,
    make_world_traversable,
    require_binary,
    spawn,
    wait_until,
)

ALERT_NAME = "NginxBadGateway"


def _write_yaml(path: Path, document: dict) -> None:
    # JSON is YAML: no quoting surprises in URLs or templates
    path.write_text(json.dumps(document, indent=2) + "\n")


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60}
    for suffix in ("ms", "s", "m"):
        if duration.endswith(suffix):
            return float(duration[: -len(suffix)]) * units[suffix]
    raise ValueError(f"unsupported duration {duration!r}")


@dataclass
class Alerting:
    root: Path
    probe_url: str
    webhook_url: str
    host_label: str
    blackbox_url: str
    prometheus_url: str
    alertmanager_url: str
    prometheus_config: Path
    rules_file: Path
    alertmanager_config: Path
    blackbox_config: Path
    processes: list[LabProcess] = field(default_factory=list, repr=False)

    def prometheus_alerts(self) -> list[dict]:
        """Alerts Prometheus holds right now (pending or firing)."""
        status, body = http_get(f"{self.prometheus_url}/api/v1/alerts", timeout=5)
        if status != 200:
            return []
        return json.loads(body)["data"]["alerts"]

    def alertmanager_alerts(self) -> list[dict]:
        """Alerts Alertmanager holds right now."""
        status, body = http_get(f"{self.alertmanager_url}/api/v2/alerts", timeout=5)
        return json.loads(body) if status == 200 else []

    def probe_status_code(self) -> float | None:
        """Latest probe_http_status_code Prometheus has for probe_url (None: no sample yet)."""
        status, body = http_get(
            f"{self.prometheus_url}/api/v1/query?query=probe_http_status_code", timeout=5
        )
        if status != 200:
            return None
        result = json.loads(body)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def alertmanager_known(self) -> bool:
        """Whether Prometheus has discovered its Alertmanager (alerts are dropped before)."""
        status, body = http_get(f"{self.prometheus_url}/api/v1/alertmanagers", timeout=5)
        return status == 200 and bool(json.loads(body)["data"]["activeAlertmanagers"])

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


def _wait_ready(process: LabProcess, url: str, timeout: float = 20) -> None:
    def ready() -> bool:
        process.check_alive()
        return http_get(url, timeout=2)[0] == 200

    wait_until(ready, timeout, f"{process.name} at {url}",
               on_timeout=lambda: "\n" + process.log_tail())


def start_alerting(
    workdir: Path,
    probe_url: str,
    webhook_url: str,
    bearer_token: str,
    host_label: str = "web01",
    scrape_interval: str = "1s",
) -> Alerting:
    """Start blackbox exporter, Alertmanager and Prometheus (in that order); wait until ready."""
    blackbox_bin = require_binary("prometheus-blackbox-exporter")
    alertmanager_bin = require_binary("prometheus-alertmanager")
    prometheus_bin = require_binary("prometheus")

    root = workdir
    make_world_traversable(root)
    for sub in ("prometheus-data", "alertmanager-data"):
        (root / sub).mkdir(exist_ok=True)
    blackbox_port, alertmanager_port, prometheus_port = free_port(), free_port(), free_port()
    while len({blackbox_port, alertmanager_port, prometheus_port}) < 3:
        alertmanager_port, prometheus_port = free_port(), free_port()

    blackbox_config = root / "blackbox.yml"
    _write_yaml(blackbox_config, {
        "modules": {
            "http_2xx": {
                "prober": "http",
                "timeout": "5s",
                "http": {"preferred_ip_protocol": "ip4", "ip_protocol_fallback": False},
            }
        }
    })

    alertmanager_config = root / "alertmanager.yml"
    _write_yaml(alertmanager_config, {
        "route": {
            "receiver": "opsbot",
            "group_by": ["alertname", "host"],
            "group_wait": "1s",
            "group_interval": "2s",
            "repeat_interval": "1h",
        },
        "receivers": [{
            "name": "opsbot",
            "webhook_configs": [{
                "url": webhook_url,
                "send_resolved": True,
                "http_config": {
                    "authorization": {"type": "Bearer", "credentials": bearer_token},
                },
            }],
        }],
    })

    rules_file = root / "rules.yml"
    _write_yaml(rules_file, {
        "groups": [{
            "name": "opsbot-lab",
            "interval": "1s",
            "rules": [{
                "alert": ALERT_NAME,
                "expr": "probe_http_status_code >= 500",
                "for": "0s",
                "labels": {"severity": "critical", "host": host_label},
                "annotations": {
                    "summary": f"nginx on {host_label} answers {{{{ $value }}}}",
                    "description": "{{ $labels.instance }} answered HTTP {{ $value }}",
                },
            }],
        }]
    })

    interval = _seconds(scrape_interval)
    prometheus_config = root / "prometheus.yml"
    _write_yaml(prometheus_config, {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": "1s",
        },
        "rule_files": [str(rules_file)],
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}
            ]
        },
        "scrape_configs": [{
            "job_name": "blackbox",
            "metrics_path": "/probe",
            "params": {"module": ["http_2xx"]},
            "static_configs": [{"targets": [probe_url]}],
            "relabel_configs": [
                {"source_labels": ["__address__"], "target_label": "__param_target"},
                {"source_labels": ["__param_target"], "target_label": "instance"},
                {"target_label": "__address__", "replacement": f"127.0.0.1:{blackbox_port}"},
            ],
        }],
    })

    alerting = Alerting(
        root=root,
        probe_url=probe_url,
        webhook_url=webhook_url,
        host_label=host_label,
        blackbox_url=f"http://127.0.0.1:{blackbox_port}",
        prometheus_url=f"http://127.0.0.1:{prometheus_port}",
        alertmanager_url=f"http://127.0.0.1:{alertmanager_port}",
        prometheus_config=prometheus_config,
        rules_file=rules_file,
        alertmanager_config=alertmanager_config,
        blackbox_config=blackbox_config,
    )
    try:
        blackbox = spawn("blackbox-exporter", [
            blackbox_bin,
            f"--config.file={blackbox_config}",
            f"--web.listen-address=127.0.0.1:{blackbox_port}",
        ], root / "blackbox.log")
        alerting.processes.append(blackbox)
        alertmanager = spawn("alertmanager", [
            alertmanager_bin,
            f"--config.file={alertmanager_config}",
            f"--storage.path={root / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{alertmanager_port}",
            "--cluster.listen-address=",
            f"--web.external-url=http://127.0.0.1:{alertmanager_port}",
        ], root / "alertmanager.log")
        alerting.processes.append(alertmanager)
        prometheus = spawn("prometheus", [
            prometheus_bin,
            f"--config.file={prometheus_config}",
            f"--storage.tsdb.path={root / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            f"--web.external-url=http://127.0.0.1:{prometheus_port}",
            # resend firing alerts every 2 s, so a notification never waits a minute
            "--rules.alert.resend-delay=2s",
        ], root / "prometheus.log")
        alerting.processes.append(prometheus)

        _wait_ready(blackbox, f"{alerting.blackbox_url}/-/healthy")
        _wait_ready(alertmanager, f"{alerting.alertmanager_url}/-/ready")
        _wait_ready(prometheus, f"{alerting.prometheus_url}/-/ready")
        # Prometheus 2.42 applies discovered targets (scrape and Alertmanager) on a fixed 5 s
        # tick: wait for both, or the first alert could be dropped for want of an Alertmanager
        wait_until(
            alerting.alertmanager_known, 15, "Prometheus to discover Alertmanager", interval=0.2
        )
        wait_until(
            lambda: alerting.probe_status_code() is not None,
            10 + 2 * interval,
            f"the first probe of {probe_url}",
            interval=0.2,
        )
    except BaseException:
        alerting.stop()
        raise
    return alerting
