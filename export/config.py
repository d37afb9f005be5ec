"""Export configuration (no torch here, so `rnnserve --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rnnserve.options import option


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str = field(metadata={"help": "checkpoint written by `rnnserve train`"})
    repository: str = option("models", "model repository directory")
    name: str | None = option(None, "model name (default: the checkpoint's file name)")
    version: str = option("1", "model version directory")
    force: bool = option(False, "overwrite an existing model file")
