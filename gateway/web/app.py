"""The HTTP service: one-click unsubscribe (RFC 8058) and its page, the opt-out webhook,
health and metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.errors import StoreError
from gateway.web.pages import HEADERS, confirm_page, done_page, not_found_page, texts_for

MetricsSource = Callable[[], dict[str, float]]
MAX_BODY = 1024 * 1024  # webhook and form bodies


async def _form(request: Request) -> dict[str, str]:
    """The form fields: urlencoded parsed here (what mailbox providers send for RFC 8058, and
    the cheap case under load), multipart/form-data by Starlette (python-multipart)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        body = (await request.body()).decode("utf-8", "replace")
        return {k: v for k, v in parse_qsl(body, keep_blank_values=True)}
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


def create_app(metrics: MetricsSource, objections: Any = None, controller: str = "",
               default_language: str = "en") -> Starlette:
    """`objections`: a gateway.objections.Objections (None: only health and metrics)."""

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def prometheus(request: Request) -> Response:
        lines = []
        for name, value in sorted(metrics().items()):
            lines.append(f"# TYPE gateway_{name} gauge")
            lines.append(f"gateway_{name} {value:g}")
        if objections is not None:
            lines.append("# TYPE gateway_objections_total counter")
            for channel, count in sorted((await objections.counts()).items()):
                lines.append(f'gateway_objections_total{{channel="{channel}"}} {count}')
        return PlainTextResponse("\n".join(lines) + "\n",
                                 media_type="text/plain; version=0.0.4")

    def not_found() -> Response:
        return HTMLResponse(not_found_page(), status_code=404, headers=HEADERS)

    async def unsubscribe(request: Request) -> Response:
        """GET/HEAD: the confirmation page only (link scanners follow links: a GET never
        unsubscribes). POST: RFC 8058 one-click body, or the page's button."""
        token = objections.verify(request.path_params["token"])
        if token is None:
            return not_found()
        if request.method in ("GET", "HEAD"):
            recipient = await objections.recipient(token)
            if recipient is None:
                return not_found()
            language, texts = texts_for(recipient.language, default_language)
            return HTMLResponse(confirm_page(language, texts, controller), headers=HEADERS)
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return PlainTextResponse("body too large\n", status_code=413)
        form = await _form(request)
        if form.get("List-Unsubscribe") == "One-Click":
            channel = "one-click"
        elif form.get("confirm") == "yes":
            channel = "link"
        elif await objections.recipient(token) is None:
            return not_found()  # the same answer as for a token we never issued
        else:
            return PlainTextResponse("expected List-Unsubscribe=One-Click\n", status_code=400)
        # found and recorded in one store hand-off, committed before the answer
        recipient = await objections.record(token, channel,
                                            request.client.host if request.client else None)
        if recipient is None:
            return not_found()
        language, texts = texts_for(recipient.language, default_language)
        return HTMLResponse(done_page(language, texts, controller), headers=HEADERS)

    async def webhook(request: Request) -> Response:
        if not objections.webhook_secret:
            return JSONResponse({"error": "webhooks.opt_out_secret is not set"},
                                status_code=503)
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"error": "body too large"}, status_code=413)
        if not objections.signature_ok(request.headers.get("x-gateway-signature"), body):
            return JSONResponse({"error": "missing, wrong or stale X-Gateway-Signature"},
                                status_code=401)
        try:
            added, replays = await objections.record_webhook(
                body, request.client.host if request.client else None)
        except ValueError as exc:  # objections.BadRequest
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"suppressed": added, "replayed": replays})

    routes = [Route("/healthz", healthz, methods=["GET", "HEAD"]),
              Route("/metrics", prometheus, methods=["GET"])]
    if objections is not None:
        routes += [Route("/u/{token:path}", unsubscribe, methods=["GET", "HEAD", "POST"]),
                   Route("/webhooks/opt-out", webhook, methods=["POST"])]
    async def store_unavailable(request: Request, exc: Exception) -> Response:
        # never "done" without the commit: the client (or the ESP) tries again
        return PlainTextResponse("temporarily unavailable, try again\n", status_code=503)

    async def neutral_404(request: Request, exc: Exception) -> Response:
        return not_found()  # the same answer whatever was asked: nothing to learn from it

    return Starlette(routes=routes, exception_handlers={StoreError: store_unavailable,
                                                        404: neutral_404})
