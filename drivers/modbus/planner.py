"""Modbus request planning and per-request decoding (the hot path).

``build_plan`` turns a device's points into as few read requests as possible per table, within
``max_registers_per_request`` (``max_bits_per_request`` for coils/discrete inputs) and
``max_gap`` (unused registers a request may read across; times 16 bits for the bit tables). Greedy
merging of the address-sorted spans is optimal for this: a span joins the open request exactly
when no plan could serve both with one request.

Each request carries precompiled ``struct.Struct`` layers covering its whole block, including
pad bytes, so decoding a response is one ``unpack_from`` per layer (usually one per request)
plus a loop that drops values into the ``PollResult`` arrays at precomputed positions. Scale,
offset, float sanity and range checks run only over the points that need them.

A plan is kept per request, not per point: positions in flat ``array('I')``, a struct format
with runs of equal fields folded (``125H``, one compiled code instead of 125), and no
``PointSpec`` per point. Specs are compiled again from the group's points (which the group
holds anyway) only when a request is split, re-merged or named in a log line.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from outpost.drivers.modbus.codec import (
    FLOAT_TYPES,
    LAYOUT,
    NATURAL_LAYOUTS,
    RAW,
    STRUCT_CODE,
    block_views,
    views_of_raw,
)
from outpost.point_schedules.model import DataType, ModbusAddress, Point
from outpost.point_schedules.quality import Quality

NAN = float("nan")
INF = float("inf")
NEG_INF = -INF  # one object: negating INF in a function allocates a new float every call

#: Modbus read function code per table
READ_FC: dict[str, int] = {"coil": 1, "di": 2, "hr": 3, "ir": 4}
TABLE_NAME: dict[str, str] = {
    "coil": "coils",
    "di": "discrete inputs",
    "hr": "holding registers",
    "ir": "input registers",
}

_GOOD = int(Quality.GOOD)
_OUT_OF_RANGE = int(Quality.UNCERTAIN_OUT_OF_RANGE)
_DEVICE_ERROR = int(Quality.BAD_DEVICE_ERROR)


@dataclass(slots=True)
class PointSpec:
    """One point compiled for decoding; ``pos`` indexes the group's points."""

    pos: int
    point_id: str
    table: str
    start: int  # register or bit address
    size: int  # registers (register tables) or bits (bit tables)
    data_type: DataType
    layout: tuple[int, str]  # (view, struct prefix) for register values
    mask: int | None  # register tables: bit mask for bool/bitN points, None for numbers
    scale: float
    offset: float
    lo: float
    hi: float

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def address_text(self) -> str:
        if self.mask is not None and self.mask != 0xFFFF:
            return f"{self.table}:{self.start}.{self.mask.bit_length() - 1}"
        return f"{self.table}:{self.start}"


@dataclass(slots=True)
class Layer:
    """One struct over a whole register block. ``masks`` set: bool/bit fields
    (field index, mask, position); otherwise the fields map 1:1 onto ``positions``."""

    view: int
    st: struct.Struct
    positions: array  # array('I')
    masks: list[tuple[int, int, int]] | None = None
    run: int = -1  # positions are run, run+1, ...: one slice assignment instead of a loop
    has_float: bool = False


@dataclass(slots=True)
class Request:
    table: str
    start: int
    count: int
    source: Sequence[Point]  # the group's points (shared by all requests of its plan)
    positions: array  # array('I'): positions in ``source`` of the request's points, by address
    layers: list[Layer] = field(default_factory=list)
    bits: list[tuple[int, int]] = field(default_factory=list)  # (offset in response, pos)
    need_raw: bool = False
    need_swapped: bool = False
    scaled: list[tuple[int, float, float]] = field(default_factory=list)
    floats: list[int] = field(default_factory=list)
    ranged: list[tuple[int, float, float]] = field(default_factory=list)
    ts_runs: list[tuple[int, int]] = field(default_factory=list)  # contiguous position runs
    # ranged points at contiguous positions: (start, stop, tightest low, tightest high) lets one
    # min()/max() over the slice clear them all in the common all-in-range case
    range_run: tuple[int, int, float, float] | None = None
    # failure bookkeeping, so a persistent fault is logged once rather than every poll
    failures: int = 0
    reported: bool = False

    @property
    def fc(self) -> int:
        return READ_FC[self.table]

    @property
    def is_bits(self) -> bool:
        return self.table in ("coil", "di")

    @property
    def address_text(self) -> str:
        return f"{self.table}:{self.start}+{self.count}"

    @property
    def specs(self) -> list[PointSpec]:
        """The request's points compiled again (cold paths only: splits, logs, re-planning)."""
        return [compile_point(pos, self.source[pos]) for pos in self.positions]

    def splittable(self) -> bool:
        return len({s.start for s in self.specs}) > 1


@dataclass(slots=True)
class ModbusPlan:
    n: int
    requests: list[Request]
    config_errors: list[tuple[int, str]]  # (pos, reason): never polled, always BAD_CONFIG_ERROR

    @property
    def request_count(self) -> int:
        return len(self.requests)


class PlanError(ValueError):
    """A point cannot be read by this driver (its reason goes to the log and the quality)."""


def compile_point(pos: int, point: Point) -> PointSpec:
    address = point.address
    if not isinstance(address, ModbusAddress):
        raise PlanError(f"address {address} is not a Modbus address")
    lo = point.min if point.min is not None else NEG_INF
    hi = point.max if point.max is not None else INF
    if address.is_bit_table:
        if address.bit is not None:
            raise PlanError(f"{address}: coils and discrete inputs have no bit index")
        return PointSpec(
            pos,
            point.point_id,
            address.table,
            address.address,
            1,
            DataType.BOOL,
            LAYOUT[point.byte_order],
            None,
            point.scale,
            point.offset,
            lo,
            hi,
        )
    data_type = point.data_type
    if address.bit is not None:
        if not 0 <= address.bit <= 15:
            raise PlanError(f"{address}: bit index must be 0..15")
        return PointSpec(
            pos,
            point.point_id,
            address.table,
            address.address,
            1,
            DataType.BOOL,
            NATURAL_LAYOUTS[0],
            1 << address.bit,
            point.scale,
            point.offset,
            lo,
            hi,
        )
    if data_type is None:
        raise PlanError(f"{address}: a register point needs a data_type")
    mask = 0xFFFF if data_type is DataType.BOOL else None
    return PointSpec(
        pos,
        point.point_id,
        address.table,
        address.address,
        data_type.registers,
        data_type,
        LAYOUT[point.byte_order],
        mask,
        point.scale,
        point.offset,
        lo,
        hi,
    )


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for pos in sorted(positions):
        if runs and runs[-1][1] == pos:
            runs[-1] = (runs[-1][0], pos + 1)
        else:
            runs.append((pos, pos + 1))
    return runs


def _run_start(positions: list[int]) -> int:
    if positions and positions == list(range(positions[0], positions[0] + len(positions))):
        return positions[0]
    return -1


def _struct_over(start: int, fields: list[tuple[int, int, str]], prefix: str) -> struct.Struct:
    """A struct reading ``fields`` (start, registers, code) of a block beginning at ``start``.

    Adjacent fields of one code are folded into a counted run (``HHH`` → ``3H``): the struct
    module compiles a counted run to one code, and each separate code costs it ~32 bytes."""
    parts = [prefix]
    cursor = start
    run_code = ""
    run = 0
    for fstart, size, code in fields:
        if fstart == cursor and code == run_code:
            run += 1
        else:
            if run:
                parts.append(f"{run}{run_code}" if run > 1 else run_code)
            if fstart > cursor:
                parts.append(f"{2 * (fstart - cursor)}x")
            run_code, run = code, 1
        cursor = fstart + size
    if run:
        parts.append(f"{run}{run_code}" if run > 1 else run_code)
    return struct.Struct("".join(parts))


def build_request(table: str, specs: list[PointSpec], source: Sequence[Point]) -> Request:
    """One request over ``specs`` (compiled from ``source``, the group's points)."""
    specs = sorted(specs, key=lambda s: (s.start, s.pos))
    start = specs[0].start
    end = max(s.end for s in specs)
    positions = [s.pos for s in specs]
    req = Request(table, start, end - start, source, array("I", positions))
    for s in specs:
        if s.scale != 1.0 or s.offset != 0.0:
            req.scaled.append((s.pos, s.scale, s.offset))
        if s.data_type in FLOAT_TYPES:
            req.floats.append(s.pos)
        if s.lo != NEG_INF or s.hi != INF:
            req.ranged.append((s.pos, s.lo, s.hi))
    req.ts_runs = _runs(positions)
    if req.ranged:
        ranged_runs = _runs([pos for pos, _, _ in req.ranged])
        if len(ranged_runs) == 1:
            start_pos, stop_pos = ranged_runs[0]
            req.range_run = (
                start_pos,
                stop_pos,
                max(lo for _, lo, _ in req.ranged),
                min(hi for _, _, hi in req.ranged),
            )
    if req.is_bits:
        req.bits = [(s.start - start, s.pos) for s in specs]
        return req

    # Number fields: one struct per layout; a field overlapping the previous one of its layer
    # (the same register read two ways) opens another layer.
    layers: dict[tuple[int, str], list[list[PointSpec]]] = {}
    for s in specs:
        if s.mask is not None:
            continue
        stacks = layers.setdefault(s.layout, [])
        for stack in stacks:
            if stack[-1].end <= s.start:
                stack.append(s)
                break
        else:
            stacks.append([s])
    for (view, prefix), stacks in layers.items():
        for stack in stacks:
            st = _struct_over(
                start, [(s.start, s.size, STRUCT_CODE[s.data_type]) for s in stack], prefix
            )
            positions = [s.pos for s in stack]
            has_float = any(s.data_type in FLOAT_TYPES for s in stack)
            req.layers.append(
                Layer(view, st, array("I", positions), None, _run_start(positions), has_float)
            )

    mask_specs = [s for s in specs if s.mask is not None]
    if mask_specs:
        registers = sorted({s.start for s in mask_specs})
        index = {r: i for i, r in enumerate(registers)}
        view, prefix = NATURAL_LAYOUTS[0]
        st = _struct_over(start, [(r, 1, "H") for r in registers], prefix)
        masks = [(index[s.start], int(s.mask or 0), s.pos) for s in mask_specs]
        req.layers.append(Layer(view, st, array("I"), masks))
    req.need_raw = any(layer.view == RAW for layer in req.layers)
    req.need_swapped = any(layer.view != RAW for layer in req.layers)
    return req


def split_request(req: Request) -> list[Request]:
    """Two requests covering the specs of ``req``, split between distinct start addresses."""
    starts = sorted({s.start for s in req.specs})
    middle = starts[len(starts) // 2]
    specs = req.specs
    low = [s for s in specs if s.start < middle]
    high = [s for s in specs if s.start >= middle]
    return [build_request(req.table, low, req.source), build_request(req.table, high, req.source)]


def group_specs(
    table: str,
    specs: list[PointSpec],
    source: Sequence[Point],
    max_count: int,
    max_gap: int,
    barriers: Sequence[tuple[int, int]] = (),
) -> list[Request]:
    """Greedy merge of the address-sorted spans (optimal for span-count minimisation).

    No request spans a ``barrier`` (start, end): addresses the device is known to refuse."""
    requests: list[Request] = []
    specs = sorted(specs, key=lambda s: (s.start, s.pos))
    current: list[PointSpec] = []
    cur_start = cur_end = 0
    for s in specs:
        if current:
            new_end = max(cur_end, s.end)
            if (
                s.start - cur_end <= max_gap
                and new_end - cur_start <= max_count
                and not any(b0 < new_end and cur_start < b1 for b0, b1 in barriers)
            ):
                current.append(s)
                cur_end = new_end
                continue
            requests.append(build_request(table, current, source))
        current = [s]
        cur_start, cur_end = s.start, s.end
    if current:
        requests.append(build_request(table, current, source))
    return requests


def build_plan(
    points: list[Point], *, max_registers: int, max_bits: int, max_gap: int
) -> ModbusPlan:
    by_table: dict[str, list[PointSpec]] = {"coil": [], "di": [], "hr": [], "ir": []}
    errors: list[tuple[int, str]] = []
    for pos, point in enumerate(points):
        try:
            spec = compile_point(pos, point)
        except PlanError as exc:
            errors.append((pos, str(exc)))
            continue
        limit = max_bits if spec.table in ("coil", "di") else max_registers
        if spec.size > limit:
            errors.append((pos, f"{spec.size} registers exceed max_registers_per_request {limit}"))
            continue
        by_table[spec.table].append(spec)
    requests: list[Request] = []
    for table, specs in by_table.items():
        if not specs:
            continue
        if table in ("coil", "di"):
            requests += group_specs(table, specs, points, max_bits, max_gap * 16)
        else:
            requests += group_specs(table, specs, points, max_registers, max_gap)
    return ModbusPlan(len(points), requests, errors)


_TABLE_ORDER = {"coil": 0, "di": 1, "hr": 2, "ir": 3}


def remerge(
    requests: list[Request], *, max_registers: int, max_bits: int, max_gap: int
) -> list[Request]:
    """Re-plan after splits: requests that are failing (an isolated bad address, a register
    the device keeps refusing) stay as they are and become barriers; every other point is
    merged again as ``build_plan`` would, around them. So isolating one bad address costs one
    extra request per poll instead of the whole bisection's worth."""
    kept = [r for r in requests if r.failures > 0]
    barriers: dict[str, list[tuple[int, int]]] = {}
    for r in kept:
        barriers.setdefault(r.table, []).append((r.start, r.start + r.count))
    specs: dict[str, list[PointSpec]] = {}
    for r in requests:
        if r.failures == 0:
            specs.setdefault(r.table, []).extend(r.specs)
    out = list(kept)
    source = requests[0].source if requests else ()
    for table, table_specs in specs.items():
        bars = barriers.get(table, ())
        if table in ("coil", "di"):
            out += group_specs(table, table_specs, source, max_bits, max_gap * 16, bars)
        else:
            out += group_specs(table, table_specs, source, max_registers, max_gap, bars)
    out.sort(key=lambda r: (_TABLE_ORDER[r.table], r.start))
    return out


def decode_into(
    req: Request,
    payload: list[int] | list[bool],
    raw_bytes: bytes | None,
    value: array,
    tsa: array,
    quality: array,
    ts: float,
) -> None:
    """Write one response's values into the result arrays (``array('d')``/``array('B')``).

    ``payload`` is the response's bits or registers; ``raw_bytes`` the register block as it
    came off the wire when the response kept it (then ``payload`` is not touched)."""
    v_arr = value  # local names: attribute-free inner loops
    q_arr = quality
    suspect = False  # a float layer summed to NaN/inf: look at its points one by one
    if req.bits:
        for offset, pos in req.bits:
            v_arr[pos] = 1.0 if payload[offset] else 0.0
    else:
        if raw_bytes is not None:
            raw, swapped = views_of_raw(raw_bytes, req.need_swapped)
        else:
            raw, swapped = block_views(payload, req.need_raw, req.need_swapped)  # type: ignore[arg-type]
        for layer in req.layers:
            values = layer.st.unpack_from(raw if layer.view == RAW else swapped)
            if layer.masks is not None:
                for i, mask, pos in layer.masks:
                    v_arr[pos] = 1.0 if values[i] & mask else 0.0
                continue
            if layer.has_float and not suspect:
                total = sum(values)
                suspect = total - total != 0.0
            if layer.run >= 0:
                v_arr[layer.run : layer.run + len(values)] = array("d", values)
            else:
                for pos, v in zip(layer.positions, values, strict=True):
                    v_arr[pos] = v
    stamp = array("d", (ts,))
    for a, b in req.ts_runs:
        tsa[a:b] = stamp * (b - a)
    for pos, scale, shift in req.scaled:
        v_arr[pos] = v_arr[pos] * scale + shift
    if suspect:
        for pos in req.floats:
            v = v_arr[pos]
            if v - v != 0.0:  # NaN or +-inf: the device says "no valid value"
                v_arr[pos] = NAN
                q_arr[pos] = _DEVICE_ERROR
    run = req.range_run
    if run is not None and not suspect:
        segment = v_arr[run[0] : run[1]]
        if min(segment) >= run[2] and max(segment) <= run[3]:
            return
    for pos, lo, hi in req.ranged:
        v = v_arr[pos]
        if not lo <= v <= hi and q_arr[pos] == _GOOD:
            q_arr[pos] = _OUT_OF_RANGE


def fail_into(req: Request, value: array, tsa: array, quality: array, code: int, ts: float) -> None:
    for pos in req.positions:
        value[pos] = NAN
        tsa[pos] = ts
        quality[pos] = code
