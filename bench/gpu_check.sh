#!/usr/bin/env bash
# GPU check for fusedce (issues 3 and 4), for one NVIDIA H100/H200 with no network.
#   bash bench/gpu_check.sh [OUTPUT_FOLDER]      (default: $OUT, else bench/results/gpu_check)
#
# What it does, in order, and the time each step may take (seconds; a step past its limit is
# killed, recorded as TIMEOUT, and the script goes on). Steps marked "together" run at the
# same time (separate processes on the one GPU; none of them is timed), so a group costs its
# longest limit. Every step writes OUTPUT_FOLDER/NAME.log as it runs; summary.txt gets one
# line per step (exit code, time) as each ends, so a cut-off run still leaves its results.
#
#   step              limit  wall  why
#   gpu_info             10    10  GPU, driver, compute capability (= the build's only arch)
#   build               170   170  pip install of this tree: CUDA for this GPU only (sm_XX-real),
#                                  nvcc --threads=0, ninja -j$(nproc); cross_entropy.cu is the
#                                  long pole (~100 s alone on a slow 2-core box)
#   config               45    45  versions; fusedce imported from the new build; CUDA usable
#                                  (importing torch, CuPy and Liger took over 15 s on an H200 box)
#   collect              25    25  the test ids, from which every GPU subset is picked exactly
#   gpu_tests            75 \      every `device`=cuda test + tests/test_cuda_specific.py
#   gpu_tests_simple     75  } 75  the same with FUSEDCE_CUDA_SIMPLE=1 (v1 streaming kernels)
#   size_test            75 /      N x C > 2^31 elements (-m slow), ~9 GiB of GPU memory
#   memcheck             90 \      compute-sanitizer: OOB / misaligned accesses, small tests
#   racecheck            90  } 90  shared-memory races in the block and cluster teams
#   synccheck            90 /      barrier misuse (__syncthreads, cluster.sync) in the same
#   probe                40    40  bench/gpu_probe.py: the kernels alone (ratios to a copy) and
#                                  the host time per call (FUSEDCE_CUDA_TRACE: kernel, grid)
#   bench               100   100  bench/gpu.py: fused kernels vs copy, torch, torch.compile
#   total (worst case)        555  = 9 min 15 s; a deadline of 570 s (GPU_CHECK_TOTAL_S)
#                                  also clips any step to what is left of it
#
# Writing into the device tool's $OUT, the logs end packed in logs.tgz (8 files come back).
# Exit status: 0 when the build succeeded (test / sanitizer / bench failures are in
# summary.txt, not fatal), 1 when it did not.

set -u
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SELF")/.." || exit 1
DEST="${1:-${OUT:-bench/results/gpu_check}}"
mkdir -p "$DEST" || exit 1
DEST="$(cd "$DEST" && pwd)"
SUMMARY="$DEST/summary.txt"
IDS="$DEST/collected_ids.txt"
: > "$SUMMARY"
rm -f "$DEST"/*.log "$DEST"/*.ids "$DEST/bench.md" "$DEST/probe.md"  # nothing stale from an earlier run
START=$(date +%s)
TOTAL_S=${GPU_CHECK_TOTAL_S:-570}

note() {  # a line in the summary (and on the terminal)
  echo "note: $*" | tee -a "$SUMMARY"
}

# step NAME LIMIT_S command...: runs the command under `timeout` (clipped to the deadline),
# output to NAME.log and the terminal; appends "NAME status rc time" to the summary.
step() {
  local name=$1 cap=$2
  shift 2
  local log="$DEST/$name.log" cmd="$*" left limit t0 t1 rc status result
  ((${#cmd} > 400)) && cmd="${cmd:0:400}... ($# words; the test ids are in $name.ids)"
  left=$((START + TOTAL_S - $(date +%s) - 5))
  limit=$((cap < left ? cap : left))
  if ((limit < 10)); then
    printf '%-17s %-8s (out of time: %ss left of %ss)\n' "$name" SKIPPED "$left" "$TOTAL_S" | tee -a "$SUMMARY"
    return 125
  fi
  t0=$(date +%s)
  echo "=== $name (limit ${limit}s): $cmd" | tee "$log"
  # timeout runs the command in its own process group and signals the whole group, so the
  # python under compute-sanitizer goes too; --kill-after for anything that ignores TERM
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  t1=$(date +%s)
  case $rc in
    0) status=ok ;;
    124) status=TIMEOUT ;;
    137) status=KILLED ;;  # past --kill-after, or out of memory
    *) status=FAILED ;;
  esac
  # pytest's last line ("230 passed, 3 skipped in 20.1s"), when there is one
  result=$(grep -E '(passed|failed|errors?|skipped|deselected|no tests ran).* in [0-9.]+s' "$log" | tail -1 | tr -d '=')
  printf '%-17s %-8s rc=%-3s %4ss of %3ss (ended at %3ss) %s\n' "$name" "$status" "$rc" \
    "$((t1 - t0))" "$limit" "$((t1 - START))" "${result# }" | tee -a "$SUMMARY"
  return "$rc"
}

# in_background COMMAND...: for a group of steps run together: output to their logs only
# (they would interleave on the terminal); the caller `wait`s for the group.
in_background() {
  "$@" > /dev/null &
}

# shellcheck disable=SC2329  # (called through in_background)
# pytest_ids NAME LIMIT_S [env VAR=...] [compute-sanitizer ...] -- ID...: pytest on explicit
# node ids; with no ids it records a skip instead (pytest with no ids would run everything).
pytest_ids() {
  local name=$1 limit=$2 prefix=()
  shift 2
  while [[ $# -gt 0 && $1 != -- ]]; do prefix+=("$1"); shift; done
  shift
  if [[ $# -eq 0 ]]; then
    printf '%-17s %-8s (no test ids selected: see collect.log)\n' "$name" SKIPPED | tee -a "$SUMMARY"
    return 0
  fi
  printf '%s\n' "$@" > "$DEST/$name.ids"
  step "$name" "$limit" "${prefix[@]}" python3 -m pytest -q -p no:cacheprovider "$@"
}

# pick ID...: those of the given node ids that were collected; the others are noted.
pick() {
  local id
  for id in "$@"; do
    if grep -qxF -- "$id" "$IDS"; then printf '%s\n' "$id"; else note "not collected, left out: $id" > /dev/null; fi
  done
}

# --- plan --------------------------------------------------------------------------------
sed -n '2,/^$/s/^# \{0,1\}//p' "$SELF"
echo "output folder: $DEST"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain 2>/dev/null | grep -q . && echo ' (with local changes)')"
echo "start: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), deadline ${TOTAL_S}s"
echo

# nvcc and compute-sanitizer usually live in /usr/local/cuda/bin, not always on PATH
for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
  if [[ -n $d && -x $d/bin/nvcc ]] && ! command -v nvcc > /dev/null; then export PATH="$PATH:$d/bin"; fi
done

# --- GPU and build -----------------------------------------------------------------------
step gpu_info 10 nvidia-smi
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -1 | tr -d '. ')
if [[ ! $ARCH =~ ^[0-9]+$ ]]; then
  ARCH=$(python3 -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())' 2> /dev/null)
fi
if [[ ! $ARCH =~ ^[0-9]+$ ]]; then
  ARCH=90
  note "compute capability unknown (no nvidia-smi, no torch GPU): building for sm_90"
fi
note "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2> /dev/null | head -1), sm_$ARCH"

# Installed with --target into a folder of its own, put first on PYTHONPATH: it works the
# same where pip refuses to touch the system Python (PEP 668) and never mixes with an older
# install. Ninja (scikit-build-core's default when present) runs $(nproc) jobs.
SITE="$PWD/build/gpu_check_site"
rm -rf "$SITE"
# the emulated CUDA kernels are checked in CI on the CPU; here only the real ones (saves the build time)
export FUSEDCE_CUDA=ON FUSEDCE_EMULATED=OFF
export CMAKE_ARGS="${CMAKE_ARGS:-} -DFUSEDCE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${ARCH}-real -DCMAKE_CUDA_FLAGS=--threads=0"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1  # no network: never wait on an index
note "CMAKE_ARGS=$CMAKE_ARGS CMAKE_BUILD_PARALLEL_LEVEL=$CMAKE_BUILD_PARALLEL_LEVEL"
if ! step build 170 python3 -m pip install --no-build-isolation --no-deps -v --target "$SITE" .; then
  note "build failed: see $DEST/build.log"
  tail -n 40 "$DEST/build.log"
  echo
  cat "$SUMMARY"
  exit 1
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
# several pytest processes share the 16 cores below; their CPU references are small
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

# Fails (rc 3) when fusedce would run no GPU test: then every GPU step below only skips.
if ! step config 45 python3 - "$SITE" << 'EOF'; then
import importlib, sys
print("python", sys.version.split()[0])
for name in ("numpy", "cupy", "torch", "triton", "pytest", "hypothesis", "liger_kernel"):
    try:
        print(f"{name:13s}", getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(f"{name:13s} NOT importable ({type(e).__name__}: {e})")
import fusedce
print("fusedce from", fusedce.__file__)
fusedce.show_config()
ok = fusedce.__file__.startswith(sys.argv[1]) and fusedce.cuda_available()
try:
    import cupy
    print("cupy sees", cupy.cuda.runtime.getDeviceCount(), "GPU(s), compute capability",
          cupy.cuda.Device(0).compute_capability)
except Exception as e:  # noqa: BLE001
    print("cupy cannot use the GPU: the `device`=cuda tests will skip:", e)
    ok = False
print("cuda_available", fusedce.cuda_available())
sys.exit(0 if ok else 3)
EOF
  note "fusedce cannot run its CUDA kernels here (see config.log): the GPU tests below will skip"
fi

# --- test selection ----------------------------------------------------------------------
# pytest -k matches substrings ("float16" is in "bfloat16", "cuda" in "test_cuda_specific"),
# so every subset below is a list of exact node ids picked from the collected ones.
step collect 25 python3 -m pytest --collect-only -q -p no:cacheprovider -m "not slow" tests
grep -E '^tests/[^ ]*::' "$DEST/collect.log" > "$IDS"
# GPU tests: ids whose parameters include the token "cuda" (the `device` fixture: [cuda],
# [cuda-float32], [case3-cuda]; not "emulated"), all of test_cuda_specific.py, and
# test_cuda_* functions (GPU-only tests such as tests/test_torch.py::test_cuda_matches_torch).
mapfile -t GPU < <(grep -E '^tests/test_cuda_specific\.py::|::test_cuda_|\[(.*-)?cuda(-.*)?\]$' "$IDS")
# memcheck: the fast "small" tests of test_cuda_specific.py in float32 and bfloat16 (dtype
# as a whole parameter token: "-float16]" drops float16, never bfloat16), plus one parity
# test per other op on the GPU (softmax backward, nll, mse, backward from a given lse).
mapfile -t MEMCHECK < <(
  grep -E '^tests/test_cuda_specific\.py::test_small' "$IDS" | grep -vE '[[-]float(16|64)[]-]'
  pick "tests/test_parity.py::test_softmax_backward_and_log_softmax_backward[cuda]" \
    "tests/test_parity.py::test_nll_loss[cuda]" "tests/test_parity.py::test_mse[cuda]" \
    "tests/test_parity.py::test_cross_entropy_backward[cuda]"
)
# racecheck and synccheck: a few rows at class counts that pick each shared-memory team of
# csrc/cuda/cross_entropy.cu (packs = 16-byte vectors: 4 float32 or 8 bfloat16 classes).
TEAM_IDS=(
  # BlockTeam<256>: 257, 1024 and 512 packs
  "tests/test_cuda_specific.py::test_small_row_paths_with_grad[1025-float32]"
  "tests/test_cuda_specific.py::test_small_row_paths_with_grad[4096-float32]"
  "tests/test_cuda_specific.py::test_small_row_paths_with_grad[4096-bfloat16]"
  # ClusterTeam<256,2> (2049 and 4000 packs), <256,4> (8000), <256,8> (8193),
  # <256,16> (16385), <512,16> (32770): each cluster shape once
  "tests/test_cuda_specific.py::test_row_paths_options[8193-float32]"
  "tests/test_cuda_specific.py::test_row_paths_options[32000-bfloat16]"
  "tests/test_cuda_specific.py::test_row_paths_options[32000-float32]"
  "tests/test_cuda_specific.py::test_row_paths_options[65537-bfloat16]"
  "tests/test_cuda_specific.py::test_row_paths_options[65537-float32]"
  "tests/test_cuda_specific.py::test_row_paths_options[131077-float32]"
  # softmax / log_softmax and probability targets: BlockTeam (3000), ClusterTeam<256,16> (70000)
  "tests/test_cuda_specific.py::test_small_probability_targets_and_softmax[3000]"
  "tests/test_cuda_specific.py::test_small_probability_targets_and_softmax[70000]"
  # nll_loss and cross-entropy at 5000 classes: BlockTeam<256> in nll.cu and cross_entropy.cu
  "tests/test_cuda_specific.py::test_small_out_of_range_target[5000]"
  # 1M classes: the streaming kernel (a 512-thread block per row, shared-memory block reduce)
  "tests/test_cuda_specific.py::test_small_class_count_beyond_a_million"
)
mapfile -t TEAMS < <(pick "${TEAM_IDS[@]}")
echo "selected: ${#GPU[@]} GPU tests, ${#MEMCHECK[@]} for memcheck, ${#TEAMS[@]} for racecheck/synccheck"

# --- GPU tests, the simple kernels, N x C > 2^31 (together) --------------------------------
echo "=== gpu_tests, gpu_tests_simple, size_test together (logs: $DEST/*.log)"
in_background pytest_ids gpu_tests 75 -- "${GPU[@]}"
# v1 streaming kernels everywhere, against the same tests (validates v2 against v1's results)
in_background pytest_ids gpu_tests_simple 75 env FUSEDCE_CUDA_SIMPLE=1 -- "${GPU[@]}"
in_background step size_test 75 python3 -m pytest -q -p no:cacheprovider -m slow tests/test_cuda_specific.py
wait

# --- compute-sanitizer (together) ----------------------------------------------------------
SAN=$(command -v compute-sanitizer)
for d in "${CUDA_HOME:-}" /usr/local/cuda; do
  [[ -z $SAN && -n $d && -x $d/compute-sanitizer/compute-sanitizer ]] && SAN=$d/compute-sanitizer/compute-sanitizer
done
if [[ -z $SAN ]]; then
  note "compute-sanitizer not found: memcheck, racecheck and synccheck not run"
else
  # --report-api-errors no: torch and the cluster-occupancy probe make CUDA calls that fail
  # on purpose and are handled; counted as errors they would hide the kernels' own verdict.
  # PYTORCH_NO_CUDA_MEMORY_CACHING: one cudaMalloc per tensor, so memcheck sees exact bounds.
  SANITIZE=("$SAN" --error-exitcode 99 --report-api-errors no)
  echo "=== memcheck, racecheck, synccheck together (logs: $DEST/*.log)"
  in_background pytest_ids memcheck 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${SANITIZE[@]}" --tool memcheck \
    -- "${MEMCHECK[@]}"
  in_background pytest_ids racecheck 90 "${SANITIZE[@]}" --tool racecheck -- "${TEAMS[@]}"
  in_background pytest_ids synccheck 90 "${SANITIZE[@]}" --tool synccheck -- "${TEAMS[@]}"
  wait
  for tool in memcheck racecheck synccheck; do
    log="$DEST/$tool.log"
    [[ -f $log ]] || continue
    # memcheck and synccheck end with "ERROR SUMMARY: N errors", racecheck with
    # "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)"; the step's own status
    # is the sanitizer's verdict (99) or else pytest's
    verdict=$(grep -E '(ERROR|RACECHECK) SUMMARY' "$log" | tail -1 | sed 's/^=* *//')
    if [[ -z $verdict ]]; then
      note "$tool: compute-sanitizer printed no summary: it could not attach or was cut short; its first lines:"
      grep -m 5 -E '^========= ' "$log" | tee -a "$SUMMARY"
    else
      note "$tool: $verdict"
    fi
  done
fi

# --- the kernels alone, and the host time per call (alone: timed) ---------------------------
step probe 40 env FUSEDCE_CUDA_TRACE=1 python3 bench/gpu_probe.py --out "$DEST/probe.md"

# --- benchmark (alone: it is timed) ---------------------------------------------------------
# bench/gpu.py prints each row as it is measured (bench.log keeps them if the step is cut
# off) and writes bench.md at the end.
step bench 100 python3 bench/gpu.py --out "$DEST/bench.md" --repeats 10

# --- summary -------------------------------------------------------------------------------
echo "total $(($(date +%s) - START))s" >> "$SUMMARY"
for log in "$DEST"/*.log; do
  name=$(basename "$log" .log)
  if grep -qE "^$name +(FAILED|TIMEOUT|KILLED)" "$SUMMARY"; then
    echo
    echo "--- last lines of $name.log"
    tail -n 15 "$log"
  fi
done
# The device tool brings back at most 8 files from $OUT: there, the logs and id lists travel
# packed in logs.tgz, beside summary.txt, bench.md and probe.md.
if [[ -n ${OUT:-} && -d $OUT && $DEST == "$(cd "$OUT" && pwd)" ]]; then
  (cd "$DEST" && tar czf logs.tgz ./*.log ./*.ids collected_ids.txt 2> /dev/null &&
    rm -f ./*.log ./*.ids collected_ids.txt)
  note "logs packed in $DEST/logs.tgz"
fi
echo
echo "=== summary ($SUMMARY)"
cat "$SUMMARY"
exit 0
