"""The UI kit's filters and the dashboard's tag conventions (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from outpost.cloud.receiver.dashboard_data import (
    AlarmEpisode,
    PointRow,
    alarm_health,
    is_temperature,
    kpis,
)
from outpost.cloud.ui import duration, fmt_value, iso, make_env, priority_rank, temp_colour


def pt(pid: str, value: float | None, tags: dict[str, str], quality: str = "good") -> PointRow:
    return PointRow(pid, "dev", "", "", tags, {}, None, value, quality)


def test_kpis_from_tags() -> None:
    k = kpis(
        [
            pt("r1.p", 4.0, {"kpi": "it_power"}),
            pt("r2.p", 6.0, {"kpi": "it_power"}),
            pt("m.p", 13.0, {"kpi": "facility_power"}),
            pt("r1.t", 24.0, {"kind": "temperature"}),
            pt("r2.t", 30.0, {"kind": "temperature"}),
            pt("sp.t", 99.0, {"temp": "", "sp": ""}),  # a bare marker does not count
            pt("hum", 99.0, {"kind": "humidity", "temp": ""}),
            pt("bad.t", 80.0, {"kind": "temperature"}, quality="bad:comm_failure"),
        ]
    )
    assert (k.it_power, k.facility_power) == (10.0, 13.0)
    assert k.pue is not None and abs(k.pue - 1.3) < 1e-9
    assert (k.temperatures, k.temp_avg, k.temp_max, k.temp_max_point) == (2, 27.0, 30.0, "r2.t")
    empty = kpis([pt("x", 1.0, {})])
    assert empty.pue is None and empty.temp_avg is None
    assert is_temperature({"kind": "temperature"}) and not is_temperature({"temp": ""})


def test_alarm_health_figures() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    eps = [
        AlarmEpisode("gw", "a:hi", "a", "high", now - timedelta(minutes=m)) for m in (1, 2, 3, 300)
    ] + [AlarmEpisode("gw", "b:hi", "b", "low", now - timedelta(hours=30))]  # outside 24 h
    h = alarm_health(eps, standing=2, window=timedelta(hours=24), now=now)
    assert h.activations == 4 and h.per_10min_max == 3 and h.standing == 2
    assert abs(h.per_10min_avg - 4 / 144) < 1e-9
    assert h.bad_actors == [("gw", "a:hi", 4)]


def test_filters() -> None:
    assert fmt_value(None) == "—" and fmt_value(3.0) == "3" and fmt_value(2.345) == "2.35"
    assert fmt_value(1234567.0) == "1234567" and fmt_value(0.0001234) == "0.0001234"
    assert duration(None) == "—" and duration(45) == "45s" and duration(3900) == "1h 5m"
    assert duration(2 * 86400 + 3600) == "2d 1h"
    assert iso(0) == "1970-01-01T00:00:00Z" and iso(1_700_000_000_000) == "2023-11-14T22:13:20Z"
    assert temp_colour(10) == "hsl(220 75% 45%)" and temp_colour(40) == "hsl(0 75% 45%)"
    assert temp_colour(None) == "hsl(0 0% 45%)"
    assert [priority_rank(p) for p in ("critical", "low", "nope", None)] == [0, 3, 4, 4]


def test_env_renders_kit_macros_with_autoescape() -> None:
    env = make_env(static_prefix="/assets")
    html = env.from_string(
        '{% extends "ui/base.html" %}{% import "ui/macros.html" as ui %}'
        "{% block content %}{{ ui.badge(status) }}{{ ui.priority_counts(c) }}{% endblock %}"
    ).render(title="<x>", status="online", c={"high": 2, "low": 0}, live_url="/live")
    assert "<title>&lt;x&gt; · Outpost</title>" in html
    assert 'src="/assets/vendor/htmx.min.js"' in html and 'data-live-url="/live"' in html
    assert 'class="badge st-online"' in html
    assert 'class="prio p-high" title="high">2<' in html and "p-low" not in html
