"""PyTorch drop-in for fusedce's fused kernels.

``import fusedce.torch`` (never plain ``import fusedce``) brings in PyTorch. The functions
here follow ``torch.nn.functional``'s conventions, not fusedce's NumPy ones: the class
dimension is dim 1 for an ``(N, C, d1, ...)`` input, a 1-D input ``(C,)`` takes a 0-d
target, and the argument names and defaults are PyTorch's:

    cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, inplace=False, *, z_loss=0.0, softcap=None)
    CrossEntropyLoss(weight=None, ignore_index=-100, reduction="mean",
                     label_smoothing=0.0, inplace=False, *, z_loss=0.0, softcap=None)
    nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean")
    NLLLoss(weight=None, ignore_index=-100, reduction="mean")
    log_softmax(input, dim, dtype=None), LogSoftmax(dim)
    softmax(input, dim, dtype=None), Softmax(dim)
    linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=-100, label_smoothing=0.0,
                         z_loss=0.0, softcap=None, chunk_size=None)   # F.linear_cross_entropy
    LinearCrossEntropyLoss(...)
    distributed.vocab_parallel_cross_entropy(logits_shard, target, *, group=None, ...)
    distributed.vocab_parallel_linear_cross_entropy(input, linear_weight_shard, target, ...)

Each runs as operators registered with ``torch.library`` (namespace ``fusedce``: for
example ``torch.ops.fusedce.cross_entropy_with_grad``) with fake (shape) functions and
registered derivatives, so that ``torch.compile(..., fullgraph=True)`` and
``torch.export.export`` take them whole, forward and backward, with no graph break;
``inplace=True`` is for eager mode only (it raises under ``torch.compile`` when a gradient
is wanted). The backward runs fusedce's kernels too. CPU tensors reach the kernels as
NumPy views of their storage (no copy; a bfloat16 tensor's storage is read as such);
CUDA tensors go through DLPack (no copy) on PyTorch's current stream. bfloat16 and
float16 are read and written as they are and computed in float32, on both devices.
Losses come back in the input's dtype, as in PyTorch; under autocast (``torch.autocast``
for the input's device) float16 / bfloat16 input gives float32 losses, as PyTorch's autocast
does (fusedce computes them in float32 either way).

Differences from PyTorch, all inherited from fusedce: a ``"mean"`` over a zero total weight
(every target ignored, empty batch) is 0.0 with a zero gradient rather than NaN;
``label_smoothing`` outside [0, 1] raises ValueError; ignored rows get an exactly zero
gradient even when their logits are NaN or all -inf; a class whose smoothing / probability
coefficient is 0 adds nothing even where its logit is -inf (PyTorch: 0 * -inf = NaN).

Under ``torch.func`` transforms (grad, vmap, jacrev, jacfwd, hessian, jvp) and for inputs
carrying a forward-mode tangent, which PyTorch's custom operators do not differentiate,
these functions compute with PyTorch's own operations under the same conventions (see
``_torch_composite.py``); so do calls whose class weights require grad, which the kernels'
backward does not differentiate. In eager autograd, softmax, log_softmax and nll_loss have
second derivatives; the fused losses raise RuntimeError on ``create_graph=True`` (their
backward keeps the gradient, not the logits): use ``torch.func.hessian`` and the like there.

>>> import torch
>>> import fusedce.torch as ft
>>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]], requires_grad=True)
>>> target = torch.tensor([0, 1])
>>> loss = ft.cross_entropy(logits, target)
>>> torch.allclose(loss, torch.nn.functional.cross_entropy(logits, target))
True
>>> loss.backward()
>>> logits.grad.sum(dim=1).abs().max() < 1e-6   # softmax minus one-hot sums to zero
tensor(True)
"""

from __future__ import annotations

import types

import numpy as np
import torch

from fusedce import _arrays, _checks, _direct, functional as _functional
from fusedce import _torch_composite as _composite


def _taking_cpu_tensors(name):
    """fusedce's NumPy-API op `name` (same implementation and conventions), taking the
    PyTorch CPU tensors that this module hands over, bfloat16 ones, which NumPy cannot hold:
    the public op refuses CPU tensors to point users here."""
    return _functional._runs_on(getattr(_functional, name), _arrays.backend_of)


_fc = types.SimpleNamespace(**{name: _taking_cpu_tensors(name) for name in (
    "cross_entropy", "cross_entropy_backward", "cross_entropy_with_grad", "log_softmax",
    "log_softmax_backward", "nll_loss", "nll_loss_backward", "softmax", "softmax_backward")})

__all__ = ["cross_entropy", "CrossEntropyLoss", "nll_loss", "NLLLoss", "log_softmax",
           "LogSoftmax", "softmax", "Softmax", "linear_cross_entropy", "LinearCrossEntropyLoss",
           "distributed"]


# ------------------------------------------------------------------------------------------
# Moving tensors in and out of fusedce
# ------------------------------------------------------------------------------------------


class _Host:
    """CPU tensors <-> NumPy arrays sharing their storage."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def array(t, dtype=None):
        t = t.detach()
        if dtype is not None and t.dtype != dtype:
            t = t.to(dtype)
        if t.is_conj() or t.is_neg():
            t = t.resolve_conj().resolve_neg()
        # NumPy has no bfloat16: fusedce takes such a tensor as it is and reads its storage
        # (results with bfloat16 values come back as bfloat16 tensors)
        return t if t.dtype == torch.bfloat16 else t.numpy()

    @staticmethod
    def tensor(a):
        if isinstance(a, torch.Tensor):
            return a
        a = np.asarray(a)
        if not a.flags.writeable:  # torch.from_numpy warns on read-only arrays
            a = a.copy()
        return torch.from_numpy(a)

    @staticmethod
    def write_back(dst, src_array):
        """Make sure `dst` (a CPU tensor) holds `src_array`; free when they share memory."""
        if isinstance(src_array, torch.Tensor):
            if src_array.data_ptr() != dst.data_ptr() or src_array.stride() != dst.stride():
                dst.detach().copy_(src_array)
            return
        src = np.asarray(src_array)
        if np.shares_memory(dst.detach().numpy(), src):
            return
        dst.detach().copy_(torch.from_numpy(np.ascontiguousarray(src)))


class _Cuda:
    """CUDA tensors <-> the arrays fusedce's CUDA kernels take, on torch's current stream.

    UNTESTED: written without a GPU. fusedce takes any object with ``__dlpack__`` or
    ``__cuda_array_interface__`` and answers with CuPy arrays. We enter CuPy's context for
    the tensor's device with PyTorch's current stream wrapped as CuPy's current stream, so
    that the kernels are queued behind (and ahead of) PyTorch's own work without a host
    synchronisation; results come back with ``torch.from_dlpack`` (no copy).
    """

    def __init__(self, device):
        try:
            import cupy
        except ImportError as e:  # pragma: no cover - needs a GPU machine
            raise RuntimeError(
                "fusedce.torch on CUDA tensors needs CuPy (pip install 'fusedce[cuda]')") from e
        self._cupy = cupy
        self._index = device.index if device.index is not None else torch.cuda.current_device()
        self._stream = torch.cuda.current_stream(self._index)
        self._stack = []

    def __enter__(self):
        dev = self._cupy.cuda.Device(self._index)
        dev.__enter__()
        stream = self._cupy.cuda.ExternalStream(self._stream.cuda_stream, self._index)
        stream.__enter__()
        self._stack = [dev, stream]
        return self

    def __exit__(self, *exc):
        for obj in reversed(self._stack):
            obj.__exit__(*exc)
        self._stack = []
        return False

    def array(self, t, dtype=None):
        # fusedce takes CUDA tensors as they are (bfloat16 included: its array layer reads
        # their storage) and runs on PyTorch's current stream; results come back as tensors.
        t = t.detach()
        if dtype is not None and t.dtype != dtype:
            t = t.to(dtype)
        if t.is_conj() or t.is_neg():
            t = t.resolve_conj().resolve_neg()
        return t

    @staticmethod
    def tensor(a):
        return a if isinstance(a, torch.Tensor) else torch.from_dlpack(a)

    def write_back(self, dst, src_array):
        src = self.tensor(src_array)
        if src.data_ptr() != dst.data_ptr() or src.stride() != dst.stride():
            dst.detach().copy_(src)


def _arrays_for(t):
    if t.device.type == "cpu":
        return _Host()
    if t.device.type == "cuda":
        return _Cuda(t.device)
    raise TypeError(f"input: fusedce.torch runs on CPU and CUDA tensors, not {t.device.type!r}")


# The floating dtype fusedce computes a loss in for an input of a given dtype.
_compute_dtype = _direct.compute_dtype


def _check_input(input, name="input"):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {input.dtype}")
    if input.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (the classes)")
    if input.device.type not in ("cpu", "cuda"):
        raise TypeError(
            f"{name}: fusedce.torch runs on CPU and CUDA tensors, not {input.device.type!r}")


def _check_same_device(input, **others):
    for name, t in others.items():
        if t is not None and t.device != input.device:
            raise ValueError(f"{name} is on {t.device} but input is on {input.device}")


def _concrete(value):
    """`value` with its value known to the checks. torch.compile may trace a float argument
    as a symbol (with dynamic=True, defaults included), on which math.isfinite cannot run;
    ``__float__`` makes it specialise on the value (a guard: another value recompiles)."""
    return value.__float__() if isinstance(value, float) else value


def _loss_options(weight, ignore_index, reduction, label_smoothing, **lm_options):
    """The keyword arguments of the fusedce call; ``lm_options`` (z_loss, softcap) are
    checked here, so that a bad value raises before any work."""
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    label_smoothing = _concrete(label_smoothing)
    lm_options = {name: _concrete(value) for name, value in lm_options.items()}
    if "z_loss" in lm_options:
        lm_options["z_loss"] = _checks.z_loss(lm_options["z_loss"])
    if "softcap" in lm_options:
        lm_options["softcap"] = _checks.softcap(lm_options["softcap"]) or None
    return dict(ignore_index=int(ignore_index), reduction=reduction,
                label_smoothing=_checks.label_smoothing(label_smoothing), **lm_options)


def _class_indices(target):
    """PyTorch takes uint8 class indices besides int64; the kernels take int32 and int64,
    so a uint8 target is widened (a copy of N values, never N x C)."""
    return target.long() if target.dtype == torch.uint8 else target


def _batched(input, target):
    """PyTorch allows an unbatched (C,) input with a 0-d index target or a (C,) probability
    target; fusedce wants a batch, so such a pair becomes (1, C) and (1,) / (1, C)."""
    if input.dim() == 1:
        return input.unsqueeze(0), target.unsqueeze(0), True
    return input, target, False


def _is_unit(g):
    """True when the upstream gradient is exactly 1 everywhere (one small host sync on CUDA,
    cheaper than a pass over N x C when the logits are large)."""
    if g.numel() == 1:
        return bool(g.reshape(()) == 1)
    return bool(torch.all(g == 1))


def _eager(t):
    """True when `t` holds values that can be looked at now: not under torch.compile or
    torch.export, not a fake or functional tensor of some other tracer (opcheck, make_fx),
    and not wrapped by a torch.func transform or batched by the vmap of
    ``torch.autograd.grad(..., is_grads_batched=True)``. Checks that read values
    (`_is_unit`) are skipped then."""
    functorch = torch._C._functorch
    return (type(t) is torch.Tensor and not torch.compiler.is_compiling()
            and not functorch.is_functorch_wrapped_tensor(t)
            and not functorch.is_legacy_batchedtensor(t))


# ------------------------------------------------------------------------------------------
# The operators PyTorch sees (torch.library, namespace "fusedce")
# ------------------------------------------------------------------------------------------
#
# Each public function runs as custom operators registered with torch.library, so that
# torch.compile and torch.export see one opaque call with a known result shape (the
# register_fake functions) and a known derivative (register_autograd), instead of trying to
# trace into NumPy. The operators take PyTorch's batched layout, the classes at dim 1 of an
# (N, C, d1, ...) tensor; the public wrappers add the batch dimension to a 1-D input and
# check every argument first, so that an error names the argument before any operator runs.
# One Python function is both the CPU and the CUDA kernel of an operator: `_arrays_for`
# picks the way in. Results are always fresh tensors (the input's dtype, contiguous; losses in
# the compute dtype, which the public functions round to the input's outside autocast), except
# for cross_entropy_with_grad_, which declares that it writes over its input.
#
#   cross_entropy            the loss alone (no gradient wanted for the logits)
#   cross_entropy_with_grad  (loss, d loss / d input) in one fused pass (design (b), below)
#   cross_entropy_with_grad_ the loss, the gradient written over the input (inplace=True)
#   cross_entropy_backward   d input recomputed from the logits (autograd of the loss-only op)
#   nll_loss, nll_loss_backward, softmax, softmax_backward, log_softmax, log_softmax_backward

_CE_SCHEMA = ("Tensor target, Tensor? weight, int ignore_index, str reduction, "
              "float label_smoothing, float z_loss, float? softcap")
_NLL_SCHEMA = "Tensor target, Tensor? weight, int ignore_index, str reduction"
_DEVICES = ("cpu", "cuda")
# The operators allocate through CuPy and may copy small host values on a CUDA call, which
# a CUDA-graph capture does not allow: the tag makes inductor's mode="reduce-overhead" run
# them outside its CUDA graphs.
_TAGS = tuple(tag for tag in (getattr(torch.Tag, "cudagraph_unsafe", None),) if tag)


def _op(name, schema, mutates_args=()):
    def register(fn):
        return torch.library.custom_op(f"fusedce::{name}", fn, mutates_args=mutates_args,
                                       device_types=_DEVICES, schema=schema, tags=_TAGS)
    return register


def _ce_options(opts):
    """The operators' trailing arguments from `_loss_options`' dict, in schema order."""
    return (opts["ignore_index"], opts["reduction"], opts["label_smoothing"],
            opts.get("z_loss", 0.0), opts.get("softcap"))


def _loss_shape(input, reduction):
    return tuple(input.shape[:1]) + tuple(input.shape[2:]) if reduction == "none" else ()


def _ce_arrays(io, input, target, weight):
    x = io.array(input)
    if target.is_floating_point():
        # a probability target travels in the dtype of the logits
        t = io.array(target, dtype=input.dtype)
    else:
        t = io.array(target)
    w = None if weight is None else io.array(weight, dtype=_compute_dtype(input.dtype))
    return x, t, w


def _ce_kwargs(w, ignore_index, reduction, label_smoothing, z_loss, softcap):
    return dict(weight=w, axis=1, ignore_index=ignore_index, reduction=reduction,
                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)


def _result(t, like):
    """An operator's result: in `like`'s dtype, contiguous, as the fake functions say."""
    return t.to(like.dtype).contiguous()


def _loss_result(t, input):
    """An operator's loss: in the dtype it was computed in (float32 for half input), which
    the public functions round to what the caller gets (_composite.loss_dtype)."""
    return t.to(_compute_dtype(input.dtype)).contiguous()


def _new_loss(input, reduction):
    """A fake function's loss, as _loss_result makes it."""
    return input.new_empty(_loss_shape(input, reduction), dtype=_compute_dtype(input.dtype))


# On CUDA the plain call (2-D logits, class indices, no weights, smoothing or soft-cap) goes
# straight from the tensors to the kernels (fusedce._direct): 0.6 ms less host time per call on
# an H200 (docs/gpu.md in the source repository). Not on the CPU: there the array layer's own
# helpers cost less than the direct way's PyTorch operations (PyTorch 2.13, 64 x 10 float32,
# one thread, the public call: forward 54 us -> 69 us that way, forward + backward 217 -> 207).
@_op("cross_entropy", f"(Tensor input, {_CE_SCHEMA}) -> Tensor")
def _ce_op(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap):
    if _direct.plain(input, target, weight, label_smoothing, softcap):
        return _direct.cross_entropy(input, target, ignore_index, reduction, z_loss,
                                     loss_dtype=_compute_dtype(input.dtype))
    with _arrays_for(input) as io:
        x, t, w = _ce_arrays(io, input, target, weight)
        loss = _fc.cross_entropy(x, t, **_ce_kwargs(w, ignore_index, reduction,
                                                     label_smoothing, z_loss, softcap))
        return _loss_result(io.tensor(loss), input)


@_op("cross_entropy_with_grad", f"(Tensor input, {_CE_SCHEMA}) -> (Tensor, Tensor)")
def _ce_with_grad_op(input, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                     softcap):
    if _direct.plain(input, target, weight, label_smoothing, softcap):
        grad = _direct.empty_like(input)
        loss = _direct.cross_entropy(input, target, ignore_index, reduction, z_loss, grad,
                                     loss_dtype=_compute_dtype(input.dtype))
        return loss, grad
    with _arrays_for(input) as io:
        x, t, w = _ce_arrays(io, input, target, weight)
        loss, grad = _fc.cross_entropy_with_grad(
            x, t, **_ce_kwargs(w, ignore_index, reduction, label_smoothing, z_loss, softcap))
        return _loss_result(io.tensor(loss), input), _result(io.tensor(grad), input)


@_op("cross_entropy_with_grad_", f"(Tensor(a!) input, {_CE_SCHEMA}) -> Tensor",
     mutates_args=("input",))
def _ce_with_grad_inplace_op(input, target, weight, ignore_index, reduction, label_smoothing,
                             z_loss, softcap):
    kw = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
              z_loss=z_loss, softcap=softcap)
    if _direct.plain(input, target, weight, label_smoothing, softcap):
        return _direct.cross_entropy(input, target, ignore_index, reduction, z_loss, input,
                                     loss_dtype=_compute_dtype(input.dtype))
    with _arrays_for(input) as io:
        x, t, w = _ce_arrays(io, input, target, weight)
        loss, grad = _fc.cross_entropy_with_grad(x, t, inplace=True, **_ce_kwargs(w, **kw))
        io.write_back(input, grad)  # a no-op unless fusedce had to work on a copy
        return _loss_result(io.tensor(loss), input)


@_op("cross_entropy_backward", f"(Tensor grad_loss, Tensor input, {_CE_SCHEMA}) -> Tensor")
def _ce_backward_op(grad_loss, input, target, weight, ignore_index, reduction,
                    label_smoothing, z_loss, softcap):
    with _arrays_for(input) as io:
        x, t, w = _ce_arrays(io, input, target, weight)
        g = io.array(grad_loss, dtype=_compute_dtype(input.dtype))
        dx = _fc.cross_entropy_backward(g, x, t, **_ce_kwargs(w, ignore_index, reduction,
                                                              label_smoothing, z_loss,
                                                              softcap))
        return _result(io.tensor(dx), input)


@_ce_op.register_fake
def _(input, target, weight, ignore_index, reduction, *_):
    return _new_loss(input, reduction)


@_ce_with_grad_op.register_fake
def _(input, target, weight, ignore_index, reduction, *_):
    return (_new_loss(input, reduction),
            torch.empty_like(input, memory_format=torch.contiguous_format))


@_ce_with_grad_inplace_op.register_fake
def _(input, target, weight, ignore_index, reduction, *_):
    return _new_loss(input, reduction)


@_ce_backward_op.register_fake
def _(grad_loss, input, *_):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _times_upstream(g, grad_loss, reduction):
    """d loss / d input = the per-loss gradient `g` times the upstream gradient. An upstream
    gradient of exactly 1 (the usual `loss.backward()`) hands `g` over as it is, without a
    pass over N x C; when tracing, the values are unknown and the product is the graph."""
    if _eager(grad_loss) and _is_unit(grad_loss):
        return g
    scale = grad_loss.to(g.dtype)
    if reduction == "none":  # one factor per row, the classes at dim 1
        scale = scale.unsqueeze(1)
    return g * scale


def _probability_target_grad(input, target, weight, grad_loss, reduction, label_smoothing,
                             softcap):
    """d loss / d q_c = -(1 - eps) w_c log_softmax(x)_c per row, times the reduction factor.

    Plain PyTorch ops: a gradient with respect to soft targets is rare enough that it is not
    worth a kernel.
    """
    x = input.to(_compute_dtype(input.dtype))
    if softcap is not None:  # the loss sees the capped logits
        x = softcap * torch.tanh(x / softcap)
    g = -(1.0 - label_smoothing) * torch.log_softmax(x, dim=1)
    if weight is not None:
        shape = [1] * g.dim()
        shape[1] = -1
        g = g * weight.to(g.dtype).reshape(shape)
    if reduction == "none":
        scale = grad_loss.unsqueeze(1)
    elif reduction == "mean":  # an empty batch has an empty gradient: any divisor will do
        scale = grad_loss / max(x.numel() // max(x.shape[1], 1), 1)
    else:
        scale = grad_loss
    return (g * scale.to(g.dtype)).to(target.dtype)


def _ce_setup(ctx, inputs, output, fused):
    input, target, weight, _, reduction, label_smoothing, _, softcap = inputs
    ctx.set_materialize_grads(False)
    ctx.options = inputs[3:]
    ctx.reduction, ctx.label_smoothing, ctx.softcap = reduction, label_smoothing, softcap
    ctx.target_grad = bool(ctx.needs_input_grad[1]) and target.is_floating_point()
    keep = ctx.target_grad or (ctx.needs_input_grad[0] and not fused)
    saved = [input, target, weight] if keep else [None, None, None]
    if fused:
        # design (b): the gradient the forward computed is all the backward needs
        ctx.mark_non_differentiable(output[1])
        saved.append(output[1] if ctx.needs_input_grad[0] else None)
    ctx.save_for_backward(*saved)


@_composite.first_order("cross_entropy")
def _ce_backward(ctx, grad_loss, *_):
    grad_input = grad_target = None
    if grad_loss is not None:
        input, target, weight, *grad = ctx.saved_tensors
        if ctx.needs_input_grad[0]:
            if grad:  # cross_entropy_with_grad: the gradient was computed in the forward
                grad_input = _times_upstream(grad[0], grad_loss, ctx.reduction)
            else:
                grad_input = torch.ops.fusedce.cross_entropy_backward(grad_loss, input, target,
                                                                      weight, *ctx.options)
        if ctx.target_grad:
            grad_target = _probability_target_grad(input, target, weight, grad_loss,
                                                   ctx.reduction, ctx.label_smoothing,
                                                   ctx.softcap)
    return (grad_input, grad_target) + (None,) * 6


_ce_op.register_autograd(_ce_backward, setup_context=lambda ctx, inputs, output: _ce_setup(
    ctx, inputs, output, fused=False))
_ce_with_grad_op.register_autograd(_ce_backward, setup_context=lambda ctx, inputs, output:
                                   _ce_setup(ctx, inputs, output, fused=True))


@_op("nll_loss", f"(Tensor input, {_NLL_SCHEMA}) -> Tensor")
def _nll_op(input, target, weight, ignore_index, reduction):
    with _arrays_for(input) as io:
        w = None if weight is None else io.array(weight, dtype=_compute_dtype(input.dtype))
        loss = _fc.nll_loss(io.array(input), io.array(target), weight=w, axis=1,
                            ignore_index=ignore_index, reduction=reduction)
        return _loss_result(io.tensor(loss), input)


@_op("nll_loss_backward", f"(Tensor grad_loss, Tensor input, {_NLL_SCHEMA}) -> Tensor")
def _nll_backward_op(grad_loss, input, target, weight, ignore_index, reduction):
    cdt = _compute_dtype(input.dtype)
    with _arrays_for(input) as io:
        w = None if weight is None else io.array(weight, dtype=cdt)
        dx = _fc.nll_loss_backward(io.array(grad_loss, dtype=cdt), io.array(input),
                                   io.array(target), weight=w, axis=1,
                                   ignore_index=ignore_index, reduction=reduction)
        return _result(io.tensor(dx), input)


@_nll_op.register_fake
def _(input, target, weight, ignore_index, reduction):
    return _new_loss(input, reduction)


@_nll_backward_op.register_fake
def _(grad_loss, input, *_):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _nll_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.options = inputs[3:]
    ctx.save_for_backward(*inputs[:3])


def _nll_backward(ctx, grad_loss):
    if grad_loss is None or not ctx.needs_input_grad[0]:
        return (None,) * 5
    input, target, weight = ctx.saved_tensors
    if _composite.building_graph(grad_loss):
        # create_graph=True. The loss is linear in its input, so its gradient does not
        # depend on the input (a second derivative there is 0), only on grad_loss: the
        # gradient of the same loss in PyTorch's operations, at a detached copy of the input
        # (no path back to it), with grad_loss in the graph.
        with torch.enable_grad():
            x = input.detach().requires_grad_()
            loss = _composite.nll_loss(x, target, weight, *ctx.options)
            (dx,) = torch.autograd.grad(loss, x, grad_loss, create_graph=True)
        return (dx,) + (None,) * 4
    with torch.no_grad():
        dx = torch.ops.fusedce.nll_loss_backward(grad_loss, input, target, weight,
                                                 *ctx.options)
    return (dx,) + (None,) * 4


_nll_op.register_autograd(_nll_backward, setup_context=_nll_setup)


def _softmax_ops(log):
    name = "log_softmax" if log else "softmax"
    forward = _fc.log_softmax if log else _fc.softmax
    backward = _fc.log_softmax_backward if log else _fc.softmax_backward
    composite_backward = (_composite.log_softmax_backward if log
                          else _composite.softmax_backward)

    @_op(name, "(Tensor input, int dim) -> Tensor")
    def op(input, dim):
        with _arrays_for(input) as io:
            return _result(io.tensor(forward(io.array(input), axis=dim)), input)

    @_op(f"{name}_backward", "(Tensor grad, Tensor output, int dim) -> Tensor")
    def backward_op(grad, output, dim):
        with _arrays_for(output) as io:
            y = io.array(output)
            dx = backward(io.array(grad, dtype=output.dtype), y, axis=dim)
            return _result(io.tensor(dx), output)

    @op.register_fake
    def _(input, dim):
        return torch.empty_like(input, memory_format=torch.contiguous_format)

    @backward_op.register_fake
    def _(grad, output, dim):
        return torch.empty_like(output, memory_format=torch.contiguous_format)

    def setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)

    def autograd_backward(ctx, grad):
        if grad is None:
            return None, None
        (y,) = ctx.saved_tensors
        if _composite.building_graph(grad):
            # create_graph=True: the gradient from y (the saved result, whose derivative
            # leads back to the input), in operations a second derivative goes through
            return composite_backward(grad, y, ctx.dim), None
        with torch.no_grad():
            return backward_op(grad, y, ctx.dim), None

    op.register_autograd(autograd_backward, setup_context=setup)
    return op, backward_op


_softmax_op, _softmax_backward_op = _softmax_ops(log=False)
_log_softmax_op, _log_softmax_backward_op = _softmax_ops(log=True)


# ------------------------------------------------------------------------------------------
# cross_entropy
# ------------------------------------------------------------------------------------------
#
# How the backward is organised, and why.
#
# Two honest ways exist to give autograd a fused backward:
#  (a) forward:  loss, lse = fusedce.cross_entropy(..., return_lse=True)   read N x C once
#      backward: fusedce.cross_entropy_backward(..., lse=lse)              read once, write once
#  (b) forward:  loss, grad = fusedce.cross_entropy_with_grad(...)         read once, write once
#      backward: return grad * upstream                                    free when upstream == 1
# (b) moves a third fewer bytes (one read and one write of the logits in all, against two
# reads and a write) and is one kernel call instead of two, so it is what we do. Measured
# (fusedce calls alone, float32, one thread, 2-core AVX-512 Xeon, best of 9), (b) against (a):
# 65536 x 10: 1.2 ms / 3.1 ms; 4096 x 1000: 5.3 / 6.0 ms; 8192 x 32000: 328 / 452 ms. It holds one
# N x C buffer from the forward to the backward, as (a) holds the logits; the logits
# themselves are not saved, so when nothing else needs them they are freed before the
# backward runs. The saved gradient is released as the backward runs, so the one we return
# goes on uncopied, into a leaf's .grad too; with retain_graph=True it must stay intact for
# the next backward, and gradient accumulation into a leaf then copies it.
# Two guards keep (b) honest:
#  - when no gradient is wanted (torch.no_grad(), evaluation, an input that does not require
#    grad) the forward computes the loss alone, never the N x C gradient;
#  - an upstream gradient other than 1 (loss scaling, a weighted sum of losses, reduction
#    "none" followed by anything but .sum()) multiplies the saved gradient into a new
#    tensor, leaving the saved one intact for a second backward (retain_graph=True,
#    gradcheck, jacobians). With inplace=True the multiplication is done in place instead
#    (no N x C buffer, which is what inplace promises), and a second backward raises.
#
# inplace=True writes the gradient over the input's own storage: no N x C buffer at all.
# PyTorch allows an autograd Function to overwrite an input only if it says so with
# ctx.mark_dirty(input) and returns that very tensor as one of its outputs. Marking it dirty
# bumps the tensor's version counter, so any other node that saved the logits for its own
# backward (for example `logits = x.exp()`) raises "modified by an inplace operation" at
# backward time instead of silently using gradient values as logits. Our Function therefore
# returns (loss, input); the wrapper hands the loss to the caller. If anything later
# differentiates through the overwritten tensor, the Function's backward receives a gradient
# for that second output and raises: what it holds is no longer the logits.
# PyTorch forbids a Function that overwrites a *view* to return more than one tensor, so a
# view is accepted only when it is a plain reshape of a contiguous base (the usual
# `logits.view(-1, vocab)`): the Function then takes the base itself, marks the base dirty
# and reshapes inside. Other views (slices, transposes) raise; pass a contiguous tensor.
# A leaf tensor that requires grad cannot be overwritten at all (PyTorch's rule); we check
# it before writing anything.
#
# The same two guards hold under torch.compile and torch.export, where the same operators
# run. The wrapper picks fusedce::cross_entropy (loss only) or
# fusedce::cross_entropy_with_grad (loss and gradient, the gradient saved for the backward
# as a non-differentiable output) from `torch.is_grad_enabled() and input.requires_grad`,
# which the compiler knows while tracing and guards on. While tracing, the upstream
# gradient's value is unknown, so a compiled backward always multiplies the saved gradient
# by it (one pass over N x C, which the compiler may fuse with what follows); eager keeps
# the shortcut for an upstream of exactly 1.
#
# inplace=True with a gradient to compute is eager only. The operator that overwrites its
# input (fusedce::cross_entropy_with_grad_, declared as mutating it) exists and is what
# eager runs, inside the autograd Function below, but the promises of inplace (no N x C
# buffer, the input's version bumped so that stale uses raise) are about eager autograd:
# under torch.compile the graph is made functional, the "overwritten" logits would silently
# keep their old values for every other use, and PyTorch cannot register a derivative for
# a mutating operator. So cross_entropy(inplace=True) raises under torch.compile when a
# gradient is wanted (with fullgraph=True the error reaches the caller; otherwise Dynamo
# runs that call eagerly, a graph break); a compiled graph plans its own buffers anyway.


class _CrossEntropyInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, weight, options, shape):
        # `shape`: when not None, `input` is the base of a reshape view and `shape` the
        # view's shape, which is what the loss is computed on.
        ctx.set_materialize_grads(False)
        logits = input if shape is None else input.view(shape)
        x_t, t_t, unbatched = _batched(logits, target)
        loss = torch.ops.fusedce.cross_entropy_with_grad_(x_t, t_t, weight, *options)
        loss = loss.to(_composite.loss_dtype(logits))
        if unbatched and options[1] == "none":
            loss = loss.reshape(())
        ctx.reduction = options[1]
        ctx.view_shape = shape
        ctx.spent = False
        ctx.mark_dirty(input)
        # Saved as an output: if anyone overwrites it before the backward, the backward's
        # unpacking raises (version counter) instead of using stale values.
        ctx.save_for_backward(input)
        return loss, input

    @staticmethod
    @_composite.first_order("cross_entropy")
    def backward(ctx, grad_loss, grad_overwritten=None):
        if grad_overwritten is not None:
            raise RuntimeError(
                "fusedce.torch.cross_entropy(inplace=True) overwrote its input with the "
                "gradient, and something differentiated through that tensor afterwards; use "
                "inplace=False when the logits are needed after the loss")
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        if ctx.spent:
            raise RuntimeError(
                "fusedce.torch.cross_entropy(inplace=True): the gradient stored in "
                "the input was already scaled in place by an earlier backward with "
                "an upstream gradient other than 1; a second backward through it "
                "(retain_graph=True, gradcheck) needs inplace=False")
        g = ctx.saved_tensors[0].detach()
        if not _eager(grad_loss):
            raise RuntimeError(
                "fusedce.torch.cross_entropy(inplace=True): the upstream gradient comes "
                "batched (torch.autograd.grad(..., is_grads_batched=True), a vectorized "
                "jacobian), and one gradient stored in the input cannot be scaled in place "
                "by several; use inplace=False")
        if not _is_unit(grad_loss):
            scale = grad_loss.to(g.dtype)
            if scale.dim() > 0:  # reduction "none": one factor per row, classes at dim 1
                scale = scale.unsqueeze(1)
            # scale where it lies: no N x C buffer, as promised
            (g if ctx.view_shape is None else g.view(ctx.view_shape)).mul_(scale)
            ctx.spent = True
        return g, None, None, None, None


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, inplace=False, *, z_loss=0.0, softcap=None):
    """Softmax cross-entropy between logits and targets, as ``torch.nn.functional.cross_entropy``.

    Args:
        input: logits, floating point, shape ``(N, C)``, ``(N, C, d1, ..., dk)`` or ``(C,)``;
            the classes are dimension 1 (dimension 0 for a 1-D input). float32 and float64 are
            computed in their own precision, float16 and bfloat16 in float32.
        target: class indices (int64, int32 or uint8) shaped like ``input`` without dimension 1
            (0-d for a 1-D input), each in ``[0, C)`` or equal to ``ignore_index``; or class
            probabilities, floating point, shaped like ``input``.
        weight: optional ``(C,)`` tensor of class weights, on the input's device.
        ignore_index: class-index targets equal to it contribute no loss and no gradient.
        reduction: ``"none"`` (a loss per row, shaped like the target), ``"sum"`` or
            ``"mean"`` (the sum divided by the summed weights of the non-ignored targets;
            by the number of rows for probability targets).
        label_smoothing: epsilon in [0, 1]; the target becomes ``(1-eps) target + eps/C``.
        z_loss: (keyword only; not in PyTorch) adds ``z_loss * lse**2`` per counted row,
            ``lse`` the row's log-sum-exp; "mean" divides these terms by the number of
            counted rows (see ``fusedce.cross_entropy``).
        softcap: (keyword only; not in PyTorch) a positive float ``c``: the logits become
            ``c * tanh(x / c)`` inside the kernel before the softmax (Gemma 2); the same as
            applying that to ``input`` first, without the extra N x C tensors.
        inplace: write the gradient over ``input`` during the forward (no N x C buffer).
            The input must not be a leaf that requires grad nor be needed afterwards:
            it holds the gradient once this returns, and autograd raises if any other
            node needed the old values. A view is accepted only when it reshapes a whole
            contiguous tensor (``logits.view(-1, C)``). Without a gradient to compute
            (``torch.no_grad()``, input not requiring grad) the input is left untouched.
            Eager mode only: under ``torch.compile`` / ``torch.export`` it raises when a
            gradient is wanted.

    Returns:
        The loss in the input's dtype (float32 for half input under autocast): a 0-d
        tensor, or per-row losses for ``"none"``.

    Raises:
        TypeError: a non-tensor or non-floating input, an unsupported device or dtype.
        ValueError: bad reduction, shape mismatch, label_smoothing outside [0, 1], z_loss
            negative or not finite, softcap not a finite positive number, tensors on
            different devices, an unusable view with ``inplace=True``.
        IndexError: a class index outside ``[0, C)`` that is not ``ignore_index`` (CPU).
        RuntimeError: ``inplace=True`` on a leaf tensor that requires grad, or under
            ``torch.compile`` with a gradient to compute.

    >>> import torch, fusedce.torch as ft
    >>> x = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    >>> round(ft.cross_entropy(x, torch.tensor([0, 2])).item(), 4)
    0.6342
    >>> ft.cross_entropy(x, torch.tensor([0, -100]), reduction="none")
    tensor([0.1698, 0.0000])
    """
    _check_input(input)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    target = _class_indices(target)
    _check_same_device(input, target=target, weight=weight)
    opts = _loss_options(weight, ignore_index, reduction, label_smoothing, z_loss=z_loss,
                         softcap=softcap)
    options = _ce_options(opts)
    if _composite.computes_here(input, target, weight=weight):
        # torch.func transform, forward-mode AD or class weights to differentiate: PyTorch's
        # operations (see _torch_composite.py); the input is left as it is, inplace or not
        x, t, unbatched = _batched(input, target)
        loss = _composite.cross_entropy(x, t, weight, *options)
        return loss.reshape(()) if unbatched and opts["reduction"] == "none" else loss
    shape = None
    arg = input
    want_grad = torch.is_grad_enabled() and input.requires_grad
    if inplace and want_grad:
        if torch.compiler.is_compiling():
            raise RuntimeError(
                "cross_entropy(inplace=True) is not supported under torch.compile or "
                "torch.export when a gradient is wanted (the compiler cannot keep its "
                "promise of overwriting the input); use inplace=False there: the compiled "
                "graph plans its own buffers")
        if input.is_leaf:
            raise RuntimeError(
                "cross_entropy(inplace=True): input is a leaf tensor that requires grad and "
                "cannot be overwritten with the gradient; use inplace=False")
        if input._is_view():
            base = input._base
            if not (input.is_contiguous() and base.is_contiguous()
                    and input.data_ptr() == base.data_ptr() and input.numel() == base.numel()):
                raise ValueError(
                    "cross_entropy(inplace=True): input is a view that does not cover its "
                    "whole base tensor (PyTorch lets a custom Function overwrite a view only "
                    "if it returns a single tensor); pass a contiguous tensor or use "
                    "inplace=False")
            if base.is_leaf and base.requires_grad:
                raise RuntimeError(
                    "cross_entropy(inplace=True): input is a view of a leaf tensor that "
                    "requires grad and cannot be overwritten; use inplace=False")
            arg, shape = base, input.shape
    if inplace and target.requires_grad and target.is_floating_point():
        raise ValueError("cross_entropy(inplace=True) cannot also differentiate with respect "
                         "to a probability target (the logits it needs are overwritten)")
    if inplace and want_grad:
        loss, _ = _CrossEntropyInplace.apply(arg, target, weight, options, shape)
        return loss
    x, t, unbatched = _batched(input, target)
    if want_grad:  # the gradient in the same pass, saved for the backward: design (b)
        loss, _ = torch.ops.fusedce.cross_entropy_with_grad(x, t, weight, *options)
    else:  # no N x C gradient when none is wanted
        loss = torch.ops.fusedce.cross_entropy(x, t, weight, *options)
    loss = loss.to(_composite.loss_dtype(input))
    if unbatched and opts["reduction"] == "none":
        loss = loss.reshape(())
    return loss


class CrossEntropyLoss(torch.nn.Module):
    """Module form of :func:`cross_entropy`, as ``torch.nn.CrossEntropyLoss``.

    The class weights are a buffer (moved by ``.to()``, saved in the state dict).

    >>> import torch, fusedce.torch as ft
    >>> loss_fn = ft.CrossEntropyLoss(label_smoothing=0.1)
    >>> x, t = torch.zeros(4, 5), torch.tensor([0, 1, 2, 3])
    >>> round(loss_fn(x, t).item(), 4)   # log(5) whatever the target
    1.6094
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                 inplace=False, *, z_loss=0.0, softcap=None):
        super().__init__()
        _loss_options(weight, ignore_index, reduction, label_smoothing, z_loss=z_loss,
                      softcap=softcap)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.inplace = inplace
        self.z_loss = z_loss
        self.softcap = softcap

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             inplace=self.inplace, z_loss=self.z_loss, softcap=self.softcap)

    def extra_repr(self):
        extra = "".join(f", {name}={getattr(self, name)}" for name in ("z_loss", "softcap")
                        if getattr(self, name) not in (0.0, None))
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, inplace={self.inplace}{extra}")




# ------------------------------------------------------------------------------------------
# nll_loss
# ------------------------------------------------------------------------------------------


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood loss, as ``torch.nn.functional.nll_loss``.

    ``nll_loss(log_softmax(x, 1), t)`` equals ``cross_entropy(x, t)``; the fused
    :func:`cross_entropy` is the faster way to the same number.

    Args:
        input: log-probabilities, floating point, ``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``.
        target: int64/int32/uint8 class indices shaped like ``input`` without dimension 1.
        weight, ignore_index, reduction: as in :func:`cross_entropy`.

    Returns:
        ``-w[t] * input[t]`` per row, reduced; the loss is in the input's dtype (float32
        for half input under autocast).

    Raises:
        TypeError, ValueError, IndexError: as :func:`cross_entropy`.

    >>> import torch, fusedce.torch as ft
    >>> logp = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    >>> round(ft.nll_loss(logp, torch.tensor([0, 1])).item(), 4)
    0.4581
    """
    _check_input(input)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point():
        raise TypeError("target must hold class indices (int64, int32 or uint8) for nll_loss")
    target = _class_indices(target)
    _check_same_device(input, target=target, weight=weight)
    opts = _loss_options(weight, ignore_index, reduction, 0.0)
    x, t, unbatched = _batched(input, target)
    if _composite.computes_here(input, weight=weight):
        loss = _composite.nll_loss(x, t, weight, opts["ignore_index"], opts["reduction"])
    else:
        loss = torch.ops.fusedce.nll_loss(x, t, weight, opts["ignore_index"], opts["reduction"])
        loss = loss.to(_composite.loss_dtype(input))
    if unbatched and opts["reduction"] == "none":
        loss = loss.reshape(())
    return loss


class NLLLoss(torch.nn.Module):
    """Module form of :func:`nll_loss`, as ``torch.nn.NLLLoss`` (the class weights a buffer).

    >>> import torch, fusedce.torch as ft
    >>> loss_fn = ft.NLLLoss(ignore_index=1)
    >>> logp = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]))
    >>> round(loss_fn(logp, torch.tensor([0, 1, 1])).item(), 4)   # row 0 alone: -log 0.5
    0.6931
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__()
        _loss_options(weight, ignore_index, reduction, 0.0)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, input, target):
        return nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                        reduction=self.reduction)

    def extra_repr(self):
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"


# ------------------------------------------------------------------------------------------
# softmax / log_softmax
# ------------------------------------------------------------------------------------------


def _softmax_args(input, dim, dtype, name):
    _check_input(input)
    if dim is None:
        raise TypeError(f"{name}: dim must be given (PyTorch's implicit choice is deprecated)")
    if dtype is not None:
        input = input.to(dtype)
    d = int(dim)
    if not -input.dim() <= d < input.dim():
        raise IndexError(f"dim {dim} is out of range for a {input.dim()}-d input")
    return input, d % input.dim()


def softmax(input, dim, dtype=None):
    """Softmax along ``dim``, as ``torch.softmax`` / ``torch.nn.functional.softmax``.

    Args:
        input: floating point tensor of any shape (at least 1-D).
        dim: the class dimension (required, any dimension, negative counts from the end).
        dtype: if given, ``input`` is cast to it first (as in PyTorch).

    Returns:
        ``exp(x - logsumexp(x, dim))``, same shape and dtype as ``input``.

    Raises:
        TypeError: non-floating input or missing ``dim``. IndexError: ``dim`` out of range.

    >>> import torch, fusedce.torch as ft
    >>> ft.softmax(torch.tensor([[0.0, 0.0], [0.0, 1.0]]), dim=1)
    tensor([[0.5000, 0.5000],
            [0.2689, 0.7311]])
    """
    input, d = _softmax_args(input, dim, dtype, "softmax")
    if _composite.under_transform(input):
        return _composite.softmax(input, d)
    return torch.ops.fusedce.softmax(input, d)


def log_softmax(input, dim, dtype=None):
    """Log-softmax along ``dim``, as ``torch.log_softmax`` / ``F.log_softmax``.

    Args and errors as :func:`softmax`. Returns ``x - logsumexp(x, dim)``.

    >>> import torch, fusedce.torch as ft
    >>> ft.log_softmax(torch.zeros(1, 4), dim=1)
    tensor([[-1.3863, -1.3863, -1.3863, -1.3863]])
    """
    input, d = _softmax_args(input, dim, dtype, "log_softmax")
    if _composite.under_transform(input):
        return _composite.log_softmax(input, d)
    return torch.ops.fusedce.log_softmax(input, d)


class Softmax(torch.nn.Module):
    """Module form of :func:`softmax`, as ``torch.nn.Softmax`` (``dim`` required).

    >>> import torch, fusedce.torch as ft
    >>> ft.Softmax(dim=0)(torch.zeros(4))
    tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """

    def __init__(self, dim):
        super().__init__()
        if dim is None:
            raise TypeError(f"{type(self).__name__}: dim must be given (PyTorch's implicit "
                            "choice is deprecated)")
        self.dim = dim

    def forward(self, input):
        return softmax(input, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """Module form of :func:`log_softmax`, as ``torch.nn.LogSoftmax`` (``dim`` required).

    >>> import torch, fusedce.torch as ft
    >>> ft.LogSoftmax(dim=1)(torch.zeros(1, 2))
    tensor([[-0.6931, -0.6931]])
    """

    def forward(self, input):
        return log_softmax(input, self.dim)


# ------------------------------------------------------------------------------------------
# In modules of their own, which use the helpers above (hence imported last)
# ------------------------------------------------------------------------------------------

from . import torch_distributed as distributed  # noqa: E402  (fusedce.torch.distributed)
from ._torch_linear import LinearCrossEntropyLoss, linear_cross_entropy  # noqa: E402
