"""The shared UI kit: one look for the receiver's fleet dashboard and the agent's status page.

Both apps render server-side with Jinja2 and serve the same static files (vendored htmx and
uPlot, one CSS file, one small JS file); neither needs a Node build step or a CDN.

Use from any FastAPI/Starlette app::

    from outpost.cloud.ui import make_env, mount_static

    env = make_env(Path(__file__).parent / "templates")  # your pages; the kit's come after
    mount_static(app)                                     # /static/ui/... (prefix changeable)
    html = env.get_template("my_page.html").render(...)

Your page templates ``{% extends "ui/base.html" %}`` and
``{% import "ui/macros.html" as ui %}``. The base layout expects (all optional):
``title``, ``nav`` (a list of :class:`NavItem`), ``principal`` (anything with ``.name``
and ``.role``), ``csrf_token`` (put in the logout form and in ``<meta name="csrf-token">`` for
htmx requests), ``live_url`` (an SSE endpoint the page subscribes to), ``brand``.

The kit imports nothing of the receiver or the agent: it stays a leaf both can depend on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from starlette.staticfiles import StaticFiles

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
STATIC_PREFIX = "/static/ui"

PRIORITIES: tuple[str, ...] = ("critical", "high", "medium", "low")


@dataclass(frozen=True)
class NavItem:
    href: str
    label: str
    active: bool = False


def make_env(
    *template_dirs: Path | str,
    static_prefix: str = STATIC_PREFIX,
    globals: Mapping[str, Any] | None = None,
) -> jinja2.Environment:
    """A Jinja2 environment with the app's template folders first and the kit's last, HTML
    autoescaping, and the kit's filters/globals (see :func:`register`)."""
    dirs = [str(d) for d in template_dirs] + [str(TEMPLATE_DIR)]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(dirs),
        autoescape=jinja2.select_autoescape(("html", "xml"), default=True),
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    register(env, static_prefix=static_prefix)
    if globals:
        env.globals.update(globals)
    return env


def register(env: jinja2.Environment, *, static_prefix: str = STATIC_PREFIX) -> None:
    """Add the kit's filters and globals to an existing environment."""
    prefix = static_prefix.rstrip("/")
    env.globals["ui_static"] = lambda path: f"{prefix}/{path}"
    env.globals["PRIORITIES"] = PRIORITIES
    env.filters["ago"] = ago
    env.filters["iso"] = iso
    env.filters["fmt"] = fmt_value
    env.filters["duration"] = duration
    env.filters["temp_colour"] = temp_colour
    env.filters["priority_rank"] = priority_rank
    env.filters["tags"] = tag_pairs


def mount_static(app: Any, path: str = STATIC_PREFIX, name: str = "ui-static") -> None:
    """Serve the kit's static files at ``path`` on a FastAPI/Starlette app."""
    app.mount(path, StaticFiles(directory=STATIC_DIR), name=name)


# --- filters ----------------------------------------------------------------------------------


def _as_datetime(value: datetime | float | int | str | None) -> datetime | None:
    if value is None or value == "" or isinstance(value, jinja2.Undefined):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        # epoch seconds or epoch milliseconds (the wire uses ms): 1e11 s is the year 5138
        return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
    return datetime.fromisoformat(value)


def iso(value: datetime | float | int | str | None) -> str:
    """ISO 8601 UTC, second precision (``2026-12-04T18:20:00Z``); empty for None."""
    dt = _as_datetime(value)
    if dt is None:
        return ""
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def duration(seconds: float | None) -> str:
    """Compact duration: ``45s``, ``12m``, ``3h 5m``, ``2d 4h``; ``—`` for None."""
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "—"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h {m}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d {h}h" if h else f"{d}d"


def ago(value: datetime | float | int | str | None, now: datetime | None = None) -> str:
    """``12s ago`` style age; ``never`` for None."""
    dt = _as_datetime(value)
    if dt is None:
        return "never"
    now = now or datetime.now(UTC)
    return f"{duration((now - dt).total_seconds())} ago"


def fmt_value(value: float | int | bool | str | None, digits: int = 4) -> str:
    """A reading for display: up to ``digits`` significant decimals, no float noise."""
    if value is None or isinstance(value, jinja2.Undefined):
        return "—"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{digits}g}" if abs(value) >= 1e6 or abs(value) < 1e-3 else f"{value:.2f}"


def temp_colour(value: float | None, cold: float = 18.0, hot: float = 35.0) -> str:
    """Cool blue → hot red for a temperature, as an ``hsl()`` colour (grey when unknown)."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "hsl(0 0% 45%)"
    t = min(max((value - cold) / (hot - cold), 0.0), 1.0)
    return f"hsl({round(220 * (1 - t))} 75% 45%)"


def priority_rank(priority: str | None) -> int:
    """Sort key: critical first, unknown priorities last."""
    try:
        return PRIORITIES.index(priority or "")
    except ValueError:
        return len(PRIORITIES)


def tag_pairs(tags: Mapping[str, str] | Sequence[str]) -> str:
    """Tags as ``k=v;flag`` text, the schedule's own notation."""
    if isinstance(tags, Mapping):
        return ";".join(f"{k}={v}" if v else k for k, v in sorted(tags.items()))
    return ";".join(tags)
