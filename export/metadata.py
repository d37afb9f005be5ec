"""The self-describing document stored in each model file's ONNX metadata_props.

The server needs nothing but the model file: this document tells it the task, how to tokenize, which
state tensors to keep per sequence, what the outputs mean and which sampling settings to default to.
"""

from __future__ import annotations

import json

import onnx
import torch

from export.graphs import ENCODER_FILE, OPSET, state_output_name
from training.models import ModelConfig

METADATA_KEY = "rnnserve"
SCHEMA_VERSION = 1
DEFAULT_SAMPLING = {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "max_tokens": 200}


OUTPUT_MEANINGS = {
    "language_model": "unnormalised log-probabilities of the next token after each step",
    "boundary_tagger": "unnormalised log-probabilities of each label at each step: does a word end here",
    "text_classifier": "unnormalised log-probabilities of each class after each step: the running guess of what the text is",
    "conditional_language_model": "unnormalised log-probabilities of the next token after each step",
    "date_normaliser": "unnormalised log-probabilities of the next output token after each step",
}
GREEDY = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "max_tokens": 32}


def model_document(config: ModelConfig, task, tokenizer_spec: dict, training: dict, parity: dict) -> dict:
    output = {"name": "logits", "shape": ["batch", "T", config.output_size], "meaning": OUTPUT_MEANINGS[task.name]}
    if task.labels:
        output["labels"] = list(task.labels)
    state = [
        {"name": name, "output": state_output_name(name), "shape": [config.layers, config.hidden], "dtype": "float32", "initial": 0.0}
        for name in config.served_state_names
    ]
    outputs = [output]
    document = {"schema_version": SCHEMA_VERSION, "task": task.name, "architecture": config.to_dict(), "tokenizer": tokenizer_spec}
    if config.special_tokens:
        document["special_tokens"] = {"bos": config.bos, "eos": config.eos}
    if config.conditions:
        document["encoder"] = {"file": ENCODER_FILE, "input": "label", "labels": list(task.conditions)}
    if config.encoder_decoder:
        source = task.max_source_tokens
        # the memory and its mask do not change while decoding: no output feeds them back
        state += [
            {"name": "memory", "output": "", "shape": [source, config.hidden], "dtype": "float32", "initial": 0.0},
            {"name": "mask", "output": "", "shape": [source], "dtype": "float32", "initial": 0.0},
        ]
        outputs.append({"name": "attention", "shape": ["batch", "T", "S"], "meaning": "each output step's weights over the source tokens"})
        document["encoder"] = {"file": ENCODER_FILE, "input": "source", "max_source_tokens": source}
    document |= {
        "inputs": [{"name": "tokens", "dtype": "int64", "shape": ["batch", "T"]}],
        "state": state,
        "outputs": outputs,
        "streaming": not config.bidirectional,
        "training": training,
        "parity": parity,
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__, "opset": OPSET},
    }
    if task.classifies_whole_text:  # its answer for a whole text: see training.tasks.sequence_probabilities
        document["sequence_output"] = "mean" if config.bidirectional else "last"
    if not task.labels:  # it generates text
        document["sampling"] = GREEDY if config.encoder_decoder else DEFAULT_SAMPLING
    return document


def attach(model_bytes: bytes, document: dict) -> onnx.ModelProto:
    """The model with the document in its metadata; the graph itself is untouched."""
    model = onnx.load_from_string(model_bytes)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(document, ensure_ascii=False)
    model.producer_name = "rnnserve"
    return model
