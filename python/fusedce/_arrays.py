"""Turning arrays into what the kernels take: pointers, shapes, row strides, dtypes, devices.

Every op sees its data as a matrix of rows (one per sample or position) and classes, the
classes contiguous.  :func:`class_rows` moves the class axis last and flattens the rest
into rows, without a copy whenever the layout allows one.  NumPy arrays stay on the host;
CuPy arrays, and any object exposing ``__cuda_array_interface__`` or a CUDA ``__dlpack__``,
are taken as CuPy arrays (zero-copy) and run on the current CUDA stream.
"""

from __future__ import annotations

import numbers
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
            "CUDA arrays need CuPy (pip install cupy-cuda12x or cupy-cuda13x)"
        ) from exc
    return cupy


def _is_cuda_object(a: Any) -> bool:
    if type(a).__module__.startswith("cupy"):
        return True
    if hasattr(a, "__cuda_array_interface__"):
        return True
    dev = getattr(a, "__dlpack_device__", None)
    if dev is not None and not isinstance(a, np.ndarray):
        try:
            return dev()[0] == _DLPACK_CUDA
        except Exception:
            return False
    return False


@dataclass(frozen=True)
class Backend:
    """Where an op runs: ``xp`` is numpy or cupy; ``device`` is -1 for the host."""

    xp: Any
    device: int

    @property
    def on_gpu(self) -> bool:
        return self.device >= 0

    def launch(self) -> _core.Launch:
        if not self.on_gpu:
            return _core.Launch()
        return _core.Launch(self.device, self.xp.cuda.get_current_stream().ptr)


HOST = Backend(np, -1)


def backend_of(named: dict[str, Any]) -> Backend:
    """The backend of the array arguments (None values skipped); mixing kinds is an error."""
    found: dict[str, Backend] = {}
    for name, a in named.items():
        if a is None or isinstance(a, (numbers.Number, np.generic)):
            continue
        if _is_cuda_object(a):
            cupy = _cupy()
            dev = cupy.asarray(a).device.id if not type(a).__module__.startswith("cupy") else a.device.id
            found[name] = Backend(cupy, int(dev))
        else:
            found[name] = HOST
    kinds = set(found.values())
    if len(kinds) > 1:
        desc = ", ".join(
            f"{n} on {'GPU %d' % b.device if b.on_gpu else 'the host'}" for n, b in found.items()
        )
        raise ValueError(f"arrays must all be on one device: {desc}")
    return kinds.pop() if kinds else HOST


def as_array(a: Any, backend: Backend, name: str):
    """``a`` as a numpy or cupy array, zero-copy when it already is one."""
    if backend.on_gpu:
        if a is not None and not type(a).__module__.startswith("cupy") and hasattr(a, "__dlpack__") \
                and not hasattr(a, "__cuda_array_interface__"):
            return backend.xp.from_dlpack(a)
        return backend.xp.asarray(a)
    if isinstance(a, np.ndarray):
        return a
    try:
        arr = np.asarray(a)
    except Exception as exc:
        raise TypeError(f"{name} must be an array, got {type(a).__name__}") from exc
    return arr


def pointer(a) -> int:
    """The address of an array's first element (numpy or cupy)."""
    if isinstance(a, np.ndarray):
        return a.ctypes.data if a.size else 0
    return int(a.data.ptr) if a.size else 0


def dtype_code(dtype) -> _core.DType:
    return _DTYPES[np.dtype(dtype)]


def _flat_rows(moved, xp):
    """(rows, C) view of an array whose class axis is last, or None if that needs a copy."""
    c = moved.shape[-1]
    n = int(np.prod(moved.shape[:-1], dtype=np.int64))
    if moved.ndim == 2:
        return moved
    try:
        if xp is np:
            return np.reshape(moved, (n, c), copy=False)
        view = moved.view()
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
    moved = xp.moveaxis(x, axis, -1)
    rows2d = _flat_rows(moved, xp)
    if rows2d is not None and _usable(rows2d, xp):
        return rows2d, moved.shape, False
    c = moved.shape[-1]
    n = int(np.prod(moved.shape[:-1], dtype=np.int64))
    return xp.ascontiguousarray(moved).reshape(n, c), moved.shape, True


def rows_struct(rows2d, dtype_override=None) -> _core.Rows:
    n, c = rows2d.shape
    item = rows2d.dtype.itemsize
    stride = rows2d.strides[0] // item if n > 1 else c
    return _core.Rows(pointer(rows2d), n, c, stride, dtype_code(dtype_override or rows2d.dtype))


def flat_vector(a, xp, dtype):
    """A 1-D contiguous array of the given dtype holding ``a``'s elements in C order."""
    return xp.ascontiguousarray(xp.asarray(a, dtype=dtype).reshape(-1))
