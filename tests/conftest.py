"""Shared fixtures: the device each parity test runs on, SIMD levels, hypothesis profiles.

Helpers `to_device(a, device)` and `to_numpy(a)` move NumPy arrays to the device under test
and back (CuPy for "cuda"), `api(device)` is the module to call (fusedce, or fusedce.emulated
for "emulated"), `need(module)` imports an optional dependency or skips; tests import them
with `from conftest import ...`.
"""

import importlib
import os

import numpy as np
import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a test extra; tests that need it importorskip it
    settings = None

try:
    import fusedce
except ImportError:  # the compiled package is not built: only reference tests can run
    fusedce = None

# Why tests skip, as `pytest -ra` (addopts in pyproject.toml) prints it: one short line per
# missing optional dependency, saying how to install it.
MISSING = {
    "torch": "torch not installed: pip install torch (or '.[bench]')",
    "sklearn": "scikit-learn not installed: pip install scikit-learn (or '.[demo]')",
    "hypothesis": "hypothesis not installed: pip install hypothesis (or '.[test]')",
    "ml_dtypes": "ml_dtypes not installed: pip install ml_dtypes (or '.[test]')",
}


def need(module):
    """Import an optional dependency of the tests (a key of MISSING), or skip the calling
    test, or test module, saying how to install it. Every skip for one module is raised
    from the same line here, so that `pytest -ra` folds them into one line. A module that is
    installed but fails to import (a missing dependency of its own, say) is an error."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        pytest.skip(MISSING[module], allow_module_level=True)


if settings is not None:
    _common = dict(deadline=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.function_scoped_fixture])
    settings.register_profile("ci", max_examples=40, **_common)
    # for the slow sanitized, shuffled run of the emulated GPU in .ci/run
    settings.register_profile("sanitized", max_examples=12, **_common)
    settings.register_profile("dev", max_examples=400, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _cupy():
    """cupy when fusedce can run CUDA kernels and cupy imports, else None."""
    if fusedce is None:
        return None
    try:
        if not fusedce.cuda_available():
            return None
        import cupy
    except Exception:
        return None
    return cupy


def _emulated():
    """fusedce.emulated when it was built, else None."""
    try:
        import fusedce.emulated
    except ImportError:
        return None
    return fusedce.emulated


@pytest.fixture(params=["cpu", "cuda", "emulated"])
def device(request):
    """Where a parity test runs: the CPU kernels, the CUDA kernels on a GPU (CuPy arrays),
    or the CUDA kernels on the CPU through the execution model (fusedce.emulated)."""
    if fusedce is None:
        pytest.skip("fusedce is not built")
    if request.param == "cuda" and _cupy() is None:
        pytest.skip("CUDA not available (fusedce.cuda_available() is False or no cupy)")
    if request.param == "emulated" and _emulated() is None:
        pytest.skip("fusedce was built without fusedce.emulated (no CUDA headers)")
    return request.param


def api(device):
    """The module whose functions run on `device`: fusedce, or fusedce.emulated."""
    return _emulated() if device == "emulated" else fusedce


def to_device(a, device):
    """A NumPy array (or None / Python scalar) on `device`; "cpu" and "emulated" return it
    unchanged (the emulated GPU works on host memory)."""
    if device in ("cpu", "emulated") or a is None or not isinstance(a, np.ndarray):
        return a
    cupy = _cupy()
    # keep the memory order of `a` (Fortran arrays stay Fortran); cupy.asarray copies
    return cupy.asarray(a, order="A")


def to_numpy(a):
    """A result back on the host as a NumPy array (tuples element-wise)."""
    if isinstance(a, tuple):
        return tuple(to_numpy(b) for b in a)
    if isinstance(a, np.ndarray) or a is None:
        return a
    if hasattr(a, "__cuda_array_interface__"):
        import cupy
        return cupy.asnumpy(a)
    return np.asarray(a)


def _simd_levels():
    if fusedce is None:
        return []
    try:
        return list(fusedce.available_simd_levels())
    except Exception:
        return []


@pytest.fixture(params=_simd_levels() or ["unavailable"])
def simd_level(request):
    """Runs the test with fusedce.set_simd_level(level), restoring the previous level."""
    if fusedce is None or request.param == "unavailable":
        pytest.skip("fusedce is not built")
    previous = fusedce.simd_level()
    fusedce.set_simd_level(request.param)
    try:
        yield request.param
    finally:
        fusedce.set_simd_level(previous)


# Outputs of at least 16 MiB are streamed in every test, whatever this machine's last-level
# cache (by default rows shorter than 2 KiB are streamed only from its size: see
# csrc/cpu/streaming.h), so that the tests of the streamed paths (test_fused_paths.py) reach
# them on every machine.
TEST_STREAMING_BYTES = 16 << 20


@pytest.fixture(autouse=True, scope="session")
def _streaming_threshold():
    core = getattr(fusedce, "_core", None) if fusedce is not None else None
    if core is None or not hasattr(core, "set_streaming_threshold_bytes"):
        yield
        return
    core.set_streaming_threshold_bytes(TEST_STREAMING_BYTES)
    try:
        yield
    finally:
        core.set_streaming_threshold_bytes(0)
