"""What a request asks of a model, checked against the model and this server's limits before anything runs: text
and token ids as the model's tokens, sampling settings, top-k, the label or source an encoder reads. Every
mistake is an error that names the field and says what would be accepted."""

from __future__ import annotations

import math
import secrets

import numpy as np

from rnnserve.server.config import ServerConfig
from rnnserve.server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from rnnserve.server.repository import Model
from rnnserve.server.requests import AudioInput, SamplingRequest, TensorInput
from rnnserve.server.sampling import SamplingParams
from rnnserve.text import UnknownText, token_text

AUDIO_ENCODINGS = {"pcm16": (np.dtype("<i2"), 1 / 32768), "float32": (np.dtype("<f4"), 1.0)}  # sample type, scale to [-1, 1]
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_TEMPERATURE = 100.0
DEFAULT_STREAM_TOP_K = 5


class Inputs:
    def __init__(self, config: ServerConfig):
        self._config = config

    def tokens(self, model: Model, text: str, tokens: tuple[int, ...]) -> list[int]:
        """A chunk's or call's input, sent as text or as token ids (not both)."""
        if model.card.input.values and (text or tokens):
            raise InvalidArgument("text" if text else "tokens", f"model {model.card.name!r} takes values, not text: {_values_wanted(model)}")
        if text and tokens:
            raise InvalidArgument("text", "send text or tokens in one message, not both")
        return self.encode(model, text, "text") if text else self.check_ids(model, tokens)

    def encode(self, model: Model, text: str, field_name: str) -> list[int]:
        try:
            tokens = model.tokenizer.encode(text)
        except UnknownText as err:
            raise InvalidArgument(field_name, f"model {model.card.name!r} cannot encode it: {err}") from None
        self._check_length(len(tokens), field_name)
        return tokens

    def check_ids(self, model: Model, tokens: tuple[int, ...], vocab: int | None = None) -> list[int]:
        self._check_length(len(tokens), "tokens")
        vocab = vocab or model.card.text_vocab_size
        for position, token in enumerate(tokens):
            if not 0 <= token < vocab:
                raise InvalidArgument(f"tokens[{position}]", f"{token} is outside the vocabulary [0, {vocab})")
        return list(tokens)

    def values(self, model: Model, tensor: TensorInput | None) -> np.ndarray:
        """A message's steps of a model that takes values, [T, *step] float32: the shape, size and every value
        checked (NaN and infinity would enter the session's state and stay there)."""
        spec = model.card.input
        if not spec.values:
            if tensor is not None:
                raise InvalidArgument("values", f"model {model.card.name!r} reads tokens: send text or tokens")
            return np.empty((0,), np.float32)
        if tensor is None:
            return np.empty((0, *spec.step), np.float32)
        values = self._tensor(model, tensor, "values", ())
        if (at := not_finite_at(values)) is not None:
            raise InvalidArgument(f"values[{at[0]}]", "holds NaN or infinity: every value must be a finite number")
        return values

    def rows(self, model: Model, tensor: TensorInput, sessions: int) -> tuple[np.ndarray, np.ndarray]:
        """A multiplexed message's rows, [N, T, *step] for N sessions, and which rows are all finite numbers [N]: the
        tensor's shape and size checked as a whole, its values row by row (a row of NaN fails alone)."""
        if not model.card.input.values:
            raise InvalidArgument("rows", f"model {model.card.name!r} reads tokens: send each session's text or tokens as a chunk")
        values = self._tensor(model, tensor, "rows.values", (sessions,))
        return values, finite_rows(values)

    def _tensor(self, model: Model, tensor: TensorInput, field_name: str, leading: tuple[int, ...]) -> np.ndarray:
        """A tensor of `leading` + [T, *step] float32 as sent (read-only, as the engine only reads it): its name,
        dtype, shape, step count and size checked."""
        spec = model.card.input
        if tensor.name and tensor.name != spec.name:
            raise InvalidArgument(f"{field_name}.name", f"{tensor.name!r}: model {model.card.name!r} has one input, {spec.name!r}")
        if tensor.dtype != spec.dtype:
            raise InvalidArgument(f"{field_name}.dtype", f"{tensor.dtype!r}: {_values_wanted(model, leading)}")
        shape, at = tensor.shape, len(leading)
        if len(shape) != at + 1 + len(spec.step) or tuple(shape[:at]) != leading or tuple(shape[at + 1 :]) != spec.step or shape[at] < 0:
            raise InvalidArgument(f"{field_name}.shape", f"{list(shape)}: {_values_wanted(model, leading)}")
        self._check_length(shape[at], field_name, "steps")
        size = math.prod(shape) * 4
        if len(tensor.data) != size:
            raise InvalidArgument(f"{field_name}.data", f"{len(tensor.data)} bytes for shape {list(shape)}: expected {size} (float32, little-endian)")
        return np.frombuffer(tensor.data, "<f4").reshape(shape)

    def values_together(self, model: Model, tensors: list[TensorInput]) -> tuple[list[int], np.ndarray]:
        """Many messages' values at once (a multiplexed message's, one per session): (the indices of those that pass
        every check of `values`, their steps [N, T, *step] read in one go). Only tensors of the first one's step count
        are read together; `values` answers for each of the rest, and says what is wrong with a tensor that fails."""
        spec = model.card.input
        steps = max(0, tensors[0].shape[0]) if tensors and tensors[0].shape else 0
        shape = (steps, *spec.step)
        size = math.prod(shape) * 4
        if not spec.values or steps > self._config.max_input_tokens:
            return [], np.empty((0, *shape), np.float32)
        plain = [i for i, t in enumerate(tensors) if t.shape == shape and t.dtype == spec.dtype and len(t.data) == size and t.name in ("", spec.name)]
        values = np.frombuffer(b"".join([tensors[i].data for i in plain]), "<f4").reshape(len(plain), *shape)
        finite = finite_rows(values)
        if not finite.all():  # some hold NaN or infinity: leave them out
            plain, values = [i for i, ok in zip(plain, finite) if ok], values[finite]
        return plain, values

    def audio(self, model: Model, audio: AudioInput) -> np.ndarray:
        """An audio message's samples as float32, checked: the encoding, the model's sample rate, whole samples."""
        spec, name = model.card.input, model.card.name
        if not spec.sample_rate:
            raise InvalidArgument("audio", f"model {name!r} does not take audio: send values ({_values_wanted(model)})")
        if audio.encoding not in AUDIO_ENCODINGS:
            raise InvalidArgument("audio.encoding", f"{audio.encoding or 'unspecified'}: set PCM16 or FLOAT32")
        if audio.sample_rate != spec.sample_rate:
            raise InvalidArgument("audio.sample_rate", f"{audio.sample_rate} Hz: model {name!r} takes {spec.sample_rate} Hz audio (resample it first)")
        dtype, scale = AUDIO_ENCODINGS[audio.encoding]
        if len(audio.data) % dtype.itemsize:
            raise InvalidArgument("audio.data", f"{len(audio.data)} bytes is not a whole number of {audio.encoding} samples ({dtype.itemsize} bytes each)")
        self._check_length(len(audio.data) // dtype.itemsize // spec.step[0], "audio", "steps")
        samples = np.frombuffer(audio.data, dtype)
        if audio.encoding == "float32" and (at := not_finite_at(samples)) is not None:
            raise InvalidArgument("audio.data", f"sample {at[0]} is NaN or infinity")
        return samples.astype(np.float32) * np.float32(scale) if scale != 1.0 else samples

    def _check_length(self, count: int, field_name: str, unit: str = "tokens") -> None:
        limit = self._config.max_input_tokens
        if count > limit:
            raise ResourceExhausted(f"{field_name}: {count} {unit} is over this server's limit of {limit} per message (--max-input-tokens)")

    def check_request_size(self, rows: int, steps: int, answer_bytes_per_step: int) -> None:
        """A batch of rows is checked whole before any of it runs: its tokens against --max-input-tokens, and the
        answer it will make against --max-message-bytes (computed and then refused, it would cost everyone)."""
        limit = self._config.max_input_tokens
        if rows * steps > limit:
            raise ResourceExhausted(
                f"inputs: {rows} rows × {steps} tokens = {rows * steps} tokens is over this server's limit of {limit} "
                "per message (--max-input-tokens): send fewer or shorter rows per request"
            )
        answer, limit = rows * steps * answer_bytes_per_step, self._config.max_message_bytes
        if answer > limit:
            raise ResourceExhausted(
                f"outputs: the answer would take about {answer:,} bytes ({rows} rows × {steps} steps × "
                f"{answer_bytes_per_step} bytes), over this server's limit of {limit:,} per message (--max-message-bytes): "
                "send fewer or shorter rows, or ask for fewer outputs (classification instead of logits)"
            )

    def top_k(self, model: Model, asked: int, field_name: str) -> int:
        top_k = asked or min(DEFAULT_STREAM_TOP_K, model.card.output_size)
        if top_k > model.card.output_size:
            raise InvalidArgument(field_name, f"{top_k} is more than the {model.card.output_size} outputs of the model")
        return top_k

    def encoder_inputs(self, model: Model, label: str = "", source: str = "") -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
        """What the model's encoder reads from a request's label or source (none for a plain language model),
        and the source's tokens as text."""
        card, encoder = model.card, model.card.encoder
        kind = encoder.input if encoder else None
        for field_name, value in (("label", label), ("source", source)):
            if value and kind != field_name:
                raise InvalidArgument(field_name, f"model {card.name!r} ({card.task}) takes no {field_name}")
        if kind == "label":
            if label not in encoder.labels:
                raise InvalidArgument(
                    "label", f"{label!r} is not one of the kinds of text model {card.name!r} writes: {', '.join(encoder.labels)} "
                    "(rnnserve generate --label KIND)"
                )
            return {"label": np.array([encoder.labels.index(label)], np.int64)}, ()
        if kind == "source":
            source = self.encode(model, source, "source")
            if not source:
                raise InvalidArgument(
                    "source", f"model {card.name!r} ({card.task}) transduces a source text: send it as the source "
                    "(rnnserve generate --source TEXT), not as a prompt"
                )
            if len(source) > encoder.max_source_tokens:
                raise InvalidArgument(
                    "source", f"{len(source)} tokens is longer than the {encoder.max_source_tokens} model {card.name!r} reads"
                )
            return {"source": np.array([source], np.int64)}, tuple(token_text(model.tokenizer, t) for t in source)
        return {}, ()

    def sampling(self, model: Model, asked: SamplingRequest) -> SamplingParams:
        """The request's settings over the model's defaults; a seed is drawn when none is given."""
        defaults = model.card.sampling
        params = SamplingParams(
            temperature=defaults.temperature if asked.temperature is None else asked.temperature,
            top_k=defaults.top_k if asked.top_k is None else asked.top_k,
            top_p=defaults.top_p if asked.top_p is None else asked.top_p,
            seed=secrets.randbits(63) if asked.seed is None else asked.seed,
            max_tokens=defaults.max_tokens if asked.max_tokens is None else asked.max_tokens,
            stop=asked.stop,
        )
        if not (math.isfinite(params.temperature) and 0.0 <= params.temperature <= MAX_TEMPERATURE):
            raise InvalidArgument("sampling.temperature", f"{params.temperature} is not in [0, {MAX_TEMPERATURE:g}] (0 is greedy)")
        if not 0 <= params.top_k <= model.card.vocab_size:
            raise InvalidArgument("sampling.top_k", f"{params.top_k} is not in [0, {model.card.vocab_size}] (0 is off)")
        if not (math.isfinite(params.top_p) and 0.0 < params.top_p <= 1.0):
            raise InvalidArgument("sampling.top_p", f"{params.top_p} is not in (0, 1] (1 is off)")
        if not 1 <= params.max_tokens <= self._config.max_new_tokens:
            raise InvalidArgument("sampling.max_tokens", f"{params.max_tokens} is not in [1, {self._config.max_new_tokens}]")
        if len(params.stop) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in params.stop):
            raise InvalidArgument(
                "sampling.stop", f"at most {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_CHARS} characters each"
            )
        return params


def not_finite_at(values: np.ndarray) -> tuple[int, ...] | None:
    """Where the first NaN or infinity of float32 values is, or None when every value is finite: one float64 sum
    finds out (it is finite only if they all are, and cannot overflow), the search runs only when one is there."""
    if math.isfinite(values.sum(dtype=np.float64)):
        return None
    return tuple(int(i) for i in np.argwhere(~np.isfinite(values))[0])


def finite_rows(values: np.ndarray) -> np.ndarray:
    """Which rows (along the first axis) hold only finite numbers [N]: one float64 sum when all do, as in
    `not_finite_at`, the row by row search only when one does not."""
    if math.isfinite(values.sum(dtype=np.float64)):
        return np.ones(len(values), bool)
    return np.isfinite(values.reshape(len(values), -1)).all(axis=1)


def cut(samples: np.ndarray, waiting: np.ndarray | None, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples after those still waiting, cut into steps [T, step]; what does not fill a step waits for the next."""
    joined = samples if waiting is None or not len(waiting) else np.concatenate([waiting, samples])
    whole = len(joined) // step * step
    return joined[:whole].reshape(-1, step), joined[whole:].copy()


def _values_wanted(model: Model, leading: tuple[int, ...] = ()) -> str:
    spec = model.card.input
    rows = f"{leading[0]} sessions' rows of " if leading else ""
    shape = ", ".join(map(str, [*leading, "T", *spec.step]))
    return f"it takes {rows}{spec.dtype} values {spec.name!r} of shape [{shape}] (T steps of {list(spec.step)})"


def check_call(model: Model, call: str) -> None:
    """FAILED_PRECONDITION unless the model supports the call (a classifier does not Generate, …)."""
    card = model.card
    if call not in card.calls:
        raise FailedPrecondition(f"model {card.name!r} ({card.task}) does not support {call}: it supports {', '.join(card.calls)}")
