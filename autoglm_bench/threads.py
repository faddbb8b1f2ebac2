"""CPU thread counts from the CPUs this process may actually use.

``os.cpu_count()`` is the machine's; a run may only use the CPUs its affinity mask allows, no more than
its cgroup's CPU quota (containers, CI runners, systemd slices), and shares them with the other jobs a
parallel launcher starts beside it. More torch threads than that only spin and wait on each other: on a
busy 2-core machine a small model ran several times slower with the default thread count.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def choose_threads(jobs: int = 1, requested: int | None = None, cgroup_root: Path = CGROUP_ROOT) -> int:
    """``requested`` if given, else ``OMP_NUM_THREADS`` if set (torch's own convention: a user or a
    scheduler that set it means it), else this job's share of the usable CPUs: ``available_cpus() // jobs``,
    at least 1 (two parallel jobs on 2 CPUs get one thread each)."""
    if requested is not None:
        return requested
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return max(1, available_cpus(cgroup_root) // max(1, jobs))


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on (its affinity mask), capped by its cgroup CPU quota rounded down
    (a 1.5-CPU quota gives 1), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root)
    return max(1, min(cpus, int(quota)) if quota is not None else cpus)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, membership: str | None = None) -> float | None:
    """CPUs allowed by the cgroup CPU quota (quota / period), the tightest one on the way from this
    process's cgroup up to ``root``; None where there is no quota (or no cgroup file system).

    cgroup v2: ``cpu.max`` ("max 100000" or "150000 100000"); v1: ``cpu.cfs_quota_us`` (-1: none) and
    ``cpu.cfs_period_us`` under the hierarchy mounted for the cpu controller. ``membership`` is the text
    of /proc/self/cgroup (read when not given); a cgroup path that is not visible from here (another
    namespace) is skipped, the root's own files still count.
    """
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            membership = ""
    limits = []
    for line in membership.splitlines() or ["0::/"]:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2 (unified), possibly mounted under unified/ on a hybrid system
            bases = [root, root / "unified"]
        elif "cpu" in controllers.split(","):
            bases = [root / controllers, root / "cpu"]
        else:
            continue
        for base in bases:
            folder = base / path.strip("/")
            while True:
                limits.append(_read_limit(folder))
                if folder == base:
                    break
                folder = folder.parent
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def _read_limit(folder: Path) -> float | None:
    try:
        if (folder / "cpu.max").is_file():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if (folder / "cpu.cfs_quota_us").is_file():
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None  # unreadable or garbled: no limit we can trust
    return None


def use_threads(threads: int) -> None:
    """Run torch's CPU kernels on ``threads`` threads, its inter-op pool (unused by our models) on one,
    and the Rust tokenizers on at most ``threads`` (their environment variables, read when their pool
    starts, so before the first batch encoding; a value the user set is kept)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # the inter-op pool has started (set once per process): it stays as it is
        pass
    if threads == 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    else:
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
