"""What the client commands print, against what the server answers through the Python client: a stop string with
escapes as a shell passes them, a line of stdin streamed to a model whose vocabulary has no newline, and an
encoder–decoder's attention shown per token."""

import ast

from tests.helpers import run_cli


def test_stop_reads_escapes_as_the_shell_passes_them(server, client):
    prompt = "안녕하세요. "
    unstopped = client.generate_text("korean", prompt, temperature=0.0, max_tokens=200)
    stop = unstopped[6:8]  # two characters the greedy text holds, passed as escapes the way a shell passes '\uNNNN'
    escaped = "".join(f"\\U{ord(ch):08x}" for ch in stop)
    done = run_cli("generate", "--target", server.target, "--model", "korean", "--temperature", "0", "--max-tokens", "200", "--stop", escaped, prompt)
    assert done.returncode == 0, done.stderr
    assert done.stdout == unstopped[: unstopped.index(stop)] + "\n"  # stopped before it (the CLI ends its line)


def test_stream_sends_lines_without_their_newline_to_a_model_that_has_none(server, client):
    text = "thereturnstatement"
    done = run_cli("stream", "--target", server.target, "--model", "tagger", "--top-k", "2", input=text + "\n")
    assert done.returncode == 0, done.stderr
    shown = [line.split(" → ")[0].strip() for line in done.stdout.splitlines() if " → " in line]
    assert shown == [repr(ch) for ch in text]
    expected = [s for r in client.stream("tagger", [text], top_k=2) for s in r.steps]
    printed = [line.split(" → ")[1] for line in done.stdout.splitlines() if " → " in line]
    assert printed == ["  ".join(f"{c.text!r} {c.probability:.2f}" for c in s.next) for s in expected]


def test_attention_is_shown_per_token_labelled_with_its_own_text(server, client):
    source = "Tuesday, March 5th, 2024"
    done = run_cli("generate", "--target", server.target, "--model", "dates", "--source", source, "--attention")
    assert done.returncode == 0, done.stderr
    written, *rows = done.stdout.splitlines()
    pieces = list(client.generate("dates", source=source))
    assert written == "".join(p.text for p in pieces)
    assert len(rows) == sum(len(p.token_ids) for p in pieces)  # a row per token, not per piece
    labels = [ast.literal_eval(row.split(" ← ")[0].strip()) for row in rows]
    assert "".join(labels) == written  # each row labelled with its own token's text
    for row, weights in zip(rows, [list(a.weights) for p in pieces for a in p.attention]):
        best = max(range(len(weights)), key=lambda i: weights[i])
        assert row.split(" ← ")[1].startswith(f"{source[best]!r}@{best} {weights[best]:.2f}")
