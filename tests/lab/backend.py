"""Stand-in for OnlyOffice Document Server's docservice (stdlib only, run by supervisord).

    python3 backend.py --port N [--mode normal|crash|slow] [--mode-file PATH] [--slow-seconds S]
                       [--redis HOST:PORT] [--data-dir PATH] [--unix-socket PATH]

`GET /healthcheck` answers 200 `true`, `GET /` answers 200 with a short text; every request is
logged to stdout (supervisord writes it to the program's out.log). The mode is read once at
start-up, from --mode-file when that file exists, else from --mode; switching modes is "write the
file, then `supervisorctl restart ds:docservice`".

Start-up (after the crash mode's configuration error), in this order, each failure logged to
stderr and stdout before exit 1, so supervisord shows BACKOFF, then FATAL:

1. --data-dir: write its state file there (a temporary file, then rename); a full filesystem
   fails with the OSError's own text, `[Errno 28] No space left on device: '<path>'`.
2. --redis: TCP connect and a RESP `PING`; a failure is reported the way Node.js reports it,
   built from the real errno name, e.g. `Error: connect ECONNREFUSED 127.0.0.1:6379`.
3. Listen on --host:--port and, with --unix-socket, on that unix socket too (mode 0666, so any
   local user such as nginx's workers may connect; replaced if it exists).

- normal: answer at once.
- crash: print a start-up error (stderr and stdout) and exit 1 at once, so supervisord shows
  BACKOFF, then FATAL "Exited too quickly (process log may have details)".
- slow: every request sleeps --slow-seconds (longer than nginx's proxy_read_timeout) before
  answering, so nginx answers 504 "upstream timed out (110: Connection timed out)".
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def write_state(data_dir: Path, port: int) -> None:
    """Write <data_dir>/docservice.state atomically; an OSError names the file it failed on."""
    path = data_dir / "docservice.state"
    tmp = path.with_name(path.name + ".tmp")
    state = {"pid": os.getpid(), "port": port, "started": stamp()}
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, (json.dumps(state) + "\n").encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # write() does not say which file; say it like open() does
            raise OSError(exc.errno, exc.strerror, str(tmp)) from None
        raise


def node_error(syscall: str, exc: OSError, address: str) -> str:
    """Node.js's text for a failed socket call: `Error: connect ECONNREFUSED 127.0.0.1:6379`."""
    if isinstance(exc, TimeoutError) and exc.errno is None:
        code = "ETIMEDOUT"
    else:
        code = errno.errorcode.get(exc.errno or 0, f"E{exc.errno}")
    return f"Error: {syscall} {code} {address}"


def ping_redis(address: str, timeout: float = 3.0) -> str | None:
    """None when Redis at host:port answers PING with +PONG; else the error, Node-style."""
    host, _, port = address.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        return node_error("connect", exc, address)
    with sock:
        try:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(256)
        except OSError as exc:
            return node_error("read", exc, address)
    if not reply.startswith(b"+PONG"):
        text = reply.decode("utf-8", "replace").strip() or "connection closed"
        return f"ReplyError: {text.removeprefix('-')}"
    return None


def http_servers() -> tuple[type, type, Callable[[Path], Any]]:
    """(Handler, ThreadingHTTPServer, serve_unix), imported only once the start-up checks
    passed: a start that fails (crash mode, no Redis, a full disk) exits before http.server is
    even imported, well within supervisord's startsecs on a loaded machine."""
    import socketserver
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        server_version = "docservice/lab"
        protocol_version = "HTTP/1.1"
        mode = "normal"
        slow_seconds = 6.0

        @property
        def peer(self) -> str:
            """The client's address; `unix` for a connection on the unix socket."""
            address = self.client_address
            return address[0] if isinstance(address, tuple) and address else "unix"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.mode == "slow":
                log("WARN", f'{self.peer} "{self.requestline}" waiting on a slow call')
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
            log("INFO", f'{self.peer} "{self.requestline}" {code}')

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's naming)
            log("WARN", format % args)


    class ThreadingUnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True


    def serve_unix(path: Path) -> ThreadingUnixHTTPServer:
        """Listen on the unix socket path (replacing a stale one), mode 0666, in a thread."""
        path.unlink(missing_ok=True)
        server = ThreadingUnixHTTPServer(str(path), Handler)
        path.chmod(0o666)
        threading.Thread(target=server.serve_forever, name="unix-socket", daemon=True).start()
        return server

    return Handler, ThreadingHTTPServer, serve_unix


def fail(message: str) -> int:
    log("ERROR", message, sys.stderr)
    log("ERROR", message)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", default="normal", choices=MODES)
    parser.add_argument("--mode-file")
    parser.add_argument("--slow-seconds", type=float, default=6.0)
    parser.add_argument("--redis", metavar="HOST:PORT", help="Redis to PING at start-up")
    parser.add_argument("--data-dir", type=Path, help="where the state file is written")
    parser.add_argument("--unix-socket", type=Path, help="also listen on this unix socket")
    args = parser.parse_args(argv)
    mode = read_mode(args)

    if mode == "crash":
        message = (
            "Error: failed to start docservice: cannot read configuration "
            "/etc/onlyoffice/documentserver/local.json: Unexpected token } in JSON at position 412"
        )
        return fail(message)
    if args.data_dir is not None:
        try:
            write_state(args.data_dir, args.port)
        except OSError as exc:
            return fail(f"failed to start docservice: {exc}")
    if args.redis:
        error = ping_redis(args.redis)
        if error is not None:
            return fail(f"failed to start docservice: redis {args.redis}: {error}")

    Handler, ThreadingHTTPServer, serve_unix = http_servers()
    Handler.mode = mode
    Handler.slow_seconds = args.slow_seconds
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    unix_server = serve_unix(args.unix_socket) if args.unix_socket else None
    where = f"{args.host}:{args.port}" + (f" and {args.unix_socket}" if unix_server else "")
    log("INFO", f"Express server listening on {where} (mode={mode})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if unix_server is not None:
            unix_server.shutdown()
            unix_server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
