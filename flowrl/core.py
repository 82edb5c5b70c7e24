"""The transform protocol and its composition.

A transform ``f`` maps data ``x`` to noise ``z = f(x)`` and reports
``log|det df/dx|`` per batch row.  ``inverse`` maps noise back to data and
reports ``log|det df^{-1}/dz|`` (the negative of the forward log-det at the
matching point).  Transforms act on tensors of shape ``(batch, *event_shape)``;
:class:`flowrl.flow.Flow` flattens any extra leading dimensions.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence, cast

import torch
from torch import Tensor, nn

__all__ = ["Transform", "Parts", "Compose", "Inverse"]


class Parts(NamedTuple):
    """A transform seen as the transforms it is made of (see :meth:`Transform.parts`).

    ``steps``: ``(transform, inverted)`` pairs in the order they are applied
    (``inverted``: the step applies that transform's :meth:`~Transform.inverse`).
    ``around``: ``None`` when the transform is the plain composition of its
    steps; otherwise ``around(x, run)`` runs ``run`` (any run of consecutive
    steps, in either direction) in the wrapper's frame, e.g. between a squeeze
    and an unsqueeze.  It must distribute over composition,
    ``around(x, g o f) = around(around(x, f), g)`` with log-dets added, which
    holds for parameter-free reshuffles and for acting on a slice.
    """

    steps: list[tuple["Transform", bool]]
    around: Optional[Callable[[Tensor, Callable[[Tensor], tuple[Tensor, Tensor]]], tuple[Tensor, Tensor]]] = None


def _transforms_below(module: nn.Module) -> Iterator["Transform"]:
    """The nearest :class:`Transform` descendants of ``module`` (through plain modules such as ``ModuleList``)."""
    for child in module.children():
        if isinstance(child, Transform):
            yield child
        else:
            yield from _transforms_below(child)


class Transform(nn.Module):
    """A bijection ``z = f(x; context)`` with its log absolute Jacobian determinant.

    Subclasses implement :meth:`forward` (data -> noise) and :meth:`inverse`
    (noise -> data), each returning ``(output, logabsdet)`` with ``logabsdet``
    of shape ``(batch,)``.

    Facts that generic machinery (the registry, memory-saving backprop, the
    policies) reads from every transform, stated once by the transform itself:

    * :attr:`analytic_inverse`: both directions are exact and closed-form (or
      a finite exact procedure); ``False`` when one of them is found
      numerically (bisection, fixed point, ODE solve).
    * :attr:`sequential_inverse` / :attr:`sequential_forward`: that direction
      takes ``D`` sequential passes (an autoregressive layer's inverse): a
      cost hint; memory-saving backprop stores such a step's input rather than
      rebuild it through the slow direction.
    * :attr:`awaits_initialisation`: a data-dependent initialisation (ActNorm)
      will happen on the next forward batch.
    * :meth:`parts`: a wrapper's steps, so that machinery can open it up.

    A leaf states a fact that differs from the default as a class attribute
    (``analytic_inverse = False``) or a property; a wrapper that returns
    :meth:`parts` gets all of them derived from its steps.
    """

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:  # noqa: D401
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def parts(self, inverted: bool = False) -> Optional[Parts]:
        """This transform (its inverse if ``inverted``) as steps applied in order; ``None`` for a single step.

        :class:`Compose` returns its children, :class:`Inverse` its base
        transform inverted; multi-scale wrappers return their inner transform
        with an ``around`` (squeeze/unsqueeze, slice/concatenate).
        """
        return None

    @property
    def analytic_inverse(self) -> bool:
        """Whether both directions are exact in closed form (``False``: one is a numerical solve).

        Memory-saving backprop refuses transforms whose inverse is numerical.
        Default: ``True`` for a single step, all of its steps' for a wrapper.
        """
        parts = self.parts()
        return parts is None or all(t.analytic_inverse for t, _ in parts.steps)

    @property
    def sequential_inverse(self) -> bool:
        """Whether :meth:`inverse` takes ``D`` sequential passes (a cost hint; default ``False``)."""
        parts = self.parts(inverted=True)
        return parts is not None and any(_sequential(t, not inv) for t, inv in parts.steps)

    @property
    def sequential_forward(self) -> bool:
        """Whether :meth:`forward` takes ``D`` sequential passes (a cost hint; default ``False``)."""
        parts = self.parts()
        return parts is not None and any(_sequential(t, not inv) for t, inv in parts.steps)

    @property
    def awaits_initialisation(self) -> bool:
        """Whether a data-dependent initialisation will happen on the next forward batch.

        Default: whether any transform inside awaits one (ActNorm before its first batch).
        """
        return any(t.awaits_initialisation for t in _transforms_below(self))

    def jacobian_mask(self, dim: int) -> Optional[Tensor]:
        """Declared zero pattern of ``dz/dx`` for a vector input of size ``dim``.

        Returns a ``(dim, dim)`` boolean tensor that is ``True`` where the
        Jacobian may be non-zero (row = output, column = input), or ``None``
        when no structure is declared.
        """
        return None


def _sequential(t: Transform, forward: bool) -> bool:
    """Whether running ``t`` in the given direction takes sequential passes."""
    return t.sequential_forward if forward else t.sequential_inverse


class Compose(Transform):
    """Composition ``f = f_K o ... o f_1``; ``log|det J_f| = sum_k log|det J_{f_k}|``.

    For O(1) activation memory in depth, wrap the stack with
    :func:`flowrl.memory.memory_saving`.
    """

    def __init__(self, transforms: Iterable[Transform]):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        if len(self.transforms) == 0:
            raise ValueError("Compose needs at least one transform")

    @property
    def _steps(self) -> Sequence[Transform]:
        return cast(Sequence[Transform], self.transforms)  # a ModuleList of transforms

    def parts(self, inverted: bool = False) -> Parts:
        steps = [(t, inverted) for t in self._steps]
        return Parts(steps[::-1] if inverted else steps)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for t in self._steps:
            x, ld = t(x, context)
            total = total + ld
        return x, total

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for t in reversed(self._steps):
            z, ld = t.inverse(z, context)
            total = total + ld
        return z, total

    def jacobian_mask(self, dim: int) -> Optional[Tensor]:
        mask = torch.eye(dim, dtype=torch.bool)
        for t in self._steps:
            m = t.jacobian_mask(dim)
            if m is None:
                return None
            mask = (m.to(torch.int64) @ mask.to(torch.int64)) > 0
        return mask


class Inverse(Transform):
    """Swaps the directions of a transform: ``Inverse(f) = f^{-1}``.

    This is how the cheap direction is put where it is needed: a MAF (one
    pass for density) becomes an IAF (one pass for sampling).
    """

    def __init__(self, transform: Transform):
        super().__init__()
        self.base_transform = transform

    def parts(self, inverted: bool = False) -> Parts:
        return Parts([(self.base_transform, not inverted)])

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self.base_transform.inverse(x, context)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self.base_transform(z, context)

    def jacobian_mask(self, dim: int) -> Optional[Tensor]:
        # The inverse of a (permuted) triangular map has the same pattern
        # closure; we only claim structure for strictly elementwise maps.
        m = self.base_transform.jacobian_mask(dim)
        if m is not None and bool((m == torch.eye(dim, dtype=torch.bool)).all()):
            return m
        return None


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum every dimension but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def check_shape(x: Tensor, shape: Sequence[int], what: str = "input") -> None:
    """Raise ``ValueError`` unless ``x`` has trailing shape ``shape``."""
    n = len(shape)
    if x.dim() < n or tuple(x.shape[x.dim() - n:]) != tuple(shape):
        raise ValueError(
            f"{what} has shape {tuple(x.shape)}, expected trailing dimensions {tuple(shape)}"
        )
