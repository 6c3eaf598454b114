"""What every HTTP request meets first: bounded reads, one-line errors, bearer tokens.

aiohttp's `request.content.read(n)` returns only what is buffered, so a body sent in many
packets (chunked transfer, a slow link) would be cut short; `read_body` reads to the end, up to a
size limit and within a time limit.
"""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import http_exceptions, web

from bot.ingest import MAX_PAYLOAD

MAX_BODY = MAX_PAYLOAD  # bytes, for every POST endpoint
HEADER_TIMEOUT = 10.0  # seconds for a connection to deliver a request's headers (idle too)
BODY_TIMEOUT = 15.0  # seconds to receive a whole body once its headers arrived


def error(status: int, reason: str) -> web.Response:
    """The one shape of every refusal: a JSON object with one line."""
    line = reason.splitlines()[0] if reason else "error"
    return web.json_response({"error": line[:300]}, status=status)


class BodyRefused(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


async def read_body(request: web.Request, limit: int = MAX_BODY,
                    timeout: float | None = None) -> bytes:
    """The whole body (all packets, chunked or not), or BodyRefused: 413 over `limit`,
    408 when it does not arrive in time, 400 when the sender stops half-way."""
    if (request.content_length or 0) > limit:
        raise BodyRefused(error(413, f"body over {limit} bytes"))
    if request.content.is_eof():  # all of it arrived with the headers: no wait, no timer
        body = await request.content.read()
        if len(body) > limit:
            raise BodyRefused(error(413, f"body over {limit} bytes"))
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT if timeout is None else timeout):
            while True:
                chunk = await request.content.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise BodyRefused(error(413, f"body over {limit} bytes"))
                chunks.append(chunk)
    except TimeoutError:
        raise BodyRefused(error(408, "the body did not arrive in time")) from None
    except (ConnectionError, asyncio.IncompleteReadError, http_exceptions.HttpProcessingError,
            web.HTTPException) as exc:
        raise BodyRefused(error(400, f"the body could not be read: {exc}")) from None
    return b"".join(chunks)


def bearer_ok(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time. Header bytes that are not
    UTF-8 (aiohttp keeps them as surrogates) simply do not match."""
    given = (header or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, f"Bearer {token}".encode())
