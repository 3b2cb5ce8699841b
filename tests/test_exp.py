"""The kernels' vectorised exp (csrc/cpu/vmath.h) against numpy's, on every SIMD level.

The error bound stated in vmath.h is checked here: the fused kernels' accuracy rests on it.
Both versions are checked: vexp, and vexp_nonpositive, which the softmax sweeps use on
x - max(x) <= 0 (its range is the kernels' range below).
"""

import numpy as np
import pytest

import fusedce
from fusedce import _arrays, _core

# float32: a few ulp (2^-23 = 1.19e-7); float64: a few ulp (2^-52 = 2.2e-16).
BOUNDS = {np.float32: 3e-7, np.float64: 1e-15}
LOWEST = {np.float32: -87.33654, np.float64: -708.3964185322641}


def kernel_exp(x, nonpositive=False):
    y = np.empty_like(x)
    _core.vexp(x.ctypes.data, y.ctypes.data, x.size, _arrays.dtype_code(x.dtype), nonpositive)
    return y


VARIANTS = pytest.mark.parametrize("nonpositive", [False, True], ids=["vexp", "vexp_nonpositive"])


@VARIANTS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_relative_error_over_the_kernels_range(simd_level, dtype, nonpositive):
    # every value the kernels feed it: x - max(x) in [lowest, 0]; odd lengths exercise tails
    x = np.linspace(LOWEST[dtype], 0.0, 400_003).astype(dtype)
    got = kernel_exp(x, nonpositive)
    want = np.exp(x.astype(np.float64))
    rel = np.abs(got / want - 1.0)
    assert rel.max() < BOUNDS[dtype], f"{simd_level}: max relative error {rel.max():.3g}"


@VARIANTS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_special_values(simd_level, dtype, nonpositive):
    x = np.array([0.0, -0.0, -np.inf, np.nan, LOWEST[dtype] * 1.01, -1e30, -1e-30], dtype)
    got = kernel_exp(x, nonpositive)
    assert got[0] == 1.0 and got[1] == 1.0
    assert got[2] == 0.0, "exp(-inf) must be exactly 0 (masked classes)"
    assert np.isnan(got[3])
    assert got[4] == 0.0 and got[5] == 0.0, "below the normal range the result is flushed to 0"
    assert got[6] == 1.0
