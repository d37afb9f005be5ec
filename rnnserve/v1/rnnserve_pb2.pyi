from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_END: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_END: FinishReason

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class StateTensor(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "seed", "max_tokens", "stop")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "versions", "task", "cell", "layers", "hidden", "tokenizer", "vocab_size", "state", "streaming", "providers", "default_sampling", "metadata_json", "active_sessions", "max_sessions", "runtime_calls", "calls", "labels", "conditions", "max_source_tokens", "input", "outputs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_CALLS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SOURCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    task: str
    cell: str
    layers: int
    hidden: int
    tokenizer: str
    vocab_size: int
    state: _containers.RepeatedCompositeFieldContainer[StateTensor]
    streaming: bool
    providers: _containers.RepeatedScalarFieldContainer[str]
    default_sampling: SamplingParams
    metadata_json: str
    active_sessions: int
    max_sessions: int
    runtime_calls: int
    calls: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    conditions: _containers.RepeatedScalarFieldContainer[str]
    max_source_tokens: int
    input: InputInfo
    outputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., task: _Optional[str] = ..., cell: _Optional[str] = ..., layers: _Optional[int] = ..., hidden: _Optional[int] = ..., tokenizer: _Optional[str] = ..., vocab_size: _Optional[int] = ..., state: _Optional[_Iterable[_Union[StateTensor, _Mapping]]] = ..., streaming: _Optional[bool] = ..., providers: _Optional[_Iterable[str]] = ..., default_sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., metadata_json: _Optional[str] = ..., active_sessions: _Optional[int] = ..., max_sessions: _Optional[int] = ..., runtime_calls: _Optional[int] = ..., calls: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ..., conditions: _Optional[_Iterable[str]] = ..., max_source_tokens: _Optional[int] = ..., input: _Optional[_Union[InputInfo, _Mapping]] = ..., outputs: _Optional[_Iterable[str]] = ...) -> None: ...

class InputInfo(_message.Message):
    __slots__ = ("name", "dtype", "step_shape", "sample_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    STEP_SHAPE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    step_shape: _containers.RepeatedScalarFieldContainer[int]
    sample_rate: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., step_shape: _Optional[_Iterable[int]] = ..., sample_rate: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "version", "prompt", "sampling", "label", "source", "session_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    prompt: str
    sampling: SamplingParams
    label: str
    source: str
    session_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., label: _Optional[str] = ..., source: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class Attention(_message.Message):
    __slots__ = ("weights",)
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    weights: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, weights: _Optional[_Iterable[float]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "token_ids", "finish_reason", "prompt_tokens", "generated_tokens", "attention", "source_tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    attention: _containers.RepeatedCompositeFieldContainer[Attention]
    source_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., attention: _Optional[_Iterable[_Union[Attention, _Mapping]]] = ..., source_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamStart(_message.Message):
    __slots__ = ("model", "version", "session_id", "resume", "top_k", "acknowledged", "score")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    session_id: str
    resume: bool
    top_k: int
    acknowledged: int
    score: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., session_id: _Optional[str] = ..., resume: _Optional[bool] = ..., top_k: _Optional[int] = ..., acknowledged: _Optional[int] = ..., score: _Optional[bool] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("start", "reset", "text", "tokens", "values", "audio", "forecast")
    START_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FORECAST_FIELD_NUMBER: _ClassVar[int]
    start: StreamStart
    reset: bool
    text: str
    tokens: _containers.RepeatedScalarFieldContainer[int]
    values: Tensor
    audio: Audio
    forecast: ForecastParams
    def __init__(self, start: _Optional[_Union[StreamStart, _Mapping]] = ..., reset: _Optional[bool] = ..., text: _Optional[str] = ..., tokens: _Optional[_Iterable[int]] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., audio: _Optional[_Union[Audio, _Mapping]] = ..., forecast: _Optional[_Union[ForecastParams, _Mapping]] = ...) -> None: ...

class ForecastParams(_message.Message):
    __slots__ = ("horizon", "paths", "seed")
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    horizon: int
    paths: int
    seed: int
    def __init__(self, horizon: _Optional[int] = ..., paths: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class Forecast(_message.Message):
    __slots__ = ("outputs", "paths")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    paths: int
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., paths: _Optional[int] = ...) -> None: ...

class Audio(_message.Message):
    __slots__ = ("encoding", "sample_rate", "data")
    class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ENCODING_UNSPECIFIED: _ClassVar[Audio.Encoding]
        PCM16: _ClassVar[Audio.Encoding]
        FLOAT32: _ClassVar[Audio.Encoding]
    ENCODING_UNSPECIFIED: Audio.Encoding
    PCM16: Audio.Encoding
    FLOAT32: Audio.Encoding
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    encoding: Audio.Encoding
    sample_rate: int
    data: bytes
    def __init__(self, encoding: _Optional[_Union[Audio.Encoding, str]] = ..., sample_rate: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class StreamManyRequest(_message.Message):
    __slots__ = ("chunks", "rows")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[SessionChunk]
    rows: SessionRows
    def __init__(self, chunks: _Optional[_Iterable[_Union[SessionChunk, _Mapping]]] = ..., rows: _Optional[_Union[SessionRows, _Mapping]] = ...) -> None: ...

class SessionRows(_message.Message):
    __slots__ = ("session_ids", "values", "close")
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    values: Tensor
    close: bool
    def __init__(self, session_ids: _Optional[_Iterable[str]] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., close: _Optional[bool] = ...) -> None: ...

class SessionChunk(_message.Message):
    __slots__ = ("session_id", "start", "reset", "text", "tokens", "values", "close", "audio")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    start: StreamStart
    reset: bool
    text: str
    tokens: _containers.RepeatedScalarFieldContainer[int]
    values: Tensor
    close: bool
    audio: Audio
    def __init__(self, session_id: _Optional[str] = ..., start: _Optional[_Union[StreamStart, _Mapping]] = ..., reset: _Optional[bool] = ..., text: _Optional[str] = ..., tokens: _Optional[_Iterable[int]] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., close: _Optional[bool] = ..., audio: _Optional[_Union[Audio, _Mapping]] = ...) -> None: ...

class StreamManyResponse(_message.Message):
    __slots__ = ("answers", "rows")
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[SessionAnswer]
    rows: SessionRowsAnswer
    def __init__(self, answers: _Optional[_Iterable[_Union[SessionAnswer, _Mapping]]] = ..., rows: _Optional[_Union[SessionRowsAnswer, _Mapping]] = ...) -> None: ...

class SessionRowsAnswer(_message.Message):
    __slots__ = ("positions", "codes", "messages", "outputs")
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    codes: _containers.RepeatedScalarFieldContainer[int]
    messages: _containers.RepeatedScalarFieldContainer[str]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, positions: _Optional[_Iterable[int]] = ..., codes: _Optional[_Iterable[int]] = ..., messages: _Optional[_Iterable[str]] = ..., outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class SessionAnswer(_message.Message):
    __slots__ = ("session_id", "answer", "code", "message")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    answer: StreamResponse
    code: int
    message: str
    def __init__(self, session_id: _Optional[str] = ..., answer: _Optional[_Union[StreamResponse, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class TokenProbability(_message.Message):
    __slots__ = ("token_id", "text", "probability")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    text: str
    probability: float
    def __init__(self, token_id: _Optional[int] = ..., text: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class StepPrediction(_message.Message):
    __slots__ = ("token_id", "token_text", "next", "text", "logprob")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TEXT_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token_text: str
    next: _containers.RepeatedCompositeFieldContainer[TokenProbability]
    text: str
    logprob: float
    def __init__(self, token_id: _Optional[int] = ..., token_text: _Optional[str] = ..., next: _Optional[_Iterable[_Union[TokenProbability, _Mapping]]] = ..., text: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("session_id", "position", "steps", "classes", "behind", "outputs", "forecast")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    BEHIND_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FORECAST_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    position: int
    steps: _containers.RepeatedCompositeFieldContainer[StepPrediction]
    classes: _containers.RepeatedCompositeFieldContainer[TokenProbability]
    behind: int
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    forecast: Forecast
    def __init__(self, session_id: _Optional[str] = ..., position: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[StepPrediction, _Mapping]]] = ..., classes: _Optional[_Iterable[_Union[TokenProbability, _Mapping]]] = ..., behind: _Optional[int] = ..., outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., forecast: _Optional[_Union[Forecast, _Mapping]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionRef(_message.Message):
    __slots__ = ("session_id", "model", "version", "sequence_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    version: str
    sequence_id: str
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., sequence_id: _Optional[str] = ...) -> None: ...

class SessionSnapshot(_message.Message):
    __slots__ = ("blob", "model", "version", "position")
    BLOB_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    blob: bytes
    model: str
    version: str
    position: int
    def __init__(self, blob: _Optional[bytes] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class RestoreSessionRequest(_message.Message):
    __slots__ = ("blob", "session_id", "sequence_id")
    BLOB_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    blob: bytes
    session_id: str
    sequence_id: str
    def __init__(self, blob: _Optional[bytes] = ..., session_id: _Optional[str] = ..., sequence_id: _Optional[str] = ...) -> None: ...

class ForkSessionRequest(_message.Message):
    __slots__ = ("source", "session_id", "sequence_id")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    source: SessionRef
    session_id: str
    sequence_id: str
    def __init__(self, source: _Optional[_Union[SessionRef, _Mapping]] = ..., session_id: _Optional[str] = ..., sequence_id: _Optional[str] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "sequence_id", "model", "version", "position")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sequence_id: str
    model: str
    version: str
    position: int
    def __init__(self, session_id: _Optional[str] = ..., sequence_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("model", "version", "text", "tokens", "top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    text: str
    tokens: _containers.RepeatedScalarFieldContainer[int]
    top_k: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., text: _Optional[str] = ..., tokens: _Optional[_Iterable[int]] = ..., top_k: _Optional[int] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("steps", "classes")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[StepPrediction]
    classes: _containers.RepeatedCompositeFieldContainer[TokenProbability]
    def __init__(self, steps: _Optional[_Iterable[_Union[StepPrediction, _Mapping]]] = ..., classes: _Optional[_Iterable[_Union[TokenProbability, _Mapping]]] = ...) -> None: ...
