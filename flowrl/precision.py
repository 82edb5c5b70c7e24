"""Float32 precision on CUDA: why densities stay exact, and how to keep them so.

flowrl never changes PyTorch's global precision flags.  PyTorch's defaults on
a GPU with TF32 units (Ampere and later) are: float32 matmuls in IEEE float32
(``torch.backends.cuda.matmul.allow_tf32 = False``), cuDNN convolutions in
TF32 (``torch.backends.cudnn.allow_tf32 = True``: products rounded to a
10-bit mantissa, relative error ``2^-11 ~ 5e-4`` per product instead of
``2^-24 ~ 6e-8``).  So every vector flow (built from linear layers) gives the
same ``log_prob`` and pseudo-counts on a GPU as on a CPU up to float32
rounding, while convolutional flows (``glow``, image couplings, the image
pseudo-counter) give log-densities that differ by ~1e-3 under the defaults.
Where those must be exact, evaluate them inside :func:`ieee_float32` (or set
``torch.backends.cudnn.allow_tf32 = False`` for the whole program); a program
that set ``torch.backends.cuda.matmul.allow_tf32 = True`` (or
``torch.set_float32_matmul_precision("high")``) for speed gets TF32 matmuls
in every flow too, and :func:`ieee_float32` undoes that where it is used.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["ieee_float32", "tf32_enabled"]


def _new_flags() -> list:
    """The ``fp32_precision`` flags of torch >= 2.9 (matmul, cuDNN conv, cuDNN RNN) this torch has."""
    cudnn = torch.backends.cudnn
    flags = [torch.backends.cuda.matmul, getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None)]
    return [f for f in flags if hasattr(f, "fp32_precision")]


def _legacy() -> tuple[bool, bool] | None:
    """``(matmul, cudnn)`` ``allow_tf32``, or ``None`` where torch refuses to read them (mixed APIs)."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        return None


def tf32_enabled() -> dict[str, bool]:
    """``{"matmul": ..., "conv": ...}``: whether CUDA float32 matmuls / cuDNN convolutions may use TF32 now."""
    legacy = _legacy()
    if legacy is not None:
        return {"matmul": legacy[0], "conv": legacy[1]}
    top = getattr(torch.backends, "fp32_precision", "ieee")

    def resolve(flag: str) -> bool:
        return (top if flag == "none" else flag) == "tf32"

    return {"matmul": resolve(torch.backends.cuda.matmul.fp32_precision),
            "conv": resolve(torch.backends.cudnn.conv.fp32_precision)}  # type: ignore[attr-defined]  # missing from torch's stubs


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Within the block, CUDA float32 matmuls and convolutions round like the CPU (no TF32).

    The flags are process-wide: they are set on entry and restored on exit,
    so other threads running CUDA work meanwhile see them too.
    """
    legacy = _legacy()
    if legacy is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy
        return
    flags = _new_flags()  # the program set the new flags: keep to them
    saved = [f.fp32_precision for f in flags]
    for f in flags:
        f.fp32_precision = "ieee"
    try:
        yield
    finally:
        for f, v in zip(flags, saved):
            f.fp32_precision = v
