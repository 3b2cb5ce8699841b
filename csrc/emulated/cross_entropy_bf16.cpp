// csrc/cuda/cross_entropy_bf16.cu compiled as C++ against the CPU execution model (csrc/simt).
#include "cuda/cross_entropy_bf16.cu"
