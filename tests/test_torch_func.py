"""fusedce.torch under torch.func transforms, forward-mode AD and second derivatives.

PyTorch's custom operators (which run fusedce's kernels) give no derivatives there, or
wrong ones without a word (a zero tangent under jvp, a constant gradient under
create_graph=True). fusedce.torch computes such calls with PyTorch's own operations
(python/fusedce/_torch_composite.py) and refuses the one it cannot honour (an eager second
derivative of the fused losses). The derivatives here are checked against the kernels'
own first derivatives (eager autograd), against PyTorch's functions where the conventions
agree, and against finite differences of the kernels' gradient.
"""

import math

import pytest

from conftest import need

torch = need("torch")
import torch.nn.functional as F  # noqa: E402

import fusedce.torch as ft  # noqa: E402

C = 6


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _eager_grad(fn, x):
    """Loss and d loss / d x by eager autograd: the kernels' forward and backward."""
    xi = x.detach().clone().requires_grad_()
    loss = fn(xi)
    (g,) = torch.autograd.grad(loss, xi)
    return loss.detach(), g


def _index_target(rows_shape, seed, ignore=True):
    t = torch.randint(0, C, rows_shape, generator=_gen(seed))
    if ignore:
        t.view(-1)[::4] = -100
    return t


# The option sets the composite path must reproduce (the kernels' conventions)
OPTIONS = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(weight="w"),
    dict(weight="w", label_smoothing=0.2),
    dict(label_smoothing=1.0, reduction="sum"),
    dict(z_loss=0.01),
    dict(z_loss=0.01, reduction="none", weight="w"),
    dict(softcap=2.5),
    dict(softcap=2.5, z_loss=0.05, label_smoothing=0.1, weight="w"),
]


def _opts(options, dtype=torch.float64):
    o = dict(options)
    if o.get("weight") == "w":
        o["weight"] = torch.rand(C, generator=_gen(5), dtype=dtype) + 0.5
    return o


def _scalar(loss):
    """A scalar function of a loss of any reduction, with row factors that differ."""
    if loss.dim() == 0:
        return loss
    f = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    return (loss * f).sum()


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("shape", [(9, C), (4, C, 3), (C,)], ids=str)
def test_func_grad_matches_the_kernels(options, shape):
    x = 3 * torch.randn(shape, generator=_gen(1), dtype=torch.float64)
    rows = shape[:1] + shape[2:] if len(shape) > 1 else ()
    t = _index_target(rows, 2, ignore=len(shape) > 1)
    o = _opts(options)

    def f(z):
        return _scalar(ft.cross_entropy(z, t, **o))

    want_loss, want_grad = _eager_grad(f, x)
    grad, loss = torch.func.grad_and_value(f)(x)
    torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("options", [dict(), dict(weight="w", label_smoothing=0.3),
                                     dict(z_loss=0.02, softcap=3.0, reduction="none")], ids=str)
def test_func_grad_with_probability_targets(options):
    x = 2 * torch.randn(7, C, generator=_gen(3), dtype=torch.float64)
    q = torch.softmax(torch.randn(7, C, generator=_gen(4), dtype=torch.float64), 1)
    q[0] = torch.nn.functional.one_hot(torch.tensor(2), C)  # zeros among the coefficients
    o = _opts(options)

    def f(z, p):
        return _scalar(ft.cross_entropy(z, p, **o))

    xe, qe = x.clone().requires_grad_(), q.clone().requires_grad_()
    want = torch.autograd.grad(f(xe, qe), (xe, qe))
    got = torch.func.grad(f, argnums=(0, 1))(x, q)
    for g, w, what in zip(got, want, ("logits", "target")):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=what)


def test_fusedce_conventions_hold_under_transforms():
    """Masked (-inf) logits, NaN logits on ignored rows and a mean over zero weight give
    what the kernels give: finite values, zero gradients, 0.0."""
    x = torch.randn(5, C, generator=_gen(6), dtype=torch.float64)
    x[0, 3] = -math.inf
    x[1] = math.nan
    t = torch.tensor([1, -100, 2, 0, 5])

    def f(z):
        return ft.cross_entropy(z, t, label_smoothing=0.0)

    want_loss, want_grad = _eager_grad(f, x)
    grad, loss = torch.func.grad_and_value(f)(x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    assert torch.all(grad[1] == 0)
    all_ignored = torch.full((5,), -100)
    g0, l0 = torch.func.grad_and_value(lambda z: ft.cross_entropy(z, all_ignored))(x)
    assert float(l0) == 0.0 and torch.all(g0 == 0)


def test_vmap_of_grad_gives_per_sample_gradients():
    x = torch.randn(8, 5, C, generator=_gen(7))
    t = _index_target((8, 5), 8)
    w = torch.rand(C, generator=_gen(9)) + 0.5

    def per_sample(z, y):
        return ft.cross_entropy(z, y, weight=w, label_smoothing=0.1)

    got = torch.func.vmap(torch.func.grad(per_sample))(x, t)
    for i in range(8):
        _, want = _eager_grad(lambda z: per_sample(z, t[i]), x[i])
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [dict(), dict(softcap=2.0, z_loss=0.1, weight="w")],
                         ids=str)
def test_jvp_and_forward_ad_give_the_directional_derivative(options):
    """The tangent of the loss is <gradient, direction> (it came out as 0 before)."""
    x = torch.randn(6, C, generator=_gen(10), dtype=torch.float64)
    v = torch.randn(6, C, generator=_gen(11), dtype=torch.float64)
    t = _index_target((6,), 12)
    o = _opts(options)

    def f(z):
        return ft.cross_entropy(z, t, **o)

    _, g = _eager_grad(f, x)
    want = (g * v).sum()
    _, tangent = torch.func.jvp(f, (x,), (v,))
    torch.testing.assert_close(tangent, want, rtol=1e-10, atol=1e-12)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, v)
        tangent = torch.autograd.forward_ad.unpack_dual(f(dual)).tangent
    assert tangent is not None
    torch.testing.assert_close(tangent, want, rtol=1e-10, atol=1e-12)
    jac = torch.func.jacfwd(f)(x)
    torch.testing.assert_close(jac, g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("options", [dict(weight="w", label_smoothing=0.2),
                                     dict(softcap=1.5, z_loss=0.3, reduction="sum")], ids=str)
def test_hessian_matches_finite_differences_of_the_kernels(options):
    x = torch.randn(3, C, generator=_gen(13), dtype=torch.float64)
    t = torch.tensor([0, 4, 2])
    o = _opts(options)

    def f(z):
        return ft.cross_entropy(z, t, **o)

    hess = torch.func.hessian(f)(x).reshape(x.numel(), x.numel())
    h = 1e-5
    for k in range(x.numel()):
        e = torch.zeros(x.numel(), dtype=x.dtype)
        e[k] = h
        e = e.reshape(x.shape)
        column = (_eager_grad(f, x + e)[1] - _eager_grad(f, x - e)[1]) / (2 * h)
        torch.testing.assert_close(hess[:, k], column.reshape(-1), rtol=1e-6, atol=1e-8)


def test_hessian_matches_pytorch():
    x = torch.randn(4, C, generator=_gen(14), dtype=torch.float64)
    t = torch.tensor([0, 5, 3, 1])
    w = torch.rand(C, generator=_gen(15), dtype=torch.float64) + 0.5
    ours = torch.func.hessian(lambda z: ft.cross_entropy(z, t, weight=w, label_smoothing=0.1))(x)
    ref = torch.func.hessian(lambda z: F.cross_entropy(z, t, weight=w, label_smoothing=0.1))(x)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_half_and_single_precision_under_transforms(dtype):
    x = (2 * torch.randn(10, C, generator=_gen(16))).to(dtype)
    t = _index_target((10,), 17)

    def f(z):
        return ft.cross_entropy(z, t, z_loss=0.01)

    want_loss, want_grad = _eager_grad(f, x)
    grad, loss = torch.func.grad_and_value(f)(x)
    assert loss.dtype == grad.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # one rounding to the half type apart
    torch.testing.assert_close(loss.float(), want_loss.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(grad.float(), want_grad.float(), rtol=tol, atol=tol)


def test_inplace_under_a_transform_leaves_the_input_alone():
    x = torch.randn(5, C, generator=_gen(18))
    before = x.clone()
    t = _index_target((5,), 19)
    g = torch.func.grad(lambda z: ft.cross_entropy(z, t, inplace=True))(x)
    assert torch.equal(x, before)
    torch.testing.assert_close(g, _eager_grad(lambda z: ft.cross_entropy(z, t), x)[1])


def test_bad_input_under_transforms_raises_naming_the_argument():
    x = torch.randn(4, C)
    with pytest.raises(IndexError, match="target holds class index 6"):
        torch.func.grad(lambda z: ft.cross_entropy(z, torch.tensor([0, 1, 6, 2])))(x)
    with pytest.raises(IndexError, match="target holds class index -3"):  # a vmapped target
        torch.func.vmap(torch.func.grad(lambda z, y: ft.cross_entropy(z, y)))(
            x.reshape(2, 2, C), torch.tensor([[0, 1], [-3, 2]]))
    with pytest.raises(ValueError, match="target must have shape"):
        torch.func.grad(lambda z: ft.cross_entropy(z, torch.tensor([0, 1, 2])))(x)
    with pytest.raises(ValueError, match="weight must have shape"):
        torch.func.grad(lambda z: ft.cross_entropy(z, torch.tensor([0, 1, 2, 3]),
                                                   weight=torch.ones(C + 1)))(x)
    with pytest.raises(TypeError, match="target must hold class indices"):
        torch.func.grad(lambda z: ft.nll_loss(z, torch.tensor([0, 1, 2, 3]).to(torch.int16)))(x)
    with pytest.raises(ValueError, match="label_smoothing"):  # the wrapper's own checks
        torch.func.grad(lambda z: ft.cross_entropy(z, torch.tensor([0, 1, 2, 3]),
                                                   label_smoothing=2.0))(x)


def test_outside_transforms_the_kernels_still_run():
    x = torch.randn(4, C, requires_grad=True)
    loss = ft.cross_entropy(x, torch.tensor([0, 1, 2, 3]))
    assert "fusedce" in type(loss.grad_fn).__name__
    assert "fusedce" in type(ft.softmax(x, 1).grad_fn).__name__


@pytest.mark.parametrize("kind", ["index", "prob", "nll", "linear"])
def test_class_weights_that_require_grad_get_their_gradient(kind):
    """The kernels' backward has no class-weight gradient; such calls are computed with
    PyTorch's operations, checked against finite differences of the kernels' loss (and
    against PyTorch for probability targets, the case PyTorch differentiates)."""
    x = torch.randn(6, C, generator=_gen(32), dtype=torch.float64)
    h = torch.randn(6, 3, generator=_gen(33), dtype=torch.float64)
    lw = torch.randn(C, 3, generator=_gen(34), dtype=torch.float64)
    t = torch.tensor([0, 5, -100, 2, 2, 1])
    q = torch.softmax(torch.randn(6, C, generator=_gen(35), dtype=torch.float64), 1)
    w0 = torch.rand(C, generator=_gen(36), dtype=torch.float64) + 0.5
    loss_of = {
        "index": lambda w: ft.cross_entropy(x, t, weight=w, label_smoothing=0.1, z_loss=0.01),
        "prob": lambda w: ft.cross_entropy(x, q, weight=w),
        "nll": lambda w: ft.nll_loss(x, t, weight=w),
        "linear": lambda w: ft.linear_cross_entropy(h, lw, t, weight=w),
    }[kind]
    w = w0.clone().requires_grad_()
    loss_of(w).backward()
    assert w.grad is not None and w.grad.abs().max() > 0
    step = 1e-6
    for c in range(C):
        e = torch.zeros(C, dtype=torch.float64)
        e[c] = step
        fd = (loss_of(w0 + e) - loss_of(w0 - e)) / (2 * step)
        torch.testing.assert_close(w.grad[c], fd, rtol=1e-6, atol=1e-8)
    if kind == "prob":
        wr = w0.clone().requires_grad_()
        F.cross_entropy(x, q, weight=wr).backward()
        torch.testing.assert_close(w.grad, wr.grad)


# ------------------------------------------------------------------------------------------
# The other functions
# ------------------------------------------------------------------------------------------


def test_nll_loss_softmax_and_log_softmax_under_transforms():
    x = torch.randn(5, C, generator=_gen(20), dtype=torch.float64)
    t = _index_target((5,), 21)
    w = torch.rand(C, generator=_gen(22), dtype=torch.float64) + 0.5
    pairs = [
        (lambda z, y: ft.nll_loss(ft.log_softmax(z, 1), y, weight=w, reduction="sum"),
         lambda z, y: F.nll_loss(F.log_softmax(z, 1), y, weight=w, reduction="sum")),
        (lambda z, y: ft.softmax(z, 0)[:, 1:3], lambda z, y: F.softmax(z, 0)[:, 1:3]),
        (lambda z, y: ft.log_softmax(z, 1).sin(), lambda z, y: F.log_softmax(z, 1).sin()),
    ]
    for ours, ref in pairs:
        for transform in (torch.func.jacrev, torch.func.jacfwd):
            torch.testing.assert_close(transform(ours)(x, t), transform(ref)(x, t))
        # row by row (x[i] as a 1 x C batch)
        torch.testing.assert_close(torch.func.vmap(ours)(x[:, None], t[:, None]),
                                   torch.func.vmap(ref)(x[:, None], t[:, None]))


def test_linear_cross_entropy_under_transforms():
    h = torch.randn(7, 4, generator=_gen(23), dtype=torch.float64)
    lw = torch.randn(C, 4, generator=_gen(24), dtype=torch.float64)
    b = torch.randn(C, generator=_gen(25), dtype=torch.float64)
    t = _index_target((7,), 26)
    o = dict(linear_bias=b, z_loss=0.01, softcap=3.0, label_smoothing=0.1)

    def f(a, wt):
        return ft.linear_cross_entropy(a, wt, t, **o)

    he, we = h.clone().requires_grad_(), lw.clone().requires_grad_()
    want = torch.autograd.grad(f(he, we), (he, we))
    got = torch.func.grad(f, argnums=(0, 1))(h, lw)
    for g, w_ in zip(got, want):
        torch.testing.assert_close(g, w_, rtol=1e-10, atol=1e-12)
    v = torch.randn_like(h)
    _, tangent = torch.func.jvp(lambda a: f(a, lw), (h,), (v,))
    torch.testing.assert_close(tangent, (want[0] * v).sum(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="target must have shape"):
        torch.func.grad(lambda a: ft.linear_cross_entropy(a, lw, t[:3]))(h)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_vectorized_jacobians_of_the_kernels(reduction):
    """torch.autograd.functional.jacobian(vectorize=True) vmaps the kernels' backward over
    a batch of upstream gradients, which must not be read as values there."""
    x = torch.randn(4, C, generator=_gen(29), dtype=torch.float64)
    h = torch.randn(4, 3, generator=_gen(30), dtype=torch.float64)
    lw = torch.randn(C, 3, generator=_gen(31), dtype=torch.float64)
    t = torch.tensor([0, 5, -100, 2])
    pairs = [
        (lambda z: ft.cross_entropy(z, t, reduction=reduction, label_smoothing=0.1),
         lambda z: F.cross_entropy(z, t, reduction=reduction, label_smoothing=0.1), x),
        (lambda a: ft.linear_cross_entropy(a, lw, t, reduction=reduction),
         lambda a: F.cross_entropy(a @ lw.T, t, reduction=reduction), h),
    ]
    for ours, ref, arg in pairs:
        want = torch.autograd.functional.jacobian(ref, arg)
        for vectorize in (False, True):
            got = torch.autograd.functional.jacobian(ours, arg, vectorize=vectorize)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="batched"):
        torch.autograd.functional.jacobian(
            lambda z: ft.cross_entropy(z * 1.0, t, reduction=reduction, inplace=True), x,
            vectorize=True)


# ------------------------------------------------------------------------------------------
# Second derivatives in eager autograd
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cross_entropy", "linear_cross_entropy", "inplace"])
def test_eager_second_derivative_of_a_fused_loss_raises(name):
    x = torch.randn(4, C, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3])
    if name == "cross_entropy":
        loss = ft.cross_entropy(x, t)
    elif name == "inplace":
        loss = ft.cross_entropy(x * 1.0, t, inplace=True)
    else:
        loss = ft.linear_cross_entropy(x, torch.randn(C, C, dtype=torch.float64), t)
    with pytest.raises(RuntimeError, match="second derivatives are not available"):
        torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives are not available"):
        torch.autograd.gradgradcheck(lambda z: ft.cross_entropy(z, t), (x,))


def test_eager_second_derivatives_of_softmax_log_softmax_and_nll_loss():
    """Their backwards need only what they keep (the result, or nothing for nll_loss, which
    is linear in its input), so create_graph=True gets PyTorch's second derivatives."""
    x = torch.randn(4, C, generator=_gen(27), dtype=torch.float64)
    t = torch.tensor([0, 5, -100, 2])
    w = torch.rand(C, generator=_gen(28), dtype=torch.float64) + 0.5
    pairs = [
        (lambda z: ft.softmax(z, 1)[:, 0].pow(3).sum(), lambda z: F.softmax(z, 1)[:, 0].pow(3).sum()),
        (lambda z: ft.log_softmax(z, 0).pow(2).sum(), lambda z: F.log_softmax(z, 0).pow(2).sum()),
        (lambda z: ft.nll_loss(ft.log_softmax(z, 1), t, weight=w),
         lambda z: F.nll_loss(F.log_softmax(z, 1), t, weight=w)),
        (lambda z: ft.nll_loss(z.exp(), t, reduction="none").pow(2).sum(),
         lambda z: F.nll_loss(z.exp(), t, reduction="none").pow(2).sum()),
    ]
    for ours, ref in pairs:
        hess = torch.autograd.functional.hessian(ours, x)
        torch.testing.assert_close(hess, torch.autograd.functional.hessian(ref, x))
        assert hess.abs().max() > 0
        assert torch.autograd.gradgradcheck(ours, (x.clone().requires_grad_(),))


# ------------------------------------------------------------------------------------------
# Transforms inside a compiled function
# ------------------------------------------------------------------------------------------


def test_transforms_inside_torch_compile():
    """A torch.func transform inside a compiled function breaks the graph at the loss (the
    operators alone gave a zero tangent there), so the loss runs eagerly and right; with
    fullgraph=True that break is an error. Forward-mode AD goes into the graph whole."""
    x = torch.randn(4, C, generator=_gen(37))
    v = torch.randn(4, C, generator=_gen(38))
    t = torch.tensor([0, 5, -100, 2])
    _, g = _eager_grad(lambda z: ft.cross_entropy(z, t), x)

    def forward_mode(z):
        with torch.autograd.forward_ad.dual_level():
            dual = torch.autograd.forward_ad.make_dual(z, v)
            return torch.autograd.forward_ad.unpack_dual(ft.cross_entropy(dual, t)).tangent

    transforms = [
        (lambda z: torch.func.grad(lambda y: ft.cross_entropy(y, t))(z), g),
        (lambda z: torch.func.jvp(lambda y: ft.cross_entropy(y, t), (z,), (v,))[1], (g * v).sum()),
        (lambda z: torch.func.vmap(lambda y, s: ft.cross_entropy(y[None], s[None]))(z, t),
         ft.cross_entropy(x, t, reduction="none")),
    ]
    for fn, want in transforms:
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(fn, backend="aot_eager")(x), want,
                                   rtol=1e-5, atol=1e-6)
        torch._dynamo.reset()
        with pytest.raises(Exception, match="non-Tensor"):
            torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    got = torch.compile(forward_mode, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got, (g * v).sum(), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


GRADCHECK_CASES = {
    "cross_entropy none": lambda z, a, b: ft.cross_entropy(
        z, torch.tensor([0, 2, -100, 1]), weight=torch.linspace(0.5, 1.5, 5, dtype=z.dtype),
        reduction="none", label_smoothing=0.1, z_loss=0.01, softcap=2.0),
    "cross_entropy mean": lambda z, a, b: ft.cross_entropy(z, torch.tensor([0, 2, -100, 1])),
    "nll_loss": lambda z, a, b: ft.nll_loss(z, torch.tensor([0, 2, -100, 1]), reduction="none"),
    "softmax": lambda z, a, b: ft.softmax(z, 1),
    "log_softmax": lambda z, a, b: ft.log_softmax(z, 0),
    "linear_cross_entropy": lambda z, a, b: ft.linear_cross_entropy(
        a, b, torch.tensor([0, 2, -100, 1]), reduction="none"),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_pytorch_gradcheck_with_batched_grads_and_forward_ad(case):
    """PyTorch's own checker, in the modes that vmap the backward and use forward-mode AD."""
    x = torch.randn(4, 5, generator=_gen(39), dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 3, generator=_gen(40), dtype=torch.float64, requires_grad=True)
    lw = torch.randn(5, 3, generator=_gen(41), dtype=torch.float64, requires_grad=True)
    args = (x, h, lw)
    assert torch.autograd.gradcheck(GRADCHECK_CASES[case], args, check_batched_grad=True)
    assert torch.autograd.gradcheck(GRADCHECK_CASES[case], args, check_forward_ad=True)
