"""KServe v2 over HTTP/REST (--http-port): health, server and model metadata and readiness answer what the gRPC
methods of the same names answer, in the REST protocol's JSON and statuses; tokens guard all but health."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import replace

import numpy as np
import pytest

from rnnserve.inference import grpc_service_pb2 as kserve_pb
from rnnserve.inference import grpc_service_pb2_grpc as kserve_grpc
from rnnserve.server.security import new_token, token_line
from tests.helpers import ServerThread, logits_of, scrape
from tests.helpers import request as helpers_request


def get(running, path: str, token: str = "") -> tuple[int, dict]:
    """A real HTTP GET on the server's --http-port: (status, JSON body)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{running.app.http.port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


@pytest.fixture(scope="module")
def rest(base_config):
    with ServerThread(replace(base_config, http_port=0, metrics_port=0)) as running:
        yield running


def test_health_and_metadata_answer_what_grpc_answers(rest):
    import grpc

    with grpc.insecure_channel(rest.target) as channel:
        kserve = kserve_grpc.GRPCInferenceServiceStub(channel)
        server = kserve.ServerMetadata(kserve_pb.ServerMetadataRequest())
        model = kserve.ModelMetadata(kserve_pb.ModelMetadataRequest(name="lstm"))
    assert get(rest, "/v2/health/live") == (200, {"live": True})
    assert get(rest, "/v2/health/ready") == (200, {"ready": True})
    assert get(rest, "/v2") == (200, {"name": server.name, "version": server.version, "extensions": list(server.extensions)})
    status, body = get(rest, "/v2/models/lstm")
    assert status == 200 and body["name"] == "lstm" and body["versions"] == list(model.versions) == ["1"]
    assert body["inputs"] == [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in model.inputs]
    assert body["outputs"] == [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in model.outputs]
    assert get(rest, "/v2/models/lstm/versions/1") == (200, body)
    assert get(rest, "/v2/models/lstm/ready") == (200, {"name": "lstm", "ready": True})


def test_an_unknown_model_is_404_in_words_and_not_ready(rest):
    status, body = get(rest, "/v2/models/nope")
    assert status == 404 and "nope" in body["error"]
    assert get(rest, "/v2/models/lstm/versions/7")[0] == 404
    assert get(rest, "/v2/models/nope/ready") == (400, {"name": "nope", "ready": False})


def test_under_tokens_health_is_open_and_the_rest_needs_a_token_that_covers_the_model(base_config, tmp_path):
    token = new_token()
    (tmp_path / "tokens").write_text(token_line(token, "lstm") + "\n")
    with ServerThread(replace(base_config, http_port=0, auth_tokens=str(tmp_path / "tokens"))) as running:
        assert get(running, "/v2/health/ready") == (200, {"ready": True})
        status, body = get(running, "/v2/models/lstm")
        assert status == 401 and "this server needs a token and none was sent" in body["error"]
        assert get(running, "/v2/models/lstm", token)[0] == 200
        status, body = get(running, "/v2/models/gru", token)
        assert status == 403 and "does not cover model 'gru'" in body["error"]


def post(running, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A real HTTP POST on --http-port: (status, response headers, body)."""
    request = urllib.request.Request(f"http://127.0.0.1:{running.app.http.port}{path}", data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read()


def grpc_logits(running, *requests) -> list[np.ndarray]:
    import grpc

    with grpc.insecure_channel(running.target) as channel:
        kserve = kserve_grpc.GRPCInferenceServiceStub(channel)
        return [logits_of(kserve.ModelInfer(r)) for r in requests]


def test_json_inference_continues_a_sequence_a_grpc_request_started(rest):
    """A sequence's first chunk over gRPC, its second as JSON over REST (as curl sends it): the logits equal those of a
    sequence sent all over gRPC, and the sequence's position travels in the answer's parameters."""
    first, second = [10, 20, 30], [40, 50]
    expected = grpc_logits(rest, helpers_request(tokens=first, sequence=71, start=True), helpers_request(tokens=second, sequence=71, end=True))
    grpc_logits(rest, helpers_request(tokens=first, sequence=72, start=True))
    body = {"parameters": {"sequence_id": 72, "sequence_end": True},
            "inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 2], "data": [second]}], "outputs": [{"name": "logits"}]}
    status, headers, answer = post(rest, "/v2/models/lstm/infer", json.dumps(body).encode())
    assert status == 200 and headers["Content-Type"].startswith("application/json"), answer
    document = json.loads(answer)
    (logits,) = document["outputs"]
    assert (logits["name"], logits["datatype"], logits["shape"]) == ("logits", "FP32", list(expected[1].shape))
    np.testing.assert_allclose(np.array(logits["data"], np.float32).reshape(logits["shape"]), expected[1], atol=1e-5)
    assert document["model_name"] == "lstm" and document["parameters"]["sequence_position"] == 5
    counted = {api: scrape(rest, "nv_inference_request_success_total", api=api, model="lstm") for api in ("kserve", "kserve_http")}
    assert counted["kserve_http"] >= 1 and counted["kserve"] >= 3  # REST's requests apart from gRPC's


def test_tritons_http_client_unchanged_gets_what_grpc_gets(rest):
    """tritonclient.http sends inputs and asks outputs in the binary-tensor extension by default; a string sequence id,
    text in as BYTES, as a Triton user writes it."""
    http = pytest.importorskip("tritonclient.http", reason="the dev extra installs tritonclient[http]")
    expected = grpc_logits(rest, helpers_request(text="The ", sequence="grpc-side", start=True), helpers_request(text="cat", sequence="grpc-side", end=True))
    client = http.InferenceServerClient(f"127.0.0.1:{rest.app.http.port}")
    assert client.is_server_live() and client.is_model_ready("lstm")
    got = []
    for text, flags in (("The ", {"sequence_start": True}), ("cat", {"sequence_end": True})):
        tensor = http.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        result = client.infer("lstm", [tensor], outputs=[http.InferRequestedOutput("logits")], sequence_id="http-side", **flags)
        got.append(result.as_numpy("logits"))
    for mine, theirs in zip(got, expected):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)
    client.close()


@pytest.mark.parametrize("body, headers, status, words", [
    (b"not json", {}, 400, "body: not JSON"),
    (b'{"inputs": 3}', {}, 400, "inputs: the body must be a JSON object with a list of inputs"),
    (b'{"inputs": [{"name": "tokens", "datatype": "INT64"}]}', {}, 400, "inputs[0]: an input is an object with a name, a datatype and a shape"),
    (b'{"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 2], "data": ["a", "b"]}]}', {}, 400, "inputs[0].data: not a list of INT64 numbers"),
    (b'{"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 2], "parameters": {"binary_data_size": 16}}]}',
     "all of it", 400, "binary_data_size: 16: the body holds 0 more bytes"),
    (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, 400, "Inference-Header-Content-Length: 999 bytes of JSON, but the body has 14"),
    (b'{"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 3], "data": [1, 2]}]}', {}, 400, "tokens"),
])
def test_a_bad_rest_inference_is_a_status_and_a_line(rest, body, headers, status, words):
    headers = {"Inference-Header-Content-Length": str(len(body))} if headers == "all of it" else headers  # JSON, then no bytes
    got, _, answer = post(rest, "/v2/models/lstm/infer", body, headers)
    assert got == status and words in json.loads(answer)["error"], answer
    got, _, answer = post(rest, "/v2/models/nope/infer", b'{"inputs": []}')
    assert got == 404 and "nope" in json.loads(answer)["error"]
