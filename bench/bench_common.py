"""Helpers the benchmarks share: timing one call, the machine's own jitter, the real sample as bars."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_collector import read_bar_csv  # noqa: E402

T = TypeVar("T")


def timed(action: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, T]:
    """Seconds one call takes, and its result."""
    started = time.perf_counter()
    result = action(*args, **kwargs)
    return time.perf_counter() - started, result


def constant_workload(calls: int, disable_gc: bool = True) -> np.ndarray:
    """Per-call nanoseconds of one fixed pure-Python job, timed like the code under test: the machine's jitter."""
    data = [float(i) for i in range(2000)]
    elapsed = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    gc.collect()
    if disable_gc:
        gc.disable()
    try:
        for i in range(calls):
            started = clock()
            sum(data)
            elapsed[i] = clock() - started
    finally:
        if disable_gc:
            gc.enable()
    return elapsed


def sample_bars(csv: str | Path) -> pd.DataFrame:
    """The sample's bars indexed by bar-start datetime (the file stamps bar ends)."""
    frame, _ = read_bar_csv(csv, timestamp="end")
    return frame.set_index("datetime")


def library_versions(*extra: str) -> dict[str, str]:
    """The model libraries' versions (ml_model.library_versions) and those of the `extra` packages."""
    from importlib.metadata import PackageNotFoundError, version

    from ml_model import library_versions as model_versions

    found = model_versions()
    for package in extra:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "missing"
    return found


def add_input_arguments(parser: Any) -> None:
    """--csv and --model, shared by the benches that run saved bundles or train in-process."""
    from config import SAMPLE_BARS_CSV

    parser.add_argument("--csv", default=str(SAMPLE_BARS_CSV), help="K线 CSV（默认示例数据）/ bar CSV")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="BUNDLE",
        help="已保存的模型包，可重复（每种类型一个）；否则在进程内训练 / saved bundle, repeatable",
    )


def train_briefly(
    model_type: str, epochs: int, train_stride: int, data_for: Callable[[Any], Any], progress: Callable[[str], None]
) -> tuple[Any, Any, str, float]:
    """Train a model in this process (the LSTM only briefly: speed does not depend on its weights);
    `data_for(config)` gives its TrainingData. Returns the model, its data, how it was trained and the seconds."""
    from ml_model import ModelConfig, PricePredictionModel

    if model_type == "lstm":
        config = ModelConfig(model_type="lstm", epochs=epochs, train_stride=train_stride)
        source = f"trained in-process: {epochs} epoch(s) on every {train_stride}th training window"
    else:
        config = ModelConfig(model_type="random_forest")
        source = (
            f"trained in-process: {config.trees} trees, max_depth {config.max_depth}, "
            f"min_samples_leaf {config.min_samples_leaf}"
        )
    data = data_for(config)
    model = PricePredictionModel(model_type, config)
    progress(f"training {model_type} ({source})")
    seconds, _ = timed(model.train, data, lambda message: progress(f"  {message}"))
    return model, data, source, seconds
