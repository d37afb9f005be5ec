"""Export configuration (no torch here, so `rnnserve --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rnnserve.options import check_choices, option


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str = field(metadata={"help": "checkpoint written by `rnnserve train`"})
    repository: str = option("models", "model repository directory")
    name: str | None = option(None, "model name (default: the checkpoint's file name)")
    version: str = option("1", "model version directory")
    force: bool = option(False, "overwrite an existing model file, and keep an int8 model that lost more than 0.02 nats/token")
    quantize: str | None = option(
        None, "int8: onnxruntime's dynamic quantization of the recurrent and MatMul weights, for the CPU; the export "
        "reports the change in validation loss and the speed-up, and refuses a loss 0.02 nats/token worse", ("int8",)
    )

    def __post_init__(self):
        check_choices(self)
        for flag_name, value in (("--name", self.name), ("--version", self.version)):
            if value is not None and (not value or value in (".", "..") or any(c in value for c in "/\\")):
                raise ValueError(f"{flag_name} {value!r}: must be one directory name (no slashes), e.g. {'lm' if flag_name == '--name' else '2'}")
