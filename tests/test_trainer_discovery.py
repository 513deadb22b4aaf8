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


TAKEOVER = '''from dassl.engine import TRAINER_REGISTRY, TrainerX


@TRAINER_REGISTRY.register()
class CoOp(TrainerX):
    def build_model(self):
        raise SystemExit("the user's CoOp ran")
'''


@pytest.mark.parametrize("order", ["user-first", "user-last"])
def test_a_dropin_registering_a_project_name_names_both_files(broken_module, toy_root, tmp_path, order):
    """A user's file registering ``CoOp`` that sorts before ``coop.py`` took the name, and the warning said
    "trainers/coop.py not loaded ... fix the file", blaming the project's file. The warning now names
    the file that registered the name first and the one refused, whichever order they come in."""
    broken_module.unlink()
    user = broken_module.parent / ("aa_mine.py" if order == "user-first" else "zz_mine.py")
    user.write_text(TAKEOVER)
    argv = train_argv(toy_root, tmp_path / "run", "CoOp", config=trainer_config("CoOp"))
    proc = _run([str(a) for a in argv], tmp_path, broken_module.parents[1])
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "not loaded" in ln]
    assert len(lines) == 1, proc.stderr
    first, second = ("aa_mine", "coop") if order == "user-first" else ("coop", "zz_mine")
    assert (f"trainers/{second}.py not loaded: trainers/{second}.py registers 'CoOp', which trainers/{first}.py "
            f"registered first, so --trainer CoOp runs trainers/{first}.py's class") in lines[0], lines
    assert ("the user's CoOp ran" in proc.stderr) == (order == "user-first"), proc.stderr
