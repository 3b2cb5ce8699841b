"""GPU-only tests of the CUDA kernels, through PyTorch CUDA tensors (DLPack /
__cuda_array_interface__). They skip cleanly without torch, without a GPU, or when fusedce was
built without CUDA. References are computed in float64 by PyTorch on the CPU from the same
(already rounded) inputs.

Names containing "small" form the fast subset that bench/gpu_check.sh runs under
compute-sanitizer memcheck; tests marked `slow` need several GiB of GPU memory.
"""
import numpy as np
import pytest

from conftest import need

torch = need("torch")
fusedce = pytest.importorskip("fusedce")
F = torch.nn.functional

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and getattr(fusedce, "cuda_available", lambda: False)()),
    reason="needs a CUDA GPU and fusedce built with CUDA",
)


def as_torch(a):
    if isinstance(a, torch.Tensor):
        return a
    if hasattr(a, "__dlpack__"):
        try:
            return torch.from_dlpack(a)
        except Exception:  # noqa: BLE001
            pass
    if hasattr(a, "__cuda_array_interface__"):
        return torch.as_tensor(a, device="cuda")
    return torch.as_tensor(np.asarray(a))


def ref_ce(x, t, weight=None, ignore_index=-100, eps=0.0):
    """float64 per-row loss and d(sum loss)/dx, PyTorch on the CPU."""
    xd = x.detach().double().cpu().requires_grad_(True)
    w = None if weight is None else weight.double().cpu()
    loss = F.cross_entropy(xd, t.cpu(), weight=w, ignore_index=ignore_index, label_smoothing=eps, reduction="none")
    loss.sum().backward()
    return loss.detach(), xd.grad


def check_close(got, want, rtol, atol, what):
    got = as_torch(got).detach().double().cpu()
    want = want.double().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    ok = torch.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    if not bool(ok.all()):
        i = (~ok).nonzero()[0].tolist()
        raise AssertionError(f"{what}: first mismatch at {i}: got {got[tuple(i)].item()} want {want[tuple(i)].item()}"
                             f" ({int((~ok).sum())} of {ok.numel()} differ)")


def call_no_validation(fn, *args, **kw):
    """Calls fn with target validation switched off, or skips when the API has no switch."""
    try:
        return fn(*args, validate_targets=False, **kw)
    except TypeError as e:
        if "validate_targets" in str(e):
            pytest.skip("the Python API has no validate_targets switch yet")
        raise


TOL = {torch.float32: (2e-5, 1e-6), torch.float64: (1e-10, 1e-12),
       torch.float16: (2e-3, 1e-5), torch.bfloat16: (1.6e-2, 1e-5)}
# loss is computed in float32 for half inputs: tight; the gradient is rounded to the input dtype
LOSS_TOL = {torch.float32: (2e-5, 1e-5), torch.float64: (1e-10, 1e-10),
            torch.float16: (2e-5, 1e-5), torch.bfloat16: (2e-5, 1e-5)}

def DTYPE_ID(d):
    return str(d).replace("torch.", "")


# class counts at and around each kernel configuration boundary (in 16-byte packs)
SMALL_C = [1, 2, 3, 10, 16, 17, 64, 65, 255, 256, 257, 1000, 1024, 1025, 4096]
LARGE_C = [8191, 8193, 32000, 65537, 131077, 262144, 300001]


def make_logits(n, c, dtype, seed=0, masked=True, scale=3.0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    if masked and c > 2:
        x[:, 1] = float("-inf")  # a masked class
    return x.to(dtype).cuda()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=DTYPE_ID)
@pytest.mark.parametrize("c", SMALL_C)
def test_small_row_paths_with_grad(dtype, c):
    n = 37  # not a multiple of the rows per warp / block
    x = make_logits(n, c, dtype)
    t = torch.randint(0, c, (n,), device="cuda")
    t[t == 1] = 0  # keep targets off the masked class (its loss would be +inf)
    t[3] = -100
    loss, g = fusedce.cross_entropy_with_grad(x, t, reduction="none", grad_loss=torch.ones(n, device="cuda",
                                              dtype=torch.float64 if dtype == torch.float64 else torch.float32))
    rl, rg = ref_ce(x, t)
    check_close(loss, rl, *LOSS_TOL[dtype], "loss")
    check_close(g, rg, *TOL[dtype], "grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_ID)
@pytest.mark.parametrize("c", SMALL_C[::3] + LARGE_C)
def test_row_paths_options(dtype, c):
    n = 5
    x = make_logits(n, c, dtype, seed=c)
    t = torch.randint(0, c, (n,), device="cuda")
    t[t == 1] = 0
    wdt = torch.float32
    w = torch.rand(c, dtype=wdt, device="cuda") + 0.5
    eps = 0.1 if c > 2 else 0.0  # smoothing over a masked class gives +inf, as in PyTorch
    kw = dict(weight=w, label_smoothing=eps, reduction="sum", return_lse=True, return_argmax=True)
    loss, g, lse, am = fusedce.cross_entropy_with_grad(x, t, **kw)
    rl, rg = ref_ce(x, t, weight=w, eps=eps)
    check_close(loss, rl.sum(), 1e-4, 1e-4, "loss")
    check_close(g, rg, *TOL[dtype], "grad")
    xd = x.double().cpu()
    check_close(lse, torch.logsumexp(xd, dim=1), 1e-5, 1e-5, "lse")
    assert torch.equal(as_torch(am).cpu().long(), xd.argmax(dim=1))


@pytest.mark.parametrize("c", [10, 1000, 32000])
def test_small_unaligned_rows_and_inplace(c):
    # a view with an odd row pitch forces the scalar (non-128-bit) path
    n = 9
    wide = make_logits(n, c + 1, torch.bfloat16)
    x = wide[:, :c]
    t = torch.randint(2, c, (n,), device="cuda") if c > 2 else torch.zeros(n, dtype=torch.long, device="cuda")
    loss, g = fusedce.cross_entropy_with_grad(x, t, reduction="none")
    rl, rg = ref_ce(x, t)
    check_close(loss, rl, *LOSS_TOL[torch.bfloat16], "loss")
    check_close(g, rg, *TOL[torch.bfloat16], "grad")
    y = x.contiguous()
    loss2, g2 = fusedce.cross_entropy_with_grad(y, t, reduction="none", inplace=True)
    check_close(loss2, rl, *LOSS_TOL[torch.bfloat16], "loss (inplace)")
    check_close(y, rg, *TOL[torch.bfloat16], "grad written in place")


def test_small_bf16_onehot_subtracted_before_rounding():
    # p_t close to 1: p_t - 1 is tiny; rounding p_t to bf16 first would give exactly 0
    c = 1000
    x = torch.full((4, c), -20.0, device="cuda", dtype=torch.bfloat16)
    x[:, 7] = 0.0
    t = torch.full((4,), 7, device="cuda", dtype=torch.long)
    _, g = fusedce.cross_entropy_with_grad(x, t, reduction="sum")
    _, rg = ref_ce(x, t)
    g = as_torch(g).double().cpu()
    assert (g[:, 7] < 0).all(), "p_t - 1 was rounded away"
    check_close(g, rg, *TOL[torch.bfloat16], "grad")


@pytest.mark.parametrize("c", [5, 3000, 70000])
def test_small_probability_targets_and_softmax(c):
    n = 6
    x = make_logits(n, c, torch.float32, masked=False)
    q = torch.softmax(torch.randn(n, c, device="cuda"), dim=1)
    loss, g = fusedce.cross_entropy_with_grad(x, q, reduction="none", label_smoothing=0.2)
    xd = x.double().cpu().requires_grad_(True)
    rl = F.cross_entropy(xd, q.double().cpu(), label_smoothing=0.2, reduction="none")
    rl.sum().backward()
    check_close(loss, rl.detach(), 1e-5, 1e-5, "loss")
    check_close(g, xd.grad, 1e-5, 1e-7, "grad")
    check_close(fusedce.softmax(x), torch.softmax(x.double().cpu(), 1), 1e-5, 1e-7, "softmax")
    check_close(fusedce.log_softmax(x), torch.log_softmax(x.double().cpu(), 1), 1e-5, 1e-5, "log_softmax")


def test_small_class_count_beyond_a_million():
    n, c = 3, 1_000_003  # beyond every register-resident configuration: the streaming kernel
    x = make_logits(n, c, torch.float32)
    t = torch.tensor([0, c - 1, 12345], device="cuda")
    loss, g = fusedce.cross_entropy_with_grad(x, t, reduction="none")
    rl, rg = ref_ce(x, t)
    check_close(loss, rl, 1e-5, 1e-5, "loss")
    check_close(g, rg, 1e-5, 1e-9, "grad")


@pytest.mark.parametrize("c", [10, 5000])
def test_small_out_of_range_target(c):
    n = 4
    x = make_logits(n, c, torch.float32, masked=False)
    t = torch.tensor([0, c, 2, -5], device="cuda")  # rows 1 and 3 out of range
    with pytest.raises(IndexError):
        fusedce.cross_entropy_with_grad(x, t, reduction="none")
    loss, g = call_no_validation(fusedce.cross_entropy_with_grad, x, t, reduction="none")
    loss = as_torch(loss).cpu()
    g = as_torch(g).cpu()
    assert torch.isnan(loss[1]) and torch.isnan(loss[3])
    assert torch.isnan(g[1]).all() and torch.isnan(g[3]).all()
    rl, rg = ref_ce(x[[0, 2]], t[[0, 2]])
    check_close(loss[[0, 2]], rl, 1e-5, 1e-6, "valid rows' loss")
    check_close(g[[0, 2]], rg, 1e-5, 1e-7, "valid rows' grad")
    nl = call_no_validation(fusedce.nll_loss, torch.log_softmax(x, 1), t, reduction="none")
    assert torch.isnan(as_torch(nl).cpu()[[1, 3]]).all()


def test_small_all_ignored_and_empty():
    x = make_logits(4, 50, torch.float32)
    t = torch.full((4,), -100, device="cuda", dtype=torch.long)
    loss, g = fusedce.cross_entropy_with_grad(x, t)
    assert float(as_torch(loss).cpu()) == 0.0
    assert (as_torch(g).cpu() == 0).all()
    x0 = torch.empty(0, 50, device="cuda")
    t0 = torch.empty(0, dtype=torch.long, device="cuda")
    loss0, g0 = fusedce.cross_entropy_with_grad(x0, t0)
    assert float(as_torch(loss0).cpu()) == 0.0 and as_torch(g0).shape == (0, 50)


def test_mixed_devices_raise():
    x = make_logits(4, 10, torch.float32)
    t_cpu = torch.randint(0, 10, (4,))
    with pytest.raises((TypeError, ValueError)):
        fusedce.cross_entropy(x, t_cpu)
    with pytest.raises((TypeError, ValueError)):
        fusedce.cross_entropy(x, t_cpu.numpy())
    if torch.cuda.device_count() > 1:
        with pytest.raises((TypeError, ValueError)):
            fusedce.cross_entropy(x, t_cpu.to("cuda:1"))


@pytest.mark.slow
def test_more_than_2_31_elements():
    n, c = 16385, 131072  # 2^31 + 2^17 elements, 4 GiB of bf16
    free, _ = torch.cuda.mem_get_info()
    if free < 7 * 2**30:
        pytest.skip("needs about 7 GiB of free GPU memory")
    x = torch.empty(n, c, device="cuda", dtype=torch.bfloat16)
    x.normal_()
    t = torch.randint(0, c, (n,), device="cuda")
    last = x[-3:].clone()
    lse = fusedce.cross_entropy(x, t, reduction="none", return_lse=True)[1]
    loss, g = fusedce.cross_entropy_with_grad(x, t, reduction="none", inplace=True)
    rl, rg = ref_ce(last, t[-3:])
    check_close(as_torch(loss)[-3:], rl, 2e-5, 1e-5, "loss of the last rows")
    check_close(x[-3:], rg, *TOL[torch.bfloat16], "grad of the last rows")
    check_close(as_torch(lse)[-3:], torch.logsumexp(last.double().cpu(), 1), 1e-5, 1e-5, "lse of the last rows")
    del x, g
    torch.cuda.empty_cache()
    # the same with 2^31 + rows of tiny C (sub-warp teams, 64-bit row offsets)
    n2, c2 = 2**31 // 10 + 7, 10
    x2 = torch.randn(n2, c2, device="cuda", dtype=torch.bfloat16)
    t2 = torch.randint(0, c2, (n2,), device="cuda")
    loss2 = fusedce.cross_entropy(x2, t2, reduction="none")
    rl2, _ = ref_ce(x2[-5:], t2[-5:])
    check_close(as_torch(loss2)[-5:], rl2, 2e-5, 1e-5, "loss of the last rows (C=10)")
