"""fusedce.linear_cross_entropy(_with_grad) and fusedce.torch.linear_cross_entropy against the
loss of the materialised logits (fusedce.cross_entropy, fusedce.reference) and against
PyTorch's F.linear_cross_entropy."""

import inspect
import subprocess
import sys

import numpy as np
import pytest

import fusedce
import fusedce.linear
from fusedce import reference as R
from conftest import need

HAS_LM_OPTIONS = "z_loss" in inspect.signature(fusedce.cross_entropy).parameters
needs_lm_options = pytest.mark.skipif(not HAS_LM_OPTIONS,
                                      reason="fusedce.cross_entropy has no z_loss/softcap yet")


def _problem(lead=(37,), H=8, V=11, dtype=np.float64, ignore=0.25, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead + (H,)).astype(dtype)
    w = (rng.standard_normal((V, H)) / np.sqrt(H)).astype(dtype)
    b = rng.standard_normal(V).astype(dtype) if bias else None
    t = rng.integers(0, V, size=lead)
    t[rng.random(lead) < ignore] = -100
    return x, w, b, t


def _expected(x, w, b, t, grad_loss=1.0, **kw):
    """(loss, grad_x, grad_w, grad_b) from fusedce.reference on the whole logits, float64."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    logits = x64 @ w64.T + (0.0 if b is None else b.astype(np.float64))
    loss, g = R.cross_entropy_with_grad(logits, t, grad_loss=grad_loss, **kw)
    g = g.reshape(-1, w.shape[0])
    xf = x64.reshape(-1, x.shape[-1])
    return loss, (g @ w64).reshape(x.shape), g.T @ xf, g.sum(0)


def _assert_close(got, want, rtol, atol, what=""):
    names = ("loss", "grad_input", "grad_linear_weight", "grad_linear_bias")
    for name, a, e in zip(names, got, want):
        if name == "grad_linear_bias" and a is None:  # no bias: nothing to compare
            continue
        np.testing.assert_allclose(np.asarray(a, dtype=np.float64), e, rtol=rtol, atol=atol,
                                   err_msg=f"{what} {name}")


OPTIONS = [
    {},
    {"weight": "w"},
    {"label_smoothing": 0.2},
    {"weight": "w", "label_smoothing": 0.1},
]


def _options(opts, V, seed=1):
    opts = dict(opts)
    if opts.get("weight") == "w":
        opts["weight"] = np.random.default_rng(seed).random(V) + 0.25
    return opts


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "weight", "smoothing", "weight+smoothing"])
@pytest.mark.parametrize("chunk_size", [1, 5, 37, None, 1000])
def test_matches_the_reference_on_the_whole_logits(reduction, opts, chunk_size):
    x, w, b, t = _problem()
    kw = dict(_options(opts, w.shape[0]), reduction=reduction)
    want = _expected(x, w, b, t, **kw)
    got = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, chunk_size=chunk_size,
                                                 **kw)
    _assert_close(got, want, 1e-11, 1e-13, f"{reduction} {opts} chunk {chunk_size}")
    loss = fusedce.linear_cross_entropy(x, w, t, linear_bias=b, chunk_size=chunk_size, **kw)
    np.testing.assert_allclose(loss, want[0], rtol=1e-11, atol=1e-13)
    assert loss.dtype == np.float64 and loss.shape == (() if reduction != "none" else t.shape)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float32_matches_fusedce_cross_entropy_on_the_materialised_logits(reduction):
    x, w, b, t = _problem(lead=(300,), H=32, V=500, dtype=np.float32, ignore=0.1)
    weight = np.random.default_rng(3).random(500).astype(np.float32) + 0.5
    kw = dict(weight=weight, reduction=reduction, label_smoothing=0.05)
    logits = x @ w.T + b
    loss, g = fusedce.cross_entropy_with_grad(logits, t, **kw)
    got = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, chunk_size=64, **kw)
    assert got[0].dtype == np.float32 and all(a.dtype == np.float32 for a in got[1:])
    np.testing.assert_allclose(got[0], loss, rtol=2e-6, atol=1e-6)
    for a, e in zip(got[1:], (g @ w, g.T @ x, g.sum(0))):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_every_row_ignored(reduction, bias):
    x, w, b, t = _problem(bias=bias)
    t[...] = -100
    loss, gx, gw, gb = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b,
                                                              reduction=reduction)
    assert not np.any(loss) and loss.shape == (() if reduction != "none" else t.shape)
    assert not np.any(gx) and not np.any(gw) and gx.shape == x.shape and gw.shape == w.shape
    assert (gb is None) == (not bias) and (gb is None or not np.any(gb))
    assert not np.any(fusedce.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ninety_percent_ignored_and_ignored_rows_get_zero_gradient(reduction):
    x, w, b, t = _problem(lead=(200,), ignore=0.9, seed=5)
    x[t == -100] = np.nan  # ignored rows never reach a GEMM
    got = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, reduction=reduction,
                                                 chunk_size=7)
    assert np.all(got[1][t == -100] == 0)
    xs = np.where(np.isnan(x), 0.0, x)
    _assert_close(got, _expected(xs, w, b, t, reduction=reduction), 1e-11, 1e-13)


def test_ignore_index_other_than_the_default():
    x, w, b, t = _problem()
    t[t == -100] = 3
    want = _expected(x, w, b, t, ignore_index=3)
    _assert_close(fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, ignore_index=3),
                  want, 1e-11, 1e-13)


@pytest.mark.parametrize("lead", [(2, 3, 5), (4, 1), ()])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_batch_shapes(lead, reduction):
    x, w, b, t = _problem(lead=lead, ignore=0.2 if lead else 0.0)
    t = np.asarray(t)
    got = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, reduction=reduction,
                                                 chunk_size=4)
    assert got[0].shape == (lead if reduction == "none" else ())
    assert got[1].shape == x.shape
    _assert_close(got, _expected(x, w, b, t, reduction=reduction), 1e-11, 1e-13)


def test_grad_loss_scales_every_gradient():
    x, w, b, t = _problem()
    for reduction in ("mean", "sum", "none"):
        one = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, reduction=reduction)
        half = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, reduction=reduction,
                                                      grad_loss=np.float32(-2.5))
        np.testing.assert_array_equal(one[0], half[0])
        for a, e in zip(half[1:], one[1:]):
            np.testing.assert_allclose(a, -2.5 * e, rtol=1e-13, atol=1e-15)


def test_per_row_grad_loss_for_reduction_none():
    x, w, b, t = _problem(lead=(6, 7))
    g = np.random.default_rng(9).standard_normal(t.shape)
    got = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, reduction="none",
                                                 grad_loss=g, chunk_size=5)
    _assert_close(got, _expected(x, w, b, t, reduction="none", grad_loss=g), 1e-11, 1e-13)
    with pytest.raises(ValueError, match="grad_loss"):
        fusedce.linear_cross_entropy_with_grad(x, w, t, reduction="none", grad_loss=g[:2])
    with pytest.raises(ValueError, match="grad_loss"):
        fusedce.linear_cross_entropy_with_grad(x, w, t, reduction="mean", grad_loss=g)


@needs_lm_options
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [{"z_loss": 1e-2}, {"softcap": 2.5},
                                  {"z_loss": 0.1, "softcap": 4.0, "weight": "w",
                                   "label_smoothing": 0.1}],
                         ids=["z_loss", "softcap", "all"])
def test_z_loss_and_softcap(reduction, opts):
    x, w, b, t = _problem(lead=(41,))
    x *= 3  # logits large enough for the cap to matter
    kw = dict(_options(opts, w.shape[0]), reduction=reduction)
    want = _expected(x, w, b, t, **kw)
    for chunk in (3, None):
        got = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, chunk_size=chunk,
                                                     **kw)
        _assert_close(got, want, 1e-10, 1e-12, f"{opts} chunk {chunk}")
        np.testing.assert_allclose(fusedce.linear_cross_entropy(x, w, t, linear_bias=b,
                                                                chunk_size=chunk, **kw),
                                   want[0], rtol=1e-10, atol=1e-12)


@needs_lm_options
def test_z_loss_mean_over_zero_total_weight_is_zero():
    x, w, b, t = _problem()
    weight = np.zeros(w.shape[0])
    got = fusedce.linear_cross_entropy_with_grad(x, w, t, weight=weight, z_loss=0.1)
    assert float(got[0]) == 0.0 and not np.any(got[2])
    _assert_close(got, _expected(x, w, b, t, weight=weight, z_loss=0.1), 0, 0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_computes_in_float32(dtype):
    if dtype == "bfloat16":
        dt = need("ml_dtypes").bfloat16
    else:
        dt = np.float16
    x, w, b, t = _problem(lead=(50,), H=16, V=40)
    x, w, b = x.astype(dt), w.astype(dt), b.astype(dt)
    loss, gx, gw, gb = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b,
                                                              chunk_size=16)
    assert loss.dtype == np.float32 and gx.dtype == gw.dtype == gb.dtype == np.dtype(dt)
    want = _expected(x, w, b, t)
    _assert_close((loss, gx, gw, gb), want, 2e-2, 2e-3, dtype)
    assert fusedce.linear_cross_entropy(x, w, t, linear_bias=b).dtype == np.float32


def test_layouts_int32_targets_and_read_only_inputs_are_not_modified():
    x, w, b, t = _problem(lead=(30,), H=6, V=9)
    xf, wf = np.asfortranarray(x), np.asfortranarray(w)
    t32 = t.astype(np.int32)
    bs = np.repeat(b, 2)[::2]  # strided bias
    copies = [a.copy() for a in (xf, wf, t32, bs)]
    for a in (xf, wf, t32, bs):
        a.flags.writeable = False
    got = fusedce.linear_cross_entropy_with_grad(xf, wf, t32, linear_bias=bs, chunk_size=4)
    _assert_close(got, _expected(x, w, b, t), 1e-11, 1e-13)
    for a, c in zip((xf, wf, t32, bs), copies):
        np.testing.assert_array_equal(a, c)
    xs = np.repeat(x, 2, axis=0)[::2]  # strided rows, every row kept
    ts = np.where(t == -100, 0, t)
    _assert_close(fusedce.linear_cross_entropy_with_grad(xs, w, ts, linear_bias=b),
                  _expected(x, w, b, ts), 1e-11, 1e-13)


def test_callers_arrays_untouched():
    x, w, b, t = _problem()
    weight = np.random.default_rng(2).random(w.shape[0])
    g = np.ones(t.shape)
    args = (x, w, t, b, weight, g)
    copies = [a.copy() for a in args]
    fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, weight=weight,
                                           reduction="none", grad_loss=g, chunk_size=6)
    fusedce.linear_cross_entropy(x, w, t, linear_bias=b, weight=weight)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)


def test_automatic_chunk_size():
    rows = fusedce.linear._auto_chunk_rows
    assert rows(3686, 32000, 4) == 369                 # 10 even chunks of <= 393 rows
    assert rows(100, 32000, 4) == 100                  # one chunk
    assert rows(10000, 262144, 4) == 371               # MIN_CHUNK_ROWS (384), evened out
    assert rows(100000, 1000, 4) * 1000 * 4 <= fusedce.linear.CHUNK_BYTES
    assert rows(0, 10, 4) == 1


BAD = [
    (dict(input=np.zeros((4, 3), np.int64)), TypeError, "input"),
    (dict(input=np.zeros(())), ValueError, "input"),
    (dict(input=np.zeros((4, 5))), ValueError, "linear_weight"),
    (dict(linear_weight=np.zeros((6, 3), np.float32)), TypeError, "linear_weight"),
    (dict(linear_weight=np.zeros((6, 3, 1))), ValueError, "linear_weight"),
    (dict(linear_weight=np.zeros((6, 3), np.int32)), TypeError, "linear_weight"),
    (dict(linear_bias=np.zeros(5)), ValueError, "linear_bias"),
    (dict(linear_bias=np.zeros(6, np.float32)), TypeError, "linear_bias"),
    (dict(target=np.zeros(5, np.int64)), ValueError, "target"),
    (dict(target=np.zeros(4)), TypeError, "probabilities"),
    (dict(target=np.zeros(4, np.uint8)), TypeError, "target"),
    (dict(target=np.array([0, 6, 1, 2])), IndexError, "target"),
    (dict(target=np.array([0, -1, 1, 2])), IndexError, "target"),
    (dict(weight=np.ones(5)), ValueError, "weight"),
    (dict(weight=np.array([1.0, np.nan, 1, 1, 1, 1])), ValueError, "weight"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
    (dict(label_smoothing=float("nan")), ValueError, "label_smoothing"),
    (dict(z_loss=float("inf")), ValueError, "z_loss"),
    (dict(z_loss=-1.0), ValueError, "z_loss"),
    (dict(softcap=0.0), ValueError, "softcap"),
    (dict(softcap=float("nan")), ValueError, "softcap"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(chunk_size=2.0), TypeError, "chunk_size"),
    (dict(ignore_index=1.5), TypeError, "ignore_index"),
    (dict(grad_loss=np.ones(3)), ValueError, "grad_loss"),
]


@pytest.mark.parametrize("change,exc,name", BAD, ids=[f"{c}" for c, _, _ in BAD])
def test_bad_arguments_name_themselves(change, exc, name):
    if not HAS_LM_OPTIONS and ({"z_loss", "softcap"} & set(change)):
        pytest.skip("no z_loss/softcap yet")
    args = dict(input=np.zeros((4, 3)), linear_weight=np.zeros((6, 3)),
                target=np.array([0, 1, -100, 5]), linear_bias=np.zeros(6))
    args.update(change)
    grad_loss = args.pop("grad_loss", 1.0)
    pos = (args.pop("input"), args.pop("linear_weight"), args.pop("target"))
    with pytest.raises(exc, match=name):
        fusedce.linear_cross_entropy_with_grad(*pos, grad_loss=grad_loss, **args)
    if "grad_loss" not in change:
        with pytest.raises(exc, match=name):
            fusedce.linear_cross_entropy(*pos, **args)


def test_import_fusedce_loads_neither_torch_nor_scipy():
    code = ("import sys, fusedce; assert fusedce.linear_cross_entropy; "
            "print('torch' in sys.modules, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_exports():
    assert fusedce.linear_cross_entropy is fusedce.linear.linear_cross_entropy
    assert fusedce.linear_cross_entropy_with_grad is fusedce.linear.linear_cross_entropy_with_grad
    assert {"linear_cross_entropy", "linear_cross_entropy_with_grad"} <= set(fusedce.__all__)


# ------------------------------------------------------------------------------ torch


def _torch():
    torch = need("torch")
    import fusedce.torch as ft
    return torch, ft


def _torch_problem(torch, dtype, N=40, H=12, V=30, seed=0, lead=None):
    g = torch.Generator().manual_seed(seed)
    lead = lead or (N,)
    x = torch.randn(lead + (H,), generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g, dtype=torch.float64) / H ** 0.5).to(dtype).requires_grad_()
    b = torch.randn(V, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    t = torch.randint(0, V, lead, generator=g)
    t.view(-1)[::4] = -100
    cw = torch.rand(V, generator=g, dtype=torch.float64).to(dtype) + 0.5
    return x, w, b, t, cw


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [{}, {"weight": True, "label_smoothing": 0.1}], ids=["plain", "w+ls"])
@pytest.mark.parametrize("bias", [True, False])
def test_torch_equals_F_linear_cross_entropy(dtype, reduction, opts, bias):
    torch, ft = _torch()
    import torch.nn.functional as F
    dt = getattr(torch, dtype)
    x, w, b, t, cw = _torch_problem(torch, dt)
    kw = dict(reduction=reduction, label_smoothing=opts.get("label_smoothing", 0.0),
              weight=cw if opts.get("weight") else None, linear_bias=b if bias else None)
    params = (x, w, b) if bias else (x, w)
    up = (torch.linspace(-1, 2, t.numel(), dtype=dt).reshape(t.shape) if reduction == "none"
          else torch.tensor(0.75, dtype=dt))
    out = []
    for fn in (lambda **k: ft.linear_cross_entropy(x, w, t, chunk_size=7, **k),
               lambda **k: F.linear_cross_entropy(x, w, t, **k)):
        loss = fn(**kw)
        out.append((loss, *torch.autograd.grad(loss, params, up)))
    tol = dict(rtol=1e-12, atol=1e-13) if dt == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for a, e in zip(*out):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a, e, **tol)


def test_torch_backward_uniform_none_upstream_and_second_backward():
    torch, ft = _torch()
    import torch.nn.functional as F
    x, w, b, t, _ = _torch_problem(torch, torch.float64, lead=(3, 5))
    loss = ft.linear_cross_entropy(x, w, t, linear_bias=b, reduction="none")
    assert loss.shape == t.shape
    ref = F.linear_cross_entropy(x.reshape(-1, x.shape[-1]), w, t.reshape(-1), linear_bias=b,
                                 reduction="none").reshape(t.shape)
    torch.testing.assert_close(loss, ref)
    for scale in (1.0, 3.0):
        got = torch.autograd.grad(loss, (x, w, b), torch.full_like(loss, scale), retain_graph=True)
        want = torch.autograd.grad(ref, (x, w, b), torch.full_like(ref, scale), retain_graph=True)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e)


def test_torch_gradcheck_float64():
    torch, ft = _torch()
    x, w, b, t, cw = _torch_problem(torch, torch.float64, N=5, H=3, V=4)
    for reduction in ("mean", "sum", "none"):
        fn = (lambda x, w, b, reduction=reduction:
              ft.linear_cross_entropy(x, w, t, linear_bias=b, weight=cw, reduction=reduction,
                                      label_smoothing=0.1, chunk_size=2))
        assert torch.autograd.gradcheck(fn, (x, w, b))


@needs_lm_options
def test_torch_z_loss_and_softcap_gradcheck():
    torch, ft = _torch()
    x, w, b, t, _ = _torch_problem(torch, torch.float64, N=6, H=3, V=5)
    fn = lambda x, w, b: ft.linear_cross_entropy(x, w, t, linear_bias=b, z_loss=0.1,  # noqa: E731
                                                 softcap=2.0, chunk_size=4)
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_torch_module_no_grad_half_and_unbatched():
    torch, ft = _torch()
    import torch.nn.functional as F
    x, w, b, t, cw = _torch_problem(torch, torch.float32)
    mod = ft.LinearCrossEntropyLoss(weight=cw, reduction="sum", ignore_index=-100)
    assert "reduction='sum'" in repr(mod)
    with torch.no_grad():
        torch.testing.assert_close(mod(x, w, t, b),
                                   F.linear_cross_entropy(x, w, t, linear_bias=b, weight=cw,
                                                          reduction="sum"))
    # ignore_index=None is PyTorch's default, meaning -100
    torch.testing.assert_close(ft.linear_cross_entropy(x, w, t, ignore_index=None),
                               F.linear_cross_entropy(x, w, t))
    # unbatched: (H,) input, 0-d target
    xi = x[1].detach().requires_grad_()
    loss = ft.linear_cross_entropy(xi, w, t[1], reduction="none")
    assert loss.shape == ()
    torch.testing.assert_close(loss, F.linear_cross_entropy(xi, w, t[1], reduction="none"))
    for dt in (torch.bfloat16, torch.float16):
        xh = x.detach().to(dt).requires_grad_()
        wh = w.detach().to(dt).requires_grad_()
        loss = ft.linear_cross_entropy(xh, wh, t)
        loss.backward()
        assert loss.dtype == xh.grad.dtype == wh.grad.dtype == dt
        torch.testing.assert_close(loss.float(), F.linear_cross_entropy(x, w, t), rtol=2e-2,
                                   atol=2e-2)


def test_torch_bad_arguments():
    torch, ft = _torch()
    x, w, b, t, _ = _torch_problem(torch, torch.float32)
    with pytest.raises(TypeError, match="probabilities"):
        ft.linear_cross_entropy(x, w, torch.rand(40, 30))
    with pytest.raises(TypeError, match="input"):
        ft.linear_cross_entropy(x.detach().long(), w, t)
    with pytest.raises(TypeError, match="linear_weight"):
        ft.linear_cross_entropy(x, w.double(), t)
    with pytest.raises(ValueError, match="linear_weight"):
        ft.linear_cross_entropy(x, w[:, :5], t)
    with pytest.raises(ValueError, match="reduction"):
        ft.linear_cross_entropy(x, w, t, reduction="avg")
    with pytest.raises(ValueError, match="chunk_size"):
        ft.LinearCrossEntropyLoss(chunk_size=0)(x, w, t)
    with pytest.raises(IndexError, match="target"):
        ft.linear_cross_entropy(x, w, torch.full((40,), 30))


def test_without_scipy_the_numpy_products_give_the_same(monkeypatch):
    """Without SciPy's BLAS the GEMMs are NumPy's matmul and grad_linear_weight is
    accumulated through one temporary: the same results."""
    import fusedce.linear as linear
    rng = np.random.default_rng(7)
    x = rng.standard_normal((50, 16))
    w = rng.standard_normal((30, 16))
    b = rng.standard_normal(30)
    t = rng.integers(0, 30, 50)
    t[::4] = -100
    want = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, chunk_size=7,
                                                  z_loss=0.01, softcap=5.0)
    monkeypatch.setattr(linear, "_scipy_gemm", lambda dtype: None)
    got = fusedce.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, chunk_size=7,
                                                 z_loss=0.01, softcap=5.0)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("with_scipy", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_first_chunk_overwrites_grad_weight_whatever_it_held(monkeypatch, with_scipy, dtype):
    """grad_linear_weight starts as np.empty: the first chunk's product must replace what
    the memory held (beta = 0 never reads it, NaN included), the later ones add to it."""
    import fusedce.linear as linear
    if not with_scipy:
        monkeypatch.setattr(linear, "_scipy_gemm", lambda dt: None)
    rng = np.random.default_rng(11)
    g1, g2 = rng.standard_normal((2, 9, 30)).astype(dtype)
    x1, x2 = rng.standard_normal((2, 9, 16)).astype(dtype)
    gemm = linear._Gemm(np, dtype, 30, 16)
    acc = np.full((30, 16), np.nan, dtype)
    gemm.add_grad_weight(g1, x1, acc, first=True)
    np.testing.assert_allclose(acc, g1.T @ x1, rtol=1e-5)
    gemm.add_grad_weight(g2, x2, acc)
    np.testing.assert_allclose(acc, g1.T @ x1 + g2.T @ x2, rtol=1e-5, atol=1e-5)
