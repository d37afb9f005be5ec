"""The page at / on --http-port (page.html): a person picks a model, types a prompt and watches it stream, or sees a
model's per-step predictions, before writing a client. Served as it is, open like health: what it calls
(/v1/completions, the WebSocket Stream) takes the token under --auth-tokens."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

PAGE = Path(__file__).with_name("page.html").read_bytes()


def page_routes() -> list[web.RouteDef]:
    return [web.get("/", page)]


async def page(request: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8")
