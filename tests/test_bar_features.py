"""The feature set on the real sample: warm-up, the base and multi-timeframe columns, and the online state equal to
the batch builders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from vnpy.trader.constant import Exchange, Interval
from vnpy.trader.object import BarData

import bar_features as bf
import data_processor as dp
from config import DataError
from tests.conftest import at

VT = "rb0000.SHFE"
# columns through no logarithm: the batch builders take the same sums in the same order as the online state (rsi_6
# is not among them: pandas turns alpha 1/6 into a centre of mass and back, an ulp away from the online state's 1/6)
SAME_ARITHMETIC = (
    "atr_14",
    "upper_wick",
    "lower_wick",
    "sma_ratio_10",
    "sma_ratio_30",
    "sma_ratio_60",
    "sma_cross_10_60",
    "ema_ratio_20",
    "macd",
    "macd_signal",
    "macd_diff",
    "efficiency_20",
    "rsi_14",
    "stoch_k_14",
    "stoch_d_14",
    "tsi",
    "bb_pband_20",
    "bb_width_20",
    "cmf_20",
    "mfi_14",
    "flow_imbalance_20",
    "night",
    "session_progress",
    "day_range_pos",
)


def test_features_are_nan_only_in_the_warmup_rows(spring_2016: pd.DataFrame) -> None:
    features = bf.build_features(spring_2016)
    assert list(features.columns) == list(bf.FEATURE_NAMES)
    values = features.to_numpy()
    assert np.isnan(values[: bf.FEATURE_WARMUP]).all()
    assert np.isfinite(values[bf.FEATURE_WARMUP :]).all()


def test_the_base_set_is_unchanged_and_mtf_adds_its_columns_after_it(spring_2016: pd.DataFrame) -> None:
    frame = spring_2016.iloc[:3000]
    base = bf.build_features(frame)
    mtf = bf.build_features(frame, feature_set="mtf")
    assert list(base.columns) == list(bf.FEATURE_NAMES) and len(bf.FEATURE_NAMES) == 41
    assert list(mtf.columns) == [*bf.FEATURE_NAMES, *bf.MTF_NAMES] == list(bf.FEATURE_SETS["mtf"])
    pd.testing.assert_frame_equal(mtf[list(bf.FEATURE_NAMES)], base)
    with pytest.raises(DataError, match="特征集"):
        bf.build_features(frame, feature_set="hourly")


def test_mtf_columns_are_the_aggregates_they_say(spring_2016: pd.DataFrame) -> None:
    frame = spring_2016.iloc[:12_000]
    mtf = bf.build_mtf_features(frame)
    c, v = frame["close"].to_numpy(), frame["volume"].to_numpy()
    t = 5000
    assert mtf["mtf_ret_60m"].iloc[t] == pytest.approx(np.log(c[t] / c[t - 1200]), rel=1e-12)
    steps = np.diff(np.log(c[t - 300 : t + 1 : 15]))
    assert len(steps) == 20 and mtf["mtf_vol_15m"].iloc[t] == pytest.approx(steps.std(ddof=1) / np.sqrt(15))
    assert mtf["mtf_eff_15m"].iloc[t] == pytest.approx(abs(steps.sum()) / np.abs(steps).sum())
    window = frame.iloc[t - 99 : t + 1]
    place = (c[t] - window["low"].min()) / (window["high"].max() - window["low"].min())
    assert mtf["mtf_pos_5m"].iloc[t] == pytest.approx(place)
    assert mtf["mtf_vratio_5m"].iloc[t] == pytest.approx(
        np.log((v[t - 4 : t + 1].sum() + 1) / (window["volume"].sum() / 20 + 1))
    )
    assert mtf.iloc[:100].isna().all().all() and mtf["mtf_ret_5m"].iloc[100:].notna().all()
    # a night bar belongs to the next trading day: its return since the last completed day is from 14:59's close
    night = frame.index.get_loc(at("2016-04-20 21:30"))
    assert mtf["d_ret_1"].iloc[night] == pytest.approx(np.log(c[night] / frame.loc[at("2016-04-20 14:59"), "close"]))
    days = frame.groupby(frame["trading_day"].to_numpy())["close"].last()
    today = frame["trading_day"].iloc[night]
    before = days.loc[: today - pd.Timedelta(days=1)].to_numpy()
    assert mtf["d_ret_5"].iloc[night] == pytest.approx(np.log(c[night] / before[-5]))
    assert mtf["d_vol_5"].iloc[night] == pytest.approx(np.diff(np.log(before[-6:])).std(ddof=1))
    assert mtf["d_vol_5"].notna().sum() > 0.8 * len(frame)


def online_rows(state: bf.FeatureState, frame: pd.DataFrame) -> list[np.ndarray | None]:
    """The online state's row after each bar of `frame` (None while it warms up)."""
    columns = (frame[name].to_numpy() for name in bf.OHLCV)
    return [
        state.update_values(when, *values) for when, *values in zip(frame.index.to_pydatetime(), *columns, strict=True)
    ]


def test_online_state_equals_batch_mtf_features_on_real_bars(spring_2016: pd.DataFrame) -> None:
    frame = spring_2016.iloc[:12_000]  # 2016-04-05 .. 2016-05-19: two session eras and a roll gap
    assert frame["roll_gap"].any() and frame.index[0] < at("2016-05-03") < frame.index[-1]
    names = list(bf.FEATURE_SETS["mtf"])
    batch = bf.build_features(frame, VT, "mtf").to_numpy()
    picked = ["d_range_rel", "rsi_14", "mtf_vratio_60m"]
    state, some = bf.FeatureState(VT, names), bf.FeatureState(VT, picked)
    rows, chosen = [], []
    columns = (frame[name].to_numpy() for name in ("open", "high", "low", "close", "volume"))
    for when, *values in zip(frame.index.to_pydatetime(), *columns, strict=True):
        rows.append(state.update_values(when, *values))
        chosen.append(some.update_values(when, *values))
    online = np.array([np.full(len(names), np.nan) if row is None else row for row in rows[bf.FEATURE_WARMUP :]])
    mtf = slice(len(bf.FEATURE_NAMES), None)
    assert np.isfinite(online[-1]).all() and np.isfinite(batch[-1]).all()
    np.testing.assert_allclose(online[:, mtf], batch[bf.FEATURE_WARMUP :, mtf], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(online, batch[bf.FEATURE_WARMUP :], rtol=1e-9, atol=1e-9)
    expected = batch[bf.FEATURE_WARMUP :, [names.index(name) for name in picked]]
    np.testing.assert_allclose(np.array(chosen[bf.FEATURE_WARMUP :]), expected, rtol=1e-9, atol=1e-12)


def test_online_state_equals_batch_features_on_real_bars(spring_2016: pd.DataFrame) -> None:
    frame = spring_2016.iloc[:12_000]
    assert frame.index[0] < at("2016-05-03") < frame.index[-1] and frame["roll_gap"].any() and frame["night"].any()
    batch = bf.build_features(frame).to_numpy()
    rows = online_rows(bf.FeatureState(VT), frame)
    online = np.array([np.full(len(bf.FEATURE_NAMES), np.nan) if row is None else row for row in rows])
    assert np.isnan(online[: bf.FEATURE_WARMUP]).all()
    np.testing.assert_allclose(online[bf.FEATURE_WARMUP :], batch[bf.FEATURE_WARMUP :], rtol=1e-9, atol=1e-9)
    same = [bf.FEATURE_NAMES.index(name) for name in SAME_ARITHMETIC]
    np.testing.assert_array_equal(online[bf.FEATURE_WARMUP :, same], batch[bf.FEATURE_WARMUP :, same])


def test_online_state_takes_bar_data_and_returns_the_chosen_features(spring_2016: pd.DataFrame) -> None:
    frame = spring_2016.iloc[:200]
    names = ["rsi_14", "ret_5", "session_progress"]
    state = bf.FeatureState(VT, names)
    vector = None
    for when, row in frame.iterrows():
        bar = BarData(
            gateway_name="DB",
            symbol="rb0000",
            exchange=Exchange.SHFE,
            datetime=when.to_pydatetime(),
            interval=Interval.MINUTE,
            volume=row["volume"],
            open_price=row["open"],
            high_price=row["high"],
            low_price=row["low"],
            close_price=row["close"],
        )
        vector = state.update(bar)
    expected = bf.build_features(frame)[names].iloc[-1].to_numpy()
    assert vector is not None
    np.testing.assert_allclose(vector, expected, rtol=1e-9, atol=1e-12)
    with pytest.raises(DataError, match="未知特征"):
        bf.FeatureState(VT, ["no_such_feature"])


def test_online_state_for_a_product_without_a_session_table_matches_and_never_leaks(
    spring_2016: pd.DataFrame,
) -> None:
    frame = spring_2016.iloc[:3000].copy()
    frame.attrs["vt_symbol"] = "zz0000.DCE"  # not in SESSION_TABLE: no hours inferred from the bars themselves
    batch = bf.build_features(frame)
    online = online_rows(bf.FeatureState("zz0000.DCE"), frame)
    np.testing.assert_allclose(
        np.array(online[bf.FEATURE_WARMUP :]), batch.iloc[bf.FEATURE_WARMUP :], rtol=1e-9, atol=1e-9
    )
    progress = batch["session_progress"]
    assert progress[at("2016-04-06 09:00")] == 0.0 and progress[at("2016-04-06 10:30")] == 0.0  # after pauses
    assert progress[at("2016-04-06 09:30")] == pytest.approx(30 / 240)
    audit = dp.audit_lookahead(bf.build_features, frame, dp.default_cut_points(len(frame), 12))
    assert audit.ok, audit.leaks


@pytest.mark.parametrize("window", [1, 2, 3, 14, 20, 60, 100, 300, 1200])
def test_window_helpers_equal_pandas_and_the_online_sums_exactly(window: int) -> None:
    rng = np.random.default_rng(window)
    lots = rng.integers(0, 5000, 3000).astype("float64")
    prices = 3000 + rng.normal(0, 5, 3000)
    gappy = prices.copy()
    gappy[[7, 1500, 2999]] = np.nan
    rolling = pd.Series(gappy).rolling(window, min_periods=window)
    np.testing.assert_array_equal(bf._window_extremes(gappy, (window,), largest=True)[window], rolling.max())
    np.testing.assert_array_equal(bf._window_extremes(gappy, (window,), largest=False)[window], rolling.min())
    whole = pd.Series(lots).rolling(window, min_periods=window).sum().to_numpy()  # exact for whole numbers
    np.testing.assert_array_equal(bf._window_sum(lots, window), whole)
    oldest_first = [sum(prices[t - window + 1 : t + 1].tolist()) for t in range(window - 1, len(prices))]
    sums = bf._window_sum(prices, window)
    assert np.isnan(sums[: window - 1]).all()
    np.testing.assert_array_equal(sums[window - 1 :], oldest_first)  # as FeatureState's sum() takes them
    assert np.isnan(bf._window_sum(gappy, window)[[1500, 1500 + window - 1]]).all()
