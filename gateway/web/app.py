"""The HTTP service: one-click unsubscribe (RFC 8058) and its page, the opt-out webhook,
health and metrics."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.errors import StoreError
from gateway.security.tokens import Token
from gateway.web.pages import (
    HEADERS,
    busy_page,
    confirm_page,
    done_page,
    not_found_page,
    texts_for,
)

MetricsSource = Callable[[], Awaitable[dict[str, float]]]
MAX_BODY = 1024 * 1024  # webhook bodies (1,000 events)
# a one-click or confirmation POST: "List-Unsubscribe=One-Click" or "confirm=yes". Anyone
# holding a token (every recipient) can send one: parsing a 1 MiB body of short fields held
# the event loop, and every SMTP session on it, for ~185 ms
MAX_FORM_BODY = 8 * 1024
MAX_FORM_FIELDS = 16
URLENCODED = b"application/x-www-form-urlencoded"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Answer(NamedTuple):
    """What a POST to /u/{token} answers, whichever path served it."""
    status: int
    body: bytes
    page: bool  # an HTML page with the page headers (CSP...), else text/plain

    def response(self) -> Response:
        if self.page:
            headers = {**HEADERS, **RETRY} if self.status == 503 else HEADERS
            return HTMLResponse(self.body, status_code=self.status, headers=headers)
        return PlainTextResponse(self.body, status_code=self.status)


class Pages(NamedTuple):
    """The answers that name no recipient, in the controller's language."""
    not_found: Answer
    unavailable: Answer  # 503 with Retry-After: the objection was not recorded


def neutral_pages(default_language: str, dpo_email: str = "") -> Pages:
    language, texts = texts_for(None, default_language)
    return Pages(Answer(404, not_found_page(language, texts, dpo_email).encode(), True),
                 Answer(503, busy_page(language, texts).encode(), True))


RETRY = {"Retry-After": "5"}
TOO_LARGE = Answer(413, b"body too large\n", False)
TOO_MANY_FIELDS = Answer(400, b"expected List-Unsubscribe=One-Click\n", False)
_PAGE_HEADERS = [(b"content-type", b"text/html; charset=utf-8")] + [
    (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in HEADERS.items()]
# every answer that is no page (text, JSON, errors of the router): not to be sniffed as
# HTML, cached, framed or given a referrer; a page has its own CSP (pages.HEADERS)
BASE_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"),
                (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
                (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")]
_TEXT_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), *BASE_HEADERS]


def with_base_headers(app: ASGIApp) -> ASGIApp:
    """`app` with BASE_HEADERS on every answer, those it did not set itself (only the HTML
    pages carried them: the 400s, 405s, the webhook's JSON, /healthz and /metrics did not)."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_with(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {bytes(name).lower() for name, _ in headers}
                message["headers"] = headers + [h for h in BASE_HEADERS if h[0] not in present]
            await send(message)

        await app(scope, receive, send_with)

    return serve


def _replay(body: bytes) -> Receive:
    """An ASGI receive that hands over `body`, already read, as the whole request."""
    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


# Read as urlencoded: what RFC 8058 says, and a client that sends the same body without a
# Content-Type or as text/plain (a near miss lost the person's objection to a 400; the token
# is what authenticates, and a GET never unsubscribes)
LENIENT_URLENCODED = frozenset({URLENCODED, b"", b"text/plain"})


def urlencoded_form(body: bytes) -> dict[str, str]:
    """The fields of an urlencoded body (ValueError past MAX_FORM_FIELDS). Surrounding
    white space (a trailing CRLF) and empty fields (`a=1&&b=2&`) are not fields."""
    text = body.decode("utf-8", "replace").strip()
    fields = [field for field in text.split("&") if field]
    if len(fields) > MAX_FORM_FIELDS:
        raise ValueError("too many fields")
    return {k: v for k, v in parse_qsl("&".join(fields), keep_blank_values=True)}


def one_click(form: dict[str, str]) -> bool:
    """RFC 8058's `List-Unsubscribe=One-Click`, whatever the case or white space around."""
    return form.get("List-Unsubscribe", "").strip().lower() == "one-click"


def one_click_fast_path(app: ASGIApp, verify: Callable[[str], Token | None],
                        answer: Callable[[Token, dict[str, str], str | None],
                                         Awaitable[Answer]], pages: Pages) -> ASGIApp:
    """Serve `POST /u/{token}` with an urlencoded body, what mailbox providers send for
    RFC 8058 and what the confirmation page's button sends, in plain ASGI: the same
    `answer` as the Starlette route, without the router, the request and response objects
    and the two middleware layers, which cost about as much of the event loop as the rest
    of the POST (bench/README.md, unsubscribe). Everything else goes to `app`."""

    async def respond(send: Send, result: Answer) -> None:
        headers = _PAGE_HEADERS if result.page else _TEXT_HEADERS
        if result.status == 503:
            headers = [*headers, (b"retry-after", RETRY["Retry-After"].encode())]
        await send({"type": "http.response.start", "status": result.status,
                    "headers": headers + [(b"content-length", b"%d" % len(result.body))]})
        await send({"type": "http.response.body", "body": result.body})

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or not scope["path"].startswith("/u/")):
            return await app(scope, receive, send)
        content_type = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
                break
        if content_type.split(b";")[0].strip().lower() not in LENIENT_URLENCODED:
            return await app(scope, receive, send)  # multipart/form-data and the odd ones
        token = verify(scope["path"][3:])
        if token is None:
            return await respond(send, pages.not_found)
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_FORM_BODY:
                return await respond(send, TOO_LARGE)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        try:
            form = urlencoded_form(b"".join(chunks))
        except ValueError:
            return await respond(send, TOO_MANY_FIELDS)
        client = scope.get("client")
        try:
            result = await answer(token, form, client[0] if client else None)
        except StoreError:
            # never "done" without the commit: the client (or the person) tries again
            result = pages.unavailable
        await respond(send, result)

    return serve


def create_app(metrics: MetricsSource, objections: Any = None, controller: str = "",
               default_language: str = "en", metrics_token: str = "",
               dpo_email: str = "") -> ASGIApp:
    """`objections`: a gateway.objections.Objections (None: only health and metrics).
    `metrics_token`: the bearer token GET /metrics requires (empty: none)."""
    expected = f"Bearer {metrics_token}".encode() if metrics_token else b""
    pages = neutral_pages(default_language, dpo_email)
    # by the language served (a few at most, whatever the ledger holds): the controller does
    # not change
    done_pages: dict[str, bytes] = {}

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def prometheus(request: Request) -> Response:
        if expected and not hmac.compare_digest(
                request.headers.get("authorization", "").encode("utf-8", "replace"), expected):
            return PlainTextResponse("a bearer token is required (http.metrics_token)\n",
                                     status_code=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        lines = []
        try:
            values = await metrics()
        except StoreError:
            return PlainTextResponse("store unavailable\n", status_code=503)
        for name, value in sorted(values.items()):
            # a counter (it only grows; Prometheus' rate() reads a restart's reset as one)
            # or a gauge; integers printed whole: "{:g}" made 1234567 "1.23457e+06"
            kind = "counter" if name.endswith("_total") else "gauge"
            shown = value if isinstance(value, int) else float(value)
            lines.append(f"# TYPE gateway_{name} {kind}")
            lines.append(f"gateway_{name} {shown!r}")
        if objections is not None:
            lines.append("# TYPE gateway_objections_total counter")
            for channel, count in sorted((await objections.counts()).items()):
                lines.append(f'gateway_objections_total{{channel="{channel}"}} {count}')
        return PlainTextResponse("\n".join(lines) + "\n",
                                 media_type="text/plain; version=0.0.4")

    def not_found() -> Response:
        return pages.not_found.response()

    async def answer(token: Token, form: dict[str, str], ip: str | None) -> Answer:
        """A POST's answer: RFC 8058 one-click body, or the page's button."""
        if one_click(form):
            channel = "one-click"
        elif form.get("confirm") == "yes":
            channel = "link"
        elif await objections.recipient(token) is None:
            return pages.not_found  # the same answer as for a token we never issued
        else:
            return Answer(400, b"expected List-Unsubscribe=One-Click\n", False)
        # found and recorded in one store hand-off, committed before the answer
        recipient = await objections.record(token, channel, ip)
        if recipient is None:
            return pages.not_found
        language, texts = texts_for(recipient.language, default_language)
        page = done_pages.get(language)
        if page is None:
            page = done_pages[language] = done_page(language, texts, controller).encode()
        return Answer(200, page, True)

    async def unsubscribe(request: Request) -> Response:
        """GET/HEAD: the confirmation page only (link scanners follow links: a GET never
        unsubscribes). POST: see `answer` (urlencoded POSTs take one_click_fast_path)."""
        token = objections.verify(request.path_params["token"])
        if token is None:
            return not_found()
        if request.method in ("GET", "HEAD"):
            recipient = await objections.recipient(token)
            if recipient is None:
                return not_found()
            language, texts = texts_for(recipient.language, default_language)
            if await objections.objected(recipient):
                # the answer, not the question again: the Back button after the POST, a
                # second link of the same person
                return HTMLResponse(done_page(language, texts, controller), headers=HEADERS)
            return HTMLResponse(confirm_page(language, texts, controller), headers=HEADERS)
        # multipart/form-data (python-multipart); urlencoded bodies took the fast path. Read
        # here under the cap first: Starlette's parser would read a chunked body (no
        # Content-Length) whole, its file parts spooled to disk
        body = await _body_at_most(request, MAX_FORM_BODY)
        if body is None:
            return TOO_LARGE.response()
        parsed = await Request(request.scope, _replay(body)).form(
            max_files=1, max_fields=MAX_FORM_FIELDS)
        form = {k: v for k, v in parsed.items() if isinstance(v, str)}
        return (await answer(token, form, request.client.host if request.client else None)
                ).response()

    async def webhook(request: Request) -> Response:
        if not objections.webhook_secret:
            # no signature can verify (INTERFACE.md: 401); said at start-up too
            return JSONResponse({"error": "bad or missing signature (this gateway has no "
                                 "webhooks.opt_out_secret)"}, status_code=401)
        body = await _body_at_most(request, MAX_BODY)
        if body is None:
            return JSONResponse({"error": "body too large"}, status_code=413)
        header = request.headers.get("x-gateway-signature")
        if header is None or not objections.signature_ok(header, body):
            return JSONResponse({"error": "missing, wrong or stale X-Gateway-Signature"},
                                status_code=401)
        try:
            added, replays = await objections.record_webhook(
                body, request.client.host if request.client else None,
                objections.signed_call(header, body))
        except ValueError as exc:  # objections.BadRequest
            return JSONResponse({"error": str(exc)}, status_code=400)
        except StoreError:  # nothing stored: the ESP sends it again; JSON, as it reads
            return JSONResponse({"error": "store unavailable, try again"}, status_code=503,
                                headers=RETRY)
        return JSONResponse({"suppressed": added, "replayed": replays})

    async def _body_at_most(request: Request, limit: int) -> bytes | None:
        """The body, or None as soon as it is over `limit` bytes: a chunked body (no
        Content-Length) is not read to its end first."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    routes = [Route("/healthz", healthz, methods=["GET", "HEAD"]),
              Route("/metrics", prometheus, methods=["GET"])]
    if objections is not None:
        routes += [Route("/u/{token:path}", unsubscribe, methods=["GET", "HEAD", "POST"]),
                   Route("/webhooks/opt-out", webhook, methods=["POST"])]

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        # never "done" without the commit: the client (or the ESP) tries again
        return pages.unavailable.response()

    async def neutral_404(request: Request, exc: Exception) -> Response:
        return not_found()  # the same answer whatever was asked: nothing to learn from it

    app = Starlette(routes=routes, exception_handlers={StoreError: store_unavailable,
                                                       404: neutral_404})
    # "/webhooks/opt-out/" or "/u" is no URL of ours: the neutral 404, not a 307 to another
    app.router.redirect_slashes = False
    served = with_base_headers(app)
    if objections is None:
        return served
    return one_click_fast_path(served, objections.verify, answer, pages)
