"""Server configuration: one frozen dataclass, from which `rnnserve serve` builds its flags."""

from __future__ import annotations

from dataclasses import dataclass

from rnnserve.options import check_choices, option
from rnnserve.server.logs import FORMATS, LEVELS


def parse_device(text: str) -> tuple[str, int]:
    """"cpu", "cuda" or "cuda:N" → (kind, index); anything else is a ValueError that says what is expected."""
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ValueError(f"--device {text!r}: expected cpu, cuda or cuda:N")
    return kind, int(index or 0)


@dataclass(frozen=True)
class ServerConfig:
    repository: str = option("models", "model repository: <repository>/<name>/<version>/model.onnx")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0 to accept remote clients)")
    port: int = option(50051, "port to listen on (0 picks a free port and prints it)")
    workers: int = option(1, "server processes sharing the port (SO_REUSEPORT), each with its own models and sessions")
    device: str = option("cpu", "cpu, cuda or cuda:N; cuda fails loudly if onnxruntime has no CUDA provider")
    max_sessions: int = option(256, "concurrent sessions per model version (the state slab's rows)")
    session_ttl_s: float = option(300.0, "how long a named session or KServe sequence may sit idle before it expires")
    max_input_tokens: int = option(8192, "largest prompt or stream chunk, in tokens")
    max_new_tokens: int = option(4096, "largest max_tokens a Generate request may ask for")
    max_batch: int = option(64, "most sequence steps run in one onnxruntime call")
    max_queue_delay_ms: float = option(0.0, "how long a step may wait for others to fill its batch (0: while 8 or more sessions are stepping, up to 1 ms "
        "for them; 3 ms when they step on 8 or more streams and at most 72 sessions are open)")
    threads: int = option(0, "onnxruntime intra-op threads per model (0: onnxruntime's default, one per core)")
    parallel_calls: int = option(
        1, "onnxruntime calls a wide batch (16 rows or more per call) runs as at once, on disjoint rows: for models of "
        "small operations that one call cannot spread over the cores (Silero VAD: --threads 1 --parallel-calls <cores>)"
    )
    grace_s: float = option(10.0, "on SIGTERM, how long in-flight calls may take to finish")
    http_port: int = option(
        -1, "port of the HTTP side, on --host with the same TLS, tokens and limits: WebSocket streams at /v1/stream, "
        "KServe v2 REST (health, metadata, inference) at /v2, OpenAI-compatible completions at /v1/completions (0 picks a free one; "
        "-1: none)",
    )
    native_port: int = option(
        -1, "a second port serving the same gRPC services (KServe v2 and rnnserve.v1, not health or reflection) through "
        "gRPC's C++ server, which costs the event loop far less per message: for many steps a second from one machine. "
        "Compiled on first use (apt-get install g++ pkg-config libgrpc++-dev); no TLS or tokens on it (0 picks a free "
        "one; -1: none)",
    )
    metrics_port: int = option(-1, "port of the Prometheus /metrics HTTP endpoint (0 picks a free one; -1: none)")
    metrics_host: str = option("127.0.0.1", "address the metrics endpoint listens on, apart from --host: metrics stay local unless asked")
    log_format: str = option("text", "text: lines for a person; json: one JSON object per line, and one per call", choices=FORMATS)
    log_level: str = option("info", "the least severe log lines written (calls are logged at info)", choices=LEVELS)
    tls_cert: str = option("", "PEM certificate chain: serve TLS on --port (with --tls-key)")
    tls_key: str = option("", "PEM private key of --tls-cert")
    tls_client_ca: str = option("", "PEM CA certificates: clients must show a certificate one of them signed (mutual TLS)")
    auth_tokens: str = option(
        "", "file of hashed bearer tokens, each with the models it may use: every call but health's needs one "
        "(make them with `rnnserve token`)"
    )
    state_store: str = option(
        "", "redis://HOST:PORT/DB: named sessions and KServe sequences are written there after every answer and resume on "
        "any server that shares it (pip install 'rnnserve[store]')"
    )
    state_lease_s: float = option(
        10.0, "with --state-store: how long a server's hold on a session outlives its last write or renewal (renewed while "
        "its stream is open); a store that is new or came back empty gives out no session for this long"
    )
    state_write_interval_ms: float = option(
        50.0, "with --state-store: the least time between two writes to the store; a busy server writes every session "
        "answered meanwhile in one, so the store costs less, and a server killed without warning loses at most this much "
        "(resumable clients replay it). 0: write as soon as the last write is done"
    )
    snapshot_key: str = option(
        "", "file holding a secret (at least 16 bytes) that signs every snapshot this server makes (HMAC-SHA256): only "
        "blobs signed with it restore, so clients cannot forge a session's state; servers sharing a --state-store share it"
    )
    reflection: bool = option(True, "serve gRPC reflection, which lets tools such as grpcurl list and call the APIs")
    max_message_bytes: int = option(16 * 2**20, "largest message in either direction; a larger one is answered RESOURCE_EXHAUSTED")
    max_concurrent_streams: int = option(1024, "calls in flight on one client connection (HTTP/2 streams); more wait for one to end")
    keepalive_time_s: float = option(60.0, "ping a connection that has been quiet this long, to find clients that are gone")
    keepalive_timeout_s: float = option(20.0, "close a connection whose ping has gone unanswered this long")
    min_ping_interval_s: float = option(10.0, "the most often a client may ping without calls; one that pings more often is cut off")

    def __post_init__(self):
        check_choices(self)
        parse_device(self.device)
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be a port number (0–65535; 0 picks a free one), not {self.port}")
        for name in ("http_port", "native_port", "metrics_port"):
            if getattr(self, name) > 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be a port number (0–65535), not {getattr(self, name)}")
            if getattr(self, name) < -1:
                raise ValueError(f"--{name.replace('_', '-')} must be a port, 0 (a free one) or -1 (none), not {getattr(self, name)}")
        if self.native_port >= 0 and (self.tls_cert or self.auth_tokens):
            raise ValueError(
                "--native-port carries neither TLS nor tokens: it checks no caller, so it cannot serve beside --tls-cert or "
                "--auth-tokens; serve it without them on a network only trusted clients reach, or leave it out"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together: the certificate chain and its private key")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key: clients are checked during a TLS handshake")
        if self.state_store and not self.state_store.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--state-store {self.state_store!r}: expected redis://HOST:PORT/DB (or rediss:// or unix://)")
        for name in ("keepalive_time_s", "keepalive_timeout_s", "min_ping_interval_s", "state_lease_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        for name in ("workers", "max_sessions", "max_input_tokens", "max_new_tokens", "max_batch", "max_message_bytes",
                     "max_concurrent_streams", "parallel_calls"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        for name in ("session_ttl_s", "max_queue_delay_ms", "threads", "grace_s", "state_write_interval_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, not {getattr(self, name)}")
