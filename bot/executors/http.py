"""`http`: fetch a URL from the bot's side (status line, then the body's start)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from bot.executors.base import KindParams, StepKind
from bot.models import ExecOutput, Host

BODY_LIMIT = 64 * 1024


class HttpParams(KindParams):
    url: str = Field(pattern=r"^(https?://|\{\{)")
    method: Literal["GET", "HEAD", "POST"] = "GET"
    verify_tls: bool = True


class HttpStep(StepKind):
    """exit_status is the HTTP status code; a step expects < 400 unless it says otherwise."""

    name = "http"
    Params = HttpParams

    @classmethod
    def display(cls, action: Mapping[str, Any]) -> str:
        return f"{action['method']} {action['url']}"

    async def run(self, action: Mapping[str, Any], host: Host, timeout: float) -> ExecOutput:
        import aiohttp  # here: a run without http steps does not pay for importing it

        url = action["url"]
        if not url.startswith(("http://", "https://")):
            return ExecOutput(None, "", error=f"not an http(s) URL: {url!r}")
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        try:
            async with aiohttp.ClientSession(timeout=client_timeout) as session:
                async with session.request(action["method"], url,
                                           ssl=bool(action["verify_tls"]),
                                           allow_redirects=False) as resp:
                    body = await resp.content.read(BODY_LIMIT)
                    text = body.decode("utf-8", "replace")
                    return ExecOutput(resp.status, f"HTTP {resp.status}\n{text}")
        except TimeoutError:
            return ExecOutput(None, "", error=f"timed out after {timeout:g}s", timed_out=True)
        except aiohttp.ClientError as exc:
            return ExecOutput(None, "", error=f"{url}: {exc}")
