"""A linear schedule over a training run, in SB3's convention (progress remaining 1 -> 0)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinearSchedule:
    """``v(p) = end + p (start - end)``, ``p`` the progress remaining (1 at the start, 0 at the end).

    A picklable SB3 schedule (``learning_rate=LinearSchedule(1e-3, 1e-4)``).
    """

    start: float
    end: float

    def __call__(self, progress_remaining: float) -> float:
        return self.end + progress_remaining * (self.start - self.end)
