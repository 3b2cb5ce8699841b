#!/usr/bin/env bash
# Builds bench/kernel_harness.cpp against a tree's CPU kernels, and compares builds in
# alternated processes: this VM's speed drifts by 10-50 % from minute to minute, so only a
# ratio taken within one process (a kernel against a copy of the same buffers), repeated in
# processes of each build in turn, tells builds apart.
#
#   bench/kernel_ab.sh build NAME [SRC]        # SRC's csrc/ (default: this tree) -> build/harness/NAME
#   bench/kernel_ab.sh ab "NAME1 NAME2" "N C" MODE ROUNDS [REF] [b]
#
# `ab` runs each build ROUNDS times in turn, each process timing MODE and REF (default 6,
# the memcpy copy; modes at the top of kernel_harness.cpp), and prints, per build, the
# ratio MODE / REF (min, median, max over its processes) and the median time of MODE in ns
# per 16 classes. `b` as the last argument: bfloat16 logits. Environment variables of the
# harness (OFF, REPS, STREAM_MIB) pass through. The flags are those of the library's
# avx512_bf16 level (CMakeLists.txt); HARNESS_AVX2=1 builds the AVX2 kernels instead, e.g.
# for valgrind --tool=callgrind, which has no AVX-512:
#
#   HARNESS_AVX2=1 bench/kernel_ab.sh build avx2
#   REPS=1 valgrind --tool=callgrind build/harness/avx2 4096 128 1
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/build/harness"

case "${1:-}" in
  build)
    name=$2
    src=$(cd "${3:-$here}" && pwd)
    mkdir -p "$out"
    if [[ -n "${HARNESS_AVX2:-}" ]]; then
      isa=(-DHARNESS_AVX2 -mavx2 -mfma -mf16c -g)
    else
      isa=(-mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma -mavx2 -mf16c -mprfchw -mavx512bf16 -mavx512vbmi)
    fi
    g++ -O3 -std=c++17 -I"$src/csrc" "${isa[@]}" -fno-math-errno -ffp-contract=off \
      -o "$out/$name" "$here/bench/kernel_harness.cpp" "$src/csrc/cpu/thread_pool.cpp" \
      "$src/csrc/cpu/streaming.cpp" -lpthread
    echo "$out/$name"
    ;;
  ab)
    names=$2 shape=$3 mode=$4 rounds=$5 ref=${6:-6} dtype=${7:-}
    for ((i = 0; i < rounds; ++i)); do
      for name in $names; do
        # shellcheck disable=SC2086  # N and C are two words
        times=$("$out/$name" $shape "$ref$mode" $dtype | awk '{print $(NF-1)}' | tr '\n' ' ')
        echo "$name $times"
      done
    done | python3 -c '
import statistics, sys
runs = {}
for line in sys.stdin:
    name, ref, t = line.split()
    runs.setdefault(name, []).append((float(t) / float(ref), float(t)))
for name, r in runs.items():
    ratios = sorted(x for x, _ in r)
    print(f"{name:12s} ratio min {ratios[0]:.3f} median {statistics.median(ratios):.3f} "
          f"max {ratios[-1]:.3f}   {statistics.median(t for _, t in r):.2f} ns/16   n={len(r)}")
'
    ;;
  *)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
