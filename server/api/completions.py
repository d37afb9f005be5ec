"""OpenAI-compatible text completions on --http-port, as OpenAI's API defines them (and vLLM, TGI and llama.cpp's
server answer them): `GET /v1/models` lists the language models a caller may use, and `POST /v1/completions` runs
the same generation as the native `Generate` (api/native.py), whole or as server-sent events ending in `[DONE]`.

Defaults are OpenAI's (16 tokens, temperature 1, top_p 1), not the model's own. What this server does not do —
several choices, log-probabilities, echo, suffix, best_of, penalties, logit bias, token-id prompts — is refused with a
400 naming the parameter, never silently ignored. Tokens: the `Authorization: Bearer` header an OpenAI client sends
as its API key is the server's bearer token under --auth-tokens.

`session_id` (ours, sent with the OpenAI client's `extra_body`) continues a named session's state, as the native
Generate's does. OpenAI's own `user` is accepted and ignored: clients send it to name an end user for abuse
monitoring, not to ask for a stateful answer, so it must not change what is generated.
"""

from __future__ import annotations

import json
import time
import uuid

from aiohttp import web

from rnnserve.server import errors
from rnnserve.server.api.events import EventStream
from rnnserve.server.api.http_identity import request_caller
from rnnserve.server.api.kserve_rest import http_status
from rnnserve.server.api.native import NativeServicer
from rnnserve.server.api.status import internal_error
from rnnserve.server.requests import GenerateRequest, SamplingRequest
from rnnserve.server.security import Grant, run_as

API = "openai"
OPENAI_DEFAULTS = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0}
REFUSED = {  # a parameter this server does not serve → the value that means "not asked for"
    "n": 1, "best_of": 1, "logprobs": None, "echo": False, "suffix": None, "presence_penalty": 0, "frequency_penalty": 0,
    "logit_bias": None,
}
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options", "user", "session_id", *REFUSED}
FINISH = {"length": "length", "stop": "stop", "end": "stop"}


class BadRequest(errors.InvalidArgument):
    def __init__(self, param: str, problem: str):
        super().__init__(param, problem)
        self.param = param


class Completions:
    def __init__(self, native: NativeServicer, grants: dict[str, Grant] | None):
        self._native = native
        self._grants = grants

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/models", self.models), web.post("/v1/completions", self.completions)]

    async def models(self, request: web.Request) -> web.Response:
        try:
            run_as(request_caller(self._grants, request))
            listed = [{"id": m.card.name, "object": "model", "created": 0, "owned_by": "rnnserve"}
                      for m in self._native.models() if m.card.generates and m.card.encoder is None]
            return web.json_response({"object": "list", "data": listed})
        except Exception as err:
            return _error(request, err)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            run_as(request_caller(self._grants, request))
            body = await _body(request)
            name, asked = _generate_request(body)
            pieces = aiter(self._native.generate(name, "", asked, API))
            first = await anext(pieces, None)  # the model is resolved and the prompt checked before an answer starts
        except Exception as err:
            return _error(request, err)
        identity = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": name}
        if body.get("stream"):
            return await self._events(request, identity, first, pieces, bool((body.get("stream_options") or {}).get("include_usage")))
        text, last = [], first
        try:
            if first is not None:
                text.append(first.text)
            async for piece in pieces:
                text.append(piece.text)
                last = piece
        except Exception as err:
            return _error(request, err)
        choice = {"text": "".join(text), "index": 0, "logprobs": None, "finish_reason": FINISH.get(last.finish_reason, "length") if last else "length"}
        return web.json_response(identity | {"choices": [choice], "usage": _usage(last)})

    async def _events(self, request: web.Request, identity: dict, first, pieces, include_usage: bool) -> web.StreamResponse:
        """Server-sent events: a chunk a piece, the last with its finish reason, then (if asked) the usage, then [DONE]."""
        events = await EventStream.opened(request)
        last = None
        try:
            piece = first
            while piece is not None:
                last = piece
                finish = FINISH.get(piece.finish_reason) if piece.finish_reason else None
                await events.send(identity | {"choices": [{"text": piece.text, "index": 0, "logprobs": None, "finish_reason": finish}]})
                piece = await anext(pieces, None)
        except errors.ServeError as err:  # the answer has started: the failure is the stream's last event
            await events.send({"error": {"message": str(err), "type": "invalid_request_error", "param": None, "code": None}})
        if include_usage:
            await events.send(identity | {"choices": [], "usage": _usage(last)})
        return await events.done()


async def _body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest("body", f"not JSON: {err}") from None
    if not isinstance(body, dict):
        raise BadRequest("body", "a completion request is a JSON object")
    return body


def _generate_request(body: dict) -> tuple[str, GenerateRequest]:
    """(the model's name, the generation asked for), or a BadRequest naming the parameter."""
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise BadRequest(unknown[0], "is not a parameter of /v1/completions this server knows")
    for key, unasked in REFUSED.items():
        if key in body and body[key] not in (unasked, None):
            raise BadRequest(key, f"{body[key]!r} is not supported here (only {unasked!r}): see docs/serving.md, OpenAI-compatible completions")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest("model", "name the model to complete with (GET /v1/models lists them)")
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt", "a prompt is one string (a list of several, or of token ids, is not supported here)")
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop", "a stop is a string or a list of at most 4 non-empty strings")

    def number(key: str, kind: type, default=None):
        value = body.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise BadRequest(key, f"{value!r} is not {'an integer' if kind is int else 'a number'}")
        return kind(value)

    sampling = SamplingRequest(
        temperature=number("temperature", float, OPENAI_DEFAULTS["temperature"]),
        top_p=number("top_p", float, OPENAI_DEFAULTS["top_p"]),
        top_k=number("top_k", int),  # not OpenAI's: vLLM's extension, which its clients send
        seed=number("seed", int),
        max_tokens=number("max_tokens", int, OPENAI_DEFAULTS["max_tokens"]),
        stop=tuple(stop),
    )
    session_id = body.get("session_id", "")  # ours, as vLLM adds top_k: the native Generate's session_id
    if not isinstance(session_id, str):
        raise BadRequest("session_id", f"{session_id!r} is not a session's name (a string)")
    return name, GenerateRequest(prompt, sampling, session_id=session_id)


def _usage(last) -> dict:
    prompt, completion = (last.prompt_tokens, last.generated_tokens) if last is not None else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _error(request: web.Request, err: Exception) -> web.Response:
    """OpenAI's error body, with Triton's HTTP status for our error (an unknown model 404, a bad parameter 400)."""
    if isinstance(err, errors.ServeError):
        status = http_status(err)
        param = getattr(err, "param", None)
        code = "model_not_found" if isinstance(err, errors.NotFound) else None
        message, kind = str(err), "invalid_request_error" if status < 500 else "server_error"
    else:
        status, param, code, message, kind = 500, None, None, internal_error(request.path, err), "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}}, status=status)
