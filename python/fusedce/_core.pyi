# Type stubs for fusedce._core, the compiled module built from csrc/bindings.cpp.
#
# The op functions take their arguments by position only (the bindings name none).
# It is internal: the plain-data descriptions of csrc/core/types.h and one function per op
# of csrc/core/ops.h, which trust that the Python layer (fusedce._arrays) has checked every
# pointer, shape and dtype. Use the functions of the fusedce package instead.

from typing import ClassVar, List

__version__: str

class DType:
    float32: ClassVar[DType]
    float64: ClassVar[DType]
    float16: ClassVar[DType]
    bfloat16: ClassVar[DType]
    int32: ClassVar[DType]
    int64: ClassVar[DType]
    __members__: ClassVar[dict[str, DType]]
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    def __index__(self) -> int: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

class TargetKind:
    none: ClassVar[TargetKind]
    class_index: ClassVar[TargetKind]
    probabilities: ClassVar[TargetKind]
    __members__: ClassVar[dict[str, TargetKind]]
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    def __index__(self) -> int: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

class Rows:
    """A (rows x cols) matrix with unit class stride; data == 0 means absent."""

    data: int
    rows: int
    cols: int
    row_stride: int
    dtype: DType
    def __init__(self, data: int = 0, rows: int = 0, cols: int = 0, row_stride: int = 0,
                 dtype: DType = ...) -> None: ...

class Target:
    """Class indices (one per row, `stride` apart) or probabilities shaped like the logits."""

    kind: TargetKind
    data: int
    dtype: DType
    stride: int
    def __init__(self, kind: TargetKind = ..., data: int = 0, dtype: DType = ...,
                 stride: int = 1) -> None: ...

class LossOptions:
    weight: int
    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float
    class_offset: int
    total_classes: int
    def __init__(self, weight: int = 0, ignore_index: int = -100,
                 label_smoothing: float = 0.0, z_loss: float = 0.0,
                 softcap: float = 0.0, class_offset: int = 0,
                 total_classes: int = 0) -> None: ...

class ShardStats:
    """Per-row outputs of cross_entropy_shard_stats (one value per row, contiguous)."""

    max: int
    sum: int
    target: int
    dot: int
    def __init__(self, max: int = 0, sum: int = 0, target: int = 0, dot: int = 0) -> None: ...

class RowStats:
    """Per-row outputs (loss, lse, argmax) and the upstream factor of a backward."""

    loss: int
    lse: int
    lse_is_input: bool
    argmax: int
    grad: int
    grad_stride: int
    def __init__(self, loss: int = 0, lse: int = 0, lse_is_input: bool = False,
                 argmax: int = 0, grad: int = 0, grad_stride: int = 0) -> None: ...

class Launch:
    """device < 0: the host; otherwise a CUDA device and a cudaStream_t (as an int)."""

    device: int
    stream: int
    def __init__(self, device: int = -1, stream: int = 0) -> None: ...

def softmax_forward(x: Rows, y: Rows, log: bool, launch: Launch, /) -> None: ...
def softmax_backward(grad: Rows, y: Rows, dx: Rows, log: bool, launch: Launch, /) -> None: ...
def cross_entropy_forward(logits: Rows, target: Target, opt: LossOptions, stats: RowStats,
                          launch: Launch, /) -> None: ...
def cross_entropy_with_grad(logits: Rows, target: Target, opt: LossOptions, stats: RowStats,
                            dx: Rows, launch: Launch, /) -> None: ...
def cross_entropy_shard_stats(logits: Rows, target: Target, opt: LossOptions,
                              out: ShardStats, launch: Launch, /) -> None: ...
def nll_forward(logp: Rows, target: Target, opt: LossOptions, stats: RowStats,
                launch: Launch, /) -> None: ...
def nll_backward(logp: Rows, target: Target, opt: LossOptions, stats: RowStats, dx: Rows,
                 launch: Launch, /) -> None: ...
def mse_forward(pred: Rows, target: Rows, stats: RowStats, each: Rows,
                launch: Launch, /) -> None: ...
def mse_backward(pred: Rows, target: Rows, grad_each: Rows, stats: RowStats, dx: Rows,
                 launch: Launch, /) -> None: ...

def sum_as_double(data: int, n: int, dtype: DType) -> float:
    """Sum of n contiguous float32/float64 values, accumulated in float64 in a fixed order."""
    ...
def index_range(data: int, n: int, dtype: DType) -> tuple[int, int]:
    """(min, max) of n contiguous int32/int64 values; (0, -1) when n == 0."""
    ...
def simd_level() -> str: ...
def available_simd_levels() -> List[str]: ...
def set_simd_level(name: str, /) -> bool: ...
def num_threads() -> int: ...
def set_num_threads(n: int, /) -> None: ...
def default_num_threads() -> int: ...
def cuda_available() -> bool: ...
def cuda_device_count() -> int: ...
def cuda_build_info() -> str: ...
def cuda_unavailable_reason() -> str:
    """Why the CUDA kernels cannot run here (empty when they can)."""
    ...
def vexp(x: int, y: int, n: int, dtype: DType, /) -> None:
    """The kernels' vectorised exp over n contiguous values (for tests)."""
