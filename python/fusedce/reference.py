"""Plain NumPy reference for every fusedce function.

This module is the definition the kernels are tested against. Every function has the same
signature and semantics as its ``fusedce`` counterpart (see that function's docstring) but
is written for clarity: the class axis is moved last, the math is done in float64 with the
textbook formulas, and the result is cast to the dtype the API promises (loss and lse in
float32 for float16/float32 input and float64 for float64 input; gradients and softmax
outputs in the input dtype). Only NumPy arrays are handled and inputs are barely validated.

PyTorch's formulas are followed, with the two documented differences: ``"mean"`` over a zero
total weight returns 0.0 (with a zero gradient) instead of NaN, and ``label_smoothing`` must
lie in [0, 1].
"""

import numpy as np

__all__ = [
    "softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
    "nll_loss", "nll_loss_backward", "cross_entropy", "cross_entropy_backward",
    "cross_entropy_with_grad", "mse_loss", "mse_loss_backward",
]

_REDUCTIONS = ("none", "sum", "mean")


# ----------------------------------------------------------------------------- helpers


def _loss_dtype(dtype):
    """The compute dtype: float64 stays float64, everything else is float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _last(a, axis):
    """`a` as float64 with the class axis moved last."""
    return np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)


def _back(a, axis, dtype):
    """Undo `_last`: class axis back to `axis`, cast to `dtype`."""
    return np.ascontiguousarray(np.moveaxis(a, -1, axis)).astype(dtype, copy=False)


def _store(result, out):
    if out is None:
        return result
    out[...] = result
    return out


def _max_and_log_sum(x):
    """Per row (keepdims) of a float64 array with classes last: the max m and
    log sum_c exp(x_c - m). m is the plain max except for a row of all -inf, where it is
    0 so that the row's log-sum is -inf; NaN or +inf in a row make its log-sum NaN."""
    if x.shape[-1] == 0:
        return np.zeros(x.shape[:-1] + (1,)), np.full(x.shape[:-1] + (1,), -np.inf)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(m == -np.inf, 0.0, m)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return m, np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def _lse(x):
    """Row-wise log-sum-exp (keepdims): m + log sum exp(x - m)."""
    m, log_s = _max_and_log_sum(x)
    return m + log_s


def _log_softmax64(x):
    """(x - m) - log sum exp(x - m): also exact where |x| is huge and x - lse would lose
    the log-sum to rounding. A row of all -inf gives NaN, as in PyTorch."""
    m, log_s = _max_and_log_sum(x)
    with np.errstate(invalid="ignore"):
        return (x - m) - log_s


def _weights(weight, C):
    return np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64).reshape(C)


def _is_index_target(target):
    return np.issubdtype(np.asarray(target).dtype, np.integer)


def _index_rows(target, ignore_index, C):
    """(class index usable for gathering, mask of non-ignored rows) for an index target."""
    t = np.asarray(target).astype(np.int64)
    keep = t != ignore_index
    return np.where(keep, t, 0).clip(0, max(C - 1, 0)), keep


def _reduce(per_row, reduction, denom, dtype):
    """Apply a reduction to float64 per-row losses; mean divides by `denom` (0 -> 0.0)."""
    if reduction == "none":
        return per_row.astype(dtype)
    total = np.sum(per_row)
    if reduction == "mean":
        total = total / denom if denom != 0 else 0.0
    return np.asarray(total, dtype=dtype)


def _row_factor(grad_loss, reduction, denom, row_shape):
    """d(reduced loss)/d(row loss) times the upstream gradient, as a float64 per-row array."""
    g = np.asarray(grad_loss, dtype=np.float64)
    if reduction == "none":
        return np.broadcast_to(g, row_shape)
    if reduction == "mean":
        g = g / denom if denom != 0 else g * 0.0
    return np.broadcast_to(g, row_shape)


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


# ----------------------------------------------------------------------------- softmax


def softmax(x, axis=-1, *, out=None):
    x = np.asarray(x)
    with np.errstate(invalid="ignore"):
        y = np.exp(_log_softmax64(_last(x, axis)))
    return _store(_back(y, axis, x.dtype), out)


def log_softmax(x, axis=-1, *, out=None):
    x = np.asarray(x)
    return _store(_back(_log_softmax64(_last(x, axis)), axis, x.dtype), out)


def softmax_backward(grad, y, axis=-1, *, out=None):
    """dx_c = y_c (g_c - sum_k g_k y_k), with y = softmax(x)."""
    y = np.asarray(y)
    g, p = _last(grad, axis), _last(y, axis)
    dx = p * (g - np.sum(g * p, axis=-1, keepdims=True))
    return _store(_back(dx, axis, y.dtype), out)


def log_softmax_backward(grad, y, axis=-1, *, out=None):
    """dx_c = g_c - exp(y_c) sum_k g_k, with y = log_softmax(x)."""
    y = np.asarray(y)
    g, ly = _last(grad, axis), _last(y, axis)
    dx = g - np.exp(ly) * np.sum(g, axis=-1, keepdims=True)
    return _store(_back(dx, axis, y.dtype), out)


# ----------------------------------------------------------------------------- nll


def _nll_parts(logp, target, weight, ignore_index, axis):
    lp = _last(logp, axis)
    C = lp.shape[-1]
    w = _weights(weight, C)
    t, keep = _index_rows(target, ignore_index, C)
    w_t = np.where(keep, w[t], 0.0)
    return lp, t, w_t


def nll_loss(logp, target, *, weight=None, ignore_index=-100, reduction="mean", axis=-1):
    """loss = -w_t logp_t per row; mean divides by sum of w_t over non-ignored rows."""
    _check_reduction(reduction)
    lp, t, w_t = _nll_parts(logp, target, weight, ignore_index, axis)
    picked = np.take_along_axis(lp, t[..., None], axis=-1)[..., 0] if lp.shape[-1] else 0 * w_t
    per_row = np.where(w_t != 0, -w_t * picked, 0.0)
    return _reduce(per_row, reduction, np.sum(w_t), _loss_dtype(np.asarray(logp).dtype))


def nll_loss_backward(grad_loss, logp, target, *, weight=None, ignore_index=-100,
                      reduction="mean", axis=-1, out=None):
    """d loss / d logp_c = -w_t [c == t] times the row's upstream factor."""
    _check_reduction(reduction)
    logp = np.asarray(logp)
    lp, t, w_t = _nll_parts(logp, target, weight, ignore_index, axis)
    g = _row_factor(grad_loss, reduction, np.sum(w_t), w_t.shape)
    dx = np.zeros_like(lp)
    if lp.shape[-1]:
        np.put_along_axis(dx, t[..., None], (-w_t * g)[..., None], axis=-1)
    return _store(_back(dx, axis, logp.dtype), out)


# ----------------------------------------------------------------------------- cross-entropy


def _check_lm_options(z_loss, softcap):
    if not (np.isfinite(z_loss) and z_loss >= 0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss!r}")
    if softcap is not None and not (np.isfinite(softcap) and softcap > 0):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")


class _CeParts:
    """Everything both directions need, in float64 with classes last.

    Per row, with the logits capped first (``x = softcap * tanh(raw / softcap)`` when a
    softcap is given), the cross-entropy is ``-sum_c coeff_c logp_c`` and its gradient with
    respect to x is ``p_c * scale - coeff_c`` (p = exp(logp)); coeff is the (smoothed,
    weighted) target distribution:
      index target t:    coeff_c = (1-eps) w_t [c==t] + eps/C w_c   (0 for ignored rows)
      probability q:     coeff_c = w_c ((1-eps) q_c + eps/C)
    and scale = sum_c coeff_c. ``denom`` is what "mean" divides the cross-entropy by (the
    total weight of counted rows; their number for probabilities), ``counted`` marks the
    rows that carry a z-loss term and ``n_counted`` is their number, what "mean" divides
    the z-loss by. ``dcap`` is d x / d raw = 1 - tanh(raw / softcap)^2 (1 without a cap).
    """

    def __init__(self, logits, target, weight, ignore_index, label_smoothing, axis, softcap):
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.raw = _last(logits, axis)
        x = self.raw
        self.dcap = np.ones_like(x)
        if softcap is not None:
            t = np.tanh(x / softcap)
            x, self.dcap = softcap * t, 1.0 - t * t
        self.x = x
        C = x.shape[-1]
        eps = float(label_smoothing)
        w = _weights(weight, C)
        if _is_index_target(target):
            t, keep = _index_rows(target, ignore_index, C)
            w_t = np.where(keep, w[t], 0.0)
            coeff = np.zeros_like(x)
            if C:
                np.put_along_axis(coeff, t[..., None], ((1 - eps) * w_t)[..., None], axis=-1)
            if eps:
                coeff += np.where(keep[..., None], eps / C * w, 0.0)
            self.denom = np.sum(w_t)
            self.counted = keep
        else:
            q = _last(target, axis)
            coeff = w * ((1 - eps) * q + eps / C) if C else q
            self.denom = q.size // C if C else 0
            self.counted = np.ones(x.shape[:-1], bool)
        self.n_counted = int(np.sum(self.counted))
        self.coeff, self.scale = coeff, np.sum(coeff, axis=-1)
        self.logp = _log_softmax64(x)
        self.lse = _lse(x)[..., 0]


def _ce_loss_rows(logp, coeff):
    # Classes with coeff 0 are skipped (0 * inf counts as 0), so a masked (-inf) class that
    # the target does not touch leaves the loss finite. This is what PyTorch gives for index
    # targets without smoothing; for a probability target with q_c = 0 on a -inf logit
    # PyTorch computes 0 * -inf = NaN instead, a case the tests leave alone.
    with np.errstate(invalid="ignore"):
        return np.sum(np.where(coeff != 0, -coeff * logp, 0.0), axis=-1)


def _z_rows(parts, z_loss):
    """z_loss * lse^2 on counted rows, 0 elsewhere (float64, per row)."""
    if not z_loss:
        return np.zeros(parts.counted.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(parts.counted, z_loss * parts.lse ** 2, 0.0)


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None, axis=-1, return_lse=False,
                  return_argmax=False):
    """Softmax cross-entropy (PyTorch's formula), plus z-loss and soft-capping; optionally
    also per-row lse (of the capped logits) and argmax (of the logits as given).

    "mean" divides the cross-entropy terms by the total weight of the counted rows and the
    z-loss terms by their number (both 0.0 when the total weight is 0).
    """
    _check_reduction(reduction)
    _check_lm_options(z_loss, softcap)
    logits = np.asarray(logits)
    dtype = _loss_dtype(logits.dtype)
    parts = _CeParts(logits, target, weight, ignore_index, label_smoothing, axis, softcap)
    ce, z = _ce_loss_rows(parts.logp, parts.coeff), _z_rows(parts, z_loss)
    if reduction == "mean":
        total = 0.0
        if parts.denom != 0:
            total = np.sum(ce) / parts.denom + (np.sum(z) / parts.n_counted if z_loss else 0.0)
        loss = np.asarray(total, dtype=dtype)
    else:
        loss = _reduce(ce + z, reduction, None, dtype)
    extra = []
    if return_lse:
        extra.append(parts.lse.astype(dtype))
    if return_argmax:
        x = parts.raw
        extra.append(np.argmax(x, axis=-1).astype(np.int64) if x.shape[-1]
                     else np.zeros(x.shape[:-1], np.int64))
    return (loss, *extra) if extra else loss


def cross_entropy_backward(grad_loss, logits, target, *, weight=None, ignore_index=-100,
                           reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                           axis=-1, lse=None, out=None):
    """d loss / d raw_c = (p_c (scale + 2 z lse') - coeff_c) dcap_c times the row's upstream
    factor (z' = z_loss, and for "mean" the cross-entropy part divided by the total weight,
    the z-loss part by the number of counted rows).

    `lse` (if given) is used as the row log-sum-exp (of the capped logits) instead of
    recomputing it: p = exp(x - lse).
    """
    _check_reduction(reduction)
    _check_lm_options(z_loss, softcap)
    logits = np.asarray(logits)
    parts = _CeParts(logits, target, weight, ignore_index, label_smoothing, axis, softcap)
    logp, lse_rows = parts.logp, parts.lse
    if lse is not None:
        lse_rows = np.asarray(lse, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            logp = parts.x - lse_rows[..., None]
    g = _row_factor(grad_loss, reduction, parts.denom, parts.scale.shape)
    # the z-loss coefficient of each row's p_c, with its own "mean" denominator
    zg = _row_factor(grad_loss, reduction if reduction != "mean" else "sum", None,
                     parts.scale.shape) * 2.0 * z_loss
    if reduction == "mean":
        zg = zg / parts.n_counted if parts.n_counted else zg * 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        zterm = np.where(parts.counted, zg * lse_rows, 0.0) if z_loss else 0.0
        dx = (np.exp(logp) * (parts.scale * g + zterm)[..., None] - parts.coeff * g[..., None])
        dx = dx * parts.dcap
    # Ignored rows (and every row when "mean" divides by a zero total weight) get an exact
    # zero gradient, even where their logits are NaN or all -inf (PyTorch gives NaN there).
    if _is_index_target(target):
        dx[~parts.counted] = 0.0
    if reduction == "mean" and parts.denom == 0:
        dx[...] = 0.0
    return _store(_back(dx, axis, logits.dtype), out)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100,
                            reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                            axis=-1, grad_loss=1.0, out=None, inplace=False, return_lse=False,
                            return_argmax=False):
    """(loss, d logits) [+ lse, argmax]: cross_entropy and cross_entropy_backward together."""
    opts = dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, axis=axis)
    fwd = cross_entropy(logits, target, return_lse=return_lse, return_argmax=return_argmax,
                        **opts)
    grad = cross_entropy_backward(grad_loss, logits, target, **opts)
    if inplace:
        out = logits
    grad = _store(grad, out)
    if isinstance(fwd, tuple):
        return (fwd[0], grad, *fwd[1:])
    return fwd, grad


# ----------------------------------------------------------------------------- mse


def mse_loss(pred, target, *, reduction="mean"):
    """(pred - target)^2 per element; mean divides by the number of elements (0 -> 0.0)."""
    _check_reduction(reduction)
    pred = np.asarray(pred)
    sq = (np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2
    return _reduce(sq, reduction, sq.size, _loss_dtype(pred.dtype))


def mse_loss_backward(grad_loss, pred, target, *, reduction="mean", out=None):
    """d loss / d pred = 2 (pred - target) times the upstream factor."""
    _check_reduction(reduction)
    pred = np.asarray(pred)
    diff = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    g = _row_factor(grad_loss, reduction, diff.size, diff.shape)
    return _store((2.0 * diff * g).astype(pred.dtype), out)


# ----------------------------------------------------------------------------- vocab-parallel
# The shard kernels of fusedce.shard (not in __all__: they have no fusedce.* counterpart).


def _shard_parts(logits, target, class_offset, total_classes, weight, ignore_index, softcap):
    """Capped shard logits x (float64, classes last), the cap's slope, global targets, the
    rows kept, the local index of targets in the shard (-1 elsewhere), all the weights."""
    raw = np.asarray(logits, dtype=np.float64)
    x, dcap = raw, np.ones_like(raw)
    if softcap is not None:
        th = np.tanh(raw / softcap)
        x, dcap = softcap * th, 1.0 - th * th
    t = np.asarray(target).astype(np.int64)
    keep = t != ignore_index
    w = _weights(weight, total_classes)
    local = t - class_offset
    inside = keep & (local >= 0) & (local < x.shape[-1])
    return x, dcap, t, keep, np.where(inside, local, -1), w


def cross_entropy_shard_stats(logits, target, *, class_offset, total_classes, weight=None,
                              ignore_index=-100, softcap=None, return_dot=False):
    """Per row of a shard of the classes (see fusedce.shard): max, sum exp(x - max), the
    target's logit when it lies in the shard (else 0), and sum_c w_{offset+c} x_c. Ignored
    rows: 0, 1, 0, 0. Compute dtype."""
    x, _, t, keep, local, w = _shard_parts(logits, target, class_offset, total_classes, weight,
                                           ignore_index, softcap)
    dtype = _loss_dtype(np.asarray(logits).dtype)
    w_shard = w[class_offset:class_offset + x.shape[-1]]
    m = np.max(x, axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.sum(np.exp(x - np.where(m == -np.inf, 0.0, m)[..., None]), axis=-1)
        dot = np.sum(np.where(w_shard != 0, w_shard * x, 0.0), axis=-1)
    xt = np.where(local >= 0, np.take_along_axis(x, np.maximum(local, 0)[..., None], -1)[..., 0], 0.0)
    m, s = np.where(keep, m, 0.0), np.where(keep, s, 1.0)
    xt, dot = np.where(keep, xt, 0.0), np.where(keep, dot, 0.0)
    out = (m, s, xt) + ((dot,) if return_dot else ())
    return tuple(a.astype(dtype) for a in out)


def cross_entropy_shard_backward(grad_factor, logits, target, lse, *, class_offset, total_classes,
                                 weight=None, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                                 softcap=None, out=None):
    """The gradient of the rows' losses with respect to a shard of their logits, given the
    global lse (see fusedce.shard.cross_entropy_shard_backward)."""
    x, dcap, t, keep, local, w = _shard_parts(logits, target, class_offset, total_classes,
                                              weight, ignore_index, softcap)
    eps, C = float(label_smoothing), total_classes
    g = np.broadcast_to(np.asarray(grad_factor, dtype=np.float64), t.shape)
    lse = np.asarray(lse, dtype=np.float64)
    w_t = np.where(keep, w[np.where(keep, t, 0)], 0.0)
    A = (1 - eps) * w_t + eps / C * np.sum(w) + 2 * z_loss * lse
    w_shard = w[class_offset:class_offset + x.shape[-1]]
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.exp(x - lse[..., None]) * A[..., None] - eps / C * w_shard
    hot = np.zeros_like(x)
    if x.shape[-1]:
        np.put_along_axis(hot, np.maximum(local, 0)[..., None],
                          np.where(local >= 0, (1 - eps) * w_t, 0.0)[..., None], axis=-1)
    d = (d - hot) * g[..., None] * dcap
    d = np.where(keep[..., None], d, 0.0)
    return _store(d.astype(np.asarray(logits).dtype), out)
