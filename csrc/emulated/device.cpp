// csrc/cuda/device.cu compiled as C++ against the CPU execution model (csrc/simt).
#include "cuda/device.cu"
