"""Cleaning, features, labels, splits, scaling, windows and the online state, on the real sample."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import ta
from hypothesis import given, settings
from hypothesis import strategies as st
from vnpy.trader.constant import Exchange, Interval
from vnpy.trader.object import BarData

import data_processor as dp
from config import CHINA_TZ, DataError
from tests.conftest import at, bars
from trading_calendar import trading_days

VT = "rb0000.SHFE"
# Finding kept as a record: the columns of `ta.add_all_ta_features` whose values on a prefix of the data differ
# from the same rows computed on the whole series (measured with audit_lookahead on 2,000 real rb bars).
TA_LEAKS_WITHOUT_FILLNA = {
    "trend_kst",
    "trend_kst_diff",
    "trend_kst_sig",
    "trend_visual_ichimoku_a",
    "trend_visual_ichimoku_b",
}
TA_LEAKS_WITH_FILLNA = TA_LEAKS_WITHOUT_FILLNA | {
    "momentum_kama",
    "trend_dpo",
    "trend_trix",
    "trend_vortex_ind_diff",
    "trend_vortex_ind_neg",
    "trend_vortex_ind_pos",
}


# --- cleaning -----------------------------------------------------------------------------------------


def test_clean_data_keeps_every_bar_of_the_real_sample_and_adds_the_calendar(sample_frame: pd.DataFrame) -> None:
    cleaned, report = dp.clean_data(sample_frame, VT)
    assert report.rows_in == report.rows_out == len(cleaned) == 409_995
    assert (report.outside_session, report.exact_duplicates, report.conflicting_duplicates) == (0, 0, 0)
    assert report.trading_days == 1569 == cleaned["trading_day"].nunique()
    assert cleaned["segment"].iloc[-1] == len(report.roll_gaps) == int(cleaned["roll_gap"].sum())
    assert any(when.startswith("2016-03-07 21:00") for when, _ in report.roll_gaps)  # the +5.7% opening gap
    assert cleaned.attrs["vt_symbol"] == VT


def test_clean_data_sorts_and_drops_exact_duplicates(sample_frame: pd.DataFrame) -> None:
    original = bars(sample_frame, "2016-06-01", "2016-06-03 15:00")
    messy = pd.concat([original.iloc[::-1], original.iloc[10:15]])
    cleaned, report = dp.clean_data(messy, VT)
    assert report.was_unsorted and report.exact_duplicates == 5 and report.conflicting_duplicates == 0
    pd.testing.assert_frame_equal(cleaned[original.columns], original, check_freq=False)


def test_clean_data_keeps_the_last_of_conflicting_duplicates(sample_frame: pd.DataFrame) -> None:
    original = bars(sample_frame, "2016-06-01", "2016-06-01 15:00")
    changed = original.iloc[[20]].copy()
    changed["close"] += 3
    changed["high"] = np.maximum(changed["high"], changed["close"])
    cleaned, report = dp.clean_data(pd.concat([original, changed]), VT)
    assert report.conflicting_duplicates == 1
    assert cleaned["close"].iloc[20] == original["close"].iloc[20] + 3
    assert len(cleaned) == len(original)


def test_clean_data_drops_bars_outside_the_products_sessions(sample_frame: pd.DataFrame) -> None:
    original = bars(sample_frame, "2016-06-01", "2016-06-01 15:00")
    row = original.iloc[[0]]
    strays = pd.concat(
        [
            row.set_axis([at(t)])
            for t in (
                "2016-06-01 12:00",  # lunch break
                "2016-06-04 10:00",  # a Saturday
                "2016-06-01 23:30",  # rb's night ends at 23:00 since 2016-05-03
            )
        ]
    )
    cleaned, report = dp.clean_data(pd.concat([original, strays]), VT)
    assert report.outside_session == 3
    assert report.outside_examples == ["2016-06-01 12:00", "2016-06-01 23:30", "2016-06-04 10:00"]
    assert len(cleaned) == len(original)


def test_clean_data_flags_a_spike_without_dropping_it(sample_frame: pd.DataFrame) -> None:
    original = bars(sample_frame, "2016-06-01", "2016-06-30 15:00")
    bad = original.copy()
    position = 3000
    bad.iloc[position, bad.columns.get_loc("close")] *= 1.03  # a bad print: out ...
    bad.iloc[position, bad.columns.get_loc("high")] = bad["close"].iloc[position]
    cleaned, report = dp.clean_data(bad, VT)  # ... and back on the next bar
    assert len(cleaned) == len(original)
    assert bool(cleaned["spike"].iloc[position])
    assert report.spikes[0][0] == f"{original.index[position]:%Y-%m-%d %H:%M}"
    assert report.spikes[0][1] == pytest.approx(np.log(1.03), abs=2e-3)


def test_a_contract_column_marks_rolls_exactly(sample_frame: pd.DataFrame) -> None:
    frame = bars(sample_frame, "2016-06-01", "2016-06-08 15:00")
    roll_time = at("2016-06-06 21:00")
    frame["contract"] = np.where(frame.index < roll_time, "rb1610", "rb1701")
    cleaned, report = dp.clean_data(frame, VT)
    assert cleaned.index[cleaned["roll_gap"]].tolist() == [roll_time]
    assert cleaned.loc[roll_time:, "segment"].eq(1).all()
    assert cleaned.loc[: at("2016-06-06 15:00"), "segment"].eq(0).all()
    assert "contract" in report.roll_rule


def test_clean_data_rejects_bars_without_prices_or_time_zone(sample_frame: pd.DataFrame) -> None:
    frame = bars(sample_frame, "2016-06-01", "2016-06-01 15:00")
    with pytest.raises(DataError, match="close"):
        dp.clean_data(frame.drop(columns="close"), VT)
    with pytest.raises(DataError, match="时区"):
        dp.clean_data(frame.tz_localize(None), VT)


# --- features and labels --------------------------------------------------------------------------------


def test_features_are_nan_only_in_the_warmup_rows(spring_2016: pd.DataFrame) -> None:
    features = dp.build_features(spring_2016)
    assert list(features.columns) == list(dp.FEATURE_NAMES)
    values = features.to_numpy()
    assert np.isnan(values[: dp.FEATURE_WARMUP]).all()
    assert np.isfinite(values[dp.FEATURE_WARMUP :]).all()


def test_our_features_and_labels_never_see_the_future(sample_frame: pd.DataFrame) -> None:
    for start, end in (("2016-04-20", "2016-05-20 15:00"), ("2011-02-01", "2011-03-15 15:00")):
        cleaned, _ = dp.clean_data(bars(sample_frame, start, end), VT)
        cuts = dp.default_cut_points(len(cleaned), 30)
        features = dp.audit_lookahead(lambda d: dp.build_features(d, VT), cleaned, cuts)
        labels = dp.audit_lookahead(lambda d: dp.make_labels(d, 5), cleaned, cuts, allowed_lookahead=5)
        assert features.ok and labels.ok, (features.leaks, labels.leaks)
        assert len(features.columns) == len(dp.FEATURE_NAMES) and len(features.cut_points) >= 25


@pytest.mark.parametrize(("fillna", "expected"), [(False, TA_LEAKS_WITHOUT_FILLNA), (True, TA_LEAKS_WITH_FILLNA)])
def test_the_audit_finds_the_leaking_columns_of_ta_all_features(
    sample_frame: pd.DataFrame, fillna: bool, expected: set[str]
) -> None:
    frame = bars(sample_frame, "2016-02-01", "2016-12-31").iloc[:2000].reset_index(drop=True)

    def all_features(d: pd.DataFrame) -> pd.DataFrame:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = ta.add_all_ta_features(
                d[list(dp.OHLCV)].copy(), "open", "high", "low", "close", "volume", fillna=fillna
            )
        return out.drop(columns=list(dp.OHLCV))

    result = dp.audit_lookahead(all_features, frame, [30, 60, 100, 200, 400, 1000, 1999])
    assert set(result.leaking_columns) == expected


def test_the_audit_tells_causal_columns_from_leaking_ones(sample_frame: pd.DataFrame) -> None:
    frame = bars(sample_frame, "2016-06-01", "2016-06-03 15:00")

    def mixed(d: pd.DataFrame) -> pd.DataFrame:
        close = d["close"]
        return pd.DataFrame(
            {
                "past": close.shift(1),
                "rolling": close.rolling(10).mean(),
                "future": close.shift(-1),
                "filled_with_mean": close.rolling(10).mean().fillna(close.mean()),
                "backfilled": close.rolling(10).mean().bfill(),
            }
        )

    result = dp.audit_lookahead(mixed, frame, dp.default_cut_points(len(frame), 10))
    assert sorted(result.leaking_columns) == ["backfilled", "filled_with_mean", "future"]
    table = {row[0]: row[1] for row in result.rows()}
    assert table == {"past": "ok", "rolling": "ok", "future": "LEAK", "filled_with_mean": "LEAK", "backfilled": "LEAK"}


@given(window=st.integers(1, 30), lead=st.integers(1, 5), cuts=st.lists(st.integers(2, 299), min_size=1, max_size=8))
@settings(max_examples=50, deadline=None)
def test_audit_flags_any_lead_and_passes_any_lag(window: int, lead: int, cuts: list[int]) -> None:
    rng = np.random.default_rng(window * 100 + lead)
    frame = pd.DataFrame({"close": 3000 + rng.normal(size=300).cumsum()})
    causal = dp.audit_lookahead(lambda d: d["close"].rolling(window).mean().shift(lead), frame, cuts)
    future = dp.audit_lookahead(lambda d: d["close"].shift(-lead), frame, cuts)
    assert causal.ok
    assert future.ok == all(k + lead > 300 for k in cuts)  # row k-1 lost its future unless that lies past the data
    assert dp.audit_lookahead(lambda d: d["close"].shift(-lead), frame, cuts, allowed_lookahead=lead).ok


def test_labels_are_forward_returns_that_stop_at_the_end_and_at_rolls(spring_2016: pd.DataFrame) -> None:
    labels = dp.make_labels(spring_2016, 5)
    close = spring_2016["close"].to_numpy()
    assert labels.name == "fwd_ret_5"
    assert labels.iloc[100] == pytest.approx(close[105] / close[100] - 1, rel=1e-12)
    assert labels.iloc[-5:].isna().all() and np.isfinite(labels.iloc[-6])
    roll = int(np.flatnonzero(spring_2016["roll_gap"].to_numpy())[0])
    assert labels.iloc[roll - 5 : roll].isna().all()
    assert np.isfinite(labels.iloc[roll - 6]) and np.isfinite(labels.iloc[roll])


# --- selection, scaling, splits, windows ----------------------------------------------------------------


def test_feature_selection_sees_only_the_training_rows(
    spring_2016: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = dp.prepare_training_data(spring_2016, VT, horizon=5, sequence_length=60, features_count=30)
    chosen = honest.names
    assert len(chosen) == 30 and chosen == [name for name in dp.FEATURE_NAMES if name in chosen]  # feature order
    features = dp.build_features(spring_2016)
    poisoned = dp.make_labels(spring_2016, 5)
    stop = honest.split.train[1]
    unused = next(name for name in dp.FEATURE_NAMES if name not in chosen)
    poisoned.iloc[stop:] = features[unused].iloc[stop:]  # labels after the training part that `unused` predicts
    assert unused in dp.select_features(features, poisoned, 30)  # a selection that saw them would take it
    monkeypatch.setattr(dp, "make_labels", lambda df, horizon: poisoned)
    data = dp.prepare_training_data(spring_2016, VT, horizon=5, sequence_length=60, features_count=30)
    assert data.labels.equals(poisoned) and data.split == honest.split
    assert data.names == chosen


def test_scaler_statistics_are_the_training_rows_statistics(spring_2016: pd.DataFrame) -> None:
    features = dp.build_features(spring_2016).iloc[dp.FEATURE_WARMUP :]
    split = dp.split_chronological(features, 0.7, 0.15, 0.15, horizon=5)
    train = features.iloc[split.train[0] : split.train[1]]
    scaler = dp.Scaler.fit(train)
    np.testing.assert_allclose(scaler.mean, train.mean().to_numpy(), rtol=1e-12)
    expected_scale = train.std(ddof=0).replace(0, 1).to_numpy()
    np.testing.assert_allclose(scaler.scale, expected_scale, rtol=1e-12)
    assert not np.allclose(scaler.mean, features.mean().to_numpy())  # the whole history would give others
    scaled = scaler.transform(train.to_numpy())
    np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=1e-4)
    assert dp.Scaler.from_dict(scaler.to_dict()) == scaler


@pytest.mark.parametrize(("gap", "horizon"), [(0, 5), (20, 5), (3, 10)])
def test_splits_are_chronological_with_a_purge_of_at_least_the_horizon(gap: int, horizon: int) -> None:
    split = dp.split_chronological(10_000, 0.7, 0.15, 0.15, gap=gap, horizon=horizon)
    purge = max(gap, horizon)
    assert split.train[0] == 0 and split.gap == purge
    assert split.valid[0] - split.train[1] == purge and split.test[0] - split.valid[1] == purge
    assert split.test[1] <= 10_000
    last_train_label_end = split.train[1] - 1 + horizon
    assert last_train_label_end < split.valid[0]  # no training label reaches into validation


def test_splits_reject_impossible_fractions() -> None:
    with pytest.raises(DataError):
        dp.split_chronological(1000, 0.8, 0.2, 0.2)
    with pytest.raises(DataError):
        dp.split_chronological(10, 0.7, 0.15, 0.15, horizon=5)


def test_fold_slices_are_equal_windows_moved_by_one_test_share() -> None:
    assert dp.fold_slices(10_000, 3, 0.15) == [(0, 7692), (1153, 8845), (2306, 9998)]
    assert dp.fold_slices(10_000, 1, 0.15) == [(0, 10_000)]


@pytest.mark.parametrize(("rows", "folds", "horizon"), [(10_000, 3, 5), (41_234, 5, 5), (7_777, 4, 20), (3_000, 2, 1)])
def test_the_folds_test_parts_follow_each_other_without_overlap(rows: int, folds: int, horizon: int) -> None:
    tests = []
    for start, stop in dp.fold_slices(rows, folds, 0.15):
        split = dp.split_chronological(stop - start, 0.7, 0.15, 0.15, horizon=horizon)
        tests.append((start + split.test[0], start + split.test[1]))
    assert len(tests) == folds and tests[-1][1] <= rows
    for before, after in zip(tests, tests[1:], strict=False):
        assert 0 <= after[0] - before[1] <= horizon  # no row tested twice, at most a purge's rounding left untested


def test_windows_are_views_that_never_cross_a_roll_or_a_nan(spring_2016: pd.DataFrame) -> None:
    features = dp.build_features(spring_2016).to_numpy()
    labels = dp.make_labels(spring_2016, 5).to_numpy()
    segment = spring_2016["segment"].to_numpy()
    windows = dp.make_windows(features, labels, 60, segment)
    assert np.shares_memory(windows.view, features)
    assert windows.view.shape == (len(features) - 59, 60, features.shape[1])
    assert windows.starts[0] == dp.FEATURE_WARMUP
    for start in windows.starts:
        assert segment[start] == segment[start + 59]
    batch = windows.take(np.arange(3))
    np.testing.assert_array_equal(batch[1], features[windows.starts[1] : windows.starts[1] + 60])
    np.testing.assert_array_equal(windows.labels, labels[windows.end_rows()])
    assert np.isfinite(windows.labels).all()
    roll = int(np.flatnonzero(spring_2016["roll_gap"].to_numpy())[0])
    crossing = set(range(roll - 59, roll))
    assert crossing.isdisjoint(windows.starts.tolist())


def test_windows_can_be_limited_to_one_split_part(spring_2016: pd.DataFrame) -> None:
    features = dp.build_features(spring_2016).to_numpy()
    labels = dp.make_labels(spring_2016, 5).to_numpy()
    split = dp.split_chronological(len(features), 0.7, 0.15, 0.15, horizon=5)
    test = dp.make_windows(features, labels, 60, rows=split.test)
    ends = test.end_rows()
    assert ends.min() >= split.test[0] and ends.max() < split.test[1]


# --- the online state -----------------------------------------------------------------------------------


def test_online_state_equals_batch_features_on_real_bars(spring_2016: pd.DataFrame) -> None:
    frame = spring_2016.iloc[:12_000]
    assert frame.index[0] < at("2016-05-03") < frame.index[-1] and frame["roll_gap"].any() and frame["night"].any()
    batch = dp.build_features(frame).to_numpy()
    state = dp.FeatureState(VT)
    rows = []
    for when, o, h, lo, c, v in zip(
        frame.index.to_pydatetime(),
        frame["open"],
        frame["high"],
        frame["low"],
        frame["close"],
        frame["volume"],
        strict=True,
    ):
        vector = state.update_values(when, o, h, lo, c, v)
        rows.append(np.full(len(dp.FEATURE_NAMES), np.nan) if vector is None else vector)
    online = np.array(rows)
    assert np.isnan(online[: dp.FEATURE_WARMUP]).all()
    np.testing.assert_allclose(online[dp.FEATURE_WARMUP :], batch[dp.FEATURE_WARMUP :], rtol=1e-9, atol=1e-9)


def test_online_state_takes_bar_data_and_returns_the_chosen_features(spring_2016: pd.DataFrame) -> None:
    frame = spring_2016.iloc[:200]
    names = ["rsi_14", "ret_5", "session_progress"]
    state = dp.FeatureState(VT, names)
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
    expected = dp.build_features(frame)[names].iloc[-1].to_numpy()
    assert vector is not None
    np.testing.assert_allclose(vector, expected, rtol=1e-9, atol=1e-12)
    with pytest.raises(DataError, match="未知特征"):
        dp.FeatureState(VT, ["no_such_feature"])


def test_online_state_for_a_product_without_a_session_table_matches_and_never_leaks(
    spring_2016: pd.DataFrame,
) -> None:
    frame = spring_2016.iloc[:3000].copy()
    frame.attrs["vt_symbol"] = "zz0000.DCE"  # not in SESSION_TABLE: no hours inferred from the bars themselves
    batch = dp.build_features(frame)
    state = dp.FeatureState("zz0000.DCE")
    online = [
        state.update_values(when, o, h, lo, c, v)
        for when, o, h, lo, c, v in zip(
            frame.index.to_pydatetime(),
            frame["open"],
            frame["high"],
            frame["low"],
            frame["close"],
            frame["volume"],
            strict=True,
        )
    ]
    np.testing.assert_allclose(
        np.array(online[dp.FEATURE_WARMUP :]), batch.iloc[dp.FEATURE_WARMUP :], rtol=1e-9, atol=1e-9
    )
    progress = batch["session_progress"]
    assert progress[at("2016-04-06 09:00")] == 0.0 and progress[at("2016-04-06 10:30")] == 0.0  # after pauses
    assert progress[at("2016-04-06 09:30")] == pytest.approx(30 / 240)
    audit = dp.audit_lookahead(dp.build_features, frame, dp.default_cut_points(len(frame), 12))
    assert audit.ok, audit.leaks


def test_clean_data_keeps_hour_and_daily_bars_of_the_session(sample_frame: pd.DataFrame) -> None:
    minute = bars(sample_frame, "2016-06-01", "2016-06-30 23:59")
    agg = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    hourly = minute.resample("1h").agg(agg).dropna()  # vnpy-style hour bars: 09:00, 10:00, 13:00, 21:00 ...
    cleaned, report = dp.clean_data(hourly, VT)
    assert report.outside_session == 0 and len(cleaned) == len(hourly)
    assert at("2016-06-01 13:00") in cleaned.index  # holds 13:30-13:59
    daily = minute.groupby(trading_days(minute.index)).agg(agg)
    daily.index = pd.DatetimeIndex(daily.index).tz_localize(CHINA_TZ)
    cleaned_daily, daily_report = dp.clean_data(daily, VT)
    assert daily_report.outside_session == 0 and len(cleaned_daily) == len(daily) == 21


def test_clean_data_rejects_impossible_prices(sample_frame: pd.DataFrame) -> None:
    frame = bars(sample_frame, "2016-06-01", "2016-06-01 15:00")
    frame.iloc[7, frame.columns.get_loc("low")] = frame["high"].iloc[7] + 5
    with pytest.raises(DataError, match="2016-06-01 09:07"):
        dp.clean_data(frame, VT)


def test_prepare_training_data_fits_selection_and_scaler_on_the_training_part(spring_2016: pd.DataFrame) -> None:
    data = dp.prepare_training_data(spring_2016, VT, horizon=5, sequence_length=60, features_count=30)
    start, stop = data.split.train
    train = data.features.iloc[start:stop].dropna()
    np.testing.assert_allclose(data.scaler.mean, train.mean().to_numpy(), rtol=1e-12)
    assert data.scaler.names == tuple(data.names) and len(data.names) == 30
    assert data.names == dp.select_features(
        dp.build_features(spring_2016).iloc[start:stop], dp.make_labels(spring_2016, 5).iloc[start:stop], 30
    )
    for part in ("train", "valid", "test"):
        windows = data.windows(part)
        low, high = data.split.parts()[part]
        assert len(windows) > 1000 and windows.end_rows().min() >= low and windows.end_rows().max() < high
    assert data.split.valid[0] - data.split.train[1] >= 5
