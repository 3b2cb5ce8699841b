// The execution model of CUDA on the CPU, as one include (simt/simt.cuh picks it when
// SIMT_EMULATED is defined). Layers, each in its own file:
//   scheduler.h          CUDA threads as fibers; barriers, warp meetings, shared memory
//   device.h             the device-side language: built-ins, shuffles, votes, atomics, intrinsics
//   cooperative_groups.h thread block, tiled partitions, clusters with distributed shared memory
//   runtime.h            the runtime calls of host code, describing configurable emulated GPUs
#pragma once

#include "simt/device.h"
#include "simt/cooperative_groups.h"
#include "simt/runtime.h"
