"""A shared state store: a real Redis (started here; the test skips when redis-server is not installed), two real
servers that share it. A session or KServe sequence answered on one server continues exactly on the other; one
server at a time holds a session; a Redis that stops never fails a live session, and writes resume when it is back."""

import time
from dataclasses import replace

import grpc
import numpy as np
import pytest

from rnnserve.inference import grpc_service_pb2_grpc as kserve_grpc
from tests.helpers import (
    ServerThread,
    distributions,
    logits_of,
    native_unavailable,
    request,
    run_cli,
    scrape,
    scrape_settled,
    status_of,
)

FIRST, SECOND = "The server keeps ", "the state between messages."


@pytest.fixture
def two_servers(base_config, redis_server):
    config = replace(base_config, state_store=redis_server.url, state_lease_s=2.0, metrics_port=0)
    with ServerThread(config) as a, ServerThread(config) as b:
        yield a, b


def health(running, service: str) -> str:
    done = run_cli("health", "--target", running.target, "--service", service)
    return (done.stdout or done.stderr).strip().rsplit(" ", 1)[-1]


def test_a_session_continues_exactly_on_another_server(two_servers, redis_server):
    a, b = two_servers
    with a.client() as on_a, b.client() as on_b:
        uninterrupted = distributions(on_a.stream("lstm", [FIRST, SECOND]))
        before = list(on_a.stream("lstm", [FIRST], session_id="travel"))
        redis_server.wait_for_position("session:travel", len(FIRST))
        redis_server.wait_for_release("session:travel")  # and a has let it go
        after = list(on_b.stream("lstm", [SECOND], session_id="travel", resume=True))
    assert after[-1].position == len(FIRST + SECOND)
    assert np.abs(distributions(before + after) - uninterrupted).max() < 1e-6
    assert scrape(b, "rnnserve_state_store_reads_total", result="found") == 1


def test_a_resume_behind_the_client_says_so_and_the_replay_is_counted(two_servers, redis_server):
    """The client got an answer the store never saw (its server died before writing it): the resumed stream says
    how far behind its state is, the client sends that chunk again, and the session goes on exactly."""
    a, b = two_servers
    third = " And on."
    with a.client() as on_a, b.client() as on_b:
        uninterrupted = distributions(on_a.stream("lstm", [FIRST, SECOND, third]))
        before = list(on_a.stream("lstm", [FIRST], session_id="lost"))
        redis_server.wait_for_position("session:lost", len(FIRST))
        acknowledged = len(FIRST + SECOND)  # as if a had answered SECOND and died before the store had it
        restored, replayed, after = on_b.stream("lstm", ["", SECOND, third], session_id="lost", resume=True, acknowledged=acknowledged)
        error = status_of(lambda: list(on_b.stream("lstm", [FIRST], acknowledged=3)))
    assert (restored.position, restored.behind) == (len(FIRST), len(SECOND))
    assert (replayed.behind, after.behind, after.position) == (len(SECOND), 0, len(FIRST + SECOND + third))
    assert np.abs(distributions(before + [replayed, after]) - uninterrupted).max() < 1e-6
    assert scrape(b, "rnnserve_replayed_chunks_total") == 1
    assert scrape(b, "rnnserve_resumes_total", source="store") == 1 and scrape(b, "rnnserve_resumes_total", source="local") == 0
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "start.acknowledged" in error.details()


def test_one_server_at_a_time_holds_a_session(two_servers, redis_server):
    import queue

    a, b = two_servers
    with a.client() as on_a, b.client() as on_b:
        box = queue.Queue()
        held = on_a.stream("lstm", iter(box.get, None), session_id="held")
        box.put(FIRST)
        next(held)  # the stream on a is open: a holds the session
        redis_server.wait_for_position("session:held", len(FIRST))
        error = status_of(lambda: list(on_b.stream("lstm", [SECOND], session_id="held", resume=True)))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "being served by another server" in error.details()
        box.put(None)
        list(held)  # a's stream ends: it lets go
        deadline = time.monotonic() + 10
        while redis_server.get("rnnserve:session:held:lease") is not None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert list(on_b.stream("lstm", [SECOND], session_id="held", resume=True))[-1].position == len(FIRST + SECOND)


def test_a_kserve_sequence_continues_on_another_server(two_servers, redis_server):
    a, b = two_servers
    chunks = [list(FIRST.encode()), list(SECOND.encode())]
    with grpc.insecure_channel(a.target) as to_a, grpc.insecure_channel(b.target) as to_b:
        on_a, on_b = kserve_grpc.GRPCInferenceServiceStub(to_a), kserve_grpc.GRPCInferenceServiceStub(to_b)
        whole = [logits_of(on_a.ModelInfer(request(tokens=c, sequence=1, start=i == 0, end=i == 1))) for i, c in enumerate(chunks)]
        moved = [logits_of(on_a.ModelInfer(request(tokens=chunks[0], sequence=2, start=True)))]
        redis_server.wait_for_position("sequence:lstm:2", len(chunks[0]))
        redis_server.wait_for_release("sequence:lstm:2")  # and a has let it go
        moved.append(logits_of(on_b.ModelInfer(request(tokens=chunks[1], sequence=2, end=True))))
    for got, want in zip(moved, whole):
        assert np.abs(got - want).max() < 1e-6


def test_a_kserve_client_that_is_ahead_of_the_store_is_told_where_to_replay_from(two_servers, redis_server):
    """rnnserve's sequence_position: the client says where it is; a sequence restored from a store that is behind
    refuses it, naming its position, and the client sends the missing request again: exact, as never stopped."""
    a, b = two_servers
    chunks = [list(FIRST.encode()), list(SECOND.encode()), list(b" And on.")]
    with grpc.insecure_channel(a.target) as to_a, grpc.insecure_channel(b.target) as to_b:
        on_a, on_b = kserve_grpc.GRPCInferenceServiceStub(to_a), kserve_grpc.GRPCInferenceServiceStub(to_b)
        whole = [logits_of(on_a.ModelInfer(request(tokens=c, sequence=5, start=i == 0, end=i == 2))) for i, c in enumerate(chunks)]
        got = [logits_of(on_a.ModelInfer(request(tokens=chunks[0], sequence=6, start=True)))]
        redis_server.wait_for_position("sequence:lstm:6", len(chunks[0]))
        redis_server.wait_for_release("sequence:lstm:6")  # and a has let it go
        acknowledged = len(chunks[0]) + len(chunks[1])  # as if a had answered the second request and died unwritten
        error = status_of(lambda: on_b.ModelInfer(request(tokens=chunks[2], sequence=6, position=acknowledged)))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and f"is at position {len(chunks[0])}, not" in error.details()
        on_b.ModelInfer(request(tokens=chunks[1], sequence=6, position=len(chunks[0])))  # the replay: its answer was had
        got.append(logits_of(on_b.ModelInfer(request(tokens=chunks[2], sequence=6, end=True, position=acknowledged))))
    for mine, reference in zip(got, [whole[0], whole[2]]):
        assert np.abs(mine - reference).max() < 1e-6
    assert scrape(b, "rnnserve_replayed_chunks_total") == 1 and scrape(b, "rnnserve_resumes_total", source="store") == 1


def test_a_store_that_stops_never_fails_a_live_session(base_config, redis_server):
    with ServerThread(replace(base_config, state_store=redis_server.url, state_lease_s=1.0, metrics_port=0)) as running, running.client() as client:
        expected = distributions(client.stream("lstm", [FIRST, SECOND, FIRST]))
        redis_server.stop()
        got = distributions(client.stream("lstm", [FIRST, SECOND, FIRST], session_id="through-outage"))
        assert np.abs(got - expected).max() < 1e-6  # served from memory, every message answered
        assert scrape(running, "rnnserve_state_store_writes_total", result="failed") >= 1
        assert scrape_settled(running, "rnnserve_state_store_up", 0) == 0
        assert health(running, "rnnserve.StateStore") == "NOT_SERVING" and health(running, "") == "SERVING"
        redis_server.start()
        list(client.stream("lstm", [SECOND], session_id="through-outage", resume=True))
        redis_server.wait_for_position("session:through-outage", len(FIRST + SECOND + FIRST + SECOND))
        assert scrape(running, "rnnserve_resumes_total", source="local") == 1  # live here: nothing loaded
        assert scrape_settled(running, "rnnserve_state_store_up", 1) == 1  # set just after the write it waited for
        assert health(running, "rnnserve.StateStore") == "SERVING"


def test_a_busy_session_is_written_once_per_interval_and_its_latest_state_wins(base_config, redis_server):
    config = replace(base_config, state_store=redis_server.url, state_lease_s=1.0, state_write_interval_ms=2000, metrics_port=0)
    with ServerThread(config) as running, running.client() as client:
        list(client.stream("lstm", list(FIRST), session_id="chatty"))  # a message per character, answered at once
        redis_server.wait_for_position("session:chatty", len(FIRST))
        assert scrape(running, "rnnserve_state_store_writes_total", result="ok") <= 3  # not one per message


def test_back_to_back_requests_never_read_a_store_that_is_behind(two_servers):
    """The store is written after each answer, in the background: the next request on the same server must go on
    from the copy here, not from a store that has not caught up with it."""
    a, _ = two_servers
    tokens = list((FIRST + SECOND).encode())[:24]
    with grpc.insecure_channel(a.target) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        pieces = [
            logits_of(stub.ModelInfer(request(tokens=tokens[i : i + 3], sequence=77, start=i == 0, end=i == 21)))[0]
            for i in range(0, 24, 3)
        ]
        whole = logits_of(stub.ModelInfer(request(tokens=tokens)))[0]
    assert np.abs(np.concatenate(pieces) - whole).max() < 1e-5


def test_the_store_health_follows_a_pause_and_a_restart_without_flapping(base_config, redis_server):
    """Idle, with no session to write: the health service still follows the store — NOT_SERVING after two failed
    round trips in a row, SERVING at the first that succeeds, and no late NOT_SERVING once the store answers."""
    import os
    import signal

    def settles_at(running, wanted: str) -> bool:
        deadline = time.monotonic() + 15
        while health(running, "rnnserve.StateStore") != wanted:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    with ServerThread(replace(base_config, state_store=redis_server.url, state_lease_s=1.0, metrics_port=0)) as running:
        assert health(running, "rnnserve.StateStore") == "SERVING"
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            assert settles_at(running, "NOT_SERVING")
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert settles_at(running, "SERVING")
        seen = {health(running, "rnnserve.StateStore") for _ in range(3)}
        assert seen == {"SERVING"}  # a ping that timed out during the pause does not flip it back
        redis_server.process.kill()
        redis_server.process.wait()
        assert settles_at(running, "NOT_SERVING")
        redis_server.start()
        assert settles_at(running, "SERVING")
        with running.client() as client:  # and the store takes sessions again
            assert list(client.stream("lstm", [FIRST], session_id="after-restart"))[-1].position == len(FIRST)
        redis_server.wait_for_position("session:after-restart", len(FIRST))


def test_a_sequence_on_native_ports_continues_on_another_server(base_config, redis_server):
    """With a state store the native front end leaves every ModelStreamInfer request to the servicer (which confirms
    each with the store): a sequence's steps on one server's --native-port continue exactly on another's."""
    if native_unavailable():
        pytest.skip(f"no native front end: {native_unavailable()}")
    config = replace(base_config, state_store=redis_server.url, state_lease_s=2.0, metrics_port=0, native_port=0)
    chunks = [list(b"The "), list(b"state "), list(b"moves.")]

    def stream(running, requests):
        with grpc.insecure_channel(running.native_target) as channel:
            got = list(kserve_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(requests), timeout=30))
            assert not any(r.error_message for r in got), [r.error_message for r in got]  # refusals, named
            return [logits_of(r.infer_response) for r in got]

    with ServerThread(config) as a, ServerThread(config) as b:
        whole = stream(a, [request(tokens=c, sequence=31, start=i == 0, end=i == 2) for i, c in enumerate(chunks)])
        with grpc.insecure_channel(a.native_target) as channel:  # a stream's own sequences end with it: these do not
            moved = [logits_of(kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request(tokens=c, sequence=32, start=i == 0)))
                     for i, c in enumerate(chunks[:2])]
        redis_server.wait_for_position("sequence:lstm:32", len(chunks[0]) + len(chunks[1]))
        redis_server.wait_for_release("sequence:lstm:32")  # until then b is refused: a still holds it
        moved += stream(b, [request(tokens=chunks[2], sequence=32, end=True)])
        assert scrape(a, "rnnserve_native_plain_steps_total") == scrape(b, "rnnserve_native_plain_steps_total") == 0
    for got, want in zip(moved, whole):
        assert np.abs(got - want).max() < 1e-6
