"""An alert's URL (its `instance` label) is untrusted: discovery traces it, and the probes fetch
it, only when nginx on the host serves it by name, and then on the host itself (curl --resolve
to the address nginx listens on); any other URL is replaced by the runbook's or the inventory's
and the thread says so. Tried against a running bot and the field lab (tests/lab/field.py: a
default server answering 404, and `server_name localhost app.field.test`)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from tests.botfixtures import RunningBot
from tests.e2e.test_field_layouts import diagnosed, field_bot, field_inventory  # noqa: F401
from tests.lab.field import FieldLab

pytestmark = [pytest.mark.lab]


async def shown(bot: RunningBot) -> tuple[str, str]:
    """What the thread shows (its messages, the run's uploaded step outputs), and the
    proxy_check part of the upload (its command and output)."""
    upload = await bot.wait(lambda: next((f for f in bot.slack.files
                                          if f.name.endswith("-steps.txt") and f.uploaded), None))
    found = re.search(r"^### \S+ · proxy_check .*?(?=^### |\Z)", upload.text, re.M | re.S)
    assert found, upload.text
    return bot.thread_text() + "\n" + upload.text, found.group(0)


def commands(text: str) -> list[str]:
    """Every command shown as run or proposed (`$ ...`)."""
    return re.findall(r"^\W*\$ (.+?)(?:```)?$", text, re.M)


@pytest.mark.parametrize("url", [
    lambda f: "http://evil.example:8080/x",  # no server of this nginx listens there
    lambda f: f"http://evil.example:{f.port}/x",  # only the port's default server answers it
], ids=["other port", "default server"])
async def test_an_alert_url_nginx_does_not_serve_renders_no_command(
        url: Callable[[FieldLab], str], field: FieldLab,
        field_bot: RunningBot) -> None:  # noqa: F811
    await diagnosed(field_bot, "field01", url(field))

    text, proxy = await shown(field_bot)
    run = commands(text)
    assert any(c.startswith("curl ") for c in run), run  # the probes ran
    assert not [c for c in run if "evil.example" in c], run
    assert "$ curl " in proxy and "http://127.0.0.1/healthcheck" in proxy, proxy  # the runbook's
    assert f"the alert's URL {url(field)} is not served by nginx on field01" in text


async def test_a_served_alert_url_is_fetched_on_the_host(
        field: FieldLab, field_bot: RunningBot) -> None:  # noqa: F811
    url = f"http://app.field.test:{field.port}/healthcheck"  # a name no DNS knows
    await asyncio.to_thread(field.stop_app)

    await diagnosed(field_bot, "field01", url)

    text, proxy = await shown(field_bot)
    assert f"--resolve app.field.test:{field.port}:127.0.0.1 " in proxy, proxy
    # nginx on the host answered by that name: its server proxies (502; the default says 404)
    assert url in proxy and "HTTP 502" in proxy, proxy
    assert "not served by nginx" not in text
