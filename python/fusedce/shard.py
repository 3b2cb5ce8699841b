"""Vocab-parallel building blocks: the kernels' view of one shard of the classes.

In tensor (vocab) parallelism each process holds the logits of a contiguous range of the
classes, ``[class_offset, class_offset + C_shard)`` of ``total_classes``. The cross-entropy
of the whole row needs only a few numbers per row from each shard:

- :func:`cross_entropy_shard_stats` reads the shard once and returns, per row, the max ``m``
  of its (capped) logits, ``s = sum_c exp(x_c - m)``, the target's logit when the global
  target lies in the shard (else 0), and ``sum_c w_c x_c`` (label smoothing; ``w_c = 1``
  without class weights).
- the caller combines them over the shards: ``M = max m``, ``S = sum s exp(m - M)``,
  ``lse = M + log S``, ``x_t`` and the dot by summation; the loss of a row is
  ``(1-eps) w_t (lse - x_t) + eps/C (sum_c w_c lse - dot) + z lse^2``;
- :func:`cross_entropy_shard_backward` writes the shard's gradient from the global ``lse`` in
  one read and one write: ``g [p_c A - eps/C w_c] - g (1-eps) w_t [c == t]`` with
  ``p_c = exp(x_c - lse)``, ``A = (1-eps) w_t + eps/C sum_k w_k + 2 z lse``, times the
  softcap's slope, the one-hot term only in the shard that holds ``t``.

``fusedce.torch.distributed`` (module :mod:`fusedce.torch_distributed`) does the combining
with ``torch.distributed``. Class indices are global; ``weight`` is the full
(``total_classes``,) vector; the class axis is last. Class-index targets only.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _arrays as arrays
from . import _checks as checks
from . import _core
from .functional import _Input, _Output, _runs_where

__all__ = ["cross_entropy_shard_stats", "cross_entropy_shard_backward"]


def _count(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    return int(value)


class _ShardCall:
    """The arguments of a shard kernel, checked."""

    def __init__(self, backend, logits, target, class_offset, total_classes, weight, ignore_index,
                 label_smoothing, z_loss, softcap, validate):
        ignore_index = checks.ignore_index(ignore_index)
        eps = checks.label_smoothing(label_smoothing)
        z_loss, softcap = checks.z_loss(z_loss), checks.softcap(softcap)
        inp = self.inp = _Input(logits, -1, "logits", backend)
        xp = inp.xp
        offset = _count(class_offset, "class_offset")
        total = _count(total_classes, "total_classes")
        if offset < 0 or total < offset + inp.c:
            raise ValueError(f"the shard's classes [class_offset, class_offset + {inp.c}) = "
                             f"[{offset}, {offset + inp.c}) must lie in [0, total_classes) = "
                             f"[0, {total})")
        self.offset, self.total = offset, total
        w = None
        if weight is not None:
            w = arrays.values(weight, backend, "weight", inp.cdtype)
            if tuple(w.shape) != (total,):
                raise ValueError(f"weight must have shape ({total},) (one weight per class of all "
                                 f"total_classes, not just the shard's), got {tuple(w.shape)}")
            w = xp.ascontiguousarray(w)
            if (validate or not backend.on_gpu) and not bool(xp.isfinite(w).all()):
                raise ValueError("weight must hold finite values")
        self.weight = w
        t = arrays.as_array(target, backend, "target")
        if t.dtype not in checks.INDEX_DTYPES:
            raise TypeError("target must hold class indices (int32 or int64), got dtype "
                            f"{arrays.dtype_name(target, t)}")
        if tuple(t.shape) != inp.row_shape:
            raise ValueError(f"target must have shape {inp.row_shape} (the shape of logits "
                             f"without its last axis), got {tuple(t.shape)}")
        flat = self.index = xp.ascontiguousarray(t.reshape(-1))
        if validate and flat.size:
            bad = (flat != ignore_index) & ((flat < 0) | (flat >= total))
            if bool(bad.any()):
                first = int(flat[int(xp.argmax(bad))])
                raise IndexError(f"target holds class index {first}, outside [0, {total}) "
                                 f"(total_classes) and not ignore_index={ignore_index}")
        self.target = _core.Target(_core.TargetKind.class_index, arrays.pointer(flat),
                                   arrays.dtype_code(flat.dtype), 1)
        self.eps = eps
        self.options = _core.LossOptions(arrays.pointer(w) if w is not None else 0, ignore_index,
                                         eps, z_loss, softcap, offset, total)
        self.launch = backend.launch()


@_runs_where("logits", "target", "weight", "out")
def cross_entropy_shard_stats(backend, logits, target, *, class_offset, total_classes, weight=None,
                              ignore_index=-100, softcap=None, return_dot=False, out=None,
                              validate_targets=True):
    """Per-row statistics of one shard of the classes, in one read of ``logits``.

    Parameters
    ----------
    logits : array_like (..., C_shard), floating
        The shard: classes ``[class_offset, class_offset + C_shard)`` of ``total_classes``.
    target : array_like of int32/int64, shape ``logits.shape[:-1]``
        Global class indices (or ``ignore_index``).
    weight : array_like (total_classes,), optional
        All the class weights (the shard's are read at ``class_offset + c``).
    softcap : float > 0, optional
        Statistics of ``softcap * tanh(x / softcap)`` instead of ``x``.
    return_dot : bool, default False
        Also compute ``sum_c w_c x_c`` (needed for label smoothing).
    out : ndarray (3 or 4, rows), optional
        C-contiguous, the compute dtype (float32; float64 for float64 logits): written with
        the results, row by row (max, sum, target, dot), e.g. a buffer to all-reduce.

    Returns
    -------
    (max, sumexp, target_logit) or (max, sumexp, target_logit, dot), each shaped like
    ``target``, in the compute dtype: ``max`` of the shard's logits, ``sum exp(x - max)``,
    the target's logit when the target lies in the shard (else 0; NaN for an out-of-range
    index with ``validate_targets=False``). Ignored rows are not read: 0, 1, 0, 0.
    """
    call = _ShardCall(backend, logits, target, class_offset, total_classes, weight, ignore_index,
                      0.0, 0.0, softcap, validate_targets)
    inp, xp = call.inp, call.inp.xp
    k = 4 if return_dot else 3
    if out is None:
        res = xp.empty((k, inp.n), dtype=inp.cdtype)
        buf = res
    else:
        res = out
        buf = arrays.as_array(out, backend, "out")
        if tuple(buf.shape) != (k, inp.n) or buf.dtype != inp.cdtype:
            raise ValueError(f"out must be a ({k}, {inp.n}) array of {np.dtype(inp.cdtype).name}, "
                             f"got {tuple(buf.shape)} {buf.dtype}")
        if not buf.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
    base, step = arrays.pointer(buf), inp.n * np.dtype(inp.cdtype).itemsize
    stats = _core.ShardStats(base, base + step, base + 2 * step, base + 3 * step if return_dot else 0)
    if inp.n:
        backend.ops.cross_entropy_shard_stats(inp.struct(), call.target, call.options, stats,
                                              call.launch)
    if out is not None:
        return res
    return tuple(inp.to_caller(buf[i].reshape(inp.row_shape)) for i in range(k))


@_runs_where("grad_factor", "logits", "target", "lse", "weight", "out")
def cross_entropy_shard_backward(backend, grad_factor, logits, target, lse, *, class_offset,
                                 total_classes, weight=None, ignore_index=-100, label_smoothing=0.0,
                                 z_loss=0.0, softcap=None, out=None, inplace=False,
                                 validate_targets=True):
    """The gradient of the rows' losses with respect to one shard of their logits, given
    each row's global log-sum-exp: one read of the shard and one write.

    ``d_c = g [p_c A - eps/C w_c] - g (1-eps) w_t [c == t]``, ``p_c = exp(x_c - lse)``,
    ``A = (1-eps) w_t + eps/C sum_k w_k + 2 z_loss lse`` (``C = total_classes``, sums over all
    classes; ``x`` capped with ``softcap``, and then ``d`` times ``1 - (x_c/softcap)^2``).

    Parameters
    ----------
    grad_factor : scalar or array_like shaped like ``target``
        ``g``, each row's factor: the upstream gradient of the row's loss (for a "mean",
        already divided by what the mean divides by).
    lse : array_like shaped like ``target``
        The global log-sum-exp of each row (of the capped logits with ``softcap``).
    z_loss : float >= 0
        The coefficient each row carries (for a "mean" with class weights, scale it as
        :func:`fusedce.cross_entropy` does: ``z_loss * total_weight / counted_rows``).
    logits, target, class_offset, total_classes, weight, ignore_index, softcap
        As for :func:`cross_entropy_shard_stats`.
    out : ndarray, optional; inplace : bool
        Where the gradient goes (``inplace``: over ``logits``).

    Returns
    -------
    ndarray shaped like ``logits``. Ignored rows get 0.
    """
    if inplace and out is not None:
        raise ValueError("out and inplace=True are exclusive: inplace writes over logits")
    call = _ShardCall(backend, logits, target, class_offset, total_classes, weight, ignore_index,
                      label_smoothing, z_loss, softcap, validate_targets)
    inp, xp = call.inp, call.inp.xp
    lse_arr = arrays.values(lse, backend, "lse", inp.cdtype)
    checks.same_shape(lse_arr, inp.row_shape, "lse", "one value per row of logits")
    lse_rows = arrays.flat_vector(lse_arr, xp, inp.cdtype)
    g = arrays.values(grad_factor, backend, "grad_factor", inp.cdtype)
    if getattr(g, "ndim", 0) > 0:
        checks.same_shape(g, inp.row_shape, "grad_factor", "one factor per row of logits")
        factors, stride = arrays.flat_vector(g, xp, inp.cdtype), 1
    else:
        factors, stride = xp.asarray(g, dtype=inp.cdtype).reshape(1), 0
    res = _Output(inp, out, inplace=inplace)
    stats = _core.RowStats(lse=arrays.pointer(lse_rows), lse_is_input=True,
                           grad=arrays.pointer(factors), grad_stride=stride)
    if inp.n:
        backend.ops.cross_entropy_with_grad(inp.struct(), call.target, call.options, stats,
                                            res.struct(), call.launch)
    return res.result()
