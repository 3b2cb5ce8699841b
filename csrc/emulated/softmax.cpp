// csrc/cuda/softmax.cu compiled as C++ against the CPU execution model (csrc/simt).
#include "cuda/softmax.cu"
