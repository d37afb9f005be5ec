"""What the server knows about a model, read from the metadata document inside its file."""

from __future__ import annotations

import json
from dataclasses import dataclass

METADATA_KEY = "rnnserve"
NO_SAMPLING = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "max_tokens": 1}  # for models that do not generate
SUPPORTED_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class StateSpec:
    name: str  # graph input holding this state
    output: str  # graph output holding the next state; "" for state that stays as the encoder wrote it
    shape: tuple[int, ...]  # one sequence's row, without the batch dimension
    initial: float  # value of a fresh sequence's state


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    temperature: float
    top_k: int
    top_p: float
    max_tokens: int


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

    @property
    def generates(self) -> bool:
        """Text generation feeds each output back as the next input: outputs must be input tokens, step by step."""
        return self.streaming and not self.labels

    @property
    def calls(self) -> tuple[str, ...]:
        if self.encoder is not None:  # every sequence starts from what a Generate request names
            return ("Generate",)
        return ("Infer",) + (("Stream",) if self.streaming else ()) + (("Generate",) if self.generates else ())

    @property
    def output_widths(self) -> dict[str, int]:
        """Each per-step output's last dimension: logits over the outputs, attention over the source rows kept."""
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


def parse_card(name: str, version: str, metadata: dict[str, str]) -> ModelCard:
    if METADATA_KEY not in metadata:
        raise BadModelFile(f"no '{METADATA_KEY}' metadata entry: export the model with `rnnserve export`")
    try:
        doc = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise BadModelFile(f"metadata is not JSON: {err}") from None
    if doc.get("schema_version") != SUPPORTED_SCHEMA:
        raise BadModelFile(f"metadata schema_version {doc.get('schema_version')!r}, this server reads {SUPPORTED_SCHEMA}")
    try:
        return ModelCard(
            name=name,
            version=version,
            task=doc["task"],
            architecture=doc["architecture"],
            tokenizer=doc["tokenizer"],
            vocab_size=int(doc["architecture"]["vocab_size"]),
            output_size=int(doc["outputs"][0]["shape"][-1]),
            labels=tuple(doc["outputs"][0].get("labels", ())),
            state=tuple(
                StateSpec(s["name"], s["output"], tuple(s["shape"]), float(s.get("initial", 0.0))) for s in doc["state"]
            ),
            streaming=bool(doc["streaming"]),
            sampling=SamplingDefaults(**doc.get("sampling", NO_SAMPLING)),
            document=doc,
            encoder=_encoder(doc.get("encoder")),
            bos=doc.get("special_tokens", {}).get("bos"),
            eos=doc.get("special_tokens", {}).get("eos"),
            extra_outputs=tuple(o["name"] for o in doc["outputs"][1:]),
            sequence_output=doc.get("sequence_output", ""),
        )
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise BadModelFile(f"malformed metadata document: {err!r}") from None


def _encoder(entry: dict | None) -> EncoderSpec | None:
    if entry is None:
        return None
    if entry["input"] not in ("label", "source"):
        raise ValueError(f"encoder input {entry['input']!r}: this server knows 'label' and 'source'")
    return EncoderSpec(entry["file"], entry["input"], tuple(entry.get("labels", ())), int(entry.get("max_source_tokens", 0)))
