// The portable instruction set: one lane at a time (the compiler may still vectorise).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/half.h"

namespace fusedce::cpu::portable {
namespace {
#include "vec_scalar.h"
using V32 = S32;
using V64 = S64;
}  // namespace
}  // namespace fusedce::cpu::portable
