"""Prometheus metrics on --metrics-port: exact counts of what the server did, over both APIs."""

import urllib.error
import urllib.request

import grpc
import pytest

from rnnserve.inference import grpc_service_pb2_grpc as pb_grpc
from tests.helpers import request, scrape, status_of


def test_metrics_count_requests_steps_batches_and_tokens(make_server):
    running = make_server(metrics_port=0)
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            stub.ModelInfer(request(tokens=list(b"hello")))
        status_of(lambda: stub.ModelInfer(request(tokens=[999])))
    with running.client() as native:
        pieces = list(native.generate("lstm", "Hi", max_tokens=7, temperature=0))
    assert sum(p.generated_tokens for p in pieces) == 7
    labels = dict(model="lstm", version="1")
    assert scrape(running, "nv_inference_request_success_total", api="kserve", method="ModelInfer", **labels) == 3
    assert scrape(running, "nv_inference_request_failure_total", api="kserve", method="ModelInfer", reason="INVALID_ARGUMENT", **labels) == 1
    assert scrape(running, "nv_inference_request_success_total", api="native", method="Generate", **labels) == 1
    assert scrape(running, "rnnserve_tokens_generated_total", **labels) == 7
    # 3 × 5 tokens, the 2-token prompt, then one step per generated token but the last
    assert scrape(running, "nv_inference_count_total", **labels) == 15 + 2 + 6
    assert scrape(running, "nv_inference_exec_count_total", **labels) == scrape(running, "rnnserve_batch_size_count", **labels) == 3 + 1 + 6
    assert scrape(running, "rnnserve_step_duration_seconds_count", **labels) == 10
    assert scrape(running, "rnnserve_sessions_started_total", kind="call", **labels) == 4
    assert scrape(running, "rnnserve_slots_capacity", **labels) == 8


def test_metrics_are_served_at_metrics_and_nowhere_else(make_server):
    """An HTTP probe pointed at a wrong path fails instead of passing on the metrics page."""
    running = make_server(metrics_port=0)
    base = f"http://127.0.0.1:{running.app.metrics_server.port}"
    for path in ("/", "/healthz", "/v2/health/ready", "/metrics/more"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(base + path, timeout=10)
        assert caught.value.code == 404, path
    page = urllib.request.urlopen(base + "/metrics", timeout=10)
    assert page.status == 200 and b"nv_inference_count_total" in page.read()
