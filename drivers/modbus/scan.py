"""Which addresses of a Modbus device answer: ``outpost scan modbus``.

The scan reads the range in blocks as large as one request allows (125 registers, 2000
bits); a block the device refuses with an exception is split in quarters, and those again,
down to single addresses, as the poll planner isolates a bad address. A range that answers
costs one request; a refused one about 1.3 requests per address (every address of a hole is
asked: a device may answer inside it). The result is runs of
consecutive addresses with the same outcome: ``ok``, ``exception N (NAME)`` or ``no answer``
(timeout; not split further: a silent device would cost one timeout per address).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from outpost.drivers.modbus.driver import exception_text

Table = Literal["hr", "ir", "coil", "di"]
TABLES: tuple[Table, ...] = ("hr", "ir", "coil", "di")
MAX_BLOCK = {"hr": 125, "ir": 125, "coil": 2000, "di": 2000}
SPLIT = 4


@dataclass(slots=True)
class Run:
    """``count`` consecutive addresses from ``start`` with the same outcome."""

    start: int
    count: int
    outcome: str  # "ok", "exception 2 (illegal data address)", "no answer"

    @property
    def end(self) -> int:
        return self.start + self.count - 1

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "count": self.count, "outcome": self.outcome}


@dataclass(slots=True)
class ScanResult:
    host: str
    port: int
    unit: int
    table: Table
    first: int
    last: int
    runs: list[Run]
    requests: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "unit": self.unit,
            "table": self.table,
            "range": [self.first, self.last],
            "answering": sum(r.count for r in self.runs if r.ok),
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "runs": [r.to_dict() for r in self.runs],
        }


class ScanError(Exception):
    """The scan could not start (no connection)."""


def parse_range(text: str) -> tuple[int, int]:
    """``0-9999`` or ``40`` → (first, last); addresses 0..65535."""
    first_text, sep, last_text = text.partition("-")
    try:
        first = int(first_text)
        last = int(last_text) if sep else first
    except ValueError:
        raise ValueError(f"expected FIRST-LAST, e.g. 0-9999, got {text!r}") from None
    if not 0 <= first <= last <= 65535:
        raise ValueError(f"expected 0 <= FIRST <= LAST <= 65535, got {text!r}")
    return first, last


async def scan(
    host: str,
    port: int = 502,
    *,
    unit: int = 1,
    table: Table = "hr",
    first: int = 0,
    last: int = 9999,
    request_timeout: float = 1.0,
    progress: Callable[[int], None] | None = None,
) -> ScanResult:
    """Scan ``first..last`` of ``table``; ``progress(n)`` after n more addresses are settled."""
    client = AsyncModbusTcpClient(host, port=port, timeout=request_timeout, retries=0)
    t0 = time.monotonic()
    if not await client.connect():
        client.close()
        raise ScanError(f"cannot connect to {host}:{port}")
    reader = {
        "hr": client.read_holding_registers,
        "ir": client.read_input_registers,
        "coil": client.read_coils,
        "di": client.read_discrete_inputs,
    }[table]
    outcomes: list[tuple[int, int, str]] = []
    requests = 0

    async def probe(start: int, count: int) -> None:
        nonlocal requests
        requests += 1
        try:
            response = await reader(start, count=count, device_id=unit)
        except ModbusException:
            outcome = "no answer"
        else:
            if not response.isError():
                outcome = "ok"
            else:
                code = int(getattr(response, "exception_code", 0) or 0)
                if count > 1:
                    # quarters, not halves: a wholly refused block then costs ~1.3 requests
                    # per address instead of ~2, and one bad register still only ~4 per level
                    step = max(1, -(-count // SPLIT))
                    for part in range(start, start + count, step):
                        await probe(part, min(step, start + count - part))
                    return
                outcome = exception_text(code)
        outcomes.append((start, count, outcome))
        if progress is not None:
            progress(count)

    try:
        block = MAX_BLOCK[table]
        for start in range(first, last + 1, block):
            await probe(start, min(block, last + 1 - start))
    finally:
        client.close()
    return ScanResult(
        host, port, unit, table, first, last, merge(outcomes), requests, time.monotonic() - t0
    )


def merge(outcomes: list[tuple[int, int, str]]) -> list[Run]:
    runs: list[Run] = []
    for start, count, outcome in sorted(outcomes):
        last = runs[-1] if runs else None
        if last is not None and last.outcome == outcome and last.end + 1 == start:
            last.count += count
        else:
            runs.append(Run(start, count, outcome))
    return runs
