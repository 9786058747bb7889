"""Alert mails through a real local SMTP server, health checks, heartbeat, daily summary and the monitor CLI."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

import monitor
from config import CHINA_TZ, AuditLog, ConfigError, EmailSettings, Home, MonitorSettings, TransientError
from monitor import Alert, AlertMailer, HealthIssue, SystemMonitor
from tests.conftest import run_python

PASSWORD = "s3cret-Pa55word-xyz"
USER = "desk"
MONDAY = datetime(2025, 1, 6, tzinfo=CHINA_TZ)  # a weekday; 2025-01-05 is a Sunday


def at(day: datetime, hh: int, mm: int, ss: int = 0) -> datetime:
    return day.replace(hour=hh, minute=mm, second=ss)


def free_port() -> int:
    """A loopback port nobody listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until the predicate holds, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.005)


class Collector:
    """An aiosmtpd handler that keeps every message it receives and refuses the recipients it is told to."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.refuse: set[str] = set()

    async def handle_RCPT(
        self,
        server: Any,
        session: Any,
        envelope: Any,
        address: str,  # noqa: N802
        rcpt_options: list[str],
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 OK"


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USER.encode()
        and (auth_data.password == PASSWORD.encode())
    )
    return AuthResult(success=ok, handled=False)


class LocalSmtp:
    """A real SMTP server on 127.0.0.1 (optionally with AUTH over plain text) that can be started late."""

    def __init__(self, port: int, auth: bool = False) -> None:
        self.port = port
        self.collector = Collector()
        extra: dict[str, Any] = {"auth_require_tls": False, "authenticator": _authenticate} if auth else {}
        self.controller = Controller(self.collector, hostname="127.0.0.1", port=port, **extra)
        self.running = False

    @property
    def messages(self) -> list[EmailMessage]:
        return self.collector.messages

    def start(self) -> LocalSmtp:
        self.controller.start()
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self.controller.stop()
            self.running = False


@pytest.fixture
def servers() -> Iterator[Callable[..., LocalSmtp]]:
    """Make local SMTP servers (not started); all are stopped at the end."""
    made: list[LocalSmtp] = []

    def make(port: int | None = None, auth: bool = False) -> LocalSmtp:
        made.append(LocalSmtp(port or free_port(), auth))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def mailers() -> Iterator[Callable[..., AlertMailer]]:
    """Make AlertMailers; each is stopped at the end."""
    made: list[AlertMailer] = []

    def make(settings: EmailSettings, password: str = "", throttle: float = 600.0, **kwargs: Any) -> AlertMailer:
        made.append(AlertMailer(settings, password, throttle, **kwargs))
        return made[-1]

    yield make
    for mailer in made:
        mailer.stop(timeout=0)


def email_settings(port: int, username: str = "", **changes: Any) -> EmailSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": username,
        "sender": "desk@example.com",
        "recipients": "ops@example.com, risk@example.com",
        "timeout_seconds": 2.0,
    }
    return EmailSettings(**{**values, **changes})


class FakeClock:
    """A settable China-time clock for SystemMonitor."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeMonotonic:
    """A settable monotonic clock for AlertMailer's throttle."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


class FakeEngine:
    """Records what the monitor registers on it."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Callable[[Any], None]]] = {}

    def register(self, event_type: str, handler: Callable[[Any], None]) -> None:
        self.handlers.setdefault(event_type, []).append(handler)

    def unregister(self, event_type: str, handler: Callable[[Any], None]) -> None:
        self.handlers[event_type].remove(handler)
        if not self.handlers[event_type]:
            del self.handlers[event_type]


@dataclass
class Event:
    """The shape of vnpy's Event the handlers read."""

    type: str
    data: Any = None


def strategy_event(name: str = "rb_ai", **variables: Any) -> Event:
    values = {
        "inited": True,
        "trading": True,
        "pos": 1,
        "model_name": "rf_rb",
        "risk_state": "OK",
        "prediction_value": 0.0012,
        **variables,
    }
    return Event(
        "eCtaStrategy",
        {
            "strategy_name": name,
            "vt_symbol": "rb0000.SHFE",
            "class_name": "X",
            "author": "",
            "parameters": {},
            "variables": values,
        },
    )


def make_monitor(clock: FakeClock, mailer: AlertMailer, product: str = "rb", **settings: Any) -> SystemMonitor:
    chosen = MonitorSettings(**{"daily_summary_time": "", **settings})
    watcher = SystemMonitor(chosen, mailer, clock=clock)
    watcher.attach(FakeEngine(), product)
    return watcher


def checks(issues: list[HealthIssue]) -> dict[str, str]:
    return {issue.check: issue.severity for issue in issues}


# --- AlertMailer ----------------------------------------------------------------------------------------------


def test_alert_arrives_through_local_smtp_with_login_and_the_password_is_never_shown(
    servers: Callable[..., LocalSmtp],
    mailers: Callable[..., AlertMailer],
    home: Home,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="monitor")
    server = servers(auth=True).start()
    audit = AuditLog(home.audit_path)
    mailer = mailers(email_settings(server.port, username=USER), PASSWORD, audit=audit)
    assert mailer.send_alert(f"网关登录失败 password={PASSWORD} / login failed", "CRITICAL") is True
    wait_for(lambda: len(server.messages) == 1 and mailer.stats.delivered == 1)
    mail = server.messages[0]
    assert mail["Subject"] == "[AI Trader][CRITICAL] 网关登录失败 password=*** / login failed"
    assert mail["From"] == "desk@example.com"
    assert mail["To"] == "ops@example.com, risk@example.com"
    body = mail.get_content()
    assert "级别 / severity: CRITICAL" in body and "网关登录失败 password=***" in body
    assert PASSWORD not in mail.as_string()
    assert PASSWORD not in caplog.text and "网关登录失败" in caplog.text
    audited = audit.read()
    assert [(e["event"], e["severity"]) for e in audited] == [("alert", "CRITICAL")]
    assert PASSWORD not in home.audit_path.read_text(encoding="utf-8")
    assert mailer.stats == monitor.MailerStats(queued=0, delivered=1, merged=0, failed_attempts=0, dropped=0)


def test_send_now_with_a_wrong_password_is_a_config_error(
    servers: Callable[..., LocalSmtp], mailers: Callable[..., AlertMailer]
) -> None:
    server = servers(auth=True).start()
    mailer = mailers(email_settings(server.port, username=USER), "wrong-password")
    with pytest.raises(ConfigError, match="拒绝登录") as error:
        mailer.send_now("subject", "body")
    assert f"127.0.0.1:{server.port}" in str(error.value) and "535" in str(error.value)
    assert server.messages == []


def test_send_alert_never_blocks_while_the_server_is_down_and_delivers_each_alert_once_when_it_returns(
    servers: Callable[..., LocalSmtp], mailers: Callable[..., AlertMailer]
) -> None:
    port = free_port()
    mailer = mailers(email_settings(port), retry_initial=0.01, retry_max=0.05)
    durations = []
    for number in range(50):
        started = time.perf_counter()
        assert mailer.send_alert(f"alert {number}", "WARNING") is True
        durations.append(time.perf_counter() - started)
    wait_for(lambda: mailer.stats.failed_attempts >= 3)
    print(f"send_alert max {max(durations) * 1000:.3f} ms while the server is down")
    assert max(durations) < 0.05
    server = servers(port).start()
    wait_for(lambda: len(server.messages) == 50 and mailer.stats.delivered == 50, timeout=10)
    time.sleep(0.1)  # a duplicate would show up by now
    subjects = sorted(str(m["Subject"]) for m in server.messages)
    assert subjects == sorted(f"[AI Trader][WARNING] alert {n}" for n in range(50))
    stats = mailer.stats
    assert (stats.delivered, stats.queued, stats.dropped) == (50, 0, 0)


def test_duplicates_within_the_throttle_window_merge_and_the_next_mail_counts_them(
    servers: Callable[..., LocalSmtp], mailers: Callable[..., AlertMailer]
) -> None:
    server = servers().start()
    clock = FakeMonotonic()
    mailer = mailers(email_settings(server.port), throttle=600, clock=clock)
    assert mailer.send_alert("CPU 95%", key="cpu") is True
    clock.value += 10
    assert [mailer.send_alert(f"CPU {96 + n}%", key="cpu") for n in range(4)] == [False] * 4
    assert mailer.send_alert("磁盘 / disk 95%", key="disk") is True  # another key is not merged
    wait_for(lambda: len(server.messages) == 2)
    clock.value += 600
    assert mailer.send_alert("CPU 97%", key="cpu") is True
    wait_for(lambda: len(server.messages) == 3)
    last = server.messages[-1]
    assert last["Subject"] == "[AI Trader][WARNING] CPU 97%"
    assert "此前 4 次相同告警在节流窗口内已合并" in last.get_content()
    assert "4 repeats merged" in last.get_content()
    assert "repeats merged" not in server.messages[0].get_content()
    assert mailer.stats.merged == 4
    digest = mailer.take_digest()
    assert digest.counts == {"WARNING": 7}
    assert [(a.key, a.count) for a in digest.alerts] == [("cpu", 0), ("disk", 0), ("cpu", 4)]


def test_full_queue_drops_the_oldest_with_a_log_line(
    servers: Callable[..., LocalSmtp],
    mailers: Callable[..., AlertMailer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(monitor, "MAX_QUEUE", 3)
    port = free_port()
    mailer = mailers(email_settings(port), retry_initial=0.05, retry_max=0.05)
    mailer.send_alert("first")
    wait_for(lambda: mailer.stats.failed_attempts >= 1)  # "first" is now the one being retried
    for name in ("a", "b", "c", "d", "e"):
        mailer.send_alert(name)
    assert (mailer.stats.dropped, mailer.stats.queued) == (2, 4)
    assert "告警队列已满" in caplog.text
    server = servers(port).start()
    wait_for(lambda: len(server.messages) == 4)
    assert [str(m["Subject"]).rsplit(" ", 1)[1] for m in server.messages] == ["first", "c", "d", "e"]


def test_stop_delivers_what_is_queued_and_gives_up_at_its_deadline(
    servers: Callable[..., LocalSmtp], mailers: Callable[..., AlertMailer], caplog: pytest.LogCaptureFixture
) -> None:
    server = servers().start()
    mailer = mailers(email_settings(server.port))
    for number in range(5):
        mailer.send_alert(f"queued {number}")
    mailer.stop(timeout=5)
    assert len(server.messages) == 5 and mailer.stats.delivered == 5
    mailer.stop()  # idempotent
    down = mailers(email_settings(free_port()), retry_initial=0.05)
    down.send_alert("never delivered")
    started = time.monotonic()
    down.stop(timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert down.stats.queued == 1 and "未送出" in caplog.text
    assert down.send_alert("after stop") is True and down.stats.queued == 1


def test_send_now_reports_the_exact_failure(mailers: Callable[..., AlertMailer]) -> None:
    port = free_port()
    with pytest.raises(TransientError, match=f"127.0.0.1:{port}.*连接被拒绝 / connection refused"):
        mailers(email_settings(port)).send_now("s", "b")
    with pytest.raises(ConfigError, match="settings/email.json"):
        mailers(EmailSettings()).send_now("s", "b")
    with pytest.raises(ConfigError, match="只允许本机服务器"):  # refused before any connection is tried
        mailers(email_settings(25, host="smtp.example.com")).send_now("s", "b")


def test_ssl_against_a_plain_server_is_a_config_error(
    servers: Callable[..., LocalSmtp], mailers: Callable[..., AlertMailer]
) -> None:
    server = servers().start()
    with pytest.raises(ConfigError, match="TLS"):
        mailers(email_settings(server.port, security="ssl")).send_now("s", "b")


def test_starttls_against_a_server_without_it_is_a_config_error(
    servers: Callable[..., LocalSmtp], mailers: Callable[..., AlertMailer]
) -> None:
    server = servers().start()
    with pytest.raises(ConfigError, match="STARTTLS|starttls"):
        mailers(email_settings(server.port, security="starttls")).send_now("s", "b")


def test_a_mail_refused_for_good_is_dropped_and_the_queue_goes_on(
    servers: Callable[..., LocalSmtp], mailers: Callable[..., AlertMailer], caplog: pytest.LogCaptureFixture
) -> None:
    server = servers().start()
    server.collector.refuse = {"ops@example.com", "risk@example.com"}
    mailer = mailers(email_settings(server.port), retry_initial=0.01)
    mailer.send_alert("refused")
    wait_for(lambda: mailer.stats.dropped == 1)
    assert "拒绝收件人" in caplog.text and "550" in caplog.text
    server.collector.refuse = set()
    mailer.send_alert("accepted")
    wait_for(lambda: mailer.stats.delivered == 1)
    assert [str(m["Subject"]) for m in server.messages] == ["[AI Trader][WARNING] accepted"]


def test_without_a_host_alerts_are_logged_and_audited_only(
    mailers: Callable[..., AlertMailer], home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(home.audit_path)
    mailer = mailers(EmailSettings(), audit=audit)
    assert mailer.enabled is False
    assert mailer.send_alert("磁盘将满 / disk nearly full", "critical") is True
    assert mailer.send_alert("磁盘将满 / disk nearly full", "CRITICAL") is False
    assert [(e["severity"], e["merged"]) for e in audit.read()] == [("CRITICAL", False), ("CRITICAL", True)]
    assert "磁盘将满" in caplog.text
    assert mailer.stats.queued == 0 and mailer._thread is None


def test_alert_key_defaults_to_the_message() -> None:
    assert Alert("x").key == "x"
    assert Alert("x", "INFO", "k").key == "k"
    with pytest.raises(ValueError, match="severity"):
        Alert("x", "FATAL")


# --- SystemMonitor ---------------------------------------------------------------------------------------------


def test_event_callbacks_are_not_delayed_while_the_smtp_server_hangs(
    mailers: Callable[..., AlertMailer], home: Home
) -> None:
    from vnpy.event import Event as VnpyEvent
    from vnpy.event import EventEngine
    from vnpy.trader.event import EVENT_TICK, EVENT_TIMER

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(128)
        port = int(silent.getsockname()[1])
        # each attempt hangs for 0.5 s: an alert sent on the event thread would delay ticks by that much
        mailer = mailers(email_settings(port, timeout_seconds=0.5), throttle=0, retry_initial=0.01, retry_max=0.02)
        clock = FakeClock(at(MONDAY, 10, 0))
        settings = MonitorSettings(
            cpu_percent=0.001,
            memory_percent=0.001,
            disk_percent=0.001,
            check_interval_seconds=1,
            heartbeat_interval_seconds=1,
            daily_summary_time="",
        )
        watcher = SystemMonitor(settings, mailer, heartbeat_path=home.heartbeat_path, disk_path=home.root, clock=clock)
        engine = EventEngine()
        latencies: list[float] = []
        engine.register(EVENT_TICK, lambda event: latencies.append(time.perf_counter() - event.data))
        watcher.attach(engine, "rb0000.SHFE")
        engine.start()
        try:
            for number in range(200):
                if number % 10 == 0:
                    clock.advance(1)
                    engine.put(VnpyEvent(EVENT_TIMER))
                engine.put(VnpyEvent(EVENT_TICK, time.perf_counter()))
                time.sleep(0.001)
            wait_for(lambda: len(latencies) == 200 and mailer.stats.failed_attempts >= 1)
        finally:
            watcher.detach()
            engine.stop()
    print(
        f"tick handler latency max {max(latencies) * 1000:.3f} ms, failed mail attempts "
        f"{mailer.stats.failed_attempts}, alerts waiting {mailer.stats.queued}"
    )
    assert max(latencies) < 0.1
    status = watcher.status()
    assert status["market_data"]["ticks"] == 200
    assert status["handler_errors"] == 0
    assert mailer.stats.delivered == 0 and mailer.stats.queued >= 20 * 3
    assert json.loads(home.heartbeat_path.read_text(encoding="utf-8"))["pid"] == os.getpid()


def test_attach_registers_four_handlers_and_detach_removes_them(mailers: Callable[..., AlertMailer]) -> None:
    from vnpy.trader.event import EVENT_TICK, EVENT_TIMER, EVENT_TRADE
    from vnpy_ctastrategy.base import EVENT_CTA_STRATEGY

    engine = FakeEngine()
    watcher = SystemMonitor(MonitorSettings(), mailers(EmailSettings()))
    watcher.attach(engine, "rb0000.SHFE")
    assert sorted(engine.handlers) == sorted([EVENT_TICK, EVENT_TIMER, EVENT_TRADE, EVENT_CTA_STRATEGY])
    assert watcher.status()["product"] == "rb"
    watcher.detach()
    watcher.detach()
    assert engine.handlers == {}


def test_handlers_swallow_their_own_errors(
    mailers: Callable[..., AlertMailer], caplog: pytest.LogCaptureFixture
) -> None:
    watcher = make_monitor(FakeClock(at(MONDAY, 10, 0)), mailers(EmailSettings()))
    watcher.on_strategy(Event("eCtaStrategy", "not a dict"))
    watcher.on_strategy(Event("eCtaStrategy", {"no": "name"}))
    assert watcher.status()["handler_errors"] == 2
    assert "事件处理器 monitor.strategy 出错" in caplog.text


def test_heartbeat_is_written_atomically_on_timer_events_at_its_interval(
    mailers: Callable[..., AlertMailer], home: Home
) -> None:
    clock = FakeClock(at(MONDAY, 10, 0))
    settings = MonitorSettings(heartbeat_interval_seconds=5, check_interval_seconds=3600, daily_summary_time="")
    watcher = SystemMonitor(settings, mailers(EmailSettings()), heartbeat_path=home.heartbeat_path, clock=clock)
    watcher.on_timer(Event("eTimer"))
    first = json.loads(home.heartbeat_path.read_text(encoding="utf-8"))
    assert first == {"pid": os.getpid(), "time": "2025-01-06T10:00:00.000+08:00", "unix": clock.now.timestamp()}
    clock.advance(3)
    watcher.on_timer(Event("eTimer"))
    assert json.loads(home.heartbeat_path.read_text(encoding="utf-8")) == first
    clock.advance(2)
    watcher.on_timer(Event("eTimer"))
    assert json.loads(home.heartbeat_path.read_text(encoding="utf-8"))["time"] == "2025-01-06T10:00:05.000+08:00"
    assert [p.name for p in home.run_dir.iterdir()] == ["trading.heartbeat"]  # no temporary file left behind


def test_stale_market_data_is_an_issue_only_inside_a_session_that_has_lasted_long_enough(
    mailers: Callable[..., AlertMailer],
) -> None:
    clock = FakeClock(at(MONDAY, 9, 50))
    watcher = make_monitor(clock, mailers(EmailSettings()), stale_data_seconds=180)
    watcher.set_gateway_state(True)
    watcher.on_tick(Event("eTick."))
    clock.now = at(MONDAY, 10, 0)
    stale = [issue for issue in watcher.check_health() if issue.check == "market_data"]
    assert [(i.severity, i.subject) for i in stale] == [("WARNING", "rb")]
    assert "600 秒没有行情" in stale[0].message
    for last_tick, now in (
        (at(MONDAY, 11, 25), at(MONDAY, 12, 0)),  # lunch
        (at(MONDAY - timedelta(days=2), 2, 50), at(MONDAY - timedelta(days=1), 3, 0)),  # Sunday
        (at(MONDAY - timedelta(days=3), 15, 0), at(MONDAY, 9, 2)),  # session only 2 min old
        (at(MONDAY, 10, 14), at(MONDAY, 10, 32)),
    ):  # the 10:15-10:30 break just ended
        clock.now = last_tick
        watcher.on_tick(Event("eTick."))
        clock.now = now
        assert "market_data" not in checks(watcher.check_health()), now
    clock.now = at(MONDAY, 9, 4)
    watcher._last_tick = at(MONDAY - timedelta(days=3), 15, 0)
    assert "market_data" in checks(watcher.check_health())


def test_gateway_not_connected_is_critical_during_a_session_only(mailers: Callable[..., AlertMailer]) -> None:
    clock = FakeClock(at(MONDAY, 10, 0))
    watcher = make_monitor(clock, mailers(EmailSettings()))
    watcher.on_tick(Event("eTick."))
    assert checks(watcher.check_health()) == {"gateway": "CRITICAL"}
    watcher.set_gateway_state(True, "CTP 登录成功")
    assert watcher.check_health() == []
    watcher.set_gateway_state(False, "前置断开 4097")
    issues = watcher.check_health()
    assert checks(issues) == {"gateway": "CRITICAL"} and "前置断开 4097" in issues[0].message
    clock.now = at(MONDAY, 12, 0)
    assert "gateway" not in checks(watcher.check_health())


def test_strategy_issues_silent_model_missing_and_risk_halted(mailers: Callable[..., AlertMailer]) -> None:
    clock = FakeClock(at(MONDAY, 10, 0))
    watcher = make_monitor(clock, mailers(EmailSettings()), strategy_silence_seconds=300)
    watcher.set_gateway_state(True)
    watcher.on_tick(Event("eTick."))
    watcher.on_strategy(strategy_event("ok"))
    watcher.on_strategy(strategy_event("halted", risk_state="HALTED: 日内亏损超限"))
    watcher.on_strategy(strategy_event("no_model", model_name=""))
    watcher.on_strategy(strategy_event("idle", trading=False))
    clock.advance(100)
    watcher.on_tick(Event("eTick."))
    watcher.on_strategy(strategy_event("ok"))
    clock.advance(250)  # 350 s since the other strategies' last event, 250 s since "ok"'s
    watcher.on_tick(Event("eTick."))
    found = {(i.check, i.subject): i.severity for i in watcher.check_health()}
    assert found == {
        ("strategy_silent", "halted"): "WARNING",
        ("strategy_silent", "no_model"): "WARNING",
        ("risk", "halted"): "CRITICAL",
        ("model", "no_model"): "CRITICAL",
    }
    watcher.set_model_loaded("ok", False)
    assert ("model", "ok") in {(i.check, i.subject) for i in watcher.check_health()}
    watcher.set_model_loaded("no_model", True)
    assert ("model", "no_model") not in {(i.check, i.subject) for i in watcher.check_health()}
    clock.now = at(MONDAY, 12, 30)  # lunch: silence is normal
    assert "strategy_silent" not in checks(watcher.check_health())
    assert watcher.status()["strategies"]["halted"]["risk_state"] == "HALTED: 日内亏损超限"


def test_resource_thresholds_come_from_the_settings(mailers: Callable[..., AlertMailer], home: Home) -> None:
    home.root.mkdir(parents=True)
    tiny = SystemMonitor(
        MonitorSettings(cpu_percent=0.001, memory_percent=0.001, disk_percent=0.001),
        mailers(EmailSettings()),
        disk_path=home.root,
    )
    psutil.cpu_percent(interval=None)
    end = time.perf_counter() + 0.1
    while time.perf_counter() < end:  # some CPU use to measure
        pass
    issues = tiny.check_resources()
    assert checks(issues) == {"cpu": "WARNING", "memory": "WARNING", "disk": "WARNING"}
    assert all("阈值 0.001%" in issue.message for issue in issues)
    full = SystemMonitor(
        MonitorSettings(memory_percent=100, disk_percent=100), mailers(EmailSettings()), disk_path=home.root
    )
    assert not {"memory", "disk"} & set(checks(full.check_resources()))
    assert full.status()["resources"]["disk_percent"] == pytest.approx(psutil.disk_usage(str(home.root)).percent)


def test_run_checks_alerts_each_issue_and_repeats_merge_by_check_and_subject(
    mailers: Callable[..., AlertMailer], home: Home
) -> None:
    audit = AuditLog(home.audit_path)
    mailer = mailers(EmailSettings(), audit=audit)
    clock = FakeClock(at(MONDAY, 10, 0))
    watcher = make_monitor(clock, mailer, memory_percent=0.001, disk_percent=0.001)
    clock.advance(600)
    first = watcher.run_checks()
    assert {"memory", "disk", "gateway", "market_data"} <= set(checks(first))
    clock.advance(30)
    second = watcher.run_checks()  # same checks, different figures and times: merged (CPU may come and go)
    first_keys = {issue.key for issue in first}
    repeated = [issue.key in first_keys for issue in second]
    assert {"memory:", "disk:", "gateway:", "market_data:rb"} <= {i.key for i in second} & first_keys
    assert mailer.stats.merged == sum(repeated)
    assert [e["merged"] for e in audit.read()] == [False] * len(first) + repeated
    assert watcher.status()["issues"] == [
        {"check": i.check, "message": i.message, "severity": i.severity, "subject": i.subject} for i in second
    ]


def test_daily_summary_is_sent_once_a_day_when_the_clock_crosses_its_time(
    servers: Callable[..., LocalSmtp], mailers: Callable[..., AlertMailer]
) -> None:
    server = servers().start()
    mailer = mailers(email_settings(server.port))
    clock = FakeClock(at(MONDAY, 15, 29, 58))
    watcher = make_monitor(clock, mailer, daily_summary_time="15:30", check_interval_seconds=1e9)
    watcher.on_strategy(strategy_event("rb_ai", pos=2))
    for _ in range(3):
        watcher.on_trade(Event("eTrade."))
    mailer.send_alert("测试告警 / test alert", "CRITICAL")
    for day in (MONDAY, MONDAY + timedelta(days=1)):
        clock.now = at(day, 15, 29, 58)
        for _ in range(6):
            clock.advance(1)
            watcher.on_timer(Event("eTimer"))
    clock.now = at(MONDAY + timedelta(days=1), 16, 0)
    watcher.on_timer(Event("eTimer"))
    wait_for(lambda: len(server.messages) == 3)  # the alert and two summaries
    time.sleep(0.05)
    summaries = [m for m in server.messages if "每日汇总" in str(m["Subject"])]
    assert [str(m["Subject"]) for m in summaries] == [
        "[AI Trader] 每日汇总 2025-01-06 / daily summary",
        "[AI Trader] 每日汇总 2025-01-07 / daily summary",
    ]
    monday, tuesday = (m.get_content() for m in summaries)
    assert "CRITICAL 1" in monday and "成交 / trades: 3" in monday
    assert "rb_ai rb0000.SHFE: 持仓 / pos 2" in monday and "风控 / risk OK" in monday
    assert "CRITICAL 0" in tuesday and "成交 / trades: 0" in tuesday


# --- command line and import hygiene ---------------------------------------------------------------------------


def write_email_settings(home: Home, **values: Any) -> None:
    home.settings_dir.mkdir(parents=True, exist_ok=True)
    (home.settings_dir / "email.json").write_text(json.dumps(values), encoding="utf-8")


def test_test_email_command_sends_through_the_configured_server(
    home: Home,
    servers: Callable[..., LocalSmtp],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = servers(auth=True).start()
    write_email_settings(
        home,
        host="127.0.0.1",
        port=server.port,
        security="none",
        username=USER,
        sender="desk@example.com",
        recipients="ops@example.com",
    )
    monkeypatch.setenv("AI_TRADER_SMTP_PASSWORD", PASSWORD)
    assert monitor.main(["--home", str(home.root), "--test-email"]) == 0
    assert "测试邮件已发送到 ops@example.com" in capsys.readouterr().out
    assert [str(m["Subject"]) for m in server.messages] == ["[AI Trader] 测试邮件 / test e-mail"]


def test_test_email_command_exit_codes_name_the_failure(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    write_email_settings(
        home,
        host="127.0.0.1",
        port=port,
        security="none",
        sender="desk@example.com",
        recipients="ops@example.com",
        timeout_seconds=2,
    )
    assert monitor.main(["--home", str(home.root), "--test-email"]) == 3
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "connection refused" in err
    write_email_settings(home)
    assert monitor.main(["--home", str(home.root), "--test-email"]) == 2
    assert "settings/email.json" in capsys.readouterr().err


def test_check_command_prints_the_resource_table(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    assert monitor.main(["--home", str(home.root), "--check"]) == 0
    out = capsys.readouterr().out
    assert "CPU" in out and "内存 / memory" in out and "磁盘 / disk" in out and "90%" in out


def test_importing_monitor_loads_no_vnpy_or_tensorflow_and_creates_nothing(tmp_path: Path) -> None:
    result = run_python(
        "import sys, monitor\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'vnpy', 'vnpy_ctastrategy', "
        "'tensorflow', 'pandas'}))",
        tmp_path / "home",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
