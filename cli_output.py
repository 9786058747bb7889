"""Terminal output of the commands: the aligned tables and summary lines that show each stage's results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import ml_model

if TYPE_CHECKING:  # types only: printing needs none of these modules' code
    import data_check
    import data_collector
    import data_processor
    import live_trading
    from contracts import ContractDay
    from trade_simulator import ThresholdChoice

ITEM_VALUE: tuple[str, str] = ("项目 / item", "值 / value")


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print a plain aligned table to stdout."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(cell + " " * (widths[i] - _width(cell)) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))


def _width(text: str) -> int:
    """Display width: CJK characters take two columns."""
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


def print_frame(table: pd.DataFrame) -> None:
    """A result frame (optimisation results, walk-forward folds) as a table of its values."""
    print_table([tuple(str(v) for v in row) for row in table.itertuples(index=False)], list(table.columns))


# --- market data: import, data, continuous, audit ----------------------------------------------


def print_import(result: data_collector.ImportResult) -> None:
    """The summary table of one import."""
    print(f"导入完成 / imported: {result.vt_symbol} {result.interval.value}  ({result.path})")
    print_table(
        [
            ("文件行数 / rows", f"{result.rows + result.duplicates_dropped:,}"),
            ("重复行 / exact duplicates dropped", f"{result.duplicates_dropped:,}"),
            ("新增 / inserted", f"{result.inserted:,}"),
            ("更新 / updated", f"{result.updated:,}"),
            ("未变 / unchanged", f"{result.unchanged:,}"),
            ("库中共有 / stored", f"{result.stored:,}"),
            ("首根K线开始 / first bar start", f"{result.first:%Y-%m-%d %H:%M} (Asia/Shanghai)"),
            ("末根K线开始 / last bar start", f"{result.last:%Y-%m-%d %H:%M} (Asia/Shanghai)"),
            ("用时 / seconds", f"{result.seconds:.1f}"),
        ],
        ITEM_VALUE,
    )


def print_stored(series: Sequence[data_collector.StoredSeries]) -> None:
    """What the database holds: one row a symbol and interval, with its count and first and last bar."""
    print_table(
        [
            (s.vt_symbol, s.interval, f"{s.count:,}", f"{s.first:%Y-%m-%d %H:%M}", f"{s.last:%Y-%m-%d %H:%M}")
            for s in series
        ],
        ("合约 / vt_symbol", "周期 / interval", "数量 / count", "首条 / first", "末条 / last"),
    )


WINDOW_HEADERS: tuple[str, ...] = (
    "时段 / window",
    "时段数 / sessions",
    "不完整 / incomplete",
    "应有分钟 / expected",
    "缺失分钟 / missing",
)


def print_data_check(report: data_check.DataCheck) -> None:
    """The check's lines and its table of windows."""
    for line in report.lines():
        print(line)
    if report.windows:
        print()
        print_table(
            [
                (
                    f"{w.window[0]:%H:%M}-{w.window[1]:%H:%M}",
                    f"{w.sessions:,}",
                    f"{w.incomplete:,}",
                    f"{w.expected:,}",
                    f"{w.missing:,}",
                )
                for w in report.windows
            ],
            WINDOW_HEADERS,
        )


def print_continuous(result: data_collector.ContinuousResult, interval: str) -> None:
    """What `continuous` stored: the series, its contracts and bars, and the roll table."""
    table = result.table
    print(f"主力连续已保存 / series stored: {result.vt_symbol} {interval}，复权 / adjust {result.adjust}")
    print_table(
        [
            ("各月合约 / contracts read", f"{len(result.contracts)}：{', '.join(result.contracts)}"),
            ("合约K线 / contract bars read", f"{result.source_bars:,}"),
            ("连续K线 / series bars", f"{table['bars']:,}（替换旧序列 / old series replaced）"),
            ("首根 / first bar", table["first_bar"][:16]),
            ("末根 / last bar", table["last_bar"][:16]),
            ("换月 / rolls", f"{len(table['rolls'])}"),
            ("换月表 / roll table", str(result.table_path)),
            ("用时 / seconds", f"{result.seconds:.1f}"),
        ],
        ITEM_VALUE,
    )
    if table["rolls"]:
        print()
        print_table(
            [
                (
                    r["decided_day"],
                    r["effective_day"],
                    f"{r['old_symbol']} → {r['new_symbol']}",
                    f"{r['old_price']:g}",
                    f"{r['new_price']:g}",
                    f"{r['factor']:.6f}",
                    f"{r['offset']:+g}",
                )
                for r in table["rolls"]
            ],
            (
                "决定日 / decided",
                "生效日 / effective",
                "换月 / roll",
                "旧合约价 / old",
                "新合约价 / new",
                "比例 / factor",
                "价差 / offset",
            ),
        )


AUDIT_HEADERS: tuple[str, ...] = (
    "列 / column",
    "结论 / verdict",
    "失败切点 / cuts failed",
    "首个不一致 / first time",
    "最大差异 / max difference",
)


def print_audit(result: data_processor.AuditResult, cuts: int) -> None:
    """The look-ahead audit's table of columns and its verdict line."""
    print_table(result.rows(), AUDIT_HEADERS)
    checked = len(result.columns)
    leaking = result.leaking_columns
    print()
    print(
        f"检查 {checked} 列，{cuts} 个切点，泄漏 {len(leaking)} 列 / "
        f"checked {checked} columns at {cuts} cut points: {len(leaking)} leaking"
        + (f" ({', '.join(leaking)})" if leaking else "")
    )


# --- models: train, model ----------------------------------------------------------------------


METRIC_NAMES: tuple[str, ...] = ("mse", "mae", "directional_accuracy", "ic", "rank_ic")


METRIC_HEADERS: tuple[str, ...] = ("指标 / metric", "模型 / model", "零预测 / zero", "上期方向 / last-return sign")


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"


def print_metrics(metrics: dict[str, Any]) -> None:
    """The test metrics beside the naive baselines."""
    rows = [
        (name, *(_number(metrics[column][name]) for column in ("model", "zero", "last_return_sign")))
        for name in METRIC_NAMES
    ]
    print_table(rows, METRIC_HEADERS)


def print_test_part(model: ml_model.PricePredictionModel) -> None:
    """A trained bundle's decision (chosen on validation), its drift figures and the test metrics."""
    print_decision(model.metadata)
    metrics = model.metrics["test"]
    print(f"\n测试集 / test part: {metrics['samples']:,} 个样本，阈值 / threshold {model.threshold:.6f}")
    print_metrics(metrics)


def print_horizon_search(decisions: dict[int, ThresholdChoice], chosen: int) -> None:
    """Each horizon's validation simulation, the kept one marked."""
    rows = [
        (
            f"{horizon}{' *' if horizon == chosen else ''}",
            f"{d.threshold:.6f}",
            f"{d.net_pnl:,.2f}",
            d.trades,
            f"{d.trades_per_day:.2f}",
            d.edge,
        )
        for horizon, d in decisions.items()
    ]
    print()
    print_table(
        rows,
        ("周期 / horizon", "阈值 / threshold", "验证净盈亏 / valid net P&L", "成交 / fills", "日均 / per day", "edge"),
    )


def print_decision(metadata: dict[str, Any]) -> None:
    """What the strategy simulation on the validation part chose, with the real costs, and the drift check."""
    decision = metadata.get("decision") or {}
    if not decision:
        return
    print(
        f"\n验证期策略模拟 / validation simulation (round-trip cost {decision['round_trip_cost'] * 1e4:.1f} bp): "
        f"阈值 / threshold {decision['threshold']:.6f}，净盈亏 / net P&L {decision['net_pnl']:,.2f}，"
        f"成交 / trades {decision['trades']}（{decision['trades_per_day']:.2f}/日 / per day），"
        f"开多 / long entries {decision['long_entries']}，开空 / short entries {decision['short_entries']}"
    )
    if decision["edge"] == "none":
        print(
            "结论 / verdict: edge: none —— 扣除真实成本后验证期没有任何阈值赚钱，策略不会用此模型开仓；"
            "--threshold 可强制覆盖（不建议）/ no threshold made money on validation after costs: the strategy "
            "will not open with this bundle"
        )
    else:
        print("结论 / verdict: edge: positive —— 验证期扣除成本后为正 / net positive on validation after costs")
    drift = metadata.get("drift") or {}
    if drift:
        rows = [
            (
                part,
                _number(values["mean_label"]),
                _number(values["mean_prediction"]),
                f"{values['long_share']:.1%}",
                f"{values['short_share']:.1%}",
            )
            for part, values in drift.items()
        ]
        print_table(
            rows,
            (
                "部分 / part",
                "平均标签 / mean label",
                "平均预测 / mean prediction",
                "做多信号 / long",
                "做空信号 / short",
            ),
        )


def print_walk_forward(folds: Sequence[ml_model.WalkForwardFold]) -> None:
    """Each fold's test part, then one row a fold: its test span and scores beside the zero prediction."""
    rows = []
    for fold in folds:
        print_test_part(fold.model)
        test = fold.model.metrics["test"]
        tested = fold.model.metadata["ranges"]["test"]
        scores = [_number(test["model"][m]) for m in ("directional_accuracy", "ic", "rank_ic")]
        ratio = _number(test["zero"]["mse"] / test["model"]["mse"] if test["model"]["mse"] else None)
        rows.append((fold.fold, fold.path.name, tested[0][:10], tested[1][:10], test["samples"], *scores, ratio))
    print()
    print_table(
        rows,
        (
            "折 / fold",
            "模型包 / bundle",
            "测试起 / test from",
            "测试止 / to",
            "样本 / samples",
            "方向准确率 / dir. acc.",
            "IC",
            "rank IC",
            "零预测MSE/模型MSE",
        ),
    )


def print_model(model: ml_model.PricePredictionModel) -> None:
    """What a loaded bundle is, its validation decision, test metrics and top features."""
    meta = model.metadata
    ranges = meta.get("ranges", {})
    rows = [
        ("模型包 / bundle", str(model.path)),
        ("封印 / seal", model.seal[:16]),
        ("类型 / type", model.model_type),
        ("合约 / vt_symbol", meta["vt_symbol"]),
        ("K线周期 / interval", meta["interval"]),
        ("窗口 × 特征 / window × features", f"{meta['sequence_length']} × {len(model.names)}"),
        ("预测周期 / horizon", meta["horizon"]),
        ("标签 / label kind", meta["label_kind"]),
        ("特征集 / feature set", model.config.feature_set),
        ("阈值 / threshold", f"{model.threshold:.6f}"),
        ("验证期结论 / edge", (meta.get("decision") or {}).get("edge", "-")),
        *((f"{part} / range", f"{a[:16]} ~ {b[:16]}") for part, (a, b) in ranges.items()),
        ("创建于 / created", meta.get("created_at", "")),
    ]
    print_table(rows, ITEM_VALUE)
    print_decision(meta)
    if "test" in model.metrics:
        print()
        print_metrics(model.metrics["test"])
    print_importance(meta.get("importance"))


IMPORTANCE_HEADERS: tuple[str, ...] = (
    "特征 / feature",
    "置换 IC 降幅 / permutation IC drop",
    "置换 MSE 增幅 / MSE rise",
    "森林重要性 / forest",
    "训练期秩 IC / train rank IC",
)


def print_importance(importance: dict[str, Any] | None, count: int = 10) -> None:
    """The features the model uses most: shuffling each on validation (ml_model.feature_importance), largest first."""
    if not importance:
        return
    names = list(importance["features"])
    forest = importance.get("forest") or [None] * len(names)
    columns = {name: k for k, name in enumerate(names)}
    rows = []
    for name in ml_model.top_features(importance, count):
        k = columns[name]
        values = (importance["permutation_ic_drop"][k], importance["permutation_mse_rise"][k], forest[k])
        rows.append((name, *(_number(v) for v in values), _number(importance["train_rank_ic"][k])))
    print(
        f"\n最重要的 {len(rows)} 个特征 / top features: 验证期 {importance['validation_windows']:,} 个窗口逐一打乱 "
        f"/ each shuffled across validation windows (seed {importance['seed']})"
    )
    print_table(rows, IMPORTANCE_HEADERS)


# --- backtests: backtest, optimize, demo -------------------------------------------------------


SUMMARY_ROWS: tuple[tuple[str, str, str], ...] = (
    ("total_net_pnl", "净盈亏 / net P&L", "{:,.2f}"),
    ("total_return", "总收益率 / return %", "{:.2f}"),
    ("annual_return", "年化收益率 / annual return %", "{:.2f}"),
    ("max_ddpercent", "最大回撤 / max drawdown %", "{:.2f}"),
    ("sharpe_ratio", "夏普比率 / Sharpe", "{:.2f}"),
    ("total_trade_count", "成交笔数 / trades", "{:,}"),
    ("long_entries", "开多次数 / long entries", "{:,}"),
    ("short_entries", "开空次数 / short entries", "{:,}"),
    ("trades_per_day", "日均成交 / trades per day", "{:.2f}"),
    ("expected_trades_per_day", "验证期日均成交 / expected per day", "{:.2f}"),
    ("edge", "验证期结论 / edge", "{}"),
    ("total_commission", "手续费 / commission", "{:,.2f}"),
    ("total_slippage", "滑点成本 / slippage", "{:,.2f}"),
    ("buy_and_hold_return", "买入持有收益率 / buy & hold %", "{:.2f}"),
)


def statistic_text(statistics: dict[str, Any], key: str, pattern: str) -> str:
    """One backtest statistic by its SUMMARY_ROWS pattern, "-" when the run has none."""
    value = statistics.get(key)
    return "-" if value is None else pattern.format(value)


def print_in_sample(note: str) -> None:
    """The IN-SAMPLE line (backtesting_module.in_sample_note) that opens an in-sample run's summary."""
    if note:
        print(f"样本内 / {note}")


def print_backtest_summary(statistics: dict[str, Any], in_sample_note: str = "") -> None:
    """The key statistics of one backtest, after the IN-SAMPLE line when it ran in sample."""
    print_in_sample(in_sample_note)
    print_table([(label, statistic_text(statistics, key, pattern)) for key, label, pattern in SUMMARY_ROWS], ITEM_VALUE)


DEMO_COLUMNS: tuple[str, ...] = (
    "total_net_pnl",
    "total_return",
    "max_ddpercent",
    "sharpe_ratio",
    "total_trade_count",
    "long_entries",
    "short_entries",
    "trades_per_day",
    "expected_trades_per_day",
    "edge",
)


def print_demo_summary(summaries: dict[str, dict[str, Any]]) -> None:
    """The demo's bundles side by side: the DEMO_COLUMNS statistics of each one's backtest."""
    shown = [row for row in SUMMARY_ROWS if row[0] in DEMO_COLUMNS]
    rows = [
        (name, *(statistic_text(statistics, key, pattern) for key, _, pattern in shown))
        for name, statistics in summaries.items()
    ]
    print()
    print_table(rows, ("模型 / model", *(label for _, label, _ in shown)))


# --- live trading: trade, state, contracts -----------------------------------------------------


def print_trade_summary(system: live_trading.AITradingSystem, config: live_trading.StrategyConfig) -> None:
    """Orders, trades and the final position of the run."""
    strategy = system.cta_engine.strategies.get(config.name)
    orders = system.main_engine.get_all_orders()
    trades = system.main_engine.get_all_trades()
    rows = [
        ("策略 / strategy", config.name),
        ("合约 / contract", strategy.vt_symbol if strategy else config.vt_symbol),
        ("委托 / orders", len(orders)),
        ("成交 / trades", len(trades)),
        ("持仓 / position", strategy.pos if strategy else "-"),
        ("审计日志 / audit log", system.audit.path),
    ]
    accounts = [a for a in system.main_engine.get_all_accounts() if a.gateway_name == system.gateway_name]
    if accounts:
        rows.append(("账户权益 / balance", f"{accounts[-1].balance:.2f}"))
    if strategy is not None and strategy.risk is not None:
        book = strategy.risk.state
        pnl = book.book_equity(strategy.risk.spec.size) - book.capital
        rows.append(("策略账本盈亏 / book P&L", f"{pnl:.2f}"))
        rows.append(("其中滑点 / of which slippage", f"{book.slippage_cost:.2f}"))
    if system.collector is not None:
        stats = system.collector.stats
        rows += [("记录 tick / ticks recorded", stats.ticks_stored), ("记录K线 / bars recorded", stats.bars_stored)]
    print_table(rows, ITEM_VALUE)


def print_states(folder: Path, states: dict[str, dict[str, Any]]) -> None:
    """The strategies' saved live state: trading day, position, book, halt and hold, last bar, model."""
    rows = []
    for name, state in states.items():
        risk = state.get("risk") or {}
        halt = f"是 / yes：{risk.get('halt_reason', '')}" if risk.get("halted") else "否 / no"
        held = f"是 / yes：{risk.get('hold_reason', '')}" if risk.get("held") else "否 / no"
        model = state.get("model") or {}
        rows += [
            (name, "交易日 / trading day", state.get("trading_day")),
            ("", "持仓 / position", state.get("pos")),
            ("", "已实现盈亏 / realised", risk.get("realised")),
            ("", "手续费 / commission", risk.get("commission")),
            ("", "日初权益 / day-start equity", risk.get("day_start_equity")),
            ("", "熔断 / halted", halt),
            ("", "暂停开仓 / opening held", held),
            ("", "最后K线 / last bar", state.get("last_bar")),
            ("", "模型 / model", model.get("name")),
            ("", "保存于 / saved at", state.get("saved_at")),
        ]
    print(f"状态目录 / folder: {folder}")
    print_table(rows, ("策略 / strategy", "项目 / item", "值 / value"))


def print_contract_days(continuous: str, product: str, days: Sequence[ContractDay], main: str) -> None:
    """A product's contracts in the gateway's snapshot, with volume and open interest, the main one starred."""
    print(f"{continuous} 的合约（{days[0].trading_day} 的行情快照）/ contracts of {product}")
    rows = [
        (day.symbol, f"{day.volume:,.0f}", f"{day.open_interest:,.0f}", "★ 主力 / main" if day.symbol == main else "")
        for day in days
    ]
    print_table(rows, ("合约 / contract", "成交量 / volume", "持仓量 / open interest", "主力 / main"))
