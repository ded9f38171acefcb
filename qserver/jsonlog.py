"""JSON log lines: one object per line, for log collectors (`--log-format json`)."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else was passed with `extra=` and is kept.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """time (UTC, ISO 8601), level, logger, message, exception text and `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        return json.dumps(out, default=str, ensure_ascii=False)


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {log_format!r} (expected one of {LOG_FORMATS})")


class QuietNatsErrors(logging.Filter):
    """nats.py logs each connection error with a traceback, five times a second while it
    retries (a wrong password, a server away): one line with the error instead, and the
    same error again only once per `every` seconds, with how many were left out."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        error = record.exc_info[1]
        text = f"{record.getMessage()}: {error!r}"
        last, skipped = self._last.get(text, (0.0, 0))
        if record.created - last < self.every:
            self._last[text] = (last, skipped + 1)
            return False
        self._last[text] = (record.created, 0)
        record.msg, record.args = text, None
        if skipped:
            record.msg += f" ({skipped} more since the last report)"
        record.exc_info, record.exc_text = None, None
        return True


def quiet_nats_errors() -> None:
    """Install `QuietNatsErrors` on nats.py's logger (once)."""
    nats_logger = logging.getLogger("nats.aio.client")
    if not any(isinstance(f, QuietNatsErrors) for f in nats_logger.filters):
        nats_logger.addFilter(QuietNatsErrors())
