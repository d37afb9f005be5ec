"""Wiring: repository, sessions and service behind a grpc.aio server with health, reflection and a
graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rnnserve.v1 import rnnserve_pb2, rnnserve_pb2_grpc
from server.api.native import NativeServicer
from server.config import ServerConfig
from server.repository import Repository
from server.service import InferenceService
from server.sessions import SessionRegistry

log = logging.getLogger(__name__)

SERVICE_NAME = rnnserve_pb2.DESCRIPTOR.services_by_name["RnnServe"].full_name


@dataclass
class App:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    repository: Repository
    sessions: SessionRegistry

    async def stop(self, grace_s: float) -> None:
        """Stops taking calls, lets in-flight ones finish for `grace_s`, cancels the rest, frees everything."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        self.sessions.close_all()
        await self.repository.close()


async def start(config: ServerConfig, io_binding: bool | None = None) -> App:
    """Loads every model and starts serving; returns once the port is bound."""
    repository = Repository.load(config, io_binding)
    repository.start()
    sessions = SessionRegistry(config.session_ttl_s)
    # SO_REUSEPORT only between our own workers: a stray second server on a busy port must fail,
    # not silently take half of its traffic.
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(config.workers > 1))])
    rnnserve_pb2_grpc.add_RnnServeServicer_to_server(NativeServicer(InferenceService(repository, sessions, config)), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    try:
        port = server.add_insecure_port(f"{config.host}:{config.port}")
    except RuntimeError:
        port = 0
    if port == 0:
        await repository.close()
        raise SystemExit(f"cannot listen on {config.host}:{config.port}: the port is in use or the address is not this machine's")
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return App(server, port, health_servicer, repository, sessions)


def announce(line: str) -> None:
    """One write per line, so the lines of --workers sharing one stdout pipe never interleave (print may write
    the text and its newline apart)."""
    os.write(sys.stdout.fileno(), (line + "\n").encode())


async def serve(config: ServerConfig) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully."""
    app = await start(config)
    models = ", ".join(f"{m.card.name}/{m.card.version}" for m in app.repository.all())
    providers = ", ".join(app.repository.all()[0].runtime.providers)
    announce(f"rnnserve listening on {config.host}:{app.port} (pid {os.getpid()}) — models: {models} — providers: {providers}")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    announce(f"rnnserve shutting down (in-flight calls have {config.grace_s:g} s to finish)")
    await app.stop(config.grace_s)


def run(config: ServerConfig) -> None:
    """The process entry point, for `rnnserve serve` and for each of its --workers: logging, the server, and
    a clear exit when the requested device cannot run."""
    from server.runtime import DeviceUnavailable

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s pid {os.getpid()} %(name)s: %(message)s")
    try:
        asyncio.run(serve(config))
    except DeviceUnavailable as err:
        raise SystemExit(str(err)) from None
