"""Uplink bytes per reading on sim-like data, per body encoding.

    .venv/bin/python bench/wire_size.py [--points 500] [--readings 5000]

500 points polled every 5 s, report-by-exception (about half move per poll), a quarter each
of reg*0.1, float32, integer and reg*0.01 values, 1 % bad-quality readings without a value.
Also the binary columnar body (application/vnd.outpost.columnar.v1, the uplink's default) and
its encode rate, and the value column alone, lossless against rounded to 9 significant digits (the
reason values travel lossless: see ``outpost.cloud.wire``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import struct
import time
from array import array

import zstandard

from outpost.buffer.models import ReadingColumns
from outpost.cloud.uplink.columnar_body import encode_columnar
from outpost.cloud.wire import (
    COLUMNAR_ZSTD_LEVEL,
    Encoding,
    IngestBatch,
    columnar_readings,
    encode_body,
)

_F32 = struct.Struct("<f")
_ZSTD_LEVEL = 3  # what encode_body uses


def sim_rows(
    points: int, readings: int
) -> tuple[list[str], list[float], list[float | None], list[int]]:
    rng = random.Random(1)
    ids = [f"dev-{i // 20:02d}.point_{i % 20:02d}" for i in range(points)]
    regs = [rng.randint(100, 3000) for _ in range(points)]
    kinds = [i % 4 for i in range(points)]  # 0: reg*0.1, 1: float32, 2: int, 3: reg*0.01
    rows_p: list[str] = []
    rows_t: list[float] = []
    rows_v: list[float | None] = []
    rows_q: list[int] = []
    t = 1_763_900_000.0
    k = 0
    while len(rows_p) < readings:
        t += 5.0
        for i in range(points):
            if rng.random() < 0.5:  # report-by-exception: about half the points move
                continue
            regs[i] += rng.randint(-3, 3)
            kind = kinds[i]
            if kind == 0:
                v: float | None = regs[i] * 0.1
            elif kind == 1:
                v = _F32.unpack(_F32.pack(regs[i] / 7.0))[0]
            elif kind == 2:
                v = float(regs[i])
            else:
                v = regs[i] * 0.01
            q = 0
            if rng.random() < 0.01:
                v, q = math.nan, 129
            rows_p.append(ids[i])
            rows_t.append(t + (k % 7) * 0.003)
            rows_v.append(v)
            rows_q.append(q)
            k += 1
    return rows_p[:readings], rows_t[:readings], rows_v[:readings], rows_q[:readings]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=500)
    ap.add_argument("--readings", type=int, default=5000)
    args = ap.parse_args()
    n = args.readings
    cols = columnar_readings(*sim_rows(args.points, n))
    batch = IngestBatch(gateway_id="site-01-gw-1", first_seq=1, last_seq=n, readings=cols)
    encodings: tuple[Encoding, ...] = ("identity", "gzip", "zstd")
    for enc in encodings:
        body, _ = encode_body(batch, enc)
        print(f"{enc:9s} {len(body):8d} bytes  {len(body) / n:6.2f} bytes/reading")
    zstd = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    # the binary columnar body (what the uplink sends by default), from typed columns
    p_ids, p_ts, p_vals, p_q = sim_rows(args.points, n)
    index: dict[str, int] = {}
    keys = [index.setdefault(p, len(index)) for p in p_ids]
    names = list(index)
    typed = ReadingColumns(
        array("q", range(1, n + 1)),
        array("q", [round(t * 1000.0) for t in p_ts]),
        array("I", keys),
        array("d", [math.nan if v is None else v for v in p_vals]),
        array("B", p_q),
        lambda ks: [names[k] for k in ks],
    )
    raw = encode_columnar("site-01-gw-1", 1, n, typed)
    t0 = time.perf_counter()
    for _ in range(20):
        raw = encode_columnar("site-01-gw-1", 1, n, typed)
        body = zstandard.ZstdCompressor(level=COLUMNAR_ZSTD_LEVEL).compress(raw)
    per = (time.perf_counter() - t0) / 20
    print(
        f"columnar  {len(body):8d} bytes  {len(body) / n:6.2f} bytes/reading "
        f"(binary v1 + zstd {COLUMNAR_ZSTD_LEVEL}; encode + compress {per * 1e3:.2f} ms = {n / per:,.0f} readings/s)"
    )
    rounded = json.dumps({"v": [None if v is None else float(f"{v:.9g}") for v in cols.value]})
    plain = json.dumps({"v": cols.value})
    print(
        f"value column alone, zstd: lossless {len(zstd.compress(plain.encode())) / n:.2f} B/r, "
        f"rounded to 9 significant digits {len(zstd.compress(rounded.encode())) / n:.2f} B/r"
    )


if __name__ == "__main__":
    main()
