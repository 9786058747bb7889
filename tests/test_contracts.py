"""Contract symbols, delivery months and the main-contract rule."""

from __future__ import annotations

from datetime import date

import pytest

from config import ConfigError
from contracts import (
    ContractDay,
    MainChange,
    continuous_symbol,
    delivery_month,
    is_continuous,
    main_contract_changes,
    main_contract_on,
    split_symbol,
)


def test_split_symbol_reads_product_and_delivery_digits() -> None:
    assert split_symbol("rb2605") == ("rb", "2605")
    assert split_symbol("TA605.CZCE") == ("TA", "605")
    assert split_symbol("rb888.SHFE") == ("rb", "888")


@pytest.mark.parametrize("symbol", ["rb", "2605", "rb26050", "rb-2605", ""])
def test_split_symbol_rejects_what_is_not_a_contract(symbol: str) -> None:
    with pytest.raises(ConfigError, match="rb2605"):
        split_symbol(symbol)


def test_continuous_symbol_follows_vnpy_convention() -> None:
    assert continuous_symbol("rb") == "rb888"
    assert is_continuous("rb888.SHFE")
    assert not is_continuous("rb2605.SHFE")


def test_delivery_month_reads_czce_decade_from_the_trading_day() -> None:
    assert delivery_month("rb2605", date(2026, 1, 5)) == date(2026, 5, 1)
    assert delivery_month("TA605", date(2025, 12, 1)) == date(2026, 5, 1)
    assert delivery_month("TA605", date(2016, 1, 4)) == date(2016, 5, 1)
    assert delivery_month("TA001", date(2019, 6, 3)) == date(2020, 1, 1)
    assert delivery_month("TA909", date(2019, 6, 3)) == date(2019, 9, 1)
    with pytest.raises(ConfigError, match="13"):
        delivery_month("rb2613", date(2026, 1, 5))


def _day(symbol: str, day: int, open_interest: float, volume: float = 100.0) -> ContractDay:
    return ContractDay(symbol, date(2016, 3, day), volume, open_interest)


def test_main_contract_moves_after_the_close_that_shows_a_larger_open_interest() -> None:
    days = [
        _day("rb1605", 1, 900), _day("rb1610", 1, 500),
        _day("rb1605", 2, 700), _day("rb1610", 2, 800),
        _day("rb1605", 3, 600), _day("rb1610", 3, 900),
    ]  # fmt: skip
    changes = main_contract_changes(days)
    assert changes == [
        MainChange(date(2016, 3, 1), date(2016, 3, 2), "", "rb1605"),
        MainChange(date(2016, 3, 2), date(2016, 3, 3), "rb1605", "rb1610"),
    ]
    assert main_contract_on(changes, date(2016, 3, 1)) == ""
    assert main_contract_on(changes, date(2016, 3, 2)) == "rb1605"
    assert main_contract_on(changes, date(2016, 3, 3)) == "rb1610"


def test_main_contract_never_switches_back_to_an_earlier_delivery() -> None:
    days = [
        _day("rb1605", 1, 500), _day("rb1610", 1, 900),
        _day("rb1605", 2, 950), _day("rb1610", 2, 900),
    ]  # fmt: skip
    assert [c.new_symbol for c in main_contract_changes(days)] == ["rb1610"]


def test_main_contract_tie_goes_to_volume_then_later_delivery() -> None:
    by_volume = [_day("rb1605", 1, 800, volume=50), _day("rb1610", 1, 800, volume=60)]
    assert main_contract_changes(by_volume)[0].new_symbol == "rb1610"
    by_delivery = [_day("rb1610", 1, 800), _day("rb1605", 1, 800)]
    assert main_contract_changes(by_delivery)[0].new_symbol == "rb1610"


def test_a_change_decided_on_the_last_day_applies_from_any_later_day() -> None:
    days = [_day("rb1605", 1, 900), _day("rb1610", 1, 100), _day("rb1605", 2, 100), _day("rb1610", 2, 900)]
    changes = main_contract_changes(days)
    assert changes[-1] == MainChange(date(2016, 3, 2), None, "rb1605", "rb1610")
    assert main_contract_on(changes, date(2016, 3, 2)) == "rb1605"
    assert main_contract_on(changes, date(2016, 3, 3)) == "rb1610"
