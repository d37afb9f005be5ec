"""The server's logs: lines for a person (`--log-format text`, the default) or one JSON object per line for a log
pipeline (`--log-format json`), which also records every call: its API, method, model, session or sequence, status
duration and, for a session or sequence, its position after the call. Lines that announce the server (where it listens) go to stdout; everything else to stderr."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

calls = logging.getLogger("rnnserve.calls")
_format = "text"


class JsonLines(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, pid, message, and a call's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _timestamp(record.created), "level": record.levelname, "logger": record.name, "pid": os.getpid()}
        entry["message"] = record.getMessage()
        entry |= getattr(record, "fields", {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(log_format: str = "text", level: str = "info") -> None:
    global _format
    _format = log_format
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s pid {os.getpid()} %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def records_calls() -> bool:
    """Whether each call is logged: in JSON, where a pipeline reads them, and only at level info or below."""
    return _format == "json" and calls.isEnabledFor(logging.INFO)


def call(api: str, method: str, model: str, version: str, session: str, status: str, seconds: float, position: int = -1) -> None:
    fields = {"api": api, "method": method, "model": model, "version": version, "session": session, "status": status,
              "duration_ms": round(seconds * 1000, 3)}
    if position >= 0:  # where the session or sequence is after it
        fields["position"] = position
    calls.info("%s %s %s", method, model, status, extra={"fields": fields})


def announce(line: str, **fields) -> None:
    """A line on stdout that a person or a supervisor waits for. One write per line, so the lines of --workers
    sharing one stdout pipe never interleave (print may write the text and its newline apart)."""
    if _format == "json":
        line = json.dumps({"time": _timestamp(time.time()), "level": "INFO", "logger": "rnnserve", "pid": os.getpid(),
                           "message": line} | fields, ensure_ascii=False)
    os.write(sys.stdout.fileno(), (line + "\n").encode())


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"
