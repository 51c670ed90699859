"""structlog set-up: key-value events; console renderer on a TTY, JSON lines otherwise
(journald and log shippers read JSON; technicians read the console)."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    level: str = "info", fmt: Literal["auto", "console", "json"] = "auto", stream=None
) -> None:
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (pymodbus, bacpypes3, uvicorn) go to the same stream,
    # at warning and above so they do not drown our events.
    logging.basicConfig(
        level=logging.WARNING, stream=stream, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("pymodbus", "bacpypes3", "uvicorn.error", "uvicorn.access", "asyncio"):
        # pymodbus logs an error per timed-out request of a silent device; the driver reports
        # the outage once itself, so only pymodbus' critical messages come through.
        logging.getLogger(noisy).setLevel(
            logging.CRITICAL if noisy.startswith("pymodbus") else logging.WARNING
        )
