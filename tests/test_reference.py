"""The NumPy reference checked on its own: its gradients against central finite differences
(float64), and its values against torch.nn.functional when torch is installed.

Two deliberate differences from PyTorch are not compared here but checked directly:
"mean" over a zero total weight gives 0.0 (PyTorch: NaN), and label_smoothing outside
[0, 1] is an error (PyTorch clamps negative values to 0). A consequence of api.md's "ignored
rows get a zero gradient" is a third: an ignored row with NaN or all -inf logits gets a zero
gradient where PyTorch's log_softmax backward gives NaN.
"""

import itertools

import numpy as np
import pytest

from fusedce import reference as ref
from conftest import need

REDUCTIONS = ["none", "sum", "mean"]


def numeric_grad(f, x, h=1e-6):
    """Central-difference gradient of the scalar function f at the float64 array x."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = f(x)
        x[i] = old - h
        down = f(x)
        x[i] = old
        g[i] = (up - down) / (2 * h)
    return g


def scalarise(loss, grad_loss):
    """The scalar whose gradient the backward computes: sum(grad_loss * loss)."""
    return float(np.sum(np.asarray(grad_loss) * np.asarray(loss, dtype=np.float64)))


def upstream(rng, reduction, row_shape):
    return rng.uniform(0.5, 1.5, size=row_shape) if reduction == "none" else 0.7


def check_fd(analytic, f, x):
    # h = 1e-6 central differences in float64: truncation ~h^2, rounding ~1e-16/h ~ 1e-10
    np.testing.assert_allclose(analytic, numeric_grad(f, x), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape,axis", [((6, 5), -1), ((3, 4, 2), 1), ((4, 3), 0)])
def test_fd_cross_entropy_index(reduction, shape, axis):
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape)
    C = shape[axis]
    row_shape = tuple(np.delete(shape, axis % len(shape)))
    t = rng.integers(0, C, size=row_shape)
    t.flat[0] = -1  # ignore_index=-1
    opts = dict(weight=rng.uniform(0.5, 2.0, C), ignore_index=-1, reduction=reduction,
                label_smoothing=0.2, axis=axis)
    g = upstream(rng, reduction, row_shape)
    analytic = ref.cross_entropy_backward(g, x, t, **opts)
    check_fd(analytic, lambda z: scalarise(ref.cross_entropy(z, t, **opts), g), x)
    assert np.all(np.moveaxis(analytic, axis, -1)[np.unravel_index(0, row_shape)] == 0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_fd_cross_entropy_probabilities(reduction, smoothing):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 4))
    q = rng.dirichlet(np.ones(4), size=5)
    opts = dict(weight=rng.uniform(0.5, 2.0, 4), reduction=reduction,
                label_smoothing=smoothing)
    g = upstream(rng, reduction, (5,))
    analytic = ref.cross_entropy_backward(g, x, q, **opts)
    check_fd(analytic, lambda z: scalarise(ref.cross_entropy(z, q, **opts), g), x)


def test_fd_cross_entropy_probabilities_axis0():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 3, 2))
    q = rng.dirichlet(np.ones(4), size=(3, 2)).transpose(2, 0, 1)
    analytic = ref.cross_entropy_backward(1.0, x, q, axis=0, label_smoothing=0.1)
    check_fd(analytic, lambda z: scalarise(ref.cross_entropy(z, q, axis=0,
                                                             label_smoothing=0.1), 1.0), x)


def test_fd_cross_entropy_backward_given_lse():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 6))
    t = rng.integers(0, 6, size=4)
    _, lse = ref.cross_entropy(x, t, return_lse=True)
    np.testing.assert_allclose(ref.cross_entropy_backward(1.0, x, t, lse=lse),
                               ref.cross_entropy_backward(1.0, x, t), rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fd_nll_loss(reduction):
    rng = np.random.default_rng(5)
    lp = rng.normal(size=(3, 5, 2))
    t = rng.integers(0, 5, size=(3, 2))
    t[1, 1] = 7  # ignore_index=7
    opts = dict(weight=rng.uniform(0.5, 2.0, 5), ignore_index=7, reduction=reduction, axis=1)
    g = upstream(rng, reduction, (3, 2))
    analytic = ref.nll_loss_backward(g, lp, t, **opts)
    check_fd(analytic, lambda z: scalarise(ref.nll_loss(z, t, **opts), g), lp)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_fd_softmax(axis):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 4, 5))
    g = rng.normal(size=x.shape)
    analytic = ref.softmax_backward(g, ref.softmax(x, axis), axis)
    check_fd(analytic, lambda z: float(np.sum(g * ref.softmax(z, axis))), x)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_fd_log_softmax(axis):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 4, 5))
    g = rng.normal(size=x.shape)
    analytic = ref.log_softmax_backward(g, ref.log_softmax(x, axis), axis)
    check_fd(analytic, lambda z: float(np.sum(g * ref.log_softmax(z, axis))), x)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fd_mse(reduction):
    rng = np.random.default_rng(8)
    p, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    g = upstream(rng, reduction, (4, 3))
    analytic = ref.mse_loss_backward(g, p, y, reduction=reduction)
    check_fd(analytic, lambda z: scalarise(ref.mse_loss(z, y, reduction=reduction), g), p)


# ----------------------------------------------------------------------------- own rules


def test_all_ignored_mean_is_zero():
    x = np.random.default_rng(9).normal(size=(3, 4))
    t = np.full(3, -100)
    assert ref.cross_entropy(x, t) == 0.0
    assert ref.nll_loss(x, t) == 0.0
    assert np.all(ref.cross_entropy_backward(1.0, x, t) == 0)
    assert np.all(ref.nll_loss_backward(1.0, x, t) == 0)
    empty = np.zeros((0, 4))
    assert ref.cross_entropy(empty, np.zeros(0, np.int64)) == 0.0
    assert ref.cross_entropy(empty, empty) == 0.0
    assert ref.mse_loss(empty, empty) == 0.0


@pytest.mark.parametrize("eps", [-0.1, 1.5])
def test_label_smoothing_out_of_range(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        ref.cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int64), label_smoothing=eps)


def test_dtypes():
    x = np.random.default_rng(10).normal(size=(3, 4))
    t = np.array([0, 1, 2])
    for dt, loss_dt in [(np.float16, np.float32), (np.float32, np.float32),
                        (np.float64, np.float64)]:
        loss, lse, am = ref.cross_entropy(x.astype(dt), t, return_lse=True, return_argmax=True)
        assert loss.dtype == loss_dt and lse.dtype == loss_dt and am.dtype == np.int64
        assert loss.shape == ()
        assert ref.cross_entropy_backward(1.0, x.astype(dt), t).dtype == dt
        assert ref.softmax(x.astype(dt)).dtype == dt


def test_ignored_nonfinite_rows_get_zero_gradient():
    x = np.array([[np.nan, 0.0], [-np.inf, -np.inf], [0.0, 1.0]])
    t = np.array([-100, -100, 0])
    for red in REDUCTIONS:
        g = np.ones(3) if red == "none" else 1.0
        grad = ref.cross_entropy_backward(g, x, t, reduction=red, label_smoothing=0.1)
        assert np.all(grad[:2] == 0) and np.all(np.isfinite(grad))
        assert np.all(ref.cross_entropy_backward(1.0, x[:2], t[:2]) == 0)


def test_masked_and_nan_rows():
    x = np.array([[0.0, -np.inf, 1.0], [np.nan, 0.0, 1.0], [-np.inf] * 3])
    t = np.array([2, 1, 0])
    loss = ref.cross_entropy(x, t, reduction="none")
    assert np.isfinite(loss[0]) and np.isnan(loss[1]) and np.isnan(loss[2])
    grad = ref.cross_entropy_backward(np.ones(3), x, t, reduction="none")
    assert grad[0, 1] == 0 and np.all(np.isfinite(grad[0]))


# ----------------------------------------------------------------------------- vs torch


def torch_functional():
    """torch.nn.functional, or a skip of the calling test. Called in the test's body, not
    in a fixture: pytest reports a skip from a fixture at each test's own line, and one
    from the body at the line of conftest.need, one line for all in `pytest -ra`."""
    return need("torch").nn.functional


def tt(a):
    import torch
    return torch.from_numpy(np.ascontiguousarray(a))


def close(ours, theirs):
    np.testing.assert_allclose(np.asarray(ours, np.float64), theirs.detach().numpy(),
                               rtol=1e-12, atol=1e-13)


CE_CASES = list(itertools.product(REDUCTIONS, [False, True], [0.0, 0.25, 1.0], [-100, 1]))


@pytest.mark.parametrize("reduction,weighted,eps,ignore", CE_CASES)
@pytest.mark.parametrize("shape", [(7, 5), (3, 5, 4)])
def test_torch_cross_entropy_index(reduction, weighted, eps, ignore, shape):
    F = torch_functional()
    import torch
    rng = np.random.default_rng(11)
    x = rng.normal(size=shape)
    row_shape = (shape[0],) + shape[2:]
    t = rng.integers(0, shape[1], size=row_shape)
    t.flat[::3] = ignore
    w = rng.uniform(0.5, 2.0, shape[1]) if weighted else None
    axis = 1 if len(shape) == 3 else -1
    opts = dict(weight=w, ignore_index=ignore, reduction=reduction, label_smoothing=eps)
    xt = tt(x).requires_grad_()
    theirs = F.cross_entropy(xt, tt(t), **{**opts, "weight": None if w is None else tt(w)})
    close(ref.cross_entropy(x, t, axis=axis, **opts), theirs)
    g = rng.uniform(0.5, 1.5, size=row_shape) if reduction == "none" else 0.7
    theirs.backward(tt(np.asarray(g, np.float64)) if reduction == "none" else
                    torch.tensor(g, dtype=torch.float64))
    close(ref.cross_entropy_backward(g, x, t, axis=axis, **opts), xt.grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.4])
@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 3)])
def test_torch_cross_entropy_probabilities(reduction, weighted, eps, shape):
    F = torch_functional()
    rng = np.random.default_rng(12)
    x = rng.normal(size=shape)
    q = np.moveaxis(rng.dirichlet(np.ones(4), size=(shape[0],) + shape[2:]), -1, 1)
    w = rng.uniform(0.5, 2.0, 4) if weighted else None
    axis = 1 if len(shape) == 3 else -1
    xt = tt(x).requires_grad_()
    theirs = F.cross_entropy(xt, tt(q), weight=None if w is None else tt(w),
                             reduction=reduction, label_smoothing=eps)
    opts = dict(weight=w, reduction=reduction, label_smoothing=eps, axis=axis)
    close(ref.cross_entropy(x, q, **opts), theirs)
    theirs.sum().backward()
    close(ref.cross_entropy_backward(np.ones(theirs.shape) if reduction == "none" else 1.0,
                                     x, q, **opts), xt.grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(7, 5), (3, 5, 4)])
def test_torch_nll_loss(reduction, weighted, shape):
    F = torch_functional()
    rng = np.random.default_rng(13)
    lp = rng.normal(size=shape)
    row_shape = (shape[0],) + shape[2:]
    t = rng.integers(0, shape[1], size=row_shape)
    t.flat[::4] = -100
    w = rng.uniform(0.5, 2.0, shape[1]) if weighted else None
    axis = 1 if len(shape) == 3 else -1
    lpt = tt(lp).requires_grad_()
    theirs = F.nll_loss(lpt, tt(t), weight=None if w is None else tt(w), reduction=reduction)
    close(ref.nll_loss(lp, t, weight=w, reduction=reduction, axis=axis), theirs)
    theirs.sum().backward()
    g = np.ones(row_shape) if reduction == "none" else 1.0
    close(ref.nll_loss_backward(g, lp, t, weight=w, reduction=reduction, axis=axis), lpt.grad)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_torch_softmax_and_log_softmax(axis):
    F = torch_functional()
    rng = np.random.default_rng(14)
    x = rng.normal(size=(3, 4, 5)) * 5
    x[0, 0, 0] = -np.inf
    close(ref.softmax(x, axis), F.softmax(tt(x), dim=axis))
    close(ref.log_softmax(x, axis), F.log_softmax(tt(x), dim=axis))
    g = rng.normal(size=x.shape)
    x[0, 0, 0] = 0.0
    for ours_f, ours_b, theirs_f in [(ref.softmax, ref.softmax_backward, F.softmax),
                                     (ref.log_softmax, ref.log_softmax_backward,
                                      F.log_softmax)]:
        xt = tt(x).requires_grad_()
        theirs_f(xt, dim=axis).backward(tt(g))
        close(ours_b(g, ours_f(x, axis), axis), xt.grad)


def test_torch_all_minus_inf_row_is_nan():
    F = torch_functional()
    x = np.array([[-np.inf, -np.inf], [0.0, 1.0]])
    np.testing.assert_array_equal(np.isnan(ref.log_softmax(x)),
                                  np.isnan(F.log_softmax(tt(x), dim=-1).numpy()))
    np.testing.assert_array_equal(np.isnan(ref.softmax(x)),
                                  np.isnan(F.softmax(tt(x), dim=-1).numpy()))


def test_torch_nan_and_inf_propagate():
    F = torch_functional()
    x = np.array([[0.0, np.nan, 1.0], [0.0, np.inf, 1.0], [0.0, -np.inf, 1.0]])
    t = np.array([0, 0, 2])
    ours = ref.cross_entropy(x, t, reduction="none")
    theirs = F.cross_entropy(tt(x), tt(t), reduction="none").numpy()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours[2], theirs[2], rtol=1e-14)


def test_torch_huge_logits():
    """|x| near float32 max: log_softmax is (x - max) - log sum, so log 2 is not lost."""
    F = torch_functional()
    import torch
    x = np.array([[3e38, 3e38, -3e38], [1e30, -1e30, 0.0]], np.float32)
    t = np.array([1, 0])
    xt = tt(x.astype(np.float64)).requires_grad_()
    theirs = F.cross_entropy(xt, tt(t), reduction="none")
    theirs.backward(torch.ones(2, dtype=torch.float64))
    np.testing.assert_allclose(ref.cross_entropy(x, t, reduction="none"),
                               theirs.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(ref.cross_entropy_backward(np.ones(2), x, t, reduction="none"),
                               xt.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ref.cross_entropy(x, t, reduction="none")[0], np.log(2))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_mse(reduction):
    F = torch_functional()
    rng = np.random.default_rng(15)
    p, y = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 3, 2))
    pt = tt(p).requires_grad_()
    theirs = F.mse_loss(pt, tt(y), reduction=reduction)
    close(ref.mse_loss(p, y, reduction=reduction), theirs)
    theirs.sum().backward()
    g = np.ones(p.shape) if reduction == "none" else 1.0
    close(ref.mse_loss_backward(g, p, y, reduction=reduction), pt.grad)


def test_torch_differences_are_deliberate():
    """The two places where we differ from PyTorch on purpose."""
    F = torch_functional()
    x, t = np.zeros((2, 3)), np.full(2, -100)
    assert np.isnan(F.cross_entropy(tt(x), tt(t)).item())
    assert ref.cross_entropy(x, t) == 0.0
    F.cross_entropy(tt(x), tt(np.zeros(2, np.int64)), label_smoothing=-0.1)  # no error there
    with pytest.raises(ValueError, match="label_smoothing"):
        ref.cross_entropy(x, np.zeros(2, np.int64), label_smoothing=-0.1)
