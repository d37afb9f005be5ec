"""ModelStreamInfer on --native-port. front.cc keeps each sequence's requests in order (one at a time reaches
Python), answers plain steps from the engine's arrays (plain_steps.py), and hands every other request here as
bytes with its ticket: it is answered as the servicer answers it on --port (KServeServicer.stream_answer), by its
ticket. The call ends once the client has sent all and every request is answered (front.cc tells), or when it is
cancelled, or at a message that is not protobuf; however it ends, the sequences it started end with it."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf.message import DecodeError

from rnnserve.inference import grpc_service_pb2 as pb
from rnnserve.server.api.kserve import KServeServicer
from rnnserve.server.api.status import internal_error

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
OK = grpc.StatusCode.OK


class StreamInferCall:
    """One ModelStreamInfer call. Its number is the owner of the sequences it starts (plain steps name it so)."""

    __slots__ = ("_front", "id", "_kserve", "_ended", "_workers", "_task")

    def __init__(self, front, call_id: int, kserve: KServeServicer):
        self._front, self.id, self._kserve = front, call_id, kserve
        self._ended: asyncio.Future = asyncio.get_running_loop().create_future()  # (status, details), once it ends
        self._workers: set[asyncio.Task] = set()
        self._task = asyncio.ensure_future(self._run())

    def message(self, data: bytes, ticket: int) -> None:
        """A request the servicer answers (not a plain step, or one deferred)."""
        worker = asyncio.ensure_future(self._answer(data, ticket))
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    def half_close(self) -> None:
        """Every request is answered and the client sends no more (front.cc says so only then)."""
        self._end(OK, "")

    def cancel(self) -> None:
        self._task.cancel()

    async def _answer(self, data: bytes, ticket: int) -> None:
        try:
            request = pb.ModelInferRequest.FromString(data)
        except DecodeError:
            return self._end(grpc.StatusCode.INVALID_ARGUMENT, self._front.undecodable(METHOD, pb.ModelInferRequest.DESCRIPTOR.full_name))
        try:
            response = await self._kserve.stream_answer(request, self.id)
        except Exception as err:  # stream_answer answers every error of a request: this is a fault of ours
            return self._end(grpc.StatusCode.INTERNAL, internal_error(METHOD, err))
        self._front.answer(self.id, ticket, response.SerializeToString())

    def _end(self, code: grpc.StatusCode, details: str) -> None:
        if not self._ended.done():
            self._ended.set_result((code, details))

    async def _run(self) -> None:
        """Lasts as long as the call, so that the shutdown finds it in flight (and ends it with its message)."""
        in_flight = self._kserve.in_flight
        code, details = grpc.StatusCode.CANCELLED, "cancelled"
        with in_flight.track():
            try:
                code, details = await self._ended
            except asyncio.CancelledError:
                if in_flight.ending:
                    code, details = grpc.StatusCode.UNAVAILABLE, in_flight.ending
            finally:
                for worker in self._workers:
                    worker.cancel()
                self._kserve.end_stream(self.id)
                self._front.finish(self.id, code, details)
