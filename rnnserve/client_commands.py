"""The `rnnserve` commands that talk to a running server: generate, stream, infer, models, health, snapshot,
restore and fork. Each opens a client from its command line (target, TLS, token), makes its calls and prints what
came back; `rnnserve/cli.py` builds their flags and turns their failures into one line."""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from pathlib import Path

from rnnserve.client import RnnServeClient
from rnnserve.client.channel import open_channel
from rnnserve.contract import Z_90
from rnnserve.errors import UsageError
from rnnserve.text import Tokenizer, UnknownText, count_words, token_text, tokenizer_from_spec
from rnnserve.v1 import rnnserve_pb2 as pb

ESCAPE = re.compile(r"\\(n|t|r|\\|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})")
NAMED_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def client_of(args) -> RnnServeClient:
    return RnnServeClient(args.target, tls_ca=args.tls_ca, token=args.token, tls_cert=args.client_cert, tls_key=args.client_key)


def tokenizer_of(client: RnnServeClient, model: str, version: str) -> Tokenizer:
    """The model's own tokenizer, from the metadata the server answers (it travels inside the model file)."""
    return tokenizer_from_spec(json.loads(client.get_model(model, version).metadata_json)["tokenizer"])


def unescaped(text: str) -> str:
    """A flag's value with Python's escapes read as the characters they name (\\n, \\t, \\r, \\\\, \\xNN, \\uNNNN,
    \\UNNNNNNNN): a shell passes `--stop "\\n\\n"` as a backslash and an n, twice, where a person means a blank line."""
    return ESCAPE.sub(lambda m: NAMED_ESCAPES.get(m[1]) or chr(int(m[1][1:], 16)), text)


def generate(args) -> None:
    sampling = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "seed", "max_tokens") if getattr(args, k) is not None}
    stop = [unescaped(s) for s in args.stop or []]
    source_tokens, looked_at = [], []
    with client_of(args) as client:
        tokenizer = tokenizer_of(client, args.model, args.version) if args.attention or args.plot else None
        pieces = client.generate(args.model, args.prompt, args.version, args.label, args.source, args.session_id, stop=stop, **sampling)
        wrote, finish = False, pb.FINISH_REASON_UNSPECIFIED
        for piece in pieces:
            sys.stdout.write(piece.text)
            sys.stdout.flush()
            wrote, finish = wrote or bool(piece.text), piece.finish_reason or finish
            source_tokens += piece.source_tokens
            if tokenizer is not None:  # a row per token, labelled with that token's own text
                looked_at += [(token_text(tokenizer, t), a.weights) for t, a in zip(piece.token_ids, piece.attention)]
    sys.stdout.write("\n")
    if not wrote:  # an empty line alone would look like a fault; say why there is no text
        print(f"(no text: {EMPTY_BECAUSE.get(finish, 'the server answered none')})", file=sys.stderr)
    if args.attention:
        print_attention(source_tokens, looked_at)
    if args.plot:
        if not looked_at:
            raise SystemExit("--plot: the model answered no attention (only encoder–decoders have it)")
        from rnnserve.training.plots import plot_attention

        print(f"wrote {plot_attention(source_tokens, [t for t, _ in looked_at], [list(w) for _, w in looked_at], args.plot)}")


EMPTY_BECAUSE = {
    pb.FINISH_REASON_END: "the model wrote its end token first; sample again, or try another --seed",
    pb.FINISH_REASON_STOP: "the text began with a --stop string",
    pb.FINISH_REASON_LENGTH: "--max-tokens ran out before a whole character",
}


def print_attention(source_tokens: list[str], looked_at: list[tuple[str, list[float]]]) -> None:
    """For each output token, the source tokens it attended to most."""
    for text, weights in looked_at:
        top = sorted(range(len(weights)), key=lambda i: -weights[i])[:3]
        print(f"{text!r:>8} ← " + "  ".join(f"{source_tokens[i]!r}@{i} {weights[i]:.2f}" for i in top))


AUDIO_MESSAGE_S = 0.1  # a WAV file is sent 100 ms a message; the server cuts it into the model's steps


def stream(args) -> None:
    """Each line of stdin is one chunk, with its newline if the model's vocabulary has one (a word-boundary tagger
    reads text without whitespace, so its lines go without); every step's top predictions are printed. With
    --audio, a WAV file streamed to an audio model; with --values, numbers a step a line."""
    if args.audio:
        return stream_audio(args)
    if args.values:
        return stream_values(args)
    if args.csv:
        return stream_csv(args)
    with client_of(args) as client:
        lines = iter(sys.stdin.readline, "")
        if not reads_newlines(tokenizer_of(client, args.model, args.version)):
            lines = (line.rstrip("\r\n") for line in lines)
        # the stream opens before stdin is read, so a refusal (an unknown session, a full server) is said at once,
        # and a resumed session's position is shown before anything is typed
        opening = itertools.chain([pb.StreamRequest()], lines)
        responses = client.stream(args.model, opening, args.version, args.session_id, args.resume, args.top_k)
        for response in responses:
            print_steps(response.steps)
            print_classes("so far", response.classes)
            print(f"[session {response.session_id}, position {response.position}]", flush=True)


def stream_audio(args) -> None:
    """A PCM16 WAV file to an audio model, 100 ms a message; a voice activity detector's speech segments are printed
    as they are found (another audio model's outputs, a line a step)."""
    import wave

    from rnnserve.client import audio_request, outputs_of
    from rnnserve.client.segments import SpeechSegments

    try:
        with wave.open(args.audio) as file:
            channels, width, rate, frames = file.getnchannels(), file.getsampwidth(), file.getframerate(), file.readframes(file.getnframes())
    except (OSError, EOFError, wave.Error) as err:
        raise UsageError(f"--audio {args.audio}: not a WAV file this command reads ({err})") from None
    if channels != 1 or width != 2:
        raise UsageError(f"--audio {args.audio}: {channels} channel(s) of {8 * width}-bit samples; send mono 16-bit PCM (sox {args.audio} -c 1 -b 16 mono.wav)")
    with client_of(args) as client:
        spec = client.get_model(args.model, args.version).input
        if not spec.sample_rate:
            raise UsageError(f"model {args.model!r} does not take audio (--audio is for a model described with --sample-rate)")
        if rate != spec.sample_rate:
            raise UsageError(f"--audio {args.audio}: {rate} Hz; model {args.model!r} takes {spec.sample_rate} Hz (sox {args.audio} -r {spec.sample_rate} resampled.wav)")
        step = int(AUDIO_MESSAGE_S * rate) * 2
        messages = (audio_request(frames[i : i + step], rate) for i in range(0, len(frames), step))
        task = client.get_model(args.model, args.version).task
        segments = SpeechSegments(spec.step_shape[0] / rate, args.threshold, args.min_silence_ms, args.min_speech_ms, args.pad_ms)
        position = 0
        for response in client.stream(args.model, messages, args.version, args.session_id, args.resume):
            outputs = outputs_of(response)
            if task == "voice_activity":
                for start, end in segments.feed(next(iter(outputs.values()))[:, 0].tolist()):
                    print(f"speech {start:7.2f} s → {end:7.2f} s", flush=True)
            else:
                print_values(position, outputs)
            position = response.position
        for start, end in segments.finish() if task == "voice_activity" else ():
            print(f"speech {start:7.2f} s → {end:7.2f} s", flush=True)
    print(f"[{len(frames) // 2 / rate:.2f} s of audio, {position} steps]")


def stream_values(args) -> None:
    """Numbers from a CSV file (or - for stdin), a step a line, to a model that takes values; every step's outputs
    are printed."""
    import numpy as np

    from rnnserve.client import outputs_of

    lines = sys.stdin if args.values == "-" else open(args.values, encoding="utf-8")  # noqa: SIM115 (closed below)
    try:
        rows = [[float(x) for x in line.split(",")] for line in lines if line.strip()]
    except ValueError as err:
        raise UsageError(f"--values {args.values}: {err}: expected comma-separated numbers, a step a line") from None
    finally:
        if lines is not sys.stdin:
            lines.close()
    with client_of(args) as client:
        position = 0
        for response in client.stream(args.model, [np.array([row], np.float32) for row in rows], args.version, args.session_id, args.resume):
            print_values(position, outputs_of(response))
            position = response.position


def stream_csv(args) -> None:
    """A CSV file's rows, a step a row, to a model trained on numbers (`rnnserve train --task frame_classifier` or
    `forecaster`): its columns are found by the names it was trained on, and each step is answered as it arrives.
    With --horizon, the last row also asks a forecaster to look that far ahead; with --plot, what was answered is drawn."""
    from rnnserve.client import forecast_of, forecast_request, outputs_of
    from rnnserve.tables import CsvTable

    with client_of(args) as client:
        document = json.loads(client.get_model(args.model, args.version).metadata_json)
        columns = document.get("columns")
        if not columns:
            raise UsageError(f"model {args.model!r} names no input columns: --csv is for models trained on numbers (--values streams bare numbers)")
        forecaster = document["task"] == "forecaster"
        if args.horizon and not forecaster:
            raise UsageError(f"--horizon: model {args.model!r} is a {document['task']}, not a forecaster")
        rows = CsvTable(args.csv).numbers(f"model {args.model!r}, which was trained on {', '.join(columns)}", columns)
        messages = [rows[i : i + 1] for i in range(len(rows))]
        if args.horizon and messages:
            messages[-1] = forecast_request(messages[-1], args.horizon, seed=args.seed)
        answered: list[dict] = []
        response = None
        for response in client.stream(args.model, messages, args.version, args.session_id, args.resume):
            outputs = outputs_of(response)
            answered.append(outputs)
            step = response.position - 1
            if forecaster:
                for name, mean, std in zip(columns, outputs["mean"][-1], outputs["std"][-1]):
                    print(f"step {step} → next {name} {mean:.4g} (90% {mean - Z_90 * std:.4g} to {mean + Z_90 * std:.4g})", flush=True)
            else:
                print(f"step {step} → " + "  ".join(f"{c.text!r} {c.probability:.2f}" for c in response.classes[:3]), flush=True)
        ahead = forecast_of(response) if response is not None and args.horizon else {}
        for h in range(len(ahead.get("mean", ()))):
            for s, name in enumerate(columns):
                print(f"ahead {h + 1} → {name} {ahead['mean'][h, s]:.4g} (90% {ahead['low'][h, s]:.4g} to {ahead['high'][h, s]:.4g})")
        if response is not None and response.classes:
            print_classes("whole sequence", response.classes)
    print(f"[{len(rows)} rows streamed, session {response.session_id if response else '-'}, position {response.position if response else 0}]")
    if args.plot and answered:
        _plot_answers(args.plot, document, columns, rows, answered, ahead)


def _plot_answers(out: str, document: dict, columns: list[str], rows, answered: list[dict], ahead: dict) -> None:
    """--plot: a forecaster's first series against its forecasts, or a classifier's running guess."""
    import numpy as np

    from rnnserve.training.plots import plot_class_probabilities, plot_forecast

    if document["task"] == "forecaster":
        mean, std = (np.concatenate([a[name] for a in answered])[:, 0] for name in ("mean", "std"))
        firsts = {k: v[:, 0] for k, v in ahead.items()}
        written = plot_forecast(columns[0], rows[:, 0], mean, std, firsts or None, out, Z_90)
    else:
        written = plot_class_probabilities(document["outputs"][0]["labels"], np.concatenate([a["probabilities"] for a in answered]), out)
    print(f"wrote {written}")


def print_values(position: int, outputs: dict) -> None:
    steps = len(next(iter(outputs.values()))) if outputs else 0
    for t in range(steps):
        print(f"step {position + t}: " + "  ".join(f"{name} " + ", ".join(f"{v:.4f}" for v in value[t]) for name, value in outputs.items()), flush=True)


def reads_newlines(tokenizer: Tokenizer) -> bool:
    try:
        return bool(tokenizer.encode("\n"))
    except UnknownText:
        return False


def infer(args) -> None:
    """The whole text at once; every step's top outputs (next tokens, or labels)."""
    with client_of(args) as client:
        response = client.infer_response(args.model, args.text, args.version, args.top_k)
    print_steps(response.steps)
    print_classes("whole text", response.classes)


SCORED_LINE_CHARS = 2000  # a long line goes in parts: a message stays well within the server's limits


def score(args) -> None:
    """The file's every token scored through the server (Stream with `score`), after the line end it is read
    from, as the trainer scores --val-corpus and --test-corpus."""
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{args.file}: {getattr(err, 'strerror', None) or err}") from None
    parts = [line[i : i + SCORED_LINE_CHARS] for line in text.splitlines(keepends=True) for i in range(0, len(line), SCORED_LINE_CHARS)]
    total, tokens = 0.0, 0
    with client_of(args) as client:
        for index, response in enumerate(client.stream(args.model, ["\n", *parts], args.version, top_k=1, score=True)):
            for step in response.steps if index else ():  # the line end it starts from is given, not scored
                total -= step.logprob
                tokens += 1
    words = count_words(text)
    print(
        f"{path.name}: {tokens:,} tokens, {words:,} words and line ends, {len(text):,} characters: {total / max(1, tokens):.4f} nats "
        f"per token, {total / math.log(2) / max(1, len(text)):.4f} bits per character, per-word perplexity {math.exp(total / max(1, words)):.2f}"
    )


def print_classes(what: str, classes) -> None:
    if classes:
        print(f"[{what}: " + ", ".join(f"{c.text} {c.probability:.3f}" for c in classes) + "]")


def print_steps(steps) -> None:
    """A line per step, or for steps that each read a part of one character (a byte model), a line for the step
    that completes it: the whole character, then what the model expects after it."""
    for step in steps:
        if step.text:
            candidates = "  ".join(f"{c.text!r} {c.probability:.2f}" for c in step.next)
            print(f"{step.text!r:>8} → {candidates}")


def models(args) -> None:
    with client_of(args) as client:
        for info in client.list_models():
            quantized = json.loads(info.metadata_json).get("quantization", {}).get("kind")
            print(
                f"{info.name}/{info.version}  {info.task}  {info.cell} {info.layers}×{info.hidden}{f' {quantized}' if quantized else ''}  "
                f"tokenizer={info.tokenizer}  calls={','.join(info.calls)}  providers={','.join(info.providers)}"
            )


def health(args) -> None:
    """Asks the gRPC health service (what Kubernetes' gRPC probes ask too)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with open_channel(args.target, args.tls_ca, args.token, args.client_cert, args.client_key) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        raise SystemExit(f"{args.target} is {status}")
    print(status)


def snapshot(args) -> None:
    with client_of(args) as client:
        snapshot = client.snapshot_session(args.session_id, args.model, args.sequence_id)
    try:
        Path(args.out).write_bytes(snapshot.blob)
    except OSError as err:
        raise SystemExit(f"--out {args.out}: {err.strerror}") from None
    print(f"wrote {args.out}: model {snapshot.model}/{snapshot.version} at position {snapshot.position} ({len(snapshot.blob):,} bytes)")


def restore(args) -> None:
    blob = Path(args.snapshot).read_bytes()
    with client_of(args) as client:
        info = client.restore_session(blob, args.session_id, args.sequence_id)
    where = f"session {info.session_id}" if info.session_id else f"sequence {info.sequence_id}"
    print(f"restored {where} of model {info.model}/{info.version} at position {info.position}: resume it within the session TTL")


def fork(args) -> None:
    with client_of(args) as client:
        info = client.fork_session(args.session_id, args.new_session_id)
    print(f"forked session {args.session_id} into {info.session_id} at position {info.position}")
