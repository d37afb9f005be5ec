"""Sessions that outlive their slot: a snapshot is a session's whole state as a self-describing, integrity-checked
blob, which restores into a live session here or on another server with the same model file, or forks into a
second session that continues independently.

The blob: b"RNNSNAP\\0", the header's length (4 bytes, little-endian), the header (JSON: format version, model name,
version and the SHA-256 of its files, the session's position in tokens, the bytes of a character not yet complete,
each state tensor's name and shape), every state tensor's row (float32, little-endian, in the header's order), and
the SHA-256 of everything before it.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid

import numpy as np

from rnnserve.server.errors import FailedPrecondition, InvalidArgument
from rnnserve.server.repository import Model, Repository
from rnnserve.server.sessions import Session, SessionRegistry

MAGIC = b"RNNSNAP\0"
FORMAT = 1
DIGEST = 32


def pack(header: dict, state: dict[str, np.ndarray]) -> bytes:
    header = header | {"format": FORMAT, "state": [{"name": n, "shape": list(a.shape), "dtype": "float32"} for n, a in state.items()]}
    head = json.dumps(header, ensure_ascii=False).encode()
    body = MAGIC + struct.pack("<I", len(head)) + head + b"".join(np.ascontiguousarray(a, "<f4").tobytes() for a in state.values())
    return body + hashlib.sha256(body).digest()


def unpack(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """The header and the state of a blob; INVALID_ARGUMENT, saying what is wrong, for anything else."""
    if len(blob) < len(MAGIC) + 4 + DIGEST or not blob.startswith(MAGIC):
        raise InvalidArgument("blob", "is not a snapshot from SnapshotSession")
    body, digest = blob[:-DIGEST], blob[-DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise InvalidArgument("blob", "is damaged: its checksum does not match (changed or cut short in transit?)")
    (length,) = struct.unpack_from("<I", body, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(body[start : start + length])
        if header.get("format") != FORMAT:
            raise InvalidArgument("blob", f"is a format {header.get('format')!r} snapshot; this server reads format {FORMAT}")
        state, offset = {}, start + length
        for tensor in header["state"]:
            size = int(np.prod(tensor["shape"])) * 4
            state[tensor["name"]] = np.frombuffer(body[offset : offset + size], "<f4").reshape(tensor["shape"])
            offset += size
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidArgument("blob", f"has a malformed header: {err}") from None
    if offset != len(body):
        raise InvalidArgument("blob", "holds more or less state than its header says")
    return header, state


class Snapshots:
    def __init__(self, repository: Repository, sessions: SessionRegistry):
        self._repository = repository
        self._sessions = sessions

    def find(self, session_id: str, model: Model | None, sequence_id: str) -> Session:
        """A live named session, or a live KServe sequence of `model`."""
        if sequence_id:
            return self._sessions.live_sequence(model, sequence_id)
        return self._sessions.named(session_id)

    async def snapshot(self, session: Session) -> bytes:
        """The session as it is after every step queued before this; it goes on unchanged."""
        model = session.model
        state = await model.batcher.read_state(session.slot)
        header = {
            "model": model.card.name, "version": model.card.version, "model_sha256": model.digest, "position": session.position,
            "pending": (session.decoder.pending() if session.decoder else b"").hex(),
        }
        header["session_id"], header["sequence_id"] = session.ids
        model.metrics.snapshot_taken()
        return pack(header, state)

    async def restore(self, blob: bytes, session_id: str = "", sequence_id: str = "") -> Session:
        header, state = unpack(blob)
        model = self._repository.get(header["model"], header["version"])
        if model.digest != header["model_sha256"]:
            raise FailedPrecondition(
                f"the snapshot was taken with a different file for model {header['model']!r} version {header['version']} "
                f"(SHA-256 {header['model_sha256'][:12]}…, this server's is {model.digest[:12]}…): restore it where that file is served"
            )
        if not session_id and not sequence_id:  # under the id it had
            session_id, sequence_id = header["session_id"], header["sequence_id"]
        session = await self._sessions.restored(
            model, session_id, sequence_id, int(header["position"]), bytes.fromhex(header["pending"]),
            lambda slot: model.batcher.write_state(slot, state),
        )
        model.metrics.snapshot_restored()
        return session

    async def fork(self, session: Session, session_id: str = "", sequence_id: str = "") -> Session:
        """A copy under a new id (a new named session id is made up when none is given)."""
        if not session_id and not sequence_id:
            session_id = uuid.uuid4().hex
        return await self.restore(await self.snapshot(session), session_id, sequence_id)
