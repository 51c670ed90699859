"""The Prometheus side of the agent's metrics: the collector that reads the runtime at scrape
time and the exposition text. Imported by ``core.metrics`` on the first scrape only, so an agent
nobody scrapes never loads prometheus_client (≈ 3 MB RSS of imports)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from outpost.agent.core.coordinator import DeviceCoordinator
from outpost.agent.core.pipeline import Pipeline
from outpost.agent.core.points import PointTable
from outpost.agent.core.scheduler import Scheduler


class _HasStatus(Protocol):
    def status(self) -> dict[str, Any]: ...


class _Alarms(Protocol):
    def counts(self) -> dict[str, int]: ...


class _Control(Protocol):
    @property
    def alarms(self) -> _Alarms: ...

    def mode_state(self) -> dict[str, Any]: ...


class MetricsSource(Protocol):
    """What the metrics read of the runtime (``core.runtime.Runtime`` provides it)."""

    @property
    def started_at(self) -> float: ...

    @property
    def coordinators(self) -> Mapping[str, DeviceCoordinator]: ...

    @property
    def scheduler(self) -> Scheduler | None: ...

    @property
    def pipeline(self) -> Pipeline | None: ...

    @property
    def table(self) -> PointTable | None: ...

    @property
    def reloads(self) -> int: ...

    @property
    def reload_errors(self) -> int: ...

    def metrics_info(self) -> dict[str, str]:
        """Labels of ``outpost_agent_info``: gateway, version, schedule_version."""
        ...

    def metrics_parts(
        self,
    ) -> tuple[_Control | None, _HasStatus | None, _HasStatus | None, _HasStatus | None]:
        """Local control, uplink, command channel, Sparkplug node (None when not running)."""
        ...

    async def buffer_stats(self) -> dict[str, Any] | None: ...


class PollSeries(Protocol):
    """One device's poll durations (``core.metrics.PollDurations`` keeps them)."""

    @property
    def counts(self) -> Sequence[float]:
        """Observations per bucket (not cumulative), the last one above every bound."""
        ...

    @property
    def total(self) -> float: ...

    @property
    def created(self) -> float: ...


def build_registry(
    collector: AgentCollector,
    poll_name: str,
    poll_doc: str,
    buckets: Sequence[float],
    polls: Mapping[str, PollSeries],
) -> CollectorRegistry:
    """The agent's own registry (never the process-global default: two runtimes in one test
    process must not share series), in the order the exposition lists them."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    ProcessCollector(registry=registry)
    registry.register(_PollCollector(poll_name, poll_doc, buckets, polls))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class _PollCollector(Collector):
    """The poll-duration histogram, as ``prometheus_client.Histogram`` would expose it
    (buckets, count, sum, and the ``_created`` gauge), from plain per-device counters."""

    def __init__(
        self, name: str, doc: str, buckets: Sequence[float], polls: Mapping[str, PollSeries]
    ) -> None:
        self._name, self._doc, self._polls = name, doc, polls
        self._bounds = [floatToGoString(b) for b in buckets] + ["+Inf"]

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        hist = HistogramMetricFamily(self._name, self._doc, labels=["device"])
        created = GaugeMetricFamily(f"{self._name}_created", self._doc, labels=["device"])
        for device, series in list(self._polls.items()):
            cumulative, running = [], 0.0
            for bound, n in zip(self._bounds, series.counts, strict=True):
                running += n
                cumulative.append((bound, running))
            hist.add_metric([device], cumulative, series.total)
            created.add_metric([device], series.created)
        yield hist
        yield created


def _counter(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=value)


class AgentCollector(Collector):
    def __init__(self, source: MetricsSource) -> None:
        self._source = source
        self.buffer: dict[str, Any] | None = None

    def describe(self) -> Iterable[Metric]:
        # The families depend on what runs (uplink, buffer): let the registry skip the
        # duplicate-name check instead of collecting at registration time.
        return []

    def collect(self) -> Iterable[Metric]:
        src = self._source
        yield InfoMetricFamily("outpost_agent", "The running agent.", value=src.metrics_info())
        yield GaugeMetricFamily(
            "outpost_agent_start_time_seconds",
            "Start time of the agent since the Unix epoch.",
            value=src.started_at,
        )
        yield from self._devices()
        yield from self._pipeline()
        yield from _counter(
            "outpost_schedule_reloads_total", "Schedule reloads that succeeded.", src.reloads
        )
        yield from _counter(
            "outpost_schedule_reload_errors_total",
            "Schedule reloads refused (the running schedule stayed).",
            src.reload_errors,
        )
        control, uplink, commands, sparkplug = src.metrics_parts()
        if control is not None:
            yield from _control(control)
        if self.buffer is not None:
            # Edge-only (no [cloud]): nothing is ever "synced", so backlog series would only
            # grow and trip the backlog alert; leave them out.
            yield from _buffer(self.buffer, uplink=uplink is not None)
        if uplink is not None:
            yield from _uplink(uplink.status())
        if commands is not None:
            yield from _commands(commands.status())
        if sparkplug is not None:
            yield from _sparkplug(sparkplug.status())

    def _devices(self) -> Iterator[Metric]:
        src = self._source
        up = GaugeMetricFamily(
            "outpost_device_up", "1 if the device's last poll got an answer.", labels=["device"]
        )
        failures = GaugeMetricFamily(
            "outpost_device_consecutive_failures",
            "Polls in a row that got no answer from the device.",
            labels=["device"],
        )
        points = GaugeMetricFamily(
            "outpost_points", "Points of the loaded schedule, by device.", labels=["device"]
        )
        polls = CounterMetricFamily(
            "outpost_polls", "Polls of the device's point groups.", labels=["device"]
        )
        overruns = CounterMetricFamily(
            "outpost_poll_overruns",
            "Poll slots skipped because the previous poll of the group was still running.",
            labels=["device"],
        )
        errors = CounterMetricFamily(
            "outpost_poll_errors", "Polls that raised (logged as poll.error).", labels=["device"]
        )
        for device, coord in src.coordinators.items():
            up.add_metric([device], 1.0 if coord.health.connected else 0.0)
            failures.add_metric([device], coord.health.consecutive_failures)
            points.add_metric([device], sum(len(g.points) for g in coord.groups))
        per_device: dict[str, list[int]] = {}
        scheduler = src.scheduler
        if scheduler is not None:
            for key, job in scheduler.jobs.items():
                device = key.rpartition("@")[0] or key
                acc = per_device.setdefault(device, [0, 0, 0])
                acc[0] += job.stats.polls
                acc[1] += job.stats.overruns
                acc[2] += job.stats.errors
        for device, (n, over, err) in sorted(per_device.items()):
            polls.add_metric([device], n)
            overruns.add_metric([device], over)
            errors.add_metric([device], err)
        yield from (up, failures, points, polls, overruns, errors)

    def _pipeline(self) -> Iterator[Metric]:
        pipeline = self._source.pipeline
        if pipeline is None:
            return
        st = pipeline.stats
        yield from _counter(
            "outpost_readings_total",
            "Readings produced by polls (every point, every poll).",
            st.readings,
        )
        yield from _counter("outpost_readings_bad_total", "Readings of bad quality.", st.bad)
        yield from _counter(
            "outpost_readings_stored_total",
            "Readings handed to the buffer (after report-by-exception).",
            st.stored,
        )


def _control(control: _Control) -> Iterator[Metric]:
    counts = dict(control.alarms.counts())
    unacked = counts.pop("unacked", 0)
    active = GaugeMetricFamily(
        "outpost_alarms_active", "Active alarms by priority.", labels=["priority"]
    )
    for priority, n in counts.items():
        active.add_metric([priority], n)
    yield active
    yield GaugeMetricFamily(
        "outpost_alarms_unacked", "Alarms waiting for acknowledgement.", value=unacked
    )
    state = control.mode_state()
    current = state.get("mode")
    mode = GaugeMetricFamily(
        "outpost_mode", "The site's operating mode: 1 for the current one.", labels=["mode"]
    )
    for name in state.get("modes") or [current]:
        mode.add_metric([str(name)], 1.0 if name == current else 0.0)
    yield mode


def _buffer(st: Mapping[str, Any], *, uplink: bool) -> Iterator[Metric]:
    yield from _gauge("outpost_buffer_rows", "Readings held in the buffer.", st.get("rows"))
    if uplink:
        yield from _gauge(
            "outpost_buffer_unsynced_rows",
            "Readings not yet acknowledged by the receiver.",
            st.get("unsynced_rows"),
        )
        yield GaugeMetricFamily(
            "outpost_buffer_oldest_unsynced_age_seconds",
            "Age of the oldest unsynced reading (0 when nothing waits).",
            value=float(st.get("oldest_unsynced_age_s") or 0.0),
        )
        yield from _gauge(
            "outpost_buffer_unsynced_events", "Events not yet synced.", st.get("unsynced_events")
        )
    yield from _gauge("outpost_buffer_bytes", "Size of the buffer file.", st.get("size_bytes"))
    yield from _gauge(
        "outpost_buffer_free_bytes",
        "Free pages inside the buffer file, reusable without growing it.",
        st.get("free_bytes"),
    )
    yield from _gauge(
        "outpost_buffer_pending_rows",
        "Readings queued in memory for the next commit.",
        st.get("pending_rows"),
    )
    evicted = CounterMetricFamily(
        "outpost_buffer_evicted_rows",
        'Readings removed by the size bound; synced="false" ones were lost.',
        labels=["synced"],
    )
    evicted.add_metric(["true"], st.get("evicted_synced") or 0)
    evicted.add_metric(["false"], st.get("evicted_unsynced") or 0)
    yield evicted
    yield from _counter(
        "outpost_buffer_expired_rows_total",
        "Synced readings removed by retention_days.",
        st.get("expired_rows"),
    )
    yield from _counter(
        "outpost_buffer_dropped_rows_total",
        "Readings dropped before commit (memory queue full).",
        st.get("dropped_rows"),
    )
    yield from _counter(
        "outpost_buffer_corrupt_recoveries_total",
        "Corrupt buffer files moved aside and replaced.",
        st.get("corrupt_recoveries"),
    )
    yield from _counter(
        "outpost_buffer_rejected_batches_total",
        "Batches the receiver refused for good (dead letters).",
        st.get("rejected_batches"),
    )
    yield from _gauge(
        "outpost_buffer_last_seq", "Highest committed sequence number.", st.get("last_seq")
    )


def _uplink(st: Mapping[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "outpost_uplink_connected",
        "1 if the last exchange with the receiver succeeded.",
        value=1.0 if st.get("connected") else 0.0,
    )
    yield from _counter(
        "outpost_uplink_batches_total",
        "Batches acknowledged by the receiver.",
        st.get("batches_sent"),
    )
    yield from _counter(
        "outpost_uplink_failures_total", "Batches that failed (retried).", st.get("batches_failed")
    )
    yield from _counter(
        "outpost_uplink_bytes_total",
        "Bytes sent to the receiver (compressed).",
        st.get("bytes_sent"),
    )
    yield from _counter(
        "outpost_uplink_readings_total",
        "Readings acknowledged by the receiver.",
        st.get("readings_sent"),
    )
    yield from _counter(
        "outpost_uplink_events_total", "Events acknowledged by the receiver.", st.get("events_sent")
    )
    yield from _counter(
        "outpost_uplink_heartbeats_total", "Heartbeats sent.", st.get("heartbeats_sent")
    )
    yield from _gauge(
        "outpost_uplink_backlog_rows",
        "Readings waiting to be sent (as the uplink last saw the buffer).",
        st.get("backlog_rows"),
    )
    yield from _gauge(
        "outpost_uplink_last_success_timestamp_seconds",
        "When the receiver last acknowledged something, since the Unix epoch.",
        st.get("last_success_ts"),
    )


def _commands(st: Mapping[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "outpost_commands_connected",
        "1 if the command channel's long-poll is connected.",
        value=1.0 if st.get("connected") else 0.0,
    )
    executed = CounterMetricFamily(
        "outpost_commands_executed",
        "Commands from the receiver, by outcome (succeeded, failed, refused, expired).",
        labels=["status"],
    )
    by_status: Mapping[str, int] = st.get("executed_by_status") or {}
    for status in ("succeeded", "failed", "refused", "expired"):
        executed.add_metric([status], by_status.get(status, 0))
    for status, n in sorted(by_status.items()):
        if status not in ("succeeded", "failed", "refused", "expired"):
            executed.add_metric([status], n)
    yield executed
    yield from _gauge(
        "outpost_commands_pending_results",
        "Command results not yet confirmed by the receiver.",
        st.get("pending_results"),
    )


def _sparkplug(st: Mapping[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "outpost_sparkplug_connected",
        "1 while the Sparkplug edge node is connected to its broker.",
        value=1.0 if st.get("connected") else 0.0,
    )
    yield from _gauge("outpost_sparkplug_bdseq", "bdSeq of the current session.", st.get("bdseq"))
    yield from _counter(
        "outpost_sparkplug_sessions_total", "MQTT sessions (each a new bdSeq).", st.get("sessions")
    )
    yield from _counter(
        "outpost_sparkplug_births_total",
        "NBIRTH messages (sessions and rebirths).",
        st.get("births"),
    )
    yield from _counter(
        "outpost_sparkplug_messages_total", "Sparkplug messages published.", st.get("messages")
    )
    readings = CounterMetricFamily(
        "outpost_sparkplug_readings",
        'Readings published as DDATA metrics; historical="true": held during an outage.',
        labels=["historical"],
    )
    readings.add_metric(["false"], st.get("readings_live") or 0)
    readings.add_metric(["true"], st.get("readings_historical") or 0)
    yield readings
    dcmd = CounterMetricFamily(
        "outpost_sparkplug_dcmd", "DCMD write requests by outcome.", labels=["outcome"]
    )
    dcmd.add_metric(["applied"], st.get("dcmd_applied") or 0)
    dcmd.add_metric(["refused"], st.get("dcmd_refused") or 0)
    yield dcmd
