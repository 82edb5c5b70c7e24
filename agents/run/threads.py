"""How many threads a run's PyTorch uses: the config's ``threads``, unless ``OMP_NUM_THREADS`` says otherwise.

MLP-sized agents gain nothing from intra-op parallelism and lose a lot when
several processes oversubscribe the cores (PyTorch's default is one thread
per core in every process), so runs default to one thread
(:class:`agents.config.TrainConfig`, ``threads``).  An explicit
``OMP_NUM_THREADS`` in the environment is the user's word and wins.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from ..config import ConfigError

__all__ = ["resolve_threads", "torch_threads"]


def resolve_threads(threads: Optional[int]) -> Optional[int]:
    """The thread count to set: ``OMP_NUM_THREADS`` when set (a positive int), else ``threads``.

    ``None``: leave PyTorch's setting alone (``threads: null`` and no ``OMP_NUM_THREADS``).
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ConfigError(f"OMP_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n >= 1:
            return n
        raise ConfigError(f"OMP_NUM_THREADS must be a positive integer, got {env!r}")
    if threads is not None and int(threads) < 1:
        raise ConfigError(f"threads: must be >= 1 or null, got {threads}")
    return None if threads is None else int(threads)


@contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[int]:
    """Run the block with :func:`resolve_threads` ``(threads)`` torch threads; the previous count comes back after.

    Yields the thread count in effect.

    >>> with torch_threads(1) as n:
    ...     n == torch.get_num_threads()
    True
    """
    previous = torch.get_num_threads()
    n = resolve_threads(threads)
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if n is not None:
            torch.set_num_threads(previous)
