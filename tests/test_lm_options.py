"""The language-model options of the cross-entropy: z_loss and softcap.

The parity tests (test_parity.py) draw these options at random against fusedce.reference;
this file pins their meaning with formulas written out independently of that reference,
and covers the cases a random draw rarely hits (masked logits under a cap, the "mean"
denominators with class weights, the in-place paths, bad values, PyTorch autograd).
"""

import numpy as np
import pytest

import fusedce
import fusedce.reference as ref


def capped(x, c):
    return x if c is None else c * np.tanh(np.asarray(x, np.float64) / c)


def logsumexp(x):
    m = x.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]


def explicit(x, t, *, z, c, w=None, reduction="mean", ignore=-100):
    """Loss and gradient of  sum_rows w_t (lse - x_t) + z lse^2  with x capped first,
    "mean" dividing the first part by the weight of counted rows and the second by their
    number; written with NumPy only."""
    x = np.asarray(x, np.float64)
    xc = capped(x, c)
    N, C = x.shape
    w = np.ones(C) if w is None else np.asarray(w, np.float64)
    keep = t != ignore
    tt = np.where(keep, t, 0)
    lse = logsumexp(xc)
    wt = np.where(keep, w[tt], 0.0)
    ce = wt * (lse - xc[np.arange(N), tt])
    zl = np.where(keep, z * lse ** 2, 0.0)
    p = np.exp(xc - lse[:, None])
    onehot = np.zeros_like(x)
    onehot[np.arange(N), tt] = 1.0
    d_ce = wt[:, None] * (p - onehot)
    d_z = np.where(keep, 2 * z * lse, 0.0)[:, None] * p
    slope = 1.0 if c is None else 1.0 - (xc / c) ** 2
    if reduction == "none":
        return ce + zl, (d_ce + d_z) * slope
    if reduction == "sum":
        return ce.sum() + zl.sum(), (d_ce + d_z) * slope
    W, n = wt.sum(), keep.sum()
    return ce.sum() / W + zl.sum() / n, (d_ce / W + d_z / n) * slope


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("C", [7, 300, 5000])  # the few-classes path, one chunk, two chunks
@pytest.mark.parametrize("softcap", [None, 2.5])
def test_matches_the_formula(reduction, weighted, C, softcap):
    rng = np.random.default_rng(C)
    N = 40
    x = rng.standard_normal((N, C)) * 4
    t = rng.integers(0, C, N)
    t[::5] = -100
    w = rng.uniform(0.2, 3.0, C) if weighted else None
    want_loss, want_grad = explicit(x, t, z=0.05, c=softcap, w=w, reduction=reduction)
    kw = dict(weight=w, reduction=reduction, z_loss=0.05, softcap=softcap)
    for fn in (fusedce, ref):
        loss, grad = fn.cross_entropy_with_grad(x, t, **kw)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(fn.cross_entropy(x, t, **kw), want_loss, rtol=1e-12)
        np.testing.assert_allclose(fn.cross_entropy_backward(1.0, x, t, **kw), want_grad,
                                   rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("C", [9, 3000])
def test_softcap_is_capping_the_input_first(C):
    """Same loss and lse as capping the logits by hand; the gradient is the chain rule's."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((33, C)) * 20).astype(np.float32)
    t = rng.integers(0, C, 33)
    c = 15.0
    xc = capped(x, c).astype(np.float32)
    loss, grad, lse = fusedce.cross_entropy_with_grad(x, t, softcap=c, label_smoothing=0.1,
                                                      return_lse=True)
    want_loss, want_grad, want_lse = fusedce.cross_entropy_with_grad(
        xc, t, label_smoothing=0.1, return_lse=True)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6)
    np.testing.assert_allclose(lse, want_lse, rtol=2e-6)
    np.testing.assert_allclose(grad, want_grad * (1 - (xc / c) ** 2), atol=1e-7)


def test_softcap_gives_masked_logits_a_finite_value():
    """tanh(-inf) = -1: a -inf logit becomes -softcap, as in PyTorch's tanh; no NaN."""
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, 2.0, np.inf]])
    t = np.array([0, 1])
    loss, grad = fusedce.cross_entropy_with_grad(x, t, softcap=3.0, reduction="none")
    want_loss, want_grad = explicit(x, t, z=0.0, c=3.0, reduction="none")
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, atol=1e-15)
    # where tanh is flat (x = +-inf) the gradient is exactly 0
    assert grad[0, 1] == 0.0 and grad[1, 0] == 0.0 and grad[1, 2] == 0.0


def test_argmax_is_of_the_logits_as_given():
    # capped, 1e6 and 2e6 both round to softcap in float32; argmax still sees them apart
    x = np.array([[1e6, 2e6, 0.0]], np.float32)
    _, am = fusedce.cross_entropy(x, np.array([0]), softcap=1.0, return_argmax=True)
    assert am[0] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 20), (1100, 4000)])  # small path; streamed stores
def test_inplace_and_out_with_both_options(dtype, shape):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    t[1::7] = -100
    kw = dict(z_loss=1e-3, softcap=4.0, label_smoothing=0.05)
    want_loss, want_grad = ref.cross_entropy_with_grad(x, t, **kw)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    out = np.empty_like(x)
    loss, grad = fusedce.cross_entropy_with_grad(x, t, out=out, **kw)
    assert grad is out
    np.testing.assert_allclose(loss, want_loss, rtol=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=rtol * np.abs(want_grad).max())
    x2 = x.copy()
    loss, grad = fusedce.cross_entropy_with_grad(x2, t, inplace=True, **kw)
    assert np.shares_memory(grad, x2)
    np.testing.assert_allclose(loss, want_loss, rtol=rtol)
    np.testing.assert_allclose(x2, want_grad, rtol=rtol, atol=rtol * np.abs(want_grad).max())


def test_mean_over_zero_weight_is_zero_with_z_loss():
    x = np.ones((3, 4))
    t = np.array([1, 2, -100])
    w = np.zeros(4)
    loss, grad = fusedce.cross_entropy_with_grad(x, t, weight=w, z_loss=0.5)
    assert loss == 0.0 and not grad.any()
    loss, grad = ref.cross_entropy_with_grad(x, t, weight=w, z_loss=0.5)
    assert loss == 0.0 and not grad.any()


@pytest.mark.parametrize("fn", ["cross_entropy", "cross_entropy_with_grad"])
@pytest.mark.parametrize("name,value,error", [
    ("z_loss", -0.1, ValueError), ("z_loss", float("nan"), ValueError),
    ("z_loss", float("inf"), ValueError), ("z_loss", "0.1", TypeError),
    ("softcap", 0.0, ValueError), ("softcap", -1.0, ValueError),
    ("softcap", float("inf"), ValueError), ("softcap", float("nan"), ValueError),
    ("softcap", True, TypeError),
])
def test_bad_values_name_the_argument(fn, name, value, error):
    x = np.zeros((2, 3))
    with pytest.raises(error, match=name):
        getattr(fusedce, fn)(x, np.array([0, 1]), **{name: value})
    assert not x.any()


# ----------------------------------------------------------------------------- PyTorch


def torch_formula(torch, x, t, *, z, c, w=None, reduction="mean", eps=0.0):
    """PyTorch's own ops: F.cross_entropy of the capped logits plus the z-loss term."""
    F = torch.nn.functional
    xc = x if c is None else c * torch.tanh(x / c)
    ce = F.cross_entropy(xc, t, weight=w, reduction="none", label_smoothing=eps)
    keep = t != -100
    lse = torch.logsumexp(xc, 1)
    zl = torch.where(keep, z * lse ** 2, torch.zeros_like(lse))
    if reduction == "none":
        return ce + zl
    if reduction == "sum":
        return ce.sum() + zl.sum()
    W = (w[t.clamp(min=0)] * keep).sum() if w is not None else keep.sum()
    return ce.sum() / W + zl.sum() / keep.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_torch_matches_pytorch_ops(reduction, weighted):
    torch = pytest.importorskip("torch")
    import fusedce.torch as ft
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(24, 50, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randint(0, 50, (24,), generator=g)
    t[::4] = -100
    w = torch.rand(50, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    kw = dict(z=0.02, c=4.0, w=w, reduction=reduction, eps=0.1)
    got = ft.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=0.1,
                           z_loss=0.02, softcap=4.0)
    want = torch_formula(torch, x, t, **kw)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    ga, = torch.autograd.grad(got.sum(), x)
    gb, = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-14)


def test_torch_gradcheck_and_module():
    torch = pytest.importorskip("torch")
    import fusedce.torch as ft
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 5, -100, 2, 3])
    assert torch.autograd.gradcheck(
        lambda x: ft.cross_entropy(x, t, reduction="none", z_loss=0.1, softcap=2.0), (x,))
    q = torch.softmax(torch.randn(5, 6, generator=g, dtype=torch.float64), 1).requires_grad_()
    assert torch.autograd.gradcheck(  # also d loss / d q through the capped log-softmax
        lambda x, q: ft.cross_entropy(x, q, z_loss=0.1, softcap=2.0), (x, q))
    loss_fn = ft.CrossEntropyLoss(z_loss=1e-4, softcap=30.0)
    assert "z_loss=0.0001" in repr(loss_fn) and "softcap=30.0" in repr(loss_fn)
    torch.testing.assert_close(loss_fn(x, t), ft.cross_entropy(x, t, z_loss=1e-4, softcap=30.0))
    with pytest.raises(ValueError, match="softcap"):
        ft.CrossEntropyLoss(softcap=-1.0)
    with pytest.raises(ValueError, match="z_loss"):
        ft.cross_entropy(x, t, z_loss=float("nan"))
