"""structlog set-up: JSON lines for production, coloured console for humans."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError


class SafeLogger:
    """Writes each line to a stream, and never raises.

    A process whose log reader went away (a launcher killed with -9 leaves a broken pipe)
    must still drain and exit: a failed write of a log line is dropped, not raised into
    whatever code was logging.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        try:
            self._stream.write(message + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class BadRequestLine(logging.Filter):
    """aiohttp logs a malformed HTTP request with a full traceback: log noise that any
    client controls. Turn each into one line (what was wrong, from whom), no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        reason = " ".join(str(exc.message).split())[:200]
        structlog.get_logger("aiohttp.server").info(
            "bad http request", status=exc.code, reason=reason,
            source=record.getMessage().removeprefix("Error handling request from").strip())
        return False


def configure_logging(level: str = "info", fmt: str = "json", node: str | None = None) -> None:
    numeric = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *args: SafeLogger(sys.stderr),
        cache_logger_on_first_use=True,
    )
    if node is not None:
        structlog.contextvars.bind_contextvars(node=node)
    # aiohttp and redis log through the standard library: route them to the same stream.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestLine) for f in server.filters):
        server.addFilter(BadRequestLine())
