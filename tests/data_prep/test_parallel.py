"""The default worker count follows the pod's CPU limit; results keep the input order."""

import os

import pytest

from coldstart.data_prep.parallel import available_cpus, cgroup_quota, ordered_map, worker_pool


@pytest.mark.parametrize(
    "files, quota",
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),
        ({}, None),
    ],
)
def test_cgroup_quota_v1_and_v2(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_quota(tmp_path) == quota


def test_available_cpus_is_capped_by_the_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still gets one worker
    assert available_cpus(tmp_path) == 1
    assert available_cpus(tmp_path / "none") == len(os.sched_getaffinity(0))


def test_ordered_map_keeps_order_with_a_bounded_window():
    with worker_pool(2) as pool:
        assert list(ordered_map(abs, range(-20, 0), pool, window=3)) == list(range(20, 0, -1))
