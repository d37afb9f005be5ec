"""A forecaster's look ahead (StreamRequest.forecast): many possible futures sampled step by step from the model's
own forecast of each next value, each sampled value fed back as the next input, and summarised step by step as a
mean and a 90 % interval. Sampling, not feeding back the mean: the spread of the futures widens as uncertainty
compounds, which one step's standard deviation, fed back, never shows.

The futures start from a copy of the session's state (read in queue order, after its chunk's steps) and run on
their own rows, outside the state slab, in a worker thread: the session's state stays as its steps left it, and
the engine goes on batching other sessions meanwhile (an onnxruntime session runs calls from several threads).
"""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort

from rnnserve.contract import ModelCard
from rnnserve.server.errors import InvalidArgument
from rnnserve.server.repository import Model
from rnnserve.server.requests import ForecastAsk
from rnnserve.server.sessions import Session

MAX_HORIZON = 1000
MAX_PATHS = 1000
DEFAULT_PATHS = 200
QUANTILES = (0.05, 0.95)  # "low" and "high": a 90 % central interval


def checked(model: Model, ask: ForecastAsk, steps: int) -> ForecastAsk:
    """The ask with its defaults, or INVALID_ARGUMENT naming what is wrong (checked before any step is taken)."""
    card = model.card
    if card.task != "forecaster" or card.outputs[:2] != ("mean", "std"):
        raise InvalidArgument("forecast", f"model {card.name!r} is a {card.task}, not a forecaster: it cannot look ahead")
    if steps < 1:
        raise InvalidArgument("forecast", "send at least one step in the same message: the forecast starts from its last step's answer")
    if not 1 <= ask.horizon <= MAX_HORIZON:
        raise InvalidArgument("forecast.horizon", f"{ask.horizon} steps ahead: ask for 1 to {MAX_HORIZON}")
    if not 0 <= ask.paths <= MAX_PATHS:
        raise InvalidArgument("forecast.paths", f"{ask.paths} futures: ask for 1 to {MAX_PATHS} (0: {DEFAULT_PATHS})")
    return ForecastAsk(ask.horizon, ask.paths or DEFAULT_PATHS, ask.seed)


async def look_ahead(session: Session, outputs: tuple[tuple[str, np.ndarray], ...], ask: ForecastAsk) -> tuple[tuple[str, np.ndarray], ...]:
    """(mean, low, high), each [horizon, series], from the session's state after the chunk whose `outputs` (every
    step's mean and std) it answered."""
    model = session.model
    state = await model.batcher.read_state(session.slot)
    answered = dict(outputs)
    return await asyncio.to_thread(
        sample_futures, model.runtime.session, model.card, state, answered["mean"][-1], answered["std"][-1], ask
    )


def sample_futures(
    graph: ort.InferenceSession, card: ModelCard, state: dict[str, np.ndarray], mean: np.ndarray, std: np.ndarray, ask: ForecastAsk
) -> tuple[tuple[str, np.ndarray], ...]:
    """`ask.paths` futures of `ask.horizon` steps: step h of each is drawn from N(mean, std) of what the model
    forecast after step h - 1 of that future (the first from the answered `mean`, `std` [series]). The draws are
    numpy's default_rng(seed).standard_normal([horizon, paths, series]), so anyone can follow them."""
    noise = np.random.default_rng(ask.seed).standard_normal((ask.horizon, ask.paths, mean.shape[-1])).astype(np.float32)
    feeds = {spec.name: np.repeat(state[spec.name][None], ask.paths, axis=0) for spec in card.state}
    names = ["mean", "std", *(spec.output for spec in card.state)]
    mean, std = np.repeat(mean[None], ask.paths, axis=0), np.repeat(std[None], ask.paths, axis=0)
    futures = np.empty_like(noise)
    for h in range(ask.horizon):
        futures[h] = mean + std * noise[h]
        if h + 1 < ask.horizon:
            mean, std, *carried = graph.run(names, {card.input.name: futures[h][:, None, :], **feeds})
            mean, std = mean[:, 0], std[:, 0]
            feeds = {spec.name: value for spec, value in zip(card.state, carried)}
    low, high = np.quantile(futures, QUANTILES, axis=1)
    return ("mean", futures.mean(axis=1)), ("low", low.astype(np.float32)), ("high", high.astype(np.float32))
