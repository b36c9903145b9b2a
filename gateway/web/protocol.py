"""uvicorn's HTTP protocol with the limits it lacks against slow or too many clients.

uvicorn times out a keep-alive connection idle *after* a response, and nothing else: a client
that connects and sends nothing, or sends its request a byte at a time (slowloris), keeps its
connection, and enough of them exhaust the process's file descriptors, the SMTP side's too.
Here every request must be read whole (headers and body) within `REQUEST_SECONDS` of the
connection, or of the previous response, and at most `MAX_CONNECTIONS` are open at once (more
are closed at once, as nginx does past worker_connections).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("gateway.http")

REQUEST_SECONDS = 10.0  # to read one whole request (Apache's RequestReadTimeout is 20-40 s)
MAX_CONNECTIONS = 1000  # open HTTP connections in this process
MAX_PIPELINED = 32  # requests read ahead of their answers on one connection
WARN_EVERY_SECONDS = 60.0


class GuardedHttpProtocol(HttpToolsProtocol):
    request_seconds = REQUEST_SECONDS
    max_connections = MAX_CONNECTIONS
    _last_warning = 0.0  # class-wide: one warning a minute, not one per refused connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._requests_read = 0  # whole requests read (headers and body)
        self._responses_done = 0
        self._answered_before = -1  # _responses_done when the deadline last fired

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
        self._await_request()

    def _await_request(self) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.request_seconds, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def on_message_complete(self) -> None:
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


def guarded_protocol(request_seconds: float, max_connections: int) -> type[GuardedHttpProtocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits."""
    return type("GuardedHttp", (GuardedHttpProtocol,), {
        "request_seconds": request_seconds, "max_connections": max_connections})
