"""The model contract: the self-describing document inside each model file's ONNX metadata, written by export and
read by the server through this one module (torch-free, onnx-free), so that its key, its schema version and its
defaults are defined once.

The document tells the server the task, how to tokenize, which state tensors to keep per sequence, what the
outputs mean and which sampling settings to default to: the server needs nothing but the model file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

METADATA_KEY = "rnnserve"  # the metadata_props entry that holds the document
SCHEMA_VERSION = 1
PARITY_TOLERANCE = 1e-4  # an exported graph's outputs may differ from its source's by at most this
Z_90 = 1.6449  # a forecaster's Gaussian: its mean ± this many standard deviations is a 90 % central interval


@dataclass(frozen=True, slots=True)
class InputSpec:
    """The step graph's one input, [batch, T, *step]: token ids (int64, step ()), or values (float32), say a chunk of
    audio samples (step (512,)) or a sensor frame (step (F,))."""

    name: str
    dtype: str = "int64"
    step: tuple[int, ...] = ()  # one step's shape
    sample_rate: int = 0  # audio: samples per second the model takes (0: not audio)

    @property
    def values(self) -> bool:
        """Numbers in, not token ids: no tokenizer, no text."""
        return self.dtype != "int64"


TOKENS = InputSpec("tokens")


@dataclass(frozen=True, slots=True)
class StateSpec:
    name: str  # graph input holding this state
    output: str  # graph output holding the next state; "" for state that stays as the encoder wrote it
    shape: tuple[int, ...]  # one sequence's row, without the batch dimension
    initial: float = 0.0  # value of a fresh sequence's state


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """A per-step output [batch, T, width]: logits first, then any extra (an encoder–decoder's attention)."""

    name: str
    width: int | str  # entries per step; "S" for attention over the source rows
    meaning: str
    labels: tuple[str, ...] = ()  # taggers and classifiers: what each entry of logits names


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    temperature: float
    top_k: int
    top_p: float
    max_tokens: int


# what a model exported from a user's own code may be (export_module, rnnserve describe): its task as served, and
# what its outputs mean
USER_TASKS = {
    "language_model": ("language_model", "unnormalised log-probabilities of the next token after each step"),
    "tagger": ("boundary_tagger", "unnormalised log-probabilities of each label at each step"),
    "classifier": ("text_classifier", "unnormalised log-probabilities of each class after each step: the running guess for the text so far"),
}
# what a model whose input is values (not token ids) may be
VALUE_TASKS = {
    "values": ("values", "the model's outputs after each step, as it computes them"),
    "vad": ("voice_activity", "the probability that each chunk of audio is speech"),
}

DEFAULT_SAMPLING = SamplingDefaults(temperature=0.8, top_k=0, top_p=1.0, max_tokens=200)  # language models
GREEDY = SamplingDefaults(temperature=0.0, top_k=0, top_p=1.0, max_tokens=32)  # transducers: one right answer
NO_SAMPLING = SamplingDefaults(temperature=0.0, top_k=0, top_p=1.0, max_tokens=1)  # models that do not generate


@dataclass(frozen=True, slots=True)
class EncoderSpec:
    """A second graph that writes a sequence's initial state from what a request names: a class label
    (input "label"), or a source text (input "source", for an encoder–decoder)."""

    file: str
    input: str  # "label" or "source"
    labels: tuple[str, ...] = ()  # the class labels, for input "label"
    max_source_tokens: int = 0  # for input "source": the memory rows each sequence keeps


@dataclass(frozen=True, slots=True)
class ModelCard:
    name: str
    version: str
    task: str
    architecture: dict
    tokenizer: dict
    vocab_size: int  # input tokens
    output_size: int  # entries of each step's output distribution: tokens, or labels
    labels: tuple[str, ...]  # names of the outputs for taggers and classifiers; empty when they are tokens
    state: tuple[StateSpec, ...]  # empty for models that need the whole input (no state carried between calls)
    streaming: bool
    sampling: SamplingDefaults
    document: dict  # the whole metadata document, as stored
    encoder: EncoderSpec | None = None
    bos: int | None = None  # the first input of a decoder or conditional language model
    eos: int | None = None  # the output that ends a decoder's text
    extra_outputs: tuple[str, ...] = ()  # per-step outputs besides logits, e.g. "attention"
    sequence_output: str = ""  # classifiers: the answer for a whole text is the "last" step's, or the "mean" of all steps
    input: InputSpec = TOKENS
    outputs: tuple[str, ...] = ("logits",)  # the step graph's per-step outputs, first the main one

    @property
    def generates(self) -> bool:
        """Text generation feeds each output back as the next input: outputs must be input tokens, step by step."""
        return self.streaming and not self.labels and not self.input.values

    @property
    def calls(self) -> tuple[str, ...]:
        if self.encoder is not None:  # every sequence starts from what a Generate request names
            return ("Generate",)
        if self.input.values:  # numbers are streamed step by step, and answered with numbers
            return ("Stream",)
        return ("Infer",) + (("Stream",) if self.streaming else ()) + (("Generate",) if self.generates else ())

    @property
    def output_widths(self) -> dict[str, int]:
        """Each per-step output's last dimension: logits over the outputs, attention over the source rows kept (a
        model that takes values: each output as its file declares it)."""
        if self.input.values:
            return {o["name"]: int(o["shape"][-1]) for o in self.document["outputs"]}
        widths = {"logits": self.output_size}
        if "attention" in self.extra_outputs:
            widths["attention"] = self.encoder.max_source_tokens
        return widths

    @property
    def text_vocab_size(self) -> int:
        """Token ids the tokenizer can write as text: all but the special tokens."""
        return self.vocab_size - (0 if self.bos is None else 2)


class BadModelFile(ValueError):
    """A model file without a readable rnnserve metadata document."""


class ContractError(ValueError):
    """A user's module or graph does not fit the contract; the message says how."""


def model_document(
    task: str,
    architecture: dict,
    tokenizer: dict,
    state: list[StateSpec],
    outputs: list[OutputSpec],
    streaming: bool,
    *,
    encoder: EncoderSpec | None = None,
    special_tokens: tuple[int, int] | None = None,  # (bos, eos)
    sequence_output: str = "",
    sampling: SamplingDefaults | None = None,  # for a model that generates text
    model_input: InputSpec = TOKENS,
    **provenance,  # training metrics, the parity report, versions, quantization: kept as given
) -> dict:
    """The document for a model's metadata: what `read_card` reads back."""
    document = {"schema_version": SCHEMA_VERSION, "task": task, "architecture": architecture, "tokenizer": tokenizer}
    if special_tokens is not None:
        document["special_tokens"] = {"bos": special_tokens[0], "eos": special_tokens[1]}
    if encoder is not None:
        document["encoder"] = {"file": encoder.file, "input": encoder.input} | (
            {"labels": list(encoder.labels)} if encoder.input == "label" else {"max_source_tokens": encoder.max_source_tokens}
        )
    document |= {
        "inputs": [{"name": model_input.name, "dtype": model_input.dtype, "shape": ["batch", "T", *model_input.step]}
                   | ({"sample_rate": model_input.sample_rate} if model_input.sample_rate else {})],
        "state": [
            {"name": s.name, "output": s.output, "shape": list(s.shape), "dtype": "float32", "initial": s.initial} for s in state
        ],
        "outputs": [
            {"name": o.name, "shape": ["batch", "T", o.width], "meaning": o.meaning} | ({"labels": list(o.labels)} if o.labels else {})
            for o in outputs
        ],
        "streaming": streaming,
    }
    document |= provenance
    if sequence_output:
        document["sequence_output"] = sequence_output
    if sampling is not None:
        document["sampling"] = asdict(sampling)
    return document


def metadata_entry(document: dict) -> tuple[str, str]:
    """(key, value) of the ONNX metadata_props entry that carries the document."""
    return METADATA_KEY, json.dumps(document, ensure_ascii=False)


def read_card(name: str, version: str, metadata: dict[str, str]) -> ModelCard:
    """The card of a model from its file's metadata_props; BadModelFile says what is wrong with it."""
    if METADATA_KEY not in metadata:
        raise BadModelFile(f"no '{METADATA_KEY}' metadata entry: export the model with `rnnserve export`")
    try:
        doc = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise BadModelFile(f"metadata is not JSON: {err}") from None
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise BadModelFile(f"metadata schema_version {doc.get('schema_version')!r}, this server reads {SCHEMA_VERSION}")
    try:
        return ModelCard(
            name=name,
            version=version,
            task=doc["task"],
            architecture=doc["architecture"],
            tokenizer=doc["tokenizer"],
            vocab_size=int(doc["architecture"].get("vocab_size", 0)),  # 0: its input is values
            output_size=int(doc["outputs"][0]["shape"][-1]),
            labels=tuple(doc["outputs"][0].get("labels", ())),
            state=tuple(
                StateSpec(s["name"], s["output"], tuple(s["shape"]), float(s.get("initial", 0.0))) for s in doc["state"]
            ),
            streaming=bool(doc["streaming"]),
            sampling=SamplingDefaults(**doc["sampling"]) if "sampling" in doc else NO_SAMPLING,
            document=doc,
            encoder=_encoder(doc.get("encoder")),
            bos=doc.get("special_tokens", {}).get("bos"),
            eos=doc.get("special_tokens", {}).get("eos"),
            extra_outputs=tuple(o["name"] for o in doc["outputs"][1:]),
            sequence_output=doc.get("sequence_output", ""),
            input=_input(doc["inputs"][0]),
            outputs=tuple(o["name"] for o in doc["outputs"]),
        )
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise BadModelFile(f"malformed metadata document: {err!r}") from None


def _input(entry: dict) -> InputSpec:
    if entry["dtype"] not in ("int64", "float32"):
        raise ValueError(f"input dtype {entry['dtype']!r}: this server takes 'int64' token ids or 'float32' values")
    return InputSpec(entry["name"], entry["dtype"], tuple(int(d) for d in entry["shape"][2:]), int(entry.get("sample_rate", 0)))


def _encoder(entry: dict | None) -> EncoderSpec | None:
    if entry is None:
        return None
    if entry["input"] not in ("label", "source"):
        raise ValueError(f"encoder input {entry['input']!r}: this server knows 'label' and 'source'")
    return EncoderSpec(entry["file"], entry["input"], tuple(entry.get("labels", ())), int(entry.get("max_source_tokens", 0)))
