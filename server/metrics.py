"""Prometheus metrics: what the server did (requests, steps, batches, sessions) for operators to scrape.

Names follow Triton's `nv_inference_*` metrics where Triton has a counterpart, so its dashboards need only
the `_total` suffix that Prometheus client libraries give counters; what Triton lacks (sequence life
cycles, slots, batch sizes, latency histograms) is `rnnserve_*`. Each server has a registry of its own, so
several servers can share a process (the tests do).
"""

from __future__ import annotations

import socketserver
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rnnserve.server.statistics import InferenceStatistics

prometheus_client.disable_created_metrics()  # no `_created` series beside every counter

MODEL = ("model", "version")
SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self._requests: dict[tuple[str, ...], Counter] = {}  # (model, version, api, method, failure) → its series
        self.request_success = Counter(
            "nv_inference_request_success", "Inference requests that succeeded (a streamed message counts as one).",
            [*MODEL, "api", "method"], registry=registry,
        )
        self.request_failure = Counter(
            "nv_inference_request_failure", "Inference requests that failed, by the gRPC status they got.",
            [*MODEL, "api", "method", "reason"], registry=registry,
        )
        self.inference_count = Counter(
            "nv_inference_count", "Sequence steps (tokens) run, summed over batches.", MODEL, registry=registry
        )
        self.exec_count = Counter("nv_inference_exec_count", "onnxruntime calls (batches) run.", MODEL, registry=registry)
        self.queue_duration_us = Counter(
            "nv_inference_queue_duration_us", "Microseconds steps waited in the batcher's queue, summed.", MODEL, registry=registry
        )
        self.compute_infer_duration_us = Counter(
            "nv_inference_compute_infer_duration_us", "Microseconds spent in onnxruntime calls, summed.", MODEL, registry=registry
        )
        self.pending = Gauge(
            "nv_inference_pending_request_count", "Steps waiting in the batcher's queue now.", MODEL, registry=registry
        )
        self.step_seconds = Histogram(
            "rnnserve_step_duration_seconds", "Duration of one onnxruntime call (one batch of steps).", MODEL,
            buckets=SECONDS, registry=registry,
        )
        self.queue_seconds = Histogram(
            "rnnserve_queue_duration_seconds", "Time a step waited in the batcher's queue before its call began.", MODEL,
            buckets=SECONDS, registry=registry,
        )
        self.batch_size = Histogram(
            "rnnserve_batch_size", "Sequences in one onnxruntime call.", MODEL, buckets=BATCH_SIZES, registry=registry
        )
        self.tokens_generated = Counter("rnnserve_tokens_generated", "Tokens sampled by Generate.", MODEL, registry=registry)
        self.steps_at_once = Counter(
            "rnnserve_steps_run_at_once", "Lone steps that found the engine idle and ran at once on the event loop, "
            "without the hand-overs to and from the engine thread (counted in the batches too, as batches of one).",
            MODEL, registry=registry,
        )
        self.plain_steps = Counter(
            "rnnserve_native_plain_steps", "ModelStreamInfer sequence steps that the native front end (--native-port) "
            "read and answered itself, a batch at a time, without a protobuf message or task per request.",
            MODEL, registry=registry,
        )
        session_kind = (*MODEL, "kind")  # call (one request), named (a native session), sequence (a KServe sequence)
        self.sessions_active = Gauge("rnnserve_sessions_active", "Sessions that hold a slot now.", session_kind, registry=registry)
        self.sessions_started = Counter("rnnserve_sessions_started", "Sessions started.", session_kind, registry=registry)
        self.sessions_ended = Counter(
            "rnnserve_sessions_ended",
            "Sessions ended other than by expiry: end (the call or sequence_end), closed (CloseSession), "
            "restarted (sequence_start on a live sequence), stream_closed (its ModelStreamInfer ended), shutdown, "
            "superseded (the state store had a later state, written by another server), lost (another server took it).",
            [*session_kind, "reason"], registry=registry,
        )
        self.sessions_expired = Counter(
            "rnnserve_sessions_expired", "Sessions freed after the idle time-out.", session_kind, registry=registry
        )
        self.snapshots = Counter(
            "rnnserve_snapshots", "Session snapshots: taken (SnapshotSession, ForkSession, state store writes) and restored (RestoreSession, "
            "ForkSession, state store loads).",
            [*MODEL, "event"], registry=registry,
        )
        self.resumes = Counter(
            "rnnserve_resumes",
            "Sessions resumed, by where their state came from: local (live in this process) or store (loaded from the "
            "state store). A KServe sequence counts when it is loaded from the store.",
            [*MODEL, "source"], registry=registry,
        )
        self.replayed_chunks = Counter(
            "rnnserve_replayed_chunks",
            "Stream messages and KServe sequence requests that a resuming client sent again because the restored state "
            "was behind the position it had acknowledged (the state store had not been written when its last server stopped).",
            MODEL, registry=registry,
        )
        self.store_writes = Counter(
            "rnnserve_state_store_writes", "Session states written to the state store, by result (ok; failed: not reached; refused: the session "
            "is another server's now).", ["result"],
            registry=registry,
        )
        self.undecodable_messages = Counter(
            "rnnserve_undecodable_messages", "Messages that were not the protobuf their method takes (answered "
            "INVALID_ARGUMENT).", ["method"], registry=registry,
        )
        self.store_lost = Counter(
            "rnnserve_state_store_lost_sessions", "Sessions this server stopped serving because another server took them "
            "over (its hold ran out, or the store forgot it): their writes or renewals were refused.", registry=registry,
        )
        self.store_reads = Counter(
            "rnnserve_state_store_reads", "Resumes that looked in the state store, by result (found, missing).", ["result"],
            registry=registry,
        )
        self.store_up = Gauge(
            "rnnserve_state_store_up", "1 while the state store answers, 0 once two round trips in a row failed (serving "
            "from memory).",
            registry=registry,
        )
        self.store_latency = Histogram(
            "rnnserve_state_store_write_seconds", "Time to write one session's state to the state store.", buckets=SECONDS,
            registry=registry,
        )
        self.slots_in_use = Gauge("rnnserve_slots_in_use", "Rows of the state slab in use.", MODEL, registry=registry)
        self.slots_capacity = Gauge("rnnserve_slots_capacity", "Rows of the state slab (--max-sessions).", MODEL, registry=registry)
        self.engine_up = Gauge(
            "rnnserve_engine_up", "1 while the model's engine serves; 0 once it stopped for good on a fault of its own "
            "(the model answers UNAVAILABLE until the server restarts).", MODEL, registry=registry,
        )

    def request_done(self, model: str, version: str, api: str, method: str, failure: str = "", requests: int = 1) -> None:
        """Counts requests (one, or a multiplexed message's many): successes, or failures with their status. The
        labelled series are looked up once."""
        key = (model, version, api, method, failure)
        counter = self._requests.get(key)
        if counter is None:
            if failure:
                counter = self.request_failure.labels(model, version, api, method, failure)
            else:
                counter = self.request_success.labels(model, version, api, method)
            self._requests[key] = counter
        counter.inc(requests)

    def model(self, name: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, (name, version))

    def serve(self, host: str, port: int) -> MetricsServer:
        """/metrics over HTTP on a thread of its own; every other path is 404, so an HTTP probe pointed at a
        wrong path (a health check, say) fails instead of passing on the metrics page."""
        metrics_page = prometheus_client.make_wsgi_app(self.registry)

        def app(environ, start_response):
            if environ.get("PATH_INFO") == "/metrics":
                return metrics_page(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: the metrics are at /metrics\n"]

        server = make_server(host, port, app, _ThreadingServer, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
        return MetricsServer(server, thread)


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # a scrape every few seconds is not worth a log line
        pass


class ModelMetrics:
    """One model version's series, bound once so the hot path only adds and observes."""

    def __init__(self, metrics: Metrics, labels: tuple[str, str]):
        self._metrics = metrics
        self.labels = labels
        self._inference_count = metrics.inference_count.labels(*labels)
        self._exec_count = metrics.exec_count.labels(*labels)
        self._queue_us = metrics.queue_duration_us.labels(*labels)
        self._compute_us = metrics.compute_infer_duration_us.labels(*labels)
        self._step_seconds = metrics.step_seconds.labels(*labels)
        self._queue_seconds = metrics.queue_seconds.labels(*labels)
        self._batch_size = metrics.batch_size.labels(*labels)
        self.tokens_generated = metrics.tokens_generated.labels(*labels)
        self.steps_at_once = metrics.steps_at_once.labels(*labels)
        self.plain_steps = metrics.plain_steps.labels(*labels)
        self.statistics = InferenceStatistics()  # Triton's ModelStatistics for this version

    def watch(self, pending, slots_in_use, capacity: int, serving) -> None:
        """Gauges read when scraped: the batcher's queue, the slab's rows, and whether the engine still serves."""
        self._metrics.pending.labels(*self.labels).set_function(pending)
        self._metrics.engine_up.labels(*self.labels).set_function(serving)
        self._metrics.slots_in_use.labels(*self.labels).set_function(slots_in_use)
        self._metrics.slots_capacity.labels(*self.labels).set(capacity)

    def batch(self, steps: int, rows: int, waits_s: list[float], infer_s: float, output_s: float) -> None:
        """One onnxruntime call of `rows` sequences and `steps` steps in all, after each row's queue wait: `infer_s`
        in onnxruntime, `output_s` ranking and sampling its outputs."""
        self.statistics.execution(rows, waits_s, infer_s, output_s)
        call_s = infer_s + output_s
        self._exec_count.inc()
        self._inference_count.inc(steps)
        self._batch_size.observe(rows)
        self._step_seconds.observe(call_s)
        self._compute_us.inc(call_s * 1e6)
        for wait in waits_s:
            self._queue_seconds.observe(wait)
        self._queue_us.inc(sum(waits_s) * 1e6)

    def session_started(self, kind: str) -> None:
        self._metrics.sessions_started.labels(*self.labels, kind).inc()
        self._metrics.sessions_active.labels(*self.labels, kind).inc()

    def snapshot_taken(self) -> None:
        self._metrics.snapshots.labels(*self.labels, "taken").inc()

    def snapshot_restored(self) -> None:
        self._metrics.snapshots.labels(*self.labels, "restored").inc()

    def resumed(self, source: str) -> None:
        self._metrics.resumes.labels(*self.labels, source).inc()

    def chunk_replayed(self) -> None:
        self._metrics.replayed_chunks.labels(*self.labels).inc()

    def session_ended(self, kind: str, reason: str) -> None:
        if reason == "expired":
            self._metrics.sessions_expired.labels(*self.labels, kind).inc()
        else:
            self._metrics.sessions_ended.labels(*self.labels, kind, reason).inc()
        self._metrics.sessions_active.labels(*self.labels, kind).dec()


class MetricsServer:
    def __init__(self, server: WSGIServer, thread: threading.Thread):
        self._server = server
        self._thread = thread
        self.port = server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
