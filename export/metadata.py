"""The self-describing document stored in each model file's ONNX metadata_props.

The server needs nothing but the model file: this document tells it the task, how to tokenize, which
state tensors to keep per sequence, what the outputs mean and which sampling settings to default to.
"""

from __future__ import annotations

import json

import onnx
import torch

from export.graphs import OPSET, state_output_name
from training.models import ModelConfig

METADATA_KEY = "rnnserve"
SCHEMA_VERSION = 1
DEFAULT_SAMPLING = {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "max_tokens": 200}


OUTPUT_MEANINGS = {
    "language_model": "unnormalised log-probabilities of the next token after each step",
    "boundary_tagger": "unnormalised log-probabilities of each label at each step: does a word end here",
}


def model_document(config: ModelConfig, task: str, labels: tuple[str, ...], tokenizer_spec: dict, training: dict, parity: dict) -> dict:
    output = {"name": "logits", "shape": ["batch", "T", config.output_size], "meaning": OUTPUT_MEANINGS[task]}
    if labels:
        output["labels"] = list(labels)
    document = {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "architecture": config.to_dict(),
        "tokenizer": tokenizer_spec,
        "inputs": [{"name": "tokens", "dtype": "int64", "shape": ["batch", "T"]}],
        "state": [
            {
                "name": name,
                "output": state_output_name(name),
                "shape": [config.layers, config.hidden],
                "dtype": "float32",
                "initial": 0.0,
            }
            for name in config.served_state_names
        ],
        "outputs": [output],
        "streaming": not config.bidirectional,
        "training": training,
        "parity": parity,
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__, "opset": OPSET},
    }
    if not labels:  # it generates text
        document["sampling"] = DEFAULT_SAMPLING
    return document


def attach(model_bytes: bytes, document: dict) -> onnx.ModelProto:
    """The model with the document in its metadata; the graph itself is untouched."""
    model = onnx.load_from_string(model_bytes)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(document, ensure_ascii=False)
    model.producer_name = "rnnserve"
    return model
