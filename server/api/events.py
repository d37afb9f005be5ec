"""Server-sent events (text/event-stream), the way OpenAI's streamed completions and the native Generate over HTTP
answer: each event a `data:` line and a blank line, `data: [DONE]` the last."""

from __future__ import annotations

import json

from aiohttp import web


class EventStream:
    """An answer that has started: what goes out is sent as it comes, and `done` ends it."""

    def __init__(self, response: web.StreamResponse):
        self._response = response

    @classmethod
    async def opened(cls, request: web.Request) -> EventStream:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        return cls(response)

    async def send(self, document: str | dict) -> None:
        """One event: a JSON document, or text already written (a message in protobuf's JSON mapping)."""
        await self._response.write(f"data: {document if isinstance(document, str) else json.dumps(document)}\n\n".encode())

    async def done(self) -> web.StreamResponse:
        await self.send("[DONE]")
        await self._response.write_eof()
        return self._response
