"""`rnnserve`: train, export, serve, and talk to a server (generate, stream, models).

Training and export import torch lazily, so serving and the client work from the base install.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import grpc

from client import RnnServeClient
from export.config import ExportConfig
from rnnserve.options import add_flags, config_from
from server.config import ServerConfig
from training.config import TrainConfig

NEEDS_TRAIN_EXTRA = "this command needs torch and onnx: pip install 'rnnserve[train]'"


def _train(args) -> None:
    from training.train import train

    metrics = train(config_from(TrainConfig, args))
    print(json.dumps(metrics))


def _export(args) -> None:
    from export.exporter import export
    from export.verify import ParityError

    try:
        path, report = export(config_from(ExportConfig, args))
    except ParityError as err:
        raise SystemExit(f"export failed: {err}") from None
    print(f"wrote {path} (parity with PyTorch: max abs difference {report['max_abs_diff']:.2e} ≤ {report['tolerance']:g})")


def _serve(args) -> None:
    try:
        config = config_from(ServerConfig, args)
    except ValueError as err:
        raise SystemExit(f"rnnserve serve: {err}") from None
    if config.workers > 1:
        from server.workers import run_workers

        raise SystemExit(run_workers(config))
    from server.app import run

    run(config)


def _client(args) -> RnnServeClient:
    return RnnServeClient(args.target)


def _generate(args) -> None:
    sampling = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "seed", "max_tokens") if getattr(args, k) is not None}
    source_tokens, looked_at = [], []
    with _client(args) as client:
        pieces = client.generate(args.model, args.prompt, args.version, args.label, args.source, stop=args.stop or [], **sampling)
        for piece in pieces:
            sys.stdout.write(piece.text)
            sys.stdout.flush()
            source_tokens += piece.source_tokens
            looked_at += [(piece.text, attention.weights) for attention in piece.attention]
    sys.stdout.write("\n")
    if args.attention:
        _print_attention(source_tokens, looked_at)


def _print_attention(source_tokens: list[str], looked_at: list[tuple[str, list[float]]]) -> None:
    """For each output token, the source tokens it attended to most."""
    for text, weights in looked_at:
        top = sorted(range(len(weights)), key=lambda i: -weights[i])[:3]
        print(f"{text!r:>8} ← " + "  ".join(f"{source_tokens[i]!r}@{i} {weights[i]:.2f}" for i in top))


def _stream(args) -> None:
    """Each line of stdin (with its newline) is one chunk; every step's top predictions are printed."""
    with _client(args) as client:
        lines = iter(sys.stdin.readline, "")
        responses = client.stream(args.model, lines, args.version, args.session_id, args.resume, args.top_k)
        for response in responses:
            _print_steps(response.steps)
            _print_classes("so far", response.classes)
            print(f"[session {response.session_id}, position {response.position}]", flush=True)


def _infer(args) -> None:
    """The whole text at once; every step's top outputs (next tokens, or labels)."""
    with _client(args) as client:
        response = client.infer_response(args.model, args.text, args.version, args.top_k)
    _print_steps(response.steps)
    _print_classes("whole text", response.classes)


def _print_classes(what: str, classes) -> None:
    if classes:
        print(f"[{what}: " + ", ".join(f"{c.text} {c.probability:.3f}" for c in classes) + "]")


def _print_steps(steps) -> None:
    for step in steps:
        candidates = "  ".join(f"{c.text!r} {c.probability:.2f}" for c in step.next)
        print(f"{step.token_text!r:>8} → {candidates}")


def _models(args) -> None:
    with _client(args) as client:
        for info in client.list_models():
            print(
                f"{info.name}/{info.version}  {info.task}  {info.cell} {info.layers}×{info.hidden}  "
                f"tokenizer={info.tokenizer}  calls={','.join(info.calls)}  providers={','.join(info.providers)}"
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnserve",
        description="Train recurrent models (language models, taggers, classifiers, encoder–decoders), export them to "
        "ONNX, serve them over gRPC with per-step streaming, and talk to a server. `rnnserve COMMAND --help` explains each command.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train a language model, tagger, classifier or encoder–decoder (needs the [train] extra)"
    )
    train.set_defaults(run=_train)
    add_flags(train, TrainConfig)

    export = commands.add_parser("export", help="export a checkpoint to ONNX in a model repository, parity-checked")
    export.set_defaults(run=_export)
    add_flags(export, ExportConfig, positional=("checkpoint",))

    serve = commands.add_parser("serve", help="serve every model in a repository over gRPC")
    serve.set_defaults(run=_serve)
    add_flags(serve, ServerConfig)

    for name, run, help_text in (
        ("generate", _generate, "stream a generation from a server to the terminal"),
        ("stream", _stream, "send stdin line by line and show the model's per-step predictions"),
        ("infer", _infer, "send a whole text at once and show every step's top outputs"),
        ("models", _models, "list the models a server serves"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(run=run)
        sub.add_argument("--target", default="127.0.0.1:50051", help="server address (default: 127.0.0.1:50051)")
        if name != "models":
            sub.add_argument("--model", required=True, help="model name")
            sub.add_argument("--version", default="", help="model version (default: the newest)")
    generate = commands.choices["generate"]
    generate.add_argument("prompt", nargs="?", default="", help="text to continue (a language model needs one)")
    generate.add_argument("--label", default="", help="conditional language models: the kind of text to write")
    generate.add_argument("--source", default="", help="encoder–decoders: the text to transduce")
    generate.add_argument("--attention", action="store_true", help="encoder–decoders: show where each output token looked")
    generate.add_argument("--temperature", type=float, help="0 is greedy (default: the model's)")
    generate.add_argument("--top-k", type=int, help="sample from the k most probable tokens (0: off)")
    generate.add_argument("--top-p", type=float, help="nucleus sampling mass (1: off)")
    generate.add_argument("--seed", type=int, help="same seed, same text")
    generate.add_argument("--max-tokens", type=int, help="tokens to generate (default: the model's)")
    generate.add_argument("--stop", action="append", help="stop before this string (repeatable)")
    infer = commands.choices["infer"]
    infer.add_argument("text", help="the whole input")
    infer.add_argument("--top-k", type=int, default=5, help="outputs shown per step (default: 5)")
    stream = commands.choices["stream"]
    stream.add_argument("--session-id", default="", help="name the session so a later stream can --resume it")
    stream.add_argument("--resume", action="store_true", help="continue the named session's state")
    stream.add_argument("--top-k", type=int, default=5, help="predictions shown per step (default: 5)")
    return parser



def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except grpc.RpcError as err:
        raise SystemExit(f"rnnserve {args.command}: {err.code().name}: {err.details()}") from None
    except ModuleNotFoundError as err:
        if err.name in ("torch", "onnx", "tqdm"):
            raise SystemExit(f"{NEEDS_TRAIN_EXTRA} ({err.name} is missing)") from None
        raise
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:  # piped into a command that stopped reading (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
