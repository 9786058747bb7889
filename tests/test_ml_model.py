"""Models trained on real bars: bundles that load back identically, refusal rules, determinism, evaluation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import ai_trading_system
import bar_features as bf
import data_processor as dp
import ml_model
from config import CHINA_TZ, Home, ModelError, contract_spec, file_sha256, load_contracts, resolve_home
from tests.conftest import edit_metadata
from trade_simulator import MIN_DECISION_TRADES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VT = "rb0000.SHFE"
SMALL_FOREST = ml_model.ModelConfig(model_type="random_forest", trees=20, max_depth=6)
SMALL_LSTM = ml_model.ModelConfig(epochs=2, lstm_units=(8, 8), dense_units=4, train_stride=8, patience=1)


@pytest.fixture(scope="module")
def data(sample_frame: pd.DataFrame) -> dp.TrainingData:
    """2016 Q1 of the real sample, prepared with the default shape (60 × 30, horizon 5)."""
    bars = sample_frame.loc[pd.Timestamp("2016-01-01", tz=CHINA_TZ) : pd.Timestamp("2016-03-31 23:59", tz=CHINA_TZ)]
    return dp.prepare_training_data(bars.copy(), VT, horizon=5, sequence_length=60, features_count=30)


def facts(data: dp.TrainingData) -> dict[str, Any]:
    """What a bundle must record about its training bars (train_bundle passes the same)."""
    return {"vt_symbol": VT, "interval": "1m", "ranges": data.split.ranges(data.index), "label_kind": data.label_kind}


def trained(kind: str, data: dp.TrainingData) -> ml_model.PricePredictionModel:
    model = ml_model.PricePredictionModel(kind, SMALL_FOREST if kind == "random_forest" else SMALL_LSTM)
    model.train(data)
    model.evaluate(data, "test")
    return model


@pytest.fixture(scope="module")
def forest(data: dp.TrainingData) -> ml_model.PricePredictionModel:
    return trained("random_forest", data)


@pytest.fixture(scope="module")
def lstm(data: dp.TrainingData) -> ml_model.PricePredictionModel:
    return trained("lstm", data)


@pytest.fixture(scope="module")
def forest_bundle(
    forest: ml_model.PricePredictionModel, data: dp.TrainingData, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return forest.save_model(tmp_path_factory.mktemp("bundles") / "rf", extra=facts(data))


def copy_bundle(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / bundle.name
    shutil.copytree(bundle, target)
    return target


# --- training, the fast path, bundles -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random_forest", pytest.param("lstm", marks=pytest.mark.slow)])
def test_a_saved_bundle_loads_back_and_predicts_identically(
    kind: str, request: pytest.FixtureRequest, data: dp.TrainingData, tmp_path: Path
) -> None:
    model: ml_model.PricePredictionModel = request.getfixturevalue("forest" if kind == "random_forest" else "lstm")
    test = data.windows("test")
    before = model.predict(test)
    bundle = model.save_model(tmp_path / kind, extra=facts(data))
    loaded = ml_model.PricePredictionModel().load_model(bundle)
    assert loaded.model_type == kind and loaded.names == data.names
    np.testing.assert_array_equal(loaded.predict(test), before)
    window = test.take(np.arange(1))[0]
    assert loaded.predict_one(window) == pytest.approx(before[0], abs=1e-7)
    assert sorted(p.name for p in tmp_path.iterdir()) == [kind]  # no temporary folder left behind
    files = {p.name for p in bundle.iterdir()}
    assert files == {
        ml_model.MODEL_FILES[kind],
        "fast.onnx",
        "scaler.json",
        "metadata.json",
        "metrics.json",
        "manifest.json",
    }
    assert loaded.seal == model.seal and len(loaded.seal) == 64


@pytest.mark.parametrize("kind", ["random_forest", pytest.param("lstm", marks=pytest.mark.slow)])
def test_the_fast_path_equals_keras_and_scikit_learn(
    kind: str, request: pytest.FixtureRequest, data: dp.TrainingData
) -> None:
    model: ml_model.PricePredictionModel = request.getfixturevalue("forest" if kind == "random_forest" else "lstm")
    sample = data.windows("test").take(np.arange(500))
    native = model.predict_native(sample)
    np.testing.assert_allclose(model.predict(sample), native, rtol=0, atol=1e-5)
    singles = np.array([model.predict_one(w) for w in sample[:50]])
    np.testing.assert_allclose(singles, native[:50], rtol=0, atol=1e-5)
    assert model.metadata["fast_path"]["max_abs_difference"] <= 1e-5


@pytest.mark.parametrize("kind", ["random_forest", pytest.param("lstm", marks=pytest.mark.slow)])
def test_training_twice_gives_the_same_predictions(
    kind: str, request: pytest.FixtureRequest, data: dp.TrainingData
) -> None:
    first: ml_model.PricePredictionModel = request.getfixturevalue("forest" if kind == "random_forest" else "lstm")
    second = trained(kind, data)
    test = data.windows("test")
    np.testing.assert_array_equal(second.predict(test), first.predict(test))
    assert second.threshold == first.threshold


def test_metadata_records_what_the_model_was_trained_on(forest_bundle: Path, data: dp.TrainingData) -> None:
    metadata = json.loads((forest_bundle / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["features"] == data.names and metadata["feature_version"] == bf.FEATURE_VERSION
    assert (metadata["sequence_length"], metadata["horizon"], metadata["seed"]) == (60, 5, 42)
    assert metadata["label"] == dp.LABEL_KINDS["executable"] and metadata["label"].startswith("open[t+1+h]")
    assert metadata["versions"]["scikit-learn"] and metadata["versions"]["onnxruntime"]
    assert metadata["created_at"].endswith("+08:00")
    assert (metadata["vt_symbol"], metadata["interval"], metadata["label_kind"]) == (VT, "1m", "executable")
    assert metadata["ranges"]["valid"] == list(data.split.ranges(data.index)["valid"])
    manifest = json.loads((forest_bundle / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["files"]) == {"model.joblib", "fast.onnx", "scaler.json", "metrics.json", "metadata.json"}
    assert manifest["files"]["metadata.json"] == file_sha256(forest_bundle / "metadata.json")
    scaler = json.loads((forest_bundle / "scaler.json").read_text(encoding="utf-8"))
    start, stop = data.split.train
    train = data.features.iloc[start:stop].dropna()
    np.testing.assert_allclose(scaler["mean"], train.mean().to_numpy(), rtol=1e-12)


def test_evaluation_puts_the_model_beside_the_naive_baselines(
    forest: ml_model.PricePredictionModel, data: dp.TrainingData
) -> None:
    metrics = forest.metrics["test"]
    labels = data.windows("test").labels
    assert metrics["samples"] == len(labels)
    assert metrics["zero"]["mse"] == pytest.approx(float(np.mean(labels**2)))
    assert math.isnan(metrics["zero"]["ic"]) and math.isnan(metrics["zero"]["directional_accuracy"])
    for column in ("model", "last_return_sign"):
        assert set(metrics[column]) == {"mse", "mae", "directional_accuracy", "ic", "rank_ic"}
        assert 0 <= metrics[column]["directional_accuracy"] <= 1 and -1 <= metrics[column]["ic"] <= 1


def test_score_computes_each_metric() -> None:
    label = np.array([0.01, -0.02, 0.03, -0.01])
    prediction = np.array([0.02, -0.01, -0.01, 0.0])
    result = ml_model.score(prediction, label)
    assert result["mse"] == pytest.approx(np.mean((prediction - label) ** 2))
    assert result["mae"] == pytest.approx(0.0175)
    assert result["directional_accuracy"] == pytest.approx(2 / 3)  # the zero prediction has no direction
    assert result["rank_ic"] == pytest.approx(0.5 / math.sqrt(22.5))  # ranks [4, 1.5, 1.5, 3] vs [3, 1, 4, 2]


# --- refusing bad bundles --------------------------------------------------------------------------------


def test_a_bundle_with_a_missing_file_is_refused(forest_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(forest_bundle, tmp_path)
    (bundle / "fast.onnx").unlink()
    with pytest.raises(ModelError, match="缺少文件 fast.onnx"):
        ml_model.PricePredictionModel().load_model(bundle)


def test_a_corrupt_file_is_refused(forest_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(forest_bundle, tmp_path)
    with (bundle / "scaler.json").open("a", encoding="utf-8") as handle:
        handle.write(" ")
    with pytest.raises(ModelError, match="校验和"):
        ml_model.PricePredictionModel().load_model(bundle)


def test_unreadable_metadata_is_refused(forest_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(forest_bundle, tmp_path)
    (bundle / "metadata.json").write_text("{not json", encoding="utf-8")
    (bundle / "manifest.json").write_text(json.dumps(ml_model.manifest_of(bundle)), encoding="utf-8")
    with pytest.raises(ModelError, match="已损坏"):
        ml_model.PricePredictionModel().load_model(bundle)
    with pytest.raises(ModelError, match="不存在"):
        ml_model.PricePredictionModel().load_model(tmp_path / "nothing")


def test_a_model_from_another_feature_set_is_refused(forest_bundle: Path, tmp_path: Path) -> None:
    unknown = copy_bundle(forest_bundle, tmp_path / "a")
    features = json.loads((unknown / "metadata.json").read_text(encoding="utf-8"))["features"]
    edit_metadata(unknown, features=["rsi_99", *features[1:]])
    with pytest.raises(ModelError, match="另一套特征"):
        ml_model.PricePredictionModel().load_model(unknown)
    older = copy_bundle(forest_bundle, tmp_path / "b")
    edit_metadata(older, feature_version=bf.FEATURE_VERSION - 1)
    with pytest.raises(ModelError, match="特征版本"):
        ml_model.PricePredictionModel().load_model(older)
    reordered = copy_bundle(forest_bundle, tmp_path / "c")
    edit_metadata(reordered, features=features[::-1])
    with pytest.raises(ModelError, match="标准化参数与特征不一致"):
        ml_model.PricePredictionModel().load_model(reordered)


def test_a_bundle_for_another_window_or_horizon_is_refused(forest_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(forest_bundle, tmp_path)
    expect = ml_model.ModelConfig(sequence_length=60, horizon=10)
    with pytest.raises(ModelError, match="horizon=5"):
        ml_model.PricePredictionModel().load_model(bundle, expect=expect)
    edit_metadata(bundle, versions={"scikit-learn": "0.24.2", "keras": "3.0"})
    with pytest.raises(ModelError, match="scikit-learn 0.24.2"):
        ml_model.PricePredictionModel().load_model(bundle)


def test_an_edited_threshold_in_metadata_is_refused(forest_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(forest_bundle, tmp_path)
    edit_metadata(bundle, reseal=False, threshold=1e-9)
    with pytest.raises(ModelError, match="metadata.json 与 manifest.json 记录的校验和不符") as refused:
        ml_model.PricePredictionModel().load_model(bundle)
    assert "train" in str(refused.value)  # how to fix it
    with pytest.raises(ModelError, match="校验和不符"):
        ml_model.read_metadata(bundle)


def test_an_edited_manifest_is_refused(forest_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(forest_bundle, tmp_path)
    edit_metadata(bundle, reseal=False, threshold=1e-9)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"]["metadata.json"] = file_sha256(bundle / "metadata.json")  # the digest, not the seal
    (bundle / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ModelError, match="manifest.json 被改动或已损坏"):
        ml_model.PricePredictionModel().load_model(bundle)
    (bundle / "manifest.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelError, match="封印不符"):
        ml_model.PricePredictionModel().load_model(bundle)


def test_a_file_the_manifest_lists_must_exist_and_the_required_ones_must_be_listed(
    forest_bundle: Path, tmp_path: Path
) -> None:
    bundle = copy_bundle(forest_bundle, tmp_path / "a")
    (bundle / "metadata.json").unlink()
    with pytest.raises(ModelError, match="缺少文件 metadata.json"):
        ml_model.PricePredictionModel().load_model(bundle)
    unlisted = copy_bundle(forest_bundle, tmp_path / "b")
    (unlisted / "scaler.json").rename(tmp_path / "scaler.json")
    (unlisted / "manifest.json").write_text(json.dumps(ml_model.manifest_of(unlisted)), encoding="utf-8")
    with pytest.raises(ModelError, match="未记录 scaler.json"):
        ml_model.PricePredictionModel().load_model(unlisted)


def test_a_bundle_written_before_sealing_is_refused_with_the_advice_to_retrain(
    forest_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = resolve_home(tmp_path / "home")
    old = copy_bundle(forest_bundle, home.models_dir)
    (old / "manifest.json").unlink()
    edit_metadata(old, reseal=False, format=1, files={"fast.onnx": file_sha256(old / "fast.onnx")})
    with pytest.raises(ModelError, match="没有 manifest.json") as refused:
        ml_model.PricePredictionModel().load_model(old)
    assert "重新训练" in str(refused.value) and "train" in str(refused.value)
    assert ai_trading_system.main(["--home", str(home.root), "model", "--model", "rf"]) == 2
    err = capsys.readouterr().err
    assert "没有 manifest.json" in err and "demo" in err and "Traceback" not in err


def test_extra_files_written_before_the_seal_are_sealed(
    forest: ml_model.PricePredictionModel, data: dp.TrainingData, tmp_path: Path
) -> None:
    bundle = forest.save_model(
        tmp_path / "rf", extra=facts(data), attach=lambda folder: (folder / "report.png").write_bytes(b"png")
    )
    assert "report.png" in json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["files"]
    ml_model.PricePredictionModel().load_model(bundle)
    (bundle / "report.png").write_bytes(b"other")
    with pytest.raises(ModelError, match="report.png 与 manifest.json"):
        ml_model.PricePredictionModel().load_model(bundle)


def test_a_bundle_must_record_its_training_bars_and_a_known_label_kind(
    forest: ml_model.PricePredictionModel, data: dp.TrainingData, tmp_path: Path
) -> None:
    blank = ml_model.PricePredictionModel("random_forest", SMALL_FOREST)
    blank.network, blank.onnx_bytes, blank.scaler = forest.network, forest.onnx_bytes, forest.scaler
    with pytest.raises(ModelError, match="interval"):
        blank.save_model(tmp_path / "a", extra={"vt_symbol": VT, "ranges": facts(data)["ranges"]})
    with pytest.raises(ModelError, match="train / valid"):
        blank.save_model(tmp_path / "b", extra={**facts(data), "ranges": {"test": ("2016-01-04", "2016-01-05")}})
    with pytest.raises(ModelError, match="标签类型"):
        blank.save_model(tmp_path / "c", extra={**facts(data), "label_kind": "future"})
    assert not any(tmp_path.iterdir())
    bundle = blank.save_model(tmp_path / "d", extra={**facts(data), "label_kind": "executable"})
    assert ml_model.read_metadata(bundle)["label_kind"] == "executable"
    edit_metadata(bundle, label_kind="future")
    with pytest.raises(ModelError, match="标签类型 'future' 当前代码不认识"):
        ml_model.PricePredictionModel().load_model(bundle)


def test_a_bundle_is_refused_for_bars_of_another_interval_or_product(forest_bundle: Path) -> None:
    model = ml_model.PricePredictionModel().load_model(forest_bundle, vt_symbol="rb2605.SHFE", interval="1m")
    assert model.metadata["interval"] == "1m"
    with pytest.raises(ModelError, match="用 1m K线训练，不能用于 1h K线；请改用 --interval 1m"):
        ml_model.PricePredictionModel().load_model(forest_bundle, vt_symbol=VT, interval="1h")
    with pytest.raises(ModelError, match="是为 rb0000.SHFE 训练的，不能交易 cu2001.SHFE"):
        ml_model.PricePredictionModel().load_model(forest_bundle, vt_symbol="cu2001.SHFE", interval="1m")


def test_a_window_or_horizon_that_contradicts_the_bundle_itself_is_refused(forest_bundle: Path, tmp_path: Path) -> None:
    window = copy_bundle(forest_bundle, tmp_path / "a")
    edit_metadata(window, sequence_length=30)
    with pytest.raises(ModelError, match="sequence_length=30 与其配置 60 矛盾"):
        ml_model.PricePredictionModel().load_model(window)
    horizon = copy_bundle(forest_bundle, tmp_path / "b")
    edit_metadata(horizon, horizon=10)
    with pytest.raises(ModelError, match="horizon=10 与其配置 5 矛盾"):
        ml_model.PricePredictionModel().load_model(horizon)


# --- out of sample -----------------------------------------------------------------------------------------


RANGES = {
    "train": ("2015-09-01 09:00:00+08:00", "2015-11-20 14:59:00+08:00"),
    "valid": ("2015-11-23 09:05:00+08:00", "2015-12-10 14:59:00+08:00"),
    "test": ("2015-12-11 09:05:00+08:00", "2015-12-31 14:59:00+08:00"),
}


def day(text: str, end_of_day: bool = False) -> datetime:
    return datetime.fromisoformat(f"{text} {'23:59:59' if end_of_day else '00:00:00'}").replace(tzinfo=CHINA_TZ)


def test_check_out_of_sample_names_the_train_and_valid_parts_a_range_overlaps() -> None:
    metadata = {"name": "rf", "ranges": RANGES}
    overlaps = ml_model.check_out_of_sample
    assert overlaps(metadata, day("2015-11-01"), day("2015-11-30", True)) == [
        "train 2015-09-01 09:00 ~ 2015-11-20 14:59",
        "valid 2015-11-23 09:05 ~ 2015-12-10 14:59",
    ]
    assert overlaps(metadata, day("2015-12-10"), day("2015-12-31", True)) == [
        "valid 2015-11-23 09:05 ~ 2015-12-10 14:59"
    ]
    assert overlaps(metadata, day("2015-12-11"), day("2015-12-31", True)) == []  # the test part
    assert overlaps(metadata, day("2016-01-04"), day("2016-12-31", True)) == []
    assert overlaps(metadata, day("2015-01-05"), day("2015-08-31", True)) == []  # before the training bars
    assert overlaps(metadata, day("2015-01-05"), day("2016-12-31", True)) == [
        "train 2015-09-01 09:00 ~ 2015-11-20 14:59",
        "valid 2015-11-23 09:05 ~ 2015-12-10 14:59",
    ]


def test_an_in_sample_range_is_refused_naming_the_ranges_and_the_fix_unless_allowed() -> None:
    metadata = {"name": "rf", "ranges": RANGES}
    with pytest.raises(ModelError) as refused:
        ml_model.refuse_in_sample(metadata, day("2015-12-01"), day("2015-12-31", True), allow_in_sample=False)
    message = str(refused.value)
    assert "2015-12-01 ~ 2015-12-31" in message and "模型包 rf" in message
    assert "train 2015-09-01 09:00 ~ 2015-11-20 14:59" in message and "test 2015-12-11 09:05" in message
    assert "2015-12-10 14:59 之后" in message and "--allow-in-sample" in message
    allowed = ml_model.refuse_in_sample(metadata, day("2015-12-01"), day("2015-12-31", True), allow_in_sample=True)
    assert allowed == ["valid 2015-11-23 09:05 ~ 2015-12-10 14:59"]
    assert ml_model.refuse_in_sample(metadata, day("2016-01-01"), day("2016-01-31", True), False) == []


def test_a_failed_save_leaves_the_previous_bundle_intact(
    forest: ml_model.PricePredictionModel, forest_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = copy_bundle(forest_bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}

    def broken_dump(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("joblib.dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        forest.save_model(bundle)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [bundle.name]
    ml_model.PricePredictionModel().load_model(bundle)


def test_write_training_report_writes_a_png_atomically(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    prediction = rng.normal(0, 3e-4, 2_000)
    label = 0.5 * prediction + rng.normal(0, 2e-3, 2_000)
    metrics = {"samples": 2_000, **ml_model.evaluation_table(prediction, label, rng.normal(0, 2e-3, 2_000), 3e-4)}
    history = ml_model.TrainingHistory(loss=[1.0, 0.8, 0.7, 0.65], val_loss=[1.1, 0.9, 0.95, 1.0], best_epoch=2)
    folder = tmp_path / "reports"  # does not exist yet: the function creates it
    written = ml_model.write_training_report(folder / "report.png", history, prediction, label, metrics, "test")
    forest = ml_model.write_training_report(
        folder / "forest.png", ml_model.TrainingHistory(), prediction, label, metrics, "random forest"
    )
    assert written == folder / "report.png"
    for path in (written, forest):
        content = path.read_bytes()
        assert content.startswith(b"\x89PNG") and len(content) > 20_000
    assert sorted(p.name for p in folder.iterdir()) == ["forest.png", "report.png"]


# --- training runs as library calls (what the train command does) ----------------------------------------


def sample_span(frame: pd.DataFrame, first: str, last: str) -> pd.DataFrame:
    return frame.loc[pd.Timestamp(first, tz=CHINA_TZ) : pd.Timestamp(f"{last} 23:59", tz=CHINA_TZ)].copy()


def test_train_bundle_saves_the_bundle_and_report_and_only_reports_through_progress(
    sample_frame: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[str] = []
    bars = sample_span(sample_frame, "2016-02-01", "2016-03-31")
    model = ml_model.train_bundle(
        bars, VT, "1m", SMALL_FOREST, tmp_path / "rf", extra={"note": "x"}, progress=lines.append
    )
    assert capsys.readouterr().out == ""
    assert model.path == tmp_path / "rf"
    assert sorted(p.name for p in model.path.iterdir()) == [
        "fast.onnx",
        "manifest.json",
        "metadata.json",
        "metrics.json",
        "model.joblib",
        "report.png",
        "scaler.json",
    ]
    assert (model.path / "report.png").read_bytes().startswith(b"\x89PNG")
    metadata = json.loads((model.path / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["vt_symbol"] == VT and metadata["interval"] == "1m" and metadata["note"] == "x"
    assert metadata["ranges"]["train"][0].startswith("2016-02-01 09:00")
    assert metadata["ranges"]["test"][1].startswith("2016-03-31 ")
    assert metadata["ranges"]["train"][1] < metadata["ranges"]["valid"][0] < metadata["ranges"]["test"][0]
    assert metadata["rows"] == len(bars) and len(metadata["data_fingerprint"]) == 64
    assert set(model.metrics) == {"valid", "test"} and model.metrics["test"]["samples"] > 500
    assert lines[1].startswith("train 2016-02-01 09:00 ~ ") and " test " in lines[1]
    assert any("随机森林" in line for line in lines)
    loaded = ml_model.PricePredictionModel().load_model(model.path)
    assert loaded.threshold == model.threshold
    assert loaded.metrics["test"]["samples"] == model.metrics["test"]["samples"]
    assert "report.png" in json.loads((model.path / "manifest.json").read_text(encoding="utf-8"))["files"]
    importance = metadata["importance"]
    assert importance["features"] == metadata["features"] and sum(importance["forest"]) == pytest.approx(1.0)
    assert any("top features" in line for line in lines)


def test_train_bundle_chooses_the_threshold_by_simulating_the_strategy_on_validation_with_the_real_costs(
    sample_frame: pd.DataFrame, tmp_path: Path
) -> None:
    bars = sample_span(sample_frame, "2016-02-01", "2016-03-31")
    spec = contract_spec(VT, load_contracts())
    model = ml_model.train_bundle(bars, VT, "1m", SMALL_FOREST, tmp_path / "rf", spec=spec)
    metadata = model.metadata
    decision = metadata["decision"]
    assert metadata["label_kind"] == "executable" and metadata["costs"]["fees"] == spec.fees.text
    # the chosen threshold is the best candidate by validation net P&L among those with enough fills
    eligible = [row for row in decision["grid"] if row[2] >= MIN_DECISION_TRADES]
    assert model.threshold == decision["threshold"]
    if eligible:
        assert decision["threshold"] == max(eligible, key=lambda row: row[1])[0]
    assert decision["edge"] == ("positive" if eligible and max(r[1] for r in eligible) > 0 else "none")
    assert ml_model.has_no_edge(metadata) == (decision["edge"] == "none")
    # the same simulation again, from the bundle's own data, gives the recorded figures
    data = dp.prepare_training_data(bars, VT, horizon=5, sequence_length=60, features_count=30)
    again = ml_model.decide_threshold(model, data, spec)
    assert (again.threshold, again.trades) == (decision["threshold"], decision["trades"])
    assert again.net_pnl == pytest.approx(decision["net_pnl"])
    # rb's round trip at ~2,000: two ticks of slippage and commission both sides, about 12 bp
    assert decision["round_trip_cost"] == pytest.approx(2 * spec.fees.open_rate + 2 / 2000, rel=0.15)
    drift = metadata["drift"]
    assert set(drift) == {"train", "valid", "test"}
    assert drift["train"]["mean_label"] == pytest.approx(metadata["label_mean"])
    assert all(0 <= part["long_share"] + part["short_share"] <= 1 for part in drift.values())


def test_train_walk_forward_names_the_folds_and_their_test_parts_follow_each_other(
    sample_frame: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[str] = []
    bars = sample_span(sample_frame, "2016-01-01", "2016-03-31")
    folds = ml_model.train_walk_forward(bars, VT, "1m", SMALL_FOREST, tmp_path, "wf", 3, progress=lines.append)
    assert capsys.readouterr().out == ""
    assert [fold.fold for fold in folds] == [1, 2, 3]
    assert [fold.path for fold in folds] == [tmp_path / "wf-fold1", tmp_path / "wf-fold2", tmp_path / "wf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wf", "wf-fold1", "wf-fold2"]
    metadata = [json.loads((fold.path / "metadata.json").read_text(encoding="utf-8")) for fold in folds]
    assert [m["walk_forward"] for m in metadata] == [{"fold": k, "folds": 3, "current": k == 3} for k in (1, 2, 3)]
    assert folds[0].first_bar == bars.index[0] and folds[-1].last_bar <= bars.index[-1]
    assert folds[0].first_bar < folds[1].first_bar < folds[2].first_bar
    tests = [m["ranges"]["test"] for m in metadata]
    for before, after in zip(tests, tests[1:], strict=False):
        assert before[1] < after[0]  # no bar is tested twice
        skipped = bars.index.get_loc(pd.Timestamp(after[0])) - bars.index.get_loc(pd.Timestamp(before[1])) - 1
        assert 0 <= skipped <= SMALL_FOREST.horizon  # none left out beyond the rounding of a purge
    assert [fold.model.metadata["ranges"]["test"] for fold in folds] == [tuple(t) for t in tests]
    assert [line for line in lines if "/ fold " in line] == [
        f"第 {k}/3 折 / fold {k}: {fold.first_bar} ~ {fold.last_bar}" for k, fold in zip((1, 2, 3), folds, strict=True)
    ]


# --- mode 3 from the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quarter_home(tmp_path_factory: pytest.TempPathFactory, sample_lines: list[str]) -> Home:
    """A home holding 2016 Q1 of the real sample."""
    root = tmp_path_factory.mktemp("quarter")
    csv = root / "rb_2016q1.csv"
    rows = [line for line in sample_lines[1:] if line.startswith(("2016-1-", "2016-2-", "2016-3-"))]
    csv.write_text("\n".join([sample_lines[0], *rows]) + "\n", encoding="utf-8")
    home = resolve_home(root / "home")
    assert ai_trading_system.main(["--home", str(home.root), "import", "--csv", str(csv), "--vt-symbol", VT]) == 0
    return home


@pytest.mark.slow
def test_train_command_saves_a_bundle_with_its_report(quarter_home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--home",
        str(quarter_home.root),
        "train",
        "--vt-symbol",
        VT,
        "--start",
        "2016-02-01",
        "--end",
        "2016-03-31",
        "--model-type",
        "random_forest",
        "--name",
        "rf_q1",
    ]
    assert ai_trading_system.main(argv) == 0
    out = capsys.readouterr().out
    bundle = quarter_home.models_dir / "rf_q1"
    assert "directional_accuracy" in out and "零预测 / zero" in out and str(bundle) in out
    assert (bundle / "report.png").read_bytes().startswith(b"\x89PNG")
    metadata = json.loads((bundle / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["vt_symbol"] == VT and metadata["ranges"]["train"][0].startswith("2016-02-01 09:00")
    assert len(metadata["data_fingerprint"]) == 64
    loaded = ml_model.PricePredictionModel().load_model(bundle)
    assert loaded.metrics["test"]["samples"] > 500


@pytest.mark.slow
def test_walk_forward_trains_one_bundle_per_fold_and_marks_the_last_current(
    quarter_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--home",
        str(quarter_home.root),
        "train",
        "--vt-symbol",
        VT,
        "--start",
        "2016-01-01",
        "--end",
        "2016-02-29",
        "--model-type",
        "random_forest",
        "--name",
        "wf",
        "--walk-forward",
        "2",
    ]
    assert ai_trading_system.main(argv) == 0
    out = capsys.readouterr().out
    first = json.loads((quarter_home.models_dir / "wf-fold1" / "metadata.json").read_text(encoding="utf-8"))
    last = json.loads((quarter_home.models_dir / "wf" / "metadata.json").read_text(encoding="utf-8"))
    assert first["walk_forward"] == {"fold": 1, "folds": 2, "current": False}
    assert last["walk_forward"] == {"fold": 2, "folds": 2, "current": True}
    assert first["data_check"] == last["data_check"] and first["data_check"]["passed"] is True  # the whole range's
    assert first["ranges"]["test"][1] < last["ranges"]["test"][0]  # the test parts follow each other
    assert "wf-fold1" in out and "current bundle" in out


def test_train_command_rejects_a_bad_name_and_missing_data(
    quarter_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--home", str(quarter_home.root), "train", "--vt-symbol", VT, "--model-type", "random_forest"]
    assert ai_trading_system.main([*base, "--start", "2016-01-01", "--end", "2016-03-31", "--name", "../x"]) == 2
    assert ai_trading_system.main([*base, "--start", "2019-01-01", "--end", "2019-03-31"]) == 2
    assert "没有" in capsys.readouterr().err


def test_prompt_option_3_asks_for_the_training_run(quarter_home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    answers = iter(["3", "", "2016-02-01", "2016-03-31", "random_forest"])
    assert ai_trading_system.main(["--home", str(quarter_home.root)], input_fn=lambda prompt: next(answers)) == 0
    assert (quarter_home.models_dir / "rb0000_random_forest" / "metadata.json").exists()
    assert "directional_accuracy" in capsys.readouterr().out


def test_model_command_shows_a_bundle_and_exits_2_for_a_tampered_one(
    forest_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = resolve_home(tmp_path / "home")
    good = copy_bundle(forest_bundle, home.models_dir)
    assert ai_trading_system.main(["--home", str(home.root), "model", "--model", "rf"]) == 0
    out = capsys.readouterr().out
    assert str(good) in out and "random_forest" in out and "rank_ic" in out
    edit_metadata(good, features=["no_such_feature"])
    assert ai_trading_system.main(["--home", str(home.root), "model", "--model", str(good)]) == 2
    err = capsys.readouterr().err
    assert "另一套特征" in err and "train" in err and "Traceback" not in err


# --- what the model uses ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def importance(forest: ml_model.PricePredictionModel, data: dp.TrainingData) -> dict[str, Any]:
    return ml_model.feature_importance(forest, data)


def with_rows(data: dp.TrainingData, part: str, seed: int) -> dp.TrainingData:
    """The same data with every feature of `part`'s rows replaced by random values."""
    start, stop = data.split.parts()[part]
    scaled = data.scaled.copy()
    scaled[start:stop] = np.random.default_rng(seed).normal(size=scaled[start:stop].shape)
    features = data.features.copy()
    features.iloc[start:stop] = scaled[start:stop]
    return dataclasses.replace(data, scaled=scaled, features=features)


def test_feature_importance_is_computed_on_validation_only_and_deterministic(
    forest: ml_model.PricePredictionModel, data: dp.TrainingData, importance: dict[str, Any]
) -> None:
    assert importance["features"] == data.names and importance["seed"] == forest.config.seed
    assert importance["validation_windows"] == min(len(data.windows("valid")), ml_model.IMPORTANCE_WINDOWS)
    assert ml_model.feature_importance(forest, data) == importance  # same seed, same numbers
    assert ml_model.feature_importance(forest, with_rows(data, "test", 1)) == importance
    changed = ml_model.feature_importance(forest, with_rows(data, "valid", 1))
    assert changed["permutation_ic_drop"] != importance["permutation_ic_drop"]
    assert changed["train_rank_ic"] == importance["train_rank_ic"]  # the training part's own IC stays
    assert ml_model.feature_importance(forest, data, seed=7)["permutation_ic_drop"] != importance["permutation_ic_drop"]
    for key in ("permutation_ic_drop", "permutation_mse_rise", "forest", "train_rank_ic"):
        assert len(importance[key]) == len(data.names) and all(type(x) is float for x in importance[key])
    assert sum(importance["forest"]) == pytest.approx(1.0)
    start, stop = data.split.train
    first = data.features.iloc[start:stop, 0]
    spearman = first.corr(data.labels.iloc[start:stop], method="spearman")
    assert importance["train_rank_ic"][0] == pytest.approx(spearman, abs=1e-9)


def test_a_feature_of_pure_noise_ranks_low_and_the_ones_the_label_is_made_of_rank_first(
    data: dp.TrainingData,
) -> None:
    rng = np.random.default_rng(3)
    noise, a, b = 0, 1, 2
    scaled = data.scaled.copy()
    for column in (noise, a, b):  # independent of each other and of the real features
        scaled[:, column] = np.where(np.isnan(scaled[:, column]), np.nan, rng.normal(size=len(scaled)))
    label = 1e-3 * (scaled[:, a] + scaled[:, b]) + 1e-3 * rng.normal(size=len(scaled))
    features = pd.DataFrame(scaled, index=data.features.index, columns=data.features.columns)
    synthetic = dataclasses.replace(
        data, scaled=scaled, features=features, labels=pd.Series(label, index=data.labels.index)
    )
    model = ml_model.PricePredictionModel("random_forest", SMALL_FOREST)
    model.train(synthetic)
    importance = ml_model.feature_importance(model, synthetic)
    names = data.names
    assert set(ml_model.top_features(importance, 2)) == {names[a], names[b]}
    drop = importance["permutation_ic_drop"]
    assert abs(drop[noise]) < 0.02 * min(drop[a], drop[b])
    assert importance["forest"][noise] < 0.05 < min(importance["forest"][a], importance["forest"][b])
    assert abs(importance["train_rank_ic"][noise]) < 0.05 < importance["train_rank_ic"][a]


@pytest.mark.slow
def test_lstm_feature_importance_shuffles_whole_series_and_has_no_forest_part(
    lstm: ml_model.PricePredictionModel, data: dp.TrainingData
) -> None:
    importance = ml_model.feature_importance(lstm, data, max_windows=500)
    assert importance["forest"] is None and importance["validation_windows"] == 500
    assert ml_model.feature_importance(lstm, data, max_windows=500) == importance
    assert ml_model.feature_importance(lstm, with_rows(data, "test", 1), max_windows=500) == importance
    assert any(x != 0 for x in importance["permutation_mse_rise"])


def test_model_command_shows_the_top_features(
    forest: ml_model.PricePredictionModel,
    data: dp.TrainingData,
    importance: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = resolve_home(tmp_path / "home")
    forest.save_model(home.models_dir / "rf", extra={**facts(data), "importance": importance})
    assert ai_trading_system.main(["--home", str(home.root), "model", "--model", "rf"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("top features") :].splitlines()
    assert "置换 IC 降幅 / permutation IC drop" in table[1] and "训练期秩 IC / train rank IC" in table[1]
    shown = [line.split()[0] for line in table[3:] if line.strip()]
    assert shown == ml_model.top_features(importance, 10)


def test_train_best_horizon_keeps_the_horizon_whose_validation_simulation_earned_most(
    sample_frame: pd.DataFrame, tmp_path: Path
) -> None:
    bars = sample_span(sample_frame, "2016-02-01", "2016-03-31")
    model, decisions = ml_model.train_best_horizon(bars, VT, "1m", SMALL_FOREST, tmp_path / "rf", [5, 30, 5])
    assert list(decisions) == [5, 30]  # each horizon once, in the order asked
    best = max(decisions, key=lambda h: ml_model.decision_rank(decisions[h]))
    assert model.config.horizon == best and model.metadata["horizon"] == best
    assert model.threshold == decisions[best].threshold
    search = {row["horizon"]: row for row in model.metadata["horizon_search"]}
    assert set(search) == {5, 30} and search[30]["net_pnl"] == pytest.approx(decisions[30].net_pnl)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rf"]  # only the kept model is saved
    with pytest.raises(ModelError, match="正整数"):
        ml_model.train_best_horizon(bars, VT, "1m", SMALL_FOREST, tmp_path / "x", [])


# --- the classifier and the multi-timeframe feature set ---------------------------------------------------------

MTF_CLASSIFIER = dataclasses.replace(SMALL_FOREST, horizon=30, feature_set="mtf")


@pytest.fixture(scope="module")
def class_data(sample_frame: pd.DataFrame) -> dp.TrainingData:
    """2016 Q1 with the multi-timeframe features and the classify label at 30 bars."""
    bars = sample_frame.loc[pd.Timestamp("2016-01-01", tz=CHINA_TZ) : pd.Timestamp("2016-03-31 23:59", tz=CHINA_TZ)]
    spec = contract_spec(VT, load_contracts())
    return dp.prepare_training_data(
        bars.copy(), VT, horizon=30, features_count=30, label_kind="classify", feature_set="mtf", spec=spec
    )


def test_a_classifier_bundle_serves_p_up_minus_p_down_through_onnx(class_data: dp.TrainingData, tmp_path: Path) -> None:
    assert any(name in bf.MTF_NAMES for name in class_data.names)  # the selection kept multi-timeframe columns
    model = ml_model.PricePredictionModel("random_forest", MTF_CLASSIFIER)
    model.train(class_data)
    assert list(model.network.classes_) == [-1, 0, 1]
    bundle = model.save_model(tmp_path / "clf", extra={**facts(class_data), "label_kind": "classify"})
    loaded = ml_model.PricePredictionModel().load_model(bundle, expect=MTF_CLASSIFIER)
    metadata = loaded.metadata
    assert (metadata["feature_set"], metadata["feature_version"], metadata["label_kind"]) == ("mtf", 1, "classify")
    test = class_data.windows("test")
    rows = np.asarray(test.view[test.starts][:, -1, :], dtype=np.float32)
    probabilities = model.network.predict_proba(rows)
    expected = probabilities[:, 2] - probabilities[:, 0]
    served = loaded.predict(test)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
    assert served.min() < -0.05 and served.max() > 0.05 and np.abs(served).max() <= 1 + 1e-6
    assert loaded.predict_one(test.take(np.arange(1))[0]) == pytest.approx(expected[0], abs=1e-5)
    np.testing.assert_allclose(loaded.predict_native(test.take(np.arange(200))), expected[:200], atol=1e-12)

    with pytest.raises(ModelError, match="特征集为 mtf"):
        ml_model.PricePredictionModel().load_model(
            bundle, expect=dataclasses.replace(MTF_CLASSIFIER, feature_set="base")
        )
    config = json.loads((bundle / "metadata.json").read_text(encoding="utf-8"))["config"]
    edit_metadata(bundle, config={**config, "feature_set": "base"})  # mtf columns under the base set's name
    with pytest.raises(ModelError, match="另一套特征"):
        ml_model.PricePredictionModel().load_model(bundle)
    edit_metadata(bundle, config={**config, "feature_set": "hourly"})
    with pytest.raises(ModelError, match="特征集 'hourly'"):
        ml_model.PricePredictionModel().load_model(bundle)


def test_a_model_of_another_feature_set_than_its_data_is_refused(class_data: dp.TrainingData) -> None:
    with pytest.raises(ModelError, match="特征集 base 之外"):
        ml_model.PricePredictionModel("random_forest", dataclasses.replace(MTF_CLASSIFIER, feature_set="base")).train(
            class_data
        )
    with pytest.raises(ModelError, match="unknown feature set"):
        ml_model.ModelConfig(feature_set="hourly")


@pytest.mark.slow
def test_an_lstm_with_a_softmax_head_serves_p_up_minus_p_down_through_onnx(
    class_data: dp.TrainingData, tmp_path: Path
) -> None:
    config = dataclasses.replace(SMALL_LSTM, horizon=30, feature_set="mtf")
    model = ml_model.PricePredictionModel("lstm", config)
    model.train(class_data)
    assert model.network.layers[-1].get_config()["activation"] == "softmax" and model.label_scale == 1.0
    bundle = model.save_model(tmp_path / "lstm_clf", extra={**facts(class_data), "label_kind": "classify"})
    loaded = ml_model.PricePredictionModel().load_model(bundle, expect=config)
    sample = class_data.windows("test").take(np.arange(300))
    probabilities = model.network.predict(sample, verbose=0)
    expected = probabilities[:, 2] - probabilities[:, 0]
    np.testing.assert_allclose(loaded.predict(sample), expected, rtol=0, atol=1e-5)
    assert loaded.predict_one(sample[0]) == pytest.approx(expected[0], abs=1e-5)
    assert np.abs(expected).max() <= 1
