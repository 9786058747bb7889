"""Warm-up from history as long as the bundle needs: its feature set's look-backs (bars and whole trading days), the
continuous series adjusted as the bundle was trained, on the real sample around the 2016 Spring Festival."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ai_trading_system
import bar_features
import contracts
import data_processor as dp
import ml_model
from config import Home, contract_spec, load_contracts
from predictive_trading_strategy import ModelSignal, PredictiveTradingStrategy, WarmupNeed, bundle_adjustment
from tests.conftest import at, bars, edit_metadata, home_rows, run_python
from tests.test_continuous import WARMUP_SCRIPT, _store, split_contracts
from tests.test_predictive_trading_strategy import FakeCtaEngine
from trading_calendar import causal_trading_days

VT = "rb0000.SHFE"
FIRST_AFTER_FESTIVAL = "2016-02-15 09:00"  # the first bar after the 2016 Spring Festival closure (02-08 .. 02-12)
MTF_NAMES = bar_features.FEATURE_SETS[bar_features.MTF_SET]


@pytest.fixture(scope="module")
def mtf_bundle(sample_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small RandomForest bundle on every column of the multi-timeframe set, trained on rb 2015-09 .. 2015-12."""
    frame = bars(sample_frame, "2015-09-01", "2015-12-31 23:59")
    data = dp.prepare_training_data(
        frame, VT, horizon=5, sequence_length=30, features_count=len(MTF_NAMES), feature_set=bar_features.MTF_SET
    )
    config = ml_model.ModelConfig(
        model_type="random_forest", trees=10, max_depth=4, sequence_length=30, feature_set=bar_features.MTF_SET
    )
    model = ml_model.PricePredictionModel("random_forest", config)
    model.train(data)
    model.threshold = ml_model.decide_threshold(model, data, contract_spec(VT, load_contracts())).threshold
    model.evaluate(data, "test")
    extra = {"vt_symbol": VT, "interval": "1m", "ranges": data.split.ranges(data.index), "label_kind": data.label_kind}
    return model.save_model(tmp_path_factory.mktemp("bundles") / "mtf", extra=extra)


# --- the need: exact look-backs per column ---------------------------------------------------------------------------


def test_each_columns_lookback_is_where_the_batch_features_first_have_a_value(sample_frame: pd.DataFrame) -> None:
    frame = bars(sample_frame, "2016-01-04 00:00", "2016-02-29 15:00")  # whole trading days from the first bar
    features = bar_features.build_features(frame, VT, bar_features.MTF_SET)
    days = causal_trading_days(pd.DatetimeIndex(frame.index))
    for name in MTF_NAMES:
        lookback_bars, lookback_days = bar_features.feature_lookback([name])
        first = int(np.flatnonzero(features[name].notna().to_numpy())[0])
        if name in bar_features.DAILY_LOOKBACK:
            assert len(np.unique(days[:first])) == lookback_days, name
            assert lookback_bars == bar_features.FEATURE_WARMUP
        else:
            assert (first, lookback_days) == (lookback_bars, 0), name
    assert bar_features.feature_lookback(MTF_NAMES) == (1200, bar_features.MTF_DAYS + 1)
    assert bar_features.feature_lookback(bar_features.FEATURE_NAMES) == (bar_features.FEATURE_WARMUP, 0)


def test_after_the_spring_festival_ten_days_hold_too_little_for_the_mtf_set_and_the_need_says_so(
    sample_frame: pd.DataFrame,
) -> None:
    need = WarmupNeed(1200 + 30, bar_features.MTF_DAYS + 1, 30)
    live = at(FIRST_AFTER_FESTIVAL)
    ten = sample_frame.loc[live - pd.Timedelta(days=10) : live - pd.Timedelta(minutes=1)]
    twenty = sample_frame.loc[live - pd.Timedelta(days=20) : live - pd.Timedelta(minutes=1)]
    assert len(ten) == 225  # 02-05's day session only: no night before the closure
    assert not need.met(list(ten.index)) and WarmupNeed(60 + 30, 0, 30).met(list(ten.index))
    assert need.met(list(twenty.index))
    assert not need.met(list(twenty.index[700:]))  # one whole day less

    def online_row(history: pd.DataFrame) -> np.ndarray:
        state = bar_features.FeatureState(VT, MTF_NAMES)
        row = None
        for when, values in pd.concat([history, sample_frame.loc[[live]]]).iterrows():
            row = state.update_values(when, *(float(values[c]) for c in bar_features.OHLCV))
        assert row is not None
        return row

    batch = bar_features.build_features(
        bars(sample_frame, "2015-11-02", FIRST_AFTER_FESTIVAL), VT, bar_features.MTF_SET
    ).iloc[-1]
    windowed = [
        MTF_NAMES.index(name) for name in bar_features.MTF_NAMES
    ]  # every multi-timeframe column has a finite window
    np.testing.assert_allclose(online_row(twenty)[windowed], batch[list(bar_features.MTF_NAMES)].to_numpy(), rtol=1e-9)
    assert np.isnan(online_row(ten)[windowed]).any()


def test_the_strategy_states_its_bundles_true_need(mtf_bundle: Path, rf_bundle: Path) -> None:
    engine = FakeCtaEngine()
    strategy = PredictiveTradingStrategy(engine, "warm", VT, {"model_path": str(mtf_bundle)})
    strategy.on_init()
    assert strategy.warmup_need == WarmupNeed(1230, bar_features.MTF_DAYS + 1, 30, "ratio")
    assert isinstance(strategy.signal, ModelSignal) and strategy.signal.bars_needed == 1230
    assert any("预热需要 1,230 根K线及窗口前 6 个完整交易日" in line for line in engine.logs)
    base = PredictiveTradingStrategy(FakeCtaEngine(), "base", VT, {"model_path": str(rf_bundle)})
    base.on_init()
    assert base.warmup_need is not None and (base.warmup_need.bars, base.warmup_need.days) == (120, 0)


# --- adjusted as the bundle was trained ---------------------------------------------------------------------------


def test_the_bundles_recorded_adjustment_is_used_and_ratio_without_one() -> None:
    assert bundle_adjustment({}) == "ratio"
    assert bundle_adjustment({"price_adjustment": {"adjust": "none", "source": "stored series"}}) == "none"
    assert bundle_adjustment({"price_adjustment": {"adjust": "difference"}}) == "difference"
    assert bundle_adjustment({"price_adjustment": "odd"}) == "ratio"


@pytest.fixture(scope="module")
def festival_split(sample_frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """rb1601 and rb1605 built from the sample around its 2016-01-04 roll gap, up to after the Spring Festival."""
    original = bars(sample_frame, "2015-11-02", "2016-02-26 15:00")
    original["turnover"] = original["open_interest"] = 0.0
    return split_contracts(original, ("2016-01-04 09:00",), ("rb1601", "rb1605"))


@pytest.mark.parametrize("adjust", ["ratio", "difference", "none"])
def test_warmup_bars_bridge_the_junction_as_the_bundle_was_trained(
    festival_split: dict[str, pd.DataFrame], adjust: str
) -> None:
    series = contracts.build_continuous(festival_split, "none")
    window = series.bars.loc[at("2015-12-28 09:00") : at("2016-01-06 15:00")]
    factors = {(j.old_symbol, j.new_symbol): j.factor for j in series.junctions}
    offsets = {(j.old_symbol, j.new_symbol): j.offset for j in series.junctions}
    warm, sources = contracts.warmup_bars(window, pd.DataFrame(), "rb1605", factors, adjust, offsets)
    junction = series.junctions[0]
    old = warm.loc[junction.old_last_bar, "close"]
    expected = {"ratio": junction.new_price, "difference": junction.new_price, "none": junction.old_price}[adjust]
    assert old == pytest.approx(expected, rel=1e-12)
    if adjust == "difference":  # a price difference kept, not a ratio
        first = window.index[0]
        assert warm.at[first, "close"] - window.at[first, "close"] == pytest.approx(junction.offset, abs=1e-9)
    assert (sources.adjust, sources.level) == (adjust, "same")
    assert contracts.WARMUP_ADJUST_WORDS[adjust] in sources.describe("rb1605.SHFE")


# --- a SIM replay after the Spring Festival on a contract with no bars of its own ---------------------------------

FESTIVAL = "START, END = '2016-02-15', '2016-02-15'\n"


@pytest.mark.slow
def test_sim_run_after_the_spring_festival_with_an_mtf_bundle_predicts_on_its_first_live_bar(
    home: Home, festival_split: dict[str, pd.DataFrame], mtf_bundle: Path, tmp_path: Path
) -> None:
    _store(home, festival_split)
    assert ai_trading_system.main(["--home", str(home.root), "continuous", "--product", "rb", "--adjust", "ratio"]) == 0
    home_rows(home, 'DELETE FROM "dbbardata" WHERE "symbol" = ?', "rb1605")
    home_rows(home, 'DELETE FROM "dbbaroverview" WHERE "symbol" = ?', "rb1605")
    live = festival_split["rb1605"].loc[at(FIRST_AFTER_FESTIVAL) : at("2016-02-15 15:00")]
    table = live[["open", "high", "low", "close", "volume"]].copy()
    table.index = table.index.tz_localize(None)
    csv = tmp_path / "rb1605.csv"
    table.rename_axis("datetime").to_csv(csv)
    bundle = tmp_path / "mtf_none"
    shutil.copytree(mtf_bundle, bundle)
    edit_metadata(bundle, price_adjustment={"adjust": "none", "source": "stored series as imported"})
    code = f"MODEL, CSV, SYMBOL = {str(bundle)!r}, {str(csv)!r}, 'rb1605.SHFE'\n" + FESTIVAL + WARMUP_SCRIPT
    result = run_python(code, home.root, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads(result.stdout.split("WARM", 1)[1])
    assert predictions[0][0] == "2016-02-15T09:00:00+08:00" and predictions[0][1] is not None
    assert all(value is not None for _, value in predictions)
    warmed = [line for line in result.stderr.splitlines() if "预热K线" in line]
    assert len(warmed) == 1 and "本合约 0 根" in warmed[0] and "已满足" in warmed[0], warmed
    assert "策略设 10 天" in warmed[0] and "不复权" in warmed[0] and "6 个完整交易日" in warmed[0]


@pytest.mark.slow
def test_sim_replay_of_a_stored_series_reaches_past_the_simulators_days_into_the_database(
    home: Home, sample_frame: pd.DataFrame, mtf_bundle: Path
) -> None:
    stored = bars(sample_frame, "2016-01-04", "2016-02-16 15:00")
    stored["turnover"] = stored["open_interest"] = 0.0
    _store(home, {"rb0000": stored})
    code = f"MODEL, CSV, SYMBOL = {str(mtf_bundle)!r}, '', {VT!r}\n" + FESTIVAL + WARMUP_SCRIPT
    result = run_python(code, home.root, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads(result.stdout.split("WARM", 1)[1])
    assert predictions[0][0] == "2016-02-15T09:00:00+08:00" and all(value is not None for _, value in predictions)
    warmed = [line for line in result.stderr.splitlines() if "预热K线" in line]
    assert len(warmed) == 1 and "已满足" in warmed[0] and "策略设 10 天" in warmed[0], warmed
