"""O(1)-memory backprop through stacks of invertible transforms (RevNet-style recomputation).

A stack ``y = f_K o ... o f_1 (x)`` normally keeps every block's activations
for the backward pass, so training memory grows linearly with depth.  Because
every block is a bijection, the backward pass can instead rebuild them from the
output: for ``k = K .. 1``, ``x_{k-1} = f_k^{-1}(x_k)`` (no grad), then the local
graph ``(x_k, ld_k) = f_k(x_{k-1})`` is recomputed with grad enabled and
``autograd.grad`` carries ``dL/dx_k`` and ``dL/d ld_k`` to ``dL/dx_{k-1}``, the
context and the block's parameters.  Only the stack's output (and the
context, and the stack's input) are saved for backward, so saved memory is
independent of depth; one block's (segment's, below) graph is alive at a time
during backward.

:class:`MemorySaving` wraps a transform (usually a :class:`~flowrl.core.Compose`)
and runs it this way; :func:`memory_saving` is its checked constructor, and
``build_flow(..., memory_saving=True)`` uses it.  The sampling direction works
the same way with the roles swapped (apply ``f_k^{-1}``, reconstruct with
``f_k``), which is what :meth:`flowrl.Flow.rsample_and_log_prob` uses.

The stack is opened up through the transform protocol alone:
:meth:`Transform.parts <flowrl.core.Transform.parts>` lists a wrapper's steps
(a ``Compose``'s children, an ``Inverse``'s base inverted, a multi-scale
level's inner stack with the ``around`` that squeezes or slices), recursively,
so that a whole multi-scale Glow is one flat stack of steps; any transform
without parts is one step.  A new wrapper needs no edit here.

Recompute segments: the flat stack is cut into segments of
:data:`SEGMENT_STEPS` consecutive steps (e.g. a Glow step's ActNorm, 1x1
convolution and coupling plus the next step's ActNorm); backward rebuilds and
recomputes a whole segment at once, with one ``autograd.grad`` call, and the
``around`` shared by consecutive steps of one wrapper (a squeezed level's
squeeze/unsqueeze, a factored-out level's slice and concatenation) is done
once per segment instead of once per step.  Peak memory in backward is one
segment's graph, which does not depend on depth.

Mixed strategy for sequential reconstructions (the default): a step whose
reconstruction direction takes ``D`` sequential passes (the protocol's
``sequential_inverse``, e.g. ``MaskedAutoregressive`` in density training;
``sequential_forward`` for the sampling direction, e.g. an IAF's layers)
keeps its input instead: the forward pass stores it and backward starts that
segment from it.  Saved memory then grows with depth by those steps' inputs
only (one ``(batch, D)`` tensor per autoregressive layer, not its
conditioner's activations).  ``strict=True`` (``build_flow(...,
memory_saving="strict")``) keeps no such input and rebuilds it by the exact
``D``-pass reconstruction: saved memory independent of depth for MAF/IAF too,
at the price of ``D`` conditioner passes per layer in backward.

Cost: one forward without grad, then per segment one reconstruction (the
other direction, no grad; skipped for kept inputs) plus the usual
forward-with-grad and backward, i.e. at most two extra passes compared with
plain backprop (strict mode on autoregressive layers: the ``D``-pass
reconstruction instead of one pass).  ``scripts/bench_memory.py`` measures
time and saved memory of every mode against plain backprop.

Numerical drift: a reconstructed input differs from the true activation by the
round-off of the inverse, and that error is carried (and amplified by each
block's inverse Lipschitz constant) down the stack
(:func:`reconstruction_drift` measures it; ``scripts/bench_memory.py``
prints it with the gradient difference after training).  Drift grows with
the stack's condition number, not only its depth: a stack whose scales
saturate (outputs of 1e6 from unit inputs after 32 couplings) loses its
activations entirely in float32.  Use float64, or plain backprop, for badly
conditioned stacks.

Refusals and caveats:

* Blocks whose inverse is numerical (``analytic_inverse = False``: bisection,
  fixed point, ODE solve) are refused with a ``ValueError``, unless
  ``allow_numerical_inverse=True``: the gradient is then computed at the
  reconstructed input, whose error is the solver's tolerance carried through
  the stack, so gradients are only as accurate as that tolerance.
* Double backward (``create_graph=True``) is refused with a ``RuntimeError``.
* When grad is disabled, or nothing requires grad, the plain stack runs.
* While the stack still awaits a data-dependent initialisation (the
  protocol's ``awaits_initialisation``: ActNorm before its first batch) the
  plain stack runs, so that the initialising call behaves exactly as without
  memory saving; later calls save memory.
* Blocks must be deterministic given their input (no dropout in training mode,
  no running statistics updated by the forward pass): the backward pass runs
  their forward a second time.  The random-number state is not replayed.
* Mixed precision: the backward pass rebuilds and recomputes under the
  autocast state the forward pass ran with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .core import Parts, Transform

__all__ = [
    "MemorySaving",
    "memory_saving",
    "memory_saving_call",
    "flatten_blocks",
    "merge_blocks",
    "segment_blocks",
    "SEGMENT_STEPS",
    "check_invertible",
    "reconstruction_drift",
    "SavedTensorMeter",
    "DOUBLE_BACKWARD_MESSAGE",
]

DOUBLE_BACKWARD_MESSAGE = (
    "memory-saving backprop does not support double backward (create_graph=True): "
    "its backward recomputes activations outside the graph; use the plain stack "
    "(memory_saving=False) for higher-order gradients"
)


class Block:
    """One step of a flattened stack: ``apply`` runs it, ``reconstruct`` undoes it."""

    @property
    def analytic_inverse(self) -> bool:
        """Whether this step's reconstruction is exact (not a numerical solve)."""
        return True

    @property
    def keeps_input(self) -> bool:
        """Whether rebuilding this step's input costs far more than running it (then it is stored)."""
        return False

    def apply(self, x: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def reconstruct(self, y: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def submodules(self) -> list[nn.Module]:
        """The modules whose parameters and initialisation flags this step uses."""
        return []


@dataclass(frozen=True)
class TransformBlock(Block):
    """A single-step transform used in one direction (``inverted``: apply its ``inverse``)."""

    module: Transform
    inverted: bool

    @property
    def analytic_inverse(self) -> bool:
        return bool(self.module.analytic_inverse)

    @property
    def keeps_input(self) -> bool:
        # reconstruct runs the module's other direction: forward when inverted, else inverse
        return bool(self.module.sequential_forward if self.inverted else self.module.sequential_inverse)

    def apply(self, x: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        return self.module.inverse(x, context) if self.inverted else self.module(x, context)

    def reconstruct(self, y: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        return self.module(y, context) if self.inverted else self.module.inverse(y, context)

    def submodules(self) -> list[nn.Module]:
        return [self.module]


@dataclass(frozen=True)
class LiftedBlock(Block):
    """A step of a wrapper with a frame: ``around(x, block)`` (see :class:`flowrl.core.Parts`)."""

    block: Block
    around: Callable[[Tensor, Callable[[Tensor], tuple[Tensor, Tensor]]], tuple[Tensor, Tensor]]

    @property
    def analytic_inverse(self) -> bool:
        return self.block.analytic_inverse

    @property
    def keeps_input(self) -> bool:
        return self.block.keeps_input

    def apply(self, x: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        return self.around(x, lambda v: self.block.apply(v, context))

    def reconstruct(self, y: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        return self.around(y, lambda v: self.block.reconstruct(v, context))

    def submodules(self) -> list[nn.Module]:
        return self.block.submodules()


@dataclass(frozen=True)
class SegmentBlock(Block):
    """Consecutive steps recomputed as one unit: ``y = b_n o ... o b_1 (x)``, one autograd graph in backward."""

    blocks: tuple[Block, ...]

    @property
    def analytic_inverse(self) -> bool:
        return all(b.analytic_inverse for b in self.blocks)

    @property
    def keeps_input(self) -> bool:
        return any(b.keeps_input for b in self.blocks)

    def apply(self, x: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        return _run_plain(list(self.blocks), x, context)

    def reconstruct(self, y: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        total = y.new_zeros(y.shape[0])
        for b in reversed(self.blocks):
            y, ld = b.reconstruct(y, context)
            total = total + ld
        return y, total

    def submodules(self) -> list[nn.Module]:
        return [m for b in self.blocks for m in b.submodules()]


#: steps per recompute segment: one autograd graph per segment in backward (peak memory is one
#: segment's activations, still independent of depth); amortises the per-step Python/autograd overhead
SEGMENT_STEPS = 4


def _same_wrapper(a: Block, b: Block) -> bool:
    return isinstance(a, LiftedBlock) and isinstance(b, LiftedBlock) and a.around == b.around


def merge_blocks(blocks: list[Block]) -> Block:
    """One block running ``blocks`` in order, with shared frames entered once.

    Consecutive steps in the same frame (``around(., b_k)``: e.g. ``unsqueeze o b_k o
    squeeze`` for the steps of a squeezed level) become ``around(., b_n o ... o b_1)``,
    which is the same map because ``around`` distributes over composition; recursively.
    """
    runs: list[list[Block]] = []
    for b in blocks:
        if runs and _same_wrapper(runs[-1][-1], b):
            runs[-1].append(b)
        else:
            runs.append([b])
    merged: list[Block] = []
    for run in runs:
        first = run[0]
        if len(run) == 1:
            merged.append(first)
        else:
            assert isinstance(first, LiftedBlock)
            merged.append(LiftedBlock(merge_blocks([b.block for b in run if isinstance(b, LiftedBlock)]), first.around))
    return merged[0] if len(merged) == 1 else SegmentBlock(tuple(merged))


def segment_blocks(blocks: list[Block], steps: Optional[int] = None, keep_inputs: bool = True) -> list[Block]:
    """Cut the flat stack into recompute segments of at most ``steps`` steps (merged with :func:`merge_blocks`).

    ``steps`` defaults to :data:`SEGMENT_STEPS`.  With ``keep_inputs``, a step that
    keeps its input (its reconstruction is sequential: ``keeps_input``) starts a new
    segment, whose stored input then serves the whole segment.
    """
    steps = SEGMENT_STEPS if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"a recompute segment needs at least 1 step, got {steps}")
    segments: list[list[Block]] = []
    for b in blocks:
        if not segments or (keep_inputs and b.keeps_input) or len(segments[-1]) >= steps:
            segments.append([b])
        else:
            segments[-1].append(b)
    return [merge_blocks(seg) for seg in segments]


def flatten_blocks(transform: Transform, inverted: bool = False) -> list[Block]:
    """The steps of ``transform`` in the order they are applied (``inverted``: of its inverse).

    Every transform that has :meth:`~flowrl.core.Transform.parts` is opened up,
    recursively (an inverted composition applies its children's inverses in
    reverse order; a wrapper's frame ``around`` is carried by each of its steps),
    so that a whole multi-scale Glow is one flat stack whose steps all map the
    stack's input shape to itself.  Any other transform is one step.
    """
    parts = transform.parts(inverted)
    if parts is None:
        return [TransformBlock(transform, inverted)]
    blocks = [b for t, inv in parts.steps for b in flatten_blocks(t, inv)]
    if parts.around is None:
        return blocks
    return [LiftedBlock(b, parts.around) for b in blocks]


def check_invertible(transform: Transform, allow_numerical_inverse: bool = False) -> None:
    """Raise ``ValueError`` if ``transform`` contains a transform with a numerical inverse (unless allowed)."""
    if allow_numerical_inverse:
        return
    numerical = [
        type(m).__name__
        for m in transform.modules()
        if isinstance(m, Transform) and m.parts() is None and not m.analytic_inverse
    ]
    if numerical:
        raise ValueError(
            "memory-saving backprop needs exact inverses to rebuild activations, but "
            f"{sorted(set(numerical))} invert numerically; pass allow_numerical_inverse=True to accept "
            "gradients computed at reconstructed inputs (error of the order of the solver tolerance)"
        )


class MemorySaving(Transform):
    """``transform`` run with O(1) activation memory in depth (see the module doc); the same map.

    ``strict``: keep no input of a step whose reconstruction is sequential (rebuild
    it by the ``D``-pass direction instead), so that saved memory does not grow
    with depth for autoregressive stacks either.

    The wrapper is transparent: it shares the wrapped transform's submodules,
    parameters and buffers (the same dictionaries, not copies), so parameter
    names, the state dict and attribute access (``.transforms`` of a
    ``Compose``) are those of ``transform``, and checkpoints load either way.
    """

    def __init__(self, transform: Transform, allow_numerical_inverse: bool = False, strict: bool = False):
        super().__init__()
        check_invertible(transform, allow_numerical_inverse)
        object.__setattr__(self, "stack", transform)  # not registered as a child: its contents are shared below
        self._modules = transform._modules
        self._parameters = transform._parameters
        self._buffers = transform._buffers
        self._non_persistent_buffers_set = transform._non_persistent_buffers_set
        self.strict = bool(strict)
        self.training = transform.training

    stack: Transform

    def train(self, mode: bool = True) -> "MemorySaving":
        super().train(mode)
        self.stack.training = mode  # its children are ours; its own flag is set here
        return self

    def parts(self, inverted: bool = False) -> Parts:
        return Parts([(self.stack, inverted)])

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return memory_saving_call(self.stack, x, context, strict=self.strict)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return memory_saving_call(self.stack, z, context, inverse=True, strict=self.strict)

    def jacobian_mask(self, dim: int) -> Optional[Tensor]:
        return self.stack.jacobian_mask(dim)

    def extra_repr(self) -> str:
        return f"{type(self.stack).__name__}, strict={self.strict}"


def memory_saving(
    transform: Transform, allow_numerical_inverse: bool = False, strict: bool = False
) -> MemorySaving:
    """Make ``transform`` train with O(1) activation memory in depth: ``MemorySaving(transform, ...)``.

    ``ValueError`` if a step inverts numerically, unless ``allow_numerical_inverse``;
    ``strict``: see :class:`MemorySaving`.
    """
    return MemorySaving(transform, allow_numerical_inverse, strict)


def _run_plain(blocks: list[Block], x: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    total = x.new_zeros(x.shape[0])
    for b in blocks:
        x, ld = b.apply(x, context)
        total = total + ld
    return x, total


@dataclass
class _Plan:
    """What the autograd function needs besides tensors: blocks and their parameters' positions."""

    blocks: list[Block]
    block_params: list[list[tuple[int, nn.Parameter]]]
    keep_inputs: bool = True


def _plan(blocks: list[Block], keep_inputs: bool = True) -> tuple[_Plan, list[nn.Parameter]]:
    params: list[nn.Parameter] = []
    index: dict[int, int] = {}
    per_block = []
    for b in blocks:
        mine: list[tuple[int, nn.Parameter]] = []
        for p in (p for m in b.submodules() for p in m.parameters()):
            if not p.requires_grad or any(q is p for _, q in mine):
                continue
            if id(p) not in index:
                index[id(p)] = len(params)
                params.append(p)
            mine.append((index[id(p)], p))
        per_block.append(mine)
    return _Plan(blocks, per_block, keep_inputs), params


class _MemorySavingStack(torch.autograd.Function):
    """Forward without storing activations; backward rebuilds them block by block."""

    @staticmethod
    def forward(ctx, plan: _Plan, x: Tensor, context: Optional[Tensor], *params: Tensor):
        # the stack's input and the inputs of steps whose reconstruction is sequential are kept
        kept: list[Tensor] = []
        kept_at: list[int] = []
        y, logdet = x, x.new_zeros(x.shape[0])
        for k, block in enumerate(plan.blocks):
            if k == 0 or (plan.keep_inputs and block.keeps_input):
                kept.append(y)
                kept_at.append(k)
            y, ld = block.apply(y, context)
            logdet = logdet + ld
        if y is x:
            y = y.clone()
        ctx.plan = plan
        ctx.kept_at = kept_at
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(y, context, *kept)
        return y, logdet

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_logdet: Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)
        plan: _Plan = ctx.plan
        y, context, *kept_tensors = ctx.saved_tensors
        kept = dict(zip(ctx.kept_at, kept_tensors))
        need_context = bool(ctx.needs_input_grad[2])
        grad_params: list[Optional[Tensor]] = [None] * (len(ctx.needs_input_grad) - 3)
        grad_context: Optional[Tensor] = None
        device, autocast_on, autocast_dtype = ctx.autocast
        for k in reversed(range(len(plan.blocks))):
            block = plan.blocks[k]
            # rebuild and recompute under the forward pass's autocast (mixed precision) state
            if k in kept:
                x = kept[k]
            else:
                with torch.no_grad(), torch.autocast(device, autocast_dtype, enabled=autocast_on):
                    x = block.reconstruct(y, context)[0]
            need_x = k > 0 or bool(ctx.needs_input_grad[1])
            with torch.enable_grad(), torch.autocast(device, autocast_dtype, enabled=autocast_on):
                x_in = x.detach().requires_grad_(need_x)
                c_in = context.detach().requires_grad_() if need_context else context
                out, ld = block.apply(x_in, c_in)
                pairs = [(t, g) for t, g in ((out, grad_y), (ld, grad_logdet)) if t.requires_grad]
                inputs = ([x_in] if need_x else []) + ([c_in] if need_context else [])
                inputs += [p for _, p in plan.block_params[k]]
                grads: tuple[Optional[Tensor], ...] = ()
                if pairs and inputs:
                    grads = torch.autograd.grad(
                        [t for t, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True
                    )
            del out, ld, pairs
            i = 0
            if need_x:
                grad_y = grads[0] if grads and grads[0] is not None else torch.zeros_like(x)
                i = 1
            if need_context:
                g = grads[i] if grads else None
                if g is not None:
                    grad_context = g if grad_context is None else grad_context + g
                i += 1
            for j, (idx, _) in enumerate(plan.block_params[k]):
                g = grads[i + j] if grads else None
                if g is not None:
                    known = grad_params[idx]
                    grad_params[idx] = g if known is None else known + g
            y = x
        grad_x = grad_y if ctx.needs_input_grad[1] else None
        return (None, grad_x, grad_context, *grad_params)


def memory_saving_call(
    transform: Transform, x: Tensor, context: Optional[Tensor] = None, inverse: bool = False, strict: bool = False
) -> tuple[Tensor, Tensor]:
    """Apply ``transform`` (or its inverse) to ``x``, storing only the output for backward.

    ``strict``: also rebuild the inputs of steps whose reconstruction is sequential.
    """
    blocks = flatten_blocks(transform, inverted=inverse)
    keep_inputs = not strict
    plan, params = _plan(segment_blocks(blocks, keep_inputs=keep_inputs), keep_inputs)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or (context is not None and context.requires_grad) or len(params) > 0
    )
    if not needs_grad or transform.awaits_initialisation:
        return _run_plain(blocks, x, context)
    return _MemorySavingStack.apply(plan, x, context, *params)


@torch.no_grad()
def reconstruction_drift(
    transform: Transform, x: Tensor, context: Optional[Tensor] = None, inverse: bool = False
) -> Tensor:
    """Max-abs error of each reconstructed activation, from the last block's input back to ``x``.

    Runs the stack storing every activation ``x_0 .. x_K``, then rebuilds
    ``x_{K-1} .. x_0`` from ``x_K`` step by step with each step's reconstruction;
    entry ``j`` is ``max |x_rebuilt - x_true|`` after ``j + 1`` reconstructions.  Every
    step is rebuilt here; the memory-saving backward restarts from the stored input
    at the stack's first step and at steps that keep their input, so its error is at most this.
    """
    blocks = flatten_blocks(transform, inverted=inverse)
    acts = [x]
    for b in blocks:
        acts.append(b.apply(acts[-1], context)[0])
    y = acts[-1]
    errors = []
    for k in reversed(range(len(blocks))):
        y = blocks[k].reconstruct(y, context)[0]
        errors.append((y - acts[k]).abs().max())
    return torch.stack(errors)



class SavedTensorMeter:
    """Counts the bytes autograd saves for backward while the ``with`` block runs.

    Each distinct storage is counted once (a tensor saved by several
    operations, or views of one buffer, hold the memory once)::

        with SavedTensorMeter() as meter:
            loss = -flow.log_prob(x).mean()
        meter.bytes
    """

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[tuple[str, int]] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key not in self._seen:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        return t

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
