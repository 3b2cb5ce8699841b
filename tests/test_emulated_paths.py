"""Every kernel path of the CUDA launcher, reached and checked on the emulated GPUs.

csrc/cuda picks a kernel and a "team" (the threads that own one row) from the class count,
the dtype and the GPU: 4, 16 or 32 lanes, a block of 256, clusters of 2-16 blocks on sm_90,
a block of 512 before sm_90 (or where a cluster cannot be placed), and the streaming kernel
beyond. `expected_row_kernel` below restates that choice independently; each case runs the
ops that share the row kernel (forward with lse/argmax, fused forward+backward with out= and
in place, backward from a saved lse, probability targets, softmax, log_softmax, unvalidated
out-of-range targets) on aligned and misaligned rows, checks them against the NumPy
reference, and checks that the kernel the model logged is the expected one; each case runs
again with z_loss and softcap (the cross-entropy ops only). The other kernels (softmax
backward, nll, mse) get the same treatment. `test_every_path_is_reached`
lists the paths reached and fails if one is missing.

Device 0 is an sm_90 with 132 SMs, device 1 an sm_80, device 2 an sm_90 with one SM, where
every team of a grid-stride loop handles several rows and large clusters do not fit.
"""

import math

import numpy as np
import pytest

fe = pytest.importorskip("fusedce.emulated", exc_type=ImportError, reason="fusedce was built without fusedce._emulated")
from fusedce import reference as ref  # noqa: E402

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # ml_dtypes is a test extra
    BF16 = None

NAME = {"float32": "float", "float64": "double", "float16": "__half", "bfloat16": "__nv_bfloat16"}
DTYPES = ["float32", "float64", "float16", "bfloat16"]
SM90, SM80, ONE_SM = 0, 1, 2


def np_dtype(name):
    if name == "bfloat16":
        if BF16 is None:
            pytest.skip("bfloat16 needs ml_dtypes")
        return BF16
    return np.dtype(name)


# ----------------------------------------------------------------------------- the launcher's choice


def vec(dtype):
    return 16 // (8 if dtype == "float64" else 4 if dtype == "float32" else 2)


def expected_row_kernel(dtype, C, device, plain=False):
    """The row kernel the launcher picks (cross_entropy.cuh, launch_rows), restated: rows_plain
    (``plain``: index targets or none, no weights, smoothing, soft-cap, lse given or argmax)
    or rows_resident by row length, the streaming kernel past them."""
    T, packs = NAME[dtype], math.ceil(C / vec(dtype))
    resident = "rows_plain" if plain else "rows_resident"
    sub = [(4, "SubWarpTeam<4, 256>, 1"), (16, "SubWarpTeam<16, 256>, 1"), (64, "SubWarpTeam<32, 256>, 2"),
           (256, "SubWarpTeam<32, 256>, 8"), (2048, "BlockTeam<256>, 8")]
    for limit, team in sub:
        if packs <= limit:
            return f"{resident}<{T}, {team}>"
    if dtype != "float64" and device in (SM90, ONE_SM):
        clusters = [(4096, 256, 2), (8192, 256, 4), (16384, 256, 8), (32768, 256, 16), (65536, 512, 16)]
        for limit, block, k in clusters:
            # one SM holds 2048 / block blocks; a cluster must fit in it
            fits = device == SM90 or k <= 2048 // block
            if packs <= limit and fits:
                return f"{resident}<{T}, ClusterTeam<{block}>, 8> x{k}"
    if packs <= 4096:
        return f"{resident}<{T}, BlockTeam<512>, 8>"
    return f"rows_streaming<{T}, 512>"


def row_cases():
    """(dtype, C, device, N) reaching every row-kernel path; C just past each boundary (odd
    class counts, partial 16-byte packs), N > 1 so that rows interact. On the one-SM GPU, N is
    larger than the teams the grid holds at once (grid-stride reuse)."""
    cases = []
    for dtype in DTYPES:
        v = vec(dtype)
        for packs in (4, 16, 64, 256, 2048):
            cases.append((dtype, packs * v - 1, SM90, 3))
        if dtype == "float64":
            cases += [(dtype, 4096 * v - 1, SM90, 2), (dtype, 4096 * v + 1, SM90, 2)]
        else:
            for packs in (4096, 8192, 16384, 32768, 65536):
                cases.append((dtype, packs * v - 1, SM90, 2))
            cases += [(dtype, 4096 * v - 1, SM80, 2), (dtype, 4096 * v + 3, SM80, 2)]
    cases.append(("float32", 65536 * 4 + 5, SM90, 1))  # past the largest cluster: streaming
    # one SM: 8 blocks of 256 at once, so 64 x 8 rows fill the 4-lane teams; clusters of 2 fit 4 times
    cases += [("float32", 13, ONE_SM, 600), ("float32", 61, ONE_SM, 140), ("float32", 1023, ONE_SM, 70),
              ("float32", 5000, ONE_SM, 11), ("float32", 9000, ONE_SM, 6), ("float32", 33000, ONE_SM, 3),
              ("float16", 140000, ONE_SM, 2), ("bfloat16", 20000, ONE_SM, 3)]
    return cases


def expected_other_kernels(dtype, C):
    """softmax backward, nll forward/backward and mse forward/backward (softmax.cu, nll.cu, mse.cu)."""
    T, packs = NAME[dtype], math.ceil(C / vec(dtype))
    sm = "SubWarpTeam<4, 256>" if C <= 16 else "SubWarpTeam<32, 256>" if C <= 1024 else "BlockTeam<256>"
    nll = "SubWarpTeam<4, 256>" if packs <= 4 else "SubWarpTeam<32, 256>" if packs <= 1024 else "BlockTeam<256>"
    mse = "SubWarpTeam<4, 256>" if C <= 16 else "SubWarpTeam<32, 256>" if C <= 4096 else "BlockTeam<256>"
    return {f"softmax_backward_kernel<{T}, {sm}>", f"nll_forward_kernel<{T}>", f"nll_backward_kernel<{T}, {nll}>",
            f"mse_forward_kernel<{T}, {mse}>", f"mse_backward_kernel<{T}, {mse}>"}


OTHER_CS = [7, 300, 9000]  # each team of the other kernels, for every dtype (9000 > 1024 packs of 8)


def every_expected_path():
    paths = {expected_row_kernel(d, C, dev, plain) for d, C, dev, _ in row_cases() for plain in (False, True)}
    for d in DTYPES:
        for C in OTHER_CS:
            paths |= expected_other_kernels(d, C)
    return paths


# ----------------------------------------------------------------------------- checks


REACHED = set()


def launched():
    """The kernels launched since the last call, a cluster kernel with its cluster size
    ("... x16"): one cluster kernel serves every size, and each size is its own path."""
    names = {name + (f" x{cluster[0]}" if cluster[0] > 1 else "") for name, _, _, cluster, _ in fe.launch_log()}
    REACHED.update(names)
    fe.clear_launch_log()
    return names


def tol(dtype):
    """(rtol, atol scale) of a result stored in `dtype`: float64 math for float64, float32
    math otherwise; outputs stored in a half type carry its rounding (half an ulp)."""
    return {"float64": (1e-10, 1e-12), "float32": (2e-5, 1e-6), "float16": (2e-3, 1e-3),
            "bfloat16": (8e-3, 8e-3)}[dtype]


def close(got, want, dtype, what, scale=None):
    got = np.asarray(got).astype(np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    rtol, a = tol(dtype)
    if scale is None:
        finite = np.abs(want[np.isfinite(want)])
        scale = float(finite.max()) if finite.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=a * scale + 1e-30, err_msg=what)


def loss_close(got, want, dtype, what, C):
    """Losses and lse are float32 (float64) results of sums over C terms."""
    rtol = 1e-10 if dtype == "float64" else 2e-5
    scale = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=rtol,
                               atol=scale * (10 + math.sqrt(C)), err_msg=what)


def check_softmax_and_log_softmax(for_softmax, for_log_softmax, x64, dtype):
    """softmax of one array and log_softmax of another, both holding the values x64, against
    the float64 reference (infinities where it has them)."""
    close(fe.softmax(for_softmax), ref.softmax(x64), dtype, "softmax", 1.0)
    ls = fe.log_softmax(for_log_softmax)
    want_ls = ref.log_softmax(x64)
    fin = np.isfinite(want_ls)
    assert np.array_equal(np.isfinite(ls.astype(np.float64)), fin)
    # log p carries the rounding of x and of lse: scaled like a loss, not like log p
    close(ls.astype(np.float64)[fin], want_ls[fin], dtype, "log_softmax", 10 + np.abs(x64[fin]).max())


def make_case(dtype, C, N, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, C)) * 3).astype(np_dtype(dtype))
    if C > 1:
        x[np.arange(N), rng.integers(0, C, N)] = -np.inf  # a masked class per row
    t = rng.integers(0, C, N)
    x[np.arange(N), t] = rng.standard_normal(N).astype(x.dtype)  # a finite target logit
    t[0] = -100  # an ignored row
    return x, t, rng


@pytest.mark.parametrize("dtype,C,device,N", row_cases(),
                         ids=[f"{d}-C{C}-dev{dev}-N{N}" for d, C, dev, N in row_cases()])
def test_row_kernel_path(dtype, C, device, N):
    x, t, rng = make_case(dtype, C, N, seed=C + N)
    x64 = x.astype(np.float64)
    w = rng.uniform(0.5, 1.5, C).astype(np.float64 if dtype == "float64" else np.float32)
    opts = dict(weight=w, label_smoothing=0.1, reduction="none")
    kernel = expected_row_kernel(dtype, C, device)
    g = rng.uniform(0.5, 1.5, N).astype(w.dtype)
    big = C * N > 200_000  # keep the slowest cases to the essential calls
    with fe.device(device):
        fe.clear_launch_log()
        loss, lse, am = fe.cross_entropy(x, t, return_lse=True, return_argmax=True, **opts)
        want_loss, want_lse, want_am = ref.cross_entropy(x64, t, return_lse=True, return_argmax=True, **opts)
        loss_close(loss, want_loss, dtype, "loss", C)
        loss_close(lse, want_lse, dtype, "lse", C)
        np.testing.assert_array_equal(am, want_am)
        assert launched() == {kernel}

        want_grad = ref.cross_entropy_backward(g, x64, t, **opts)
        scale = float(np.abs(want_grad).max())
        gl, grad = fe.cross_entropy_with_grad(x, t, grad_loss=g, **opts)
        close(grad, want_grad, dtype, "fused grad", scale)
        loss_close(gl, want_loss * 1.0, dtype, "fused loss", C)
        assert grad.dtype == x.dtype

        inplace = x.copy()
        _, res = fe.cross_entropy_with_grad(inplace, t, grad_loss=g, inplace=True, **opts)
        assert res is inplace
        np.testing.assert_array_equal(inplace, grad)  # same kernel, same rounding, in place

        back = fe.cross_entropy_backward(g, x, t, lse=lse, **opts)
        close(back, want_grad, dtype, "backward from lse", scale)
        assert launched() == {kernel}
        if big:
            return

        # misaligned rows (no 16-byte packs), probability targets, softmax, log_softmax
        shifted = np.empty((N, C + 1), x.dtype)[:, 1:]
        shifted[...] = x
        q = rng.dirichlet(np.ones(C), N).astype(x.dtype)
        pl, pg = fe.cross_entropy_with_grad(shifted, q, reduction="none")
        wpl, wpg = ref.cross_entropy_with_grad(x64, q.astype(np.float64), reduction="none")
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(wpl)
        loss_close(pl[finite], wpl[finite], dtype, "probability-target loss", C)
        check_softmax_and_log_softmax(shifted, x, x64, dtype)
        # probability targets take rows_resident, softmax and log_softmax rows_plain
        # (past the longest resident row both are the streaming kernel)
        assert launched() == {kernel, expected_row_kernel(dtype, C, device, plain=True)}

        # unvalidated out-of-range targets: NaN rows, as on a GPU, and the other rows intact
        bad = t.copy()
        bad[-1] = C + 5
        ul = fe.cross_entropy(x, bad, reduction="none", validate_targets=False)
        assert np.isnan(ul[-1]) and np.all(np.isfinite(ul[:-1]))


# z-loss and soft-capping on each row-kernel path: both (the cap loose, or tight), or the cap alone
LM_OPTIONS = [dict(z_loss=1e-3, softcap=15.0), dict(z_loss=0.0, softcap=4.0), dict(z_loss=0.02, softcap=30.0)]
LM_IDS = [f"{d}-C{C}-dev{dev}-N{N}" for d, C, dev, N in row_cases()]


@pytest.mark.parametrize("i", range(len(row_cases())), ids=LM_IDS)
def test_row_kernel_path_lm_options(i):
    """The row kernels with z_loss and softcap: forward, fused with out= and in place, backward
    from the (capped) lse, probability targets, an unvalidated out-of-range target. The cap
    must make -inf logits finite (a masked class per row, and an all -inf row) and leave the
    argmax of the logits as given (the last row holds two logits that cap to the same value)."""
    dtype, C, device, N = row_cases()[i]
    x, t, rng = make_case(dtype, C, N, seed=C + N + 1)
    plain = x.copy()
    lm = LM_OPTIONS[i % len(LM_OPTIONS)]
    big = C * N > 200_000
    x[-1, 0], x[-1, C // 2], x[-1, C - 1] = 3e4, -5e4, 6e4  # large |x|: 3e4 and 6e4 cap alike
    if N >= 2:
        x[1 if N >= 3 else 0, :] = -np.inf  # capped to -softcap: a finite row (row 0 is ignored)
    x64 = x.astype(np.float64)
    opts = dict(reduction="none", **lm)
    if i % 2 == 0:
        w = rng.uniform(0.5, 1.5, C).astype(np.float64 if dtype == "float64" else np.float32)
        opts.update(weight=w, label_smoothing=0.1)
    kernel = expected_row_kernel(dtype, C, device)
    g = rng.uniform(0.5, 1.5, N).astype(np.float64 if dtype == "float64" else np.float32)
    with fe.device(device):
        fe.clear_launch_log()
        want_loss, want_lse, want_am = ref.cross_entropy(x64, t, return_lse=True, return_argmax=True, **opts)
        assert np.all(np.isfinite(want_loss)) and want_am[-1] == C - 1
        want_grad = ref.cross_entropy_backward(g, x64, t, **opts)
        scale = float(np.abs(want_grad).max())

        out = np.empty_like(x)
        gl, grad, lse, am = fe.cross_entropy_with_grad(x, t, grad_loss=g, out=out, return_lse=True,
                                                       return_argmax=True, **opts)
        assert grad is out
        loss_close(gl, want_loss, dtype, "fused loss", C)
        loss_close(lse, want_lse, dtype, "fused lse", C)
        np.testing.assert_array_equal(am, want_am)
        close(grad, want_grad, dtype, "fused grad", scale)
        assert np.all(np.isfinite(grad.astype(np.float64)))

        back = fe.cross_entropy_backward(g, x, t, lse=lse, **opts)
        close(back, want_grad, dtype, "backward from the capped lse", scale)
        assert launched() == {kernel}
        if big:
            return

        loss, lse_f, am_f = fe.cross_entropy(x, t, return_lse=True, return_argmax=True, **opts)
        loss_close(loss, want_loss, dtype, "loss", C)
        np.testing.assert_array_equal(lse_f, lse)
        np.testing.assert_array_equal(am_f, want_am)

        inplace = x.copy()
        _, res = fe.cross_entropy_with_grad(inplace, t, grad_loss=g, inplace=True, **opts)
        assert res is inplace
        np.testing.assert_array_equal(inplace, grad)

        # probability targets on misaligned rows: every row counted, -inf logits capped
        shifted = np.empty((N, C + 1), x.dtype)[:, 1:]
        shifted[...] = x
        q = rng.dirichlet(np.ones(C), N).astype(x.dtype)
        pl, pg = fe.cross_entropy_with_grad(shifted, q, grad_loss=g, **opts)
        wpl, wpg = ref.cross_entropy_with_grad(x64, q.astype(np.float64), grad_loss=g, **opts)
        loss_close(pl, wpl, dtype, "probability-target loss", C)
        close(pg, wpg, dtype, "probability-target grad")

        # the z-loss alone, uncapped (and without the large logits)
        zo = dict(opts, z_loss=0.01, softcap=None)
        zl, zg = fe.cross_entropy_with_grad(plain, t, grad_loss=g, **zo)
        wzl, wzg = ref.cross_entropy_with_grad(plain.astype(np.float64), t, grad_loss=g, **zo)
        loss_close(zl, wzl, dtype, "z-loss loss", C)
        close(zg, wzg, dtype, "z-loss grad")
        # without weights and smoothing (odd i) the z-loss alone is rows_plain's
        assert launched() == {kernel, expected_row_kernel(dtype, C, device, plain="weight" not in opts)}

        # unvalidated out-of-range target: a NaN row, the others as before
        bad = t.copy()
        bad[-1] = C + 5
        ul, ug = fe.cross_entropy_with_grad(x, bad, grad_loss=g, validate_targets=False, **opts)
        assert np.isnan(ul[-1]) and np.all(np.isnan(ug[-1].astype(np.float64)))
        np.testing.assert_array_equal(ul[:-1], gl[:-1])
        np.testing.assert_array_equal(ug[:-1], grad[:-1])


@pytest.mark.parametrize("dtype,C,device,N", row_cases(),
                         ids=[f"{d}-C{C}-dev{dev}-N{N}" for d, C, dev, N in row_cases()])
def test_plain_row_kernel_path(dtype, C, device, N):
    """rows_plain, the kernel of the common call (index targets, no weights, no smoothing, no
    soft-cap), on every row length: the loss, the fused gradient with out= and in place (the
    same bits), an upstream factor per row, the z-loss, softmax and log_softmax, against the
    float64 reference. The rows hold what it must not trip on: an ignored row (gradient 0
    whatever its logits), a masked -inf class, a row of all -inf (NaN, as PyTorch), and an
    unvalidated out-of-range target (a NaN row); the target sits in the row's last, partial
    pack of one row and at column 0 of another."""
    x, t, rng = make_case(dtype, C, N, seed=C + N + 7)
    if N >= 2:  # (with one row, row 0 stays the ignored one)
        t[-1] = C - 1
        x[-1, C - 1] = 0.5
    if N >= 3:
        t[1] = 0
        x[1, 0] = -0.25
    x64 = x.astype(np.float64)
    kernel = expected_row_kernel(dtype, C, device, plain=True)
    g = rng.uniform(0.5, 1.5, N).astype(np.float64 if dtype == "float64" else np.float32)
    big = C * N > 200_000
    with fe.device(device):
        fe.clear_launch_log()
        for opts in (dict(reduction="none"), dict(reduction="none", z_loss=0.01)):
            want_loss, want_grad = ref.cross_entropy_with_grad(x64, t, grad_loss=g, **opts)
            loss = fe.cross_entropy(x, t, **opts)
            loss_close(loss, want_loss, dtype, f"loss {opts}", C)
            gl, grad = fe.cross_entropy_with_grad(x, t, grad_loss=g, **opts)
            loss_close(gl, want_loss, dtype, f"fused loss {opts}", C)
            close(grad, want_grad, dtype, f"fused grad {opts}", float(np.abs(want_grad).max()))
            assert t[0] == -100 and np.all(grad[0] == 0)  # the ignored row
            inplace = x.copy()
            _, res = fe.cross_entropy_with_grad(inplace, t, grad_loss=g, inplace=True, **opts)
            assert res is inplace
            np.testing.assert_array_equal(inplace, grad)
            if big:
                break
        assert launched() == {kernel}
        if big:
            return

        check_softmax_and_log_softmax(x, x, x64, dtype)
        assert launched() == {kernel}

        # a row of all -inf: NaN loss, gradient and softmax; an out-of-range target: a NaN row
        masked = x.copy()
        masked[-1] = -np.inf
        bad = t.copy()
        bad[-1] = C + 5
        if N >= 3:
            bad[1] = -3
        with np.errstate(invalid="ignore"):
            ml, mg = fe.cross_entropy_with_grad(masked, t, reduction="none")
            assert np.isnan(ml[-1]) and np.all(np.isnan(mg[-1].astype(np.float64)))
            assert np.all(np.isnan(fe.softmax(masked)[-1].astype(np.float64)))
            ul, ug = fe.cross_entropy_with_grad(x, bad, reduction="none", validate_targets=False)
        rows = [-1] + ([1] if N >= 3 else [])
        assert np.all(np.isnan(ul[rows])) and np.all(np.isnan(ug[rows].astype(np.float64)))
        keep = [r for r in range(N) if r not in (N - 1, 1 if N >= 3 else -1)]
        np.testing.assert_array_equal(ul[keep], fe.cross_entropy(x, t, reduction="none")[keep])
        assert launched() == {kernel}


@pytest.mark.parametrize("i", range(len(row_cases())), ids=LM_IDS)
def test_shard_kernel_path(i):
    """The vocab-parallel shard kernels (fusedce.shard) on each row-kernel path: the launcher
    picks the team by the shard's own class count. The shard holds classes [5, 5 + C) of
    C + 13: targets in the shard, in front of it and after it, an ignored row; weights of all
    the classes, smoothing (each block sums all the weights first) and z-loss, the cap on
    every other case. Statistics and the gradient from the global lse against the reference."""
    dtype, C, device, N = row_cases()[i]
    x, t, rng = make_case(dtype, C, N, seed=C + N + 2)
    lo, total = 5, C + 13
    t = t + lo  # make_case's targets are the shard's columns: globally, in the shard
    t[0] = -100
    if N >= 2:
        t[1] = total - 1  # after the shard
    if N >= 3:
        t[2] = 2  # in front of it
    cdt = np.float64 if dtype == "float64" else np.float32
    w = rng.uniform(0.5, 1.5, total).astype(cdt)
    cap = 15.0 if i % 2 else None
    kw = dict(class_offset=lo, total_classes=total, weight=w, softcap=cap)
    x64 = x.astype(np.float64)
    kernel = expected_row_kernel(dtype, C, device)
    with fe.device(device):
        fe.clear_launch_log()
        got = fe.cross_entropy_shard_stats(x, t, return_dot=True, **kw)
        want = ref.cross_entropy_shard_stats(x64, t, return_dot=True, **kw)
        for name, g, wv in zip(("max", "sum", "target"), got, want):
            assert g.dtype == cdt
            loss_close(g, wv, dtype, f"shard {name}", C)
        # the dot, a sum of C terms w_c x_c: rounding on the scale of sum_c |w_c x_c|
        xc = x64 if cap is None else cap * np.tanh(x64 / cap)
        with np.errstate(invalid="ignore"):
            size = np.nansum(np.where(np.isfinite(xc), np.abs(w[lo:lo + C] * xc), 0), axis=1)
        rtol = 1e-10 if dtype == "float64" else 2e-5
        d, wd = got[3].astype(np.float64), want[3]
        with np.errstate(invalid="ignore"):
            ok = (d == wd) | (np.abs(d - wd) <= rtol * (np.abs(wd) + size + 1))
        assert ok.all(), ("shard dot", d[~ok], wd[~ok], size[~ok])
        # the global lse: this shard's statistics and the 13 classes elsewhere (logits 0.5)
        m, s = got[0].astype(np.float64), got[1].astype(np.float64)
        xo = 0.5 if cap is None else cap * np.tanh(0.5 / cap)
        lse = np.logaddexp(m + np.log(s), xo + np.log(13.0))
        lse[0] = 0.0  # ignored row
        g = rng.uniform(0.5, 1.5, N).astype(cdt)
        bkw = dict(kw, label_smoothing=0.1, z_loss=1e-3)
        grad = fe.cross_entropy_shard_backward(g, x, t, lse.astype(cdt), **bkw)
        want_grad = ref.cross_entropy_shard_backward(g, x64, t, lse.astype(cdt).astype(np.float64), **bkw)
        assert grad.dtype == x.dtype
        close(grad, want_grad, dtype, "shard grad", float(np.abs(want_grad).max()))
        assert np.all(grad[0].astype(np.float64) == 0)
        assert launched() == {kernel}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", OTHER_CS)
def test_other_kernel_paths(dtype, C):
    N = 5
    x, t, rng = make_case(dtype, C, N, seed=C)
    x = np.where(np.isfinite(x.astype(np.float64)), x, 0).astype(x.dtype)
    x64 = x.astype(np.float64)
    fe.clear_launch_log()
    # softmax backward from half-precision y and grad
    y = fe.softmax(x)
    gy = rng.standard_normal((N, C)).astype(x.dtype)
    dx = fe.softmax_backward(gy, y)
    close(dx, ref.softmax_backward(gy.astype(np.float64), y.astype(np.float64)), dtype, "softmax_backward")
    ly = fe.log_softmax(x)
    ldx = fe.log_softmax_backward(gy, ly)
    close(ldx, ref.log_softmax_backward(gy.astype(np.float64), ly.astype(np.float64)), dtype,
          "log_softmax_backward")
    # nll, forward and backward, with weights and an ignored row
    w = rng.uniform(0.5, 1.5, C).astype(np.float64 if dtype == "float64" else np.float32)
    nl = fe.nll_loss(ly, t, weight=w, reduction="sum")
    loss_close(nl, ref.nll_loss(ly.astype(np.float64), t, weight=w, reduction="sum"), dtype, "nll", C)
    nb = fe.nll_loss_backward(2.0, ly, t, weight=w)
    close(nb, ref.nll_loss_backward(2.0, ly.astype(np.float64), t, weight=w), dtype, "nll_backward")
    # mse
    target = rng.standard_normal((N, C)).astype(x.dtype)
    ml = fe.mse_loss(x, target, reduction="none")
    close(ml, ref.mse_loss(x64, target.astype(np.float64), reduction="none"), "float32" if dtype != "float64"
          else dtype, "mse")
    mb = fe.mse_loss_backward(1.5, x, target, reduction="sum")
    close(mb, ref.mse_loss_backward(1.5, x64, target.astype(np.float64), reduction="sum"), dtype, "mse_backward")
    assert expected_other_kernels(dtype, C) <= launched()


def test_every_path_is_reached():
    """The union of the kernels the cases above launched is every path the launcher can pick
    (cases this run deselected are run here, forward only)."""
    want = every_expected_path()
    for dtype, C, device, N in row_cases():
        for plain in (False, True):  # (smoothing takes rows_resident, no option rows_plain)
            if expected_row_kernel(dtype, C, device, plain) not in REACHED:
                x, t, _ = make_case(dtype, C, N, seed=1)
                with fe.device(device):
                    fe.clear_launch_log()
                    fe.cross_entropy(x, t, label_smoothing=0.0 if plain else 0.1)
                    launched()
    for dtype in DTYPES:
        for C in OTHER_CS:
            if not expected_other_kernels(dtype, C) <= REACHED:
                test_other_kernel_paths(dtype, C)
    missing = sorted(want - REACHED)
    print("kernel paths reached:\n  " + "\n  ".join(sorted(REACHED & want)))
    assert not missing, f"kernel paths never reached: {missing}"
    assert len(want) >= 4 * 5 + 3 * 6 + 2 + 4 * 5  # every team (and cluster size) of every dtype
