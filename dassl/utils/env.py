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
