"""The kernels (fusedce.X) against the NumPy reference (fusedce.reference.X).

Every test takes the `device` fixture, so the same checks run on the CPU kernels (NumPy
arrays) and, when available, on the CUDA kernels (CuPy arrays).

Tolerances (see `check`): float64 results at rtol 1e-10, float32 results (and the float32
losses of float16 inputs) at rtol 2e-5, float16 gradients at rtol 2e-3 (one half-precision
ulp is ~1e-3 relative). The absolute floor is k * S with k = 1e-6 (float32 math, ~16
float32 ulps) or 1e-12 (float64 math), and S the size of the quantities the result was
computed from, not of the result itself: a loss lse - x_t of a confident row is tiny but
carries the rounding of lse and x_t, ~ulp * (|x| + sqrt(C)) since lse is a sum of C
rounded terms whose errors grow like sqrt(C) for random data; a gradient p_c * sum(coeff) -
coeff_c inherits the same relative error of p_c. `ce_scales` computes S from the row
weights, the reduction's divisor and the upstream gradient.
"""

import math

import numpy as np
import pytest

from conftest import need

hypothesis = need("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

import fusedce  # noqa: E402
from fusedce import reference as ref  # noqa: E402
from conftest import api, to_device, to_numpy  # noqa: E402

REDUCTIONS = ["none", "sum", "mean"]
LOSS_DTYPE = {np.dtype(np.float16): np.float32, np.dtype(np.float32): np.float32,
              np.dtype(np.float64): np.float64}


# ----------------------------------------------------------------------------- helpers


def check(got, want, dtype, S=None, what="value"):
    """Compare a kernel result with the reference. `dtype` is the input dtype the kernel
    saw, S the absolute scale (see the module docstring; default: max |want|). NaN must
    match NaN and inf must match inf."""
    got = to_numpy(got)
    assert got.shape == np.shape(want), f"{what}: shape {got.shape} != {np.shape(want)}"
    want64 = np.asarray(want, np.float64)
    if S is None:
        finite = np.abs(want64[np.isfinite(want64)])
        S = float(finite.max()) if finite.size else 0.0
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        rtol, atol = 1e-10, 1e-12 * S
    elif got.dtype == np.float16:
        rtol, atol = 2e-3, 1e-6 * S + 1e-7  # + float16 subnormal spacing
    else:
        rtol, atol = 2e-5, 1e-6 * S
    np.testing.assert_allclose(got.astype(np.float64), want64, rtol=rtol, atol=atol,
                               err_msg=what)


def magnitude(x, axis):
    """|x| + sqrt(C): what a row's rounding error is proportional to (see docstring)."""
    x = np.asarray(x, np.float64)
    finite = np.abs(x[np.isfinite(x)])
    return max(1.0, float(finite.max()) if finite.size else 1.0) + math.sqrt(x.shape[axis])


def ce_scales(x, target, opts, g=1.0):
    """Absolute scales (loss, gradient, lse) for a cross-entropy or nll result.

    A z-loss term z lse^2 has a rounding error proportional to z m^2 (lse's error is
    proportional to m), its gradient 2 z lse p to 2 z m; a softcap only shrinks the logits.
    """
    axis = opts.get("axis", -1)
    eps = opts.get("label_smoothing", 0.0)
    z = opts.get("z_loss", 0.0)
    parts = ref._CeParts(x, target, opts.get("weight"), opts.get("ignore_index", -100), eps,
                         axis, None)
    coeffsum, denom = parts.scale, parts.denom
    red = opts.get("reduction", "mean")
    factor = np.abs(ref._row_factor(g, red, denom, coeffsum.shape))
    m = magnitude(x, axis)
    if coeffsum.size == 0:
        return 0.0, 0.0, m
    n = max(parts.n_counted, 1)
    loss = {"none": coeffsum.max() + z * m, "sum": coeffsum.sum() + z * m * n,
            "mean": (coeffsum.sum() / denom + z * m) if denom else 0.0}[red]
    z_factor = np.abs(ref._row_factor(g, "sum" if red == "mean" else red, None, coeffsum.shape))
    if red == "mean":
        z_factor = z_factor / n
    grad = float((coeffsum * factor).max()) + 2 * z * m * float(z_factor.max())
    return m * loss, m * grad, m


def is_device_array(a, device):
    if device in ("cpu", "emulated"):
        return isinstance(a, np.ndarray)
    import cupy
    return isinstance(a, cupy.ndarray)


def same_memory(a, b):
    if isinstance(a, np.ndarray):
        return np.shares_memory(a, b)
    import cupy
    return cupy.shares_memory(a, b)


def place(a, layout, device):
    """`a` on `device` in the given memory layout. "sliced" and "strided" are views into a
    bigger buffer whose other elements are NaN (or a huge class index), so a kernel that
    reads outside the view shows up in the result."""
    if a is None:
        return None
    a = np.asarray(a)
    if layout == "C" or a.ndim == 0:
        return to_device(np.ascontiguousarray(a), device)
    if layout == "F":
        return to_device(np.asfortranarray(a), device)
    fill = np.nan if a.dtype.kind == "f" else 2**30
    if layout == "sliced":
        view = (slice(1, None),) * a.ndim
        big = np.full(tuple(s + 1 for s in a.shape), fill, a.dtype)
    else:  # "strided"
        view = (slice(None, None, 2),) * a.ndim
        big = np.full(tuple(2 * s for s in a.shape), fill, a.dtype)
    big[view] = a
    return to_device(big, device)[view]


def unchanged(dev, host):
    np.testing.assert_array_equal(to_numpy(dev), host, err_msg="an input was modified")


def row_shape(shape, axis):
    axis %= len(shape)
    return shape[:axis] + shape[axis + 1:]


# ----------------------------------------------------------------------------- strategies

SMALL_C = st.one_of(st.integers(1, 32),
                    st.sampled_from([33, 63, 64, 65, 100, 255, 256, 257, 1000, 1025, 4099]))


@st.composite
def shapes(draw, big_ok=True):
    """(shape, axis): 2-D with the class axis last or first, 3-D (N, C, d1) with axis=1 or
    -2, 3-D with classes last. Rarely, C above 65536 with at most two rows."""
    if big_ok and draw(st.integers(0, 24)) == 0:
        C, N = draw(st.integers(65537, 70000)), draw(st.integers(0, 2))
        return ((N, C), -1) if draw(st.booleans()) else ((C, N), 0)
    C, N = draw(SMALL_C), draw(st.integers(0, 12))
    d1 = draw(st.integers(1, 4))
    form = draw(st.sampled_from(["last", "last1", "first", "first-2", "mid", "mid-2", "3d"]))
    return {"last": ((N, C), -1), "last1": ((N, C), 1), "first": ((C, N), 0),
            "first-2": ((C, N), -2), "mid": ((N, C, d1), 1), "mid-2": ((N, C, d1), -2),
            "3d": ((N, d1, C), -1)}[form]


LAYOUTS = st.sampled_from(["C", "F", "sliced", "strided"])


@st.composite
def logits_arrays(draw, dtypes=("float32", "float64"), big_ok=True):
    shape, axis = draw(shapes(big_ok))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 5.0, 30.0, 1000.0]))
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    return x, axis, rng


@st.composite
def ce_cases(draw, dtypes=("float32", "float64", "float16"), prob_ok=True, smoothing=True,
             lm_options=True):
    x, axis, rng = draw(logits_arrays(dtypes))
    C = x.shape[axis]
    rows = row_shape(x.shape, axis)
    wdtype = LOSS_DTYPE[x.dtype]
    opts = dict(axis=axis, reduction=draw(st.sampled_from(REDUCTIONS)))
    if draw(st.booleans()):
        opts["weight"] = rng.uniform(0.1, 2.0, C).astype(wdtype)
    if smoothing:
        opts["label_smoothing"] = draw(st.sampled_from([0.0, 0.0, 0.1, 1.0])
                                       | st.floats(0.0, 1.0))
    if lm_options and draw(st.integers(0, 2)) == 0:  # the language-model options
        opts["z_loss"] = draw(st.sampled_from([0.0, 1e-4, 0.1]))
        opts["softcap"] = draw(st.sampled_from([None, 0.5, 30.0]))
    if prob_ok and draw(st.integers(0, 3)) == 0:
        q = rng.dirichlet(np.ones(C), size=rows) if draw(st.booleans()) else \
            rng.uniform(0, 1, size=rows + (C,))  # PyTorch does not require a distribution
        target = np.moveaxis(q, -1, axis).astype(x.dtype)
    else:
        ignore = draw(st.sampled_from([-100, -1, 0, C - 1, 5]))
        if ignore != -100:
            opts["ignore_index"] = ignore
        target = rng.integers(0, C, size=rows).astype(draw(st.sampled_from(["int32", "int64"])))
        frac = draw(st.sampled_from([0.0, 0.3, 1.0]))
        target[rng.uniform(size=rows) < frac] = ignore
    return x, target, opts, draw(LAYOUTS)


def upstream(rng, opts, rows, dtype):
    if opts.get("reduction", "mean") == "none":
        return rng.uniform(0.5, 1.5, rows).astype(LOSS_DTYPE[np.dtype(dtype)])
    return float(rng.uniform(0.5, 1.5))


def on_device(opts, device):
    return {k: to_device(v, device) for k, v in opts.items()}


# ----------------------------------------------------------------------------- cross-entropy


@given(case=ce_cases())
def test_cross_entropy(device, case):
    x, target, opts, layout = case
    dx, dt = place(x, layout, device), place(target, layout, device)
    dopts = on_device(opts, device)
    loss, lse, am = api(device).cross_entropy(dx, dt, return_lse=True, return_argmax=True, **dopts)
    want, want_lse, want_am = ref.cross_entropy(x, target, return_lse=True,
                                                return_argmax=True, **opts)
    S_loss, _, S_lse = ce_scales(x, target, opts)
    for r in (loss, lse, am):
        assert is_device_array(r, device)
    assert to_numpy(loss).dtype == LOSS_DTYPE[x.dtype] == to_numpy(lse).dtype
    check(loss, want, x.dtype, S_loss, "loss")
    check(lse, want_lse, x.dtype, S_lse, "lse")
    am = to_numpy(am)
    assert am.dtype == np.int64 and am.shape == want_am.shape
    # argmax is numpy's argmax of the row (the first of equal maxima)
    np.testing.assert_array_equal(am, want_am)
    plain = api(device).cross_entropy(dx, dt, **dopts)
    check(plain, want, x.dtype, S_loss, "loss without lse/argmax")
    unchanged(dx, x)
    unchanged(dt, target)


@given(case=ce_cases(), lse_given=st.booleans())
def test_cross_entropy_backward(device, case, lse_given):
    x, target, opts, layout = case
    rng = np.random.default_rng(0)
    g = upstream(rng, opts, row_shape(x.shape, opts["axis"]), x.dtype)
    dx, dt = place(x, layout, device), place(target, layout, device)
    dg = to_device(g, device)
    dopts = on_device(opts, device)
    if lse_given:
        _, lse = api(device).cross_entropy(dx, dt, return_lse=True, **dopts)
        dopts["lse"] = lse
    grad = api(device).cross_entropy_backward(dg, dx, dt, **dopts)
    assert is_device_array(grad, device) and to_numpy(grad).dtype == x.dtype
    check(grad, ref.cross_entropy_backward(g, x, target, **opts), x.dtype,
          ce_scales(x, target, opts, g)[1], "grad")
    unchanged(dx, x)
    unchanged(dt, target)


@given(case=ce_cases(), extras=st.booleans())
def test_cross_entropy_with_grad(device, case, extras):
    x, target, opts, layout = case
    rng = np.random.default_rng(1)
    g = upstream(rng, opts, row_shape(x.shape, opts["axis"]), x.dtype)
    dx, dt = place(x, layout, device), place(target, layout, device)
    dg = to_device(g, device)
    dopts = on_device(opts, device)
    res = api(device).cross_entropy_with_grad(dx, dt, grad_loss=dg, return_lse=extras,
                                          return_argmax=extras, **dopts)
    want = ref.cross_entropy_with_grad(x, target, grad_loss=g, return_lse=extras,
                                       return_argmax=extras, **opts)
    S_loss, S_grad, S_lse = ce_scales(x, target, opts, g)
    assert isinstance(res, tuple) and len(res) == len(want) == (4 if extras else 2)
    check(res[0], want[0], x.dtype, S_loss, "loss")
    check(res[1], want[1], x.dtype, S_grad, "grad")
    assert to_numpy(res[1]).dtype == x.dtype
    if extras:
        check(res[2], want[2], x.dtype, S_lse, "lse")
        np.testing.assert_array_equal(to_numpy(res[3]), want[3])
    # the fused call agrees with the separate forward and backward kernels
    sep_loss = api(device).cross_entropy(dx, dt, **dopts)
    sep_grad = api(device).cross_entropy_backward(dg, dx, dt, **dopts)
    check(res[0], to_numpy(sep_loss), x.dtype, S_loss, "fused vs separate loss")
    check(res[1], to_numpy(sep_grad), x.dtype, S_grad, "fused vs separate grad")
    unchanged(dx, x)
    unchanged(dt, target)


@given(case=ce_cases(dtypes=("float32", "float64")))
def test_cross_entropy_with_grad_out_and_inplace(device, case):
    x, target, opts, layout = case
    dt = place(target, layout, device)
    dopts = on_device(opts, device)
    want_loss, want_grad = ref.cross_entropy_with_grad(x, target, **opts)
    S_loss, S_grad, _ = ce_scales(x, target, opts)

    out = to_device(np.full(x.shape, 7.0, x.dtype), device)
    dx = place(x, layout, device)
    loss, grad = api(device).cross_entropy_with_grad(dx, dt, out=out, **dopts)
    assert grad is out
    check(out, want_grad, x.dtype, S_grad, "out")
    check(loss, want_loss, x.dtype, S_loss, "loss with out=")
    unchanged(dx, x)

    dx = place(x, layout, device)
    loss, grad = api(device).cross_entropy_with_grad(dx, dt, inplace=True, **dopts)
    assert x.size == 0 or same_memory(grad, dx)  # empty arrays never share memory
    check(loss, want_loss, x.dtype, S_loss, "loss with inplace=True")
    check(dx, want_grad, x.dtype, S_grad, "logits after inplace=True")
    check(grad, want_grad, x.dtype, S_grad, "grad from inplace=True")


def test_cross_entropy_backward_out(device):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 7))
    t = rng.integers(0, 7, 5)
    out = to_device(np.zeros_like(x), device)
    res = api(device).cross_entropy_backward(1.0, to_device(x, device), to_device(t, device),
                                         out=out)
    assert res is out
    check(out, ref.cross_entropy_backward(1.0, x, t), x.dtype, 1.0)


def test_argmax_ties_take_first(device):
    x = np.array([[0.0, 0.0, 0.0], [1.0, 3.0, 3.0], [-np.inf, 2.0, 2.0], [5.0, 5.0, 1.0]],
                 np.float32)
    t = np.zeros(4, np.int64)
    _, am = api(device).cross_entropy(to_device(x, device), to_device(t, device),
                                  return_argmax=True)
    np.testing.assert_array_equal(to_numpy(am), [0, 1, 1, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [1, 7, 16, 33, 70001])
def test_int32_and_int64_targets_agree(device, dtype, C):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, C)).astype(dtype)
    t = rng.integers(0, C, 3)
    dx = to_device(x, device)
    a = api(device).cross_entropy(dx, to_device(t.astype(np.int32), device), reduction="none")
    b = api(device).cross_entropy(dx, to_device(t.astype(np.int64), device), reduction="none")
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    opts = dict(reduction="none")
    check(a, ref.cross_entropy(x, t, **opts), dtype, ce_scales(x, t, opts)[0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_masked_logits(device, reduction, dtype):
    """-inf logits on non-target classes: finite loss, zero gradient on those classes."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 40)).astype(dtype)
    mask = rng.uniform(size=x.shape) < 0.5
    t = rng.integers(0, 40, 6)
    mask[np.arange(6), t] = False
    mask[0] = True  # a row with a single finite logit, the target
    mask[0, 0] = False
    t[0] = 0
    x[mask] = -np.inf
    w = rng.uniform(0.5, 2, 40).astype(LOSS_DTYPE[np.dtype(dtype)])
    dx, dt = to_device(x, device), to_device(t, device)
    g = np.ones(6, LOSS_DTYPE[np.dtype(dtype)]) if reduction == "none" else 1.0
    for opts in ({}, {"weight": w}):
        opts["reduction"] = reduction
        S_loss, S_grad, _ = ce_scales(x, t, opts, g)
        dopts = on_device(opts, device)
        loss = to_numpy(api(device).cross_entropy(dx, dt, **dopts))
        assert np.all(np.isfinite(loss))
        check(loss, ref.cross_entropy(x, t, **opts), dtype, S_loss, "masked loss")
        grad = to_numpy(api(device).cross_entropy_backward(to_device(g, device), dx, dt, **dopts))
        assert np.all(np.isfinite(grad)) and np.all(grad[mask] == 0)
        check(grad, ref.cross_entropy_backward(g, x, t, **opts), dtype, S_grad, "masked grad")
        loss2, grad2 = api(device).cross_entropy_with_grad(dx, dt, grad_loss=to_device(g, device),
                                                       **dopts)
        assert np.all(np.isfinite(to_numpy(loss2))) and np.all(to_numpy(grad2)[mask] == 0)
        check(grad2, ref.cross_entropy_backward(g, x, t, **opts), dtype, S_grad,
              "masked fused grad")
    if dtype != np.float16:
        sm = to_numpy(api(device).softmax(dx))
        assert np.all(sm[mask] == 0) and np.all(np.isfinite(sm))
        ls = to_numpy(api(device).log_softmax(dx))
        assert np.all(ls[mask] == -np.inf) and np.all(np.isfinite(ls[~mask]))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("C", [3, 17, 300])
def test_nan_logits_give_nan_row_loss(device, dtype, C):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, C)).astype(dtype)
    x[1, C // 2] = np.nan
    t = np.array([0, 0, C - 1, 1 % C])
    dx, dt = to_device(x, device), to_device(t, device)
    loss = to_numpy(api(device).cross_entropy(dx, dt, reduction="none"))
    assert np.isnan(loss[1]) and np.all(np.isfinite(loss[[0, 2, 3]]))
    assert np.isnan(to_numpy(api(device).cross_entropy(dx, dt, reduction="sum")))
    assert np.isnan(to_numpy(api(device).cross_entropy(dx, dt)))
    loss2, _ = api(device).cross_entropy_with_grad(dx, dt, reduction="none")
    np.testing.assert_array_equal(np.isnan(to_numpy(loss2)), [False, True, False, False])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_inf_logits_as_in_pytorch(device, dtype):
    """+inf in a row makes its loss NaN (inf - inf, as PyTorch); a -inf target logit with
    other logits finite gives +inf loss."""
    x = np.array([[0.0, np.inf, 1.0], [0.0, -np.inf, 1.0], [0.5, 0.0, 1.0]], dtype)
    t = np.array([0, 1, 2])
    dx, dt = to_device(x, device), to_device(t, device)
    loss = to_numpy(api(device).cross_entropy(dx, dt, reduction="none"))
    assert np.isnan(loss[0]) and loss[1] == np.inf and np.isfinite(loss[2])
    loss2, _ = api(device).cross_entropy_with_grad(dx, dt, reduction="none")
    np.testing.assert_array_equal(to_numpy(loss2), loss)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ignored_rows_get_zero_gradient_even_with_nonfinite_logits(device, smoothing):
    """api.md: ignored rows contribute 0 to the loss and get a zero gradient. A padding row
    whose logits are NaN or all -inf must not put NaN into the gradient (PyTorch does)."""
    x = np.array([[np.nan, 0.0, 1.0], [-np.inf, -np.inf, -np.inf], [0.0, 1.0, 2.0]],
                 np.float32)
    t = np.array([-100, -100, 1])
    dx, dt = to_device(x, device), to_device(t, device)
    opts = dict(label_smoothing=smoothing)
    for red in REDUCTIONS:
        loss, grad = api(device).cross_entropy_with_grad(dx, dt, reduction=red, **opts)
        want_loss, want_grad = ref.cross_entropy_with_grad(x, t, reduction=red, **opts)
        check(loss, want_loss, x.dtype, 10.0, f"{red} loss")
        g = np.ones(3, np.float32) if red == "none" else 1.0
        grad2 = api(device).cross_entropy_backward(to_device(g, device), dx, dt, reduction=red,
                                               **opts)
        for what, gr in (("with_grad", grad), ("backward", grad2)):
            gr = to_numpy(gr)
            assert np.all(gr[:2] == 0), f"{what} {red}: ignored rows' gradient {gr[:2]}"
            check(gr, want_grad, x.dtype, 10.0, f"{what} {red} grad")
    # every row ignored: "mean" is 0.0 with an all-zero gradient
    loss, grad = api(device).cross_entropy_with_grad(dx[:2], dt[:2], **opts)
    assert float(to_numpy(loss)) == 0.0 and np.all(to_numpy(grad) == 0)


@pytest.mark.parametrize("tdtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_probability_target_of_another_dtype(device, dtype, tdtype):
    """A probability target whose float dtype differs from the logits' is either converted
    (the right loss) or refused with a TypeError naming `target`; never read as the wrong
    type (that would be garbage, or an out-of-bounds read for a narrower target)."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 5)).astype(dtype)
    q = rng.dirichlet(np.ones(5), 3).astype(tdtype)
    dx, dq = to_device(x, device), to_device(q, device)
    opts = dict(reduction="none")
    S_loss, S_grad, _ = ce_scales(x, q, opts, np.ones(3))
    for call in (lambda: api(device).cross_entropy(dx, dq, **opts),
                 lambda: api(device).cross_entropy_with_grad(dx, dq, **opts)[0]):
        try:
            loss = call()
        except TypeError as e:
            assert "target" in str(e)
            continue
        # the target is converted to the dtype the kernels read it in, the logits' own (on
        # every device), and carries that rounding
        check(loss, ref.cross_entropy(x, q.astype(dtype), **opts),
              max(np.dtype(dtype), np.dtype(np.float32)), S_loss,
              f"{np.dtype(dtype)} logits, {np.dtype(tdtype)} target")


def test_backward_trusts_given_lse(device):
    """cross_entropy_backward(lse=...) uses the lse it is given instead of recomputing it."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 6))
    t = rng.integers(0, 6, 4)
    _, lse = ref.cross_entropy(x, t, return_lse=True)
    shifted = lse + 0.5
    got = api(device).cross_entropy_backward(1.0, to_device(x, device), to_device(t, device),
                                         lse=to_device(shifted, device))
    check(got, ref.cross_entropy_backward(1.0, x, t, lse=shifted), x.dtype, 1.0)


def test_scalar_forms(device):
    """grad_loss as a Python float, a NumPy scalar or a 0-d array; axis as a NumPy int."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    t = rng.integers(0, 5, (3, 2))
    dx, dt = to_device(x, device), to_device(t, device)
    want = ref.cross_entropy_backward(0.7, x, t, axis=1, reduction="sum")
    for g in (0.7, np.float32(0.7), np.array(0.7, np.float32)):
        got = api(device).cross_entropy_backward(to_device(g, device), dx, dt, axis=np.int64(1),
                                             reduction="sum")
        check(got, want, x.dtype, 2.0, f"grad_loss={g!r}")
    loss, grad = api(device).cross_entropy_with_grad(dx, dt, axis=np.int32(-2), reduction="sum",
                                                 grad_loss=to_device(np.array(0.7), device))
    check(grad, want, x.dtype, 2.0, "with_grad 0-d grad_loss")


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_mean_is_zero(device, smoothing, weighted):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 9))
    t = np.full(5, -100)
    opts = dict(label_smoothing=smoothing)
    if weighted:
        opts["weight"] = rng.uniform(0.5, 2, 9)
    dx, dt = to_device(x, device), to_device(t, device)
    dopts = on_device(opts, device)
    assert float(to_numpy(api(device).cross_entropy(dx, dt, **dopts))) == 0.0
    assert np.all(to_numpy(api(device).cross_entropy_backward(1.0, dx, dt, **dopts)) == 0)
    loss, grad = api(device).cross_entropy_with_grad(dx, dt, **dopts)
    assert float(to_numpy(loss)) == 0.0 and np.all(to_numpy(grad) == 0)
    nopts = {k: v for k, v in dopts.items() if k != "label_smoothing"}
    assert float(to_numpy(api(device).nll_loss(dx, dt, **nopts))) == 0.0
    assert np.all(to_numpy(api(device).nll_loss_backward(1.0, dx, dt, **nopts)) == 0)
    # a zero total weight from zero class weights behaves the same way
    t2 = to_device(np.zeros(5, np.int64), device)
    w0 = to_device(np.r_[0.0, np.ones(8)], device)
    assert float(to_numpy(api(device).cross_entropy(dx, t2, weight=w0))) == 0.0
    assert np.all(to_numpy(api(device).cross_entropy_backward(1.0, dx, t2, weight=w0)) == 0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(device, dtype, reduction):
    x = np.zeros((0, 5), dtype)
    t = np.zeros(0, np.int64)
    dx, dt = to_device(x, device), to_device(t, device)
    g = np.zeros(0, LOSS_DTYPE[np.dtype(dtype)]) if reduction == "none" else 1.0
    dg = to_device(g, device)
    want_shape = (0,) if reduction == "none" else ()
    for tgt in (dt, dx):  # index and probability targets
        loss = to_numpy(api(device).cross_entropy(dx, tgt, reduction=reduction))
        assert loss.shape == want_shape and np.all(loss == 0)
        grad = api(device).cross_entropy_backward(dg, dx, tgt, reduction=reduction)
        assert to_numpy(grad).shape == (0, 5)
        loss, grad = api(device).cross_entropy_with_grad(dx, tgt, reduction=reduction)
        assert to_numpy(loss).shape == want_shape and np.all(to_numpy(loss) == 0)
        assert to_numpy(grad).shape == (0, 5)
    loss, lse, am = api(device).cross_entropy(dx, dt, return_lse=True, return_argmax=True)
    assert to_numpy(lse).shape == (0,) and to_numpy(am).shape == (0,)
    if dtype != np.float16:
        assert np.all(to_numpy(api(device).nll_loss(dx, dt, reduction=reduction)) == 0)
        assert to_numpy(api(device).nll_loss_backward(dg, dx, dt, reduction=reduction)).shape \
            == (0, 5)
        assert to_numpy(api(device).softmax(dx)).shape == (0, 5)
        assert to_numpy(api(device).log_softmax_backward(dx, dx)).shape == (0, 5)
        assert np.all(to_numpy(api(device).mse_loss(dx, dx, reduction=reduction)) == 0)
    # the class axis first: an empty batch along axis 1
    y = np.zeros((5, 0), dtype)
    assert to_numpy(api(device).cross_entropy(to_device(y, device), dt, axis=0,
                                          reduction=reduction)).shape == want_shape


# ----------------------------------------------------------------------------- identities


@given(case=ce_cases(dtypes=("float32", "float64"), prob_ok=False, smoothing=False,
                         lm_options=False))
def test_cross_entropy_is_nll_of_log_softmax(device, case):
    """The seed's identity: cross_entropy(x, y) == nll_loss(log_softmax(x), y), and for the
    gradients cross_entropy_backward == log_softmax_backward(nll_loss_backward(...))."""
    x, target, opts, layout = case
    axis = opts["axis"]
    dx, dt = place(x, layout, device), place(target, layout, device)
    dopts = on_device(opts, device)
    g = upstream(np.random.default_rng(7), opts, row_shape(x.shape, axis), x.dtype)
    dg = to_device(g, device)
    S_loss, S_grad, _ = ce_scales(x, target, opts, g)
    logp = api(device).log_softmax(dx, axis)
    check(api(device).cross_entropy(dx, dt, **dopts), to_numpy(api(device).nll_loss(logp, dt, **dopts)),
          x.dtype, S_loss, "loss identity")
    via_nll = api(device).log_softmax_backward(api(device).nll_loss_backward(dg, logp, dt, **dopts),
                                           logp, axis)
    check(api(device).cross_entropy_backward(dg, dx, dt, **dopts), to_numpy(via_nll), x.dtype,
          S_grad, "gradient identity")


# ----------------------------------------------------------------------------- nll


@given(case=ce_cases(prob_ok=False, smoothing=False, lm_options=False))
def test_nll_loss(device, case):
    x, target, opts, layout = case
    dx, dt = place(x, layout, device), place(target, layout, device)
    dopts = on_device(opts, device)
    g = upstream(np.random.default_rng(8), opts, row_shape(x.shape, opts["axis"]), x.dtype)
    S_loss, S_grad, _ = ce_scales(x, target, opts, g)
    loss = api(device).nll_loss(dx, dt, **dopts)
    assert is_device_array(loss, device) and to_numpy(loss).dtype == LOSS_DTYPE[x.dtype]
    check(loss, ref.nll_loss(x, target, **opts), x.dtype, S_loss, "nll loss")
    want = ref.nll_loss_backward(g, x, target, **opts)
    grad = api(device).nll_loss_backward(to_device(g, device), dx, dt, **dopts)
    assert to_numpy(grad).dtype == x.dtype
    check(grad, want, x.dtype, S_grad, "nll grad")
    out = to_device(np.full(x.shape, 3.0, x.dtype), device)
    assert api(device).nll_loss_backward(to_device(g, device), dx, dt, out=out, **dopts) is out
    check(out, want, x.dtype, S_grad, "nll grad out=")
    unchanged(dx, x)
    unchanged(dt, target)


# ----------------------------------------------------------------------------- softmax


@given(arr=logits_arrays(), layout=LAYOUTS, use_out=st.booleans())
def test_softmax_and_log_softmax(device, arr, layout, use_out):
    x, axis, rng = arr
    dx = place(x, layout, device)
    for f, rf in ((api(device).softmax, ref.softmax), (api(device).log_softmax, ref.log_softmax)):
        out = to_device(np.full(x.shape, 5.0, x.dtype), device) if use_out else None
        y = f(dx, axis, out=out)
        if use_out:
            assert y is out
        assert is_device_array(y, device) and to_numpy(y).dtype == x.dtype
        check(y, rf(x, axis), x.dtype, magnitude(x, axis), f.__name__)
    unchanged(dx, x)


@given(arr=logits_arrays(), layout=LAYOUTS, use_out=st.booleans())
def test_softmax_backward_and_log_softmax_backward(device, arr, layout, use_out):
    x, axis, rng = arr
    g = rng.standard_normal(x.shape).astype(x.dtype)
    for fwd, f, rf in ((ref.softmax, api(device).softmax_backward, ref.softmax_backward),
                       (ref.log_softmax, api(device).log_softmax_backward,
                        ref.log_softmax_backward)):
        y = fwd(x, axis)
        dy, dg = place(y, layout, device), place(g, layout, device)
        out = to_device(np.full(x.shape, 5.0, x.dtype), device) if use_out else None
        dxg = f(dg, dy, axis, out=out)
        if use_out:
            assert dxg is out
        assert to_numpy(dxg).dtype == x.dtype
        # the row sum of C products g*y (or of g) is rounded: scale by max|g| (|x| + sqrt C)
        S = magnitude(x, axis) * (float(np.abs(g).max()) if g.size else 1.0)
        check(dxg, rf(g, y, axis), x.dtype, S, f.__name__)
        unchanged(dy, y)
        unchanged(dg, g)


# ----------------------------------------------------------------------------- mse


@given(arr=logits_arrays(big_ok=False), layout=LAYOUTS, reduction=st.sampled_from(REDUCTIONS))
def test_mse(device, arr, layout, reduction):
    p, _, rng = arr
    y = rng.standard_normal(p.shape).astype(p.dtype)
    dp, dy = place(p, layout, device), place(y, layout, device)
    loss = api(device).mse_loss(dp, dy, reduction=reduction)
    assert is_device_array(loss, device) and to_numpy(loss).dtype == LOSS_DTYPE[p.dtype]
    check(loss, ref.mse_loss(p, y, reduction=reduction), p.dtype, None, "mse")
    g = rng.uniform(0.5, 1.5, p.shape).astype(LOSS_DTYPE[p.dtype]) if reduction == "none" \
        else 0.5
    want = ref.mse_loss_backward(g, p, y, reduction=reduction)
    grad = api(device).mse_loss_backward(to_device(g, device), dp, dy, reduction=reduction)
    assert to_numpy(grad).dtype == p.dtype
    check(grad, want, p.dtype, None, "mse grad")
    out = to_device(np.zeros(p.shape, p.dtype), device)
    assert api(device).mse_loss_backward(to_device(g, device), dp, dy, reduction=reduction,
                                     out=out) is out
    check(out, want, p.dtype, None, "mse out=")
    unchanged(dp, p)
    unchanged(dy, y)


# ----------------------------------------------------------------------------- C > 65536


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_large_class_count(device, dtype):
    rng = np.random.default_rng(9)
    C = 100_003
    x = (rng.standard_normal((2, C)) * 4).astype(dtype)
    t = np.array([5, C - 1])
    w = rng.uniform(0.5, 2, C).astype(LOSS_DTYPE[np.dtype(dtype)])
    opts = dict(weight=w, label_smoothing=0.1, reduction="none")
    dx, dt = to_device(x, device), to_device(t, device)
    dopts = on_device(opts, device)
    g = np.ones(2, LOSS_DTYPE[np.dtype(dtype)])
    S_loss, S_grad, S_lse = ce_scales(x, t, opts, g)
    loss, grad, lse, am = api(device).cross_entropy_with_grad(dx, dt, return_lse=True,
                                                          return_argmax=True, **dopts)
    wl, wg, wlse, wam = ref.cross_entropy_with_grad(x, t, return_lse=True, return_argmax=True,
                                                    **opts)
    check(loss, wl, dtype, S_loss, "loss")
    check(grad, wg, dtype, S_grad, "grad")
    check(lse, wlse, dtype, S_lse, "lse")
    np.testing.assert_array_equal(to_numpy(am), wam)
    check(api(device).cross_entropy_backward(to_device(g, device), dx, dt, **dopts), wg, dtype,
          S_grad, "backward")
    if dtype != np.float16:
        check(api(device).softmax(dx), ref.softmax(x), dtype, magnitude(x, -1), "softmax")


# ----------------------------------------------------------------------------- threads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4096, 10), (257, 1000), (3, 70001)])
def test_thread_count_independence(dtype, shape):
    """One thread and two threads give the same results up to float rounding.

    Per-row values (loss "none", lse, gradients, softmax) can only differ if a row is split
    between threads and its sum regrouped: a few ulps. A reduced loss may be summed over the
    rows in another order: for N terms of one sign that moves it by at most ~log2(N) ulps
    with pairwise/blocked sums, ~N ulps naively (never reached for random data). So rtol
    1e-5 (float32, ~100 ulps) / 1e-12 (float64). A threading bug (a row skipped, done twice
    or raced) is off by O(1/N) relative or worse. argmax must be identical.
    """
    rng = np.random.default_rng(10)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    t[::7] = -100
    w = rng.uniform(0.5, 2, shape[1]).astype(dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    before = fusedce.get_num_threads()

    def run():
        out = []
        for red in REDUCTIONS:
            out += list(fusedce.cross_entropy_with_grad(x, t, weight=w, reduction=red,
                                                        label_smoothing=0.1,
                                                        return_lse=True, return_argmax=True))
        out.append(fusedce.cross_entropy(x, t, reduction="sum"))
        out.append(fusedce.cross_entropy_backward(1.0, x, t))
        out.append(fusedce.softmax(x))
        out.append(fusedce.log_softmax_backward(x, x))
        out.append(fusedce.nll_loss(x, t, reduction="mean"))
        out.append(fusedce.mse_loss(x, x[::-1], reduction="sum"))
        return out

    try:
        fusedce.set_num_threads(1)
        assert fusedce.get_num_threads() == 1
        one = run()
        fusedce.set_num_threads(2)
        assert fusedce.get_num_threads() == 2
        two = run()
    finally:
        fusedce.set_num_threads(before)
    for i, (a, b) in enumerate(zip(one, two)):
        if a.dtype.kind == "i":
            np.testing.assert_array_equal(a, b, err_msg=f"result {i}")
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=0, err_msg=f"result {i}")


# ----------------------------------------------------------------------------- SIMD levels

# (rows longer than a vector and not a whole number of vectors end in a partial vector: 1003
# float64 and 1001 float16 at every width, 4099 and 70001 float32 at 8 and 16 lanes)
SIMD_CASES = [((5, 1), np.float32), ((5, 7), np.float32), ((9, 16), np.float64),
              ((4, 33), np.float32), ((3, 1003), np.float64), ((2, 4099), np.float32),
              ((6, 31), np.float16), ((5, 1001), np.float16), ((3, 70001), np.float32)]


@pytest.mark.parametrize("shape,dtype", SIMD_CASES,
                         ids=[f"{s[0]}x{s[1]}-{np.dtype(d).name}" for s, d in SIMD_CASES])
def test_every_simd_level(simd_level, shape, dtype):
    assert fusedce.simd_level() == simd_level
    rng = np.random.default_rng(11)
    C = shape[1]
    cdt = LOSS_DTYPE[np.dtype(dtype)]
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    masked = x.copy()
    if C > 1:
        masked[0, 1:C:2] = -np.inf  # class 0 stays finite
    t = rng.integers(0, C, shape[0])
    t[0] = 0
    t[-1] = -100
    q = rng.dirichlet(np.ones(C), shape[0]).astype(dtype)
    w = rng.uniform(0.5, 2, C).astype(cdt)
    cases = [(masked, t, dict(weight=w)), (masked, t, {}),
             (x, t, dict(weight=w, label_smoothing=0.2)), (x, q, dict(label_smoothing=0.1)),
             (x, q, dict(weight=w)),
             (masked, t, dict(weight=w, z_loss=0.01, softcap=2.0)),
             (x, t, dict(label_smoothing=0.1, z_loss=0.1, softcap=5.0)),
             (x, q, dict(weight=w, z_loss=0.01, softcap=3.0))]
    for red in REDUCTIONS:
        g = np.asarray(np.linspace(0.5, 1.5, shape[0]) if red == "none" else 0.8, cdt)
        for xx, tgt, opts in cases:
            opts = dict(opts, reduction=red)
            S_loss, S_grad, S_lse = ce_scales(xx, tgt, opts, g)
            what = f"{simd_level} {red} {'prob' if tgt is q else 'index'} {sorted(opts)}"
            loss, grad, lse, am = fusedce.cross_entropy_with_grad(
                xx, tgt, grad_loss=g, return_lse=True, return_argmax=True, **opts)
            wl, wg, wlse, wam = ref.cross_entropy_with_grad(
                xx, tgt, grad_loss=g, return_lse=True, return_argmax=True, **opts)
            check(loss, wl, dtype, S_loss, "fused loss " + what)
            check(grad, wg, dtype, S_grad, "fused grad " + what)
            check(lse, wlse, dtype, S_lse, "lse " + what)
            np.testing.assert_array_equal(am, wam, err_msg="argmax " + what)
            check(fusedce.cross_entropy(xx, tgt, **opts), wl, dtype, S_loss, "loss " + what)
            check(fusedce.cross_entropy_backward(g, xx, tgt, **opts), wg, dtype, S_grad,
                  "grad " + what)
        if dtype != np.float16:
            opts = dict(weight=w, reduction=red)
            S_loss, S_grad, _ = ce_scales(x, t, opts, g)
            check(fusedce.nll_loss(x, t, **opts), ref.nll_loss(x, t, **opts), dtype, S_loss,
                  "nll")
            check(fusedce.nll_loss_backward(g if red != "none" else g, x, t, **opts),
                  ref.nll_loss_backward(g, x, t, **opts), dtype, S_grad, "nll grad")
            check(fusedce.mse_loss(x, q, reduction=red), ref.mse_loss(x, q, reduction=red),
                  dtype, None, "mse")
    if dtype != np.float16:
        gg = rng.standard_normal(shape).astype(dtype)
        m = magnitude(x, -1)
        for f, rf in ((fusedce.softmax, ref.softmax), (fusedce.log_softmax, ref.log_softmax)):
            check(f(masked), rf(masked), dtype, m, f"{simd_level} {f.__name__}")
        for fwd, f, rf in ((ref.softmax, fusedce.softmax_backward, ref.softmax_backward),
                           (ref.log_softmax, fusedce.log_softmax_backward,
                            ref.log_softmax_backward)):
            y = fwd(x).astype(dtype)
            check(f(gg, y), rf(gg, y), dtype, m * float(np.abs(gg).max()),
                  f"{simd_level} {f.__name__}")
