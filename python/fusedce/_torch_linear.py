"""fusedce.torch.linear_cross_entropy and LinearCrossEntropyLoss: the PyTorch side of
:mod:`fusedce.linear` (fused, chunked linear layer + cross-entropy).

Imported by :mod:`fusedce.torch` (its last line), which users import; the helpers of
fusedce.torch that move tensors in and out of fusedce are looked up there when a call runs,
so that this module can be imported on its own too.
"""

from __future__ import annotations

import importlib

import torch

from .linear import linear_cross_entropy as _loss
from .linear import linear_cross_entropy_with_grad as _loss_and_grads

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]


def _ft():
    """fusedce.torch (its tensor <-> array helpers), imported when first needed."""
    return importlib.import_module("fusedce.torch")


def _arrays(io, input, linear_weight, linear_bias, target, weight):
    """The call's tensors as what fusedce takes (NumPy views on the CPU, tensors on CUDA)."""
    ft = _ft()
    # bfloat16 CUDA tensors: fusedce's array layer sees their storage as int16, which no
    # GEMM takes, so the GEMMs run on float32 copies (untested: written without a GPU).
    dt = torch.float32 if (input.is_cuda and input.dtype == torch.bfloat16) else None
    x = io.array(input, dtype=dt)
    w = io.array(linear_weight, dtype=dt)
    b = None if linear_bias is None else io.array(linear_bias, dtype=dt)
    cw = None if weight is None else io.array(weight, dtype=ft._compute_dtype(input.dtype))
    return x, w, b, io.array(target), cw


def _tensor(io, a, dtype):
    t = io.tensor(a)
    return t if t.dtype == dtype else t.to(dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward: the chunked loss, and, when any of input / linear_weight / linear_bias needs
    a gradient, those gradients too (one pass; the logits are never stored). Backward:
    scales them by the upstream gradient, or, for reduction "none" with an upstream
    gradient that is not the same for every row, recomputes the chunks with it."""

    @staticmethod
    def forward(ctx, input, linear_weight, linear_bias, target, weight, opts):
        ctx.set_materialize_grads(False)
        want = any(ctx.needs_input_grad[:3])
        ctx.opts = opts
        ctx.grads = None
        with _ft()._arrays_for(input) as io:
            x, w, b, t, cw = _arrays(io, input, linear_weight, linear_bias, target, weight)
            if want:
                loss, gx, gw, gb = _loss_and_grads(x, w, t, linear_bias=b, weight=cw, **opts)
                ctx.grads = (_tensor(io, gx, input.dtype), _tensor(io, gw, linear_weight.dtype),
                             None if gb is None else _tensor(io, gb, linear_bias.dtype))
            else:
                loss = _loss(x, w, t, linear_bias=b, weight=cw, **opts)
            loss_t = _tensor(io, loss, input.dtype)
        if want and opts["reduction"] == "none":
            # kept (not copied) for a backward whose upstream gradient differs between rows
            ctx.save_for_backward(input, linear_weight, linear_bias, target, weight)
        return loss_t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        none = (None,) * 6
        if grad_loss is None or ctx.grads is None:
            return none
        ft = _ft()
        grads = ctx.grads
        scale = grad_loss
        if ctx.opts["reduction"] == "none" and grad_loss.numel() > 1:
            first = grad_loss.reshape(-1)[0]
            if bool(torch.all(grad_loss == first)):
                scale = first
            else:
                grads = _recompute(ctx, grad_loss)
                scale = None
        if scale is not None and not ft._is_unit(scale):
            s = scale.reshape(())
            grads = tuple(None if g is None else g * s.to(g.dtype) for g in grads)
        need = ctx.needs_input_grad
        gx, gw, gb = (g if need[i] else None for i, g in enumerate(grads))
        return gx, gw, gb, None, None, None


def _recompute(ctx, grad_loss):
    """The three gradients for a per-row upstream gradient: the chunks run again with it."""
    input, linear_weight, linear_bias, target, weight = ctx.saved_tensors
    ft = _ft()
    with ft._arrays_for(input) as io:
        x, w, b, t, cw = _arrays(io, input, linear_weight, linear_bias, target, weight)
        g = io.array(grad_loss, dtype=ft._compute_dtype(input.dtype))
        _, gx, gw, gb = _loss_and_grads(x, w, t, linear_bias=b, weight=cw, grad_loss=g,
                                        **ctx.opts)
        return (_tensor(io, gx, input.dtype), _tensor(io, gw, linear_weight.dtype),
                None if gb is None else _tensor(io, gb, linear_bias.dtype))


def _check(input, linear_weight, target, linear_bias, weight, reduction):
    ft = _ft()
    for name, t in (("input", input), ("linear_weight", linear_weight), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("linear_bias", linear_bias), ("weight", weight)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating point tensor, got {input.dtype}")
    if target.is_floating_point():
        raise TypeError("target must hold class indices (int64 or int32): "
                        "fusedce.torch.linear_cross_entropy does not take class probabilities")
    if input.dim() == 0:
        raise ValueError("input must have at least one dimension (the features)")
    ft._check_same_device(input, linear_weight=linear_weight, target=target,
                          linear_bias=linear_bias, weight=weight)
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                         softcap=None, chunk_size=None):
    """Cross-entropy of ``input @ linear_weight.T + linear_bias`` against class indices, as
    ``torch.nn.functional.linear_cross_entropy`` (PyTorch 2.13), fused and chunked: the
    (N, V) logits are never held whole.

    Each chunk of rows gets its logits from one GEMM, its loss and logits' gradient from
    fusedce's fused kernel (in place), and its share of the three gradients from two more
    GEMMs (:func:`fusedce.linear_cross_entropy_with_grad`); rows whose target is
    ``ignore_index`` never reach a GEMM. When ``input``, ``linear_weight`` or
    ``linear_bias`` requires grad, the forward computes the gradients too and the backward
    multiplies them by the upstream gradient: exact for "mean" and "sum", and for "none"
    when the upstream gradient is the same for every row (``loss.sum().backward()``). For
    "none" with an upstream gradient that differs between rows, the backward runs the
    chunks again with it (the forward keeps references to the inputs for that, never an
    (N, V) tensor). Without a gradient to compute (``torch.no_grad()``, nothing requiring
    grad) only the loss is computed.

    Args:
        input: ``(N, H)``, ``(H,)`` or ``(..., H)`` floating point tensor (float32/float64
            in their own precision; float16/bfloat16 computed in float32, gradients
            returned in the tensors' dtypes).
        linear_weight: ``(V, H)``, the dtype of ``input`` (``nn.Linear(H, V).weight``).
        target: int64/int32 class indices of shape ``input.shape[:-1]`` (0-d for a 1-D
            input), each in ``[0, V)`` or equal to ``ignore_index``.
        linear_bias: optional ``(V,)`` bias, the dtype of ``input``.
        weight: optional ``(V,)`` class weights.
        reduction: ``"mean"`` (divided by the summed weights of the non-ignored targets),
            ``"sum"`` or ``"none"`` (a loss per row, shaped like ``target``).
        ignore_index: targets equal to it add no loss and no gradient. ``None`` means -100
            (PyTorch's default is ``None``, mapped to -100 for class indices).
        label_smoothing: epsilon in [0, 1].
        z_loss, softcap: fusedce's language-model options (PyTorch has neither):
            ``z_loss * lse**2`` added per counted row ("mean": divided by their number),
            logits capped to ``softcap * tanh(logits / softcap)``; see
            :func:`fusedce.cross_entropy`.
        chunk_size: rows per chunk; by default about 48 MiB of logits, at least 384 rows
            (see :func:`fusedce.linear_cross_entropy`).

    Returns:
        The loss in the input's dtype: 0-d, or ``target``'s shape for ``"none"``.

    Differences from PyTorch: class probabilities as targets and K-dimensional weights
    ``(V, d1, ..., H)`` are not taken (TypeError / ValueError); inputs with more than two
    dimensions are; a ``"mean"`` over zero total weight is 0.0 (PyTorch: NaN);
    ``label_smoothing`` outside [0, 1] raises. Second derivatives are not supported.

    Raises:
        TypeError: non-tensor arguments, non-floating input, dtypes that differ between
            input, linear_weight and linear_bias, probability (floating) targets.
        ValueError: shape mismatches, a bad reduction, options out of range, tensors on
            different devices.
        IndexError: a class index outside ``[0, V)`` other than ``ignore_index``.

    >>> import torch, fusedce.torch as ft
    >>> x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    >>> w = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    >>> t = torch.tensor([1, 2, 3, -100, 0, 9])
    >>> loss = ft.linear_cross_entropy(x, w, t)
    >>> loss.backward()
    >>> ref = torch.nn.functional.linear_cross_entropy(x, w, t)
    >>> torch.allclose(loss, ref), torch.allclose(x.grad, torch.autograd.grad(ref, x)[0])
    (True, True)
    """
    _check(input, linear_weight, target, linear_bias, weight, reduction)
    opts = dict(reduction=reduction, ignore_index=-100 if ignore_index is None else ignore_index,
                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                chunk_size=chunk_size)
    return _LinearCrossEntropy.apply(input, linear_weight, linear_bias, target, weight, opts)


class LinearCrossEntropyLoss(torch.nn.Module):
    """Module form of :func:`linear_cross_entropy`: holds the options (class weights as a
    buffer) and takes the projection in ``forward(input, linear_weight, target,
    linear_bias=None)``, so that it can sit behind a model's own output layer (tied
    embeddings included). PyTorch's ``torch.nn.LinearCrossEntropyLoss`` owns its Linear
    layer instead.

    >>> import torch, fusedce.torch as ft
    >>> loss_fn = ft.LinearCrossEntropyLoss(reduction="sum")
    >>> x, w = torch.zeros(3, 4), torch.zeros(5, 4)
    >>> round(loss_fn(x, w, torch.tensor([0, 1, 2])).item() / 3, 4)   # log(5) per row
    1.6094
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                 z_loss=0.0, softcap=None, chunk_size=None):
        super().__init__()
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.chunk_size = chunk_size

    def forward(self, input, linear_weight, target, linear_bias=None):
        return linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                    weight=self.weight, reduction=self.reduction,
                                    ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                                    softcap=self.softcap, chunk_size=self.chunk_size)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"softcap={self.softcap}, chunk_size={self.chunk_size}")
