"""`rnnserve`: train, export, serve, and talk to a server (generate, stream, infer, models).

Training and export import torch lazily, so serving and the client work from the base install. Every mistake
ends in one line on stderr that says what was wrong and what to do, and a non-zero exit code: never a traceback.
"""

from __future__ import annotations

import os

# gRPC's C core writes its own lines (E1201 …) to stderr on a refused handshake or a busy port, beside the one line
# this command prints about it; they are kept off the terminal unless asked for (GRPC_VERBOSITY=error or debug).
# Set before grpc is imported: the C core reads it once.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse
import gc
import json
import sys
from importlib import metadata
from pathlib import Path

import grpc

from rnnserve import client_commands
from rnnserve.client.channel import explain_unreachable
from rnnserve.errors import UsageError
from rnnserve.export.config import ExportConfig
from rnnserve.options import add_flags, config_from
from rnnserve.server.config import ServerConfig
from rnnserve.training.config import TrainConfig

NEEDS_TRAIN_EXTRA = "this command needs the train extra (torch, onnx, matplotlib): pip install 'rnnserve[train]'"
DEFAULT_TARGET = "127.0.0.1:50051"
SHOW_TRACEBACK = "RNNSERVE_TRACEBACK"  # set it to see the traceback of an unexpected error
CONNECTION_FLAGS = (  # a client command's way to a server with TLS and tokens
    ("--tls-ca", "RNNSERVE_TLS_CA", "PEM file of the CA that signed the server's certificate: connect with TLS"),
    ("--token", "RNNSERVE_TOKEN", "bearer token for a server started with --auth-tokens"),
    ("--client-cert", "RNNSERVE_CLIENT_CERT", "PEM certificate of this client, for a server with --tls-client-ca"),
    ("--client-key", "RNNSERVE_CLIENT_KEY", "PEM private key of --client-cert"),
)

EXAMPLES = {
    "rnnserve": """the main job, end to end:
  rnnserve train --minutes 1 --out runs/lm.pt
  rnnserve export runs/lm.pt --repository models --name lm
  rnnserve serve --repository models &
  rnnserve generate --model lm --max-tokens 200 'The '""",
    "train": """examples:
  rnnserve train --minutes 3 --out runs/lm.pt                              # LSTM on the built-in corpus
  rnnserve train --corpus ko.txt --tokenizer char --minutes 5 --out runs/ko.pt
  rnnserve train --task boundary_tagger --tokenizer char --bidirectional --minutes 2 --out runs/tagger.pt
  rnnserve train --steps 2000 --out runs/lm.pt --resume                    # continue a run to 2,000 steps
  rnnserve train --task forecaster --dataset co2 --layers 1 --hidden 128 --minutes 2 --out runs/co2.pt
  rnnserve train --task forecaster --csv sales.csv --target units --time date --period 7 --minutes 1 --out runs/sales.pt
  rnnserve train --task frame_classifier --csv gestures.csv --columns ax,ay,az --target gesture --sequence take --out runs/g.pt""",
    "plot": """examples:
  rnnserve plot runs/lm.pt --out curves.png
  rnnserve generate --model dates --source 'Tuesday, March 5th, 2024' --plot attention.png   # an attention heatmap""",
    "export": """examples:
  rnnserve export runs/lm.pt --repository models --name lm                 # writes models/lm/1/model.onnx
  rnnserve export runs/lm.pt --repository models --name lm --version 2""",
    "describe": """examples:
  rnnserve describe lm.onnx --state h:h_next --state c:c_next --tokenizer tokenizer.json --out models/lm/1/model.onnx
  rnnserve describe tagger.onnx --state h:hn --tokenizer byte --task tagger --labels no,yes --tokens input_ids --logits scores
  # Silero VAD, from the file its pip package ships: 512 new samples a step after the last 64 of the one before
  rnnserve describe "$(python -c 'import silero_vad, os; print(os.path.dirname(silero_vad.__file__))')/data/silero_vad.onnx" \
      --task vad --input input:512 --context 64 --state state:stateN --constant sr=16000 --sample-rate 16000 --out models/vad/1/model.onnx""",
    "serve": """examples:
  rnnserve serve --repository models                                       # 127.0.0.1:50051
  rnnserve serve --repository models --host 0.0.0.0 --port 8001 --metrics-port 8002
  RNNSERVE_PORT=8001 rnnserve serve --config serve.toml --log-format json   # flag > environment > file
  rnnserve serve --repository models --workers 2 --port 50051""",
    "generate": """examples:
  rnnserve generate --model lm --max-tokens 200 --temperature 0.7 --seed 1 "The "
  rnnserve generate --model writer --label python
  rnnserve generate --model dates --source 'Tuesday, March 5th, 2024' --attention""",
    "stream": """examples:
  printf 'The return\\nstatement\\n' | rnnserve stream --model lm --top-k 3
  rnnserve stream --model lm --session-id talk-1 < part1.txt               # keep the state...
  rnnserve stream --model lm --session-id talk-1 --resume < part2.txt      # ...and continue it
  rnnserve stream --model vad --audio call.wav                             # speech segments as they are found
  rnnserve stream --model forecaster --values readings.csv                 # numbers, a step a line
  rnnserve stream --model co2 --csv co2.csv --horizon 52 --plot co2.png    # a model trained on numbers: a row a step, a year ahead""",
    "infer": """examples:
  rnnserve infer --model tagger_bi --top-k 1 thereturnstatement
  rnnserve infer --model kind 'static int add(int a, int b) { return a + b; }'""",
    "score": """examples (the figures are the trainer's --test-corpus figures, computed by the server):
  rnnserve score --model ptb ptb.test.txt""",
    "models": """examples:
  rnnserve models
  rnnserve models --target 10.0.0.5:50051""",
    "token": """examples (the token is printed once; the file keeps only its hash):
  RNNSERVE_TOKEN=$(rnnserve token --file tokens.txt) rnnserve models
  rnnserve token --file tokens.txt --models lm,kind --name ci   # then: rnnserve serve --auth-tokens tokens.txt
  rnnserve token --file tokens.txt --operator --name on-call     # may act on every token's sessions""",
    "snapshot": """examples:
  rnnserve snapshot --session-id talk-1 --out talk-1.snap
  rnnserve snapshot --model dates --sequence-id 42 --out seq-42.snap""",
    "restore": """examples:
  rnnserve restore talk-1.snap --target other-host:50051                 # then: rnnserve stream --session-id talk-1 --resume
  rnnserve restore talk-1.snap --session-id talk-1-copy""",
    "fork": """examples:
  rnnserve fork --session-id talk-1 --new-session-id talk-1-b""",
    "health": """exit status 0 when the server answers SERVING, 1 otherwise (a container's HEALTHCHECK, a probe):
  rnnserve health
  rnnserve health --target 10.0.0.5:50051 --timeout-s 2""",
}


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (with where to read more), not the usage text and then the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _config(config_type: type, args, environ=None):
    try:
        return config_from(config_type, args, environ)
    except ValueError as err:
        raise SystemExit(str(err)) from None


def _train(args) -> None:
    config = _config(TrainConfig, args)
    from rnnserve.training.train import train

    print(json.dumps(train(config)))


def _plot(args) -> None:
    from rnnserve.training.plots import plot_curves
    from rnnserve.training.train import read_checkpoint

    checkpoint = read_checkpoint(args.checkpoint)
    path = plot_curves(checkpoint["progress"], args.out, title=Path(args.checkpoint).name)
    print(f"wrote {path}")


def _export(args) -> None:
    config = _config(ExportConfig, args)
    from rnnserve.contract import ContractError
    from rnnserve.export.exporter import export
    from rnnserve.export.verify import ParityError

    try:
        path, report = export(config)
    except (ParityError, ContractError) as err:
        raise SystemExit(f"export failed: {err}") from None
    print(f"wrote {path} (parity with PyTorch: max abs difference {report['max_abs_diff']:.2e} ≤ {report['tolerance']:g})")
    if "quantization" in report:
        q = report["quantization"]
        print(
            f"int8: validation loss {q['val_loss_nats_fp32']:.4f} → {q['val_loss_nats_int8']:.4f} nats/token "
            f"({q['val_loss_increase_nats']:+.4f}); a step {q['step_speedup_batch_1']:g}× as fast at batch 1, "
            f"{q['step_speedup_batch_64']:g}× at batch 64; {q['file_bytes_fp32'] / 1e6:.1f} MB → {q['file_bytes_int8'] / 1e6:.1f} MB"
        )


def _describe(args) -> None:
    from rnnserve.export.describe import describe
    from rnnserve.export.describe_values import describe_values

    states = [_pair(pair, ":", "--state", "INPUT:OUTPUT, e.g. h:h_next") for pair in args.state]
    try:
        if args.input:
            name, size = _pair(args.input, ":", "--input", "NAME:VALUES, e.g. input:512 (the values one step brings)")
            if not size.isdigit():
                raise SystemExit(f"--input {args.input!r}: VALUES is a count, e.g. input:512")
            constants = dict(_pair(c, "=", "--constant", "NAME=VALUE, e.g. sr=16000") for c in args.constant)
            task = "values" if args.task == "language_model" else args.task
            path = describe_values(args.model, states, name, int(size), task, args.context, constants, args.sample_rate, args.out)
        else:
            if args.tokenizer is None:
                raise SystemExit("--tokenizer is required for a model that reads tokens (or give --input NAME:VALUES for one that takes values)")
            labels = tuple(label for label in args.labels.split(",") if label)
            path = describe(args.model, states, args.tokenizer, args.task, labels, args.tokens, args.logits, args.out)
    except ValueError as err:  # ContractError, or a tokenizer that is not one
        raise SystemExit(f"{args.model}: {err}") from None
    print(f"wrote {path}: serve it from a repository as <repository>/<name>/<version>/model.onnx")


def _pair(text: str, separator: str, flag: str, expected: str) -> tuple[str, str]:
    name, _, value = text.partition(separator)
    if not name or not value:
        raise SystemExit(f"{flag} {text!r}: expected {expected}")
    return name, value


def _serve(args) -> None:
    config = _config(ServerConfig, args, os.environ)
    if config.workers > 1:
        from rnnserve.server.workers import run_workers

        raise SystemExit(run_workers(config))
    from rnnserve.server.app import run

    run(config)


def _token(args) -> None:
    """A new token: its hashed line goes into the server's --auth-tokens file, the token itself to stdout, once."""
    from rnnserve.server.security import new_token, token_line

    models = args.models.replace(" ", "")
    if not models or "#" in models or (models != "*" and "*" in models):
        raise SystemExit(f"--models {args.models!r}: name models separated by commas, or * for all")
    token = new_token()
    path = Path(args.file)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # readable by the server's user alone
    except OSError as err:
        raise SystemExit(f"--file {path}: {err.strerror}") from None
    with os.fdopen(descriptor, "a") as file:
        file.write(token_line(token, models, args.name.replace("#", ""), args.operator) + "\n")
    print(token)


def _number(kind: type, minimum: float, maximum: float | None = None, above: bool = False):
    """An argparse type: a `kind` number within [minimum, maximum] ((minimum, maximum] when `above`)."""
    span = f"{'(' if above else '['}{minimum}, {'∞)' if maximum is None else f'{maximum}]'}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < minimum or (above and value == minimum) or (maximum is not None and value > maximum) or value != value:
            raise argparse.ArgumentTypeError(f"{text} is not in {span}")
        return value

    return parse


def _target(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. {DEFAULT_TARGET})")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="rnnserve",
        description="Train recurrent models (language models, taggers, classifiers, encoder–decoders), export them to "
        "ONNX, serve them over gRPC with per-step streaming, and talk to a server. `rnnserve COMMAND --help` explains each command.",
        epilog=EXAMPLES["rnnserve"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rnnserve {metadata.version('rnnserve')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = commands.choices  # each command's own parser, to report a mistake against it

    def command(name: str, run, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text, epilog=EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub.set_defaults(run=run)
        return sub

    add_flags(command("train", _train, "train a language model, tagger, classifier, encoder–decoder, or a classifier or forecaster of numbers (needs the [train] extra)"), TrainConfig)
    plot = command("plot", _plot, "draw a run's training and validation curves from its checkpoint (needs the [train] extra)")
    plot.add_argument("checkpoint", help="a checkpoint written by `rnnserve train`")
    plot.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    export = command("export", _export, "export a checkpoint to ONNX in a model repository, parity-checked (needs the [train] extra)")
    add_flags(export, ExportConfig, positional=("checkpoint",))
    describe = command(
        "describe", _describe, "make an ONNX step graph exported elsewhere servable: check it and write its metadata (needs the [train] extra)"
    )
    describe.add_argument("model", help="the .onnx file: (token ids [batch, T], state [batch, …]) → (outputs [batch, T, …], next state); "
                          "or, with --input, a graph of one step per call that takes values")
    describe.add_argument("--state", action="append", required=True, metavar="INPUT:OUTPUT", help="a state tensor's input and the output that carries it to the next step (repeatable)")
    describe.add_argument("--tokenizer", help="byte, or the path of a Hugging Face tokenizer.json (it goes into the model file); for a model that reads tokens")
    describe.add_argument("--task", choices=("language_model", "tagger", "classifier", "values", "vad"), default="language_model",
                          help="what the outputs are (default: language_model; with --input: values, or vad for a voice activity detector)")
    describe.add_argument("--input", metavar="NAME:VALUES", help="the graph takes values, not tokens: its input [batch, context + VALUES] float32, "
                          "one step per call; any batch axis of a state is found from its shape")
    describe.add_argument("--context", type=int, default=0, metavar="K", help="with --input: the last K values of a step's input go before the next step's (Silero VAD: 64)")
    describe.add_argument("--constant", action="append", default=[], metavar="NAME=VALUE", help="with --input: an input fixed at this value (repeatable; Silero VAD: sr=16000)")
    describe.add_argument("--sample-rate", type=int, default=0, help="with --input: the values are audio at this many samples a second (required for --task vad)")
    describe.add_argument("--labels", default="", help="a tagger's or classifier's labels, comma-separated, one per output")
    describe.add_argument("--tokens", default="tokens", help="the graph's token input (renamed tokens)")
    describe.add_argument("--logits", default="logits", help="the graph's per-step output (renamed logits)")
    describe.add_argument("--out", help="write the described model here (e.g. models/lm/1/model.onnx) instead of in place")
    add_flags(command("serve", _serve, "serve every model in a repository over gRPC"), ServerConfig, layered=True)

    for name, run, help_text in (
        ("generate", client_commands.generate, "stream a generation from a server to the terminal"),
        (
            "stream", client_commands.stream,
            "send stdin line by line (each with its newline, when the model's vocabulary has one) and show the model's per-step predictions",
        ),
        ("infer", client_commands.infer, "send a whole text at once and show every step's top outputs"),
        ("score", client_commands.score, "score a text file with a served language model: nats per token, bits per character, per-word perplexity"),
        ("models", client_commands.models, "list the models a server serves"),
        ("health", client_commands.health, "ask a server whether it is serving (exit status 0 if so)"),
        ("snapshot", client_commands.snapshot, "save a named session's (or a KServe sequence's) whole state to a file"),
        ("restore", client_commands.restore, "turn a snapshot file into a live session, here or on another server with the same model"),
        ("fork", client_commands.fork, "copy a named session under a new id, to continue it two ways"),
    ):
        sub = command(name, run, help_text)
        target = os.environ.get("RNNSERVE_TARGET", DEFAULT_TARGET)
        sub.add_argument("--target", type=_target, default=target, help=f"server address HOST:PORT (default: {target}; env RNNSERVE_TARGET)")
        for flag, env, help_text in CONNECTION_FLAGS:
            sub.add_argument(flag, default=os.environ.get(env) or None, help=f"{help_text} (env {env})")
        if name in ("generate", "stream", "infer", "score"):
            sub.add_argument("--model", required=True, help="model name (`rnnserve models` lists them)")
            sub.add_argument("--version", default="", help="model version (default: the newest)")
    generate = commands.choices["generate"]
    generate.add_argument("prompt", nargs="?", default="", help="text to continue (a language model needs one)")
    generate.add_argument("--label", default="", help="conditional language models: the kind of text to write")
    generate.add_argument("--source", default="", help="encoder–decoders: the text to transduce")
    generate.add_argument("--session-id", default="", help="language models: continue this named session (or start it); it keeps the prompt and the answer")
    generate.add_argument("--attention", action="store_true", help="encoder–decoders: show where each output token looked")
    generate.add_argument("--plot", metavar="PNG", help="encoder–decoders: draw the attention as a heatmap into this file (needs the [train] extra)")
    generate.add_argument("--temperature", type=_number(float, 0, 100), help="0 is greedy (default: the model's)")
    generate.add_argument("--top-k", type=_number(int, 0), help="sample from the k most probable tokens (0: off)")
    generate.add_argument("--top-p", type=_number(float, 0, 1, above=True), help="nucleus sampling mass (1: off)")
    generate.add_argument("--seed", type=_number(int, 0, 2**64 - 1), help="same seed, same text")
    generate.add_argument(
        "--max-tokens", type=_number(int, 1, 2**32 - 1),
        help="tokens to generate (default: the model's); a character the limit would cut in half is left out",
    )
    generate.add_argument(
        "--stop", action="append",
        help="stop before this string (repeatable); Python's escapes (\\n, \\t, \\\\, \\uNNNN…) are read as the characters they "
        "name, so --stop '\\n\\n' stops at a blank line",
    )
    infer = commands.choices["infer"]
    infer.add_argument("text", help="the whole input")
    infer.add_argument("--top-k", type=_number(int, 1, 2**32 - 1), default=0, help="outputs shown per step (default: 5, or all when fewer)")
    commands.choices["score"].add_argument("file", help="a UTF-8 text file (e.g. a held-out test set), read after a line end and scored whole")
    snapshot = commands.choices["snapshot"]
    snapshot.add_argument("--session-id", default="", help="the named session (or --model and --sequence-id for a KServe sequence)")
    snapshot.add_argument("--model", default="", help="a KServe sequence's model")
    snapshot.add_argument("--sequence-id", default="", help="a KServe sequence's id")
    snapshot.add_argument("--out", required=True, help="the file to write the snapshot to")
    restore = commands.choices["restore"]
    restore.add_argument("snapshot", help="a file written by `rnnserve snapshot`")
    restore.add_argument("--session-id", default="", help="restore it under this id (default: the id it had)")
    restore.add_argument("--sequence-id", default="", help="restore it as this KServe sequence")
    fork = commands.choices["fork"]
    fork.add_argument("--session-id", required=True, help="the named session to copy")
    fork.add_argument("--new-session-id", default="", help="the copy's id (default: one is made up and printed)")
    health = commands.choices["health"]
    health.add_argument("--service", default="", help="a service to ask about, e.g. rnnserve.v1.RnnServe (default: the whole server)")
    health.add_argument("--timeout-s", type=_number(float, 0, above=True), default=5.0, help="how long to wait for the answer (default: 5)")
    token = command("token", _token, "make a bearer token for a server's --auth-tokens file (its hash goes in the file)")
    token.add_argument("--file", required=True, help="the tokens file to append the token's line to (created, readable by its owner alone)")
    token.add_argument("--models", default="*", help="the models it may use, separated by commas (default: *, every model)")
    token.add_argument("--name", default="", help="a name for people reading the file (who or what uses the token)")
    token.add_argument("--operator", action="store_true", help="it may also snapshot, fork, close and continue other tokens' sessions")
    stream = commands.choices["stream"]
    stream.add_argument("--session-id", default="", help="name the session so a later stream can --resume it")
    stream.add_argument("--resume", action="store_true", help="continue the named session's state (needs --session-id)")
    stream.add_argument("--top-k", type=_number(int, 1, 2**32 - 1), default=0, help="predictions shown per step (default: 5, or all when fewer)")
    stream.add_argument("--audio", metavar="WAV", help="stream this mono 16-bit WAV file to an audio model; a voice activity detector's speech segments are printed as found")
    stream.add_argument("--values", metavar="CSV", help="stream numbers to a model that takes values, a step a line, comma-separated (- for stdin)")
    stream.add_argument(
        "--csv", metavar="FILE", help="stream a CSV file's rows, a step a row, to a model trained on numbers (the columns it was "
        "trained on, found by their header names); a forecaster's next value with its 90%% interval, or a classifier's running guess, "
        "is printed at every step",
    )
    stream.add_argument("--horizon", type=_number(int, 1, 1000), default=0, help="--csv, a forecaster: after the last row, forecast this many steps further (sampled futures: a mean and a 90%% interval per step)")
    stream.add_argument("--seed", type=_number(int, 0, 2**63 - 1), default=0, help="--horizon: the seed of the sampled futures (default 0)")
    stream.add_argument("--plot", metavar="PNG", help="--csv: draw what was answered (a forecaster's forecasts against the values, a classifier's running guess; needs matplotlib, in [train])")
    stream.add_argument("--threshold", type=_number(float, 0, 1), default=0.5, help="--audio: a chunk at least this probable is speech (default 0.5)")
    stream.add_argument("--min-silence-ms", type=_number(float, 0), default=100.0, help="--audio: silence that ends a segment (default 100)")
    stream.add_argument("--min-speech-ms", type=_number(float, 0), default=250.0, help="--audio: shorter segments are left out (default 250)")
    stream.add_argument("--pad-ms", type=_number(float, 0), default=30.0, help="--audio: each segment widened by this on both sides (default 30)")
    return parser


def _rpc_failure(args, err: grpc.RpcError) -> str:
    """One line for a failed call; for a server that could not be reached, what was really wrong and what to do."""
    details = " ".join((err.details() or "").split())
    line = f"{err.code().name}: {details}"
    if err.code() == grpc.StatusCode.UNAVAILABLE:
        explained = explain_unreachable(args.target, details, bool(args.tls_ca or args.client_cert), bool(args.client_cert))
        if explained:
            return f"{explained} ({line})"
    return line


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "stream" and args.resume and not args.session_id:
        parser.commands["stream"].error("--resume needs --session-id: the name of the session to continue")
    failure = _failure_of(args)
    # A failed gRPC stream is its own exception, held in a reference cycle by its traceback. Collected at interpreter
    # shutdown, it waits for a lock its request thread (a daemon, frozen by then) may hold, and the command never
    # ends; collected here, while that thread still runs, it cannot. The exit is raised outside the except clause
    # so that it does not hold the failure either.
    gc.collect()
    if failure is not None:
        raise failure


def _failure_of(args) -> SystemExit | None:
    """Runs the command; what went wrong, as the one-line exit a person reads (None when nothing did)."""
    prefix = f"rnnserve {args.command}"
    try:
        args.run(args)
    except grpc.RpcError as err:
        return SystemExit(f"{prefix}: {_rpc_failure(args, err)}")
    except UsageError as err:
        return SystemExit(f"{prefix}: {err}")
    except SystemExit as exit_:
        if isinstance(exit_.code, str) and not exit_.code.startswith("rnnserve"):
            return SystemExit(f"{prefix}: {exit_.code}")
        return SystemExit(exit_.code)
    except ModuleNotFoundError as err:
        if err.name in ("torch", "onnx", "tqdm", "matplotlib"):
            return SystemExit(f"{prefix}: {NEEDS_TRAIN_EXTRA} ({err.name} is missing)")
        if err.name == "redis":
            return SystemExit(f"{prefix}: --state-store needs the Redis client: pip install 'rnnserve[store]'")
        raise
    except FileNotFoundError as err:  # a file named on the command line (a certificate, say)
        return SystemExit(f"{prefix}: {err.filename}: {err.strerror}")
    except KeyboardInterrupt:
        return SystemExit(130)
    except BrokenPipeError:  # piped into a command that stopped reading (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SystemExit(0)
    except Exception as err:  # a fault of ours: still one line, with the way to see more
        if os.environ.get(SHOW_TRACEBACK):
            raise
        return SystemExit(
            f"{prefix}: unexpected error: {type(err).__name__}: {err} (a bug in rnnserve: run again with {SHOW_TRACEBACK}=1 "
            "for the traceback, and report it)"
        )
    return None
