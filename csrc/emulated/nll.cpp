// csrc/cuda/nll.cu compiled as C++ against the CPU execution model (csrc/simt).
#include "cuda/nll.cu"
