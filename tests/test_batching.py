"""Continuous batching: concurrent sessions share onnxruntime calls and get exactly what they get alone."""

import asyncio
from dataclasses import replace

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rnnserve.inference import grpc_service_pb2 as kserve_pb
from rnnserve.inference import grpc_service_pb2_grpc as kserve_grpc
from rnnserve.server.batcher import (
    COMPANY_ROWS,
    COMPANY_WAIT_S,
    COMPANY_WINDOW_S,
    MIN_COMPANY,
    OTHERS_WINDOW_S,
    STREAMS_WAIT_S,
    company,
)
from rnnserve.server.errors import RuntimeFailure, Unavailable
from tests.helpers import KOREAN, ServerThread, native_unavailable, request, scrape, together

PROMPTS = [
    "The ", "x", "def f(x):\n    return", "Return the value of the named attribute", "안녕", "if", "while True:",
    "A" * 60, "class C:", " ", "import sys\n", "print('hello')", "lambda", "The return statement", "0123456789",
    KOREAN[:20],
]


HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(
    scope="module",
    params=[
        ("cpu", False),
        ("cpu", True),
        pytest.param(("cuda", None), marks=pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime's CUDA provider")),
    ],
    ids=["host-slab", "device-slab-on-cpu", "cuda"],
)
def server(base_config, request):
    """Both state slabs: rows in host memory (the CPU default) and the device-resident one that CUDA uses,
    run here on CPU memory through the same I/O-binding code, and on a GPU where there is one."""
    device, io_binding = request.param
    with ServerThread(replace(base_config, max_sessions=64, device=device), io_binding=io_binding) as running:
        yield running


def test_32_concurrent_generations_equal_each_run_alone(server):
    requests = [
        dict(prompt=PROMPTS[i % len(PROMPTS)], max_tokens=20 + i, seed=i, temperature=0.0 if i % 2 else 0.8)
        for i in range(32)
    ]
    with server.client() as client:

        def generate(request):
            return [t for piece in client.generate("lstm", **request) for t in piece.token_ids]

        alone = [generate(r) for r in requests]
        calls_before = client.get_model("lstm").runtime_calls
        batched = together([lambda r=r: generate(r) for r in requests])
        calls = client.get_model("lstm").runtime_calls - calls_before
    assert batched == alone
    steps = sum(r["max_tokens"] for r in requests)  # prompt call + one per generated token after the first
    assert calls < steps / 2, f"{calls} onnxruntime calls for {steps} steps: the steps were not batched"


def test_32_concurrent_streams_equal_each_run_alone(server):
    texts = [PROMPTS[i % len(PROMPTS)] * (1 + i % 3) for i in range(32)]
    chunkings = [[t[j : j + 1 + i % 5] for j in range(0, len(t), 1 + i % 5)] for i, t in enumerate(texts)]
    with server.client() as client:

        def stream(i):  # each stream asks for its own top-k: the engine ranks a batch's rows together
            candidates = [c for r in client.stream("lstm", chunkings[i], top_k=1 + i % 7) for s in r.steps for c in s.next]
            return [c.token_id for c in candidates], np.array([c.probability for c in candidates])

        alone = [stream(i) for i in range(32)]
        batched = together([lambda i=i: stream(i) for i in range(32)])
    for (ids, one), (batched_ids, many) in zip(alone, batched):
        assert batched_ids == ids
        assert np.abs(one - many).max() < 1e-5


def test_a_batch_waits_for_the_sessions_stepping_and_never_for_a_few():
    now = 100.0
    few = {slot: now - 0.001 for slot in range(MIN_COMPANY - 1)}
    assert company(few, now, {}, len(few)) == (few, 0, 0.0)
    many = {slot: now - 0.001 for slot in range(20)} | {slot: now - COMPANY_WINDOW_S - 0.001 for slot in range(20, 30)}
    recent, wanted, _ = company(many, now, {}, 30)
    assert sorted(recent) == list(range(20)) and wanted == 20  # those that stepped too long ago are forgotten
    assert company({}, now, {}, 0) == ({}, 0, 0.0)


def test_a_batch_waits_longer_for_many_streams_than_for_sequences_multiplexed_on_one():
    now = 100.0
    stepping = {slot: now - 0.001 for slot in range(40)}
    own_streams = {slot: f"call {slot}" for slot in range(40)}
    assert company(stepping, now, own_streams, 40)[1:] == (40, STREAMS_WAIT_S)
    assert company(stepping, now, {}, 40)[1:] == (40, STREAMS_WAIT_S)  # sessions without a stream are streams of their own
    one_stream = dict.fromkeys(range(40), "call 1")
    assert company(stepping, now, one_stream, 40)[1:] == (40, COMPANY_WAIT_S)
    few_streams = {slot: f"call {slot % (MIN_COMPANY - 1)}" for slot in range(40)}
    assert company(stepping, now, few_streams, 40)[1:] == (40, COMPANY_WAIT_S)
    # more sessions than a batch waits for: the next batch's rows keep coming without a longer wait
    assert company(stepping, now, own_streams, 256)[1:] == (40, COMPANY_WAIT_S)
    crowd = {slot: now - 0.001 for slot in range(COMPANY_ROWS + 20)}
    assert company(crowd, now, {}, len(crowd))[1:] == (COMPANY_ROWS, COMPANY_WAIT_S)


def test_a_lone_streams_steps_run_at_once_and_concurrent_streams_still_batch(make_server):
    """A lone stream's steps run on the event loop without the hand-overs to the engine thread, and equal what the
    engine computes (a server with a queue delay runs every step there); concurrent streams still share calls."""
    at_once, queued = make_server(metrics_port=0, max_sessions=32), make_server(metrics_port=0, max_queue_delay_ms=1)
    chunks = list("The return statement")

    def probabilities(client):
        return np.array([c.probability for r in client.stream("lstm", chunks, top_k=3) for s in r.steps for c in s.next])

    with at_once.client() as client, queued.client() as other:
        assert np.abs(probabilities(client) - probabilities(other)).max() < 1e-5
        assert scrape(at_once, "rnnserve_steps_run_at_once_total", model="lstm") >= len(chunks) - 1  # the first may find the engine starting
        assert scrape(queued, "rnnserve_steps_run_at_once_total", model="lstm") == 0
        before, ran_now = client.get_model("lstm").runtime_calls, scrape(at_once, "rnnserve_steps_run_at_once_total")
        together([lambda: probabilities(client) for _ in range(16)])
        calls = client.get_model("lstm").runtime_calls - before
        ran_now = scrape(at_once, "rnnserve_steps_run_at_once_total") - ran_now
    steps = 16 * len(chunks)
    assert calls < steps and ran_now < steps / 10, f"{calls} calls ({ran_now} at once) for {steps} steps: they did not batch"


def test_cancelling_streams_mid_batch_leaves_the_others_exact(server):
    """Half of 16 concurrent streams are cancelled while their steps are being batched with the rest."""
    import queue

    texts = [PROMPTS[i % len(PROMPTS)] + " and then some more text" for i in range(16)]
    with server.client() as client:
        alone = [np.array([c.probability for r in client.stream("lstm", list(t)) for s in r.steps for c in s.next]) for t in texts]

        def run(i):
            box = queue.Queue()
            responses = client.stream("lstm", iter(box.get, None))
            got = []
            for n, ch in enumerate(texts[i]):
                box.put(ch)
                got.append(next(responses))
                if i % 2 and n == 5:
                    responses.cancel()
                    return None
            box.put(None)
            return np.array([c.probability for r in got for s in r.steps for c in s.next])

        results = together([lambda i=i: run(i) for i in range(16)])
    for i in range(0, 16, 2):
        assert np.abs(results[i] - alone[i]).max() < 1e-5


def test_a_client_that_never_reads_does_not_stall_others(server):
    with server.client() as client:
        expected = client.generate_text("lstm", "The ", temperature=0.0, max_tokens=50)
        stalled = [client.generate("lstm", "x", max_tokens=4000, temperature=1.0, seed=i) for i in range(4)]
        for call in stalled:
            next(call)  # started, and never read again
        assert client.generate_text("lstm", "The ", temperature=0.0, max_tokens=50) == expected
        for call in stalled:
            call.cancel()


def test_concurrent_tagging_equals_each_run_alone(server):
    """The tagger shapes batch too: streamed per character (unidirectional) and whole inputs (bidirectional)."""
    texts = ["".join(PROMPTS[i % len(PROMPTS)].split()) + "thereturnstatement"[: 3 + i] for i in range(16)]
    texts = ["".join(ch for ch in t if ch.isascii()) for t in texts]
    with server.client() as client:

        def tag_stream(text):
            return np.array([c.probability for r in client.stream("tagger", list(text), top_k=2) for s in r.steps for c in s.next])

        def tag_whole(text):
            return np.array([c.probability for s in client.infer("tagger_bi", text, top_k=2) for c in s.next])

        for tag in (tag_stream, tag_whole):
            alone = [tag(t) for t in texts]
            batched = together([lambda t=t, tag=tag: tag(t) for t in texts])
            for one, many in zip(alone, batched, strict=True):
                assert np.abs(one - many).max() < 1e-5


def test_a_failed_call_leaves_its_fresh_rows_at_the_initial_state(base_config):
    """A call onnxruntime fails (a token past the embedding, handed to the engine directly as no API would) fails its
    rows; a row whose session had just started still starts from the initial state at its next step, not from the
    state its slot's previous owner left."""
    with ServerThread(replace(base_config, max_sessions=4)) as running:
        model = running.app.repository.get("lstm")
        batcher = model.batcher

        async def scenario():
            loop = asyncio.get_running_loop()

            def run(slots: list[int], tokens: list[int]) -> asyncio.Future:
                done = loop.create_future()
                batcher.step_rows(slots, np.array(tokens, np.int64).reshape(-1, 1), lambda outputs, error: done.set_result((outputs, error)))
                return done

            first = batcher.allocate()
            expected, error = await run([first], [65])  # a new sequence's first step
            assert error is None
            for token in b"the previous owner's state":
                await run([first], [token])
            batcher.free(first)
            while model.runtime.slots_in_use:  # the engine frees it, then the event loop
                await asyncio.sleep(0.01)
            again, other = batcher.allocate(), batcher.allocate()
            assert again == first  # the slot that holds the previous owner's state
            _, error = await run([again, other], [65, 10**6])
            assert error is not None  # onnxruntime refused the whole call
            return expected, await run([again], [65])

        expected, (got, error) = running.call(scenario())
    assert error is None
    assert np.abs(got[0] - expected[0]).max() < 1e-6


def engine_bug(*_):
    """Put in place of one of the engine's own methods: a fault of ours, not onnxruntime's."""
    raise ZeroDivisionError("a bug of the engine's own")


@pytest.mark.parametrize(
    "where, rows", [("_wait", 2), ("_account", 2), ("_handed_back", 1)], ids=["taking-work", "after-onnxruntime", "a-lone-step-at-once"]
)
def test_a_fault_in_the_engines_own_code_fails_its_work_and_the_server_says_not_serving(base_config, where, rows):
    """A fault of the engine's own (not onnxruntime's: those fail their call), as it takes work, after onnxruntime
    ran a batch, or in a lone step it ran on the event loop, stops it for good, since its state can no longer be
    trusted: the steps it had taken fail with INTERNAL, every later request to the model with UNAVAILABLE on both
    front ends (a lone step included, which would otherwise run on the event loop; plain steps, which the front end
    holds during a call), health says NOT_SERVING and Triton's readiness false, so an orchestrator restarts it; and
    the server still stops cleanly; its metrics say so (rnnserve_engine_up 0)."""
    config = replace(base_config, metrics_port=0, native_port=-1 if native_unavailable() else 0)
    with ServerThread(config) as running:
        model = running.app.repository.get("lstm")
        batcher = model.batcher
        with running.client() as client:
            assert len(list(client.stream("lstm", ["The "]))) == 1  # served
        assert scrape(running, "rnnserve_engine_up", model="lstm", version="1") == 1

        async def fault_then_steps():
            loop = asyncio.get_running_loop()
            while model.runtime.slots_in_use or batcher._engine_busy.locked():  # the stream's free taken: the engine idle
                await asyncio.sleep(0.01)  # (within ServerThread.call's 30 s)
            setattr(batcher, where, engine_bug)  # run as the engine takes its next work, or after its call
            slots = [batcher.allocate() for _ in range(rows)]
            await asyncio.sleep(OTHERS_WINDOW_S)  # a lone step, after this long, runs at once; two rows, on the engine
            done = loop.create_future()
            batcher.step_rows(slots, np.array([[65], [66]][:rows], np.int64), lambda outputs, error: done.set_result(error))
            taken = await done
            assert isinstance(taken, RuntimeFailure)
            with pytest.raises(Unavailable) as later:
                await batcher.step(slots[0], [65])
            for slot in slots:
                batcher.free(slot)
            return str(taken), str(later.value)

        taken, later = running.call(fault_then_steps())
        assert "engine stopped on an internal error while this request was in its hands (ZeroDivisionError" in taken
        assert "model lstm/1 serves nothing more" in later and "restart the server" in later

        targets = [running.target] + ([running.native_target] if running.native_target else [])
        for target in targets:
            with grpc.insecure_channel(target) as channel:
                stub = kserve_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ModelInfer(request(tokens=[65]), timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, target
                assert "serves nothing more" in refused.value.details()
                plain = list(stub.ModelStreamInfer(iter([request(tokens=[65], sequence=7, start=True, end=True)]), timeout=10))
                assert len(plain) == 1 and "serves nothing more" in plain[0].error_message, target
                assert not stub.ServerReady(kserve_pb.ServerReadyRequest(), timeout=10).ready
                assert not stub.ModelReady(kserve_pb.ModelReadyRequest(name="lstm"), timeout=10).ready
                assert stub.ServerLive(kserve_pb.ServerLiveRequest(), timeout=10).live  # alive: only a restart mends it
        with grpc.insecure_channel(running.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "inference.GRPCInferenceService"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING, service
        with running.client() as client, pytest.raises(grpc.RpcError) as refused:
            list(client.stream("lstm", ["The "]))  # a lone step, which would run at once on an idle engine
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert scrape(running, "rnnserve_engine_up", model="lstm", version="1") == 0


def test_an_engine_that_fails_on_the_servers_stop_still_stops(base_config):
    """The fault comes as the engine takes the stop itself (nothing else queued): the server still stops."""
    with ServerThread(base_config) as running:
        batcher = running.app.repository.get("lstm").batcher
        batcher._wait = engine_bug
        running.stop(0.5)  # within ServerThread.call's 30 s, or it raises
    assert batcher.failure is not None  # it did fail, on the stop
