"""Wiring: repository, sessions and service behind a grpc.aio server with health, reflection and a
graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rnnserve.errors import UsageError
from rnnserve.inference import grpc_service_pb2, grpc_service_pb2_grpc
from rnnserve.server import logs
from rnnserve.server.api.completions import Completions
from rnnserve.server.api.decoding import UndecodableMessages
from rnnserve.server.api.http_identity import tls_context
from rnnserve.server.api.in_flight import InFlight
from rnnserve.server.api.kserve import KServeServicer
from rnnserve.server.api.kserve_rest import KServeRest
from rnnserve.server.api.native import NativeServicer
from rnnserve.server.api.native_http import NativeHttp
from rnnserve.server.api.page import page_routes
from rnnserve.server.api.websocket import WebSocketStreams
from rnnserve.server.config import ServerConfig
from rnnserve.server.inputs import Inputs
from rnnserve.server.metrics import Metrics, MetricsServer
from rnnserve.server.native_front.calls import NativeFront, method_handlers
from rnnserve.server.native_front.plain_steps import PlainSteps
from rnnserve.server.repository import Repository
from rnnserve.server.security import CertificateSubjects, TokenCheck, load_tokens, server_credentials
from rnnserve.server.service import InferenceService
from rnnserve.server.sessions import SessionRegistry
from rnnserve.server.snapshots import Snapshots
from rnnserve.server.store import StateStore
from rnnserve.server.tensors import TensorService
from rnnserve.v1 import rnnserve_pb2, rnnserve_pb2_grpc

log = logging.getLogger(__name__)

SHUTDOWN_MARGIN_S = 2.0  # after the grace period, the most time calls have to send the shutdown's message
SERVICE_NAME = rnnserve_pb2.DESCRIPTOR.services_by_name["RnnServe"].full_name
STORE_SERVICE_NAME = "rnnserve.StateStore"  # its health: NOT_SERVING while the state store takes no writes
KSERVE_SERVICE_NAME = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVING_NAMES = ("", SERVICE_NAME, KSERVE_SERVICE_NAME)  # the health of the whole server and of what it serves


@dataclass
class App:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    repository: Repository
    sessions: SessionRegistry
    kserve: KServeServicer
    in_flight: InFlight
    metrics_server: MetricsServer | None
    http: HttpSide | None = None
    native_front: NativeFront | None = None

    async def stop(self, grace_s: float) -> None:
        """Stops taking calls, lets in-flight ones finish for `grace_s`, ends the rest with UNAVAILABLE and a
        message that says why, and frees everything."""
        self.kserve.serving = False
        await self.health.enter_graceful_shutdown()
        if self.native_front is not None:
            self.native_front.refuse_new_calls("the server is shutting down: retry once it is back, or on another replica")
        if self.http is not None:
            await self.http.site.stop()  # no new connections; the open WebSockets are in flight like gRPC's calls
        # gRPC's own deadline comes later than ours, so the calls still open are ended with our message, not its own
        stopping = asyncio.create_task(self.server.stop(grace_s + SHUTDOWN_MARGIN_S))
        await self.in_flight.end_all(
            grace_s, f"the server is shutting down and this call did not finish within its {grace_s:g} s grace period: "
            "retry once it is back, or on another replica (with --state-store, sessions and sequences resume there)",
            SHUTDOWN_MARGIN_S,
        )
        await self.server.stop(0)  # what is left is not ours (health watches, reflection): it need not wait for the margin
        await stopping
        if self.native_front is not None:
            self.native_front.stop("the server is shutting down")
        if self.http is not None:
            await self.http.runner.cleanup()
        store = self.sessions.store
        await store.drain(self.sessions.live_sessions())  # every live session's latest state, for the servers that go on
        self.sessions.close_all()
        await store.close()
        await self.repository.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()


@dataclass
class HttpSide:
    """--http-port: aiohttp's server for WebSocket streams and KServe v2 REST, in this event loop."""

    runner: web.AppRunner
    site: web.SockSite
    port: int


def http_socket(config: ServerConfig) -> socket.socket | None:
    """--http-port's socket, bound before the models load (as gRPC's port is), or None without one."""
    if config.http_port < 0:
        return None
    sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as every server's: a restart need not wait out TIME_WAIT
    if config.workers > 1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((config.host, config.http_port))
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {config.host}:{config.http_port} (--http-port): {err.strerror}: choose another port, or stop what holds it") from None
    return sock


async def start(config: ServerConfig, io_binding: bool | None = None) -> App:
    """Binds the ports, loads every model and starts serving; returns once serving. The ports are bound first, so
    a busy port is reported at once, before minutes of model loading."""
    metrics = Metrics()
    interceptors: list[grpc.aio.ServerInterceptor] = [UndecodableMessages(metrics)]
    grants = None
    try:
        if config.auth_tokens:
            grants = load_tokens(config.auth_tokens)
            interceptors.append(TokenCheck(grants))
        elif config.tls_client_ca:  # under mutual TLS, sessions belong to the client certificate's subject
            interceptors.append(CertificateSubjects())
        credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca) if config.tls_cert else None
    except ValueError as err:
        raise UsageError(str(err)) from None
    server = grpc.aio.server(interceptors=interceptors, options=channel_options(config))
    address = f"{config.host}:{config.port}"
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise UsageError(
            f"cannot listen on {address}: the port is in use (another server?) or the address is not this machine's: "
            "choose another --port, or stop what holds it"
        )
    sock = native_front = None
    try:
        sock = http_socket(config)
        if config.native_port >= 0:
            native_front = NativeFront.bind(f"{config.host}:{config.native_port}", channel_options(config), metrics)
        return await _serve_on(server, port, sock, native_front, grants, config, io_binding, metrics)
    except BaseException:
        await server.stop(None)
        if sock is not None:
            sock.close()
        if native_front is not None:
            native_front.stop("the server did not start")
        raise


async def _serve_on(server: grpc.aio.Server, port: int, sock: socket.socket | None, native_front: NativeFront | None, grants,
                    config: ServerConfig, io_binding: bool | None, metrics: Metrics) -> App:
    key = snapshot_key(config.snapshot_key)  # before minutes of model loading
    repository = Repository.load(config, io_binding, metrics)
    repository.start()
    inputs = Inputs(config)
    in_flight = InFlight()
    snapshots = Snapshots(repository, key)
    health_servicer = health.aio.HealthServicer()
    store = None
    if config.state_store:

        def store_health(up: bool) -> None:  # the store's own health service: the server stays SERVING without it
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            asyncio.ensure_future(health_servicer.set(STORE_SERVICE_NAME, status))

        store = StateStore(
            config.state_store, config.session_ttl_s, config.state_lease_s, config.state_write_interval_ms / 1000, snapshots,
            metrics, on_health=store_health,
        )
    sessions = SessionRegistry(config.session_ttl_s, snapshots, store)
    native = NativeServicer(repository, InferenceService(sessions, inputs), snapshots, metrics, in_flight)
    rnnserve_pb2_grpc.add_RnnServeServicer_to_server(native, server)
    tensors = TensorService(sessions, inputs)
    kserve = KServeServicer(repository, tensors, config, metrics, in_flight)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(kserve, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        reflection.enable_server_reflection(
            [SERVICE_NAME, KSERVE_SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
    metrics_server = None
    if config.metrics_port >= 0:
        try:
            metrics_server = metrics.serve(config.metrics_host, config.metrics_port)
        except OSError as err:
            await repository.close()
            raise UsageError(f"cannot serve metrics on {config.metrics_host}:{config.metrics_port}: {err.strerror}") from None
    http = None
    if sock is not None:
        routes = [*WebSocketStreams(native, in_flight, grants, config.max_message_bytes, config.keepalive_time_s).routes(),
                  *KServeRest(kserve, grants).routes(), *Completions(native, grants).routes(), *NativeHttp(native, grants).routes(),
                  *page_routes()]
        http = await http_side(sock, routes, config)
    if native_front is not None:
        native_front.serve(method_handlers((rnnserve_pb2_grpc.add_RnnServeServicer_to_server, native),
                                           (grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, kserve)),
                           kserve, PlainSteps(repository, tensors, config, metrics))
    await server.start()
    for name in (*SERVING_NAMES, *((STORE_SERVICE_NAME,) if config.state_store else ())):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    def engine_stopped(model: str) -> None:  # it serves nothing more: the server is not healthy, so it gets restarted
        for name in SERVING_NAMES:
            asyncio.ensure_future(health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING))

    for model in repository.all():
        model.batcher.on_failure = engine_stopped
    return App(server, port, health_servicer, repository, sessions, kserve, in_flight, metrics_server, http, native_front)


async def http_side(sock: socket.socket, routes: list[web.RouteDef], config: ServerConfig) -> HttpSide:
    application = web.Application(client_max_size=config.max_message_bytes)
    application.add_routes(routes)
    runner = web.AppRunner(application, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_MARGIN_S)  # calls: --log-format json
    await runner.setup()
    context = tls_context(config.tls_cert, config.tls_key, config.tls_client_ca) if config.tls_cert else None
    site = web.SockSite(runner, sock, ssl_context=context)
    await site.start()
    return HttpSide(runner, site, sock.getsockname()[1])


MIN_SNAPSHOT_KEY_BYTES = 16


def snapshot_key(path: str) -> bytes | None:
    """--snapshot-key's secret (the file's bytes, less surrounding whitespace), or None without one."""
    if not path:
        return None
    try:
        key = open(path, "rb").read().strip()
    except OSError as err:
        raise UsageError(f"--snapshot-key {path}: {err.strerror}") from None
    if len(key) < MIN_SNAPSHOT_KEY_BYTES:
        raise UsageError(
            f"--snapshot-key {path}: {len(key)} bytes is too short a secret; use at least {MIN_SNAPSHOT_KEY_BYTES} "
            "(e.g. head -c 32 /dev/urandom > snapshot.key)"
        )
    return key


def channel_options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC's limits, set explicitly (their defaults are documented with the flags)."""
    return [
        # SO_REUSEPORT only between our own workers: a stray second server on a busy port must fail,
        # not silently take half of its traffic.
        ("grpc.so_reuseport", int(config.workers > 1)),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(config.min_ping_interval_s * 1000)),
    ]


SIGHUP_IGNORED = (
    "SIGHUP ignored: rnnserve loads its repository once, at start; to serve new models, restart it "
    "(SIGTERM, then start it again)"
)


def listening_line(config: ServerConfig, app: App) -> str:
    """Where the server listens, what it serves, and how it is guarded: an operator reads on one line whether TLS,
    tokens and the state store are on, rather than finding out from a refused client."""
    models = ", ".join(f"{m.card.name}/{m.card.version}" for m in app.repository.all())
    providers = ", ".join(app.repository.all()[0].runtime.providers)
    tls = "off"
    if config.tls_cert:
        tls = f"mutual (clients need a certificate from {config.tls_client_ca})" if config.tls_client_ca else "on"
    tokens = f"required ({config.auth_tokens})" if config.auth_tokens else "off"
    store = redacted(config.state_store) if config.state_store else "none"
    metrics = f"http://{config.metrics_host}:{app.metrics_server.port}/metrics" if app.metrics_server else "off"
    http = f"{'https' if config.tls_cert else 'http'}://{config.host}:{app.http.port} (a page at /, WebSocket streams at /v1/stream)" if app.http else "off"
    native = f" — native: {config.host}:{app.native_front.port}" if app.native_front else ""
    return (
        f"rnnserve listening on {config.host}:{app.port} (pid {os.getpid()}) — models: {models} — providers: {providers} — "
        f"TLS: {tls} — tokens: {tokens} — state store: {store} — metrics: {metrics} — HTTP: {http}{native}"
    )


def redacted(url: str) -> str:
    """A store URL without its password (redis://:secret@host → redis://:***@host)."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.partition("//")[2]:
        return url
    return head.rpartition(":")[0] + ":***@" + tail


async def serve(config: ServerConfig) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully. SIGHUP is logged and ignored."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, log.warning, SIGHUP_IGNORED)
    app = await start(config)
    stopped_engines: list[str] = []
    if config.workers > 1:  # a probe reaches one worker of N: one whose engine stopped stops, and the others with it
        # (in place of _serve_on's health hook: the shutdown turns health NOT_SERVING itself)

        def engine_stopped(model: str) -> None:
            stopped_engines.append(model)
            stopping.set()

        for model in app.repository.all():
            model.batcher.on_failure = engine_stopped
    # What loading made (modules, models, tokenizers) lives as long as the process: out of the collector's reach, a
    # full collection no longer walks it all and stalls every call (49 ms measured under 32 paced audio streams).
    gc.freeze()
    logs.announce(listening_line(config, app), event="listening", port=app.port)
    if app.metrics_server is not None:
        logs.announce(
            f"rnnserve metrics on http://{config.metrics_host}:{app.metrics_server.port}/metrics (pid {os.getpid()})",
            event="metrics", port=app.metrics_server.port,
        )
    await stopping.wait()
    logs.announce(f"rnnserve shutting down (in-flight calls have {config.grace_s:g} s to finish)", event="shutting_down")
    await app.stop(config.grace_s)
    if stopped_engines:
        raise SystemExit(f"rnnserve: model {stopped_engines[0]}'s engine stopped on an internal error (the log above has its "
                         "traceback): this worker stopped, and the other workers with it")


def run(config: ServerConfig) -> None:
    """The process entry point, for `rnnserve serve` and for each of its --workers: logging, the server, and
    one line and exit status 1 when it cannot start (a busy port, a device that cannot run, a bad model file)."""
    from rnnserve.server.runtime import DeviceUnavailable

    logs.setup(config.log_format, config.log_level)
    try:
        asyncio.run(serve(config))
    except (DeviceUnavailable, UsageError) as err:
        raise SystemExit(str(err)) from None
