"""The plain request and result types between the API layers and the service: what a client asked of the model
the API layer resolved, and what it gets, with no protobuf in them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the request types are below the repository: they name a model only in annotations
    from rnnserve.server.repository import Model


@dataclass(frozen=True, slots=True)
class SamplingRequest:
    """What a client asked for; None means the model's default."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    prompt: str
    sampling: SamplingRequest = SamplingRequest()
    label: str = ""  # conditional language models: the kind of text to write
    source: str = ""  # encoder–decoders: the text to transduce
    session_id: str = ""  # language models: the named session it continues (or starts)


@dataclass(frozen=True, slots=True)
class GeneratedPiece:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str = ""  # "", "length", "stop" or "end"; set on the last piece only
    prompt_tokens: int = 0
    generated_tokens: int = 0
    attention: tuple[tuple[float, ...], ...] = ()  # encoder–decoders: per token, its weights over the source
    source_tokens: tuple[str, ...] = ()  # encoder–decoders, first piece only


@dataclass(frozen=True, slots=True)
class StreamStart:
    session_id: str = ""
    resume: bool = False
    top_k: int = 0
    acknowledged: int = 0  # resume: the position of the last answer the client got (it replays what the state lacks)
    score: bool = False  # each step's token's log-probability before it was read


@dataclass(frozen=True, slots=True)
class InferRequest:
    text: str = ""
    tokens: tuple[int, ...] = ()
    top_k: int = 0


@dataclass(frozen=True, slots=True)
class Chunk:
    reset: bool = False
    text: str = ""
    tokens: tuple[int, ...] = ()
    values: TensorInput | None = None  # for a model that takes values
    audio: AudioInput | None = None  # for an audio model: samples the server cuts into its steps
    forecast: ForecastAsk | None = None  # for a forecaster: look ahead after this chunk's steps


@dataclass(frozen=True, slots=True)
class ForecastAsk:
    """How far ahead a forecaster is asked to look, as a client sent it (0: not said)."""

    horizon: int
    paths: int = 0
    seed: int = 0


@dataclass(frozen=True, slots=True)
class AudioInput:
    """Samples as a client sent them, not yet checked."""

    encoding: str  # "pcm16" or "float32"
    sample_rate: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TensorInput:
    """Numbers as a client sent them, not yet checked: raw little-endian bytes of `dtype`, row-major `shape`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class Candidate:
    token_id: int
    text: str
    probability: float


@dataclass(frozen=True, slots=True)
class StepPrediction:
    token_id: int
    token_text: str
    next: tuple[Candidate, ...]
    text: str = ""  # the text this step completes ("" for a byte in the middle of a character)
    logprob: float | None = None  # with StreamStart.score: how likely this token was before it was read


@dataclass(frozen=True, slots=True)
class ChunkResult:
    session_id: str
    position: int
    steps: tuple[StepPrediction, ...] = field(default=())
    classes: tuple[Candidate, ...] = ()  # classifiers: every class's probability for all input so far
    behind: int = 0  # a resume: tokens the state lacked of the client's acknowledged position when the chunk arrived
    outputs: tuple[tuple[str, np.ndarray], ...] = ()  # a model that takes values: (name, [T, *output]) for each output
    forecast: tuple[tuple[str, np.ndarray], ...] = ()  # a forecaster asked to look ahead: mean, low, high [horizon, series]
    forecast_paths: int = 0


@dataclass(frozen=True, slots=True)
class RowsResult:
    """A multiplexed message's rows answered: per row its session's position or its error, and every output
    [N, T, *output] (zeros in a row that failed)."""

    positions: list[int]
    errors: list[Exception | None]
    outputs: list[tuple[str, np.ndarray]]


@dataclass(frozen=True, slots=True)
class InferResult:
    steps: tuple[StepPrediction, ...]
    classes: tuple[Candidate, ...] = ()  # classifiers: every class's probability for the whole input


@dataclass(frozen=True, slots=True)
class SequenceControl:
    """Triton's sequence parameters: which sequence a request continues, and whether it starts or ends it."""

    id: str = ""  # "" when the request belongs to no sequence
    start: bool = False
    end: bool = False
    position: int | None = None  # rnnserve's sequence_position: where the client says the sequence is, if it says


@dataclass(frozen=True, slots=True)
class TensorRequest:
    """The model's inputs as a batch of rows (the KServe API): token ids [B, T], or one text per row, or values."""

    tokens: np.ndarray | None = None  # [B, T] int64
    values: np.ndarray | None = None  # [B, T, *step] float32, for a model that takes values
    texts: tuple[str, ...] = ()
    starts: tuple[str, ...] = ()  # models with an encoder: each row's label or source, read when its sequence starts
    sequence: SequenceControl = SequenceControl()
    owner: object = None  # the stream a sequence started here belongs to
    answer_bytes_per_step: int = 0  # what one row's step adds to the answer, as the API encodes it (checked before work)


@dataclass(frozen=True, slots=True)
class TensorResult:
    model: Model
    outputs: dict[str, np.ndarray]  # "logits" [B, T, outputs], and any extra output (attention [B, T, source rows])
    position: int | None = None  # a sequence's: tokens it has consumed after this request
