"""Reading quality: one small integer per reading, cheap to compare on the hot path.

The code packs level and reason: ``code >= BAD`` is bad, ``code >= UNCERTAIN`` is at least
uncertain. The text form is ``good``, ``uncertain:<reason>`` or ``bad:<reason>``; it is what
the CLI, the buffer export and the wire show, so it must stay stable.
"""

from __future__ import annotations

from enum import IntEnum


class Quality(IntEnum):
    GOOD = 0
    UNCERTAIN = 64
    UNCERTAIN_OUT_OF_RANGE = 65
    UNCERTAIN_STALE = 66
    BAD = 128
    BAD_COMM_FAILURE = 129
    BAD_TIMEOUT = 130
    BAD_CONFIG_ERROR = 131
    BAD_DEVICE_ERROR = 132
    BAD_STALE = 133
    BAD_OUT_OF_RANGE = 134

    @property
    def level(self) -> str:
        if self >= Quality.BAD:
            return "bad"
        if self >= Quality.UNCERTAIN:
            return "uncertain"
        return "good"

    @property
    def reason(self) -> str | None:
        return _REASONS.get(self)

    @property
    def label(self) -> str:
        return _LABELS[self]

    @classmethod
    def from_label(cls, text: str) -> Quality:
        try:
            return _BY_LABEL[text]
        except KeyError:
            raise ValueError(f"unknown quality {text!r}") from None

    @property
    def is_good(self) -> bool:
        return self == Quality.GOOD


_REASONS: dict[Quality, str] = {
    Quality.UNCERTAIN_OUT_OF_RANGE: "out_of_range",
    Quality.UNCERTAIN_STALE: "stale",
    Quality.BAD_COMM_FAILURE: "comm_failure",
    Quality.BAD_TIMEOUT: "timeout",
    Quality.BAD_CONFIG_ERROR: "config_error",
    Quality.BAD_DEVICE_ERROR: "device_error",
    Quality.BAD_STALE: "stale",
    Quality.BAD_OUT_OF_RANGE: "out_of_range",
}
_LABELS: dict[Quality, str] = {
    q: (q.level if q.reason is None else f"{q.level}:{q.reason}") for q in Quality
}
_BY_LABEL: dict[str, Quality] = {v: k for k, v in _LABELS.items()}

#: Indexable by the integer code: ``QUALITY_LABEL[code]`` (hot-path friendly, no enum lookup).
QUALITY_LABEL: dict[int, str] = {int(q): label for q, label in _LABELS.items()}
