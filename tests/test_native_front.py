"""What the native front end (--native-port) does beyond the servicers it shares with --port (test_kserve.py,
test_stream.py and test_triton_client.py run against both ports): many streams at once and a stream far ahead of
its answers, bytes that are not protobuf, methods it does not serve, clients that cancel, the shutdown, and the
settings it refuses."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest

from bench.common import free_port
from rnnserve.errors import UsageError
from rnnserve.inference import grpc_service_pb2 as pb
from rnnserve.inference import grpc_service_pb2_grpc as pb_grpc
from rnnserve.server.config import ServerConfig
from tests.helpers import (
    ServeProcess,
    active_sessions_settled,
    logits_of,
    native_unavailable,
    reference_logits,
    request,
    run_cli,
    scrape_settled,
    status_of,
    together,
)

pytestmark = pytest.mark.skipif(native_unavailable() is not None, reason=f"no native front end: {native_unavailable()}")

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


@pytest.fixture
def native(server):
    with grpc.insecure_channel(server.native_target) as channel:
        yield channel


def _stream_answers(channel: grpc.Channel, requests: list[pb.ModelInferRequest]) -> list[pb.ModelStreamInferResponse]:
    return list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(requests), timeout=60))


def test_many_streams_at_once_each_get_their_own_sequences_answers_in_order(make_server, reference):
    """16 streams from 16 threads, each with two sequences of 12 steps sent without waiting: every answer is its
    request's (by id), in each sequence's order, and equals the in-process reference."""
    chunks = {s: [[(7 * s + k) % 256] for k in range(12)] for s in range(2)}
    expected = {s: reference_logits(reference, "lstm", chunks[s]) for s in range(2)}
    running = make_server(native_port=0, max_sessions=32)

    def run(stream: int) -> list[pb.ModelStreamInferResponse]:
        requests = [request(tokens=chunks[s][k], sequence=1000 + 2 * stream + s, start=k == 0, end=k == 11, id=f"{s}:{k}")
                    for k in range(12) for s in range(2)]
        with grpc.insecure_channel(f"127.0.0.1:{running.app.native_front.port}") as channel:
            return _stream_answers(channel, requests)

    results = together([lambda i=i: run(i) for i in range(16)])
    for answers in results:
        assert len(answers) == 24 and not any(a.error_message for a in answers)
        seen = {0: -1, 1: -1}
        for answer in answers:
            s, k = map(int, answer.infer_response.id.split(":"))
            assert k == seen[s] + 1  # one sequence's answers in its order
            seen[s] = k
            np.testing.assert_allclose(logits_of(answer.infer_response)[0], expected[s][k], atol=1e-5)


def test_a_stream_far_ahead_of_its_answers_is_read_as_they_go_out(native):
    """3,000 requests sent at once, beyond the 1,024 a stream may have unanswered: reading waits for answers,
    and every request is answered once."""
    requests = [request(tokens=[k % 256], sequence="far", start=k == 0, end=k == 2999, id=str(k)) for k in range(3000)]
    answers = _stream_answers(native, requests)
    assert [a.infer_response.id for a in answers] == [str(k) for k in range(3000)]
    assert not any(a.error_message for a in answers)


def test_bytes_that_are_not_protobuf_are_refused_and_counted(make_server):
    running = make_server(native_port=0, metrics_port=0)
    with grpc.insecure_channel(f"127.0.0.1:{running.app.native_front.port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None, response_deserializer=None)
        error = status_of(lambda: infer(b"\xff\xff\xff", timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid inference.ModelInferRequest (protobuf)" in error.details()
        stream = channel.stream_stream(STREAM, request_serializer=None, response_deserializer=None)
        error = status_of(lambda: list(stream(iter([b"\x0a"]), timeout=10)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid inference.ModelInferRequest" in error.details()
    assert scrape_settled(running, "rnnserve_undecodable_messages_total", 2.0) == 2.0


def test_a_method_it_does_not_serve_is_unimplemented_with_the_reason(native):
    check = native.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
    error = status_of(lambda: check(b"", timeout=10))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED and "not served on --native-port" in error.details()


def test_a_cancelled_stream_ends_the_sequences_it_started(server, client, native):
    before = client.get_model("lstm").active_sessions
    cancelled = threading.Event()

    def requests():
        yield request(tokens=[1, 2, 3], sequence="cancelled", start=True)
        cancelled.wait(30)  # sends nothing more: the client cancels first

    call = pb_grpc.GRPCInferenceServiceStub(native).ModelStreamInfer(requests(), timeout=60)
    first = next(call)
    assert not first.error_message and logits_of(first.infer_response).shape == (1, 3, 256)
    assert client.get_model("lstm").active_sessions == before + 1
    call.cancel()
    cancelled.set()
    assert active_sessions_settled(client, "lstm", before) == before


def test_the_shutdown_ends_open_calls_with_unavailable_and_why(make_server):
    running = make_server(native_port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.app.native_front.port}")
    hold = threading.Event()

    def requests():
        yield request(tokens=[1], sequence="held", start=True)
        hold.wait(30)

    call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=60)
    assert not next(call).error_message
    running.stop(0.2)
    error = status_of(lambda: next(call))
    hold.set()
    channel.close()
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in error.details()


def test_a_message_over_the_limit_is_resource_exhausted(make_server):
    running = make_server(native_port=0, max_message_bytes=4096)
    with grpc.insecure_channel(f"127.0.0.1:{running.app.native_front.port}") as channel:
        error = status_of(lambda: pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request(tokens=list(range(256)) * 4), timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_busy_native_port_is_refused_with_the_flag_named(make_server, server):
    with pytest.raises(UsageError, match=r"cannot listen on 127.0.0.1:\d+.*\(--native-port\)"):
        make_server(native_port=int(server.native_target.rsplit(":", 1)[1]))


@pytest.mark.parametrize("guard", [{"auth_tokens": "tokens.txt"}, {"tls_cert": "c.pem", "tls_key": "k.pem"}])
def test_it_is_refused_beside_tokens_or_tls(guard):
    with pytest.raises(ValueError, match="--native-port carries neither TLS nor tokens"):
        ServerConfig(repository="models", native_port=free_port(), **guard)


def test_the_command_line_serves_it_and_says_where(repository):
    """As docs/serving.md shows it: `rnnserve serve --native-port P`, then a client on P."""
    port = free_port()
    with ServeProcess("--repository", str(repository), "--port", "0", "--native-port", str(port)) as served:
        assert f"native: 127.0.0.1:{port}" in served.listening
        listed = run_cli("models", "--target", f"127.0.0.1:{port}")
    assert listed.returncode == 0 and "lstm" in listed.stdout


def test_every_worker_listens_on_it_and_port_0_is_refused_for_workers(repository):
    port, native = free_port(), free_port()
    served = subprocess.Popen([sys.executable, "-m", "rnnserve", "serve", "--repository", str(repository), "--port", str(port),
                               "--workers", "2", "--native-port", str(native)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        listening = list(itertools.islice((line for line in served.stdout if "listening on" in line), 2))  # a line a worker
        assert len(listening) == 2 and all(f"native: 127.0.0.1:{native}" in line for line in listening)
        assert all(run_cli("models", "--target", f"127.0.0.1:{native}").returncode == 0 for _ in range(4))
    finally:
        served.terminate()
        served.wait(60)
    refused = run_cli("serve", "--repository", str(repository), "--port", str(port), "--workers", "2", "--native-port", "0")
    assert refused.returncode == 1 and "--workers needs a fixed --native-port" in refused.stderr
