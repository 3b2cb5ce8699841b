"""The CPU execution model of CUDA itself (csrc/simt), through its self-check kernels
(csrc/emulated/selftest.cpp): the CUDA semantics it must reproduce, and the kernel bugs it
must report instead of hanging or silently computing something.

The kernels of fusedce run on this model in tests/test_parity.py (device "emulated") and
tests/test_emulated_paths.py; this file checks the model they run on.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

emulated = pytest.importorskip("fusedce._emulated", reason="fusedce was built without fusedce._emulated")
SELFTEST_SOURCE = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "emulated" / "selftest.cpp"


@pytest.fixture(autouse=True)
def fixed_order():
    """Each test starts with the default (unshuffled) order and leaves it as it found it."""
    before = emulated.shuffle_seed()
    emulated.set_shuffle_seed(0)
    yield
    emulated.set_shuffle_seed(before)


# ----------------------------------------------------------------------------- semantics


def expected_source(mode, lane, b, width):
    """The lane a shuffle reads, in the words of the CUDA programming guide: lanes form
    groups of `width`; an index names a lane of the caller's group (modulo width); up/down
    stay inside the group (else the caller's own value); xor may reach earlier groups but
    not later ones. Only the low 5 bits of the lane operand count (PTX)."""
    start = lane - lane % width
    b &= 31
    if mode == 0:
        return start + b % width
    if mode == 1:
        return lane - b if lane - b >= start else lane
    if mode == 2:
        return lane + b if lane + b < start + width else lane
    j = lane ^ b
    return j if j < start + width else lane


def test_shuffles_follow_width_and_segment_rules():
    flat = np.array(emulated.selftest("shuffle")).reshape(-1, 35)
    assert len(flat) == 4 * 6 * 7
    for mode, width, b, *got in flat:
        want = [expected_source(mode, lane, b, width) for lane in range(32)]
        assert got == want, f"mode {mode} width {width} operand {b}"


def test_shuffle_with_a_partial_mask():
    # lanes 0-7 and 16-23 take part, width 8: each reads the next lane of its group of 8
    got = emulated.selftest("shuffle_partial")
    want = [-1] * 32
    for lane in list(range(8)) + list(range(16, 24)):
        src = lane + 1 if (lane + 1) % 8 else lane
        want[lane] = 10 * src
    assert got == want


def test_votes():
    ballot, any_, all_, partial = emulated.selftest("votes")
    assert ballot == sum(1 << lane for lane in range(32) if lane % 3 == 0)
    assert any_ == 1 and all_ == 1
    assert partial == sum(1 << lane for lane in range(8, 16) if lane & 1)


def test_atomics_from_every_thread_of_every_block():
    count, top, twice_sum = emulated.selftest("atomics")
    assert (count, top, twice_sum) == (5 * 96, 5 * 96 - 1, 5 * 96)


def test_cluster_blocks_read_each_others_static_shared_memory():
    out = np.array(emulated.selftest("cluster_neighbours")).reshape(8, 32)
    for block in range(8):
        neighbour = block // 4 * 4 + (block % 4 + 1) % 4
        np.testing.assert_array_equal(out[block], neighbour * 100 + np.arange(32))


def test_dynamic_shared_memory_and_block_barrier():
    assert emulated.selftest("reverse_block") == list(range(95, -1, -1))


def test_tiled_partition_reduction():
    values = [(i * 37) % 64 for i in range(64)]
    assert emulated.selftest("tile_max") == [max(values[g * 8:(g + 1) * 8]) for g in range(8)]


def test_bad_launches_return_the_runtime_error_codes():
    invalid_configuration, invalid_cluster_size = 9, 912
    too_many_threads, cluster_16_not_opted_in, grid_not_divisible, last, cleared = \
        emulated.selftest("launch_errors")
    assert too_many_threads == invalid_configuration
    assert cluster_16_not_opted_in == invalid_cluster_size == grid_not_divisible == last
    assert cleared == 0


def test_the_emulated_gpus():
    devices = emulated.devices()
    assert [(d["name"], d["sm_count"], d["clusters"]) for d in devices[:2]] == \
        [("sm_90", 132, True), ("sm_80", 108, False)]
    assert "emulated" in emulated.cuda_build_info()


# ----------------------------------------------------------------------------- bugs it reports


def fault_of(name):
    with pytest.raises(emulated.KernelFault) as info:
        emulated.selftest(name)
    return str(info.value)


def line_of(marker):
    for number, line in enumerate(SELFTEST_SOURCE.read_text().splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not found in {SELFTEST_SOURCE}")


def test_shuffle_reached_by_half_the_warp():
    msg = fault_of("divergent_shuffle")
    assert "lanes 0-15" in msg and "__shfl_xor_sync" in msg and "0xffffffff" in msg
    assert "selftest.cpp" in msg


def test_lane_outside_its_own_mask():
    assert "not in its mask 0x00000001" in fault_of("lane_outside_mask")


def test_barrier_in_divergent_code():
    msg = fault_of("divergent_barrier")
    assert "__syncthreads" in msg and "divergent" in msg


def test_deadlock_is_reported_not_hung():
    msg = fault_of("deadlock")
    assert "deadlock" in msg
    assert "48 thread(s) wait at __syncthreads" in msg and "16 thread(s) wait at __syncwarp" in msg


def test_lanes_of_one_mask_at_different_warp_operations():
    assert "must reach the same warp operation" in fault_of("mixed_warp_ops")


def test_trap():
    assert "__trap()" in fault_of("trap")


def test_shuffled_order_exposes_reliance_on_lock_step_warps():
    """Lane L reads what lane L-1 wrote without __syncwarp: right by luck in the fixed order,
    wrong (uninitialised shared memory) in a shuffled one."""
    want = [0] + list(range(31))
    assert emulated.selftest("lockstep_reliance") == want
    emulated.set_shuffle_seed(12345)
    assert emulated.selftest("lockstep_reliance") != want


def test_out_of_bounds_read_is_reported_by_asan_at_the_kernel_line():
    if not emulated.with_asan:
        pytest.skip("fusedce._emulated is not built with AddressSanitizer (see .ci/run)")
    code = "import fusedce._emulated as e; e.selftest('read_past_end')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                         timeout=120)
    assert run.returncode != 0
    assert "heap-buffer-overflow" in run.stderr
    assert f"selftest.cpp:{line_of('one element past the end')}" in run.stderr


@pytest.mark.parametrize("driver,words", [
    ("old_driver", "older than the CUDA runtime"),
    ("no_driver", "no NVIDIA driver is installed"),
    ("no_device", "no CUDA GPU is visible"),
])
def test_missing_gpu_or_driver_is_named_in_words(driver, words):
    """What a machine without a usable GPU gets told (the same code, csrc/cuda/device.cu, runs
    in fusedce._core against the real runtime)."""
    emulated.set_driver_error(driver)
    try:
        assert not emulated.cuda_available()
        assert words in emulated.cuda_unavailable_reason()
    finally:
        emulated.set_driver_error("")
    assert emulated.cuda_available()
