"""fusedce.torch against torch.nn.functional: values, gradients, autograd honesty."""

import itertools
import zlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import need

torch = need("torch")
import torch.nn.functional as F  # noqa: E402

import fusedce.torch as ft  # noqa: E402

C = 7


def _tol(dtype):
    return {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 3e-3,
            torch.bfloat16: 2e-2}[dtype]


def _close(a, b, dtype, what):
    tol = _tol(dtype)
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    torch.testing.assert_close(a.float() if dtype in (torch.float16, torch.bfloat16) else a,
                               b.float() if dtype in (torch.float16, torch.bfloat16) else b,
                               rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


def _targets(shape, kind, gen, ignore_index):
    """(index or probability target) for logits of `shape` (classes at dim 1 / dim 0)."""
    cdim = 0 if len(shape) == 1 else 1
    row_shape = shape[:cdim] + shape[cdim + 1:]
    if kind == "prob":
        return torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), cdim)
    t = torch.randint(0, shape[cdim], row_shape, generator=gen)
    if ignore_index is not None and t.numel() > 1:
        flat = t.view(-1)
        flat[::3] = ignore_index  # a third of the rows ignored
    elif ignore_index is not None and int(t) == ignore_index:
        # never ignore the single row of a 1-D input: PyTorch's mean would be NaN, ours 0
        t = (t + 1) % shape[cdim]
    return t


def _both(fn_ours, fn_torch, x, upstream):
    """Loss and input gradient from both implementations on copies of `x`, with the same
    upstream gradient `upstream(loss)` (drawn once) for both."""
    out = []
    g = None
    for fn in (fn_ours, fn_torch):
        xi = x.detach().clone().requires_grad_()
        loss = fn(xi)
        if g is None:
            g = upstream(loss)
        (grad,) = torch.autograd.grad(loss, xi, g)
        out.append((loss.detach(), grad))
    return out


SHAPES = [(11, C), (3, C, 4, 5), (C,)]
OPTIONS = [opt for opt in itertools.product(
    ["index", "prob"],            # target kind
    [False, True],                # class weights
    [None, -100, 2],              # ignore_index (None: the default, nothing ignored)
    ["none", "sum", "mean"],
    [0.0, 0.1],                   # label smoothing
) if not (opt[0] == "prob" and opt[2] is not None)]  # ignore_index: index targets only


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind,weighted,ignore,reduction,smoothing", OPTIONS)
def test_cross_entropy_matches_torch(shape, kind, weighted, ignore, reduction, smoothing):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, kind, weighted, ignore)).encode()))
    dtype = torch.float64
    x = 3 * torch.randn(shape, generator=gen, dtype=dtype)
    target = _targets(shape, kind, gen, ignore)
    weight = torch.rand(C, generator=gen, dtype=dtype) + 0.2 if weighted else None
    kw = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)
    if ignore is not None:
        kw["ignore_index"] = ignore

    def upstream(loss):
        return torch.rand(loss.shape, generator=gen, dtype=dtype) + 0.5

    (l1, g1), (l2, g2) = _both(lambda xi: ft.cross_entropy(xi, target, **kw),
                               lambda xi: F.cross_entropy(xi, target, **kw), x, upstream)
    _close(l1, l2, dtype, "loss")
    _close(g1, g2, dtype, "grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_cross_entropy_dtypes(dtype, kind):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 33, generator=gen).to(dtype)
    target = _targets((64, 33), kind, gen, None)
    if kind == "prob":
        target = target.to(dtype)
    weight = (torch.rand(33, generator=gen) + 0.5).to(dtype)
    for red in ("mean", "none"):
        kw = dict(weight=weight, reduction=red, label_smoothing=0.05)
        (l1, g1), (l2, g2) = _both(lambda xi: ft.cross_entropy(xi, target, **kw),
                                   lambda xi: F.cross_entropy(xi, target, **kw), x,
                                   torch.ones_like)
        _close(l1, l2, dtype, f"loss {red}")
        _close(g1, g2, dtype, f"grad {red}")


@pytest.mark.parametrize("shape,dim", [((6, C), 1), ((6, C), 0), ((2, C, 3), 1), ((2, 3, C), -1),
                                       ((C,), 0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_matches_torch(shape, dim, dtype, log):
    gen = torch.Generator().manual_seed(2)
    x = (2 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
    ours = ft.log_softmax if log else ft.softmax
    theirs = F.log_softmax if log else F.softmax

    def upstream(y):
        return torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)

    (y1, g1), (y2, g2) = _both(lambda xi: ours(xi, dim), lambda xi: theirs(xi, dim), x,
                               upstream)
    _close(y1, y2, dtype, "output")
    _close(g1, g2, dtype, "grad")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("weighted,ignore,reduction", list(itertools.product(
    [False, True], [None, 3], ["none", "sum", "mean"])))
def test_nll_loss_matches_torch(shape, weighted, ignore, reduction):
    gen = torch.Generator().manual_seed(3)
    logp = torch.log_softmax(torch.randn(shape, generator=gen, dtype=torch.float64),
                             0 if len(shape) == 1 else 1)
    target = _targets(shape, "index", gen, ignore)
    kw = dict(weight=torch.rand(C, generator=gen, dtype=torch.float64) if weighted else None,
              reduction=reduction)
    if ignore is not None:
        kw["ignore_index"] = ignore
    up = torch.rand(F.nll_loss(logp, target, **kw).shape, generator=gen, dtype=torch.float64)
    (l1, g1), (l2, g2) = _both(lambda xi: ft.nll_loss(xi, target, **kw),
                               lambda xi: F.nll_loss(xi, target, **kw), logp, lambda _: up)
    _close(l1, l2, torch.float64, "loss")
    _close(g1, g2, torch.float64, "grad")


def test_log_softmax_plus_nll_is_cross_entropy():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(9, C, 2, generator=gen, dtype=torch.float64)
    t = torch.randint(0, C, (9, 2), generator=gen)
    torch.testing.assert_close(ft.nll_loss(ft.log_softmax(x, 1), t), ft.cross_entropy(x, t))


# ------------------------------------------------------------------------------ gradcheck


def _gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradcheck_cross_entropy(reduction):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5, (4, 3), generator=gen)
    t[0, 0] = -100
    w = torch.rand(5, generator=gen, dtype=torch.float64) + 0.1
    _gradcheck(lambda x: ft.cross_entropy(x, t, weight=w, reduction=reduction,
                                          label_smoothing=0.15), x)


def test_gradcheck_cross_entropy_probability_targets_and_unbatched():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(6, 5, generator=gen, dtype=torch.float64), 1)
    q.requires_grad_()
    w = torch.rand(5, generator=gen, dtype=torch.float64) + 0.1
    # with respect to both the logits and the soft targets
    _gradcheck(lambda x, q: ft.cross_entropy(x, q, weight=w, label_smoothing=0.2), x, q)
    _gradcheck(lambda x, q: ft.cross_entropy(x, q, reduction="none"), x, q)
    x1 = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    _gradcheck(lambda x: ft.cross_entropy(x, torch.tensor(3), reduction="none"), x1)


def test_gradcheck_softmax_log_softmax_nll():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (3, 5), generator=gen)
    _gradcheck(lambda x: ft.softmax(x, 1), x)
    _gradcheck(lambda x: ft.log_softmax(x, -1), x)
    _gradcheck(lambda x: ft.nll_loss(x, t, reduction="none"), x)
    _gradcheck(lambda x: ft.nll_loss(ft.log_softmax(x, 1), t), x)


def test_upstream_gradient_other_than_one_and_retain_graph():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(10, C, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, C, (10,), generator=gen)
    loss = ft.cross_entropy(x, t)
    (g3,) = torch.autograd.grad(3.0 * loss, x, retain_graph=True)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g3b,) = torch.autograd.grad(loss * 3.0, x)
    ref = torch.autograd.grad(F.cross_entropy(x, t), x)[0]
    torch.testing.assert_close(g1, ref)
    torch.testing.assert_close(g3, 3 * ref)
    torch.testing.assert_close(g3b, 3 * ref)


# ------------------------------------------------------------------------------ training


def _train(loss_fn, steps=6):
    gen = torch.Generator().manual_seed(9)
    data = torch.randn(128, 20, generator=gen)
    labels = torch.randint(0, 5, (128,), generator=gen)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for step in range(steps):
        batch = slice((step * 32) % 128, (step * 32) % 128 + 32)
        opt.zero_grad()
        loss = loss_fn(model(data[batch]), labels[batch])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return [p.detach() for p in model.parameters()], losses


@pytest.mark.parametrize("loss_name", ["functional", "module", "inplace", "log_softmax+nll"])
def test_training_gives_the_same_weights(loss_name):
    w = torch.rand(5, generator=torch.Generator().manual_seed(12)) + 0.5
    smoothing = 0.0 if loss_name == "log_softmax+nll" else 0.1
    ours = {
        "functional": lambda y, t: ft.cross_entropy(y, t, weight=w, label_smoothing=0.1),
        "module": ft.CrossEntropyLoss(weight=w, label_smoothing=0.1),
        "inplace": lambda y, t: ft.cross_entropy(y, t, weight=w, label_smoothing=0.1,
                                                 inplace=True),
        "log_softmax+nll": lambda y, t: ft.nll_loss(ft.log_softmax(y, 1), t, weight=w),
    }[loss_name]
    theirs = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=smoothing)
    p1, l1 = _train(ours)
    p2, l2 = _train(theirs)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert l1[-1] < l1[0]


def test_module_weight_is_a_buffer():
    w = torch.rand(C)
    m = ft.CrossEntropyLoss(weight=w, ignore_index=1, reduction="sum", label_smoothing=0.3)
    assert torch.equal(m.state_dict()["weight"], w)
    assert "reduction='sum'" in repr(m)
    x, t = torch.randn(5, C), torch.randint(0, C, (5,))
    ref = torch.nn.CrossEntropyLoss(weight=w, ignore_index=1, reduction="sum",
                                    label_smoothing=0.3)
    torch.testing.assert_close(m(x, t), ref(x, t))


# ------------------------------------------------------------------------------ inplace


def _inplace_setup(dtype=torch.float32):
    gen = torch.Generator().manual_seed(10)
    lin = torch.nn.Linear(6, C).to(dtype)
    torch.nn.init.normal_(lin.weight, generator=gen)
    x = torch.randn(12, 6, generator=gen).to(dtype)
    t = torch.randint(0, C, (12,), generator=gen)
    return lin, x, t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_inplace_gives_the_same_loss_and_gradients(dtype):
    lin, x, t = _inplace_setup(dtype)
    logits = lin(x)
    loss_ref = F.cross_entropy(logits, t, label_smoothing=0.1)
    grads_ref = torch.autograd.grad(loss_ref, [lin.weight, lin.bias, logits], retain_graph=True)

    logits = lin(x)
    before = logits.detach().clone()
    loss = ft.cross_entropy(logits, t, label_smoothing=0.1, inplace=True)
    _close(loss.detach(), loss_ref.detach(), dtype, "loss")
    # the input's storage now holds d loss / d logits
    assert not torch.equal(logits.detach(), before)
    _close(logits.detach(), grads_ref[2], dtype, "gradient written in place")
    loss.backward()
    _close(lin.weight.grad, grads_ref[0], dtype, "weight grad")
    _close(lin.bias.grad, grads_ref[1], dtype, "bias grad")


def test_inplace_scaled_upstream_and_second_backward_raises():
    lin, x, t = _inplace_setup()
    ref = torch.autograd.grad(2.5 * F.cross_entropy(lin(x), t), lin.weight)[0]
    loss = ft.cross_entropy(lin(x), t, inplace=True)
    (2.5 * loss).backward(retain_graph=True)
    torch.testing.assert_close(lin.weight.grad, ref)
    with pytest.raises(RuntimeError):
        (2.5 * loss).backward()


def test_inplace_on_a_reshape_view():
    lin, x, t = _inplace_setup()
    x3, t3 = x.view(3, 4, 6), t.view(3, 4)
    ref = torch.autograd.grad(F.cross_entropy(lin(x3).view(-1, C), t3.view(-1),
                                              reduction="none").sum() * 2, lin.weight)[0]
    logits = lin(x3)                       # (3, 4, C), classes last as in a language model
    loss = ft.cross_entropy(logits.view(-1, C), t3.view(-1), reduction="none", inplace=True)
    (loss.sum() * 2).backward()
    torch.testing.assert_close(lin.weight.grad, ref)


def test_inplace_misuse_raises():
    lin, x, t = _inplace_setup()
    # a leaf that requires grad cannot be overwritten; nothing is written before the error
    leaf = torch.randn(4, C, requires_grad=True)
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="leaf"):
        ft.cross_entropy(leaf, t[:4], inplace=True)
    assert torch.equal(leaf.detach(), before)

    # exp saves its output for the backward: overwriting it must make the backward raise
    logits = lin(x).exp()
    loss = ft.cross_entropy(logits, t, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()

    # differentiating through the overwritten tensor afterwards raises
    logits = lin(x)
    loss = ft.cross_entropy(logits, t, inplace=True)
    with pytest.raises(RuntimeError, match="inplace=True"):
        (loss + logits.sum()).backward()

    # overwriting the stored gradient before the backward raises
    logits = lin(x)
    loss = ft.cross_entropy(logits, t, inplace=True)
    logits.detach().zero_()  # shares the version counter
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()

    # a slice is a view PyTorch will not let a multi-output Function overwrite
    with pytest.raises(ValueError, match="view"):
        ft.cross_entropy(lin(x)[:, :5], t.clamp(max=4), inplace=True)


def test_inplace_without_grad_leaves_the_input_alone():
    lin, x, t = _inplace_setup()
    with torch.no_grad():
        logits = lin(x)
        before = logits.clone()
        loss = ft.cross_entropy(logits, t, inplace=True)
    assert torch.equal(logits, before)
    torch.testing.assert_close(loss, F.cross_entropy(before, t))


# ------------------------------------------------------------------------------ misc


def test_errors():
    x, t = torch.randn(4, C), torch.randint(0, C, (4,))
    with pytest.raises(ValueError, match="reduction"):
        ft.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        ft.cross_entropy(x, t, label_smoothing=-0.1)
    with pytest.raises(IndexError):
        ft.cross_entropy(x, torch.tensor([0, 1, C, 2]))
    with pytest.raises(TypeError):
        ft.cross_entropy(torch.ones(4, C, dtype=torch.int64), t)
    with pytest.raises(TypeError):
        ft.cross_entropy(x.numpy(), t)
    with pytest.raises(TypeError):
        ft.softmax(x, None)
    with pytest.raises(IndexError):
        ft.log_softmax(x, 2)


def test_mean_over_nothing_is_zero_not_nan():
    x = torch.randn(3, C, requires_grad=True)
    loss = ft.cross_entropy(x, torch.full((3,), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0


def test_no_grad_and_eval_paths():
    x, t = torch.randn(5, C), torch.randint(0, C, (5,))
    torch.testing.assert_close(ft.cross_entropy(x, t), F.cross_entropy(x, t))
    with torch.no_grad():
        y = ft.log_softmax(x.requires_grad_(), 1)
    assert not y.requires_grad


def test_import_fusedce_does_not_import_torch():
    code = ("import sys, fusedce; assert 'torch' not in sys.modules, 'torch was imported'; "
            "import fusedce.torch; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_torch():  # pragma: no cover - only runs on a GPU machine
    pytest.importorskip("cupy")
    gen = torch.Generator().manual_seed(11)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(64, 1000, generator=gen).to("cuda", dtype)
        t = torch.randint(0, 1000, (64,), generator=gen).cuda()
        (l1, g1), (l2, g2) = _both(lambda xi: ft.cross_entropy(xi, t, label_smoothing=0.1),
                                   lambda xi: F.cross_entropy(xi, t, label_smoothing=0.1), x,
                                   torch.ones_like)
        _close(l1.cpu(), l2.cpu(), dtype, "loss")
        _close(g1.cpu(), g2.cpu(), dtype, "grad")


# ------------------------------------------------------------------------------------------
# autocast: losses come back in float32, as PyTorch's autocast gives them
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_losses_under_autocast_are_float32_like_pytorchs(dtype, reduction):
    """PyTorch's autocast runs cross_entropy and nll_loss in float32 and returns float32;
    fusedce computes half input in float32 anyway and now returns that unrounded there
    (the input's dtype outside autocast)."""
    gen = torch.Generator().manual_seed(40)
    x = (3 * torch.randn(12, C, generator=gen)).to(dtype)
    t = torch.randint(0, C, (12,), generator=gen)
    t[::5] = -100
    h = torch.randn(12, 4, generator=gen).to(dtype)
    lw = torch.randn(C, 4, generator=gen).to(dtype)
    calls = {
        "cross_entropy": (lambda z: ft.cross_entropy(z, t, reduction=reduction),
                          lambda z: F.cross_entropy(z, t, reduction=reduction)),
        "nll_loss": (lambda z: ft.nll_loss(z, t, reduction=reduction),
                     lambda z: F.nll_loss(z, t, reduction=reduction)),
    }
    for name, (ours, ref) in calls.items():
        for autocast in (True, False):
            xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
            with torch.autocast("cpu", dtype=dtype, enabled=autocast):
                lo, lr = ours(xo), ref(xr)
            assert lo.dtype == (torch.float32 if autocast else dtype), (name, autocast)
            if autocast:  # the same float32 math on the same half values
                assert lr.dtype == torch.float32
                torch.testing.assert_close(lo, lr, rtol=1e-6, atol=1e-6)
                g = torch.linspace(0.5, 1.5, lo.numel()).reshape(lo.shape)
                (go,) = torch.autograd.grad(lo, xo, g)
                (gr,) = torch.autograd.grad(lr, xr, g)
                assert go.dtype == dtype
                _close(go, gr, dtype, f"{name} gradient under autocast")
    with torch.autocast("cpu", dtype=dtype):
        lin = ft.linear_cross_entropy(h, lw, t, reduction=reduction)
    # the GEMM in float32 (as fusedce runs it for half input), outside autocast
    via_logits = ft.cross_entropy(h.float() @ lw.float().T, t, reduction=reduction)
    assert lin.dtype == torch.float32
    torch.testing.assert_close(lin, via_logits, rtol=1e-5, atol=1e-5)


def test_autocast_loss_dtype_under_torch_compile():
    x = torch.randn(8, C, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, C, (8,))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(z):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ft.cross_entropy(z, t)

    loss = step(x)
    assert loss.dtype == torch.float32
    loss.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy(x.detach(), t)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-6, atol=1e-6)
    assert x.grad.dtype == torch.bfloat16


def test_uint8_class_indices_as_pytorch_takes_them():
    gen = torch.Generator().manual_seed(41)
    x = torch.randn(9, C, generator=gen, dtype=torch.float64)
    t = torch.randint(0, C, (9,), generator=gen)
    h = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    lw = torch.randn(C, 4, generator=gen, dtype=torch.float64)
    pairs = [
        (lambda z, y: ft.cross_entropy(z, y, ignore_index=2, label_smoothing=0.1),
         lambda z, y: F.cross_entropy(z, y, ignore_index=2, label_smoothing=0.1), x),
        (lambda z, y: ft.nll_loss(z, y, reduction="sum"),
         lambda z, y: F.nll_loss(z, y, reduction="sum"), x),
        (lambda a, y: ft.linear_cross_entropy(a, lw, y), lambda a, y: F.cross_entropy(a @ lw.T, y),
         h),
    ]
    for ours, ref, arg in pairs:
        (loss, grad), (want_loss, want_grad) = _both(
            lambda z: ours(z, t.to(torch.uint8)), lambda z: ref(z, t), arg,
            lambda loss: torch.ones_like(loss))
        _close(loss, want_loss, torch.float64, "loss")
        _close(grad, want_grad, torch.float64, "gradient")


def test_nll_softmax_and_log_softmax_modules_match_torch_nn():
    gen = torch.Generator().manual_seed(42)
    x = torch.randn(7, C, 3, generator=gen, dtype=torch.float64)
    t = torch.randint(0, C, (7, 3), generator=gen)
    t[0, 0] = 3
    w = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
    pairs = [
        (ft.NLLLoss(weight=w, ignore_index=3, reduction="sum"),
         torch.nn.NLLLoss(weight=w, ignore_index=3, reduction="sum"), True),
        (ft.Softmax(dim=1), torch.nn.Softmax(dim=1), False),
        (ft.LogSoftmax(dim=-1), torch.nn.LogSoftmax(dim=-1), False),
    ]
    for ours, ref, takes_target in pairs:
        call = (lambda m: lambda z: m(z, t)) if takes_target else (lambda m: m)
        (out, grad), (want, want_grad) = _both(
            call(ours), call(ref), x, lambda y: torch.rand(y.shape, generator=gen,
                                                           dtype=y.dtype))
        _close(out, want, torch.float64, f"{type(ours).__name__} value")
        _close(grad, want_grad, torch.float64, f"{type(ours).__name__} gradient")
        if not takes_target:
            assert repr(ours) == repr(ref)  # "Softmax(dim=1)", "LogSoftmax(dim=-1)"
    assert repr(pairs[0][0]) == "NLLLoss(ignore_index=3, reduction='sum')"
    assert torch.equal(ft.NLLLoss(weight=w).state_dict()["weight"], w)
    with pytest.raises(TypeError, match="dim must be given"):
        ft.Softmax(None)
    with pytest.raises(ValueError, match="reduction"):
        ft.NLLLoss(reduction="avg")
