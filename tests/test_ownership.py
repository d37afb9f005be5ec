"""Sessions belong to whoever made them. Under tokens, every RPC of both APIs that names a session or a KServe
sequence is tried by another token on the first one's: each is NOT_FOUND with the very words a never-made id gets
(so ids cannot be probed), nothing of the owner's changes, and the other token's own session of the same id is its
own (no squatting). An operator token may act on anyone's. Under mutual TLS, the client certificate is the owner."""

import re
from dataclasses import replace

import grpc
import numpy as np
import pytest

from rnnserve.client import RnnServeClient, session_chunk
from rnnserve.inference import grpc_service_pb2_grpc as kserve_grpc
from rnnserve.server.security import new_token, token_line
from tests.helpers import ServerThread, distributions, logits_of, request, status_of

FIRST, SECOND = "The first half, ", "and the second."


@pytest.fixture(scope="module")
def owned(base_config, tmp_path_factory):
    path = tmp_path_factory.mktemp("owners") / "tokens.txt"
    tokens = {name: new_token() for name in ("alice", "bob", "ops")}
    path.write_text("".join(token_line(t, "*", name, operator=name == "ops") + "\n" for name, t in tokens.items()))
    with ServerThread(replace(base_config, auth_tokens=str(path))) as running:
        yield running, tokens


def clients(running, tokens):
    return {name: RnnServeClient(running.target, timeout_s=30, token=token) for name, token in tokens.items()}


class ChunkError(grpc.RpcError):
    """A StreamMany chunk's error (the stream goes on), as the RpcError a call's error is."""

    def __init__(self, answer):
        self._code, self._details = grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == answer.code)), answer.message

    def code(self):
        return self._code

    def details(self):
        return self._details


def many_resume(client, name: str):
    (response,) = client.stream_many([[session_chunk(name, "x", model="lstm", resume=True)]])
    if response.answers[0].code:
        raise ChunkError(response.answers[0])
    return response


def same_words(error: grpc.RpcError, never: grpc.RpcError, session: str, other: str) -> bool:
    return error.code() == never.code() == grpc.StatusCode.NOT_FOUND and error.details() == never.details().replace(other, session)


def test_another_token_cannot_touch_a_native_session_nor_learn_it_exists(owned):
    running, tokens = owned
    people = clients(running, tokens)
    alice, bob = people["alice"], people["bob"]
    uninterrupted = distributions(alice.stream("lstm", [FIRST, SECOND]))
    before = list(alice.stream("lstm", [FIRST], session_id="mine"))
    blob = alice.snapshot_session("mine").blob
    tries = {
        "SnapshotSession": lambda name: bob.snapshot_session(name),
        "ForkSession": lambda name: bob.fork_session(name, "stolen"),
        "CloseSession": lambda name: bob.close_session(name),
        "Stream resume": lambda name: list(bob.stream("lstm", ["x"], session_id=name, resume=True)),
        "StreamMany resume": lambda name: many_resume(bob, name),
    }
    for rpc, call in tries.items():
        assert same_words(status_of(lambda: call("mine")), status_of(lambda: call("never-made")), "mine", "never-made"), rpc
    squatted = list(bob.stream("lstm", ["zzz"], session_id="mine"))  # bob's own "mine": no clash with alice's
    assert squatted[-1].position == 3
    bob.close_session("mine")
    assert bob.restore_session(blob).session_id == "mine"  # a blob bob holds restores as his own
    assert status_of(lambda: bob.restore_session(blob)).code() == grpc.StatusCode.ALREADY_EXISTS
    after = list(alice.stream("lstm", [SECOND], session_id="mine", resume=True))
    assert after[-1].position == len(FIRST + SECOND)
    assert np.abs(distributions(before + after) - uninterrupted).max() < 1e-6  # nothing of bob's reached it
    bob.close_session("mine")
    alice.close_session("mine")
    for person in people.values():
        person.close()


def test_an_operator_may_act_on_anyones_session(owned):
    running, tokens = owned
    people = clients(running, tokens)
    list(people["alice"].stream("lstm", [FIRST], session_id="watched"))
    ops = people["ops"]
    assert ops.snapshot_session("watched").position == len(FIRST)
    assert ops.fork_session("watched", "ops-copy").position == len(FIRST)
    ops.close_session("watched")
    assert status_of(lambda: people["alice"].snapshot_session("watched")).code() == grpc.StatusCode.NOT_FOUND
    ops.close_session("ops-copy")
    for person in people.values():
        person.close()


def test_another_token_cannot_continue_or_end_a_kserve_sequence(owned):
    running, tokens = owned
    first, then = [72, 101, 108], [108, 111, 33]
    with grpc.insecure_channel(running.target) as channel:
        kserve = kserve_grpc.GRPCInferenceServiceStub(channel)
        alice, bob = ([("authorization", f"Bearer {tokens[name]}")] for name in ("alice", "bob"))
        kserve.ModelInfer(request(tokens=first, sequence=7, start=True), metadata=alice)
        for end in (False, True):
            taken = status_of(lambda: kserve.ModelInfer(request(tokens=then, sequence=7, end=end), metadata=bob))
            never = status_of(lambda: kserve.ModelInfer(request(tokens=then, sequence=8, end=end), metadata=bob))
            assert same_words(taken, never, "sequence 7", "sequence 8")
        streamed = next(kserve.ModelStreamInfer(iter([request(tokens=then, sequence=7)]), metadata=bob))
        assert "sequence 7 of model 'lstm' was never started" in streamed.error_message
        with RnnServeClient(running.target, timeout_s=30, token=tokens["bob"]) as as_bob:
            snapshot = status_of(lambda: as_bob.snapshot_session(model="lstm", sequence_id="7"))
        assert snapshot.code() == grpc.StatusCode.NOT_FOUND
        kserve.ModelInfer(request(tokens=[1, 2], sequence=7, start=True, end=True), metadata=bob)  # bob's own sequence 7
        continued = logits_of(kserve.ModelInfer(request(tokens=then, sequence=7, end=True), metadata=alice))
        whole = logits_of(kserve.ModelInfer(request(tokens=first + then), metadata=alice))
    assert np.abs(continued[0] - whole[0, len(first) :]).max() < 1e-5


def test_under_mutual_tls_the_client_certificate_owns_its_sessions(base_config, tmp_path):
    from tests.test_security import Authority

    ca = Authority(tmp_path, "owners-ca")
    cert, key = ca.issue("server", server=True)
    alice, bob = ca.issue("alice"), ca.issue("bob")
    with ServerThread(replace(base_config, tls_cert=cert, tls_key=key, tls_client_ca=ca.path)) as running:
        def client(pair):
            return RnnServeClient(running.target, timeout_s=30, tls_ca=ca.path, tls_cert=pair[0], tls_key=pair[1])

        with client(alice) as as_alice, client(bob) as as_bob:
            list(as_alice.stream("lstm", [FIRST], session_id="cert-owned"))
            refused = status_of(lambda: as_bob.snapshot_session("cert-owned"))
            assert refused.code() == grpc.StatusCode.NOT_FOUND and re.search("cert-owned", refused.details())
            assert as_alice.snapshot_session("cert-owned").position == len(FIRST)
            as_alice.close_session("cert-owned")
