"""What a model learns: where its examples come from, which way they are fed (training/batches.py), how its
quality is measured, what a sample looks like, and what its outputs mean (for the metadata the server reads)."""

from __future__ import annotations

import random

import torch
from torch import nn

from rnnserve.errors import UsageError
from rnnserve.text import IncrementalDecoder, Tokenizer
from rnnserve.training.batches import IGNORE, Batch, Examples, Streams, TaskData, batched, pad, parallel_rows
from rnnserve.training.config import TrainConfig
from rnnserve.training.data import date_pair, labelled_corpus, load_corpus, split_corpus, unigram_entropy_bits
from rnnserve.training.held_out import LN2, held_out, held_out_figures, held_out_files
from rnnserve.training.models import ModelConfig
from rnnserve.training.number_tasks import NUMBER_TASKS

SAMPLE_PROMPT_CHARS = 4  # of the corpus's opening, which a language model's sample continues


class LanguageModel:
    """Predict the next token at every step."""

    name = "language_model"
    labels: tuple[str, ...] = ()  # names of the outputs, for a tagger or classifier
    conditions: tuple[str, ...] = ()  # names of the class labels a conditional model starts from
    max_source_tokens = 0  # an encoder–decoder's longest source
    classifies_whole_text = False  # its outputs name one class for the whole input
    encoder_decoder = False  # an EncoderDecoder: a source in, a text out
    bidirectional_refusal = "--bidirectional: a {name} must not see what it predicts; only taggers and classifiers read both ways"
    builtin_corpus = "builtin:pydoc_data.topics"
    reads_text = True  # a tokenizer is made for it (the number tasks, training/number_tasks.py, read values)

    def corpus(self, config: TrainConfig) -> str:
        return load_corpus(config.corpus)

    def source_figures(self, config: TrainConfig, text: str) -> dict:
        return {"corpus": config.corpus or self.builtin_corpus, "corpus_chars": len(text)}

    def prepare(self, model, data: TaskData) -> None:
        """Before the first step (not on a resume): nothing for a text task."""

    def loss(self, model, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The loss a training step minimises: the mean cross-entropy over every unpadded step."""
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)

    def loss_total(self, model, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, int]:
        """The summed loss of a batch and how many predictions it sums: cross-entropy over every unpadded step."""
        total = nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE, reduction="sum")
        return total, int((batch.targets != IGNORE).sum())

    def tokenizer_text(self, text: str, config: TrainConfig) -> str:
        """What the tokenizer is built from: a learnt vocabulary (bpe, word) sees the training text alone, so the
        held-out text is as new to it as to the model; a character vocabulary holds every character it will read."""
        if config.tokenizer in ("bpe", "word"):
            return self._split(text, config)[0]
        return text + "".join(load_corpus(path, flag) for path, flag in held_out_files(config))

    def _split(self, text: str, config: TrainConfig) -> tuple[str, str]:
        """(training text, validation text): a --val-corpus file, or the corpus's last --val-fraction."""
        return (text, load_corpus(config.val_corpus, "--val-corpus")) if config.val_corpus else split_corpus(text, config.val_fraction)

    def model_config(self, vocab_size: int, config: TrainConfig, data: TaskData | None = None) -> ModelConfig:
        """A model that generates from a label or a source also reads <bos> and writes <eos>, past the tokenizer's vocabulary."""
        if config.bidirectional and not self.labels:
            raise UsageError(self.bidirectional_refusal.format(name=self.name))
        special_tokens = bool(self.conditions) or self.encoder_decoder
        return ModelConfig(
            vocab_size + 2 * special_tokens, config.cell, config.layers, config.hidden, config.embedding, config.dropout,
            outputs=len(self.labels), bidirectional=config.bidirectional, conditions=len(self.conditions),
            special_tokens=special_tokens, encoder_decoder=self.encoder_decoder,
        )

    def data(self, tokenizer: Tokenizer, text: str, config: TrainConfig) -> TaskData:
        train_text, val_text = self._split(text, config)
        data = Streams(*self._pairs(tokenizer, train_text), config)
        data.val_text = val_text
        data.corpus = text
        self._hold_out(data, tokenizer, val_text, config)
        return data

    def _hold_out(self, data: TaskData, tokenizer: Tokenizer, val_text: str, config: TrainConfig) -> None:
        """The validation text scored whole, from its start, and a --test-corpus beside it; the validation loss
        chooses the checkpoint kept (--keep-best)."""
        data.val = held_out(tokenizer, val_text, config)
        data.val_batches = data.val.batches
        data.chars_per_token = data.val.chars / data.val.predictions
        data.test = held_out(tokenizer, load_corpus(config.test_corpus, "--test-corpus"), config) if config.test_corpus else None
        data.select_batches = data.val_batches if config.keep_best else None

    metrics_read_outputs = False  # its metrics are the loss's: the held-out outputs need not be kept

    def _pairs(self, tokenizer: Tokenizer, text: str) -> tuple[list[int], list[int]]:
        ids = tokenizer.encode(text)
        return ids[:-1], ids[1:]

    def metrics(self, loss: float, logits: list[torch.Tensor], data: TaskData, model) -> dict:
        return {**held_out_figures("val", loss, data.val), "unigram_bits_per_char": round(unigram_entropy_bits(data.corpus), 4)}

    def summary(self, metrics: dict) -> str:
        return (
            f"val loss {metrics['val_loss_nats']:.3f} nats, {metrics['val_bits_per_char']:.3f} bits/char, "
            f"{metrics['val_word_perplexity']:.1f} per-word perplexity (unigram {metrics['unigram_bits_per_char']:.3f} bits/char)"
        )

    @torch.no_grad()
    def sample(self, model, tokenizer: Tokenizer, data: TaskData, chars: int, temperature: float = 0.8) -> str:
        """The corpus's own opening, continued step by step by the PyTorch model: text the vocabulary is sure to
        have, in any language."""
        prompt = data.corpus[:SAMPLE_PROMPT_CHARS]
        logits, state = model(torch.tensor([tokenizer.encode(prompt)]), model.initial_state(1))
        return prompt + _sample_text(model, tokenizer, logits, state, chars, temperature)


def _sample_text(model, tokenizer: Tokenizer, logits, state, chars: int, temperature: float) -> str:
    decoder = IncrementalDecoder(tokenizer)
    text = ""
    while len(text) < chars:
        probabilities = torch.softmax(logits[0, -1, : tokenizer.vocab_size] / temperature, dim=-1)
        token = int(torch.multinomial(probabilities, 1))
        text += decoder.feed(token)
        logits, state = model(torch.tensor([[token]]), state)
    return text


class BoundaryTagger(LanguageModel):
    """Restore word boundaries: read text with its whitespace removed, tag after which character a space belongs."""

    name = "boundary_tagger"
    labels = ("no_boundary", "boundary")
    metrics_read_outputs = True

    def _pairs(self, tokenizer: Tokenizer, text: str) -> tuple[list[int], list[int]]:
        inputs: list[int] = []
        targets: list[int] = []
        words = text.split()
        for index, word in enumerate(words):
            ids = tokenizer.encode(word)
            inputs += ids
            targets += [0] * (len(ids) - 1) + [int(index < len(words) - 1)]  # the label sits on a word's last token
        return inputs, targets

    def _hold_out(self, data: TaskData, tokenizer: Tokenizer, val_text: str, config: TrainConfig) -> None:
        """Its validation tags in parallel rows; its characters are the text's, spaces left out."""
        inputs, targets = self._pairs(tokenizer, val_text)
        data.val_batches = parallel_rows(inputs, targets, config.bptt)
        data.chars_per_token = sum(len(w) for w in val_text.split()) / len(inputs)

    def tokenizer_text(self, text: str, config: TrainConfig) -> str:
        return "".join(text.split())

    def metrics(self, loss: float, logits: list[torch.Tensor], data: TaskData, model) -> dict:
        predicted = torch.cat([lg.argmax(-1) for lg in logits], dim=1).flatten()
        truth = torch.cat([b.targets for b in data.val_batches], dim=1).flatten()
        hits = int(((predicted == 1) & (truth == 1)).sum())
        precision = hits / max(1, int((predicted == 1).sum()))
        recall = hits / max(1, int((truth == 1).sum()))
        return {
            "val_loss_nats": round(loss, 4),
            "boundary_precision": round(precision, 4),
            "boundary_recall": round(recall, 4),
            "boundary_f1": round(2 * precision * recall / max(1e-9, precision + recall), 4),
            "accuracy": round(float((predicted == truth).float().mean()), 4),
        }

    def summary(self, metrics: dict) -> str:
        return (
            f"val loss {metrics['val_loss_nats']:.3f} nats, boundary F1 {metrics['boundary_f1']:.3f} "
            f"(precision {metrics['boundary_precision']:.3f}, recall {metrics['boundary_recall']:.3f})"
        )

    @torch.no_grad()
    def sample(self, model, tokenizer: Tokenizer, data: TaskData, chars: int) -> str:
        """The start of the held-out text with its spaces removed, and put back where the model says."""
        joined = "".join(data.val_text.split())[:chars]
        logits, _ = model(torch.tensor([tokenizer.encode(joined)]), model.initial_state(1))
        boundaries = logits[0].argmax(-1).tolist()
        return "".join(ch + (" " if boundary else "") for ch, boundary in zip(joined, boundaries))


class _LabelledText(LanguageModel):
    """Snippets of the built-in labelled corpus: prose, Python and C."""

    kinds = ("prose", "python", "c")
    builtin_corpus = "builtin:prose (help topics), python (standard library), c (Python's headers)"
    VAL_SNIPPETS = 64  # per label

    def corpus(self, config: TrainConfig) -> str:
        if config.corpus is not None:
            raise UsageError(f"--task {self.name} learns from the built-in labelled corpus: drop --corpus")
        return "\n".join(labelled_corpus().values())

    def data(self, tokenizer: Tokenizer, text: str, config: TrainConfig) -> TaskData:
        length = config.bptt
        texts = labelled_corpus()
        parts = [split_corpus(texts[kind], config.val_fraction) for kind in self.kinds]
        train_ids = [tokenizer.encode(train) for train, _ in parts]
        val_ids = [tokenizer.encode(val) for _, val in parts]

        def batch(windows: list[tuple[int, list[int]]]) -> Batch:
            return self._batch([label for label, _ in windows], [ids for _, ids in windows], tokenizer.vocab_size)

        def make_batch(rng: random.Random, size: int) -> Batch:
            labels = [rng.randrange(len(self.kinds)) for _ in range(size)]
            return batch([(lab, _window(train_ids[lab], rng.randrange(len(train_ids[lab]) - length), length)) for lab in labels])

        held_out = [
            (lab, _window(ids, start, length))
            for lab, ids in enumerate(val_ids)
            for start in range(0, len(ids) - length, max(1, (len(ids) - length) // self.VAL_SNIPPETS))[: self.VAL_SNIPPETS]
        ]
        return Examples(make_batch, [batch(b) for b in batched(held_out, 64)], config)

    def _batch(self, labels: list[int], windows: list[list[int]], bos: int) -> Batch:
        raise NotImplementedError


def _window(ids: list[int], start: int, length: int) -> list[int]:
    return ids[start : start + length]


class TextClassifier(_LabelledText):
    """Tell which kind of text a snippet is. Every step is trained to name the snippet's kind, so the output
    after any prefix is the running guess, and the output after the last step is the answer."""

    name = "text_classifier"
    labels = _LabelledText.kinds
    classifies_whole_text = True
    metrics_read_outputs = True

    def _batch(self, labels: list[int], windows: list[list[int]], bos: int) -> Batch:
        inputs = torch.tensor(windows)
        return Batch(inputs, torch.tensor(labels)[:, None].expand_as(inputs).contiguous())

    def metrics(self, loss: float, logits: list[torch.Tensor], data: TaskData, model) -> dict:
        truth = torch.cat([b.targets[:, 0] for b in data.val_batches])
        probabilities = torch.cat([torch.softmax(lg, -1) for lg in logits])  # [N, T, C]
        whole = sequence_probabilities(probabilities, model.config.bidirectional).argmax(-1)
        after_16 = probabilities[:, min(15, probabilities.size(1) - 1)].argmax(-1)
        return {
            "val_loss_nats": round(loss, 4),
            "accuracy": round(float((whole == truth).float().mean()), 4),
            "accuracy_after_16_chars": round(float((after_16 == truth).float().mean()), 4),
            "snippet_chars": probabilities.size(1),
            "val_snippets": len(truth),
        }

    def summary(self, metrics: dict) -> str:
        return (
            f"val loss {metrics['val_loss_nats']:.3f} nats, accuracy {metrics['accuracy']:.3f} on "
            f"{metrics['val_snippets']} snippets of {metrics['snippet_chars']} chars (after 16 chars: {metrics['accuracy_after_16_chars']:.3f})"
        )

    @torch.no_grad()
    def sample(self, model, tokenizer: Tokenizer, data: TaskData, chars: int) -> str:
        batch = data.val_batches[0]
        logits, _ = model(batch.inputs[:1], model.start(Batch(batch.inputs[:1], batch.targets[:1])))
        guess = self.labels[int(sequence_probabilities(torch.softmax(logits, -1), model.config.bidirectional)[0].argmax())]
        return f"{tokenizer_decode(tokenizer, batch.inputs[0].tolist())!r} → {guess}"


def sequence_probabilities(probabilities: torch.Tensor, bidirectional: bool) -> torch.Tensor:
    """[B, T, C] per-step class probabilities → [B, C] for the whole input: the last step of a model that
    reads left to right (it has seen everything), the mean over steps of a bidirectional one."""
    return probabilities.mean(1) if bidirectional else probabilities[:, -1]


def tokenizer_decode(tokenizer: Tokenizer, ids: list[int]) -> str:
    return b"".join(tokenizer.token_bytes(i) for i in ids).decode("utf-8", errors="replace")


class ConditionalLanguageModel(_LabelledText):
    """Write a kind of text on demand: the state starts from the requested label's learnt state, the first
    input is <bos>, and each step predicts the next token."""

    name = "conditional_language_model"
    conditions = _LabelledText.kinds
    bidirectional_refusal = "--bidirectional: a {name} must not see what it predicts"

    def _batch(self, labels: list[int], windows: list[list[int]], bos: int) -> Batch:
        inputs = torch.tensor([[bos, *w[:-1]] for w in windows])
        return Batch(inputs, torch.tensor(windows), condition=torch.tensor(labels))

    def metrics(self, loss: float, logits: list[torch.Tensor], data: TaskData, model) -> dict:
        return {"val_loss_nats": round(loss, 4), "val_bits_per_char": round(loss / LN2, 4)}

    def summary(self, metrics: dict) -> str:
        return f"val loss {metrics['val_loss_nats']:.3f} nats, {metrics['val_bits_per_char']:.3f} bits/char"

    @torch.no_grad()
    def sample(self, model, tokenizer: Tokenizer, data: TaskData, chars: int, temperature: float = 0.8) -> str:
        texts = []
        for index, label in enumerate(self.conditions):
            state = model.initial_state(1, torch.tensor([index]))
            logits, state = model(torch.tensor([[model.config.bos]]), state)
            texts.append(f"{label}: {_sample_text(model, tokenizer, logits, state, chars // len(self.conditions), temperature)!r}")
        return "  ".join(texts)


class DateNormaliser(LanguageModel):
    """Rewrite a date written any common way as ISO 8601 (an encoder–decoder with attention). Training dates
    and held-out dates never overlap: every 20th day of the calendar is kept for validation."""

    name = "date_normaliser"
    builtin_corpus = "generated:dates"
    metrics_read_outputs = True
    encoder_decoder = True
    bidirectional_refusal = "--bidirectional: the date normaliser's encoder always reads both ways; drop the flag"
    max_source_tokens = 48
    VAL_EXAMPLES = 512

    def corpus(self, config: TrainConfig) -> str:
        if config.corpus is not None:
            raise UsageError("--task date_normaliser makes its own examples: drop --corpus")
        rng = random.Random(0)
        return "\n".join(" ".join(date_pair(rng, held_out=False)) for _ in range(5000))

    def data(self, tokenizer: Tokenizer, text: str, config: TrainConfig) -> TaskData:
        bos, eos = tokenizer.vocab_size, tokenizer.vocab_size + 1

        def batch(pairs: list[tuple[str, str]]) -> Batch:
            sources = [tokenizer.encode(s) for s, _ in pairs]
            targets = [tokenizer.encode(t) for _, t in pairs]
            return Batch(
                pad([[bos, *t] for t in targets], eos),
                pad([[*t, eos] for t in targets], IGNORE),
                source=pad(sources, eos),
                source_lengths=torch.tensor([len(s) for s in sources]),
            )

        rng = random.Random(config.seed + 12_345)
        held_out = [date_pair(rng, held_out=True) for _ in range(self.VAL_EXAMPLES)]
        data = Examples(lambda rng, size: batch([date_pair(rng, held_out=False) for _ in range(size)]), [
            batch(list(b)) for b in batched(held_out, 128)
        ], config)
        data.held_out = tuple(held_out)
        return data

    def metrics(self, loss: float, logits: list[torch.Tensor], data: TaskData, model) -> dict:
        """Exact match under teacher forcing equals exact match of greedy decoding: if every step's most
        probable token is the target's, greedy decoding writes exactly the target, and only then."""
        exact = []
        for lg, batch in zip(logits, data.val_batches):
            wrong = (lg.argmax(-1) != batch.targets) & (batch.targets != IGNORE)
            exact.append(~wrong.any(dim=1))
        exact_all = torch.cat(exact)
        return {
            "val_loss_nats": round(loss, 4),
            "exact_match": round(float(exact_all.float().mean()), 4),
            "val_examples": len(exact_all),
        }

    def summary(self, metrics: dict) -> str:
        return f"val loss {metrics['val_loss_nats']:.3f} nats, exact match {metrics['exact_match']:.3f} on {metrics['val_examples']} held-out dates"

    @torch.no_grad()
    def sample(self, model, tokenizer: Tokenizer, data: TaskData, chars: int) -> str:
        return "  ".join(
            f"{source!r} → {greedy_decode(model, tokenizer, source)!r}" for source, _ in data.held_out[:3]
        )


@torch.no_grad()
def greedy_decode(model, tokenizer: Tokenizer, source: str, max_tokens: int = 32) -> str:
    """The encoder–decoder's most probable output, token by token (the reference the server must match)."""
    config = model.config
    state = model.encode(torch.tensor([tokenizer.encode(source)]))
    token, out = config.bos, []
    for _ in range(max_tokens):
        logits, state = model(torch.tensor([[token]]), state)
        token = int(logits[0, -1].argmax())
        if token == config.eos:
            break
        out.append(token)
    return tokenizer_decode(tokenizer, out)


TASKS = {
    task.name: task
    for task in (LanguageModel(), BoundaryTagger(), TextClassifier(), ConditionalLanguageModel(), DateNormaliser(), *NUMBER_TASKS)
}


def task_named(name: str):
    if name not in TASKS:
        raise UsageError(f"--task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name]
