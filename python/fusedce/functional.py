"""fusedce's functions: checked arguments in, kernels called, arrays of the caller's kind out.

Each function moves the class axis last (a view whenever possible), hands the kernels
(rows x classes) matrices through :mod:`fusedce._arrays`, and shapes the results back.
Reductions over rows ("sum", "mean") are done here from the kernels' per-row losses, in
float64, so they do not depend on the number of threads.

Each public function is an implementation ``f(backend, ...)`` wrapped by :func:`_runs_where`,
which picks the :class:`fusedce._arrays.Backend` from where the arrays live; the kernels are
called through ``backend.ops``. :mod:`fusedce.emulated` wraps the same implementations with
a backend of its own (:func:`_runs_on`): NumPy arrays, CUDA kernels run on the host.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from . import _arrays as arrays
from . import _checks as checks
from . import _core

__all__ = [
    "softmax",
    "log_softmax",
    "softmax_backward",
    "log_softmax_backward",
    "nll_loss",
    "nll_loss_backward",
    "cross_entropy",
    "cross_entropy_backward",
    "cross_entropy_with_grad",
    "mse_loss",
    "mse_loss_backward",
]


# ---------------------------------------------------------------------------------------
# Plumbing shared by the functions below


class _Input:
    """A floating input viewed as (rows, classes), as the kernels will read it.

    Every kernel, CPU and CUDA, reads float16, bfloat16, float32 and float64 rows as they
    are (half types are computed in float32). bfloat16 (``self.bf16``) is either an
    ``ml_dtypes.bfloat16`` NumPy array or a PyTorch tensor, which arrives as an int16 view
    of its storage.
    """

    def __init__(self, x, axis, name, backend):
        self.backend, self.original, self.name = backend, x, name
        xp = self.xp = backend.xp
        self.array = arrays.as_array(x, backend, name)
        self.dtype_name = arrays.dtype_name(x, self.array)  # of the values: "bfloat16"...
        self.bf16 = self.dtype_name == "bfloat16"
        checks.floating(self.array, name, self.dtype_name)
        self.axis = checks.axis_index(axis, self.array.ndim)
        self.dtype = self.array.dtype  # the storage dtype (int16 for PyTorch's bfloat16)
        self.cdtype = np.dtype(np.float32) if self.bf16 else checks.compute_dtype(self.dtype)
        self.rows, self.moved_shape, copied = arrays.class_rows(self.array, self.axis, xp)
        self.is_view = not copied
        self.n, self.c = self.rows.shape
        self.row_shape = tuple(self.moved_shape[:-1])
        self.ptr = arrays.pointer(self.rows)  # asked for several times a call, and not cheap

    @property
    def storage_dtype(self):
        """The dtype of the rows the kernels read and write (and of their outputs)."""
        return self.rows.dtype

    def struct(self):
        return arrays.rows_struct(self.rows, self.bf16, self.ptr)

    def like(self, other, name):
        """Another input of the same shape and dtype (softmax_backward's grad), as rows."""
        arr = arrays.as_array(other, self.backend, name)
        other_dtype = arrays.dtype_name(other, arr)
        checks.floating(arr, name, other_dtype)
        checks.same_shape(arr, self.array.shape, name, f"the shape of {self.name}")
        if other_dtype != self.dtype_name:
            raise TypeError(f"{name} and {self.name} must have the same dtype, got "
                            f"{other_dtype} and {self.dtype_name} ({self.name})")
        return _Input(other, self.axis, name, self.backend)

    def side(self, a, name, what):
        """A side input shaped like this one that the kernels read beside it (probability
        targets, mse's target and per-element upstream gradient), as rows of its values in
        the dtype the kernels read this input in; ``what`` says why the shape must match."""
        if self.rows.dtype == np.int16:  # PyTorch's bfloat16 storage: CuPy cannot make any
            if not arrays.is_bfloat16(a):
                raise TypeError(f"{name} must be bfloat16 like {self.name}")
            v, source = arrays.as_array(a, self.backend, name), a
        else:
            v = source = arrays.values(a, self.backend, name, self.storage_dtype)
        checks.same_shape(v, self.array.shape, name, what)
        return _Input(source, self.axis, name, self.backend)

    def to_caller(self, a, bf16=False):
        return self.backend.to_caller(a, bf16)


class _Output:
    """Where a kernel writes a (rows, classes) result, and how it reaches the caller.

    The kernels write straight into ``out=`` (or the input, for inplace) when they can;
    when ``out`` overlaps the input, or another input the kernel reads (``reads``: _Inputs),
    other than as an exact alias, they write a temporary that is copied to it afterwards.
    """

    def __init__(self, inp: _Input, out=None, inplace=False, name="out", reads=()):
        xp = inp.xp
        self.inp, self.target, self.caller_result = inp, None, None
        if inplace:
            if not (isinstance(inp.original, xp.ndarray) or arrays.is_torch(inp.original)):
                raise TypeError("inplace=True needs logits to be an array, not "
                                f"{type(inp.original).__name__}")
            if xp is np and not inp.array.flags.writeable:
                raise ValueError("inplace=True needs a writeable logits array; this one is read-only")
            self.target, self.caller_result = inp.array, inp.original
        elif out is not None:
            out_arr = arrays.as_array(out, inp.backend, name)
            out_dtype = arrays.dtype_name(out, out_arr)
            if out_dtype != inp.dtype_name:
                raise TypeError(f"{name} must have dtype {inp.dtype_name} (that of "
                                f"{inp.name}), got {out_dtype}")
            checks.writable_out(out_arr, inp.array.shape, inp.dtype, xp, name)
            self.target, self.caller_result = out_arr, out
        if self.target is not None and inp.is_view:
            rows, _, copied = arrays.class_rows(self.target, inp.axis, xp)
            if not copied:
                ptr = arrays.pointer(rows)
                if inplace or not any(_overlaps(rows, ptr, i) for i in (inp, *reads)):
                    self.rows, self.ptr, self.copy_back = rows, ptr, False
                    return
        self.copy_back = self.target is not None
        self.rows = xp.empty((inp.n, inp.c), dtype=inp.storage_dtype)
        self.ptr = arrays.pointer(self.rows)

    def struct(self):
        return arrays.rows_struct(self.rows, self.inp.bf16, self.ptr)

    def result(self):
        if self.caller_result is not None and not self.copy_back:  # written in place
            return self.caller_result
        inp, xp = self.inp, self.inp.xp
        full = self.rows.reshape(inp.moved_shape)
        if inp.axis != full.ndim - 1:
            full = xp.moveaxis(full, -1, inp.axis)
        if self.copy_back:
            xp.copyto(self.target, full, casting="unsafe")
        if self.caller_result is not None:  # out= or inplace: the caller's own object
            return self.caller_result
        if full.dtype != inp.dtype:
            full = full.astype(inp.dtype)
        return inp.to_caller(full, inp.bf16)


def _overlaps(rows, ptr, inp: _Input):
    """Whether the output rows (at ``ptr``) overlap the rows an input is read from other than
    as an exact alias (the kernels may run in place, element for element, but not over a
    shifted copy of their input). Decided from byte extents, so it holds for any kind of
    array."""
    a0, a1 = arrays.byte_extent(rows, ptr)
    b0, b1 = arrays.byte_extent(inp.rows, inp.ptr)
    if not (a0 < b1 and b0 < a1):
        return False
    same = rows.shape == inp.rows.shape and rows.strides == inp.rows.strides
    return not (same and ptr == inp.ptr)


class _Target:
    """A class-index or probability target checked against the logits."""

    def __init__(self, target, inp: _Input, ignore_index, *, allow_probs=True, validate=True):
        xp = inp.xp
        t = arrays.as_array(target, inp.backend, "target")
        self.ignore_index = ignore_index
        if arrays.dtype_name(target, t) in checks.FLOAT_DTYPES and allow_probs:
            if tuple(t.shape) != tuple(inp.array.shape):
                raise ValueError(_probability_shape_message(t.shape, inp))
            probs = inp.side(target, "target", "probability targets have the logits' shape")
            self.probs, self.probs_input = probs.rows, probs
            self.index = None
            rows = probs.struct()
            self.struct = _core.Target(_core.TargetKind.probabilities, rows.data, rows.dtype,
                                       rows.row_stride)
            return
        if t.dtype not in checks.INDEX_DTYPES:
            what = "class indices (int32 or int64)"
            if allow_probs:
                what += " or class probabilities (floating, the logits' shape)"
            raise TypeError(f"target must hold {what}, got dtype {arrays.dtype_name(target, t)}")
        if tuple(t.shape) != inp.row_shape:
            raise ValueError(_index_shape_message(t.shape, inp))
        flat = t if t.ndim == 1 and t.flags.c_contiguous else xp.ascontiguousarray(t.reshape(-1))
        ptr = arrays.pointer(flat)
        code = arrays.dtype_code(flat.dtype)
        # Two reductions decide the common case (every index valid, none ignored) cheaply;
        # on a GPU they cost a synchronisation, which validate_targets=False avoids.
        self.none_ignored = False
        if validate and flat.size:
            if xp is np:
                lo, hi = _core.index_range(ptr, flat.size, code)
            else:
                lo, hi = int(flat.min()), int(flat.max())
            self.none_ignored = not (lo <= ignore_index <= hi)
            if lo < 0 or hi >= inp.c:
                bad = (flat != ignore_index) & ((flat < 0) | (flat >= inp.c))
                if bool(bad.any()):
                    first = int(flat[int(xp.argmax(bad))])
                    raise IndexError(
                        f"target holds class index {first}, outside [0, {inp.c}) and not "
                        f"ignore_index={ignore_index}"
                    )
        self.index = flat
        self.probs = None
        self.struct = _core.Target(_core.TargetKind.class_index, ptr, code, 1)

    def row_weights(self, weight, inp: _Input):
        """w[t] for each row, 0 for ignored rows (index targets only)."""
        xp = inp.xp
        valid = self.index != self.ignore_index
        if weight is None:
            return valid.astype(inp.cdtype)
        safe = xp.where(valid & (self.index >= 0) & (self.index < inp.c), self.index, 0)
        return weight[safe] * valid


def _axes_without(shape, target_shape, but):
    """The axes (other than ``but``) whose removal from ``shape`` leaves ``target_shape``."""
    shape, target_shape = tuple(shape), tuple(target_shape)
    return [a for a in range(len(shape))
            if a != but and shape[:a] + shape[a + 1:] == target_shape]


def _axis_hint(axes):
    """What to tell a caller whose index target fits the logits with the class axis at one
    of ``axes`` instead of the one they gave."""
    if not axes:
        return ""
    choices = [f"axis={a}" + (" for PyTorch's (N, C, ...) layout" if a == 1 else "")
               for a in axes]
    return ("; it fits with the class axis at " + " or ".join(map(str, axes)) + ": pass "
            + " or ".join(choices))


def _index_shape_message(target_shape, inp: _Input):
    """A class-index target whose shape is not the logits' shape without the class axis."""
    shape = tuple(inp.array.shape)
    return (f"target must have shape {inp.row_shape} (the shape {shape} of {inp.name} without "
            f"its class axis, axis {inp.axis}), got {tuple(target_shape)}"
            + _axis_hint(_axes_without(shape, target_shape, inp.axis)))


def _probability_shape_message(target_shape, inp: _Input):
    """A floating target (read as class probabilities) whose shape is not the logits'. When
    it has the shape of class indices, say that those must be integers."""
    shape = tuple(inp.array.shape)
    msg = (f"target must have shape {shape} (floating targets are class probabilities, "
           f"shaped like {inp.name}), got {tuple(target_shape)}")
    if _axes_without(shape, target_shape, None):
        msg += ("; class indices must be int32 or int64 (e.g. target.astype(numpy.int64)), "
                "not floating")
    return msg


def _weight(weight, inp: _Input, validate=True):
    if weight is None:
        return None
    xp = inp.xp
    w = arrays.values(weight, inp.backend, "weight", inp.cdtype)
    if w.shape != (inp.c,):
        raise ValueError(f"weight must have shape ({inp.c},) (one weight per class), got {tuple(w.shape)}")
    w = xp.ascontiguousarray(w)
    if (validate or not inp.backend.on_gpu) and not bool(xp.isfinite(w).all()):
        raise ValueError(_non_finite_weight_message(weight, w, inp))
    return w


def _non_finite_weight_message(weight, w, inp: _Input):
    """Which entry of the class weights is not finite, and its value; ``w`` is ``weight``
    converted to the compute dtype, where a large finite value may have become inf."""
    bad = ~inp.xp.isfinite(w)
    count = int(bad.sum())
    i = int(inp.xp.argmax(bad))
    given = float(arrays.values(weight, inp.backend, "weight", np.float64).reshape(-1)[i])
    msg = f"weight must hold finite values, got weight[{i}] = {given!r}"
    if np.isfinite(given):
        msg += f", which overflows {np.dtype(inp.cdtype).name}, the dtype the loss is computed in"
    if count > 1:
        msg += f" ({count - 1} more non-finite value{'s' if count > 2 else ''} after it)"
    return msg


def _options(weight, ignore_index, label_smoothing, z_loss=0.0, softcap=0.0):
    return _core.LossOptions(arrays.pointer(weight) if weight is not None else 0, ignore_index,
                             label_smoothing, z_loss, softcap)


def _z_loss_per_row(z_loss, reduction, target: "_Target", weight, denom, inp: "_Input"):
    """The z-loss coefficient each row carries in the kernels.

    "mean" divides the cross-entropy terms by the total weight ``denom`` of the counted rows
    but the z-loss terms by their number ``n``; the kernels divide every row's loss by
    ``denom``, so each row carries ``z_loss * denom / n`` (just z_loss without class weights,
    where denom == n). With class weights on a GPU this costs one synchronisation.
    """
    if not z_loss or reduction != "mean" or weight is None or target.probs is not None:
        return z_loss
    n = float((target.index != target.ignore_index).sum())
    total = float(denom)
    return z_loss * total / n if n else 0.0


def _denominator(reduction, target: _Target, weight, inp: _Input):
    """What "mean" divides by: the weight of the counted rows (their number for probabilities).

    A Python float on the host; a 0-d device array on a GPU, so that no value has to come
    back to the host (no synchronisation).
    """
    if reduction != "mean":
        return None
    if target.probs is not None or (weight is None and target.none_ignored):
        total = float(inp.n)
        return total if inp.xp is np else inp.xp.asarray(total, dtype=np.float64)
    total = target.row_weights(weight, inp).sum(dtype=np.float64)
    return float(total) if inp.xp is np else total


def _divide(value, denom, xp):
    """value / denom, and 0 where denom is 0: "mean" over zero total weight is 0, not NaN
    (a documented difference from PyTorch)."""
    if xp is np:
        return value / denom if denom != 0 else 0.0 * value
    return xp.where(denom != 0, value / xp.where(denom != 0, denom, 1.0), 0.0)


def _reduce(losses, reduction, denom, inp: _Input, ptr=None):
    if reduction == "none":
        return losses.reshape(inp.row_shape)
    if inp.xp is np:
        ptr = arrays.pointer(losses) if ptr is None else ptr
        total = _core.sum_as_double(ptr, losses.size, arrays.dtype_code(losses.dtype))
    else:
        total = losses.sum(dtype=np.float64)
    if reduction == "mean":
        total = _divide(total, denom, inp.xp)
    return inp.xp.asarray(total, dtype=inp.cdtype)


def _grad_factors(grad_loss, reduction, denom, inp: _Input, row_shape):
    """RowStats' upstream factors: (array kept alive, stride)."""
    xp, cdtype = inp.xp, inp.cdtype
    if reduction == "none" and getattr(grad_loss, "ndim", 0) > 0:
        g = arrays.values(grad_loss, inp.backend, "grad_loss", cdtype)
        checks.same_shape(g, row_shape, "grad_loss", "the per-row loss of reduction='none'")
        return arrays.flat_vector(g, xp, cdtype), 1
    g = checks.scalar_grad(grad_loss)
    if not (xp is np and type(g) is float):  # a float on the host (the usual 1.0) as it is
        g = arrays.values(g, inp.backend, "grad_loss", np.float64).reshape(())
        if xp is np:
            g = float(g)
    if reduction == "mean":
        g = _divide(g, denom, xp)
    return xp.asarray(g, dtype=cdtype).reshape(1), 0


def _public(func, array_params, choose_backend):
    """``func(backend, *args, **kwargs)`` as a public function of ``(*args, **kwargs)``:
    ``choose_backend`` receives the array arguments by name (``array_params``; absent ones
    left out, None kept) and returns the Backend the call runs on."""
    sig = inspect.signature(func)
    public = sig.replace(parameters=list(sig.parameters.values())[1:])
    positional = [p.name for p in public.parameters.values()
                  if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    by_position = [(i, name) for i, name in enumerate(positional) if name in array_params]
    by_keyword = [name for name in array_params if name not in positional]

    @functools.wraps(func)
    def op(*args, **kwargs):
        named = {name: args[i] for i, name in by_position if i < len(args)}
        for name in by_keyword + [n for _, n in by_position if n in kwargs]:
            named[name] = kwargs.get(name)
        backend = choose_backend(named)
        if not backend.on_gpu:  # nothing to activate (see Backend.activate)
            return func(backend, *args, **kwargs)
        with backend.activate():  # unknown keywords raise TypeError in the call below
            return func(backend, *args, **kwargs)

    op.__signature__ = public
    op._implementation = (func, array_params)
    return op


# The function of fusedce.torch that does what each op does for PyTorch tensors (autograd
# gives the backward ops' results); fusedce.torch has no mse_loss.
_TORCH_COUNTERPART = {
    "softmax": "softmax", "softmax_backward": "softmax",
    "log_softmax": "log_softmax", "log_softmax_backward": "log_softmax",
    "nll_loss": "nll_loss", "nll_loss_backward": "nll_loss",
    "cross_entropy": "cross_entropy", "cross_entropy_backward": "cross_entropy",
    "cross_entropy_with_grad": "cross_entropy",
}
_NO_TORCH_COUNTERPART = {"mse_loss": "torch.nn.functional.mse_loss",
                         "mse_loss_backward": "torch.nn.functional.mse_loss"}


def _refuse_cpu_tensors(named, op_name):
    """TypeError for a PyTorch CPU tensor given to the NumPy API: NumPy would take it (and
    autograd would never hear of the call) or refuse it with a puzzling message, so point
    to fusedce.torch. PyTorch CUDA tensors are not refused: they run on the CUDA kernels."""
    for name, a in named.items():
        if not arrays.is_torch(a):
            continue
        if op_name in _NO_TORCH_COUNTERPART:
            use = (f"fusedce.torch has no {op_name}; use {_NO_TORCH_COUNTERPART[op_name]} "
                   "for PyTorch tensors")
        else:
            counterpart = _TORCH_COUNTERPART.get(op_name)
            where = f"fusedce.torch.{counterpart}" if counterpart else "fusedce.torch"
            use = f"use {where} for PyTorch tensors (autograd, PyTorch's conventions)"
        raise TypeError(f"{name} is a PyTorch CPU tensor, and fusedce.{op_name} takes NumPy "
                        f"arrays: {use}, or pass {name}.detach().numpy()")


def _host_or_cuda(op_name):
    """The Backend chooser of the public ops: where the arrays live (see
    :func:`fusedce._arrays.backend_of`), PyTorch CPU tensors refused on the host."""
    def choose(named):
        backend = arrays.backend_of(named)
        if not backend.on_gpu:
            _refuse_cpu_tensors(named, op_name)
        return backend
    return choose


def _runs_where(*array_params):
    """Decorator: the op runs where its array arguments live (host or CUDA device, on the
    current stream); the function receives that Backend as its first argument, which its
    public signature leaves out. :func:`_runs_on` makes the same op run on another choice
    of backend (fusedce.emulated)."""
    return lambda func: _public(func, array_params, _host_or_cuda(func.__name__))


def _runs_on(op, choose_backend):
    """A public op of this module that runs on ``choose_backend(named arrays)`` instead of
    where its arrays live: the same implementation, signature and docstring."""
    func, array_params = op._implementation
    return _public(func, array_params, choose_backend)


# ---------------------------------------------------------------------------------------
# softmax and log_softmax


def _softmax(backend, x, axis, out, log):
    inp = _Input(x, axis, "x", backend)
    res = _Output(inp, out)
    backend.ops.softmax_forward(inp.struct(), res.struct(), log, backend.launch())
    return res.result()


@_runs_where("x", "out")
def softmax(backend, x, axis=-1, *, out=None):
    """Softmax along ``axis``: ``exp(x - logsumexp(x))``.

    Parameters
    ----------
    x : array_like (float16, bfloat16, float32 or float64), at least 1-D
        bfloat16 as an ``ml_dtypes.bfloat16`` NumPy array or a PyTorch CUDA tensor.
    axis : int, default -1
        The class axis.
    out : ndarray, optional
        Where to write the result (same shape and dtype as ``x``).

    Returns
    -------
    ndarray, same shape and dtype as ``x``.

    Raises
    ------
    TypeError for a non-floating ``x``; numpy.exceptions.AxisError (a ValueError and an
    IndexError) for a bad ``axis``; TypeError/ValueError for a bad ``out``.

    Examples
    --------
    >>> import numpy as np, fusedce
    >>> fusedce.softmax(np.array([0.0, np.log(3.0)])).round(6)
    array([0.25, 0.75])
    """
    return _softmax(backend, x, axis, out, False)


@_runs_where("x", "out")
def log_softmax(backend, x, axis=-1, *, out=None):
    """Log-softmax along ``axis``: ``x - logsumexp(x)``, computed stably.

    Shapes, dtypes, ``out`` and errors as :func:`softmax`. -inf entries (masked classes)
    stay -inf as long as the row has a finite entry.

    Examples
    --------
    >>> import numpy as np, fusedce
    >>> fusedce.log_softmax(np.array([[1.0, 1.0], [0.0, -np.inf]]))
    array([[-0.69314718, -0.69314718],
           [ 0.        ,        -inf]])
    """
    return _softmax(backend, x, axis, out, True)


def _softmax_bwd(backend, grad, y, axis, out, log):
    yi = _Input(y, axis, "y", backend)
    gi = yi.like(grad, "grad")
    res = _Output(yi, out, reads=(gi,))
    backend.ops.softmax_backward(gi.struct(), yi.struct(), res.struct(), log, backend.launch())
    return res.result()


@_runs_where("grad", "y", "out")
def softmax_backward(backend, grad, y, axis=-1, *, out=None):
    """Gradient through softmax: ``dx = y * (grad - sum(grad * y, axis))``.

    Parameters
    ----------
    grad : array_like, the gradient of the loss with respect to ``y``.
    y : array_like, ``softmax(x, axis)``; same shape and dtype as ``grad``.
    axis : int, default -1
    out : ndarray, optional

    Returns
    -------
    ndarray ``dL/dx``, the shape and dtype of ``y``.

    Examples
    --------
    >>> import numpy as np, fusedce
    >>> y = fusedce.softmax(np.array([0.0, 0.0]))
    >>> fusedce.softmax_backward(np.array([1.0, 0.0]), y)
    array([ 0.25, -0.25])
    """
    return _softmax_bwd(backend, grad, y, axis, out, False)


@_runs_where("grad", "y", "out")
def log_softmax_backward(backend, grad, y, axis=-1, *, out=None):
    """Gradient through log-softmax: ``dx = grad - exp(y) * sum(grad, axis)``.

    ``y`` is ``log_softmax(x, axis)``; shapes, dtypes and errors as :func:`softmax_backward`.

    Examples
    --------
    >>> import numpy as np, fusedce
    >>> y = fusedce.log_softmax(np.array([0.0, 0.0]))
    >>> fusedce.log_softmax_backward(np.array([-1.0, 0.0]), y)
    array([-0.5,  0.5])
    """
    return _softmax_bwd(backend, grad, y, axis, out, True)


# ---------------------------------------------------------------------------------------
# cross-entropy


class _LossCall:
    """The arguments every loss shares, checked once."""

    def __init__(self, x, target, weight, ignore_index, reduction, label_smoothing, axis,
                 x_name, backend, allow_probs=True, validate=True, z_loss=0.0, softcap=None):
        self.reduction = checks.reduction(reduction)
        ignore_index = checks.ignore_index(ignore_index)
        self.eps = checks.label_smoothing(label_smoothing)
        z_loss, softcap = checks.z_loss(z_loss), checks.softcap(softcap)
        self.inp = _Input(x, axis, x_name, backend)
        self.weight = _weight(weight, self.inp, validate)
        self.target = _Target(target, self.inp, ignore_index, allow_probs=allow_probs, validate=validate)
        self.denom = _denominator(self.reduction, self.target, self.weight, self.inp)
        z_loss = _z_loss_per_row(z_loss, self.reduction, self.target, self.weight, self.denom,
                                 self.inp)
        self.options = _options(self.weight, ignore_index, self.eps, z_loss, softcap)
        self.launch = backend.launch()
        # the other N x C input the kernels read (probability targets), for _Output
        self.reads = () if self.target.probs is None else (self.target.probs_input,)

    def per_row(self, dtype=None):
        return self.inp.xp.empty(self.inp.n, dtype=dtype or self.inp.cdtype)

    def grad_factors(self, grad_loss):
        return _grad_factors(grad_loss, self.reduction, self.denom, self.inp, self.inp.row_shape)

    def finish(self, losses, lse=None, argmax=None, grad=None, losses_ptr=None):
        """(loss[, grad][, lse][, argmax]) as the caller's arrays; just loss when alone."""
        out = [self.inp.to_caller(_reduce(losses, self.reduction, self.denom, self.inp, losses_ptr))]
        if grad is not None:
            out.append(grad)
        out += [self.inp.to_caller(a.reshape(self.inp.row_shape)) for a in (lse, argmax) if a is not None]
        return tuple(out) if len(out) > 1 else out[0]


def _direct_way(backend, logits, target, weight, label_smoothing, softcap, axis, extras=False):
    """fusedce._direct when this call takes the direct way (PyTorch CUDA tensors, the plain
    call: see that module), else None."""
    if backend.torch_stream is None or extras or axis not in (-1, 1):
        return None
    from . import _direct  # (imports torch, which PyTorch tensors imply)

    return _direct if _direct.plain(logits, target, weight, label_smoothing, softcap) else None


def _direct_loss(direct, logits, target, ignore_index, reduction, z_loss, validate_targets,
                 grad=None, grad_loss=1.0):
    """The direct way's loss (in the NumPy API's loss dtype), the gradient into ``grad``."""
    return direct.cross_entropy(logits, target, checks.ignore_index(ignore_index),
                                checks.reduction(reduction), checks.z_loss(z_loss), grad,
                                float(grad_loss), validate_targets,
                                loss_dtype=direct.compute_dtype(logits.dtype))


@_runs_where("logits", "target", "weight")
def cross_entropy(backend, logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None, axis=-1, return_lse=False,
                  return_argmax=False, validate_targets=True):
    """Softmax cross-entropy of ``logits`` against class indices or class probabilities.

    Follows ``torch.nn.functional.cross_entropy``: for a row ``x`` with class weights ``w``
    (1 if ``weight`` is None), smoothing ``eps`` and ``lse = logsumexp(x)``,
    index target ``t``: ``loss = (1-eps) w_t (lse - x_t) + eps/C sum_c w_c (lse - x_c)``;
    probability target ``q``: ``loss = sum_c w_c q'_c (lse - x_c)``, ``q' = (1-eps) q + eps/C``;
    plus the language-model options ``z_loss`` and ``softcap`` (PyTorch has neither).

    Parameters
    ----------
    logits : array_like, float16/bfloat16/float32/float64, class axis ``axis`` (C classes)
    target : array_like
        int32/int64 class indices, shape = ``logits.shape`` without the class axis; or
        floating class probabilities with the shape of ``logits``.
    weight : array_like of shape (C,), optional
        Per-class weights (finite).
    ignore_index : int, default -100
        Index targets equal to it contribute nothing (loss 0, gradient 0, not counted by mean).
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides by the total weight of counted rows (the row count for probability
        targets); a zero total gives 0.0 (PyTorch gives NaN).
    label_smoothing : float in [0, 1], default 0.0
    z_loss : float >= 0, default 0.0
        Adds ``z_loss * lse**2`` to the loss of every counted row (index targets: the rows
        not ignored; probability targets: every row), which keeps the log-partition near 0
        (PaLM, Chameleon). "none" and "sum" add it per row and summed; "mean" divides the
        cross-entropy terms by the total weight of the counted rows and the z-loss terms by
        their number (the same as averaging ``ce + z_loss*lse**2`` over rows when there are
        no class weights; Liger-Kernel's convention). The gradient gains
        ``2 * z_loss * lse * softmax``.
    softcap : float > 0, optional
        Logit soft-capping (Gemma 2 and later): every logit ``x`` is replaced by
        ``softcap * tanh(x / softcap)`` before the softmax, inside the kernel (the capped
        logits are never stored), and the gradient is multiplied by
        ``1 - tanh(x / softcap)**2``. ``lse`` is that of the capped logits; ``argmax`` that
        of the logits as given.
    axis : int, default -1
        The class axis; for (N, C, d1, ...) inputs in PyTorch's layout pass ``axis=1``.
    return_lse, return_argmax : bool, default False
        Also return the per-row log-sum-exp (for :func:`cross_entropy_backward`) and the
        predicted class (argmax of the row), both from the same single pass.
    validate_targets : bool, default True
        Check index targets against [0, C); on a GPU this costs a synchronisation, and with
        it off an out-of-range index gives a NaN loss for its row.

    Returns
    -------
    loss : ndarray
        0-d for "sum"/"mean", shaped like an index target for "none"; float32 for
        float16/bfloat16/float32 logits, float64 for float64.
    lse, argmax : ndarray, optional
        Per row (float compute dtype, int64), when asked for, in that order.

    Raises
    ------
    Each message names the bad argument.
    TypeError: wrong kind or dtype (non-floating ``logits``; ``target`` neither int32/int64
        nor floating; a PyTorch CPU tensor, which belongs to ``fusedce.torch``).
    ValueError: mismatched shapes (``target``, ``weight``), an unknown ``reduction``,
        ``label_smoothing`` outside [0, 1], ``z_loss`` negative or not finite, ``softcap``
        not a finite positive number, a non-finite ``weight`` entry.
    IndexError: a class index outside [0, C) other than ``ignore_index``;
        numpy.exceptions.AxisError (a ValueError and an IndexError) for a bad ``axis``.

    Examples
    --------
    >>> import numpy as np, fusedce
    >>> logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> float(fusedce.cross_entropy(logits, np.array([0, 2])).round(6))
    0.669079
    >>> loss, pred = fusedce.cross_entropy(logits, np.array([0, 2]), reduction="none",
    ...                                    return_argmax=True)
    >>> pred
    array([0, 0])
    """
    direct = _direct_way(backend, logits, target, weight, label_smoothing, softcap, axis,
                         return_lse or return_argmax)
    if direct is not None:
        return _direct_loss(direct, logits, target, ignore_index, reduction, z_loss,
                            validate_targets)
    call = _LossCall(logits, target, weight, ignore_index, reduction, label_smoothing, axis,
                     "logits", backend, validate=validate_targets, z_loss=z_loss, softcap=softcap)
    losses = call.per_row()
    lse = call.per_row() if return_lse else None
    argmax = call.per_row(np.int64) if return_argmax else None
    losses_ptr = arrays.pointer(losses)
    stats = _core.RowStats(loss=losses_ptr,
                           lse=arrays.pointer(lse) if lse is not None else 0,
                           argmax=arrays.pointer(argmax) if argmax is not None else 0)
    backend.ops.cross_entropy_forward(call.inp.struct(), call.target.struct, call.options, stats,
                                      call.launch)
    return call.finish(losses, lse, argmax, losses_ptr=losses_ptr)


@_runs_where("logits", "target", "weight", "lse", "out", "grad_loss")
def cross_entropy_backward(backend, grad_loss, logits, target, *, weight=None, ignore_index=-100,
                           reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None, axis=-1,
                           lse=None, out=None, validate_targets=True):
    """Gradient of :func:`cross_entropy` with respect to ``logits``.

    Each row's loss is ``sum_c u_c (lse - x_c)`` with coefficients ``u_c`` that do not
    depend on ``x``, so its gradient is ``g (U p_c - u_c)``, with ``p = softmax(x)``,
    ``U = sum_c u_c`` and ``g`` the upstream gradient of the row (for "mean", ``grad_loss``
    divided by what the mean divides the sum by). Index target ``t``:
    ``u_c = (1-eps) w_t [c == t] + eps/C w_c`` (without weights or smoothing the gradient
    is ``g (p - onehot(t))``); probability target ``q``: ``u_c = w_c q'_c`` with
    ``q' = (1-eps) q + eps/C``. A z-loss adds ``g' 2 z_loss lse p_c`` to counted rows
    (``g'`` divides by the number of counted rows for "mean"), and a softcap multiplies the
    whole by ``1 - tanh(x_c / softcap)**2``, with ``x`` the capped logits in ``p`` and ``lse``.

    Parameters
    ----------
    grad_loss : scalar or array_like
        The gradient of the returned loss: a scalar for "sum"/"mean", per-row array (the
        shape of the loss) or scalar for "none".
    logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, axis
        As for :func:`cross_entropy`.
    lse : array_like, optional
        The per-row log-sum-exp from ``cross_entropy(..., return_lse=True)`` (with the same
        ``softcap``): skips recomputing it, so the logits are read once.
    out : ndarray, optional
        Where to write the gradient (shape and dtype of ``logits``).

    Returns
    -------
    ndarray, the shape and dtype of ``logits``.

    Examples
    --------
    >>> import numpy as np, fusedce
    >>> fusedce.cross_entropy_backward(1.0, np.zeros((1, 2)), np.array([1]))
    array([[ 0.5, -0.5]])
    """
    call = _LossCall(logits, target, weight, ignore_index, reduction, label_smoothing, axis,
                     "logits", backend, validate=validate_targets, z_loss=z_loss, softcap=softcap)
    factors, stride = call.grad_factors(grad_loss)
    lse_rows = None
    if lse is not None:
        lse_arr = arrays.values(lse, backend, "lse", call.inp.cdtype)
        checks.same_shape(lse_arr, call.inp.row_shape, "lse", "one value per row of logits")
        lse_rows = arrays.flat_vector(lse_arr, call.inp.xp, call.inp.cdtype)
    res = _Output(call.inp, out, reads=call.reads)
    stats = _core.RowStats(lse=arrays.pointer(lse_rows) if lse_rows is not None else 0,
                           lse_is_input=lse_rows is not None,
                           grad=arrays.pointer(factors), grad_stride=stride)
    backend.ops.cross_entropy_with_grad(call.inp.struct(), call.target.struct, call.options, stats,
                                        res.struct(), call.launch)
    return res.result()


@_runs_where("logits", "target", "weight", "out", "grad_loss")
def cross_entropy_with_grad(backend, logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, z_loss=0.0, softcap=None, axis=-1, grad_loss=1.0,
                            out=None, inplace=False, return_lse=False, return_argmax=False,
                            validate_targets=True):
    """Loss and gradient of :func:`cross_entropy` in one fused pass over the logits.

    Each row is read from memory once; its gradient is written once, while the row is
    still in cache. Equivalent to ``cross_entropy`` followed by ``cross_entropy_backward``
    with ``grad_loss``.

    Parameters
    ----------
    logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, axis
        As for :func:`cross_entropy`.
    grad_loss : scalar or array_like, default 1.0
        Upstream gradient of the loss (per-row array allowed for "none").
    out : ndarray, optional
        Where to write the gradient.
    inplace : bool, default False
        Write the gradient over ``logits`` (which must be a writeable array) and return it:
        no extra N x C memory.
    return_lse, return_argmax : bool, default False
        Also return the per-row log-sum-exp and predicted class.

    Returns
    -------
    (loss, grad) or (loss, grad, lse?, argmax?)

    Examples
    --------
    >>> import numpy as np, fusedce
    >>> loss, grad = fusedce.cross_entropy_with_grad(np.zeros((2, 2)), np.array([0, 1]))
    >>> float(loss.round(6)), grad
    (0.693147, array([[-0.25,  0.25],
           [ 0.25, -0.25]]))
    """
    if inplace and out is not None:
        raise ValueError("out and inplace=True are exclusive: inplace writes over logits")
    direct = _direct_way(backend, logits, target, weight, label_smoothing, softcap, axis,
                         return_lse or return_argmax)
    if (direct is not None and type(grad_loss) in (float, int)
            and (out is None or direct.usable_out(out, logits))):
        grad = logits if inplace else direct.empty_like(logits) if out is None else out
        loss = _direct_loss(direct, logits, target, ignore_index, reduction, z_loss,
                            validate_targets, grad, grad_loss)
        return loss, grad
    call = _LossCall(logits, target, weight, ignore_index, reduction, label_smoothing, axis,
                     "logits", backend, validate=validate_targets, z_loss=z_loss, softcap=softcap)
    if inplace and call.target.probs is not None \
            and arrays.may_overlap(call.target.probs, call.inp.array):
        raise ValueError("target must not share memory with logits when inplace=True")
    factors, stride = call.grad_factors(grad_loss)
    res = _Output(call.inp, out, inplace=inplace, reads=call.reads)
    losses = call.per_row()
    lse = call.per_row() if return_lse else None
    argmax = call.per_row(np.int64) if return_argmax else None
    losses_ptr = arrays.pointer(losses)
    stats = _core.RowStats(loss=losses_ptr,
                           lse=arrays.pointer(lse) if lse is not None else 0,
                           argmax=arrays.pointer(argmax) if argmax is not None else 0,
                           grad=arrays.pointer(factors), grad_stride=stride)
    backend.ops.cross_entropy_with_grad(call.inp.struct(), call.target.struct, call.options, stats,
                                        res.struct(), call.launch)
    return call.finish(losses, lse, argmax, grad=res.result(), losses_ptr=losses_ptr)


# ---------------------------------------------------------------------------------------
# nll


@_runs_where("logp", "target", "weight")
def nll_loss(backend, logp, target, *, weight=None, ignore_index=-100, reduction="mean", axis=-1,
             validate_targets=True):
    """Negative log-likelihood of class indices: ``loss = -w_t logp_t`` per row.

    Follows ``torch.nn.functional.nll_loss`` ("mean" divides by the total weight of
    non-ignored rows; a zero total gives 0.0). ``nll_loss(log_softmax(x), t)`` equals
    ``cross_entropy(x, t)``.

    Parameters
    ----------
    logp : array_like, float16/bfloat16/float32/float64, class axis ``axis``
        Log-probabilities (typically from :func:`log_softmax`).
    target : array_like of int32/int64, shape = ``logp.shape`` without the class axis
    weight, ignore_index, reduction, axis, validate_targets
        As for :func:`cross_entropy`.

    Returns
    -------
    ndarray, 0-d or per row.

    Examples
    --------
    >>> import numpy as np, fusedce
    >>> float(fusedce.nll_loss(np.log(np.array([[0.5, 0.5], [0.25, 0.75]])), np.array([0, 1])).round(6))
    0.490415
    """
    call = _LossCall(logp, target, weight, ignore_index, reduction, 0.0, axis, "logp",
                     backend, allow_probs=False,
                     validate=validate_targets)
    losses = call.per_row()
    backend.ops.nll_forward(call.inp.struct(), call.target.struct, call.options,
                      _core.RowStats(loss=arrays.pointer(losses)), call.launch)
    return call.finish(losses)


@_runs_where("logp", "target", "weight", "out", "grad_loss")
def nll_loss_backward(backend, grad_loss, logp, target, *, weight=None, ignore_index=-100, reduction="mean",
                      axis=-1, out=None, validate_targets=True):
    """Gradient of :func:`nll_loss` with respect to ``logp``: ``-g w_t`` at the target class.

    Parameters as :func:`nll_loss`, plus ``grad_loss`` (as in :func:`cross_entropy_backward`)
    and ``out``. Returns an array of ``logp``'s shape and dtype.

    Examples
    --------
    >>> import numpy as np, fusedce
    >>> fusedce.nll_loss_backward(1.0, np.zeros((2, 2)), np.array([0, 1]))
    array([[-0.5,  0. ],
           [ 0. , -0.5]])
    """
    call = _LossCall(logp, target, weight, ignore_index, reduction, 0.0, axis, "logp", backend,
                     allow_probs=False, validate=validate_targets)
    factors, stride = call.grad_factors(grad_loss)
    res = _Output(call.inp, out)
    stats = _core.RowStats(grad=arrays.pointer(factors), grad_stride=stride)
    backend.ops.nll_backward(call.inp.struct(), call.target.struct, call.options, stats, res.struct(), call.launch)
    return res.result()


# ---------------------------------------------------------------------------------------
# mse: the regression case (identity activation, squared error)


def _mse_inputs(pred, target, backend):
    pi = _Input(pred, -1, "pred", backend)
    t = arrays.as_array(target, backend, "target")
    t_dtype = arrays.dtype_name(target, t)
    if t_dtype not in checks.FLOAT_DTYPES:
        raise TypeError(f"target must be a {checks.FLOAT_DTYPES_TEXT} array, got dtype {t_dtype}")
    checks.same_shape(t, pi.array.shape, "target", "the shape of pred")
    return pi, pi.side(target, "target", "the shape of pred")


@_runs_where("pred", "target")
def mse_loss(backend, pred, target, *, reduction="mean"):
    """Mean squared error: ``(pred - target)**2`` per element, reduced.

    Parameters
    ----------
    pred, target : array_like, floating, same shape (at least 1-D)
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides by the number of elements (0.0 for empty input).

    Returns
    -------
    ndarray: 0-d, or elementwise for "none" (float32 for float16/bfloat16/float32, float64
    for float64).

    Examples
    --------
    >>> import numpy as np, fusedce
    >>> float(fusedce.mse_loss(np.array([1.0, 2.0]), np.array([0.0, 0.0])))
    2.5
    """
    reduction = checks.reduction(reduction)
    pi, ti = _mse_inputs(pred, target, backend)
    xp = pi.xp
    each = xp.empty((pi.n, pi.c), dtype=pi.cdtype) if reduction == "none" else None
    sums = xp.empty(pi.n, dtype=pi.cdtype) if reduction != "none" else None
    stats = _core.RowStats(loss=arrays.pointer(sums) if sums is not None else 0)
    each_rows = arrays.rows_struct(each) if each is not None else _core.Rows()
    backend.ops.mse_forward(pi.struct(), ti.struct(), stats, each_rows, backend.launch())
    if reduction == "none":
        return pi.to_caller(each.reshape(pi.moved_shape))
    total = sums.sum(dtype=np.float64)
    if reduction == "mean":
        count = pi.n * pi.c
        total = total / count if count else total * 0.0
    return pi.to_caller(xp.asarray(total, dtype=pi.cdtype))


@_runs_where("pred", "target", "out", "grad_loss")
def mse_loss_backward(backend, grad_loss, pred, target, *, reduction="mean", out=None):
    """Gradient of :func:`mse_loss` with respect to ``pred``: ``2 (pred - target) g``.

    ``grad_loss`` is a scalar for "sum"/"mean" (divided by the element count for "mean"),
    an array of ``pred``'s shape (or a scalar) for "none". Returns ``pred``'s shape and dtype.

    Examples
    --------
    >>> import numpy as np, fusedce
    >>> fusedce.mse_loss_backward(1.0, np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    array([1., 2.])
    """
    reduction = checks.reduction(reduction)
    pi, ti = _mse_inputs(pred, target, backend)
    xp = pi.xp
    grad_each = _core.Rows()
    keep = None
    reads = (ti,)
    if reduction == "none" and getattr(grad_loss, "ndim", 0) > 0:
        keep = pi.side(grad_loss, "grad_loss", "the elementwise loss of reduction='none'")
        grad_each, reads = keep.struct(), (ti, keep)
        factors, stride = xp.ones(1, dtype=pi.cdtype), 0
    else:
        g = arrays.values(checks.scalar_grad(grad_loss), backend, "grad_loss", np.float64)
        g = g.reshape(())
        if reduction == "mean":
            count = pi.n * pi.c
            g = g / count if count else g * 0.0
        factors, stride = xp.asarray(g, dtype=pi.cdtype).reshape(1), 0
    res = _Output(pi, out, reads=reads)
    stats = _core.RowStats(grad=arrays.pointer(factors), grad_stride=stride)
    backend.ops.mse_backward(pi.struct(), ti.struct(), grad_each, stats, res.struct(),
                             backend.launch())
    return res.result()
