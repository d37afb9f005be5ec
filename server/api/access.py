"""Which models a call may see and use: its token's (server/security.py), looked up once per call."""

from __future__ import annotations

from rnnserve.server import errors
from rnnserve.server.api.accounting import refused
from rnnserve.server.metrics import Metrics
from rnnserve.server.repository import Model, Repository
from rnnserve.server.security import allowed_models, authorize


def looked_up(repository: Repository, name: str, version: str) -> Model:
    """The model a metadata call names, if the call's token covers it (not counted: no inference runs)."""
    authorize(name)
    return repository.get(name, version)


def visible(repository: Repository) -> list[Model]:
    """Every model version the call's token covers (a token for some models sees only those)."""
    allowed = allowed_models()
    return [m for m in repository.all() if allowed is None or m.card.name in allowed]


def resolved(metrics: Metrics, repository: Repository, api: str, method: str, name: str, version: str) -> Model:
    """The model an inference request names, if the call's token covers it; a refusal is counted."""
    try:
        return looked_up(repository, name, version)
    except (errors.NotFound, errors.PermissionDenied) as err:
        refused(metrics, api, method, name, version, err)
        raise
