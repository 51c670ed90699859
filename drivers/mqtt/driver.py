"""MQTT driver (aiomqtt): values arrive when published; the driver is not polled.

A point's address is a topic filter with an optional JSON path (``site/rack-3/env#$.temp``).
Without a path the payload itself is the number (``23.4``, ``true``/``false``). A payload
timestamp (``ts`` or ``timestamp`` at the top of a JSON object: ISO 8601 or epoch seconds or
milliseconds) is used when it is plausible, else the arrival time. A retained message without
such a timestamp is of unknown age: its readings are ``uncertain`` until a live message arrives.

Hot path: messages are decoded in the client's receive callback. aiomqtt hands each message
to its incoming queue; the queue class is a documented constructor argument (``queue_type``)
and ours decodes instead of queueing, which saves a task and an ``asyncio.wait`` per message.
Decoded readings collect in columnar arrays and go to the sink every 10 ms, so a burst of
messages becomes one batch. Topics are matched through a dict of exact topics, and
wildcard filters only for topics not seen before (results cached).

Health: broker loss gives every point ``bad:comm_failure`` once, then reconnects with capped
exponential backoff and resubscribes (retained values arrive again). A point not updated
within ``poll_interval`` x 3 gets one ``bad:stale`` reading. A malformed payload is counted,
logged at most once per topic per minute, and gives that point a bad reading; it never stops
the driver.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import structlog

from outpost.drivers.base import (
    Backoff,
    Driver,
    DriverContext,
    PointGroup,
    PollResult,
)
from outpost.drivers.mqtt.config import MqttConfigError, MqttDeviceConfig
from outpost.point_schedules.addresses import parse_json_path
from outpost.point_schedules.model import MqttAddress
from outpost.point_schedules.quality import Quality

log = structlog.get_logger(__name__)

__all__ = ["MqttDriver", "topic_matches"]

Sink = Callable[[Sequence[int], PollResult], None]

_NAN = float("nan")
_UNPARSED: Any = object()
_MALFORMED_LOG_EVERY_S = 60.0
_STALE_FACTOR = 3.0
_MAX_BATCH = 2048
# paho hands over one message per event-loop pass, so batching by loop pass gains nothing:
# readings wait up to this long to travel to the sink together (cheap against poll intervals).
_FLUSH_DELAY_S = 0.01
_WILDCARD_CACHE_MAX = 50_000
_SPLIT_MESSAGE = (
    "MQTT device {device}: its points were prepared as several groups; "
    "a push driver streams one group (all of the device's points)"
)


def topic_matches(filter_levels: Sequence[str], topic_levels: Sequence[str]) -> bool:
    """MQTT 3.1.1 topic matching: ``+`` one level, ``#`` any trailing levels (also none);
    wildcards at the first level do not match topics starting with ``$``."""
    if topic_levels and topic_levels[0].startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    n = len(topic_levels)
    for i, f in enumerate(filter_levels):
        if f == "#":
            return True
        if i >= n:
            return False
        if f != "+" and f != topic_levels[i]:
            return False
    return len(filter_levels) == n


@dataclass(slots=True)
class _Entry:
    """One point fed by a topic: where its value sits in the payload and how to scale it."""

    pos: int
    steps: tuple[str | int, ...] | None  # None: the payload is the number
    scale: float
    offset: float
    lo: float
    hi: float


@dataclass
class _Plan:
    filters: list[str]
    exact: dict[str, list[_Entry]]
    wildcards: list[tuple[tuple[str, ...], list[_Entry]]]
    interval: array  # per point: stale after interval x 3
    cache: dict[str, list[_Entry]] = field(default_factory=dict)

    def entries_for(self, topic: str) -> list[_Entry]:
        found = self.exact.get(topic)
        if found is not None and not self.wildcards:
            return found
        cached = self.cache.get(topic)
        if cached is not None:
            return cached
        entries = list(found or ())
        levels = topic.split("/")
        for filter_levels, more in self.wildcards:
            if topic_matches(filter_levels, levels):
                entries.extend(more)
        if len(self.cache) >= _WILDCARD_CACHE_MAX:
            self.cache.clear()  # topics with ever-changing names must not grow memory
        self.cache[topic] = entries
        return entries


class _Batch:
    """Readings waiting for the sink, columnar."""

    __slots__ = ("positions", "quality", "ts", "value")

    def __init__(self) -> None:
        self.positions: list[int] = []
        self.ts = array("d")
        self.value = array("d")
        self.quality = array("B")


class MqttDriver(Driver):
    polled = False
    config_model = MqttDeviceConfig
    config: MqttDeviceConfig

    def __init__(
        self, device_id: str, config: MqttDeviceConfig, context: DriverContext | None = None
    ) -> None:
        super().__init__(device_id, config, context)
        self._plan: _Plan | None = None
        self._preparing = False  # inside one event-loop step of prepare() calls
        self._split = False  # that step prepared more than one group
        self._replan = asyncio.Event()
        self._connected = False
        self._sink: Sink | None = None
        self._batch = _Batch()
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_seen = array("d")  # monotonic time of each point's last message
        self._stale = bytearray()
        self._malformed_logged: dict[str, tuple[float, int]] = {}
        self._ts_memo_raw: Any = None
        self._ts_memo: float | None = None
        #: Messages whose payload could not be decoded for at least one point.
        self.malformed = 0
        #: Messages decoded (for benchmarks and the status page).
        self.messages = 0
        #: Connection attempts, completed (re)subscriptions, stale sweeps: progress a caller
        #: (a test, the status page) can wait for instead of guessing a duration.
        self.connect_attempts = 0
        self.subscriptions = 0
        self.stale_checks = 0
        self.client_id = config.client_id or f"outpost-{device_id}-{random.getrandbits(32):08x}"

    @property
    def connected(self) -> bool:
        return self._connected

    # -------------------------------------------------------------------------------- setup

    def prepare(self, group: PointGroup) -> None:
        """Subscribe to ``group.points`` (replacing an earlier set); sink positions index
        ``group.points``. Give the driver all of the device's points in one group."""
        self._flush()  # readings decoded under the old plan go out with the old positions
        self._check_single_group(group)
        exact: dict[str, list[_Entry]] = {}
        wild: dict[str, list[_Entry]] = {}
        intervals = array("d")
        for pos, p in enumerate(group.points):
            if not isinstance(p.address, MqttAddress):
                raise ValueError(f"point {p.point_id}: not an MQTT address: {p.address}")
            steps = parse_json_path(p.address.json_path) if p.address.json_path else None
            entry = _Entry(
                pos,
                steps,
                p.scale,
                p.offset,
                -math.inf if p.min is None else p.min,
                math.inf if p.max is None else p.max,
            )
            topic = p.address.topic
            target = wild if ("+" in topic or "#" in topic) else exact
            target.setdefault(topic, []).append(entry)
            intervals.append(p.poll_interval or group.interval or self.config.poll_interval)
        self._plan = _Plan(
            filters=[*exact, *wild],
            exact=exact,
            wildcards=[(tuple(f.split("/")), entries) for f, entries in wild.items()],
            interval=intervals,
        )
        group.plan = self._plan
        now = time.monotonic()
        self._last_seen = array("d", [now]) * len(group.points)
        self._stale = bytearray(len(group.points))
        self._replan.set()

    def _check_single_group(self, group: PointGroup) -> None:
        """``stream(sink)`` carries no group, so a driver serves exactly one group.

        Groups of one schedule load are prepared back to back in one event-loop step; a
        reload prepares again in a later step. Siblings mean the agent split the device's
        points (by poll interval): positions could then be read against the wrong group, so
        ``stream`` refuses to run instead, loudly.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._preparing:
            if not self._split:
                log.error(
                    "mqtt.split_groups",
                    device=self.device_id,
                    hint=(
                        "the agent gave this MQTT device's points in several groups; a push "
                        "driver needs all of a device's points in one PointGroup (per-point "
                        "poll_interval still drives stale detection). Not streaming."
                    ),
                )
            self._split = True
            return
        self._split = False
        if loop is not None:
            self._preparing = True
            loop.call_soon(self._end_prepare_step)

    def _end_prepare_step(self) -> None:
        self._preparing = False

    async def read(self, group: PointGroup) -> PollResult:
        raise TypeError("MqttDriver is a push driver: use stream(sink)")

    # ------------------------------------------------------------------------------- stream

    async def stream(self, sink: Sink) -> None:
        if self._plan is None:
            raise RuntimeError("prepare() must be called before stream()")
        if self._split:
            raise RuntimeError(_SPLIT_MESSAGE.format(device=self.device_id))
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch_stale())
                await self._connection_loop()
        finally:
            self._flush()
            self._connected = False
            self._sink = None

    async def _connection_loop(self) -> None:
        cfg = self.config
        try:
            username, password = cfg.credentials()
        except MqttConfigError as exc:
            log.error("mqtt.config_error", device=self.device_id, error=str(exc))
            self._emit_all(Quality.BAD_CONFIG_ERROR)
            await asyncio.Event().wait()  # nothing will change until the config is fixed
            return
        tls = (
            aiomqtt.TLSParameters(ca_certs=str(cfg.ca_file) if cfg.ca_file else None)
            if cfg.tls
            else None
        )
        # Jitter keeps a fleet of gateways from reconnecting to a restarted broker in step.
        backoff = Backoff(cfg.reconnect_min, cfg.reconnect_max, jitter=0.2)
        outage_logged = False
        while True:
            self.connect_attempts += 1
            try:
                client = aiomqtt.Client(
                    cfg.host,
                    cfg.port,
                    username=username,
                    password=password,
                    identifier=self.client_id,
                    keepalive=cfg.keepalive,
                    timeout=cfg.timeout * (cfg.retries + 1),
                    tls_params=tls,
                    queue_type=_direct_queue(self._on_message),
                )
                async with client:
                    await self._subscribe(client)
                    self._connected = True
                    if outage_logged:
                        log.info("mqtt.reconnected", device=self.device_id, broker=self._broker())
                    else:
                        log.info("mqtt.connected", device=self.device_id, broker=self._broker())
                    outage_logged = False
                    backoff.reset()
                    self._reset_stale_clock()
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                was_connected = self._connected
                self._connected = False
                refused = _credentials_refused(exc)
                # Retrying fast will not fix a password: wait the longest delay.
                wait = backoff.hold() if refused else backoff.failed()
                if not outage_logged:
                    outage_logged = True
                    self._emit_all(
                        Quality.BAD_CONFIG_ERROR if refused else Quality.BAD_COMM_FAILURE
                    )
                    if refused:
                        log.error(
                            "mqtt.credentials_rejected",
                            device=self.device_id,
                            broker=self._broker(),
                            error=str(exc),
                            user=username,
                            hint="check username_env/password_env (or _file) and the broker's ACL",
                        )
                    else:
                        log.warning(
                            "mqtt.broker_lost" if was_connected else "mqtt.connect_failed",
                            device=self.device_id,
                            broker=self._broker(),
                            error=str(exc),
                            retry_in_s=round(wait, 2),
                        )
                else:
                    log.debug("mqtt.reconnect_failed", device=self.device_id, error=str(exc))
            else:
                wait = backoff.failed()  # the session ended without an error: start over
            await asyncio.sleep(wait)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        assert self._plan is not None
        self._replan.clear()
        filters = self._plan.filters
        if filters:
            await client.subscribe([(f, int(self.config.qos)) for f in filters])
        self.subscriptions += 1

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Wait for broker loss (raises MqttError); resubscribe when the schedule changes."""
        subscribed = list(self._plan.filters) if self._plan else []
        messages = client.messages
        while True:
            receive = asyncio.ensure_future(messages.__anext__())
            replan = asyncio.ensure_future(self._replan.wait())
            try:
                done, _ = await asyncio.wait({receive, replan}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                receive.cancel()
                replan.cancel()
            if receive in done:
                receive.result()  # our queue never holds messages: only an error ends this
            if replan in done:
                if self._split:
                    raise RuntimeError(_SPLIT_MESSAGE.format(device=self.device_id))
                if subscribed:
                    await client.unsubscribe(subscribed)
                await self._subscribe(client)
                subscribed = list(self._plan.filters) if self._plan else []
                log.info("mqtt.resubscribed", device=self.device_id, filters=len(subscribed))

    def _broker(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    # ----------------------------------------------------------------------------- messages

    def _on_message(self, message: aiomqtt.Message) -> None:
        try:
            self._decode(message.topic.value, message.payload, bool(message.retain))
        except Exception as exc:  # never let one message break the client's receive path
            self.malformed += 1
            self._log_malformed(message.topic.value, f"{type(exc).__name__}: {exc}")

    def _decode(self, topic: str, payload: Any, retained: bool = False) -> None:
        """Decode one message into the batch. A retained message is the broker's last copy,
        of any age: without a usable payload timestamp its readings are ``uncertain`` (a live
        message, or a timestamp that says when it was measured, makes them good again)."""
        plan = self._plan
        if plan is None:
            return
        entries = plan.entries_for(topic)
        if not entries:
            return
        self.messages += 1
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = str(payload).encode()  # aiomqtt gives bytes; paho may give int/float
        now = time.time()
        mono = time.monotonic()
        doc = _UNPARSED
        ts = now
        dated = False  # the payload said when it was measured
        batch = self._batch
        problem = ""
        for e in entries:
            quality = Quality.GOOD
            if e.steps is None:
                raw = _plain_number(payload)
                if raw is None:
                    problem = "payload is not a number (give a JSON path, e.g. topic#$.value)"
                    quality = Quality.BAD_CONFIG_ERROR
            else:
                if doc is _UNPARSED:
                    doc = _loads(payload)
                    if doc is not _UNPARSED:
                        stamp = self._payload_ts(doc, now)
                        dated = stamp is not None
                        ts = now if stamp is None else stamp
                if doc is _UNPARSED:
                    raw = None
                    problem = "payload is not valid JSON"
                    quality = Quality.BAD_DEVICE_ERROR
                else:
                    raw = _number(_walk(doc, e.steps))
                    if raw is None:
                        problem = "JSON path not found or not a number"
                        quality = Quality.BAD_CONFIG_ERROR
            if raw is None:
                value = _NAN
            else:
                value = raw * e.scale + e.offset
                if not e.lo <= value <= e.hi:
                    quality = Quality.UNCERTAIN_OUT_OF_RANGE
                elif retained and not dated and quality == Quality.GOOD:
                    quality = Quality.UNCERTAIN
            batch.positions.append(e.pos)
            batch.ts.append(ts)
            batch.value.append(value)
            batch.quality.append(quality)
            self._last_seen[e.pos] = mono
            self._stale[e.pos] = 0
        if problem:
            self.malformed += 1
            self._log_malformed(topic, problem, payload)
        if len(batch.positions) >= _MAX_BATCH:
            self._flush()
        elif not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_later(_FLUSH_DELAY_S, self._flush)

    def _payload_ts(self, doc: Any, now: float) -> float | None:
        """The payload's own timestamp when it has a plausible one, else None."""
        if not isinstance(doc, dict):
            return None
        raw = doc.get("ts", doc.get("timestamp"))
        if raw is None:
            return None
        ts = _parse_ts(raw)
        if (
            ts is None
            or ts > now + self.config.max_clock_skew
            or ts < now - self.config.max_payload_age
        ):
            return None
        return ts

    def _log_malformed(self, topic: str, problem: str, payload: bytes = b"") -> None:
        now = time.monotonic()
        last, suppressed = self._malformed_logged.get(topic, (-math.inf, 0))
        if now - last < _MALFORMED_LOG_EVERY_S:
            self._malformed_logged[topic] = (last, suppressed + 1)
            return
        if len(self._malformed_logged) > 10_000:
            self._malformed_logged.clear()
        self._malformed_logged[topic] = (now, 0)
        log.warning(
            "mqtt.malformed_payload",
            device=self.device_id,
            topic=topic,
            problem=problem,
            payload=payload[:80].decode("utf-8", "replace"),
            suppressed_since_last=suppressed,
            total_malformed=self.malformed,
        )

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch = self._batch
        if not batch.positions:
            return
        self._batch = _Batch()
        if self._sink is not None:
            try:
                self._sink(batch.positions, PollResult(batch.ts, batch.value, batch.quality))
            except Exception:
                # The sink is the agent's; its failure must not be blamed on a payload or
                # stop the client's receive path.
                log.exception(
                    "mqtt.sink_failed", device=self.device_id, readings=len(batch.positions)
                )

    def _emit_all(self, quality: Quality) -> None:
        n = len(self._last_seen)
        if n == 0 or self._sink is None:
            return
        self._flush()
        self._sink(list(range(n)), _bad(n, quality, time.time()))

    # -------------------------------------------------------------------------------- stale

    def _reset_stale_clock(self) -> None:
        now = time.monotonic()
        for i in range(len(self._last_seen)):
            self._last_seen[i] = now
        self._stale = bytearray(len(self._last_seen))

    async def _watch_stale(self) -> None:
        while True:
            plan = self._plan
            shortest = min(plan.interval) if plan is not None and len(plan.interval) else 5.0
            await asyncio.sleep(min(max(shortest / 2, 0.05), 5.0))
            self.stale_checks += 1
            if not self._connected or plan is None or self._sink is None:
                continue
            now = time.monotonic()
            last, stale, interval = self._last_seen, self._stale, plan.interval
            gone = [
                i
                for i in range(min(len(last), len(interval)))
                if not stale[i] and now - last[i] > interval[i] * _STALE_FACTOR
            ]
            if not gone:
                continue
            for i in gone:
                stale[i] = 1
            self._flush()
            self._sink(gone, _bad(len(gone), Quality.BAD_STALE, time.time()))
            log.info("mqtt.stale", device=self.device_id, points=len(gone))

    async def close(self) -> None:
        self._connected = False


# ---------------------------------------------------------------------------------- helpers


def _direct_queue(handler: Callable[[aiomqtt.Message], None]) -> type[asyncio.Queue[Any]]:
    class _DirectQueue(asyncio.Queue[Any]):
        """Hands each message to ``handler`` at once instead of queueing it."""

        def put_nowait(self, item: aiomqtt.Message) -> None:
            handler(item)

    return _DirectQueue


# CONNACK codes for refused credentials: MQTT 3.1.1 (4, 5) and their MQTT 5 reason codes.
_AUTH_REFUSED = frozenset((4, 5, 134, 135))


def _credentials_refused(exc: aiomqtt.MqttError) -> bool:
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return False
    code = getattr(exc.rc, "value", exc.rc)
    return code in _AUTH_REFUSED


def _bad(n: int, quality: Quality, ts: float) -> PollResult:
    return PollResult(array("d", [ts]) * n, array("d", [_NAN]) * n, array("B", [quality]) * n)


_TRUE = (b"true", b"on")
_FALSE = (b"false", b"off")


def _plain_number(payload: bytes) -> float | None:
    try:
        value = float(payload)
    except ValueError:
        text = payload.strip().lower()
        if text in _TRUE:
            return 1.0
        if text in _FALSE:
            return 0.0
        return None
    return value if math.isfinite(value) else None


def _loads(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return _UNPARSED


def _walk(doc: Any, steps: tuple[str | int, ...]) -> Any:
    for step in steps:
        try:
            doc = doc[step]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _parse_ts(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        ts = float(raw)
    elif isinstance(raw, str):
        try:
            ts = float(raw)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(raw)
            except ValueError:
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)  # sensors without a zone speak UTC
            return parsed.timestamp()
    else:
        return None
    if not math.isfinite(ts):
        return None
    return ts / 1000.0 if ts > 1e11 else ts  # 1e11 s is the year 5138: that is milliseconds
