"""Writer process for the kill -9 test (tests/test_buffer_crash.py).

    python tests/buffer_crash_writer.py BUFFER_FILE SEED [rows|columnar]
    python tests/buffer_crash_writer.py serve      (a fork server: RUN BUFFER_FILE SEED LAYOUT)

Opens the buffer (recovering whatever a previous kill left), prints ``START <last_seq>``, then
appends readings forever in random-sized batches. Every reading is derivable from its seq
(value = seq * 0.5, point key = keys[seq % K], quality = QUALITIES[seq % 3], ts = T0 + seq ms),
so the test can check every row it finds. After each completed ``flush_sync`` it prints
``FLUSHED <seq>`` (all readings up to seq are committed); after each ``mark_synced`` returns it
prints ``SYNCED <seq>`` (a seq already flushed). stdout is line-buffered, so a line the test read was printed before the kill.
"""

from __future__ import annotations

import logging
import random
import sys
from array import array
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outpost.buffer.columnar_store import ColumnarBuffer
from outpost.buffer.store import Buffer

K = 37
T0 = 1_790_000_000.0
QUALITIES = (0, 64, 129)
POINT_IDS = [f"dev-{i:02d}.p" for i in range(K)]


def main(args: list[str]) -> None:
    path = Path(args[0])
    rng = random.Random(int(args[1]))
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    # Timestamps are weeks old (fixed T0): keep them all, retention is tested elsewhere.
    layout = ColumnarBuffer if args[2:] == ["columnar"] else Buffer
    buf = layout(
        path, commit_interval=0.02, commit_rows=3000, maintenance_interval=0.2, retention_days=3650
    )
    buf.open()
    keys = buf.point_keys(POINT_IDS)
    seq = buf.last_seq
    print(f"START {seq}")
    batches = 0
    flushed = seq
    while True:
        n = rng.randint(1, 400)
        seqs = range(seq + 1, seq + n + 1)
        buf.append(
            array("d", [T0 + s / 1000.0 for s in seqs]),
            array("q", [keys[s % K] for s in seqs]),
            array("d", [s * 0.5 for s in seqs]),
            array("B", [QUALITIES[s % 3] for s in seqs]),
        )
        seq += n
        batches += 1
        if batches % 7 == 0:
            buf.append_event(T0 + seq / 1000.0, "test", "crash_writer", None, {"after_seq": seq})
        if batches % 5 == 0:
            buf.flush_sync(10)
            flushed = seq
            print(f"FLUSHED {seq}")
        if batches % 11 == 0:
            through = rng.randint(max(0, flushed - 5000), flushed)
            buf.mark_synced(through)
            print(f"SYNCED {through}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        from tests import fork_server

        fork_server.serve(main)
    else:
        main(sys.argv[1:])
