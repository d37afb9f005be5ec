"""A word-level LSTM language model written in plain PyTorch, without any of rnnserve's training code: trained for a
minute on Python's help topics, exported with `rnnserve.export.export_module`, served by `rnnserve serve`, and its
served greedy text compared with PyTorch's own.

    python examples/word_lm.py --minutes 1 --out runs/word_lm

Needs the train extra (pip install 'rnnserve[train]'). The tokenizer is a Hugging Face `tokenizers` word-level
one whose words and whitespace are separate tokens, so the text round-trips exactly.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from pydoc_data.topics import topics

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn

from rnnserve.client import RnnServeClient
from rnnserve.export import export_module


class WordLM(nn.Module):
    """Embedding → LSTM → logits over the next word: `forward(tokens, state) -> (logits, state)`."""

    def __init__(self, vocab: int, embedding: int = 128, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        self.lstm = nn.LSTM(embedding, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        x, state = self.lstm(self.embed(tokens), state)
        return self.out(x), state


def word_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\s+"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # the text is the tokens one after another: whitespace is a token too
    tokenizer.train_from_iterator([text], trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["<unk>"]))
    return tokenizer


def train(model: WordLM, ids: torch.Tensor, minutes: float, batch: int = 32, bptt: int = 32) -> float:
    """Truncated backpropagation through time over `batch` parallel streams of the corpus; returns the last loss."""
    streams = ids[: ids.numel() // batch * batch].view(batch, -1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    state, position, loss = None, 0, float("nan")
    deadline = time.monotonic() + minutes * 60
    model.train()
    while time.monotonic() < deadline:
        if position + bptt + 1 > streams.size(1):
            state, position = None, 0
        inputs, targets = streams[:, position : position + bptt], streams[:, position + 1 : position + bptt + 1]
        logits, state = model(inputs, state)
        state = tuple(s.detach() for s in state)
        step_loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        optimizer.zero_grad()
        step_loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        position, loss = position + bptt, step_loss.item()
    return loss


@torch.no_grad()
def greedy(model: WordLM, prompt: list[int], count: int) -> list[int]:
    model.eval()
    logits, state = model(torch.tensor([prompt]))
    written = []
    for _ in range(count):
        written.append(int(logits[0, -1].argmax()))
        logits, state = model(torch.tensor([[written[-1]]]), state)
    return written


def serve_and_generate(repository: Path, prompt: str, count: int) -> list[int]:
    """Starts `rnnserve serve` on a free port, asks it for `count` greedy tokens, stops it."""
    server = subprocess.Popen(
        [sys.executable, "-m", "rnnserve", "serve", "--repository", str(repository), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        port = next(m.group(1) for line in server.stdout if (m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line)))
        with RnnServeClient(f"127.0.0.1:{port}", timeout_s=60) as client:
            pieces = client.generate("word_lm", prompt, temperature=0.0, max_tokens=count)
            return [token for piece in pieces for token in piece.token_ids]
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="training time")
    parser.add_argument("--vocab-size", type=int, default=4000, help="words (and whitespace runs) in the vocabulary")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--out", default="runs/word_lm", help="folder for the tokenizer and the model repository")
    parser.add_argument("--prompt", default="The return statement")
    args = parser.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    text = "\n".join(topics.values())
    tokenizer = word_tokenizer(text, args.vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    ids = torch.tensor(tokenizer.encode(text).ids)
    model = WordLM(tokenizer.get_vocab_size(), hidden=args.hidden)
    loss = train(model, ids, args.minutes)

    path = export_module(
        model, {"h": (2, args.hidden), "c": (2, args.hidden)}, out / "tokenizer.json", out / "models", "word_lm",
        state_batch_dim=1, description={"train_loss_nats": round(loss, 4)}, force=True,
    )
    prompt = tokenizer.encode(args.prompt).ids
    expected = greedy(model, prompt, 30)
    served = serve_and_generate(out / "models", args.prompt, 30)
    print(json.dumps({
        "model": str(path), "train_loss_nats": round(loss, 3), "prompt": args.prompt,
        "pytorch": tokenizer.decode(expected), "served": tokenizer.decode(served), "equal": served == expected,
        "pytorch_ids": expected, "served_ids": served,
    }))
    if served != expected:
        raise SystemExit("the served greedy text differs from PyTorch's")


if __name__ == "__main__":
    main()
