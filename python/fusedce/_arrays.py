"""Turning arrays into what the kernels take: pointers, shapes, row strides, dtypes, devices.

Every op sees its data as a matrix of rows (one per sample or position) and classes, the
classes contiguous.  :func:`class_rows` moves the class axis last and flattens the rest
into rows, without a copy whenever the layout allows one.  NumPy arrays stay on the host;
CuPy arrays, and any object exposing ``__cuda_array_interface__`` or a CUDA ``__dlpack__``,
are taken as CuPy arrays (zero-copy) and run on the current CUDA stream.

bfloat16 arrives two ways: as PyTorch tensors (NumPy and CuPy have no bfloat16, so the
kernels get an int16 view of their storage and a flag) and as NumPy arrays of ``ml_dtypes.bfloat16``
(a real NumPy dtype). ml_dtypes is never imported here: an array of its dtype can only
exist once its caller has imported it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core

_DTYPES = {
    np.dtype(np.float32): _core.DType.float32,
    np.dtype(np.float64): _core.DType.float64,
    np.dtype(np.float16): _core.DType.float16,
    np.dtype(np.int32): _core.DType.int32,
    np.dtype(np.int64): _core.DType.int64,
}

_DLPACK_CUDA = 2  # kDLCUDA in DLPack's device types


def _cupy():
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - only without cupy
        raise TypeError(
            "CUDA arrays need CuPy (pip install 'fusedce[cuda]', i.e. cupy-cuda13x)"
        ) from exc
    return cupy


def is_torch(a: Any) -> bool:
    return type(a).__module__.startswith("torch")


def ml_bfloat16():
    """NumPy's dtype for ``ml_dtypes.bfloat16``, or None while ml_dtypes is not imported."""
    mod = sys.modules.get("ml_dtypes")
    bf16 = getattr(mod, "bfloat16", None)
    return None if bf16 is None else np.dtype(bf16)


def _is_ml_bfloat16(dtype) -> bool:
    bf16 = ml_bfloat16()
    return bf16 is not None and isinstance(dtype, np.dtype) and dtype == bf16


def is_torch_bfloat16(a: Any) -> bool:
    """A PyTorch bfloat16 tensor (its storage reaches CuPy as int16: see :func:`as_array`)."""
    return is_torch(a) and str(getattr(a, "dtype", "")) == "torch.bfloat16"


def is_bfloat16(a: Any) -> bool:
    """Whether ``a`` holds bfloat16 values: a PyTorch bfloat16 tensor or an array of
    ``ml_dtypes.bfloat16``."""
    return is_torch_bfloat16(a) or _is_ml_bfloat16(getattr(a, "dtype", None))


# NumPy's own dtypes by name: dtype.name is computed in Python on every access (microseconds,
# several times a call), a dictionary lookup is not.
_NUMPY_NAMES = {np.dtype(t): np.dtype(t).name for t in (
    np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128, np.bool_,
    np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)}


def dtype_name(a: Any, arr) -> str:
    """The name of the dtype of the values of ``a``, whose array (from :func:`as_array`) is
    ``arr``: "bfloat16" for bfloat16 whatever its storage, else NumPy's name ("float32").
    A dtype named bfloat16 that is not ml_dtypes' gets its module added (and is refused)."""
    if type(a) is np.ndarray:  # the common case, quickly: a NumPy array of a NumPy dtype
        name = _NUMPY_NAMES.get(arr.dtype)
        if name is not None:
            return name
    if is_bfloat16(a):
        return "bfloat16"
    name = np.dtype(arr.dtype).name
    return f"{name} ({np.dtype(arr.dtype).type.__module__})" if name == "bfloat16" else name


def _is_cuda_object(a: Any) -> bool:
    if type(a).__module__.startswith("cupy"):
        return True
    if is_torch(a):
        return bool(getattr(a, "is_cuda", False))
    try:  # the property itself may raise for dtypes it cannot describe
        if getattr(a, "__cuda_array_interface__", None) is not None:
            return True
    except Exception:
        pass
    dev = getattr(a, "__dlpack_device__", None)
    if dev is not None and not isinstance(a, np.ndarray):
        try:
            return dev()[0] == _DLPACK_CUDA
        except Exception:
            return False
    return False


def _device_of(a: Any, cupy) -> int:
    if type(a).__module__.startswith("cupy"):
        return int(a.device.id)
    if is_torch(a):
        return int(a.device.index or 0)
    return int(cupy.asarray(a).device.id)


@dataclass(frozen=True)
class Backend:
    """Where an op runs and which kernels run it.

    ``xp`` is the kind of array the data lives in (numpy or cupy). ``ops`` is the module
    whose op functions (``softmax_forward``, ``cross_entropy_with_grad``...) run the
    kernels: ``_core`` (CPU kernels, or CUDA kernels on a real GPU) or ``_emulated`` (the
    CUDA kernels executed on the host). ``cuda_kernels`` says the kernels are the CUDA ones,
    which read float16 and bfloat16 themselves. ``device`` is -1 for the CPU kernels,
    otherwise the CUDA device, real (cupy) or emulated (numpy).

    ``torch_stream`` is set when the caller's arrays are PyTorch CUDA tensors: the op then
    runs on PyTorch's current stream and its results come back as PyTorch tensors.
    """

    xp: Any
    device: int
    ops: Any = _core
    cuda_kernels: bool = False
    torch_stream: Any = None

    @property
    def on_gpu(self) -> bool:
        """The arrays live on a CUDA device (``xp`` is cupy): values there cost a
        synchronisation to read from the host."""
        return self.xp is not np

    def activate(self):
        """A context in which CuPy allocates and runs on this backend's device and stream."""
        if not self.on_gpu:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(self.xp.cuda.Device(self.device))
        if self.torch_stream is not None:
            stack.enter_context(self.xp.cuda.ExternalStream(self.torch_stream, self.device))
        return stack

    def launch(self) -> _core.Launch:
        if not self.cuda_kernels:
            return _core.Launch()
        if not self.on_gpu:  # emulated: host memory, no stream
            return _core.Launch(self.device, 0)
        return _core.Launch(self.device, self.xp.cuda.get_current_stream().ptr)

    def to_caller(self, a, bfloat16: bool = False):
        """A result in the caller's kind of array (a PyTorch tensor for PyTorch CUDA inputs,
        and for bfloat16 values of PyTorch CPU inputs, which NumPy cannot hold)."""
        if self.torch_stream is None:
            if not (bfloat16 and isinstance(a, np.ndarray) and a.dtype == np.int16):
                return a
            import torch

            return torch.from_numpy(a).view(torch.bfloat16)
        import torch

        t = torch.from_dlpack(a)
        return t.view(torch.bfloat16) if bfloat16 else t


HOST = Backend(np, -1)  # the CPU kernels of _core


# Argument types that always mean the host: checked first, as most calls pass only these.
_HOST_TYPES = frozenset((np.ndarray, type(None), float, int))


def backend_of(named: dict[str, Any]) -> Backend:
    """The backend of the array arguments (None values skipped); mixing devices is an error."""
    if all(type(a) in _HOST_TYPES for a in named.values()):
        return HOST
    found: dict[str, tuple[Backend, bool]] = {}
    for name, a in named.items():
        if a is None or isinstance(a, (numbers.Number, np.generic)):
            continue
        if _is_cuda_object(a):
            cupy = _cupy()
            found[name] = (Backend(cupy, _device_of(a, cupy), _core, True), is_torch(a))
        else:
            found[name] = (HOST, False)
    kinds = {b for b, _ in found.values()}
    if len(kinds) > 1:
        desc = ", ".join(
            f"{n} on {'GPU %d' % b.device if b.on_gpu else 'the host'}" for n, (b, _) in found.items()
        )
        raise ValueError(f"arrays must all be on one device: {desc}")
    if not kinds:
        return HOST
    backend = kinds.pop()
    first_is_torch = next(iter(found.values()))[1]
    if backend.on_gpu and first_is_torch:
        import torch

        stream = torch.cuda.current_stream(backend.device).cuda_stream
        backend = dataclasses.replace(backend, torch_stream=stream)
    return backend


def as_array(a: Any, backend: Backend, name: str):
    """``a`` as a numpy or cupy array, zero-copy when it already is one. A PyTorch bfloat16
    tensor comes back as an int16 view of its storage (see is_torch_bfloat16):
    callers that read its values must know that; :func:`values` does."""
    if backend.on_gpu:
        cupy = backend.xp
        if isinstance(a, (numbers.Number, np.generic)):
            return cupy.asarray(a)
        if type(a).__module__.startswith("cupy"):
            return a
        if is_torch(a):
            import torch

            t = a.detach()
            return cupy.from_dlpack(t.view(torch.int16) if is_torch_bfloat16(a) else t)
        if hasattr(a, "__dlpack__"):
            return cupy.from_dlpack(a)
        return cupy.asarray(a)
    if isinstance(a, np.ndarray):
        return a
    if is_torch_bfloat16(a):  # its storage, as on the GPU: the kernels read bfloat16
        import torch

        return a.detach().resolve_neg().view(torch.int16).numpy()
    try:
        arr = np.asarray(a)
    except Exception as exc:
        raise TypeError(f"{name} must be an array, got {type(a).__name__}") from exc
    return arr


def _real(dtype) -> bool:
    dtype = np.dtype(dtype)
    return (dtype.kind in "fiu" and dtype != np.bool_) or _is_ml_bfloat16(dtype)


def values(a: Any, backend: Backend, name: str, dtype):
    """The values of a side input (class weights, an upstream gradient, ``lse``, targets read
    beside the input...) as a numpy or cupy array of ``dtype``, converted value by value.

    Nothing is ever reinterpreted: a PyTorch bfloat16 tensor is converted by PyTorch to
    float32 first (NumPy and CuPy cannot read bfloat16), an ``ml_dtypes.bfloat16`` array by
    ``astype``. Zero-copy when ``a`` already is an array of ``dtype``. Raises TypeError
    naming the argument for anything that is not an array (or scalar) of real numbers.
    """
    dtype = np.dtype(dtype)
    if is_torch(a):
        a = a.detach()
        if is_torch_bfloat16(a):
            a = a.float()
    arr = as_array(a, backend, name)
    if not _real(arr.dtype):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def pointer(a) -> int:
    """The address of an array's first element (numpy, cupy, or any array whose ``data``
    has a ``ptr``)."""
    if isinstance(a, np.ndarray):
        return a.__array_interface__["data"][0] if a.size else 0
    return int(a.data.ptr) if a.size else 0


def byte_extent(a, ptr: int | None = None) -> tuple[int, int]:
    """The bytes ``[start, stop)`` an array's elements occupy, from its pointer (``ptr``
    when the caller has it), shape and strides (negative strides included); ``(0, 0)`` for
    an empty array."""
    if a.size == 0:
        return 0, 0
    start = stop = pointer(a) if ptr is None else ptr
    for n, stride in zip(a.shape, a.strides):
        if stride < 0:
            start += stride * (n - 1)
        else:
            stop += stride * (n - 1)
    return start, stop + a.dtype.itemsize


def may_overlap(a, b) -> bool:
    """Whether two arrays of one backend may share memory: their byte extents intersect.
    Works for any array with a pointer, shape and strides (numpy, cupy); conservative, as
    interleaved views that touch no common byte still count as overlapping."""
    a0, a1 = byte_extent(a)
    b0, b1 = byte_extent(b)
    return a0 < b1 and b0 < a1


def dtype_code(dtype) -> _core.DType:
    code = _DTYPES.get(dtype) if isinstance(dtype, np.dtype) else None
    if code is not None:
        return code
    dtype = np.dtype(dtype)
    if _is_ml_bfloat16(dtype):
        return _core.DType.bfloat16
    return _DTYPES[dtype]


# np.reshape(..., copy=False) (raise rather than copy) exists from NumPy 2.1; before it, a
# view whose shape is set does the same.
_RESHAPE_NEVER_COPIES = np.lib.NumpyVersion(np.__version__) >= "2.1.0"


def _flat_rows(moved, xp):
    """(rows, C) view of an array whose class axis is last, or None if that needs a copy."""
    if moved.ndim == 2:
        return moved
    c = moved.shape[-1]
    n = math.prod(moved.shape[:-1])
    try:
        if xp is np and _RESHAPE_NEVER_COPIES:
            return np.reshape(moved, (n, c), copy=False)
        view = moved.view()  # raises AttributeError where the reshape would need a copy
        view.shape = (n, c)
        return view
    except (ValueError, AttributeError):
        return None


def _usable(rows2d, xp) -> bool:
    item = rows2d.dtype.itemsize
    s_row, s_col = rows2d.strides
    if rows2d.shape[1] > 1 and s_col != item:
        return False
    if s_row % item != 0:
        return False
    return bool(rows2d.flags.aligned) if xp is np else True


def class_rows(x, axis: int, xp, *, writable_view: bool = False):
    """``x`` with its class axis moved last, as a 2-D (rows, C) array the kernels can read.

    Returns ``(rows2d, moved_shape, copied)``; ``copied`` says whether ``rows2d`` is a fresh
    copy rather than a view of ``x`` (then writes to it do not reach ``x``).
    """
    moved = x if axis in (-1, x.ndim - 1) else xp.moveaxis(x, axis, -1)
    rows2d = _flat_rows(moved, xp)
    if rows2d is not None and _usable(rows2d, xp):
        return rows2d, moved.shape, False
    c = moved.shape[-1]
    n = math.prod(moved.shape[:-1])
    return xp.ascontiguousarray(moved).reshape(n, c), moved.shape, True


def rows_struct(rows2d, bfloat16: bool = False, ptr: int | None = None) -> _core.Rows:
    """The kernels' view of a (rows, C) array; ``bfloat16`` says that int16 rows are the
    storage of bfloat16 values (PyTorch's, see :func:`as_array`). ``ptr``: its
    :func:`pointer`, when the caller has it already."""
    n, c = rows2d.shape
    item = rows2d.dtype.itemsize
    stride = rows2d.strides[0] // item if n > 1 else c
    bits = bfloat16 and rows2d.dtype == np.int16
    code = _core.DType.bfloat16 if bits else dtype_code(rows2d.dtype)
    return _core.Rows(pointer(rows2d) if ptr is None else ptr, n, c, stride, code)


def flat_vector(a, xp, dtype):
    """A 1-D contiguous array of the given dtype holding ``a``'s elements in C order."""
    return xp.ascontiguousarray(xp.asarray(a, dtype=dtype).reshape(-1))


# PyTorch tensors straight to the kernels' structs (the direct way for CUDA tensors, which
# skips the array layer above: see fusedce._direct).
_TORCH_CODES: dict = {}


def _torch_code(dtype):
    if not _TORCH_CODES:
        import torch

        _TORCH_CODES.update({
            torch.float32: _core.DType.float32, torch.float64: _core.DType.float64,
            torch.float16: _core.DType.float16, torch.bfloat16: _core.DType.bfloat16,
            torch.int32: _core.DType.int32, torch.int64: _core.DType.int64})
    return _TORCH_CODES[dtype]


def tensor_rows(t) -> _core.Rows:
    """The kernels' view of a 2-D tensor whose classes (dimension 1) are contiguous."""
    n, c = t.shape
    return _core.Rows(t.data_ptr(), n, c, t.stride(0) if n > 1 else c, _torch_code(t.dtype))


def tensor_index_target(t) -> _core.Target:
    """The kernels' view of a contiguous 1-D tensor of class indices (int32 or int64)."""
    return _core.Target(_core.TargetKind.class_index, t.data_ptr(), _torch_code(t.dtype), 1)
