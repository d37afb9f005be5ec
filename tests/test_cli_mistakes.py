"""Every mistake a person makes with `rnnserve` in their first hour ends in one line that says what was wrong, and
a non-zero exit code: never a traceback. Each row runs the real command in a process of its own."""

import http.server
import shutil
import subprocess
import sys
import threading

import pytest

from bench.common import free_port
from tests.helpers import run_cli

USAGE, FAILED = 2, 1  # argparse's exit code for a malformed command line; ours for a command that could not do its job

MISTAKES = [  # (what is wrong, the command line, its exit code, words its one line must hold)
    ("no command", [], USAGE, "required: COMMAND"),
    ("unknown command", ["frobnicate"], USAGE, "invalid choice: 'frobnicate'"),
    # train
    ("unknown tokenizer", ["train", "--tokenizer", "sentencepiece"], USAGE, "invalid choice: 'sentencepiece' (choose from 'byte', 'char', 'bpe', 'word')"),
    ("a subword tagger", ["train", "--task", "boundary_tagger", "--tokenizer", "bpe"], FAILED, "--tokenizer bpe is for language models"),
    ("a BPE smaller than its bytes", ["train", "--tokenizer", "bpe", "--vocab-size", "100"], FAILED, "--vocab-size 100: a byte-level BPE vocabulary holds the 256 bytes before any merge, so it needs at least 257"),
    ("unknown cell", ["train", "--cell", "transformer"], USAGE, "invalid choice: 'transformer'"),
    ("unknown task", ["train", "--task", "translate"], USAGE, "--task: invalid choice: 'translate'"),
    ("not a number", ["train", "--hidden", "big"], USAGE, "--hidden: invalid int value: 'big'"),
    ("no layers", ["train", "--layers", "0"], FAILED, "--layers must be at least 1, not 0"),
    ("negative steps", ["train", "--steps", "-5"], FAILED, "--steps must be at least 1, not -5"),
    ("dropout out of range", ["train", "--dropout", "1.5"], FAILED, "--dropout must be in [0, 1), not 1.5"),
    ("no time", ["train", "--minutes", "0"], FAILED, "--minutes must be more than 0, not 0.0"),
    ("missing corpus", ["train", "--corpus", "{tmp}/missing.txt", "--out", "{tmp}/m.pt"], FAILED, "--corpus {tmp}/missing.txt: No such file"),
    ("binary corpus", ["train", "--corpus", "{tmp}/binary.txt", "--out", "{tmp}/m.pt"], FAILED, "not UTF-8 text"),
    ("tiny corpus", ["train", "--corpus", "{tmp}/tiny.txt", "--out", "{tmp}/m.pt"], FAILED, "corpus too small"),
    ("existing checkpoint", ["train", "--out", "{tmp}/existing.pt"], FAILED, "exists: pass --resume to continue it, --force to replace it"),
    ("resume without a checkpoint", ["train", "--resume", "--out", "{tmp}/none.pt"], FAILED, "--resume: no checkpoint at {tmp}/none.pt"),
    ("out is a directory", ["train", "--out", "{tmp}"], FAILED, "is a directory: give a file path"),
    ("corpus for a built-in task", ["train", "--task", "text_classifier", "--corpus", "{tmp}/tiny.txt", "--out", "{tmp}/m.pt"], FAILED, "drop --corpus"),
    ("bidirectional language model", ["train", "--bidirectional", "--out", "{tmp}/m.pt"], FAILED, "must not see what it predicts"),
    # export
    ("no checkpoint given", ["export"], USAGE, "required: checkpoint"),
    ("missing checkpoint", ["export", "{tmp}/missing.pt"], FAILED, "{tmp}/missing.pt: no such file"),
    ("text instead of a checkpoint", ["export", "{tmp}/tiny.txt"], FAILED, "not a checkpoint written by `rnnserve train`"),
    ("damaged checkpoint", ["export", "{tmp}/damaged.pt"], FAILED, "(damaged or cut short"),
    ("name with a slash", ["export", "{checkpoint}", "--name", "a/b"], FAILED, "--name 'a/b': must be one directory name"),
    ("model already exported", ["export", "{checkpoint}", "--repository", "{repository}", "--name", "rnn"], FAILED, "exists: pass --force"),
    ("unknown quantization", ["export", "{checkpoint}", "--quantize", "int4"], USAGE, "--quantize: invalid choice: 'int4' (choose from 'int8')"),
    ("quantize a model with an encoder", ["export", "{writer}", "--repository", "{tmp}/q", "--quantize", "int8"], FAILED, "are not quantized yet"),
    # serve
    ("unknown device", ["serve", "--device", "gpu"], FAILED, "--device 'gpu': expected cpu, cuda or cuda:N"),
    ("port out of range", ["serve", "--port", "70000"], FAILED, "--port must be a port number"),
    ("no sessions", ["serve", "--max-sessions", "0"], FAILED, "--max-sessions must be at least 1"),
    ("missing repository", ["serve", "--repository", "{tmp}/nowhere"], FAILED, "no such directory"),
    ("empty repository", ["serve", "--repository", "{tmp}/empty"], FAILED, "no models found (expected"),
    ("broken model file", ["serve", "--repository", "{tmp}/broken"], FAILED, "onnxruntime cannot load it"),
    # generate
    ("negative max tokens", ["generate", "--model", "lstm", "--max-tokens", "-1", "x"], USAGE, "--max-tokens: -1 is not in [1, 4294967295]"),
    ("negative seed", ["generate", "--model", "lstm", "--seed", "-1", "x"], USAGE, "--seed: -1 is not in [0,"),
    ("negative top-k", ["generate", "--model", "lstm", "--top-k", "-1", "x"], USAGE, "--top-k: -1 is not in [0, ∞)"),
    ("zero top-p", ["generate", "--model", "lstm", "--top-p", "0", "x"], USAGE, "--top-p: 0 is not in (0, 1]"),
    ("temperature not a number", ["generate", "--model", "lstm", "--temperature", "hot", "x"], USAGE, "'hot' is not a number"),
    ("no model", ["generate", "x"], USAGE, "required: --model"),
    ("target without a port", ["generate", "--target", "localhost", "--model", "lstm", "x"], USAGE, "'localhost' is not HOST:PORT"),
    ("port past 65535", ["generate", "--target", "127.0.0.1:99999", "--model", "lstm", "x"], USAGE, "is not HOST:PORT"),
    ("server not running", ["generate", "--target", "127.0.0.1:{closed}", "--model", "lstm", "x"], FAILED, "cannot reach a server at 127.0.0.1:{closed}"),
    ("wrong port (an HTTP server)", ["generate", "--target", "127.0.0.1:{http}", "--model", "lstm", "x"], FAILED, "is it running? Start one with `rnnserve serve`"),
    ("unknown host", ["models", "--target", "no-such-host.invalid:50051"], FAILED, "cannot reach a server at no-such-host.invalid:50051"),
    ("model that does not exist", ["generate", "--target", "{target}", "--model", "nope", "x"], FAILED, "NOT_FOUND: model 'nope' not found"),
    ("no prompt", ["generate", "--target", "{target}", "--model", "lstm"], FAILED, "INVALID_ARGUMENT: prompt: must not be empty"),
    ("too many tokens", ["generate", "--target", "{target}", "--model", "lstm", "--max-tokens", "100000", "x"], FAILED, "sampling.max_tokens: 100000 is not in [1, 4096]"),
    ("text the vocabulary lacks", ["generate", "--target", "{target}", "--model", "gru", "☃"], FAILED, "cannot encode it"),
    ("a transducer's source as a prompt", ["generate", "--target", "{target}", "--model", "dates", "5 March 2024"], FAILED, "send it as the source (rnnserve generate --source TEXT)"),
    ("generate on a classifier", ["generate", "--target", "{target}", "--model", "kind", "x"], FAILED, "FAILED_PRECONDITION: model 'kind'"),
    # stream
    ("resume without a session id", ["stream", "--model", "lstm", "--resume"], USAGE, "--resume needs --session-id"),
    ("stream a model that does not exist", ["stream", "--target", "{target}", "--model", "nope"], FAILED, "NOT_FOUND: model 'nope' not found"),
    ("resume an unknown session", ["stream", "--target", "{target}", "--model", "lstm", "--session-id", "never", "--resume"], FAILED, "NOT_FOUND: session 'never'"),
    ("zero top-k", ["stream", "--model", "lstm", "--top-k", "0"], USAGE, "--top-k: 0 is not in [1,"),
    ("stream a whole-input model", ["stream", "--target", "{target}", "--model", "tagger_bi"], FAILED, "cannot stream per step"),
    # infer
    ("no text", ["infer", "--model", "lstm"], USAGE, "required: text"),
    ("top-k beyond the outputs", ["infer", "--target", "{target}", "--model", "kind", "--top-k", "9", "x"], FAILED, "9 is more than the 3 outputs"),
    # models
    ("models of a server not running", ["models", "--target", "127.0.0.1:{closed}"], FAILED, "cannot reach a server"),
    # security
    ("a certificate without its key", ["serve", "--tls-cert", "{text}"], FAILED, "--tls-cert and --tls-key go together"),
    ("a client CA without TLS", ["serve", "--tls-client-ca", "{text}"], FAILED, "--tls-client-ca needs --tls-cert and --tls-key"),
    ("a missing tokens file", ["serve", "--repository", "{repository}", "--auth-tokens", "{missing}"], FAILED, "--auth-tokens {missing}: No such file"),
    ("a tokens file that is not one", ["serve", "--repository", "{repository}", "--auth-tokens", "{text}"], FAILED, "line 1: expected"),
    ("a missing certificate", ["serve", "--repository", "{repository}", "--tls-cert", "{missing}", "--tls-key", "{text}"], FAILED, "--tls-cert {missing}: No such file"),
    ("a missing CA for a client", ["models", "--tls-ca", "{missing}"], FAILED, "{missing}: No such file"),
    ("a token for no models", ["token", "--file", "{missing}", "--models", ""], FAILED, "--models '': name models"),
    ("a token in a folder that is not there", ["token", "--file", "{missing}/tokens.txt"], FAILED, "No such file"),
    # snapshots
    ("snapshot of a session that is not there", ["snapshot", "--target", "{target}", "--session-id", "nope", "--out", "{missing}"], FAILED, "NOT_FOUND: session 'nope'"),
    ("restore of a file that is not a snapshot", ["restore", "--target", "{target}", "{text}"], FAILED, "INVALID_ARGUMENT: blob: is not a snapshot"),
    ("restore of a missing file", ["restore", "{missing}"], FAILED, "{missing}: No such file"),
    ("fork without a session", ["fork"], USAGE, "the following arguments are required: --session-id"),
    # health
    ("health of a server not running", ["health", "--target", "127.0.0.1:{closed}"], FAILED, "cannot reach a server"),
    ("health of a service nobody serves", ["health", "--target", "{target}", "--service", "nope"], FAILED, "NOT_FOUND"),
    ("health with no time to answer", ["health", "--timeout-s", "0"], USAGE, "--timeout-s: 0 is not in (0"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory, server, repository, checkpoints):
    """What the command lines name: files of every wrong kind, a port nothing listens on, an HTTP server."""
    tmp = tmp_path_factory.mktemp("mistakes")
    (tmp / "binary.txt").write_bytes(b"\xff\xfe\x00text")
    (tmp / "tiny.txt").write_text("ab", encoding="utf-8")
    shutil.copy(checkpoints["rnn"], tmp / "existing.pt")
    (tmp / "damaged.pt").write_bytes(checkpoints["rnn"].read_bytes()[:1000])
    (tmp / "empty").mkdir()
    (tmp / "broken" / "m" / "1").mkdir(parents=True)
    (tmp / "broken" / "m" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    http_server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    yield {
        "tmp": str(tmp), "target": server.target, "repository": str(repository), "checkpoint": str(checkpoints["rnn"]),
        "writer": str(checkpoints["writer"]),
        "closed": str(free_port()), "http": str(http_server.server_port),
        "text": str(tmp / "tiny.txt"), "missing": str(tmp / "missing.pem"),
    }
    http_server.shutdown()


@pytest.mark.parametrize("argv, code, words", [pytest.param(*case[1:], id=case[0]) for case in MISTAKES])
def test_a_mistake_is_one_line_and_an_exit_code(places, argv, code, words):
    done = run_cli(*(arg.format(**places) for arg in argv), input="a\n", cwd=places["tmp"])
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    assert done.returncode == code, done.stderr
    assert words.format(**places) in lines[0], lines[0]
    assert lines[0].startswith("rnnserve"), lines[0]


def test_help_lists_choices_and_ends_with_examples():
    for command in ("train", "export", "serve", "generate", "stream", "infer", "models", "health", "token", "describe", "plot", "snapshot", "restore", "fork"):
        done = run_cli(command, "--help")
        assert done.returncode == 0
        assert done.stdout.rstrip().splitlines()[-1].strip().startswith("rnnserve "), f"{command} --help ends without an example"
    train_help = run_cli("train", "--help").stdout
    assert "{rnn,lstm,gru}" in train_help and "{byte,char,bpe,word}" in train_help and "date_normaliser" in train_help


def test_version():
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("rnnserve 0.")


def test_a_refused_stream_ends_before_anything_is_typed(places):
    """A person who resumes a session that is gone learns it at once, not after typing a line: the stream opens
    before stdin is read, and its refusal ends the command while stdin is still open."""
    command = [sys.executable, "-m", "rnnserve", "stream", "--target", places["target"], "--model", "lstm", "--session-id", "gone", "--resume"]
    typing = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        code = typing.wait(timeout=60)  # not communicate(): it would close stdin
    finally:
        typing.kill()
        stderr = typing.stderr.read()
        typing.stdin.close()
    assert code == FAILED, stderr
    assert stderr.strip() == "rnnserve stream: NOT_FOUND: session 'gone' is unknown or expired (named sessions expire after 300 s without a stream)"
