"""Recurrent networks: embedding → recurrent stack → linear head, for every cell and every task.

A language model's head covers the vocabulary (the next token); a tagger's covers its labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

# cell → (PyTorch layer, names of its state tensors). The names become the ONNX state inputs.
CELLS: dict[str, tuple[type[nn.RNNBase], tuple[str, ...]]] = {
    "rnn": (nn.RNN, ("h",)),  # h_t = tanh(W_x·x_t + W_h·h_{t-1} + b)
    "lstm": (nn.LSTM, ("h", "c")),
    "gru": (nn.GRU, ("h",)),
}


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # tokens the embedding and head cover
    cell: str = "lstm"  # rnn | lstm | gru
    layers: int = 2  # stacked recurrent layers
    hidden: int = 256  # units per recurrent layer
    embedding: int = 64  # size of the token embedding fed to the first layer
    dropout: float = 0.1  # between layers and before the head; off at inference
    outputs: int = 0  # size of the head; 0: the vocabulary (a language model)
    bidirectional: bool = False  # reads the whole input both ways: more accurate, cannot stream per step

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}: expected one of {', '.join(CELLS)}")

    @property
    def state_names(self) -> tuple[str, ...]:
        return CELLS[self.cell][1]

    @property
    def served_state_names(self) -> tuple[str, ...]:
        """The state a served graph carries between calls: none for a bidirectional model, which must
        see the whole input at once."""
        return () if self.bidirectional else self.state_names

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        return self.outputs or self.vocab_size

    def to_dict(self) -> dict:
        return asdict(self)


class RecurrentNet(nn.Module):
    """Per-step outputs over any cell type: next-token logits, or label logits.

    State is kept in PyTorch's layout here, each tensor [layers·directions, B, hidden]; the export wrapper
    turns it batch-major for serving.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        layer_type, _ = CELLS[config.cell]
        self.embed = nn.Embedding(config.vocab_size, config.embedding)
        self.rnn = layer_type(
            config.embedding,
            config.hidden,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
            bidirectional=config.bidirectional,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden * config.directions, config.output_size)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        rows = self.config.layers * self.config.directions
        zeros = torch.zeros(rows, batch, self.config.hidden, device=self.head.weight.device)
        return tuple(zeros.clone() for _ in self.config.state_names)

    def carried(self, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The state the next window of a long text starts from. Detached: gradients stop at the window
        boundary (truncated BPTT) while the state carries on. A bidirectional model reads each window on
        its own (its backward half cannot carry state), so it starts fresh."""
        if self.config.bidirectional:
            return self.initial_state(state[0].size(1))
        return tuple(s.detach() for s in state)

    def forward(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...] | None):
        """tokens [B, T] → logits [B, T, outputs], next state (each [layers·directions, B, hidden]).
        A state of None starts from zeros."""
        x = self.drop(self.embed(tokens))  # [B, T, E]
        packed_state = None if state is None else state if len(state) > 1 else state[0]
        y, next_state = self.rnn(x, packed_state)  # y: [B, T, H·directions]
        next_state = next_state if isinstance(next_state, tuple) else (next_state,)
        return self.head(self.drop(y)), next_state
