"""The Sparkplug B edge node: the site on an MQTT broker, per Sparkplug B 3.0.

Session: every MQTT connection carries a new ``bdSeq`` (0–255, wrapping, persisted in
data_dir so a restart continues it) in its will (NDEATH, QoS 1) and in the NBIRTH that
follows; the node subscribes to NCMD/DCMD first, then publishes NBIRTH (``seq`` 0) and one
DBIRTH per Outpost device that is up, each with every metric's name, alias, datatype,
current value and properties (engUnit, engLow/engHigh from min/max, Documentation,
readOnly, Quality). Then DDATA by alias only, ``seq`` 1, 2 … 255, 0 … on every message.
A device that goes down gets DDEATH, and DBIRTH when it answers again. NCMD ``Node
Control/Rebirth`` = true, a schedule reload or an alarm the births did not list republish
the births (same bdSeq: the MQTT session is the same). A clean stop publishes NDEATH itself.

Values come from the buffer, not the live cache, with their own cursor over ``seq``
(persisted; independent of the uplink's): readings committed after the session's NBIRTH are
live, published first every round; older unpublished ones (a broker outage, a restart) are
the backlog, published oldest first with ``is_historical = true`` in what the round has left
(at least a quarter of ``batch_size``, so neither starves the other). The cursor moves one
MQTT message at a time, so an error in the middle of a round republishes nothing already
sent; ranges published live above the backlog cursor are kept as "islands" and skipped.

Alarms: one String metric per alarm (``Alarms/<point or device>/<kind>``, value the ISA-18.2
state, property ``priority``), DDATA when a state changes.

Writes (DCMD): refused, with a ``sparkplug.dcmd_refused`` event, unless ``allow_writes``; then
each metric goes through the host's guarded write path with actor ``sparkplug:<broker host>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
import structlog
from google.protobuf.message import DecodeError

from outpost.buffer.models import ReadingRows
from outpost.cloud.sparkplug import payloads as sp
from outpost.cloud.sparkplug import sparkplug_b_pb2 as pb
from outpost.cloud.sparkplug.config import SparkplugConfig
from outpost.drivers.base import Backoff
from outpost.point_schedules.model import Point

log = structlog.get_logger(__name__)

ALARM_ALIAS_BASE = 1 << 40  # point metrics use the buffer's point key as alias
NODE_ALIAS_BASE = 1 << 48


class WriteRefusedError(Exception):
    """The host refused a write (unknown point, not writable, out of range, ...)."""


class ReadingSource(Protocol):
    """What the node reads of the buffer (``outpost.buffer.store.Buffer`` provides it)."""

    @property
    def last_seq(self) -> int: ...

    def read_after(
        self, after_seq: int, limit: int, until_seq: int | None = None
    ) -> ReadingRows: ...


@dataclass(frozen=True, slots=True)
class AlarmState:
    alarm_id: str
    device: str
    name: str  # metric name
    state: str
    priority: str


class NodeHost(Protocol):
    """What the node needs of the agent (``agent.core.sparkplug_host`` provides it)."""

    def schedule_version(self) -> str | None: ...

    def device_points(self) -> dict[str, list[Point]]:
        """Every enabled device with its points, in schedule order."""
        ...

    def device_up(self) -> dict[str, bool]: ...

    def live(self) -> dict[str, tuple[float | None, int, float | None]]:
        """Per point: newest value, quality code, timestamp (epoch s) or None."""
        ...

    def alarm_states(self) -> list[AlarmState]: ...

    def point_keys(self, point_ids: Sequence[str]) -> list[int]: ...

    async def write(self, point_id: str, value: float, *, actor: str) -> str:
        """Write through the guarded path; returns the outcome, raises WriteRefusedError."""
        ...

    def emit(
        self, ts: float, kind: str, source: str, actor: str | None, detail: Mapping[str, Any]
    ) -> None: ...


@dataclass
class NodeState:
    """Persisted: the next bdSeq, the backlog cursor and the live islands above it."""

    next_bdseq: int = 0
    cursor: int | None = None
    islands: list[list[int]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> NodeState:
        try:
            raw = json.loads(path.read_text())
            return cls(
                next_bdseq=int(raw["next_bdseq"]) % 256,
                cursor=None if raw.get("cursor") is None else int(raw["cursor"]),
                islands=[[int(a), int(b)] for a, b in raw.get("islands", [])],
            )
        except FileNotFoundError:
            return cls()
        except (ValueError, KeyError, TypeError) as exc:
            # Unreadable: start a fresh session count; the cursor restarts at the buffer's end.
            log.error("sparkplug.state_unreadable", path=str(path), error=str(exc))
            return cls()

    def save(self, path: Path, *, durable: bool) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        data = json.dumps(
            {"next_bdseq": self.next_bdseq, "cursor": self.cursor, "islands": self.islands}
        )
        with open(tmp, "w") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)


@dataclass
class NodeCounters:
    connected: bool = False
    sessions: int = 0
    births: int = 0
    messages: int = 0
    readings_live: int = 0
    readings_historical: int = 0
    readings_skipped: int = 0
    dcmd_applied: int = 0
    dcmd_refused: int = 0
    last_error: str | None = None


class SparkplugNode:
    def __init__(
        self,
        config: SparkplugConfig,
        *,
        edge_node_id: str,
        source: ReadingSource,
        host: NodeHost,
        state_path: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.group = config.group_id
        self.edge = edge_node_id
        self.source = source
        self.host = host
        self.state_path = state_path
        self.clock = clock
        self.counters = NodeCounters()
        self.actor = f"sparkplug:{config.host}"
        self._state = NodeState()
        self._saved: tuple[int, int | None, list[list[int]]] | None = None
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()
        self._seq = 0
        self._bdseq = 0
        # per birth
        self._points: dict[str, sp.PointMetric] = {}
        self._device_of: dict[str, str] = {}
        self._by_alias: dict[str, dict[int, str]] = {}
        self._alarm_alias: dict[str, int] = {}
        self._alarm_sent: dict[str, str] = {}
        self._born: set[str] = set()
        self._birth_version: str | None = None
        # per session
        self._live_from = 0
        self._live_pos = 0

    # ------------------------------------------------------------------ views

    def status(self) -> dict[str, Any]:
        c = self.counters
        return {
            "url": self.config.url,
            "group_id": self.group,
            "edge_node_id": self.edge,
            "connected": c.connected,
            "bdseq": self._bdseq,
            "sessions": c.sessions,
            "births": c.births,
            "messages": c.messages,
            "readings_live": c.readings_live,
            "readings_historical": c.readings_historical,
            "cursor": self._state.cursor,
            "writes_allowed": self.config.allow_writes,
            "dcmd_applied": c.dcmd_applied,
            "dcmd_refused": c.dcmd_refused,
            "last_error": c.last_error,
        }

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Connect, birth, publish until cancelled; reconnect with backoff on broker loss."""
        self._state = await asyncio.to_thread(NodeState.load, self.state_path)
        if self._state.cursor is None:
            # First start: what the buffer already holds predates Sparkplug; start at its end
            # unless told to backfill it.
            self._state.cursor = 0 if self.config.backfill_on_first_start else self.source.last_seq
        backoff = Backoff(self.config.backoff_min, self.config.backoff_max, jitter=0.2)
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self.counters.last_error = str(exc)
                log.warning("sparkplug.disconnected", error=str(exc))
            finally:
                self.counters.connected = False
                self._client = None
                await asyncio.to_thread(self._save, False)
            if time.monotonic() - started > 60:  # a session that lasted: start over from short
                backoff.reset()
            await asyncio.sleep(backoff.failed())

    def _save(self, durable: bool) -> None:
        # Only when something moved: an idle site does not rewrite the file twice a second
        # on the box's flash.
        st = self._state
        snapshot = (st.next_bdseq, st.cursor, [list(i) for i in st.islands])
        if durable or snapshot != self._saved:
            st.save(self.state_path, durable=durable)
            self._saved = snapshot

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.tls:
            return None
        ca = self.config.ca_file
        return ssl.create_default_context(cafile=str(ca) if ca else None)

    def _credentials(self) -> tuple[str | None, str | None]:
        cfg = self.config
        user = os.environ.get(cfg.username_env) if cfg.username_env else None
        password = os.environ.get(cfg.password_env) if cfg.password_env else None
        missing = [
            env
            for env, value in ((cfg.username_env, user), (cfg.password_env, password))
            if env and not value
        ]
        if missing:  # the broker will refuse us: say why (names only, never values)
            log.error("sparkplug.credentials_missing", env=missing)
        return user, password

    async def _session(self) -> None:
        bdseq = self._state.next_bdseq
        self._state.next_bdseq = (bdseq + 1) % 256
        await asyncio.to_thread(self._save, True)  # a restart never reuses this bdSeq
        self._bdseq = bdseq
        user, password = self._credentials()
        will = aiomqtt.Will(
            sp.topic(self.group, "NDEATH", self.edge), self._death(bdseq), qos=1, retain=False
        )
        client = aiomqtt.Client(
            self.config.host,
            self.config.port,
            identifier=self.config.client_id or f"outpost-{self.group}-{self.edge}",
            username=user,
            password=password,
            will=will,
            keepalive=self.config.keepalive_s,
            clean_session=True,
            tls_context=self._tls(),
            timeout=10,
        )
        async with client:
            self._client = client
            await client.subscribe(sp.topic(self.group, "NCMD", self.edge), qos=1)
            await client.subscribe(sp.topic(self.group, "DCMD", self.edge) + "/+", qos=1)
            self.counters.connected = True
            self.counters.sessions += 1
            self._live_from = self._live_pos = self.source.last_seq
            log.info(
                "sparkplug.connected",
                broker=f"{self.config.host}:{self.config.port}",
                group=self.group,
                edge_node=self.edge,
                bdseq=bdseq,
                backlog_from=self._state.cursor,
                live_from=self._live_from,
            )
            try:
                async with self._lock:
                    await self._birth()
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._commands(client), name="sparkplug-commands")
                        tg.create_task(self._publish_loop(), name="sparkplug-publish")
                except ExceptionGroup as eg:
                    lost = [e for e in eg.exceptions if isinstance(e, aiomqtt.MqttError)]
                    if lost:
                        raise lost[0] from None  # the broker went away: reconnect
                    raise
            except asyncio.CancelledError:
                # A clean stop says goodbye itself (the will is for unclean ones).
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(
                        client.publish(
                            sp.topic(self.group, "NDEATH", self.edge), self._death(bdseq), qos=1
                        ),
                        1.0,
                    )
                raise

    # ------------------------------------------------------------------ payloads

    def _death(self, bdseq: int) -> bytes:
        p = pb.Payload(timestamp=int(self.clock() * 1000))
        m = p.metrics.add()
        m.name, m.datatype, m.long_value = sp.BDSEQ, pb.Int64, bdseq
        return p.SerializeToString()

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) % 256
        return seq

    async def _send(self, kind: str, payload: pb.Payload, device: str | None = None,
                    qos: int = 0) -> None:  # fmt: skip
        assert self._client is not None
        payload.seq = self._next_seq()
        await self._client.publish(
            sp.topic(self.group, kind, self.edge, device), payload.SerializeToString(), qos=qos
        )
        self.counters.messages += 1

    async def _birth(self) -> None:
        """NBIRTH (seq 0) and a DBIRTH per device that is up. Caller holds the lock."""
        host = self.host
        devices = host.device_points()
        ids = [p.point_id for pts in devices.values() for p in pts]
        keys = await asyncio.to_thread(host.point_keys, ids)
        key_of = dict(zip(ids, keys, strict=True))
        self._points = {}
        self._device_of = {}
        self._by_alias = {}
        for device, pts in devices.items():
            aliases = self._by_alias.setdefault(device, {})
            for p in pts:
                pm = sp.PointMetric(p, key_of[p.point_id], sp.datatype_of(p))
                self._points[p.point_id] = pm
                self._device_of[p.point_id] = device
                aliases[pm.alias] = p.point_id
        alarms = sorted(host.alarm_states(), key=lambda a: a.alarm_id)
        self._alarm_alias = {a.alarm_id: ALARM_ALIAS_BASE + i for i, a in enumerate(alarms)}
        self._alarm_sent = {}
        self._birth_version = host.schedule_version()

        now_ms = int(self.clock() * 1000)
        self._seq = 0
        nbirth = pb.Payload(timestamp=now_ms)
        m = nbirth.metrics.add()
        m.name, m.alias, m.timestamp = sp.BDSEQ, NODE_ALIAS_BASE, now_ms
        m.datatype, m.long_value = pb.Int64, self._bdseq
        m = nbirth.metrics.add()
        m.name, m.alias, m.timestamp = sp.REBIRTH, NODE_ALIAS_BASE + 1, now_ms
        m.datatype, m.boolean_value = pb.Boolean, False
        await self._send("NBIRTH", nbirth)
        self.counters.births += 1
        self._born = set()
        ups = host.device_up()
        live = host.live()
        for device in devices:
            if ups.get(device):
                await self._device_birth(device, devices[device], live, alarms)
        log.info("sparkplug.birth", bdseq=self._bdseq, devices=sorted(self._born))

    async def _device_birth(
        self,
        device: str,
        points: list[Point],
        live: Mapping[str, tuple[float | None, int, float | None]],
        alarms: list[AlarmState],
    ) -> None:
        now_ms = int(self.clock() * 1000)
        payload = pb.Payload(timestamp=now_ms)
        for p in points:
            value, quality, ts = live.get(p.point_id, (None, 128, None))
            sp.point_birth(
                payload.metrics.add(),
                self._points[p.point_id],
                value,
                quality,
                now_ms if ts is None else int(ts * 1000),
            )
        for a in alarms:
            if a.device != device or a.alarm_id not in self._alarm_alias:
                continue
            m = payload.metrics.add()
            m.name, m.alias, m.timestamp = a.name, self._alarm_alias[a.alarm_id], now_ms
            m.datatype, m.string_value = pb.String, a.state
            sp.add_properties(m, {"priority": a.priority})
            self._alarm_sent[a.alarm_id] = a.state
        await self._send("DBIRTH", payload, device)
        self._born.add(device)

    # ------------------------------------------------------------------ publishing

    async def _publish_loop(self) -> None:
        while True:
            async with self._lock:
                await self._round()
            await asyncio.to_thread(self._save, False)
            await asyncio.sleep(self.config.publish_interval_s)

    async def _round(self) -> None:
        host = self.host
        if host.schedule_version() != self._birth_version:
            log.info("sparkplug.rebirth", reason="schedule")
            await self._birth()
        await self._device_states()
        await self._alarm_changes()
        state = self._state
        assert state.cursor is not None
        head = self.source.last_seq
        batch = self.config.batch_size
        sent_live = 0
        if self._live_pos < head:
            rows = await asyncio.to_thread(self.source.read_after, self._live_pos, batch, head)
            sent_live = len(rows)
            await self._publish_rows(rows, historical=False, advance=self._advance_live)
        bound = state.islands[0][0] - 1 if state.islands else self._live_from
        if state.cursor < bound:
            budget = max(batch - sent_live, batch // 4)
            rows = await asyncio.to_thread(self.source.read_after, state.cursor, budget, bound)
            if len(rows) == 0:
                self._advance_backlog(bound)  # nothing left there (evicted): skip the gap
            else:
                await self._publish_rows(rows, historical=True, advance=self._advance_backlog)

    def _advance_live(self, seq: int) -> None:
        self._live_pos = seq
        start = self._live_from + 1
        islands = self._state.islands
        for island in islands:
            if island[0] == start:
                island[1] = seq
                break
        else:
            islands.append([start, seq])
            islands.sort()
        self._merge()

    def _advance_backlog(self, seq: int) -> None:
        assert self._state.cursor is not None
        self._state.cursor = max(self._state.cursor, seq)
        self._merge()

    def _merge(self) -> None:
        st = self._state
        assert st.cursor is not None
        while st.islands and st.islands[0][0] <= st.cursor + 1:
            st.cursor = max(st.cursor, st.islands.pop(0)[1])

    async def _publish_rows(
        self, rows: ReadingRows, *, historical: bool, advance: Callable[[int], None]
    ) -> None:
        """DDATA in seq order, one message per run of one device's readings (at most
        ``max_metrics_per_message``); ``advance`` after each message, so nothing is sent twice."""
        n = len(rows)
        i = 0
        cap = self.config.max_metrics_per_message
        device_of, points, born = self._device_of, self._points, self._born
        while i < n:
            device = device_of.get(rows.point_id[i])
            j = i
            payload = pb.Payload(timestamp=int(self.clock() * 1000))
            count = 0
            skipped = 0
            while j < n and count < cap:
                pid = rows.point_id[j]
                if device_of.get(pid) != device:
                    break
                pm = points.get(pid)
                if pm is None or device not in born:
                    # a point no longer scheduled, or a device that is DDEATH: nothing to say
                    skipped += 1
                else:
                    sp.point_data(
                        payload.metrics.add(),
                        pm,
                        rows.value[j],
                        rows.quality[j],
                        int(rows.ts[j] * 1000),
                        historical,
                    )
                    count += 1
                j += 1
            if count:
                await self._send("DDATA", payload, device, qos=self.config.data_qos)
                if historical:
                    self.counters.readings_historical += count
                else:
                    self.counters.readings_live += count
            self.counters.readings_skipped += skipped
            advance(rows.seq[j - 1])
            i = j

    async def _device_states(self) -> None:
        ups = self.host.device_up()
        devices: dict[str, list[Point]] | None = None
        for device in list(self._by_alias):
            up = bool(ups.get(device))
            if up and device not in self._born:
                devices = devices or self.host.device_points()
                if device in devices:
                    await self._device_birth(
                        device, devices[device], self.host.live(), self.host.alarm_states()
                    )
                    log.info("sparkplug.device_birth", device=device)
            elif not up and device in self._born:
                await self._send("DDEATH", pb.Payload(timestamp=int(self.clock() * 1000)), device)
                self._born.discard(device)
                log.info("sparkplug.device_death", device=device)

    async def _alarm_changes(self) -> None:
        changed: dict[str, list[AlarmState]] = {}
        for a in self.host.alarm_states():
            if a.alarm_id not in self._alarm_alias:
                log.info("sparkplug.rebirth", reason="new alarm", alarm=a.alarm_id)
                await self._birth()
                return
            if a.device in self._born and self._alarm_sent.get(a.alarm_id) != a.state:
                changed.setdefault(a.device, []).append(a)
        now_ms = int(self.clock() * 1000)
        for device, states in changed.items():
            payload = pb.Payload(timestamp=now_ms)
            for a in states:
                m = payload.metrics.add()
                m.alias, m.timestamp, m.string_value = (
                    self._alarm_alias[a.alarm_id],
                    now_ms,
                    a.state,
                )
            await self._send("DDATA", payload, device)
            for a in states:
                self._alarm_sent[a.alarm_id] = a.state

    # ------------------------------------------------------------------ commands

    async def _commands(self, client: aiomqtt.Client) -> None:
        ncmd = sp.topic(self.group, "NCMD", self.edge)
        dcmd_prefix = sp.topic(self.group, "DCMD", self.edge) + "/"
        async for message in client.messages:
            topic = str(message.topic)
            body = message.payload
            if not isinstance(body, bytes | bytearray):
                log.warning("sparkplug.command_undecodable", topic=topic)
                continue
            try:
                payload = sp.decode(bytes(body))
            except DecodeError:
                log.warning("sparkplug.command_undecodable", topic=topic)
                continue
            if topic == ncmd:
                await self._node_command(payload)
            elif topic.startswith(dcmd_prefix):
                await self._device_command(topic.removeprefix(dcmd_prefix), payload)

    async def _node_command(self, payload: pb.Payload) -> None:
        for m in payload.metrics:
            named = m.name == sp.REBIRTH or (not m.name and m.alias == NODE_ALIAS_BASE + 1)
            if named and m.boolean_value:
                log.info("sparkplug.rebirth", reason="NCMD")
                async with self._lock:
                    await self._birth()
                return
        log.info("sparkplug.ncmd_ignored", metrics=[m.name or m.alias for m in payload.metrics])

    async def _device_command(self, device: str, payload: pb.Payload) -> None:
        aliases = self._by_alias.get(device, {})
        for m in payload.metrics:
            point_id = m.name if m.name else aliases.get(m.alias)
            pm = self._points.get(point_id) if point_id is not None else None
            value = sp.get_value(m, pm.datatype if pm is not None else None)
            if point_id is None or self._device_of.get(point_id) != device:
                await self._refuse(device, m.name or str(m.alias), value, "unknown metric")
                continue
            if not isinstance(value, float):
                await self._refuse(device, point_id, value, "not a number")
                continue
            if not self.config.allow_writes:
                await self._refuse(
                    device,
                    point_id,
                    value,
                    "writes from Sparkplug are off ([sparkplug] allow_writes)",
                )
                continue
            try:
                outcome = await self.host.write(point_id, value, actor=self.actor)
            except WriteRefusedError as exc:
                await self._refuse(device, point_id, value, str(exc))
                continue
            self.counters.dcmd_applied += 1
            log.info("sparkplug.dcmd_write", device=device, point_id=point_id, value=value,
                     outcome=outcome)  # fmt: skip

    async def _refuse(self, device: str, point: str, value: object, reason: str) -> None:
        self.counters.dcmd_refused += 1
        log.warning("sparkplug.dcmd_refused", device=device, point_id=point, reason=reason)
        self.host.emit(
            self.clock(),
            "sparkplug.dcmd_refused",
            point,
            self.actor,
            {"device": device, "value": value, "reason": reason},
        )
