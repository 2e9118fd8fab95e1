"""The options of `watch()` that are words: a `StrEnum`, so a plain string works too."""

from __future__ import annotations

from enum import StrEnum


class Every(StrEnum):
    """`every=`: "auto", or an int N (one step in N)."""

    AUTO = "auto"

    @classmethod
    def parse(cls, every: int | str) -> int | Every:
        if isinstance(every, int) and not isinstance(every, bool) and every >= 1:
            return every
        if isinstance(every, str) and every in cls._value2member_map_:
            return cls(every)
        raise ValueError(f"every must be 'auto' or a positive int, got {every!r}")


class DeviceStats(StrEnum):
    """`device_stats=`: where CUDA tensors are reduced. "auto": on their device; "copy": copied
    to the host for the core (a synchronisation); "device": torch operations even on the CPU."""

    AUTO = "auto"
    DEVICE = "device"
    COPY = "copy"

    @classmethod
    def parse(cls, value: str) -> DeviceStats:
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        raise ValueError(f"device_stats must be one of {tuple(m.value for m in cls)}, got {value!r}")
