"""Vocab-parallel cross-entropy on ``torch.distributed``: the classes split over the ranks.

Reached as ``fusedce.torch.distributed`` after ``import fusedce.torch`` (this module is
``fusedce.torch_distributed``; ``fusedce.torch`` is a module, not a package)::

    import fusedce.torch
    loss = fusedce.torch.distributed.vocab_parallel_cross_entropy(logits_shard, target)

Each rank of the process group holds the logits of a contiguous range of the classes, the
ranges in rank order (sizes may differ) unless ``class_offset`` says otherwise; the class
dimension is last. ``target`` holds global class indices and is the same on every rank, as
is ``weight`` (all the classes' weights). The loss is that of the whole batch, the same on
every rank, with the semantics of :func:`fusedce.cross_entropy` on the gathered logits
(PyTorch's ``F.cross_entropy`` for its options; ``z_loss`` and ``softcap`` as in fusedce;
a "mean" over zero total weight is 0.0). Autograd gives each rank the gradient of its shard.

Communication per call, O(N) per rank, never the logits:

1. one ``all_gather`` of 8 int64 per rank (shard size, row count, offset, weight length,
   target range and checksum, error flag): every rank learns the offsets and validates the
   input *identically*, so bad input raises on every rank instead of hanging one;
2. ``all_reduce(MAX)`` of each row's shard max (N values);
3. ``all_reduce(SUM)`` of an (k, N) block: the rescaled sum of exps, the target logit (only
   the owning rank's is non-zero) and, with label smoothing, ``sum_c w_c x_c`` (k = 2 or 3).

Computation per rank: :func:`fusedce.shard.cross_entropy_shard_stats` reads the shard once;
the backward (:func:`fusedce.shard.cross_entropy_shard_backward`) reads it again and writes
the gradient once, from the global lse saved by the forward (N values). The gradient is
computed in the backward rather than in the forward: a forward without backward (evaluation)
costs one read, and no N x C_shard gradient is held between the two passes.

``vocab_parallel_linear_cross_entropy`` does the same with the LM head's rows sharded: each
rank holds ``linear_weight_shard`` (V_shard, H) and the logits chunk never leaves its rank.

CPU tensors reach the kernels as NumPy views; CUDA tensors through ``fusedce.torch``'s
helpers (UNTESTED: the CUDA shard kernels are not written yet and raise).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from . import _checks
from . import shard as _shard
from ._torch_composite import first_order as _first_order, loss_dtype as _loss_dtype
from ._torch_composite import under_transform as _under_transform

# what the refusal of a second derivative suggests (no torch.func path here)
_NO_SECOND_ORDER = "these losses have first derivatives only"

__all__ = ["vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"]

_HALF = (torch.float16, torch.bfloat16)


def _cdtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------------
# Kernels on tensors
# ------------------------------------------------------------------------------------------


def _kernel_array(t, cdtype):
    """A CPU tensor as the NumPy array the kernels read (bfloat16 and float16 as cdtype)."""
    t = t.detach()
    if t.dtype != cdtype:
        t = t.to(cdtype)
    return t.numpy()


def _io(t):
    from .torch import _arrays_for  # fusedce.torch imports this module at its end
    return _arrays_for(t)


def _shard_stats(x2, t, buf, o):
    """Fills buf (k, n) with the shard's max, sum of exps, target logit[, dot]."""
    kw = dict(class_offset=o.offset, total_classes=o.total, ignore_index=o.ignore_index,
              softcap=o.softcap, return_dot=buf.shape[0] == 4, validate_targets=False)
    if x2.device.type == "cpu":
        w = o.weight.numpy() if o.weight is not None else None
        _shard.cross_entropy_shard_stats(_kernel_array(x2, buf.dtype), t.numpy(), weight=w,
                                         out=buf.numpy(), **kw)
    else:  # pragma: no cover - needs a GPU
        with _io(x2):
            _shard.cross_entropy_shard_stats(x2.detach(), t, weight=o.weight, out=buf, **kw)


def _shard_grad(g, x2, t, lse, z_row, o, inplace=False):
    """The shard's gradient (n, C_shard) in the compute dtype (over x2 when inplace)."""
    kw = dict(class_offset=o.offset, total_classes=o.total, ignore_index=o.ignore_index,
              label_smoothing=o.eps, z_loss=z_row, softcap=o.softcap, validate_targets=False)
    if x2.device.type == "cpu":
        cd = lse.dtype
        w = o.weight.numpy() if o.weight is not None else None
        ga = g.detach().to(cd).numpy() if isinstance(g, torch.Tensor) else g
        if inplace:
            arr = x2.detach().numpy()
            _shard.cross_entropy_shard_backward(ga, arr, t.numpy(), lse.numpy(), weight=w,
                                                inplace=True, **kw)
            return x2
        res = _shard.cross_entropy_shard_backward(ga, _kernel_array(x2, cd), t.numpy(),
                                                  lse.numpy(), weight=w, **kw)
        return torch.from_numpy(np.asarray(res))
    with _io(x2) as io:  # pragma: no cover - needs a GPU
        res = _shard.cross_entropy_shard_backward(g, x2.detach(), t, lse, weight=o.weight,
                                                  inplace=inplace, **kw)
        return x2 if inplace else io.tensor(res)


# ------------------------------------------------------------------------------------------
# Checking the call on every rank at once
# ------------------------------------------------------------------------------------------


class _Options:
    """The call's options and the group's layout of the classes (from the handshake)."""

    def __init__(self, group, ignore_index, reduction, label_smoothing, z_loss, softcap):
        self.group = group
        self.ignore_index = _checks.ignore_index(ignore_index)
        self.reduction = _checks.reduction(reduction)
        self.eps = _checks.label_smoothing(label_smoothing)
        self.z = _checks.z_loss(z_loss)
        self.softcap = softcap
        cap = _checks.softcap(softcap)
        self.softcap = cap if cap else None
        self.weight = None
        self.offset = self.total = 0
        self.sizes = []


class _Handshake:
    FIELDS = 8  # size, rows, offset, weight length, target min, target max, target sum, error


def _local_info(c_shard, target, weight, class_offset, ignore_index):
    t = target.reshape(-1)
    counted = t[t != ignore_index]
    if counted.numel():
        lo, hi = int(counted.min()), int(counted.max())
    else:
        lo, hi = 0, -1
    return [c_shard, t.numel(), -1 if class_offset is None else int(class_offset),
            -1 if weight is None else int(weight.numel()), lo, hi, int(t.sum()), 0]


def _handshake(name, device, group, info, local_error):
    """One all_gather of every rank's facts; raises the same way on every rank."""
    world = dist.get_world_size(group)
    if local_error is not None:
        info = [0] * (_Handshake.FIELDS - 1) + [1]
    mine = torch.tensor(info, dtype=torch.int64, device=device)
    table = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(table, mine, group=group)
    rows = [r.tolist() for r in table]
    bad = [r for r, row in enumerate(rows) if row[7]]
    if local_error is not None:
        raise local_error
    if bad:
        raise ValueError(f"{name}: rank(s) {bad} of the group got bad input (see their error); "
                         "every rank raises")
    sizes = [row[0] for row in rows]
    total = sum(sizes)
    if len({row[1] for row in rows}) > 1:
        raise ValueError(f"{name}: the ranks hold different numbers of rows "
                         f"{[row[1] for row in rows]}: every rank needs the same batch")
    given = [row[2] for row in rows]
    if all(g < 0 for g in given):
        offsets = list(np.cumsum([0] + sizes[:-1]).astype(int))
    elif any(g < 0 for g in given):
        raise ValueError(f"{name}: class_offset was given on some ranks only ({given})")
    else:
        offsets = given
        spans = sorted(zip(offsets, sizes))
        at = 0
        for off, size in spans:
            if off != at:
                raise ValueError(f"{name}: the shards [class_offset, class_offset + C_shard) = "
                                 f"{[(o, o + s) for o, s in zip(offsets, sizes)]} do not tile "
                                 f"[0, {total}) (a gap or overlap at class {at})")
            at += size
    wlen = [row[3] for row in rows]
    if any(w >= 0 and w != total for w in wlen) or len({w < 0 for w in wlen}) > 1:
        raise ValueError(f"{name}: weight must hold all {total} classes' weights (the shards' "
                         f"sizes {sizes} add up to {total}) on every rank, got lengths "
                         f"{[w if w >= 0 else None for w in wlen]}")
    if len({tuple(row[4:7]) for row in rows}) > 1:
        raise ValueError(f"{name}: target differs between the ranks: every rank needs the same "
                         "global class indices")
    lo, hi = rows[0][4], rows[0][5]
    if hi >= lo and (lo < 0 or hi >= total):
        raise IndexError(f"{name}: target holds class index {lo if lo < 0 else hi}, outside "
                         f"[0, {total}) (all the ranks' classes) and not ignore_index")
    rank = dist.get_rank(group)
    return offsets[rank], total, sizes


def _check_call(name, logits, target, weight, class_offset, o, c_shard, others=()):
    """Local checks; returns the exception to raise (after the handshake) or None."""
    try:
        if _under_transform(logits, weight, *others):
            # no formulas in PyTorch's operations here (see _torch_composite.py): refused
            raise RuntimeError(f"{name} does not run under torch.func transforms (grad, vmap, "
                               "jvp, ...) or forward-mode AD")
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise TypeError(f"{name}: the logits must be a floating point tensor")
        if not isinstance(target, torch.Tensor) or target.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name}: target must be an int32 or int64 tensor of class indices")
        if target.device != logits.device:
            raise ValueError(f"{name}: target is on {target.device}, the logits on {logits.device}")
        if weight is not None and (not isinstance(weight, torch.Tensor) or weight.dim() != 1):
            raise ValueError(f"{name}: weight must be a 1-D tensor of all the classes' weights")
        if weight is not None and weight.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"{name}: weight requires grad, but the class weights are not "
                               "differentiated here (detach them)")
        if weight is not None and not bool(torch.isfinite(weight).all()):
            raise ValueError(f"{name}: weight must hold finite values")
        if class_offset is not None and (isinstance(class_offset, bool)
                                         or not isinstance(class_offset, int) or class_offset < 0):
            raise ValueError(f"{name}: class_offset must be None or an integer >= 0")
        if c_shard < 0:
            raise ValueError(f"{name}: bad shard")
    except (TypeError, ValueError, RuntimeError) as e:
        return e
    return None


def _setup(name, group, x_like, rows_shape, c_shard, target, weight, class_offset, o,
           others=()):
    err = _check_call(name, x_like, target, weight, class_offset, o, c_shard, others)
    if err is None and tuple(target.shape) != tuple(rows_shape):
        err = ValueError(f"{name}: target must have shape {tuple(rows_shape)}, got "
                         f"{tuple(target.shape)}")
    info = None
    if err is None:
        info = _local_info(c_shard, target, weight, class_offset, o.ignore_index)
    device = x_like.device if isinstance(x_like, torch.Tensor) else torch.device("cpu")
    o.offset, o.total, o.sizes = _handshake(name, device, group, info, err)
    cd = _cdtype(x_like.dtype)
    o.weight = weight.detach().to(cd).contiguous() if weight is not None else None


# ------------------------------------------------------------------------------------------
# The reductions over the gathered statistics
# ------------------------------------------------------------------------------------------


def _combine(buf, o):
    """All-reduce a (k, n) statistics block: returns lse, x_t[, dot] (global, per row)."""
    local_max = buf[0].clone()
    gmax = buf[0]
    dist.all_reduce(gmax, op=dist.ReduceOp.MAX, group=o.group)
    scale = torch.exp(local_max - gmax)
    buf[1] = torch.where(buf[1] == 0, torch.zeros_like(scale), buf[1] * scale)
    tail = buf[1:]
    dist.all_reduce(tail, op=dist.ReduceOp.SUM, group=o.group)
    lse = gmax + torch.log(buf[1])
    return lse, buf[2], (buf[3] if buf.shape[0] == 4 else None)


class _RowWeights:
    """What the reductions need from the targets alone (identical on every rank)."""

    def __init__(self, t, o, cdtype):
        self.counted = t != o.ignore_index
        safe = torch.where(self.counted, t, torch.zeros_like(t))
        if o.weight is not None:
            self.w_t = torch.where(self.counted, o.weight[safe], torch.zeros((), dtype=cdtype,
                                                                             device=t.device))
            self.w_sum = float(o.weight.double().sum())
        else:
            self.w_t = self.counted.to(cdtype)
            self.w_sum = float(o.total)
        self.denom = float(self.w_t.double().sum())
        self.n_counted = int(self.counted.sum())

    def z_per_row(self, o):
        """The z-loss coefficient each row carries in the gradient kernel ("mean" with
        class weights: the z terms divide by the row count, the CE terms by the weight)."""
        if not o.z or o.reduction != "mean" or o.weight is None:
            return o.z
        return o.z * self.denom / self.n_counted if self.n_counted else 0.0

    def factor(self, o):
        """The gradient factor of each row's loss for a unit upstream gradient."""
        if o.reduction == "mean":
            return 1.0 / self.denom if self.denom else 0.0
        return 1.0


def _row_losses(lse, xt, dot, rw, o):
    """Per-row cross-entropy terms and z terms (0 on ignored rows)."""
    zero = torch.zeros((), dtype=lse.dtype, device=lse.device)
    ce = (1 - o.eps) * rw.w_t * (lse - xt)
    if o.eps:
        ce = ce + o.eps / o.total * (rw.w_sum * lse - dot)
    ce = torch.where(rw.counted, ce, zero)
    zr = torch.where(rw.counted, o.z * lse * lse, zero) if o.z else None
    return ce, zr


def _reduce(ce, zr, rw, o, row_shape, dtype):
    if o.reduction == "none":
        out = ce if zr is None else ce + zr
        return out.reshape(row_shape).to(dtype)
    total = ce.double().sum()
    zt = zr.double().sum() if zr is not None else None
    if o.reduction == "sum":
        out = total if zt is None else total + zt
    elif rw.denom == 0:
        out = total * 0.0
    else:
        out = total / rw.denom
        if zt is not None:
            out = out + zt / rw.n_counted
    return out.to(dtype)


# ------------------------------------------------------------------------------------------
# vocab_parallel_cross_entropy
# ------------------------------------------------------------------------------------------


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, o):
        c = logits.shape[-1]
        row_shape = logits.shape[:-1]
        x2 = logits.reshape(-1, c)
        t = target.reshape(-1).contiguous()
        cd = _cdtype(logits.dtype)
        n = t.numel()
        buf = torch.empty((4 if o.eps else 3, n), dtype=cd, device=logits.device)
        _shard_stats(x2, t, buf, o)
        lse, xt, dot = _combine(buf, o)
        rw = _RowWeights(t, o, cd)
        ce, zr = _row_losses(lse, xt, dot, rw, o)
        ctx.o, ctx.rw, ctx.row_shape = o, rw, row_shape
        ctx.save_for_backward(logits, t, lse)
        return _reduce(ce, zr, rw, o, row_shape, _loss_dtype(logits))

    @staticmethod
    @_first_order("distributed.vocab_parallel_cross_entropy", _NO_SECOND_ORDER)
    def backward(ctx, grad_loss):
        logits, t, lse = ctx.saved_tensors
        o, rw = ctx.o, ctx.rw
        if not ctx.needs_input_grad[0]:
            return None, None, None
        c = logits.shape[-1]
        cd = lse.dtype
        if o.reduction == "none":
            g = grad_loss.reshape(-1).to(cd).contiguous()
        else:
            g = float(grad_loss) * rw.factor(o)
        grad = _shard_grad(g, logits.reshape(-1, c), t, lse, rw.z_per_row(o), o)
        return grad.reshape(logits.shape).to(logits.dtype), None, None


def vocab_parallel_cross_entropy(logits_shard, target, *, group=None, ignore_index=-100,
                                 reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                                 weight=None, class_offset=None):
    """Cross-entropy of logits whose classes are split over the ranks of ``group``.

    Parameters
    ----------
    logits_shard : Tensor (..., C_shard), floating
        This rank's classes ``[offset, offset + C_shard)``; the offsets follow rank order
        (found with one small all_gather) unless ``class_offset`` gives them.
    target : Tensor (...), int32/int64
        Global class indices (or ``ignore_index``), the same on every rank.
    group : ProcessGroup, optional
        Default: the world.
    ignore_index, reduction, label_smoothing, z_loss, softcap
        As for :func:`fusedce.torch.cross_entropy` / :func:`fusedce.cross_entropy`.
    weight : Tensor (C_total,), optional
        All the classes' weights, the same on every rank.
    class_offset : int, optional
        This rank's first class (given on every rank or on none; the ranges must tile
        [0, C_total)).

    Returns
    -------
    Tensor: the loss of the whole batch (0-d, or shaped like ``target`` for "none"), the
    same on every rank, in the logits' dtype. Backward gives this rank's shard gradient.

    Raises
    ------
    On every rank of the group (never a hang): TypeError/ValueError for a bad argument on
    any rank, shards that do not tile the classes, a ``weight`` whose length is not the
    total class count, different row counts or targets between ranks; IndexError for a
    class index outside [0, C_total).
    """
    name = "vocab_parallel_cross_entropy"
    o = _Options(group, ignore_index, reduction, label_smoothing, z_loss, softcap)
    ok = isinstance(logits_shard, torch.Tensor) and logits_shard.dim() >= 1
    c = logits_shard.shape[-1] if ok else -1
    rows_shape = logits_shard.shape[:-1] if ok else ()
    _setup(name, group, logits_shard if ok else torch.empty(0), rows_shape, c, target, weight,
           class_offset, o)
    return _VocabParallelCE.apply(logits_shard, target, o)


# ------------------------------------------------------------------------------------------
# vocab_parallel_linear_cross_entropy
# ------------------------------------------------------------------------------------------


def _chunk_rows(n, v, itemsize, chunk_size):
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError("chunk_size must be None or an integer >= 1")
        return chunk_size
    try:
        from .linear import _auto_chunk_rows
    except ImportError:  # pragma: no cover - linear.py not there yet
        return max(1, min(n, max(384, (48 << 20) // max(1, v * itemsize))))
    return _auto_chunk_rows(n, v, itemsize)


def _linear_pass(x, w, b, t, o, rw, factors=None, want_grad=False, lse_known=None):
    """Chunk by chunk over the rows kept: logits = x w.T + b, the statistics and the two
    all-reduces (unless lse_known), and with want_grad the shard's gradient in place and its
    three products. Returns (lse, ce, zr, grad_x (unreduced), grad_w, grad_b)."""
    cd = _cdtype(x.dtype)
    m, v = x.shape[0], w.shape[0]
    wc = w.detach().to(cd)
    bc = b.detach().to(cd) if b is not None else None
    # the same chunks on every rank: sized by the largest shard
    rows = _chunk_rows(m, max(o.sizes), torch.empty((), dtype=cd).element_size(), o.chunk_size)
    lse = lse_known if lse_known is not None else torch.empty(m, dtype=cd, device=x.device)
    ce = torch.empty(m, dtype=cd, device=x.device)
    zr = torch.empty(m, dtype=cd, device=x.device) if o.z else None
    gx = torch.empty((m, x.shape[1]), dtype=cd, device=x.device) if want_grad else None
    gw = torch.zeros((v, x.shape[1]), dtype=cd, device=x.device) if want_grad else None
    gb = torch.zeros(v, dtype=cd, device=x.device) if want_grad and b is not None else None
    z_row = rw.z_per_row(o)
    for s in range(0, m, rows):
        e = min(m, s + rows)
        xc = x[s:e].detach().to(cd)
        logits = xc @ wc.T
        if bc is not None:
            logits += bc
        tc = t[s:e]
        if lse_known is None:
            buf = torch.empty((4 if o.eps else 3, e - s), dtype=cd, device=x.device)
            _shard_stats(logits, tc, buf, o)
            lc, xt, dot = _combine(buf, o)
            lse[s:e] = lc
            sub = _RowWeightsView(rw, s, e)
            c, z = _row_losses(lc, xt, dot, sub, o)
            ce[s:e] = c
            if zr is not None:
                zr[s:e] = z
        if want_grad:
            f = factors[s:e] if isinstance(factors, torch.Tensor) else factors
            g = _shard_grad(f, logits, tc, lse[s:e].contiguous(), z_row, o, inplace=True)
            gx[s:e] = g @ wc
            gw.addmm_(g.T, xc)
            if gb is not None:
                gb += g.sum(0)
    return lse, ce, zr, gx, gw, gb


class _RowWeightsView:
    def __init__(self, rw, s, e):
        self.counted, self.w_t, self.w_sum = rw.counted[s:e], rw.w_t[s:e], rw.w_sum


class _VocabParallelLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, target, o):
        h = x.shape[-1]
        row_shape = target.shape
        x2 = x.reshape(-1, h)
        t = target.reshape(-1)
        keep = (t != o.ignore_index).nonzero().reshape(-1)
        xk, tk = x2[keep], t[keep].contiguous()
        cd = _cdtype(x.dtype)
        rw = _RowWeights(tk, o, cd)
        needs = any(ctx.needs_input_grad[:3])
        eager = needs and o.reduction != "none"
        factor = rw.factor(o)
        lse, ce, zr, gx, gw, gb = _linear_pass(xk, w, b, tk, o, rw, factors=factor,
                                               want_grad=eager)
        if eager:
            dist.all_reduce(gx, op=dist.ReduceOp.SUM, group=o.group)
        full_ce = torch.zeros(t.numel(), dtype=cd, device=x.device)
        full_ce[keep] = ce
        full_z = None
        if zr is not None:
            full_z = torch.zeros(t.numel(), dtype=cd, device=x.device)
            full_z[keep] = zr
        rw_full = _RowWeights(t, o, cd)
        ctx.o, ctx.rw, ctx.eager = o, rw, eager
        ctx.shapes = (x.shape, x.dtype, w.dtype, b is not None and b.dtype)
        if eager:
            ctx.save_for_backward(gx, gw, gb if gb is not None else torch.empty(0), keep)
        elif needs:
            ctx.save_for_backward(xk, w, b if b is not None else torch.empty(0), tk, lse, keep)
        return _reduce(full_ce, full_z, rw_full, o, row_shape, _loss_dtype(x))

    @staticmethod
    @_first_order("distributed.vocab_parallel_linear_cross_entropy", _NO_SECOND_ORDER)
    def backward(ctx, grad_loss):
        o, rw = ctx.o, ctx.rw
        x_shape, x_dtype, w_dtype, b_dtype = ctx.shapes
        if ctx.eager:
            gx, gw, gb, keep = ctx.saved_tensors
            g = grad_loss.to(gx.dtype)
            gx, gw = gx * g, gw * g
            gb = gb * g if b_dtype else None
        else:
            xk, w, b, tk, lse, keep = ctx.saved_tensors
            b = b if b_dtype else None
            factors = grad_loss.reshape(-1)[keep].to(lse.dtype).contiguous()
            _, _, _, gx, gw, gb = _linear_pass(xk, w, b, tk, o, rw, factors=factors,
                                               want_grad=True, lse_known=lse)
            dist.all_reduce(gx, op=dist.ReduceOp.SUM, group=o.group)
        full = torch.zeros((int(np.prod(x_shape[:-1])), x_shape[-1]), dtype=gx.dtype,
                           device=gx.device)
        full[keep] = gx
        return (full.reshape(x_shape).to(x_dtype), gw.to(w_dtype),
                gb.to(b_dtype) if gb is not None else None, None, None)


def vocab_parallel_linear_cross_entropy(input, linear_weight_shard, target, *,
                                        linear_bias_shard=None, group=None, ignore_index=-100,
                                        reduction="mean", label_smoothing=0.0, z_loss=0.0,
                                        softcap=None, weight=None, class_offset=None,
                                        chunk_size=None):
    """The loss of ``input @ W.T + b`` where the LM head's rows (classes) are split over the
    ranks: this rank holds ``linear_weight_shard`` (V_shard, H) (and ``linear_bias_shard``).

    ``input`` (..., H) and ``target`` (...) are the same on every rank. Chunk by chunk over
    the rows (ignored rows dropped first): the chunk's logits shard ``x W_shard.T (+ b)``,
    its statistics and the two small all-reduces, its gradient in place, ``g @ W_shard`` into
    ``grad_input`` and ``g.T @ x`` into ``grad_W_shard``; ``grad_input`` is all-reduced (SUM)
    at the end so every rank holds all of it. For "mean" and "sum" the gradients are made in
    the forward (three GEMMs per chunk) and scaled by the upstream gradient in the backward;
    for "none" the backward recomputes each chunk's logits from the saved lse (four GEMMs, no
    more statistics all-reduces). Other options as :func:`vocab_parallel_cross_entropy`;
    ``chunk_size`` as :func:`fusedce.linear_cross_entropy` (the default is sized by the
    largest shard, so every rank runs the same chunks).
    """
    name = "vocab_parallel_linear_cross_entropy"
    o = _Options(group, ignore_index, reduction, label_smoothing, z_loss, softcap)
    o.chunk_size = chunk_size
    ok = (isinstance(input, torch.Tensor) and input.dim() >= 1
          and isinstance(linear_weight_shard, torch.Tensor) and linear_weight_shard.dim() == 2
          and linear_weight_shard.shape[1] == input.shape[-1]
          and (linear_bias_shard is None or tuple(linear_bias_shard.shape)
               == (linear_weight_shard.shape[0],)))
    c = linear_weight_shard.shape[0] if ok else -1
    x_like = input if ok else torch.empty(0)
    if not ok:
        err = ValueError(f"{name}: input must be (..., H), linear_weight_shard (V_shard, H) and "
                         "linear_bias_shard (V_shard,)")
        _handshake(name, torch.device("cpu") if not isinstance(input, torch.Tensor)
                   else input.device, group, None, err)
    _setup(name, group, x_like, input.shape[:-1], c, target, weight, class_offset, o,
           others=(linear_weight_shard, linear_bias_shard))
    return _VocabParallelLinearCE.apply(input, linear_weight_shard, linear_bias_shard, target, o)
