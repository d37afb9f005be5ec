"""Models that take numbers: Silero VAD from its own pip package, described with the README's one command, served,
and checked chunk by chunk against the package's own OnnxWrapper run in-process."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import threading
import wave
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from rnnserve.client import audio_request, outputs_of, rows_outputs, session_chunk, session_rows, values_tensor
from rnnserve.client.segments import SpeechSegments
from rnnserve.v1 import rnnserve_pb2 as pb
from tests.helpers import ServerThread, describe_vad, run_cli, status_of, together

CHUNK, RATE = 512, 16000


def silero_wrapper():
    """silero_vad's OnnxWrapper class (importing the package sets torch's threads to 1: put back as they were)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    from silero_vad.utils_vad import OnnxWrapper

    torch.set_num_threads(threads)
    return OnnxWrapper


def silero_path() -> Path:
    """The ONNX file the silero-vad package ships (found without importing it: that sets torch's threads to 1)."""
    return Path(importlib.util.find_spec("silero_vad").origin).parent / "data" / "silero_vad.onnx"


@pytest.fixture(scope="module")
def silero_file() -> Path:
    pytest.importorskip("silero_vad", reason="the dev extra installs silero-vad")
    return silero_path()


@pytest.fixture(scope="module")
def vad_repository(tmp_path_factory, silero_file, repository) -> Path:
    """The token models' repository and the VAD beside them, described as the README says."""
    root = tmp_path_factory.mktemp("values-models")
    shutil.copytree(repository / "lstm", root / "lstm")
    describe_vad(silero_file, root)
    frames_graph(root / "frames.onnx")
    done = run_cli("describe", str(root / "frames.onnx"), "--input", "frames:6", "--state", "h0:h1", "--state", "c0:c1", "--out", str(root / "frames" / "1" / "model.onnx"))
    assert done.returncode == 0, done.stderr
    return root


def frames_module():
    """A sensor-frame model written the natural way: nn.LSTM over [batch, T, 6], its state [layers, batch, hidden]."""
    import torch
    from torch import nn

    class Frames(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = nn.LSTM(6, 32, num_layers=2, batch_first=True), nn.Linear(32, 3)

        def forward(self, frames, h, c):
            x, (h, c) = self.lstm(frames, (h, c))
            return self.head(x), h, c

    torch.manual_seed(0)
    return Frames().eval()


def frames_graph(path: Path) -> None:
    """Exported by the user's own torch.onnx.export call, with the user's names."""
    import torch

    args = (torch.randn(2, 7, 6), torch.zeros(2, 2, 32), torch.zeros(2, 2, 32))
    axes = {"frames": {0: "batch", 1: "T"}, "scores": {0: "batch", 1: "T"}} | {n: {1: "batch"} for n in ("h0", "c0", "h1", "c1")}
    torch.onnx.export(frames_module(), args, str(path), input_names=["frames", "h0", "c0"], output_names=["scores", "h1", "c1"],
                      dynamic_axes=axes, dynamo=False)


@pytest.fixture(scope="module")
def vad_server(base_config, vad_repository):
    with ServerThread(replace(base_config, repository=str(vad_repository), max_sessions=40)) as running:
        yield running


def reference(silero_file: Path, audio: np.ndarray) -> np.ndarray:
    """Every chunk's speech probability as silero_vad's own wrapper computes it, one session in-process."""
    import torch

    wrapper = silero_wrapper()(str(silero_file), force_onnx_cpu=True)
    return np.array([float(wrapper(torch.from_numpy(audio[i : i + CHUNK]), RATE)[0, 0]) for i in range(0, len(audio), CHUNK)])


def noisy_audio(seed: int, chunks: int) -> np.ndarray:
    """Noise, silence and tones at varying levels: whatever a microphone gives."""
    rng = np.random.default_rng(seed)
    t = np.arange(chunks * CHUNK) / RATE
    tone = np.sin(2 * np.pi * rng.uniform(100, 900) * t) * (np.sin(2 * np.pi * rng.uniform(0.5, 3) * t) > 0)
    return (rng.uniform(0.01, 0.3) * tone + rng.uniform(0.001, 0.05) * rng.standard_normal(t.size)).astype(np.float32)


def streamed(client, audio: np.ndarray, per_message: int, **kwargs) -> np.ndarray:
    chunks = audio.reshape(-1, CHUNK)
    messages = [chunks[i : i + per_message] for i in range(0, len(chunks), per_message)]
    return np.concatenate([outputs_of(answer)["output"][:, 0] for answer in client.stream("vad", messages, **kwargs)])


def test_the_described_vad_says_what_it_takes(vad_server):
    with vad_server.client() as client:
        info = client.get_model("vad")
    assert (info.task, info.input.name, info.input.dtype, list(info.input.step_shape), info.input.sample_rate) == (
        "voice_activity", "input", "float32", [512], 16000
    )
    assert list(info.outputs) == ["output"] and list(info.calls) == ["Stream"]
    assert [(s.name, list(s.shape)) for s in info.state] == [("state", [2, 128]), ("input_context", [64])]


def test_32_concurrent_vad_streams_equal_silero_vads_own_wrapper(vad_server, silero_file):
    audios = [noisy_audio(seed, 24 + seed % 5) for seed in range(32)]
    expected = [reference(silero_file, audio) for audio in audios]
    with vad_server.client() as client:
        before = client.get_model("vad").runtime_calls
        got = together([lambda a=audio, n=1 + i % 3: streamed(client, a, n) for i, audio in enumerate(audios)])
        calls = client.get_model("vad").runtime_calls - before
    for seed, (mine, theirs) in enumerate(zip(got, expected)):
        assert mine.shape == theirs.shape and np.abs(mine - theirs).max() < 1e-5, seed
    chunks = sum(len(e) for e in expected)
    assert calls < chunks, f"{calls} onnxruntime calls for {chunks} chunks of 32 streams: nothing was batched"


def multiplexed(client, audios: list[np.ndarray], per_message: int, prefix: str) -> tuple[list[np.ndarray], list]:
    """Every session's chunks on one StreamMany stream: each message carries `per_message` steps of every session
    still going; per session its probabilities, and every answer that was not an output."""
    chunked = [audio.reshape(-1, CHUNK) for audio in audios]
    messages, longest = [], max(len(c) for c in chunked)
    for start in range(0, longest, per_message):
        messages.append([
            session_chunk(f"{prefix}-{n}", steps[start : start + per_message], model="vad" if start == 0 else "", close=start + per_message >= len(steps))
            for n, steps in enumerate(chunked) if start < len(steps)
        ])
    got: dict[str, list[np.ndarray]] = {}
    for response in client.stream_many(messages):
        for answer in response.answers:
            assert answer.code == 0, answer.message
            got.setdefault(answer.session_id, []).append(outputs_of(answer.answer)["output"][:, 0])
    return [np.concatenate(got[f"{prefix}-{n}"]) for n in range(len(audios))]


def test_32_vad_sessions_multiplexed_on_one_stream_equal_silero_vads_own_wrapper(vad_server, silero_file):
    audios = [noisy_audio(200 + seed, 12 + seed % 5) for seed in range(32)]
    with vad_server.client() as client:
        before = client.get_model("vad").runtime_calls
        got = multiplexed(client, audios, 2, "many")
        calls = client.get_model("vad").runtime_calls - before
        assert client.get_model("vad").active_sessions == 0  # each closed with its last chunk
    for seed, (mine, audio) in enumerate(zip(got, audios)):
        assert np.abs(mine - reference(silero_file, audio)).max() < 1e-5, seed
    # a message's steps share calls (not always one: the engine may split 32 rows × 2 steps into pieces of 2 ms)
    steps = sum(len(a) // CHUNK for a in audios)
    assert calls * 4 <= steps, f"{calls} onnxruntime calls for {steps} steps of 32 sessions: they were not batched"


def test_a_bad_chunk_in_a_multiplexed_message_fails_alone(vad_server, silero_file):
    audio = noisy_audio(5, 6).reshape(-1, CHUNK)
    expected = reference(silero_file, audio.ravel())
    with vad_server.client() as client:
        first = [session_chunk("mux-good", audio[:2], model="vad"), session_chunk("mux-nan", np.full((1, 512), np.nan, np.float32), model="vad"),
                 session_chunk("mux-unknown", audio[:1]), session_chunk("mux-model", audio[:1], model="nope"), session_chunk("", audio[:1])]
        second = [session_chunk("mux-good", audio[2:4]), session_chunk("mux-good", audio[4:], close=True), session_chunk("mux-nan", audio[:1], close=True)]
        answers = [list(r.answers) for r in client.stream_many([first, second])]
    codes = [[(a.session_id, grpc.StatusCode.OK.value[0] if a.code == 0 else a.code) for a in message] for message in answers]
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.NOT_FOUND.value[0]
    assert codes == [
        [("mux-good", 0), ("mux-nan", invalid), ("mux-unknown", not_found), ("mux-model", not_found), ("", invalid)],
        [("mux-good", 0), ("mux-good", 0), ("mux-nan", 0)],
    ]
    assert "values[0]" in answers[0][1].message and "not open on this stream" in answers[0][2].message
    good = np.concatenate([outputs_of(a.answer)["output"][:, 0] for a in (answers[0][0], answers[1][0], answers[1][1])])
    assert np.abs(good - expected).max() < 1e-5  # in order, and undisturbed by its neighbours' mistakes


def test_32_vad_sessions_sent_as_rows_equal_silero_vads_own_wrapper(vad_server, silero_file):
    """Rows: one tensor [32, 1, 512] a message for 32 sessions opened on the stream (a tick of 32 microphones),
    answered as arrays, each message one onnxruntime call."""
    audios = [noisy_audio(400 + seed, 12).reshape(-1, CHUNK) for seed in range(32)]
    names = [f"rows-{n}" for n in range(32)]
    messages = [[session_chunk(name, model="vad") for name in names]]  # opened with no steps
    messages += [session_rows(names, np.stack([a[k : k + 1] for a in audios]), close=k == 11) for k in range(12)]
    with vad_server.client() as client:
        before = client.get_model("vad").runtime_calls
        responses = list(client.stream_many(messages))
        calls = client.get_model("vad").runtime_calls - before
        assert client.get_model("vad").active_sessions == 0
    answered = [rows_outputs(r) for r in responses[1:]]
    assert all(codes == [(0, "")] * 32 for _, codes in answered)
    assert [list(r.rows.positions) for r in responses[1:]] == [[k + 1] * 32 for k in range(12)]
    got = np.concatenate([outputs["output"][:, :, 0] for outputs, _ in answered], axis=1)  # [32, 12]
    for n, audio in enumerate(audios):
        assert np.abs(got[n] - reference(silero_file, audio.ravel())).max() < 1e-5, n
    assert calls == len(answered), f"{calls} onnxruntime calls for {len(answered)} messages of rows"


def test_sessions_sent_as_rows_go_on_exactly_on_another_server_through_the_state_store(base_config, vad_repository, silero_file, redis_server):
    """Rows keep each session's store behaviour: 8 sessions stepped as rows on server A go on, resumed as rows on
    server B, from the state A left in Redis (the carried context too), as if one server had served them."""
    audios = [noisy_audio(500 + seed, 7).reshape(-1, CHUNK) for seed in range(8)]
    names = [f"rs-{n}" for n in range(8)]
    config = replace(base_config, repository=str(vad_repository), max_sessions=40, state_store=redis_server.url, state_write_interval_ms=0)
    with ServerThread(config) as a, ServerThread(config) as b, a.client() as on_a, b.client() as on_b:
        first = list(on_a.stream_many([[session_chunk(n, model="vad") for n in names],
                                        *(session_rows(names, np.stack([x[k : k + 1] for x in audios])) for k in range(3))]))
        for name in names:
            redis_server.wait_for_position(f"session:{name}", 3)
            redis_server.wait_for_release(f"session:{name}")  # A's stream ended: it let them go
        rest = list(on_b.stream_many([[session_chunk(n, model="vad", resume=True) for n in names],
                                       *(session_rows(names, np.stack([x[k : k + 1] for x in audios])) for k in range(3, 7))]))
    answered = [rows_outputs(r) for r in first[1:] + rest[1:]]
    assert all(codes == [(0, "")] * 8 for _, codes in answered)
    assert list(rest[-1].rows.positions) == [7] * 8
    got = np.concatenate([outputs["output"][:, :, 0] for outputs, _ in answered], axis=1)
    for n, audio in enumerate(audios):
        assert np.abs(got[n] - reference(silero_file, audio.ravel())).max() < 1e-5, n


def test_bad_rows_fail_alone_and_disturb_no_other_row(vad_server, silero_file):
    audio = noisy_audio(11, 4).reshape(-1, CHUNK)
    expected = reference(silero_file, audio.ravel())
    opening = [session_chunk(name, model="vad") for name in ("br-a", "br-b", "br-nan")] + [session_chunk("br-frames", model="frames")]
    rows = np.stack([audio[:1], audio[:1], np.full((1, 512), np.nan, np.float32), audio[:1], audio[:1], audio[:1]])
    mixed = session_rows(["br-a", "br-b", "br-nan", "br-unknown", "br-a", "br-frames"], rows)
    bad_shape = session_rows(["br-a", "br-b"], np.zeros((2, 1, 480), np.float32))
    rest = session_rows(["br-a", "br-b", "br-nan"], np.stack([audio[1:4]] * 3))
    with vad_server.client() as client:
        responses = list(client.stream_many([opening, mixed, bad_shape, rest]))
    (mixed_out, mixed_codes), (_, shape_codes), (rest_out, rest_codes) = (rows_outputs(r) for r in responses[1:])
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.NOT_FOUND.value[0]
    assert [c for c, _ in mixed_codes] == [0, 0, invalid, not_found, invalid, invalid]
    assert [m.split(":")[0] for _, m in mixed_codes[2:]] == ["rows.values[2]", "rows.session_ids[3]", "rows.session_ids[4]", "rows.session_ids[5]"]
    assert "named twice" in mixed_codes[4][1] and "of model 'frames'" in mixed_codes[5][1]
    assert list(responses[1].rows.positions) == [1, 1, 0, 0, 0, 0] and not mixed_out["output"][2:].any()
    assert [c for c, _ in shape_codes] == [invalid, invalid] and "rows.values.shape" in shape_codes[0][1] and "[2, T, 512]" in shape_codes[0][1]
    assert rest_codes == [(0, "")] * 3 and list(responses[3].rows.positions) == [4, 4, 3]
    for n in (0, 1):  # a and b went on undisturbed; the NaN row did not step its session
        assert np.abs(np.concatenate([mixed_out["output"][n, :, 0], rest_out["output"][n, :, 0]]) - expected).max() < 1e-5
    assert np.abs(rest_out["output"][2, :, 0] - reference(silero_file, audio[1:4].ravel())).max() < 1e-5


def test_bad_chunks_of_open_sessions_fail_alone_where_the_rest_are_read_together(vad_server, silero_file):
    """Chunks of open sessions are checked and read in one go; those that do not fit it (another step count, a
    mistake) are read one by one, and each mistake is named in its own answer."""
    audio = noisy_audio(9, 5).reshape(-1, CHUNK)
    expected = reference(silero_file, audio.ravel())
    names = ["rt-good", "rt-two", "rt-nan", "rt-shape", "rt-name", "rt-after"]
    with vad_server.client() as client:
        opening = [session_chunk(name, audio[:1], model="vad") for name in names]
        mixed = [
            session_chunk("rt-good", audio[1:2]), session_chunk("rt-two", audio[1:3]),
            session_chunk("rt-nan", np.full((1, 512), np.nan, np.float32)), session_chunk("rt-shape", np.zeros((1, 480), np.float32)),
            pb.SessionChunk(session_id="rt-name", values=pb.Tensor(name="audio", dtype="float32", shape=[1, 512], data=bytes(2048))),
            session_chunk("rt-after", audio[1:2]),
        ]
        closing = [session_chunk(name, audio[1:2] if name in ("rt-nan", "rt-shape", "rt-name") else audio[3:5] if name == "rt-two" else audio[2:5], close=True) for name in names]
        answers = [list(r.answers) for r in client.stream_many([opening, mixed, closing])]
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [a.code for a in answers[1]] == [0, 0, invalid, invalid, invalid, 0] and all(a.code == 0 for m in (answers[0], answers[2]) for a in m)
    assert [(a.session_id, a.message.split(":")[0]) for a in answers[1][2:5]] == [("rt-nan", "values[0]"), ("rt-shape", "values.shape"), ("rt-name", "values.name")]
    for n, name in enumerate(names):
        got = np.concatenate([outputs_of(m[n].answer)["output"][:, 0] for m in answers if m[n].code == 0])
        want = expected[:2] if name in ("rt-nan", "rt-shape", "rt-name") else expected
        assert np.abs(got - want).max() < 1e-5, name  # a refused chunk did not step its session; the others went on


def test_a_wide_batch_run_as_parallel_calls_equals_one_call(base_config, vad_repository, silero_file):
    """--parallel-calls 2: each message of 36 open sessions runs as two onnxruntime calls at once, on disjoint rows
    of the slab, and every chunk's probability is still the wrapper's."""
    audios = [noisy_audio(300 + seed, 6).reshape(-1, CHUNK) for seed in range(36)]
    config = replace(base_config, repository=str(vad_repository), max_sessions=40, threads=1, parallel_calls=2)
    opened, counted = threading.Event(), []

    def messages():
        yield [session_chunk(f"par-{n}", steps[:1], model="vad") for n, steps in enumerate(audios)]
        opened.wait(30)  # the sessions are open and stepped: count the calls of the messages after it
        counted.append(client.get_model("vad").runtime_calls)
        for k in range(1, 6):
            yield [session_chunk(f"par-{n}", steps[k : k + 1], close=k == 5) for n, steps in enumerate(audios)]

    outputs: dict[str, list[np.ndarray]] = {}
    with ServerThread(config) as server, server.client() as client:
        for response in client.stream_many(messages()):
            opened.set()
            for answer in response.answers:
                assert answer.code == 0, answer.message
                outputs.setdefault(answer.session_id, []).append(outputs_of(answer.answer)["output"][:, 0])
        calls = client.get_model("vad").runtime_calls - counted[0]
    for n, steps in enumerate(audios):
        assert np.abs(np.concatenate(outputs[f"par-{n}"]) - reference(silero_file, steps.ravel())).max() < 1e-5, n
    assert calls == 2 * 5, f"{calls} onnxruntime calls for 5 messages of 36 sessions: expected two calls each"


def test_32_vad_sequences_over_tritons_own_client_equal_silero_vads_own_wrapper(vad_server, silero_file, triton):
    """tritonclient unchanged: FP32 [1, steps, 512] requests of 32 sequences interleaved on one ModelStreamInfer."""
    audios = [noisy_audio(100 + seed, 10 + seed % 4) for seed in range(32)]
    got = triton("stream_values", vad_server.target, "vad", [a.reshape(-1, CHUNK) for a in audios], 3)
    for seed, (mine, audio) in enumerate(zip(got, audios)):
        assert np.abs(mine - reference(silero_file, audio)).max() < 1e-5, seed
    facts = triton("server_facts", vad_server.target, "vad")
    assert facts["inputs"] == [("input", "FP32", [-1, -1, 512])] and facts["outputs"] == [("output", "FP32", [-1, -1, 1])]


def test_a_vad_session_snapshotted_restored_and_forked_goes_on_exactly(vad_server, silero_file):
    """The carried context is state: a restored or forked session continues with the last 64 samples it had."""
    audio = noisy_audio(99, 20)
    expected = reference(silero_file, audio)
    first, rest = audio[: 10 * CHUNK], audio[10 * CHUNK :]
    with vad_server.client() as client:
        streamed(client, first, 2, session_id="vad-a")
        blob = client.snapshot_session("vad-a").blob
        client.fork_session("vad-a", "vad-b")
        client.restore_session(blob, session_id="vad-c")
        for name in ("vad-a", "vad-b", "vad-c"):
            assert np.abs(streamed(client, rest, 3, session_id=name, resume=True) - expected[10:]).max() < 1e-5, name
            client.close_session(name)


def speech(text: str, tmp_path: Path) -> np.ndarray:
    """Real speech, synthesised by espeak-ng and resampled to 16 kHz by sox."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("needs espeak-ng and sox (Debian packages; .ci/run installs them as root)")
    spoken, resampled = tmp_path / "spoken.wav", tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(spoken), text], check=True, capture_output=True)
    subprocess.run(["sox", str(spoken), "-r", str(RATE), "-c", "1", "-b", "16", str(resampled)], check=True, capture_output=True)
    with wave.open(str(resampled)) as file:
        return np.frombuffer(file.readframes(file.getnframes()), "<i2").astype(np.float32) / 32768


def test_speech_is_found_where_it_was_put(vad_server, silero_file, tmp_path):
    voice = speech("The quick brown fox jumps over the lazy dog, and then it runs away into the forest.", tmp_path)
    rng = np.random.default_rng(3)
    silence = lambda seconds: (0.003 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)  # noqa: E731
    audio = np.concatenate([silence(1.5), voice, silence(2.0)])
    audio = np.pad(audio, (0, -len(audio) % CHUNK))
    spoken = slice(int(1.5 * RATE) // CHUNK, (int(1.5 * RATE) + len(voice)) // CHUNK)
    with vad_server.client() as client:
        probabilities = streamed(client, audio, 4)
    assert np.abs(probabilities - reference(silero_file, audio)).max() < 1e-5
    during, outside = probabilities[spoken], np.concatenate([probabilities[: spoken.start], probabilities[spoken.stop + 8 :]])
    assert (during > 0.5).mean() > 0.6, f"speech found in {(during > 0.5).mean():.0%} of the spoken chunks"
    assert (outside > 0.5).mean() < 0.05, f"speech found in {(outside > 0.5).mean():.0%} of the silent chunks"


BAD_VALUES = [
    ("float64", pb.Tensor(dtype="float64", shape=[1, 512], data=bytes(8 * 512)), "values.dtype", "float32"),
    ("wrong step size", values_tensor(np.zeros((1, 480), np.float32)), "values.shape", "[T, 512]"),
    ("no step axis", pb.Tensor(dtype="float32", shape=[512], data=bytes(4 * 512)), "values.shape", "[T, 512]"),
    ("short data", pb.Tensor(dtype="float32", shape=[2, 512], data=bytes(4 * 512)), "values.data", "expected 4096"),
    ("NaN", values_tensor(np.where(np.arange(1024).reshape(2, 512) == 700, np.nan, 0).astype(np.float32)), "values[1]", "NaN"),
    ("infinity", values_tensor(np.full((1, 512), np.inf, np.float32)), "values[0]", "finite"),
    ("another input's name", pb.Tensor(name="audio", dtype="float32", shape=[1, 512], data=bytes(4 * 512)), "values.name", "'input'"),
]


@pytest.mark.parametrize("case, tensor, field, words", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_values_are_refused_by_name_and_disturb_no_other_session(vad_server, silero_file, case, tensor, field, words):
    audio = noisy_audio(7, 8)
    expected = reference(silero_file, audio)
    with vad_server.client() as client:
        streamed(client, audio[: 4 * CHUNK], 2, session_id=f"canary-{case}")
        error = status_of(lambda: list(client.stream("vad", [pb.StreamRequest(values=tensor)])))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert field in error.details() and words in error.details(), error.details()
        after = streamed(client, audio[4 * CHUNK :], 2, session_id=f"canary-{case}", resume=True)
        client.close_session(f"canary-{case}")
    assert np.abs(after - expected[4:]).max() < 1e-5


KSERVE_MISTAKES = [
    ("INT64", np.zeros((1, 2, 512), np.int64), "datatype INT64: this input is input (FP32 [-1, -1, 512])"),
    ("FP32", np.zeros((1, 2, 480), np.float32), "shape [1, 2, 480] does not fit [-1, -1, 512]"),
    ("FP32", np.where(np.arange(1024).reshape(1, 2, 512) == 600, np.inf, 0).astype(np.float32), "row 0, step 1 holds NaN or infinity"),
]


@pytest.mark.parametrize("datatype, array, words", KSERVE_MISTAKES, ids=["int64", "shape", "infinity"])
def test_bad_kserve_values_are_refused_by_name(vad_server, datatype, array, words):
    from rnnserve.inference import grpc_service_pb2 as kserve_pb
    from rnnserve.inference import grpc_service_pb2_grpc as kserve_grpc

    message = kserve_pb.ModelInferRequest(model_name="vad", raw_input_contents=[array.tobytes()])
    message.inputs.add(name="input", datatype=datatype, shape=array.shape)
    with grpc.insecure_channel(vad_server.target) as channel:
        error = status_of(lambda: kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "inputs[input]" in error.details() and words in error.details(), error.details()


def test_text_to_a_values_model_and_values_to_a_token_model_are_refused(vad_server):
    with vad_server.client() as client:
        error = status_of(lambda: list(client.stream("vad", ["hello"])))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "takes values, not text" in error.details(), error.details()
        error = status_of(lambda: list(client.stream("lstm", [np.zeros((1, 512), np.float32)])))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "reads tokens" in error.details(), error.details()
        error = status_of(lambda: list(client.generate("vad", "x")))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()


DESCRIBE_MISTAKES = [
    (["--state", "state:stateN", "--input", "input:512"], "sr (fix each with --constant NAME=VALUE)"),
    (["--state", "state:stateN", "--input", "audio:512", "--constant", "sr=16000"], "no input 'audio' in the graph (input, state, sr)"),
    (["--state", "h:stateN", "--input", "input:512", "--constant", "sr=16000"], "no input 'h'"),
    (["--state", "state:stateN", "--input", "input:512", "--constant", "sr=16000", "--task", "vad"], "--sample-rate"),
    (["--state", "state:stateN", "--input", "input:512", "--constant", "sr=fast"], "--constant sr=fast: not a int64"),
    (["--state", "state:stateN", "--input", "input", "--constant", "sr=16000"], "expected NAME:VALUES"),
]


@pytest.mark.parametrize("flags, words", DESCRIBE_MISTAKES, ids=[m[1][:30] for m in DESCRIBE_MISTAKES])
def test_describe_refuses_what_does_not_fit_in_words(silero_file, tmp_path, flags, words):
    done = run_cli("describe", str(silero_file), *flags, "--out", str(tmp_path / "vad.onnx"))
    assert done.returncode != 0 and words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "vad.onnx").exists()


def test_describe_without_a_tokenizer_or_input_says_which_is_missing(tmp_path):
    done = run_cli("describe", os.devnull, "--state", "h:h_next")
    assert done.returncode != 0 and "--tokenizer is required" in done.stderr, done.stderr


def pcm16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16)


def test_audio_of_any_length_is_cut_into_steps_and_the_rest_waits_even_in_a_snapshot(vad_server, silero_file):
    """PCM16 in messages of sizes that are not 512: the server cuts them into chunks and keeps what is left for the
    next message; a snapshot taken with samples waiting restores with them."""
    samples = pcm16(noisy_audio(11, 16))
    expected = reference(silero_file, samples.astype(np.float32) / 32768)
    sizes = [700, 300, 1500, 13, 2000]  # 4513 samples: 8 chunks and 417 waiting
    cuts = np.cumsum(sizes)
    with vad_server.client() as client:
        first = [audio_request(part, RATE) for part in np.split(samples[: cuts[-1]], cuts[:-1])]
        answers = list(client.stream("vad", first, session_id="pcm"))
        assert [a.position for a in answers] == [1, 1, 4, 4, 8]
        blob = client.snapshot_session("pcm").blob
        client.restore_session(blob, session_id="pcm-restored")
        for name in ("pcm", "pcm-restored"):
            rest = [audio_request(samples[cuts[-1] :].tobytes(), RATE)]  # as bytes, the way a WAV file's frames are
            later = list(client.stream("vad", rest, session_id=name, resume=True))
            got = np.concatenate([outputs_of(a)["output"][:, 0] for a in answers + later if a.outputs])
            assert later[-1].position == 16 and np.abs(got - expected).max() < 1e-5, name
            client.close_session(name)


BAD_AUDIO = [
    ("odd bytes", pb.Audio(encoding=pb.Audio.PCM16, sample_rate=16000, data=bytes(1025)), "audio.data", "not a whole number of pcm16 samples"),
    ("8 kHz", pb.Audio(encoding=pb.Audio.PCM16, sample_rate=8000, data=bytes(1024)), "audio.sample_rate", "takes 16000 Hz"),
    ("no encoding", pb.Audio(sample_rate=16000, data=bytes(1024)), "audio.encoding", "PCM16 or FLOAT32"),
    ("NaN", pb.Audio(encoding=pb.Audio.FLOAT32, sample_rate=16000, data=np.full(600, np.nan, np.float32).tobytes()), "audio.data", "NaN"),
]


@pytest.mark.parametrize("case, audio, field, words", BAD_AUDIO, ids=[c[0] for c in BAD_AUDIO])
def test_bad_audio_is_refused_by_name(vad_server, case, audio, field, words):
    with vad_server.client() as client:
        error = status_of(lambda: list(client.stream("vad", [pb.StreamRequest(audio=audio)])))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.details() and words in error.details(), error.details()
        error = status_of(lambda: list(client.stream("lstm", [pb.StreamRequest(audio=audio)])))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "reads tokens" in error.details(), error.details()


def test_segments_follow_silero_vads_streaming_rules():
    segments = SpeechSegments(chunk_s=0.032, threshold=0.5, min_silence_ms=100, min_speech_ms=250, pad_ms=30)
    probabilities = [0.1] * 10 + [0.9] * 20 + [0.4] * 2 + [0.9] * 5 + [0.1] * 10 + [0.9] * 3 + [0.1] * 10 + [0.8] * 12
    found = segments.feed(probabilities)  # a dip to 0.4 is not silence; 3 chunks of speech are too short
    assert [(round(a, 3), round(b, 3)) for a, b in found] == [(0.29, 1.214)]
    assert [(round(a, 3), round(b, 3)) for a, b in segments.finish()] == [(1.89, 2.304)]  # still open at the end: to the end


def test_the_cli_prints_the_speech_segments_of_a_wav_file(vad_server, tmp_path):
    voice = speech("Good morning. The server found this speech while it streamed.", tmp_path)
    audio = np.concatenate([np.zeros(2 * RATE, np.float32), voice, np.zeros(RATE, np.float32)])
    path = tmp_path / "call.wav"
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1), file.setsampwidth(2), file.setframerate(RATE)
        file.writeframes(pcm16(audio).tobytes())
    done = run_cli("stream", "--model", "vad", "--audio", str(path), "--target", vad_server.target)
    assert done.returncode == 0, done.stderr
    segments = [tuple(float(x) for x in line.split()[1::3][:2]) for line in done.stdout.splitlines() if line.startswith("speech")]
    assert segments and 1.8 <= segments[0][0] <= 2.3 and 2 + len(voice) / RATE - 0.6 <= segments[-1][1] <= 2 + len(voice) / RATE + 0.3, done.stdout
    resampled = tmp_path / "call-8k.wav"
    subprocess.run(["sox", str(path), "-r", "8000", str(resampled)], check=True, capture_output=True)
    done = run_cli("stream", "--model", "vad", "--audio", str(resampled), "--target", vad_server.target)
    assert done.returncode != 0 and "8000 Hz; model 'vad' takes 16000 Hz (sox" in done.stderr, done.stderr


def test_a_frame_model_over_steps_streams_exactly_what_torch_computes_whole(vad_server):
    """A graph that takes [batch, T, values] needs no Scan: its state's batch axis is moved around it once. Chunks of
    any length, from 8 sessions at once, equal the PyTorch module run over each whole sequence."""
    import torch

    rng = np.random.default_rng(8)
    sequences = [rng.standard_normal((20 + i, 6)).astype(np.float32) for i in range(8)]
    with torch.no_grad():
        expected = [frames_module()(torch.from_numpy(x)[None], torch.zeros(2, 1, 32), torch.zeros(2, 1, 32))[0][0].numpy() for x in sequences]
    with vad_server.client() as client:
        assert (client.get_model("frames").input.name, list(client.get_model("frames").input.step_shape)) == ("frames", [6])

        def run(x: np.ndarray) -> np.ndarray:
            cuts = [0, 1, 4, 5, 13, len(x)]
            return np.concatenate([outputs_of(a)["scores"] for a in client.stream("frames", [x[a:b] for a, b in zip(cuts, cuts[1:])])])

        got = together([lambda x=x: run(x) for x in sequences])
    for mine, theirs in zip(got, expected):
        assert mine.shape == theirs.shape and np.abs(mine - theirs).max() < 1e-5


def test_the_cli_streams_numbers_from_a_csv_file(vad_server, tmp_path):
    rows = np.random.default_rng(9).standard_normal((4, 6)).round(3)
    (tmp_path / "readings.csv").write_text("".join(",".join(map(str, row)) + "\n" for row in rows))
    done = run_cli("stream", "--model", "frames", "--values", str(tmp_path / "readings.csv"), "--target", vad_server.target)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 0", "step 1", "step 2", "step 3"] and "scores " in lines[0], done.stdout
