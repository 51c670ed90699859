"""BACnet discovery against real bacpypes3 devices on loopback, and the skeleton it writes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from outpost.drivers.bacnet.discovery import (
    config_snippet,
    discover_bacnet,
    discover_bacnet_devices,
    short_units,
)
from outpost.drivers.sim.bacnet_ahu import build_ahu_objects, build_bulk_objects
from outpost.point_schedules.loader import load_schedule
from outpost.point_schedules.model import BacnetAddress
from outpost.point_schedules.skeleton import write_skeleton
from tests.bacnet_device import RunningDevice, free_udp_port


async def test_directed_discovery_writes_a_loadable_skeleton(tmp_path: Path) -> None:
    port = free_udp_port()
    messages: list[str] = []
    async with RunningDevice(build_ahu_objects(), 1001, port, name="AHU-1"):
        points = await discover_bacnet(
            local_address=f"127.0.0.1:{free_udp_port()}",
            target=f"127.0.0.1:{port}",
            timeout=2.0,
            progress=messages.append,
        )
    by_addr = {p.address: p for p in points}
    assert set(by_addr) == {
        "analog-input:1",
        "analog-input:2",
        "analog-input:3",
        "analog-input:4",
        "analog-value:1",
        "binary-input:1",
        "multi-state-value:1",
    }
    assert {p.device for p in points} == {"ahu-1"}
    sat = by_addr["analog-input:1"]
    assert (sat.name, sat.units, sat.description) == (
        "supply-air-temp",
        "degC",
        "Supply air temperature",
    )
    assert by_addr["analog-input:3"].units == "%"
    assert by_addr["analog-input:4"].units == "Pa"
    assert by_addr["analog-value:1"].writable  # commandable: has a priority array
    assert not by_addr["analog-input:1"].writable
    assert "1=off, 2=auto, 3=manual" in by_addr["multi-state-value:1"].description
    assert "0=normal, 1=alarm" in by_addr["binary-input:1"].description
    assert any("I-Am from device 1001" in m for m in messages)

    csv_path = tmp_path / "ahu.csv"
    with csv_path.open("w") as out:
        assert write_skeleton(points, out, header_comment="discovered by a test") == 7
    schedule = load_schedule([csv_path], {"ahu-1": "bacnet"})
    loaded = schedule.by_id()
    assert loaded["ahu-1.supply-air-temp"].address == BacnetAddress("analog-input", 1)
    assert loaded["ahu-1.supply-air-temp-sp"].writable
    assert loaded["ahu-1.filter-dp"].units == "Pa"
    assert len(schedule.points) == 7


@pytest.mark.parametrize("rpm", [False, True], ids=["read-property", "rpm"])
async def test_unsegmented_device_reads_object_list_by_index(rpm: bool) -> None:
    """A small controller (480-byte APDUs, no segmentation, with or without RPM): its
    102-entry object list does not fit one answer, so it is read element by element, with
    ReadProperty or in RPM batches."""
    port = free_udp_port()
    objects = build_bulk_objects(100)
    list_reads: list[int | None] = []
    async with RunningDevice(
        objects, 2001, port, rpm=rpm, segmentation=False, max_apdu=480, name="Plant 7"
    ) as device:
        serve = device.app.do_ReadPropertyRequest

        async def recording(apdu: Any) -> None:
            if str(apdu.propertyIdentifier) == "object-list":
                list_reads.append(apdu.propertyArrayIndex)
            await serve(apdu)

        device.app.do_ReadPropertyRequest = recording
        devices = await discover_bacnet_devices(
            local_address=f"127.0.0.1:{free_udp_port()}", target=f"127.0.0.1:{port}", timeout=2.0
        )
    # the whole list (refused: too big), its length, then elements 1..102 (device,
    # network-port and the 100 values) one by one, unless RPM fetches them in batches
    assert list_reads == ([None, 0] if rpm else [None, 0, *range(1, 103)])
    assert len(devices) == 1
    dev = devices[0]
    assert (dev.device_id, dev.instance, dev.uses_rpm, dev.error) == ("plant-7", 2001, rpm, None)
    assert [p.address for p in dev.points] == [f"analog-value:{i}" for i in range(1, 101)]
    assert dev.points[41].name == "bulk-42"
    assert not dev.points[0].writable  # a plain analog-value without priority array
    snippet = config_snippet(devices, "127.0.0.1:47900")
    assert "[devices.plant-7]" in snippet and "device_instance = 2001" in snippet
    assert f'address = "127.0.0.1:{port}"' in snippet


async def test_broadcast_discovery_finds_every_device() -> None:
    """Devices on 127.0.0.2 and 127.0.0.3 (/8, same port), the client on 127.0.0.1 with another
    port; Who-Is goes to the directed broadcast 127.255.255.255 on the devices' port."""
    port = free_udp_port()
    a = RunningDevice(build_ahu_objects(), 3001, port, name="AHU-1")
    b = RunningDevice(build_ahu_objects(), 3002, port, name="AHU-1")  # same name: ids differ
    a.address, b.address = f"127.0.0.2/8:{port}", f"127.0.0.3/8:{port}"
    async with a, b:
        devices = await discover_bacnet_devices(
            local_address=f"127.0.0.1/8:{free_udp_port()}",
            target=f"127.255.255.255:{port}",
            timeout=1.0,
        )
    assert [(d.instance, d.address) for d in devices] == [
        (3001, f"127.0.0.2:{port}"),
        (3002, f"127.0.0.3:{port}"),
    ]
    assert [d.device_id for d in devices] == ["ahu-1", "ahu-1-3002"]
    assert all(len(d.points) == 7 for d in devices)
    out = io.StringIO()
    write_skeleton([p for d in devices for p in d.points], out)
    assert out.getvalue().count("\n") == 15  # header + 14 points


async def test_nobody_answers() -> None:
    messages: list[str] = []
    points = await discover_bacnet(
        local_address=f"127.0.0.1:{free_udp_port()}",
        target=f"127.0.0.1:{free_udp_port()}",
        timeout=0.3,
        progress=messages.append,
    )
    assert points == []
    assert messages[-1] == "no device answered"


def test_units_are_short() -> None:
    assert short_units("degrees-celsius") == "degC"
    assert short_units("percent-relative-humidity") == "%RH"
    assert short_units("kilowatts") == "kW"
    assert short_units("no-units") == ""
    assert short_units("furlongs-per-fortnight") == "furlongs-per-fortnight"
