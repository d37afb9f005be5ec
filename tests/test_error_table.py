"""One error table for every RPC: each method of each service goes through it (walked from the service
descriptors), a refusal is the status its error maps to (ModelReady under tokens included), and a fault of ours is
INTERNAL with an error id that the server's log line carries — counted as INTERNAL in the metrics too."""

import logging
import re

import grpc
import pytest

from rnnserve.inference import grpc_service_pb2, grpc_service_pb2_grpc
from rnnserve.inference import grpc_service_pb2 as kserve_pb
from rnnserve.server.api.kserve import KServeServicer
from rnnserve.server.api.native import NativeServicer
from rnnserve.server.api.status import WRAPPED
from rnnserve.server.security import new_token, token_line
from rnnserve.v1 import rnnserve_pb2
from tests.helpers import request, scrape, status_of

SERVICES = [
    (rnnserve_pb2.DESCRIPTOR.services_by_name["RnnServe"], NativeServicer),
    (grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"], KServeServicer),
]


@pytest.mark.parametrize("service, servicer", SERVICES, ids=lambda s: getattr(s, "name", ""))
def test_every_method_of_every_service_goes_through_the_error_table(service, servicer):
    unwrapped = [m.name for m in service.methods if not getattr(getattr(servicer, m.name), WRAPPED, False)]
    assert not unwrapped, f"{service.full_name}: not wrapped by server/api/status.py: {unwrapped}"


def test_model_ready_answers_with_the_status_of_its_refusal(make_server, tmp_path):
    token = new_token()
    (tmp_path / "tokens").write_text(token_line(token, "lstm") + "\n")
    running = make_server(auth_tokens=str(tmp_path / "tokens"))
    with grpc.insecure_channel(running.target) as channel:
        kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")]
        assert kserve.ModelReady(kserve_pb.ModelReadyRequest(name="lstm"), metadata=metadata).ready
        refused = status_of(lambda: kserve.ModelReady(kserve_pb.ModelReadyRequest(name="tagger"), metadata=metadata))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "does not cover model 'tagger'" in refused.details()
        anonymous = status_of(lambda: kserve.ModelReady(kserve_pb.ModelReadyRequest(name="lstm")))
        assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_fault_of_ours_is_internal_with_an_error_id_the_log_carries(make_server, caplog):
    running = make_server(metrics_port=0)

    async def fails(model, tensors):
        raise RuntimeError("injected fault")

    running.app.kserve._tensors.run = fails  # a bug in the tensor path, as the wrapper sees one
    with grpc.insecure_channel(running.target) as channel, caplog.at_level(logging.ERROR, "rnnserve.server.api.status"):
        kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        error = status_of(lambda: kserve.ModelInfer(request(tokens=[1, 2, 3])))
        streamed = next(kserve.ModelStreamInfer(iter([request(tokens=[1, 2, 3], id="r1")])))
    assert error.code() == grpc.StatusCode.INTERNAL
    for message in (error.details(), streamed.error_message):
        error_id = re.fullmatch(r"internal error ([0-9a-f]{12}): .*", message)[1]
        logged = [r for r in caplog.records if error_id in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None and "injected fault" in logged[0].getMessage()
    assert streamed.infer_response.id == "r1"
    assert scrape(running, "nv_inference_request_failure_total", method="ModelInfer", reason="INTERNAL") == 1
