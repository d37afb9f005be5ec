"""The Stream contract over a WebSocket (--http-port), driven by a real WebSocket client (aiohttp's): answers equal
gRPC's for the same chunks, a session goes on from one transport to the other, VAD chunks equal Silero's own
wrapper, and every refusal is a status in words with its close code, disturbing no other session."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import replace

import aiohttp
import numpy as np
import pytest
from google.protobuf import json_format

from rnnserve.client import outputs_of, values_tensor
from rnnserve.server.security import new_token, token_line
from rnnserve.v1 import rnnserve_pb2 as pb
from tests.helpers import ServerThread, scrape
from tests.test_values import CHUNK, noisy_audio, reference, silero_file, vad_repository  # noqa: F401 (fixtures)

TEXTS = ["Once upon a time ", "there was a ", "stream."]


@pytest.fixture(scope="module")
def web(base_config, vad_repository):  # noqa: F811
    with ServerThread(replace(base_config, repository=str(vad_repository), http_port=0, max_sessions=40, metrics_port=0,
                                     max_message_bytes=200_000)) as running:
        yield running


def url(running) -> str:
    return f"ws://127.0.0.1:{running.app.http.port}/v1/stream"


def start(model: str, session_id: str = "", resume: bool = False, **chunk) -> pb.StreamRequest:
    return pb.StreamRequest(start=pb.StreamStart(model=model, session_id=session_id, resume=resume), **chunk)


async def exchange(address: str, messages: list, text: bool = False, headers: dict | None = None, **connect) -> tuple[list, object]:
    """Sends each message and reads its answer: (the answers, as StreamResponses or the final error's JSON, and the
    close code, None while open). With `text`, the messages go in protobuf's JSON mapping."""
    answers = []
    async with aiohttp.ClientSession() as http, http.ws_connect(address, headers=headers, **connect) as socket:
        for message in messages:
            if text:
                await socket.send_str(json_format.MessageToJson(message))
            else:
                await socket.send_bytes(message if isinstance(message, bytes) else message.SerializeToString())
            answer = await socket.receive()
            if answer.type == aiohttp.WSMsgType.BINARY:
                answers.append(pb.StreamResponse.FromString(answer.data))
            elif answer.type == aiohttp.WSMsgType.TEXT:
                parsed = json.loads(answer.data)
                if "code" in parsed and "message" in parsed:
                    answers.append(parsed)
                    await socket.receive()  # the close that follows an error
                    break
                answers.append(json_format.ParseDict(parsed, pb.StreamResponse()))
            else:
                break
        await socket.close()
        return answers, socket.close_code


def talk(address: str, messages: list, **kwargs):
    return asyncio.run(exchange(address, messages, **kwargs))


def chunks_of(texts: list[str], model: str = "lstm", session_id: str = "", top_k: int = 3) -> list[pb.StreamRequest]:
    first = pb.StreamRequest(start=pb.StreamStart(model=model, session_id=session_id, top_k=top_k), text=texts[0])
    return [first, *(pb.StreamRequest(text=t) for t in texts[1:])]


def without_ids(responses: list[pb.StreamResponse]) -> list[pb.StreamResponse]:
    for response in responses:
        response.session_id = ""
    return responses


def test_a_websocket_stream_answers_what_a_grpc_stream_answers(web):
    with web.client() as client:
        expected = without_ids(list(client.stream("lstm", TEXTS, top_k=3)))
    answers, closed = talk(url(web), chunks_of(TEXTS))
    assert closed == aiohttp.WSCloseCode.OK
    assert without_ids(answers) == expected and [a.position for a in expected] == [17, 29, 36]
    as_json, _ = talk(url(web), chunks_of(TEXTS), text=True)
    assert without_ids(as_json) == expected  # protobuf's JSON mapping carries the same answers


def test_a_session_goes_on_from_a_websocket_to_grpc_and_back_exactly(web):
    with web.client() as client:
        whole = without_ids(list(client.stream("lstm", TEXTS, session_id="unbroken", top_k=3)))
        talk(url(web), chunks_of(TEXTS[:1], session_id="moves"))  # the stream ends; the named session waits
        middle = list(client.stream("lstm", TEXTS[1:2], session_id="moves", resume=True, top_k=3))
        last, _ = talk(url(web), [pb.StreamRequest(start=pb.StreamStart(model="lstm", session_id="moves", resume=True, top_k=3), text=TEXTS[2])])
        for name in ("unbroken", "moves"):
            client.close_session(name)
    assert without_ids(middle + last) == whole[1:]


def test_32_vad_websockets_at_once_equal_silero_vads_own_wrapper(web, silero_file):  # noqa: F811
    audios = [noisy_audio(seed, 12 + seed % 4) for seed in range(32)]
    expected = [reference(silero_file, audio) for audio in audios]

    def messages(audio: np.ndarray) -> list[pb.StreamRequest]:
        steps = audio.reshape(-1, 1, CHUNK)
        return [start("vad", values=values_tensor(steps[0])), *(pb.StreamRequest(values=values_tensor(s)) for s in steps[1:])]

    async def all_at_once():
        return await asyncio.gather(*(exchange(url(web), messages(audio)) for audio in audios))

    for (answers, closed), theirs in zip(asyncio.run(all_at_once()), expected):
        mine = np.concatenate([outputs_of(answer)["output"][:, 0] for answer in answers])
        assert closed == aiohttp.WSCloseCode.OK and mine.shape == theirs.shape and np.abs(mine - theirs).max() < 1e-5
    counted = scrape(web, "nv_inference_request_success_total", api="websocket", method="Stream", model="vad")
    assert counted >= sum(len(e) for e in expected)


@pytest.mark.parametrize("case, messages, code, words", [
    ("no start", [pb.StreamRequest(text="hello")], "INVALID_ARGUMENT", "start.model: the first message of a stream must name the model"),
    ("unknown model", [start("nope", text="hi")], "NOT_FOUND", "nope"),
    ("not protobuf", [b"\xff\xfe not a message"], "INVALID_ARGUMENT", "a binary frame must be one rnnserve.v1.StreamRequest in protobuf"),
    ("a second start", [start("lstm", text="hi"), start("lstm", text="again")], "INVALID_ARGUMENT", "only the first message of a stream may carry `start`"),
    ("a wrong chunk", [start("vad", values=values_tensor(np.zeros((1, 100), np.float32)))], "INVALID_ARGUMENT", "values.shape"),
])
def test_a_refused_websocket_gets_its_status_in_words_and_its_close_code_and_disturbs_no_other_session(web, case, messages, code, words):
    async def both():
        canary = asyncio.create_task(exchange(url(web), chunks_of(TEXTS)))
        refused = await exchange(url(web), messages, max_msg_size=0)
        return refused, await canary

    (answers, closed), (canary, canary_closed) = asyncio.run(both())
    error = answers[-1]
    assert error["code"] == code and words in error["message"], error
    assert closed == 4000 + {"INVALID_ARGUMENT": 3, "NOT_FOUND": 5}[code]
    with web.client() as client:
        assert without_ids(canary) == without_ids(list(client.stream("lstm", TEXTS, top_k=3))) and canary_closed == 1000


def test_a_message_over_the_limit_closes_its_websocket_as_too_big(web):
    answers, closed = talk(url(web), [start("lstm", text="x" * 300_000)])
    assert answers == [] and closed == aiohttp.WSCloseCode.MESSAGE_TOO_BIG  # 1009, before a byte of it is kept
    assert talk(url(web), chunks_of(TEXTS))[1] == aiohttp.WSCloseCode.OK


@pytest.fixture(scope="module")
def guarded(base_config, tmp_path_factory):
    path = tmp_path_factory.mktemp("web-tokens") / "tokens.txt"
    tokens = {"alice": new_token(), "bob": new_token(), "lstm_only": new_token()}
    path.write_text("".join(token_line(t, "lstm" if name == "lstm_only" else "*", name) + "\n" for name, t in tokens.items()))
    with ServerThread(replace(base_config, auth_tokens=str(path), http_port=0)) as running:
        yield running, tokens


def bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def test_under_tokens_an_upgrade_without_one_is_refused_in_words(guarded):
    running, _ = guarded

    async def refused(headers):
        async with aiohttp.ClientSession() as http, http.get(url(running).replace("ws://", "http://"), headers=headers) as response:
            return response.status, await response.json()

    status, body = asyncio.run(refused({"connection": "Upgrade", "upgrade": "websocket"}))
    assert status == 401 and body["code"] == "UNAUTHENTICATED" and "this server needs a token and none was sent" in body["message"]
    status, body = asyncio.run(refused({"authorization": "Bearer rns_unknown"}))
    assert status == 401 and "not one this server knows" in body["message"]


def test_under_tokens_a_session_is_its_tokens_over_both_transports(guarded):
    running, tokens = guarded
    from rnnserve.client import RnnServeClient

    answers, _ = talk(url(running), chunks_of(TEXTS[:1], session_id="alices"), headers=bearer(tokens["alice"]))
    assert answers[0].position == len(TEXTS[0])
    resume = [pb.StreamRequest(start=pb.StreamStart(model="lstm", session_id="alices", resume=True), text=TEXTS[1])]
    (theirs,), closed = talk(url(running), resume, headers=bearer(tokens["bob"]))
    assert theirs["code"] == "NOT_FOUND" and "alices" in theirs["message"] and closed == 4005
    with RnnServeClient(running.target, timeout_s=30, token=tokens["alice"]) as alice:
        (mine,) = alice.stream("lstm", TEXTS[1:2], session_id="alices", resume=True)  # the WebSocket's session, over gRPC
        alice.close_session("alices")
    assert mine.position == len(TEXTS[0]) + len(TEXTS[1])
    (denied,), closed = talk(url(running), chunks_of(TEXTS[:1], model="gru"), headers=bearer(tokens["lstm_only"]))
    assert denied["code"] == "PERMISSION_DENIED" and re.search("does not cover model 'gru'", denied["message"]) and closed == 4007


def test_under_tokens_a_browser_sends_its_token_as_a_subprotocol(guarded):
    """A browser cannot set a WebSocket's headers: the token rides as `rnnserve.bearer.<base64url>` beside
    `rnnserve.v1`, which the server picks (the token is never echoed back)."""
    running, tokens = guarded
    offered = lambda token: ("rnnserve.v1", "rnnserve.bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("="))  # noqa: E731

    async def picked(protocols) -> str:
        async with aiohttp.ClientSession() as http, http.ws_connect(url(running), protocols=protocols) as socket:
            return socket.protocol

    assert asyncio.run(picked(offered(tokens["alice"]))) == "rnnserve.v1"
    answers, _ = talk(url(running), chunks_of(TEXTS[:1], session_id="alices-browser"), protocols=offered(tokens["alice"]))
    assert answers[0].position == len(TEXTS[0])
    (theirs,), _ = talk(url(running), [pb.StreamRequest(start=pb.StreamStart(model="lstm", session_id="alices-browser", resume=True))],
                        protocols=offered(tokens["bob"]))
    assert theirs["code"] == "NOT_FOUND"  # the subprotocol's token is the caller, as the header's is
    for protocols in (offered("rns_unknown"), ("rnnserve.v1", "rnnserve.bearer.@@@")):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            talk(url(running), chunks_of(TEXTS[:1]), protocols=protocols)
        assert refused.value.status == 401


def test_under_mutual_tls_the_client_certificate_owns_its_sessions_over_both_transports(base_config, tmp_path):
    import ssl

    from rnnserve.client import RnnServeClient
    from tests.test_security import Authority

    ca = Authority(tmp_path, "web-ca")
    cert, key = ca.issue("localhost", server=True)
    alice, bob = ca.issue("alice"), ca.issue("bob")
    with ServerThread(replace(base_config, tls_cert=cert, tls_key=key, tls_client_ca=ca.path, http_port=0)) as running:
        address = url(running).replace("ws://127.0.0.1", "wss://localhost")

        def tls(pair) -> ssl.SSLContext:
            context = ssl.create_default_context(cafile=ca.path)
            context.load_cert_chain(*pair)
            return context

        with RnnServeClient(running.target, timeout_s=30, tls_ca=ca.path, tls_cert=alice[0], tls_key=alice[1]) as as_alice:
            list(as_alice.stream("lstm", [TEXTS[0]], session_id="cert-web"))
            resume = [pb.StreamRequest(start=pb.StreamStart(model="lstm", session_id="cert-web", resume=True), text=TEXTS[1])]
            (theirs,), _ = talk(address, resume, ssl=tls(bob))
            (mine,), _ = talk(address, resume, ssl=tls(alice))
            as_alice.close_session("cert-web")
    assert theirs["code"] == "NOT_FOUND" and mine.position == len(TEXTS[0]) + len(TEXTS[1])


def test_a_shutdown_ends_an_open_websocket_with_unavailable_in_words(base_config):
    running = ServerThread(replace(base_config, http_port=0)).__enter__()

    async def open_then_stopped():
        async with aiohttp.ClientSession() as http, http.ws_connect(url(running)) as socket:
            await socket.send_bytes(chunks_of(TEXTS[:1])[0].SerializeToString())
            await socket.receive()
            stopping = asyncio.get_running_loop().run_in_executor(None, running.call, running.app.stop(0.2))
            last = await socket.receive()
            await socket.receive()
            await stopping
            return json.loads(last.data), socket.close_code

    try:
        error, closed = asyncio.run(open_then_stopped())
    finally:
        running.app.stop = lambda grace_s: asyncio.sleep(0)  # stopped already: the rest of the teardown only
        running.__exit__(None, None, None)
    assert error["code"] == "UNAVAILABLE" and "shutting down" in error["message"] and closed == 4014
