"""Bounded work: a request's size — its rows × tokens, the slots its rows need, the bytes its answer will take — is
checked before anything runs (RESOURCE_EXHAUSTED naming the limit, nothing stepped, no slot held), and a large legal
request runs a few steps at a time, so another client's steps are answered while it runs, not after it."""

import threading
import time

import grpc
import numpy as np

from rnnserve.inference import grpc_service_pb2_grpc as kserve_grpc
from rnnserve.server.batcher import MAX_UNREAD_TOKENS
from rnnserve.server.pieces import FIRST_ROW_STEPS, Pieces
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc
from tests.helpers import distributions, logits_of, request, scrape, scrape_settled, status_of


def refused(running, message) -> grpc.RpcError:
    with grpc.insecure_channel(running.target) as channel:
        return status_of(lambda: kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message))


def test_a_batch_over_the_token_limit_is_refused_before_any_step(make_server):
    running = make_server(max_sessions=64, metrics_port=0)
    error = refused(running, request(tokens=np.ones((63, 8192), np.int64)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "63 rows × 8192 tokens = 516096 tokens is over this server's limit of 8192" in error.details()
    assert "--max-input-tokens" in error.details()
    assert scrape(running, "nv_inference_count_total") == 0 and scrape(running, "rnnserve_slots_in_use") == 0


def test_an_answer_over_the_message_limit_is_refused_before_any_step(make_server):
    running = make_server(max_input_tokens=100_000, max_message_bytes=256 * 1024, metrics_port=0)
    error = refused(running, request(tokens=np.ones((4, 1000), np.int64)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-message-bytes" in error.details(), error.details()
    assert scrape(running, "nv_inference_count_total") == 0
    with grpc.insecure_channel(running.target) as channel:  # the same rows, classified, make a small answer: served
        answer = kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request(tokens=np.ones((4, 1000), np.int64), outputs=[("logits", 1)]))
    assert list(answer.outputs[0].shape) == [4, 1000, 1]


def test_more_rows_than_free_slots_are_refused_before_any_takes_one(make_server):
    running = make_server(max_sessions=4, metrics_port=0)
    error = refused(running, request(tokens=np.ones((5, 3), np.int64)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "5 rows need a session slot each" in error.details()
    assert "4 of 4 free" in error.details()
    assert scrape(running, "nv_inference_count_total") == 0 and scrape_settled(running, "rnnserve_slots_in_use", 0) == 0


def test_a_long_input_in_pieces_equals_it_in_one_call(client, server):
    tokens = (np.arange(FIRST_ROW_STEPS * 3 + 5) % 90 + 32).astype(np.int64)
    with grpc.insecure_channel(server.target) as channel:
        whole = logits_of(kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request(tokens=tokens)))[0]
    steps = [s for r in client.stream("lstm", [tokens[i : i + 7].tolist() for i in range(0, len(tokens), 7)], top_k=1) for s in r.steps]
    assert [s.next[0].token_id for s in steps] == whole.argmax(-1).tolist()


def test_a_wide_batch_split_by_rows_equals_it_in_one_call(server, make_server):
    """With a budget no step fits, an [8, 40] batch runs its first piece as 8 rows × 8 steps (nothing is measured
    yet), then a row at a time, 8 steps a call (the least a piece is), the rows not yet begun waiting beside those
    part-way: every row's answer is the one it gets in one call."""
    tokens = (np.arange(8 * 40).reshape(8, 40) * 7 % 90 + 32).astype(np.int64)
    with grpc.insecure_channel(server.target) as channel:
        whole = logits_of(kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request(tokens=tokens)))
    running = make_server(metrics_port=0)
    running.app.repository.get("lstm").batcher.pieces = Pieces(budget_s=1e-9, idle_budget_s=1e-9)
    with running.client() as client, grpc.insecure_channel(running.target) as channel:
        before = client.get_model("lstm").runtime_calls
        split = logits_of(kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request(tokens=tokens)))
        calls = client.get_model("lstm").runtime_calls - before
    assert np.abs(split - whole).max() < 1e-5
    assert calls >= 1 + 8 * (40 - 8) // 8, f"{calls} onnxruntime calls: the rows were not split"


def test_other_clients_are_answered_while_a_large_request_runs(make_server):
    """Each of the other client's answers is followed by a look at how many steps the server has run: some answers
    came while the large request had run part of its steps, which cannot happen if it runs in one call."""
    length = 32_768
    running = make_server(max_input_tokens=length, metrics_port=0)
    done = threading.Event()

    def large() -> None:
        with grpc.insecure_channel(running.target) as channel:
            kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request(tokens=np.full(length, 65), outputs=[("logits", 1)]), timeout=120)
        done.set()

    thread = threading.Thread(target=large)
    thread.start()
    seen, mine = [], 0
    with running.client() as client:
        while not done.is_set() and len(seen) < 500:
            for _ in client.stream("lstm", ["a"]):
                mine += 1
            seen.append(scrape(running, "nv_inference_count_total") - mine)
    thread.join()
    during = [count for count in seen if 0 < count < length]
    assert during, f"no answer came while the large request ran: the steps it had run at each answer were {seen}"


def test_snapshots_taken_while_a_long_chunk_runs_hold_the_state_before_or_after_it(client):
    """A snapshot read of a slot whose long chunk is part-way waits for the chunk: every snapshot's state is the one
    its position says (restored and continued, it equals the uninterrupted run from there), never a piece's."""
    long = [(i * 7) % 90 + 32 for i in range(8000)]
    list(client.stream("lstm", ["ab"], session_id="long-snap", top_k=3))
    blobs, running = [], threading.Event()
    running.set()

    def take() -> None:
        while running.is_set():
            blobs.append(client.snapshot_session("long-snap").blob)

    taker = threading.Thread(target=take)
    taker.start()
    list(client.stream("lstm", [long], session_id="long-snap", resume=True, top_k=3))
    running.clear()
    taker.join()
    client.close_session("long-snap")
    expected = {
        2: distributions(client.stream("lstm", ["ab", "z"], top_k=3))[-1],
        2 + len(long): distributions(client.stream("lstm", ["ab", long, "z"], top_k=3))[-1],
    }
    seen = set()
    for number, blob in enumerate(blobs):
        restored = client.restore_session(blob, session_id=f"long-snap-{number}")
        seen.add(restored.position)
        assert restored.position in expected, restored.position
        after = distributions(client.stream("lstm", ["z"], session_id=f"long-snap-{number}", resume=True, top_k=3))[-1]
        assert np.abs(after - expected[restored.position]).max() < 1e-5, (number, restored.position)
        client.close_session(f"long-snap-{number}")
    assert len(blobs) >= 2


def test_a_generation_whose_client_does_not_read_waits_for_it(make_server):
    """A client that reads one message and then nothing: its transport takes only 1 KB ahead of what it reads (no
    window growth), so once the server's buffers are full the generation runs MAX_UNREAD_TOKENS past what its handler
    could send and stops there, holding its slot and nothing else. When the client reads again, it goes on: every
    token is the one a client that reads at once gets."""
    running = make_server(metrics_port=0)
    sampling = dict(temperature=1.0, seed=7, max_tokens=4000)
    with running.client() as client:
        expected = [t for piece in client.generate("lstm", "x", **sampling) for t in piece.token_ids]
    assert len(expected) == 4000
    generated_before = scrape(running, "rnnserve_tokens_generated_total")
    options = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    with grpc.insecure_channel(running.target, options=options) as channel:
        call = pb_grpc.RnnServeStub(channel).Generate(pb.GenerateRequest(model="lstm", prompt="x", sampling=pb.SamplingParams(**sampling)))
        tokens = list(next(call).token_ids)
        seen, deadline = [], time.monotonic() + 20
        while (len(seen) < 5 or len(set(seen[-5:])) > 1) and time.monotonic() < deadline:  # until it stops growing
            time.sleep(0.1)
            seen.append(scrape(running, "rnnserve_tokens_generated_total") - generated_before)
        paused_at = seen[-1]
        assert len(set(seen[-5:])) == 1, f"the generation never paused: tokens generated over time {seen}"
        assert MAX_UNREAD_TOKENS <= paused_at < 4 * MAX_UNREAD_TOKENS, seen
        tokens += [t for piece in call for t in piece.token_ids]
    assert tokens == expected
