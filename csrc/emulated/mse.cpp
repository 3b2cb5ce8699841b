// csrc/cuda/mse.cu compiled as C++ against the CPU execution model (csrc/simt).
#include "cuda/mse.cu"
