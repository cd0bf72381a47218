"""How fast this machine runs plain Python right now, printed with every benchmark: timings on
shared virtual machines drift by a factor of two or more between days, and this reference lets a
reader put two runs of a benchmark on one scale."""

from __future__ import annotations

import timeit


def reference_ms() -> float:
    """Best of five: milliseconds for ``sum(range(10**6))`` (about 15 ms on a recent desktop)."""
    return min(timeit.repeat("sum(range(10**6))", number=1, repeat=5)) * 1000


def describe() -> str:
    return f"machine reference: sum(range(10**6)) in {reference_ms():.1f} ms"
