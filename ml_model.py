"""LSTM and RandomForest return predictors: honest training, evaluation, model bundles, fast ONNX inference."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bar_features import DEFAULT_FEATURE_SET, FEATURE_SET_VERSIONS, FEATURE_SETS
from config import (
    CHINA_TZ,
    ContractSpec,
    ModelError,
    ModelSettings,
    atomic_folder,
    atomic_path,
    contract_spec,
    file_sha256,
    json_safe,
    load_contracts,
    product_of,
)
from data_processor import (
    CLASSES,
    CLASSIFY,
    DEFAULT_LABEL_KIND,
    LABEL_KINDS,
    Scaler,
    TrainingData,
    Windows,
    fold_slices,
    make_windows,
    prepare_training_data,
    roll_exit_flags,
)
from model_health import DISTRIBUTION_KEY, PREDICTION_SAMPLE, training_summary
from trade_simulator import EDGE_NONE, SimulationBars, ThresholdChoice, choose_threshold
from trading_calendar import causal_trading_days

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

BUNDLE_FORMAT: int = 2  # 2: sealed by manifest.json (see manifest_of)
MODEL_FILES: dict[str, str] = {"lstm": "model.keras", "random_forest": "model.joblib"}
FAST_FILE = "fast.onnx"
SCALER_FILE = "scaler.json"
METADATA_FILE = "metadata.json"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
RETRAIN = "请用 python ai_trading_system.py train ...（或 demo）重新训练 / retrain it with the train or demo command"
FAST_TOLERANCE: float = 1e-5
BATCH_CHUNK: int = 1024


# Small configurations on top of settings/model.json, trained in minutes on two cores: the demo's models, and what
# `research` trains by default (one model per year and setting).
SMALL_MODELS: dict[str, dict[str, Any]] = {
    "random_forest": {"trees": 60},
    "lstm": {"epochs": 3, "lstm_units": (32, 32), "dense_units": 16, "train_stride": 4},
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes a model; saved in its metadata."""

    model_type: str = "lstm"
    sequence_length: int = 60
    features_count: int = 30
    horizon: int = 5
    epochs: int = 100
    batch_size: int = 256
    lstm_units: tuple[int, ...] = (50, 50)
    dropout: float = 0.2
    dense_units: int = 25
    learning_rate: float = 1e-3
    patience: int = 3
    train_stride: int = 2  # every n-th training window: neighbours share all but one row, so little is lost
    trees: int = 100
    max_depth: int = 10
    min_samples_leaf: int = 50
    n_jobs: int = -1
    seed: int = 42
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    feature_set: str = DEFAULT_FEATURE_SET  # bar_features.FEATURE_SETS: base, or mtf (base + multi-timeframe)

    def __post_init__(self) -> None:
        if self.feature_set not in FEATURE_SETS:
            raise ModelError(
                f"特征集必须是 {' / '.join(FEATURE_SETS)}，收到 {self.feature_set!r} / unknown feature set"
            )
        if self.model_type not in MODEL_FILES:
            raise ModelError(f"模型类型必须是 lstm 或 random_forest，收到 {self.model_type!r} / unknown model type")
        if self.sequence_length < 1 or self.horizon < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ModelError("sequence_length、horizon、epochs、batch_size 必须 ≥ 1 / must be at least 1")
        if not self.lstm_units or min(self.lstm_units) < 1 or self.train_stride < 1:
            raise ModelError("lstm_units 与 train_stride 必须为正 / must be positive")

    @classmethod
    def from_settings(cls, settings: ModelSettings, **overrides: Any) -> ModelConfig:
        """The config of `settings/model.json` (plus overrides such as model_type or epochs)."""
        base = cls(
            model_type=settings.model_type,
            sequence_length=settings.sequence_length,
            features_count=settings.features_count,
            horizon=settings.prediction_horizon,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


# --- evaluation --------------------------------------------------------------------------------------


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def score(prediction: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """MSE, MAE, directional accuracy (where both are non-zero), IC and rank IC."""
    prediction = np.asarray(prediction, dtype="float64")
    label = np.asarray(label, dtype="float64")
    both = (np.sign(prediction) != 0) & (np.sign(label) != 0)
    direction = float(np.mean(np.sign(prediction[both]) == np.sign(label[both]))) if both.any() else math.nan
    ranks = pd.Series(prediction).rank().to_numpy(), pd.Series(label).rank().to_numpy()
    return {
        "mse": float(np.mean((prediction - label) ** 2)),
        "mae": float(np.mean(np.abs(prediction - label))),
        "directional_accuracy": direction,
        "ic": _correlation(prediction, label),
        "rank_ic": _correlation(*ranks),
    }


def evaluation_table(
    prediction: np.ndarray, label: np.ndarray, last_return: np.ndarray, typical_size: float
) -> dict[str, dict[str, float]]:
    """The model beside the naive baselines: predict zero, and predict the sign of the last return."""
    return {
        "model": score(prediction, label),
        "zero": score(np.zeros_like(label), label),
        "last_return_sign": score(np.sign(last_return) * typical_size, label),
    }


# --- ONNX export (the fast path) ---------------------------------------------------------------------


def _keras_gates_to_onnx(matrix: np.ndarray, units: int) -> np.ndarray:
    """Keras orders LSTM gates i, f, c, o along the last axis; ONNX wants i, o, f, c."""
    i, f, c, o = (matrix[..., k * units : (k + 1) * units] for k in range(4))
    return np.concatenate([i, o, f, c], axis=-1)


def lstm_to_onnx(network: Any, label_scale: float, sequence_length: int, features: int) -> bytes:
    """An ONNX graph equal to the Keras LSTM stack (dropout is inactive at inference), output × label_scale."""
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = [helper.make_node("Transpose", ["window"], ["seq"], perm=[1, 0, 2])]
    weights: list[Any] = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
    ]
    current = "seq"
    lstm_layers = [layer for layer in network.layers if layer.__class__.__name__ == "LSTM"]
    dense_layers = [layer for layer in network.layers if layer.__class__.__name__ == "Dense"]
    for n, layer in enumerate(lstm_layers):
        kernel, recurrent, bias = (np.asarray(w, dtype=np.float32) for w in layer.get_weights())
        units = recurrent.shape[0]
        w = _keras_gates_to_onnx(kernel, units).T[None]
        r = _keras_gates_to_onnx(recurrent, units).T[None]
        b = np.concatenate([_keras_gates_to_onnx(bias, units), np.zeros(4 * units, np.float32)])[None]
        weights += [
            numpy_helper.from_array(w, f"W{n}"),
            numpy_helper.from_array(r, f"R{n}"),
            numpy_helper.from_array(b, f"B{n}"),
        ]
        last = n == len(lstm_layers) - 1
        nodes.append(
            helper.make_node("LSTM", [current, f"W{n}", f"R{n}", f"B{n}"], [f"Y{n}", f"H{n}"], hidden_size=units)
        )
        if last:
            nodes.append(helper.make_node("Squeeze", [f"H{n}", "axis0"], ["dense_in"]))
            current = "dense_in"
        else:
            nodes.append(helper.make_node("Squeeze", [f"Y{n}", "axis1"], [f"S{n}"]))
            current = f"S{n}"
    for n, layer in enumerate(dense_layers):
        kernel, bias = (np.asarray(w, dtype=np.float32) for w in layer.get_weights())
        weights += [numpy_helper.from_array(kernel, f"D{n}"), numpy_helper.from_array(bias, f"d{n}")]
        nodes.append(helper.make_node("Gemm", [current, f"D{n}", f"d{n}"], [f"G{n}"]))
        current = f"G{n}"
        activation = layer.get_config().get("activation", "linear")
        if activation == "relu":
            nodes.append(helper.make_node("Relu", [current], [f"A{n}"]))
            current = f"A{n}"
        elif activation == "softmax":  # the classifier's head: the class probabilities become P(up) - P(down)
            weights.append(numpy_helper.from_array(class_weights(CLASSES).reshape(-1, 1), "class_weights"))
            nodes.append(helper.make_node("Softmax", [current], [f"P{n}"], axis=-1))
            nodes.append(helper.make_node("MatMul", [f"P{n}", "class_weights"], [f"A{n}"]))
            current = f"A{n}"
        elif activation != "linear":
            raise ModelError(f"ONNX 导出不支持激活函数 {activation!r} / unsupported activation")
    weights.append(numpy_helper.from_array(np.array([label_scale], dtype=np.float32), "label_scale"))
    nodes.append(helper.make_node("Mul", [current, "label_scale"], ["prediction"]))
    graph = helper.make_graph(
        nodes,
        "lstm_return_predictor",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, [None, sequence_length, features])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [None, 1])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ai-trading-desk")
    model.ir_version = 8
    return bytes(model.SerializeToString())


def forest_to_onnx(forest: Any, features: int) -> bytes:
    """The forest as an ONNX TreeEnsembleRegressor (float32 input, as scikit-learn's trees compare); a classifier
    as a TreeEnsembleClassifier whose probabilities become the signed score `class_weights` gives."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    classifier = hasattr(forest, "classes_")
    onnx_model = convert_sklearn(
        forest,
        initial_types=[("row", FloatTensorType([None, features]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
        options={id(forest): {"zipmap": False}} if classifier else None,
    )
    if classifier:
        _score_output(onnx_model, class_weights(forest.classes_))
    return bytes(onnx_model.SerializeToString())


def class_weights(classes: Sequence[Any]) -> np.ndarray:
    """The weight of each class's probability in the classifier's score: +1 up, -1 down, 0 neither, so the score is
    P(up) - P(down), signed like a forward return."""
    return np.array([float(np.sign(float(c))) for c in classes], dtype=np.float32)


def _score_output(onnx_model: Any, weights: np.ndarray) -> None:
    """Replace a converted classifier's outputs (label, probabilities) by one: probabilities · weights."""
    from onnx import TensorProto, helper, numpy_helper

    graph = onnx_model.graph
    probabilities = next(output.name for output in graph.output if output.name != "label")
    graph.initializer.append(numpy_helper.from_array(weights.reshape(-1, 1), "class_weights"))
    graph.node.append(helper.make_node("MatMul", [probabilities, "class_weights"], ["score"]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1]))


class FastPredictor:
    """ONNX Runtime sessions, each single-threaded: one for one window (lowest latency), one per core for batches."""

    def __init__(self, onnx_bytes: bytes, model_type: str) -> None:
        import onnxruntime as ort

        def session() -> Any:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])

        self.model_type = model_type
        self.single = session()
        # One single-threaded session per core, each on its own chunks: 12% faster on 2 cores than one
        # two-thread session, whose LSTM kernel parallelises poorly (bench/bench_inference.py).
        self.workers = [session() for _ in range(os.cpu_count() or 1)]
        self.input_name = self.single.get_inputs()[0].name
        self.output_name = self.single.get_outputs()[0].name

    def _inputs(self, windows: np.ndarray) -> np.ndarray:
        rows = windows[:, -1, :] if self.model_type == "random_forest" else windows
        return np.ascontiguousarray(rows, dtype=np.float32)

    def predict_one(self, window: np.ndarray) -> float:
        """One window (sequence_length, features), scaled."""
        out = self.single.run([self.output_name], {self.input_name: self._inputs(window[None])})[0]
        return float(out.reshape(-1)[0])

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """A batch of windows (n, sequence_length, features), scaled."""
        return self.predict_chunks(len(windows), lambda a, b: windows[a:b])

    def predict_chunks(self, count: int, chunk: Callable[[int, int], np.ndarray]) -> np.ndarray:
        """Predictions for `count` windows where chunk(a, b) gives windows a..b-1; the chunks share out the cores."""
        out = np.empty(count)
        size = max(1, min(BATCH_CHUNK, math.ceil(count / len(self.workers))))
        bounds = [(a, min(a + size, count)) for a in range(0, count, size)]

        def work(worker: int) -> None:
            session = self.workers[worker]
            for a, b in bounds[worker :: len(self.workers)]:
                result = session.run([self.output_name], {self.input_name: self._inputs(chunk(a, b))})[0]
                out[a:b] = result.reshape(-1)

        if len(bounds) <= 1:
            for worker in range(len(bounds)):
                work(worker)
            return out
        with ThreadPoolExecutor(len(self.workers)) as pool:
            list(pool.map(work, range(len(self.workers))))
        return out


# --- Keras training helpers --------------------------------------------------------------------------


def _window_dataset(
    windows: Windows, batch_size: int, label_scale: float, seed: int | None, classify: bool = False
) -> Any:
    """A keras PyDataset that copies one batch of windows at a time (the windows themselves stay views); with
    `classify` the targets are class indices (`CLASSES` order: down 0, neither 1, up 2)."""
    import keras

    class WindowBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.order = np.arange(len(windows))
            self.epoch = 0
            self._shuffle()

        def _shuffle(self) -> None:
            if seed is not None:
                self.order = np.random.default_rng(seed + self.epoch).permutation(len(windows))

        def __len__(self) -> int:
            return math.ceil(len(windows) / batch_size)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            chosen = np.sort(self.order[index * batch_size : (index + 1) * batch_size])
            x = windows.take(chosen)
            if classify:
                return x, (windows.labels[chosen] - CLASSES[0]).astype(np.int32)
            return x, (windows.labels[chosen] / label_scale).astype(np.float32)

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self._shuffle()

    return WindowBatches()


def _strided(windows: Windows, stride: int) -> Windows:
    if stride <= 1:
        return windows
    keep = np.arange(0, len(windows), stride)
    return Windows(windows.view, windows.starts[keep], windows.labels[keep], windows.sequence_length)


def data_fingerprint(data: TrainingData) -> str:
    """sha256 of the bar times, closes and selected features the model was trained and tested on."""
    digest = hashlib.sha256()
    digest.update(np.asarray(data.index.as_unit("us").asi8).tobytes())
    digest.update(np.ascontiguousarray(data.close).tobytes())
    digest.update(np.nan_to_num(data.scaled).tobytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("numpy", "pandas", "scikit-learn", "keras", "tensorflow-cpu", "onnxruntime", "ta"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "missing"
    return found


def _major(text: str) -> str:
    return text.split(".")[0]


def _minor(text: str) -> str:
    return ".".join(text.split(".")[:2])


# --- the model ---------------------------------------------------------------------------------------


@dataclass
class TrainingHistory:
    """Per-epoch losses (LSTM) and what training used."""

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    train_samples: int = 0


class PricePredictionModel:
    """Predicts the forward return from a window of scaled features; LSTM (Keras 3) or RandomForest."""

    def __init__(self, model_type: str = "lstm", config: ModelConfig | None = None) -> None:
        self.config = replace(config, model_type=model_type) if config else ModelConfig(model_type=model_type)
        self.model_type = self.config.model_type
        self.network: Any = None  # the Keras model or the scikit-learn forest, once trained or loaded
        self.fast: FastPredictor | None = None
        self.onnx_bytes: bytes | None = None
        self.scaler: Scaler | None = None
        self.names: list[str] = []
        self.label_scale = 1.0
        self.threshold = 0.0
        self.metadata: dict[str, Any] = {}
        self.seal = ""  # the bundle's identity once saved or loaded: its manifest's seal
        self.metrics: dict[str, Any] = {}
        self.history = TrainingHistory()
        self.path: Path | None = None

    # -- building and training --

    def build_lstm_model(self, input_shape: tuple[int, int], classify: bool = False) -> Any:
        """The seed's stack: LSTM 50 → Dropout → LSTM 50 → Dropout → Dense 25 → Dense 1 (sizes from config); with
        `classify` the head is Dense 3 with softmax over `CLASSES`, trained on cross-entropy."""
        import keras

        layers: list[Any] = [keras.Input(shape=input_shape)]
        units = self.config.lstm_units
        for n, size in enumerate(units):
            layers.append(keras.layers.LSTM(size, return_sequences=n < len(units) - 1))
            layers.append(keras.layers.Dropout(self.config.dropout))
        layers.append(keras.layers.Dense(self.config.dense_units))
        layers.append(keras.layers.Dense(len(CLASSES), activation="softmax") if classify else keras.layers.Dense(1))
        network = keras.Sequential(layers)
        loss = "sparse_categorical_crossentropy" if classify else "mse"
        network.compile(optimizer=keras.optimizers.Adam(self.config.learning_rate), loss=loss)
        return network

    def train(self, data: TrainingData, progress: Progress | None = None) -> TrainingHistory:
        """Fit on the training part, early-stop on the validation part, then build and verify the fast path."""
        import time

        say = progress or (lambda message: None)
        if data.sequence_length != self.config.sequence_length or data.horizon != self.config.horizon:
            raise ModelError("训练数据的窗口长度或预测周期与模型配置不一致 / data and config disagree on shape")
        unknown = [name for name in data.names if name not in FEATURE_SETS[self.config.feature_set]]
        if unknown:
            raise ModelError(
                f"训练数据含特征集 {self.config.feature_set} 之外的特征 {unknown} / features outside the set"
            )
        self.names = list(data.names)
        self.scaler = data.scaler
        started = time.perf_counter()
        train = _strided(data.windows("train"), self.config.train_stride)
        valid = data.windows("valid")
        if len(train) < 100 or len(valid) < 30:
            raise ModelError(f"样本太少：训练 {len(train)}，验证 {len(valid)}；请加长日期范围 / too few samples")
        if self.model_type == "lstm":
            self._train_lstm(train, valid, say, data.label_kind == CLASSIFY)
        else:
            self._train_forest(train, say, data.label_kind == CLASSIFY)
        self.history.seconds = time.perf_counter() - started
        self.history.train_samples = len(train)
        self._build_fast_path(valid)
        self._keep_training_summary(data, train)
        return self.history

    def _keep_training_summary(self, data: TrainingData, train: Windows) -> None:
        """The training part's feature bins and prediction range, for the live drift and range checks."""
        start, stop = data.split.train
        predictions = self.predict(_strided(train, max(1, len(train) // PREDICTION_SAMPLE)))
        self.metadata[DISTRIBUTION_KEY] = training_summary(data.scaled[start:stop], self.names, predictions)

    def _train_lstm(self, train: Windows, valid: Windows, say: Progress, classify: bool = False) -> None:
        import keras
        import tensorflow as tf

        keras.utils.set_random_seed(self.config.seed)
        tf.config.experimental.enable_op_determinism()
        self.label_scale = 1.0 if classify else float(np.std(train.labels)) or 1.0
        self.network = self.build_lstm_model((self.config.sequence_length, len(self.names)), classify)

        class Report(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                logs = logs or {}
                say(
                    f"第 {epoch + 1} 轮 / epoch {epoch + 1}: loss {logs.get('loss', math.nan):.4f}, "
                    f"val_loss {logs.get('val_loss', math.nan):.4f}"
                )

        callbacks = [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.config.patience, restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=max(1, self.config.patience // 2), min_lr=1e-5
            ),
            Report(),
        ]
        fitted = self.network.fit(
            _window_dataset(train, self.config.batch_size, self.label_scale, self.config.seed, classify),
            validation_data=_window_dataset(valid, self.config.batch_size, self.label_scale, None, classify),
            epochs=self.config.epochs,
            callbacks=callbacks,
            verbose=0,
            shuffle=False,
        )
        self.history.loss = [float(x) for x in fitted.history.get("loss", [])]
        self.history.val_loss = [float(x) for x in fitted.history.get("val_loss", [])]
        self.history.best_epoch = int(np.argmin(self.history.val_loss)) + 1 if self.history.val_loss else 0

    def _train_forest(self, train: Windows, say: Progress, classify: bool = False) -> None:
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        kind = "分类 / classifier" if classify else "回归 / regressor"
        say(f"训练随机森林{kind} / fitting the forest on {len(train):,} samples")
        self.label_scale = 1.0
        rows = train.view[train.starts][:, -1, :]
        forest = RandomForestClassifier if classify else RandomForestRegressor
        self.network = forest(
            n_estimators=self.config.trees,
            max_depth=self.config.max_depth,
            min_samples_leaf=self.config.min_samples_leaf,
            max_features=0.5,
            n_jobs=self.config.n_jobs,
            random_state=self.config.seed,
        )
        labels = train.labels.astype(np.int64) if classify else train.labels
        self.network.fit(np.asarray(rows, dtype=np.float32), labels)
        self.network.n_jobs = 1  # predicting one row with n_jobs > 1 is 3.7× slower (GUIDE §6)

    def _build_fast_path(self, check: Windows) -> None:
        """Generate the ONNX graph from the trained model and prove it equal on validation windows."""
        features = len(self.names)
        if self.model_type == "lstm":
            self.onnx_bytes = lstm_to_onnx(self.network, self.label_scale, self.config.sequence_length, features)
        else:
            self.onnx_bytes = forest_to_onnx(self.network, features)
        self.fast = FastPredictor(self.onnx_bytes, self.model_type)
        sample = check.take(np.arange(min(len(check), 2000)))
        native = self.predict_native(sample)
        fast = self.fast.predict(sample)
        difference = float(np.max(np.abs(native - fast))) if len(sample) else 0.0
        single = abs(self.fast.predict_one(sample[0]) - native[0]) if len(sample) else 0.0
        if max(difference, single) > FAST_TOLERANCE:
            raise ModelError(f"快速推理与原模型差异 {difference:.2e} 超过 {FAST_TOLERANCE:g} / fast path disagrees")
        self.metadata["fast_path"] = {
            "engine": "onnxruntime",
            "checked_windows": len(sample),
            "max_abs_difference": difference,
        }

    # -- inference --

    def _require_fast(self) -> FastPredictor:
        if self.fast is None:
            raise ModelError("模型尚未训练或加载 / the model is not trained or loaded")
        return self.fast

    def predict_native(self, windows: np.ndarray) -> np.ndarray:
        """Keras / scikit-learn output for scaled windows (slow; the reference for the fast path)."""
        network = self._native()
        if self.model_type == "lstm":
            out = np.asarray(network.predict(np.asarray(windows, dtype=np.float32), batch_size=1024, verbose=0))
            if out.ndim == 2 and out.shape[1] == len(CLASSES):  # the softmax head: P(up) - P(down)
                return np.asarray(out.astype(np.float64) @ class_weights(CLASSES), dtype=np.float64)
            return np.asarray(out, dtype=np.float64).reshape(-1) * self.label_scale
        rows = np.asarray(windows[:, -1, :], dtype=np.float32)
        if hasattr(network, "classes_"):  # a classifier: the signed score P(up) - P(down)
            probabilities = np.asarray(network.predict_proba(rows), dtype=np.float64)
            return np.asarray(probabilities @ class_weights(network.classes_), dtype=np.float64)
        return np.asarray(network.predict(rows), dtype=np.float64)

    def predict(self, windows: np.ndarray | Windows) -> np.ndarray:
        """Forward-return predictions for many scaled windows (chunked; Windows stay views until a chunk)."""
        fast = self._require_fast()
        if isinstance(windows, Windows):
            if self.model_type == "random_forest":  # the forest reads only each window's last row
                rows = windows.view[:, -1, :][windows.starts][:, None, :]
                return fast.predict(rows)
            return fast.predict_chunks(len(windows), lambda a, b: windows.take(np.arange(a, b)))
        array = np.asarray(windows)
        if array.ndim != 3 or array.shape[1:] != (self.config.sequence_length, len(self.names)):
            raise ModelError(
                f"输入形状 {array.shape} 应为 (n, {self.config.sequence_length}, {len(self.names)}) / wrong input shape"
            )
        return fast.predict(array)

    def predict_one(self, window: np.ndarray) -> float:
        """The forward-return prediction for one scaled window (sequence_length, features): the live path."""
        return self._require_fast().predict_one(window)

    def evaluate(self, data: TrainingData, part: str = "test") -> dict[str, Any]:
        """Metrics on `part` beside the naive baselines; also kept in self.metrics."""
        windows = data.windows(part)
        if len(windows) == 0:
            raise ModelError(f"{part} 部分没有样本 / no samples in the {part} part")
        prediction = self.predict(windows)
        ends = windows.end_rows()
        h = data.horizon
        back = np.maximum(ends - h, 0)
        last_return = data.close[ends] / data.close[back] - 1
        train_labels = data.windows("train").labels
        typical = float(np.mean(np.abs(train_labels))) if len(train_labels) else 0.0
        table = evaluation_table(prediction, windows.labels, last_return, typical)
        metrics: dict[str, Any] = {"samples": len(windows), **table}
        self.metrics[part] = metrics
        return metrics

    # -- the bundle --

    def save_model(
        self, path: str | Path, extra: dict[str, Any] | None = None, attach: Callable[[Path], object] | None = None
    ) -> Path:
        """Write the bundle folder atomically and seal it (`manifest_of`); `attach(folder)` may first add files such
        as report.png, so they are sealed too. The metadata (self.metadata, then `extra`) must name the vt_symbol,
        interval and train / valid / test ranges the model was trained on; `label_kind` defaults to close."""
        if self.network is None or self.onnx_bytes is None or self.scaler is None:
            raise ModelError("没有可保存的已训练模型 / nothing trained to save")
        facts = {**self.metadata, **(extra or {})}
        missing = [key for key in ("vt_symbol", "interval", "ranges") if not facts.get(key)]
        if missing:
            raise ModelError(
                f"保存模型包需要 {missing}（训练所用的合约、K线周期与 train/valid/test 区间，经 extra 传入）/ "
                "a bundle must record what it was trained on"
            )
        label_kind = facts.get("label_kind", DEFAULT_LABEL_KIND)
        if label_kind not in LABEL_KINDS:
            raise ModelError(f"标签类型 {label_kind!r} 未知（可用：{', '.join(LABEL_KINDS)}）/ unknown label kind")
        bundle_ranges({"ranges": facts["ranges"]}, Path(path))  # refuse ranges a loader could not read
        target = Path(path)
        with atomic_folder(target) as temp:
            model_file = MODEL_FILES[self.model_type]
            if self.model_type == "lstm":
                self.network.save(temp / model_file)
            else:
                import joblib

                joblib.dump(self.network, temp / model_file, compress=3)
            (temp / FAST_FILE).write_bytes(self.onnx_bytes)
            (temp / SCALER_FILE).write_text(json.dumps(self.scaler.to_dict(), indent=2), encoding="utf-8")
            (temp / METRICS_FILE).write_text(
                json.dumps(json_safe(self.metrics), indent=2, ensure_ascii=False), encoding="utf-8"
            )
            metadata = {
                **facts,
                "format": BUNDLE_FORMAT,
                "name": target.name,
                "model_type": self.model_type,
                "features": self.names,
                "feature_set": self.config.feature_set,
                "feature_version": FEATURE_SET_VERSIONS[self.config.feature_set],
                "sequence_length": self.config.sequence_length,
                "horizon": self.config.horizon,
                "label": LABEL_KINDS[label_kind],
                "label_kind": label_kind,
                "label_scale": self.label_scale,
                "threshold": self.threshold,
                "seed": self.config.seed,
                "config": asdict(self.config),
                "history": asdict(self.history),
                "metrics": self.metrics,
                "versions": library_versions(),
                "created_at": datetime.now(CHINA_TZ).isoformat(timespec="seconds"),
            }
            (temp / METADATA_FILE).write_text(
                json.dumps(json_safe(metadata), indent=2, ensure_ascii=False), encoding="utf-8"
            )
            if attach is not None:
                attach(temp)
            manifest = manifest_of(temp)
            (temp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        self.metadata = metadata
        self.seal = str(manifest["seal"])
        self.path = target
        return target

    def load_model(
        self,
        path: str | Path,
        vt_symbol: str | None = None,
        interval: str | None = None,
        expect: ModelConfig | None = None,
    ) -> PricePredictionModel:
        """Load a sealed bundle, refusing one that is old, incomplete, edited or made for other features, shapes,
        label kinds or versions; and, when given, for another product than `vt_symbol`'s or another bar `interval`
        (vnpy's value: 1m, 1h, d) than the bars it will be fed; `expect` asks for a window and horizon too."""
        folder = Path(path)
        manifest = verify_manifest(folder)
        metadata = _metadata_json(folder)
        check_bundle(folder, metadata, manifest["files"], vt_symbol=vt_symbol, interval=interval, expect=expect)
        self.config = ModelConfig.from_dict(metadata["config"])
        self.model_type = self.config.model_type
        self.names = list(metadata["features"])
        self.label_scale = float(metadata["label_scale"])
        self.threshold = float(metadata["threshold"])
        self.metadata = metadata
        self.metrics = metadata.get("metrics", {})
        try:
            self.scaler = Scaler.from_dict(json.loads((folder / SCALER_FILE).read_text(encoding="utf-8")))
            self.onnx_bytes = (folder / FAST_FILE).read_bytes()
            self.fast = FastPredictor(self.onnx_bytes, self.model_type)
        except Exception as exc:  # a damaged file must become a clear ModelError, whatever the parser raised
            raise ModelError(f"模型包 {folder} 无法读取（{exc}）；{RETRAIN}") from None
        if list(self.scaler.names) != self.names:
            raise ModelError(f"模型包 {folder} 的标准化参数与特征不一致；{RETRAIN}")
        window, width = self.config.sequence_length, len(self.names)
        takes = list(self.fast.single.get_inputs()[0].shape[1:])
        if takes != ([window, width] if self.model_type == "lstm" else [width]):
            raise ModelError(
                f"模型包 {folder} 的模型输入为 {takes}，与元数据的窗口 {window} × {width} 个特征不符；{RETRAIN}"
            )
        self.network = None  # the Keras / scikit-learn model loads on demand: inference does not need it
        self.seal = str(manifest["seal"])
        self.path = folder
        return self

    def _native(self) -> Any:
        if self.network is None:
            if self.path is None:
                raise ModelError("模型尚未训练或加载 / the model is not trained or loaded")
            file = self.path / MODEL_FILES[self.model_type]
            try:
                if self.model_type == "lstm":
                    import keras

                    self.network = keras.models.load_model(file)
                else:
                    import joblib

                    self.network = joblib.load(file)
            except Exception as exc:
                raise ModelError(f"无法读取 {file}（{exc}）；请重新训练 / unreadable model file, retrain") from None
        return self.network


def manifest_of(folder: Path) -> dict[str, Any]:
    """The manifest that seals a bundle folder: the sha256 of every other file in it, and a seal over that list.

    `save_model` writes it last, as `manifest.json`: {"format", "files": {name: sha256}, "seal"}, where "files"
    covers every other file of the bundle (metadata.json, which holds the threshold, included) and "seal" is the
    sha256 of format and files as canonical JSON: the manifest's own digest, kept inside it. Every load checks the
    seal first (an edited manifest is refused), then each listed file (an edited, missing or replaced file is
    refused), and reads only listed files; a folder without a manifest (written before sealing) is refused with the
    advice to retrain. The seal is the bundle's identity (the prediction cache's key, the `model` command). It catches
    corruption and hand edits; it is not a signature: whoever recomputes every digest can forge it.
    """
    files = {
        item.name: file_sha256(item)
        for item in sorted(folder.iterdir())
        if item.is_file() and item.name != MANIFEST_FILE
    }
    return {"format": BUNDLE_FORMAT, "files": files, "seal": _seal(BUNDLE_FORMAT, files)}


def _seal(format_: object, files: object) -> str:
    text = json.dumps({"format": format_, "files": files}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def verify_manifest(folder: Path) -> dict[str, Any]:
    """The bundle's manifest once its seal and every listed file check out, or a ModelError (what, where, the fix)."""
    if not folder.is_dir():
        raise ModelError(f"模型包 {folder} 不存在；{RETRAIN}")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(
            f"模型包 {folder} 没有 {MANIFEST_FILE}：它写于封存格式之前（或不是模型包），文件无法校验；{RETRAIN}"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (
        not isinstance(manifest, dict)
        or not isinstance(files, dict)
        or not all(isinstance(name, str) and isinstance(digest, str) for name, digest in files.items())
        or manifest.get("seal") != _seal(manifest.get("format"), files)
    ):
        raise ModelError(f"模型包 {folder} 的 {MANIFEST_FILE} 被改动或已损坏（封印不符）；{RETRAIN}")
    if manifest["format"] != BUNDLE_FORMAT:
        raise ModelError(f"模型包 {folder} 格式版本 {manifest['format']}，当前代码需要 {BUNDLE_FORMAT}；{RETRAIN}")
    for name in (METADATA_FILE, SCALER_FILE, FAST_FILE, METRICS_FILE):
        if name not in files:
            raise ModelError(f"模型包 {folder} 的 {MANIFEST_FILE} 未记录 {name}；{RETRAIN}")
    for name, digest in files.items():
        file = folder / name
        if Path(name).name != name or name in (".", ".."):
            raise ModelError(f"模型包 {folder} 的 {MANIFEST_FILE} 列出了文件夹外的路径 {name!r}；{RETRAIN}")
        if not file.is_file():
            raise ModelError(f"模型包 {folder} 缺少文件 {name}；{RETRAIN}")
        if file_sha256(file) != digest:
            raise ModelError(
                f"模型包 {folder} 的 {name} 与 {MANIFEST_FILE} 记录的校验和不符（损坏或被改动）；{RETRAIN}"
            )
    return dict(manifest)


def _metadata_json(folder: Path) -> dict[str, Any]:
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"模型包 {folder} 的 {METADATA_FILE} 已损坏（{exc}）；{RETRAIN}") from None
    if not isinstance(metadata, dict):
        raise ModelError(f"模型包 {folder} 的 {METADATA_FILE} 格式错误；{RETRAIN}")
    return metadata


def read_metadata(folder: Path) -> dict[str, Any]:
    """metadata.json of a sealed bundle (`verify_manifest` first), or a ModelError saying what is wrong and the fix."""
    verify_manifest(folder)
    return _metadata_json(folder)


def find_bundle(text: str, models_dir: Path) -> Path:
    """A bundle given as a folder path, else as a name under `models_dir`."""
    path = Path(text).expanduser()
    return path if path.is_dir() or os.sep in text else models_dir / text


def check_bundle(
    folder: Path,
    metadata: dict[str, Any],
    files: dict[str, str],
    vt_symbol: str | None = None,
    interval: str | None = None,
    expect: ModelConfig | None = None,
) -> None:
    """Refuse a bundle whose metadata, files, features, window, horizon, label kind or library versions do not match
    the running code, or (when given) whose product or bar interval differ from the bars it will be fed."""
    required = (
        "format",
        "model_type",
        "features",
        "feature_version",
        "sequence_length",
        "horizon",
        "label_kind",
        "label_scale",
        "threshold",
        "config",
        "versions",
        "vt_symbol",
        "interval",
        "ranges",
    )
    missing = [key for key in required if key not in metadata]
    if missing:
        raise ModelError(f"模型包 {folder} 的元数据缺少 {missing}；{RETRAIN}")
    if metadata["format"] != BUNDLE_FORMAT:
        raise ModelError(f"模型包 {folder} 格式版本 {metadata['format']}，当前代码需要 {BUNDLE_FORMAT}；{RETRAIN}")
    if metadata["model_type"] not in MODEL_FILES:
        raise ModelError(f"模型包 {folder} 的模型类型 {metadata['model_type']!r} 未知；{RETRAIN}")
    if MODEL_FILES[metadata["model_type"]] not in files:
        raise ModelError(f"模型包 {folder} 的 {MANIFEST_FILE} 未记录 {MODEL_FILES[metadata['model_type']]}；{RETRAIN}")
    config = metadata["config"] if isinstance(metadata["config"], dict) else {}
    feature_set = str(config.get("feature_set", DEFAULT_FEATURE_SET))  # bundles from before feature sets: base
    if feature_set not in FEATURE_SETS:
        raise ModelError(
            f"模型包 {folder} 的特征集 {feature_set!r} 当前代码不认识（可用：{', '.join(FEATURE_SETS)}）；{RETRAIN}"
        )
    unknown = [name for name in metadata["features"] if name not in FEATURE_SETS[feature_set]]
    if unknown or metadata["feature_version"] != FEATURE_SET_VERSIONS[feature_set]:
        raise ModelError(
            f"模型包 {folder} 用另一套特征训练（{feature_set} 特征版本 {metadata['feature_version']}，当前 "
            f"{FEATURE_SET_VERSIONS[feature_set]}" + (f"，未知特征 {unknown}" if unknown else "") + f"）；{RETRAIN}"
        )
    if metadata["label_kind"] not in LABEL_KINDS:
        raise ModelError(
            f"模型包 {folder} 的标签类型 {metadata['label_kind']!r} 当前代码不认识（可用：{', '.join(LABEL_KINDS)}）；"
            f"{RETRAIN}"
        )
    for key in ("sequence_length", "horizon"):
        if metadata[key] != config.get(key):
            raise ModelError(f"模型包 {folder} 的 {key}={metadata[key]} 与其配置 {config.get(key)} 矛盾；{RETRAIN}")
    if expect is not None:
        for key, wanted in (("sequence_length", expect.sequence_length), ("horizon", expect.horizon)):
            if metadata[key] != wanted:
                raise ModelError(f"模型包 {folder} 的 {key}={metadata[key]}，调用方需要 {wanted}；{RETRAIN}")
        if feature_set != expect.feature_set:
            raise ModelError(f"模型包 {folder} 的特征集为 {feature_set}，调用方需要 {expect.feature_set}；{RETRAIN}")
    bundle_ranges(metadata, folder)
    trained_on = str(metadata["vt_symbol"])
    if vt_symbol is not None and product_of(trained_on) != product_of(vt_symbol):
        raise ModelError(
            f"模型包 {folder} 是为 {trained_on} 训练的，不能交易 {vt_symbol}；请用该品种的数据训练 / "
            "the bundle was trained on another product"
        )
    if interval is not None and str(metadata["interval"]) != interval:
        raise ModelError(
            f"模型包 {folder} 用 {metadata['interval']} K线训练，不能用于 {interval} K线；请改用 --interval "
            f"{metadata['interval']}，或用 {interval} 数据重新训练 / the bundle was trained on another bar interval"
        )
    saved, running = metadata["versions"], library_versions()
    if metadata["model_type"] == "lstm" and _major(saved.get("keras", "")) != _major(running["keras"]):
        raise ModelError(f"模型包 {folder} 由 Keras {saved.get('keras')} 保存，当前为 {running['keras']}；{RETRAIN}")
    if metadata["model_type"] == "random_forest" and _minor(saved.get("scikit-learn", "")) != _minor(
        running["scikit-learn"]
    ):
        raise ModelError(
            f"模型包 {folder} 由 scikit-learn {saved.get('scikit-learn')} 保存，当前为 "
            f"{running['scikit-learn']}；{RETRAIN}"
        )


# --- out of sample ---------------------------------------------------------------------------------------


def _china(value: datetime | pd.Timestamp | str) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize(CHINA_TZ) if stamp.tzinfo is None else stamp.tz_convert(CHINA_TZ)


def bundle_ranges(metadata: dict[str, Any], folder: Path | None = None) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    """The bundle's parts as (first, last) bar start in China time; train and valid must be there."""
    ranges = metadata.get("ranges")
    parsed: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = {}
    try:
        for part, (first, last) in dict(ranges or {}).items():
            parsed[str(part)] = (_china(first), _china(last))
    except (TypeError, ValueError):
        parsed = {}
    if "train" not in parsed or "valid" not in parsed or any(pd.isna(t) for pair in parsed.values() for t in pair):
        where = folder or metadata.get("name", "")
        raise ModelError(f"模型包 {where} 没有可读的 train / valid 区间（{ranges!r}）；{RETRAIN}")
    return parsed


def check_out_of_sample(metadata: dict[str, Any], start: datetime, end: datetime) -> list[str]:
    """The bundle's train and valid parts that [start, end] overlaps, e.g. `train 2015-09-01 09:00 ~ 2015-11-20 14:59`;
    empty when the range is out of sample (the test part is, and so is anything before train or after valid)."""
    begin, finish = _china(start), _china(end)
    ranges = bundle_ranges(metadata)
    return [
        f"{part} {first:%Y-%m-%d %H:%M} ~ {last:%Y-%m-%d %H:%M}"
        for part, (first, last) in ((part, ranges[part]) for part in ("train", "valid"))
        if begin <= last and finish >= first
    ]


def refuse_in_sample(metadata: dict[str, Any], start: datetime, end: datetime, allow_in_sample: bool) -> list[str]:
    """`check_out_of_sample`'s overlaps; unless `allow_in_sample`, a ModelError naming the bundle's ranges, the asked
    range and the fix. With it, the caller must mark every output IN-SAMPLE."""
    overlaps = check_out_of_sample(metadata, start, end)
    if overlaps and not allow_in_sample:
        ranges = bundle_ranges(metadata)
        parts = "；".join(
            f"{part} {first:%Y-%m-%d %H:%M} ~ {last:%Y-%m-%d %H:%M}" for part, (first, last) in ranges.items()
        )
        valid_end, name = ranges["valid"][1], metadata.get("name", "")
        raise ModelError(
            f"区间 {_china(start):%Y-%m-%d} ~ {_china(end):%Y-%m-%d} 与模型包 {name} 的训练/验证部分"
            f"重叠（{'；'.join(overlaps)}），是样本内测试。模型包的区间：{parts}（test 部分是样本外，可用）。"
            f"请选择 {valid_end:%Y-%m-%d %H:%M} 之后（或 train 开始之前）的日期；若确要样本内运行，加 --allow-in-sample"
            "（库调用 allow_in_sample=True），所有输出都会标明 IN-SAMPLE / the range overlaps the bundle's training "
            "or validation part: choose dates after the validation end, or pass --allow-in-sample"
        )
    return overlaps


# --- training report ---------------------------------------------------------------------------------


def _report_cell(value: Any) -> str:
    """A metric as a short table cell; NaN, None and missing as n/a."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return "n/a" if value is None else str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.4g}" if math.isfinite(float(value)) else "n/a"


def write_training_report(
    path: Path, history: TrainingHistory, prediction: np.ndarray, label: np.ndarray, metrics: dict[str, Any], title: str
) -> Path:
    """A headless training report: loss curves, predicted vs realised on the test part, the metrics table."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    prediction = np.asarray(prediction, dtype="float64").ravel()
    label = np.asarray(label, dtype="float64").ravel()
    finite = np.isfinite(prediction) & np.isfinite(label)
    prediction, label = prediction[finite], label[finite]
    figure = Figure(figsize=(12, 10), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=14)
    (loss_ax, scatter_ax), (pnl_ax, table_ax) = figure.subplots(2, 2)

    loss_ax.set_title("Loss per epoch")
    if history.loss or history.val_loss:
        for name, values in (("loss", history.loss), ("val_loss", history.val_loss)):
            if values:
                loss_ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
        if history.best_epoch > 0:
            loss_ax.axvline(history.best_epoch, color="grey", linestyle="--", label=f"best epoch {history.best_epoch}")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("loss")
        loss_ax.legend()
        loss_ax.grid(alpha=0.3)
    else:
        loss_ax.text(
            0.5, 0.5, "random forest: no epochs", ha="center", va="center", fontsize=13, transform=loss_ax.transAxes
        )
        loss_ax.set_axis_off()

    scatter_ax.set_title(f"Predicted vs realised, test part ({len(label):,} samples)")
    shown = np.linspace(0, len(label) - 1, min(len(label), 20_000)).astype(int) if len(label) else np.arange(0)
    x_bp, y_bp = prediction[shown] * 1e4, label[shown] * 1e4
    scatter_ax.scatter(x_bp, y_bp, s=4, alpha=0.3, color="tab:blue", linewidths=0)
    if len(x_bp) >= 2:
        line = np.array([x_bp.min(), x_bp.max()])  # over the predictions only, so the cloud fills the panel
        scatter_ax.plot(line, line, color="grey", linestyle="--", label="y = x")
        if np.std(x_bp) > 0:
            slope, intercept = np.polyfit(x_bp, y_bp, 1)
            scatter_ax.plot(
                line,
                slope * line + intercept,
                color="tab:red",
                label=f"least squares: y = {slope:.3g} x {'-' if intercept < 0 else '+'} {abs(intercept):.3g} bp",
            )
        scatter_ax.legend(loc="upper left")
    scatter_ax.set_xlabel("predicted return (bp)")
    scatter_ax.set_ylabel("realised return (bp)")
    scatter_ax.grid(alpha=0.3)

    pnl_ax.set_title("Cumulative return over the test samples")
    samples = np.arange(1, len(label) + 1)
    pnl_ax.plot(samples, np.cumsum(np.sign(prediction) * label) * 100, label="direction P&L: sign(prediction) x label")
    pnl_ax.plot(samples, np.cumsum(label) * 100, label="buy and hold: label")
    pnl_ax.axhline(0, color="grey", linewidth=0.8)
    pnl_ax.set_xlabel("test sample")
    pnl_ax.set_ylabel("cumulative return (%), summed")
    pnl_ax.legend(loc="upper left")
    pnl_ax.grid(alpha=0.3)

    columns = [name for name, value in metrics.items() if isinstance(value, dict)]
    rows: list[str] = []
    for name in columns:
        rows += [key for key in metrics[name] if key not in rows]
    table_ax.set_axis_off()
    table_ax.set_title(f"Metrics ({_report_cell(metrics.get('samples'))} test samples)")
    if rows and columns:
        cells = [[_report_cell(metrics[column].get(row)) for column in columns] for row in rows]
        table = table_ax.table(cellText=cells, rowLabels=rows, colLabels=columns, loc="center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(11)
        table.scale(1.0, 1.8)

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return path


# --- training runs: one bundle, walk-forward ---------------------------------------------------------


def part_predictions(model: PricePredictionModel, data: TrainingData, part: str) -> np.ndarray:
    """The model's prediction at every bar of a part (NaN where no complete window ends), labelled or not: what the
    strategy would have seen bar by bar."""
    start, stop = data.split.parts()[part]
    windows = make_windows(data.scaled, None, data.sequence_length, data.segment, (start, stop))
    predictions = np.full(stop - start, np.nan)
    if len(windows):
        predictions[windows.end_rows() - start] = model.predict(windows)
    return predictions


def decide_threshold(model: PricePredictionModel, data: TrainingData, spec: ContractSpec) -> ThresholdChoice:
    """The threshold chosen by simulating the strategy's own rules, with the contract's costs, on the validation part
    (flat before every roll, as the backtest is)."""
    start, stop = data.split.valid
    prices = data.prices.iloc[start:stop]
    bars = SimulationBars.from_frame(prices, causal_trading_days(pd.DatetimeIndex(prices.index)))
    flat = roll_exit_flags(data.segment)[start:stop]
    return choose_threshold(bars, part_predictions(model, data, "valid"), spec, flat)


def drift_report(model: PricePredictionModel, data: TrainingData, threshold: float) -> dict[str, dict[str, float]]:
    """Per part: the mean raw label, the mean prediction and the share of bars that would signal long and short."""
    report = {}
    for part in ("train", "valid", "test"):
        predictions = part_predictions(model, data, part)
        finite = predictions[np.isfinite(predictions)]
        count = max(len(finite), 1)
        report[part] = {
            "mean_label": data.label_means.get(part, math.nan),
            "mean_prediction": float(finite.mean()) if len(finite) else math.nan,
            "long_share": float((finite > threshold).sum() / count),
            "short_share": float((finite < -threshold).sum() / count),
        }
    return report


IMPORTANCE_WINDOWS: int = 5000  # validation windows sampled for permutation importance: seconds, not minutes


def _rank_ic(values: np.ndarray, labels: np.ndarray) -> float:
    """Spearman correlation over the rows where both are finite (NaN when either is constant or too short)."""
    both = np.isfinite(values) & np.isfinite(labels)
    ranks = pd.Series(values[both]).rank().to_numpy(), pd.Series(labels[both]).rank().to_numpy()
    return _correlation(*ranks)


def feature_importance(
    model: PricePredictionModel, data: TrainingData, seed: int | None = None, max_windows: int = IMPORTANCE_WINDOWS
) -> dict[str, Any]:
    """What the model uses, per feature in the bundle's order: permutation importance on the validation part (the
    drop in IC and the rise in MSE when one feature's whole series is shuffled across up to `max_windows` windows
    sampled with `seed`, one repeat), the forest's impurity importances, and each feature's Spearman IC with the
    label on the training part."""
    seed = model.config.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    valid = data.windows("valid")
    chosen = np.sort(rng.choice(len(valid), min(len(valid), max_windows), replace=False))
    labels = valid.labels[chosen]
    # The forest reads only each window's last row; the LSTM gets whole windows, so a shuffle moves a feature's
    # values at every time step together and keeps the rest of each window intact.
    if model.model_type == "random_forest":
        windows = np.ascontiguousarray(valid.view[valid.starts[chosen]][:, -1:, :])
    else:
        windows = valid.take(chosen)
    fast = model._require_fast()
    base = score(fast.predict(windows), labels)
    ic_drop, mse_rise = [], []
    for column in range(len(model.names)):
        shuffled = windows.copy()
        shuffled[:, :, column] = windows[rng.permutation(len(windows)), :, column]
        permuted = score(fast.predict(shuffled), labels)
        ic_drop.append(float(base["ic"] - permuted["ic"]))
        mse_rise.append(float(permuted["mse"] - base["mse"]))
    start, stop = data.split.train
    train_labels = data.labels.to_numpy(dtype="float64")[start:stop]
    features = data.features.to_numpy(dtype="float64")[start:stop]
    result: dict[str, Any] = {
        "features": list(model.names),
        "validation_windows": len(chosen),
        "seed": seed,
        "validation_ic": float(base["ic"]),
        "validation_mse": float(base["mse"]),
        "permutation_ic_drop": ic_drop,
        "permutation_mse_rise": mse_rise,
        "forest": None,
        "train_rank_ic": [_rank_ic(features[:, k], train_labels) for k in range(len(model.names))],
    }
    if model.model_type == "random_forest" and model.network is not None:
        result["forest"] = [float(x) for x in model.network.feature_importances_]
    return result


def top_features(importance: dict[str, Any], count: int = 10) -> list[str]:
    """The names of the `count` features whose shuffling cost the most validation IC, largest first (a NaN, saved
    as null, last)."""
    drops = importance["permutation_ic_drop"]
    order = sorted(range(len(drops)), key=lambda k: -drops[k] if _finite(drops[k]) else math.inf)
    return [importance["features"][k] for k in order[:count]]


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@dataclass
class FittedBundle:
    """A trained model with its decision and the facts its bundle records, not yet saved."""

    model: PricePredictionModel
    data: TrainingData
    decision: ThresholdChoice
    facts: dict[str, Any]


def fit_bundle(
    bars: pd.DataFrame,
    vt_symbol: str,
    interval: str,
    config: ModelConfig,
    progress: Progress | None = None,
    label_kind: str = DEFAULT_LABEL_KIND,
    spec: ContractSpec | None = None,
) -> FittedBundle:
    """Prepare the bars, train, choose the threshold by simulating the strategy on the validation part with the
    contract's costs (`spec`, else the project's contract table) and evaluate: everything but the saving."""
    say = progress or (lambda message: None)
    spec = spec or contract_spec(vt_symbol, load_contracts())
    data = prepare_training_data(
        bars,
        vt_symbol,
        config.horizon,
        config.sequence_length,
        config.features_count,
        config.fractions,
        label_kind,
        config.feature_set,
        spec,
    )
    for line in data.report.lines()[:1]:
        say(line)
    ranges = data.split.ranges(data.index)
    say("  ".join(f"{part} {a[:16]} ~ {b[:16]}" for part, (a, b) in ranges.items()))
    model = PricePredictionModel(config.model_type, config)
    model.train(data, progress)
    decision = decide_threshold(model, data, spec)
    model.threshold = decision.threshold
    say(
        f"验证期模拟 / validation simulation (h={config.horizon}): 阈值 / threshold {decision.threshold:.6f}, "
        f"净盈亏 / net P&L {decision.net_pnl:,.2f}, {decision.trades} 笔 / trades, edge: {decision.edge}"
    )
    model.evaluate(data, "valid")
    model.evaluate(data, "test")
    importance = feature_importance(model, data)
    say(f"最重要的特征 / top features (validation permutation): {', '.join(top_features(importance, 5))}")
    facts = {
        "vt_symbol": vt_symbol,
        "interval": interval,
        "ranges": ranges,
        "rows": len(data.index),
        "data_fingerprint": data_fingerprint(data),
        "label_kind": data.label_kind,
        "label_mean": data.label_mean,
        "feature_set": config.feature_set,
        "decision": decision.as_dict(),
        "drift": drift_report(model, data, decision.threshold),
        "importance": importance,
        "costs": {
            "fees": spec.fees.text,
            "slippage_ticks": spec.slippage_ticks,
            "pricetick": spec.pricetick,
            "size": spec.size,
        },
    }
    return FittedBundle(model, data, decision, facts)


def save_fitted(fitted: FittedBundle, path: Path, extra: dict[str, Any] | None = None) -> PricePredictionModel:
    """Save a fitted model as a sealed bundle with its report.png."""
    model, data = fitted.model, fitted.data
    test = data.windows("test")
    title = f"{fitted.facts['vt_symbol']} {model.model_type} {path.name}"

    def attach_report(folder: Path) -> None:
        write_training_report(
            folder / "report.png", model.history, model.predict(test), test.labels, model.metrics["test"], title
        )

    model.save_model(path, extra={**(extra or {}), **fitted.facts}, attach=attach_report)
    return model


def train_bundle(
    bars: pd.DataFrame,
    vt_symbol: str,
    interval: str,
    config: ModelConfig,
    path: Path,
    extra: dict[str, Any] | None = None,
    progress: Progress | None = None,
    label_kind: str = DEFAULT_LABEL_KIND,
    spec: ContractSpec | None = None,
) -> PricePredictionModel:
    """Train, decide and evaluate (`fit_bundle`), then save the sealed bundle with its report.png."""
    return save_fitted(fit_bundle(bars, vt_symbol, interval, config, progress, label_kind, spec), path, extra)


def decision_rank(decision: ThresholdChoice) -> tuple[bool, float]:
    """How decisions compare: an edge before none, then the larger validation net P&L."""
    return decision.edge != EDGE_NONE, decision.net_pnl


def train_best_horizon(
    bars: pd.DataFrame,
    vt_symbol: str,
    interval: str,
    config: ModelConfig,
    path: Path,
    horizons: Sequence[int],
    extra: dict[str, Any] | None = None,
    progress: Progress | None = None,
    label_kind: str = DEFAULT_LABEL_KIND,
    spec: ContractSpec | None = None,
) -> tuple[PricePredictionModel, dict[int, ThresholdChoice]]:
    """One model per horizon, each decided on its validation part; the one whose simulated validation net P&L is
    best (an edge before none) is saved, with every horizon's figures in its metadata (`horizon_search`)."""
    if not horizons or min(horizons) < 1:
        raise ModelError(f"预测周期必须是正整数，收到 {list(horizons)} / horizons must be positive")
    fitted = {
        h: fit_bundle(bars, vt_symbol, interval, replace(config, horizon=h), progress, label_kind, spec)
        for h in dict.fromkeys(horizons)
    }
    decisions = {h: one.decision for h, one in fitted.items()}
    best = max(decisions, key=lambda h: decision_rank(decisions[h]))
    search = [
        {"horizon": h, **{k: d.as_dict()[k] for k in ("edge", "net_pnl", "trades", "threshold")}}
        for h, d in decisions.items()
    ]
    model = save_fitted(fitted[best], path, {**(extra or {}), "horizon_search": search})
    return model, decisions


def has_no_edge(metadata: dict[str, Any]) -> bool:
    """Whether the bundle's validation simulation found no net edge after costs (the strategy then does not open)."""
    return str((metadata.get("decision") or {}).get("edge", "")) == EDGE_NONE


@dataclass(frozen=True)
class WalkForwardFold:
    """One fold of a walk-forward training: the span of its bars, its bundle and the model trained on them."""

    fold: int
    first_bar: pd.Timestamp
    last_bar: pd.Timestamp
    path: Path
    model: PricePredictionModel


def train_walk_forward(
    bars: pd.DataFrame,
    vt_symbol: str,
    interval: str,
    config: ModelConfig,
    models_dir: Path,
    name: str,
    folds: int,
    progress: Progress | None = None,
    label_kind: str = DEFAULT_LABEL_KIND,
    spec: ContractSpec | None = None,
    extra: dict[str, Any] | None = None,
) -> list[WalkForwardFold]:
    """One bundle per rolling fold (data_processor.fold_slices), each tested on the span after the previous one's
    test part; named `NAME-foldK`, the last (the current bundle) plain `NAME`; `extra` goes into every fold's
    metadata."""
    say = progress or (lambda message: None)
    slices = fold_slices(len(bars), folds, config.fractions[2])
    results = []
    for fold, (start, stop) in enumerate(slices, start=1):
        path = models_dir / (name if fold == len(slices) else f"{name}-fold{fold}")
        say(f"第 {fold}/{len(slices)} 折 / fold {fold}: {bars.index[start]} ~ {bars.index[stop - 1]}")
        facts = {**(extra or {}), "walk_forward": {"fold": fold, "folds": len(slices), "current": fold == len(slices)}}
        model = train_bundle(
            bars.iloc[start:stop], vt_symbol, interval, config, path, facts, progress, label_kind, spec
        )
        results.append(WalkForwardFold(fold, bars.index[start], bars.index[stop - 1], path, model))
    return results
