"""``outpost buffer stats|export`` through the real CLI app, on real buffer files."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from outpost.agent.cli import get_app
from outpost.buffer.store import Buffer

runner = CliRunner()
app = get_app()


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # `outpost -c X` exports OUTPOST_CONFIG for the sub-commands; keep that out of other tests.
    monkeypatch.delenv("OUTPOST_CONFIG", raising=False)


def _make(path: Path, n: int = 10) -> None:
    b = Buffer(path, commit_interval=0.05)
    b.open()
    try:
        keys = b.point_keys(["cdu-01.flow", "pdu-a.kw"])
        t = datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp()
        b.append(
            [t + i for i in range(n)],
            [keys[i % 2] for i in range(n)],
            [float(i) for i in range(n)],
            [0] * n,
        )
        b.append_event(t, "mode", "operator", "alice", {"to": "maintenance"})
        b.flush_sync(10)
        b.mark_synced(4)
    finally:
        b.close()


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[agent]\nid = "gw-1"\ndata_dir = "var"\n\n[buffer]\npath = "buf.db"\n')
    return cfg


def test_stats_json_and_table(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    _make(db)
    res = runner.invoke(app, ["buffer", "stats", "--json", "--db", str(db)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    for key in (
        "rows",
        "unsynced_rows",
        "oldest_unsynced_age_s",
        "size_bytes",
        "evicted_synced",
        "evicted_unsynced",
    ):
        assert key in data
    assert (data["rows"], data["unsynced_rows"], data["synced_through"]) == (10, 6, 4)
    assert data["oldest_unsynced_age_s"] > 0
    res = runner.invoke(app, ["buffer", "stats", "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert "unsynced rows" in res.stdout and "evicted unsynced" in res.stdout
    assert "oldest unsynced age" in res.stdout


def test_export_formats_and_filters(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    _make(db)
    res = runner.invoke(app, ["buffer", "export", "--format", "csv", "--db", str(db)])
    assert res.exit_code == 0, res.output
    rows = list(csv.reader(io.StringIO(res.stdout)))
    assert rows[0] == ["seq", "ts", "point_id", "value", "quality"]
    assert rows[1] == ["1", "2026-11-24T12:00:00.000Z", "cdu-01.flow", "0.0", "good"]
    assert len(rows) == 11
    assert "exported 10 readings" in res.stderr

    out = tmp_path / "x.jsonl"
    res = runner.invoke(
        app,
        [
            "buffer",
            "export",
            "--format",
            "jsonl",
            "--db",
            str(db),
            "--point",
            "pdu-a.kw",
            "--from",
            "2026-11-24T12:00:03Z",
            "--to",
            "2026-11-24T12:00:07",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["seq"] for x in lines] == [4, 6]
    assert list(lines[0]) == ["seq", "ts", "point_id", "value", "quality"]

    res = runner.invoke(app, ["buffer", "export", "--format", "jsonl", "--events", "--db", str(db)])
    assert res.exit_code == 0, res.output
    (event,) = [json.loads(x) for x in res.stdout.splitlines()]
    assert event["kind"] == "mode" and event["actor"] == "alice"


def test_bad_time_is_one_clear_line(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    _make(db)
    res = runner.invoke(
        app, ["buffer", "export", "--format", "csv", "--db", str(db), "--from", "yesterday"]
    )
    assert res.exit_code == 2
    assert "--from" in res.stderr and "ISO 8601" in res.stderr
    assert "Traceback" not in res.output


def test_path_from_config_and_missing_file_message(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    res = runner.invoke(app, ["buffer", "stats", "-c", str(cfg)])
    assert res.exit_code == 1
    expected = tmp_path / "var" / "buf.db"
    assert res.stderr.strip().splitlines() == [
        f"outpost: no buffer file at {expected} (has the agent run with this config? "
        "or pass --db PATH)"
    ]
    assert res.exception is None or isinstance(res.exception, SystemExit)
    _make(expected)
    res = runner.invoke(app, ["-c", str(cfg), "buffer", "stats", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["path"] == str(expected)


def test_not_a_buffer_file_is_refused_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "b.db"
    bad.write_text("not sqlite")
    res = runner.invoke(app, ["buffer", "stats", "--db", str(bad)])
    assert res.exit_code == 1
    assert "not a SQLite database" in res.stderr
    assert bad.read_text() == "not sqlite"


def test_stats_while_the_agent_holds_the_file_open(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    b = Buffer(db, commit_interval=0.02)
    b.open()
    try:
        keys = b.point_keys(["a.b"])
        b.append([time.time()] * 3, keys * 3, [1.0, 2.0, 3.0], [0, 0, 0])
        b.flush_sync(10)
        res = runner.invoke(app, ["buffer", "stats", "--json", "--db", str(db)])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["unsynced_rows"] == 3
        b.append([time.time()], keys, [4.0], [0])  # the agent keeps writing afterwards
        b.flush_sync(10)
        assert b.last_seq == 4
    finally:
        b.close()
