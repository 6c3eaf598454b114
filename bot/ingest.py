"""Alertmanager webhook payload -> AlertGroup. Everything in it is untrusted.

Tolerant of every payload real Alertmanagers (and tools that imitate them) send: versions 4, 3
and none; alerts without their own `status`; no `groupKey` (derived from the receiver and the
group labels); a numeric `groupKey`; label values that are numbers. Only a body that cannot be
read as alerts raises IngestError (one line), which the server answers with a 4xx.
"""

from __future__ import annotations

import json
from typing import Any

from bot.errors import IngestError
from bot.models import Alert, AlertGroup, canonical_json, sha256_hex

MAX_PAYLOAD = 1024 * 1024  # bytes
STATUSES = ("firing", "resolved")


def load_json(body: bytes | str, what: str = "body") -> Any:
    """Untrusted JSON, or IngestError with one line: not UTF-8, not JSON, nested too deep,
    numbers too long to read, or text with lone UTF-16 surrogates (which no store can keep)."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise IngestError(f"{what} is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise IngestError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} "
                          f"column {exc.colno})") from None
    except RecursionError:
        raise IngestError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise IngestError(f"{what} has a value that cannot be read: "
                          f"{str(exc).splitlines()[0][:120]}") from None
    if "\\u" in text:  # only an escape can make a lone surrogate (the text was UTF-8)
        _check_text(data, what)
    return data


def _check_text(data: Any, what: str) -> None:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise IngestError(f"{what} has text with a lone UTF-16 surrogate "
                                  "(not Unicode)") from None


def _text(value: Any) -> str | None:
    """A label or annotation value as text: strings as they are, numbers and booleans as JSON
    writes them; None for what is not a scalar."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise IngestError(f"{where} must be an object of strings")
    if all(type(raw) is str for raw in value.values()):  # the usual case: taken as it is
        return value
    out = {}
    for key, raw in value.items():
        if raw is None:
            continue
        text = _text(raw)
        if text is None:
            raise IngestError(f"{where}[{key[:60]!r}] must be a string")
        out[key] = text
    return out


def _str(value: Any) -> str:
    text = _text(value)
    return "" if text is None else text


def _status(value: Any, where: str, default: str) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value.lower() not in STATUSES:
        raise IngestError(f"{where} must be \"firing\" or \"resolved\"")
    return value.lower()


def _group_key(data: dict[str, Any], receiver: str, group_labels: dict[str, str]) -> str:
    key = data.get("groupKey")
    if isinstance(key, bool) or not isinstance(key, str | int | float | type(None)):
        raise IngestError("groupKey must be text")
    if key is not None and key != "":
        return key if isinstance(key, str) else json.dumps(key)
    # no groupKey (payload version 3 tools, hand-made senders): the same receiver and group
    # labels are the same Alertmanager group
    return f"derived:{receiver}:{canonical_json(group_labels)}"


def _count(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        return int(value)
    return 0


def parse_alertmanager(body: bytes) -> AlertGroup:
    """Parse and check the shape; raise IngestError with a one-line reason."""
    data = load_json(body)
    if not isinstance(data, dict):
        raise IngestError("body must be a JSON object (Alertmanager webhook payload)")
    alerts_raw = data.get("alerts")
    if not isinstance(alerts_raw, list) or not alerts_raw:
        raise IngestError("alerts must be a non-empty list")
    receiver = _str(data.get("receiver"))
    group_labels = _str_map(data.get("groupLabels"), "groupLabels")
    declared = data.get("status")
    group_status = _status(declared, "status", "firing")
    alerts = []
    for i, item in enumerate(alerts_raw):
        where = f"alerts[{i}]"
        if not isinstance(item, dict):
            raise IngestError(f"{where} must be an object")
        labels = _str_map(item.get("labels"), f"{where}.labels")
        if not labels:
            raise IngestError(f"{where}.labels must not be empty")
        alerts.append(Alert(
            fingerprint=_str(item.get("fingerprint")) or _fingerprint(labels),
            status=_status(item.get("status"), f"{where}.status", group_status),
            labels=labels,
            annotations=_str_map(item.get("annotations"), f"{where}.annotations"),
            starts_at=_str(item.get("startsAt")),
            ends_at=_str(item.get("endsAt")) or None,
            generator_url=_str(item.get("generatorURL")),
        ))
    if declared in (None, ""):  # no group status: firing while any alert fires
        group_status = "firing" if any(a.status == "firing" for a in alerts) else "resolved"
    reason = data.get("notification_reason")
    return AlertGroup(
        group_key=_group_key(data, receiver, group_labels),
        status=group_status,
        receiver=receiver,
        alerts=tuple(alerts),
        group_labels=group_labels,
        common_labels=_str_map(data.get("commonLabels"), "commonLabels"),
        common_annotations=_str_map(data.get("commonAnnotations"), "commonAnnotations"),
        external_url=_str(data.get("externalURL")),
        truncated=_count(data.get("truncatedAlerts")),
        reason=reason if isinstance(reason, str) else "",
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
