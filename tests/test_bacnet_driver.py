"""BacnetDriver against real bacpypes3 device applications on loopback (other UDP ports)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from bacpypes3.local.analog import AnalogInputObject

from outpost.drivers.bacnet import BacnetDeviceConfig, BacnetDriver
from outpost.drivers.base import DriverContext, PointGroup, WriteError
from outpost.drivers.sim.bacnet_ahu import build_ahu_objects, build_bulk_objects
from outpost.point_schedules.quality import Quality
from tests.bacnet_device import RunningDevice, config, free_udp_port, point


def count_requests(app: Any) -> dict[str, int]:
    """Count the confirmed requests a device application serves, by service."""
    counts = {"rpm": 0, "rp": 0}
    rpm, rp = app.do_ReadPropertyMultipleRequest, app.do_ReadPropertyRequest

    async def counted_rpm(apdu: Any) -> None:
        counts["rpm"] += 1
        await rpm(apdu)

    async def counted_rp(apdu: Any) -> None:
        counts["rp"] += 1
        await rp(apdu)

    app.do_ReadPropertyMultipleRequest = counted_rpm
    app.do_ReadPropertyRequest = counted_rp
    return counts


def group_of(points: list[Any], driver: BacnetDriver) -> PointGroup:
    group = PointGroup(device="ahu", points=points, interval=1.0)
    driver.prepare(group)
    return group


AHU_POINTS = [
    ("sat", "analog-input:1"),
    ("rat", "analog-input:2/present-value"),
    ("alarm", "binary-input:1"),
    ("mode", "multi-state-value:1"),
    ("sp", "analog-value:1"),
    ("sp_p16", "analog-value:1/priority-array[16]"),
    ("sp_p1", "analog-value:1/priority-array[1]"),
    ("states", "multi-state-value:1/number-of-states"),
    ("pa_len", "analog-value:1/priority-array[0]"),
]


async def test_rpm_reads_object_types_array_index_in_batches() -> None:
    port = free_udp_port()
    async with RunningDevice(build_ahu_objects(setpoint=18.0), 1001, port) as dev:
        dev.objects["return-air-temp"].presentValue = 24.25
        dev.objects["ahu-alarm"].presentValue = "active"
        dev.objects["ahu-mode"].presentValue = 3
        dev.objects["supply-air-temp-sp"].presentValue = 18.5  # lands in priority-array[16]
        counts = count_requests(dev.app)
        ctx = DriverContext()
        drv = BacnetDriver("ahu", config(port, free_udp_port(), max_per_request=3), ctx)
        try:
            points = [point(pid, addr) for pid, addr in AHU_POINTS]
            # the same reference twice, with scaling: one read serves both points
            points.append(point("sat_f", "analog-input:1", scale=1.8, offset=32.0))
            group = group_of(points, drv)
            res = await drv.read(group)
        finally:
            await drv.close()
    got = dict(zip([p.point_id for p in points], res.value, strict=True))
    quality = dict(zip([p.point_id for p in points], res.quality, strict=True))
    # priority-array[1] is empty: the device answers null, which is no value (NaN, uncertain)
    assert quality.pop("sp_p1") == Quality.UNCERTAIN and math.isnan(got["sp_p1"])
    assert set(quality.values()) == {Quality.GOOD}
    assert got["sat"] == pytest.approx(18.0)
    assert got["rat"] == pytest.approx(24.25)
    assert got["alarm"] == 1.0
    assert got["mode"] == 3.0
    assert got["sp"] == pytest.approx(18.5)
    assert got["sp_p16"] == pytest.approx(18.5)
    assert got["states"] == 3.0
    assert got["pa_len"] == 16.0
    assert got["sat_f"] == pytest.approx(18.0 * 1.8 + 32.0)
    # 9 distinct references (sat_f shares sat's), 3 per request → 3 RPM requests, no RP
    assert counts == {"rpm": 3, "rp": 0}
    assert drv.uses_rpm and drv.connected
    assert all(t > 0 for t in res.ts)


async def test_fallback_to_read_property_is_remembered() -> None:
    port = free_udp_port()
    async with RunningDevice(build_ahu_objects(setpoint=17.5), 1002, port, rpm=False) as dev:
        counts = count_requests(dev.app)
        drv = BacnetDriver("ahu", config(port, free_udp_port(), instance=1002))
        try:
            group = group_of([point(pid, addr) for pid, addr in AHU_POINTS[:5]], drv)
            first = await drv.read(group)
            second = await drv.read(group)
        finally:
            await drv.close()
    for res in (first, second):
        assert list(res.quality) == [Quality.GOOD] * 5
        assert res.value[0] == pytest.approx(17.5)
        assert res.value[4] == pytest.approx(17.5)
    assert not drv.uses_rpm
    # one rejected RPM in total, then ReadProperty for every reference on both polls
    assert counts == {"rpm": 1, "rp": 10}


async def test_batch_shrinks_when_device_cannot_segment() -> None:
    port = free_udp_port()
    n = 60  # 60 values do not fit one 480-byte answer
    async with RunningDevice(
        build_bulk_objects(n), 1003, port, segmentation=False, max_apdu=480
    ) as dev:
        counts = count_requests(dev.app)
        drv = BacnetDriver("bulk", config(port, free_udp_port(), instance=1003, max_per_request=n))
        try:
            group = group_of([point(f"b{i}", f"analog-value:{i}") for i in range(1, n + 1)], drv)
            res = await drv.read(group)
            before = dict(counts)
            again = await drv.read(group)
        finally:
            await drv.close()
    assert list(res.quality) == [Quality.GOOD] * n
    assert list(res.value) == [float(i) for i in range(1, n + 1)]
    assert list(again.value) == list(res.value)
    assert drv.uses_rpm
    assert drv.batch_size < n
    # the second poll uses the remembered size straight away: no failed request
    assert counts["rpm"] - before["rpm"] == math.ceil(n / drv.batch_size)
    assert counts["rp"] == 0


@pytest.mark.parametrize("rpm", [True, False], ids=["rpm", "read-property"])
async def test_failing_property_spoils_only_its_point(rpm: bool) -> None:
    port = free_udp_port()
    async with RunningDevice(build_ahu_objects(setpoint=19.0), 1001, port, rpm=rpm):
        drv = BacnetDriver("ahu", config(port, free_udp_port()))
        try:
            points = [
                point("sat", "analog-input:1"),
                point("empty_slot", "analog-value:1/priority-array[1]"),
                point("ghost", "analog-input:99"),
                point("no_prop", "analog-input:1/high-limit"),
                point("name", "analog-input:1/object-name"),
                point("sp", "analog-value:1", min=0.0, max=10.0),
                point("mode", "multi-state-value:1"),
            ]
            res = await drv.read(group_of(points, drv))
        finally:
            await drv.close()
    q = dict(zip([p.point_id for p in points], res.quality, strict=True))
    assert q["sat"] == Quality.GOOD and res.value[0] == pytest.approx(19.0)
    assert q["empty_slot"] == Quality.UNCERTAIN and math.isnan(res.value[1])
    assert q["ghost"] == Quality.BAD_CONFIG_ERROR and math.isnan(res.value[2])
    assert q["no_prop"] == Quality.BAD_CONFIG_ERROR
    assert q["name"] == Quality.BAD_CONFIG_ERROR  # a text is not a number
    assert q["sp"] == Quality.UNCERTAIN_OUT_OF_RANGE and res.value[5] == pytest.approx(19.0)
    assert q["mode"] == Quality.GOOD and res.value[6] == 2.0
    assert drv.connected and drv.uses_rpm == rpm


async def test_write_with_priority_and_relinquish() -> None:
    port = free_udp_port()
    async with RunningDevice(build_ahu_objects(setpoint=18.0), 1001, port) as dev:
        sp_obj = dev.objects["supply-air-temp-sp"]
        drv = BacnetDriver("ahu", config(port, free_udp_port(), write_priority=12))
        sp = point("sp", "analog-value:1", writable=True)
        try:
            await drv.write(sp, 21.5, priority=8)
            assert sp_obj.priorityArray[7].real == pytest.approx(21.5)
            assert float(sp_obj.presentValue) == pytest.approx(21.5)
            assert await drv.read_back(sp) == pytest.approx(21.5)

            await drv.write(sp, 19.0)  # the device's default priority, 12
            assert sp_obj.priorityArray[11].real == pytest.approx(19.0)
            assert float(sp_obj.presentValue) == pytest.approx(21.5)  # 8 still wins

            await drv.relinquish(sp, priority=8)
            assert sp_obj.priorityArray[7].null is not None
            assert await drv.read_back(sp) == pytest.approx(19.0)

            await drv.relinquish(sp)
            assert sp_obj.priorityArray[11].null is not None
            assert await drv.read_back(sp) == pytest.approx(18.0)  # relinquish default

            # engineering → raw: scale/offset are undone before the write
            scaled = point("sp_f", "analog-value:1", scale=2.0, offset=1.0, writable=True)
            await drv.write(scaled, 41.0, priority=10)
            assert sp_obj.priorityArray[9].real == pytest.approx(20.0)
            assert await drv.read_back(scaled) == pytest.approx(41.0)
            await drv.relinquish(scaled, priority=10)

            with pytest.raises(WriteError, match=r"priority must be 1\.\.16"):
                await drv.write(sp, 20.0, priority=17)
            with pytest.raises(WriteError, match="unknown-object"):
                await drv.write(point("ghost", "analog-value:42"), 1.0)
            with pytest.raises(WriteError, match="binary object takes 0 or 1"):
                await drv.write(point("bo", "binary-output:1"), 0.5)
        finally:
            await drv.close()


async def test_device_down_then_recovery() -> None:
    port = free_udp_port()
    objects = build_ahu_objects(setpoint=18.0)
    dev = await RunningDevice(objects, 1001, port).start()
    drv = BacnetDriver("ahu", config(port, free_udp_port(), max_per_request=2))
    try:
        group = group_of([point(pid, addr) for pid, addr in AHU_POINTS[:5]], drv)
        assert list((await drv.read(group)).quality) == [Quality.GOOD] * 5
        dev.stop()
        down = await drv.read(group)
        assert list(down.quality) == [Quality.BAD_COMM_FAILURE] * 5
        assert all(math.isnan(v) for v in down.value)
        assert not drv.connected
        with pytest.raises(WriteError, match="did not answer"):
            await drv.write(point("sp", "analog-value:1"), 20.0)
        await dev.start()
        up = await drv.read(group)
        assert list(up.quality) == [Quality.GOOD] * 5
        assert up.value[0] == pytest.approx(18.0)
        assert drv.connected and drv.uses_rpm  # a timeout is not a reason to drop RPM
    finally:
        await drv.close()
        dev.stop()


async def test_devices_share_one_local_application() -> None:
    p1, p2, local = free_udp_port(), free_udp_port(), free_udp_port()
    obj = AnalogInputObject(
        objectIdentifier=("analog-input", 7),
        objectName="x",
        presentValue=7.0,
        statusFlags=[0, 0, 0, 0],
    )
    async with (
        RunningDevice(build_ahu_objects(setpoint=16.0), 1001, p1),
        RunningDevice([obj], 1002, p2),
    ):
        ctx = DriverContext()
        d1 = BacnetDriver("a", config(p1, local), ctx)
        d2 = BacnetDriver("b", config(p2, local, instance=1002, timeout=0.5), ctx)
        assert len(ctx.resources) == 1
        r1 = await d1.read(group_of([point("a", "ai:1", device="a")], d1))
        r2 = await d2.read(group_of([point("b", "ai:7", device="b")], d2))
        assert (r1.value[0], r2.value[0]) == (pytest.approx(16.0), 7.0)
        await d1.close()
        r2 = await d2.read(group_of([point("b", "ai:7", device="b")], d2))
        assert r2.quality[0] == Quality.GOOD
        await d2.close()
        assert ctx.resources == {}


def test_config_validation() -> None:
    cfg = BacnetDeviceConfig(address="10.0.0.5", device_instance=5)
    assert cfg.address == "10.0.0.5:47808"
    assert cfg.local_address == "0.0.0.0:47808"
    assert cfg.write_priority == 16 and cfg.max_per_request == 20
    with pytest.raises(ValueError, match="same port"):
        BacnetDeviceConfig(address="127.0.0.1:47808", device_instance=1, local_address="127.0.0.1")
    with pytest.raises(ValueError, match="port must be a number"):
        BacnetDeviceConfig(address="10.0.0.5:abc", device_instance=1)
    with pytest.raises(ValueError, match="write_priority"):
        BacnetDeviceConfig(address="10.0.0.5", device_instance=1, write_priority=0)
    with pytest.raises(ValueError, match="extra"):
        BacnetDeviceConfig(address="10.0.0.5", device_instance=1, host="x")  # type: ignore[call-arg]
