"""Codec and planner units: byte orders against known vectors and an independent encoder,
request planning (pure functions: no device involved)."""

from __future__ import annotations

import math
import tomllib
from array import array
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from outpost.drivers.modbus.codec import EncodeError, decode_registers, encode_registers
from outpost.drivers.modbus.planner import build_plan, decode_into, split_request
from outpost.point_schedules.model import ByteOrder, DataType
from outpost.point_schedules.quality import QUALITY_LABEL
from tests.modbus_server import point as mkpoint
from tests.modbus_server import registers_for

ORDERS = list(ByteOrder)
NUMBERS = {
    DataType.INT16: -12345,
    DataType.UINT16: 54321,
    DataType.INT32: -123456789,
    DataType.UINT32: 3_000_000_001,
    DataType.INT64: -1_234_567_890_123_456,
    DataType.UINT64: 12_345_678_901_234_567_890,
    DataType.FLOAT32: 21.5,
    DataType.FLOAT64: -1234.0009765625,
}


def test_float32_known_vectors() -> None:
    # 1.0f = 0x3F800000
    assert encode_registers(DataType.FLOAT32, ByteOrder.ABCD, 1.0) == [0x3F80, 0x0000]
    assert encode_registers(DataType.FLOAT32, ByteOrder.CDAB, 1.0) == [0x0000, 0x3F80]
    assert encode_registers(DataType.FLOAT32, ByteOrder.BADC, 1.0) == [0x803F, 0x0000]
    assert encode_registers(DataType.FLOAT32, ByteOrder.DCBA, 1.0) == [0x0000, 0x803F]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("data_type", list(NUMBERS))
def test_encode_decode_match_independent_permutation(data_type: DataType, order: ByteOrder) -> None:
    value = NUMBERS[data_type]
    expected = registers_for(data_type, order, value)
    assert encode_registers(data_type, order, value) == expected
    assert decode_registers(data_type, order, expected) == pytest.approx(float(value))


@pytest.mark.parametrize(
    "data_type", [DataType.INT32, DataType.FLOAT32, DataType.FLOAT64, DataType.INT64]
)
def test_cdab_matches_pymodbus_little_word_order(data_type: DataType) -> None:
    value = NUMBERS[data_type]
    ptype = getattr(AsyncModbusTcpClient.DATATYPE, data_type.name)
    regs = AsyncModbusTcpClient.convert_to_registers(value, ptype, word_order="little")
    assert encode_registers(data_type, ByteOrder.CDAB, value) == regs


def test_encode_rejects_out_of_range_integers() -> None:
    with pytest.raises(EncodeError, match="int16 range"):
        encode_registers(DataType.INT16, ByteOrder.ABCD, 40000)
    with pytest.raises(EncodeError, match="uint32"):
        encode_registers(DataType.UINT32, ByteOrder.ABCD, -1)
    with pytest.raises(EncodeError, match="not a number"):
        encode_registers(DataType.INT32, ByteOrder.ABCD, math.nan)


def test_planner_merges_within_gap_and_limit() -> None:
    pts = [
        mkpoint("a", "hr:0", DataType.FLOAT32),
        mkpoint("b", "hr:10"),  # gap 8 <= 16: same request
        mkpoint("c", "hr:40"),  # gap 29 > 16: new request
        mkpoint("d", "hr:41.3", DataType.BOOL),
        mkpoint("e", "hr:41.4", DataType.BOOL),
        mkpoint("f", "ir:0", DataType.INT64),
        mkpoint("g", "coil:0"),
        mkpoint("h", "coil:300"),  # bit gap 299 > 16*16: separate
        mkpoint("i", "di:5"),
    ]
    plan = build_plan(pts, max_registers=125, max_bits=2000, max_gap=16)
    spans = sorted((r.table, r.start, r.count) for r in plan.requests)
    assert spans == [
        ("coil", 0, 1),
        ("coil", 300, 1),
        ("di", 5, 1),
        ("hr", 0, 11),
        ("hr", 40, 2),
        ("ir", 0, 4),
    ]
    assert plan.config_errors == []


def test_planner_respects_max_registers() -> None:
    pts = [mkpoint(f"p{i}", f"hr:{i * 2}", DataType.FLOAT32) for i in range(100)]  # 200 registers
    plan = build_plan(pts, max_registers=50, max_bits=2000, max_gap=16)
    assert [r.count for r in plan.requests] == [50, 50, 50, 50]
    # a value never straddles two requests
    assert sum(len(r.specs) for r in plan.requests) == 100


def test_split_separates_distinct_addresses() -> None:
    pts = [mkpoint(f"p{i}", f"hr:{i}") for i in range(5)] + [mkpoint("x", "hr:2", DataType.INT16)]
    plan = build_plan(pts, max_registers=125, max_bits=2000, max_gap=16)
    (req,) = plan.requests
    low, high = split_request(req)
    assert {s.start for s in low.specs} == {0, 1}
    assert {s.start for s in high.specs} == {2, 3, 4}
    assert len(high.specs) == 4  # both views of hr:2 stay together


def test_unsupported_points_become_config_errors() -> None:
    pts = [
        mkpoint("ok", "hr:0"),
        mkpoint("notype", "hr:1", None),
        mkpoint("toolong", "hr:2", DataType.FLOAT64),
    ]
    plan = build_plan(pts, max_registers=2, max_bits=2000, max_gap=16)
    assert sorted(pos for pos, _ in plan.config_errors) == [1, 2]


def test_decode_fast_paths_still_flag_nan_inf_and_out_of_range() -> None:
    """Contiguous points decode by slice; a NaN/inf or out-of-range value inside must still be
    found (the per-request checks are shortcuts, not filters)."""
    from outpost.drivers.base import PollResult
    from outpost.drivers.modbus.planner import decode_into
    from outpost.point_schedules.quality import Quality

    values = [1.5, math.nan, 3.0, math.inf, 250.0, 4.0]
    pts = [
        mkpoint(f"f{i}", f"hr:{2 * i}", DataType.FLOAT32, min=0.0, max=100.0)
        for i in range(len(values))
    ]
    plan = build_plan(pts, max_registers=125, max_bits=2000, max_gap=16)
    (req,) = plan.requests
    assert req.layers[0].run == 0 and req.range_run is not None
    regs = [r for v in values for r in registers_for(DataType.FLOAT32, ByteOrder.ABCD, v)]
    result = PollResult.empty(len(values))
    decode_into(req, regs, None, result.value, result.ts, result.quality, 42.0)
    assert list(result.quality) == [
        Quality.GOOD,
        Quality.BAD_DEVICE_ERROR,
        Quality.GOOD,
        Quality.BAD_DEVICE_ERROR,
        Quality.UNCERTAIN_OUT_OF_RANGE,
        Quality.GOOD,
    ]
    assert result.value[4] == 250.0 and math.isnan(result.value[3])
    assert list(result.ts) == [42.0] * 6
    # all fine: the shortcut path leaves every quality good
    regs = [
        r
        for v in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
        for r in registers_for(DataType.FLOAT32, ByteOrder.ABCD, v)
    ]
    result = PollResult.empty(len(values))
    decode_into(req, regs, None, result.value, result.ts, result.quality, 1.0)
    assert list(result.value) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert not any(result.quality)


WIRE_CASES = tomllib.loads(
    (Path(__file__).resolve().parents[1] / "drivers/modbus/testcases/wire_values.toml").read_text(
        "utf-8"
    )
)["case"]


@pytest.mark.parametrize("case", WIRE_CASES, ids=[c["name"] for c in WIRE_CASES])
def test_wire_values_through_the_block_decoder(case: dict) -> None:
    """drivers/modbus/testcases/wire_values.toml: device answers → value and quality."""
    order = ByteOrder(case.get("byte_order", "ABCD"))
    extra = {k: case[k] for k in ("scale", "offset", "min", "max") if k in case}
    p = mkpoint("p", case["address"], DataType(case["data_type"]), order, **extra)
    plan = build_plan([p], max_registers=125, max_bits=2000, max_gap=16)
    assert not plan.config_errors and len(plan.requests) == 1
    req = plan.requests[0]
    payload = case["bits"] if "bits" in case else case["registers"]
    assert len(payload) == req.count
    value, ts, quality = array("d", [0.0]), array("d", [0.0]), array("B", [0])
    decode_into(req, payload, None, value, ts, quality, 1234.5)
    assert QUALITY_LABEL[quality[0]] == case.get("quality", "good")
    assert ts[0] == 1234.5
    if "value" in case:
        assert value[0] == pytest.approx(case["value"])
    else:
        assert math.isnan(value[0])


def test_plan_is_kept_per_request_not_per_point() -> None:
    from outpost.drivers.base import PollResult

    pts = [mkpoint(f"p{i}", f"hr:{i}") for i in range(125)]
    pts.append(mkpoint("f", "hr:200", DataType.FLOAT32))
    plan = build_plan(pts, max_registers=125, max_bits=2000, max_gap=16)
    first, second = plan.requests
    # positions in a flat array, 125 equal adjacent fields compiled as one counted run
    assert isinstance(first.positions, array) and list(first.positions) == list(range(125))
    (layer,) = first.layers
    assert layer.st.format == ">125H" and layer.run == 0
    # the specs the cold paths need are compiled again from the group's points on demand
    assert [s.point_id for s in second.specs] == ["f"]
    assert [s.start for s in first.specs] == list(range(125))
    regs = list(range(1000, 1125))
    result = PollResult.empty(len(pts))
    decode_into(first, regs, None, result.value, result.ts, result.quality, 5.0)
    assert list(result.value[:125]) == [float(r) for r in regs]
