"""The metadata document of an exported model, written through the model contract (rnnserve/contract.py) from
the model's configuration and task."""

from __future__ import annotations

import onnx
import torch

from rnnserve.contract import (
    DEFAULT_SAMPLING,
    GREEDY,
    EncoderSpec,
    InputSpec,
    OutputSpec,
    StateSpec,
    metadata_entry,
)
from rnnserve.contract import (
    model_document as contract_document,
)
from rnnserve.export.graphs import ENCODER_FILE, OPSET, state_output_name
from rnnserve.training.models import ModelConfig

OUTPUT_MEANINGS = {
    "language_model": "unnormalised log-probabilities of the next token after each step",
    "boundary_tagger": "unnormalised log-probabilities of each label at each step: does a word end here",
    "text_classifier": "unnormalised log-probabilities of each class after each step: the running guess of what the text is",
    "conditional_language_model": "unnormalised log-probabilities of the next token after each step",
    "date_normaliser": "unnormalised log-probabilities of the next output token after each step",
}


VALUE_OUTPUTS = {  # a ValueNet's served outputs (training.models.ValueNet.served) and what they mean
    "probabilities": "each class's probability after each frame: the running guess for the sequence so far",
    "mean": "each series' next value, forecast after each step, in the series' own units",
    "std": "the standard deviation of that forecast (a Gaussian): mean ± 1.645·std is its 90% interval",
}


def model_document(config: ModelConfig, task, tokenizer_spec: dict, training: dict, parity: dict, **extra) -> dict:
    state = [StateSpec(name, state_output_name(name), config.state_shape(name)) for name in config.served_state_names]
    if config.inputs:
        return _values_document(config, task, state, training, parity, **extra)
    outputs = [OutputSpec("logits", config.output_size, OUTPUT_MEANINGS[task.name], tuple(task.labels or ()))]
    encoder = None
    if config.conditions:
        encoder = EncoderSpec(ENCODER_FILE, "label", labels=tuple(task.conditions))
    if config.encoder_decoder:
        source = task.max_source_tokens
        # the memory and its mask do not change while decoding: no output feeds them back
        state += [StateSpec("memory", "", (source, config.hidden)), StateSpec("mask", "", (source,))]
        outputs.append(OutputSpec("attention", "S", "each output step's weights over the source tokens"))
        encoder = EncoderSpec(ENCODER_FILE, "source", max_source_tokens=source)
    generates = not task.labels
    return contract_document(
        task.name,
        config.to_dict(),
        tokenizer_spec,
        state,
        outputs,
        streaming=not config.bidirectional,
        encoder=encoder,
        special_tokens=(config.bos, config.eos) if config.special_tokens else None,
        # a classifier's answer for a whole text: see training.tasks.sequence_probabilities
        sequence_output=("mean" if config.bidirectional else "last") if task.classifies_whole_text else "",
        sampling=(GREEDY if config.encoder_decoder else DEFAULT_SAMPLING) if generates else None,
        training=training,
        parity=parity,
        exported_with={"torch": torch.__version__, "onnx": onnx.__version__, "opset": OPSET},
        **extra,
    )


def attach(model_bytes: bytes, document: dict) -> onnx.ModelProto:
    """The model with the document in its metadata; the graph itself is untouched."""
    model = onnx.load_from_string(model_bytes)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = metadata_entry(document)
    model.producer_name = "rnnserve"
    return model


def _values_document(config: ModelConfig, task, state: list[StateSpec], training: dict, parity: dict, **extra) -> dict:
    """A ValueNet's: raw values in ([batch, T, F], named by `columns`), its served outputs out."""
    outputs = [OutputSpec(n, config.output_size, VALUE_OUTPUTS[n], tuple(config.labels)) for n in config.value_outputs]
    return contract_document(
        task.name, config.to_dict(), {"kind": "none"}, state, outputs, streaming=True,
        model_input=InputSpec("values", "float32", (config.inputs,)),
        sequence_output="last" if config.head == "classes" else "",
        columns=list(config.columns), training=training, parity=parity,
        exported_with={"torch": torch.__version__, "onnx": onnx.__version__, "opset": OPSET}, **extra,
    )
