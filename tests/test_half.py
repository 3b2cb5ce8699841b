"""float16 and bfloat16 read and written natively by the CPU kernels (csrc/cpu/half.h).

A half input is widened to float32 as it is loaded and every result is rounded once as it
is stored, so a kernel given half rows must return exactly what the same kernel returns for
those rows converted to float32, rounded once to the half type: bit for bit, on every path
(few classes, chunked rows, given lse, in place) and at every SIMD level. The conversions
themselves are checked against NumPy's float16 and ml_dtypes' bfloat16 on every bit
pattern and on the rounding cases.
"""

import numpy as np
import pytest

from conftest import need

ml_dtypes = need("ml_dtypes")

import fusedce  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALVES = [F16, BF16]
IDS = ["float16", "bfloat16"]


def bits(a):
    return np.ascontiguousarray(a).view(np.uint16)


def same_bits(got, want, what):
    """Equal bit for bit, except that any NaN matches any NaN."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    nan = np.isnan(want.astype(np.float32))
    assert np.array_equal(np.isnan(got.astype(np.float32)), nan), f"{what}: NaN positions"
    g, w = got[~nan], want[~nan]
    if g.dtype.itemsize == 2:
        g, w = bits(g), bits(w)
    bad = np.flatnonzero(g != w)
    assert bad.size == 0, f"{what}: {bad.size} values differ, first at {bad[:5]}: {g[bad[:5]]} != {w[bad[:5]]}"


# ----------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_every_bit_pattern_survives_a_round_trip(simd_level, dtype):
    """mse's gradient with a zero target and a factor of 1/2 is the prediction itself:
    widened, multiplied by 1, rounded back. Every one of the 65536 patterns (both zeros,
    subnormals, the largest values, infinities) must come back unchanged, NaN as a NaN."""
    x = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(dtype).reshape(256, 256)
    got = fusedce.mse_loss_backward(0.5, x, np.zeros_like(x), reduction="sum")
    same_bits(got, x, f"{simd_level} {dtype}")


def _rounding_cases(dtype):
    """float32 values that exercise rounding to `dtype`: random bit patterns over the whole
    range, exact ties and their neighbours, the overflow and subnormal boundaries."""
    rng = np.random.default_rng(5)
    rand = rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    rand = rand[np.isfinite(rand)]
    # halfway between consecutive values of dtype, and one float32 ulp either side
    lo = rng.integers(0, 0x7c00 if dtype == F16 else 0x7f80, 1500, dtype=np.uint32).astype(np.uint16)
    a = lo.view(dtype).astype(np.float64)
    b = (lo + 1).view(dtype).astype(np.float64)
    mid = ((a + b) / 2).astype(np.float32)
    ties = np.concatenate([mid, np.nextafter(mid, np.float32(np.inf)),
                           np.nextafter(mid, np.float32(-np.inf))])
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.996, 65520, 65536,
                        6.1035156e-05, 6.0975552e-05, 5.9604645e-08, 2.9802322e-08,
                        2.9802326e-08, 1e-30, 1e-45, 3.3895314e38, 3.4028235e38],
                       np.float32)
    values = np.concatenate([rand, ties, special, -special])
    return values[np.isfinite(values) | np.isnan(values) | np.isinf(values)]


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_rounding_matches_numpy_and_ml_dtypes(simd_level, dtype):
    """Results are rounded to nearest, ties to even, as NumPy (float16) and ml_dtypes
    (bfloat16) round; checked on the scalar path (nll's gradient: -w_t g, g a float32 per
    row) and on the vector path (mse's gradient: (2 (p - t)) g, computed in float32)."""
    v = _rounding_cases(dtype)
    n = v.size
    # scalar: one class, target 0, weight 1, upstream factor -v per row
    logp = np.zeros((n, 1), dtype)
    got = fusedce.nll_loss_backward(-v, logp, np.zeros(n, np.int64), reduction="none")
    with np.errstate(over="ignore"):  # values beyond the half type's range round to inf
        want = v.astype(dtype)
    same_bits(got[:, 0], want, f"{simd_level} scalar {dtype}")
    # vector: rows of 37 classes (vectors and tails), products of three half values
    rng = np.random.default_rng(6)
    shape = (60, 37)
    p, t, g = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    p[0, :5] = np.array([np.nan, np.inf, -np.inf, 60000, -60000]).astype(dtype)
    got = fusedce.mse_loss_backward(g, p, t, reduction="none")
    p32, t32, g32 = (a.astype(np.float32) for a in (p, t, g))
    with np.errstate(over="ignore", invalid="ignore"):
        want = ((np.float32(2) * (p32 - t32)) * g32).astype(dtype)
    same_bits(got, want, f"{simd_level} vector {dtype}")


# ----------------------------------------------------------------------------- the ops

# (rows, classes): the few-classes path (blocks of rows and a tail), short rows, rows of
# several chunks (4096 classes each) with a ragged end
SHAPES = [(37, 7), (19, 48), (35, 90), (9, 300), (5, 4099), (3, 9000)]
CE_OPTIONS = [dict(), dict(weight=True, label_smoothing=0.1), dict(z_loss=1e-3, softcap=7.0),
              dict(probs=True, weight=True), dict(reduction="none", label_smoothing=0.05)]


def _case(shape, dtype, opts, seed=0):
    rng = np.random.default_rng(seed)
    n, c = shape
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    x[0, 1::3] = -np.inf  # masked classes
    kw = {k: v for k, v in opts.items() if k not in ("probs", "weight")}
    if opts.get("weight"):
        kw["weight"] = (rng.random(c) + 0.5).astype(np.float32)
    if opts.get("probs"):
        t = rng.random(shape)
        t = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        t = rng.integers(0, c, n)
        t[::5] = -100
        t[1] = 0  # a masked row's target on a finite logit
    return x, t, kw


def _as_float32(t):
    return t.astype(np.float32) if t.dtype in (F16, BF16) else t


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cross_entropy_is_float32_rounded_once(simd_level, dtype, shape):
    for i, opts in enumerate(CE_OPTIONS):
        x, t, kw = _case(shape, dtype, opts, seed=i)
        x32, t32 = x.astype(np.float32), _as_float32(t)
        what = f"{simd_level} {dtype} {shape} {opts}"
        g = np.linspace(0.5, 1.5, shape[0]).astype(np.float32) if kw.get("reduction") == "none" else 0.7
        loss, grad, lse, am = fusedce.cross_entropy_with_grad(
            x, t, grad_loss=g, return_lse=True, return_argmax=True, **kw)
        l32, g32, lse32, am32 = fusedce.cross_entropy_with_grad(
            x32, t32, grad_loss=g, return_lse=True, return_argmax=True, **kw)
        same_bits(loss, l32, "loss " + what)
        same_bits(lse, lse32, "lse " + what)
        assert np.array_equal(am, am32), "argmax " + what
        same_bits(grad, g32.astype(dtype), "grad " + what)
        # in place, the loss alone, and the backward given the forward's lse
        inplace = x.copy()
        l_in, g_in = fusedce.cross_entropy_with_grad(inplace, t, grad_loss=g, inplace=True, **kw)
        assert g_in is inplace
        same_bits(g_in, g32.astype(dtype), "in-place grad " + what)
        same_bits(l_in, l32, "in-place loss " + what)
        same_bits(fusedce.cross_entropy(x, t, **kw), fusedce.cross_entropy(x32, t32, **kw),
                  "loss alone " + what)
        same_bits(fusedce.cross_entropy_backward(g, x, t, lse=lse, **kw),
                  fusedce.cross_entropy_backward(g, x32, t32, lse=lse32, **kw).astype(dtype),
                  "backward given lse " + what)


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_other_ops_are_float32_rounded_once(simd_level, dtype, shape):
    rng = np.random.default_rng(3)
    x, t, _ = _case(shape, dtype, {})
    x32 = x.astype(np.float32)
    w = (rng.random(shape[1]) + 0.5).astype(np.float32)
    what = f"{simd_level} {dtype} {shape}"
    for f in (fusedce.softmax, fusedce.log_softmax):
        same_bits(f(x), f(x32).astype(dtype), f"{f.__name__} {what}")
        y = f(x)
        gy = rng.standard_normal(shape).astype(dtype)
        back = getattr(fusedce, f.__name__ + "_backward")
        same_bits(back(gy, y), back(gy.astype(np.float32), y.astype(np.float32)).astype(dtype),
                  f"{f.__name__}_backward {what}")
    logp = fusedce.log_softmax(x)
    for red in ("none", "sum", "mean"):
        same_bits(fusedce.nll_loss(logp, t, weight=w, reduction=red),
                  fusedce.nll_loss(logp.astype(np.float32), t, weight=w, reduction=red),
                  f"nll {red} {what}")
        g = np.linspace(0.5, 1.5, shape[0]).astype(np.float32) if red == "none" else 0.7
        same_bits(fusedce.nll_loss_backward(g, logp, t, weight=w, reduction=red),
                  fusedce.nll_loss_backward(g, logp.astype(np.float32), t, weight=w,
                                            reduction=red).astype(dtype),
                  f"nll backward {red} {what}")
    finite = np.where(np.isfinite(x), x, 0).astype(dtype)
    q = rng.standard_normal(shape).astype(dtype)
    for red in ("none", "sum", "mean"):
        same_bits(fusedce.mse_loss(finite, q, reduction=red),
                  fusedce.mse_loss(finite.astype(np.float32), q.astype(np.float32), reduction=red),
                  f"mse {red} {what}")


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_half_results_and_their_dtypes(dtype):
    """Losses, lse and per-row statistics come back in float32, gradients and softmax in
    the input's dtype; the values are close to the float64 reference."""
    import fusedce.reference as ref
    x, t, _ = _case((6, 50), dtype, {})
    loss, grad = fusedce.cross_entropy_with_grad(x, t)
    assert loss.dtype == np.float32 and grad.dtype == dtype
    assert fusedce.softmax(x).dtype == dtype
    assert fusedce.cross_entropy(x, t, reduction="none").dtype == np.float32
    want_loss, want_grad = ref.cross_entropy_with_grad(x, t)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    rtol = 2 ** -10 if dtype == F16 else 2 ** -7  # a rounding of the half type
    np.testing.assert_allclose(grad.astype(np.float64), np.asarray(want_grad, np.float64),
                               rtol=rtol, atol=1e-7)


# ----------------------------------------------------------------------------- PyTorch


def test_torch_bfloat16_cpu_tensors_are_read_in_place():
    """fusedce.torch takes bfloat16 CPU tensors without a float32 copy: in place, the
    gradient is written into the tensor's own storage; values equal float32 rounded once."""
    torch = need("torch")
    import fusedce.torch as ft
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(64, 1000, generator=g)).to(torch.bfloat16)
    t = torch.randint(0, 1000, (64,), generator=g)
    t[::7] = -100
    x32 = x.float().requires_grad_(True)
    ref_loss = ft.cross_entropy(x32, t)
    ref_loss.backward()
    xb = x.clone().requires_grad_(True)
    loss = ft.cross_entropy(xb, t)
    assert loss.dtype == torch.bfloat16
    loss.backward()
    assert xb.grad.dtype == torch.bfloat16
    assert torch.equal(xb.grad, x32.grad.to(torch.bfloat16))
    assert loss.item() == ref_loss.to(torch.bfloat16).item()
    # inplace=True: the forward writes the gradient over the (non-leaf) logits' storage
    leaf = x.clone().requires_grad_(True)
    logits = leaf * 1
    ptr = logits.data_ptr()
    loss_in = ft.cross_entropy(logits, t, inplace=True)
    assert logits.data_ptr() == ptr
    assert torch.equal(logits.detach(), x32.grad.to(torch.bfloat16))
    assert loss_in.item() == loss.item()
    loss_in.backward()
    assert torch.equal(leaf.grad, xb.grad)


def test_numpy_api_takes_no_torch_cpu_tensor_but_fusedce_torch_takes_bfloat16():
    torch = need("torch")
    x = torch.zeros(2, 3, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="logits is a PyTorch CPU tensor"):
        fusedce.cross_entropy(x, torch.tensor([0, 1]))
