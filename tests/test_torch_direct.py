"""fusedce.torch's direct way for CUDA tensors (torch._direct_cross_entropy: tensors straight
to the kernels, no array layer), run here by fusedce.emulated's kernels on host tensors and
compared with the general way (the CPU kernels through the array layer). On a GPU the
`device`=cuda tests of test_torch.py take it for every plain call."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedce.torch")
fe = pytest.importorskip("fusedce.emulated", exc_type=ImportError)
from fusedce import _core, _emulated  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def direct(x, t, reduction="mean", ignore_index=-100, z_loss=0.0, grad_out=None):
    return ft._direct_cross_entropy(x, t, ignore_index, reduction, z_loss, grad_out,
                                    ops=_emulated, launch=_core.Launch(0, 0))


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


def test_direct_way_is_taken_only_for_plain_cuda_calls():
    x = torch.randn(4, 3)
    t = torch.tensor([0, 1, 2, 0])
    assert not ft._direct_ok(x, t, None, 0.0, None)  # a CPU tensor: the CPU kernels
    meta = x.to("meta")
    assert not ft._direct_ok(meta, t, None, 0.0, None)
    if torch.cuda.is_available():
        xc, tc = x.cuda(), t.cuda()
        assert ft._direct_ok(xc, tc, None, 0.0, None)
        assert not ft._direct_ok(xc, tc, torch.ones(3, device="cuda"), 0.0, None)
        assert not ft._direct_ok(xc, tc, None, 0.1, None)
        assert not ft._direct_ok(xc, tc, None, 0.0, 5.0)
        assert not ft._direct_ok(xc.t(), tc[:3], None, 0.0, None)
        assert not ft._direct_ok(xc.unsqueeze(2), tc, None, 0.0, None)
