"""uvicorn's HTTP protocol with the limits it lacks against slow or too many clients.

uvicorn times out a keep-alive connection idle *after* a response, and nothing else: a client
that connects and sends nothing, or sends its request a byte at a time (slowloris), keeps its
connection, and enough of them exhaust the process's file descriptors, the SMTP side's too.
Here every request must be read whole (headers and body) within `REQUEST_SECONDS` of the
connection, or of the previous response, and at most `MAX_CONNECTIONS` are open at once, at
most `MAX_CONNECTIONS_PER_CLIENT` from one address (an IPv6 /64): more are closed at once, as
nginx does past worker_connections and limit_conn.

Nor does it bound a request's head: uvicorn grows the URL (and httptools a header) by
concatenation, chunk by chunk, so a 64 MiB URL cost seconds of the event loop the SMTP side
shares. A URL over `MAX_URL_BYTES` gets 414, a head over `MAX_HEAD_BYTES` or with more than
`MAX_HEADERS` fields 431 (nginx's large_client_header_buffers, Apache's LimitRequestLine and
LimitRequestFields), and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.peers import client_key
from gateway.web.app import BASE_HEADERS

log = logging.getLogger("gateway.http")

REQUEST_SECONDS = 10.0  # to read one whole request (Apache's RequestReadTimeout is 20-40 s)
MAX_CONNECTIONS = 1000  # open HTTP connections in this process
MAX_PIPELINED = 32  # requests read ahead of their answers on one connection
WARN_EVERY_SECONDS = 60.0
MAX_URL_BYTES = 8192  # the request target (a /u/ URL is ~130)
MAX_HEAD_BYTES = 32768  # request line and header fields
MAX_HEADERS = 100

# the security header fields of every other answer (web/app.py), on the protocol's own
_BASE_FIELDS = b"".join(name + b": " + value + b"\r\n" for name, value in BASE_HEADERS)
_REFUSALS = {
    414: (b"414 URI Too Long", "the request's URL is too long"),
    431: (b"431 Request Header Fields Too Large", "the request's header is too large"),
}


MAX_CONNECTIONS_PER_CLIENT = 100  # from one IPv4 address or one IPv6 /64


class GuardedHttpProtocol(HttpToolsProtocol):
    request_seconds = REQUEST_SECONDS
    max_connections = MAX_CONNECTIONS
    max_per_client = MAX_CONNECTIONS_PER_CLIENT
    _last_warning = 0.0  # class-wide: one warning a minute, not one per refused connection
    _last_client_warning = 0.0
    # open connections by client_key, in this process: one host holding them all kept every
    # one-click POST and every click on the page out (COMPLIANCE 5)
    _per_client: dict[str, int] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._requests_read = 0  # whole requests read (headers and body)
        self._responses_done = 0
        self._answered_before = -1  # _responses_done when the deadline last fired
        self._in_head = False  # between a request's first byte and the end of its header
        self._heads_begun = 0
        self._url_bytes = 0  # of the head being read: its URL, exactly
        self._header_bytes = 0  # its complete fields' names and values, exactly
        self._since_event = 0  # whole chunks since the last URL piece or field: one field
        # growing (httptools builds it by concatenation); the chunk in which it began is not
        # counted, so a legal head is never refused, and no more than one chunk is missed
        self._url_pieces = 0
        self._header_count = 0
        self._refused = False  # answered 414/431: the rest of what comes is ignored
        self._counted: str | None = None  # the client_key counted in _per_client

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        before = (self._heads_begun, self._url_pieces, self._header_count)
        super().data_received(data)
        if self._in_head and not self._refused:
            if before == (self._heads_begun, self._url_pieces, self._header_count):
                self._since_event += len(data)  # nothing completed: one field growing
            else:
                self._since_event = 0
            if self._url_bytes + self._header_bytes + self._since_event > MAX_HEAD_BYTES:
                self._refuse(431)

    def on_message_begin(self) -> None:
        if self._refused:
            return
        self._in_head = True
        self._heads_begun += 1
        self._url_bytes = self._header_bytes = self._since_event = self._header_count = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        self._url_bytes += len(url)
        self._url_pieces += 1
        if self._url_bytes > MAX_URL_BYTES:
            self._refuse(414)
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if (self._header_count > MAX_HEADERS
                or self._url_bytes + self._header_bytes > MAX_HEAD_BYTES):
            self._refuse(431)
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def _refuse(self, status: int) -> None:
        """Answer `status` and close; the parser's callbacks for the rest of this chunk, and
        every chunk after it, do nothing."""
        self._refused = True
        self._in_head = False
        self._cancel_deadline()
        reason, text = _REFUSALS[status]
        if self._requests_read > self._responses_done:
            # an earlier request of the connection is still being answered: the refusal
            # would be read as its answer; the connection is cut instead
            self.transport.abort()
        else:
            body = text.encode("ascii")
            self.transport.write(b"HTTP/1.1 " + reason + b"\r\ncontent-type: text/plain; "
                                 b"charset=utf-8\r\n" + _BASE_FIELDS + b"content-length: "
                                 + str(len(body)).encode()
                                 + b"\r\nconnection: close\r\n\r\n" + body)
            self.transport.close()
        log.info("HTTP: %s: %s (%d): connection closed",
                 self.client[0] if self.client else "?", text, status)

    def _should_upgrade(self) -> bool:
        # never: no WebSocket is served here, and an upgrade handed the connection to another
        # protocol object (its close never reached connection_lost: the per-client count
        # leaked, 100 upgrade requests locked an address out until a restart); a refused
        # head that asked for one had its method read unset
        return False

    def send_400_response(self, msg: str) -> None:
        """uvicorn's own 400 (an unknown method, a bad Content-Length), with the security
        header fields every other answer has."""
        if self._refused:  # what follows a refused head is not answered again
            return
        body = msg.encode("ascii", "replace")
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; "
                             b"charset=utf-8\r\n" + _BASE_FIELDS + b"content-length: "
                             + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
                             + body)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            now = time.monotonic()
            if now - GuardedHttpProtocol._last_warning >= WARN_EVERY_SECONDS:
                GuardedHttpProtocol._last_warning = now
                log.warning("HTTP: %d connections open, the most allowed: closing new ones "
                            "(from %s, among others)", self.max_connections,
                            self.client[0] if self.client else "?")
            transport.close()
            return
        key = client_key(self.client[0]) if self.client else "?"
        open_now = self._per_client.get(key, 0)
        if open_now >= self.max_per_client:
            now = time.monotonic()
            if now - GuardedHttpProtocol._last_client_warning >= WARN_EVERY_SECONDS:
                GuardedHttpProtocol._last_client_warning = now
                log.warning("HTTP: %s has %d connections open, the most one client may: "
                            "closing its new ones", key, open_now)
            transport.close()
            return
        self._per_client[key] = open_now + 1
        self._counted = key
        self._await_request()

    def _await_request(self) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.request_seconds, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._requests_read += 1
        backlog = self._requests_read - self._responses_done
        if backlog > MAX_PIPELINED:
            # requests pipelined faster than they are answered (and maybe never read):
            # each waits in uvicorn's queue, in memory
            log.info("HTTP: %s pipelined more than %d requests ahead: connection closed",
                     self.client[0] if self.client else "?", MAX_PIPELINED)
            self.transport.abort()
            return
        if backlog > 0:
            self._cancel_deadline()  # read whole: answering it is ours to do, not the client's
        else:
            # answered before its body had all come (a 404, "Expect: 100-continue" refused):
            # the deadline for the next request runs on
            self._await_request()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._responses_done += 1
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._counted is not None:
            left = self._per_client.pop(self._counted, 1) - 1
            if left > 0:
                self._per_client[self._counted] = left
            self._counted = None
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        self._deadline = None
        if self._requests_read > self._responses_done:
            # a request read whole is being answered: not the client's doing, unless it does
            # not read the answers (nothing answered for a whole period, writes held up)
            stuck = self.flow.write_paused and self._responses_done == self._answered_before
            self._answered_before = self._responses_done
            if not stuck:
                self._await_request()
                return
            log.info("HTTP: %s reads no answers: connection closed",
                     self.client[0] if self.client else "?")
            self.transport.abort()
            return
        if not self.transport.is_closing():
            log.info("HTTP: %s took more than %.0f s to send a request: connection closed",
                     self.client[0] if self.client else "?", self.request_seconds)
            self.transport.close()


def guarded_protocol(request_seconds: float, max_connections: int,
                     max_per_client: int = MAX_CONNECTIONS_PER_CLIENT
                     ) -> type[GuardedHttpProtocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits."""
    return type("GuardedHttp", (GuardedHttpProtocol,), {
        "request_seconds": request_seconds, "max_connections": max_connections,
        "max_per_client": max_per_client, "_per_client": {}})
