"""`rnnserve serve`'s configuration as operators give it: flags, RNNSERVE_* environment variables and a TOML file
(in that order of precedence), and JSON logs with a record per call."""

import json
import os
import signal
import subprocess
import sys

import grpc
import pytest

from rnnserve.cli import build_parser
from rnnserve.client import RnnServeClient
from rnnserve.inference import grpc_service_pb2_grpc as kserve_grpc
from rnnserve.options import config_from
from rnnserve.server.config import ServerConfig
from tests.helpers import request, run_cli, status_of


def serve_config(argv: list[str], environ: dict[str, str]) -> ServerConfig:
    return config_from(ServerConfig, build_parser().parse_args(["serve", *argv]), environ)


@pytest.fixture
def toml(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text('port = 7001\nmax-batch = 8\nlog_format = "json"\ngrace-s = 3\n')
    return str(path)


def test_a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default(toml):
    environ = {"RNNSERVE_PORT": "7002", "RNNSERVE_MAX_SESSIONS": "9", "HOME": "/root"}
    flagged = serve_config(["--config", toml, "--port", "7003"], environ)
    assert (flagged.port, flagged.max_batch, flagged.max_sessions, flagged.log_format, flagged.grace_s) == (7003, 8, 9, "json", 3.0)
    assert serve_config(["--config", toml], environ).port == 7002
    assert serve_config(["--config", toml], {}).port == 7001
    assert serve_config([], {}) == ServerConfig()


@pytest.mark.parametrize(
    "file_text, environ, message",
    [
        ("prot = 1\n", {}, "unknown setting 'prot'; the settings are: repository, host, port"),
        ('port = "8001"\n', {}, "port = '8001' is not an integer"),
        ("port = [\n", {}, "not TOML"),
        ("", {"RNNSERVE_PORT": "eighty"}, "RNNSERVE_PORT='eighty' is not an integer"),
        ("", {"RNNSERVE_MAX_QUEUE_DELAY_MS": "soon"}, "RNNSERVE_MAX_QUEUE_DELAY_MS='soon' is not a number"),
        ("", {"RNNSERVE_LOG_FORMAT": "xml"}, "--log-format 'xml': expected one of text, json"),
        ("max-batch = 0\n", {}, "--max-batch must be at least 1, not 0"),
    ],
)
def test_a_bad_setting_is_refused_naming_where_it_came_from(tmp_path, file_text, environ, message):
    path = tmp_path / "serve.toml"
    path.write_text(file_text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        serve_config(["--config", str(path)], environ)


def test_the_command_says_so_in_one_line(tmp_path):
    done = run_cli("serve", env=os.environ | {"RNNSERVE_PORT": "eighty"})
    assert (done.returncode, done.stderr) == (1, "rnnserve serve: RNNSERVE_PORT='eighty' is not an integer\n")
    done = run_cli("serve", "--config", str(tmp_path / "missing.toml"))
    assert (done.returncode, done.stderr) == (1, f"rnnserve serve: --config {tmp_path / 'missing.toml'}: No such file or directory\n")


def test_json_logs_are_one_object_per_line_with_a_record_per_call(repository, tmp_path):
    settings = tmp_path / "serve.toml"
    settings.write_text(f'repository = "{repository}"\nport = 0\ngrace-s = 1\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "rnnserve", "serve", "--config", str(settings)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"RNNSERVE_LOG_FORMAT": "json"},
    )
    try:
        listening = json.loads(process.stdout.readline())
        assert listening["event"] == "listening" and listening["message"].startswith("rnnserve listening on 127.0.0.1:")
        target = f"127.0.0.1:{listening['port']}"
        with RnnServeClient(target) as client:
            client.generate_text("lstm", "The ", temperature=0.0, max_tokens=5)
            session = list(client.stream("lstm", ["ab", "c"]))[0].session_id
            assert status_of(lambda: client.generate_text("nope", "x")).code() == grpc.StatusCode.NOT_FOUND
        with grpc.insecure_channel(target) as channel:
            kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request(tokens=[72], sequence=77, start=True, end=True))
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    records = [json.loads(line) for line in stderr.splitlines()]  # every line is a JSON object
    calls = [(r["api"], r["method"], r["model"], r["session"], r["status"]) for r in records if r["logger"] == "rnnserve.calls"]
    assert calls == [
        ("native", "Generate", "lstm", "", "OK"),
        ("native", "Stream", "lstm", session, "OK"),
        ("native", "Stream", "lstm", session, "OK"),
        ("native", "Generate", "nope", "", "NOT_FOUND"),
        ("kserve", "ModelInfer", "lstm", "77", "OK"),
    ]
    timed = [r for r in records if r["logger"] == "rnnserve.calls"]
    assert all(r["duration_ms"] >= 0 and r["time"].endswith("Z") and r["level"] == "INFO" for r in timed)
