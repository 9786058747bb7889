"""The AI desk app for VeighNa Trader: its engine carries out the control commands (halt, resume, flatten, switch
model) that the command line or the panel drop into the home's control spool (live_trading)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from vnpy.event import Event, EventEngine
from vnpy.trader.app import BaseApp
from vnpy.trader.engine import BaseEngine, MainEngine

from config import CHINA_TZ, AuditLog, Home, guarded
from live_trading import COMMAND_TTL_SECONDS, Command, answer, claim_commands

logger = logging.getLogger(__name__)

APP_NAME: str = "AiDesk"


class AiEngine(BaseEngine):
    """The app's engine: carries out control commands on the running strategies, on the event engine's thread (the
    thread their bars arrive on), each one audited."""

    def __init__(self, main_engine: MainEngine, event_engine: EventEngine) -> None:
        super().__init__(main_engine, event_engine, APP_NAME)
        self.home: Home | None = None
        self.audit: AuditLog | None = None
        self.strategies: Callable[[], dict[str, Any]] = dict

    def attach(self, home: Home, audit: AuditLog, strategies: Callable[[], dict[str, Any]]) -> None:
        """Start polling the home's control spool once a second (vnpy's timer) for these strategies."""
        from vnpy.trader.event import EVENT_TIMER

        self.home, self.audit, self.strategies = home, audit, strategies
        self.event_engine.register(EVENT_TIMER, guarded("ai_desk.control", self.on_timer, logger))

    def on_timer(self, event: Event) -> None:
        self.poll()

    def poll(self) -> int:
        """Carry out what waits in each strategy's inbox; how many commands were taken."""
        if self.home is None:
            return 0
        taken = 0
        for name in list(self.strategies()):
            for command in claim_commands(self.home, name):
                taken += 1
                self.carry_out(command)
        return taken

    def carry_out(self, command: Command) -> None:
        """One command: refused when stale or for an unknown strategy, else done (switch-model: answered when the
        bundle has been checked in the background)."""
        strategy = self.strategies().get(command.strategy)
        age = time.time() - command.created
        if age > COMMAND_TTL_SECONDS:
            self.finish(command, False, f"命令已过期（{age:.0f} 秒前发出）/ command expired")
        elif strategy is None or getattr(strategy, "risk", None) is None:
            self.finish(command, False, f"策略 {command.strategy} 未运行或模型未加载 / strategy not running")
        elif command.action == "halt":
            held = strategy.risk.held
            strategy.hold_opening(
                "manual", f"人工暂停开仓（{command.by}）/ opening halted by hand", self.bar_time(strategy)
            )
            self.finish(command, True, "已在暂停中 / already held" if held else "已暂停开仓 / opening held")
        elif command.action == "resume":
            resumed = strategy.resume_opening(command.by)
            self.finish(command, resumed, "已恢复开仓 / resumed" if resumed else "没有暂停可恢复 / nothing held")
        elif command.action == "flatten":
            strategy.flatten(command.by)
            self.finish(command, True, f"平仓中，持仓 {strategy.pos:g}，暂停开仓 / flattening, opening held")
        else:
            strategy.request_switch(command.bundle, command.by, lambda ok, text: self.finish(command, ok, text))

    @staticmethod
    def bar_time(strategy: Any) -> datetime | None:
        bar = getattr(strategy, "last_bar", None)
        return bar.datetime if bar is not None else None

    def finish(self, command: Command, ok: bool, message: str) -> None:
        """Audit the command and its outcome, and answer the sender."""
        assert self.home is not None and self.audit is not None
        self.audit.write(
            "control",
            strategy=command.strategy,
            action=command.action,
            bundle=command.bundle or None,
            by=command.by,
            id=command.id,
            ok=ok,
            message=message,
            at=datetime.now(CHINA_TZ).isoformat(timespec="seconds"),
        )
        (logger.info if ok else logger.warning)("控制命令 %s %s：%s", command.action, command.strategy, message)
        answer(self.home, command, ok, message)


class AiDeskApp(BaseApp):
    """The AI desk as a VeighNa Trader app (its engine; the panel widget opens from the app menu)."""

    app_name: str = APP_NAME
    app_module: str = __name__
    app_path: Path = Path(__file__).parent
    display_name: str = "AI 交易台"
    engine_class: type[BaseEngine] = AiEngine
    widget_name: str = "AiPanel"
    icon_name: str = ""
