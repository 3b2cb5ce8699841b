"""Argument checking shared by every public function: each error names the argument."""

from __future__ import annotations

import math
import numbers

import numpy as np

REDUCTIONS = ("none", "sum", "mean")
# The floating dtypes accepted, by name: bfloat16 is PyTorch's or ml_dtypes' (NumPy has none
# of its own), so arrays are matched by the name of their values' dtype (_arrays.dtype_name).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
FLOAT_DTYPES_TEXT = "float16, bfloat16, float32 or float64"
INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)


def compute_dtype(dtype) -> np.dtype:
    """float32 for half precision and float32 input, float64 for float64."""
    return _FLOAT64 if np.dtype(dtype) == _FLOAT64 else _FLOAT32


def floating(a, name: str, dtype_name: str | None = None):
    """``a`` (an array) if it is a floating array of at least one dimension. ``dtype_name``
    is the name of its values' dtype when its storage says otherwise (bfloat16 as int16)."""
    dtype_name = dtype_name or a.dtype.name
    if dtype_name not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a {FLOAT_DTYPES_TEXT} array, got dtype {dtype_name}")
    if a.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the class axis), got a 0-d array")
    return a


# Below, a plain int or float (nearly every call) skips the checks against the abstract
# number classes, which cost microseconds each; other values take them.


def axis_index(axis, ndim: int, name: str = "axis") -> int:
    if type(axis) is not int:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {type(axis).__name__}")
        axis = int(axis)
    if not -ndim <= axis < ndim:
        raise np.exceptions.AxisError(
            f"{name}={axis} is out of range for an array of {ndim} dimension(s)"
        )
    return axis % ndim


def reduction(value) -> str:
    if not isinstance(value, str) or value not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'sum', 'mean', got {value!r}")
    return value


def ignore_index(value) -> int:
    if type(value) is int:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"ignore_index must be an integer, got {type(value).__name__}")
    return int(value)


def label_smoothing(value) -> float:
    if type(value) is not float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"label_smoothing must be a number, got {type(value).__name__}")
        value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"label_smoothing must be within [0, 1], got {value}")
    return value


def z_loss(value) -> float:
    if type(value) is not float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"z_loss must be a number, got {type(value).__name__}")
        value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {value}")
    return value


def softcap(value) -> float:
    """The kernels' softcap: 0.0 for None (off), else a finite positive float."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"softcap must be None or a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"softcap must be None or a finite number > 0, got {value}")
    return value


def same_shape(a, shape, name: str, what: str):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), got {tuple(a.shape)}")


def scalar_grad(value, name: str = "grad_loss") -> float:
    """A scalar upstream gradient (Python number or 0-d/size-1 array) as a float."""
    if type(value) is float:
        return value
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or an array, got bool")
    if isinstance(value, numbers.Real):
        return float(value)
    shape = getattr(value, "shape", None)
    if shape is None:
        raise TypeError(f"{name} must be a number or an array, got {type(value).__name__}")
    if math.prod(shape) != 1:
        raise ValueError(f"{name} must be a scalar for reduction 'sum' or 'mean', got shape {tuple(shape)}")
    return value


def writable_out(out, shape, dtype, xp, name: str = "out"):
    if not isinstance(out, xp.ndarray):
        raise TypeError(f"{name} must be a {xp.__name__} array, got {type(out).__name__}")
    same_shape(out, shape, name, "the shape of the result")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if xp is np and not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out
