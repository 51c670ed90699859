"""Schedule skeletons written by discovery (`outpost discover bacnet|snmp`).

Discovery finds objects; a commissioning engineer decides which to keep. The skeleton is a
valid schedule CSV once its `device` column names a device of the agent config, so the
engineer can go straight to `outpost schedule validate`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

SKELETON_COLUMNS = (
    "point_id",
    "device",
    "address",
    "data_type",
    "units",
    "description",
    "writable",
    "tags",
)

_NOT_ID = re.compile(r"[^a-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class DiscoveredPoint:
    device: str  # the device id the engineer will use in the config
    address: str  # in the schedule's address syntax for the protocol
    name: str  # the device's own name for the object (becomes the point_id suffix)
    data_type: str = ""
    units: str = ""
    description: str = ""
    writable: bool = False
    tags: str = ""


def point_id_for(device: str, name: str) -> str:
    """A valid, readable point_id: `<device>.<slug of name>`."""
    slug = _NOT_ID.sub("_", name.strip().lower()).strip("_.-") or "point"
    base = _NOT_ID.sub("_", device.lower()).strip("_.-") or "device"
    return f"{base}.{slug}"


def write_skeleton(
    points: Iterable[DiscoveredPoint], out: TextIO, *, header_comment: str = ""
) -> int:
    """Write points as schedule CSV; point_ids are made unique with a numeric suffix."""
    if header_comment:
        for line in header_comment.splitlines():
            out.write(f"# {line}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SKELETON_COLUMNS)
    seen: set[str] = set()
    count = 0
    for p in points:
        pid = point_id_for(p.device, p.name)
        candidate, n = pid, 2
        while candidate in seen:
            candidate = f"{pid}_{n}"
            n += 1
        seen.add(candidate)
        writer.writerow(
            [
                candidate,
                p.device,
                p.address,
                p.data_type,
                p.units,
                p.description,
                "true" if p.writable else "",
                p.tags,
            ]
        )
        count += 1
    return count
