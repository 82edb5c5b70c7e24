"""Per-row values evaluated once per distinct row, and memoised while what they depend on is unchanged.

A pseudo-count depends only on the encoded observation and on the scoring
parameters, and the observations an agent scores repeat (quantised frames
above all).  :class:`RowMemo` evaluates a per-row function once per
*distinct* row of a batch, ``out = f(unique(z))[inverse]``, and with
``cache_size > 0`` keeps the values of distinct rows until its key changes.
The key names what the values depend on besides the rows:
:func:`tensor_state` gives one that every in-place change of a tensor (an
optimiser step, a parameter average, ``load_state_dict``'s ``copy_``) and
every move to another device changes, read on the host without a device sync.
Both are exact: the values equal a direct evaluation up to the float rounding
of a different batch size (about 1 ulp of a log-density).
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["RowMemo", "tensor_state"]


def tensor_state(tensors: Iterable[Tensor]) -> tuple:
    """``(id, version counter, storage address)`` of each tensor: changes with any in-place change or move."""
    return tuple((id(t), t._version, t.data_ptr()) for t in tensors)


class RowMemo:
    """``f(z)`` for per-row functions ``f``: each distinct row evaluated once, values memoised per quantity.

    Args:
        cache_size: distinct rows whose values are memoised per quantity until the key
            changes (0: no memo, only one evaluation per distinct row of a batch).  When
            full, the memo restarts from the current batch's rows.

    ``ready()`` is asked whenever the key changes: while it is ``False`` (a layer
    awaits its data-dependent initialisation, which must see the batch as given)
    batches are evaluated as given and nothing is memoised.  Copies and pickles
    start empty (the key names the original's tensors).
    """

    def __init__(self, cache_size: int = 4096):
        if not isinstance(cache_size, (int, np.integer)) or isinstance(cache_size, bool) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {cache_size!r}")
        self.cache_size = int(cache_size)
        self.clear()

    def clear(self) -> None:
        """Forget every memoised value."""
        self.values: dict[str, tuple[Tensor, Tensor]] = {}  # quantity -> (distinct rows (M, D), values (M,))
        self._key: Optional[Hashable] = None  # what the values were computed under
        self._ready = False  # no layer awaits a data-dependent initialisation

    def __getstate__(self) -> dict:
        return {"cache_size": self.cache_size}

    def __setstate__(self, state: dict) -> None:
        self.cache_size = int(state["cache_size"])
        self.clear()

    def __call__(self, quantity: str, z: Tensor, fn: Callable[[Tensor], Tensor], key: Hashable,
                 ready: Callable[[], bool]) -> Tensor:
        """``fn(z)`` (shape ``(B,)``) with each distinct row of ``z`` evaluated once; ``quantity`` names ``fn``."""
        if z.shape[0] == 0:
            return fn(z)
        if key != self._key:
            self.clear()
            self._key = key
            self._ready = ready()
        if not self._ready:  # the initialising batch must be the batch as given
            self._key = None
            return fn(z)
        rows, inverse = torch.unique(z.flatten(1), dim=0, return_inverse=True)
        return self._distinct_values(quantity, rows, fn, z.shape[1:])[inverse]

    def _distinct_values(self, quantity: str, rows: Tensor, fn: Callable[[Tensor], Tensor],
                         row_shape: torch.Size) -> Tensor:
        """``fn`` of distinct rows ``(K, D)``, reading memoised rows and evaluating only the others."""
        shape = (-1, *row_shape)
        if self.cache_size == 0:
            return fn(rows.reshape(shape))
        memo = self.values.get(quantity)
        if memo is None:
            values = fn(rows.reshape(shape))
            if rows.shape[0] <= self.cache_size:
                self.values[quantity] = (rows, values.detach())
            return values
        known, known_values = memo
        m, k = known.shape[0], rows.shape[0]
        # Row ids shared by the memo and the batch; slot[id] = memo index of that row, or -1.
        ids = torch.unique(torch.cat([known, rows]), dim=0, return_inverse=True)[1]
        slot = torch.full((m + k,), -1, dtype=torch.long, device=rows.device)
        slot[ids[:m]] = torch.arange(m, device=rows.device)
        where = slot[ids[m:]]
        hit = where >= 0
        values = torch.empty(k, dtype=known_values.dtype, device=rows.device)
        values[hit] = known_values[where[hit]]
        miss = ~hit
        new_rows = rows[miss]
        if new_rows.shape[0] == 0:
            return values
        new_values = fn(new_rows.reshape(shape))
        values[miss] = new_values.to(values.dtype)
        if m + new_rows.shape[0] <= self.cache_size:
            self.values[quantity] = (torch.cat([known, new_rows]), torch.cat([known_values, new_values.detach()]))
        elif k <= self.cache_size:  # full: restart from this batch's frames
            self.values[quantity] = (rows, values.detach())
        return values

    def __repr__(self) -> str:
        return f"RowMemo(cache_size={self.cache_size})"
