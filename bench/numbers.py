"""How good the models trained on numbers are, beside the methods people already use, computed in the same run on the
same splits:

- frame classification (JapaneseVowels, BasicMotions; the UEA archive's own train/test split): test accuracy of a
  `--task frame_classifier` model beside 1-NN DTW (the archive paper's benchmark, Bagnall et al. 2018, "The UEA
  multivariate time series classification archive", arXiv:1811.00075) and ROCKET (Dempster et al. 2020, the most
  accurate of the bake-off of Ruiz et al. 2021), both as aeon implements them;
- forecasting (co2 weekly, sunspots yearly; the held-out end of each series): one-step-ahead MASE and 90 % interval
  coverage of a `--task forecaster` model beside persistence, the seasonal-naive forecast and an ARIMA fitted by
  statsmodels on the same training part (its order chosen by AIC), each forecasting every held-out step from all the
  values before it, as a stream does; and one forecast of a period ahead from the start of the held-out end (the
  server's sampled futures, beside ARIMA's forecast and the last period repeated).

    python -m bench.numbers --minutes 2          # each model trained for 2 minutes (the README's table)
    python -m bench.numbers --steps 300 --quick  # a fast check: fewer baselines

Needs the [series] extra (aeon, statsmodels) and [train]. Prints a JSON document and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from rnnserve.training.number_tasks import held_out_start, mase_scale, seasonal_lag
from rnnserve.training.series import builtin_frames, builtin_series

CLASSIFY = ("JapaneseVowels", "BasicMotions")
FORECAST = ("co2", "sunspots")
MODEL = dict(layers=1, hidden=128, batch_size=32, dropout=0.1, eval_every=100, quiet=True)  # settings of the README's recipe
FORECAST_MODEL = MODEL | dict(bptt=64, val_fraction=0.05)


def trained(task: str, dataset: str, budget: dict, out: Path) -> dict:
    from rnnserve.training.config import TrainConfig
    from rnnserve.training.train import train

    settings = FORECAST_MODEL if task == "forecaster" else MODEL
    started = time.process_time()
    metrics = train(TrainConfig(task=task, dataset=dataset, out=str(out / f"{dataset}.pt"), **settings, **budget))
    return metrics | {"cpu_seconds": round(time.process_time() - started, 1), "steps_trained": metrics.get("steps_trained", metrics["steps"])}


def classifier_baselines(dataset: str, quick: bool) -> dict:
    """1-NN DTW and ROCKET on the archive's split (ROCKET on series padded to one length: it takes no other)."""
    from aeon.classification.convolution_based import RocketClassifier
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier
    from aeon.datasets import load_classification
    from aeon.transformations.collection.unequal_length import Padder

    x_train, y_train = load_classification(dataset, split="train")
    x_test, y_test = load_classification(dataset, split="test")
    figures = {}
    started = time.process_time()
    dtw = KNeighborsTimeSeriesClassifier(distance="dtw", n_neighbors=1).fit(x_train, y_train)
    figures["dtw_1nn_accuracy"] = round(float((dtw.predict(x_test) == y_test).mean()), 4)
    figures["dtw_cpu_seconds"] = round(time.process_time() - started, 1)
    if not quick:
        if isinstance(x_train, list):  # unequal lengths
            longest = max(s.shape[1] for s in (*x_train, *x_test))
            padder = Padder(padded_length=longest, fill_value=0)
            x_train, x_test = padder.fit_transform(x_train), padder.transform(x_test)
        started = time.process_time()
        rocket = RocketClassifier(n_kernels=10_000, random_state=0).fit(x_train, y_train)
        figures["rocket_accuracy"] = round(float((rocket.predict(x_test) == y_test).mean()), 4)
        figures["rocket_cpu_seconds"] = round(time.process_time() - started, 1)
    return figures


ARIMA_ORDERS = ((1, 1, 1), (2, 1, 2), (3, 1, 0), (2, 0, 1), (9, 0, 0))


def look_ahead(checkpoint: Path, dataset: str, val_fraction: float, out: Path) -> dict:
    """One forecast of a period's steps (co2: 52 weeks; sunspots: 11 years) from the start of the held-out end, as
    the server makes it (server/forecasts.py: sampled futures) on the exported graph: its MASE and how often its 90 %
    interval holds the truth."""
    import onnxruntime as ort

    from rnnserve.contract import read_card
    from rnnserve.export.config import ExportConfig
    from rnnserve.export.exporter import export
    from rnnserve.server.forecasts import sample_futures
    from rnnserve.server.requests import ForecastAsk

    target, _ = export(ExportConfig(str(checkpoint), str(out / "models"), dataset, "1"))
    graph = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    card = read_card(dataset, "1", graph.get_modelmeta().custom_metadata_map)
    source = builtin_series(dataset)
    y, cut = source.values, held_out_start(len(source.values), val_fraction)
    horizon = min(source.period, len(y) - cut)
    fresh = {s.name: np.full((1, *s.shape), s.initial, np.float32) for s in card.state}
    mean, std, *state = graph.run(["mean", "std", *(s.output for s in card.state)], {card.input.name: y[None, :cut], **fresh})
    ahead = dict(sample_futures(graph, card, {s.name: v[0] for s, v in zip(card.state, state)}, mean[0, -1], std[0, -1], ForecastAsk(horizon, 200, 0)))
    truth = y[cut : cut + horizon]
    return {
        "horizon": horizon,
        "ahead_mase": round(float(np.abs(ahead["mean"] - truth).mean() / mase_scale(y[:cut, 0], source.period)), 4),
        "ahead_coverage_90": round(float(((truth >= ahead["low"]) & (truth <= ahead["high"])).mean()), 4),
    }


def forecast_baselines(dataset: str, val_fraction: float) -> dict:
    """ARIMA (the order of least AIC on the training part, its parameters then fixed) forecasting each held-out step
    from the values before it, with its own 90 % interval; MASE scaled as the model's is (training/number_tasks.py)."""
    from statsmodels.tsa.arima.model import ARIMA

    source = builtin_series(dataset)
    y = source.values[:, 0].astype(np.float64)
    cut = held_out_start(len(y), val_fraction)
    m = seasonal_lag(source.period, cut)
    scale = float(mase_scale(y[:cut], source.period))
    horizon = min(source.period, len(y) - cut)
    started = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notices of the orders that lose
        fits = [(ARIMA(y[:cut], order=order).fit(), order) for order in ARIMA_ORDERS]
        best, order = min(fits, key=lambda pair: pair[0].aic)
        extended = best.append(y[cut:], refit=False)
        prediction = extended.get_prediction(start=cut, end=len(y) - 1)
        ahead = best.get_forecast(horizon)
    mean = prediction.predicted_mean
    low, high = prediction.conf_int(alpha=0.1).T
    truth = y[cut:]
    ahead_low, ahead_high = ahead.conf_int(alpha=0.1).T
    ahead_truth = truth[:horizon]
    seasonal = y[cut - m : cut][np.arange(horizon) % m]  # the last period, repeated
    return {
        "arima_order": list(order),
        "arima_mase": round(float(np.abs(mean - truth).mean() / scale), 4),
        "arima_coverage_90": round(float(((truth >= low) & (truth <= high)).mean()), 4),
        "arima_ahead_mase": round(float(np.abs(ahead.predicted_mean - ahead_truth).mean() / scale), 4),
        "arima_ahead_coverage_90": round(float(((ahead_truth >= ahead_low) & (ahead_truth <= ahead_high)).mean()), 4),
        "seasonal_naive_ahead_mase": round(float(np.abs(seasonal - ahead_truth).mean() / scale), 4),
        "arima_cpu_seconds": round(time.process_time() - started, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="training time per model (default: 2)")
    budget.add_argument("--steps", type=int, help="training steps per model, instead of minutes")
    parser.add_argument("--quick", action="store_true", help="leave out ROCKET (the slowest baseline)")
    args = parser.parse_args(argv)
    budget = {"steps": args.steps} if args.steps else {"minutes": args.minutes or 2.0}
    results: dict = {"budget": budget, "classification": {}, "forecasting": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in CLASSIFY:
            model = trained("frame_classifier", dataset, budget, Path(tmp))
            frames = builtin_frames(dataset)
            results["classification"][dataset] = {
                "train_sequences": len(frames.train[0]), "test_sequences": len(frames.test[0]), "classes": len(frames.labels),
                "accuracy": model["accuracy"], "majority_accuracy": model["majority_accuracy"],
                "steps": model["steps"], "steps_trained": model["steps_trained"],
            } | classifier_baselines(dataset, args.quick)
        for dataset in FORECAST:
            model = trained("forecaster", dataset, budget, Path(tmp))
            results["forecasting"][dataset] = {
                key: model[key] for key in ("mase", "coverage_90", "persistence_mase", "seasonal_naive_mase", "held_out_steps", "period", "steps", "steps_trained")
            } | look_ahead(Path(tmp) / f"{dataset}.pt", dataset, FORECAST_MODEL["val_fraction"], Path(tmp)) | forecast_baselines(
                dataset, FORECAST_MODEL["val_fraction"]
            )
    print(json.dumps(results, indent=2))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    rows = ["| dataset | rnnserve | 1-NN DTW | ROCKET | commonest class | kept: step of steps run |", "|---|---|---|---|---|---|"]
    for name, r in results["classification"].items():
        rows.append(
            f"| {name} ({r['classes']} classes, {r['test_sequences']} test sequences) | **{r['accuracy']:.3f}** | {r['dtw_1nn_accuracy']:.3f} | "
            f"{r.get('rocket_accuracy', float('nan')):.3f} | {r['majority_accuracy']:.3f} | {r['steps']:,} of {r['steps_trained']:,} |"
        )
    rows += ["", "| series (held-out steps) | rnnserve MASE | 90% covers | persistence | seasonal naive | ARIMA (order) | ARIMA 90% covers | kept: step of steps run |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results["forecasting"].items():
        rows.append(
            f"| {name} ({r['held_out_steps']}) | **{r['mase']:.3f}** | {r['coverage_90']:.1%} | {r['persistence_mase']:.3f} | "
            f"{r['seasonal_naive_mase']:.3f} (period {r['period']}) | {r['arima_mase']:.3f} {tuple(r['arima_order'])} | {r['arima_coverage_90']:.1%} | "
            f"{r['steps']:,} of {r['steps_trained']:,} |"
        )
    rows += ["", "| series | steps ahead | rnnserve MASE | 90% covers | seasonal naive | ARIMA | ARIMA 90% covers |", "|---|---|---|---|---|---|---|"]
    for name, r in results["forecasting"].items():
        rows.append(
            f"| {name} | {r['horizon']} | **{r['ahead_mase']:.3f}** | {r['ahead_coverage_90']:.1%} | {r['seasonal_naive_ahead_mase']:.3f} | "
            f"{r['arima_ahead_mase']:.3f} | {r['arima_ahead_coverage_90']:.1%} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
