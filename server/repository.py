"""The model repository: <root>/<name>/<version>/model.onnx, every version loaded at start-up."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from rnnserve.contract import BadModelFile, ModelCard, read_card
from rnnserve.errors import UsageError, one_line
from rnnserve.server.batcher import Batcher
from rnnserve.server.config import ServerConfig
from rnnserve.server.errors import NotFound
from rnnserve.server.metrics import Metrics, ModelMetrics
from rnnserve.server.runtime import Device, DeviceUnavailable, Runtime, open_session
from rnnserve.text import Tokenizer, tokenizer_from_spec

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Model:
    """A loaded model version: what it is, how to tokenize for it, and the only way to run it."""

    card: ModelCard
    tokenizer: Tokenizer
    runtime: Runtime
    batcher: Batcher
    metrics: ModelMetrics
    digest: str  # SHA-256 of its files: a snapshot restores only into the model it was taken from


def _version_key(version: str):
    """Numeric versions sort as numbers (10 after 9); others after them, alphabetically."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def _load_model(path: Path, config: ServerConfig, device: Device, io_binding: bool | None, metrics: Metrics) -> Model:
    name, version = path.parent.parent.name, path.parent.name
    try:
        session = open_session(str(path), device, config.threads)
    except DeviceUnavailable:
        raise
    except Exception as err:  # onnxruntime's errors have no common type
        raise BadModelFile(f"onnxruntime cannot load it: {one_line(err)}") from None
    card = read_card(name, version, session.get_modelmeta().custom_metadata_map)
    encoder = None
    if card.encoder is not None:
        encoder_path = path.parent / card.encoder.file
        if not encoder_path.exists():
            raise BadModelFile(f"its encoder graph {encoder_path.name} is missing: export the model again")
        try:
            encoder = open_session(str(encoder_path), device, config.threads)
        except DeviceUnavailable:
            raise
        except Exception as err:
            raise BadModelFile(f"onnxruntime cannot load its encoder graph: {one_line(err)}") from None
    runtime = Runtime(session, card, device, config.max_sessions, io_binding, encoder, config.parallel_calls)
    model_metrics = metrics.model(name, version)
    batcher = Batcher(runtime, f"{name}/{version}", model_metrics, config.max_batch, config.max_queue_delay_ms, pieces=card.streaming)
    digest = hashlib.sha256(path.read_bytes())
    if card.encoder is not None:
        digest.update((path.parent / card.encoder.file).read_bytes())
    return Model(card, tokenizer_from_spec(card.tokenizer), runtime, batcher, model_metrics, digest.hexdigest())


class Repository:
    def __init__(self, models: dict[str, dict[str, Model]]):
        self._models = models
        # versions oldest to newest, sorted once: get() runs on every request, several times
        self._ordered = {name: [models[name][v] for v in sorted(models[name], key=_version_key)] for name in sorted(models)}

    @classmethod
    def load(cls, config: ServerConfig, io_binding: bool | None = None, metrics: Metrics | None = None) -> Repository:
        """Loads every model file under the root; a file that cannot be served stops start-up with its path."""
        metrics = metrics or Metrics()
        root = Path(config.repository)
        if not root.is_dir():
            raise UsageError(f"--repository {root}: no such directory")
        device = Device.parse(config.device)
        models: dict[str, dict[str, Model]] = {}
        for path in sorted(root.glob("*/*/model.onnx")):
            try:
                model = _load_model(path, config, device, io_binding, metrics)
            except BadModelFile as err:
                raise UsageError(f"{path}: {err}") from None
            card = model.card
            models.setdefault(card.name, {})[card.version] = model
            log.info("loaded %s version %s (%s, providers %s)", card.name, card.version, card.task, ", ".join(model.runtime.providers))
        if not models:
            raise UsageError(f"--repository {root}: no models found (expected {root}/<name>/<version>/model.onnx)")
        return cls(models)

    def all(self) -> list[Model]:
        return [m for versions in self._ordered.values() for m in versions]

    def versions(self, name: str) -> list[str]:
        return [m.card.version for m in self._ordered[name]]

    def get(self, name: str, version: str = "") -> Model:
        """The named version, or the newest when version is empty."""
        if name not in self._models:
            known = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"model {name!r} not found (models served: {known})")
        if not version:
            return self._ordered[name][-1]
        if version not in self._models[name]:
            raise NotFound(f"model {name!r} has no version {version!r} (versions: {', '.join(self.versions(name))})")
        return self._models[name][version]

    def start(self) -> None:
        for model in self.all():
            model.batcher.start()

    async def close(self) -> None:
        for model in self.all():
            await model.batcher.close()
