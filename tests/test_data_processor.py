"""Cleaning, labels, splits, scaling, windows and the look-ahead audit of cleaning, features and labels, on the
real sample."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import ta
from hypothesis import given, settings
from hypothesis import strategies as st

import bar_features as bf
import data_processor as dp
from config import CHINA_TZ, DataError, contract_spec, load_contracts
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


def test_roll_threshold_is_the_floor_until_enough_past_gaps_then_six_robust_sigmas() -> None:
    rng = np.random.default_rng(3)
    few = rng.normal(0, 0.01, dp.ROLL_MIN_HISTORY - 1)
    assert dp.roll_threshold(few) == dp.ROLL_MIN_GAP == 0.02
    many = rng.normal(0, 0.01, dp.ROLL_HISTORY)
    sigma = 1.4826 * np.median(np.abs(many - np.median(many)))
    assert dp.roll_threshold(many) == pytest.approx(6 * sigma) and dp.roll_threshold(many) > 0.05
    assert dp.roll_threshold(many / 100) == 0.02


def test_roll_detector_bar_by_bar_equals_the_batch_rule_across_real_rolls(sample_frame: pd.DataFrame) -> None:
    raw = bars(sample_frame, "2016-02-15", "2016-05-31 23:59")
    detector = dp.RollDetector()
    online = [
        detector.update(when, o, c)
        for when, o, c in zip(raw.index.to_pydatetime(), raw["open"].tolist(), raw["close"].tolist(), strict=True)
    ]
    np.testing.assert_array_equal(np.cumsum(online), dp.gap_segments(raw))
    rolls = raw.index[np.flatnonzero(online)].tolist()
    assert rolls == [at(t) for t in ("2016-03-07 21:00", "2016-03-08 21:00", "2016-03-11 21:00", "2016-05-09 21:00")]
    cleaned, _ = dp.clean_data(raw, VT)
    assert cleaned.index[cleaned["roll_gap"].to_numpy()].tolist() == rolls


@pytest.mark.slow
def test_roll_detector_finds_the_samples_roll_gaps_as_cleaning_does(sample_frame: pd.DataFrame) -> None:
    cleaned, report = dp.clean_data(sample_frame, VT)
    detector = dp.RollDetector()
    online = [
        detector.update(when, o, c)
        for when, o, c in zip(
            sample_frame.index.to_pydatetime(),
            sample_frame["open"].tolist(),
            sample_frame["close"].tolist(),
            strict=True,
        )
    ]
    assert sum(online) == len(report.roll_gaps) == 22
    np.testing.assert_array_equal(np.asarray(online), cleaned["roll_gap"].to_numpy())


def test_clean_data_rejects_bars_without_prices_or_time_zone(sample_frame: pd.DataFrame) -> None:
    frame = bars(sample_frame, "2016-06-01", "2016-06-01 15:00")
    with pytest.raises(DataError, match="close"):
        dp.clean_data(frame.drop(columns="close"), VT)
    with pytest.raises(DataError, match="时区"):
        dp.clean_data(frame.tz_localize(None), VT)


# --- features and labels --------------------------------------------------------------------------------


def test_our_features_and_close_labels_never_see_the_future(sample_frame: pd.DataFrame) -> None:
    for start, end in (("2016-04-20", "2016-05-20 15:00"), ("2011-02-01", "2011-03-15 15:00")):
        cleaned, _ = dp.clean_data(bars(sample_frame, start, end), VT)
        cuts = dp.default_cut_points(len(cleaned), 30)
        features = dp.audit_lookahead(lambda d: bf.build_features(d, VT), cleaned, cuts)
        labels = dp.audit_lookahead(lambda d: dp.make_labels(d, 5, "close"), cleaned, cuts, allowed_lookahead=5)
        assert features.ok and labels.ok, (features.leaks, labels.leaks)
        assert len(features.columns) == len(bf.FEATURE_NAMES) and len(features.cut_points) >= 25


def test_cleaning_features_and_executable_labels_together_never_see_the_future(sample_frame: pd.DataFrame) -> None:
    # 2016-02-15 .. 04-15 holds the roll gaps of 2016-03-07, 03-08 and 03-11, spikes and night sessions
    raw = bars(sample_frame, "2016-02-15", "2016-04-15 15:00")
    cuts = dp.default_cut_points(len(raw), 30)
    result = dp.audit_pipeline(raw, VT, 5, cuts)
    assert result.ok, result.leaks
    assert result.columns == [*dp.CLEANING_COLUMNS, *bf.FEATURE_NAMES, "fwd_ret_5"]
    assert result.allowed_lookahead["spike"] == 1 and result.allowed_lookahead["fwd_ret_5"] == 7
    assert result.allowed_lookahead["roll_gap"] == 0 and result.allowed_lookahead["trading_day"] == 0
    # the reach is exact: a label at t reads bar t+7 (the exit bar t+6 is confirmed not a spike by t+7)
    inner = [k for k in cuts if k < len(raw)][-8:]
    tighter = dp.audit_lookahead(lambda d: dp.pipeline_frame(d, VT, 5)[["fwd_ret_5"]], raw, inner, allowed_lookahead=6)
    assert tighter.leaking_columns == ["fwd_ret_5"] and tighter.leaks[0].cuts_failed == 8


def old_roll_rule(df: pd.DataFrame, day_open: np.ndarray, min_gap: float, sigmas: float) -> tuple[np.ndarray, str]:
    """A roll rule that reads the whole series, as the old one did: a threshold at the median of ALL opening gaps
    (the old rule's 2% floor hid its look-ahead on this sample; without a floor every cut shows it)."""
    gaps = np.r_[0.0, np.log(df["open"].to_numpy()[1:] / df["close"].to_numpy()[:-1])]
    opening = gaps[day_open & (np.arange(len(gaps)) > 0)]
    marked = day_open & (np.abs(gaps) > (float(np.median(np.abs(opening))) if len(opening) else 0.0))
    marked[0] = False
    return marked, "whole-series median"


def test_the_pipeline_audit_catches_a_cleaning_step_that_looks_ahead(
    sample_frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = bars(sample_frame, "2016-02-15", "2016-03-31 15:00")
    monkeypatch.setattr(dp, "find_roll_gaps", old_roll_rule)
    result = dp.audit_pipeline(raw, VT, 5, dp.default_cut_points(len(raw), 12))
    assert {"roll_gap", "segment", "fwd_ret_5"} <= set(result.leaking_columns)
    assert not {"trading_day", "spike", "ret_1", "rsi_14"} & set(result.leaking_columns)


def test_the_audit_reports_rows_that_a_prefix_keeps_differently(sample_frame: pd.DataFrame) -> None:
    frame = bars(sample_frame, "2016-06-01", "2016-06-03 15:00")

    def drops_by_the_last_close(d: pd.DataFrame) -> pd.DataFrame:  # keeps rows by a statistic of the whole input
        return d[["close"]][d["close"] > d["close"].iloc[-1]]

    result = dp.audit_lookahead(drops_by_the_last_close, frame, [200, 400, len(frame)])
    assert result.leaking_columns == [dp.ROWS_COLUMN] and result.columns[0] == dp.ROWS_COLUMN


@pytest.mark.parametrize(("fillna", "expected"), [(False, TA_LEAKS_WITHOUT_FILLNA), (True, TA_LEAKS_WITH_FILLNA)])
def test_the_audit_finds_the_leaking_columns_of_ta_all_features(
    sample_frame: pd.DataFrame, fillna: bool, expected: set[str]
) -> None:
    frame = bars(sample_frame, "2016-02-01", "2016-12-31").iloc[:2000].reset_index(drop=True)

    def all_features(d: pd.DataFrame) -> pd.DataFrame:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = ta.add_all_ta_features(
                d[list(bf.OHLCV)].copy(), "open", "high", "low", "close", "volume", fillna=fillna
            )
        return out.drop(columns=list(bf.OHLCV))

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
    assert not future.ok  # row k-1 reads row k-1+lead: missing in the prefix, present in the full run (k ≤ 299)
    assert dp.audit_lookahead(lambda d: d["close"].shift(-lead), frame, cuts, allowed_lookahead=lead).ok


def test_close_labels_are_the_old_forward_returns_that_stop_at_the_end_and_at_rolls(
    spring_2016: pd.DataFrame,
) -> None:
    labels = dp.make_labels(spring_2016, 5, "close")
    close = spring_2016["close"].to_numpy()
    assert labels.name == "fwd_ret_5"
    assert labels.iloc[100] == pytest.approx(close[105] / close[100] - 1, rel=1e-12)
    assert labels.iloc[-5:].isna().all() and np.isfinite(labels.iloc[-6])
    roll = int(np.flatnonzero(spring_2016["roll_gap"].to_numpy())[0])
    assert labels.iloc[roll - 5 : roll].isna().all()
    assert np.isfinite(labels.iloc[roll - 6]) and np.isfinite(labels.iloc[roll])
    spike = int(np.flatnonzero(spring_2016["spike"].to_numpy())[0])
    assert np.isfinite(labels.iloc[spike])  # the old label ignores spikes
    segment = spring_2016["segment"].to_numpy()
    same = np.r_[segment[5:] == segment[:-5], np.zeros(5, dtype=bool)]
    expected = np.where(same, np.r_[close[5:] / close[:-5] - 1, np.full(5, np.nan)], np.nan)
    np.testing.assert_array_equal(labels.to_numpy(), expected)


def test_executable_labels_enter_at_the_next_open_and_exit_h_bars_later(spring_2016: pd.DataFrame) -> None:
    labels = dp.make_labels(spring_2016, 5)
    assert labels.name == "fwd_ret_5" and dp.DEFAULT_LABEL_KIND == "executable"
    # decided at 10:00's close (2175): bought at 10:01's open 2174, sold at 10:06's open 2178
    assert labels[at("2016-04-06 10:00")] == pytest.approx(2178 / 2174 - 1, rel=1e-12)
    # decided at 09:59: in at 10:00's open 2175, out at 10:05's open 2178
    assert labels[at("2016-04-06 09:59")] == pytest.approx(2178 / 2175 - 1, rel=1e-12)
    # decided at the day session's last bar: in at the night's first open 2188, out at 21:05's open
    night_exit = spring_2016.loc[at("2016-04-07 21:05"), "open"]
    assert labels[at("2016-04-07 14:59")] == pytest.approx(night_exit / 2188 - 1, rel=1e-12)
    assert labels.iloc[-7:].isna().all() and np.isfinite(labels.iloc[-8])  # bar t+7 must exist to confirm the exit


def test_executable_labels_never_span_a_roll_or_trade_at_a_spike(spring_2016: pd.DataFrame) -> None:
    labels = dp.make_labels(spring_2016, 5)
    roll = spring_2016.index.get_loc(at("2016-05-09 21:00"))  # 2175 -> 2105 at the night's open
    assert bool(spring_2016["roll_gap"].iloc[roll])
    assert labels.iloc[roll - 6 : roll].isna().all()  # bars t .. t+6 would include the roll bar
    assert np.isfinite(labels.iloc[roll - 7]) and np.isfinite(labels.iloc[roll])
    spike = spring_2016.index.get_loc(at("2016-04-21 14:22"))  # a real bad print: 2757 -> 2739 -> 2753
    assert bool(spring_2016["spike"].iloc[spike]) and spring_2016["spike"].sum() == 1
    assert np.isnan(labels.iloc[spike - 1]) and np.isnan(labels.iloc[spike - 6])  # entry bar, exit bar
    around = [spike - 7, *range(spike - 5, spike - 1), spike]
    assert np.isfinite(labels.iloc[around]).all()


def test_labels_reject_an_unknown_kind(spring_2016: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="标签类型"):
        dp.make_labels(spring_2016, 5, "mid")
    assert set(dp.LABEL_KINDS) == {"executable", "close", "classify"} and all(dp.LABEL_KINDS.values())
    assert (dp.label_reach(5, "close"), dp.label_reach(5), dp.label_reach(5, "classify")) == (5, 7, 7)


def test_net_labels_subtract_the_contracts_round_trip_at_the_entry_price(spring_2016: pd.DataFrame) -> None:
    spec = contract_spec(VT, load_contracts())
    assert spec.round_trip_return(2000.0) == pytest.approx(2 * 0.0001 + 2 * 1 / 2000)  # 12 bp at 2,000
    gross = dp.make_labels(spring_2016, 5)
    long = dp.make_net_labels(spring_2016, 5, spec)
    short = dp.make_net_labels(spring_2016, 5, spec, direction=-1)
    t = at("2016-04-06 10:00")
    cost = 2 * 0.0001 + 2 / 2174  # entry at 10:01's open
    assert long[t] == pytest.approx(gross[t] - cost, rel=1e-12) and short[t] == pytest.approx(-gross[t] - cost)
    assert long.isna().equals(gross.isna()) and long.name == "net_fwd_ret_5"
    finite = np.isfinite(gross.to_numpy()[:-1])
    charged = (gross - long).to_numpy()[:-1][finite]
    np.testing.assert_allclose(charged, spec.round_trip_return(spring_2016["open"].to_numpy()[1:])[finite], rtol=1e-9)


def test_class_labels_need_a_move_beyond_the_round_trip_cost_and_never_span_a_roll() -> None:
    opens = [2000.0, 2000, 2003, 2000, 2002, 2000, 1997, 2000, 1998, 2000, 2000, 2000]
    index = pd.date_range("2016-04-06 09:00", periods=len(opens), freq="1min", tz=CHINA_TZ)
    frame = pd.DataFrame({"open": opens, "high": opens, "low": opens, "close": opens, "volume": 1.0}, index=index)
    frame["segment"] = [0] * 8 + [1] * 4  # a roll between bars 7 and 8
    spec = contract_spec(VT, load_contracts())  # rb: 1 bp each side + 1 tick each side: 2.4 points at 2,000
    labels = dp.make_labels(frame, 1, "classify", spec)
    # t: in at open[t+1], out at open[t+2]; 3 points beat the cost up (t0, t5) or down (t1, t4), 2 points do not
    expected = [1, -1, 0, 0, -1, 1, np.nan, np.nan, 0, np.nan, np.nan, np.nan]
    np.testing.assert_array_equal(labels.to_numpy(), expected)  # t6, t7 would exit across the roll; t9.. need bar 12
    assert labels.name == "fwd_ret_1"
    gross = dp.make_labels(frame, 1)
    assert gross.iloc[2] == pytest.approx(0.001) and gross.iloc[2] < spec.round_trip_return(2000.0) < 0.0015
    with pytest.raises(DataError, match="合约成本"):
        dp.make_labels(frame, 1, "classify")


def test_prepare_training_data_keeps_classes_as_they_are(spring_2016: pd.DataFrame) -> None:
    spec = contract_spec(VT, load_contracts())
    data = dp.prepare_training_data(
        spring_2016.iloc[:8000], VT, horizon=30, features_count=12, label_kind="classify", spec=spec
    )
    values = data.labels.dropna().to_numpy()
    assert data.label_mean == 0.0 and set(np.unique(values)) == {-1.0, 0.0, 1.0}
    assert set(data.names) <= set(bf.FEATURE_NAMES)  # the default feature set is the base one


# --- the multi-timeframe feature set -------------------------------------------------------------------


def test_mtf_columns_and_the_class_label_never_see_the_future(sample_frame: pd.DataFrame) -> None:
    raw = bars(sample_frame, "2016-04-05", "2016-05-20 23:59").iloc[:12_000]
    spec = contract_spec(VT, load_contracts())
    cuts = sorted({*dp.default_cut_points(len(raw), 12), 4000, 8000, len(raw)})
    audit = dp.audit_pipeline(raw, VT, 30, cuts, "classify", "mtf", spec)
    assert set(bf.MTF_NAMES) <= set(audit.columns) and "fwd_ret_30" in audit.columns
    assert audit.ok, audit.leaks
    assert audit.allowed_lookahead["fwd_ret_30"] == 32 and audit.allowed_lookahead["d_vol_5"] == 0


# --- selection, scaling, splits, windows ----------------------------------------------------------------


def test_feature_selection_sees_only_the_training_rows(
    spring_2016: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = dp.prepare_training_data(spring_2016, VT, horizon=5, sequence_length=60, features_count=30)
    chosen = honest.names
    assert len(chosen) == 30 and chosen == [name for name in bf.FEATURE_NAMES if name in chosen]  # feature order
    features = bf.build_features(spring_2016)
    poisoned = dp.make_labels(spring_2016, 5)
    stop = honest.split.train[1]
    unused = next(name for name in bf.FEATURE_NAMES if name not in chosen)
    poisoned.iloc[stop:] = features[unused].iloc[stop:]  # labels after the training part that `unused` predicts
    assert unused in dp.select_features(features, poisoned, 30)  # a selection that saw them would take it
    monkeypatch.setattr(dp, "make_labels", lambda df, horizon, kind, spec=None: poisoned)
    data = dp.prepare_training_data(spring_2016, VT, horizon=5, sequence_length=60, features_count=30)
    assert data.labels.equals(poisoned - data.label_mean) and data.split == honest.split
    assert data.names == chosen


def test_labels_are_demeaned_by_the_training_parts_mean_only(
    spring_2016: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = dp.prepare_training_data(spring_2016, VT, horizon=5, sequence_length=60, features_count=30)
    raw = dp.make_labels(spring_2016, 5)
    (start, stop), (v0, v1), (t0, t1) = data.split.train, data.split.valid, data.split.test
    assert data.label_kind == "executable" and data.split.gap == 7  # the purge covers the label's reach
    assert data.label_mean == pytest.approx(float(np.nanmean(raw.iloc[start:stop])), rel=1e-12)
    np.testing.assert_allclose(data.labels + data.label_mean, raw, rtol=0, atol=1e-15)
    assert abs(float(np.nanmean(data.labels.iloc[start:stop]))) < 1e-15
    assert data.label_means == pytest.approx(
        {
            "train": data.label_mean,
            "valid": float(np.nanmean(raw.iloc[v0:v1])),
            "test": float(np.nanmean(raw.iloc[t0:t1])),
        },
        rel=1e-12,
    )
    later = raw.copy()
    later.iloc[stop:] += 0.01  # a different future moves nothing fitted on the training part
    monkeypatch.setattr(dp, "make_labels", lambda df, horizon, kind, spec=None: later)
    again = dp.prepare_training_data(spring_2016, VT, horizon=5, sequence_length=60, features_count=30)
    assert again.label_mean == data.label_mean and again.names == data.names
    assert again.label_means["test"] == pytest.approx(data.label_means["test"] + 0.01, rel=1e-9)


def test_prepare_training_data_takes_the_close_label_kind(spring_2016: pd.DataFrame) -> None:
    data = dp.prepare_training_data(spring_2016, VT, horizon=5, features_count=30, label_kind="close")
    assert data.label_kind == "close" and data.split.gap == 5
    np.testing.assert_allclose(data.labels + data.label_mean, dp.make_labels(spring_2016, 5, "close"), atol=1e-15)


def test_scaler_statistics_are_the_training_rows_statistics(spring_2016: pd.DataFrame) -> None:
    features = bf.build_features(spring_2016).iloc[bf.FEATURE_WARMUP :]
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
    features = bf.build_features(spring_2016).to_numpy()
    labels = dp.make_labels(spring_2016, 5).to_numpy()
    segment = spring_2016["segment"].to_numpy()
    windows = dp.make_windows(features, labels, 60, segment)
    assert np.shares_memory(windows.view, features)
    assert windows.view.shape == (len(features) - 59, 60, features.shape[1])
    assert windows.starts[0] == bf.FEATURE_WARMUP
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
    features = bf.build_features(spring_2016).to_numpy()
    labels = dp.make_labels(spring_2016, 5).to_numpy()
    split = dp.split_chronological(len(features), 0.7, 0.15, 0.15, horizon=5)
    test = dp.make_windows(features, labels, 60, rows=split.test)
    ends = test.end_rows()
    assert ends.min() >= split.test[0] and ends.max() < split.test[1]


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
        bf.build_features(spring_2016).iloc[start:stop], dp.make_labels(spring_2016, 5).iloc[start:stop], 30
    )
    for part in ("train", "valid", "test"):
        windows = data.windows(part)
        low, high = data.split.parts()[part]
        assert len(windows) > 1000 and windows.end_rows().min() >= low and windows.end_rows().max() < high
    assert data.split.valid[0] - data.split.train[1] >= 5
