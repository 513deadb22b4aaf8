"""Every script runs by path and under ``-m``; the original README's commands run verbatim on the toy data.

The original LAION-Beyond README ran ``python train.py ...``, ``python lpclip/feat_extractor.py
--dataset NAME --root R`` and ``python lpclip/linear_probe.py --dataset NAME --feature_dir clip_feat``
(the last two from any directory, writing ``clip_feat/`` there). Here they run with the paths replaced
and the tiny model selected through trailing overrides.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import train
from lpclip import linear_probe as lp
from tests.helpers import REPO

#: The one idiom (README "Running scripts"); every script with a ``__main__`` block carries it verbatim.
IDIOM = '''if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
'''
SCRIPT_DIRS = ("scripts", "lpclip", "datasets", "tools", "benchmarks")
TINY = ["MODEL.BACKBONE.NAME", "test-tiny", "MODEL.BACKBONE.WEIGHTS", "none", "INPUT.SIZE", "(32, 32)",
        "DATALOADER.NUM_WORKERS", "0"]


def scripts():
    found = []
    for folder in SCRIPT_DIRS:
        for name in sorted(os.listdir(REPO / folder)):
            path = REPO / folder / name
            if name.endswith(".py") and 'if __name__ == "__main__"' in path.read_text(encoding="utf-8"):
                found.append(f"{folder}/{name}")
    return found


def run(argv, cwd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH="")
    return subprocess.run([sys.executable, *argv], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_every_script_carries_the_by_path_idiom():
    found = scripts()
    assert "lpclip/feat_extractor.py" in found and "scripts/parse_test_res.py" in found and len(found) >= 15
    missing = [s for s in found if IDIOM not in (REPO / s).read_text(encoding="utf-8")]
    assert not missing, f"add the by-path idiom (README 'Running scripts') to {missing}"
    # and no other sys.path edits in those files
    extra = [s for s in found if len(re.findall(r"sys\.path\.(insert|append)", (REPO / s).read_text())) != 1]
    assert not extra


@pytest.mark.parametrize("script", ["scripts/parse_test_res.py", "scripts/sweep.py", "datasets/check.py",
                                    "tools/mini_beyond/__main__.py", "benchmarks/linear_probe.py"])
def test_scripts_run_by_path_from_any_directory(script, tmp_path):
    proc = run([str(REPO / script), "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("module", ["scripts.parse_test_res", "lpclip.linear_probe"])
def test_scripts_run_as_modules(module):
    proc = run(["-m", module, "--help"], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_original_readme_commands_on_the_toy_benchmark(toy_root, toy_info, tmp_path):
    """Train FSNL, evaluate it on IP (eval-only), extract features, probe: each command as written."""
    root, out = str(toy_root), tmp_path / "output" / "Animals92_42" / "shots_4"
    common = ["--root", root, "--seed", "1", "--trainer", "FSNL_openclip",
              "--dataset-config-file", "configs/datasets/Animals92_42.yaml",
              "--config-file", "configs/trainers/FSNL_openclip/vit_b16_ep200_standard.yaml"]
    cwd = os.getcwd()
    os.chdir(REPO)  # train.py's README commands use repository-relative config paths
    try:
        assert train.cli([*common, "--output-dir", str(out / "fsnl" / "seed1"), "DATASET.NUM_SHOTS", "4",
                          "DATALOADER.TRAIN_X.BATCH_SIZE", "368", "OPTIM.LR", "0.000575",
                          "TRAIN.CHECKPOINT_FREQ", "10", *TINY, "OPTIM.MAX_EPOCH", "2"]) == 0
        assert train.cli([*common, "--eval-only", "--model-dir", str(out / "fsnl" / "seed1"),
                          "--output-dir", str(out / "fsnl_ip" / "seed1"), "DATASET.NUM_SHOTS", "4",
                          "DATASET.SUB_CLASSES", "IP", *TINY]) == 0
    finally:
        os.chdir(cwd)
    trained = json.loads((out / "fsnl" / "seed1" / "results.json").read_text())
    ip = json.loads((out / "fsnl_ip" / "seed1" / "results.json").read_text())
    # FSNL never trains an IP name: the eval-only IP run reproduces the training run's cross-evaluation
    assert ip["accuracy"] == pytest.approx(trained["subsets"]["IP"]["accuracy"])

    work = tmp_path / "lpclip_cwd"
    work.mkdir()
    proc = run([str(REPO / "lpclip" / "feat_extractor.py"), "--dataset", "Animals92_42", "--root", root, *TINY],
               cwd=work)
    assert proc.returncode == 0, proc.stderr
    feat = work / "clip_feat" / "Animals92_42" / "OOP"
    assert sorted(p.name for p in feat.iterdir()) == ["test.npz", "train.npz", "val.npz"]
    fps = set()
    for split in lp.SPLITS:
        with np.load(feat / f"{split}.npz", allow_pickle=False) as data:
            fps.add(str(data["fingerprint"]))
            n = len(json.loads(open(toy_info["Animals92_42"]["OOP"]["split_file"]).read())[split])
            assert data["features_raw"].shape == (n, 32)  # the full split, test-tiny's embed dim
    (fp,) = fps  # one backbone for the three splits of one call
    weights = json.loads(fp)["weights"]
    assert weights["kind"] == "random" and weights["seed"] == -1 and len(weights["parameters_sha256"]) == 64

    proc = run([str(REPO / "lpclip" / "linear_probe.py"), "--dataset", "Animals92_42", "--feature_dir", "clip_feat"],
               cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "sample std over 10 runs (ddof 1)" in proc.stdout
    res = json.loads((feat / "linear_probe" / "results.json").read_text())
    # the toy's classes have at most 6 training images: 8 and 16 shots would be the all-images run
    # filed under K, so they are left out with a warning
    assert sorted(int(k) for k in res["shots"]) == [1, 2, 4] and res["solver"] == "torch"
    assert "--shots 8 16 left out" in proc.stderr
    for entry in res["shots"].values():
        assert len(entry["accuracies"]) == 10
        assert entry["accuracy_std"] == pytest.approx(np.std(entry["accuracies"], ddof=1))
