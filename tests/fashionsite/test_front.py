"""The buffering front of ``make run`` (fashionsite.front), against a one-at-a-time upstream.

The upstream here serves one connection at a time, as a web server whose every thread is
busy would: if the front handed it a request before the request was complete, a slow client
would hold it and nobody else would be answered. Loopback only, a few bytes, bounded waits.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

LIMIT = 10_000
IMPORT_LIMIT = 50_000


class Upstream(socketserver.StreamRequestHandler):
    """Reads the PROXY line and one request; answers what it saw, as JSON."""

    def handle(self) -> None:
        proxy = self.rfile.readline().decode().strip()
        request_line = self.rfile.readline().decode().strip()
        headers = {}
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.rfile.read(int(headers.get("content-length", 0)))
        answer = json.dumps(
            {"proxy": proxy, "line": request_line, "headers": headers, "body": body.decode()}
        ).encode()
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer
        )


@pytest.fixture
def front(tmp_path) -> Iterator[int]:
    path = Path("/tmp") / f"front-test-{time.monotonic_ns()}.sock"  # short: AF_UNIX limit
    server = socketserver.UnixStreamServer(str(path), Upstream)  # one connection at a time
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable, "-m", "fashionsite.front", "--bind", f"127.0.0.1:{port}",
            "--upstream", str(path), "--max-body", str(LIMIT),
            "--path-limit", f"/admin/imports/={IMPORT_LIMIT}",
            "--header-timeout", "2", "--body-timeout", "2", "--grace", "1",
        ],
        cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        server.shutdown()
        server.server_close()
        path.unlink(missing_ok=True)


def exchange(port: int, data: bytes, *, timeout: float = 10) -> bytes:
    """Send ``data``, read the answer until the front closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def json_body(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def test_the_client_address_and_the_whole_body_reach_the_upstream(front):
    answer = exchange(
        front,
        b"POST /api/v1/search/?q=1 HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\nhello",
    )
    assert answer.startswith(b"HTTP/1.1 200 OK")
    seen = json_body(answer)
    assert seen["proxy"].startswith("PROXY TCP4 127.0.0.1 127.0.0.1 ")
    assert seen["line"] == "POST /api/v1/search/?q=1 HTTP/1.1"
    assert seen["body"] == "hello"
    assert seen["headers"]["host"] == "shop"
    # A chunked body arrives whole, with its length.
    answer = exchange(
        front,
        b"POST /x HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        b"\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n",
    )
    seen = json_body(answer)
    assert seen["body"] == "abcde"
    assert seen["headers"]["content-length"] == "5"
    assert "transfer-encoding" not in seen["headers"]


def test_a_kept_alive_connection_serves_several_requests(front):
    with socket.create_connection(("127.0.0.1", front), timeout=10) as sock:
        for n in range(3):
            sock.sendall(f"GET /{n} HTTP/1.1\r\nHost: shop\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = b""
            while len(body) < length:
                body += sock.recv(length - len(body))
            assert b"Connection: keep-alive" in head
            assert json.loads(body)["line"] == f"GET /{n} HTTP/1.1"


@pytest.mark.parametrize(
    ("path", "length", "refused"),
    [
        ("/api/v1/search/", LIMIT + 1, True),
        ("/", LIMIT + 1, True),
        ("/admin/imports/add/", LIMIT + 1, False),  # imports may be larger
        ("/admin/imports/add/", IMPORT_LIMIT + 1, True),
    ],
)
def test_an_over_limit_body_is_refused_from_its_length_before_it_is_sent(
    front, path, length, refused
):
    with socket.create_connection(("127.0.0.1", front), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: shop\r\nContent-Length: {length}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        answer = sock.recv(4096)  # not one byte of the body was sent
    if refused:
        assert answer.startswith(b"HTTP/1.1 413")
        assert b"Connection: close" in answer
    else:
        assert answer.startswith(b"HTTP/1.1 100 Continue")


def test_slow_clients_hold_no_upstream_and_are_timed_out(front):
    stop = threading.Event()
    outcomes: list[bytes] = []

    def slow(index: int) -> None:
        with socket.create_connection(("127.0.0.1", front), timeout=10) as sock:
            if index % 2:
                sock.sendall(b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 1000\r\n\r\n")
            else:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: shop\r\n")
            with contextlib.suppress(OSError):
                for _ in range(20):  # at most 20 bytes (or header lines), 0.3 s apart
                    if stop.is_set() or select.select([sock], [], [], 0)[0]:
                        break  # answered (and closed) by the front
                    sock.sendall(b"x" if index % 2 else b"X-Slow: 1\r\n")
                    time.sleep(0.3)
            try:
                outcomes.append(sock.recv(4096))
            except ConnectionResetError:  # closed while more of its bytes were in flight
                outcomes.append(b"")

    clients = [threading.Thread(target=slow, args=(i,), daemon=True) for i in range(10)]
    for client in clients:
        client.start()
    time.sleep(0.5)
    try:
        # The one-at-a-time upstream still answers everybody else at once.
        for _ in range(5):
            answer = exchange(front, b"GET /ok HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 OK")
    finally:
        for client in clients:
            client.join(timeout=15)
        stop.set()
    # Headers and bodies that take longer than their timeouts (2 s) are answered 408 and their
    # connections closed (a reset when the client was still sending).
    assert len(outcomes) == 10
    assert all(outcome.startswith(b"HTTP/1.1 408") or outcome == b"" for outcome in outcomes)
    assert any(outcome.startswith(b"HTTP/1.1 408") for outcome in outcomes)


def test_malformed_or_ambiguous_requests_are_refused(front):
    both = (
        b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert exchange(front, both).startswith(b"HTTP/1.1 400")
    assert exchange(front, b"GET / HTTP/1.1\r\nBad Header : x\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert exchange(front, b"GET / HTTP/2.0\r\nHost: shop\r\n\r\n").startswith(b"HTTP/1.1 505")
    huge = b"GET / HTTP/1.1\r\nHost: shop\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert exchange(front, huge).startswith(b"HTTP/1.1 431")
