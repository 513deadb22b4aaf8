"""A short description of the software and hardware a run used, for the log and results.json."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Dict

import torch

__all__ = ["collect_env_info", "package_versions", "usable_cpus"]

_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "open_clip": "open_clip_torch",
    "numpy": "numpy",
    "pillow": "pillow",
    "yacs": "yacs",
    "scikit-learn": "scikit-learn",
}


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a SLURM or cgroup allocation, ``taskset``), else
    ``os.cpu_count()``. Thread counts split these: a 4-core allocation on a 64-core node started 64
    threads per job with the node's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def check_cpu_option(value: int, option: str = "--threads", zero_means_all: bool = True) -> None:
    """Refuse (one-line ``ValueError``) a thread or process count that cannot mean what it says: below
    1 (below 0 where 0 picks the count from the cores), or above the CPUs of :func:`usable_cpus`. Above
    them, OpenMP died allocating its pool without an error line (``--threads 100000``), or a process
    pool forked that many decoders at once; none of these programs gains from more than one per core."""
    low = 0 if zero_means_all else 1
    if value < low:
        hint = " (0 picks it from the CPU cores)" if zero_means_all else ""
        raise ValueError(f"{option} {value}: must be >= {low}{hint}")
    cores = usable_cpus()
    if value > cores:
        raise ValueError(f"{option} {value}: more than the {cores} CPU core(s) this process may use; give at most "
                         f"{cores}" + (" (or 0 for all of them)" if zero_means_all else ""))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def package_versions() -> Dict[str, str]:
    """Versions read from package metadata (no heavy imports)."""
    versions = {"python": platform.python_version()}
    versions.update({name: _version(dist) for name, dist in _PACKAGES.items()})
    return versions


def collect_env_info() -> str:
    """Python, package and device information.

    ``torch.utils.collect_env`` (what Dassl prints) shells out to pip, conda and nvidia-smi and takes
    seconds; this reads the same essentials directly.
    """
    lines = [f"sys.platform: {sys.platform}", f"platform: {platform.platform()}"]
    lines += [f"{k}: {v}" for k, v in package_versions().items()]
    lines.append(f"torch CUDA build: {torch.version.cuda}")
    cuda = torch.cuda.is_available()
    lines.append(f"CUDA available: {cuda}")
    if cuda:
        for i in range(torch.cuda.device_count()):
            lines.append(f"GPU {i}: {torch.cuda.get_device_name(i)}")
        lines.append(f"cuDNN: {torch.backends.cudnn.version()}")
    lines.append(f"torch threads: {torch.get_num_threads()}")
    return "\n".join(lines)
