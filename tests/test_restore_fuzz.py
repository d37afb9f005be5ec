"""A restore trusts nothing in a blob. Thousands of headers mutated from a real snapshot's — keys dropped, values of
every wrong type and range, state tensors of other shapes, names and sizes, whole headers that are not objects —
each with its checksum recomputed (as a forger would), sent to a real server: every answer is a clear refusal
(never UNKNOWN or INTERNAL), and no refused blob leaves a live session. With --snapshot-key, a blob that is not
signed with the key is refused however well-formed it is."""

import hashlib
import json
import random
import struct

import grpc
import numpy as np
import pytest

from rnnserve.server.snapshots import DIGEST, MAGIC, pack, unpack
from tests.helpers import status_of

ODD_VALUES = [None, True, False, -1, 0, 1, 2**63, 2**64, -(2**63), 1.5, float("nan"), "", "zz", "0" * 64, "x" * 5000,
              [], [1], {}, {"a": 1}, [[0]], "ff", "e9", "e9a0", "41", "ffff"]
ANSWERS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED}


def signed(header_bytes: bytes, tensors: bytes) -> bytes:
    body = MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + tensors
    return body + hashlib.sha256(body).digest()


def mutations(header: dict, tensors: bytes, count: int, seed: int = 7):
    """(what was changed, blob): a few whole headers that are not right, then `count` headers with one to three
    random changes each."""
    def change(rng, base: dict) -> tuple[str, object]:
        changed = json.loads(json.dumps(base))
        kind = rng.randrange(4)
        if kind == 0 and changed:
            key = rng.choice(list(changed))
            del changed[key]
            return f"without {key}", changed
        if kind == 1 or not isinstance(changed.get("state"), list) or not changed["state"]:
            key, value = rng.choice(list(header)), rng.choice(ODD_VALUES)
            changed[key] = value
            return f"{key}={json.dumps(value)[:20]}", changed
        tensor = rng.randrange(len(changed["state"]))
        field = rng.choice(["name", "shape", "dtype", "extra"])
        if field == "shape":
            value = rng.choice([[1], [0, 64], [], [-1], [2**40], [1, 1, 1], [3, 64], [2, 2**31], "64", [True]])
        else:
            value = rng.choice(ODD_VALUES + ["h", "c", "float64"])
        if isinstance(changed["state"][tensor], dict):
            changed["state"][tensor][field] = value
        return f"state[{tensor}].{field}={json.dumps(value)[:20]}", changed

    rng = random.Random(seed)
    yield "a list", signed(b"[1, 2]", tensors)
    yield "null", signed(b"null", tensors)
    yield "not JSON", signed(b'{"format": 1,', tensors)
    yield "cut short", signed(json.dumps(header).encode(), tensors[:-4])
    yield "longer", signed(json.dumps(header).encode(), tensors + b"\0" * 8)
    for _ in range(count):
        changes, changed = [], header
        for _ in range(rng.choice([1, 1, 2, 3])):
            what, changed = change(rng, changed)
            changes.append(what)
        yield ", ".join(changes), signed(json.dumps(changed).encode(), tensors)


def test_thousands_of_forged_headers_are_refused_in_words_and_create_nothing(client):
    list(client.stream("lstm", ["abc"], session_id="fuzz-source"))
    blob = client.snapshot_session("fuzz-source").blob
    client.close_session("fuzz-source")
    header, state = unpack(blob)
    tensors = b"".join(np.ascontiguousarray(a, "<f4").tobytes() for a in state.values())
    active = client.get_model("lstm").active_sessions
    seen, accepted = {}, 0
    for what, forged in mutations(header, tensors, 3000):
        try:
            restored = client.restore_session(forged)
            code = grpc.StatusCode.OK
            accepted += 1
            if restored.session_id:
                client.close_session(restored.session_id)
        except grpc.RpcError as err:
            code = err.code()
            assert code in ANSWERS and err.details(), (what, code, err.details())
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                assert err.details().startswith(("blob", "session_id", "sequence_id")), (what, err.details())
        seen[code] = seen.get(code, 0) + 1
    print(f"{sum(seen.values())} forged blobs: {({c.name: n for c, n in seen.items()})}")
    assert seen[grpc.StatusCode.INVALID_ARGUMENT] > 2000
    assert client.get_model("lstm").active_sessions == active  # nothing refused was left behind


@pytest.mark.parametrize("field, value, words", [
    ("position", -1, "blob.header.position: -1 is not in [0, 2^63 - 1]"),
    ("position", 2**64, "blob.header.position"),
    ("pending", "zz", "blob.header.pending: must be hexadecimal"),
    ("pending", "41", "blob.header.pending: must be the first bytes of one UTF-8 character"),
    ("session_id", None, "blob.header.session_id: must be a string"),
])
def test_the_repros_name_the_field(client, field, value, words):
    list(client.stream("lstm", ["abc"], session_id="repro"))
    blob = client.snapshot_session("repro").blob
    client.close_session("repro")
    header, state = unpack(blob)
    tensors = b"".join(np.ascontiguousarray(a, "<f4").tobytes() for a in state.values())
    error = status_of(lambda: client.restore_session(signed(json.dumps(header | {field: value}).encode(), tensors)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), error.details()
    assert status_of(lambda: client.close_session("repro")).code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("shape", [[1], [0, 64]])
def test_a_state_of_another_shape_is_refused(client, shape):
    list(client.stream("lstm", ["abc"], session_id="shaped"))
    header, state = unpack(client.snapshot_session("shaped").blob)
    client.close_session("shaped")
    name = header["state"][0]["name"]
    state[name] = np.zeros(shape, np.float32)
    error = status_of(lambda: client.restore_session(pack({k: v for k, v in header.items() if k != "state"}, state)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "blob.header.state[0].shape" in error.details(), error.details()


def test_a_state_that_is_not_finite_is_refused(client):
    list(client.stream("lstm", ["abc"], session_id="nan"))
    header, state = unpack(client.snapshot_session("nan").blob)
    client.close_session("nan")
    name = header["state"][-1]["name"]
    state[name] = state[name].copy()
    state[name].flat[3] = np.nan
    error = status_of(lambda: client.restore_session(pack({k: v for k, v in header.items() if k != "state"}, state)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and f"blob.state.{name}" in error.details(), error.details()


def test_with_a_snapshot_key_only_signed_blobs_restore(make_server, client, tmp_path):
    (tmp_path / "snapshot.key").write_bytes(b"a secret of at least sixteen bytes\n")
    running = make_server(snapshot_key=str(tmp_path / "snapshot.key"))
    list(client.stream("lstm", ["abc"], session_id="unsigned"))
    unsigned = client.snapshot_session("unsigned").blob  # a server without the key: a plain checksum
    client.close_session("unsigned")
    with running.client() as keyed:
        list(keyed.stream("lstm", ["abc"], session_id="signed"))
        blob = keyed.snapshot_session("signed").blob
        keyed.close_session("signed")
        assert keyed.restore_session(blob).position == 3
        keyed.close_session("signed")
        header, state = unpack(blob[:-DIGEST] + hashlib.sha256(blob[:-DIGEST]).digest())
        for forged in (unsigned, pack({k: v for k, v in header.items() if k != "state"}, state)):
            error = status_of(lambda: keyed.restore_session(forged))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "--snapshot-key" in error.details()
