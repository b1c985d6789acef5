"""A gunicorn worker for a CPU-bound app: one event loop per process, whole requests only.

gunicorn's sync worker reads a request while it holds the process, so a client that sends
slowly holds it too, and it closes every connection after one response. This worker
multiplexes its connections with a selector, buffers each request until it is complete
(headers, and the body by Content-Length or chunked framing, within the size limits), and
only then runs the app on it, one request at a time. A slow client holds a buffer, never the
process. Connections are kept alive between requests (``GAN_KEEPALIVE``), and each response
leaves in one write. A worker busy with a request does not accept, so the other workers take
new connections: the load spreads as with the sync worker.

Parsing the buffered request, the WSGI environ and the response framing are gunicorn's own
(``gunicorn.http``); this module only decides when a request is complete.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.http.errors import (
    LimitRequestHeaders,
    LimitRequestLine,
    ParseException,
    UnsupportedTransferCoding,
)
from gunicorn.workers import base

from serve.config import load_settings
from serve.errors import checked_code, clip, error_json

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
DRAIN_SECONDS = 1.0  # how long idle connections stay open once the worker stops accepting
# A worker that is not ready (nothing loaded) leaves new connections to the ready ones; one
# that no worker has taken for this long is taken anyway, and answered (503 not_ready).
UNCLAIMED_SECONDS = 0.25
WATCH_SECONDS = 0.1  # how often the watchdog looks at the request being served
_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
            414: "URI Too Long", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}
# The worker's refusals' codes, each checked against the one list (serve.errors.ERROR_CODES).
_CODES = {status: checked_code(status, code) for status, code in {
    400: "bad_request", 408: "request_timeout", 413: "body_too_large", 414: "uri_too_long",
    431: "headers_too_large", 500: "internal_error", 501: "not_implemented", 503: "timeout",
}.items()}


class ClientError(Exception):
    """A request that cannot be served; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Framing:
    """Where the request at the start of a buffer ends, once enough of it has arrived."""

    end: int | None  # bytes of the whole request, or None while incomplete
    expects_continue: bool = False


def _header_fields(head: bytes) -> dict[bytes, list[bytes]]:
    fields: dict[bytes, list[bytes]] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields


def _chunked_end(buffer: bytes | bytearray, start: int, max_body: int) -> int | None:
    """End of a chunked body that starts at ``start``, or None while incomplete."""
    pos, total = start, 0
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            if len(buffer) - pos > 1024:  # a size line is a few hex digits and extensions
                raise ClientError(400, "invalid chunk size line")
            return None
        size_text = bytes(buffer[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ClientError(400, "invalid chunk size line") from None
        total += size
        if total > max_body:
            raise ClientError(413, f"request body larger than {max_body} bytes")
        pos = line_end + 2
        if size == 0:
            if buffer[pos : pos + 2] == b"\r\n":
                return pos + 2
            trailers_end = buffer.find(b"\r\n\r\n", pos)
            return None if trailers_end < 0 else trailers_end + 4
        if len(buffer) < pos + size + 2:
            return None
        pos += size + 2  # the chunk and its CRLF (gunicorn's parser checks the CRLF)


def frame(buffer: bytes | bytearray, max_head: int, max_line: int, max_body: int) -> Framing:
    """How long the first request in ``buffer`` is, once complete; ClientError if it cannot be."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        line_end = buffer.find(b"\r\n")
        if (line_end < 0 and len(buffer) > max_line) or line_end > max_line:
            raise ClientError(414, f"request line longer than {max_line} bytes")
        if len(buffer) > max_head:
            raise ClientError(431, f"request headers larger than {max_head} bytes")
        return Framing(None)
    fields = _header_fields(bytes(buffer[:head_end]))
    body_start = head_end + 4
    expects = any(v.lower() == b"100-continue" for v in fields.get(b"expect", []))
    if b"transfer-encoding" in fields:
        # The parser refuses other codings and Content-Length beside them; framing only needs
        # to know where a chunked body ends. It lets a coding before the final chunked through
        # undecoded (gzip, chunked): one this server does not apply is a 501 (RFC 9112 6.1).
        codings = [c.strip().lower() for v in fields[b"transfer-encoding"] for c in v.split(b",")]
        if codings[-1] == b"chunked" and any(c != b"chunked" for c in codings[:-1]):
            raise ClientError(501, "only the chunked transfer coding is supported")
        if fields[b"transfer-encoding"][-1].lower().endswith(b"chunked"):
            return Framing(_chunked_end(buffer, body_start, max_body), expects)
        return Framing(body_start)
    lengths = fields.get(b"content-length", [])
    if not lengths:
        return Framing(body_start)
    text = lengths[0]
    if not text.isdigit() or len(text) > 18:
        return Framing(body_start)  # the parser reports the bad value
    length = int(text)
    if length > max_body:
        raise ClientError(413, f"request body larger than {max_body} bytes")
    end = body_start + length
    return Framing(end if len(buffer) >= end else None, expects)


class _Output:
    """Collects what gunicorn's Response writes, so the response leaves in one send."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = bytearray()

    def sendall(self, data: bytes) -> None:
        self.data += data

    def send(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def __getattr__(self, name: str) -> Any:  # getsockname, fileno and such
        return getattr(self.sock, name)


@dataclass
class Connection:
    """One client connection's state in the loop."""

    sock: socket.socket
    addr: Any
    listener: Any
    deadline: float
    buffer: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    continued: bool = False  # 100 Continue already sent for the request being received
    closing: bool = False  # close once ``out`` is sent
    idle: bool = True  # no byte of a next request yet: the keep-alive timeout applies
    open: bool = True


class EventWorker(base.Worker):
    """gunicorn worker: a selector loop over the listeners and connections of one process."""

    alive: bool  # gunicorn's: False once the worker is to stop

    def init_process(self) -> None:
        settings = load_settings()
        self.keepalive = settings.keepalive
        self.client_timeout = settings.client_timeout
        self.max_body = settings.max_body_bytes
        self.max_line = self.cfg.limit_request_line or 8190
        self.max_head = self.max_line + (self.cfg.limit_request_field_size or 8190) * (
            self.cfg.limit_request_fields or 100
        )
        self.max_connections = self.cfg.worker_connections
        self.connections: dict[int, Connection] = {}
        # How long one request may run: gunicorn kills a worker whose heartbeat is older than
        # its timeout, and the heartbeat is renewed before each request (when older than
        # WATCH_SECONDS); ending the request a second before that leaves time to answer it.
        timeout = float(self.cfg.timeout or 30)
        self.request_limit = timeout - 1.0 if timeout >= 2 else timeout / 2
        self.busy: tuple[float, Connection, bytes] | None = None  # the request being served
        self.notified = 0.0
        super().init_process()

    def run(self) -> None:
        self.selector = selectors.DefaultSelector()
        for listener in self.sockets:
            listener.setblocking(False)
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, "pipe")
        self.listening = False
        self.stopping = False
        # The app's tick (serve.app): rescans when due, and whether the worker is ready.
        self.app_tick = getattr(self.wsgi, "tick", None)
        self.ready = True
        self._tick()
        self._listen(self.ready)
        threading.Thread(target=self._watch, name="request-watchdog", daemon=True).start()
        ticked = expiry_due = unclaimed_since = 0.0
        while self.alive or self.connections:
            now = time.monotonic()
            if now - self.notified >= 1.0:  # the heartbeat is a syscall: once a second
                self._notify(now)
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
            if not self.alive and not self.stopping:
                self._stop_accepting()
            if self.alive and now - ticked >= 1.0:
                ticked = now
                self._tick()
            if not self.ready and not self.stopping:
                unclaimed_since = self._take_unclaimed(now, unclaimed_since)
            try:
                # Stopping, or not ready: wake often enough to close drained connections on
                # time, or to see a connection that no other worker takes.
                events = self.selector.select(timeout=1.0 if self.alive and self.ready else 0.1)
            except InterruptedError:
                continue
            for key, mask in events:
                if key.data is None:
                    self._accept(cast(socket.socket, key.fileobj))
                elif key.data == "pipe":
                    try:
                        os.read(self.PIPE[0], 4096)
                    except BlockingIOError:
                        pass
                elif mask & selectors.EVENT_WRITE:
                    self._writable(key.data)
                else:
                    self._receive(key.data)
            if time.monotonic() >= expiry_due:  # a pass over every connection: not per request
                self._expire()
                expiry_due = time.monotonic() + 0.1
        for connection in list(self.connections.values()):
            self._close(connection)

    def _notify(self, now: float) -> None:
        self.notify()
        self.notified = now

    def _tick(self) -> None:
        """Let the app rescan, and follow its readiness: a worker with nothing loaded stops
        taking new connections, so that while the model repository cannot be read (a worker
        that replaced a dead one may start empty) the ready workers answer every client."""
        if self.app_tick is None:
            return
        try:
            ready = bool(self.app_tick())
        except Exception:
            self.log.exception("the app's periodic rescan failed")
            return
        if ready != self.ready:
            self.ready = ready
            self.log.warning("worker %s", "ready: taking connections" if ready else
                             "not ready: leaving new connections to the ready workers")
            self._listen(self._may_listen())

    def _may_listen(self) -> bool:
        return not self.stopping and self.ready and len(self.connections) < self.max_connections

    def _take_unclaimed(self, now: float, since: float) -> float:
        """A worker that is not ready takes a connection that waited UNCLAIMED_SECONDS for
        another (none is ready, or all are busy): answered now rather than left to wait."""
        try:
            readable, _, _ = select.select(self.sockets, [], [], 0)
        except (OSError, ValueError):
            return 0.0
        if not readable:
            return 0.0
        if not since:
            return now
        if now - since >= UNCLAIMED_SECONDS:
            self._accept(readable[0])
            return 0.0
        return since

    def _watch(self) -> None:
        """Answer a request that runs past the limit with a JSON 503, then end the worker.

        A thread of its own, as the request holds the main thread (onnxruntime releases the
        interpreter while it runs). Without it gunicorn would kill the worker a second later
        and the client would get a reset connection; the arbiter replaces the worker either way.
        """
        while True:
            time.sleep(WATCH_SECONDS)
            busy = self.busy
            if busy is None or time.monotonic() - busy[0] < self.request_limit:
                continue
            started, connection, raw = busy
            if self.busy is not busy:
                continue  # it finished meanwhile
            message = (f"the request did not finish within {self.request_limit:g} s "
                       "(GAN_TIMEOUT); its worker is restarted")
            self.log.error("stopping a request after %.1f s: %s (%s)", time.monotonic() - started,
                           _target_path(raw[:512]) or "?", message)
            try:
                connection.sock.settimeout(1.0)
                response = _error_response(raw, 503, message, uuid.uuid4().hex, retry_after=1)
                connection.sock.sendall(response)
            except OSError:
                pass
            os._exit(1)

    # --- Connections ---------------------------------------------------------------------
    def _listen(self, on: bool) -> None:
        """Watch the listeners for new connections, or stop watching them."""
        if on == self.listening:
            return
        for listener in self.sockets:
            if on:
                self.selector.register(listener, selectors.EVENT_READ, None)
            else:
                self.selector.unregister(listener)
        self.listening = on

    def _stop_accepting(self) -> None:
        """Stop taking connections; let each open one finish (graceful shutdown, HUP)."""
        self.stopping = True
        self._listen(False)
        # An idle keep-alive connection may already carry the client's next request, unread
        # or on its way: closing it now would drop that request. Each gets a short drain in
        # which a request that arrives is still served (with Connection: close).
        drained = time.monotonic() + DRAIN_SECONDS
        for connection in self.connections.values():
            if connection.idle:
                connection.deadline = min(connection.deadline, drained)

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it
        sock.setblocking(False)
        util.close_on_exec(sock.fileno())
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A new connection gets the request timeout, not the keep-alive one.
        connection = Connection(
            sock, addr, listener.getsockname(), time.monotonic() + self.client_timeout, idle=False
        )
        self.connections[sock.fileno()] = connection
        self.selector.register(sock, selectors.EVENT_READ, connection)
        if not self._may_listen():
            self._listen(False)  # full: new connections wait in the backlog (or for another worker)

    def _close(self, connection: Connection) -> None:
        if not connection.open:
            return
        connection.open = False
        self.connections.pop(connection.sock.fileno(), None)
        try:
            self.selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        try:
            connection.sock.close()
        except OSError:
            pass
        if self._may_listen():
            self._listen(True)

    def _expire(self) -> None:
        now = time.monotonic()
        for connection in [c for c in self.connections.values() if c.deadline < now]:
            if connection.idle or connection.out:
                self._close(connection)  # idle keep-alive, or a client that stopped reading
            else:
                self._fail(connection, ClientError(
                    408, f"the request did not arrive in full within {self.client_timeout} s"
                ))

    def _receive(self, connection: Connection) -> None:
        try:
            data = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        if not data:
            self._close(connection)
            return
        if connection.idle:
            connection.idle = False
            connection.deadline = time.monotonic() + self.client_timeout
        connection.buffer += data
        self._serve_buffered(connection)

    def _serve_buffered(self, connection: Connection) -> None:
        """Serve every complete request in the buffer, in order (pipelining included)."""
        while connection.open and connection.buffer and not connection.out and not connection.closing:
            try:
                framing = frame(connection.buffer, self.max_head, self.max_line, self.max_body)
            except ClientError as e:
                self._fail(connection, e)
                return
            if framing.end is None:
                if framing.expects_continue and not connection.continued:
                    connection.continued = True
                    self._send(connection, _CONTINUE)
                return
            raw = bytes(connection.buffer[: framing.end])
            del connection.buffer[: framing.end]
            keep = self._handle(connection, raw)
            if not connection.open:
                return
            connection.continued = False
            # Close only when the response said so: a client told keep-alive may already be
            # sending its next request (a stopping worker answers that one with close).
            connection.closing = not keep
            now = time.monotonic()
            if connection.buffer:
                connection.deadline = now + self.client_timeout
            else:
                connection.idle = True
                linger = self.keepalive if self.alive else min(self.keepalive, DRAIN_SECONDS)
                connection.deadline = now + linger
            if connection.closing and not connection.out:
                self._close(connection)
                return

    def _send(self, connection: Connection, data: bytes | bytearray) -> None:
        """Queue ``data`` after what is pending and send what the socket takes now."""
        connection.out += data
        self._flush(connection)

    def _flush(self, connection: Connection) -> None:
        """Send what the socket takes now; wait for it to be writable for the rest."""
        try:
            sent = connection.sock.send(connection.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(connection)
            return
        del connection.out[:sent]
        if connection.out:
            # A client that does not read its response gets the request timeout to do so.
            connection.deadline = time.monotonic() + self.client_timeout
            self.selector.modify(connection.sock, selectors.EVENT_WRITE, connection)
        elif connection.closing:
            self._close(connection)

    def _writable(self, connection: Connection) -> None:
        """Send more of a pending response; once it is out, go on with the next request."""
        self._flush(connection)
        if connection.open and not connection.out:
            self.selector.modify(connection.sock, selectors.EVENT_READ, connection)
            connection.deadline = time.monotonic() + (
                self.client_timeout if connection.buffer else self.keepalive
            )
            connection.idle = not connection.buffer
            self._serve_buffered(connection)

    def _fail(self, connection: Connection, error: ClientError, request: bytes | None = None) -> None:
        """Answer a request the app never saw with the API's JSON error, then close.

        ``request``: its bytes, when they are no longer in the buffer. Requests for /v2 get
        that protocol's error shape, ``{"error": "..."}``, as its routes do.
        """
        start = bytes(connection.buffer[:512]) if request is None else request[:512]
        request_id = uuid.uuid4().hex  # every response has an X-Request-ID (serve/instrument.py)
        response = _error_response(start, error.status, error.message, request_id)
        connection.buffer.clear()
        connection.closing = True
        self.log.info("refused a request from %s: %s %s (request id %s)", connection.addr,
                      error.status, error.message, request_id)
        self._send(connection, response)

    # --- Requests ------------------------------------------------------------------------
    def _handle(self, connection: Connection, raw: bytes) -> bool:
        """Run the app on one complete request; whether the connection may stay open."""
        try:
            request = next(http.get_parser(self.cfg, iter([raw]), connection.addr))
        except StopIteration:
            return False
        except ParseException as e:
            # gunicorn's message repeats the offending line or header: cut to a readable length.
            message = clip(str(e), 120) or "malformed HTTP request"
            self._fail(connection, ClientError(_parse_status(e), message), raw)
            return False
        if connection.continued:
            # This worker already sent 100 Continue while the body arrived; gunicorn's environ
            # builder would send a second one.
            request._expected_100_continue = False
        output = _Output(connection.sock)
        response, environ = wsgi.create(request, output, connection.addr, connection.listener,
                                        self.cfg)
        if self.keepalive == 0 or not self.alive:
            response.force_close()
        self.nr += 1
        if self.nr >= self.max_requests:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
            response.force_close()
        started = datetime.now()
        now = time.monotonic()
        if now - self.notified >= WATCH_SECONDS:
            self._notify(now)  # a fresh heartbeat, so the watchdog ends a slow request first
        self.busy = (now, connection, raw)
        try:
            self.cfg.pre_request(self, request)
            body = self.wsgi(environ, response.start_response)
            try:
                for chunk in body:
                    response.write(chunk)
                response.close()
            finally:
                if hasattr(body, "close"):
                    body.close()
        except Exception:
            self.log.exception("Error handling request %s", request.uri)
            if response.headers_sent:
                self._send(connection, output.data)
                return False
            self._fail(connection, ClientError(500, "internal server error"), raw)
            return False
        finally:
            self.busy = None
            try:
                self.log.access(response, request, environ, datetime.now() - started)
                self.cfg.post_request(self, request, environ, response)
            except Exception:
                self.log.exception("Exception in post_request hook")
        self._send(connection, output.data)
        return not response.should_close()


def _error_response(
    request: bytes, status: int, message: str, request_id: str, retry_after: int = 0
) -> bytes:
    """A whole HTTP response with the API's JSON error for ``request`` (its first bytes)."""
    body = json.dumps(error_json(_target_path(request), status, _CODES[status], message)).encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after else ""
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Date: {util.http_date()}\r\nConnection: close\r\nX-Request-ID: {request_id}\r\n"
        f"{retry}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _target_path(request: bytes) -> str:
    """The path of a request line's target ('' if there is none yet)."""
    parts = request.split(b"\r\n", 1)[0].split(b" ")
    return parts[1].split(b"?", 1)[0].decode("latin-1") if len(parts) > 1 else ""


def _parse_status(error: ParseException) -> int:
    if isinstance(error, LimitRequestLine):
        return 414
    if isinstance(error, LimitRequestHeaders):
        return 431
    if isinstance(error, UnsupportedTransferCoding):
        return 501
    return 400


