"""A broken drop-in trainer module must not stop every other trainer (one warning naming the file);
asking for the trainer it would have registered is one error line that names the cause."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import train_argv, trainer_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def broken_module(tmp_path) -> Path:
    """A checkout whose ``trainers/`` holds a broken drop-in: links to the repository's files, with
    ``trainers/`` a folder of its own. The file is never written into the repository's ``trainers/``,
    where the ``train.py`` processes of tests running beside this one (``-n 2``) warned about it."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in ("trainers", ".git", "train.py"):
            (checkout / entry.name).symlink_to(entry)
    # a copy: Python puts the *resolved* folder of a linked script first on sys.path
    shutil.copy2(REPO / "train.py", checkout / "train.py")
    (checkout / "trainers").mkdir()
    for entry in (REPO / "trainers").iterdir():
        if entry.name != "__pycache__":
            (checkout / "trainers" / entry.name).symlink_to(entry)
    path = checkout / "trainers" / "zz_broken_dropin.py"
    path.write_text("import a_dependency_that_is_not_installed  # noqa\n")
    return path


def _run(argv, tmp_path, checkout: Path):
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "FSNL_CACHE_DIR": str(tmp_path / "cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "train.py", *argv], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=600)


def test_broken_dropin_leaves_other_trainers_working(broken_module, toy_root, tmp_path):
    out = tmp_path / "zs"
    argv = train_argv(toy_root, out, "ZeroshotCLIP_openclip", "MODEL.BACKBONE.NAME", "test-tiny",
                      "MODEL.BACKBONE.WEIGHTS", "none", extra=("--eval-only",),
                      config=trainer_config("ZeroshotCLIP_openclip"), shots=None)
    proc = _run([str(a) for a in argv], tmp_path, broken_module.parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "trainers/zz_broken_dropin.py not loaded: ModuleNotFoundError" in proc.stderr + proc.stdout
    assert (out / "results.json").is_file()


def test_unknown_trainer_error_names_the_broken_module(broken_module, toy_root, tmp_path):
    argv = train_argv(toy_root, tmp_path / "x", "ZZBroken", config=trainer_config("ZeroshotCLIP_openclip"),
                      shots=None)
    proc = _run([str(a) for a in argv], tmp_path, broken_module.parents[1])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr
    assert "trainers/zz_broken_dropin.py not loaded" in errors[0]
    assert not (tmp_path / "x").exists()
