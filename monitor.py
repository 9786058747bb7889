"""Resource and health checks, the heartbeat file and e-mail alerts; this module never places orders."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import smtplib
import socket
import ssl
import sys
import threading
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import psutil

from config import (
    CHINA_TZ,
    SECRET_ENV,
    AppError,
    AppSettings,
    AuditLog,
    ConfigError,
    DataError,
    EmailSettings,
    GuardedHandler,
    Home,
    MonitorSettings,
    TransientError,
    guarded,
    install_redaction,
    json_safe,
    load_secrets,
    parse_clock,
    product_of,
    redact,
    register_secrets,
    resolve_home,
    settings_for,
    write_json_atomic,
)
from trading_calendar import is_trading_time

logger = logging.getLogger(__name__)

SEVERITIES: tuple[str, ...] = ("INFO", "WARNING", "CRITICAL")
LOG_LEVELS: dict[str, int] = {"INFO": logging.INFO, "WARNING": logging.WARNING, "CRITICAL": logging.CRITICAL}
SUBJECT_PREFIX: str = "[AI Trader]"
MAX_QUEUE: int = 1000  # alerts waiting for the SMTP server; the oldest is dropped beyond this
MAX_DIGEST: int = 200  # alerts kept for the daily summary
MAX_KEYS: int = 1000  # throttle entries kept before expired ones are pruned
SUBJECT_CHARS: int = 100
SESSION_PROBE_SECONDS: float = 60.0  # sessions start and end on whole minutes
EMAIL_HOWTO: str = (
    "未配置邮件服务器：请在 settings/email.json（或主目录的 settings/email.json）中设置 "
    "host、port、security（ssl/starttls/none）、username、sender、recipients，"
    f"密码放在环境变量 {SECRET_ENV['smtp_password']} 或加密密钥文件中 / "
    "e-mail is not configured: set host, port, security, username, sender and recipients in settings/email.json"
)


@dataclass(frozen=True)
class Alert:
    """One alert: `count` repeats of the same key were merged into it, the first of them seen at `first_seen`."""

    message: str
    severity: str = "WARNING"
    key: str = ""  # the de-duplication key; empty means the message
    first_seen: float = 0.0  # the mailer's clock
    count: int = 0
    at: datetime | None = None  # wall time (China) when it was raised

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        if not self.key:
            object.__setattr__(self, "key", self.message)


@dataclass(frozen=True)
class MailerStats:
    """A snapshot of the mailer's counters."""

    queued: int  # waiting now, the one being retried included
    delivered: int
    merged: int
    failed_attempts: int
    dropped: int


@dataclass(frozen=True)
class AlertDigest:
    """Alerts since the last digest: counts by severity (repeats included) and the alerts themselves."""

    counts: dict[str, int]
    alerts: list[Alert]


@dataclass
class _KeyState:
    """Throttle state of one alert key."""

    last_sent: float
    repeats: int = 0
    first_repeat: float = 0.0


@dataclass(frozen=True)
class _Mail:
    """One mail waiting to be sent."""

    subject: str
    body: str


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def email_settings_problem(settings: EmailSettings) -> str | None:
    """Why these settings cannot send mail, or None when they can."""
    if not settings.host:
        return EMAIL_HOWTO
    if settings.security == "none" and not is_loopback(settings.host):
        return (
            f"email.security 为 none（明文）只允许本机服务器，收到 {settings.host!r}；请改用 ssl 或 starttls / "
            "plain SMTP is allowed only for a server on this machine"
        )
    return None


def _normal_severity(severity: str) -> str:
    """The severity in upper case, WARNING when unknown."""
    level = str(severity).upper()
    return level if level in SEVERITIES else "WARNING"


def _reply_text(exc: smtplib.SMTPResponseException) -> str:
    """`code message` of an SMTP error reply."""
    text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    return f"{exc.smtp_code} {text}".strip()


def _failure_reason(exc: BaseException, timeout: float) -> str:
    """A short bilingual reason for a failed SMTP attempt."""
    if isinstance(exc, ConnectionRefusedError):
        return f"连接被拒绝 / connection refused ({exc})"
    if isinstance(exc, TimeoutError):
        return f"{timeout:g} 秒内无响应 / timed out after {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"无法解析主机名 / cannot resolve the host name ({exc})"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return f"服务器断开连接 / server disconnected ({exc})"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"服务器错误 / server error: {_reply_text(exc)}"
    return f"{type(exc).__name__}: {exc}"


def _refused_permanently(exc: smtplib.SMTPRecipientsRefused) -> bool:
    """Whether every refused recipient got a 5xx (permanent) reply."""
    return all(code >= 500 for code, _ in exc.recipients.values())


def _close_quietly(smtp: smtplib.SMTP) -> None:
    """QUIT, or just close the socket when the server is already gone."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def smtp_error(exc: BaseException, settings: EmailSettings) -> AppError:
    """A failed SMTP attempt as ConfigError (settings or message must change) or TransientError (retry)."""
    where = f"{settings.host}:{settings.port}"
    error: type[AppError] = ConfigError
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        text = (
            f"SMTP 服务器 {where} 拒绝登录（用户 {settings.username}）：{_reply_text(exc)}；"
            f"请检查 email.username 与 {SECRET_ENV['smtp_password']} / authentication refused"
        )
    elif isinstance(exc, smtplib.SMTPNotSupportedError):
        text = f"SMTP 服务器 {where} 不支持所需功能：{exc}；请检查 email.security / the server does not support it"
    elif isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = "; ".join(f"{addr}: {code} {msg!r}" for addr, (code, msg) in exc.recipients.items())
        error = ConfigError if _refused_permanently(exc) else TransientError
        text = f"SMTP 服务器 {where} 拒绝收件人 / recipients refused: {refused}"
    elif isinstance(exc, smtplib.SMTPSenderRefused | smtplib.SMTPDataError):
        error = ConfigError if exc.smtp_code >= 500 else TransientError
        text = f"SMTP 服务器 {where} 拒收邮件 / message refused: {_reply_text(exc)}"
    elif isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        text = (
            f"与 {where} 的 TLS 握手失败：{exc.reason or exc}；请检查 email.security 与 email.port / "
            "TLS handshake failed"
        )
    else:
        error = TransientError
        text = f"无法通过 {where} 发送邮件：{_failure_reason(exc, settings.timeout_seconds)} / cannot send e-mail"
    return error(redact(text))


class AlertMailer:
    """Sends alerts by e-mail from one background thread: throttled, de-duplicated, retried, never blocking."""

    def __init__(
        self,
        settings: EmailSettings,
        password: str,
        throttle_seconds: float,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        self.settings = settings
        self._password = password
        if password:
            register_secrets([password])
        self._throttle = max(0.0, throttle_seconds)
        self._audit = audit
        self._clock = clock
        self._retry_initial = max(0.001, retry_initial)
        self._retry_max = max(self._retry_initial, retry_max)
        self._problem = email_settings_problem(settings)
        self._problem_logged = False
        self._hostname = socket.gethostname()
        self._cond = threading.Condition()
        self._queue: deque[_Mail] = deque()
        self._current: _Mail | None = None
        self._keys: dict[str, _KeyState] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._deadline = 0.0
        self._counts = Counter[str]()  # delivered, merged, failed_attempts, dropped
        self._digest_counts = Counter[str]()
        self._digest_alerts: deque[Alert] = deque(maxlen=MAX_DIGEST)

    @property
    def enabled(self) -> bool:
        """Whether alerts are mailed (a host is set and the settings are usable)."""
        return self._problem is None

    @property
    def stats(self) -> MailerStats:
        """A snapshot of the counters."""
        with self._cond:
            waiting = len(self._queue) + (self._current is not None)
            counts = dict(self._counts)
        return MailerStats(
            waiting,
            counts.get("delivered", 0),
            counts.get("merged", 0),
            counts.get("failed_attempts", 0),
            counts.get("dropped", 0),
        )

    def start(self) -> None:
        """Start the background sender thread (idempotent; nothing to start when mail is off or stopped)."""
        with self._cond:
            if self._thread is not None or self._closed or not self.enabled:
                return
            self._thread = threading.Thread(target=self._run, name="alert-mailer", daemon=True)
            self._thread.start()

    def send_alert(self, message: str, severity: str = "WARNING", key: str | None = None) -> bool:
        """Log, audit and queue an alert; False when merged into an identical one inside the throttle window."""
        try:
            return self._accept(message, severity, key)
        except Exception:
            logger.exception("告警处理出错（已忽略）/ alert handling failed")
            return False

    def send_report(self, subject: str, body: str) -> bool:
        """Queue one mail with its own subject (the daily summary); not throttled; False when mail is off."""
        try:
            if not self.enabled:
                return False
            return self._enqueue(_Mail(redact(subject), redact(body)))
        except Exception:
            logger.exception("报告邮件入队失败（已忽略）/ queueing a report failed")
            return False

    def send_now(self, subject: str, body: str) -> None:
        """Send one mail synchronously; ConfigError or TransientError with the exact failure otherwise."""
        if self._problem is not None:
            raise ConfigError(self._problem)
        self._deliver(_Mail(redact(subject), redact(body)))

    def stop(self, timeout: float = 10.0) -> None:
        """Deliver what is queued within `timeout` seconds, then stop the sender thread (idempotent)."""
        with self._cond:
            first = not self._closed
            self._closed = True
            if first:
                self._deadline = time.monotonic() + max(0.0, timeout)
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, self._deadline - time.monotonic()) + 0.05)
        left = self.stats.queued
        if first and left:
            logger.error("邮件发送线程停止时仍有 %d 封告警未送出 / %d alert mails were not delivered", left, left)

    def take_digest(self) -> AlertDigest:
        """The alerts since the previous call (for the daily summary), and start a new period."""
        with self._cond:
            digest = AlertDigest(dict(self._digest_counts), list(self._digest_alerts))
            self._digest_counts.clear()
            self._digest_alerts.clear()
        return digest

    # --- the caller's side ---------------------------------------------------------------------------------

    def _accept(self, message: str, severity: str, key: str | None) -> bool:
        """Throttle, log, audit and maybe queue one alert."""
        text = redact(str(message))
        level = _normal_severity(severity)
        alert = self._throttled(text, level, redact(key) if key else text)
        merged = alert is None
        suffix = "（重复，已合并 / repeat merged）" if merged else ""
        logger.log(logging.INFO if merged else LOG_LEVELS[level], "告警 / alert [%s] %s%s", level, text, suffix)
        self._write_audit(level, text, merged)
        if alert is None:
            return False
        if self.enabled:
            self._enqueue(_Mail(self._subject(alert), self._body(alert)))
        elif self.settings.host and not self._problem_logged:
            self._problem_logged = True
            logger.error("告警邮件无法发送 / alert mails cannot be sent: %s", self._problem)
        return True

    def _throttled(self, text: str, level: str, key: str) -> Alert | None:
        """The alert to send, or None when it merges into one sent within the throttle window."""
        now = self._clock()
        with self._cond:
            self._digest_counts[level] += 1
            state = self._keys.get(key)
            if state is not None and now - state.last_sent < self._throttle:
                if state.repeats == 0:
                    state.first_repeat = now
                state.repeats += 1
                self._counts["merged"] += 1
                return None
            repeats, since = (state.repeats, state.first_repeat) if state and state.repeats else (0, now)
            self._keys[key] = _KeyState(now)
            alert = Alert(text, level, key, since, repeats, datetime.now(CHINA_TZ))
            self._digest_alerts.append(alert)
            if len(self._keys) > MAX_KEYS:
                self._prune_keys(now)
            return alert

    def _prune_keys(self, now: float) -> None:
        """Forget throttle entries whose window has passed and that hold no repeats."""
        for key in [k for k, s in self._keys.items() if now - s.last_sent >= self._throttle and not s.repeats]:
            del self._keys[key]

    def _write_audit(self, level: str, text: str, merged: bool) -> None:
        """One audit line for the alert; an unwritable audit file is logged, never raised."""
        if self._audit is None:
            return
        try:
            self._audit.write("alert", severity=level, message=text, merged=merged)
        except OSError as exc:
            logger.error("审计日志写入失败 / cannot write the audit log: %s", exc)

    def _subject(self, alert: Alert) -> str:
        """`[AI Trader][SEVERITY] first line of the message`."""
        first = alert.message.strip().splitlines()[0] if alert.message.strip() else "(空 / empty)"
        if len(first) > SUBJECT_CHARS:
            first = first[: SUBJECT_CHARS - 1] + "…"
        return f"{SUBJECT_PREFIX}[{alert.severity}] {first}"

    def _body(self, alert: Alert) -> str:
        """The mail text of one alert, with the merged repeats if any."""
        at = (alert.at or datetime.now(CHINA_TZ)).isoformat(timespec="seconds")
        lines = [
            f"级别 / severity: {alert.severity}",
            f"时间 / time: {at}",
            f"主机 / host: {self._hostname}（进程 / pid {os.getpid()}）",
            "",
            alert.message,
        ]
        if alert.count:
            span = max(0.0, self._clock() - alert.first_seen)
            lines += [
                "",
                f"此前 {alert.count} 次相同告警在节流窗口内已合并（{span:.0f} 秒内）/ "
                f"{alert.count} repeats merged within the throttle window (over {span:.0f} s)",
            ]
        return "\n".join(lines) + "\n"

    def _enqueue(self, mail: _Mail) -> bool:
        """Put a mail on the queue (dropping the oldest when full) and make sure the sender runs."""
        dropped: _Mail | None = None
        with self._cond:
            closed = self._closed
            if not closed:
                if len(self._queue) >= MAX_QUEUE:
                    dropped = self._queue.popleft()
                    self._counts["dropped"] += 1
                self._queue.append(mail)
                self._cond.notify_all()
        if closed:
            logger.warning("邮件发送已停止，未发送 / mailer stopped, not mailed: %s", mail.subject)
            return False
        if dropped is not None:
            logger.warning(
                "告警队列已满（%d），丢弃最早的一封 / queue full, dropped the oldest: %s", MAX_QUEUE, dropped.subject
            )
        self.start()
        return True

    # --- the sender thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        """Send queued mails one by one; retry a failing one with capped exponential back-off."""
        backoff = self._retry_initial
        while True:
            mail = self._next_mail()
            if mail is None:
                return
            try:
                self._deliver(mail)
            except ConfigError as exc:
                self._finish(mail, "dropped")
                logger.error("告警邮件被拒绝，已放弃 / alert mail rejected, given up: %s", exc)
            except Exception as exc:  # TransientError, and any bug: keep the mail and retry
                with self._cond:
                    self._counts["failed_attempts"] += 1
                reason = exc if isinstance(exc, TransientError) else f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "告警邮件发送失败，%.1f 秒后重试 / alert mail failed, retrying in %.1f s: %s",
                    backoff,
                    backoff,
                    reason,
                )
                self._pause(backoff)
                backoff = min(backoff * 2, self._retry_max)
            else:
                self._finish(mail, "delivered")
                backoff = self._retry_initial

    def _next_mail(self) -> _Mail | None:
        """The mail to (re)try next, or None when the thread should end."""
        with self._cond:
            while self._current is None and not self._queue and not self._closed:
                self._cond.wait()
            if self._current is None and self._queue:
                self._current = self._queue.popleft()
            if self._current is None or (self._closed and time.monotonic() >= self._deadline):
                return None
            return self._current

    def _finish(self, mail: _Mail, outcome: str) -> None:
        """Count a mail as delivered or dropped and let the next one go."""
        with self._cond:
            if self._current is mail:
                self._current = None
            self._counts[outcome] += 1
            if outcome == "dropped":
                self._counts["failed_attempts"] += 1

    def _pause(self, seconds: float) -> None:
        """Wait before a retry; cut short by the stop deadline."""
        end = time.monotonic() + seconds
        with self._cond:
            while True:
                limit = min(end, self._deadline) if self._closed else end
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def _deliver(self, mail: _Mail) -> None:
        """One SMTP session that sends one mail; errors become ConfigError (fix settings) or TransientError."""
        settings = self.settings
        try:
            smtp = self._connect()
            try:
                if settings.username:
                    smtp.login(settings.username, self._password)
                smtp.send_message(self._message(mail))
            finally:
                _close_quietly(smtp)
        except (smtplib.SMTPException, OSError) as exc:
            raise smtp_error(exc, settings) from None

    def _connect(self) -> smtplib.SMTP:
        """An open SMTP connection secured as the settings say (certificates verified)."""
        settings = self.settings
        if settings.security == "ssl":
            return smtplib.SMTP_SSL(
                settings.host,
                settings.port,
                local_hostname=self._hostname,
                timeout=settings.timeout_seconds,
                context=ssl.create_default_context(),
            )
        smtp = smtplib.SMTP(
            settings.host, settings.port, local_hostname=self._hostname, timeout=settings.timeout_seconds
        )
        if settings.security == "starttls":
            try:
                smtp.starttls(context=ssl.create_default_context())
            except BaseException:
                smtp.close()
                raise
        return smtp

    def _message(self, mail: _Mail) -> EmailMessage:
        """The MIME message of one mail."""
        settings = self.settings
        message = EmailMessage()
        message["Subject"] = mail.subject
        message["From"] = settings.sender
        message["To"] = ", ".join(settings.recipient_list)
        message["Date"] = format_datetime(datetime.now(CHINA_TZ))
        message["Message-ID"] = make_msgid(domain=settings.sender.partition("@")[2] or "localhost")
        message.set_content(mail.body)
        return message


# --- health and resources -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthIssue:
    """One failed check: which check, what is wrong (shown to users), how bad, and what it is about."""

    check: str
    message: str
    severity: str
    subject: str = ""  # e.g. the strategy or product; with `check` it is the alert's de-duplication key

    @property
    def key(self) -> str:
        return f"{self.check}:{self.subject}"


@dataclass(frozen=True)
class ResourceUsage:
    """Resource figures of this machine and process."""

    cpu_percent: float
    memory_percent: float
    disk_percent: float
    disk_path: str
    process_rss_mb: float


@dataclass
class _StrategyState:
    """What the monitor knows about one strategy."""

    vt_symbol: str = ""
    variables: dict[str, Any] = field(default_factory=dict)
    last_event: datetime | None = None
    model_loaded: bool | None = None  # from set_model_loaded; None: judge by the variables' model_name


def existing_folder(path: Path) -> Path:
    """The path, or its nearest existing parent (disk usage needs a path that exists)."""
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def measure_resources(disk_path: Path, cpu_interval: float | None = None) -> ResourceUsage:
    """CPU, memory and disk use in percent (psutil); the first CPU figure of a process may read 0."""
    folder = existing_folder(disk_path)
    rss = psutil.Process().memory_info().rss / 2**20
    return ResourceUsage(
        float(psutil.cpu_percent(interval=cpu_interval)),
        float(psutil.virtual_memory().percent),
        float(psutil.disk_usage(str(folder)).percent),
        str(folder),
        round(rss, 1),
    )


def resource_issues(usage: ResourceUsage, settings: MonitorSettings) -> list[HealthIssue]:
    """An issue for each figure at or above its threshold."""
    rows = (
        ("cpu", "CPU 使用率", "CPU usage", usage.cpu_percent, settings.cpu_percent),
        ("memory", "内存使用率", "memory usage", usage.memory_percent, settings.memory_percent),
        (
            "disk",
            f"磁盘使用率（{usage.disk_path}）",
            f"disk usage ({usage.disk_path})",
            usage.disk_percent,
            settings.disk_percent,
        ),
    )
    return [
        HealthIssue(check, f"{zh} {value:.1f}% ≥ 阈值 {limit:g}% / {en} {value:.1f}% at or above {limit:g}%", "WARNING")
        for check, zh, en, value, limit in rows
        if value >= limit
    ]


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat(timespec="seconds")


class SystemMonitor:
    """Watches resources, gateway, market data and strategies from vnpy events; writes the heartbeat; alerts."""

    def __init__(
        self,
        settings: MonitorSettings,
        mailer: AlertMailer,
        audit: AuditLog | None = None,
        heartbeat_path: Path | None = None,
        disk_path: Path = Path("."),
        clock: Callable[[], datetime] = lambda: datetime.now(CHINA_TZ),
    ) -> None:
        self.settings = settings
        self.mailer = mailer
        self._audit = audit
        self._heartbeat_path = heartbeat_path
        self._disk_path = disk_path
        self._clock = clock
        self._summary_time: clock_time | None = (
            parse_clock(settings.daily_summary_time, "monitor.daily_summary_time")
            if settings.daily_summary_time
            else None
        )
        self._lock = threading.RLock()
        self._product = ""
        self._engine: Any = None
        self._registered: list[tuple[str, Callable[[Any], None]]] = []
        self._started = clock()
        self._gateway = (False, "尚未登录 / not logged in yet", self._started)
        self._last_tick: datetime | None = None
        self._ticks = 0
        self._trades = 0  # since the last daily summary
        self._trades_total = 0
        self._strategies: dict[str, _StrategyState] = {}
        self._last_heartbeat: datetime | None = None
        self._last_check: datetime | None = self._started
        self._last_timer = self._started
        self._summary_day: date | None = None
        self._resources: ResourceUsage | None = None
        self._issues: list[HealthIssue] = []
        self._models: Callable[[], dict[str, dict[str, Any]]] | None = None  # the live models' health and quality
        self._guards: dict[str, GuardedHandler] = {
            name: guarded(f"monitor.{name}", handler, logger)
            for name, handler in (
                ("timer", self._handle_timer),
                ("tick", self._handle_tick),
                ("strategy", self._handle_strategy),
                ("trade", self._handle_trade),
            )
        }

    # --- wiring --------------------------------------------------------------------------------------------

    def attach(self, event_engine: Any, product: str) -> None:
        """Register the monitor's handlers on a vnpy EventEngine for one product (e.g. rb or rb0000.SHFE)."""
        from vnpy.trader.event import EVENT_TICK, EVENT_TIMER, EVENT_TRADE
        from vnpy_ctastrategy.base import EVENT_CTA_STRATEGY

        self.detach()
        with self._lock:
            self._product = product_of(product) if "." in product else product
            self._started = self._last_check = self._last_timer = self._clock()
        pairs: list[tuple[str, Callable[[Any], None]]] = [
            (EVENT_TIMER, self.on_timer),
            (EVENT_TICK, self.on_tick),
            (EVENT_CTA_STRATEGY, self.on_strategy),
            (EVENT_TRADE, self.on_trade),
        ]
        for event_type, handler in pairs:
            event_engine.register(event_type, handler)
        self._engine, self._registered = event_engine, pairs
        psutil.cpu_percent(interval=None)  # the first reading only starts the measurement
        logger.info("监控已启动 / monitor attached: %s", self._product)

    def detach(self) -> None:
        """Unregister the handlers (idempotent)."""
        engine, pairs = self._engine, self._registered
        self._engine, self._registered = None, []
        for event_type, handler in pairs:
            engine.unregister(event_type, handler)

    # --- event handlers: each catches its own exceptions ---------------------------------------------------

    def on_timer(self, event: Any) -> None:
        """EVENT_TIMER (every second): heartbeat, checks and the daily summary when due."""
        self._guards["timer"](event)

    def on_tick(self, event: Any) -> None:
        """EVENT_TICK: remember when market data last arrived."""
        self._guards["tick"](event)

    def on_strategy(self, event: Any) -> None:
        """EVENT_CTA_STRATEGY: a strategy's variables; the event itself is the strategy's heartbeat."""
        self._guards["strategy"](event)

    def on_trade(self, event: Any) -> None:
        """EVENT_TRADE: count fills."""
        self._guards["trade"](event)

    def _handle_timer(self, event: Any) -> None:
        now = self._clock()
        if self._due(self._last_heartbeat, self.settings.heartbeat_interval_seconds, now):
            self._last_heartbeat = now
            self.write_heartbeat(now)
        if self._due(self._last_check, self.settings.check_interval_seconds, now):
            self._last_check = now
            self.run_checks()
        self._maybe_send_summary(now)

    def _handle_tick(self, event: Any) -> None:
        now = self._clock()
        with self._lock:
            self._last_tick = now
            self._ticks += 1

    def _handle_strategy(self, event: Any) -> None:
        data = event.data
        name = str(data["strategy_name"])
        variables = data.get("variables") or {}
        now = self._clock()
        with self._lock:
            state = self._strategies.setdefault(name, _StrategyState())
            state.vt_symbol = str(data.get("vt_symbol") or state.vt_symbol)
            state.variables = {str(k): json_safe(v) for k, v in dict(variables).items()}
            state.last_event = now

    def _handle_trade(self, event: Any) -> None:
        with self._lock:
            self._trades += 1
            self._trades_total += 1

    @staticmethod
    def _due(last: datetime | None, interval: float, now: datetime) -> bool:
        return last is None or (now - last).total_seconds() >= interval

    # --- signals from the trading system -------------------------------------------------------------------

    def set_gateway_state(self, connected: bool, detail: str = "") -> None:
        """Record the gateway's login / disconnect; the next check alerts if it is down during a session."""
        now = self._clock()
        with self._lock:
            default = "已登录 / logged in" if connected else "已断开 / disconnected"
            self._gateway = (connected, detail or default, now)
        logger.info(
            "网关状态 / gateway state: %s %s",
            "已连接 / connected" if connected else "未连接 / not connected",
            redact(detail),
        )

    def set_model_loaded(self, strategy_name: str, loaded: bool) -> None:
        """Record whether a strategy's model is loaded (besides its model_name variable)."""
        with self._lock:
            self._strategies.setdefault(strategy_name, _StrategyState()).model_loaded = loaded

    # --- checks --------------------------------------------------------------------------------------------

    def check_resources(self) -> list[HealthIssue]:
        """CPU, memory and disk use against the settings' percentages."""
        try:
            usage = measure_resources(self._disk_path)
        except (OSError, psutil.Error) as exc:
            return [HealthIssue("resources", f"无法读取资源使用率：{exc} / cannot read resource usage", "WARNING")]
        with self._lock:
            self._resources = usage
        return resource_issues(usage, self.settings)

    def check_health(self) -> list[HealthIssue]:
        """Gateway, market data, strategy silence, models and risk state, judged by trading sessions."""
        now = self._clock()
        with self._lock:
            issues: list[HealthIssue] = []
            if not self._gateway[0] and is_trading_time(now, self._product_or_default()):
                issues.append(self._gateway_issue())
            issues += self._market_data_issues(now)
            for name, state in sorted(self._strategies.items()):
                issues += self._strategy_issues(name, state, now)
        return issues

    def run_checks(self) -> list[HealthIssue]:
        """Resources and health; each issue goes to the mailer (repeats merge by check and subject)."""
        issues = self.check_resources() + self.check_health()
        for issue in issues:
            self.mailer.send_alert(issue.message, issue.severity, key=issue.key)
        with self._lock:
            self._issues = issues
        return issues

    def _product_or_default(self) -> str:
        return self._product or "rb"

    def _session_held(self, now: datetime, seconds: float, product: str) -> bool:
        """Whether the product has been inside a session for the last `seconds` without a break."""
        offset = seconds
        while offset > 0:
            if not is_trading_time(now - timedelta(seconds=offset), product):
                return False
            offset -= SESSION_PROBE_SECONDS
        return is_trading_time(now, product)

    def _gateway_issue(self) -> HealthIssue:
        connected, detail, since = self._gateway
        return HealthIssue(
            "gateway", f"交易网关未连接（{redact(detail)}，自 {_iso(since)}）/ gateway not connected", "CRITICAL"
        )

    def _market_data_issues(self, now: datetime) -> list[HealthIssue]:
        product = self._product_or_default()
        limit = self.settings.stale_data_seconds
        silent = (now - (self._last_tick or self._started)).total_seconds()
        if silent < limit or not self._session_held(now, limit, product):
            return []
        return [
            HealthIssue(
                "market_data",
                f"行情停滞：{product} 交易时段内已 {silent:.0f} 秒没有行情 / "
                f"market data stale: no tick for {silent:.0f} s during the session",
                "WARNING",
                product,
            )
        ]

    def _strategy_issues(self, name: str, state: _StrategyState, now: datetime) -> list[HealthIssue]:
        variables = state.variables
        issues: list[HealthIssue] = []
        if variables.get("trading") and state.last_event is not None:
            limit = self.settings.strategy_silence_seconds
            silent = (now - state.last_event).total_seconds()
            if silent >= limit and self._session_held(now, limit, self._strategy_product(state)):
                issues.append(
                    HealthIssue(
                        "strategy_silent",
                        f"策略 {name} 交易时段内已 {silent:.0f} 秒没有更新 / strategy silent for {silent:.0f} s",
                        "WARNING",
                        name,
                    )
                )
        loaded = state.model_loaded if state.model_loaded is not None else bool(variables.get("model_name"))
        if (state.model_loaded is not None or variables.get("inited")) and not loaded:
            issues.append(HealthIssue("model", f"策略 {name} 的模型未加载 / model not loaded", "CRITICAL", name))
        risk = str(variables.get("risk_state") or "")
        if risk.upper().startswith("HALTED"):
            issues.append(
                HealthIssue("risk", f"策略 {name} 风控已停止交易：{risk} / risk halted trading", "CRITICAL", name)
            )
        return issues

    def _strategy_product(self, state: _StrategyState) -> str:
        try:
            return product_of(state.vt_symbol) if state.vt_symbol else self._product_or_default()
        except DataError:
            return self._product_or_default()

    # --- heartbeat and summary -----------------------------------------------------------------------------

    def set_model_figures(self, provider: Callable[[], dict[str, dict[str, Any]]]) -> None:
        """Where the heartbeat and the daily summary read each live model's health and quality (the live root)."""
        self._models = provider

    def model_figures(self) -> dict[str, dict[str, Any]]:
        """The live models' figures as plain JSON values ({} without a provider; a failing provider is logged)."""
        if self._models is None:
            return {}
        try:
            return dict(json_safe(self._models()))
        except Exception:  # the heartbeat must be written even when a figure cannot be read
            logger.exception("无法读取模型健康数据 / cannot read the model health figures")
            return {}

    def write_heartbeat(self, now: datetime | None = None) -> None:
        """Write the heartbeat file atomically: {"pid", "time" (ISO, China), "unix"}; failures alert."""
        if self._heartbeat_path is None:
            return
        when = self._clock() if now is None else now
        data: dict[str, Any] = {
            "pid": os.getpid(),
            "time": when.isoformat(timespec="milliseconds"),
            "unix": when.timestamp(),
        }
        models = self.model_figures()
        if models:
            data["models"] = models  # the same health and quality figures as the AI panel
        try:
            try:
                write_json_atomic(self._heartbeat_path, data)
            except FileNotFoundError:  # the run folder is made on first use
                self._heartbeat_path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(self._heartbeat_path, data)
        except OSError as exc:
            self.mailer.send_alert(
                f"心跳文件 {self._heartbeat_path} 写入失败：{exc} / cannot write the heartbeat",
                "CRITICAL",
                key="heartbeat:",
            )

    def _maybe_send_summary(self, now: datetime) -> None:
        """Send the daily summary when the clock crosses daily_summary_time (once a day)."""
        previous, self._last_timer = self._last_timer, now
        if self._summary_time is None:
            return
        local = now.astimezone(CHINA_TZ)
        target = datetime.combine(local.date(), self._summary_time, tzinfo=CHINA_TZ)
        if previous < target <= local and self._summary_day != local.date():
            self._summary_day = local.date()
            self.send_daily_summary(now)

    def send_daily_summary(self, now: datetime | None = None) -> None:
        """Mail the summary of the day: alerts by severity, resources, gateway, strategies, trades."""
        when = (self._clock() if now is None else now).astimezone(CHINA_TZ)
        self.check_resources()
        digest = self.mailer.take_digest()
        with self._lock:
            trades, self._trades = self._trades, 0
        body = self._summary_text(when, digest, trades)
        self.mailer.send_report(f"{SUBJECT_PREFIX} 每日汇总 {when.date()} / daily summary", body)
        if self._audit is not None:
            try:
                self._audit.write("daily_summary", date=str(when.date()), alerts=digest.counts, trades=trades)
            except OSError as exc:
                logger.error("审计日志写入失败 / cannot write the audit log: %s", exc)
        logger.info("每日汇总已生成 / daily summary queued: %s", when.date())

    def _summary_text(self, when: datetime, digest: AlertDigest, trades: int) -> str:
        status = self.status()
        counts = ", ".join(f"{level} {digest.counts.get(level, 0)}" for level in reversed(SEVERITIES))
        lines = [
            f"每日汇总 / daily summary {when.date()}（{status['product'] or '-'}）",
            "",
            f"告警 / alerts: {counts}",
        ]
        for alert in digest.alerts[-20:]:
            at = alert.at.strftime("%H:%M:%S") if alert.at else "--:--:--"
            repeats = f"（另有 {alert.count} 次重复 / +{alert.count} repeats）" if alert.count else ""
            lines.append(f"  {at} [{alert.severity}] {alert.message.splitlines()[0] if alert.message else ''}{repeats}")
        usage = status["resources"] or {}
        lines += [
            "",
            f"资源 / resources: CPU {usage.get('cpu_percent', 0):.1f}%，内存 / memory "
            f"{usage.get('memory_percent', 0):.1f}%，磁盘 / disk {usage.get('disk_percent', 0):.1f}%，"
            f"进程内存 / process RSS {usage.get('process_rss_mb', 0):.0f} MB",
        ]
        gateway = status["gateway"]
        lines.append(
            f"网关 / gateway: {'已连接 / connected' if gateway['connected'] else '未连接 / not connected'}"
            f"（{gateway['detail']}）"
        )
        market = status["market_data"]
        lines.append(
            f"行情 / market data: 最后行情 / last tick {market['last_tick'] or '-'}，共 / ticks {market['ticks']}"
        )
        lines.append(f"成交 / trades: {trades}")
        lines.append("策略 / strategies:" + ("" if status["strategies"] else " -"))
        for name, info in status["strategies"].items():
            lines.append(
                f"  {name} {info['vt_symbol']}: 持仓 / pos {info['pos']}，"
                f"风控 / risk {info['risk_state'] or '-'}，"
                f"预测 / prediction {info['prediction_value']}，模型 / model {info['model_name'] or '-'}，"
                f"交易中 / trading {info['trading']}，最后更新 / last event {info['last_event'] or '-'}"
            )
        lines += model_summary_lines(self.model_figures())
        return "\n".join(lines) + "\n"

    def status(self) -> dict[str, Any]:
        """A JSON-safe snapshot: gateway, market data, trades, strategies, resources, heartbeat, issues, mailer."""
        now = self._clock()
        with self._lock:
            connected, detail, since = self._gateway
            strategies = {
                name: {
                    "vt_symbol": state.vt_symbol,
                    **{
                        key: state.variables.get(key)
                        for key in ("inited", "trading", "pos", "model_name", "risk_state", "prediction_value")
                    },
                    "model_loaded": state.model_loaded,
                    "last_event": _iso(state.last_event),
                }
                for name, state in sorted(self._strategies.items())
            }
            return {
                "time": _iso(now),
                "product": self._product,
                "attached": self._engine is not None,
                "gateway": {"connected": connected, "detail": redact(detail), "since": _iso(since)},
                "market_data": {"last_tick": _iso(self._last_tick), "ticks": self._ticks},
                "trades": self._trades,
                "trades_total": self._trades_total,
                "strategies": strategies,
                "resources": None if self._resources is None else asdict(self._resources),
                "heartbeat": {
                    "path": None if self._heartbeat_path is None else str(self._heartbeat_path),
                    "last": _iso(self._last_heartbeat),
                },
                "issues": [asdict(issue) for issue in self._issues],
                "handler_errors": sum(guard.errors for guard in self._guards.values()),
                "mailer": asdict(self.mailer.stats),
            }


def _figure(value: Any, pattern: str = "{:.4f}") -> str:
    return pattern.format(value) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def model_summary_lines(models: dict[str, dict[str, Any]]) -> list[str]:
    """The daily summary's part on the live models: the hold and why, live quality, drift, age."""
    if not models:
        return []
    lines = ["", "模型健康 / model health:"]
    for name, info in models.items():
        health = info.get("health") or {}
        quality = health.get("quality") or {}
        worst = "、".join(f"{feature} {value:.2f}" for feature, value in health.get("worst_features") or [])
        held = f"暂停开仓 / held：{info['hold_reason']}" if info.get("held") else "正常开仓 / opening allowed"
        lines += [
            f"  {name} {info.get('model', '-')}（{str(info.get('checksum', ''))[:12]}）：{held}",
            f"    实盘 / live IC {_figure(quality.get('ic'))}，rank IC {_figure(quality.get('rank_ic'))}，"
            f"命中率 / hit {_figure(quality.get('hit_rate'), '{:.2%}')}"
            f"（{quality.get('count', 0)} 个成熟预测 / matured）；"
            f"验证期 / validation IC {_figure(info.get('valid_ic'))}",
            f"    日均成交 / trades per day {_figure(quality.get('trades_per_day'), '{:.2f}')}，"
            f"验证期 / expected {_figure(quality.get('expected_trades_per_day'), '{:.2f}')}",
            f"    漂移 / drift PSI {_figure(health.get('drift_psi'), '{:.3f}')}"
            f"（{health.get('drift_rows', 0)} 根K线 / bars；最大 / worst：{worst or '-'}），"
            f"模型数据结束后 / days since its data {_figure(health.get('age_days'), '{:.0f}')} 天",
        ]
    return lines


# --- command line ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The monitor's command line."""
    parser = argparse.ArgumentParser(
        prog="monitor.py", description="资源检查与告警邮件 / resource check and alert e-mail"
    )
    parser.add_argument("--home", help="主目录（默认 AI_TRADER_HOME 或项目目录）/ home folder")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--test-email", action="store_true", help="发送一封测试邮件 / send one test e-mail")
    action.add_argument("--check", action="store_true", help="打印一次资源检查 / print one resource check")
    return parser


def send_test_email(home: Home, settings: AppSettings) -> int:
    """Send one test mail synchronously and say where it went."""
    secrets = load_secrets(home)
    mailer = AlertMailer(settings.email, secrets.get("smtp_password"), settings.monitor.alert_throttle_seconds)
    email = settings.email
    now = datetime.now(CHINA_TZ).isoformat(timespec="seconds")
    body = (
        f"这是一封来自 AI 交易台的测试邮件。\nThis is a test e-mail from the AI trading desk.\n\n"
        f"主机 / host: {socket.gethostname()}\n时间 / time: {now}\n主目录 / home: {home.root}\n"
    )
    mailer.send_now(f"{SUBJECT_PREFIX} 测试邮件 / test e-mail", body)
    print(f"测试邮件已发送到 {', '.join(email.recipient_list)}（经 {email.host}:{email.port}）/ test e-mail sent")
    return 0


def print_check(home: Home, settings: MonitorSettings) -> int:
    """Print one resource check table."""
    usage = measure_resources(home.root, cpu_interval=0.2)
    rows = (
        ("CPU", usage.cpu_percent, settings.cpu_percent),
        ("内存 / memory", usage.memory_percent, settings.memory_percent),
        (f"磁盘 / disk {usage.disk_path}", usage.disk_percent, settings.disk_percent),
    )
    print(f"{_pad('检查 / check', 44)}{_pad('当前 / now', 12, True)}{_pad('阈值 / limit', 14, True)}  状态 / state")
    for name, value, limit in rows:
        state = "超限 / over" if value >= limit else "正常 / ok"
        print(f"{_pad(name, 44)}{value:>11.1f}%{limit:>13g}%  {state}")
    print(f"{_pad('进程内存 / process RSS', 44)}{usage.process_rss_mb:>9.1f} MB")
    return 0


def _pad(text: str, width: int, right: bool = False) -> str:
    """Pad text to a display width, counting CJK characters as two columns."""
    shown = sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)
    fill = " " * max(0, width - shown)
    return fill + text if right else text + fill


def main(argv: Sequence[str] | None = None) -> int:
    """Run `--test-email` or `--check` and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
        install_redaction()
        home = resolve_home(args.home)
        settings = settings_for(home)
        if args.check:
            return print_check(home, settings.monitor)
        return send_test_email(home, settings)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except AppError as exc:
        print(f"错误 / error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
