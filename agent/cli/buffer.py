"""``outpost buffer {stats,export}``: read the buffer file directly.

Works whether or not the agent runs (read-only SQLite connections on a WAL database never
block the agent's writer). The file comes from the agent config (``[buffer] path``) or
``--db PATH``.
"""

from __future__ import annotations

import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, TextIO

import typer

from outpost.agent.cli.common import ConfigOption, JsonOption, config_or_exit, fail, print_json
from outpost.buffer.inspect import export_events, export_readings, file_stats
from outpost.buffer.models import BufferStats
from outpost.buffer.schema import BufferFileError

buffer_app = typer.Typer(
    help="The local store-and-forward buffer: statistics and exports (reads the file directly).",
    no_args_is_help=True,
)

DbOption = Annotated[
    Path | None,
    typer.Option(
        "--db",
        help="Buffer file to read (instead of [buffer] path of the config).",
        show_default=False,
    ),
]


def _buffer_path(config: Path | None, db: Path | None) -> Path:
    if db is not None:
        path = db
    else:
        path = config_or_exit(config, check_files=False).buffer.path
    if not path.is_file():
        fail(f"no buffer file at {path} (has the agent run with this config? or pass --db PATH)")
    return path


def _parse_time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    raw = text.strip()
    try:
        dt = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError:
        fail(f"{option}: {text!r} is not an ISO 8601 time (e.g. 2026-11-24T13:00:00Z)", 2)
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{seconds:.1f} s"
    if s < 7200:
        return f"{s // 60} min {s % 60} s"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _print_table(st: BufferStats) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"buffer {st.path}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("rows", f"{st.rows:,}"),
        ("unsynced rows", f"{st.unsynced_rows:,}"),
        ("oldest unsynced age", _human_age(st.oldest_unsynced_age_s)),
        ("size on disk", _human_bytes(st.size_bytes)),
        ("free (reusable)", _human_bytes(st.free_bytes)),
        ("last seq", f"{st.last_seq:,}"),
        ("synced through", f"{st.synced_through:,}"),
        ("evicted synced", f"{st.evicted_synced:,}"),
        ("evicted unsynced", f"{st.evicted_unsynced:,}"),
        ("expired (retention)", f"{st.expired_rows:,}"),
        ("rejected batches", f"{st.rejected_batches:,}"),
        ("corrupt recoveries", f"{st.corrupt_recoveries:,}"),
        ("events", f"{st.events:,}"),
        ("unsynced events", f"{st.unsynced_events:,}"),
        ("evicted events", f"{st.evicted_events:,}"),
        ("evicted unsynced events", f"{st.evicted_unsynced_events:,}"),
    ]
    if st.rows:
        # what the size bound is spent on: the columnar layout packs ~5 B a reading
        used = (st.size_bytes - st.free_bytes) / st.rows
        rows.insert(5, ("bytes per reading", f"{used:,.1f}"))
    for name, value in rows:
        lost = name in ("evicted unsynced", "evicted unsynced events") and value != "0"
        style = "red" if lost else None
        table.add_row(name, value, style=style)
    Console().print(table)


@buffer_app.command("stats")
def stats(config: ConfigOption = None, db: DbOption = None, json_out: JsonOption = False) -> None:
    """Rows, unsynced rows, oldest unsynced age, size on disk, evicted counts."""
    path = _buffer_path(config, db)
    try:
        st = file_stats(path)
    except (BufferFileError, sqlite3.Error) as exc:
        fail(str(exc))
    if json_out:
        print_json(st.to_dict())
    else:
        _print_table(st)


@buffer_app.command("export")
def export(
    fmt: Annotated[Literal["csv", "jsonl"], typer.Option("--format", help="csv or jsonl")],
    since: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="only readings at or after this time (ISO 8601; no zone = UTC)",
            show_default=False,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--to", help="only readings before this time (ISO 8601, exclusive)", show_default=False
        ),
    ] = None,
    point: Annotated[
        str | None, typer.Option("--point", help="only this point_id", show_default=False)
    ] = None,
    events: Annotated[
        bool,
        typer.Option(
            "--events", help="export events (id,ts,kind,source,actor,detail) instead of readings"
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="write here instead of stdout", show_default=False),
    ] = None,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Readings as CSV or JSON lines: seq,ts,point_id,value,quality (ts ISO 8601 UTC)."""
    path = _buffer_path(config, db)
    lo = _parse_time(since, "--from")
    hi = _parse_time(until, "--to")
    if events and point is not None:
        fail("--point applies to readings, not to --events", 2)
    stream: TextIO
    try:
        stream = open(out, "w", encoding="utf-8", newline="") if out else sys.stdout
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    try:
        if events:
            n = export_events(path, stream, fmt, lo, hi)
        else:
            n = export_readings(path, stream, fmt, lo, hi, point)
    except (BufferFileError, sqlite3.Error) as exc:
        fail(str(exc))
    except BrokenPipeError:
        # `outpost buffer export ... | head`: the reader went away; not an error of ours.
        sys.stderr.close()
        raise typer.Exit(0) from None
    finally:
        if out:
            stream.close()
        else:
            stream.flush()
    what = "events" if events else "readings"
    typer.echo(f"exported {n:,} {what}" + (f" to {out}" if out else ""), err=True)
