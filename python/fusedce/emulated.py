"""fusedce's functions run by its CUDA kernels on the CPU, through a CPU model of CUDA.

``fusedce.emulated`` has the functions of :mod:`fusedce` and :mod:`fusedce.shard` (same names,
signatures, defaults and semantics) on NumPy arrays, but the work is done by the CUDA kernels,
compiled as C++ against the project's execution model of CUDA (``fusedce._emulated``): grids,
blocks, clusters, warps, shared memory, shuffles and barriers, run on host memory. What it is
for:

- testing the CUDA kernels without a GPU: their results against ``fusedce.reference`` and
  the CPU kernels, every code path the launch configuration picks (the emulated devices
  differ in SM count and architecture, see :func:`devices`), their bounds handling;
- reading and stepping through the kernels in a CPU debugger, and seeing which kernels a
  call launches and how (:func:`launch_log`).

It is slow (each emulated thread is run by the host; far slower than the CPU kernels) and
meant for small arrays. float16 and bfloat16 inputs (bfloat16 as ``ml_dtypes.bfloat16``
arrays) are read natively, as on a GPU, computed in float32; losses and ``lse`` come back
in the compute dtype. As on a GPU, an out-of-range class index with
``validate_targets=False`` gives its row a NaN loss instead of an exception.

What it cannot show: anything about memory ordering between threads beyond what the model
schedules (a missing fence or barrier may go unnoticed), timing and performance, and the
exact rounding of the GPU's own instructions (``exp2f``, ``__expf``, fused multiply-add
contraction, the order of atomic additions): agreement with the emulation is agreement to
within rounding, not bit for bit with a GPU.

Arguments must be NumPy arrays (or Python numbers and lists); a CuPy array, a PyTorch
tensor or any other array object raises TypeError naming the argument. The emulated device
is chosen per thread with :func:`set_device` or the :func:`device` context manager.

>>> import numpy as np
>>> import fusedce, fusedce.emulated as fe
>>> x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, -np.inf]], dtype=np.float32)
>>> t = np.array([2, 0])
>>> bool(np.allclose(fe.cross_entropy(x, t), fusedce.cross_entropy(x, t), rtol=1e-6))
True
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import inspect
import numbers
import re

import numpy as np

from . import _arrays as arrays
from . import functional
from . import shard

try:
    from . import _emulated
except ImportError as exc:
    if importlib.util.find_spec("fusedce._emulated") is not None:  # there, but broken
        raise ImportError(f"fusedce._emulated is installed but cannot be loaded: {exc}") from exc
    raise ImportError(
        "fusedce.emulated needs the compiled module fusedce._emulated, which this build of "
        "fusedce does not have: it was built without the CUDA headers (cuda_fp16.h, "
        "cuda_bf16.h...), which come from a CUDA toolkit or from the nvidia-cuda-runtime "
        "PyPI package. Install one of them (pip install nvidia-cuda-runtime) and rebuild "
        "fusedce from source (pip install --no-build-isolation . in its repository; "
        "FUSEDCE_EMULATED=ON makes a build without the headers fail instead of skipping "
        "the module)."
    ) from exc

__all__ = [
    "softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
    "nll_loss", "nll_loss_backward", "cross_entropy", "cross_entropy_backward",
    "cross_entropy_with_grad", "mse_loss", "mse_loss_backward",
    "cross_entropy_shard_stats", "cross_entropy_shard_backward",
    "devices", "set_device", "get_device", "device", "launch_log", "clear_launch_log",
]

_current = contextvars.ContextVar("fusedce_emulated_device", default=0)


def _backend(named: dict) -> arrays.Backend:
    """The emulated device in use, after checking that every array argument is NumPy's."""
    for name, a in named.items():
        if a is None or isinstance(a, (np.ndarray, np.generic, numbers.Number, list, tuple)):
            continue
        kind = f"{type(a).__module__}.{type(a).__name__}"
        raise TypeError(f"{name} must be a NumPy array (fusedce.emulated runs the CUDA "
                        f"kernels on host memory), got {kind}")
    return arrays.Backend(np, _current.get(), _emulated, True)


_EXAMPLE = re.compile(r"^(\s*(?:>>>|\.\.\.) .*)$")


def _doc(doc: str) -> str:
    """fusedce's docstring of an op, told that it runs emulated, its examples calling
    fusedce.emulated."""
    lines = inspect.cleandoc(doc).split("\n")
    note = ["", "Emulated: NumPy arrays only, run by the CUDA kernels on the emulated device "
                "of :func:`get_device` (float16 and bfloat16 read natively, as on a GPU)."]
    lines[1:1] = note
    names = "|".join(functional.__all__)
    for i, line in enumerate(lines):
        if _EXAMPLE.match(line):
            line = line.replace("import numpy as np, fusedce",
                                "import numpy as np, fusedce.emulated")
            lines[i] = re.sub(rf"\bfusedce\.({names})\(", r"fusedce.emulated.\1(", line)
    return "\n".join(lines)


def _emulate(op):
    fn = functional._runs_on(op, _backend)
    fn.__module__ = __name__
    fn.__doc__ = _doc(op.__doc__)
    return fn


softmax = _emulate(functional.softmax)
log_softmax = _emulate(functional.log_softmax)
softmax_backward = _emulate(functional.softmax_backward)
log_softmax_backward = _emulate(functional.log_softmax_backward)
nll_loss = _emulate(functional.nll_loss)
nll_loss_backward = _emulate(functional.nll_loss_backward)
cross_entropy = _emulate(functional.cross_entropy)
cross_entropy_backward = _emulate(functional.cross_entropy_backward)
cross_entropy_with_grad = _emulate(functional.cross_entropy_with_grad)
mse_loss = _emulate(functional.mse_loss)
mse_loss_backward = _emulate(functional.mse_loss_backward)
# the vocab-parallel building blocks of fusedce.shard
cross_entropy_shard_stats = _emulate(shard.cross_entropy_shard_stats)
cross_entropy_shard_backward = _emulate(shard.cross_entropy_shard_backward)


def devices() -> list:
    """The emulated GPUs, by index.

    Returns
    -------
    list of dict
        One per device: ``index``, ``name`` (the architecture, e.g. "sm_90"), ``major``,
        ``minor`` (compute capability) and ``sm_count``, plus whatever else the model
        reports about it. Device 0 is an sm_90 with 132 SMs (H100-like) and device 1 an
        sm_80 with 108 SMs (A100-like); more may follow.

    Examples
    --------
    >>> import fusedce.emulated as fe
    >>> d = fe.devices()
    >>> [dev["index"] for dev in d] == list(range(len(d)))
    True
    """
    return [dict(d) for d in _emulated.devices()]


def get_device() -> int:
    """The index of the emulated device this thread's calls run on (0 unless set).

    Examples
    --------
    >>> import fusedce.emulated as fe
    >>> fe.get_device()
    0
    """
    return _current.get()


def _checked_index(index) -> int:
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise TypeError(f"index must be an integer, got {type(index).__name__}")
    count = _emulated.device_count()
    if not 0 <= int(index) < count:
        raise ValueError(f"index must be in [0, {count}) (the emulated devices), got {index}")
    return int(index)


def set_device(index: int) -> None:
    """Run this thread's (and this context's) later calls on emulated device ``index``.

    Parameters
    ----------
    index : int
        An index of :func:`devices`.

    Raises
    ------
    TypeError for a non-integer ``index``, ValueError for one out of range.

    Examples
    --------
    >>> import fusedce.emulated as fe
    >>> before = fe.get_device()
    >>> fe.set_device(len(fe.devices()) - 1); fe.get_device() == len(fe.devices()) - 1
    True
    >>> fe.set_device(before)
    """
    _current.set(_checked_index(index))


@contextlib.contextmanager
def device(index: int):
    """Context manager: calls inside it run on emulated device ``index``; the previous
    device is restored on exit.

    Parameters
    ----------
    index : int
        An index of :func:`devices`.

    Raises
    ------
    TypeError for a non-integer ``index``, ValueError for one out of range (on entry).

    Examples
    --------
    >>> import numpy as np, fusedce.emulated as fe
    >>> with fe.device(0):
    ...     y = fe.softmax(np.zeros(4, dtype=np.float32))
    >>> y
    array([0.25, 0.25, 0.25, 0.25], dtype=float32)
    """
    token = _current.set(_checked_index(index))
    try:
        yield index
    finally:
        _current.reset(token)


def launch_log() -> list:
    """The kernel launches made since the last :func:`clear_launch_log`, oldest first.

    Returns
    -------
    list of tuple
        ``(kernel_name, grid_xyz, block_xyz, cluster_xyz, device)`` per launch.

    Examples
    --------
    >>> import numpy as np, fusedce.emulated as fe
    >>> fe.clear_launch_log()
    >>> _ = fe.log_softmax(np.zeros((2, 8), dtype=np.float32))
    >>> len(fe.launch_log()) >= 1
    True
    """
    return list(_emulated.launch_log())


def clear_launch_log() -> None:
    """Forget the launches recorded so far (see :func:`launch_log`).

    Examples
    --------
    >>> import fusedce.emulated as fe
    >>> fe.clear_launch_log(); fe.launch_log()
    []
    """
    _emulated.clear_launch_log()
