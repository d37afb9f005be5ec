"""Export configuration (no torch here, so `rnnserve --help` stays fast)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rnnserve.options import check_choices, option

MAX_LOSS_INCREASE_NATS = 0.02  # per token: what int8 may cost by default before its export is refused


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str = field(metadata={"help": "checkpoint written by `rnnserve train`"})
    repository: str = option("models", "model repository directory")
    name: str | None = option(None, "model name (default: the checkpoint's file name)")
    version: str = option("1", "model version directory")
    force: bool = option(False, "overwrite an existing model file, and keep an int8 model whose loss rose past --max-loss-increase-nats")
    quantize: str | None = option(
        None, "int8: onnxruntime's dynamic quantization of the recurrent and MatMul weights, for the CPU; the export "
        "reports the change in validation loss and the speed-up, and refuses a loss more than --max-loss-increase-nats worse", ("int8",)
    )
    max_loss_increase_nats: float = option(
        MAX_LOSS_INCREASE_NATS, "with --quantize: the largest rise in validation loss (nats per token) that int8 may cost before the export is refused"
    )

    def __post_init__(self):
        check_choices(self)
        if not math.isfinite(self.max_loss_increase_nats):
            raise ValueError(f"--max-loss-increase-nats {self.max_loss_increase_nats}: must be a finite number")
        for flag_name, value in (("--name", self.name), ("--version", self.version)):
            if value is not None and (not value or value in (".", "..") or any(c in value for c in "/\\")):
                raise ValueError(f"{flag_name} {value!r}: must be one directory name (no slashes), e.g. {'lm' if flag_name == '--name' else '2'}")
