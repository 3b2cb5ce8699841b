"""Fused linear + cross-entropy: the loss of ``input @ linear_weight.T + linear_bias`` without
ever holding the whole (rows x classes) logits.

A language model's last layer projects N hidden states of size H onto a vocabulary of V
classes; the N x V logits (and their gradient) are by far the largest tensors of the step
(4096 x 128256 float32 is 2 GiB). Here the rows are taken in chunks. For each chunk one GEMM
gives its logits, :func:`fusedce.cross_entropy_with_grad` turns them into their gradient in
place (one fused pass), and two more GEMMs take that gradient back to ``input`` and
accumulate it into ``linear_weight``'s gradient; the chunk's buffer is then reused by the
next one. Rows whose target is ``ignore_index`` are dropped before any GEMM runs, and the
divisor of ``"mean"`` is known from the targets before the first chunk, so every chunk's
gradient comes out already scaled: nothing is recomputed and nothing N x V is stored.

The GEMMs are the array module's (BLAS through NumPy on the CPU, cuBLAS through CuPy on a
GPU). ``grad_linear_weight`` is written by the first chunk's GEMM (``beta = 0``: the array
starts uninitialised, no pass of zeros) and accumulated in place by the others' (``beta =
1``), through SciPy's BLAS wrapper when SciPy is installed and ``cupy.cublas`` on a GPU;
without one, each later chunk's product goes through one reused (V, H) temporary and an
addition.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _arrays as arrays
from . import _checks as checks
from . import _core
from .functional import _runs_where, cross_entropy, cross_entropy_with_grad

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad"]

# The automatic chunk: as many rows as fit this many bytes of logits (the GEMMs' dtype)...
CHUNK_BYTES = 48 << 20
# ... but never fewer than this many rows. Each chunk's GEMMs read (and BLAS packs) all of
# linear_weight twice and read and write all of grad_linear_weight once, whatever the
# chunk's row count, against 6 * rows * V * H flops: measured at 4096 x 512 x 32000 float32
# (one thread, CPU time, against the same three GEMMs on the whole batch, which do 10% more
# rows here): 128 rows 1.22x, 256 rows 1.08x, 384 rows 1.03x, 512 rows 0.96x.
MIN_CHUNK_ROWS = 384


def _auto_chunk_rows(n_rows: int, n_classes: int, itemsize: int) -> int:
    """Rows per chunk when ``chunk_size`` is None: the rows whose logits fill CHUNK_BYTES (at
    least MIN_CHUNK_ROWS), then evened out over the chunks that makes, so that the last
    chunk is not a sliver (3686 rows by 393 give 10 chunks of 369, not 9 of 393 and one of
    149)."""
    if n_rows <= 0:
        return 1
    rows = max(MIN_CHUNK_ROWS, CHUNK_BYTES // max(1, n_classes * itemsize))
    if rows >= n_rows:
        return n_rows
    chunks = -(-n_rows // rows)
    return -(-n_rows // chunks)


# ---------------------------------------------------------------------------------------
# GEMMs


def _scipy_gemm(dtype):
    """SciPy's BLAS ?gemm for ``dtype`` (float32/float64), or None without SciPy."""
    try:
        from scipy.linalg import blas
    except ImportError:  # pragma: no cover - SciPy is optional
        return None
    return blas.sgemm if np.dtype(dtype) == np.float32 else blas.dgemm


class _Gemm:
    """The three products of a chunk, written into preallocated C-contiguous arrays.

    NumPy's matmul has no accumulating form, so on the host all three go through SciPy's
    BLAS ?gemm when SciPy is installed: a C-ordered matrix is the Fortran-ordered transpose,
    so each product is one column-major GEMM on the same memory, no copy (checked: the
    result must be the output array itself), and ``grad_w += g.T @ x`` is the GEMM with
    beta = 1. All three in one BLAS library matters: NumPy and SciPy each bring their own
    OpenBLAS, whose worker threads spin for a while after each call, and alternating
    between the two left each library's threads competing with the other's (measured: 2x
    slower on two cores). Without SciPy the products are NumPy's matmul, and the
    accumulation goes through one reused (V, H) temporary and an addition; on a GPU, CuPy's
    matmul and ``cupy.cublas.gemm`` with beta = 1.
    """

    def __init__(self, xp, dtype, v, h):
        self.xp, self.dtype, self.shape = xp, np.dtype(dtype), (v, h)
        self.gemm = _scipy_gemm(dtype) if xp is np else None
        self.cublas = getattr(xp, "cublas", None) if xp is not np else None
        self.tmp = None  # (V, H) temporary of the fallback

    def _blas(self, out, *operands):
        """Whether SciPy's gemm can run on these arrays in place (C-contiguous, aligned)."""
        return self.gemm is not None and all(a.flags.c_contiguous and a.flags.aligned
                                             for a in (out, *operands))

    def _check(self, r, out):
        if arrays.pointer(r) != arrays.pointer(out):  # pragma: no cover - SciPy copied c
            out[...] = r.T
        return out

    def logits(self, x, w, out):
        """out = x @ w.T"""
        if self._blas(out, x, w):  # out.T (V, m) = w (V, H) @ x.T (H, m), column-major
            return self._check(self.gemm(1.0, w.T, x.T, c=out.T, trans_a=1, overwrite_c=1), out)
        return self.xp.matmul(x, w.T, out=out)

    def grad_input(self, g, w, out):
        """out = g @ w"""
        if self._blas(out, g, w):  # out.T (H, m) = w.T (H, V) @ g.T (V, m)
            return self._check(self.gemm(1.0, w.T, g.T, c=out.T, overwrite_c=1), out)
        return self.xp.matmul(g, w, out=out)

    def add_grad_weight(self, g, x, acc, first=False):
        """acc += g.T @ x, or acc = g.T @ x for the first chunk (``acc`` may then hold
        anything: it is never read, so a fresh np.empty costs no pass of zeros)."""
        beta = 0.0 if first else 1.0
        if self._blas(acc, g, x):  # acc.T (H, V) += x.T (H, m) @ g (m, V)
            self._check(self.gemm(1.0, x.T, g.T, beta=beta, c=acc.T, trans_b=1, overwrite_c=1),
                        acc)
            return
        if self.cublas is not None:  # pragma: no cover - needs a GPU
            self.cublas.gemm("T", "N", g, x, out=acc, alpha=1.0, beta=beta)
            return
        if first:
            self.xp.matmul(g.T, x, out=acc)
            return
        if self.tmp is None:
            self.tmp = self.xp.empty(self.shape, dtype=self.dtype)
        self.xp.matmul(g.T, x, out=self.tmp)
        acc += self.tmp


# ---------------------------------------------------------------------------------------
# Arguments


def _floating(a, backend, name):
    """``a`` as an array of the backend and the name of its values' dtype; TypeError unless
    floating."""
    arr = arrays.as_array(a, backend, name)
    dname = arrays.dtype_name(a, arr)
    if arrays.is_torch_bfloat16(a):
        raise TypeError(f"{name}: bfloat16 PyTorch tensors go through "
                        "fusedce.torch.linear_cross_entropy")
    if dname not in checks.FLOAT_DTYPES:
        raise TypeError(f"{name} must be a {checks.FLOAT_DTYPES_TEXT} array, got dtype {dname}")
    return arr, dname


def _chunk_size(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"chunk_size must be None or an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"chunk_size must be at least 1 (rows per chunk), got {value}")
    return int(value)


class _Problem:
    """The checked arguments of one call, and the kept rows."""

    def __init__(self, backend, input, linear_weight, target, linear_bias, weight, ignore_index,
                 reduction, label_smoothing, z_loss, softcap, chunk_size):
        self.backend, xp = backend, backend.xp
        self.xp = xp
        self.reduction = checks.reduction(reduction)
        self.ignore_index = checks.ignore_index(ignore_index)
        self.eps = checks.label_smoothing(label_smoothing)
        self.z_loss = checks.z_loss(z_loss)
        checks.softcap(softcap)
        self.softcap = None if softcap is None else float(softcap)
        self.chunk_size = _chunk_size(chunk_size)

        x, self.dtype_name = _floating(input, backend, "input")
        if x.ndim == 0:
            raise ValueError("input must have at least one dimension (the features), got a 0-d array")
        w, w_dtype = _floating(linear_weight, backend, "linear_weight")
        if w.ndim != 2:
            raise ValueError(f"linear_weight must be 2-D (classes, features), got shape {tuple(w.shape)}")
        h = x.shape[-1]
        v = w.shape[0]
        if w.shape[1] != h:
            raise ValueError(f"linear_weight must have shape (classes, {h}) ({h} = the last "
                             f"dimension of input, shape {tuple(x.shape)}), got {tuple(w.shape)}")
        if w_dtype != self.dtype_name:
            raise TypeError(f"linear_weight must have the dtype of input ({self.dtype_name}), "
                            f"got {w_dtype}")
        b = None
        if linear_bias is not None:
            b, b_dtype = _floating(linear_bias, backend, "linear_bias")
            if b_dtype != self.dtype_name:
                raise TypeError(f"linear_bias must have the dtype of input ({self.dtype_name}), "
                                f"got {b_dtype}")
            checks.same_shape(b, (v,), "linear_bias", "one value per row of linear_weight")
        self.lead = tuple(x.shape[:-1])
        self.n, self.h, self.v = math.prod(self.lead), h, v
        # the dtype the GEMMs and the kernel run in: float32 for half precision
        self.cdtype = checks.compute_dtype(x.dtype if self.dtype_name != "bfloat16" else np.float32)
        self.x_dtype, self.w_dtype = x.dtype, w.dtype
        self.b_dtype = None if b is None else b.dtype
        self.x = x.reshape(self.n, h)  # a view when the layout allows it
        self.native = x.dtype == self.cdtype
        self.w = xp.ascontiguousarray(w, dtype=self.cdtype)
        self.b = None if b is None else xp.ascontiguousarray(b, dtype=self.cdtype)

        t = arrays.as_array(target, backend, "target")
        t_dtype = arrays.dtype_name(target, t)
        if t_dtype in checks.FLOAT_DTYPES:
            raise TypeError("target must hold class indices (int32 or int64): "
                            "linear_cross_entropy does not take class probabilities, got dtype "
                            f"{t_dtype}")
        if t.dtype not in checks.INDEX_DTYPES:
            raise TypeError(f"target must hold class indices (int32 or int64), got dtype {t_dtype}")
        if tuple(t.shape) != self.lead:
            raise ValueError(f"target must have shape {self.lead} (the shape {tuple(x.shape)} of "
                             f"input without its last dimension), got {tuple(t.shape)}")
        self.weight = None
        if weight is not None:
            wt = arrays.values(weight, backend, "weight", self.cdtype)
            checks.same_shape(wt, (v,), "weight", "one weight per class, i.e. per row of "
                              "linear_weight")
            wt = xp.ascontiguousarray(wt)
            if not bool(xp.isfinite(wt).all()):
                i = int(xp.argmax(~xp.isfinite(wt)))
                raise ValueError(f"weight must hold finite values, got weight[{i}] = "
                                 f"{float(wt[i])!r}")
            self.weight = wt

        flat = xp.ascontiguousarray(t.reshape(-1))
        if self.n and flat.size and bool((flat == self.ignore_index).any()):
            self.keep = xp.flatnonzero(flat != self.ignore_index)
            self.t = flat[self.keep]
        else:
            self.keep = None  # every row counts
            self.t = flat
        self.m = int(self.t.size)
        if self.m:
            if xp is np:
                lo, hi = _core.index_range(arrays.pointer(self.t), self.m,
                                           arrays.dtype_code(self.t.dtype))
            else:
                lo, hi = int(self.t.min()), int(self.t.max())
            if lo < 0 or hi >= v:
                first = int(self.t[int(xp.argmax((self.t < 0) | (self.t >= v)))])
                raise IndexError(f"target holds class index {first}, outside [0, {v}) (the rows "
                                 f"of linear_weight) and not ignore_index={self.ignore_index}")

        # "mean" divides the cross-entropy by the total weight of the counted rows and the
        # z-loss by their number; every chunk's loss is reduced with the same divisor.
        self.denom = None
        if self.reduction == "mean":
            if self.weight is None:
                self.denom = float(self.m)
            else:
                self.denom = float(self.weight[self.t].sum(dtype=np.float64)) if self.m else 0.0
        z = self.z_loss
        if self.reduction == "mean" and z:
            z = z * self.denom / self.m if self.denom else 0.0
        self.kernel_options = dict(weight=self.weight, ignore_index=self.ignore_index,
                                   label_smoothing=self.eps, validate_targets=False)
        if z:
            self.kernel_options["z_loss"] = z
        if self.softcap is not None:
            self.kernel_options["softcap"] = self.softcap
        if self.chunk_size is not None:
            self.rows = self.chunk_size
        else:
            self.rows = _auto_chunk_rows(self.m, v, self.cdtype.itemsize)
        self.rows = max(1, min(self.rows, self.m))

    # -- chunks

    def chunks(self):
        """(start, stop) over the kept rows."""
        for s in range(0, self.m, self.rows):
            yield s, min(s + self.rows, self.m)

    def chunk_input(self, s, e, buf):
        """The kept rows s:e of input in the GEMMs' dtype: a view when they are contiguous
        rows already in it, else gathered (and converted) into ``buf``."""
        if self.keep is None:
            rows = self.x[s:e]
            if self.native and rows.flags.c_contiguous:
                return rows
            buf[:e - s] = rows
            return buf[:e - s]
        out = buf[:e - s]
        if self.native:
            self.xp.take(self.x, self.keep[s:e], axis=0, out=out)
        else:
            out[...] = self.x[self.keep[s:e]]
        return out

    def logits(self, gemm, xc, buf):
        out = buf[:xc.shape[0]]
        gemm.logits(xc, self.w, out)
        if self.b is not None:
            out += self.b
        return out

    def buffers(self):
        xp = self.xp
        logits = xp.empty((self.rows, self.v), dtype=self.cdtype)
        need_x = self.keep is not None or not self.native or not self.x.flags.c_contiguous
        xbuf = xp.empty((self.rows, self.h), dtype=self.cdtype) if need_x else None
        return logits, xbuf

    def reduce(self, losses):
        """The caller's loss from the kept rows' per-row losses (compute dtype)."""
        xp = self.xp
        if self.reduction == "none":
            full = xp.zeros(self.n, dtype=self.cdtype)
            if self.keep is None:
                full[...] = losses
            else:
                full[self.keep] = losses
            return self.to_caller(full.reshape(self.lead))
        total = float(losses.sum(dtype=np.float64)) if losses.size else 0.0
        if self.reduction == "mean":
            total = total / self.denom if self.denom else 0.0
        return self.to_caller(xp.asarray(total, dtype=self.cdtype))

    def to_caller(self, a):
        return self.backend.to_caller(a)


def _loss_only(p: _Problem):
    xp = p.xp
    losses = xp.empty(p.m, dtype=p.cdtype)
    if p.m:
        gemm = _Gemm(xp, p.cdtype, p.v, p.h)
        lbuf, xbuf = p.buffers()
        for s, e in p.chunks():
            logits = p.logits(gemm, p.chunk_input(s, e, xbuf), lbuf)
            losses[s:e] = cross_entropy(logits, p.t[s:e], reduction="none", **p.kernel_options)
    return p.reduce(losses)


def _row_grad_loss(p: _Problem, grad_loss):
    """The upstream factor of each kept row: (scalar float, None) or (None, per-kept-row
    array) for reduction "none" with an array grad_loss."""
    xp = p.xp
    if p.reduction == "none" and getattr(grad_loss, "ndim", 0) > 0:
        g = arrays.values(grad_loss, p.backend, "grad_loss", p.cdtype)
        checks.same_shape(g, p.lead, "grad_loss", "the per-row loss of reduction='none'")
        g = xp.ascontiguousarray(g.reshape(-1))
        return None, (g if p.keep is None else g[p.keep])
    g = checks.scalar_grad(grad_loss)
    g = float(arrays.values(g, p.backend, "grad_loss", np.float64).reshape(()))
    if p.reduction == "mean":
        g = g / p.denom if p.denom else 0.0
    return g, None


def _with_grad(p: _Problem, grad_loss):
    xp = p.xp
    scalar, per_row = _row_grad_loss(p, grad_loss)
    losses = xp.empty(p.m, dtype=p.cdtype)
    direct = p.keep is None and p.native
    grad_x = (xp.empty if p.keep is None else xp.zeros)((p.n, p.h), dtype=p.cdtype)
    # written whole by the first chunk's GEMM (beta = 0); zeros only when there is none
    grad_w = (xp.empty if p.m else xp.zeros)((p.v, p.h), dtype=p.cdtype)
    grad_b = xp.zeros(p.v, dtype=p.cdtype) if p.b is not None else None
    if p.m:
        gemm = _Gemm(xp, p.cdtype, p.v, p.h)
        lbuf, xbuf = p.buffers()
        gbuf = None if direct else xp.empty((p.rows, p.h), dtype=p.cdtype)
        ones = xp.ones(p.rows, dtype=p.cdtype) if grad_b is not None else None
        btmp = xp.empty(p.v, dtype=p.cdtype) if grad_b is not None else None
        for s, e in p.chunks():
            xc = p.chunk_input(s, e, xbuf)
            logits = p.logits(gemm, xc, lbuf)
            g_rows = scalar if per_row is None else per_row[s:e]
            losses[s:e], g = cross_entropy_with_grad(logits, p.t[s:e], reduction="none",
                                                     grad_loss=g_rows, inplace=True,
                                                     **p.kernel_options)
            if direct:
                gemm.grad_input(g, p.w, grad_x[s:e])
            else:
                gi = gemm.grad_input(g, p.w, gbuf[:e - s])
                if p.keep is None:
                    grad_x[s:e] = gi
                else:
                    grad_x[p.keep[s:e]] = gi
            gemm.add_grad_weight(g, xc, grad_w, first=s == 0)
            if grad_b is not None:
                xp.matmul(ones[:e - s], g, out=btmp)
                grad_b += btmp
    loss = p.reduce(losses)
    grad_x = grad_x.reshape(p.lead + (p.h,))
    if grad_x.dtype != p.x_dtype:
        grad_x = grad_x.astype(p.x_dtype)
    if grad_w.dtype != p.w_dtype:
        grad_w = grad_w.astype(p.w_dtype)
    if grad_b is not None and grad_b.dtype != p.b_dtype:
        grad_b = grad_b.astype(p.b_dtype)
    return (loss, p.to_caller(grad_x), p.to_caller(grad_w),
            None if grad_b is None else p.to_caller(grad_b))


_DOC_COMMON = """
    Parameters
    ----------
    input : array_like, float16/bfloat16/float32/float64, shape (N, H) or (..., H)
        The hidden states, one row per position (bfloat16 as ``ml_dtypes.bfloat16``).
    linear_weight : array_like, shape (V, H), the dtype of ``input``
        The projection onto the V classes (``torch.nn.Linear(H, V).weight``).
    target : array_like of int32/int64, shape ``input.shape[:-1]``
        Class indices in [0, V), or ``ignore_index``. Class probabilities are not taken.
    linear_bias : array_like, shape (V,), the dtype of ``input``, optional
    weight : array_like, shape (V,), optional
        Class weights (finite), as in :func:`fusedce.cross_entropy`.
    ignore_index : int, default -100
        Rows whose target equals it are dropped before any GEMM: loss 0, gradient 0, not
        counted by "mean".
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides by the total weight of the counted rows (their number without
        ``weight``); a zero total gives 0.0 (PyTorch gives NaN).
    label_smoothing : float in [0, 1], default 0.0
    z_loss : float >= 0, default 0.0
        Adds ``z_loss * lse**2`` per counted row; with "mean" those terms are divided by
        the number of counted rows, the cross-entropy terms by their total weight
        (Liger-Kernel's convention; see :func:`fusedce.cross_entropy`).
    softcap : float > 0, optional
        Logits are capped to ``softcap * tanh(logits / softcap)`` before the softmax.
    chunk_size : int >= 1, optional
        Rows per chunk. The default takes as many rows as fit 48 MiB of logits in the
        compute dtype, at least 384 (below that the GEMMs lose efficiency: every chunk
        re-reads the whole weight), evened out over the chunks: 4096 x 32000 float32 with
        none ignored runs 11 chunks of 373 rows, 46 MiB of logits at a time instead of
        500 MiB. The result does not depend on it beyond rounding.
"""

_DOC_DTYPES = """
    float32 and float64 are computed in their own precision. float16 and bfloat16 are
    computed in float32 (``linear_weight`` converted once, ``input`` chunk by chunk, the
    gradients accumulated in float32 and returned in the caller's dtypes). The loss is
    float32 for half/float32 input and float64 for float64, as :func:`fusedce.cross_entropy`.
    NumPy arrays run on the CPU (BLAS through NumPy/SciPy, fusedce's CPU kernels); CuPy
    arrays on the current CUDA device and stream (cuBLAS, fusedce's CUDA kernels; finding
    the kept rows costs one synchronisation).
"""

_DOC_RAISES = """
    Raises
    ------
    Each message names the bad argument.
    TypeError: non-floating ``input``/``linear_weight``/``linear_bias``; dtypes of
        ``linear_weight`` or ``linear_bias`` other than ``input``'s; floating (probability)
        or other non-index ``target``; a non-integer ``chunk_size``.
    ValueError: shape mismatches between ``input``, ``linear_weight``, ``linear_bias``,
        ``target``, ``weight`` (and ``grad_loss``); an unknown ``reduction``;
        ``label_smoothing`` outside [0, 1]; a negative or non-finite ``z_loss``; a ``softcap``
        that is not a finite positive number; a non-finite ``weight`` entry;
        ``chunk_size`` < 1.
    IndexError: a class index outside [0, V) other than ``ignore_index``.
"""


@_runs_where("input", "linear_weight", "target", "linear_bias", "weight")
def linear_cross_entropy(backend, input, linear_weight, target, *, linear_bias=None, weight=None,
                         ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
                         softcap=None, chunk_size=None):
    p = _Problem(backend, input, linear_weight, target, linear_bias, weight, ignore_index,
                 reduction, label_smoothing, z_loss, softcap, chunk_size)
    return _loss_only(p)


linear_cross_entropy.__doc__ = """Cross-entropy of the linear layer ``input @ linear_weight.T +
    linear_bias`` against class indices, chunk by chunk: the N x V logits never exist whole.

    Equal (to rounding) to ``fusedce.cross_entropy(input @ linear_weight.T + linear_bias,
    target, ...)`` with the same options; only one chunk of logits (``chunk_size`` x V)
    exists at a time, and rows whose target is ``ignore_index`` never reach a GEMM.
""" + _DOC_COMMON + """
    Returns
    -------
    loss : ndarray
        0-d for "sum"/"mean", ``target``'s shape for "none".
""" + _DOC_DTYPES + _DOC_RAISES + """
    Examples
    --------
    >>> import numpy as np, fusedce
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> w = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])     # 3 classes
    >>> t = np.array([0, 1, -100])                             # the last row is ignored
    >>> float(fusedce.linear_cross_entropy(x, w, t).round(6))
    0.239545
    >>> float(fusedce.cross_entropy(x @ w.T, t).round(6))      # the same, logits made whole
    0.239545
"""


@_runs_where("input", "linear_weight", "target", "linear_bias", "weight", "grad_loss")
def linear_cross_entropy_with_grad(backend, input, linear_weight, target, *, linear_bias=None,
                                   weight=None, ignore_index=-100, reduction="mean",
                                   label_smoothing=0.0, z_loss=0.0, softcap=None,
                                   chunk_size=None, grad_loss=1.0):
    p = _Problem(backend, input, linear_weight, target, linear_bias, weight, ignore_index,
                 reduction, label_smoothing, z_loss, softcap, chunk_size)
    return _with_grad(p, grad_loss)


linear_cross_entropy_with_grad.__doc__ = """Loss and gradients of
    :func:`linear_cross_entropy` in one chunked pass: ``(loss, grad_input,
    grad_linear_weight, grad_linear_bias)``.

    Per chunk of kept rows: ``logits = x @ W.T (+ b)`` (one GEMM), then the fused kernel
    writes the logits' gradient ``g`` over them (already scaled by ``grad_loss`` and the
    "mean" divisor), then ``grad_input[rows] = g @ W``, ``grad_linear_weight += g.T @ x`` and
    ``grad_linear_bias += g.sum(0)``. Extra memory: one chunk of logits plus the gradients
    themselves.
""" + _DOC_COMMON + """
    grad_loss : scalar or array_like, default 1.0
        The upstream gradient of the loss: a scalar, or for "none" also an array of the
        per-row loss's shape (``target``'s).

    Returns
    -------
    loss : ndarray
        As :func:`linear_cross_entropy`.
    grad_input : ndarray, the shape and dtype of ``input`` (zero rows where ignored)
    grad_linear_weight : ndarray, the shape and dtype of ``linear_weight``
    grad_linear_bias : ndarray of shape (V,) in ``linear_bias``'s dtype, or None without a bias
""" + _DOC_DTYPES + _DOC_RAISES + """
    Examples
    --------
    >>> import numpy as np, fusedce
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> w = np.zeros((3, 2))                                   # uniform over 3 classes
    >>> loss, gx, gw, gb = fusedce.linear_cross_entropy_with_grad(
    ...     x, w, np.array([0, 2]), linear_bias=np.zeros(3))
    >>> float(loss.round(6)), gb.round(6)                      # log(3); mean of p - onehot
    (1.098612, array([-0.166667,  0.333333, -0.166667]))
    >>> gw.round(6)
    array([[-0.333333,  0.166667],
           [ 0.166667,  0.166667],
           [ 0.166667, -0.333333]])
"""
