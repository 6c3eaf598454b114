"""Stand-in for OnlyOffice Document Server's docservice (stdlib only, run by supervisord).

    python3 backend.py --port N [--mode normal|crash|slow] [--mode-file PATH] [--slow-seconds S]

`GET /healthcheck` answers 200 `true`, `GET /` answers 200 with a short text; every request is
logged to stdout (supervisord writes it to the program's out.log). The mode is read once at
start-up, from --mode-file when that file exists, else from --mode; switching modes is "write the
file, then `supervisorctl restart ds:docservice`".

- normal: answer at once.
- crash: print a start-up error (stderr and stdout) and exit 1 at once, so supervisord shows
  BACKOFF, then FATAL "Exited too quickly (process log may have details)".
- slow: every request sleeps --slow-seconds (longer than nginx's proxy_read_timeout) before
  answering, so nginx answers 504 "upstream timed out (110: Connection timed out)".
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MODES = ("normal", "crash", "slow")


def stamp() -> str:
    return datetime.datetime.now().isoformat(timespec="milliseconds")


def log(level: str, message: str, stream=None) -> None:
    print(f"[{stamp()}] [{level}] docservice - {message}", file=stream or sys.stdout, flush=True)


def read_mode(args: argparse.Namespace) -> str:
    mode = args.mode
    if args.mode_file:
        path = Path(args.mode_file)
        if path.exists():
            mode = path.read_text().strip() or mode
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


class Handler(BaseHTTPRequestHandler):
    server_version = "docservice/lab"
    protocol_version = "HTTP/1.1"
    mode = "normal"
    slow_seconds = 6.0

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.mode == "slow":
            log("WARN", f'{self.client_address[0]} "{self.requestline}" waiting on a slow call')
            time.sleep(self.slow_seconds)
        if self.path.split("?", 1)[0] == "/healthcheck":
            self.answer(200, b"true", "application/json")
        elif self.path.split("?", 1)[0] == "/":
            self.answer(200, b"Document Server is running (opsbot test lab)\n", "text/plain")
        else:
            self.answer(404, b"Not Found\n", "text/plain")

    def answer(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            log("WARN", f'client went away before the answer to "{self.requestline}"')

    def log_request(self, code="-", size="-") -> None:
        log("INFO", f'{self.client_address[0]} "{self.requestline}" {code}')

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's naming)
        log("WARN", format % args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", default="normal", choices=MODES)
    parser.add_argument("--mode-file")
    parser.add_argument("--slow-seconds", type=float, default=6.0)
    args = parser.parse_args(argv)
    mode = read_mode(args)

    if mode == "crash":
        message = (
            "Error: failed to start docservice: cannot read configuration "
            "/etc/onlyoffice/documentserver/local.json: Unexpected token } in JSON at position 412"
        )
        log("ERROR", message, sys.stderr)
        log("ERROR", message)
        return 1

    Handler.mode = mode
    Handler.slow_seconds = args.slow_seconds
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    log("INFO", f"Express server listening on {args.host}:{args.port} (mode={mode})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
