"""Thread counts from the CPUs a process may use: affinity, cgroup CPU quota (v2 and v1 files, read from a
folder laid out like /sys/fs/cgroup), and the jobs running beside it."""

from __future__ import annotations

import os

from autoglm_bench.threads import available_cpus, cgroup_cpu_limit, choose_threads


def _write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_cgroup_v2_quota_is_the_tightest_on_the_way_up(tmp_path):
    _write(tmp_path, {"cpu.max": "max 100000\n"})
    _write(tmp_path / "user.slice", {"cpu.max": "150000 100000\n"})
    _write(tmp_path / "user.slice" / "job", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(tmp_path, "0::/user.slice/job\n") == 1.5
    assert cgroup_cpu_limit(tmp_path, "0::/\n") is None  # the root alone has no quota
    _write(tmp_path, {"cpu.max": "50000 100000\n"})
    assert cgroup_cpu_limit(tmp_path, "0::/user.slice/job\n") == 0.5


def test_cgroup_v1_quota_under_the_cpu_controller(tmp_path):
    membership = "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n"
    job = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    _write(job, {"cpu.cfs_quota_us": "300000\n", "cpu.cfs_period_us": "100000\n"})
    _write(tmp_path / "memory" / "x", {"cpu.cfs_quota_us": "100000\n", "cpu.cfs_period_us": "100000\n"})  # not cpu's
    assert cgroup_cpu_limit(tmp_path, membership) == 3.0
    _write(job, {"cpu.cfs_quota_us": "-1\n"})
    assert cgroup_cpu_limit(tmp_path, membership) is None


def test_a_path_from_another_namespace_falls_back_to_the_root_files(tmp_path):
    _write(tmp_path, {"cpu.max": "200000 100000\n"})
    assert cgroup_cpu_limit(tmp_path, "0::/not/visible/here\n") == 2.0
    assert cgroup_cpu_limit(tmp_path / "missing", "0::/\n") is None


def test_threads_are_this_jobs_share_of_the_usable_cpus(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpus = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == cpus  # no cgroup files: the affinity mask
    assert choose_threads(jobs=1, cgroup_root=tmp_path) == cpus
    assert choose_threads(jobs=2, cgroup_root=tmp_path) == max(1, cpus // 2)
    assert choose_threads(jobs=4 * cpus, cgroup_root=tmp_path) == 1
    assert choose_threads(jobs=2, requested=3, cgroup_root=tmp_path) == 3
    _write(tmp_path, {"cpu.max": "150000 100000\n"})  # a 1.5-CPU quota: one thread
    assert available_cpus(tmp_path) == 1 and choose_threads(cgroup_root=tmp_path) == 1


def test_omp_num_threads_is_honoured_unless_threads_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(jobs=2, cgroup_root=tmp_path) == 3  # as torch itself reads it
    assert choose_threads(jobs=2, requested=2, cgroup_root=tmp_path) == 2
    for ignored in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        assert choose_threads(jobs=1, cgroup_root=tmp_path) == len(os.sched_getaffinity(0))
