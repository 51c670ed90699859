"""Guarded writes through the agent's WriteService to a real bacpypes3 device: a write at a
priority, then `relinquish` releases it and the next priority takes over; refusals send
nothing and are recorded."""

from __future__ import annotations

from typing import Any

import pytest

from outpost.agent.control.writes import WriteRefused, WriteService
from outpost.drivers.bacnet import BacnetDriver
from outpost.drivers.sim.bacnet_ahu import build_ahu_objects
from outpost.fsm.clock import ManualClock
from tests.bacnet_device import RunningDevice, config, free_udp_port, point


async def test_write_then_relinquish_through_the_write_service() -> None:
    port = free_udp_port()
    async with RunningDevice(build_ahu_objects(setpoint=18.0), 1001, port) as dev:
        sp_obj = dev.objects["supply-air-temp-sp"]
        drv = BacnetDriver("ahu", config(port, free_udp_port(), write_priority=16))
        sp = point("ahu.sp", "analog-value:1", writable=True, min=10.0, max=30.0)
        ro = point("ahu.sat", "analog-input:1")
        events: list[tuple[str, str, dict[str, Any]]] = []
        service = WriteService(
            {sp.point_id: sp, ro.point_id: ro},
            {"ahu": drv},
            emit=lambda ts, kind, source, actor, detail: events.append(
                (kind, str(actor), dict(detail))
            ),
            device_up=lambda device: True,
            clock=ManualClock(1_000.0),
        )
        try:
            out = await service.write("ahu.sp", 21.5, actor="alice", priority=8)
            assert out.result == "ok" and out.read_back == pytest.approx(21.5)
            assert sp_obj.priorityArray[7].real == pytest.approx(21.5)

            rel = await service.relinquish("ahu.sp", actor="alice", priority=8)
            assert rel.ok and rel.result == "sent"
            assert sp_obj.priorityArray[7].null is not None
            assert rel.read_back == pytest.approx(18.0)  # back to the relinquish default
            assert rel.to_dict()["value"] is None  # JSON-safe: a relinquish has no value

            with pytest.raises(WriteRefused, match="not writable"):
                await service.relinquish("ahu.sat", actor="alice")
            with pytest.raises(WriteRefused, match=r"priority must be 1\.\.16"):
                await service.relinquish("ahu.sp", actor="alice", priority=0)
        finally:
            await drv.close()

    kinds = [(k, a, d.get("relinquish"), d.get("result")) for k, a, d in events]
    assert ("operator.write", "alice", None, "ok") in kinds
    assert ("operator.write", "alice", True, "sent") in kinds
    assert kinds.count(("operator.write", "alice", True, "refused")) == 2


async def test_relinquish_refused_for_a_modbus_point() -> None:
    from outpost.drivers.modbus import ModbusDeviceConfig, ModbusDriver
    from tests.modbus_server import point as modbus_point

    p = modbus_point("plc.sp", "hr:0", writable=True, device="plc")
    drv = ModbusDriver("plc", ModbusDeviceConfig(protocol="modbus", host="127.0.0.1", port=1))
    sent: list[str] = []
    service = WriteService(
        {p.point_id: p},
        {"plc": drv},
        emit=lambda ts, kind, source, actor, detail: sent.append(detail["result"]),
        device_up=lambda d: True,
        clock=ManualClock(0.0),
    )
    try:
        with pytest.raises(WriteRefused, match="relinquish is a BACnet command"):
            await service.relinquish("plc.sp", actor="bob")
        assert sent == ["refused"]
    finally:
        await drv.close()
