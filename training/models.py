"""Recurrent networks for every task.

RecurrentNet: embedding → recurrent stack → linear head. A language model's head covers the vocabulary (the
next token); a tagger's or classifier's covers its labels. Its initial state is zeros, or learnt per class
label for a conditional language model.

EncoderDecoder: a bidirectional encoder over a source text and a decoder that attends over the encoder's
states at every step (Luong attention), for transductions such as date normalisation.
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


FORECASTER_STATE = ("previous", "seen")  # a forecaster's values of the last step it read, and 1 once it has read one


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
    conditions: int = 0  # class labels, each with a learnt initial state (a conditional language model)
    special_tokens: bool = False  # the last two token ids are <bos> and <eos>, past the tokenizer's vocabulary
    encoder_decoder: bool = False  # an EncoderDecoder (bidirectional encoder, attentive decoder)
    inputs: int = 0  # a ValueNet's values per step (frames, series); 0: the input is token ids
    head: str = ""  # a ValueNet's head: "classes" (a class per sequence) or "gaussian" (each series' next value)
    columns: tuple[str, ...] = ()  # a ValueNet's input values by name, in order (the CSV columns a client streams)
    labels: tuple[str, ...] = ()  # a ValueNet classifier's class names

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}: expected one of {', '.join(CELLS)}")

    @property
    def state_names(self) -> tuple[str, ...]:
        return CELLS[self.cell][1]

    @property
    def served_state_names(self) -> tuple[str, ...]:
        """The state a served graph carries between calls: none for a bidirectional model, which must
        see the whole input at once; a forecaster's also holds the last values it read (ValueNet)."""
        return () if self.bidirectional else self.state_names + (FORECASTER_STATE if self.head == "gaussian" else ())

    @property
    def value_outputs(self) -> tuple[str, ...]:
        """A ValueNet's served per-step outputs (ValueNet.served): a classifier's probabilities, a forecaster's Gaussian."""
        return ("mean", "std") if self.head == "gaussian" else ("probabilities",)

    def state_shape(self, name: str) -> tuple[int, ...]:
        """One sequence's row of a served state tensor."""
        return {"previous": (self.inputs,), "seen": (1,)}.get(name, (self.layers, self.hidden))

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        return self.outputs or self.vocab_size

    @property
    def bos(self) -> int:
        """The token a decoder or conditional language model reads first."""
        return self.vocab_size - 2

    @property
    def eos(self) -> int:
        """The token a decoder writes last."""
        return self.vocab_size - 1

    def to_dict(self) -> dict:
        return asdict(self)


class _Recurrent(nn.Module):
    """A recurrent stack and its state: where a sequence starts and what carries from one window to the next.

    State is kept in PyTorch's layout here, each tensor [layers·directions, B, hidden]; the export wrapper
    turns it batch-major for serving.
    """

    def _stack(self, input_size: int) -> None:
        """The recurrent layers and the dropout beside them: made by each subclass where its weights are drawn in
        order (the order of random initialisation is what a seed reproduces)."""
        config = self.config
        layer_type, _ = CELLS[config.cell]
        self.rnn = layer_type(
            input_size,
            config.hidden,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
            bidirectional=config.bidirectional,
        )
        self.drop = nn.Dropout(config.dropout)

    def initial_state(self, batch: int, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Zeros, or for a conditional model the learnt state of each row's class label (condition [B])."""
        config = self.config
        if config.conditions:  # only a RecurrentNet has conditions
            if condition is None:
                raise ValueError("a conditional model starts from a class label: pass condition")
            # [B, states·layers·hidden] → one [layers, B, hidden] tensor per state name
            rows = torch.tanh(self.condition(condition)).view(-1, len(config.state_names), config.layers, config.hidden)
            return tuple(rows[:, i].transpose(0, 1).contiguous() for i in range(len(config.state_names)))
        zeros = torch.zeros(config.layers * config.directions, batch, config.hidden, device=self.head.weight.device)
        return tuple(zeros.clone() for _ in config.state_names)

    def start(self, batch) -> tuple[torch.Tensor, ...]:
        """The state a training example starts from."""
        return self.initial_state(batch.inputs.size(0), batch.condition)

    def carried(self, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The state the next window of a long text starts from. Detached: gradients stop at the window
        boundary (truncated BPTT) while the state carries on. A bidirectional model reads each window on
        its own (its backward half cannot carry state), so it starts fresh."""
        if self.config.bidirectional:
            return tuple(torch.zeros_like(s) for s in state)
        return tuple(s.detach() for s in state)

    def recur(self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """x [B, T, input] → the top layer's outputs [B, T, H·directions], next state. None starts from zeros."""
        packed_state = None if state is None else state if len(state) > 1 else state[0]
        y, next_state = self.rnn(x, packed_state)
        return y, next_state if isinstance(next_state, tuple) else (next_state,)


class RecurrentNet(_Recurrent):
    """Per-step outputs over any cell type: next-token logits, or label logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embedding)
        self._stack(config.embedding)
        self.head = nn.Linear(config.hidden * config.directions, config.output_size)
        if config.conditions:
            self.condition = nn.Embedding(config.conditions, len(config.state_names) * config.layers * config.hidden)

    def forward(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...] | None):
        """tokens [B, T] → logits [B, T, outputs], next state (each [layers·directions, B, hidden]).
        A state of None starts from zeros."""
        y, next_state = self.recur(self.drop(self.embed(tokens)), state)
        return self.head(self.drop(y)), next_state


class ValueNet(_Recurrent):
    """Numbers in, per step: a frame of F values (a speech frame's coefficients, a sensor's axes) or the series'
    values at one time. Each input value is normalised by the training split's mean and spread, kept in the model
    (buffers) so that clients send raw values. Its head is a classifier's logits over its labels ("classes"), or a
    Gaussian over each series' next value ("gaussian").

    A forecaster also reads each value's change since the step before, scaled by the training split's typical change,
    and forecasts the next change in those units: a weekly series' changes are a few hundredths of its level's
    spread, too fine to learn from the levels alone, and a change still means something where a series trends past
    all it was trained on. Its state carries the last values it read for that (FORECASTER_STATE).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.forecasts = config.head == "gaussian"
        self._stack(config.inputs * (2 if self.forecasts else 1))
        self.register_buffer("input_mean", torch.zeros(config.inputs))
        self.register_buffer("input_scale", torch.ones(config.inputs))
        self.register_buffer("change_scale", torch.ones(config.inputs))
        self.head = nn.Linear(config.hidden * config.directions, config.output_size * (2 if self.forecasts else 1))

    def normalise_from(self, values: torch.Tensor, changes: torch.Tensor | None = None) -> None:
        """The training split's per-value mean and spread ([N, F] of every step) and, for a forecaster, the spread of
        its changes from one step to the next ([N - 1, F]); a constant is left unscaled."""
        self.input_mean.copy_(values.mean(0))
        self.input_scale.copy_(_spread(values))
        if changes is not None:
            self.change_scale.copy_(_spread(changes))

    def initial_state(self, batch: int, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        recurrent = super().initial_state(batch)
        if not self.forecasts:
            return recurrent
        device = self.head.weight.device
        return (*recurrent, torch.zeros(batch, self.config.inputs, device=device), torch.zeros(batch, 1, device=device))

    def forward(self, values: torch.Tensor, state: tuple[torch.Tensor, ...] | None):
        """values [B, T, F] raw → the head's outputs [B, T, ·], next state. None starts from zeros."""
        levels = (values - self.input_mean) / self.input_scale
        if not self.forecasts:
            y, next_state = self.recur(levels, state)
            return self.head(self.drop(y)), next_state
        recurrent, previous, seen = (None, values[:, 0], torch.zeros(values.size(0), 1)) if state is None else (state[:-2], state[-2], state[-1])
        first = torch.where(seen > 0, previous, values[:, 0])  # a fresh sequence's first value has not changed
        before = torch.cat([first[:, None], values[:, :-1]], dim=1)
        y, next_recurrent = self.recur(torch.cat([levels, (values - before) / self.change_scale], dim=-1), recurrent)
        return self.head(self.drop(y)), (*next_recurrent, values[:, -1], torch.ones_like(seen))

    def gaussian(self, head: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A forecaster's head → (mean, log standard deviation) of each series' change to its next value, in units
        of its typical change."""
        change, log_std = head.chunk(2, dim=-1)
        return change, log_std.clamp(-7.0, 7.0)

    def served(self, head: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What a client is answered after each step (values [B, T, F] raw): each class's probability, or each
        series' next value as a mean and standard deviation in the series' own units."""
        if not self.forecasts:
            return (torch.softmax(head, dim=-1),)
        change, log_std = self.gaussian(head)
        return values + change * self.change_scale, torch.exp(log_std) * self.change_scale


def _spread(values: torch.Tensor) -> torch.Tensor:
    spread = values.std(0)
    return torch.where(spread > 0, spread, torch.ones_like(spread))


class EncoderDecoder(nn.Module):
    """A bidirectional encoder over the source; a decoder that attends over the encoder's states at every
    step (Luong's "general" attention: score = decoder output · W·encoder state).

    The decoder's state is its recurrent state plus the memory it attends over and the memory's mask, so a
    served sequence carries everything it needs from one step to the next:
      state = (*recurrent [layers, B, hidden] each, memory [B, S, hidden], mask [B, S]).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        layer_type, _ = CELLS[config.cell]
        dropout = config.dropout if config.layers > 1 else 0.0
        self.embed = nn.Embedding(config.vocab_size, config.embedding)  # source and target share their bytes
        self.encoder = layer_type(config.embedding, config.hidden, config.layers, dropout=dropout, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * config.hidden, config.hidden)  # both directions' final state → the decoder's first
        self.keys = nn.Linear(2 * config.hidden, config.hidden, bias=False)  # encoder states → memory
        self.decoder = layer_type(config.embedding, config.hidden, config.layers, dropout=dropout, batch_first=True)
        self.combine = nn.Linear(2 * config.hidden, config.hidden)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.output_size)

    def encode(self, source: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """source [B, S] (right-padded to the longest when lengths is given) → the decoder's initial state."""
        config = self.config
        x = self.drop(self.embed(source))
        if lengths is not None:  # training batches: padding must not reach the backward direction
            x = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, final = self.encoder(x)
        if lengths is not None:
            states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=source.size(1))
        final = final if isinstance(final, tuple) else (final,)
        batch = source.size(0)
        # each final tensor [layers·2, B, H] → both directions side by side [layers, B, 2H] → [layers, B, H]
        recurrent = tuple(
            torch.tanh(self.bridge(f.view(config.layers, 2, batch, config.hidden).permute(0, 2, 1, 3).reshape(config.layers, batch, -1)))
            for f in final
        )
        memory = self.keys(states)  # [B, S, H]
        if lengths is None:
            mask = torch.ones(source.shape, dtype=memory.dtype, device=source.device)
        else:
            mask = (torch.arange(source.size(1), device=source.device)[None, :] < lengths[:, None]).to(memory.dtype)
        return (*recurrent, memory, mask)

    def start(self, batch) -> tuple[torch.Tensor, ...]:
        return self.encode(batch.source, batch.source_lengths)

    def carried(self, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(s.detach() for s in state)

    def forward(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...], attention: bool = False):
        """tokens [B, T] → logits [B, T, V] and the next state (and with attention=True, the attention
        weights [B, T, S] over the memory)."""
        *recurrent, memory, mask = state
        packed_state = recurrent[0] if len(recurrent) == 1 else tuple(recurrent)
        y, next_recurrent = self.decoder(self.drop(self.embed(tokens)), packed_state)  # y [B, T, H]
        next_recurrent = next_recurrent if isinstance(next_recurrent, tuple) else (next_recurrent,)
        scores = y @ memory.transpose(1, 2) + (mask[:, None, :] - 1.0) * 1e9  # padded positions get no weight
        weights = torch.softmax(scores, dim=-1)  # [B, T, S]
        context = weights @ memory  # [B, T, H]
        out = torch.tanh(self.combine(torch.cat([y, context], dim=-1)))
        logits = self.head(self.drop(out))
        next_state = (*next_recurrent, memory, mask)
        return (logits, next_state, weights) if attention else (logits, next_state)


def build_model(config: ModelConfig) -> nn.Module:
    if config.inputs:
        return ValueNet(config)
    return EncoderDecoder(config) if config.encoder_decoder else RecurrentNet(config)
