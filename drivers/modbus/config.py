"""``[devices.<id>]`` keys of a Modbus device: TCP, RTU on a serial line, or RTU over TCP."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from outpost.drivers.base import DeviceConfig

Transport = Literal["tcp", "rtu", "rtu-over-tcp"]

#: keys that only mean something on a serial line (``transport = "rtu"``)
SERIAL_KEYS = ("serial_port", "baudrate", "parity", "stopbits", "bytesize")

# Modbus over Serial Line V1.02, 2.5.1.1: above 19200 baud the silent interval between frames
# is fixed at 1.750 ms instead of 3.5 character times.
_FIXED_GAP_ABOVE_BAUD = 19200
_FIXED_GAP_S = 0.00175


class ModbusDeviceConfig(DeviceConfig):
    """``[devices.<id>]`` keys of a Modbus device."""

    protocol: Literal["modbus"]
    transport: Transport = Field(
        "tcp",
        description='"tcp" (Modbus TCP), "rtu" (a serial line), "rtu-over-tcp" (a serial server)',
    )
    host: str = Field("", description="tcp and rtu-over-tcp: the device or serial server")
    port: int = Field(502, ge=0, le=65535)
    serial_port: str = Field("", description='rtu: the serial device, e.g. "/dev/ttyUSB0"')
    baudrate: int = Field(19200, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = Field("E", description="N none, E even, O odd")
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(1, ge=0, le=255)
    timeout: float = Field(1.0, gt=0, description="seconds to wait for one response")
    retries: int = Field(1, ge=0, le=10)
    poll_interval: float = Field(5.0, gt=0)
    max_registers_per_request: int = Field(125, ge=1, le=125)
    max_bits_per_request: int = Field(2000, ge=1, le=2000)
    max_gap: int = Field(16, ge=0, le=125, description="unused registers a request may span")
    reconnect_min: float = Field(0.5, gt=0, description="first reconnect delay, seconds")
    reconnect_max: float = Field(30.0, gt=0, description="cap of the doubling reconnect delay")

    @model_validator(mode="after")
    def _backoff_order(self) -> ModbusDeviceConfig:
        if self.reconnect_max < self.reconnect_min:
            raise ValueError(
                f"reconnect_max ({self.reconnect_max}) must be >= reconnect_min "
                f"({self.reconnect_min})"
            )
        return self

    @model_validator(mode="after")
    def _transport_keys(self) -> ModbusDeviceConfig:
        if self.transport == "rtu":
            if not self.serial_port:
                raise ValueError('transport = "rtu" needs serial_port, e.g. "/dev/ttyUSB0"')
            if self.host or "port" in self.model_fields_set:
                raise ValueError(
                    'host and port are for transport = "tcp" or "rtu-over-tcp"; a serial '
                    "line is named by serial_port"
                )
        else:
            if not self.host:
                raise ValueError(f'transport = "{self.transport}" needs host')
            given = [k for k in SERIAL_KEYS if k in self.model_fields_set]
            if given:
                raise ValueError(
                    f'{", ".join(given)} only apply to transport = "rtu" (a serial line); a '
                    "serial server's line settings are configured on the server"
                )
        return self

    @property
    def line(self) -> str:
        """What the connection is to: ``host:port``, or the serial device."""
        return self.serial_port if self.transport == "rtu" else f"{self.host}:{self.port}"

    @property
    def frame_gap(self) -> float:
        """The silent interval between two frames on the serial line, in seconds: 3.5
        character times (start bit, data bits, parity bit, stop bits) at ``baudrate``, and
        1.75 ms above 19200 baud. Zero for Modbus TCP (no frames on a line of ours)."""
        if self.transport != "rtu":
            return 0.0
        if self.baudrate > _FIXED_GAP_ABOVE_BAUD:
            return _FIXED_GAP_S
        char_bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return 3.5 * char_bits / self.baudrate
