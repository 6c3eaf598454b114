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
    (payload(alerts=[]), "alerts must be a non-empty list"),
    (payload(status="burning"), "status"),
    (payload(groupKey=""), "groupKey"),
    (payload(version="3"), "version"),
    (payload(alerts=[{"status": "firing", "labels": {"a": 1}}]), "alerts[0].labels"),
])
def test_malformed_payload_is_one_line(body: bytes, reason: str) -> None:
    with pytest.raises(IngestError) as err:
        parse_alertmanager(body)
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_alert_host_from_host_or_instance() -> None:
    group = parse_alertmanager(payload())
    assert alert_host(group.alerts[0]) == "web01"
    for instance, host in [("web02:9100", "web02"), ("http://127.0.0.1:8080/healthcheck",
                                                      "127.0.0.1"), ("[::1]:9100", "::1")]:
        g = parse_alertmanager(payload(alerts=[{"status": "firing", "labels": {
            "alertname": "X", "instance": instance}}]))
        assert alert_host(g.alerts[0]) == host
