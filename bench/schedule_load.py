"""Schedule loader speed: parse + validate a generated N-row schedule using every column.

    .venv/bin/python bench/schedule_load.py [--rows 10000] [--repeat 5] [--format csv|xlsx|both]

Prints the best and median wall time and the best CPU time of ``parse_schedule`` (bytes in
memory: decoding, CSV or the .xlsx workbook of the same rows, every cell validated, Point
objects built) and rows per second. Figures only; no pass/fail.
Target: 10,000 rows well under one second (CSV).
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outpost.point_schedules.loader import COLUMNS, parse_schedule

DEVICES = {"cdu-01": "modbus", "ahu-1": "bacnet", "pdu-a": "snmp", "rack": "mqtt"}


def make_schedule(rows: int) -> bytes:
    lines = [",".join(COLUMNS)]
    for i in range(rows):
        kind = i % 4
        if kind == 0:
            device, address, dtype, order = "cdu-01", f"hr:{(2 * i) % 65000}", "float32", "CDAB"
        elif kind == 1:
            device, address, dtype, order = "ahu-1", f"analog-input:{i}", "", ""
        elif kind == 2:
            device, address, dtype, order = "pdu-a", f"1.3.6.1.2.1.2.2.1.10.{i}", "", ""
        else:
            device, address, dtype, order = "rack", f"site/r{i}/env#$.temp", "", ""
        lines.append(
            f"p.{i},{device},{address},{dtype},{order},0.1,0,degC,point {i},5,0.5,300,"
            f"{'true' if i % 5 == 0 else ''},0,100,90,80,10,5,,high,1,5,0,equip=x;n={i}"
        )
    return ("\n".join(lines) + "\n").encode()


def make_workbook(csv_data: bytes) -> bytes:
    """The same rows as an .xlsx workbook, numbers as numbers (as a spreadsheet holds them)."""
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("Points")
    for row in csv.reader(io.StringIO(csv_data.decode())):
        cells: list[str | float] = []
        for cell in row:
            try:
                cells.append(float(cell))
            except ValueError:
                cells.append(cell)
        sheet.append(cells)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def measure(name: str, data: bytes, rows: int, repeat: int) -> None:
    times, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        schedule, issues = parse_schedule([(name, data)], DEVICES)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        assert schedule is not None and not issues, [str(i) for i in issues[:3]]
    best, median = min(times), statistics.median(times)
    print(
        f"schedule load ({name.rsplit('.', 1)[-1]}): {rows} rows ({len(data) / 1e6:.1f} MB), "
        f"wall best {best * 1000:.0f} ms, median {median * 1000:.0f} ms; CPU best "
        f"{min(cpu) * 1000:.0f} ms ({rows / min(cpu):,.0f} rows per CPU-second)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--format", choices=("csv", "xlsx", "both"), default="both")
    args = parser.parse_args()
    data = make_schedule(args.rows)
    if args.format in ("csv", "both"):
        measure("bench.csv", data, args.rows, args.repeat)
    if args.format in ("xlsx", "both"):
        measure("bench.xlsx", make_workbook(data), args.rows, args.repeat)


if __name__ == "__main__":
    main()
