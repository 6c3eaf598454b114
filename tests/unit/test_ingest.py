import json

import pytest

from bot.errors import IngestError
from bot.ingest import alert_host, parse_alertmanager


def payload(**over: object) -> bytes:
    body = {
        "version": "4", "groupKey": '{}:{alertname="NginxBadGateway", host="web01"}',
        "truncatedAlerts": 0, "status": "firing", "receiver": "opsbot",
        "groupLabels": {"alertname": "NginxBadGateway"},
        "commonLabels": {"alertname": "NginxBadGateway", "host": "web01"},
        "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
        "alerts": [{"status": "firing", "labels": {"alertname": "NginxBadGateway",
                                                    "host": "web01"},
                    "annotations": {"summary": "502"}, "startsAt": "2026-11-22T03:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://x",
                    "fingerprint": "abc123"}],
    }
    body.update(over)
    return json.dumps(body).encode()


def test_parses_real_shape() -> None:
    group = parse_alertmanager(payload())
    assert group.status == "firing" and group.firing[0].fingerprint == "abc123"
    assert group.firing[0].labels["host"] == "web01"


@pytest.mark.parametrize(("body", "reason"), [
    (b"{nope", "not valid JSON"),
    (b"[]", "JSON object"),
    (b"\xff{}", "not UTF-8"),
    (payload(alerts=[]), "alerts must be a non-empty list"),
    (payload(status="burning"), "status"),
    (payload(groupKey=["a"]), "groupKey must be text"),
    (payload(alerts=[{"status": "firing", "labels": {"a": {"b": 1}}}]), "alerts[0].labels"),
    (payload(alerts=[{"status": "firing", "labels": {}}]), "labels must not be empty"),
    (b'{"alerts": [{"labels": {"a": "' + b"\\ud800" + b'"}}]}', "surrogate"),
    (b'{"alerts": ' + b"9" * 5000 + b"}", "cannot be read"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_malformed_payload_is_one_line(body: bytes, reason: str) -> None:
    with pytest.raises(IngestError) as err:
        parse_alertmanager(body)
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_versions_3_and_none_and_alerts_without_status() -> None:
    for version in ("3", 3, None):
        body = json.loads(payload(version=version))
        for alert in body["alerts"]:
            del alert["status"]
        group = parse_alertmanager(json.dumps(body).encode())
        assert group.firing and group.alerts[0].status == "firing"
    resolved = json.loads(payload(status="resolved"))
    del resolved["alerts"][0]["status"]
    assert parse_alertmanager(json.dumps(resolved).encode()).alerts[0].status == "resolved"


def test_group_status_follows_alerts_when_missing() -> None:
    body = json.loads(payload())
    del body["status"]
    body["alerts"][0]["status"] = "resolved"
    assert parse_alertmanager(json.dumps(body).encode()).status == "resolved"


def test_group_key_numeric_or_derived() -> None:
    # alerta's version 3 fixture: a numeric groupKey beyond 2**53, read as text exactly
    raw = payload().replace(b'"groupKey": "{}:{alertname=\\"NginxBadGateway\\", '
                            b'host=\\"web01\\"}"', b'"groupKey": 5615590933959184469')
    assert b"5615590933959184469" in raw
    assert parse_alertmanager(raw).group_key == "5615590933959184469"
    body = json.loads(payload())
    del body["groupKey"]
    one = parse_alertmanager(json.dumps(body).encode()).group_key
    body["alerts"][0]["labels"]["extra"] = "x"  # other alerts of the same group: same key
    assert parse_alertmanager(json.dumps(body).encode()).group_key == one
    body["groupLabels"] = {"alertname": "Other"}
    assert parse_alertmanager(json.dumps(body).encode()).group_key != one
    assert "opsbot" in one and "NginxBadGateway" in one


def test_truncated_reason_utf8_labels_and_scalar_values() -> None:
    body = json.loads(payload(truncatedAlerts=7, notification_reason="repeat interval elapsed"))
    body["alerts"][0]["labels"].update({"служба.имя": "nginx", "ports": 443, "up": False})
    group = parse_alertmanager(json.dumps(body, ensure_ascii=False).encode())
    assert group.truncated == 7 and group.repeat
    assert group.alerts[0].labels["служба.имя"] == "nginx"
    assert group.alerts[0].labels["ports"] == "443" and group.alerts[0].labels["up"] == "false"
    assert not parse_alertmanager(payload(notification_reason="new alerts added")).repeat


def test_alert_host_from_host_or_instance() -> None:
    group = parse_alertmanager(payload())
    assert alert_host(group.alerts[0]) == "web01"
    for instance, host in [("web02:9100", "web02"), ("http://127.0.0.1:8080/healthcheck",
                                                      "127.0.0.1"), ("[::1]:9100", "::1")]:
        g = parse_alertmanager(payload(alerts=[{"status": "firing", "labels": {
            "alertname": "X", "instance": instance}}]))
        assert alert_host(g.alerts[0]) == host
