"""The direct way for PyTorch CUDA tensors (fusedce._direct: the plain cross-entropy call
straight from the tensors to the kernels, no array layer), run here by fusedce.emulated's
kernels on host tensors and compared with the general way (the CPU kernels through the array
layer): fusedce.torch's operators and the NumPy API both take it. On a GPU the `device`=cuda
tests of test_torch.py and test_parity.py take it for every plain call of PyTorch tensors."""
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedce.torch")
fe = pytest.importorskip("fusedce.emulated", exc_type=ImportError)
import fusedce  # noqa: E402
from fusedce import _arrays, _core, _direct, _emulated, functional  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def direct(x, t, reduction="mean", ignore_index=-100, z_loss=0.0, grad_out=None, **kw):
    return _direct.cross_entropy(x, t, ignore_index, reduction, z_loss, grad_out,
                                 ops=_emulated, launch=_core.Launch(0, 0), **kw)


def general(x, t, **kw):
    xr = x.detach().clone().requires_grad_(True)
    loss = ft.cross_entropy(xr, t, **kw)
    (loss.sum() if loss.dim() else loss).backward()
    return loss.detach(), xr.grad


def tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else \
        dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("C", [7, 600])
def test_direct_way_matches_the_general_way(dtype, reduction, C):
    g = torch.Generator().manual_seed(C)
    n = 37
    x = (torch.randn(n, C, generator=g) * 3).to(dtype)
    t = torch.randint(0, C, (n,), generator=g)
    t[3] = -100  # an ignored row
    for tt in (t, t.to(torch.int32)):
        for z in (0.0, 0.01):
            want_loss, want_grad = general(x, tt, reduction=reduction, z_loss=z)
            grad = torch.empty_like(x)
            loss = direct(x, tt, reduction, z_loss=z, grad_out=grad)
            assert loss.dtype == dtype and loss.shape == want_loss.shape
            torch.testing.assert_close(loss.double(), want_loss.double(), **tol(dtype))
            # (the general way's backward of the loss, or of its sum for "none")
            torch.testing.assert_close(grad.double(), want_grad.double(), **tol(dtype))
            assert torch.all(grad[3] == 0)
            forward = direct(x, tt, reduction, z_loss=z)
            torch.testing.assert_close(forward, loss, rtol=0, atol=0)
            inplace = x.clone()
            again = direct(inplace, tt, reduction, z_loss=z, grad_out=inplace)
            assert torch.equal(inplace, grad) and torch.equal(again, loss)


def test_direct_way_edge_cases():
    x = torch.randn(5, 4)
    # every row ignored: "mean" is 0 (fusedce's documented choice), the gradient 0
    t = torch.full((5,), -100)
    grad = torch.empty_like(x)
    loss = direct(x, t, "mean", grad_out=grad)
    assert loss.item() == 0.0 and torch.all(grad == 0)
    # no rows
    assert direct(x[:0], t[:0], "mean").item() == 0.0
    assert direct(x[:0], t[:0], "none").shape == (0,)
    # bad targets raise IndexError, naming the first, as the general way does
    for bad in (torch.tensor([0, 1, 4, 2, 9]), torch.tensor([0, -2, 1, 1, 1])):
        with pytest.raises(IndexError, match="outside \\[0, 4\\)"):
            direct(x, bad, "mean")
    # a non-contiguous target and a row pitch wider than the row
    wide = torch.randn(5, 9)[:, 2:6]
    tt = torch.tensor([[0, 9], [1, 9], [2, 9], [3, 9], [0, 9]])[:, 0]
    want_loss, want_grad = general(wide.contiguous(), tt.contiguous(), reduction="sum")
    grad = torch.empty(5, 4)
    torch.testing.assert_close(direct(wide, tt, "sum", grad_out=grad), want_loss)
    torch.testing.assert_close(grad, want_grad)
    # the inputs are left as they were
    before = (wide.clone(), tt.clone())
    direct(wide, tt, "mean", grad_out=torch.empty(5, 4))
    assert torch.equal(wide, before[0]) and torch.equal(tt, before[1])


def test_direct_way_is_taken_only_for_plain_calls():
    x = torch.randn(4, 3)
    t = torch.tensor([0, 1, 2, 0])
    assert not _direct.plain(x, t, None, 0.0, None)  # a CPU tensor: the CPU kernels
    assert not _direct.plain(x.to("meta"), t.to("meta"), None, 0.0, None)
    ok = functools.partial(_direct.plain, device_types=("cpu",))
    assert ok(x, t, None, 0.0, None) and ok(x, t.int(), None, 0.0, None)
    assert ok(x.to(torch.bfloat16), t, None, 0.0, None)
    assert not ok(x, t, torch.ones(3), 0.0, None)
    assert not ok(x, t, None, 0.1, None)
    assert not ok(x, t, None, 0.0, 5.0)
    assert not ok(x.t(), t[:3], None, 0.0, None)  # classes not contiguous
    assert not ok(x.unsqueeze(2), t, None, 0.0, None)
    assert not ok(x[:, :0], t, None, 0.0, None)  # no classes
    assert not ok(x, t.float(), None, 0.0, None)  # probabilities
    assert not ok(x, t.to(torch.int16), None, 0.0, None)
    assert not ok(x.int(), t, None, 0.0, None)
    assert not ok(x.numpy(), t, None, 0.0, None)


def test_usable_out():
    x = torch.randn(6, 5)
    assert _direct.usable_out(torch.empty(6, 5), x)
    assert _direct.usable_out(x, x)  # the logits themselves, element for element
    assert not _direct.usable_out(torch.empty(6, 4), x)  # another shape
    base = torch.randn(7, 5)
    assert not _direct.usable_out(base[1:], base[:6])  # shifted by a row: overlap
    assert not _direct.usable_out(torch.empty(6, 5, dtype=torch.float64), x)
    assert not _direct.usable_out(torch.empty(5, 6).t(), x)  # classes not contiguous
    assert not _direct.usable_out(np.empty((6, 5), np.float32), x)


# ------------------------------------------------------------------ the NumPy API's glue

@pytest.fixture
def numpy_api_direct(monkeypatch):
    """The NumPy API's cross_entropy and cross_entropy_with_grad as they run for PyTorch CUDA
    tensors (a backend with PyTorch's stream), here on host tensors and fusedce.emulated's
    kernels; calls that do not take the direct way fail loudly (they would need CuPy)."""
    monkeypatch.setattr(_direct, "plain", functools.partial(_direct.plain, device_types=("cpu",)))
    monkeypatch.setattr(_direct, "cross_entropy", functools.partial(
        _direct.cross_entropy, ops=_emulated, launch=_core.Launch(0, 0)))
    backend = _arrays.Backend(np, 0, _emulated, True, torch_stream=0)

    general = functional._LossCall

    def general_way_refused(x, *a, **k):  # (NumPy arrays still take it: the references)
        if isinstance(x, torch.Tensor):
            raise AssertionError("the general way was taken")
        return general(x, *a, **k)

    monkeypatch.setattr(functional, "_LossCall", general_way_refused)
    ce = functional.cross_entropy._implementation[0]
    ceg = functional.cross_entropy_with_grad._implementation[0]
    return functools.partial(ce, backend), functools.partial(ceg, backend)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_numpy_api_direct_way_matches_the_general_way(numpy_api_direct, dtype, reduction):
    ce, ceg = numpy_api_direct
    rng = np.random.default_rng(3)
    xn = (rng.standard_normal((29, 300)) * 2).astype(dtype)
    tn = rng.integers(0, 300, 29)
    tn[[2, 5]] = -100
    x, t = torch.from_numpy(xn.copy()), torch.from_numpy(tn)
    cdtype = np.float64 if dtype == np.float64 else np.float32
    rtol = 1e-12 if dtype == np.float64 else 1e-5 if dtype == np.float32 else 2e-3
    for kw in (dict(), dict(z_loss=0.001), dict(validate_targets=False), dict(axis=1)):
        want_loss, want_grad = fusedce.cross_entropy_with_grad(xn, tn, reduction=reduction,
                                                               grad_loss=2.5, **kw)
        loss, grad = ceg(x, t, reduction=reduction, grad_loss=2.5, **kw)
        assert isinstance(loss, torch.Tensor) and loss.dtype == torch.from_numpy(np.zeros(1, cdtype)).dtype
        np.testing.assert_allclose(loss.numpy(), want_loss, rtol=rtol, atol=rtol * 1e-2)
        np.testing.assert_allclose(grad.numpy().astype(np.float64), want_grad.astype(np.float64),
                                   rtol=rtol, atol=rtol * 1e-2)
        only = ce(x, t, reduction=reduction, **kw)
        assert torch.equal(only, loss)
        out = torch.empty_like(x)
        l2, g2 = ceg(x, t, reduction=reduction, grad_loss=2.5, out=out, **kw)
        assert g2 is out and torch.equal(out, grad) and torch.equal(l2, loss)
        inplace = x.clone()
        l3, g3 = ceg(inplace, t, reduction=reduction, grad_loss=2.5, inplace=True, **kw)
        assert g3 is inplace and torch.equal(inplace, grad) and torch.equal(l3, loss)
    assert torch.equal(x, torch.from_numpy(xn))  # the inputs are left as they were


def test_numpy_api_direct_way_errors_and_fallbacks(numpy_api_direct, monkeypatch):
    ce, ceg = numpy_api_direct
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 5])
    with pytest.raises(IndexError, match="class index 5"):
        ceg(x, t)
    t = torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match="reduction"):
        ce(x, t, reduction="avg")
    with pytest.raises(TypeError, match="ignore_index"):
        ce(x, t, ignore_index=1.5)
    with pytest.raises(ValueError, match="z_loss"):
        ceg(x, t, z_loss=-1.0)
    with pytest.raises(ValueError, match="exclusive"):
        ceg(x, t, out=torch.empty(4, 3), inplace=True)
    # an out= that is the logits themselves, element for element, is the in-place call
    alias = x.clone()
    _, g = ceg(alias, t, out=alias[:, :])
    assert torch.equal(alias, g)
    # what the direct way leaves to the general way (refused in this fixture)
    five = torch.randn(5, 3)
    for call in (lambda: ce(x, t, return_lse=True), lambda: ce(x, t, weight=torch.ones(3)),
                 lambda: ce(x, t, label_smoothing=0.1), lambda: ce(x, t, softcap=3.0),
                 lambda: ceg(x, t, grad_loss=torch.tensor(2.0)),
                 lambda: ceg(x, t, out=torch.empty(4, 3, dtype=torch.float64)),
                 lambda: ceg(five[:4], t, out=five[1:]),  # overlapping, shifted by a row
                 lambda: ce(x.unsqueeze(0), t.unsqueeze(0), axis=2)):
        with pytest.raises(AssertionError, match="general way"):
            call()


# ------------------------------------------------------------------ the CPU kernels

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_direct_way_on_the_cpu_kernels_equals_the_general_way(dtype, reduction):
    """The direct way on host tensors runs the CPU kernels on the tensors' memory: the same
    bits as the array layer's way (fusedce's NumPy API on the same CPU tensors), loss and
    gradient, with and without ignored rows and the z-loss."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(41, 300, generator=g) * 3).to(dtype)
    t = torch.randint(0, 300, (41,), generator=g)
    assert _direct.plain(x, t, None, 0.0, None, ("cpu",))
    for tt in (t, torch.where(torch.arange(41) % 7 == 0, -100, t)):
        for z in (0.0, 0.02):
            grad = torch.empty_like(x)
            loss = _direct.cross_entropy(x, tt, -100, reduction, z, grad, ops=_core)
            want_loss, want_grad = ft._fc.cross_entropy_with_grad(x, tt, axis=1, reduction=reduction, z_loss=z)
            want_loss = torch.as_tensor(np.asarray(want_loss)).to(dtype)
            want_grad = want_grad if isinstance(want_grad, torch.Tensor) else torch.from_numpy(want_grad)
            assert torch.equal(loss, want_loss) and torch.equal(grad, want_grad)
            only = _direct.cross_entropy(x, tt, -100, reduction, z, ops=_core)
            want_only = ft._fc.cross_entropy(x, tt, axis=1, reduction=reduction, z_loss=z)
            assert torch.equal(only, torch.as_tensor(np.asarray(want_only)).to(dtype))


def test_neg_views_take_the_general_way():
    """A tensor whose negation is pending holds its values unnegated in memory: the direct
    way, which reads memory, must leave it to the general way (which resolves it)."""
    x = torch.randn(6, 5)
    t = torch.tensor([0, 1, 2, 3, 4, 0])
    neg = torch._neg_view(x)
    assert neg.is_neg() and not _direct.plain(neg, t, None, 0.0, None, ("cpu",))
    assert not _direct.usable_out(torch._neg_view(torch.empty(6, 5)), x)
    xr = neg.detach().clone().requires_grad_(True)  # the values -x, resolved
    for a in (neg, xr):
        loss = ft.cross_entropy(a, t, reduction="none")
        torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(-x, t, reduction="none"))
