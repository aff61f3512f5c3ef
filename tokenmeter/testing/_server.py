"""HTTP plumbing: a keep-alive loopback server that hands parsed requests to a function.

Kept separate from the provider bodies so the framing rules live in one place: HTTP/1.1 with
``Content-Length`` for JSON and chunked transfer encoding for streams, headers and body sent in one
write, Nagle off. That keeps a round trip well under a millisecond, which matters because
benchmarks push thousands of calls through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["FakeRequest", "LoopbackServer", "Reply", "json_reply", "sse", "stream_reply"]

_PHRASES = {status.value: status.phrase for status in HTTPStatus} | {529: "Overloaded"}

#: Streamed events are written in batches of about this many bytes.
_FLUSH_BYTES = 16384

#: Query parameters that may carry credentials; never kept in the request log.
_SECRET_PARAMS = frozenset({"key", "api_key", "api-key", "access_token"})


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """One request as the fake saw it: no headers, so no API keys."""

    method: str
    path: str
    query: dict[str, str]
    body: Any

    @property
    def json(self) -> dict[str, Any]:
        """The body when it is a JSON object, else an empty dict."""
        return self.body if isinstance(self.body, dict) else {}


@dataclass(slots=True)
class Reply:
    """What to send back: a whole ``body``, or ``chunks`` streamed as they are produced."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    chunks: Iterable[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, body=json.dumps(obj).encode(), headers=headers or {})


def stream_reply(chunks: Iterable[bytes], content_type: str = "text/event-stream") -> Reply:
    return Reply(chunks=chunks, content_type=content_type)


def sse(data: Any, event: str | None = None, end: bytes = b"\n\n") -> bytes:
    """One server-sent event; ``data`` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}".encode() + end


App = Callable[[FakeRequest], Reply]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a test fake should not write to stderr on every request."""

    def _serve(self) -> None:
        raw = self._read_body()
        url = urlsplit(self.path)
        query = {
            name: value
            for name, value in parse_qsl(url.query, keep_blank_values=True)
            if name.lower() not in _SECRET_PARAMS
        }
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = FakeRequest(self.command, url.path, query, body)
        try:
            reply = self.server.app(request)
        except Exception as exc:  # a bug in the fake must surface as a 500, not a hang
            reply = json_reply({"error": {"message": f"FakeProvider bug: {exc!r}"}}, status=500)
        try:
            self._send(reply)
        except OSError:  # client went away mid-stream (early break / close): not an error
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, reply: Reply) -> None:
        phrase = _PHRASES.get(reply.status, "Error")
        head = [f"HTTP/1.1 {reply.status} {phrase}", f"content-type: {reply.content_type}"]
        head += [f"{name}: {value}" for name, value in reply.headers.items()]
        if self.close_connection:
            head.append("connection: close")
        write = self.wfile.write
        if reply.chunks is None:
            head.append(f"content-length: {len(reply.body)}")
            write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)
            return
        head.append("transfer-encoding: chunked")
        pending = [("\r\n".join(head) + "\r\n\r\n").encode("latin-1")]
        size = 0
        for chunk in reply.chunks:
            if chunk:  # an empty chunk would end the body early
                pending.append(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                size += len(chunk)
            if size >= _FLUSH_BYTES:  # batch small events: one syscall per ~16 KiB, not per event
                write(b"".join(pending))
                pending, size = [], 0
        pending.append(b"0\r\n\r\n")
        write(b"".join(pending))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    #: Listen backlog. socketserver's default of 5 is the reason a burst of concurrent clients
    #: (``asyncio.gather`` of 40 calls) used to see reset connections: the one accept thread starts
    #: a handler thread per connection, which waits for the GIL, so a burst overflows a queue of 5
    #: and the kernel drops handshakes (``ListenOverflows`` in /proc/net/netstat). The kernel caps
    #: it at ``net.core.somaxconn``.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (stop(), early stream close) are routine; report anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Close idle keep-alive connections so a stopped fake really stops answering."""
        with self._lock:
            open_now = list(self.connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class LoopbackServer:
    """Runs ``app`` on 127.0.0.1 in a daemon thread; ``port=0`` picks a free port."""

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0  # the process that started it: its thread serves there only

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        """``http://host:port``, no trailing slash."""
        if self._server is None:
            raise RuntimeError("FakeProvider is not running: call start() or use `with`")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server(self._address, self._app)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="tokenmeter-fake-provider",
            daemon=True,
        )
        self._thread.start()
        self._pid = os.getpid()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        if os.getpid() != self._pid:
            # A forked child leaving ``with FakeProvider()``: the serving thread is the
            # parent's (shutdown() waited for it for ever), and so are the connections (a
            # shutdown of a socket here would cut them there). Its copies are closed only.
            server.server_close()
            return
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
