"""The CPU's block path for rows of 97 to 128 classes, and up to 256 where a block's working
set fits (csrc/cpu/cross_entropy.h: use_row_blocks, cross_entropy_row_blocks): the plain
loss, W rows at a time, each row through the row path's own functions. Asking for the argmax
sends the same call through the row path instead, so the two are compared bit for bit here:
losses, lse and gradients, out= (also at an offset and streamed), in place, one and two
threads, at every SIMD level and dtype; with ignored rows, rows of -inf, NaN and +inf, and a
batch that is not a multiple of a block.
"""

import numpy as np
import pytest

import fusedce
import fusedce.reference as ref
from conftest import TEST_STREAMING_BYTES


def _bfloat16():
    return pytest.importorskip("ml_dtypes").bfloat16


def _case(n, c, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((n, c))).astype(np.float32)
    t = rng.integers(0, c, n)
    t[::7] = -100                  # ignored rows, some of them odd ones in a block
    x[3] = -np.inf                 # every value -inf (its sum is 0)
    x[5, ::3] = -np.inf            # masked classes
    x[8, 10] = np.nan
    x[11, 2] = np.inf
    g = rng.random(n).astype(np.float32) - 0.25  # per-row upstream factors, some negative
    return x.astype(dtype), t, g


def _same(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), what


DTYPES = [np.float32, np.float64, np.float16, "bfloat16"]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64", "float16", "bfloat16"])
# (past 128 classes a call too large for the cache may take the row path: the comparison holds)
@pytest.mark.parametrize("c", [97, 100, 112, 128, 160, 192, 256])
def test_blocks_give_the_row_paths_bits(simd_level, dtype, c):
    if dtype == "bfloat16":
        dtype = _bfloat16()
    x, t, g = _case(37, c, dtype)  # 37 rows: two whole blocks of 16 (or four of 8) and a part
    before = fusedce.get_num_threads()
    try:
        for threads in (1, 2):
            fusedce.set_num_threads(threads)
            what = f"{simd_level} {np.dtype(dtype).name} C={c} {threads} threads"
            loss, lse = fusedce.cross_entropy(x, t, reduction="none", return_lse=True)
            row_loss, row_lse, _ = fusedce.cross_entropy(x, t, reduction="none", return_lse=True,
                                                         return_argmax=True)
            _same(loss, row_loss, "forward loss " + what)
            _same(lse, row_lse, "forward lse " + what)
            kw = dict(reduction="none", grad_loss=g)
            loss, grad = fusedce.cross_entropy_with_grad(x, t, **kw)
            row_loss, row_grad, _ = fusedce.cross_entropy_with_grad(x, t, return_argmax=True, **kw)
            _same(loss, row_loss, "loss " + what)
            _same(grad, row_grad, "gradient " + what)
            # asked for, the lse of an ignored row is computed (otherwise such a row is not read)
            got = fusedce.cross_entropy_with_grad(x, t, return_lse=True, **kw)
            want = fusedce.cross_entropy_with_grad(x, t, return_lse=True, return_argmax=True, **kw)
            for a, b, part in zip(got, want, ("loss", "gradient", "lse")):
                _same(a, b, f"{part} with lse " + what)
            buf = np.empty(x.size + 3, x.dtype)[3:].reshape(x.shape)  # off the vector alignment
            _same(fusedce.cross_entropy_with_grad(x, t, out=buf, **kw)[1], row_grad, "offset out= " + what)
            scratch = x.copy()
            _same(fusedce.cross_entropy_with_grad(scratch, t, inplace=True, **kw)[1], row_grad,
                  "in place " + what)
            # the mean and its single factor take the same way
            _same(fusedce.cross_entropy_with_grad(x, t)[1],
                  fusedce.cross_entropy_with_grad(x, t, return_argmax=True)[1], "mean " + what)
    finally:
        fusedce.set_num_threads(before)


def test_an_out_of_range_target_gives_the_row_paths_nans(simd_level):
    # validate_targets=False: such a row's loss and gradient are NaN on both paths
    x, t, g = _case(37, 128, np.float32, seed=3)
    t[18] = 128
    t[20] = -7
    got = fusedce.cross_entropy_with_grad(x, t, reduction="none", validate_targets=False)
    want = fusedce.cross_entropy_with_grad(x, t, reduction="none", validate_targets=False, return_argmax=True)
    _same(got[0], want[0], f"{simd_level} loss")
    _same(got[1], want[1], f"{simd_level} gradient")
    assert np.isnan(got[0][[18, 20]]).all() and np.isnan(got[1][[18, 20]]).all()


def test_blocks_agree_with_the_reference():
    x, t, g = _case(53, 120, np.float32, seed=1)
    keep = np.isfinite(x).all(axis=1) | (t == -100)  # rows whose values are defined
    loss, grad = fusedce.cross_entropy_with_grad(x, t, reduction="none", grad_loss=g)
    want_loss, want_grad = ref.cross_entropy_with_grad(x, t, reduction="none", grad_loss=g)
    np.testing.assert_allclose(loss[keep], want_loss[keep], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(grad[keep], want_grad[keep], rtol=2e-5, atol=2e-7)
    assert np.isnan(loss[8]) and np.isnan(grad[8]).all(), "a NaN logit makes its row NaN"
    assert loss[3] == np.inf or np.isnan(loss[3]), "a row of -inf has no finite loss"


@pytest.mark.parametrize("c", [128, 192])
def test_streamed_blocks_give_the_row_paths_bits(c):
    # 4200 x 128 float32 = 2.05 MiB of output with the threshold at 2 MiB: streamed, 512-byte
    # rows 12 bytes past a line (partial lines at both ends of each row). 192 classes: blocks
    # only because the call fits in cache (use_row_blocks), streamed all the same here.
    x, t, g = _case(4200, c, np.float32, seed=2)
    buf = np.empty(x.size + 3, np.float32)[3:].reshape(x.shape)
    before = fusedce.get_num_threads()
    fusedce._core.set_streaming_threshold_bytes(2 << 20)
    try:
        for threads in (1, 2):
            fusedce.set_num_threads(threads)
            loss, grad = fusedce.cross_entropy_with_grad(x, t, reduction="none", grad_loss=g, out=buf)
            row_loss, row_grad, _ = fusedce.cross_entropy_with_grad(x, t, reduction="none", grad_loss=g,
                                                                    return_argmax=True)
            _same(loss, row_loss, f"streamed loss, C={c}, {threads} threads")
            _same(grad, row_grad, f"streamed gradient, C={c}, {threads} threads")
    finally:
        fusedce._core.set_streaming_threshold_bytes(TEST_STREAMING_BYTES)
        fusedce.set_num_threads(before)
