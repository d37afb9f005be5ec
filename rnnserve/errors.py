"""The one error type for a mistake in what a person asked for (a flag, a file, a budget, a corpus): library code
raises it with a message that says what was wrong and what to do, and `rnnserve/cli.py` prints that one line.

A typed error, not SystemExit, so that code calling the library (a test fixture, a notebook, a worker) sees an
ordinary exception it can catch or report, rather than an exit that unwinds whatever called it."""


class UsageError(Exception):
    """What the user asked for cannot be done as asked; the message is one line that says why and what to change."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """Another library's exception message as one line of at most `limit` characters: onnxruntime's and torch's
    messages run over many lines (a traced graph, a stack), which a one-line refusal must not carry."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
