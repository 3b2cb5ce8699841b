"""The Python layer's own pieces: bfloat16 (ml_dtypes) arrays, reading side inputs by value,
the out=/inplace overlap checks, the choice of kernels through Backend.ops, and
fusedce.emulated's argument checks (those skip when fusedce._emulated is not built)."""

import importlib
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import fusedce
from fusedce import _arrays as arrays
from fusedce import _core, functional

from conftest import need

ml_dtypes = need("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)

HAS_EMULATED = importlib.util.find_spec("fusedce._emulated") is not None


def rng(seed=0):
    return np.random.default_rng(seed)


def logits(n=6, c=11, seed=0):
    return (3 * rng(seed).standard_normal((n, c))).astype(np.float32)


def same(a, b):
    """Equal dtype, shape and values (bit for bit, NaN equal to NaN)."""
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


# ---------------------------------------------------------------------------------------
# bfloat16 (ml_dtypes) on the CPU functions: float32 math, results rounded to bfloat16


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("fn", [fusedce.softmax, fusedce.log_softmax])
def test_bf16_softmax_is_the_float32_result_rounded(fn, axis):
    x = logits().astype(BF16)
    got = fn(x, axis=axis)
    same(got, fn(x.astype(np.float32), axis=axis).astype(BF16))


@pytest.mark.parametrize("log", [False, True])
def test_bf16_softmax_backward_takes_bf16_grad_and_y(log):
    fwd, bwd = (fusedce.log_softmax, fusedce.log_softmax_backward) if log else \
        (fusedce.softmax, fusedce.softmax_backward)
    y = fwd(logits().astype(BF16))
    grad = rng(1).standard_normal(y.shape).astype(BF16)
    got = bwd(grad, y)
    same(got, bwd(grad.astype(np.float32), y.astype(np.float32)).astype(BF16))
    with pytest.raises(TypeError, match="grad and y must have the same dtype.*float32.*bfloat16"):
        bwd(grad.astype(np.float32), y)


def test_bf16_cross_entropy_losses_are_float32_and_grad_bf16():
    x = logits().astype(BF16)
    x32 = x.astype(np.float32)
    t = rng(2).integers(0, x.shape[1], x.shape[0])
    w = np.linspace(0.5, 2.0, x.shape[1]).astype(np.float32)
    for kw in (dict(), dict(weight=w, label_smoothing=0.1, reduction="none")):
        loss, grad = fusedce.cross_entropy_with_grad(x, t, **kw)
        loss32, grad32 = fusedce.cross_entropy_with_grad(x32, t, **kw)
        same(loss, loss32)
        same(grad, grad32.astype(BF16))
        same(fusedce.cross_entropy(x, t, **kw), loss32)
        same(fusedce.cross_entropy_backward(1.0, x, t, **kw),
             fusedce.cross_entropy_backward(1.0, x32, t, **kw).astype(BF16))


def test_bf16_nll_and_mse():
    logp = fusedce.log_softmax(logits()).astype(BF16)
    t = rng(3).integers(0, logp.shape[1], logp.shape[0])
    same(fusedce.nll_loss(logp, t), fusedce.nll_loss(logp.astype(np.float32), t))
    same(fusedce.nll_loss_backward(1.0, logp, t),
         fusedce.nll_loss_backward(1.0, logp.astype(np.float32), t).astype(BF16))
    pred, target = logits(seed=4).astype(BF16), logits(seed=5).astype(BF16)
    p32, t32 = pred.astype(np.float32), target.astype(np.float32)
    same(fusedce.mse_loss(pred, target), fusedce.mse_loss(p32, t32))
    same(fusedce.mse_loss_backward(1.0, pred, target),
         fusedce.mse_loss_backward(1.0, p32, t32).astype(BF16))


def test_bf16_out_and_inplace():
    x = logits().astype(BF16)
    want = fusedce.softmax(x.astype(np.float32)).astype(BF16)
    out = np.zeros_like(x)
    assert fusedce.softmax(x, out=out) is out
    same(out, want)
    with pytest.raises(TypeError, match="out must have dtype bfloat16"):
        fusedce.softmax(x, out=np.zeros(x.shape, np.float32))
    t = rng(6).integers(0, x.shape[1], x.shape[0])
    _, want_grad = fusedce.cross_entropy_with_grad(x.astype(np.float32), t)
    y = x.copy()
    _, grad = fusedce.cross_entropy_with_grad(y, t, inplace=True)
    assert grad is y
    same(y, want_grad.astype(BF16))


def test_errors_say_bfloat16_is_accepted():
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        fusedce.softmax(np.zeros((2, 3), np.int32))
    with pytest.raises(TypeError, match="bfloat16"):
        fusedce.mse_loss(np.zeros(3, np.float32), np.zeros(3, np.int64))


def test_dtype_code_maps_bfloat16():
    assert arrays.dtype_code(BF16) == _core.DType.bfloat16
    assert arrays.dtype_code(np.float16) == _core.DType.float16
    rows = arrays.rows_struct(np.zeros((2, 3), BF16))
    assert rows.dtype == _core.DType.bfloat16 and rows.row_stride == 3


# ---------------------------------------------------------------------------------------
# Side inputs are read by value, never reinterpreted


def test_values_converts_bf16_by_value():
    w = np.array([1.0, -2.5, 0.0078125], dtype=BF16)
    got = arrays.values(w, arrays.HOST, "weight", np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [1.0, -2.5, 0.0078125])  # 1.0, not 16256.0
    to_bf16 = arrays.values(np.array([1.0, 3.0]), arrays.HOST, "target", BF16)
    assert to_bf16.dtype == BF16
    np.testing.assert_array_equal(to_bf16.astype(np.float64), [1.0, 3.0])


def test_values_is_zero_copy_in_the_right_dtype_and_rejects_non_real():
    a = np.arange(4, dtype=np.float32)
    assert arrays.values(a, arrays.HOST, "lse", np.float32) is a
    for bad in (np.zeros(3, bool), np.zeros(3, complex), np.array(["a"])):
        with pytest.raises(TypeError, match="^weight must hold real numbers"):
            arrays.values(bad, arrays.HOST, "weight", np.float32)


def test_values_of_a_torch_bf16_tensor():
    torch = need("torch")
    t = torch.tensor([1.0, 0.5, -3.0], dtype=torch.bfloat16)
    got = arrays.values(t, arrays.HOST, "weight", np.float64)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [1.0, 0.5, -3.0])


def test_bf16_side_inputs_give_the_float32_results():
    x = logits()
    n, c = x.shape
    t = rng(7).integers(0, c, n)
    w = np.linspace(0.25, 2.0, c).astype(BF16)
    w32 = w.astype(np.float32)
    same(fusedce.cross_entropy(x, t, weight=w), fusedce.cross_entropy(x, t, weight=w32))
    g = np.linspace(-1, 2, n).astype(BF16)
    same(fusedce.cross_entropy_backward(g, x, t, reduction="none"),
         fusedce.cross_entropy_backward(g.astype(np.float32), x, t, reduction="none"))
    same(fusedce.cross_entropy_backward(np.asarray(2.0, BF16), x, t),
         fusedce.cross_entropy_backward(2.0, x, t))
    _, lse = fusedce.cross_entropy(x, t, reduction="none", return_lse=True)
    lse_bf = lse.astype(BF16)
    same(fusedce.cross_entropy_backward(1.0, x, t, lse=lse_bf),
         fusedce.cross_entropy_backward(1.0, x, t, lse=lse_bf.astype(np.float32)))
    q = fusedce.softmax(logits(seed=8)).astype(BF16)
    same(fusedce.cross_entropy(x, q), fusedce.cross_entropy(x, q.astype(np.float32)))
    target = logits(seed=9).astype(BF16)
    ge = np.ones_like(x, dtype=BF16) * 3
    same(fusedce.mse_loss_backward(ge, x, target, reduction="none"),
         fusedce.mse_loss_backward(ge.astype(np.float32), x, target.astype(np.float32),
                                   reduction="none"))


def test_side_inputs_are_not_modified():
    x = logits()
    t = rng(10).integers(0, x.shape[1], x.shape[0])
    w = np.linspace(0.5, 2.0, x.shape[1]).astype(BF16)
    w_before = w.copy()
    fusedce.cross_entropy_with_grad(x, t, weight=w)
    same(w, w_before)


# ---------------------------------------------------------------------------------------
# Overlap of out= (and inplace probability targets) from byte extents


class FakeDeviceArray:
    """An array that is not NumPy's: pointer in data.ptr (as CuPy), shape, strides, dtype."""

    class _Data:
        def __init__(self, ptr):
            self.ptr = ptr

    def __init__(self, a):
        self.shape, self.strides, self.dtype, self.size = a.shape, a.strides, a.dtype, a.size
        self.data = self._Data(a.__array_interface__["data"][0])


def test_byte_extent_of_views():
    a = np.zeros((4, 5), np.float32)
    base = a.__array_interface__["data"][0]
    assert arrays.byte_extent(a) == (base, base + 80)
    assert arrays.byte_extent(a[::-1, ::-1]) == (base, base + 80)
    assert arrays.byte_extent(a[1:3, 2]) == (base + 28, base + 52)
    assert arrays.byte_extent(a[:0]) == (0, 0)


@pytest.mark.parametrize("wrap", [lambda v: v, FakeDeviceArray], ids=["numpy", "fake-device"])
def test_may_overlap(wrap):
    buf = np.zeros(40, np.float32)
    cases = [
        (buf[:20], buf[10:30], True),
        (buf[:20], buf[20:], False),
        (buf[::2], buf[1::2], True),  # interleaved: conservatively overlapping
        (buf[:10], buf[9::-1], True),
        (buf[:0], buf, False),
        (buf[:20].reshape(4, 5)[:, :2], buf[:20].reshape(4, 5)[:, 2:], True),
        (buf[:20], np.zeros(20, np.float32), False),
    ]
    for a, b, want in cases:
        assert arrays.may_overlap(wrap(a), wrap(b)) is want
        assert arrays.may_overlap(wrap(b), wrap(a)) is want


def test_shifted_out_is_computed_through_a_temporary():
    n, c = 64, 33
    buf = np.zeros((n + 1) * c, np.float32)
    x = buf[:n * c].reshape(n, c)
    x[...] = x0 = logits(n, c, seed=11)
    want = fusedce.softmax(x0)
    out = buf[c:].reshape(n, c)  # out row i is x row i + 1
    assert fusedce.softmax(x, out=out) is out
    same(out, want)
    same(fusedce.softmax(x0, out=np.empty_like(x0)), want)  # sanity: plain out= agrees


def test_out_may_alias_the_input_exactly():
    x = logits(seed=12)
    want = fusedce.log_softmax(x)
    y = x.copy()
    assert fusedce.log_softmax(y, out=y) is y
    same(y, want)


def test_out_overlapping_another_input_read_by_the_kernel():
    n, c = 32, 17
    y = fusedce.softmax(logits(n, c, seed=13))
    buf = np.zeros((n + 1) * c, np.float32)
    grad = buf[c:].reshape(n, c)
    grad[...] = rng(14).standard_normal((n, c))
    want = fusedce.softmax_backward(grad.copy(), y)
    out = buf[:n * c].reshape(n, c)  # out row i + 1 is grad row i
    fusedce.softmax_backward(grad, y, out=out)
    same(out, want)


def test_inplace_with_overlapping_probability_target_raises():
    x = logits()
    x2 = np.concatenate([x, x], axis=1)
    logits_view, probs_view = x2[:, : x.shape[1]], x2[:, 1: x.shape[1] + 1]
    with pytest.raises(ValueError, match="target must not share memory with logits"):
        fusedce.cross_entropy_with_grad(logits_view, probs_view, inplace=True)


# ---------------------------------------------------------------------------------------
# Which kernels run: Backend.ops and cuda_kernels


class RecordingOps:
    """Stands in for a kernel module: records what softmax_forward is handed."""

    def __init__(self):
        self.calls = []

    def softmax_forward(self, x, y, log, launch):
        self.calls.append((x.dtype, y.dtype, launch.device, launch.stream))


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32])
def test_cuda_kernels_get_half_types_natively(dtype):
    ops = RecordingOps()
    backend = arrays.Backend(np, 1, ops, True)
    softmax = functional._runs_on(functional.softmax, lambda named: backend)
    y = softmax(np.zeros((2, 3), dtype))
    assert y.dtype == np.dtype(dtype) and y.shape == (2, 3)
    assert ops.calls == [(arrays.dtype_code(dtype),) * 2 + (1, 0)]
    assert not backend.on_gpu


def test_cpu_kernels_get_half_types_as_they_are():
    """No conversion to float32 on the way in (the kernels read half types themselves)."""
    ops = RecordingOps()
    backend = arrays.Backend(np, -1, ops, False)
    softmax = functional._runs_on(functional.softmax, lambda named: backend)
    softmax(np.zeros((2, 3), BF16))
    softmax(np.zeros((2, 3), np.float16))
    assert ops.calls == [(_core.DType.bfloat16, _core.DType.bfloat16, -1, 0),
                         (_core.DType.float16, _core.DType.float16, -1, 0)]
    assert arrays.HOST.ops is _core and not arrays.HOST.cuda_kernels


def test_runs_on_keeps_signature_and_passes_arrays_by_name():
    seen = {}

    def choose(named):
        seen.update(named)
        return arrays.HOST

    ce = functional._runs_on(functional.cross_entropy, choose)
    import inspect
    assert inspect.signature(ce) == inspect.signature(fusedce.cross_entropy)
    x, t = logits(), np.zeros(6, np.int64)
    same(ce(x, target=t), fusedce.cross_entropy(x, t))
    assert seen["logits"] is x and seen["target"] is t and seen["weight"] is None


# ---------------------------------------------------------------------------------------
# fusedce.emulated


def test_import_fusedce_stays_cheap():
    code = ("import sys, fusedce; print(sorted(m for m in ('fusedce.emulated', "
            "'fusedce._emulated', 'torch', 'ml_dtypes', 'cupy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_emulated_import_error_says_how_to_build(monkeypatch):
    monkeypatch.setitem(sys.modules, "fusedce._emulated", None)  # as if not built
    monkeypatch.delattr(fusedce, "_emulated", raising=False)
    monkeypatch.delitem(sys.modules, "fusedce.emulated", raising=False)
    with pytest.raises(ImportError, match="CUDA headers.*nvidia-cuda-runtime.*rebuild"):
        importlib.import_module("fusedce.emulated")


@pytest.fixture
def fe():
    if not HAS_EMULATED:
        pytest.skip("fusedce._emulated is not built")
    return importlib.import_module("fusedce.emulated")


class NotNumpy:
    """An array-like object of another library (has __array__ and __dlpack__)."""

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a

    def __dlpack__(self, stream=None):
        return self._a.__dlpack__()

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_emulated_rejects_other_arrays(fe):
    x = logits()
    t = np.zeros(x.shape[0], np.int64)
    with pytest.raises(TypeError, match="^x must be a NumPy array"):
        fe.softmax(NotNumpy(x))
    with pytest.raises(TypeError, match="^target must be a NumPy array"):
        fe.cross_entropy(x, NotNumpy(t))
    with pytest.raises(TypeError, match="^weight must be a NumPy array"):
        fe.cross_entropy(x, t, weight=NotNumpy(np.ones(x.shape[1], np.float32)))
    with pytest.raises(TypeError, match="^out must be a NumPy array"):
        fe.softmax(x, out=NotNumpy(np.empty_like(x)))
    torch = need("torch")
    with pytest.raises(TypeError, match="^logits must be a NumPy array.*torch"):
        fe.cross_entropy_with_grad(torch.from_numpy(x), t)


def test_emulated_functions_match_fusedce(fe):
    import inspect
    for name in functional.__all__:
        assert inspect.signature(getattr(fe, name)) == inspect.signature(getattr(fusedce, name))
        assert getattr(fe, name).__module__ == "fusedce.emulated"
    x = logits()
    t = rng(15).integers(0, x.shape[1], x.shape[0])
    loss, grad = fe.cross_entropy_with_grad(x, t, reduction="none")
    want_loss, want_grad = fusedce.cross_entropy_with_grad(x, t, reduction="none")
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


def test_emulated_bf16_is_read_natively(fe):
    x = logits().astype(BF16)
    t = rng(16).integers(0, x.shape[1], x.shape[0])
    loss, grad = fe.cross_entropy_with_grad(x, t, reduction="none")
    assert loss.dtype == np.float32 and grad.dtype == BF16
    want_loss, want_grad = fusedce.cross_entropy_with_grad(x.astype(np.float32), t,
                                                           reduction="none")
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad.astype(np.float32), want_grad, rtol=1e-2, atol=1e-3)


def test_emulated_device_selection(fe):
    devs = fe.devices()
    assert [d["index"] for d in devs] == list(range(len(devs)))
    assert all({"name", "major", "minor", "sm_count"} <= set(d) for d in devs)
    before = fe.get_device()
    with pytest.raises(ValueError, match="^index must be in"):
        fe.set_device(len(devs))
    with pytest.raises(TypeError, match="^index must be an integer"):
        fe.set_device(0.0)
    last = len(devs) - 1
    fe.clear_launch_log()
    with fe.device(last):
        assert fe.get_device() == last
        fe.softmax(logits())
    assert fe.get_device() == before
    log = fe.launch_log()
    assert log and all(entry[-1] == last for entry in log)
    fe.clear_launch_log()
    assert fe.launch_log() == []
