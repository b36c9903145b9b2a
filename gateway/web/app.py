"""The HTTP service: health and metrics for now; unsubscribe pages and webhooks later."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

MetricsSource = Callable[[], dict[str, float]]


def create_app(metrics: MetricsSource) -> Starlette:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def prometheus(request: Request) -> Response:
        lines = []
        for name, value in sorted(metrics().items()):
            lines.append(f"# TYPE gateway_{name} gauge")
            lines.append(f"gateway_{name} {value:g}")
        return PlainTextResponse("\n".join(lines) + "\n",
                                 media_type="text/plain; version=0.0.4")

    return Starlette(routes=[
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ])
