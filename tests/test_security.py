"""TLS, mutual TLS and bearer tokens, with certificates made here by our own CA: the right client is served, the
wrong one refused with a status that says why; health stays open; limits are enforced."""

import datetime
import ipaddress
import re
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rnnserve.client import RnnServeClient
from rnnserve.inference import grpc_service_pb2_grpc as kserve_grpc
from rnnserve.server.sampling import softmax
from rnnserve.server.security import load_tokens
from tests.helpers import ServeProcess, ServerThread, request, run_cli, status_of
from tests.test_triton_client import CHUNKS, native_distributions

PROMPT = dict(prompt="The ", temperature=0.0, max_tokens=30)


class Authority:
    """A certificate authority of our own, writing PEM files."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.key = folder, ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subject
        self.certificate = (
            self._builder(subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = self._write(f"{name}.pem", self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, server: bool = False) -> tuple[str, str]:
        """(certificate, key) files for a server on 127.0.0.1 and localhost, or for a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key(), issuer=self.name)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return self._write(f"{name}.crt", certificate.public_bytes(serialization.Encoding.PEM)), self._write(f"{name}.key", key_pem)

    def _builder(self, subject, public_key, issuer=None) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def _write(self, name: str, data: bytes) -> str:
        path = self.folder / name
        path.write_bytes(data)
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = Authority(folder, "rnnserve-test-ca"), Authority(folder, "someone-else")
    return {
        "ca": ca.path,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client"),
        "stranger": stranger.issue("stranger"),
    }


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """Tokens made the way an operator makes them: every model, and lstm alone."""
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    made = {}
    for name, models in (("all", "*"), ("lstm", "lstm")):
        done = run_cli("token", "--file", str(path), "--models", models, "--name", name)
        assert done.returncode == 0, done.stderr
        made[name] = done.stdout.strip()
    assert all(token not in path.read_text() for token in made.values()), "the file must keep hashes, not tokens"
    assert path.stat().st_mode & 0o777 == 0o600
    return path, made


@pytest.fixture(scope="module")
def secure(base_config, pki, tokens):
    """TLS and tokens."""
    cert, key = pki["server"]
    with ServerThread(replace(base_config, tls_cert=cert, tls_key=key, auth_tokens=str(tokens[0]))) as running:
        yield running


def test_the_startup_line_says_tls_and_tokens_are_on(repository, pki, tokens):
    cert, key = pki["server"]
    flags = ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", pki["ca"], "--auth-tokens", str(tokens[0])]
    with ServeProcess("--repository", str(repository), "--port", "0", "--metrics-port", "-1", *flags) as served:
        line = served.listening
    assert f"TLS: mutual (clients need a certificate from {pki['ca']})" in line and f"tokens: required ({tokens[0]})" in line
    assert "state store: none" in line and "metrics: off" in line
    with ServeProcess("--repository", str(repository), "--port", "0", "--metrics-port", "0") as served:
        line = served.listening
    assert "TLS: off" in line and "tokens: off" in line and re.search(r"metrics: http://127\.0\.0\.1:\d+/metrics", line)


def test_tls_with_a_token_serves_what_plaintext_serves(secure, pki, tokens, client):
    with RnnServeClient(secure.target, timeout_s=30, tls_ca=pki["ca"], token=tokens[1]["all"]) as secure_client:
        assert secure_client.generate_text("lstm", **PROMPT) == client.generate_text("lstm", **PROMPT)


@pytest.mark.parametrize(
    "token, words", [(None, "this server needs a token and none was sent"), ("rns_not-a-token-this-server-knows", "not one this server knows")]
)
def test_a_call_without_a_known_token_is_unauthenticated(secure, pki, token, words):
    with RnnServeClient(secure.target, timeout_s=30, tls_ca=pki["ca"], token=token) as stranger:
        for call in (lambda: stranger.generate_text("lstm", **PROMPT), stranger.list_models, lambda: list(stranger.stream("lstm", ["a"]))):
            error = status_of(call)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert words in error.details()


@pytest.fixture(scope="module")
def mutual(base_config, pki):
    cert, key = pki["server"]
    with ServerThread(replace(base_config, tls_cert=cert, tls_key=key, tls_client_ca=pki["ca"])) as running:
        yield running


@pytest.mark.parametrize(
    "against, flags, words",
    [
        ("secure", [], "{target} speaks TLS: pass --tls-ca"),
        ("plain", ["--tls-ca", "{ca}"], "{target} does not speak TLS: drop --tls-ca"),
        ("secure", ["--tls-ca", "{server_key}"], "--tls-ca {server_key} holds a private key: expected the certificate of the CA"),
        ("secure", ["--tls-ca", "{stranger_ca}"], "the certificate of {target} is not signed by the CA in --tls-ca"),
        ("secure", ["--tls-ca", "{ca}"], "UNAUTHENTICATED: this server needs a token and none was sent"),
        ("secure", ["--tls-ca", "{ca}", "--token", "rns_forged"], "UNAUTHENTICATED: the token sent is not one this server knows"),
        ("mutual", ["--tls-ca", "{ca}"], "it asks for a client certificate (mutual TLS): pass --client-cert and --client-key"),
        ("mutual", ["--tls-ca", "{ca}", "--client-cert", "{stranger_cert}", "--client-key", "{stranger_key}"], "refused this client's certificate"),
        ("mutual", ["--tls-ca", "{ca}", "--client-cert", "{stranger_cert}"], "pass both --client-cert and --client-key"),
    ],
)
def test_a_client_that_does_not_fit_the_server_is_told_what_is_wrong_in_one_line(secure, mutual, server, pki, against, flags, words):
    target = {"secure": secure, "mutual": mutual, "plain": server}[against].target
    places = dict(
        target=target, ca=pki["ca"], server_key=pki["server"][1], stranger_ca=str(Path(pki["ca"]).with_name("someone-else.pem")),
        stranger_cert=pki["stranger"][0], stranger_key=pki["stranger"][1],
    )
    done = run_cli("models", "--target", target, *(flag.format(**places) for flag in flags))
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and words.format(**places) in done.stderr, done.stderr  # and no C-core lines


def test_a_token_for_some_models_is_refused_the_others(secure, pki, tokens):
    with RnnServeClient(secure.target, timeout_s=30, tls_ca=pki["ca"], token=tokens[1]["lstm"]) as scoped:
        assert [m.name for m in scoped.list_models()] == ["lstm"]
        assert scoped.generate_text("lstm", **PROMPT)
        for call in (lambda: scoped.generate_text("gru", **PROMPT), lambda: scoped.get_model("gru")):
            error = status_of(call)
            assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, "this token does not cover model 'gru'")


def test_health_is_open_to_probes_and_plaintext_is_refused(secure, pki):
    done = run_cli("health", "--target", secure.target, "--tls-ca", pki["ca"])  # no token
    assert (done.returncode, done.stdout) == (0, "SERVING\n"), done.stderr
    done = run_cli("health", "--target", secure.target)  # no TLS
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr


def test_tritons_client_over_tls_with_a_token(secure, pki, tokens, client, triton):
    logits = triton("infer_sequence", secure.target, "lstm", CHUNKS, 31, pki["ca"], tokens[1]["all"])
    for got, want in zip(logits, native_distributions(client, "lstm", CHUNKS)):
        assert np.abs(softmax(got[0].astype(np.float64)) - want).max() < 1e-5
    refused = triton("infer_sequence", secure.target, "lstm", CHUNKS, 32, pki["ca"], "")
    assert refused.startswith("StatusCode.UNAUTHENTICATED"), refused
    denied = triton("infer_sequence", secure.target, "gru", CHUNKS, 33, pki["ca"], tokens[1]["lstm"])
    assert denied.startswith("StatusCode.PERMISSION_DENIED"), denied


def test_mutual_tls_serves_only_clients_with_a_certificate_from_its_ca(mutual, pki, client):
    good_cert, good_key = pki["client"]
    with RnnServeClient(mutual.target, timeout_s=30, tls_ca=pki["ca"], tls_cert=good_cert, tls_key=good_key) as good:
        assert good.generate_text("lstm", **PROMPT) == client.generate_text("lstm", **PROMPT)
    stranger_cert, stranger_key = pki["stranger"]
    for credentials in ({}, {"tls_cert": stranger_cert, "tls_key": stranger_key}):
        with RnnServeClient(mutual.target, timeout_s=10, tls_ca=pki["ca"], **credentials) as refused:
            assert status_of(refused.list_models).code() == grpc.StatusCode.UNAVAILABLE


def test_a_message_over_the_limit_is_resource_exhausted(base_config):
    with ServerThread(replace(base_config, max_message_bytes=64 * 1024)) as running:
        with grpc.insecure_channel(running.target) as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(request(tokens=[72] * 10)).outputs  # 10 × 256 logits fit
            error = status_of(lambda: stub.ModelInfer(request(tokens=[72] * 5000)))  # 40 KB in, 5 MB of logits out
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_reflection_can_be_turned_off(base_config):
    with ServerThread(replace(base_config, reflection=False)) as running, grpc.insecure_channel(running.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = lambda: next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))  # noqa: E731
        assert status_of(call).code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    "text, message",
    [
        ("not a hash *\n", "line 1: expected '<sha256 hex of the token> <models or *> [scope:operator] [name]'"),
        ("# only a comment\n", "no tokens in it"),
    ],
)
def test_a_bad_tokens_file_is_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "tokens.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("[", r"\[")):
        load_tokens(str(path))
