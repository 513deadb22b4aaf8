"""CoOp's user surface: ``scripts/coop/main.sh DATASET CFG CTP NCTX SHOTS CSC`` and ``eval.sh``.

The command lines are checked exactly through a stand-in ``PYTHON`` that records its arguments (fast);
one real seed then trains ``CoOp_openclip`` on the toy benchmark and ``eval.sh`` evaluates that model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import train
from scripts import run_identity
from tests.helpers import REPO, train_argv

MAIN = REPO / "scripts" / "coop" / "main.sh"
EVAL = REPO / "scripts" / "coop" / "eval.sh"
LAYOUT = "Animals92_42/{trainer}/cpu_smoke_2shots/nctx4_cscFalse_ctpend/seed{seed}"

RECORDER = """#!/usr/bin/env bash
# stand-in interpreter: the skip check runs for real; train.py is logged and leaves a results.json
# that is no finished run of anything ({}), as a stand-in for another run in the way
if [ "$1" = "-m" ] && [ "$2" = "scripts.run_identity" ]; then exec "$REAL_PYTHON" "$@"; fi
printf '%s\\n' "$*" >> "$RECORD"
while [ $# -gt 0 ]; do
    if [ "$1" = "--output-dir" ]; then mkdir -p "$2" && echo '{}' > "$2/results.json"; fi
    shift
done
"""


def run_script(script, args, env, cwd):
    full = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **env)
    return subprocess.run(["bash", str(script), *args], cwd=str(cwd), env=full, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def recorder(tmp_path):
    stub = tmp_path / "python-stub"
    stub.write_text(RECORDER)
    stub.chmod(0o755)
    record = tmp_path / "record.txt"
    return {"PYTHON": str(stub), "RECORD": str(record), "REAL_PYTHON": sys.executable}, record


def test_scripts_parse():
    for script in (MAIN, EVAL):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        assert os.access(script, os.X_OK)


def test_main_loops_seeds_in_coops_layout_and_skips_finished_runs(toy_root, tmp_path, recorder):
    env, record = recorder
    (tmp_path / "data").symlink_to(toy_root)  # a real dataset root: the skip check computes the fingerprint
    env.update(DATA="data", OUTPUT="out")  # relative to the caller's directory
    args = ["Animals92_42", "cpu_smoke", "end", "4", "2", "False", "OPTIM.MAX_EPOCH", "1"]
    proc = run_script(MAIN, args, env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = record.read_text().splitlines()
    assert len(lines) == 3
    for seed, line in zip((1, 2, 3), lines):
        out = tmp_path / "out" / LAYOUT.format(trainer="CoOp", seed=seed)
        assert line.split() == [
            "train.py", "--root", str(tmp_path / "data"), "--seed", str(seed), "--trainer", "CoOp",
            "--dataset-config-file", "configs/datasets/Animals92_42.yaml",
            "--config-file", "configs/trainers/CoOp/cpu_smoke.yaml", "--output-dir", str(out),
            "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CSC", "False", "TRAINER.COOP.CLASS_TOKEN_POSITION", "end",
            "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1"]
    # second call: seed 1's folder holds a results.json that is not this command's finished run ->
    # one error line naming it, exit 2, nothing runs or is touched (CoOp skipped any existing folder)
    first = tmp_path / "out" / LAYOUT.format(trainer="CoOp", seed=1) / "results.json"
    proc = run_script(MAIN, args, env, tmp_path)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    # (the stand-in's results.json has no fingerprint: a run that cannot be checked)
    assert err[0].startswith("error: 1 job(s) would overwrite a different finished run: ")
    assert err[0].endswith("Fix: set OUTPUT to another folder, or FSNL_OVERWRITE=1 to overwrite")
    assert err[0].count(str(first)) == 1
    assert len(record.read_text().splitlines()) == 3 and first.read_text().strip() == "{}"
    # a folder without results.json (a killed run) reruns
    for seed in (1, 2, 3):
        (tmp_path / "out" / LAYOUT.format(trainer="CoOp", seed=seed) / "results.json").unlink()
    proc = run_script(MAIN, args, env | {"SEEDS": "2"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = record.read_text().splitlines()
    assert len(lines) == 4 and "--seed 2 " in lines[3]


def test_eval_reads_mains_models_with_coops_defaults(tmp_path, recorder):
    env, record = recorder
    env.update(DATA=str(tmp_path / "data"), OUTPUT=str(tmp_path / "out"), SEEDS="1", TRAINER="CoOp_openclip")
    assert run_script(EVAL, ["Animals92_42", "cpu_smoke"], env, tmp_path).returncode == 0
    line = record.read_text().splitlines()[0].split()
    hp = "cpu_smoke_16shots/nctx16_cscFalse_ctpend"
    assert line[line.index("--model-dir") + 1] == str(tmp_path / "out" / "Animals92_42" / "CoOp_openclip" / hp / "seed1")
    assert line[line.index("--output-dir") + 1] == str(
        tmp_path / "out" / "evaluation" / "CoOp_openclip" / hp / "Animals92_42_IP" / "seed1")
    assert "--eval-only" in line and "--load-epoch" not in line
    assert line[-2:] == ["DATASET.SUB_CLASSES", "IP"]


def test_missing_data_root_is_one_error_line(tmp_path):
    for script in (MAIN, EVAL):
        proc = run_script(script, ["Animals92_42", "cpu_smoke", "end", "4", "2", "False"], {"DATA": ""}, tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: set DATA")


@pytest.mark.slow
def test_real_seed_trains_and_eval_loads_it(toy_root, tmp_path):
    """CoOp_openclip with its cpu_smoke config: main.sh trains seed 1; eval.sh's IP accuracy is the
    training run's own cross-evaluation on IP (same learned context), so the model really was loaded."""
    env = {"DATA": str(toy_root), "OUTPUT": str(tmp_path / "out"), "SEEDS": "1", "TRAINER": "CoOp_openclip"}
    hp = ["end", "4", "2", "False"]
    proc = run_script(MAIN, ["Animals92_42", "cpu_smoke", *hp], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trained = json.loads((tmp_path / "out" / LAYOUT.format(trainer="CoOp_openclip", seed=1) / "results.json").read_text())
    proc = run_script(EVAL, ["Animals92_42", "cpu_smoke", *hp], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluated = tmp_path / "out" / "evaluation" / "CoOp_openclip" / "cpu_smoke_2shots" / "nctx4_cscFalse_ctpend"
    ip = json.loads((evaluated / "Animals92_42_IP" / "seed1" / "results.json").read_text())
    assert ip["sub_classes"] == "IP"
    assert ip["accuracy"] == pytest.approx(trained["subsets"]["IP"]["accuracy"])

    # again: the finished run has this command's fingerprint -> skipped, untouched
    done = tmp_path / "out" / LAYOUT.format(trainer="CoOp_openclip", seed=1) / "results.json"
    before = (done.read_bytes(), done.stat().st_mtime_ns)
    proc = run_script(MAIN, ["Animals92_42", "cpu_smoke", *hp], env, tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("skip: "), proc.stderr[-2000:]
    # the same folder for another setting (the layout does not name the epochs): one error line naming
    # the differing key, exit 2, the finished run untouched -- CoOp would have skipped it as done
    proc = run_script(MAIN, ["Animals92_42", "cpu_smoke", *hp, "OPTIM.MAX_EPOCH", "3"], env, tmp_path)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "OPTIM.MAX_EPOCH" in err[0], proc.stderr[-2000:]
    assert (done.read_bytes(), done.stat().st_mtime_ns) == before


SWEEP_WRAPPER = REPO / "scripts" / "coop" / "train.sh"


@pytest.mark.parametrize("value, dry", [("true", True), ("YES", True), ("1", True), ("0", False), ("off", False)])
def test_dry_run_switch_reads_the_usual_spellings(tmp_path, recorder, value, dry):
    """``DRY_RUN=true`` ran the sweep it was asked to print: only "1" was on."""
    env, record = recorder
    proc = run_script(SWEEP_WRAPPER, [str(tmp_path / "data"), str(tmp_path / "out")], env | {"DRY_RUN": value},
                      tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = record.read_text().split()
    assert line[:2] == ["-m", "scripts.sweep"] and ("--dry-run" in line) == dry


def test_a_switch_with_another_value_is_one_error_line(tmp_path, recorder):
    env, record = recorder
    proc = run_script(SWEEP_WRAPPER, [str(tmp_path / "data"), str(tmp_path / "out")], env | {"DRY_RUN": "maybe"},
                      tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: DRY_RUN=maybe is not an on/off switch; set DRY_RUN=1 (on) or DRY_RUN=0 (off)"]
    assert not record.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("given", [["end", "4", "1"], ["end"], ["end", "4", "2", "OPTIM.LR", "0.1"]])
def test_eval_takes_all_four_training_settings_or_none(tmp_path, recorder, given):
    """Three of the four were read as config overrides: train.py's "odd list" error, the defaults used."""
    env, record = recorder
    env.update(DATA=str(tmp_path / "data"), SEEDS="1")
    proc = run_script(EVAL, ["Animals92_42", "cpu_smoke", *given], env, tmp_path)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "takes CTP NCTX SHOTS CSC all four or none" in err[0], err
    assert not record.exists()


def test_a_command_that_cannot_run_says_so_itself_once(toy_root, tmp_path, capsys):
    """``LOAD_EPOCH=abc`` with an evaluation already in its folder: the skip check printed argparse's line
    and then a second one telling the user to move the valid result away (exit 2). Now it answers "run
    it" (exit 1) silently, and the command reports its own mistake, once."""
    out = tmp_path / "eval" / "seed1"
    out.mkdir(parents=True)
    (out / "results.json").write_text("{}")
    argv = train_argv(toy_root, out, "CoOp_openclip", extra=("--eval-only", "--model-dir", str(tmp_path),
                                                              "--load-epoch", "abc"))
    capsys.readouterr()
    assert run_identity.main(["--done", str(out / "results.json"), "--", "python", "train.py", *argv]) == 1
    assert capsys.readouterr().err == ""


def test_skip_check_reads_the_words_of_a_non_ascii_path_under_the_c_locale(toy_root, tmp_path, capsys,
                                                                          monkeypatch):
    """``printf %q`` quoted "data é<TAB>dir" as $'...' under ``LC_ALL=C``, which shlex does not read: the
    script's own finished run was "a finished run that cannot be checked" (exit 2), blocking every rerun.
    The words go over one by one now: the run is skipped. A run of another setting is still refused,
    naming the wrappers' own fixes, and ``FSNL_OVERWRITE=1`` in the environment lets it through."""
    root = tmp_path / "data é\tdir"
    root.symlink_to(toy_root)
    out = tmp_path / "out é" / "seed1"
    argv = train_argv(root, out, "CoOp_openclip")
    assert train.cli(argv) == 0
    done = out / "results.json"
    before = (done.read_bytes(), done.stat().st_mtime_ns)
    check = "source scripts/run_unless_finished.sh; run_unless_finished \"$@\""
    env = dict(os.environ, LC_ALL="C", PYTHON=sys.executable, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("FSNL_OVERWRITE", None)
    proc = subprocess.run(["bash", "-c", check, "_", str(done), sys.executable, "train.py", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("skip: "), proc.stderr[-2000:]
    assert (done.read_bytes(), done.stat().st_mtime_ns) == before
    other = ["--done", str(done), "--", "python", "train.py", *argv, "OPTIM.LR", "0.5"]
    capsys.readouterr()
    assert run_identity.main(other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs in: OPTIM.LR" in err[0] and "or --force to overwrite" in err[0], err
    assert run_identity.main(["--elsewhere", "set OUTPUT to another folder", "--force-hint", "FSNL_OVERWRITE=1",
                              *other]) == 2
    assert "Fix: set OUTPUT to another folder, or FSNL_OVERWRITE=1 to overwrite" in capsys.readouterr().err
    monkeypatch.setenv("FSNL_OVERWRITE", "1")
    assert run_identity.main(other) == 1  # run it: it replaces that run as asked
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("seeds, bad", [("*", "*"), ("1,2", "1,2"), ("1 two", "two")])
def test_seeds_are_whole_numbers_or_one_error_line(tmp_path, recorder, seeds, bad):
    """``SEEDS='*'`` expanded to file names (``--seed README.md``, train.py's error naming no SEEDS);
    ``SEEDS='1,2'`` reached train.py as one seed."""
    env, record = recorder
    env.update(DATA=str(tmp_path / "data"), OUTPUT=str(tmp_path / "out"), SEEDS=seeds)
    for script in (MAIN, EVAL):
        proc = run_script(script, ["Animals92_42", "cpu_smoke", "end", "4", "2", "False"], env, tmp_path)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and err == [
            f"error: SEEDS='{seeds}' holds '{bad}', not a seed; give whole numbers separated by spaces, "
            'e.g. SEEDS="1 2 3"'], proc.stderr
    assert not record.exists() and not (tmp_path / "out").exists()
