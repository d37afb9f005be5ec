"""Sessions that outlive their slot: a snapshot is a session's whole state as a self-describing, integrity-checked
blob, which restores into a live session here or on another server with the same model file, or forks into a
second session that continues independently.

The blob: b"RNNSNAP\\0", the header's length (4 bytes, little-endian), the header (JSON: format version, model name,
version and the SHA-256 of its files, the session's position in tokens, the bytes of a character not yet complete,
each state tensor's name and shape), every state tensor's row (float32, little-endian, in the header's order), and
a digest of everything before it: its SHA-256, or with `--snapshot-key` its HMAC-SHA256 under that key.

A restore trusts nothing in a blob: the header is checked against a schema (every key, type and range) and the
state against the model (each tensor exactly its per-row shape, every value finite) before any session exists;
each failure is INVALID_ARGUMENT naming the field. A checksum only catches damage: without a key anyone can
write a blob that passes these checks and holds a state of their choosing, for a session of their own. With a key,
only servers that share it can make a blob that restores.
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import json
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rnnserve.server.errors import FailedPrecondition, InvalidArgument
from rnnserve.server.repository import Model, Repository

if TYPE_CHECKING:  # the registry makes sessions of snapshots: it imports this module
    from rnnserve.server.sessions import Session

MAGIC = b"RNNSNAP\0"
FORMAT = 1
DIGEST = 32
MAX_POSITION = 2**63 - 1
MAX_ID_CHARS = 1024
MAX_UTF8_PENDING_BYTES = 3  # a UTF-8 character is at most 4 bytes: at most 3 of them wait for the rest
MAX_PENDING_BYTES = 4 * 65536  # an audio model's samples that do not fill a step (float32), for steps up to 65536
HEADER = {  # key → the type its value must have
    "format": int, "model": str, "version": str, "model_sha256": str, "position": int, "pending": str,
    "session_id": str, "sequence_id": str, "state": list,
}


def _digest(body: bytes, key: bytes | None) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest() if key else hashlib.sha256(body).digest()


def pack(header: dict, state: dict[str, np.ndarray], key: bytes | None = None) -> bytes:
    header = header | {"format": FORMAT, "state": [{"name": n, "shape": list(a.shape), "dtype": "float32"} for n, a in state.items()]}
    head = json.dumps(header, ensure_ascii=False).encode()
    body = MAGIC + struct.pack("<I", len(head)) + head + b"".join(np.ascontiguousarray(a, "<f4").tobytes() for a in state.values())
    return body + _digest(body, key)


def unpack(blob: bytes, key: bytes | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The header and the state of a blob whose every header field is of its type and in its range; INVALID_ARGUMENT,
    naming the field, for anything else. (Whether the state fits a model is `check_fits`'s.)"""
    if len(blob) < len(MAGIC) + 4 + DIGEST or not blob.startswith(MAGIC):
        raise InvalidArgument("blob", "is not a snapshot from SnapshotSession")
    body, digest = blob[:-DIGEST], blob[-DIGEST:]
    if not hmac.compare_digest(_digest(body, key), digest):
        raise InvalidArgument("blob", (
            "is not signed with this server's --snapshot-key (forged, changed, or taken on a server with another key)" if key
            else "is damaged: its checksum does not match (changed or cut short in transit?)"
        ))
    (length,) = struct.unpack_from("<I", body, len(MAGIC))
    start = len(MAGIC) + 4
    if start + length > len(body):
        raise InvalidArgument("blob", f"says its header is {length} bytes, more than the blob holds")
    try:
        header = json.loads(body[start : start + length])
    except ValueError as err:
        raise InvalidArgument("blob.header", f"is not JSON: {err}") from None
    _check_header(header)
    state, offset = {}, start + length
    for index, tensor in enumerate(header["state"]):
        size = math.prod(tensor["shape"]) * 4
        if offset + size > len(body):
            raise InvalidArgument(f"blob.header.state[{index}].shape", "is larger than the state the blob holds")
        state[tensor["name"]] = np.frombuffer(body[offset : offset + size], "<f4").reshape(tensor["shape"])
        offset += size
    if offset != len(body):
        raise InvalidArgument("blob", "holds more state than its header says")
    return header, state


def _check_header(header) -> None:
    if not isinstance(header, dict):
        raise InvalidArgument("blob.header", f"must be a JSON object, not {type(header).__name__}")
    if header.get("format") != FORMAT:
        raise InvalidArgument("blob.header.format", f"is {header.get('format')!r}; this server reads format {FORMAT} snapshots")
    if missing := sorted(HEADER.keys() - header.keys()):
        raise InvalidArgument("blob.header", f"lacks {', '.join(missing)}")
    if extra := sorted(header.keys() - HEADER.keys()):
        raise InvalidArgument("blob.header", f"has keys a snapshot does not: {', '.join(map(str, extra))}")
    for name, kind in HEADER.items():
        value = header[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidArgument(f"blob.header.{name}", f"must be a {_KIND[kind]}, not {json.dumps(value)[:40]}")
    if not 0 <= header["position"] <= MAX_POSITION:
        raise InvalidArgument("blob.header.position", f"{header['position']} is not in [0, 2^63 - 1]")
    if len(header["model_sha256"]) != 64:
        raise InvalidArgument("blob.header.model_sha256", "must be 64 hexadecimal digits")
    for name in ("session_id", "sequence_id"):
        if len(header[name]) > MAX_ID_CHARS:
            raise InvalidArgument(f"blob.header.{name}", f"is longer than {MAX_ID_CHARS} characters")
    if bool(header["session_id"]) == bool(header["sequence_id"]):
        raise InvalidArgument("blob.header", "must name one session_id or one sequence_id")
    _check_pending(header["pending"])
    for index, tensor in enumerate(header["state"]):
        field = f"blob.header.state[{index}]"
        if not isinstance(tensor, dict) or tensor.keys() != {"name", "shape", "dtype"}:
            raise InvalidArgument(field, "must be an object of name, shape and dtype")
        if not isinstance(tensor["name"], str) or tensor["dtype"] != "float32":
            raise InvalidArgument(field, "must name its tensor (a string), of dtype float32")
        shape = tensor["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape):
            raise InvalidArgument(f"{field}.shape", f"must be a list of dimensions, not {json.dumps(shape)[:40]}")


def _check_pending(pending: str) -> None:
    """Hexadecimal, and no longer than any model's pending input can be (what it must be is the model's: check_fits)."""
    try:
        raw = bytes.fromhex(pending)
    except ValueError:
        raise InvalidArgument("blob.header.pending", "must be hexadecimal (input read but not yet stepped)") from None
    if len(raw) > MAX_PENDING_BYTES:
        raise InvalidArgument("blob.header.pending", f"is {len(raw)} bytes: no model waits on more than {MAX_PENDING_BYTES}")


def _check_pending_fits(pending: bytes, model: Model) -> None:
    """A token model's: the first bytes of one UTF-8 character, at most 3. An audio model's: float32 samples, finite,
    fewer than a step. Anything else would be input no client sent."""
    spec = model.card.input
    if spec.values:
        samples = np.frombuffer(pending, "<f4") if len(pending) % 4 == 0 else None
        if samples is None or len(samples) >= (spec.step[0] if spec.sample_rate else 1) or not np.isfinite(samples).all():
            raise InvalidArgument("blob.header.pending", f"must be fewer than a step of finite float32 samples for model {model.card.name!r}")
        return
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        whole = decoder.decode(pending)
    except UnicodeDecodeError:
        whole = "invalid"
    if len(pending) > MAX_UTF8_PENDING_BYTES or whole or decoder.getstate()[0] != pending:
        raise InvalidArgument("blob.header.pending", "must be the first bytes of one UTF-8 character, and no more")


_KIND = {int: "integer", str: "string", list: "list"}


def check_fits(header: dict, state: dict[str, np.ndarray], model: Model) -> None:
    """The state is exactly the model's: its tensors, in order, each of its per-row shape, every value finite."""
    expected = [(s.name, list(s.shape)) for s in model.card.state]
    got = [(t["name"], t["shape"]) for t in header["state"]]
    if [name for name, _ in got] != [name for name, _ in expected]:
        raise InvalidArgument(
            "blob.header.state", f"holds {[n for n, _ in got]}; model {model.card.name!r} has {[n for n, _ in expected]}"
        )
    for index, ((name, shape), (_, wanted)) in enumerate(zip(got, expected)):
        if shape != wanted:
            raise InvalidArgument(f"blob.header.state[{index}].shape", f"{name} is {shape}; a row of model {model.card.name!r} is {wanted}")
        if not np.isfinite(state[name]).all():
            raise InvalidArgument(f"blob.state.{name}", "holds values that are not finite (NaN or infinity): refused")
    _check_pending_fits(bytes.fromhex(header["pending"]), model)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A blob read and checked: the model it is of, its header and its state, ready to become a session."""

    model: Model
    header: dict
    state: dict[str, np.ndarray]


class Snapshots:
    """Sessions ⇄ blobs (the registry makes sessions of them: server/sessions.py)."""

    def __init__(self, repository: Repository, key: bytes | None = None):
        """`key`: --snapshot-key's, which signs every blob this server makes and must sign every blob it restores."""
        self._repository = repository
        self._key = key

    def header(self, blob: bytes) -> dict:
        """A blob's header, checked (to authorize its model before anything else)."""
        return unpack(blob, self._key)[0]

    async def snapshot(self, session: Session) -> bytes:
        """The session as it is after every step queued before this; it goes on unchanged."""
        model = session.model
        state = await model.batcher.read_state(session.slot)
        header = {
            "model": model.card.name, "version": model.card.version, "model_sha256": model.digest, "position": session.position,
            "pending": session.pending.hex(),
        }
        header["session_id"], header["sequence_id"] = session.ids
        model.metrics.snapshot_taken()
        return pack(header, state, self._key)

    def read(self, blob: bytes) -> Snapshot:
        """The blob, checked against its schema and against the model it names, as served here."""
        header, state = unpack(blob, self._key)
        model = self._repository.get(header["model"], header["version"])
        if model.digest != header["model_sha256"]:
            raise FailedPrecondition(
                f"the snapshot was taken with a different file for model {header['model']!r} version {header['version']} "
                f"(SHA-256 {header['model_sha256'][:12]}…, this server's is {model.digest[:12]}…): restore it where that file is served"
            )
        check_fits(header, state, model)
        return Snapshot(model, header, state)
