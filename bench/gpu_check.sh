#!/usr/bin/env bash
# GPU check for fusedce (issues 3 and 4), for a machine with an NVIDIA GPU and no network.
#   bench/gpu_check.sh [OUTPUT_FOLDER]      (default: $OUT, else bench/results/gpu_check)
# Builds and installs the package (CUDA kernels for this GPU's architecture only, to keep the
# build short), runs the test suite (GPU tests through the `device` fixture), the simple v1
# kernels against the same tests, a fast subset under compute-sanitizer memcheck, a size test
# with N x C > 2^31, and the benchmark. Everything is tee'd to logs in the folder; a summary
# of each step's exit status is in summary.txt. Total well under 9 minutes on an H100 host.
set -u
cd "$(dirname "$0")/.."
DEST="${1:-${OUT:-bench/results/gpu_check}}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
SUMMARY="$DEST/summary.txt"
: > "$SUMMARY"
START=$(date +%s)

step() {  # step NAME TIMEOUT_S command...
  local name="$1" limit="$2"
  shift 2
  local t0=$(date +%s)
  echo "=== $name (limit ${limit}s): $*" | tee -a "$DEST/$name.log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$DEST/$name.log"
  local rc=${PIPESTATUS[0]}
  local t1=$(date +%s)
  echo "$name rc=$rc $((t1 - t0))s (at $((t1 - START))s)" | tee -a "$SUMMARY"
  return $rc
}

step gpu_info 30 nvidia-smi
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
ARCH=${ARCH:-90}
export CMAKE_ARGS="${CMAKE_ARGS:-} -DFUSEDCE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${ARCH}-real -DCMAKE_CUDA_FLAGS=--threads=0"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
echo "CMAKE_ARGS=$CMAKE_ARGS" | tee -a "$SUMMARY"

if ! step build 330 python3 -m pip install --no-build-isolation --no-deps -v .; then
  echo "build failed: see $DEST/build.log" | tee -a "$SUMMARY"
  exit 1
fi
step config 30 python3 -c "import fusedce; print(fusedce.show_config()); print('cuda_available', fusedce.cuda_available())"

# the whole suite (CPU and GPU), then the GPU tests again on the simple v1 kernels
step pytest 150 python3 -m pytest -q -p no:cacheprovider tests -m "not slow"
step pytest_simple_kernels 90 env FUSEDCE_CUDA_SIMPLE=1 python3 -m pytest -q -p no:cacheprovider tests -m "not slow" -k "cuda"

# memcheck: a fast subset (small shapes), every op once
if command -v compute-sanitizer >/dev/null 2>&1; then
  step memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 99 --target-processes all \
    python3 -m pytest -q -p no:cacheprovider tests/test_cuda_specific.py -m "not slow" -k "small and not float16 and not float64"
else
  echo "memcheck skipped: compute-sanitizer not found" | tee -a "$SUMMARY"
fi

# N x C > 2^31 elements
step size_test 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_specific.py -m slow

step bench 200 python3 bench/gpu.py --out "$DEST/bench.md" --repeats 10
echo "total $(( $(date +%s) - START ))s" | tee -a "$SUMMARY"
cat "$SUMMARY"
