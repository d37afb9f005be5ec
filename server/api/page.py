"""The page at / on --http-port (page.html): a person tries every served model before writing a client — a
generation as it streams, an encoder–decoder's attention, per-step predictions, an audio model's speech
probability. Served as it is, open like health: what it calls (/v1/rnnserve/*, the WebSocket Stream) takes the
token under --auth-tokens, which the page asks for."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

PAGE = Path(__file__).with_name("page.html").read_bytes()


def page_routes() -> list[web.RouteDef]:
    return [web.get("/", page)]


async def page(request: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8")
