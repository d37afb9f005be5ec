"""KServe v2 over HTTP/REST (--http-port): health, server and model metadata and readiness answer what the gRPC
methods of the same names answer, in the REST protocol's JSON and statuses; tokens guard all but health."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from rnnserve.inference import grpc_service_pb2 as kserve_pb
from rnnserve.inference import grpc_service_pb2_grpc as kserve_grpc
from rnnserve.server.security import new_token, token_line
from tests.helpers import ServerThread


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
    with ServerThread(replace(base_config, http_port=0)) as running:
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
