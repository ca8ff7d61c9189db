"""The buffering front of ``make run``: slow clients never hold a web thread.

gunicorn's threads read a request as it arrives: ten clients sending a byte at a time hold ten
threads, and with every thread held the site answers no one (issue #17). This front, one
asyncio process, does what nginx does in production (docs/operations.md): it reads each
request whole (headers within ``--header-timeout``, the body with at most ``--body-timeout``
between two reads, bodies over ``--max-body`` refused with 413 from Content-Length before a
byte of them is read), and only then hands it to gunicorn over a Unix socket; it reads
gunicorn's answer whole too, and sends it to the client at the client's pace. A slow client
costs a coroutine and a socket here, never a thread there.

The client's address reaches gunicorn in a PROXY protocol v1 line (``--proxy-protocol v1``),
so Django sees it as REMOTE_ADDR, exactly as without the front (DJANGO_NUM_PROXIES unchanged).
The socket lives in a directory only the site's user can enter, since gunicorn trusts whatever
connects there.

Standard library only, no Django: ``python -m fashionsite.front --bind HOST:PORT
--upstream PATH``. SIGTERM or SIGINT: stop accepting, finish the requests in flight (at most
``--grace`` seconds), exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import ipaddress
import json
import logging
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO

log = logging.getLogger("fashionsite.front")

HEAD_LIMIT = 64 * 1024  # request line + headers, like gunicorn's own limits
CHUNK = 64 * 1024
SPOOL_IN_MEMORY = 1024 * 1024  # bodies and answers up to this stay in memory, larger ones on disk
# Hop-by-hop headers: they describe one connection, never forwarded (RFC 9110 section 7.6.1).
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"expect",
    b"content-length",
}


@dataclass(frozen=True)
class FrontConfig:
    """The front's limits; seconds and bytes."""

    upstream: str
    max_body: int
    # (path prefix, bytes): larger (or smaller) limits for some paths, longest prefix first.
    path_limits: tuple[tuple[str, int], ...] = ()
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 15.0
    send_timeout: float = 60.0
    upstream_timeout: float = 300.0
    max_connections: int = 512
    spool_dir: str | None = None


def limit_for(config: FrontConfig, target: str) -> int:
    """The largest body accepted for a request to ``target``."""
    path = target.split("?", 1)[0]
    for prefix, limit in sorted(config.path_limits, key=lambda item: -len(item[0])):
        if path.startswith(prefix):
            return limit
    return config.max_body


class Refused(Exception):
    """A request answered by the front itself (status, message), then the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    def connection_tokens(self) -> set[bytes]:
        return {
            token.strip().lower()
            for value in self.header(b"connection")
            for token in value.split(b",")
        }


def parse_head(head: bytes) -> Request:
    """The request line and headers (``head`` ends with the blank line)."""
    lines = head[:-4].split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "malformed request line") from None
    if version not in {"HTTP/1.0", "HTTP/1.1"}:
        raise Refused(505, "HTTP/1.0 and HTTP/1.1 only")
    if not method.isalpha() or not method.isupper() or not target or target[0] not in "/*":
        raise Refused(400, "malformed request line")
    request = Request(method=method, target=target, version=version)
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # No whitespace before the colon, no folded lines: both smuggle headers past proxies.
        if not colon or not name or name != name.strip() or line[:1] in b" \t":
            raise Refused(400, "malformed header")
        request.headers.append((name.lower(), value.strip()))
    return request


def body_length(request: Request) -> int | None:
    """The declared Content-Length; None for a chunked body. Ambiguous framing is refused."""
    encodings = request.header(b"transfer-encoding")
    lengths = request.header(b"content-length")
    if encodings:
        if lengths:
            raise Refused(400, "both Content-Length and Transfer-Encoding")
        if [e.strip().lower() for e in b",".join(encodings).split(b",")] != [b"chunked"]:
            raise Refused(501, "only the chunked transfer coding is understood")
        return None
    if not lengths:
        return 0
    if len(set(lengths)) != 1 or not lengths[0].isdigit():
        raise Refused(400, "malformed Content-Length")
    return int(lengths[0])


def spool(config: FrontConfig) -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=config.spool_dir)


def simple_response(status: int, message: str, *, path: str = "", close: bool = True) -> bytes:
    """An answer of the front's own: the API's JSON error shape under /api/, text elsewhere."""
    phrase = http.HTTPStatus(status).phrase
    if path.startswith("/api/"):
        code = "payload_too_large" if status == 413 else phrase.lower().replace(" ", "_")
        body = json.dumps({"error": {"code": code, "message": message, "details": None}}).encode()
        kind = b"application/json"
    else:
        body = f"{status} {phrase}: {message}\n".encode()
        kind = b"text/plain; charset=utf-8"
    head = [
        f"HTTP/1.1 {status} {phrase}".encode(),
        b"Content-Type: " + kind,
        b"Content-Length: " + str(len(body)).encode(),
        b"Connection: close" if close else b"Connection: keep-alive",
    ]
    if status == 503:
        head.append(b"Retry-After: 5")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class Front:
    """One listening socket; each connection a coroutine (:meth:`serve`)."""

    def __init__(self, config: FrontConfig) -> None:
        self.config = config
        self.connections = 0
        self.tasks: set[asyncio.Task] = set()

    # ----------------------------------------------------------------- reading the request

    async def read_body(
        self, reader: asyncio.StreamReader, length: int | None, limit: int
    ) -> IO[bytes]:
        """The whole body, into a spool; bounded in size and in time between two reads."""
        body = spool(self.config)
        timeout = self.config.body_timeout
        try:
            if length is not None:
                remaining = length
                while remaining:
                    data = await asyncio.wait_for(reader.read(min(CHUNK, remaining)), timeout)
                    if not data:
                        raise ConnectionResetError("the client closed the connection mid-body")
                    body.write(data)
                    remaining -= len(data)
            else:  # chunked: de-chunked here, forwarded with a Content-Length
                total = 0
                while True:
                    line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise Refused(400, "malformed chunk size") from None
                    if size == 0:
                        while (await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)) != (
                            b"\r\n"
                        ):
                            pass  # trailers: dropped
                        break
                    total += size
                    if total > limit:
                        raise Refused(413, f"the request body is over {limit} bytes")
                    chunk = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
                    body.write(chunk[:-2])
        except BaseException:
            body.close()
            raise
        body.seek(0)
        return body

    # ----------------------------------------------------------------- forwarding

    def upstream_head(self, request: Request, peer: tuple, local: tuple, length: int) -> bytes:
        named = request.connection_tokens()
        lines = [
            proxy_line(peer, local),
            f"{request.method} {request.target} {request.version}".encode("latin-1"),
        ]
        for name, value in request.headers:
            if name in HOP_BY_HOP or name in named:
                continue
            lines.append(name + b": " + value)
        if length or request.method in {"POST", "PUT", "PATCH"}:
            lines.append(b"Content-Length: " + str(length).encode())
        lines.append(b"Connection: close")
        return lines[0] + b"\r\n".join(lines[1:]) + b"\r\n\r\n"

    async def forward(
        self, request: Request, body: IO[bytes], length: int, peer: tuple, local: tuple
    ) -> tuple[bytes, IO[bytes]]:
        """Send the buffered request to gunicorn; its answer's head and (spooled) body."""
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.config.upstream, limit=HEAD_LIMIT), 5
            )
        except (OSError, TimeoutError):
            raise Refused(503, "the site is starting or restarting: try again shortly") from None
        answer = spool(self.config)
        try:
            # gunicorn may answer before it read the whole body (a 413 from Content-Length) and
            # close: its answer is still read below.
            with contextlib.suppress(OSError):
                up_writer.write(self.upstream_head(request, peer, local, length))
                while data := body.read(CHUNK):
                    up_writer.write(data)
                    await up_writer.drain()
                await up_writer.drain()
            deadline = self.config.upstream_timeout
            head = await asyncio.wait_for(up_reader.readuntil(b"\r\n\r\n"), deadline)
            while data := await asyncio.wait_for(up_reader.read(CHUNK), deadline):
                answer.write(data)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            answer.close()
            raise Refused(502, "the web server closed the connection") from None
        except TimeoutError:
            answer.close()
            raise Refused(504, "the web server did not answer in time") from None
        finally:
            up_writer.close()
            with contextlib.suppress(OSError):
                await up_writer.wait_closed()
        answer.seek(0)
        return head, answer

    # ----------------------------------------------------------------- one connection

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        local = writer.get_extra_info("sockname") or ("0.0.0.0", 0)
        self.connections += 1
        try:
            if self.connections > self.config.max_connections:
                writer.write(simple_response(503, "too many connections"))
                return
            first = True
            while await self.serve_one(reader, writer, peer, local, first=first):
                first = False
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or stalled: nothing to answer
        finally:
            self.connections -= 1
            with contextlib.suppress(Exception):
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 1)
            if task is not None:
                self.tasks.discard(task)

    async def serve_one(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: tuple,
        local: tuple,
        *,
        first: bool,
    ) -> bool:
        """One request and its answer; whether the connection stays open for another."""
        started = time.monotonic()
        timeout = self.config.header_timeout if first else self.config.keepalive_timeout
        path = ""
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            except asyncio.LimitOverrunError:
                raise Refused(431, "the request headers are too large") from None
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    raise Refused(400, "incomplete request") from None
                return False  # closed between requests
            except TimeoutError:
                if first or reader._buffer:  # type: ignore[attr-defined]  # a partial head
                    raise Refused(408, "the request headers took too long") from None
                return False  # an idle kept-alive connection
            request = parse_head(head)
            path = request.target
            length = body_length(request)
            limit = limit_for(self.config, request.target)
            if length is not None and length > limit:
                raise Refused(413, f"the request body is over {limit} bytes")
            if b"100-continue" in [v.lower() for v in request.header(b"expect")]:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                body = await self.read_body(reader, length, limit)
            except TimeoutError:
                raise Refused(408, "the request body took too long") from None
            with body:
                size = body.seek(0, 2)
                body.seek(0)
                head_up, answer = await self.forward(request, body, size, peer, local)
        except Refused as refusal:
            writer.write(simple_response(refusal.status, refusal.message, path=path))
            await asyncio.wait_for(writer.drain(), self.config.send_timeout)
            self.access(peer, path or "-", refusal.status, started)
            return False
        with answer:
            keep = self.keep_alive(request, head_up)
            status_line, _, rest = head_up.partition(b"\r\n")
            kept = [
                line
                for line in rest[:-4].split(b"\r\n")
                if line
                and line.split(b":", 1)[0].strip().lower() not in {b"connection", b"keep-alive"}
            ]
            kept.append(b"Connection: keep-alive" if keep else b"Connection: close")
            writer.write(status_line + b"\r\n" + b"\r\n".join(kept) + b"\r\n\r\n")
            while data := answer.read(CHUNK):
                writer.write(data)
                await asyncio.wait_for(writer.drain(), self.config.send_timeout)
            await asyncio.wait_for(writer.drain(), self.config.send_timeout)
        status = int(status_line.split(b" ")[1]) if status_line.count(b" ") else 0
        self.access(peer, f"{request.method} {path}", status, started)
        return keep

    @staticmethod
    def keep_alive(request: Request, head: bytes) -> bool:
        """Whether the client may send another request on this connection: it asked for it
        and the answer's end is known without closing (a length, chunks, or no body)."""
        if request.version != "HTTP/1.1" or b"close" in request.connection_tokens():
            return False
        lines = head.lower().split(b"\r\n")
        status = lines[0].split(b" ")[1] if lines[0].count(b" ") else b""
        if request.method == "HEAD" or status in {b"204", b"304"}:
            return True
        return any(
            line.startswith((b"content-length:", b"transfer-encoding:")) for line in lines[1:]
        )

    @staticmethod
    def access(peer: tuple, what: str, status: int, started: float) -> None:
        ms = (time.monotonic() - started) * 1000
        log.info("%s %s %d %.0fms", peer[0], what, status, ms)


def proxy_line(peer: tuple, local: tuple) -> bytes:
    """The PROXY protocol v1 line naming the client to gunicorn."""
    try:
        family = "TCP6" if ipaddress.ip_address(peer[0]).version == 6 else "TCP4"
        return f"PROXY {family} {peer[0]} {local[0]} {peer[1]} {local[1]}\r\n".encode()
    except ValueError:
        return b"PROXY UNKNOWN\r\n"


async def run(config: FrontConfig, host: str, port: int, *, grace: float) -> None:
    front = Front(config)
    server = await asyncio.start_server(
        front.serve, host, port, limit=HEAD_LIMIT, reuse_address=True, backlog=1024
    )
    for sock in server.sockets:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("front listening on %s:%d, forwarding to %s", host, port, config.upstream)
    await stop.wait()
    server.close()
    if front.tasks:
        _done, pending = await asyncio.wait(set(front.tasks), timeout=grace)
        for task in pending:
            task.cancel()
    log.info("front stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bind", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="gunicorn's Unix socket")
    parser.add_argument("--max-body", type=int, required=True, help="bytes")
    parser.add_argument(
        "--path-limit",
        action="append",
        default=[],
        metavar="PREFIX=BYTES",
        help="another body limit for paths starting with PREFIX (repeatable)",
    )
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--body-timeout", type=float, default=30.0)
    parser.add_argument("--keepalive-timeout", type=float, default=15.0)
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--spool-dir", default=None)
    parser.add_argument("--grace", type=float, default=10.0)
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = FrontConfig(
        upstream=args.upstream,
        max_body=args.max_body,
        path_limits=tuple(
            (prefix, int(limit))
            for prefix, _, limit in (item.rpartition("=") for item in args.path_limit)
        ),
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keepalive_timeout=args.keepalive_timeout,
        max_connections=args.max_connections,
        spool_dir=args.spool_dir,
    )
    asyncio.run(run(config, host.strip("[]"), int(port), grace=args.grace))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
