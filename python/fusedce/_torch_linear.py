"""fusedce.torch.linear_cross_entropy and LinearCrossEntropyLoss: the PyTorch side of
:mod:`fusedce.linear` (fused, chunked linear layer + cross-entropy).

Imported by :mod:`fusedce.torch` (at its end), which users import; the helpers of
fusedce.torch that move tensors in and out of fusedce and register operators are looked up
there (importing it, if this module was imported on its own first).
"""

from __future__ import annotations

import importlib
import sys

import torch

from ._torch_composite import first_order as _first_order
from .linear import _chunk_size
from .linear import linear_cross_entropy as _loss
from .linear import linear_cross_entropy_with_grad as _loss_and_grads

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]


# fusedce.torch, whose helpers move tensors in and out of fusedce. It imports this module at
# its end, so it is usually in sys.modules (still initialising) when this line runs; its
# attributes are looked up at call time. (A lookup rather than an import at call time:
# torch.compile cannot trace an import.)
_FT = sys.modules.get("fusedce.torch")


def _ft():
    """fusedce.torch (imported here if this module was imported on its own first)."""
    global _FT
    if _FT is None:
        _FT = importlib.import_module("fusedce.torch")
    return _FT


def _arrays(io, input, linear_weight, linear_bias, target, weight):
    """The call's tensors as what fusedce takes (NumPy views on the CPU, tensors on CUDA)."""
    ft = _ft()
    # bfloat16 tensors: fusedce's array layer sees their storage as int16, which no GEMM
    # takes, so the GEMMs run on float32 copies (on CUDA untested: written without a GPU).
    dt = torch.float32 if input.dtype == torch.bfloat16 else None
    x = io.array(input, dtype=dt)
    w = io.array(linear_weight, dtype=dt)
    b = None if linear_bias is None else io.array(linear_bias, dtype=dt)
    cw = None if weight is None else io.array(weight, dtype=ft._compute_dtype(input.dtype))
    return x, w, b, io.array(target), cw


def _tensor(io, a, dtype):
    t = io.tensor(a)
    return t if t.dtype == dtype else t.to(dtype)


# ------------------------------------------------------------------------------------------
# The operators (torch.library, namespace "fusedce"), as for fusedce.torch's other functions
# ------------------------------------------------------------------------------------------
#
#   linear_cross_entropy            the loss alone (no gradient wanted)
#   linear_cross_entropy_with_grad  (loss, grad_input, grad_linear_weight, grad_linear_bias):
#                                   the chunks' gradients come out of the forward's pass, and
#                                   the backward scales them by the upstream gradient
#   linear_cross_entropy_backward   the three gradients for a per-row upstream gradient of
#                                   reduction "none": the chunks run again with it
# Without a bias the bias gradient is an empty tensor (an operator cannot return None).

_SCHEMA = ("Tensor input, Tensor linear_weight, Tensor? linear_bias, Tensor target, "
           "Tensor? weight, int ignore_index, str reduction, float label_smoothing, "
           "float z_loss, float? softcap, int? chunk_size")


# As fusedce.torch's operators (not imported from there: fusedce.torch imports this module
# at its end, and this module may be imported first).
_DEVICES = ("cpu", "cuda")
_TAGS = tuple(tag for tag in (getattr(torch.Tag, "cudagraph_unsafe", None),) if tag)


def _op(name, schema):
    return lambda fn: torch.library.custom_op(f"fusedce::{name}", fn, mutates_args=(),
                                              device_types=_DEVICES, schema=schema, tags=_TAGS)


def _kwargs(cw, b, ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_size):
    return dict(linear_bias=b, weight=cw, ignore_index=ignore_index, reduction=reduction,
                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                chunk_size=chunk_size)


def _no_bias(input):
    return input.new_empty((0,))


def _grads(io, input, linear_weight, linear_bias, gx, gw, gb):
    return (_tensor(io, gx, input.dtype).contiguous(),
            _tensor(io, gw, linear_weight.dtype).contiguous(),
            _no_bias(input) if gb is None else _tensor(io, gb, linear_bias.dtype).contiguous())


@_op("linear_cross_entropy", f"({_SCHEMA}) -> Tensor")
def _loss_op(input, linear_weight, linear_bias, target, weight, *options):
    with _ft()._arrays_for(input) as io:
        x, w, b, t, cw = _arrays(io, input, linear_weight, linear_bias, target, weight)
        loss = _loss(x, w, t, **_kwargs(cw, b, *options))
        return _tensor(io, loss, _ft()._compute_dtype(input.dtype)).contiguous()


@_op("linear_cross_entropy_with_grad", f"({_SCHEMA}) -> (Tensor, Tensor, Tensor, Tensor)")
def _with_grad_op(input, linear_weight, linear_bias, target, weight, *options):
    with _ft()._arrays_for(input) as io:
        x, w, b, t, cw = _arrays(io, input, linear_weight, linear_bias, target, weight)
        loss, gx, gw, gb = _loss_and_grads(x, w, t, **_kwargs(cw, b, *options))
        return ((_tensor(io, loss, _ft()._compute_dtype(input.dtype)).contiguous(),)
                + _grads(io, input, linear_weight, linear_bias, gx, gw, gb))


@_op("linear_cross_entropy_backward",
     f"(Tensor grad_loss, {_SCHEMA}) -> (Tensor, Tensor, Tensor)")
def _backward_op(grad_loss, input, linear_weight, linear_bias, target, weight, *options):
    ft = _ft()
    with ft._arrays_for(input) as io:
        x, w, b, t, cw = _arrays(io, input, linear_weight, linear_bias, target, weight)
        g = io.array(grad_loss, dtype=ft._compute_dtype(input.dtype))
        _, gx, gw, gb = _loss_and_grads(x, w, t, grad_loss=g, **_kwargs(cw, b, *options))
        return _grads(io, input, linear_weight, linear_bias, gx, gw, gb)


def _loss_shape(input, reduction):
    return tuple(input.shape[:-1]) if reduction == "none" else ()


def _fake_grads(input, linear_weight, linear_bias):
    return (torch.empty_like(input, memory_format=torch.contiguous_format),
            torch.empty_like(linear_weight, memory_format=torch.contiguous_format),
            _no_bias(input) if linear_bias is None
            else torch.empty_like(linear_bias, memory_format=torch.contiguous_format))


def _new_loss(input, reduction):
    """The loss as the operators give it: in the compute dtype (float32 for half input)."""
    return input.new_empty(_loss_shape(input, reduction),
                           dtype=_ft()._compute_dtype(input.dtype))


@_loss_op.register_fake
def _(input, linear_weight, linear_bias, target, weight, ignore_index, reduction, *_):
    return _new_loss(input, reduction)


@_with_grad_op.register_fake
def _(input, linear_weight, linear_bias, target, weight, ignore_index, reduction, *_):
    return ((_new_loss(input, reduction),)
            + _fake_grads(input, linear_weight, linear_bias))


@_backward_op.register_fake
def _(grad_loss, input, linear_weight, linear_bias, *_):
    return _fake_grads(input, linear_weight, linear_bias)


def _setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.options = inputs[5:]
    ctx.reduction = inputs[6]
    ctx.has_bias = inputs[2] is not None
    ctx.mark_non_differentiable(*output[1:])
    # reduction "none": the inputs too (references, never an (N, V) tensor), for a backward
    # whose upstream gradient differs between rows
    again = list(inputs[:5]) if ctx.reduction == "none" else [None] * 5
    ctx.save_for_backward(*output[1:], *again)


@_first_order("linear_cross_entropy")
def _backward(ctx, grad_loss, *_):
    none = (None,) * 11
    if grad_loss is None:
        return none
    ft = _ft()
    gx, gw, gb, *inputs = ctx.saved_tensors
    grads = (gx, gw, gb)
    scale = grad_loss
    if ctx.reduction == "none" and grad_loss.numel() > 1:
        first = grad_loss.reshape(-1)[0]
        if ft._eager(grad_loss) and bool(torch.all(grad_loss == first)):
            scale = first
        else:  # per-row factors (or unknown while tracing): run the chunks again with them
            grads = torch.ops.fusedce.linear_cross_entropy_backward(grad_loss, *inputs,
                                                                    *ctx.options)
            scale = None
    if scale is not None and not (ft._eager(scale) and ft._is_unit(scale)):
        s = scale.reshape(())
        grads = tuple(g * s.to(g.dtype) for g in grads)
    need = ctx.needs_input_grad
    gx, gw, gb = (g if need[i] else None for i, g in enumerate(grads))
    return (gx, gw, gb if ctx.has_bias else None) + (None,) * 8


_with_grad_op.register_autograd(_backward, setup_context=_setup)


def _loss_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.options = inputs[5:]
    ctx.has_bias = inputs[2] is not None
    ctx.save_for_backward(*inputs[:5])


@_first_order("linear_cross_entropy")
def _loss_backward(ctx, grad_loss):
    """The loss-only operator differentiated anyway (called directly, or by a tracer): the
    chunks run again with the upstream gradient."""
    if grad_loss is None:
        return (None,) * 11
    grads = torch.ops.fusedce.linear_cross_entropy_backward(grad_loss, *ctx.saved_tensors,
                                                            *ctx.options)
    need = ctx.needs_input_grad
    gx, gw, gb = (g if need[i] else None for i, g in enumerate(grads))
    return (gx, gw, gb if ctx.has_bias else None) + (None,) * 8


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup)


def _check(input, linear_weight, target, linear_bias, weight):
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
        target: int64/int32/uint8 class indices of shape ``input.shape[:-1]`` (0-d for a 1-D
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
        The loss in the input's dtype (float32 for half input under autocast): 0-d, or
        ``target``'s shape for ``"none"``.

    Differences from PyTorch: class probabilities as targets and K-dimensional weights
    ``(V, d1, ..., H)`` are not taken (TypeError / ValueError); inputs with more than two
    dimensions are; a ``"mean"`` over zero total weight is 0.0 (PyTorch: NaN);
    ``label_smoothing`` outside [0, 1] raises. Under ``torch.func`` transforms and
    forward-mode AD the loss is computed with PyTorch's operations (the logits held whole);
    an eager backward with ``create_graph=True`` raises RuntimeError (see
    :mod:`fusedce.torch`).

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
    ft = _ft()
    _check(input, linear_weight, target, linear_bias, weight)
    target = ft._class_indices(target)
    opts = ft._loss_options(weight, -100 if ignore_index is None else ignore_index, reduction,
                            label_smoothing, z_loss=z_loss, softcap=softcap)
    args = (input, linear_weight, linear_bias, target, weight, opts["ignore_index"], reduction,
            opts["label_smoothing"], opts["z_loss"], opts["softcap"], _chunk_size(chunk_size))
    if ft._composite.computes_here(input, linear_weight, linear_bias, weight=weight):
        # torch.func transform, forward-mode AD or class weights to differentiate: PyTorch's
        # operations (_torch_composite.py)
        return ft._composite.linear_cross_entropy(*args[:-1])
    wanted = any(t is not None and t.requires_grad for t in (input, linear_weight, linear_bias))
    if torch.is_grad_enabled() and wanted:
        loss = torch.ops.fusedce.linear_cross_entropy_with_grad(*args)[0]
    else:
        loss = torch.ops.fusedce.linear_cross_entropy(*args)
    return loss.to(ft._composite.loss_dtype(input))


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
        # the options' checks of fusedce.torch, as CrossEntropyLoss makes them
        _ft()._loss_options(weight, -100 if ignore_index is None else ignore_index, reduction,
                            label_smoothing, z_loss=z_loss, softcap=softcap)
        _chunk_size(chunk_size)
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
