"""Logging set-up: key-value events; console renderer on a TTY, JSON lines otherwise
(journald and log shippers read JSON; technicians read the console).

One path for every line: structlog events and the records of libraries that use stdlib
logging (pymodbus, bacpypes3, uvicorn, asyncio, Python warnings) all end in one stdlib handler
whose ``ProcessorFormatter`` renders them alike, so in JSON mode every line parses as JSON and
lines from different threads never interleave mid-line.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog
from structlog.typing import Processor

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Libraries log at warning and above so they do not drown our events. pymodbus logs an error
# per timed-out request of a silent device; the driver reports the outage once itself, so
# only pymodbus' critical messages come through. At level "debug" they all speak.
_LIBRARY_LEVELS = {
    "pymodbus": logging.CRITICAL,
    "bacpypes3": logging.WARNING,
    "uvicorn.error": logging.WARNING,
    "uvicorn.access": logging.WARNING,
    "asyncio": logging.WARNING,
}


class _Handler(logging.StreamHandler[TextIO]):
    """Ours, so a second configure_logging() replaces it instead of adding another."""


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "console", "json"] = "auto",
    stream: TextIO | None = None,
) -> None:
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    render: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if use_console:
        render.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    else:
        render += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = _Handler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=render,
            # records that did not come through structlog (libraries): same keys, plus which
            # library spoke
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # our events are filtered by structlog's bound logger; the stdlib logger must let them by
    logging.getLogger("outpost").setLevel(_LEVELS[level])
    for name, library_level in _LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(
            logging.DEBUG if level == "debug" else max(library_level, _LEVELS[level])
        )
    logging.captureWarnings(True)  # warnings.warn(...) becomes a py.warnings record
