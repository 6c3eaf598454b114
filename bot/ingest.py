"""Alertmanager webhook payload (version 4) -> AlertGroup. Everything in it is untrusted."""

from __future__ import annotations

import json
from typing import Any

from bot.errors import IngestError
from bot.models import Alert, AlertGroup, canonical_json, sha256_hex

MAX_PAYLOAD = 1024 * 1024  # bytes
STATUSES = ("firing", "resolved")


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise IngestError(f"{where} must be an object of strings")
    return dict(value)


def _str(value: Any, where: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise IngestError(f"{where} must be a non-empty string" if required
                          else f"{where} must be a string")
    return value


def _status(value: Any, where: str) -> str:
    if value not in STATUSES:
        raise IngestError(f"{where} must be \"firing\" or \"resolved\"")
    return str(value)


def parse_alertmanager(body: bytes) -> AlertGroup:
    """Parse and check the shape; raise IngestError with a one-line reason."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IngestError(f"body is not valid JSON ({exc.__class__.__name__}: "
                          f"{getattr(exc, 'msg', exc)})") from None
    if not isinstance(data, dict):
        raise IngestError("body must be a JSON object (Alertmanager webhook payload)")
    version = data.get("version")
    if version is not None and str(version) != "4":
        raise IngestError(f"unsupported payload version {version!r} (expected \"4\")")
    alerts_raw = data.get("alerts")
    if not isinstance(alerts_raw, list) or not alerts_raw:
        raise IngestError("alerts must be a non-empty list")
    alerts = []
    for i, item in enumerate(alerts_raw):
        where = f"alerts[{i}]"
        if not isinstance(item, dict):
            raise IngestError(f"{where} must be an object")
        labels = _str_map(item.get("labels"), f"{where}.labels")
        if not labels:
            raise IngestError(f"{where}.labels must not be empty")
        alerts.append(Alert(
            fingerprint=_str(item.get("fingerprint"), f"{where}.fingerprint")
            or _fingerprint(labels),
            status=_status(item.get("status"), f"{where}.status"),
            labels=labels,
            annotations=_str_map(item.get("annotations"), f"{where}.annotations"),
            starts_at=_str(item.get("startsAt"), f"{where}.startsAt"),
            ends_at=_str(item.get("endsAt"), f"{where}.endsAt") or None,
            generator_url=_str(item.get("generatorURL"), f"{where}.generatorURL"),
        ))
    return AlertGroup(
        group_key=_str(data.get("groupKey"), "groupKey", required=True),
        status=_status(data.get("status"), "status"),
        receiver=_str(data.get("receiver"), "receiver"),
        alerts=tuple(alerts),
        group_labels=_str_map(data.get("groupLabels"), "groupLabels"),
        common_labels=_str_map(data.get("commonLabels"), "commonLabels"),
        common_annotations=_str_map(data.get("commonAnnotations"), "commonAnnotations"),
        external_url=_str(data.get("externalURL"), "externalURL"),
    )


def _fingerprint(labels: dict[str, str]) -> str:
    return sha256_hex(canonical_json(labels))[:16]


def alert_host(alert: Alert) -> str | None:
    """The alert's target: its `host` label, else the host part of `instance`."""
    if alert.labels.get("host"):
        return alert.labels["host"]
    instance = alert.labels.get("instance", "")
    if not instance:
        return None
    if "://" in instance:
        instance = instance.split("://", 1)[1]
    instance = instance.split("/", 1)[0]
    if instance.startswith("["):  # [::1]:9100
        return instance[1:].split("]", 1)[0]
    return instance.rsplit(":", 1)[0] if instance.count(":") == 1 else instance
