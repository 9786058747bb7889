"""The continuous series (`continuous --adjust`), training and backtests on it, and warm-up from it, on per-contract
bars split from the real sample at its detected roll gaps."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pytest

import ai_trading_system
import bar_store
import contracts
import data_collector
import data_processor
from config import Home
from tests.conftest import at, bars
from trading_calendar import trading_days

SPAN = ("2015-06-15", "2016-01-22 15:00")  # the real sample around two of its roll gaps
JUNCTIONS = ("2015-07-17 21:00", "2016-01-04 09:00")  # first bars of a new contract: detected roll gaps
SYMBOLS = ("rb1510", "rb1601", "rb1605")
EFFECTIVE = (date(2015, 7, 20), date(2016, 1, 4))  # the junctions' trading days (a Friday night is Monday's)
DECIDED = (date(2015, 7, 17), date(2015, 12, 31))
OVERLAP_DAYS = 3


# --- the data builder: one continuous sample split into overlapping contracts whose open interest overtakes ----------


def split_contracts(
    original: pd.DataFrame,
    junctions: tuple[str, ...] = JUNCTIONS,
    symbols: tuple[str, ...] = SYMBOLS,
    overlap: int = OVERLAP_DAYS,
) -> dict[str, pd.DataFrame]:
    """Per-contract bars from a continuous series: contract k trades the original prices between junctions k-1 and k,
    and `overlap` trading days either side at its own level (the original ÷ or × the junction's open/close ratio).
    Open interest: 1,000 while a contract is the series', 300 after, 500 before, 2,000 on the day before its turn, so
    the main-contract rule moves on exactly the junctions' trading days."""
    days = trading_days(pd.DatetimeIndex(original.index))
    unique = np.unique(days)
    cuts = [int(original.index.get_loc(at(text))) for text in junctions]
    ratios = [float(original["open"].iloc[c] / original["close"].iloc[c - 1]) for c in cuts]
    segment = np.searchsorted(np.array(cuts), np.arange(len(original)), side="right")
    bounds = [0, *cuts, len(original)]
    frames = {}
    for k, symbol in enumerate(symbols):
        first_day, last_day = days[bounds[k]], days[bounds[k + 1] - 1]
        low = unique[max(int(np.searchsorted(unique, first_day)) - overlap, 0)]
        high = unique[min(int(np.searchsorted(unique, last_day)) + overlap, len(unique) - 1)]
        keep = (days >= low) & (days <= high)
        level = np.ones(len(original))
        for m in range(len(symbols)):  # the price of contract k where contract m is the series'
            if m > k:
                level[segment == m] = 1 / np.prod(ratios[k:m])
            elif m < k:
                level[segment == m] = np.prod(ratios[m:k])
        frame = original.copy()
        for name in ("open", "high", "low", "close"):
            frame[name] = frame[name] * level
        interest = np.where(segment == k, 1000.0, np.where(segment > k, 300.0, 500.0))
        interest[days == days[bounds[k] - 1] if k else np.zeros(len(days), dtype=bool)] = 2000.0
        frame["open_interest"] = interest
        frame["volume"] = np.where(segment == k, frame["volume"], frame["volume"] / 3)
        frames[symbol] = frame.loc[keep]
    return frames


@pytest.fixture(scope="module")
def original(sample_frame: pd.DataFrame) -> pd.DataFrame:
    frame = bars(sample_frame, *SPAN)
    frame["turnover"] = 0.0
    frame["open_interest"] = 0.0
    return frame


@pytest.fixture(scope="module")
def split(original: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return split_contracts(original)


def test_builder_junctions_are_the_samples_detected_roll_gaps(original: pd.DataFrame) -> None:
    segment = data_processor.gap_segments(original)
    firsts = original.index[np.r_[False, segment[1:] != segment[:-1]]]
    assert [f"{t:%Y-%m-%d %H:%M}" for t in firsts] == list(JUNCTIONS)


def test_contract_days_sum_volume_and_take_the_last_open_interest(split: dict[str, pd.DataFrame]) -> None:
    days = contracts.contract_days({"rb1601": split["rb1601"]})
    frame = split["rb1601"]
    on = frame.loc[at("2015-07-17 21:00") : at("2015-07-20 15:00")]  # Friday night + Monday: trading day 07-20
    monday = next(d for d in days if d.trading_day == date(2015, 7, 20))
    assert monday.volume == pytest.approx(float(on["volume"].sum()))
    assert monday.open_interest == 1000.0
    friday = next(d for d in days if d.trading_day == date(2015, 7, 17))
    assert friday.open_interest == 2000.0


def test_none_series_equals_the_original_prices_and_lists_the_right_rolls(
    original: pd.DataFrame, split: dict[str, pd.DataFrame]
) -> None:
    series = contracts.build_continuous(split, "none")
    first_day = np.unique(trading_days(pd.DatetimeIndex(original.index)))[1]  # decided after day one's close
    expected = original.loc[trading_days(pd.DatetimeIndex(original.index)) >= first_day]
    pd.testing.assert_frame_equal(series.bars[list(expected.columns[:5])], expected[list(expected.columns[:5])])
    assert [(j.decided_day, j.effective_day, j.old_symbol, j.new_symbol) for j in series.junctions] == [
        (DECIDED[0], EFFECTIVE[0], "rb1510", "rb1601"),
        (DECIDED[1], EFFECTIVE[1], "rb1601", "rb1605"),
    ]
    for junction, text in zip(series.junctions, JUNCTIONS, strict=True):
        cut = original.index.get_loc(at(text))
        assert junction.old_price == original["close"].iloc[cut - 1]
        assert junction.factor == pytest.approx(original["open"].iloc[cut] / original["close"].iloc[cut - 1])
        assert junction.offset == pytest.approx(junction.new_price - junction.old_price)
    assert [s.symbol for s in series.segments] == list(SYMBOLS)
    assert list(series.bars["contract"].unique()) == list(SYMBOLS)


@pytest.mark.parametrize("adjust", ["ratio", "difference"])
def test_adjusted_series_removes_junction_gaps_and_keeps_moves_inside_contracts(
    original: pd.DataFrame, split: dict[str, pd.DataFrame], adjust: str
) -> None:
    series = contracts.build_continuous(split, adjust)
    plain = contracts.build_continuous(split, "none").bars
    adjusted = series.bars
    move = (lambda a, b: a / b) if adjust == "ratio" else (lambda a, b: a - b)
    neutral = 1.0 if adjust == "ratio" else 0.0
    jumps = move(adjusted["open"].to_numpy()[1:], adjusted["close"].to_numpy()[:-1])
    real = move(plain["open"].to_numpy()[1:], plain["close"].to_numpy()[:-1])
    junction = np.flatnonzero(adjusted["contract"].to_numpy()[1:] != adjusted["contract"].to_numpy()[:-1])
    assert len(junction) == 2
    np.testing.assert_allclose(jumps[junction], neutral, atol=1e-9)
    assert np.all(np.abs(real[junction] - neutral) > (0.01 if adjust == "ratio" else 30))  # the gaps were real
    inside = np.ones(len(jumps), dtype=bool)
    inside[junction] = False
    np.testing.assert_allclose(jumps[inside], real[inside], rtol=1e-9, atol=1e-9)
    latest = adjusted["contract"] == SYMBOLS[-1]
    pd.testing.assert_frame_equal(adjusted.loc[latest], plain.loc[latest], check_exact=False)
    restored = contracts.real_prices(adjusted, series.segments)
    np.testing.assert_allclose(restored["close"].to_numpy(), plain["close"].to_numpy(), rtol=1e-12)


def test_build_refuses_an_unknown_adjustment(split: dict[str, pd.DataFrame]) -> None:
    with pytest.raises(contracts.ConfigError, match="ratio"):
        contracts.build_continuous(split, "forward")


def _store(home: Home, frames: dict[str, pd.DataFrame]) -> None:
    conn = data_collector.open_database(home)
    try:
        for symbol, frame in frames.items():
            bar_store.save_bar_frame(
                conn,
                frame.rename_axis("datetime").reset_index(),
                symbol,
                data_collector.Exchange.SHFE,
                data_collector.Interval.MINUTE,
            )
    finally:
        conn.close()


def test_continuous_command_stores_the_series_and_its_roll_table(
    home: Home, database: str, split: dict[str, pd.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    small = {s: f.loc[f.index >= at("2015-11-20")] for s, f in split.items() if s != "rb1510"}
    _store(home, {**small, "rb0000": small["rb1601"].iloc[:10]})  # a series that is no delivery month is left out
    argv = ["--home", str(home.root), "continuous", "--product", "rb", "--adjust", "ratio"]
    assert ai_trading_system.main(argv) == 0
    printed = capsys.readouterr().out
    assert "rb888.SHFE" in printed and "2015-12-31" in printed and "rb1601 → rb1605" in printed
    assert "2：rb1601, rb1605" in printed
    table = json.loads(data_collector.roll_table_path(home, "rb888.SHFE").read_text(encoding="utf-8"))
    assert table["adjust"] == "ratio"
    assert [(r["decided_day"], r["effective_day"]) for r in table["rolls"]] == [("2015-12-31", "2016-01-04")]
    stored = data_collector.load_history_data("rb888.SHFE", "2015-01-01", "2016-12-31", home=home)
    expected = contracts.build_continuous(small, "ratio").bars
    np.testing.assert_allclose(stored["close"].to_numpy(), expected["close"].to_numpy())
    assert table["bars"] == len(stored)

    assert ai_trading_system.main([*argv[:-1], "none"]) == 0  # rebuilt: the old series is replaced, not merged
    stored = data_collector.load_history_data("rb888.SHFE", "2015-01-01", "2016-12-31", home=home)
    plain = contracts.build_continuous(small, "none").bars
    np.testing.assert_array_equal(stored["close"].to_numpy(), plain["close"].to_numpy())


def test_stored_contract_days_are_the_daily_figures_of_the_databases_bars(
    home: Home, split: dict[str, pd.DataFrame]
) -> None:
    small = {s: f.loc[f.index >= at("2015-12-20")] for s, f in split.items() if s != "rb1510"}
    _store(home, small)
    stored = data_collector.stored_contract_days("rb", home=home)
    assert sorted(stored, key=lambda d: (d.symbol, d.trading_day)) == contracts.contract_days(small)
    assert {d.symbol for d in stored} == {"rb1601", "rb1605"}
    assert data_collector.stored_contract_days("rb", "SHFE", home=home) == stored


def test_continuous_command_without_contracts_exits_2(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--home", str(home.root), "continuous", "--product", "rb", "--adjust", "ratio"]
    assert ai_trading_system.main(argv) == 2
    assert "rb2605" in capsys.readouterr().err


@pytest.fixture
def stitched_home(home: Home, split: dict[str, pd.DataFrame]) -> Home:
    """A home holding the three contracts and rb888.SHFE built from them, ratio-adjusted."""
    _store(home, split)
    assert ai_trading_system.main(["--home", str(home.root), "continuous", "--product", "rb", "--adjust", "ratio"]) == 0
    return home


def test_training_bars_mark_the_junctions_so_no_label_spans_a_roll(stitched_home: Home) -> None:
    loaded = data_collector.load_history_data("rb888.SHFE", "2015-06-01", "2016-01-31", home=stitched_home)
    marked, facts = data_collector.mark_contracts(loaded, "rb888.SHFE", "1m", stitched_home)
    assert facts == {"adjust": "ratio", "source": "continuous", "contracts": list(SYMBOLS)}
    cleaned, report = data_processor.clean_data(marked)
    assert [when for when, _ in report.roll_gaps] == list(JUNCTIONS)
    unmarked, _ = data_processor.clean_data(loaded)
    assert unmarked["roll_gap"].sum() == 0  # the adjusted series has no gap left for the gap rule to find
    labels = data_processor.make_labels(cleaned, 5)
    for text in JUNCTIONS:
        cut = cleaned.index.get_loc(at(text))
        assert labels.iloc[cut - 6 : cut].isna().all()  # executable label: in at t+1's open, out at t+1+h's
        assert labels.iloc[cut - 11 : cut - 6].notna().all()


def test_backtest_bars_of_an_adjusted_series_are_the_contracts_real_prices(
    stitched_home: Home, original: pd.DataFrame
) -> None:
    loaded = data_collector.load_history_data("rb888.SHFE", "2015-06-01", "2016-01-31", home=stitched_home)
    real = data_collector.real_contract_prices(loaded, "rb888.SHFE", "1m", stitched_home)
    expected = original.loc[real.index, ["open", "high", "low", "close"]]
    np.testing.assert_allclose(real[expected.columns].to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert list(real.columns) == list(loaded.columns)
    assert not np.allclose(loaded["close"].iloc[:100], real["close"].iloc[:100])  # it was adjusted in the database


def test_a_series_and_a_table_that_disagree_refuse_with_the_fix(stitched_home: Home) -> None:
    loaded = data_collector.load_history_data("rb888.SHFE", "2015-06-01", "2016-01-31", home=stitched_home)
    path = data_collector.roll_table_path(stitched_home, "rb888.SHFE")
    table = json.loads(path.read_text(encoding="utf-8"))
    table["segments"] = table["segments"][1:]
    path.write_text(json.dumps(table), encoding="utf-8")
    with pytest.raises(data_collector.DataError, match="continuous"):
        data_collector.mark_contracts(loaded, "rb888.SHFE", "1m", stitched_home)


# --- warm-up from the continuous series ---------------------------------------------------------------------------


def _window(frame: pd.DataFrame, start: str, end: str) -> pd.DataFrame:
    return frame.loc[(frame.index >= at(start)) & (frame.index < at(end))]


def test_warmup_puts_the_series_on_the_main_contracts_level_across_a_junction(split: dict[str, pd.DataFrame]) -> None:
    series = contracts.build_continuous(split, "ratio")
    real = contracts.real_prices(_window(series.bars, "2015-12-28 21:00", "2016-01-06"), series.segments)
    factors = {(j.old_symbol, j.new_symbol): j.factor for j in series.junctions}
    warm, sources = contracts.warmup_bars(real, pd.DataFrame(), "rb1605", factors)
    assert sources == contracts.WarmupSources(0, len(real), ("rb1601", "rb1605"), "same", 1.0)
    expected = split["rb1605"].loc[warm.index]  # rb1605 traded on its own level before it became the main contract
    np.testing.assert_allclose(warm["close"].to_numpy(), expected["close"].to_numpy(), rtol=1e-12)
    assert "主力连续" in sources.describe("rb1605.SHFE")


def test_warmup_matches_a_non_main_contract_at_its_own_bars_and_they_win(split: dict[str, pd.DataFrame]) -> None:
    series = contracts.build_continuous(split, "none")
    factors = {(j.old_symbol, j.new_symbol): j.factor for j in series.junctions}
    continuous = _window(series.bars, "2015-12-25", "2016-01-08")
    own = _window(split["rb1601"], "2016-01-06", "2016-01-08")  # rb1601 after the series left it
    warm, sources = contracts.warmup_bars(continuous, own, "rb1601", factors)
    assert (sources.own, sources.level, sources.contracts) == (len(own), "own", ("rb1601", "rb1605"))
    assert sources.continuous == int((continuous.index < own.index[0]).sum())
    expected = split["rb1601"].loc[warm.index]
    np.testing.assert_allclose(warm["close"].to_numpy(), expected["close"].to_numpy(), rtol=1e-9)
    pd.testing.assert_frame_equal(warm.loc[own.index, list(own.columns)], own)


def test_warmup_without_own_bars_of_a_contract_the_series_never_traded_says_the_level_is_unknown(
    split: dict[str, pd.DataFrame],
) -> None:
    series = contracts.build_continuous(split, "none")
    continuous = _window(series.bars, "2016-01-04", "2016-01-08")
    warm, sources = contracts.warmup_bars(continuous, pd.DataFrame(), "rb1610", {})
    assert sources.level == "unknown" and "未知" in sources.describe("rb1610.SHFE")
    np.testing.assert_array_equal(warm["close"].to_numpy(), continuous["close"].to_numpy())
    own = _window(split["rb1605"], "2016-01-04", "2016-01-05")
    alone, sources = contracts.warmup_bars(continuous.iloc[:0], own, "rb1605", {})
    assert (sources.own, sources.continuous, sources.level) == (len(own), 0, "none")
    pd.testing.assert_frame_equal(alone, own)


WARMUP_PERIOD = "START, END = '2016-01-06', '2016-01-07'\n"
# a SIM replay of SYMBOL from START to END (CSV, or the database when CSV is empty) printing every prediction;
# the caller puts MODEL, CSV, SYMBOL, START and END in front
WARMUP_SCRIPT = """
import json, logging, math
from config import Secrets, bind_vnpy_home, contract_spec, load_contracts, resolve_home, settings_dirs, settings_for
import live_trading

logging.basicConfig(level=logging.INFO)
home = resolve_home()
settings = settings_for(home)
bind_vnpy_home(home, settings.database)
spec = contract_spec(SYMBOL, load_contracts(settings_dirs(home)))
setting = {**live_trading.live_costs(spec, 1_000_000.0, True), "model_path": MODEL, "warmup_days": 10}
config = live_trading.StrategyConfig("warm", "PredictiveTradingStrategy", SYMBOL, setting)
system = live_trading.AITradingSystem(home, settings, Secrets())
predictions = []
try:
    system.connect_gateway("SIM", {"vt_symbol": SYMBOL, "home": str(home.root), "csv": CSV,
                                   "start": START, "end": END, "speed": "max", "hold": True,
                                   "warmup_days": 10}, 30)
    assert system.start_trading(config)
    strategy = system.cta_engine.strategies["warm"]
    online = strategy.signal.update

    def update(bar):
        value = online(bar)
        predictions.append([bar.datetime.isoformat(), None if math.isnan(value) else value])
        return value

    strategy.signal.update = update
    assert system.release_replay().wait(300)
    system.drain()
finally:
    system.close()
print("WARM" + json.dumps(predictions))
"""


@pytest.mark.slow
def test_sim_run_on_a_contract_with_no_recorded_bars_predicts_on_its_first_live_bar(
    stitched_home: Home, split: dict[str, pd.DataFrame], rf_bundle: object, tmp_path: object
) -> None:
    from pathlib import Path

    from tests.conftest import home_rows, run_python

    home_rows(stitched_home, 'DELETE FROM "dbbardata" WHERE "symbol" = ?', "rb1605")
    home_rows(stitched_home, 'DELETE FROM "dbbaroverview" WHERE "symbol" = ?', "rb1605")
    live = _window(split["rb1605"], "2016-01-06", "2016-01-08")
    csv = Path(str(tmp_path)) / "rb1605.csv"
    table = live[["open", "high", "low", "close", "volume"]].copy()
    table.index = table.index.tz_localize(None)
    table.rename_axis("datetime").to_csv(csv)
    code = f"MODEL, CSV, SYMBOL = {str(rf_bundle)!r}, {str(csv)!r}, 'rb1605.SHFE'\n" + WARMUP_PERIOD + WARMUP_SCRIPT
    result = run_python(code, stitched_home.root, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads(result.stdout.split("WARM", 1)[1])
    assert predictions[0][0] == "2016-01-06T09:00:00+08:00" and predictions[0][1] is not None
    assert all(value is not None for _, value in predictions[:30])
    warmed = [line for line in result.stderr.splitlines() if "预热K线" in line]
    assert len(warmed) == 1 and "本合约 0 根" in warmed[0] and "rb1601、rb1605" in warmed[0]


@pytest.mark.slow
def test_the_whole_sample_split_at_all_its_roll_gaps_is_rebuilt_exactly(sample_frame: pd.DataFrame) -> None:
    whole = sample_frame.copy()
    whole["turnover"] = whole["open_interest"] = 0.0
    segment = data_processor.gap_segments(whole)
    firsts = whole.index[np.r_[False, segment[1:] != segment[:-1]]]
    symbols = tuple(f"rb{(2010 + m // 12) % 100:02d}{m % 12 + 1:02d}" for m in range(9, 10 + len(firsts)))
    split = split_contracts(whole, tuple(f"{t:%Y-%m-%d %H:%M}" for t in firsts), symbols)
    series = contracts.build_continuous(split, "none")
    days = trading_days(pd.DatetimeIndex(whole.index))
    expected = whole.loc[days >= np.unique(days)[1], ["open", "high", "low", "close"]]
    pd.testing.assert_frame_equal(series.bars[expected.columns], expected)
    unique = np.unique(days)
    effective = [days[whole.index.get_loc(t)] for t in firsts]
    decided = [unique[np.searchsorted(unique, day) - 1] for day in effective]
    assert [(j.decided_day, j.effective_day) for j in series.junctions] == [
        (pd.Timestamp(d).date(), pd.Timestamp(e).date()) for d, e in zip(decided, effective, strict=True)
    ]
    assert len(series.junctions) == 22 and [s.symbol for s in series.segments] == list(symbols)


@pytest.mark.slow
def test_train_on_the_ratio_series_records_it_and_the_backtest_trades_real_prices(
    stitched_home: Home, original: pd.DataFrame, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    import ml_model

    root = ["--home", str(stitched_home.root)]
    train = [*root, "train", "--vt-symbol", "rb888.SHFE", "--start", "2015-06-15", "--end", "2015-11-30"]
    assert ai_trading_system.main([*train, "--model-type", "random_forest", "--name", "rb888_rf"]) == 0
    metadata = ml_model.read_metadata(stitched_home.models_dir / "rb888_rf")
    assert metadata["price_adjustment"] == {"adjust": "ratio", "source": "continuous", "contracts": list(SYMBOLS[:2])}
    assert "换月处不跨越标签" in capsys.readouterr().err
    report = f"{tmp_path}/report"
    backtest = [*root, "backtest", "--vt-symbol", "rb888.SHFE", "--start", "2015-12-14", "--end", "2016-01-22"]
    backtest += ["--model", "rb888_rf", "--report-dir", report, "--threshold", "1e-5"]
    assert ai_trading_system.main(backtest) == 0
    assert "回测改用各合约真实价格" in capsys.readouterr().err
    trades = pd.read_csv(f"{report}/trades.csv")
    filled = pd.DatetimeIndex(pd.to_datetime(trades["datetime"], format="ISO8601")).tz_convert(at("2016-01-04").tz)
    real = original.loc[filled.floor("min")]  # a fill at a bar's open: the real contract's range of that bar
    assert len(trades) >= 4 and (filled < at("2016-01-04")).any()  # some trades on rb1601, stored ratio-adjusted
    price = trades["price"].to_numpy()
    assert ((price >= real["low"].to_numpy() - 1) & (price <= real["high"].to_numpy() + 1)).all()
    statistics = json.loads(open(f"{report}/statistics.json", encoding="utf-8").read())
    assert [text[:16] for text in statistics["rolls"]] == ["2016-01-04 09:00"]  # the roll table's junction
    signed = np.where(trades["direction"] == "Long", 1, -1) * trades["volume"].to_numpy()
    assert set(trades["direction"]) <= {"Long", "Short"}
    assert signed[np.asarray(filled < at("2016-01-04 09:00"))].sum() == 0  # flat across the junction


def test_junction_segments_start_a_segment_at_each_new_contracts_first_bar(original: pd.DataFrame) -> None:
    from backtesting_module import junction_segments

    segment = junction_segments(original, [at(text).to_pydatetime() for text in JUNCTIONS])
    firsts = original.index[np.r_[False, segment[1:] != segment[:-1]]]
    assert [f"{t:%Y-%m-%d %H:%M}" for t in firsts] == list(JUNCTIONS) and segment[0] == 0


@pytest.mark.parametrize("command", ["optimize", "research"])
def test_optimize_and_research_refuse_a_series_stored_adjusted_and_name_the_fix(
    stitched_home: Home, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--home", str(stitched_home.root), command, "--vt-symbol", "rb888.SHFE"]
    if command == "optimize":
        argv += ["--start", "2015-12-01", "--end", "2016-01-22", "--model", "none", "--param", "fixed_size=1,2"]
    else:
        argv += ["--test-years", "2016"]
    assert ai_trading_system.main(argv) == 2
    assert "continuous --product rb --adjust none" in capsys.readouterr().err
