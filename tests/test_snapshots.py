"""Snapshot, restore and fork: a session's state leaves its slot as a blob and comes back exactly — continuing
after a restore equals never having stopped, and a fork's two continuations each equal their own uninterrupted
run — for a language model, a tagger, a byte model in the middle of a character, and an encoder–decoder's KServe
sequence (whose state holds the encoder's memory)."""

import json

import grpc
import numpy as np
import pytest

from rnnserve.inference import grpc_service_pb2_grpc as kserve_grpc
from rnnserve.server.snapshots import pack, unpack
from tests.helpers import distributions, logits_of, request, scrape, status_of


@pytest.mark.parametrize("model", ["lstm", "tagger", "gru"])
def test_restore_then_continue_equals_never_stopping(client, model):
    first, second = "Thefirsthalf,", "andthesecond."  # no spaces: the tagger reads text without them
    uninterrupted = distributions(client.stream(model, [first, second], top_k=2))
    before = list(client.stream(model, [first], session_id=f"snap-{model}", top_k=2))
    snapshot = client.snapshot_session(f"snap-{model}")
    assert (snapshot.model, snapshot.position) == (model, len(first))
    client.close_session(f"snap-{model}")  # the slot is gone; only the blob is left
    restored = client.restore_session(snapshot.blob)
    assert (restored.session_id, restored.position) == (f"snap-{model}", len(first))
    after = list(client.stream(model, [second], session_id=f"snap-{model}", resume=True, top_k=2))
    assert after[-1].position == len(first + second)
    assert np.abs(distributions(before + after) - uninterrupted).max() < 1e-6
    client.close_session(f"snap-{model}")


def test_a_character_begun_before_the_snapshot_is_completed_after_it(client):
    syllable = list("하".encode())
    list(client.stream("korean", ["안녕", syllable[:1]], session_id="half"))
    blob = client.snapshot_session("half").blob
    assert unpack(blob)[0]["pending"] == bytes(syllable[:1]).hex()
    client.restore_session(blob, session_id="half-copy")
    steps = [s for r in client.stream("korean", [syllable[1:]], session_id="half-copy", resume=True) for s in r.steps]
    assert [s.text for s in steps] == ["", "하"]
    for name in ("half", "half-copy"):
        client.close_session(name)


def test_a_fork_gives_two_independent_continuations(client):
    prefix, left, right = "def f(x):\n", "    return x", "    pass"
    list(client.stream("lstm", [prefix], session_id="root", top_k=4))
    fork = client.fork_session("root", "branch")
    assert (fork.session_id, fork.position) == ("branch", len(prefix))
    went_left = distributions(client.stream("lstm", [left], session_id="root", resume=True, top_k=4))
    went_right = distributions(client.stream("lstm", [right], session_id="branch", resume=True, top_k=4))
    assert np.abs(went_left - distributions(client.stream("lstm", [prefix, left], top_k=4))[len(prefix) :]).max() < 1e-6
    assert np.abs(went_right - distributions(client.stream("lstm", [prefix, right], top_k=4))[len(prefix) :]).max() < 1e-6
    for name in ("root", "branch"):
        client.close_session(name)


def test_an_encoder_decoders_sequence_is_restored_with_its_memory(server, client):
    """A KServe sequence of the date normaliser: its state is the decoder's and the encoder's memory of the source."""
    bos = json.loads(client.get_model("dates").metadata_json)["special_tokens"]["bos"]
    first, then = [bos, 50, 48], [50, 52, 45]
    with grpc.insecure_channel(server.target) as channel:
        kserve = kserve_grpc.GRPCInferenceServiceStub(channel)
        kserve.ModelInfer(request("dates", tokens=first, sequence=700, start=True, starts=("source", "5 March 2024")))
        snapshot = client.snapshot_session(model="dates", sequence_id="700")
        assert unpack(snapshot.blob)[0]["sequence_id"] == "700"
        restored = client.restore_session(snapshot.blob, sequence_id="701")
        assert (restored.sequence_id, restored.position) == ("701", 3)
        original = logits_of(kserve.ModelInfer(request("dates", tokens=then, sequence=700, end=True)))
        copy = logits_of(kserve.ModelInfer(request("dates", tokens=then, sequence=701, end=True)))
        fresh = logits_of(kserve.ModelInfer(request("dates", tokens=first + then, starts=("source", "5 March 2024"))))
    assert np.abs(copy - original).max() < 1e-6
    assert np.abs(copy[0] - fresh[0, len(first) :]).max() < 1e-5


def test_snapshots_are_counted(make_server):
    running = make_server(metrics_port=0)
    with running.client() as client:
        list(client.stream("lstm", ["abc"], session_id="counted"))
        client.fork_session("counted", "counted-2")
    assert scrape(running, "rnnserve_snapshots_total", model="lstm", event="taken") == 1
    assert scrape(running, "rnnserve_snapshots_total", model="lstm", event="restored") == 1


def test_a_blob_that_is_not_right_is_refused_in_words(client):
    list(client.stream("lstm", ["abc"], session_id="source"))
    blob = client.snapshot_session("source").blob
    header, state = unpack(blob)
    other_file = pack({k: v for k, v in header.items() if k not in ("format", "state")} | {"model_sha256": "0" * 64}, state)
    damaged = blob[:40] + bytes([blob[40] ^ 1]) + blob[41:]
    cases = [
        (lambda: client.restore_session(b"hello"), grpc.StatusCode.INVALID_ARGUMENT, "blob: is not a snapshot from SnapshotSession"),
        (lambda: client.restore_session(damaged), grpc.StatusCode.INVALID_ARGUMENT, "blob: is damaged"),
        (lambda: client.restore_session(blob), grpc.StatusCode.ALREADY_EXISTS, "session 'source' is live"),
        (lambda: client.restore_session(other_file, session_id="x"), grpc.StatusCode.FAILED_PRECONDITION, "taken with a different file for model 'lstm'"),
        (lambda: client.snapshot_session("never-was"), grpc.StatusCode.NOT_FOUND, "session 'never-was'"),
        (lambda: client.snapshot_session(), grpc.StatusCode.INVALID_ARGUMENT, "name a session"),
        (lambda: client.snapshot_session(model="dates", sequence_id="404"), grpc.StatusCode.NOT_FOUND, "sequence 404 of model 'dates'"),
    ]
    for call, code, words in cases:
        error = status_of(call)
        assert error.code() == code and words in error.details(), (words, error.details())
    client.close_session("source")


def test_the_cli_moves_a_session_through_a_file(server, client, tmp_path):
    from tests.helpers import run_cli

    list(client.stream("lstm", ["Hello, "], session_id="cli-session"))
    done = run_cli("snapshot", "--target", server.target, "--session-id", "cli-session", "--out", str(tmp_path / "s.snap"))
    assert done.returncode == 0 and "at position 7" in done.stdout, done.stderr
    done = run_cli("restore", "--target", server.target, str(tmp_path / "s.snap"), "--session-id", "cli-copy")
    assert done.returncode == 0 and "restored session cli-copy of model lstm/1 at position 7" in done.stdout, done.stderr
    done = run_cli("fork", "--target", server.target, "--session-id", "cli-copy", "--new-session-id", "cli-fork")
    assert done.returncode == 0 and "into cli-fork at position 7" in done.stdout, done.stderr
    original = distributions(client.stream("lstm", ["world"], session_id="cli-session", resume=True))
    for name in ("cli-copy", "cli-fork"):
        assert np.abs(distributions(client.stream("lstm", ["world"], session_id=name, resume=True)) - original).max() < 1e-6
        client.close_session(name)
    client.close_session("cli-session")
