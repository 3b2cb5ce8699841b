"""fusedce: fused softmax cross-entropy and log-softmax + NLL kernels for NumPy and CUDA arrays.

The functions take NumPy arrays (SIMD, multithreaded C++ kernels) or CUDA arrays (CuPy, or
anything with ``__cuda_array_interface__`` / a CUDA ``__dlpack__``: CUDA kernels on the
current stream) and return arrays of the same kind. ``fusedce.reference`` holds the plain
NumPy definitions they are tested against; ``fusedce.torch`` (imported on demand) the
PyTorch drop-ins; ``fusedce.emulated`` (imported on demand, when built) the same functions
run by the CUDA kernels on the CPU, for tests. Each function's docstring gives its shapes,
dtypes, defaults, semantics and errors (``help(fusedce.cross_entropy)``); docs/api.md in
fusedce's source repository collects them on one page.
"""

from __future__ import annotations

import os as _os
import platform as _platform

from . import _core
from .functional import (
    cross_entropy,
    cross_entropy_backward,
    cross_entropy_with_grad,
    log_softmax,
    log_softmax_backward,
    mse_loss,
    mse_loss_backward,
    nll_loss,
    nll_loss_backward,
    softmax,
    softmax_backward,
)
from .linear import linear_cross_entropy, linear_cross_entropy_with_grad

__version__ = getattr(_core, "__version__", "0.0.0")

__all__ = [
    "softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
    "nll_loss", "nll_loss_backward", "cross_entropy", "cross_entropy_backward",
    "cross_entropy_with_grad", "linear_cross_entropy", "linear_cross_entropy_with_grad",
    "mse_loss", "mse_loss_backward",
    "set_num_threads", "get_num_threads", "simd_level", "available_simd_levels",
    "set_simd_level", "cuda_available", "show_config", "__version__",
]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (>= 1) for the CPU kernels. The default is every core this process
    may use, or the environment variable FUSEDCE_NUM_THREADS. Raises TypeError for a
    non-integer, ValueError for n < 1.

    Examples
    --------
    >>> import fusedce
    >>> before = fusedce.get_num_threads()
    >>> fusedce.set_num_threads(1); fusedce.get_num_threads()
    1
    >>> fusedce.set_num_threads(before)
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the CPU kernels use.

    Examples
    --------
    >>> import fusedce
    >>> fusedce.get_num_threads() >= 1
    True
    """
    return _core.num_threads()


def simd_level() -> str:
    """The instruction set of the CPU kernels in use: "avx512_bf16" (AVX-512 kernels that
    round bfloat16 results with AVX512-BF16's conversion and widen bfloat16 values with
    AVX512-VBMI's byte permutation: the same bits), "avx512", "avx2" or "portable".

    Examples
    --------
    >>> import fusedce
    >>> fusedce.simd_level() in fusedce.available_simd_levels()
    True
    """
    return _core.simd_level()


def available_simd_levels() -> list:
    """The instruction sets this CPU can run, best first (always ends with "portable").

    Examples
    --------
    >>> import fusedce
    >>> fusedce.available_simd_levels()[-1]
    'portable'
    """
    return list(_core.available_simd_levels())


def set_simd_level(name: str) -> None:
    """Run the CPU kernels of another instruction set (tests, benchmarks). The environment
    variable FUSEDCE_SIMD does the same at import. Raises ValueError for a level this CPU
    cannot run.

    Examples
    --------
    >>> import fusedce
    >>> before = fusedce.simd_level()
    >>> fusedce.set_simd_level("portable"); fusedce.simd_level()
    'portable'
    >>> fusedce.set_simd_level(before)
    """
    if name not in available_simd_levels():
        raise ValueError(f"name must be one of {available_simd_levels()} on this CPU, got {name!r}")
    _core.set_simd_level(name)


def cuda_available() -> bool:
    """Whether the CUDA kernels were built and a GPU is visible.

    Examples
    --------
    >>> import fusedce
    >>> isinstance(fusedce.cuda_available(), bool)
    True
    """
    return bool(_core.cuda_available())


def show_config(print_it: bool = True) -> str | None:
    """Print the version, SIMD level, threads and CUDA support; with ``print_it=False``,
    print nothing and return that text instead (so that a REPL shows it once).

    Examples
    --------
    >>> import fusedce
    >>> fusedce.show_config()    # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    fusedce ...
      machine: ...
      simd: ...
      threads: ...
      streaming: ...
      cuda: ...
    >>> text = fusedce.show_config(print_it=False)
    >>> text.splitlines()[0].startswith("fusedce ")
    True
    """
    lines = [
        f"fusedce {__version__}",
        f"  machine:      {_platform.machine()}, {_os.cpu_count()} logical CPUs",
        f"  simd:         {simd_level()} (available: {', '.join(available_simd_levels())})",
        f"  threads:      {get_num_threads()}",
        f"  streaming:    outputs from {_core.streaming_threshold_bytes(2048) / 2**20:.0f} MiB "
        f"(rows of 2 KiB or more), {_core.streaming_threshold_bytes(512) / 2**20:.0f} MiB "
        "(shorter rows: the last-level cache)",
        f"  cuda:         {'yes' if cuda_available() else 'no'} "
        f"(build: {_core.cuda_build_info()}, devices: {_core.cuda_device_count()})",
    ]
    if not cuda_available():  # in words: no build, no GPU, or a driver older than the runtime
        lines.append(f"                {_core.cuda_unavailable_reason()}")
    text = "\n".join(lines)
    if print_it:
        print(text)
        return None
    return text
