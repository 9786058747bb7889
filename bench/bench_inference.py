"""Model inference: ONNX Runtime predict_one / predict against Keras and scikit-learn on the same model in this run.

Usage: python bench/bench_inference.py [--model BUNDLE ...] [--start DATE] [--end DATE] [--single N] [--batch N]
                                       [--skip-lstm] [--skip-forest]
Prints one JSON object: single-window latency percentiles in µs (targets: LSTM p99 ≤ 1 ms, forest p99 ≤ 0.1 ms),
the largest difference from the native model (target ≤ 1e-5), and batch throughput over --batch windows against
Keras predict (target ≤ 2.8 s per 100k windows, ≥ 2.5× Keras) and against the machine's arithmetic floor (a float32
matmul's measured GFLOP/s, same run; target ≤ 2×). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import (  # noqa: E402
    add_input_arguments,
    constant_workload,
    library_versions,
    sample_bars,
    timed,
    train_briefly,
)

import bar_features  # noqa: E402
import data_processor  # noqa: E402
from data_processor import TrainingData, Windows  # noqa: E402

VT_SYMBOL = "rb0000.SHFE"
MODEL_TYPES: tuple[str, ...] = ("lstm", "random_forest")
P99_TARGET_US: dict[str, float] = {"lstm": 1000.0, "random_forest": 100.0}
EQUAL_TOLERANCE = 1e-5
BATCH_SECONDS_PER_100K = 2.8  # default LSTM (60 × 30, 2 × LSTM(50)); scaled with --batch
KERAS_RATIO_TARGET = 2.5
FLOOR_RATIO_TARGET = 2.0
WARMUP_CALLS = 20
EAGER_CALLS = 10
MATMUL_SIZE = 2048


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[bench_inference] {message}", file=sys.stderr, flush=True)


@dataclass
class Subject:
    """One model under test, with the windows it is fed (scaled with its own scaler and features)."""

    model: Any  # ml_model.PricePredictionModel
    source: str
    train_seconds: float | None
    single: np.ndarray  # (n, sequence_length, features) float32, contiguous: real windows for the one-window calls
    every: Windows  # every usable window of the slice, the batch is drawn from these
    scaled: np.ndarray  # the scaled feature matrix the windows are views of


def load_bars(csv: str, start: str, end: str) -> pd.DataFrame:
    """The sample's bars between start and end (inclusive dates), indexed by bar-start datetime."""
    return sample_bars(csv).loc[start:end]


def all_windows(data: TrainingData) -> Windows:
    """Every usable window of the prepared data, train, valid and test together."""
    return data_processor.make_windows(data.scaled, data.labels.to_numpy(), data.sequence_length, data.segment)


def bundle_windows(bars: pd.DataFrame, model: Any) -> tuple[np.ndarray, Windows]:
    """The bars' features for a loaded bundle, scaled by its own scaler, and every usable window of them."""
    cleaned, _ = data_processor.clean_data(bars, VT_SYMBOL)
    features = bar_features.build_features(cleaned)
    missing = [name for name in model.names if name not in features.columns]
    if missing:
        raise SystemExit(f"bundle {model.path} needs features this code does not build: {missing}")
    scaled = model.scaler.transform(features[model.names].to_numpy())
    labels = data_processor.make_labels(cleaned, model.config.horizon).to_numpy()
    windows = data_processor.make_windows(scaled, labels, model.config.sequence_length, cleaned["segment"].to_numpy())
    return scaled, windows


def build_subject(model_type: str, data: TrainingData, single: int, epochs: int, train_stride: int) -> Subject:
    """Train a model in this process: the LSTM briefly (inference speed does not depend on its weights)."""
    model, _, source, seconds = train_briefly(model_type, epochs, train_stride, lambda _config: data, progress)
    test = data.windows("test")
    return Subject(model, source, seconds, test.take(np.arange(min(single, len(test)))), all_windows(data), data.scaled)


def load_subject(path: str, bars: pd.DataFrame, single: int) -> Subject:
    """A saved bundle and windows built from the bars with its features and scaler (its native model loaded)."""
    from ml_model import PricePredictionModel

    progress(f"loading bundle {path}")
    model = PricePredictionModel().load_model(path)
    scaled, every = bundle_windows(bars, model)
    if len(every) == 0:
        raise SystemExit(f"no usable windows for bundle {path} in the chosen bars")
    count = min(single, len(every))
    sample = every.take(np.arange(len(every) - count, len(every)))  # the latest windows
    model.predict_native(sample[:1])  # loads the Keras / scikit-learn model beside the ONNX one
    return Subject(model, f"bundle {path}", None, sample, every, scaled)


def time_calls(call: Callable[[np.ndarray], float], windows: np.ndarray, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """Nanoseconds of each call on each window (gc off, after untimed warm-up calls), and the values returned."""
    for window in windows[:warmup]:
        call(window)
    elapsed = np.empty(len(windows), dtype=np.int64)
    values = np.empty(len(windows), dtype=np.float64)
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for i, window in enumerate(windows):
            started = clock()
            values[i] = call(window)
            elapsed[i] = clock() - started
    finally:
        gc.enable()
    return elapsed, values


def percentiles_us(elapsed_ns: np.ndarray, prefix: str) -> dict[str, float]:
    """p50, p90, p99 and max of per-call nanoseconds, in µs, keys prefixed."""
    us = elapsed_ns / 1000.0
    found = {f"{prefix}_p{q}_us": float(np.percentile(us, q)) for q in (50, 90, 99)}
    found[f"{prefix}_max_us"] = float(us.max())
    return {key: round(value, 2) for key, value in found.items()}


def native_single_calls(subject: Subject, count: int) -> dict[str, tuple[Callable[[np.ndarray], float], int]]:
    """The native one-window calls in return units like predict_one, each with how many to time.

    LSTM: Keras predict, the model compiled by tf.function, and the eager call (~0.6 s a call here, so only a few);
    forest: scikit-learn predict of the window's last row.
    """
    model = subject.model
    network = model.network
    if model.model_type == "random_forest":
        return {"sklearn_predict": (lambda window: float(network.predict(window[-1][None])[0]), count)}
    import tensorflow as tf

    scale = float(model.label_scale)
    shape = (1, *subject.single.shape[1:])
    compiled = tf.function(lambda x: network(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)])
    return {
        "keras_predict": (lambda window: float(network.predict(window[None], verbose=0)[0, 0]) * scale, count),
        "keras_tf_function": (lambda window: float(compiled(window[None]).numpy()[0, 0]) * scale, count),
        "keras_eager_call": (
            lambda window: float(np.asarray(network(window[None], training=False))[0, 0]) * scale,
            min(count, EAGER_CALLS),
        ),
    }


def bench_single(subject: Subject, native_count: int, repeat: int) -> dict[str, Any]:
    """predict_one latency over the real windows, beside the native one-window calls, and their differences."""
    model = subject.model
    windows = subject.single
    replays: list[np.ndarray] = []
    ours = np.zeros(0)
    for run in range(repeat):
        progress(f"{model.model_type}: predict_one over {len(windows)} windows, replay {run + 1}/{repeat}")
        elapsed, ours = time_calls(model.predict_one, windows, WARMUP_CALLS)
        replays.append(elapsed)
    best = np.min(np.stack(replays), axis=0)  # each window's fastest replay: the code without preemption
    result: dict[str, Any] = {"windows": len(windows), "replays": repeat, **percentiles_us(replays[0], "predict_one")}
    result["predict_one_p99_us_each_replay"] = [round(float(np.percentile(r / 1000.0, 99)), 2) for r in replays]
    result["predict_one_best_of_replays_p99_us"] = round(float(np.percentile(best / 1000.0, 99)), 2)
    ours_p50 = float(np.percentile(replays[0], 50))
    progress(f"{model.model_type}: jitter reference, a fixed job timed {len(windows)} times the same way")
    reference = constant_workload(len(windows))
    ref_p50, ref_p99 = (float(np.percentile(reference / 1000.0, q)) for q in (50, 99))
    result.update(
        {
            "jitter_reference_p50_us": round(ref_p50, 2),
            "jitter_reference_p99_us": round(ref_p99, 2),
            "jitter_reference_p99_over_p50": round(ref_p99 / ref_p50, 2),
            "predict_one_p99_over_p50": round(result["predict_one_p99_us"] / result["predict_one_p50_us"], 2),
        }
    )

    progress(f"{model.model_type}: native batch output for the {len(windows)} windows")
    native_batch = model.predict_native(windows)
    differences = [float(np.max(np.abs(ours - native_batch)))]
    result["max_abs_diff_vs_native_batch"] = differences[0]

    for name, (call, count) in native_single_calls(subject, native_count).items():
        sample = windows[:count]
        progress(f"{model.model_type}: {name} over {len(sample)} windows")
        elapsed, values = time_calls(call, sample, min(3, len(sample)))
        result[f"{name}_calls"] = len(sample)
        result.update(percentiles_us(elapsed, name))
        result[f"{name}_over_predict_one_p50"] = round(float(np.percentile(elapsed, 50)) / ours_p50, 1)
        difference = float(np.max(np.abs(ours[: len(sample)] - values)))
        result[f"max_abs_diff_vs_{name}"] = difference
        differences.append(difference)
    result["max_abs_diff"] = max(differences)
    if model.model_type == "lstm":  # predictions are network outputs × label_scale: also give the network's units
        result["max_abs_diff_network_units"] = max(differences) / float(model.label_scale)
        result["label_scale"] = float(model.label_scale)
    return result


def batch_of(every: Windows, count: int) -> Windows:
    """`count` windows drawn in order from `every` (cycled when there are fewer), still views."""
    positions = np.resize(np.arange(len(every)), count)
    return Windows(every.view, every.starts[positions], every.labels[positions], every.sequence_length)


def lstm_flops(network: Any, sequence_length: int) -> int:
    """Multiply-add FLOPs of one window through the Keras stack (gate nonlinearities, ~1%, not counted)."""
    total = 0
    for layer in network.layers:
        name = layer.__class__.__name__
        weights = layer.get_weights()
        if name == "LSTM":
            total += 2 * sequence_length * (weights[0].size + weights[1].size)
        elif name == "Dense":
            total += 2 * weights[0].size
    return total


def matmul_peak_gflops(size: int, runs: int) -> dict[str, float]:
    """Best float32 numpy matmul GFLOP/s with all BLAS threads and with one thread (×cores), and the floor's peak."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size**3

    def best() -> float:
        a @ b
        return flops / min(timed(np.matmul, a, b)[0] for _ in range(runs)) / 1e9

    all_threads = best()
    with threadpool_limits(limits=1, user_api="blas"):
        one_thread = best()
    cores = os.cpu_count() or 1
    return {
        "matmul_gflops_all_threads": round(all_threads, 1),
        "matmul_gflops_one_thread": round(one_thread, 1),
        "peak_gflops": round(max(all_threads, one_thread * cores), 1),
    }


def chunk_positions(count: int, chunk: int) -> list[np.ndarray]:
    """Positions of consecutive chunks of `count` windows."""
    return [np.arange(a, min(a + chunk, count)) for a in range(0, count, chunk)]


def time_copies(windows: Windows, chunks: list[np.ndarray]) -> float:
    """Seconds to copy every chunk out of the window views, each dropped before the next (as model.predict does)."""
    started = time.perf_counter()
    for positions in chunks:
        windows.take(positions)
    return time.perf_counter() - started


def time_chunks(action: Callable[[np.ndarray], np.ndarray], arrays: list[np.ndarray]) -> tuple[float, np.ndarray]:
    """Seconds for `action` over ready-made chunk arrays, and the joined outputs."""
    started = time.perf_counter()
    outputs = [action(x) for x in arrays]
    return time.perf_counter() - started, np.concatenate(outputs)


def bench_batch(subject: Subject, count: int, repeat: int, peak: dict[str, float] | None) -> dict[str, Any]:
    """model.predict over `count` windows, end to end and on one ready array; the native predict on the same array."""
    from ml_model import BATCH_CHUNK

    model = subject.model
    windows = batch_of(subject.every, count)
    chunks = chunk_positions(count, BATCH_CHUNK)
    native = "keras_predict" if model.model_type == "lstm" else "sklearn_predict"
    progress(f"{model.model_type}: warm-up of both batch paths on one chunk (untimed)")
    first = windows.take(chunks[0])
    model.predict(first)
    model.predict_native(first)
    del first

    c_order = np.ascontiguousarray(subject.scaled)
    c_view = data_processor.make_windows(c_order, None, windows.sequence_length).view
    c_windows = Windows(c_view, windows.starts, windows.labels, windows.sequence_length)
    progress(f"{model.model_type}: copying {count} windows out of the views in {BATCH_CHUNK}-window chunks")
    copy_times = [time_copies(windows, chunks) for _ in range(repeat)]
    copy_c_times = [time_copies(c_windows, chunks) for _ in range(repeat)]
    del c_order, c_view, c_windows
    arrays = [windows.take(np.arange(count))]  # one ready array for both compute timings; each chunks it itself

    ours_times, compute_times, native_times = [], [], []
    ours = compute = theirs = np.zeros(0)
    for run in range(repeat):
        progress(f"{model.model_type}: model.predict(Windows) over {count} windows, run {run + 1}/{repeat}")
        seconds, ours = timed(model.predict, windows)
        ours_times.append(seconds)
        progress(f"{model.model_type}: model.predict on the ready array, run {run + 1}/{repeat}")
        seconds, compute = time_chunks(model.predict, arrays)
        compute_times.append(seconds)
        progress(f"{model.model_type}: {native} on the same ready array, run {run + 1}/{repeat}")
        seconds, theirs = time_chunks(model.predict_native, arrays)
        native_times.append(seconds)
    del arrays
    ours_s, compute_s, native_s = (statistics.median(t) for t in (ours_times, compute_times, native_times))
    result: dict[str, Any] = {
        "windows": count,
        "distinct_windows": min(count, len(subject.every)),
        "chunk": BATCH_CHUNK,
        "runs": repeat,
        "ours_seconds": round(ours_s, 3),
        "ours_windows_per_s": round(count / ours_s),
        "ours_compute_seconds": round(compute_s, 3),
        f"{native}_seconds": round(native_s, 3),
        f"{native}_windows_per_s": round(count / native_s),
        f"{native}_over_ours": round(native_s / compute_s, 2),
        "chunk_copy_seconds": round(statistics.median(copy_times), 3),
        "chunk_copy_seconds_if_c_order": round(statistics.median(copy_c_times), 3),
        "features_c_contiguous": bool(subject.scaled.flags.c_contiguous),
        "max_abs_diff": float(max(np.max(np.abs(ours - theirs)), np.max(np.abs(compute - theirs)))),
    }
    if model.model_type == "lstm" and peak is not None:
        flops = lstm_flops(model.network, model.config.sequence_length)
        floor_s = flops * count / (peak["peak_gflops"] * 1e9)
        result.update(
            {
                "mflop_per_window": round(flops / 1e6, 3),
                "ours_compute_gflops": round(flops * count / compute_s / 1e9, 1),
                "floor_seconds": round(floor_s, 3),
                "ours_compute_over_floor": round(compute_s / floor_s, 2),
                "ours_over_floor": round(ours_s / floor_s, 2),
                f"{native}_over_floor": round(native_s / floor_s, 2),
                "batch_seconds_target": round(BATCH_SECONDS_PER_100K * count / 100_000, 3),
            }
        )
    return result


def targets_met(results: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """The issue's targets, for the models that ran."""
    met: dict[str, bool] = {}
    for model_type, result in results.items():
        single = result["single"]
        met[f"{model_type}_predict_one_p99"] = single["predict_one_p99_us"] <= P99_TARGET_US[model_type]
        met[f"{model_type}_predict_one_best_of_replays_p99"] = (
            single["predict_one_best_of_replays_p99_us"] <= P99_TARGET_US[model_type]
        )
        met[f"{model_type}_equal_native"] = (
            max(single["max_abs_diff"], result["batch"]["max_abs_diff"]) <= EQUAL_TOLERANCE
        )
        if model_type == "lstm":
            batch = result["batch"]
            met["lstm_batch_seconds"] = batch["ours_seconds"] <= batch["batch_seconds_target"]
            met["lstm_batch_compute_seconds"] = batch["ours_compute_seconds"] <= batch["batch_seconds_target"]
            met["lstm_batch_vs_keras"] = batch["keras_predict_over_ours"] >= KERAS_RATIO_TARGET
            met["lstm_batch_vs_floor"] = batch["ours_compute_over_floor"] <= FLOOR_RATIO_TARGET
    return met


def main(argv: Sequence[str] | None = None) -> int:
    """Run the inference benchmark and print its JSON object."""
    parser = argparse.ArgumentParser(description="模型推理基准 / model inference benchmark")
    add_input_arguments(parser)
    parser.add_argument("--start", default="2015-01-01", help="数据起始日期 / first date of the bars")
    parser.add_argument("--end", default="2016-06-30", help="数据结束日期（含）/ last date of the bars")
    parser.add_argument("--single", type=int, default=2000, help="单窗口计时的窗口数 / windows timed one by one")
    parser.add_argument(
        "--native-single",
        type=int,
        default=200,
        help="原生单窗口调用次数（Keras 约 35 ms 一次）/ native one-window calls timed",
    )
    parser.add_argument("--repeat", type=int, default=3, help="predict_one 重放次数 / predict_one replays")
    parser.add_argument("--batch", type=int, default=100_000, help="批量推理的窗口数 / windows in the batch")
    parser.add_argument("--batch-repeat", type=int, default=1, help="批量计时次数取中位数 / batch runs (median)")
    parser.add_argument("--epochs", type=int, default=1, help="进程内 LSTM 训练轮数 / in-process LSTM epochs")
    parser.add_argument(
        "--train-stride",
        type=int,
        default=20,
        help="进程内 LSTM 每隔几个训练窗口取一个 / in-process LSTM training stride",
    )
    parser.add_argument("--skip-lstm", action="store_true", help="跳过 LSTM / skip the LSTM")
    parser.add_argument("--skip-forest", action="store_true", help="跳过随机森林 / skip the random forest")
    args = parser.parse_args(argv)
    if (
        min(args.single, args.native_single, args.repeat, args.batch, args.batch_repeat, args.epochs, args.train_stride)
        < 1
    ):
        parser.error(
            "--single, --native-single, --repeat, --batch, --batch-repeat, --epochs and --train-stride must be ≥ 1"
        )
    wanted = [t for t, skip in zip(MODEL_TYPES, (args.skip_lstm, args.skip_forest), strict=True) if not skip]
    if not wanted:
        parser.error("nothing to do: both --skip-lstm and --skip-forest")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before Keras / TensorFlow are first imported
    began = time.perf_counter()

    progress(f"loading {args.csv} bars {args.start} .. {args.end}")
    bars = load_bars(args.csv, args.start, args.end)
    if len(bars) == 0:
        parser.error(f"no bars between {args.start} and {args.end}")
    subjects: dict[str, Subject] = {}
    for path in args.model:
        subject = load_subject(path, bars, args.single)
        model_type = subject.model.model_type
        if model_type in subjects:
            parser.error(f"two --model bundles of type {model_type}")
        if model_type in wanted:
            subjects[model_type] = subject
    data: TrainingData | None = None
    for model_type in wanted:
        if model_type in subjects:
            continue
        if data is None:
            progress(f"prepare_training_data on {len(bars)} bars")
            data = data_processor.prepare_training_data(
                bars, VT_SYMBOL, horizon=5, sequence_length=60, features_count=30
            )
        subjects[model_type] = build_subject(model_type, data, args.single, args.epochs, args.train_stride)

    peak: dict[str, float] | None = None
    if "lstm" in subjects:
        progress(f"float32 matmul {MATMUL_SIZE}² peak, all BLAS threads and one")
        peak = matmul_peak_gflops(MATMUL_SIZE, 5)
    results: dict[str, dict[str, Any]] = {}
    for model_type in MODEL_TYPES:
        if model_type not in subjects:
            continue
        subject = subjects[model_type]
        single = bench_single(subject, args.native_single, args.repeat)
        batch = bench_batch(subject, args.batch, args.batch_repeat, peak if model_type == "lstm" else None)
        results[model_type] = {
            "source": subject.source,
            "train_seconds": None if subject.train_seconds is None else round(subject.train_seconds, 1),
            "features": len(subject.model.names),
            "sequence_length": subject.model.config.sequence_length,
            "single": single,
            "batch": batch,
        }

    print(
        json.dumps(
            {
                "bars": len(bars),
                "first_bar": bars.index[0].isoformat(),
                "last_bar": bars.index[-1].isoformat(),
                "cpu_count": os.cpu_count(),
                "versions": library_versions(),
                **(peak or {}),
                **results,
                "targets": {
                    "predict_one_p99_us_max": P99_TARGET_US,
                    "max_abs_diff_max": EQUAL_TOLERANCE,
                    "lstm_batch_seconds_max_per_100k": BATCH_SECONDS_PER_100K,
                    "lstm_batch_keras_over_ours_min": KERAS_RATIO_TARGET,
                    "lstm_batch_ours_over_floor_max": FLOOR_RATIO_TARGET,
                },
                "targets_met": targets_met(results),
                "bench_seconds": round(time.perf_counter() - began, 1),
                "note": "one process, one model per type used by every path; an in-process LSTM is trained briefly "
                "because "
                "inference speed does not depend on how well trained the weights are (same shapes, same arithmetic); "
                "latencies are per call (perf_counter_ns, gc off, after warm-up calls) on real scaled test windows, "
                "in µs; best_of_replays takes each window's fastest replay, which removes preemption on this shared "
                "2-core machine, and the jitter reference times a fixed sum() of 2000 floats in the same loop; LSTM "
                "outputs are in return units (network output × label_scale); ours_seconds is model.predict(Windows) "
                "end to end (it copies each chunk out of the views: chunk_copy_seconds; one single-threaded "
                "session per core takes its share of the chunks); ours_compute_seconds and the native predict run "
                "on the same ready array, and the ratio to "
                "the native predict and to the floor use those; the floor is the LSTM's multiply-add FLOPs over the "
                "measured float32 matmul peak (the larger of all threads and one thread × cores)",
            },
            ensure_ascii=False,
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
